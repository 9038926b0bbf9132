//! The backup file: a consistent copy of the replicated state (every column family
//! but the calls in progress, which belong to the cluster that carries them, and a
//! restore's staging), taken
//! from one RocksDB snapshot so no write lands half in it.
//!
//! Layout (integers big-endian):
//! ```text
//! "softswitch-backup\n"  u32 header_len  header (JSON, BackupHeader)
//! { 0x01  u8 cf_len cf  u32 key_len key  u32 value_len value }*
//! 0x00  u64 record_count  [32] SHA-256 of every byte before it
//! ```
//! The digest makes a truncated or altered file fail before anything is restored.

use super::{handle, restore::CF_RESTORE, StoreError, CFS, CF_CALLS};
use rocksdb::{IteratorMode, DB};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const MAGIC: &[u8] = b"softswitch-backup\n";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
const TAG_RECORD: u8 = 1;
const TAG_END: u8 = 0;
/// A header larger than this is not one of ours.
const MAX_HEADER: usize = 64 * 1024;

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// [`FORMAT`] when written.
    pub format: u32,
    /// When it was taken (RFC 3339, UTC).
    pub created: String,
    /// The softswitch version that wrote it.
    pub version: String,
    /// The member that wrote it.
    pub node_id: u64,
    /// That member's applied Raft index when the copy was taken (at least).
    pub applied_index: Option<u64>,
    /// Records per column family.
    pub counts: BTreeMap<String, u64>,
}

/// One key and value of a column family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The column family's name.
    pub cf: String,
    /// The key, hex in JSON (keys are binary: CDR numbers).
    #[serde(with = "hex")]
    pub key: Vec<u8>,
    /// The value, hex in JSON.
    #[serde(with = "hex")]
    pub value: Vec<u8>,
}

impl Record {
    /// Bytes it adds to a replicated command, roughly (hex doubles them).
    pub fn weight(&self) -> usize {
        self.cf.len() + 2 * (self.key.len() + self.value.len()) + 32
    }
}

/// A backup read back and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// Its header.
    pub header: BackupHeader,
    /// Its records, column family by column family, in key order.
    pub records: Vec<Record>,
}

/// Why a file is not a usable backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Not written by `switchctl backup` at all.
    #[error("not a softswitch backup (it does not start with the backup marker)")]
    NotABackup,
    /// Cut short or altered.
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    /// Written by a newer format, or holding state this build does not know.
    #[error("the backup cannot be restored by this build: {0}")]
    Unsupported(String),
}

/// The column families a backup holds.
pub fn backed_up() -> impl Iterator<Item = &'static str> {
    CFS.iter()
        .copied()
        .filter(|cf| *cf != CF_CALLS && *cf != CF_RESTORE)
}

/// Copies `db`'s state into a backup file, from one consistent snapshot.
pub fn write(
    db: &DB,
    node_id: u64,
    applied_index: Option<u64>,
    created: String,
) -> Result<Vec<u8>, StoreError> {
    let view = db.snapshot();
    let mut body = Vec::new();
    let mut counts = BTreeMap::new();
    let mut total = 0u64;
    for cf in backed_up() {
        let mut n = 0u64;
        for item in view.iterator_cf(handle(db, cf)?, IteratorMode::Start) {
            let (k, v) = item?;
            body.push(TAG_RECORD);
            put_field(&mut body, cf.as_bytes(), 1);
            put_field(&mut body, &k, 4);
            put_field(&mut body, &v, 4);
            n += 1;
        }
        counts.insert(cf.to_string(), n);
        total += n;
    }
    let header = BackupHeader {
        format: FORMAT,
        created,
        version: env!("CARGO_PKG_VERSION").to_string(),
        node_id,
        applied_index,
        counts,
    };
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + header.len() + 64);
    out.extend_from_slice(MAGIC);
    put_field(&mut out, &header, 4);
    out.extend_from_slice(&body);
    out.push(TAG_END);
    out.extend_from_slice(&total.to_be_bytes());
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// Appends `bytes` after its length in `width` bytes (1 or 4); fields never exceed
/// the width: column family names are short and RocksDB values here are far below 4 GiB.
fn put_field(out: &mut Vec<u8>, bytes: &[u8], width: usize) {
    let len = (bytes.len() as u64).to_be_bytes();
    out.extend_from_slice(&len[8 - width..]);
    out.extend_from_slice(bytes);
}

