//! openraft's network, client side: Raft RPCs become [`RpcClient`] calls to the target
//! member's `raft_addr`.

use crate::rpc::{RpcClient, RpcError, RpcKind};
use crate::types::{Member, NodeId, TypeConfig};
use crate::wire;
use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RPCTypes, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Makes a [`Connection`] per replication target.
pub struct NetworkFactory<C: RpcClient> {
    id: NodeId,
    client: Arc<C>,
}

impl<C: RpcClient> NetworkFactory<C> {
    /// The network of node `id`, sending through `client`.
    pub fn new(id: NodeId, client: Arc<C>) -> NetworkFactory<C> {
        NetworkFactory { id, client }
    }
}

/// Raft RPCs to one member.
pub struct Connection<C: RpcClient> {
    id: NodeId,
    target: NodeId,
    member: Member,
    client: Arc<C>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl<C: RpcClient> Connection<C> {
    async fn call<T, E>(
        &self,
        kind: RpcKind,
        action: RPCTypes,
        payload: Result<Vec<u8>, serde_json::Error>,
        option: &RPCOption,
    ) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = payload.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = option.hard_ttl();
        let call = self.client.call(self.member.raft_addr, kind, payload);
        // The transport has its own limits, but Raft's deadline is the one that matters here.
        let bytes = match tokio::time::timeout(ttl, call).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e @ RpcError::Unreachable { .. })) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(RpcError::Timeout { .. })) | Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Ok(Err(e)) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let reply: Result<T, RaftError<NodeId, E>> =
            wire::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.member.clone(),
                e,
            ))
        })
    }
}

impl<C: RpcClient> RaftNetworkFactory<TypeConfig> for NetworkFactory<C> {
    type Network = Connection<C>;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection<C> {
        Connection {
            id: self.id,
            target,
            member: node.clone(),
            client: self.client.clone(),
        }
    }
}

impl<C: RpcClient> RaftNetwork<TypeConfig> for Connection<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, Infallible> {
        let payload = wire::encode(&rpc);
        self.call(
            RpcKind::AppendEntries,
            RPCTypes::AppendEntries,
            payload,
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let payload = wire::encode_chunk(rpc);
        self.call(
            RpcKind::InstallSnapshot,
            RPCTypes::InstallSnapshot,
            payload,
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, Infallible> {
        let payload = wire::encode(&rpc);
        self.call(RpcKind::Vote, RPCTypes::Vote, payload, &option)
            .await
    }
}
