#![warn(missing_docs)]
//! The media plane: RTP/RTCP packet views and statistics, G.711 and RFC 4733 DTMF,
//! SDP rewriting toward the relay, RTP/RTCP port allocation, the sans-I/O relay
//! session, and the batched-UDP relay backend.
//!
//! Everything here is independent of the SIP side: the B2BUA (`node::calls`) asks a
//! relay ([`backend::MediaRelay`]: [`udp::Relay`], or the DPDK backend with the `dpdk`
//! feature) for sessions and rewrites SDP with [`sdp`].

pub mod arp;
pub mod backend;
pub mod codec;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod dtmf;
pub mod kernel;
pub mod ports;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod session;
pub mod sockaddr;
pub mod stats;
pub mod udp;
pub mod wire;
