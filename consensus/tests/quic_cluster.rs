//! Three-node clusters over the real QUIC transport on 127.0.0.1: a cluster created with
//! `init_cluster`, nodes admitted with join tokens, admin operations forwarded from
//! followers, refused tokens and foreign certificates, leader loss and a full restart.

mod common;

use common::kv::{get, Kv, KvCmd};
use common::{fast_config, wait_for, WAIT};
use consensus::join::{JoinError, QuicConsensus, RunningNode};
use consensus::net::{ClusterCa, NodeIdentity, QuicClient, QuicServer};
use consensus::rpc::{RpcClient, RpcKind};
use consensus::{
    init_cluster, join_cluster, open_member, AdminError, Consensus, JoinToken, Member, NodeId,
    Role, Status,
};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

type Node = RunningNode<Kv>;

const TOKEN_TTL: Duration = Duration::from_secs(300);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn dir(root: &TempDir, name: &str) -> PathBuf {
    root.path().join(name)
}

fn put(key: &str, value: &str) -> KvCmd {
    KvCmd::Put {
        key: key.into(),
        value: value.into(),
    }
}

/// Waits until all `nodes` follow one leader among them; returns its id.
async fn wait_leader(nodes: &[&Node]) -> NodeId {
    let ids: BTreeSet<NodeId> = nodes.iter().map(|n| n.id()).collect();
    let first = wait_for(&nodes[0].consensus, "a leader", |s| {
        s.leader.is_some_and(|l| ids.contains(&l))
    })
    .await;
    let leader = first.leader.unwrap();
    let leader_node = nodes.iter().find(|n| n.id() == leader).unwrap();
    let s = wait_for(&leader_node.consensus, "leadership", |s| {
        s.role == Role::Leader
    })
    .await;
    for n in nodes {
        wait_for(&n.consensus, "the same leader", |x| {
            x.leader == Some(leader) && x.term == s.term
        })
        .await;
    }
    leader
}

/// Waits until every node sees exactly `voters` as the voters and no learners.
async fn wait_voters(nodes: &[&Node], voters: &[NodeId]) {
    let want: BTreeSet<NodeId> = voters.iter().copied().collect();
    for n in nodes {
        wait_for(&n.consensus, &format!("voters {want:?}"), |s| {
            s.voters == want && s.members.len() == want.len()
        })
        .await;
    }
}

fn token(issuer: &Node) -> JoinToken {
    let enroller = issuer.enroller.as_ref().expect("every member holds the CA");
    enroller.issue_token(TOKEN_TTL).unwrap()
}

async fn join(token: &JoinToken, root: &TempDir, name: &str, id: Option<NodeId>) -> Node {
    let admin = format!("127.0.0.1:80{}", name.len());
    let joined = join_cluster(
        token,
        any_port(),
        admin,
        dir(root, name),
        Kv,
        fast_config(),
        id,
    );
    tokio::time::timeout(WAIT * 2, joined)
        .await
        .expect("join did not finish in time")
        .unwrap()
}

/// Node 1 creates the cluster and leads it.
async fn first_node(root: &TempDir, config: consensus::Config) -> Node {
    let n1 = init_cluster(dir(root, "n1"), 1, any_port(), "127.0.0.1:8001", Kv, config)
        .await
        .unwrap();
    wait_for(&n1.consensus, "leadership", |s| s.role == Role::Leader).await;
    n1
}

/// Node 1 creates the cluster; two nodes join it with tokens.
async fn three_nodes(root: &TempDir) -> Vec<Node> {
    let n1 = first_node(root, fast_config()).await;
    let n2 = join(&token(&n1), root, "n2", None).await;
    // Id 2 is taken: the next free one after the highest is given instead.
    let n3 = join(&token(&n1), root, "n3", Some(2)).await;
    assert_eq!((n2.id(), n3.id()), (2, 3));
    let nodes = vec![n1, n2, n3];
    wait_voters(&nodes.iter().collect::<Vec<_>>(), &[1, 2, 3]).await;
    nodes
}

/// Proposes `key` on `on` and waits until every node has applied it; returns the index.
async fn write_everywhere(on: &Node, nodes: &[&Node], key: &str, value: &str) {
    let resp = on.consensus.propose(put(key, value)).await.unwrap();
    assert!(resp.ok);
    for n in nodes {
        // A follower's read barrier is forwarded; it returns once the write is applied here.
        n.consensus.read_barrier().await.unwrap();
        let got = n.consensus.read(|db| get(db, key)).unwrap();
        assert_eq!(
            got.map(|(_, v)| v).as_deref(),
            Some(value),
            "node {}",
            n.id()
        );
    }
}

