//! SIP stack: messages, transports, transactions and dialogs (RFC 3261).

pub mod dialog;
pub mod freebind;
pub mod message;
pub mod transaction;
pub mod transport;
pub mod udp_batch;

use std::net::SocketAddr;

pub use message::Transport;

/// The far end of a hop: the transport and address a message came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    /// UDP or TCP.
    pub transport: Transport,
    /// Remote socket address.
    pub addr: SocketAddr,
}

impl Peer {
    /// True for stream transports, where the transaction layer does not retransmit.
    pub fn is_reliable(&self) -> bool {
        self.transport != Transport::Udp
    }
}
