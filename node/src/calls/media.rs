//! Anchoring a call's media on the relay: one relay session per call, and every SDP
//! that crosses the B2BUA rewritten so that each side sends its RTP to the relay's
//! ports for that side, while the relay learns where the side itself receives.

use super::Side;
use crate::core::Local;
use crate::sip::message::SipMessage;
use crate::sip::Peer;
use media::backend::MediaRelay;
use media::sdp::{self, RelayPorts};
use media::session::{PeerMedia, Side as MediaSide};
use media::udp::{RelayError, SessionPorts};
use serde::{Deserialize, Serialize};

fn media_side(side: Side) -> MediaSide {
    match side {
        Side::A => MediaSide::A,
        Side::B => MediaSide::B,
    }
}

/// The relay session of a call as the replicated call record keeps it, so that the node
/// taking the VIP over forwards the same ports to the same places.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// The relay's session number on the node that owns the call.
    pub session: u64,
    /// RTP port (RTCP is the next one) the caller sends to.
    pub a_port: u16,
    /// RTP port (RTCP is the next one) the callee sends to.
    pub b_port: u16,
    /// The caller's media as its SDP described it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a_peer: Option<PeerMedia>,
    /// The callee's media as its SDP described it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b_peer: Option<PeerMedia>,
}

impl MediaRecord {
    /// The record of an open session whose sides' SDP said `peers` (A, B).
    pub fn of(ports: &SessionPorts, peers: &[Option<PeerMedia>; 2]) -> MediaRecord {
        MediaRecord {
            session: ports.id.0,
            a_port: ports.a.rtp,
            b_port: ports.b.rtp,
            a_peer: peers[0],
            b_peer: peers[1],
        }
    }
}

/// True when `msg` carries an SDP body.
fn has_sdp(msg: &SipMessage) -> bool {
    !msg.body.is_empty()
        && msg.headers.get("Content-Type").is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/sdp"))
        })
}

/// Opens the relay session of a new call; the caller's side is known when its INVITE
/// carries an offer, the callee's once it answers.
pub fn open(relay: &MediaRelay, invite: &SipMessage) -> Result<SessionPorts, RelayError> {
    let a = offered(invite).unwrap_or_else(PeerMedia::unknown);
    relay.create_session(a, PeerMedia::unknown())
}

/// What the sender of `msg` offers or answers for the relayed stream (the first
/// active audio stream, else the first active one).
fn offered(msg: &SipMessage) -> Option<PeerMedia> {
    if !has_sdp(msg) {
        return None;
    }
    let parsed = sdp::parse(std::str::from_utf8(&msg.body).ok()?).ok()?;
    let m = relayed_stream(&parsed)?;
    Some(PeerMedia::from_sdp(&parsed.media[m]))
}

/// Index of the stream the relay carries.
fn relayed_stream(s: &sdp::Sdp) -> Option<usize> {
    s.media
        .iter()
        .position(|m| m.kind == "audio" && m.port != 0)
        .or_else(|| s.media.iter().position(|m| m.port != 0))
}

/// Puts the body of `from_msg`, sent by side `from`, on `to_msg`, which goes to the
/// other side at `to_peer`. An SDP body is rewritten to point at the relay's ports for
/// the receiving side (streams beyond the relayed one are declined with port 0), and
/// the relay learns the sender's media address and direction, which is returned. Without
/// a session, or for SDP the relay cannot read, the body passes unchanged.
#[must_use = "the call records what the sender's SDP said"]
pub fn carry(
    relay: Option<&MediaRelay>,
    session: Option<&SessionPorts>,
    local: &mut Local,
    from: Side,
    from_msg: &SipMessage,
    to_msg: &mut SipMessage,
    to_peer: Peer,
) -> Option<PeerMedia> {
    if from_msg.body.is_empty() {
        return None;
    }
    let content_type = from_msg.headers.get("Content-Type");
    let rewritten = match (relay, session) {
        (Some(relay), Some(ports)) if has_sdp(from_msg) => {
            rewrite(relay, ports, local, from, from_msg, to_peer)
        }
        _ => None,
    };
    match rewritten {
        Some((body, peer)) => {
            to_msg.set_body(content_type, body.into());
            peer
        }
        None => {
            to_msg.set_body(content_type, from_msg.body.clone());
            None
        }
    }
}

fn rewrite(
    relay: &MediaRelay,
    ports: &SessionPorts,
    local: &mut Local,
    from: Side,
    from_msg: &SipMessage,
    to_peer: Peer,
) -> Option<(String, Option<PeerMedia>)> {
    let text = std::str::from_utf8(&from_msg.body).ok()?;
    let parsed = match sdp::parse(text) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "SDP not anchored: passed through unchanged");
            return None;
        }
    };
    let carried = relayed_stream(&parsed);
    let learned = carried.map(|m| PeerMedia::from_sdp(&parsed.media[m]));
    if let Some(peer) = &learned {
        if let Err(e) = relay.update(ports.id, media_side(from), *peer) {
            tracing::warn!(error = %e, session = %ports.id, "relay session not updated");
        }
    }
    let to_ports = match from {
        Side::A => ports.b,
        Side::B => ports.a,
    };
    let per_stream: Vec<RelayPorts> = (0..parsed.media.len())
        .map(|i| match carried {
            Some(m) if m == i => RelayPorts {
                rtp: to_ports.rtp,
                rtcp: to_ports.rtcp,
            },
            _ => RelayPorts { rtp: 0, rtcp: 0 },
        })
        .collect();
    // A DPDK relay has an address of its own, which no kernel socket of this node holds.
    let media_ip = relay
        .sdp_address()
        .unwrap_or_else(|| local.media_ip(to_peer));
    match sdp::rewrite(text, media_ip, &per_stream) {
        Ok(body) => Some((body, learned)),
        Err(e) => {
            tracing::debug!(error = %e, "SDP not anchored: passed through unchanged");
            None
        }
    }
}
