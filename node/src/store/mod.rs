//! The node's durable state in RocksDB, changed only through typed [`Command`]s.
//!
//! Every change goes through [`Store::apply`], so the consensus issue can replicate the
//! same commands through Raft and apply them here on every member.

use crate::calls::cdr::Cdr;
use crate::registrar::bindings::Binding;
use crate::routing::Extension;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, DB};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const CF_META: &str = "meta";
const CF_EXTENSIONS: &str = "extensions";
const CF_BINDINGS: &str = "bindings";
const CF_CDRS: &str = "cdrs";
/// The column families of the node's state.
pub const CFS: [&str; 4] = [CF_META, CF_EXTENSIONS, CF_BINDINGS, CF_CDRS];
const KEY_SEEDED: &[u8] = b"seeded";
const KEY_NEXT_CDR: &[u8] = b"next_cdr";

/// A change to the replicated state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// Create or replace an extension.
    UpsertExtension(Extension),
    /// Delete an extension by number.
    DeleteExtension(String),
    /// Add or refresh a registration binding of an address of record.
    PutBinding {
        /// Address of record (extension number).
        aor: String,
        /// The binding.
        binding: Binding,
    },
    /// Remove one binding.
    RemoveBinding {
        /// Address of record.
        aor: String,
        /// Contact URI of the binding.
        contact: String,
    },
    /// Append a call detail record.
    AppendCdr(Cdr),
    /// Record that the PBX seed was loaded, so it is never loaded twice.
    MarkSeeded,
    /// Several commands applied atomically: one replicated log entry for the binding
    /// changes of many REGISTERs.
    Batch(Vec<Command>),
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("store: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored value could not be decoded.
    #[error("store: corrupt {cf} record: {reason}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// A column family is missing (a store written by something else).
    #[error("store: missing column family {0}")]
    MissingCf(&'static str),
}

/// The RocksDB store of one node.
pub struct Store {
    db: DB,
    next_cdr: AtomicU64,
}

fn binding_key(aor: &str, contact: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(aor.len() + contact.len() + 1);
    k.extend_from_slice(aor.as_bytes());
    k.push(0);
    k.extend_from_slice(contact.as_bytes());
    k
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let mut opts = base_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, base_options()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Store::with_db(db)
    }

    /// Opens a running node's store read-only as a RocksDB secondary (for `switchctl`).
    pub fn open_secondary(dir: &Path, scratch: &Path) -> Result<Store, StoreError> {
        let mut opts = base_options();
        opts.set_max_open_files(-1);
        let cfs = CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, base_options()));
        let db = DB::open_cf_descriptors_as_secondary(&opts, dir, scratch, cfs)?;
        db.try_catch_up_with_primary()?;
        Store::with_db(db)
    }

    fn with_db(db: DB) -> Result<Store, StoreError> {
        let next = next_cdr_number(&db)?;
        Ok(Store {
            db,
            next_cdr: AtomicU64::new(next),
        })
    }

    /// Applies one command.
    pub fn apply(&self, cmd: &Command) -> Result<(), StoreError> {
        self.apply_all(std::slice::from_ref(cmd))
    }

    /// Applies several commands atomically (one RocksDB write batch).
    pub fn apply_all(&self, cmds: &[Command]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let mut next_cdr = self.next_cdr.load(Ordering::Relaxed);
        stage(&self.db, &mut batch, cmds, &mut next_cdr)?;
        self.db.write(batch)?;
        self.next_cdr.store(next_cdr, Ordering::Relaxed);
        Ok(())
    }

    /// True once the PBX seed has been loaded.
    pub fn is_seeded(&self) -> Result<bool, StoreError> {
        is_seeded(&self.db)
    }

    /// Every extension.
    pub fn extensions(&self) -> Result<Vec<Extension>, StoreError> {
        extensions(&self.db)
    }

    /// Every binding with its address of record.
    pub fn bindings(&self) -> Result<Vec<(String, Binding)>, StoreError> {
        bindings(&self.db)
    }

    /// Every CDR, oldest first.
    pub fn cdrs(&self) -> Result<Vec<Cdr>, StoreError> {
        cdrs(&self.db)
    }
}

