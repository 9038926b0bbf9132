//! Cluster administration: the operations that only the leader can run, the messages
//! that carry them over [`RpcKind::Admin`](crate::rpc::RpcKind::Admin), and their
//! forwarding from any member to the leader.
//!
//! openraft 0.9 has no leadership transfer (it arrives with 0.10's
//! `trigger().transfer_leader`); the `transfer` module builds one from what 0.9 offers.

mod forward;
mod leader;
mod transfer;

pub(crate) use forward::{call_at, forward_to};
pub(crate) use leader::LeaderOps;
pub(crate) use transfer::{SendAdmin, Timings};

use crate::error::{AdminError, LeaderHint};
use crate::status::Status;
use crate::types::{Member, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// A cluster operation sent to the leader over [`RpcKind::Admin`](crate::rpc::RpcKind::Admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Add a non-voting member and wait until it has caught up.
    AddLearner {
        /// Its node id.
        id: NodeId,
        /// How to reach it.
        member: Member,
    },
    /// Add a member as a learner, wait until it has caught up, then make it a voter
    /// (what an enrolled node asks for).
    AddVoter {
        /// Its node id.
        id: NodeId,
        /// How to reach it.
        member: Member,
    },
    /// Make exactly these nodes the voters (learners are promoted, other voters removed).
    ChangeMembership {
        /// The new voter set.
        voters: BTreeSet<NodeId>,
    },
    /// Remove a node (voter or learner) from the cluster.
    RemoveNode {
        /// The node to remove.
        id: NodeId,
    },
    /// Confirm leadership with a quorum and answer the index a linearizable read must
    /// have applied.
    ReadBarrier,
    /// The leader's view of the cluster.
    Status,
    /// Hand leadership over to voter `to`, or to the most caught-up voter.
    TransferLeader {
        /// The voter that should lead; `None`: the leader picks.
        to: Option<NodeId>,
    },
    /// Sent by a leader handing over to the receiver: start an election now (the
    /// only admin request that runs on a follower).
    Campaign,
}

impl AdminRequest {
    /// What the operation is called in errors.
    pub(crate) fn what(&self) -> &'static str {
        match self {
            AdminRequest::AddLearner { .. } => "adding the learner",
            AdminRequest::AddVoter { .. } => "adding the voter",
            AdminRequest::ChangeMembership { .. } => "the membership change",
            AdminRequest::RemoveNode { .. } => "removing the node",
            AdminRequest::ReadBarrier => "the read barrier",
            AdminRequest::Status => "the status query",
            AdminRequest::TransferLeader { .. } => "the leadership transfer",
            AdminRequest::Campaign => "the election request",
        }
    }
}

/// The leader's answer to an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminAnswer {
    /// The change is committed.
    Done,
    /// The log index a linearizable read must have applied.
    ReadIndex(Option<u64>),
    /// The answering node's status.
    Status(Status),
    /// The leader after a transfer.
    Leader(NodeId),
}

/// Why the receiver did not carry out an [`AdminRequest`]; [`AdminError`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminFault {
    /// The receiver is not the leader; the leader it knows.
    NotLeader {
        /// Leader id and member, if one is known.
        leader: Option<(NodeId, Member)>,
    },
    /// No majority answered in time.
    NoQuorum {
        /// How long the receiver waited.
        waited_ms: u64,
    },
    /// The cluster is initialized already.
    AlreadyInitialized,
    /// The change is not allowed now.
    Rejected(String),
    /// Raft is stopped on the receiver.
    Stopped,
    /// A leadership transfer did not happen; why.
    NotTransferred(String),
}

/// The encoded answer to an [`AdminRequest`].
pub type AdminReply = Result<AdminAnswer, AdminFault>;

impl From<AdminError> for AdminFault {
    fn from(e: AdminError) -> AdminFault {
        match e {
            AdminError::NotLeader(h) => AdminFault::NotLeader { leader: h.leader },
            AdminError::NoQuorum { waited, .. } => AdminFault::NoQuorum {
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            },
            AdminError::AlreadyInitialized => AdminFault::AlreadyInitialized,
            AdminError::Rejected(r) => AdminFault::Rejected(r),
            AdminError::Stopped => AdminFault::Stopped,
            AdminError::NotTransferred(r) => AdminFault::NotTransferred(r),
            // The receiver never forwards (one hop), so this only reports a local oddity.
            other @ AdminError::Forward { .. } => AdminFault::Rejected(other.to_string()),
        }
    }
}

impl AdminFault {
    /// The local error for a fault the leader reported about `what`.
    pub(crate) fn into_error(self, what: &'static str) -> AdminError {
        match self {
            AdminFault::NotLeader { leader } => AdminError::NotLeader(LeaderHint { leader }),
            AdminFault::NoQuorum { waited_ms } => AdminError::NoQuorum {
                what,
                waited: Duration::from_millis(waited_ms),
            },
            AdminFault::AlreadyInitialized => AdminError::AlreadyInitialized,
            AdminFault::Rejected(r) => AdminError::Rejected(r),
            AdminFault::Stopped => AdminError::Stopped,
            AdminFault::NotTransferred(r) => AdminError::NotTransferred(r),
        }
    }
}
