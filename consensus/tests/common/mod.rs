#![allow(dead_code)]

pub mod kv;
pub mod net;

use consensus::{Config, Consensus, Member, NodeId, Role, Status};
use kv::Kv;
use net::{LocalClient, LocalNet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub type Node = Consensus<Kv, LocalClient>;

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn addr(id: NodeId) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16))
}

pub fn member(id: NodeId) -> Member {
    Member {
        raft_addr: addr(id),
        admin_addr: format!("127.0.0.1:{}", 8000 + id),
    }
}

pub fn dir_of(root: &Path, id: NodeId) -> PathBuf {
    root.join(format!("node{id}"))
}

/// Starts node `id` with its data in `root/node<id>` and plugs it into `net`.
pub async fn start(net: &Arc<LocalNet>, root: &Path, id: NodeId, config: Config) -> Node {
    let node = start_unplugged(net, root, id, config).await;
    net.serve(addr(id), node.handler());
    node
}

/// Starts node `id` without answering its peers yet.
pub async fn start_unplugged(net: &Arc<LocalNet>, root: &Path, id: NodeId, config: Config) -> Node {
    Consensus::start(
        id,
        member(id),
        dir_of(root, id),
        Kv,
        net.client(id, addr(id)),
        config,
    )
    .await
    .unwrap()
}

/// Waits until `node`'s status satisfies `pred` (any transport).
pub async fn wait_for<C: consensus::rpc::RpcClient>(
    node: &Consensus<Kv, C>,
    what: &str,
    pred: impl Fn(&Status) -> bool,
) -> Status {
    let mut rx = node.watch();
    let res = tokio::time::timeout(WAIT, async {
        loop {
            {
                let s = rx.borrow_and_update();
                if pred(&s) {
                    return s.clone();
                }
            }
            if rx.changed().await.is_err() {
                panic!("node {} stopped while waiting for {what}", node.id());
            }
        }
    })
    .await;
    match res {
        Ok(s) => s,
        Err(_) => panic!(
            "node {}: timed out waiting for {what}; status {:?}",
            node.id(),
            node.status()
        ),
    }
}

/// Waits until every node agrees on one leader among them, and returns its id.
pub async fn wait_leader(nodes: &[&Node]) -> NodeId {
    let first = wait_for(nodes[0], "a leader", |s| {
        s.leader.is_some_and(|l| nodes.iter().any(|n| n.id() == l))
    })
    .await;
    let leader = first.leader.unwrap();
    let leader_node = nodes.iter().find(|n| n.id() == leader).unwrap();
    let s = wait_for(leader_node, "leadership", |s| s.role == Role::Leader).await;
    for n in nodes {
        wait_for(n, "the same leader", |x| {
            x.leader == Some(leader) && x.term == s.term
        })
        .await;
    }
    leader
}

/// Waits until `node` has applied at least `index`.
pub async fn wait_applied(node: &Node, index: u64) {
    wait_for(node, &format!("applied index {index}"), |s| {
        s.applied.is_some_and(|a| a >= index)
    })
    .await;
}

pub fn fast_config() -> Config {
    Config {
        propose_timeout: Duration::from_secs(5),
        admin_timeout: Duration::from_secs(20),
        ..Config::default()
    }
}
