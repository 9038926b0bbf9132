//! The operations as run on this node's Raft: they succeed on the leader and answer
//! "not the leader" (with a hint) elsewhere. Never forwards: that is the caller's job.

use super::transfer::{SendAdmin, Timings};
use super::{AdminAnswer, AdminRequest};
use crate::error::{AdminError, LeaderHint};
use crate::status::{Role, Status};
use crate::types::{Member, NodeId, Payload, Raft, TypeConfig};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::ChangeMembers;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex, RwLock};
use tokio::time::Instant;

/// The outcome of appending a command through this node's Raft.
pub(crate) type WriteResult =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, Member>>>;

/// This node's Raft, seen as the place where admin operations run; cheap to clone.
#[derive(Clone)]
pub(crate) struct LeaderOps {
    pub(super) raft: Raft,
    pub(super) status: watch::Receiver<Status>,
    /// Bound of a membership change (a learner catching up included).
    admin_timeout: Duration,
    /// Bound of a read barrier.
    pub(super) read_timeout: Duration,
    /// Proposals and read barriers hold it shared; a leadership transfer holds it alone,
    /// because anything the leader replicates renews the followers' leases and would
    /// make them refuse the new candidate.
    pub(super) gate: Arc<RwLock<()>>,
    /// Held by the one leadership transfer that may run at a time.
    pub(super) transfer: Arc<Mutex<()>>,
    /// Sends an admin request to another member (the transfer's election request).
    pub(super) send: SendAdmin,
    pub(super) timings: Timings,
}

impl LeaderOps {
    pub(crate) fn new(
        raft: Raft,
        status: watch::Receiver<Status>,
        admin_timeout: Duration,
        read_timeout: Duration,
        timings: Timings,
        send: SendAdmin,
    ) -> LeaderOps {
        LeaderOps {
            raft,
            status,
            admin_timeout,
            read_timeout,
            gate: Arc::new(RwLock::new(())),
            transfer: Arc::new(Mutex::new(())),
            send,
            timings,
        }
    }

    /// How long `req` may take here, so a forwarder can wait a little longer than that.
    pub(crate) fn budget(&self, req: &AdminRequest) -> Duration {
        match req {
            AdminRequest::ReadBarrier | AdminRequest::Status => self.read_timeout,
            AdminRequest::TransferLeader { .. } => self.transfer_budget(),
            AdminRequest::Campaign => super::transfer::CAMPAIGN_WAIT,
            _ => self.admin_timeout,
        }
    }

    /// Appends `cmd` through this node's Raft once no leadership transfer holds
    /// proposals back (the caller bounds the whole wait).
    pub(crate) async fn client_write(&self, cmd: Payload) -> WriteResult {
        let _open = self.gate.read().await;
        self.raft.client_write(cmd).await
    }

    /// Runs `req` on this node.
    pub(crate) async fn execute(&self, req: AdminRequest) -> Result<AdminAnswer, AdminError> {
        let deadline = Instant::now() + self.budget(&req);
        match req {
            AdminRequest::AddLearner { id, member } => {
                self.add_learner(id, member, deadline).await?;
            }
            AdminRequest::AddVoter { id, member } => {
                self.add_learner(id, member, deadline).await?;
                let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                self.change(change, "making the learner a voter", deadline)
                    .await?;
            }
            AdminRequest::ChangeMembership { voters } => {
                let change = ChangeMembers::ReplaceAllVoters(voters);
                self.change(change, "the membership change", deadline)
                    .await?;
            }
            AdminRequest::RemoveNode { id } => self.remove_node(id, deadline).await?,
            AdminRequest::ReadBarrier => {
                return self.read_barrier().await.map(AdminAnswer::ReadIndex)
            }
            AdminRequest::Status => return self.leader_status().map(AdminAnswer::Status),
            AdminRequest::TransferLeader { to } => {
                return self.transfer_leader(to).await.map(AdminAnswer::Leader)
            }
            AdminRequest::Campaign => self.campaign().await?,
        }
        Ok(AdminAnswer::Done)
    }

