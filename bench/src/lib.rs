//! Benchmarks live in the shell drivers next to this crate (`make bench`); this crate holds
//! the Rust helpers its bins share: a consensus cluster of this process's members over
//! QUIC with mutual TLS on loopback, applying the node's own replicated state; and the
//! pieces of the media relay benchmark ([`rtp`]); a minimal SIP phone for the VIP failover
//! benchmark ([`sipua`]).

pub mod rtp;
pub mod sipua;

use consensus::net::{ClusterCa, NodeIdentity, QuicClient, QuicServer};
use consensus::{Config, Consensus, Member};
use node::cluster::ReplicatedState;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One member of a bench cluster.
pub type ClusterMember = Consensus<ReplicatedState, QuicClient>;

/// A cluster started by [`start_cluster`].
pub struct BenchCluster {
    /// The cluster's CA (to issue certificates to members added later).
    pub ca: ClusterCa,
    /// The members, node ids 1..=n in order.
    pub nodes: Vec<Arc<ClusterMember>>,
    /// Their RPC servers.
    pub servers: Vec<QuicServer>,
}

impl BenchCluster {
    /// The member that leads now (the first one if none is known).
    pub fn leader(&self) -> Arc<ClusterMember> {
        let id = self.nodes[0].watch().borrow().leader.unwrap_or(1);
        self.nodes
            .iter()
            .find(|n| n.id() == id)
            .cloned()
            .unwrap_or_else(|| self.nodes[0].clone())
    }

    /// Stops the servers, then the members.
    pub async fn shutdown(self) {
        for s in self.servers {
            s.shutdown().await;
        }
        for n in self.nodes {
            if let Ok(m) = Arc::try_unwrap(n) {
                let _ = m.shutdown().await;
            }
        }
    }
}

/// A free UDP port on loopback (for a QUIC listener).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts member `id` in `dir` with a certificate from `ca`, serving its RPCs on `addr`
/// through `wrap(handler)` (the identity, to serve Raft as is).
pub async fn start_member<H: consensus::rpc::RpcHandler>(
    ca: &ClusterCa,
    id: u64,
    addr: SocketAddr,
    dir: &Path,
    app: ReplicatedState,
    config: Config,
    wrap: impl FnOnce(consensus::RaftHandler) -> H,
) -> anyhow::Result<(Arc<ClusterMember>, QuicServer)> {
    let identity: NodeIdentity = ca.issue(id, &[])?;
    let client = QuicClient::new(Some(&identity), ca.cert_pem())?;
    let member = Member {
        raft_addr: addr,
        admin_addr: String::new(),
    };
    let node = Consensus::start(id, member, dir, app, client, config).await?;
    let server = QuicServer::bind(addr, &identity, ca.cert_pem(), wrap(node.handler()))?;
    Ok((Arc::new(node), server))
}

/// Starts `dirs.len()` members (ids 1..=n), initializes them as one cluster and waits
/// (up to 10 s) until it has a leader.
pub async fn start_cluster(
    dirs: &[tempfile::TempDir],
    config: Config,
) -> anyhow::Result<BenchCluster> {
    let ca = ClusterCa::generate("bench")?;
    let addrs: Vec<SocketAddr> = (0..dirs.len())
        .map(|_| free_addr())
        .collect::<anyhow::Result<_>>()?;
    let members: BTreeMap<u64, Member> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let m = Member {
                raft_addr: *a,
                admin_addr: String::new(),
            };
            (i as u64 + 1, m)
        })
        .collect();
    let (mut nodes, mut servers) = (Vec::new(), Vec::new());
    for (i, dir) in dirs.iter().enumerate() {
        let (node, server) = start_member(
            &ca,
            i as u64 + 1,
            addrs[i],
            dir.path(),
            ReplicatedState::default(),
            config.clone(),
            |h| h,
        )
        .await?;
        nodes.push(node);
        servers.push(server);
    }
    nodes[0].initialize(members).await?;
    let mut w = nodes[0].watch();
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.borrow().leader.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "no leader within 10 s");
        let _ = tokio::time::timeout(Duration::from_millis(200), w.changed()).await;
    }
    Ok(BenchCluster { ca, nodes, servers })
}
