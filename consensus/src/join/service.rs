//! The RPC handler of a member: serves enrollment ([`RpcKind::Join`]) itself and hands
//! every other request to the Raft handler.

use super::enroller::{EnrollError, Enroller};
use super::messages::JoinRequest;
use crate::handler::RaftHandler;
use crate::rpc::{PeerIdentity, RpcHandler, RpcKind};
use crate::wire;
use std::sync::{Arc, OnceLock};

/// What the service delegates to, set once the node has started.
struct Parts {
    raft: RaftHandler,
    enroller: Option<Arc<Enroller>>,
}

/// The [`RpcHandler`] of a member. It is created before Raft starts (so the QUIC server
/// can bind first and Raft learns the address really bound) and answers "starting"
/// until [`JoinService::ready`]; cheap to clone.
#[derive(Clone, Default)]
pub struct JoinService {
    parts: Arc<OnceLock<Parts>>,
}

impl JoinService {
    /// A service that answers "starting" until [`JoinService::ready`].
    pub fn starting() -> JoinService {
        JoinService::default()
    }

    /// Starts serving: Raft requests go to `raft`; joins are enrolled by `enroller`
    /// (a node without the CA key has none and refuses joins). Only the first call counts.
    pub fn ready(&self, raft: RaftHandler, enroller: Option<Arc<Enroller>>) {
        if self.parts.set(Parts { raft, enroller }).is_err() {
            tracing::warn!("join service made ready twice; keeping the first setup");
        }
    }

    fn join(enroller: Option<&Enroller>, payload: &[u8]) -> Result<Vec<u8>, String> {
        let enroller = enroller.ok_or(
            "this node does not hold the cluster CA key and cannot enroll: use a token issued by a node that does",
        )?;
        let req: JoinRequest = wire::decode(payload)
            .map_err(|e| format!("bad join request: {e}; are both nodes on the same version?"))?;
        match enroller.redeem(&req) {
            Ok(resp) => wire::encode(&resp).map_err(|e| e.to_string()),
            Err(e @ EnrollError::TokenRefused) => {
                tracing::warn!(raft_addr = %req.raft_addr, "join refused: bad token");
                Err(e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

impl RpcHandler for JoinService {
    async fn handle(
        &self,
        peer: PeerIdentity,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let Some(parts) = self.parts.get() else {
            return Err("this node is starting: retry in a moment".into());
        };
        match kind {
            // Anyone may try to enroll; the token is the credential.
            RpcKind::Join => JoinService::join(parts.enroller.as_deref(), &payload),
            // The Raft handler refuses anonymous peers for everything else.
            _ => parts.raft.handle(peer, kind, payload).await,
        }
    }
}
