//! The RocksDB store across restarts, and snapshots of many records.

mod common;

use common::kv::{get, Kv, KvCmd, CF_KV};
use consensus::types::TypeConfig;
use consensus::{Payload, Store};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, Vote};
use std::collections::BTreeSet;
use std::time::Instant;
use tempfile::TempDir;

type Entry = openraft::Entry<TypeConfig>;

fn normal(term: u64, index: u64, cmd: &KvCmd) -> Entry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Payload::encode(cmd).unwrap()),
    }
}

fn membership(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], ())),
    }
}

fn put(i: u64) -> KvCmd {
    KvCmd::Put {
        key: format!("k{i:07}"),
        value: format!("v{i}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_vote_state_and_snapshot_survive_a_restart() {
    let dir = TempDir::new().unwrap();
    {
        let store = Store::open(dir.path(), Kv).unwrap();
        let mut log = store.log_store();
        let mut sm = store.state_machine();
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        let mut entries = vec![membership(1, 1)];
        entries.extend((2..=20).map(|i| normal(2, i, &put(i))));
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_committed(Some(log_id(2, 1, 15))).await.unwrap();
        sm.apply(entries[..15].to_vec()).await.unwrap();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(2, 1, 15)));
        log.purge(log_id(2, 1, 10)).await.unwrap();
        log.truncate(log_id(2, 1, 19)).await.unwrap();
        // Dropping the store closes RocksDB.
    }
    let store = Store::open(dir.path(), Kv).unwrap();
    let mut log = store.log_store();
    let mut sm = store.state_machine();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 1))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 1, 15)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 1, 10)));
    assert_eq!(state.last_log_id, Some(log_id(2, 1, 18)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (11..=18).collect::<Vec<_>>());
    let (applied, members) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2, 1, 15)));
    assert_eq!(members.log_id(), &Some(log_id(1, 1, 1)));
    assert_eq!(
        store.read(|db| get(db, "k0000015")),
        Some((1, "v15".into()))
    );
    assert_eq!(store.read(|db| get(db, "k0000016")), None);
    let snap = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("snapshot kept on disk");
    assert_eq!(snap.meta.last_log_id, Some(log_id(2, 1, 15)));
}

/// A snapshot of many small records is built and installed by streaming: the state
/// machine never holds it in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_many_records_moves_between_stores() {
    const N: u64 = 1_000_000;
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let source = Store::open(a.path(), Kv).unwrap();
    let mut sm = source.state_machine();
    let started = Instant::now();
    // Loaded straight into the column family: applying a million entries one by one
    // would only test RocksDB's write path.
    source.read(|db| {
        let cf = db.cf_handle(CF_KV).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        for i in 0..N {
            let value = format!("{{\"version\":1,\"value\":\"v{i}\"}}");
            batch.put_cf(cf, format!("k{i:07}"), value);
            if batch.len() == 100_000 {
                db.write(std::mem::take(&mut batch)).unwrap();
            }
        }
        db.write(batch).unwrap();
    });
    sm.apply(vec![membership(1, 1), normal(1, 2, &put(N))])
        .await
        .unwrap();
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    eprintln!("loaded and built in {:?}", started.elapsed());

    let target = Store::open(b.path(), Kv).unwrap();
    // Something to be replaced.
    target.read(|db| {
        db.put_cf(db.cf_handle(CF_KV).unwrap(), "stale", "x")
            .unwrap();
    });
    let mut sm_b = target.state_machine();
    let mut incoming = sm_b.begin_receiving_snapshot().await.unwrap();
    let mut data = snap.snapshot;
    tokio::io::copy(&mut data, &mut *incoming).await.unwrap();
    sm_b.install_snapshot(&snap.meta, incoming).await.unwrap();
    eprintln!("installed after {:?}", started.elapsed());

    assert_eq!(sm_b.applied_state().await.unwrap().0, Some(log_id(1, 1, 2)));
    let count = target.read(|db| {
        db.iterator_cf(db.cf_handle(CF_KV).unwrap(), rocksdb::IteratorMode::Start)
            .count() as u64
    });
    assert_eq!(count, N + 1);
    assert_eq!(target.read(|db| get(db, "stale")), None);
    assert_eq!(
        target.read(|db| get(db, "k0999999")),
        Some((1, "v999999".into()))
    );
    let current = sm_b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.snapshot_id, snap.meta.snapshot_id);
}
