//! The replicated state machine: the application's column families plus `sm_meta` (last
//! applied log id, membership), changed together in one atomic batch per entry, and
//! snapshots as files in the snapshot dir.

use super::snapshot_file::{self, Reader, Record, Writer, CURRENT};
use super::{blocking, from_json, to_json, DbHandle, CF_SM_META};
use crate::app::App;
use crate::types::{
    Entry, LogId, Payload, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

const KEY_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Set while a received snapshot replaces the state, so a crash in the middle is finished
/// at the next open instead of leaving half of two states.
const KEY_INSTALLING: &[u8] = b"install_pending";
/// Snapshot installs write in batches of this many pairs, bounding memory.
const INSTALL_BATCH: usize = 10_000;

/// The state machine half of the store.
pub struct StateMachine<A: App> {
    db: Arc<DbHandle>,
    app: Arc<A>,
    app_cfs: Arc<Vec<String>>,
    dir: PathBuf,
}

/// Builds snapshots from a consistent RocksDB view while the state machine goes on applying.
pub struct SnapshotBuilder {
    db: Arc<DbHandle>,
    app_cfs: Arc<Vec<String>>,
    dir: PathBuf,
}

fn snap_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

fn snap_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

fn sm_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn read_sm_meta<T: serde::de::DeserializeOwned>(
    db: &DbHandle,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    let cf = db.cf(CF_SM_META)?;
    match db.db.get_pinned_cf(cf, key) {
        Ok(Some(v)) => from_json(&v, StorageIOError::read_state_machine).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(StorageIOError::read_state_machine(AnyError::new(&e)).into()),
    }
}

fn applied_state(db: &DbHandle) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    Ok((
        read_sm_meta(db, KEY_APPLIED)?,
        read_sm_meta(db, KEY_MEMBERSHIP)?.unwrap_or_default(),
    ))
}

impl<A: App> StateMachine<A> {
    pub(crate) fn new(
        db: Arc<DbHandle>,
        app: Arc<A>,
        app_cfs: Arc<Vec<String>>,
        dir: PathBuf,
    ) -> StateMachine<A> {
        StateMachine {
            db,
            app,
            app_cfs,
            dir,
        }
    }
}

fn apply_entries<A: App>(
    db: &DbHandle,
    app: &A,
    entries: Vec<Entry>,
) -> Result<Vec<Payload>, StorageError> {
    let meta_cf = db.cf(CF_SM_META)?;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        // One batch per entry: the application reads the state its predecessors wrote.
        let mut batch = WriteBatch::default();
        let response = match &entry.payload {
            EntryPayload::Blank => A::Response::default(),
            EntryPayload::Normal(payload) => {
                // A command this build cannot decode (a newer node's?) stops this node
                // rather than letting it skip a change the others apply.
                let cmd: A::Command = payload.decode().map_err(|e| {
                    StorageError::from(StorageIOError::apply(entry.log_id, AnyError::new(&e)))
                })?;
                app.apply(&db.db, &mut batch, &cmd)
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                batch.put_cf(
                    meta_cf,
                    KEY_MEMBERSHIP,
                    to_json(&stored, StorageIOError::write_state_machine)?,
                );
                A::Response::default()
            }
        };
        batch.put_cf(
            meta_cf,
            KEY_APPLIED,
            to_json(&entry.log_id, StorageIOError::write_state_machine)?,
        );
        // Not synced: the synced log replays whatever a crash loses, and last applied
        // travels in the same batch as the writes it covers.
        db.db.write(batch).map_err(sm_write)?;
        out.push(Payload::encode(&response).map_err(sm_write)?);
    }
    Ok(out)
}