async fn shutdown_all(nodes: Vec<Node>) {
    for n in nodes {
        tokio::time::timeout(WAIT, n.shutdown())
            .await
            .expect("shutdown did not finish in time")
            .unwrap();
    }
}

fn has_identity(dir: &Path) -> bool {
    dir.join("tls").join("node.crt").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_admit_voters_and_admin_works_from_a_follower() {
    let root = TempDir::new().unwrap();
    let nodes = three_nodes(&root).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader = wait_leader(&refs).await;
    for n in &nodes {
        write_everywhere(n, &refs, &format!("from-{}", n.id()), "v").await;
    }

    let follower = nodes.iter().find(|n| n.id() != leader).unwrap();
    let status = follower.consensus.cluster_status().await.unwrap();
    assert_eq!(status.id, leader, "the status comes from the leader");
    assert_eq!(status.voters, BTreeSet::from([1, 2, 3]));
    assert_eq!(status.matched.len(), 2, "the leader reports both followers");

    // A fourth member made by hand (certificate from the CA file), added and removed
    // through the follower.
    let ca = ClusterCa::load(&dir(&root, "n1").join("tls")).unwrap();
    let id4 = ca.issue(4, &[]).unwrap();
    let (n4, server4) = bare_member(&id4, ca.cert_pem(), &dir(&root, "n4")).await;
    let c = &follower.consensus;
    c.add_learner(4, n4.member().clone()).await.unwrap();
    wait_for(&n4, "joining as a learner", |s| s.members.contains_key(&4)).await;
    c.change_membership(BTreeSet::from([1, 2, 3, 4]))
        .await
        .unwrap();
    wait_for(&n4, "becoming a voter", |s| s.voters.contains(&4)).await;
    let resp = n4.propose(put("from-4", "v")).await.unwrap();
    assert!(resp.ok);
    c.remove_node(4).await.unwrap();
    wait_voters(&refs, &[1, 2, 3]).await;
    server4.shutdown().await;
    n4.shutdown().await.unwrap();
    // Still a working cluster of three.
    write_everywhere(follower, &refs, "after-4", "v").await;
    shutdown_all(nodes).await;
}

/// A member started with the plain API (no enrollment), for the admin calls to act on.
async fn bare_member(
    identity: &NodeIdentity,
    ca_pem: &str,
    data_dir: &Path,
) -> (QuicConsensus<Kv>, QuicServer) {
    // Bind first to learn the port; the handler comes once Raft runs.
    let service = consensus::join::JoinService::starting();
    let server = QuicServer::bind(any_port(), identity, ca_pem, service.clone()).unwrap();
    let member = Member {
        raft_addr: server.local_addr(),
        admin_addr: "127.0.0.1:8004".into(),
    };
    let client = QuicClient::new(Some(identity), ca_pem).unwrap();
    let node = Consensus::start(
        identity.node_id(),
        member,
        data_dir,
        Kv,
        client,
        fast_config(),
    )
    .await
    .unwrap();
    service.ready(node.handler(), None);
    (node, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_forged_and_expired_tokens_are_refused() {
    let root = TempDir::new().unwrap();
    let n1 = first_node(&root, fast_config()).await;
    let used = token(&n1);
    let n2 = join(&used, &root, "n2", None).await;
    let nodes = vec![n1, n2];
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_voters(&refs, &[1, 2]).await;

    let forged = JoinToken::new(used.issuer(), [0x5a; 32], used.ca_pem().to_owned());
    let expired = nodes[0]
        .enroller
        .as_ref()
        .unwrap()
        .issue_token(Duration::ZERO)
        .unwrap();
    for (name, bad) in [
        ("reused", &used),
        ("forged", &forged),
        ("expired", &expired),
    ] {
        let data_dir = dir(&root, name);
        let res = join_cluster(bad, any_port(), "x", &data_dir, Kv, fast_config(), None).await;
        match res {
            Err(JoinError::Refused { reason, .. }) => assert!(
                reason.contains("join token unknown, used or expired")
                    && reason.contains("switchctl cluster token"),
                "{name}: {reason}"
            ),
            other => panic!("{name} token: expected a refusal, got {other:?}"),
        }
        assert!(!has_identity(&data_dir), "{name}: no identity is saved");
    }
    // Keys are readable by their owner only.
    for file in [
        "n1/tls/ca.key",
        "n1/tls/node.key",
        "n2/tls/ca.key",
        "n2/tls/node.key",
    ] {
        let mode = std::fs::metadata(root.path().join(file)).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    // A token text that is not one at all is refused before any network.
    let garbled = "ssjoin1.not-a-token".parse::<JoinToken>().unwrap_err();
    assert!(garbled.to_string().contains("switchctl cluster token"));

    for n in &refs {
        let s = n.consensus.status();
        assert_eq!(s.voters, BTreeSet::from([1, 2]), "membership unchanged");
        assert_eq!(s.members.len(), 2);
    }
    // A fresh token still works after the refusals.
    let n3 = join(&token(&nodes[0]), &root, "n3", None).await;
    let mut nodes = nodes;
    nodes.push(n3);
    wait_voters(&nodes.iter().collect::<Vec<_>>(), &[1, 2, 3]).await;
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_gets_nothing() {
    let root = TempDir::new().unwrap();
    let nodes = three_nodes(&root).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader = wait_leader(&refs).await;
    write_everywhere(&nodes[0], &refs, "k", "v").await;
    let before: Vec<Status> = nodes.iter().map(|n| n.consensus.status()).collect();

    let ca_pem = std::fs::read_to_string(dir(&root, "n1").join("tls/ca.crt")).unwrap();
    let rogue_ca = ClusterCa::generate("rogue").unwrap();
    // It even claims the id of a real member.
    let rogue = rogue_ca.issue(2, &[]).unwrap();
    let trusting_ours = QuicClient::new(Some(&rogue), &ca_pem).unwrap();
    let trusting_its_own = QuicClient::new(Some(&rogue), rogue_ca.cert_pem()).unwrap();
    let write = br#"{"cmd":{"Put":{"key":"k","value":"rogue"}},"timeout_ms":1000}"#.to_vec();
    let status = br#""Status""#.to_vec();
    let change = br#"{"ChangeMembership":{"voters":[1]}}"#.to_vec();
    for n in &nodes {
        for client in [&trusting_ours, &trusting_its_own] {
            for (kind, payload) in [
                (RpcKind::ClientWrite, &write),
                (RpcKind::Admin, &status),
                (RpcKind::Admin, &change),
                (RpcKind::Vote, &status),
                (RpcKind::Join, &status),
            ] {
                let res = client.call(n.raft_addr(), kind, payload.clone()).await;
                assert!(res.is_err(), "node {}: {kind:?} answered {res:?}", n.id());
            }
        }
    }
    trusting_ours.shutdown().await;
    trusting_its_own.shutdown().await;

    // A token pointing at a member but carrying another CA cannot even enroll: the
    // member's certificate does not verify against it.
    let real = token(&nodes[0]);
    let fake = JoinToken::new(
        real.issuer(),
        *real.secret(),
        rogue_ca.cert_pem().to_owned(),
    );
    let res = join_cluster(
        &fake,
        any_port(),
        "x",
        dir(&root, "rogue"),
        Kv,
        fast_config(),
        None,
    )
    .await;
    assert!(matches!(res, Err(JoinError::Unreachable { .. })), "{res:?}");

    let leader_node = nodes.iter().find(|n| n.id() == leader).unwrap();
    leader_node.consensus.read_barrier().await.unwrap();
    for (n, was) in nodes.iter().zip(&before) {
        let s = n.consensus.status();
        assert_eq!((&s.voters, &s.members), (&was.voters, &was.members));
        let v = n.consensus.read(|db| get(db, "k")).unwrap();
        assert_eq!(v, Some((1, "v".to_string())), "node {}", n.id());
    }
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_elected_over_quic_when_the_leader_dies() {
    let root = TempDir::new().unwrap();
    let mut nodes = three_nodes(&root).await;
    let leader = wait_leader(&nodes.iter().collect::<Vec<_>>()).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    write_everywhere(&nodes[1], &refs, "before", "1").await;

    let pos = nodes.iter().position(|n| n.id() == leader).unwrap();
    let dead = nodes.remove(pos);
    tokio::time::timeout(WAIT, dead.shutdown())
        .await
        .unwrap()
        .unwrap();

    let survivors: Vec<&Node> = nodes.iter().collect();
    let new_leader = wait_leader(&survivors).await;
    assert_ne!(new_leader, leader);
    for (i, n) in nodes.iter().enumerate() {
        write_everywhere(n, &survivors, &format!("after-{i}"), "2").await;
    }
    for n in &nodes {
        let v = n.consensus.read(|db| get(db, "before")).unwrap();
        assert_eq!(v.map(|(_, v)| v).as_deref(), Some("1"));
    }
    // Admin from a follower still reaches the new leader.
    let follower = nodes.iter().find(|n| n.id() != new_leader).unwrap();
    let s = follower.consensus.cluster_status().await.unwrap();
    assert_eq!(s.id, new_leader);
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cluster_has_its_state_and_elects_a_leader() {
    let root = TempDir::new().unwrap();
    let nodes = three_nodes(&root).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_leader(&refs).await;
    for i in 0..10 {
        let on = &nodes[i % 3];
        write_everywhere(on, &refs, &format!("k{i}"), &format!("v{i}")).await;
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.raft_addr()).collect();
    shutdown_all(nodes).await;

    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let opened = open_member(dir(&root, name), Kv, fast_config())
            .await
            .unwrap();
        nodes.push(opened);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    assert_eq!(
        nodes.iter().map(|n| n.raft_addr()).collect::<Vec<_>>(),
        addrs,
        "each node is back on its recorded address"
    );
    assert!(
        nodes.iter().all(|n| n.enroller.is_some()),
        "every member holds the CA, so any of them admits new nodes"
    );
    wait_leader(&refs).await;
    wait_voters(&refs, &[1, 2, 3]).await;
    for n in &nodes {
        n.consensus.read_barrier().await.unwrap();
        for i in 0..10 {
            let v = n.consensus.read(|db| get(db, &format!("k{i}"))).unwrap();
            assert_eq!(v, Some((1, format!("v{i}"))), "node {} key k{i}", n.id());
        }
    }
    write_everywhere(&nodes[2], &refs, "after-restart", "ok").await;
    // With node 1 gone, node 3 still admits a new member: the cluster keeps the CA.
    let first = nodes.remove(0);
    first.shutdown().await.unwrap();
    wait_leader(&nodes.iter().collect::<Vec<_>>()).await;
    let n4 = join(&token(&nodes[1]), &root, "n4", None).await;
    assert_eq!(n4.id(), 4);
    n4.consensus.read_barrier().await.unwrap();
    let v = n4.consensus.read(|db| get(db, "after-restart")).unwrap();
    assert_eq!(v.map(|(_, v)| v).as_deref(), Some("ok"));
    nodes.push(n4);
    // Opening an enrolled dir as a new cluster or a joiner is refused.
    let again = init_cluster(dir(&root, "n2"), 9, any_port(), "x", Kv, fast_config()).await;
    assert!(
        matches!(again, Err(JoinError::AlreadyEnrolled(_))),
        "{again:?}"
    );
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_to_a_dead_leader_names_it() {
    let root = TempDir::new().unwrap();
    // Slow elections: node 2 keeps believing in leader 1 while the test asks it.
    let config = consensus::Config {
        heartbeat: Duration::from_millis(200),
        election_timeout_min: Duration::from_secs(10),
        election_timeout_max: Duration::from_secs(11),
        ..fast_config()
    };
    let n1 = first_node(&root, config.clone()).await;
    let t = token(&n1);
    let joined = join_cluster(&t, any_port(), "x", dir(&root, "n2"), Kv, config, None);
    let n2 = tokio::time::timeout(WAIT, joined).await.unwrap().unwrap();
    let nodes = [n1, n2];
    wait_voters(&nodes.iter().collect::<Vec<_>>(), &[1, 2]).await;
    let [n1, n2] = nodes;
    let leader_addr = n1.raft_addr();
    // Only the server stops: node 2 still believes in leader 1.
    n1.server.shutdown().await;
    match n2.consensus.cluster_status().await {
        Err(e @ AdminError::Forward { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("node 1") && text.contains(&leader_addr.to_string()),
                "{text}"
            );
        }
        other => panic!("expected a forwarding error naming node 1, got {other:?}"),
    }
    n1.consensus.shutdown().await.unwrap();
    n2.shutdown().await.unwrap();
}
