//! Starting a member over QUIC: the first node of a new cluster, a node joining with a
//! token, and a restart from the data dir.

use super::enroller::Enroller;
use super::layout::{self, MemberRecord};
use super::messages::{JoinRequest, JoinResponse};
use super::service::JoinService;
use super::token::JoinToken;
use super::JoinError;
use crate::admin::AdminRequest;
use crate::app::App;
use crate::cluster::{Config, Consensus};
use crate::error::ShutdownError;
use crate::net::tls::CA_KEY_FILE;
use crate::net::{
    load_ca_cert, ClientOptions, ClusterCa, NodeIdentity, NodeKey, QuicClient, QuicServer,
};
use crate::rpc::{RpcClient, RpcError, RpcKind};
use crate::types::{Member, NodeId};
use crate::wire;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Consensus over the QUIC transport.
pub type QuicConsensus<A> = Consensus<A, QuicClient>;

/// Room above the longest operation bound for one RPC, so the transport never cuts off
/// an answer the other side is still entitled to give (Raft RPCs have their own bound).
const CALL_MARGIN: Duration = Duration::from_secs(10);

/// A started member: its Raft, the QUIC server answering its peers, and, on a node
/// holding the CA key, the enroller that issues join tokens.
pub struct RunningNode<A: App> {
    /// The Raft member.
    pub consensus: QuicConsensus<A>,
    /// The QUIC server answering peers.
    pub server: QuicServer,
    /// Issues join tokens; `None` on a node without the CA key.
    pub enroller: Option<Arc<Enroller>>,
}

impl<A: App> std::fmt::Debug for RunningNode<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("id", &self.consensus.id())
            .field("raft_addr", &self.server.local_addr())
            .finish_non_exhaustive()
    }
}

impl<A: App> RunningNode<A> {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.consensus.id()
    }

    /// The address its Raft transport listens on.
    pub fn raft_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops answering peers, then stops Raft and closes the store.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        self.server.shutdown().await;
        self.consensus.shutdown().await
    }
}

/// What [`launch`] needs besides the application.
struct Launch<'a> {
    data_dir: &'a Path,
    identity: &'a NodeIdentity,
    ca_pem: &'a str,
    raft_addr: SocketAddr,
    admin_addr: String,
    ca: Option<ClusterCa>,
}

fn check_addr(addr: SocketAddr) -> Result<(), JoinError> {
    if addr.ip().is_unspecified() {
        return Err(JoinError::Address(addr));
    }
    Ok(())
}

/// Binds the QUIC server, starts Raft behind it and records how the node is reached.
async fn launch<A: App>(
    l: Launch<'_>,
    app: A,
    config: Config,
) -> Result<RunningNode<A>, JoinError> {
    let id = l.identity.node_id();
    let service = JoinService::starting();
    // Bound first so a busy port fails before Raft touches the store, and so a port 0
    // request is recorded as the port really bound.
    let server = QuicServer::bind(l.raft_addr, l.identity, l.ca_pem, service.clone())?;
    let member = Member {
        raft_addr: server.local_addr(),
        admin_addr: l.admin_addr,
    };
    let options = ClientOptions {
        call_timeout: config.admin_timeout.max(config.propose_timeout) + CALL_MARGIN,
        ..ClientOptions::default()
    };
    let started = async {
        let client = QuicClient::with_options(Some(l.identity), l.ca_pem, options)?;
        let raft_dir = layout::raft_dir(l.data_dir);
        Ok::<_, JoinError>(
            Consensus::start(id, member.clone(), raft_dir, app, client, config).await?,
        )
    };
    let consensus = match started.await {
        Ok(c) => c,
        Err(e) => {
            server.shutdown().await;
            return Err(e);
        }
    };
    let enroller =
        l.ca.map(|ca| Arc::new(Enroller::new(ca, id, member.raft_addr, consensus.watch())));
    service.ready(consensus.handler(), enroller.clone());
    let node = RunningNode {
        consensus,
        server,
        enroller,
    };
    let record = MemberRecord {
        node_id: id,
        raft_addr: member.raft_addr,
        admin_addr: member.admin_addr,
    };
    if let Err(e) = layout::save_member(l.data_dir, &record) {
        let _ = node.shutdown().await;
        return Err(e);
    }
    Ok(node)
}

/// Creates a new cluster: a CA and this node's identity under `data_dir/tls/` (keys
/// mode 0600), the QUIC server on `raft_addr` (port 0 picks one), Raft, and a
/// one-member membership. The returned node holds the CA key and issues join tokens.
pub async fn init_cluster<A: App>(
    data_dir: impl AsRef<Path>,
    node_id: NodeId,
    raft_addr: SocketAddr,
    admin_addr: impl Into<String>,
    app: A,
    config: Config,
) -> Result<RunningNode<A>, JoinError> {
    let data_dir = data_dir.as_ref();
    check_addr(raft_addr)?;
    layout::ensure_fresh(data_dir)?;
    let tls = layout::create_tls_dir(data_dir)?;
    let ca = ClusterCa::generate(&config.cluster_name)?;
    ca.save(&tls)?;
    let identity = ca.issue(node_id, &[])?;
    identity.save(&tls)?;
    let ca_pem = ca.cert_pem().to_owned();
    let launch_args = Launch {
        data_dir,
        identity: &identity,
        ca_pem: &ca_pem,
        raft_addr,
        admin_addr: admin_addr.into(),
        ca: Some(ca),
    };
    let node = launch(launch_args, app, config).await?;
    let members = BTreeMap::from([(node_id, node.consensus.member().clone())]);
    if let Err(e) = node.consensus.initialize(members).await {
        let _ = node.shutdown().await;
        return Err(JoinError::Initialize(e));
    }
    Ok(node)
}

