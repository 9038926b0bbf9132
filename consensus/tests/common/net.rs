//! An in-process transport: calls go straight to the target's handler (bytes in, bytes
//! out), and nodes can be taken down or cut off.

use consensus::rpc::{PeerIdentity, RpcClient, RpcError, RpcHandler, RpcKind};
use consensus::{NodeId, RaftHandler};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct LocalNet {
    handlers: Mutex<HashMap<SocketAddr, RaftHandler>>,
    isolated: Mutex<HashSet<SocketAddr>>,
}

impl LocalNet {
    pub fn new() -> Arc<LocalNet> {
        Arc::new(LocalNet::default())
    }

    pub fn client(self: &Arc<Self>, id: NodeId, addr: SocketAddr) -> LocalClient {
        LocalClient {
            net: self.clone(),
            id,
            addr,
        }
    }

    pub fn serve(&self, addr: SocketAddr, handler: RaftHandler) {
        self.handlers.lock().unwrap().insert(addr, handler);
    }

    /// The node stops answering (as if its process died).
    pub fn unplug(&self, addr: SocketAddr) {
        self.handlers.lock().unwrap().remove(&addr);
    }

    /// Cuts every link to and from `addr`.
    pub fn isolate(&self, addr: SocketAddr) {
        self.isolated.lock().unwrap().insert(addr);
    }

    pub fn heal(&self, addr: SocketAddr) {
        self.isolated.lock().unwrap().remove(&addr);
    }
}

pub struct LocalClient {
    net: Arc<LocalNet>,
    id: NodeId,
    addr: SocketAddr,
}

impl RpcClient for LocalClient {
    fn call(
        &self,
        addr: SocketAddr,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, RpcError>> + Send {
        let (net, me, id) = (self.net.clone(), self.addr, self.id);
        async move {
            let handler = {
                let isolated = net.isolated.lock().unwrap();
                if isolated.contains(&me) || isolated.contains(&addr) {
                    None
                } else {
                    net.handlers.lock().unwrap().get(&addr).cloned()
                }
            };
            let Some(handler) = handler else {
                return Err(RpcError::Unreachable {
                    addr,
                    reason: "no route (test network)".into(),
                });
            };
            handler
                .handle(PeerIdentity::Node(id), kind, payload)
                .await
                .map_err(|reason| RpcError::Remote { addr, reason })
        }
    }
}
