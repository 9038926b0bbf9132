//! The seam between Raft and the wire: requests between nodes travel as opaque bytes of
//! a known kind, so the Raft glue and the QUIC transport can each be tested alone.

use std::future::Future;
use std::net::SocketAddr;

/// What a request between nodes carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RpcKind {
    /// Raft AppendEntries (heartbeats and log replication).
    AppendEntries = 1,
    /// Raft RequestVote.
    Vote = 2,
    /// Raft InstallSnapshot (a snapshot sent to a lagging or new member).
    InstallSnapshot = 3,
    /// A proposal forwarded by a follower to the leader.
    ClientWrite = 4,
    /// Enrollment of a joining node with a one-time token: the only kind a peer without
    /// a cluster certificate may send.
    Join = 5,
    /// Cluster administration forwarded to the leader (membership changes, status).
    Admin = 6,
}

impl RpcKind {
    /// The kind for a wire byte.
    pub fn from_u8(b: u8) -> Option<RpcKind> {
        Some(match b {
            1 => RpcKind::AppendEntries,
            2 => RpcKind::Vote,
            3 => RpcKind::InstallSnapshot,
            4 => RpcKind::ClientWrite,
            5 => RpcKind::Join,
            6 => RpcKind::Admin,
            _ => return None,
        })
    }
}

/// Who sent a request, as proven by the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A member with a certificate from the cluster CA, naming this node id.
    Node(u64),
    /// No client certificate: only [`RpcKind::Join`] is served to it.
    Anonymous,
}

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// No connection could be made (down, refused, TLS rejected).
    #[error("{addr} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("{addr} did not answer in time")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
    },
    /// The peer refused the request (unauthenticated, unknown kind, too large).
    #[error("refused by {addr}: {reason}")]
    Refused {
        /// The peer.
        addr: SocketAddr,
        /// Its reason.
        reason: String,
    },
    /// The peer's handler returned an error.
    #[error("{addr} failed: {reason}")]
    Remote {
        /// The peer.
        addr: SocketAddr,
        /// The handler's message.
        reason: String,
    },
}

/// Sends a request to a peer and waits for its answer.
pub trait RpcClient: Send + Sync + 'static {
    /// One request, one answer.
    fn call(
        &self,
        addr: SocketAddr,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, RpcError>> + Send;
}

/// Answers requests that arrive from peers.
pub trait RpcHandler: Send + Sync + 'static {
    /// Handles one request; `Err` is sent back as [`RpcError::Remote`].
    fn handle(
        &self,
        peer: PeerIdentity,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}