/// Restarts a member from its data dir (identity, address and Raft state as stored).
/// It rejoins the cluster it belonged to; a node holding the CA key issues tokens again
/// (tokens issued before the restart are gone: they lived in memory only).
pub async fn open_member<A: App>(
    data_dir: impl AsRef<Path>,
    app: A,
    config: Config,
) -> Result<RunningNode<A>, JoinError> {
    let data_dir = data_dir.as_ref();
    let record = layout::load_member(data_dir)?;
    let tls = layout::tls_dir(data_dir);
    let identity = NodeIdentity::load(&tls)?;
    if identity.node_id() != record.node_id {
        return Err(JoinError::Tls(crate::net::TlsError::Certificate(format!(
            "the certificate in {} names node {} but the data dir is node {}; restore the matching files",
            tls.display(),
            identity.node_id(),
            record.node_id
        ))));
    }
    let ca_pem = load_ca_cert(&tls)?;
    let ca = if tls.join(CA_KEY_FILE).exists() {
        Some(ClusterCa::load(&tls)?)
    } else {
        None
    };
    let launch_args = Launch {
        data_dir,
        identity: &identity,
        ca_pem: &ca_pem,
        raft_addr: record.raft_addr,
        admin_addr: record.admin_addr,
        ca,
    };
    launch(launch_args, app, config).await
}

/// Joins the cluster that issued `token`: enrolls anonymously (a fresh key, only the CSR
/// is sent), saves the identity under `data_dir/tls/`, starts the QUIC server on
/// `raft_addr` and Raft, then asks the leader, authenticated now, to add this node as a
/// learner and, once caught up, as a voter. Returns when it is a voter.
pub async fn join_cluster<A: App>(
    token: &JoinToken,
    raft_addr: SocketAddr,
    admin_addr: impl Into<String>,
    data_dir: impl AsRef<Path>,
    app: A,
    config: Config,
    requested_id: Option<NodeId>,
) -> Result<RunningNode<A>, JoinError> {
    let data_dir = data_dir.as_ref();
    let admin_addr = admin_addr.into();
    check_addr(raft_addr)?;
    layout::ensure_fresh(data_dir)?;
    let key = NodeKey::generate()?;
    let req = JoinRequest {
        secret: hex::encode(token.secret()),
        raft_addr,
        admin_addr: admin_addr.clone(),
        csr_pem: key.csr_pem().to_owned(),
        requested_id,
    };
    let resp = enroll(token, &req).await?;
    // The issuer was verified against the token's CA; a different CA in the answer
    // would give us a certificate nobody in this cluster trusts.
    if resp.ca_pem.trim() != token.ca_pem().trim() {
        return Err(JoinError::Protocol(
            "the CA certificate differs from the token's".into(),
        ));
    }
    let identity = key.into_identity(&resp.cert_pem)?;
    if identity.node_id() != resp.node_id {
        return Err(JoinError::Protocol(format!(
            "the certificate names node {} instead of {}",
            identity.node_id(),
            resp.node_id
        )));
    }
    let ca = ClusterCa::from_pem(token.ca_pem(), &resp.ca_key_pem)?;
    let tls = layout::create_tls_dir(data_dir)?;
    ca.save(&tls)?;
    identity.save(&tls)?;
    tracing::info!(node_id = resp.node_id, issuer = %token.issuer(), "enrolled; joining the cluster");
    let launch_args = Launch {
        data_dir,
        identity: &identity,
        ca_pem: token.ca_pem(),
        raft_addr,
        admin_addr,
        ca: Some(ca),
    };
    let node = launch(launch_args, app, config).await?;
    let add = AdminRequest::AddVoter {
        id: node.id(),
        member: node.consensus.member().clone(),
    };
    match node.consensus.admin_at(token.issuer(), add).await {
        Ok(_) => Ok(node),
        Err(source) => {
            let node_id = node.id();
            let _ = node.shutdown().await;
            Err(JoinError::NotAdded { node_id, source })
        }
    }
}

/// Sends the join request without a certificate, trusting only the token's CA.
async fn enroll(token: &JoinToken, req: &JoinRequest) -> Result<JoinResponse, JoinError> {
    let addr = token.issuer();
    let client = QuicClient::new(None, token.ca_pem())?;
    let bytes = wire::encode(req).map_err(|e| JoinError::Protocol(e.to_string()))?;
    let res = client.call(addr, RpcKind::Join, bytes).await;
    client.shutdown().await;
    let bytes = match res {
        Ok(bytes) => bytes,
        Err(RpcError::Remote { reason, .. } | RpcError::Refused { reason, .. }) => {
            return Err(JoinError::Refused { addr, reason })
        }
        Err(e) => {
            return Err(JoinError::Unreachable {
                addr,
                reason: e.to_string(),
            })
        }
    };
    wire::decode(&bytes).map_err(|e| JoinError::Protocol(e.to_string()))
}
