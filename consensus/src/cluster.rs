//! The API the rest of the system sees: start a member, propose commands from any node,
//! change membership, read linearizably, and watch the node's role and progress.

use crate::admin::{call_at, forward_to, AdminAnswer, AdminRequest, LeaderOps, SendAdmin, Timings};
use crate::app::App;
use crate::error::{AdminError, LeaderHint, ProposeError, ShutdownError, StartError};
use crate::handler::RaftHandler;
use crate::network::NetworkFactory;
use crate::rpc::{RpcClient, RpcError, RpcKind};
use crate::status::{self, Status};
use crate::storage::{DbHandle, Store};
use crate::types::{Member, NodeId, Payload, Raft};
use crate::wire::{self, ForwardedWrite, WriteRejection, WriteReply};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Extra time a forwarder waits beyond the leader's own bound, so the leader's answer
/// ("no quorum", ...) arrives before the forwarder gives up and reports an unknown outcome.
const FORWARD_GRACE: Duration = Duration::from_secs(5);

/// Timing and log compaction settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name of the cluster (in logs).
    pub cluster_name: String,
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot, so briefly lagging followers catch up from the log.
    pub logs_kept_after_snapshot: u64,
    /// How long a proposal may take before it fails with "no quorum".
    pub propose_timeout: Duration,
    /// How long a membership change may take (a learner catching up included).
    pub admin_timeout: Duration,
    /// Size of one snapshot chunk on the wire.
    pub snapshot_chunk_size: u64,
    /// Time allowed for one snapshot chunk (the last one includes installing it).
    pub snapshot_chunk_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_name: "softswitch".into(),
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            snapshot_every: 10_000,
            logs_kept_after_snapshot: 1_000,
            propose_timeout: Duration::from_secs(3),
            admin_timeout: Duration::from_secs(60),
            snapshot_chunk_size: 1 << 20,
            snapshot_chunk_timeout: Duration::from_secs(30),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Config {
    fn to_openraft(&self) -> Result<openraft::Config, StartError> {
        let cfg = openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: millis(self.heartbeat),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            snapshot_max_chunk_size: self.snapshot_chunk_size,
            install_snapshot_timeout: millis(self.snapshot_chunk_timeout),
            ..openraft::Config::default()
        };
        cfg.validate()
            .map_err(|e| StartError::Config(e.to_string()))
    }
}

/// One running cluster member.
pub struct Consensus<A: App, C: RpcClient> {
    id: NodeId,
    member: Member,
    raft: Raft,
    ops: LeaderOps,
    client: Arc<C>,
    config: Config,
    status: watch::Receiver<Status>,
    db: Weak<DbHandle>,
    closed: watch::Receiver<()>,
    _app: PhantomData<fn() -> A>,
}

/// One try at getting a proposal committed.
enum Attempt {
    Done(Payload),
    /// Not appended anywhere: safe to try again once the leader is known.
    Retry(String),
    /// Appended but not committed in time.
    NoQuorum(String),
    Fail(ProposeError),
}