fn build_snapshot(
    db: &DbHandle,
    app_cfs: &[String],
    dir: &Path,
) -> Result<(SnapshotMeta, File), StorageError> {
    let view = db.db.snapshot();
    let meta_cf = db.cf(CF_SM_META)?;
    let read = |key: &[u8]| -> Result<Option<Vec<u8>>, StorageError> {
        view.get_cf(meta_cf, key).map_err(snap_read)
    };
    let last_log_id: Option<LogId> = match read(KEY_APPLIED)? {
        Some(v) => Some(from_json(&v, StorageIOError::read_state_machine)?),
        None => None,
    };
    let last_membership: StoredMembership = match read(KEY_MEMBERSHIP)? {
        Some(v) => from_json(&v, StorageIOError::read_state_machine)?,
        None => StoredMembership::default(),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let snapshot_id = match &last_log_id {
        Some(id) => format!("{}-{}-{nanos}", id.leader_id.term, id.index),
        None => format!("0-0-{nanos}"),
    };
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id,
    };

    let tmp = snapshot_file::temp_path(dir, "build");
    let file = File::create(&tmp).map_err(snap_write)?;
    let mut w = Writer::new(BufWriter::with_capacity(1 << 20, file), &meta).map_err(snap_write)?;
    for name in app_cfs {
        let cf = db.cf(name)?;
        w.cf(name).map_err(snap_write)?;
        for item in view.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(snap_read)?;
            w.kv(&k, &v).map_err(snap_write)?;
        }
    }
    let file = w
        .finish()
        .map_err(snap_write)?
        .into_inner()
        .map_err(|e| snap_write(e.into_error()))?;
    // Opened before the rename, so a newer snapshot replacing it cannot pull it away.
    let reader = File::open(&tmp).map_err(snap_read)?;
    snapshot_file::publish(dir, &tmp, &file).map_err(snap_write)?;
    Ok((meta, reader))
}

fn open_current(dir: &Path) -> Result<Option<(SnapshotMeta, File)>, StorageError> {
    let file = match File::open(dir.join(CURRENT)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(snap_read(e)),
    };
    let (_, meta) = Reader::new(BufReader::new(&file)).map_err(snap_read)?;
    Ok(Some((meta, file)))
}

/// Copies a received snapshot into our own current snapshot file, checking every record
/// on the way, so what we install (and later send on) is known to be whole.
fn store_received(
    incoming: File,
    meta: &SnapshotMeta,
    app_cfs: &[String],
    dir: &Path,
) -> Result<PathBuf, StorageError> {
    let (mut reader, _) =
        Reader::new(BufReader::with_capacity(1 << 20, incoming)).map_err(snap_read)?;
    let tmp = snapshot_file::temp_path(dir, "install");
    let file = File::create(&tmp).map_err(snap_write)?;
    let mut w = Writer::new(BufWriter::with_capacity(1 << 20, file), meta).map_err(snap_write)?;
    while let Some(record) = reader.next_record().map_err(snap_read)? {
        match record {
            Record::Cf(name) => {
                if !app_cfs.contains(&name) {
                    return Err(snap_read(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot has unknown column family {name:?}"),
                    )));
                }
                w.cf(&name).map_err(snap_write)?;
            }
            Record::Kv(k, v) => w.kv(&k, &v).map_err(snap_write)?,
        }
    }
    let file = w
        .finish()
        .map_err(snap_write)?
        .into_inner()
        .map_err(|e| snap_write(e.into_error()))?;
    snapshot_file::publish(dir, &tmp, &file).map_err(snap_write)
}

