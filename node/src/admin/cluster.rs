//! The cluster endpoints of the admin API: status, join tokens, member removal,
//! leadership transfer and readiness. They work on the node's Raft member; a standalone
//! node has none.

use super::body::read_json;
use super::reply::{error, json, Reply};
use super::AdminState;
use crate::cluster::ReplicatedState;
use consensus::join::QuicConsensus;
use consensus::{AdminError, NodeId, Role, Status};

use hyper::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// How long `/v1/cluster` waits for the leader's view before answering with its own.
const LEADER_VIEW_TIMEOUT: Duration = Duration::from_secs(3);

/// Join tokens live this long unless the request says otherwise.
const DEFAULT_TOKEN_TTL_SECS: u64 = 600;

/// Tokens are for joining now, not for keeping: a week is the most one may live.
const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

type Member = Arc<QuicConsensus<ReplicatedState>>;

/// The node's Raft member, or the reply explaining why there is none.
// Boxed: a response is large, and the error path is the rare one.
fn member(state: &AdminState) -> Result<Member, Box<Reply>> {
    let Some(weak) = state.member() else {
        return Err(Box::new(error(
            StatusCode::CONFLICT,
            "this node is not in a cluster (cluster.enabled = false); cluster commands need a cluster member",
        )));
    };
    // A weak handle, so the admin API never keeps Raft alive past the node's shutdown.
    weak.upgrade().ok_or_else(|| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is shutting down; ask another member",
        ))
    })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Learner => "learner",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
        Role::Shutdown => "shutdown",
    }
}

/// The leader as `{id, raft_addr, admin_addr}`, addresses when the membership has them.
fn leader_json(status: &Status) -> Value {
    status
        .leader
        .map_or(Value::Null, |id| node_json(status, id))
}

/// Member `id` as `{id, raft_addr, admin_addr}`, addresses when `status` has them.
fn node_json(status: &Status, id: NodeId) -> Value {
    match status.members.get(&id) {
        Some(m) => {
            json!({ "id": id, "raft_addr": m.raft_addr.to_string(), "admin_addr": m.admin_addr })
        }
        None => json!({ "id": id, "raft_addr": null, "admin_addr": null }),
    }
}

/// One row per member; with the leader's view, its replication progress and lag.
fn members_json(view: &Status, is_leader_view: bool) -> Vec<Value> {
    let last = view.last_log.unwrap_or(0);
    view.members
        .iter()
        .map(|(id, m)| {
            let role = if view.voters.contains(id) {
                "voter"
            } else {
                "learner"
            };
            let matched = if !is_leader_view {
                None
            } else if *id == view.id {
                view.last_log
            } else {
                view.matched.get(id).copied().flatten()
            };
            let lag = matched.map(|m| last.saturating_sub(m));
            json!({
                "id": id,
                "raft_addr": m.raft_addr.to_string(),
                "admin_addr": m.admin_addr,
                "role": role,
                "matched": matched,
                "lag": lag,
            })
        })
        .collect()
}

/// `GET /v1/cluster`: this node's view, plus the leader's replication progress when
/// the leader answers in time.
pub async fn status(state: Arc<AdminState>) -> Reply {
    let member = match member(&state) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let own = member.status();
    let (view, view_error) = if own.leader.is_none() {
        (None, Some("no leader is known".to_string()))
    } else {
        match tokio::time::timeout(LEADER_VIEW_TIMEOUT, member.cluster_status()).await {
            Ok(Ok(v)) => (Some(v), None),
            Ok(Err(e)) => (None, Some(e.to_string())),
            Err(_) => (
                None,
                Some(format!(
                    "the leader did not answer within {LEADER_VIEW_TIMEOUT:?}"
                )),
            ),
        }
    };
    let members = match &view {
        Some(v) => members_json(v, true),
        None => members_json(&own, false),
    };
    json(
        StatusCode::OK,
        json!({
            "id": own.id,
            "role": role_name(own.role),
            "term": own.term,
            "leader": leader_json(&own),
            "last_log": own.last_log,
            "committed": own.committed,
            "applied": own.applied,
            "snapshot": own.snapshot,
            "purged": own.purged,
            "vip": vip_json(&state, &own),
            "health": health(&own, view.as_ref()),
            "members": members,
            "leader_view": view.is_some(),
            "leader_view_error": view_error,
        }),
    )
}

/// The virtual IP(s), their holder (the leader holding its lease: the only node that
/// adds the address) and whether this node has the address on its interface now;
/// `null` without `[vip]`.
fn vip_json(state: &AdminState, own: &Status) -> Value {
    if state.vip.is_empty() {
        return Value::Null;
    }
    let held_here = state
        .metrics
        .vip_held
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0;
    json!({ "addresses": state.vip, "holder": own.leader, "held_here": held_here })
}

/// A member this far behind the leader's log makes the cluster `degraded`.
const LAG_DEGRADED: u64 = 1000;

/// `ok`: a leader, and every voter replicating within [`LAG_DEGRADED`] entries;
/// `degraded`: a voter unreachable or far behind (one more loss may stop the cluster),
/// or the leader's view unavailable; `unavailable`: no leader (no writes now).
fn health(own: &Status, view: Option<&Status>) -> &'static str {
    if own.leader.is_none() {
        return "unavailable";
    }
    let Some(v) = view else {
        return "degraded";
    };
    let last = v.last_log.unwrap_or(0);
    let lagging = v.voters.iter().any(|id| {
        let matched = if *id == v.id {
            v.last_log
        } else {
            v.matched.get(id).copied().flatten()
        };
        matched.is_none_or(|m| last.saturating_sub(m) > LAG_DEGRADED)
    });
    if lagging {
        "degraded"
    } else {
        "ok"
    }
}