    /// This node's status if it leads; otherwise "not the leader", so a sender with a
    /// stale view asks the real leader instead of reporting a follower's view.
    fn leader_status(&self) -> Result<Status, AdminError> {
        let s = self.status.borrow();
        if s.role == Role::Leader {
            return Ok(s.clone());
        }
        drop(s);
        Err(self.not_leader())
    }

    /// "Not the leader", with the leader this node knows.
    pub(super) fn not_leader(&self) -> AdminError {
        let s = self.status.borrow();
        let leader = s
            .leader
            .and_then(|id| s.members.get(&id).map(|m| (id, m.clone())));
        AdminError::NotLeader(LeaderHint { leader })
    }

    async fn add_learner(
        &self,
        id: NodeId,
        member: Member,
        deadline: Instant,
    ) -> Result<(), AdminError> {
        // Members enrolled at the same moment through two different members could be
        // given the same id; the second must not replace the first.
        let taken_by = self
            .status
            .borrow()
            .members
            .get(&id)
            .filter(|m| m.raft_addr != member.raft_addr)
            .map(|m| m.raft_addr);
        if let Some(addr) = taken_by {
            return Err(AdminError::Rejected(format!(
                "node id {id} belongs to the member at {addr}; get a new token and join again"
            )));
        }
        let res = tokio::time::timeout_at(deadline, self.raft.add_learner(id, member, true)).await;
        outcome(
            res.map(|r| r.map(drop)),
            "adding the learner",
            self.admin_timeout,
        )
    }

    async fn change(
        &self,
        change: ChangeMembers<NodeId, Member>,
        what: &'static str,
        deadline: Instant,
    ) -> Result<(), AdminError> {
        // retain = false: a voter left out leaves the cluster instead of lingering as a
        // learner that still receives the whole log.
        let res =
            tokio::time::timeout_at(deadline, self.raft.change_membership(change, false)).await;
        outcome(res.map(|r| r.map(drop)), what, self.admin_timeout)
    }

    async fn remove_node(&self, id: NodeId, deadline: Instant) -> Result<(), AdminError> {
        let (is_voter, is_member) = {
            let s = self.status.borrow();
            (s.voters.contains(&id), s.members.contains_key(&id))
        };
        let ids = BTreeSet::from([id]);
        if is_voter {
            self.change(
                ChangeMembers::RemoveVoters(ids),
                "removing the voter",
                deadline,
            )
            .await
        } else if is_member {
            self.change(
                ChangeMembers::RemoveNodes(ids),
                "removing the learner",
                deadline,
            )
            .await
        } else {
            Err(AdminError::Rejected(format!(
                "node {id} is not a member; see the cluster status for the member ids"
            )))
        }
    }

    /// Confirms leadership with a quorum; answers the index to have applied for a
    /// linearizable read.
    pub(crate) async fn read_barrier(&self) -> Result<Option<u64>, AdminError> {
        let wait = self.read_timeout;
        let confirm = async {
            // Confirming leadership sends heartbeats: not while a transfer waits for the
            // followers' leases to run out.
            let _open = self.gate.read().await;
            self.raft.ensure_linearizable().await
        };
        match tokio::time::timeout(wait, confirm).await {
            Ok(Ok(id)) => Ok(id.map(|id| id.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(AdminError::NotLeader(LeaderHint {
                    leader: f.leader_id.zip(f.leader_node),
                }))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) | Err(_) => {
                Err(AdminError::NoQuorum {
                    what: "the read barrier",
                    waited: wait,
                })
            }
            Ok(Err(RaftError::Fatal(_))) => Err(AdminError::Stopped),
        }
    }
}

/// A membership change's outcome, or the timeout around it.
type ChangeOutcome<E> = Result<Result<(), RaftError<NodeId, ClientWriteError<NodeId, Member>>>, E>;

fn outcome<E>(
    res: ChangeOutcome<E>,
    what: &'static str,
    waited: Duration,
) -> Result<(), AdminError> {
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(AdminError::NotLeader(LeaderHint {
                leader: f.leader_id.zip(f.leader_node),
            }))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(AdminError::Rejected(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(_))) => Err(AdminError::Stopped),
        Err(_) => Err(AdminError::NoQuorum { what, waited }),
    }
}
