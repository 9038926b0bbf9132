//! The node's view of consensus: its state as the replicated application, and the
//! core's writes as proposals.

pub mod persist;
pub mod state;
pub mod vip;

pub use persist::ClusterPersist;
pub use state::{Applied, ReplicatedState};
