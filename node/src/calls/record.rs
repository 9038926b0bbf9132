//! The replicated record of a call in progress: who calls whom, on which node, and once
//! answered the dialog state of both legs, so that the cluster knows every live call
//! and another node can take an answered call over when its node dies.

use crate::sip::dialog::Dialog;
use crate::sip::Peer;

/// A call in progress as the replicated state keeps it (keyed by the caller's Call-ID).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallRecord {
    /// Call-ID of the caller's leg.
    pub call_id: String,
    /// The node handling the call.
    pub node: u64,
    /// Calling extension.
    pub caller: String,
    /// Dialled number.
    pub callee: String,
    /// When the INVITE arrived (RFC 3339, UTC).
    pub start: String,
    /// When it was answered (RFC 3339, UTC); `None` while it rings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Both legs' dialogs, once answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legs: Option<Legs>,
    /// The relay session carrying its media, when anchored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<super::media::MediaRecord>,
    /// While it rings: what another node needs to end it cleanly if this one goes away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<Box<Setup>>,
}

/// A ringing call's transactions, enough to answer the caller and cancel the forks
/// from another node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Setup {
    /// Where the caller's INVITE came from.
    pub a_peer: Peer,
    /// The To tag of our responses to the caller.
    pub a_tag: String,
    /// The caller's INVITE without its body.
    pub a_invite: String,
    /// The INVITEs sent to the callee's contacts, without their bodies.
    pub forks: Vec<ForkSetup>,
}

/// One INVITE sent toward a contact of the callee.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForkSetup {
    /// Where it went.
    pub peer: Peer,
    /// The request without its body.
    pub invite: String,
}

/// `msg` without its body, as text.
pub fn head(msg: &crate::sip::message::SipMessage) -> String {
    let mut m = crate::sip::message::SipMessage {
        start: msg.start.clone(),
        headers: msg.headers.clone(),
        body: bytes::Bytes::new(),
    };
    m.headers.remove("Content-Type");
    String::from_utf8_lossy(&m.to_bytes()).into_owned()
}

/// The two dialogs of an answered call, from the B2BUA's side.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Legs {
    /// The caller's leg (we are its UAS).
    pub a: Leg,
    /// The callee's leg (we are its UAC).
    pub b: Leg,
}

/// One leg: its dialog and where its peer is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leg {
    /// Dialog state (Call-ID, tags, CSeqs, route set, remote target).
    pub dialog: Dialog,
    /// The peer's transport and address.
    pub peer: Peer,
}
