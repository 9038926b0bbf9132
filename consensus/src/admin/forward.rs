//! Sending an admin operation to another member (the leader, or a member that knows it).

use super::{AdminAnswer, AdminReply, AdminRequest};
use crate::error::{AdminError, LeaderHint};
use crate::rpc::{RpcClient, RpcKind};
use crate::types::NodeId;
use crate::wire;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Leader hints followed by [`call_at`] before giving up: more means leadership is moving
/// faster than we can follow and a later retry is the better answer.
const MAX_HOPS: usize = 4;
/// Pause before asking again when the receiver knows no leader (an election is running).
const ELECTION_BACKOFF: Duration = Duration::from_millis(100);

/// Sends `req` to `leader` at `addr` once, waiting up to `wait`; the receiver runs it
/// itself and never forwards further.
pub(crate) async fn forward_to<C: RpcClient>(
    client: &C,
    leader: Option<NodeId>,
    addr: SocketAddr,
    req: &AdminRequest,
    wait: Duration,
) -> Result<AdminAnswer, AdminError> {
    let what = req.what();
    let failed = |reason: String| AdminError::Forward {
        what,
        leader,
        addr,
        reason,
    };
    let bytes = wire::encode(req).map_err(|e| failed(format!("could not encode: {e}")))?;
    let bytes = match tokio::time::timeout(wait, client.call(addr, RpcKind::Admin, bytes)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Err(_) => return Err(failed(format!("no answer within {wait:?}"))),
    };
    let reply: AdminReply = wire::decode(&bytes).map_err(|e| {
        failed(format!(
            "undecodable answer ({e}); are all nodes on the same version?"
        ))
    })?;
    reply.map_err(|fault| fault.into_error(what))
}

/// Sends `req` to the member at `addr`, then follows its leader hints (bounded), for a
/// node that does not know the leader yet (one that is joining).
pub(crate) async fn call_at<C: RpcClient>(
    client: &C,
    mut addr: SocketAddr,
    req: &AdminRequest,
    wait: Duration,
) -> Result<AdminAnswer, AdminError> {
    let deadline = Instant::now() + wait;
    let mut leader = None;
    let mut last = AdminError::NotLeader(LeaderHint { leader: None });
    let mut hops = 0;
    while hops < MAX_HOPS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match forward_to(client, leader, addr, req, left).await {
            Err(AdminError::NotLeader(hint)) => {
                match &hint.leader {
                    Some((id, m)) => {
                        hops += 1;
                        leader = Some(*id);
                        addr = m.raft_addr;
                    }
                    None => {
                        tokio::time::sleep_until((Instant::now() + ELECTION_BACKOFF).min(deadline))
                            .await
                    }
                }
                last = AdminError::NotLeader(hint);
            }
            other => return other,
        }
    }
    Err(last)
}