/// Reads and checks a backup: digest, count, format, and that every column family is
/// one this build keeps.
pub fn read(file: &[u8]) -> Result<Backup, BackupError> {
    let rest = file.strip_prefix(MAGIC).ok_or(BackupError::NotABackup)?;
    if file.len() < MAGIC.len() + 32 {
        return Err(BackupError::Damaged("it is cut short".into()));
    }
    let (signed, digest) = file.split_at(file.len() - 32);
    if Sha256::digest(signed).as_slice() != digest {
        return Err(BackupError::Damaged(
            "its SHA-256 does not match its content (cut short or altered)".into(),
        ));
    }
    let mut cursor = Cursor {
        bytes: &rest[..rest.len() - 32],
    };
    let header = cursor.field(4)?;
    if header.len() > MAX_HEADER {
        return Err(BackupError::Damaged("its header is too large".into()));
    }
    let header: BackupHeader = serde_json::from_slice(header)
        .map_err(|e| BackupError::Damaged(format!("its header: {e}")))?;
    if header.format != FORMAT {
        return Err(BackupError::Unsupported(format!(
            "format {} (this build reads format {FORMAT}; it was written by softswitch {})",
            header.format, header.version
        )));
    }
    let mut records = Vec::new();
    loop {
        match cursor.take(1)?[0] {
            TAG_RECORD => {
                let cf = String::from_utf8_lossy(cursor.field(1)?).into_owned();
                if !backed_up().any(|c| c == cf) {
                    return Err(BackupError::Unsupported(format!(
                        "it holds column family {cf:?}, which this build does not keep (written by softswitch {})",
                        header.version
                    )));
                }
                let key = cursor.field(4)?.to_vec();
                let value = cursor.field(4)?.to_vec();
                records.push(Record { cf, key, value });
            }
            TAG_END => break,
            t => return Err(BackupError::Damaged(format!("unknown record tag {t:#x}"))),
        }
    }
    let count = cursor.take(8)?;
    let count = u64::from_be_bytes(count.try_into().unwrap_or_default());
    if count != records.len() as u64 || !cursor.bytes.is_empty() {
        return Err(BackupError::Damaged(format!(
            "it says {count} records but holds {}",
            records.len()
        )));
    }
    Ok(Backup { header, records })
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BackupError> {
        if self.bytes.len() < n {
            return Err(BackupError::Damaged("a record is cut short".into()));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    /// A field after its `width`-byte length.
    fn field(&mut self, width: usize) -> Result<&'a [u8], BackupError> {
        let mut len = [0u8; 8];
        len[8 - width..].copy_from_slice(self.take(width)?);
        let len = usize::try_from(u64::from_be_bytes(len))
            .map_err(|_| BackupError::Damaged("a field is too large".into()))?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, Expect, Store};

    fn store_with_data() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s")).unwrap();
        let ext = crate::routing::Extension {
            number: "2001".into(),
            name: "Ann".into(),
            password: "secret1".into(),
            max_contacts: None,
            trusted_ips: vec![],
        };
        s.apply(&Command::PutExtension {
            extension: ext,
            expect: Expect::Any,
        })
        .unwrap();
        (dir, s)
    }

    #[test]
    fn a_backup_reads_back_with_its_counts() {
        let (_d, s) = store_with_data();
        let file = s
            .read(|db| write(db, 7, Some(42), "2026-12-03T00:00:00.000Z".into()))
            .unwrap();
        let b = read(&file).unwrap();
        assert_eq!(b.header.node_id, 7);
        assert_eq!(b.header.applied_index, Some(42));
        assert_eq!(b.header.counts["extensions"], 1);
        assert!(!b.header.counts.contains_key("calls"));
        let ext: Vec<_> = b.records.iter().filter(|r| r.cf == "extensions").collect();
        assert_eq!(ext.len(), 1);
        assert_eq!(ext[0].key, b"2001");
    }

    #[test]
    fn a_damaged_backup_is_refused_before_anything_is_read() {
        let (_d, s) = store_with_data();
        let file = s
            .read(|db| write(db, 1, None, "2026-12-03T00:00:00.000Z".into()))
            .unwrap();
        let mut flipped = file.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        assert!(matches!(read(&flipped), Err(BackupError::Damaged(_))));
        assert!(matches!(
            read(&file[..file.len() - 5]),
            Err(BackupError::Damaged(_))
        ));
        assert!(matches!(read(b"hello"), Err(BackupError::NotABackup)));
        assert!(matches!(read(MAGIC), Err(BackupError::Damaged(_))));
    }

    #[test]
    fn a_backup_from_a_newer_format_is_refused_by_name() {
        let mut out = MAGIC.to_vec();
        let header = serde_json::json!({
            "format": 9, "created": "x", "version": "9.0.0", "node_id": 1,
            "applied_index": null, "counts": {}
        });
        put_field(&mut out, header.to_string().as_bytes(), 4);
        out.push(TAG_END);
        out.extend_from_slice(&0u64.to_be_bytes());
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        let e = read(&out).unwrap_err().to_string();
        assert!(e.contains("format 9") && e.contains("9.0.0"), "{e}");
    }
}