// Readers over any database holding the node's column families: this node's own
// store, or the replicated state machine's.

/// True once the PBX seed has been loaded.
pub fn is_seeded(db: &DB) -> Result<bool, StoreError> {
    let meta = db
        .cf_handle(CF_META)
        .ok_or(StoreError::MissingCf(CF_META))?;
    Ok(db.get_cf(meta, KEY_SEEDED)?.is_some())
}

/// Every extension.
pub fn extensions(db: &DB) -> Result<Vec<Extension>, StoreError> {
    scan(db, CF_EXTENSIONS, |_, v| Ok(v))
}

/// Every binding with its address of record.
pub fn bindings(db: &DB) -> Result<Vec<(String, Binding)>, StoreError> {
    scan(db, CF_BINDINGS, |k, v| {
        let aor = k.split(|b| *b == 0).next().unwrap_or_default();
        Ok((String::from_utf8_lossy(aor).into_owned(), v))
    })
}

/// Every CDR, oldest first.
pub fn cdrs(db: &DB) -> Result<Vec<Cdr>, StoreError> {
    scan(db, CF_CDRS, |_, v| Ok(v))
}

fn scan<T: serde::de::DeserializeOwned, R>(
    db: &DB,
    cf: &'static str,
    f: impl Fn(&[u8], T) -> Result<R, StoreError>,
) -> Result<Vec<R>, StoreError> {
    let handle = db.cf_handle(cf).ok_or(StoreError::MissingCf(cf))?;
    let mut out = Vec::new();
    for item in db.iterator_cf(handle, IteratorMode::Start) {
        let (k, v) = item?;
        let value = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
            cf,
            reason: e.to_string(),
        })?;
        out.push(f(&k, value)?);
    }
    Ok(out)
}

/// Stages `cmds` into `batch` against the column families of `db`: the one place that
/// knows how a command changes the stored state, for this node's own store and for the
/// replicated state machine alike. CDRs are numbered from `next_cdr` (advanced here), and
/// the next number is written with them so a replica that applies the same commands
/// numbers them the same way.
pub fn stage(
    db: &DB,
    batch: &mut WriteBatch,
    cmds: &[Command],
    next_cdr: &mut u64,
) -> Result<(), StoreError> {
    let cdrs_before = *next_cdr;
    stage_each(db, batch, cmds, next_cdr)?;
    if *next_cdr != cdrs_before {
        let meta = db
            .cf_handle(CF_META)
            .ok_or(StoreError::MissingCf(CF_META))?;
        batch.put_cf(meta, KEY_NEXT_CDR, next_cdr.to_be_bytes());
    }
    Ok(())
}

fn stage_each(
    db: &DB,
    batch: &mut WriteBatch,
    cmds: &[Command],
    next_cdr: &mut u64,
) -> Result<(), StoreError> {
    let cf = |name: &'static str| db.cf_handle(name).ok_or(StoreError::MissingCf(name));
    for cmd in cmds {
        match cmd {
            Command::UpsertExtension(e) => batch.put_cf(cf(CF_EXTENSIONS)?, &e.number, encode(e)),
            Command::DeleteExtension(n) => batch.delete_cf(cf(CF_EXTENSIONS)?, n),
            Command::PutBinding { aor, binding } => batch.put_cf(
                cf(CF_BINDINGS)?,
                binding_key(aor, &binding.contact),
                encode(binding),
            ),
            Command::RemoveBinding { aor, contact } => {
                batch.delete_cf(cf(CF_BINDINGS)?, binding_key(aor, contact))
            }
            Command::AppendCdr(c) => {
                batch.put_cf(cf(CF_CDRS)?, next_cdr.to_be_bytes(), encode(c));
                *next_cdr += 1;
            }
            Command::MarkSeeded => batch.put_cf(cf(CF_META)?, KEY_SEEDED, b"1"),
            Command::Batch(inner) => stage_each(db, batch, inner, next_cdr)?,
        }
    }
    Ok(())
}

