//! What can go wrong, phrased so the caller knows what to do next.

use crate::storage::StoreError;
use crate::types::{Member, NodeId};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Starting consensus failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The timing configuration is inconsistent.
    #[error("invalid consensus config: {0}")]
    Config(String),
    /// Raft refused to start (its storage read failed).
    #[error("raft did not start: {0}; check the data dir")]
    Raft(String),
}

/// A proposal was not (known to be) applied.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No majority acknowledged the command in time (or no leader could be reached).
    #[error("no quorum: not committed within {waited:?} ({cause}); retry later (it may still commit if the quorum returns, so read back before retrying a non-idempotent command)")]
    NoQuorum {
        /// How long we tried.
        waited: Duration,
        /// The last obstacle seen.
        cause: String,
    },
    /// The leader got the command but its answer was lost.
    #[error("outcome unknown: {reason}; read the state back before retrying")]
    Uncertain {
        /// What was lost.
        reason: String,
    },
    /// The command could not be serialized.
    #[error("the command could not be encoded: {0}")]
    Encode(String),
    /// The response could not be deserialized.
    #[error("the response could not be decoded: {0}; are all nodes running the same version?")]
    Decode(String),
    /// The leader refused the command itself.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Raft is stopped on this node.
    #[error("consensus is stopped on this node; restart it")]
    Stopped,
}

/// Who leads, as far as this node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's id and member, if one is known.
    pub leader: Option<(NodeId, Member)>,
}

impl fmt::Display for LeaderHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.leader {
            Some((id, m)) => write!(
                f,
                "not the leader; leader is node {id} at {}: send it there",
                m.raft_addr
            ),
            None => write!(
                f,
                "not the leader and no leader is known: retry after the election"
            ),
        }
    }
}

/// A membership change or linearizable read failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Only the leader does this.
    #[error("{0}")]
    NotLeader(LeaderHint),
    /// No majority answered in time.
    #[error("no quorum: {what} did not complete within {waited:?}; retry later")]
    NoQuorum {
        /// The operation.
        what: &'static str,
        /// How long we waited.
        waited: Duration,
    },
    /// `initialize` on a node that already has a membership.
    #[error(
        "the cluster is already initialized; add this node with add_learner on the leader instead"
    )]
    AlreadyInitialized,
    /// The change is not allowed now (another change in progress, unknown learner, ...).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Raft is stopped on this node.
    #[error("consensus is stopped on this node; restart it")]
    Stopped,
    /// A leadership transfer did not move leadership to the node asked for.
    #[error("leadership not transferred: {0}")]
    NotTransferred(String),
    /// The operation had to run on the leader, and sending it there failed.
    #[error("{what}: forwarding to the leader ({}) at {addr} failed: {reason}; check that node is up, or run the command on the leader", leader_name(.leader))]
    Forward {
        /// The operation.
        what: &'static str,
        /// The leader it was sent to, if known.
        leader: Option<NodeId>,
        /// Where it was sent.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
}

fn leader_name(leader: &Option<NodeId>) -> String {
    match leader {
        Some(id) => format!("node {id}"),
        None => "unknown id".into(),
    }
}

/// Shutdown did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// Something still holds the database after Raft stopped.
    #[error("raft stopped but the database was still open after {0:?}; drop read handles before shutdown")]
    StillOpen(Duration),
}
