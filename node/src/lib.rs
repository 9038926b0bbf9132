//! One softswitch cluster member: SIP stack, registrar, routing, B2BUA calls and the store.

pub mod calls;
pub mod config;
pub mod core;
pub mod metrics;
pub mod node;
pub mod registrar;
pub mod routing;
pub mod sip;
pub mod store;
