//! Versions of configuration objects, so that two operators editing the same object
//! conflict instead of one silently overwriting the other: every write names the
//! version it was based on, and a write based on an outdated version is refused.

use super::{be_u64, handle, StoreError};
use rocksdb::{WriteBatch, DB};
use std::collections::HashMap;

/// The column family holding every configuration object's version.
pub(super) const CF_VERSIONS: &str = "versions";

/// What a configuration write expects of the object it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Expect {
    /// Whatever is there (loading a seed, restoring a backup).
    Any,
    /// The object must not exist yet (create).
    Absent,
    /// The object must exist at exactly this version (update, delete).
    Version(u64),
}

/// What applying a command answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// Applied; nothing to report.
    #[default]
    Done,
    /// The configuration object was written and now has this version.
    Version(u64),
    /// Refused: the object is not as the write expected. `exists` and `version` say
    /// what it is now (a deleted object keeps its last version, so that versions never
    /// repeat and an edit based on the object before its deletion still conflicts).
    Conflict {
        /// The object exists.
        exists: bool,
        /// Its current (or last) version; 0 if it never existed.
        version: u64,
    },
}

/// A configuration object's state as seen by the commands of one write batch: the
/// stored state, overlaid with what earlier commands of the same batch staged.
#[derive(Default, Clone)]
pub(super) struct Versions {
    staged: HashMap<Vec<u8>, (bool, u64)>,
}

impl Versions {
    /// Checks `expect` against object `key` (stored in `cf` under `id`) and, when it
    /// holds, stages its next version and returns it; `exists_after` says whether the
    /// write leaves the object in place.
    pub(super) fn advance(
        &mut self,
        db: &DB,
        batch: &mut WriteBatch,
        cf: &'static str,
        id: &str,
        expect: Expect,
        exists_after: bool,
    ) -> Result<Result<u64, Outcome>, StoreError> {
        let key = version_key(cf, id);
        let (exists, version) = match self.staged.get(&key) {
            Some(v) => *v,
            None => (
                exists_in(db, cf, id)?,
                stored_version(db, &key)?.unwrap_or(0),
            ),
        };
        let holds = match expect {
            Expect::Any => true,
            Expect::Absent => !exists,
            Expect::Version(v) => exists && v == version,
        };
        if !holds {
            return Ok(Err(Outcome::Conflict { exists, version }));
        }
        let next = version + 1;
        batch.put_cf(handle(db, CF_VERSIONS)?, &key, next.to_be_bytes());
        self.staged.insert(key, (exists_after, next));
        Ok(Ok(next))
    }
}

/// The current version of object `id` in `cf`, when it exists.
pub fn version_of(db: &DB, cf: &'static str, id: &str) -> Result<Option<u64>, StoreError> {
    if !exists_in(db, cf, id)? {
        return Ok(None);
    }
    Ok(Some(stored_version(db, &version_key(cf, id))?.unwrap_or(0)))
}

fn version_key(cf: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(cf.len() + id.len() + 1);
    k.extend_from_slice(cf.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn stored_version(db: &DB, key: &[u8]) -> Result<Option<u64>, StoreError> {
    Ok(db
        .get_cf(handle(db, CF_VERSIONS)?, key)?
        .and_then(|v| be_u64(&v)))
}

fn exists_in(db: &DB, cf: &'static str, id: &str) -> Result<bool, StoreError> {
    Ok(db.get_pinned_cf(handle(db, cf)?, id)?.is_some())
}
