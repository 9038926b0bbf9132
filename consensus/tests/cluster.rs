//! Three-node clusters on real RocksDB in temp dirs, over the in-process transport.

mod common;

use common::kv::{get, KvCmd, KvResp};
use common::net::LocalNet;
use common::*;
use consensus::rpc::{PeerIdentity, RpcHandler, RpcKind};
use consensus::{ProposeError, Role};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tempfile::TempDir;

fn put(key: &str, value: &str) -> KvCmd {
    KvCmd::Put {
        key: key.into(),
        value: value.into(),
    }
}

async fn three_nodes(net: &std::sync::Arc<LocalNet>, root: &TempDir) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(net, root.path(), id, fast_config()).await);
    }
    let members: BTreeMap<_, _> = (1..=3).map(|id| (id, member(id))).collect();
    nodes[0].initialize(members).await.unwrap();
    nodes
}

fn refs(nodes: &[Node]) -> Vec<&Node> {
    nodes.iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposal_on_a_follower_is_applied_everywhere() {
    let (net, root) = (LocalNet::new(), TempDir::new().unwrap());
    let nodes = three_nodes(&net, &root).await;
    let leader = wait_leader(&refs(&nodes)).await;
    let follower = nodes.iter().find(|n| n.id() != leader).unwrap();

    let resp = follower.propose(put("alice", "1001")).await.unwrap();
    assert_eq!(
        resp,
        KvResp {
            ok: true,
            version: 1
        }
    );
    // The versioned compare-and-set goes through the same path and sees the first write.
    let cas = KvCmd::Cas {
        key: "alice".into(),
        expected: 1,
        value: "1002".into(),
    };
    assert_eq!(follower.propose(cas.clone()).await.unwrap().version, 2);
    assert!(
        !follower.propose(cas).await.unwrap().ok,
        "stale CAS must fail"
    );

    let leader_node = nodes.iter().find(|n| n.id() == leader).unwrap();
    let index = committed(leader_node).await;
    for n in &nodes {
        wait_applied(n, index).await;
        let v = n.read(|db| get(db, "alice")).unwrap();
        assert_eq!(v, Some((2, "1002".to_string())), "node {}", n.id());
    }
    // A follower's read barrier is forwarded to the leader and waits for the local apply.
    let read_at = follower.read_barrier().await.unwrap().unwrap();
    assert!(read_at >= index);
    assert!(follower.applied_index().is_some_and(|a| a >= read_at));
    // Raft RPCs need a cluster certificate.
    let anon = follower
        .handler()
        .handle(PeerIdentity::Anonymous, RpcKind::AppendEntries, Vec::new())
        .await;
    assert!(anon.unwrap_err().contains("certificate"));
    let status = leader_node.status();
    assert_eq!(status.voters, BTreeSet::from([1, 2, 3]));
    assert_eq!(status.matched.len(), 2, "leader reports both followers");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_keeps_acknowledged_writes() {
    let (net, root) = (LocalNet::new(), TempDir::new().unwrap());
    let mut nodes = three_nodes(&net, &root).await;
    let leader = wait_leader(&refs(&nodes)).await;

    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("k{i}");
        nodes[(i % 3) as usize]
            .propose(put(&key, "before"))
            .await
            .unwrap();
        acked.push(key);
    }

    // Kill the leader: stop it and make it unreachable.
    let pos = nodes.iter().position(|n| n.id() == leader).unwrap();
    let old = nodes.remove(pos);
    net.unplug(addr(leader));
    old.shutdown().await.unwrap();

    let new_leader = wait_leader(&refs(&nodes)).await;
    assert_ne!(new_leader, leader);
    for i in 20..40 {
        let key = format!("k{i}");
        nodes[(i % 2) as usize]
            .propose(put(&key, "after"))
            .await
            .unwrap();
        acked.push(key);
    }
    let index = committed_any(&refs(&nodes)).await;
    for n in &nodes {
        wait_applied(n, index).await;
        for key in &acked {
            assert!(
                n.read(|db| get(db, key)).unwrap().is_some(),
                "{key} on node {}",
                n.id()
            );
        }
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit() {
    let (net, root) = (LocalNet::new(), TempDir::new().unwrap());
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let config = consensus::Config {
            propose_timeout: Duration::from_secs(1),
            ..fast_config()
        };
        nodes.push(start(&net, root.path(), id, config).await);
    }
    let members: BTreeMap<_, _> = (1..=3).map(|id| (id, member(id))).collect();
    nodes[0].initialize(members).await.unwrap();
    let leader = wait_leader(&refs(&nodes)).await;
    nodes[0].propose(put("a", "1")).await.unwrap();

    // Cut the leader off: alone it is a minority of one.
    net.isolate(addr(leader));
    let cut = nodes.iter().find(|n| n.id() == leader).unwrap();
    let err = cut.propose(put("b", "lost")).await.unwrap_err();
    assert!(matches!(err, ProposeError::NoQuorum { .. }), "{err}");
    assert!(err.to_string().starts_with("no quorum"), "{err}");

    // A follower cut off cannot commit either (its leader is out of reach).
    let majority: Vec<&Node> = nodes.iter().filter(|n| n.id() != leader).collect();
    let new_leader = wait_leader(&majority).await;
    let follower = majority.iter().find(|n| n.id() != new_leader).unwrap();
    net.heal(addr(leader));
    net.isolate(addr(follower.id()));
    let err = follower.propose(put("c", "lost")).await.unwrap_err();
    assert!(matches!(err, ProposeError::NoQuorum { .. }), "{err}");

    // The majority side still commits, and the cut-off write never shows up.
    net.heal(addr(follower.id()));
    // The healed follower's higher term may depose the leader: any node will do.
    nodes[0].propose(put("d", "1")).await.unwrap();
    let index = committed_any(&refs(&nodes)).await;
    for n in &nodes {
        wait_applied(n, index).await;
        assert_eq!(n.read(|db| get(db, "b")).unwrap(), None);
        assert!(n.read(|db| get(db, "d")).unwrap().is_some());
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cluster_has_its_state_and_elects_a_leader() {
    let (net, root) = (LocalNet::new(), TempDir::new().unwrap());
    let nodes = three_nodes(&net, &root).await;
    wait_leader(&refs(&nodes)).await;
    for i in 0..30 {
        nodes[0].propose(put(&format!("k{i}"), "v")).await.unwrap();
    }
    let leader = nodes
        .iter()
        .find(|n| n.status().role == Role::Leader)
        .unwrap();
    let index = committed(leader).await;
    for n in &nodes {
        wait_applied(n, index).await;
    }
    for n in nodes {
        net.unplug(addr(n.id()));
        n.shutdown().await.unwrap();
    }

    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_unplugged(&net, root.path(), id, fast_config()).await);
    }
    for n in &nodes {
        // Log, membership and state come back from disk alone, with no peer reachable.
        let s = wait_for(n, "the log read back", |s| {
            s.last_log.is_some_and(|l| l >= index)
        })
        .await;
        assert_eq!(s.voters, BTreeSet::from([1, 2, 3]));
        assert!(n.read(|db| get(db, "k29")).unwrap().is_some());
    }
    for n in &nodes {
        net.serve(addr(n.id()), n.handler());
    }
    wait_leader(&refs(&nodes)).await;
    nodes[1].propose(put("after-restart", "v")).await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_by_snapshot_and_becomes_a_voter() {
    let (net, root) = (LocalNet::new(), TempDir::new().unwrap());
    let config = consensus::Config {
        snapshot_every: 500,
        logs_kept_after_snapshot: 100,
        ..fast_config()
    };
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(&net, root.path(), id, config.clone()).await);
    }
    let members: BTreeMap<_, _> = (1..=3).map(|id| (id, member(id))).collect();
    nodes[0].initialize(members).await.unwrap();
    let leader = wait_leader(&refs(&nodes)).await;
    let leader_node = nodes.iter().find(|n| n.id() == leader).unwrap();

    // Concurrent proposals, so 5 000 commands do not take 5 000 sequential round trips.
    let total = 5_000;
    let batch = 100;
    for chunk in 0..total / batch {
        let futs = (0..batch).map(|i| {
            let n = chunk * batch + i;
            leader_node.propose(put(&format!("key{n:05}"), &format!("value{n}")))
        });
        for r in futures_join(futs).await {
            r.unwrap();
        }
    }
    let s = wait_for(leader_node, "a purged log", |s| {
        s.purged.is_some_and(|p| p > 1_000)
    })
    .await;
    assert!(s.snapshot.is_some());

    let learner = start(&net, root.path(), 4, config.clone()).await;
    leader_node.add_learner(4, member(4)).await.unwrap();
    let index = committed(leader_node).await;
    wait_applied(&learner, index).await;
    let ls = wait_for(&learner, "learner role", |s| s.role == Role::Learner).await;
    assert!(ls.snapshot.is_some(), "learner got a snapshot: {ls:?}");
    let learner_dir = dir_of(root.path(), 4);
    assert!(
        common::kv::INSTALLED
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.starts_with(&learner_dir)),
        "the application heard of the installed snapshot"
    );
    for n in [0, 2_500, 4_999] {
        let key = format!("key{n:05}");
        assert_eq!(
            learner.read(|db| get(db, &key)).unwrap(),
            Some((1, format!("value{n}")))
        );
    }

    leader_node
        .change_membership(BTreeSet::from([1, 2, 3, 4]))
        .await
        .unwrap();
    let s = wait_for(&learner, "promotion", |s| s.role == Role::Follower).await;
    assert!(s.voters.contains(&4));
    let resp = learner.propose(put("from-4", "v")).await.unwrap();
    assert!(resp.ok);
    nodes.push(learner);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// The leader's commit index, after a read barrier.
async fn committed(leader: &Node) -> u64 {
    leader.read_barrier().await.unwrap().unwrap()
}

/// The commit index as confirmed by whichever node leads (leadership may be moving).
async fn committed_any(nodes: &[&Node]) -> u64 {
    let mut rx = nodes[0].watch();
    tokio::time::timeout(WAIT, async {
        loop {
            for n in nodes {
                if let Ok(Some(index)) = n.read_barrier().await {
                    return index;
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("no leader confirmed a read barrier")
}

/// Runs the futures concurrently on this task.
async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut pending: Vec<_> = futs.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                outs[*i] = Some(v);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outs.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_chosen_voter_and_proposals_made_meanwhile_commit() {
    let (net, root) = (LocalNet::new(), TempDir::new().unwrap());
    let nodes = three_nodes(&net, &root).await;
    let leader = wait_leader(&refs(&nodes)).await;
    for i in 0..10 {
        nodes[0].propose(put(&format!("k{i}"), "v")).await.unwrap();
    }
    let old = nodes.iter().find(|n| n.id() == leader).unwrap();
    let others: Vec<&Node> = nodes.iter().filter(|n| n.id() != leader).collect();
    let (target, bystander) = (others[1], others[0]);

    // Asked on a follower (forwarded to the leader); proposals arrive on the old leader
    // and on the bystander while the leader holds proposals back.
    let (moved, a, b) = tokio::join!(
        bystander.transfer_leader(Some(target.id())),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            old.propose(put("on-old-leader", "during")).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            bystander.propose(put("on-bystander", "during")).await
        },
    );
    assert_eq!(moved.unwrap(), target.id());
    assert!(a.unwrap().ok && b.unwrap().ok);
    assert_eq!(wait_leader(&refs(&nodes)).await, target.id());
    let s = wait_for(target, "the lease", |s| s.holds_lease()).await;
    assert_eq!(s.role, Role::Leader);
    assert!(!old.status().holds_lease());

    let index = committed(target).await;
    for n in &nodes {
        wait_applied(n, index).await;
        for key in ["on-old-leader", "on-bystander", "k9"] {
            assert!(
                n.read(|db| get(db, key)).unwrap().is_some(),
                "{key} on {}",
                n.id()
            );
        }
    }

    // Already the leader: nothing to do. Unknown node: refused with the voters listed.
    assert_eq!(
        old.transfer_leader(Some(target.id())).await.unwrap(),
        target.id()
    );
    let err = old.transfer_leader(Some(9)).await.unwrap_err();
    assert!(
        err.to_string().contains("not a member") && err.to_string().contains("1, 2, 3"),
        "{err}"
    );
    // No target: the most caught-up other voter takes over.
    let next = target.transfer_leader(None).await.unwrap();
    assert_ne!(next, target.id());
    assert_eq!(wait_leader(&refs(&nodes)).await, next);
    nodes[0].propose(put("after", "v")).await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_stops_claiming_leadership_once_its_lease_runs_out() {
    let (net, root) = (LocalNet::new(), TempDir::new().unwrap());
    let nodes = three_nodes(&net, &root).await;
    let leader = wait_leader(&refs(&nodes)).await;
    let cut = nodes.iter().find(|n| n.id() == leader).unwrap();
    wait_for(cut, "the lease", |s| s.holds_lease()).await;

    // openraft 0.9 keeps the role (no check-quorum), but the status no longer names a
    // leader, though no metrics change while nobody answers.
    net.isolate(addr(leader));
    let s = wait_for(cut, "the lease to run out", |s| s.leader.is_none()).await;
    assert_eq!(s.role, Role::Leader, "{s:?}");
    assert!(!s.holds_lease());

    // The majority's new leader holds its own lease.
    let majority: Vec<&Node> = nodes.iter().filter(|n| n.id() != leader).collect();
    let new_leader = wait_leader(&majority).await;
    let n = majority.iter().find(|n| n.id() == new_leader).unwrap();
    wait_for(n, "the new lease", |s| s.holds_lease()).await;

    // Healed, the old leader follows the new one.
    net.heal(addr(leader));
    wait_for(cut, "the new leader", |s| s.leader.is_some()).await;
    wait_leader(&refs(&nodes)).await;
    nodes[0].propose(put("after", "v")).await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_an_unreachable_voter_fails_and_the_leader_keeps_leading() {
    let (net, root) = (LocalNet::new(), TempDir::new().unwrap());
    let nodes = three_nodes(&net, &root).await;
    let leader = wait_leader(&refs(&nodes)).await;
    nodes[0].propose(put("a", "1")).await.unwrap();
    let old = nodes.iter().find(|n| n.id() == leader).unwrap();
    let target = nodes.iter().find(|n| n.id() != leader).unwrap();
    let bystander = nodes
        .iter()
        .find(|n| n.id() != leader && n.id() != target.id())
        .unwrap();

    net.isolate(addr(target.id()));
    let err = old.transfer_leader(Some(target.id())).await.unwrap_err();
    assert!(
        matches!(err, consensus::AdminError::NotTransferred(_)),
        "{err}"
    );
    assert!(err.to_string().contains("keeps leading"), "{err}");

    // Heartbeats and proposals are back: the leader keeps its lease and commits.
    wait_for(old, "the lease", |s| s.holds_lease()).await;
    bystander.propose(put("b", "2")).await.unwrap();
    assert_eq!(bystander.status().leader, Some(leader));
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
