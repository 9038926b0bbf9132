//! Enrollment: creating a cluster, admitting a new node with a one-time token, and
//! restarting a member from its data dir, all over the QUIC transport.
//!
//! The new node makes its own key and sends only a CSR; the issuer (a node holding the
//! CA key) checks the token, picks the node id and signs. The new node then starts,
//! authenticated, and asks the leader over [`RpcKind::Admin`](crate::rpc::RpcKind::Admin)
//! to add it as a learner and, once caught up, as a voter.

mod bootstrap;
mod enroller;
mod layout;
mod messages;
mod service;
mod token;

pub use bootstrap::{init_cluster, join_cluster, open_member, QuicConsensus, RunningNode};
pub use enroller::{EnrollError, Enroller, MAX_OUTSTANDING_TOKENS, TOKEN_REFUSED};
pub use messages::{JoinRequest, JoinResponse};
pub use service::JoinService;
pub use token::{JoinToken, TokenParseError, SECRET_LEN, TOKEN_PREFIX};

use crate::error::{AdminError, StartError};
use crate::net::{NetError, TlsError};
use crate::types::NodeId;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Creating, joining or reopening a member failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The data dir already holds an identity.
    #[error("{0} already holds a node identity: start it with open_member, or use an empty data dir to join as a new node")]
    AlreadyEnrolled(PathBuf),
    /// The data dir holds no identity.
    #[error("{0} holds no member: create a cluster with init_cluster or join one with a token")]
    NotEnrolled(PathBuf),
    /// The Raft address cannot be dialled by peers.
    #[error("raft address {0} cannot be dialled by peers: give the address other nodes reach this one at")]
    Address(SocketAddr),
    /// The issuer could not be reached.
    #[error("could not reach the issuing node at {addr}: {reason}; check that it runs and that this host reaches that address")]
    Unreachable {
        /// The issuer.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The issuer refused the enrollment.
    #[error("enrollment refused by {addr}: {reason}")]
    Refused {
        /// The issuer.
        addr: SocketAddr,
        /// Its reason.
        reason: String,
    },
    /// The issuer answered something that does not fit.
    #[error("the issuing node answered unexpectedly: {0}; are both nodes on the same version?")]
    Protocol(String),
    /// Enrolled, but the cluster did not add the node.
    #[error("enrolled as node {node_id} but not added to the cluster: {source}; restart it with open_member and add it from a member")]
    NotAdded {
        /// The id the node got.
        node_id: NodeId,
        /// Why the leader did not add it.
        #[source]
        source: AdminError,
    },
    /// The one-member cluster could not be initialized.
    #[error("could not initialize the cluster: {0}")]
    Initialize(#[source] AdminError),
    /// A certificate or key problem.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The QUIC endpoint could not be set up.
    #[error("QUIC transport: {0}; is the Raft address free and local?")]
    Net(#[from] NetError),
    /// Raft did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A file in the data dir could not be read or written.
    #[error("{path}: {source}; check the data dir's permissions and free space")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
