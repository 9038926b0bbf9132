//! Raft replication of cluster state (openraft on RocksDB over QUIC).
//!
//! [`Consensus`] is the API the rest of the system uses; [`App`] is what the application
//! plugs in; [`rpc`] is the seam to the transport.

// openraft's traits fix the (large) StorageError and RaftError types our glue returns.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod app;
pub mod cluster;
pub mod error;
pub mod handler;
pub mod join;
pub mod net;
pub mod network;
pub mod rpc;
pub mod status;
pub mod storage;
pub mod types;
mod wire;

pub use app::App;
pub use cluster::{Config, Consensus};
pub use error::{AdminError, LeaderHint, ProposeError, ShutdownError, StartError};
pub use handler::RaftHandler;
pub use join::{init_cluster, join_cluster, open_member, JoinError, JoinToken, RunningNode};
pub use status::{Role, Status};
pub use storage::{Store, StoreError};
pub use types::{Member, NodeId, Payload};
