//! One handle over the relay backends, so the B2BUA holds a relay without caring
//! which one runs: the batched-UDP backend ([`crate::udp`]) always, the DPDK one
//! ([`crate::dpdk`]) in builds with the `dpdk` feature.

use std::net::IpAddr;
use std::time::Duration;

use crate::ports::PortPair;
use crate::session::{PeerMedia, SessionStats, Side};
use crate::udp::{RelayCounters, RelayError, RelayEvent, RelayHandle, SessionId, SessionPorts};

/// A running relay of either backend.
pub enum MediaRelay {
    /// Kernel sockets, `recvmmsg`/`sendmmsg`.
    Udp(RelayHandle),
    /// DPDK kernel bypass.
    #[cfg(feature = "dpdk")]
    Dpdk(crate::dpdk::DpdkRelay),
}

impl From<RelayHandle> for MediaRelay {
    fn from(h: RelayHandle) -> MediaRelay {
        MediaRelay::Udp(h)
    }
}

#[cfg(feature = "dpdk")]
impl From<crate::dpdk::DpdkRelay> for MediaRelay {
    fn from(h: crate::dpdk::DpdkRelay) -> MediaRelay {
        MediaRelay::Dpdk(h)
    }
}

/// Calls the same method on whichever backend runs.
macro_rules! each {
    ($self:ident, $r:ident => $e:expr) => {
        match $self {
            MediaRelay::Udp($r) => $e,
            #[cfg(feature = "dpdk")]
            MediaRelay::Dpdk($r) => $e,
        }
    };
}

impl MediaRelay {
    /// Opens a session (see [`RelayHandle::create_session`]).
    pub fn create_session(&self, a: PeerMedia, b: PeerMedia) -> Result<SessionPorts, RelayError> {
        each!(self, r => r.create_session(a, b))
    }

    /// Opens a session on exactly these port pairs, continuing calls another node
    /// relayed (see [`RelayHandle::adopt_session`]).
    pub fn adopt_session(
        &self,
        a: PortPair,
        b: PortPair,
        a_peer: PeerMedia,
        b_peer: PeerMedia,
    ) -> Result<SessionPorts, RelayError> {
        each!(self, r => r.adopt_session(a, b, a_peer, b_peer))
    }

    /// Applies a new SDP from `side` (see [`RelayHandle::update`]).
    pub fn update(&self, id: SessionId, side: Side, peer: PeerMedia) -> Result<(), RelayError> {
        each!(self, r => r.update(id, side, peer))
    }

    /// The session's counters now.
    pub fn stats(&self, id: SessionId) -> Result<SessionStats, RelayError> {
        each!(self, r => r.stats(id))
    }

    /// Closes the session and returns its final counters.
    pub fn destroy(&self, id: SessionId) -> Result<SessionStats, RelayError> {
        each!(self, r => r.destroy(id))
    }

    /// The next session event, waiting up to `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<RelayEvent> {
        each!(self, r => r.next_event(timeout))
    }

    /// Relay-wide counters.
    pub fn counters(&self) -> RelayCounters {
        each!(self, r => r.counters())
    }

    /// Port pairs free now.
    pub fn ports_available(&self) -> usize {
        each!(self, r => r.ports_available())
    }

    /// The address SDP must name for this relay, when the backend has one of its
    /// own (DPDK: no kernel holds it); `None` = the node's own address for the peer.
    pub fn sdp_address(&self) -> Option<IpAddr> {
        match self {
            MediaRelay::Udp(_) => None,
            #[cfg(feature = "dpdk")]
            MediaRelay::Dpdk(r) => Some(IpAddr::V4(r.address())),
        }
    }

    /// The backend's name, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            MediaRelay::Udp(_) => "udp",
            #[cfg(feature = "dpdk")]
            MediaRelay::Dpdk(_) => "dpdk",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{PortError, PortRange};
    use crate::udp::{Relay, RelayConfig};

    #[test]
    fn the_udp_backend_behind_the_facade() {
        fn shared<T: Send + Sync>() {}
        shared::<MediaRelay>();
        let relay: MediaRelay = Relay::start(RelayConfig {
            bind: "127.0.0.1".parse().unwrap(),
            ports: PortRange {
                min: 23400,
                max: 23419,
            },
            ..RelayConfig::default()
        })
        .unwrap()
        .into();
        assert_eq!(relay.backend(), "udp");
        assert_eq!(relay.sdp_address(), None);
        let s = relay
            .create_session(PeerMedia::unknown(), PeerMedia::unknown())
            .unwrap();
        relay.update(s.id, Side::B, PeerMedia::unknown()).unwrap();
        assert_eq!(relay.stats(s.id).unwrap(), SessionStats::default());
        assert_eq!(relay.counters().sessions, 1);
        assert_eq!(relay.ports_available(), 8);
        // The pairs of another node's session: taken as asked, then in use.
        let (a, b) = (
            PortPair {
                rtp: 23414,
                rtcp: 23415,
            },
            PortPair {
                rtp: 23418,
                rtcp: 23419,
            },
        );
        let adopted = relay
            .adopt_session(a, b, PeerMedia::unknown(), PeerMedia::unknown())
            .unwrap();
        assert_eq!((adopted.a, adopted.b), (a, b));
        assert_ne!(adopted.id, s.id);
        assert_eq!(relay.counters().sessions, 2);
        assert_eq!(relay.ports_available(), 6);
        assert!(matches!(
            relay.adopt_session(b, a, PeerMedia::unknown(), PeerMedia::unknown()),
            Err(RelayError::PortsInUse(23418))
        ));
        let outside = PortPair {
            rtp: 23420,
            rtcp: 23421,
        };
        assert!(matches!(
            relay.adopt_session(outside, a, PeerMedia::unknown(), PeerMedia::unknown()),
            Err(RelayError::Ports(PortError::NotInRange(23420)))
        ));
        relay.destroy(adopted.id).unwrap();
        relay.destroy(s.id).unwrap();
        assert!(relay.next_event(Duration::from_millis(1)).is_none());
    }
}
