//! Leadership transfer on openraft 0.9, which has none (0.10 brings
//! `trigger().transfer_leader`).
//!
//! What 0.9 offers instead: a follower that heard from its leader within the leader
//! lease (`election_timeout_max`) refuses to vote for anyone else, and campaigns on its
//! own only after lease + election timeout of silence; a leader ignores
//! `trigger().elect()`, but grants a higher-term vote to a candidate whose log is at
//! least as long as its own, and steps down (`Engine::handle_vote_req`). So the leader
//! hands over by:
//!
//! 1. holding proposals and read barriers back (whatever it replicates renews the
//!    followers' leases); they queue behind the transfer instead of failing;
//! 2. waiting until the target has its whole log, so every voter grants it the vote;
//! 3. stopping heartbeats until the lease has run out on the followers (and in its own
//!    [`Status`](crate::Status), so it no longer claims to lead);
//! 4. asking the target to campaign ([`AdminRequest::Campaign`]) before any other
//!    follower's own timer (lease + `election_timeout_min`) fires;
//! 5. waiting, bounded, for a new leader to show in its own metrics.
//!
//! Heartbeats and proposals resume afterwards whatever happened; queued proposals then
//! find this node a follower and go to the new leader.

use super::leader::LeaderOps;
use super::{AdminAnswer, AdminRequest};
use crate::error::AdminError;
use crate::types::{Member, NodeId, Raft};
use openraft::{RaftMetrics, ServerState};
use std::cmp::Reverse;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long the target has to accept the election request.
pub(crate) const CAMPAIGN_WAIT: Duration = Duration::from_secs(1);

/// How long the election may take once the target campaigns.
const ELECTION_WAIT: Duration = Duration::from_secs(3);

/// Sends an admin request to the member `id` at `addr` and waits up to the given time for
/// its answer; `Err` says what failed. Boxed so [`LeaderOps`] stays free of the
/// transport's type.
pub(crate) type SendAdmin = Arc<
    dyn Fn(
            NodeId,
            SocketAddr,
            AdminRequest,
            Duration,
        ) -> Pin<Box<dyn Future<Output = Result<AdminAnswer, AdminError>> + Send>>
        + Send
        + Sync,
>;

/// The Raft timers a transfer is timed against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    /// openraft's leader lease (`election_timeout_max`).
    pub(crate) lease: Duration,
    /// The heartbeat interval.
    pub(crate) heartbeat: Duration,
    /// The shortest election timeout.
    pub(crate) election_timeout_min: Duration,
}

impl Timings {
    /// How long heartbeats stay off before the target campaigns: the lease has run out
    /// on every follower, even one that got a heartbeat sent just before they stopped,
    /// and no follower's own timer (lease + `election_timeout_min`) has fired yet.
    fn silence(&self) -> Duration {
        self.lease + self.heartbeat.min(self.election_timeout_min / 2)
    }
}

type Metrics = RaftMetrics<NodeId, Member>;

/// Heartbeats are off exactly while this lives, so no way out of a transfer (error,
/// panic) leaves them off.
struct HeartbeatsOff(Raft);

impl HeartbeatsOff {
    fn new(raft: &Raft) -> HeartbeatsOff {
        raft.runtime_config().heartbeat(false);
        HeartbeatsOff(raft.clone())
    }
}

impl Drop for HeartbeatsOff {
    fn drop(&mut self) {
        self.0.runtime_config().heartbeat(true);
    }
}

/// The last log index `id` is known to have, on a leader.
fn matched(m: &Metrics, id: NodeId) -> Option<u64> {
    m.replication.as_ref()?.get(&id)?.as_ref().map(|l| l.index)
}

/// The voter to hand over to: `to` if it may lead, else the most caught-up other voter
/// (the lowest id among equals). `Ok(None)`: this node is `to` already.
fn pick(m: &Metrics, to: Option<NodeId>) -> Result<Option<NodeId>, AdminError> {
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let list = |ids: &[NodeId]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match to {
        Some(t) if t == m.id => Ok(None),
        Some(t) if voters.contains(&t) => Ok(Some(t)),
        Some(t) if membership.get_node(&t).is_some() => Err(AdminError::Rejected(format!(
            "node {t} is a learner and only voters can lead; pick one of the voters {}",
            list(&voters)
        ))),
        Some(t) => Err(AdminError::Rejected(format!(
            "node {t} is not a member; pick one of the voters {}",
            list(&voters)
        ))),
        None => voters
            .iter()
            .copied()
            .filter(|v| *v != m.id)
            .max_by_key(|v| (matched(m, *v), Reverse(*v)))
            .map(Some)
            .ok_or_else(|| {
                AdminError::Rejected(format!(
                    "node {} is the only voter, so there is no one to hand leadership to; \
                     add members first",
                    m.id
                ))
            }),
    }
}

/// Waits up to `wait` for metrics satisfying `pred`; on timeout (or Raft stopping),
/// `Err` with the last metrics seen.
async fn wait_metrics(
    raft: &Raft,
    wait: Duration,
    pred: impl Fn(&Metrics) -> bool,
) -> Result<Metrics, Metrics> {
    let mut rx = raft.metrics();
    let found = tokio::time::timeout(wait, async {
        rx.wait_for(|m| pred(m)).await.map(|m| m.clone())
    })
    .await;
    match found {
        Ok(Ok(m)) => Ok(m),
        _ => Err(raft.metrics().borrow().clone()),
    }
}

fn not_transferred(reason: String) -> AdminError {
    AdminError::NotTransferred(reason)
}

impl LeaderOps {
    /// The longest a transfer takes here: in-flight proposals and the target's
    /// catch-up (one read timeout each), the silence, the election request and the
    /// election.
    pub(super) fn transfer_budget(&self) -> Duration {
        2 * self.read_timeout + self.timings.silence() + CAMPAIGN_WAIT + ELECTION_WAIT
    }

