//! The Raft log: entries in `raft_log` keyed by big-endian index (so RocksDB's order is the
//! log's order), vote, committed and last purged ids in `raft_meta`.

use super::{blocking, from_json, to_json, DbHandle, CF_LOG, CF_RAFT_META};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The log half of the store; cheap to clone (clones share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DbHandle>,
    /// Committed index + 1 (0: none), for status reports without a disk read.
    committed: Arc<AtomicU64>,
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> Result<u64, StorageError> {
    let raw: [u8; 8] = key.try_into().map_err(|_| {
        StorageError::from(StorageIOError::read_logs(AnyError::error(format!(
            "log key of {} bytes",
            key.len()
        ))))
    })?;
    Ok(u64::from_be_bytes(raw))
}

/// Appends and votes must be on disk before Raft relies on them (a lost vote can elect two
/// leaders in one term; a lost acknowledged entry loses a commit).
fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

impl LogStore {
    pub(crate) fn new(db: Arc<DbHandle>) -> LogStore {
        let committed = read_meta::<LogId>(&db, KEY_COMMITTED)
            .ok()
            .flatten()
            .map_or(0, |id| id.index + 1);
        LogStore {
            db,
            committed: Arc::new(AtomicU64::new(committed)),
        }
    }

    /// The committed index as last saved by Raft.
    pub(crate) fn committed_cell(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let opts = if sync {
            synced()
        } else {
            WriteOptions::default()
        };
        self.db
            .db
            .write_opt(batch, &opts)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let cf = self.db.cf(CF_LOG)?;
        match self.db.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(Err(e)) => Err(StorageIOError::read_logs(AnyError::new(&e)).into()),
            Some(Ok((_, v))) => {
                let entry: Entry = from_json(&v, StorageIOError::read_logs)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &DbHandle,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    let cf = db.cf(CF_RAFT_META)?;
    match db.db.get_pinned_cf(cf, key) {
        Ok(Some(v)) => from_json(&v, StorageIOError::read).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(StorageIOError::read(AnyError::new(&e)).into()),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i.saturating_add(1)),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        let db = self.db.clone();
        blocking(move || {
            let cf = db.cf(CF_LOG)?;
            let mut out = Vec::new();
            let from = key(start);
            for item in db
                .db
                .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
            {
                let (k, v) = item.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
                if end.is_some_and(|end| index_of(&k).is_ok_and(|i| i >= end)) {
                    break;
                }
                out.push(from_json(&v, StorageIOError::read_logs)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let this = self.clone();
        blocking(move || {
            let last_purged_log_id: Option<LogId> = read_meta(&this.db, KEY_LAST_PURGED)?;
            let last_log_id = this.last_entry_id()?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let value = to_json(vote, StorageIOError::write_vote)?;
        let this = self.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(this.db.cf(CF_RAFT_META)?, KEY_VOTE, value);
            this.write(batch, true)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_meta(&db, KEY_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.committed.store(
            committed.as_ref().map_or(0, |id| id.index + 1),
            Ordering::Relaxed,
        );
        let this = self.clone();
        let value = to_json(&committed, StorageIOError::write)?;
        // Not synced: after a crash the committed index is re-learned from the leader;
        // it only saves re-applying on a restart.
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(this.db.cf(CF_RAFT_META)?, KEY_COMMITTED, value);
            this.write(batch, false)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(move || Ok(read_meta::<Option<LogId>>(&db, KEY_COMMITTED)?.flatten())).await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let cf = self.db.cf(CF_LOG)?;
        for entry in entries {
            let value = to_json(&entry, StorageIOError::write_logs)?;
            batch.put_cf(cf, key(entry.log_id.index), value);
        }
        let this = self.clone();
        let res = blocking(move || this.write(batch, true)).await;
        // The callback tells Raft the entries are durable, so it fires only after the write.
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let this = self.clone();
        blocking(move || {
            let cf = this.db.cf(CF_LOG)?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf, key(log_id.index), key(u64::MAX));
            batch.delete_cf(cf, key(u64::MAX));
            this.write(batch, true)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let value = to_json(&log_id, StorageIOError::write_logs)?;
        let this = self.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            // The purge mark and the deletion go together, so the log state read back
            // after a crash never points before a hole.
            batch.put_cf(this.db.cf(CF_RAFT_META)?, KEY_LAST_PURGED, value);
            batch.delete_range_cf(
                this.db.cf(CF_LOG)?,
                key(0),
                key(log_id.index.saturating_add(1)),
            );
            this.write(batch, true)
        })
        .await
    }
}
