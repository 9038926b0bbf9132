//! A node's status, derived from openraft's metrics into our own types.

use crate::types::{Member, NodeId};
use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Receives the log, does not vote.
    Learner,
    /// Votes and follows the leader.
    Follower,
    /// Campaigning for leadership.
    Candidate,
    /// Leads: orders and commits proposals.
    Leader,
    /// Raft is stopped.
    Shutdown,
}

/// A node's view of the cluster and its own progress (also sent over
/// [`RpcKind::Admin`](crate::rpc::RpcKind::Admin) when a member asks the leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// The leader it knows, if any.
    pub leader: Option<NodeId>,
    /// Index of the last log entry.
    pub last_log: Option<u64>,
    /// Index of the last committed entry (as of the last status change).
    pub committed: Option<u64>,
    /// Index of the last applied entry.
    pub applied: Option<u64>,
    /// Last index covered by the current snapshot.
    pub snapshot: Option<u64>,
    /// Last purged log index.
    pub purged: Option<u64>,
    /// Voting members.
    pub voters: BTreeSet<NodeId>,
    /// Every member (voters and learners).
    pub members: BTreeMap<NodeId, Member>,
    /// On the leader: each follower's highest replicated index.
    pub matched: BTreeMap<NodeId, Option<u64>>,
}

fn role(state: ServerState) -> Role {
    match state {
        ServerState::Learner => Role::Learner,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Leader => Role::Leader,
        ServerState::Shutdown => Role::Shutdown,
    }
}

fn from_metrics(m: &RaftMetrics<NodeId, Member>, committed: &AtomicU64) -> Status {
    let membership = m.membership_config.membership();
    Status {
        id: m.id,
        role: role(m.state),
        term: m.current_term,
        leader: m.current_leader,
        last_log: m.last_log_index,
        committed: committed.load(Ordering::Relaxed).checked_sub(1),
        applied: m.last_applied.as_ref().map(|l| l.index),
        snapshot: m.snapshot.as_ref().map(|l| l.index),
        purged: m.purged.as_ref().map(|l| l.index),
        voters: membership.voter_ids().collect(),
        members: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        matched: m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != m.id)
                    .map(|(id, l)| (*id, l.as_ref().map(|l| l.index)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Follows Raft's metrics until Raft stops, publishing a [`Status`] only when it changed.
pub(crate) fn track(
    mut metrics: watch::Receiver<RaftMetrics<NodeId, Member>>,
    committed: Arc<AtomicU64>,
) -> watch::Receiver<Status> {
    let first = from_metrics(&metrics.borrow_and_update(), &committed);
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while metrics.changed().await.is_ok() {
            let next = from_metrics(&metrics.borrow_and_update(), &committed);
            tx.send_if_modified(|cur| {
                let changed = *cur != next;
                if changed {
                    *cur = next;
                }
                changed
            });
        }
        tx.send_modify(|s| {
            s.role = Role::Shutdown;
            s.leader = None;
        });
    });
    rx
}
