//! What travels in an [`RpcKind::Join`](crate::rpc::RpcKind::Join) request and its answer.

use crate::types::{Member, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A new node's enrollment request, sent without a certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token's secret, hex.
    pub secret: String,
    /// Where the new node's Raft transport will listen.
    pub raft_addr: SocketAddr,
    /// Its HTTP admin API.
    pub admin_addr: String,
    /// Its certificate signing request (PEM); its private key never leaves it.
    pub csr_pem: String,
    /// The node id it would like, if free.
    pub requested_id: Option<NodeId>,
}

/// The issuer's answer: the new node's id and certificate, and the cluster it joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The id the issuer chose.
    pub node_id: NodeId,
    /// The signed certificate (PEM) naming that id.
    pub cert_pem: String,
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// The cluster CA's private key (PEM), so that every member can admit new nodes
    /// and the cluster keeps that ability when any one member is gone. It travels only
    /// inside the TLS session the token's CA authenticated, to the holder of a valid
    /// one-time token, who becomes a member trusted by the same CA anyway.
    pub ca_key_pem: String,
    /// The members as the issuer knows them.
    pub members: BTreeMap<NodeId, Member>,
}
