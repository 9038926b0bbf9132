//! The inter-node network: the cluster PKI ([`tls`]) and the QUIC transport ([`quic`])
//! that carries [`crate::rpc`] requests between nodes with mutual TLS.

mod frame;
pub mod quic;
pub mod tls;

pub use quic::{ClientOptions, NetError, QuicClient, QuicServer, ServerOptions, ALPN};
pub use tls::{
    load_ca_cert, node_id_from_cert, save_ca_cert, ClusterCa, NodeIdentity, NodeKey, TlsError,
};
