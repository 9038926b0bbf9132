//! One softswitch cluster member: SIP stack, registrar, routing, B2BUA calls and the store.

pub mod registrar;
pub mod sip;