/// The number the next CDR gets in `db`: the stored counter, or for a store written
/// before the counter existed, one past the last CDR key.
pub fn next_cdr_number(db: &DB) -> Result<u64, StoreError> {
    let meta = db
        .cf_handle(CF_META)
        .ok_or(StoreError::MissingCf(CF_META))?;
    if let Some(v) = db.get_cf(meta, KEY_NEXT_CDR)? {
        if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
            return Ok(u64::from_be_bytes(b));
        }
    }
    let cdrs = db
        .cf_handle(CF_CDRS)
        .ok_or(StoreError::MissingCf(CF_CDRS))?;
    Ok(match db.iterator_cf(cdrs, IteratorMode::End).next() {
        Some(Ok((k, _))) => <[u8; 8]>::try_from(&*k).map_or(1, |b| u64::from_be_bytes(b) + 1),
        _ => 1,
    })
}

/// Options shared by every open of the store. Debian's librocksdb is built without
/// Snappy (RocksDB's default), so compression is chosen explicitly; the records are
/// small JSON documents and LZ4 is in Debian's build.
fn base_options() -> Options {
    let mut o = Options::default();
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers to JSON cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::cdr::{Cdr, Disposition};

    fn cdr(id: &str) -> Cdr {
        Cdr {
            call_id: id.into(),
            caller: "1001".into(),
            callee: "1002".into(),
            start: "2026-01-01T00:00:00.000Z".into(),
            answer: None,
            end: "2026-01-01T00:00:01.000Z".into(),
            duration: 1,
            billsec: 0,
            disposition: Disposition::Failed,
            hangup_cause: "unallocated_number".into(),
            sip_status: 404,
            hangup_by: None,
        }
    }

    #[test]
    fn commands_survive_reopen_and_are_visible_to_a_secondary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let s = Store::open(&path).unwrap();
            assert!(!s.is_seeded().unwrap());
            s.apply_all(&[
                Command::UpsertExtension(crate::routing::Extension {
                    number: "1001".into(),
                    name: "A".into(),
                    password: "secret".into(),
                    max_contacts: None,
                    trusted_ips: vec![],
                }),
                Command::AppendCdr(cdr("c1")),
                Command::MarkSeeded,
            ])
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert!(s.is_seeded().unwrap());
        s.apply(&Command::AppendCdr(cdr("c2"))).unwrap();
        let ids: Vec<String> = s.cdrs().unwrap().into_iter().map(|c| c.call_id).collect();
        assert_eq!(ids, ["c1", "c2"], "CDRs keep their order across restarts");

        // A secondary sees the live primary's writes, including unflushed ones.
        let scratch = tempfile::tempdir().unwrap();
        let sec = Store::open_secondary(&path, scratch.path()).unwrap();
        assert_eq!(sec.cdrs().unwrap().len(), 2);
        assert_eq!(sec.extensions().unwrap()[0].number, "1001");
        s.apply(&Command::DeleteExtension("1001".into())).unwrap();
        assert!(s.extensions().unwrap().is_empty());

        // A batch applies its commands in order, nested CDRs numbered after the others.
        s.apply(&Command::Batch(vec![
            Command::AppendCdr(cdr("c3")),
            Command::Batch(vec![Command::AppendCdr(cdr("c4"))]),
        ]))
        .unwrap();
        let ids: Vec<String> = s.cdrs().unwrap().into_iter().map(|c| c.call_id).collect();
        assert_eq!(ids, ["c1", "c2", "c3", "c4"]);
        assert_eq!(next_cdr_number(&s.db).unwrap(), 5);
    }
}