/// The body of `POST /v1/cluster/tokens`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    ttl_secs: Option<u64>,
}

/// `POST /v1/cluster/tokens`: a one-time join token (every member holds the CA key).
pub async fn issue_token(state: Arc<AdminState>, body: &[u8]) -> Reply {
    let member = match member(&state) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let req: TokenRequest = match read_json(body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let ttl = req.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
        return error(
            StatusCode::BAD_REQUEST,
            format!("ttl_secs must be between 1 and {MAX_TOKEN_TTL_SECS}"),
        );
    }
    let Some(enroller) = &state.enroller else {
        return error(
            StatusCode::CONFLICT,
            format!(
                "node {} does not hold the cluster CA key (its data dir has no tls/ca.key), so it \
                 cannot issue join tokens: ask another member",
                member.id()
            ),
        );
    };
    match enroller.issue_token(Duration::from_secs(ttl)) {
        Ok(token) => json(
            StatusCode::OK,
            json!({ "token": token.to_string(), "ttl_secs": ttl }),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /v1/cluster/members/{id}/remove` and `DELETE /v1/cluster/members/{id}`.
pub async fn remove(state: Arc<AdminState>, id: &str) -> Reply {
    let member = match member(&state) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let Ok(id) = id.parse::<NodeId>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{id:?} is not a node id; ids are the numbers `switchctl cluster status` lists"
            ),
        );
    };
    let own = member.status();
    if !own.members.contains_key(&id) {
        let ids: Vec<String> = own.members.keys().map(|i| i.to_string()).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "node {id} is not a member; the members are {}",
                ids.join(", ")
            ),
        );
    }
    match member.remove_node(id).await {
        Ok(()) => json(StatusCode::OK, json!({ "removed": id })),
        Err(e) => admin_error(&own, e),
    }
}

/// The body of `POST /v1/cluster/transfer-leader`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TransferRequest {
    /// The voter to hand leadership to; none: the most caught-up voter.
    to: Option<NodeId>,
}

/// `POST /v1/cluster/transfer-leader`: hands leadership to `to` (or the most caught-up
/// voter) and answers the new leader.
pub async fn transfer_leader(state: Arc<AdminState>, body: &[u8]) -> Reply {
    let member = match member(&state) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let req: TransferRequest = match read_json(body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let old = member.status().leader;
    match member.transfer_leader(req.to).await {
        Ok(id) => json(
            StatusCode::OK,
            json!({ "leader": node_json(&member.status(), id), "previous": old }),
        ),
        Err(e) => admin_error(&member.status(), e),
    }
}

/// Maps a failed membership operation to a status and a message saying where to go.
fn admin_error(own: &Status, e: AdminError) -> Reply {
    let status = match &e {
        AdminError::NotLeader(_)
        | AdminError::NoQuorum { .. }
        | AdminError::Stopped
        | AdminError::NotTransferred(_) => StatusCode::SERVICE_UNAVAILABLE,
        AdminError::Forward { .. } => StatusCode::BAD_GATEWAY,
        AdminError::AlreadyInitialized | AdminError::Rejected(_) => StatusCode::CONFLICT,
    };
    let mut message = e.to_string();
    // The hint names the leader's Raft address; operators need its admin API.
    if let Some(m) = own.leader.and_then(|l| own.members.get(&l).map(|m| (l, m))) {
        if !m.1.admin_addr.is_empty() {
            message.push_str(&format!(
                " (leader node {} admin API: {})",
                m.0, m.1.admin_addr
            ));
        }
    }
    error(status, message)
}

/// `GET /readyz`: 200 once this node is a member with a known leader and has applied
/// everything it knows to be committed; 503 with the reason otherwise.
pub fn ready(state: &AdminState) -> Reply {
    let member = match member(state) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let s = member.status();
    let not_ready = |reason: String| {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "not ready", "error": reason }),
        )
    };
    if s.role == Role::Shutdown {
        return not_ready("consensus is stopped on this node; restart it".into());
    }
    if !s.members.contains_key(&s.id) {
        return not_ready(format!(
            "node {} is not (yet) a member of the cluster; add it or wait for the join to finish",
            s.id
        ));
    }
    let Some(leader) = s.leader else {
        if s.role == Role::Leader {
            return not_ready(
                "this node leads but no majority acknowledged it within the leader lease: \
                 it is cut off from the other members (or handing leadership over)"
                    .into(),
            );
        }
        return not_ready(
            "no leader is known: an election is under way or a majority is unreachable".into(),
        );
    };
    if s.applied < s.committed {
        return not_ready(format!(
            "catching up: applied {} of committed {}",
            idx(s.applied),
            idx(s.committed)
        ));
    }
    json(
        StatusCode::OK,
        json!({
            "status": "ready",
            "id": s.id,
            "role": role_name(s.role),
            "leader": leader,
            "applied": s.applied,
        }),
    )
}

fn idx(i: Option<u64>) -> String {
    i.map_or_else(|| "none".into(), |i| i.to_string())
}
