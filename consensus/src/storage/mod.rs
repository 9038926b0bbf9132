//! Raft log and state machine in one RocksDB instance per node (column families), plus
//! snapshot files beside it.

mod log;
mod snapshot_file;
mod state_machine;

pub use log::LogStore;
pub use state_machine::{SnapshotBuilder, StateMachine};

use crate::app::App;
use crate::types::StorageError;
use openraft::{AnyError, StorageIOError};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// Log entries keyed by big-endian index.
pub(crate) const CF_LOG: &str = "raft_log";
/// Vote, committed and last purged log ids.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// Last applied log id and membership, written with every applied entry.
pub(crate) const CF_SM_META: &str = "sm_meta";
const RESERVED: [&str; 3] = [CF_LOG, CF_RAFT_META, CF_SM_META];

/// Store failures at open time.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("consensus store: {0}")]
    Db(#[from] rocksdb::Error),
    /// A file beside the database (snapshots) failed.
    #[error("consensus store: {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The application asked for a column family consensus owns.
    #[error(
        "consensus store: column family {0:?} is reserved for consensus; rename it in the App"
    )]
    ReservedCf(String),
    /// The store content could not be read back.
    #[error("consensus store: {0}")]
    Corrupt(String),
}

/// The open RocksDB; dropping the last handle closes it and tells [`DbHandle::closed`] watchers.
pub(crate) struct DbHandle {
    pub(crate) db: DB,
    _closed: watch::Sender<()>,
}

impl DbHandle {
    /// A column family that [`Store::open`] created; its absence is a bug, reported as corruption.
    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily, StorageError> {
        self.db.cf_handle(name).ok_or_else(|| {
            StorageIOError::read(AnyError::error(format!("missing column family {name}"))).into()
        })
    }
}

/// The durable state of one node: log, state machine and snapshots under one data dir.
pub struct Store<A: App> {
    db: Arc<DbHandle>,
    app: Arc<A>,
    app_cfs: Arc<Vec<String>>,
    snapshot_dir: PathBuf,
    closed: watch::Receiver<()>,
}

impl<A: App> Store<A> {
    /// Opens (or creates) the store in `path`: RocksDB in `path/db`, snapshots in
    /// `path/snapshots`. Finishes a snapshot install that a crash interrupted.
    pub fn open(path: impl AsRef<Path>, app: A) -> Result<Store<A>, StoreError> {
        let path = path.as_ref();
        let snapshot_dir = path.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir).map_err(|source| StoreError::Io {
            path: snapshot_dir.clone(),
            source,
        })?;
        snapshot_file::remove_leftovers(&snapshot_dir);

        let app_cfs = app.column_families();
        if let Some(bad) = app_cfs.iter().find(|c| RESERVED.contains(&c.as_str())) {
            return Err(StoreError::ReservedCf(bad.clone()));
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = RESERVED
            .iter()
            .map(|s| s.to_string())
            .chain(app_cfs.iter().cloned())
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path.join("db"), cfs)?;
        let (tx, closed) = watch::channel(());
        let store = Store {
            db: Arc::new(DbHandle { db, _closed: tx }),
            app: Arc::new(app),
            app_cfs: Arc::new(app_cfs),
            snapshot_dir,
            closed,
        };
        state_machine::finish_pending_install(&store.db, &store.app_cfs, &store.snapshot_dir)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(store)
    }

    /// The Raft log half.
    pub fn log_store(&self) -> LogStore {
        LogStore::new(self.db.clone())
    }

    /// The state machine half.
    pub fn state_machine(&self) -> StateMachine<A> {
        StateMachine::new(
            self.db.clone(),
            self.app.clone(),
            self.app_cfs.clone(),
            self.snapshot_dir.clone(),
        )
    }

    /// Runs `f` on the database (the application reads its replicated state this way).
    pub fn read<T>(&self, f: impl FnOnce(&DB) -> T) -> T {
        f(&self.db.db)
    }

    /// Resolves once every handle to the database is gone, i.e. RocksDB is closed and the
    /// data dir can be opened again.
    pub(crate) fn closed(&self) -> watch::Receiver<()> {
        self.closed.clone()
    }

    /// A weak handle, so a holder does not keep the database open.
    pub(crate) fn weak_db(&self) -> std::sync::Weak<DbHandle> {
        Arc::downgrade(&self.db)
    }
}

/// Runs blocking RocksDB or file work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageIOError::write(AnyError::new(&e)))?
}

/// JSON encoding of stored records.
pub(crate) fn to_json<T: serde::Serialize>(
    value: &T,
    err: fn(AnyError) -> StorageIOError<u64>,
) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(|e| err(AnyError::new(&e)).into())
}

/// JSON decoding of stored records.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    err: fn(AnyError) -> StorageIOError<u64>,
) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| err(AnyError::new(&e)).into())
}
