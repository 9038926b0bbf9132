//! Raft replication of cluster state (openraft on RocksDB over QUIC).

pub mod net;
pub mod rpc;