    /// Hands leadership to voter `to` (or the most caught-up voter); answers the leader
    /// afterwards. One transfer at a time.
    pub(super) async fn transfer_leader(&self, to: Option<NodeId>) -> Result<NodeId, AdminError> {
        let Ok(one) = self.transfer.clone().try_lock_owned() else {
            return Err(AdminError::Rejected(
                "a leadership transfer is under way already; wait for it, then check the \
                 cluster status"
                    .into(),
            ));
        };
        let ops = self.clone();
        // Its own task: a caller that gives up (its request dropped) must not stop the
        // transfer halfway, with heartbeats or proposals still held back.
        let task = tokio::spawn(async move {
            let res = ops.hand_over(to).await;
            drop(one);
            res
        });
        task.await.unwrap_or_else(|e| {
            Err(not_transferred(format!(
                "the transfer ended abnormally ({e}); check the cluster status"
            )))
        })
    }

    async fn hand_over(&self, to: Option<NodeId>) -> Result<NodeId, AdminError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(self.not_leader());
        }
        let Some(target) = pick(&m, to)? else {
            return Ok(m.id);
        };
        // Proposals under way finish first (each bounded by the propose timeout); new
        // ones wait for the gate to open again.
        let paused = tokio::time::timeout(self.read_timeout, self.gate.clone().write_owned())
            .await
            .map_err(|_| {
                not_transferred(format!(
                    "proposals under way did not finish within {:?}; is a majority up? \
                     node {} keeps leading; retry",
                    self.read_timeout, m.id
                ))
            })?;
        let res = self.hand_over_paused(m.id, target, to.is_some()).await;
        // Heartbeats are on again; if this node still leads, renew the followers' leases
        // at once, before one of them campaigns on its own.
        if self.raft.metrics().borrow().state == ServerState::Leader {
            // Fails only when Raft stopped, which the result reports anyway.
            let _ = self.raft.trigger().heartbeat().await;
        }
        drop(paused);
        res
    }

    /// Steps 2 to 5, with proposals held back.
    async fn hand_over_paused(
        &self,
        me: NodeId,
        target: NodeId,
        named: bool,
    ) -> Result<NodeId, AdminError> {
        let wait = self.read_timeout;
        let caught_up =
            |m: &Metrics| m.state != ServerState::Leader || matched(m, target) >= m.last_log_index;
        let m = wait_metrics(&self.raft, wait, caught_up)
            .await
            .map_err(|m| {
                let lag = m
                    .last_log_index
                    .unwrap_or(0)
                    .saturating_sub(matched(&m, target).unwrap_or(0));
                not_transferred(format!(
                    "node {target} did not catch up with the log within {wait:?} (it lags {lag} \
                 entries); node {me} keeps leading; retry once the cluster status shows its \
                 lag at 0"
                ))
            })?;
        if m.state != ServerState::Leader {
            return Err(self.not_leader());
        }
        let Some(member) = m.membership_config.membership().get_node(&target).cloned() else {
            return Err(AdminError::Rejected(format!(
                "node {target} left the membership; pick another voter"
            )));
        };

        let heartbeats_off = HeartbeatsOff::new(&self.raft);
        tokio::time::sleep(self.timings.silence()).await;
        // This node's status drops the lease on its next check: wait for that (briefly)
        // so that whatever follows the lease (the virtual IP) lets go before another
        // leader can exist.
        let mut status = self.status.clone();
        let released = status.wait_for(|s| !s.holds_lease());
        let _ = tokio::time::timeout(self.timings.heartbeat * 2, released).await;
        (self.send)(
            target,
            member.raft_addr,
            AdminRequest::Campaign,
            CAMPAIGN_WAIT,
        )
        .await
        .map_err(|e| {
            // The sender's own wording is about forwarding to a leader: keep the cause.
            let why = match e {
                AdminError::Forward { reason, .. } => reason,
                other => other.to_string(),
            };
            not_transferred(format!(
                "node {target} did not take the request to campaign ({why}); node {me} \
                     keeps leading unless the cluster status says otherwise; retry, or pick \
                     another voter"
            ))
        })?;
        let elected = wait_metrics(&self.raft, ELECTION_WAIT, |m| {
            m.current_leader.is_some_and(|l| l != me)
        })
        .await;
        drop(heartbeats_off);
        match elected {
            Ok(m) => match m.current_leader {
                Some(l) if l == target || !named => Ok(l),
                Some(l) => Err(not_transferred(format!(
                    "node {l} won the election instead of node {target}; run the transfer \
                     again to move leadership on"
                ))),
                None => Err(not_transferred(
                    "the new leader is unknown; check the cluster status".into(),
                )),
            },
            Err(m) => {
                let now = if m.state == ServerState::Leader {
                    format!("node {me} keeps leading")
                } else {
                    format!("node {me} stepped down and an election is under way")
                };
                Err(not_transferred(format!(
                    "no new leader within {ELECTION_WAIT:?} after node {target} campaigned; \
                     {now}; check the cluster status and retry"
                )))
            }
        }
    }

    /// Starts an election here, as the leader handing over asked.
    pub(super) async fn campaign(&self) -> Result<(), AdminError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            return Ok(());
        }
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == m.id)
        {
            return Err(AdminError::Rejected(format!(
                "node {} is not a voter, so it cannot lead",
                m.id
            )));
        }
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|_| AdminError::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_silence_outlasts_the_lease_but_not_a_follower_timer() {
        let t = Timings {
            lease: Duration::from_millis(300),
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
        };
        assert!(t.silence() > t.lease);
        assert!(t.silence() < t.lease + t.election_timeout_min);
    }
}
