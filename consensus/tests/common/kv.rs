//! A small key/value application with a versioned compare-and-set, in one column family.

use consensus::App;
use rocksdb::{WriteBatch, DB};
use serde::{Deserialize, Serialize};

pub const CF_KV: &str = "kv";

/// Databases (by path) that had a snapshot installed, as [`App::installed`] reports.
pub static INSTALLED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvCmd {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Writes only if the key's version is `expected` (0: absent).
    Cas {
        key: String,
        expected: u64,
        value: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KvResp {
    pub ok: bool,
    /// The key's version after the command.
    pub version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    version: u64,
    value: String,
}

pub struct Kv;

fn current(db: &DB, key: &str) -> Option<Stored> {
    let cf = db.cf_handle(CF_KV)?;
    let raw = db.get_cf(cf, key).ok()??;
    serde_json::from_slice(&raw).ok()
}

/// Reads a value straight from a node's database.
pub fn get(db: &DB, key: &str) -> Option<(u64, String)> {
    current(db, key).map(|s| (s.version, s.value))
}

impl App for Kv {
    type Command = KvCmd;
    type Response = KvResp;

    fn column_families(&self) -> Vec<String> {
        vec![CF_KV.to_string()]
    }

    fn installed(&self, db: &DB) {
        INSTALLED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(db.path().to_path_buf());
    }

    fn apply(&self, db: &DB, batch: &mut WriteBatch, cmd: &KvCmd) -> KvResp {
        let Some(cf) = db.cf_handle(CF_KV) else {
            return KvResp::default();
        };
        let (key, expected, value) = match cmd {
            KvCmd::Put { key, value } => (key, None, Some(value)),
            KvCmd::Delete { key } => (key, None, None),
            KvCmd::Cas {
                key,
                expected,
                value,
            } => (key, Some(*expected), Some(value)),
        };
        let version = current(db, key).map_or(0, |s| s.version);
        if expected.is_some_and(|e| e != version) {
            return KvResp { ok: false, version };
        }
        match value {
            Some(value) => {
                let stored = Stored {
                    version: version + 1,
                    value: value.clone(),
                };
                let raw = serde_json::to_vec(&stored).unwrap_or_default();
                batch.put_cf(cf, key, raw);
                KvResp {
                    ok: true,
                    version: version + 1,
                }
            }
            None => {
                batch.delete_cf(cf, key);
                KvResp {
                    ok: true,
                    version: 0,
                }
            }
        }
    }
}
