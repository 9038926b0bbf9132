//! openraft's own storage test suite against the RocksDB store.

mod common;

use common::kv::Kv;
use consensus::storage::{LogStore, StateMachine};
use consensus::types::TypeConfig;
use consensus::Store;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine<Kv>, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine<Kv>), StorageError<u64>> {
        let dir = TempDir::new().unwrap();
        let store = Store::open(dir.path(), Kv).unwrap();
        Ok((dir, store.log_store(), store.state_machine()))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
