//! openraft's network, server side: answers the transport's requests by calling the local
//! Raft, and applies proposals forwarded by followers.

use crate::admin::{AdminReply, AdminRequest, LeaderOps};
use crate::rpc::{PeerIdentity, RpcHandler, RpcKind};
use crate::types::Raft;
use crate::wire::{self, ForwardedWrite, WriteRejection, WriteReply};
use openraft::error::{ClientWriteError, RaftError};
use std::time::Duration;

/// The [`RpcHandler`] to give to the transport; cheap to clone.
#[derive(Clone)]
pub struct RaftHandler {
    raft: Raft,
    propose_timeout: Duration,
    ops: LeaderOps,
}

impl RaftHandler {
    pub(crate) fn new(raft: Raft, propose_timeout: Duration, ops: LeaderOps) -> RaftHandler {
        RaftHandler {
            raft,
            propose_timeout,
            ops,
        }
    }

    /// Runs an admin operation here, never forwarding it again (one hop): a follower
    /// answers "not the leader" with its hint and the sender retries there.
    async fn admin(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let req: AdminRequest =
            wire::decode(payload).map_err(|e| format!("bad admin request: {e}"))?;
        let reply: AdminReply = self.ops.execute(req).await.map_err(Into::into);
        wire::encode(&reply).map_err(|e| e.to_string())
    }

    async fn client_write(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let req: ForwardedWrite =
            wire::decode(payload).map_err(|e| format!("bad proposal: {e}"))?;
        let wait = self
            .propose_timeout
            .min(Duration::from_millis(req.timeout_ms));
        let reply: WriteReply =
            match tokio::time::timeout(wait, self.ops.client_write(req.cmd)).await {
                Ok(Ok(resp)) => Ok(resp.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    Err(WriteRejection::NotLeader {
                        leader: f.leader_id.zip(f.leader_node),
                    })
                }
                // Only membership changes fail this way, and they are not proposed here.
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    return Err(e.to_string())
                }
                Ok(Err(RaftError::Fatal(_))) => Err(WriteRejection::Stopped),
                Err(_) => Err(WriteRejection::NoQuorum {
                    waited_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                }),
            };
        wire::encode(&reply).map_err(|e| e.to_string())
    }
}

impl RpcHandler for RaftHandler {
    async fn handle(
        &self,
        peer: PeerIdentity,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        if peer == PeerIdentity::Anonymous {
            return Err(format!(
                "{kind:?} needs a cluster certificate; enroll with a join token first"
            ));
        }
        let bad = |e: serde_json::Error| format!("undecodable {kind:?} request: {e}");
        let reply =
            match kind {
                RpcKind::AppendEntries => {
                    let req = wire::decode(&payload).map_err(bad)?;
                    wire::encode(&self.raft.append_entries(req).await)
                }
                RpcKind::Vote => {
                    let req = wire::decode(&payload).map_err(bad)?;
                    wire::encode(&self.raft.vote(req).await)
                }
                RpcKind::InstallSnapshot => {
                    let req = wire::decode_chunk(&payload)?;
                    wire::encode(&self.raft.install_snapshot(req).await)
                }
                RpcKind::ClientWrite => return self.client_write(&payload).await,
                RpcKind::Admin => return self.admin(&payload).await,
                RpcKind::Join => return Err(
                    "this node does not enroll new nodes: ask the node that issued the join token"
                        .into(),
                ),
            };
        reply.map_err(|e| format!("could not encode the {kind:?} answer: {e}"))
    }
}
