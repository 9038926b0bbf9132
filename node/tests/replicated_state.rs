//! The node's typed commands replicated by a real three-member Raft cluster over QUIC
//! with mutual TLS, each member's state in RocksDB: what one node writes, every node
//! reads back, CDRs numbered the same everywhere.

use consensus::net::{ClusterCa, QuicClient, QuicServer};
use consensus::{Config, Consensus, Member};
use node::calls::cdr::{Cdr, Disposition};
use node::cluster::{ClusterPersist, ReplicatedState};
use node::persist::{Persist, Written};
use node::registrar::Binding;
use node::routing::Extension;
use node::sip::{Peer, Transport};
use node::store::{self, Command, Expect, Outcome};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

type ClusterMember = Consensus<ReplicatedState, QuicClient>;

/// A loopback UDP port free right now (QUIC binds it next).
fn free_udp() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn cdr(id: &str) -> Cdr {
    Cdr {
        call_id: id.into(),
        caller: "1001".into(),
        callee: "1002".into(),
        start: "2026-11-23T00:00:00.000Z".into(),
        answer: None,
        end: "2026-11-23T00:00:01.000Z".into(),
        duration: 1,
        billsec: 0,
        disposition: Disposition::NoAnswer,
        hangup_cause: "no_answer".into(),
        sip_status: 480,
        hangup_by: None,
        media: None,
    }
}

