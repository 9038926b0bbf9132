//! The node's view of consensus: its state as the replicated application.

pub mod state;

pub use state::ReplicatedState;
