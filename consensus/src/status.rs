//! A node's status, derived from openraft's metrics into our own types.

use crate::types::{Member, NodeId};
use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

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
    /// The leader it can rely on, if any. `None` while no leader is known, and also on a
    /// leader that has not heard from a majority within the leader lease (cut off, or
    /// handing leadership over): by then the others may have elected a successor, so
    /// nothing it promises would hold. See [`Status::holds_lease`].
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

impl Status {
    /// True on a leader whose lease is valid: a majority acknowledged it within the
    /// leader lease, so no other leader can exist yet (openraft dates an acknowledgement
    /// by when the leader sent the request, before the follower's own lease began, and a
    /// follower votes for no one else within its lease). What may own cluster-wide side
    /// effects (the virtual IP, timers of calls and bindings) checks this.
    pub fn holds_lease(&self) -> bool {
        self.role == Role::Leader && self.leader == Some(self.id)
    }
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

/// When a majority last acknowledged this node as leader, as far as the metrics say.
///
/// openraft reports the age at the moment it published the metrics, so it is turned into
/// an instant when seen; the age then keeps growing between publications.
fn quorum_ack_at(m: &RaftMetrics<NodeId, Member>, seen: Instant) -> Option<Instant> {
    let age = Duration::from_millis(m.millis_since_quorum_ack?);
    // Older than the clock's origin can only mean long ago: no lease either way.
    seen.checked_sub(age)
}

fn from_metrics(
    m: &RaftMetrics<NodeId, Member>,
    committed: &AtomicU64,
    lease_valid: bool,
) -> Status {
    let membership = m.membership_config.membership();
    let role = role(m.state);
    Status {
        id: m.id,
        role,
        term: m.current_term,
        leader: if role == Role::Leader && !lease_valid {
            None
        } else {
            m.current_leader
        },
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
///
/// A leader's lease is valid while a majority acknowledged it within `lease`. Metrics are
/// published when something changes, not when time passes, so the lease is also checked
/// every `recheck` and at the instant it runs out: a cut-off leader stops claiming
/// leadership when its lease ends.
pub(crate) fn track(
    mut metrics: watch::Receiver<RaftMetrics<NodeId, Member>>,
    committed: Arc<AtomicU64>,
    lease: Duration,
    recheck: Duration,
) -> watch::Receiver<Status> {
    let mut ack_at = quorum_ack_at(&metrics.borrow(), Instant::now());
    let valid = move |ack_at: Option<Instant>| ack_at.is_some_and(|t| t.elapsed() < lease);
    let first = from_metrics(&metrics.borrow_and_update(), &committed, valid(ack_at));
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(recheck);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // The lease ends at a known instant: wake then rather than at the next tick,
            // so that a leader cut off lets go of what it holds (the virtual IP) before
            // any other member can have been elected.
            let expiry = ack_at
                .map(|t| t + lease)
                .filter(|t| *t > Instant::now())
                .unwrap_or_else(|| Instant::now() + recheck);
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    ack_at = quorum_ack_at(&metrics.borrow(), Instant::now());
                }
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(expiry) => {}
            }
            let next = from_metrics(&metrics.borrow_and_update(), &committed, valid(ack_at));
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