/// Waits until `node` has applied everything committed so far (the leader's read
/// index), so that what it reads next includes every write acknowledged before.
async fn caught_up(node: &ClusterMember) {
    tokio::time::timeout(Duration::from_secs(10), node.read_barrier())
        .await
        .expect("caught up in time")
        .expect("a read index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_written_on_a_follower_are_read_back_on_every_member() {
    let ca = ClusterCa::generate("test").unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_udp()).collect();
    let members: BTreeMap<u64, Member> = (0..3)
        .map(|i| {
            let m = Member {
                raft_addr: addrs[i],
                admin_addr: String::new(),
            };
            (i as u64 + 1, m)
        })
        .collect();
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    for i in 0..3 {
        let id = i as u64 + 1;
        let identity = ca.issue(id, &["127.0.0.1".into()]).unwrap();
        let client = QuicClient::new(Some(&identity), ca.cert_pem()).unwrap();
        let node = Consensus::start(
            id,
            members[&id].clone(),
            dirs[i].path(),
            ReplicatedState::default(),
            client,
            Config::default(),
        )
        .await
        .unwrap();
        servers.push(QuicServer::bind(addrs[i], &identity, ca.cert_pem(), node.handler()).unwrap());
        nodes.push(node);
    }
    nodes[0].initialize(members.clone()).await.unwrap();
    // Wait for a leader, then write through a follower (forwarded to the leader).
    let mut w = nodes[0].watch();
    let leader = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(l) = w.borrow().leader {
                return l;
            }
            w.changed().await.unwrap();
        }
    })
    .await
    .expect("a leader");
    let follower = nodes.iter().find(|n| n.id() != leader).unwrap();

    let binding = Binding {
        contact: "sip:1001@10.0.0.5:5060".into(),
        expires_at: 4_000_000_000,
        q: 1.0,
        call_id: "reg-1".into(),
        cseq: 7,
        source: Peer {
            transport: Transport::Udp,
            addr: "10.0.0.5:5060".parse().unwrap(),
        },
        user_agent: Some("phone".into()),
    };
    // Versioned configuration: a create conflicts with an existing extension, and a
    // change based on an outdated version conflicts with the newer one, wherever
    // each was proposed.
    let alice = Extension {
        number: "1001".into(),
        name: "Alice".into(),
        password: "pw1001".into(),
        max_contacts: None,
        trusted_ips: vec![],
    };
    let put = |name: &str, expect: Expect| Command::PutExtension {
        extension: Extension {
            name: name.into(),
            ..alice.clone()
        },
        expect,
    };
    let other = nodes.iter().find(|n| n.id() != follower.id()).unwrap();
    assert_eq!(
        follower.propose(put("Al", Expect::Absent)).await.unwrap(),
        Outcome::Version(1)
    );
    assert_eq!(
        other.propose(put("Bob", Expect::Absent)).await.unwrap(),
        Outcome::Conflict {
            exists: true,
            version: 1
        }
    );
    assert_eq!(
        other
            .propose(put("Alice", Expect::Version(1)))
            .await
            .unwrap(),
        Outcome::Version(2)
    );
    assert_eq!(
        follower
            .propose(put("Stale", Expect::Version(1)))
            .await
            .unwrap(),
        Outcome::Conflict {
            exists: true,
            version: 2
        }
    );
    let cmds = vec![
        Command::PutBinding {
            aor: "1001".into(),
            binding: binding.clone(),
        },
        Command::AppendCdr(cdr("c1")),
        Command::AppendCdr(cdr("c2")),
    ];
    for c in cmds {
        follower.propose(c).await.unwrap();
    }
    for n in &nodes {
        caught_up(n).await;
        let (exts, binds, cdrs) = n
            .read(|db| {
                (
                    store::extensions(db).unwrap(),
                    store::bindings(db).unwrap(),
                    store::cdrs(db).unwrap(),
                )
            })
            .unwrap();
        assert_eq!(exts.len(), 1, "node {}", n.id());
        assert_eq!(
            exts[0].name, "Alice",
            "the stale change was refused everywhere"
        );
        let version = n.read(|db| store::extension(db, "1001").unwrap()).unwrap();
        assert_eq!(version.map(|(_, v)| v), Some(2));
        assert_eq!(binds.len(), 1);
        assert_eq!(binds[0].0, "1001");
        assert_eq!(binds[0].1.contact, binding.contact);
        let ids: Vec<String> = cdrs.into_iter().map(|c| c.call_id).collect();
        assert_eq!(ids, ["c1", "c2"], "same CDR order on node {}", n.id());
        let next = n.read(|db| store::next_cdr_number(db).unwrap()).unwrap();
        assert_eq!(next, 3, "same CDR numbering on node {}", n.id());
    }

    // The core's write path: a ClusterPersist on a follower proposes one batch and
    // reports its outcome on the completion channel.
    let follower_id = follower.id();
    let idx = nodes.iter().position(|n| n.id() == follower_id).unwrap();
    let shared = std::sync::Arc::new(nodes.remove(idx));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut persist = ClusterPersist::new(shared.clone(), tx);
    let second = Binding {
        contact: "sip:1001@10.0.0.6:5060".into(),
        ..binding.clone()
    };
    let w = persist.write(
        42,
        vec![
            Command::PutBinding {
                aor: "1001".into(),
                binding: second,
            },
            Command::AppendCdr(cdr("c3")),
        ],
    );
    assert!(matches!(w, Written::Pending));
    let (id, result) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("completion in time")
        .expect("a completion");
    assert_eq!(id, 42);
    assert_eq!(result, Ok(()));
    for n in nodes.iter().chain(std::iter::once(&*shared)) {
        caught_up(n).await;
        let (binds, cdrs) = n
            .read(|db| (store::bindings(db).unwrap(), store::cdrs(db).unwrap()))
            .unwrap();
        assert_eq!(binds.len(), 2, "both contacts on node {}", n.id());
        assert_eq!(cdrs.len(), 3);
    }
    drop(persist);
    // The proposing task drops its handle just after reporting the outcome.
    let mut shared = shared;
    let member = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match std::sync::Arc::try_unwrap(shared) {
                Ok(m) => return m,
                Err(again) => shared = again,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the proposal task let go of the member");
    nodes.push(member);

    for s in servers {
        s.shutdown().await;
    }
    for n in nodes {
        let _ = n.shutdown().await;
    }
}