impl<A: App, C: RpcClient> Consensus<A, C> {
    /// Opens the store in `data_dir` and starts Raft as node `id` (`member` is how others
    /// reach it). A fresh node waits to be initialized or added by a leader.
    pub async fn start(
        id: NodeId,
        member: Member,
        data_dir: impl AsRef<Path>,
        app: A,
        client: C,
        config: Config,
    ) -> Result<Self, StartError> {
        let raft_config = Arc::new(config.to_openraft()?);
        let data_dir = data_dir.as_ref().to_path_buf();
        let store = tokio::task::spawn_blocking(move || Store::open(data_dir, app))
            .await
            .map_err(|e| StartError::Raft(e.to_string()))??;
        let log = store.log_store();
        let committed = log.committed_cell();
        let sm = store.state_machine();
        let (db, closed) = (store.weak_db(), store.closed());
        // Raft owns the store from here; we keep only weak handles so shutdown closes it.
        drop(store);
        let client = Arc::new(client);
        let network = NetworkFactory::new(id, client.clone());
        let raft = Raft::new(id, raft_config, network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        // openraft's leader lease is election_timeout_max: followers refuse other
        // candidates for that long after hearing from the leader.
        let status = status::track(
            raft.metrics(),
            committed,
            config.election_timeout_max,
            config.heartbeat,
        );
        let timings = Timings {
            lease: config.election_timeout_max,
            heartbeat: config.heartbeat,
            election_timeout_min: config.election_timeout_min,
        };
        let ops = LeaderOps::new(
            raft.clone(),
            status.clone(),
            config.admin_timeout,
            config.propose_timeout,
            timings,
            admin_sender(client.clone()),
        );
        Ok(Consensus {
            id,
            member,
            raft,
            ops,
            client,
            config,
            status,
            db,
            closed,
            _app: PhantomData,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// How others reach this node.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// The handler to give to the transport, answering peers' Raft RPCs and forwarded proposals.
    pub fn handler(&self) -> RaftHandler {
        RaftHandler::new(
            self.raft.clone(),
            self.config.propose_timeout,
            self.ops.clone(),
        )
    }

    /// Creates the cluster with `members` as its voters (call once, on one node).
    pub async fn initialize(&self, members: BTreeMap<NodeId, Member>) -> Result<(), AdminError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err(AdminError::AlreadyInitialized)
            }
            Err(RaftError::APIError(e)) => Err(AdminError::Rejected(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(AdminError::Stopped),
        }
    }

    /// Adds a non-voting member and waits until it has caught up (by log or snapshot).
    /// Works on any member: followers forward to the leader.
    pub async fn add_learner(&self, id: NodeId, member: Member) -> Result<(), AdminError> {
        self.admin(AdminRequest::AddLearner { id, member })
            .await
            .map(drop)
    }

    /// Adds a member as a learner, waits until it has caught up, then makes it a voter.
    /// Works on any member.
    pub async fn add_voter(&self, id: NodeId, member: Member) -> Result<(), AdminError> {
        self.admin(AdminRequest::AddVoter { id, member })
            .await
            .map(drop)
    }

    /// Makes `voters` the voting members (learners among them are promoted; voters left
    /// out are removed). Works on any member.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), AdminError> {
        self.admin(AdminRequest::ChangeMembership { voters })
            .await
            .map(drop)
    }

    /// Removes node `id` (voter or learner) from the cluster. Works on any member.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), AdminError> {
        self.admin(AdminRequest::RemoveNode { id }).await.map(drop)
    }

    /// Hands leadership to voter `to`, or with `None` to the most caught-up voter, and
    /// answers the new leader. Works on any member (the leader does it). Proposals made
    /// meanwhile wait for the transfer (a second or so) and then go to the new leader.
    /// openraft 0.9 has no transfer of its own; see [`crate::admin`] for how this works.
    pub async fn transfer_leader(&self, to: Option<NodeId>) -> Result<NodeId, AdminError> {
        match self.admin(AdminRequest::TransferLeader { to }).await? {
            AdminAnswer::Leader(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// The leader's status (with its replication progress), asked from any member.
    /// [`Self::status`] is this node's own view, without a network round trip.
    pub async fn cluster_status(&self) -> Result<Status, AdminError> {
        match self.admin(AdminRequest::Status).await? {
            AdminAnswer::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Waits until the leader has confirmed its leadership with a quorum and this node
    /// has applied everything committed before the call; reads after it are
    /// linearizable. Works on any member. Returns the log index read at.
    pub async fn read_barrier(&self) -> Result<Option<u64>, AdminError> {
        let index = match self.admin(AdminRequest::ReadBarrier).await? {
            AdminAnswer::ReadIndex(index) => index,
            other => return Err(unexpected(other)),
        };
        let Some(index) = index else { return Ok(None) };
        // On a follower the leader's read index may not be applied here yet.
        let wait = self.config.propose_timeout;
        let mut status = self.status.clone();
        let applied = async {
            status
                .wait_for(|s| s.applied.is_some_and(|a| a >= index))
                .await
                .map(drop)
        };
        match tokio::time::timeout(wait, applied).await {
            Ok(Ok(())) => Ok(Some(index)),
            Ok(Err(_)) => Err(AdminError::Stopped),
            Err(_) => Err(AdminError::NoQuorum {
                what: "applying up to the read index",
                waited: wait,
            }),
        }
    }

    /// Sends `req` to the member at `addr` and follows its leader hints: for a node that
    /// does not know the cluster yet (one joining it).
    pub(crate) async fn admin_at(
        &self,
        addr: std::net::SocketAddr,
        req: AdminRequest,
    ) -> Result<AdminAnswer, AdminError> {
        let wait = self.ops.budget(&req) + FORWARD_GRACE;
        call_at(&*self.client, addr, &req, wait).await
    }

    /// Runs `req` where the leader is: here, or forwarded one hop. Retries while the
    /// leader is unknown or moving, until the operation's bound.
    async fn admin(&self, req: AdminRequest) -> Result<AdminAnswer, AdminError> {
        let budget = self.ops.budget(&req);
        let deadline = Instant::now() + budget;
        let mut status = self.status.clone();
        loop {
            let leader = {
                let s = status.borrow_and_update();
                s.leader.map(|id| (id, s.members.get(&id).cloned()))
            };
            let res = match leader {
                Some((id, _)) if id == self.id => self.ops.execute(req.clone()).await,
                Some((id, Some(m))) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    forward_to(
                        &*self.client,
                        Some(id),
                        m.raft_addr,
                        &req,
                        left + FORWARD_GRACE,
                    )
                    .await
                }
                // A leader outside the membership we know: our view is stale, wait for news.
                Some(_) | None => Err(AdminError::NotLeader(LeaderHint { leader: None })),
            };
            let Err(AdminError::NotLeader(hint)) = res else {
                return res;
            };
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(AdminError::Stopped),
                Err(_) => return Err(AdminError::NotLeader(hint)),
            }
        }
    }

    /// The last applied log index.
    pub fn applied_index(&self) -> Option<u64> {
        self.status.borrow().applied
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Status updates (role, term, leader, progress, membership).
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Reads the local replica of the state (after [`Self::read_barrier`] for a
    /// linearizable read). Do not keep the database borrowed across awaits.
    pub fn read<T>(&self, f: impl FnOnce(&rocksdb::DB) -> T) -> Result<T, AdminError> {
        let db = self.db.upgrade().ok_or(AdminError::Stopped)?;
        Ok(f(&db.db))
    }

    /// Commits `cmd` and returns what applying it answered. Works on any node: followers
    /// forward to the leader. Fails with [`ProposeError::NoQuorum`] after the configured
    /// propose timeout.
    pub async fn propose(&self, cmd: A::Command) -> Result<A::Response, ProposeError> {
        let payload = Payload::encode(&cmd).map_err(|e| ProposeError::Encode(e.to_string()))?;
        let started = Instant::now();
        let deadline = started + self.config.propose_timeout;
        let mut status = self.status.clone();
        let mut cause = String::from("no leader known");
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ProposeError::NoQuorum {
                    waited: now - started,
                    cause,
                });
            }
            let leader = {
                let s = status.borrow_and_update();
                s.leader.map(|id| (id, s.members.get(&id).cloned()))
            };
            let attempt = match leader {
                Some((id, _)) if id == self.id => self.write_local(&payload, deadline - now).await,
                Some((id, Some(m))) => self.forward(id, &m, &payload, deadline - now).await,
                Some((id, None)) => Attempt::Retry(format!("leader {id} is not in the membership")),
                None => Attempt::Retry("no leader known (election under way?)".into()),
            };
            match attempt {
                Attempt::Done(p) => {
                    return p.decode().map_err(|e| ProposeError::Decode(e.to_string()))
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::NoQuorum(c) => {
                    return Err(ProposeError::NoQuorum {
                        waited: started.elapsed(),
                        cause: c,
                    })
                }
                Attempt::Retry(c) => {
                    cause = c;
                    // The next try is worth making only once the leader picture changes.
                    let _ = tokio::time::timeout_at(deadline, status.changed()).await;
                }
            }
        }
    }

    async fn write_local(&self, payload: &Payload, wait: Duration) -> Attempt {
        match tokio::time::timeout(wait, self.ops.client_write(payload.clone())).await {
            Ok(Ok(resp)) => Attempt::Done(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Attempt::Retry(format!("leadership moved to {:?}", f.leader_id))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Attempt::Fail(ProposeError::Rejected(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(_))) => Attempt::Fail(ProposeError::Stopped),
            Err(_) => Attempt::NoQuorum("this node leads but no majority acknowledged".into()),
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        m: &Member,
        payload: &Payload,
        wait: Duration,
    ) -> Attempt {
        // The leader gets most of the budget, so its "no quorum" answer arrives before we
        // give up on it and would have to report an unknown outcome.
        let grace = (wait / 4).min(Duration::from_secs(1));
        let req = ForwardedWrite {
            cmd: payload.clone(),
            timeout_ms: millis(wait - grace),
        };
        let bytes = match wire::encode(&req) {
            Ok(b) => b,
            Err(e) => return Attempt::Fail(ProposeError::Encode(e.to_string())),
        };
        let addr = m.raft_addr;
        let call = self.client.call(addr, RpcKind::ClientWrite, bytes);
        let bytes = match tokio::time::timeout(wait, call).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e @ RpcError::Unreachable { .. })) => {
                return Attempt::Retry(format!("leader node {leader}: {e}"))
            }
            Ok(Err(e @ RpcError::Timeout { .. })) => {
                return Attempt::Fail(ProposeError::Uncertain {
                    reason: e.to_string(),
                })
            }
            Ok(Err(e)) => return Attempt::Fail(ProposeError::Rejected(e.to_string())),
            Err(_) => {
                return Attempt::Fail(ProposeError::Uncertain {
                    reason: format!("leader node {leader} at {addr} did not answer in time"),
                })
            }
        };
        match wire::decode::<WriteReply>(&bytes) {
            Ok(Ok(p)) => Attempt::Done(p),
            Ok(Err(WriteRejection::NotLeader { .. })) => {
                Attempt::Retry(format!("node {leader} is no longer the leader"))
            }
            Ok(Err(WriteRejection::NoQuorum { waited_ms })) => Attempt::NoQuorum(format!(
                "leader node {leader} got no majority in {waited_ms} ms"
            )),
            Ok(Err(WriteRejection::Stopped)) => {
                Attempt::Retry(format!("leader node {leader} is shutting down"))
            }
            Err(e) => Attempt::Fail(ProposeError::Decode(e.to_string())),
        }
    }

    /// Stops Raft and waits (bounded) until the database is closed, so the data dir can
    /// be opened again.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft core ended abnormally");
        }
        let Consensus {
            raft, mut closed, ..
        } = self;
        drop(raft);
        let wait = Duration::from_secs(10);
        // `changed` fails once the database handle, holding the sender, is dropped.
        match tokio::time::timeout(wait, async { while closed.changed().await.is_ok() {} }).await {
            Ok(()) => Ok(()),
            Err(_) => Err(ShutdownError::StillOpen(wait)),
        }
    }
}

/// Sends admin requests to other members through `client`, for the leader's side of a
/// transfer (which runs where the transport's type is not known).
fn admin_sender<C: RpcClient>(client: Arc<C>) -> SendAdmin {
    Arc::new(move |id, addr, req, wait| {
        let client = client.clone();
        Box::pin(async move { forward_to(&*client, Some(id), addr, &req, wait).await })
    })
}

fn unexpected(answer: AdminAnswer) -> AdminError {
    AdminError::Rejected(format!(
        "unexpected answer {answer:?}; are all nodes on the same version?"
    ))
}
