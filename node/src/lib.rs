//! One softswitch cluster member: SIP stack, registrar, routing, B2BUA calls and the store.

pub mod admin;
pub mod calls;
pub mod cluster;
pub mod config;
pub mod core;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod persist;
pub mod registrar;
pub mod routing;
pub mod sharded_map;
pub mod sip;
pub mod store;

/// Hash map for the per-message hot paths (transactions, calls): ahash is several times
/// faster than SipHash and still keyed randomly per process, so peers choosing Call-IDs
/// and branches cannot flood one bucket.
pub type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