/// Replaces the application state and meta with the snapshot in `path`.
fn load_snapshot(
    db: &DbHandle,
    app_cfs: &[String],
    path: &Path,
    meta: &SnapshotMeta,
) -> Result<(), StorageError> {
    let file = File::open(path).map_err(snap_read)?;
    let (mut reader, _) =
        Reader::new(BufReader::with_capacity(1 << 20, file)).map_err(snap_read)?;
    for name in app_cfs {
        clear_cf(db, name)?;
    }
    let mut batch = WriteBatch::default();
    let mut cf = None;
    while let Some(record) = reader.next_record().map_err(snap_read)? {
        match record {
            Record::Cf(name) => cf = Some(db.cf(&name)?),
            Record::Kv(k, v) => {
                let Some(cf) = cf else {
                    return Err(snap_read(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "snapshot pair before any column family",
                    )));
                };
                batch.put_cf(cf, k, v);
                if batch.len() >= INSTALL_BATCH {
                    db.db.write(std::mem::take(&mut batch)).map_err(sm_write)?;
                }
            }
        }
    }
    let meta_cf = db.cf(CF_SM_META)?;
    match &meta.last_log_id {
        Some(id) => batch.put_cf(
            meta_cf,
            KEY_APPLIED,
            to_json(id, StorageIOError::write_state_machine)?,
        ),
        None => batch.delete_cf(meta_cf, KEY_APPLIED),
    }
    batch.put_cf(
        meta_cf,
        KEY_MEMBERSHIP,
        to_json(&meta.last_membership, StorageIOError::write_state_machine)?,
    );
    batch.delete_cf(meta_cf, KEY_INSTALLING);
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.db.write_opt(batch, &sync).map_err(sm_write)
}

/// Empties a column family without visiting its keys one by one.
fn clear_cf(db: &DbHandle, name: &str) -> Result<(), StorageError> {
    let cf = db.cf(name)?;
    let last = match db.db.iterator_cf(cf, IteratorMode::End).next() {
        None => return Ok(()),
        Some(item) => item.map_err(snap_read)?.0,
    };
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf, &[][..], &last[..]);
    batch.delete_cf(cf, &last);
    db.db.write(batch).map_err(sm_write)
}

/// Completes an install that a crash interrupted (called when the store opens).
pub(crate) fn finish_pending_install(
    db: &DbHandle,
    app_cfs: &[String],
    dir: &Path,
) -> Result<(), StorageError> {
    let Some(pending) = read_sm_meta::<SnapshotMeta>(db, KEY_INSTALLING)? else {
        return Ok(());
    };
    match open_current(dir)? {
        Some((meta, _)) if meta.snapshot_id == pending.snapshot_id => {
            tracing::warn!(snapshot = %pending.snapshot_id, "finishing an interrupted snapshot install");
            load_snapshot(db, app_cfs, &dir.join(CURRENT), &pending)
        }
        _ => Err(snap_read(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "snapshot {} was being installed but its file is gone",
                pending.snapshot_id
            ),
        ))),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (db, app_cfs, dir) = (self.db.clone(), self.app_cfs.clone(), self.dir.clone());
        let (meta, file) = blocking(move || build_snapshot(&db, &app_cfs, &dir)).await?;
        tracing::info!(snapshot = %meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

impl<A: App> RaftStateMachine<TypeConfig> for StateMachine<A> {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let db = self.db.clone();
        blocking(move || applied_state(&db)).await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Payload>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let (db, app) = (self.db.clone(), self.app.clone());
        blocking(move || apply_entries(&db, &*app, entries)).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            app_cfs: self.app_cfs.clone(),
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = snapshot_file::temp_path(&self.dir, "incoming");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(snap_write)?;
        // Unlinked at once: the open handle keeps the data, and an abandoned transfer
        // leaves nothing behind.
        tokio::fs::remove_file(&path).await.map_err(snap_write)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut file = *snapshot;
        file.flush().await.map_err(snap_write)?;
        file.seek(io::SeekFrom::Start(0)).await.map_err(snap_read)?;
        let incoming = file.into_std().await;
        let (db, app_cfs, dir, meta, app) = (
            self.db.clone(),
            self.app_cfs.clone(),
            self.dir.clone(),
            meta.clone(),
            self.app.clone(),
        );
        blocking(move || {
            let path = store_received(incoming, &meta, &app_cfs, &dir)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(
                db.cf(CF_SM_META)?,
                KEY_INSTALLING,
                to_json(&meta, StorageIOError::write_state_machine)?,
            );
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            db.db.write_opt(batch, &sync).map_err(sm_write)?;
            load_snapshot(&db, &app_cfs, &path, &meta)?;
            tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
            app.installed(&db.db);
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.dir.clone();
        let current = blocking(move || open_current(&dir)).await?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}
