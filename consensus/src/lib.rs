//! Raft replication of cluster state (openraft on RocksDB over QUIC).

pub mod app;
pub mod rpc;
pub mod storage;
pub mod types;

pub use app::App;
pub use storage::{Store, StoreError};
pub use types::{Member, NodeId, Payload};
