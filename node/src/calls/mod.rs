//! B2BUA calls: an A-leg (the caller's dialog with us) and B-leg forks toward every
//! registered contact of the callee, with relaying of provisional and final responses,
//! CANCEL, BYE, re-INVITE/UPDATE/INFO, ring timeout and one CDR per attempt.
//!
//! Each leg is its own dialog with its own Call-ID and tags, so the two sides never see
//! each other's identifiers; SDP passes through unchanged (the media issue anchors it).

pub mod alert;
pub mod cdr;
pub mod media;
pub mod record;
mod takeover;

use crate::core::SipCtx;
use crate::registrar::Binding;
use crate::routing::{Destination, Directory};
use crate::sip::dialog::Dialog;
use crate::sip::message::{uri_user, Method, SipMessage};
use crate::sip::transaction::TxKey;
use crate::sip::Peer;
use crate::store::Command;
use crate::FastMap;
use ::media::backend::MediaRelay;
use ::media::session::PeerMedia;
use ::media::udp::{RelayEvent, SessionPorts};
use bytes::Bytes;
use cdr::{classify_failure, rfc3339, secs_between, CallMedia, Cdr, Disposition, MediaCounters};
use record::{CallRecord, Leg, Legs};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Call policy.
#[derive(Debug, Clone)]
pub struct CallsConfig {
    /// How long a call may ring before it is given up with 480.
    pub ring_timeout: Duration,
    /// Most simultaneous calls; beyond it new INVITEs get 503.
    pub max_calls: usize,
    /// This node's id, written in the replicated call records.
    pub node: u64,
}

/// Which leg of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller's leg (we are its UAS).
    A,
    /// The callee's leg (we are its UAC).
    B,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// INVITE sent to the forks, nothing heard yet.
    Calling,
    /// A fork sent a provisional response.
    Ringing,
    /// A fork answered.
    Answered,
    /// Over; waiting for the remaining transactions to finish.
    Ended,
}

struct Fork {
    key: TxKey,
    peer: Peer,
    invite: SipMessage,
    done: bool,
}

/// A relayed in-dialog request waiting for the far side's answer.
struct Relay {
    /// Server transaction of the side that sent the request.
    server: TxKey,
    /// The request as received (to build the response from).
    request: SipMessage,
    /// Side the request was relayed to.
    to_side: Side,
}

enum Role {
    Fork(usize),
    Relay(Box<Relay>),
    /// A BYE (or other request) whose answer does not matter.
    Fire,
}

/// An ACK we sent for a 2xx, kept to answer retransmissions of that 2xx.
struct SentAck {
    cseq: u32,
    bytes: Bytes,
}

struct Call {
    caller: String,
    callee: String,
    a_invite: SipMessage,
    a_key: TxKey,
    a_peer: Peer,
    a_tag: String,
    a_call_id: String,
    a_dialog: Option<Dialog>,
    b_call_id: String,
    b_tag: String,
    forks: Vec<Fork>,
    winner: Option<usize>,
    b_dialog: Option<Dialog>,
    b_peer: Option<Peer>,
    phase: Phase,
    start: SystemTime,
    /// When the caller's INVITE was handled, for the setup-time histogram.
    arrived: Instant,
    answer: Option<SystemTime>,
    best_failure: Option<(u16, String)>,
    /// ACK owed to a side once the other side ACKs a relayed 2xx: (side, CSeq).
    owed_ack: Option<(Side, u32)>,
    /// Last ACK sent to each side (index 0 = A, 1 = B).
    acks: [Option<SentAck>; 2],
    /// A re-INVITE is being relayed (RFC 3261 §14.2: a second one gets 491).
    reinvite_pending: bool,
    /// Client transactions still open for this call.
    open_tx: usize,
    a_tx_open: bool,
    /// The relay session carrying the call's media, when media is anchored.
    media: Option<SessionPorts>,
    /// Each side's media as its last SDP described it (A, B).
    media_peers: [Option<PeerMedia>; 2],
}

impl Call {
    /// Drops what an ended call no longer needs while it waits (up to 64*T1) for its
    /// transactions to finish; a forking call that is still settling keeps its losing
    /// forks' INVITEs, needed to ACK and hang up a late 2xx.
    fn shed(&mut self) {
        self.a_invite.headers = Default::default();
        self.a_invite.body = Bytes::new();
        self.a_dialog = None;
        self.b_dialog = None;
        self.acks = [None, None];
        let winner = self.winner;
        for (i, f) in self.forks.iter_mut().enumerate() {
            if f.done || winner == Some(i) {
                f.invite.headers = Default::default();
                f.invite.body = Bytes::new();
            }
        }
    }

    fn dialog(&mut self, side: Side) -> Option<&mut Dialog> {
        match side {
            Side::A => self.a_dialog.as_mut(),
            Side::B => self.b_dialog.as_mut(),
        }
    }

    fn peer(&self, side: Side) -> Option<Peer> {
        match side {
            Side::A => Some(self.a_peer),
            Side::B => self.b_peer,
        }
    }

    /// The call as the replicated state records it.
    fn record(&self, node: u64) -> CallRecord {
        let leg = |dialog: &Option<Dialog>, peer: Option<Peer>| {
            Some(Leg {
                dialog: dialog.clone()?,
                peer: peer?,
            })
        };
        let legs = match (
            leg(&self.a_dialog, Some(self.a_peer)),
            leg(&self.b_dialog, self.b_peer),
        ) {
            (Some(a), Some(b)) => Some(Legs { a, b }),
            _ => None,
        };
        CallRecord {
            call_id: self.a_call_id.clone(),
            node,
            caller: self.caller.clone(),
            callee: self.callee.clone(),
            start: rfc3339(self.start),
            answer: self.answer.map(rfc3339),
            setup: legs.is_none().then(|| self.setup()),
            legs,
            media: self
                .media
                .as_ref()
                .map(|m| media::MediaRecord::of(m, &self.media_peers)),
        }
    }

    /// What another node needs to end the call cleanly while it rings.
    fn setup(&self) -> Box<record::Setup> {
        Box::new(record::Setup {
            a_peer: self.a_peer,
            a_tag: self.a_tag.clone(),
            a_invite: record::head(&self.a_invite),
            forks: self
                .forks
                .iter()
                .filter(|f| !f.done)
                .map(|f| record::ForkSetup {
                    peer: f.peer,
                    invite: record::head(&f.invite),
                })
                .collect(),
        })
    }

    fn ack_slot(&mut self, side: Side) -> &mut Option<SentAck> {
        &mut self.acks[side.index()]
    }
}

/// Every call on this node.
pub struct Calls {
    cfg: CallsConfig,
    calls: FastMap<u64, Call>,
    next_id: u64,
    /// A-leg INVITE server transaction → call.
    by_invite: FastMap<TxKey, u64>,
    /// (Call-ID, our tag) → call and side, for in-dialog requests and stray 2xx.
    by_dialog: FastMap<(String, String), (u64, Side)>,
    /// Our client transactions → call and role.
    clients: FastMap<TxKey, (u64, Role)>,
    ring_timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Calls not yet ended (ended ones linger until their transactions finish).
    live: usize,
    /// The media relay every call's RTP goes through; `None`: SDP passes unchanged.
    relay: Option<Arc<MediaRelay>>,
    /// Relay session → call.
    by_session: FastMap<u64, u64>,
    /// Switchover alert calls (`notify.call`).
    pub alerts: alert::Alerts,
}

/// Headers copied onto a relayed in-dialog request.
const RELAYED_HEADERS: &[&str] = &[
    "Content-Disposition",
    "Info-Package",
    "Event",
    "Subscription-State",
    "Reason",
];

impl Calls {
    /// No calls yet.
    pub fn new(cfg: CallsConfig) -> Calls {
        Calls {
            cfg,
            calls: FastMap::default(),
            next_id: 1,
            by_invite: FastMap::default(),
            by_dialog: FastMap::default(),
            clients: FastMap::default(),
            ring_timers: BinaryHeap::new(),
            live: 0,
            relay: None,
            by_session: FastMap::default(),
            alerts: alert::Alerts::default(),
        }
    }

    /// Anchors the media of every new call on `relay`.
    pub fn anchor_media(&mut self, relay: Arc<MediaRelay>) {
        self.relay = Some(relay);
    }

    /// Calls in progress (not counting ended ones finishing their transactions).
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no call is in progress.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The next ring timeout (or alert call step).
    pub fn next_deadline(&self) -> Option<Instant> {
        let ring = self.ring_timers.peek().map(|Reverse((t, _))| *t);
        match (ring, self.alerts.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A new authenticated INVITE from `caller`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_invite(
        &mut self,
        ctx: &mut SipCtx<'_>,
        key: TxKey,
        invite: SipMessage,
        from: Peer,
        caller: String,
        directory: &Directory,
        bindings_of: impl Fn(&str) -> Vec<Binding>,
    ) {
        let start = SystemTime::now();
        let a_tag = ctx.local.unique();
        let callee = invite.uri().and_then(uri_user).unwrap_or_default();
        let fail = |ctx: &mut SipCtx<'_>, code: u16, reason: &str, cause: Option<&str>| {
            let mut r = invite.response(code, reason);
            r.set_to_tag(&a_tag);
            if code == 503 {
                r.headers.push("Retry-After", "5");
            }
            ctx.respond(&key, r);
            // Refused on arrival: its setup took no time worth measuring, but it counts.
            ctx.metrics.call_setup.observe(0.0);
            let (disposition, default_cause) = classify_failure(code);
            ctx.metrics.inc(&ctx.metrics.calls_attempted);
            ctx.write(Command::AppendCdr(Cdr {
                call_id: invite.call_id().unwrap_or_default().to_string(),
                caller: caller.clone(),
                callee: callee.clone(),
                start: rfc3339(start),
                answer: None,
                end: rfc3339(SystemTime::now()),
                duration: 0,
                billsec: 0,
                disposition,
                hangup_cause: cause.unwrap_or(default_cause).to_string(),
                sip_status: code,
                hangup_by: None,
                media: None,
            }));
        };
        if self.live >= self.cfg.max_calls {
            ctx.metrics.inc(&ctx.metrics.overload_rejects);
            return fail(
                ctx,
                503,
                "Service Unavailable",
                Some("normal_circuit_congestion"),
            );
        }
        let ext = match directory.route(&callee) {
            Destination::Extension(e) => e,
            Destination::NotFound => {
                return fail(ctx, 404, "Not Found", Some("unallocated_number"))
            }
        };
        let contacts = bindings_of(&ext.number);
        if contacts.is_empty() {
            return fail(
                ctx,
                480,
                "Temporarily Unavailable",
                Some("subscriber_absent"),
            );
        }
        let session = match self.relay.as_deref().map(|r| media::open(r, &invite)) {
            None => None,
            Some(Ok(ports)) => Some(ports),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "no media relay session for a new call");
                return fail(
                    ctx,
                    503,
                    "Service Unavailable",
                    Some("resource_unavailable"),
                );
            }
        };
        ctx.metrics.inc(&ctx.metrics.calls_attempted);

        let id = self.next_id;
        self.next_id += 1;
        let b_call_id = format!("{}@b2bua", ctx.local.unique());
        let b_tag = ctx.local.unique();
        let display = directory
            .extension(&caller)
            .map(|e| e.name.clone())
            .filter(|n| !n.is_empty());
        let max_forwards = invite.max_forwards().unwrap_or(70).saturating_sub(1);
        let mut forks = Vec::with_capacity(contacts.len());
        let mut a_media = None;
        for b in &contacts {
            let peer = b.source;
            let branch = ctx.local.branch();
            let domain = ctx.local.domain(peer);
            let mut req = SipMessage::request(Method::Invite, b.contact.clone());
            req.headers.push("Via", ctx.local.via(peer, &branch));
            req.headers.push("Max-Forwards", max_forwards.to_string());
            let from_value = match &display {
                Some(d) => format!(
                    "\"{}\" <sip:{caller}@{domain}>;tag={b_tag}",
                    d.replace('"', "")
                ),
                None => format!("<sip:{caller}@{domain}>;tag={b_tag}"),
            };
            req.headers.push("From", from_value);
            req.headers
                .push("To", format!("<sip:{}@{domain}>", ext.number));
            req.headers.push("Call-ID", b_call_id.clone());
            req.headers.push("CSeq", "1 INVITE");
            req.headers
                .push("Contact", ctx.local.contact(&caller, peer));
            req.headers.push("Allow", crate::core::ALLOW);
            let learned = media::carry(
                self.relay.as_deref(),
                session.as_ref(),
                ctx.local,
                Side::A,
                &invite,
                &mut req,
                peer,
            );
            a_media = a_media.or(learned);
            let fork_key = ctx.request(req.clone(), peer);
            self.clients
                .insert(fork_key.clone(), (id, Role::Fork(forks.len())));
            forks.push(Fork {
                key: fork_key,
                peer,
                invite: req,
                done: false,
            });
        }
        let n = forks.len();
        self.by_invite.insert(key.clone(), id);
        let a_call_id = invite.call_id().unwrap_or_default().to_string();
        self.by_dialog
            .insert((a_call_id.clone(), a_tag.clone()), (id, Side::A));
        self.by_dialog
            .insert((b_call_id.clone(), b_tag.clone()), (id, Side::B));
        self.ring_timers
            .push(Reverse((ctx.now + self.cfg.ring_timeout, id)));
        self.live += 1;
        let call = self.calls.entry(id).or_insert(Call {
            caller,
            callee,
            a_invite: invite,
            a_key: key,
            a_peer: from,
            a_tag,
            a_call_id,
            a_dialog: None,
            b_call_id,
            b_tag,
            forks,
            winner: None,
            b_dialog: None,
            b_peer: None,
            phase: Phase::Calling,
            start,
            arrived: ctx.now,
            answer: None,
            best_failure: None,
            owed_ack: None,
            acks: [None, None],
            reinvite_pending: false,
            open_tx: n,
            a_tx_open: true,
            media: session,
            media_peers: [a_media, None],
        });
        if let Some(s) = &call.media {
            self.by_session.insert(s.id.0, id);
        }
        ctx.write(Command::StartCall(Box::new(call.record(self.cfg.node))));
    }

    /// A response on one of our client transactions.
    pub fn on_response(&mut self, ctx: &mut SipCtx<'_>, key: &TxKey, msg: &SipMessage) {
        if self.alerts.owns(key) {
            return self.alerts.on_response(ctx, key, msg);
        }
        let Some(code) = msg.status() else { return };
        let Some((id, role)) = self.clients.get(key) else {
            return;
        };
        let id = *id;
        match role {
            Role::Fork(i) => {
                let i = *i;
                self.on_fork_response(ctx, id, i, code, msg);
            }
            Role::Relay(_) => {
                if code < 101 {
                    return;
                }
                self.on_relay_response(ctx, id, key, code, msg);
            }
            Role::Fire => {}
        }
    }

    fn on_fork_response(
        &mut self,
        ctx: &mut SipCtx<'_>,
        id: u64,
        i: usize,
        code: u16,
        msg: &SipMessage,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        match code {
            100 => {}
            101..=199 => {
                if matches!(call.phase, Phase::Calling | Phase::Ringing) {
                    call.phase = Phase::Ringing;
                    let r = a_response(
                        ctx,
                        self.relay.as_deref(),
                        call,
                        code,
                        reason_of(msg),
                        Some(msg),
                    );
                    ctx.respond(&call.a_key.clone(), r);
                }
            }
            200..=299 => {
                if call.winner == Some(i) {
                    // 2xx retransmission: repeat our ACK if we already sent it.
                    if let (Some(ack), Some(peer)) = (call.acks[1].as_ref(), call.b_peer) {
                        if ack.cseq == 1 {
                            ctx.resend(ack.bytes.clone(), peer);
                        }
                    }
                    return;
                }
                if call.winner.is_some() || call.phase == Phase::Ended {
                    // RFC 3261 §13.2.2.4: a second answer (another fork, or after the
                    // caller gave up) is acknowledged and hung up.
                    let fork = &call.forks[i];
                    let (invite, peer) = (fork.invite.clone(), fork.peer);
                    self.ack_and_bye(ctx, id, &invite, msg, peer);
                    return;
                }
                let fork = &call.forks[i];
                let contact = ctx.local.contact(&call.caller, fork.peer);
                let Some(b_dialog) = Dialog::uac(&fork.invite, msg, &contact) else {
                    return;
                };
                call.winner = Some(i);
                call.b_peer = Some(fork.peer);
                call.b_dialog = Some(b_dialog);
                call.phase = Phase::Answered;
                call.answer = Some(SystemTime::now());
                ctx.metrics.inc(&ctx.metrics.calls_answered);
                ctx.metrics
                    .call_setup
                    .observe_duration(ctx.now.saturating_duration_since(call.arrived));
                let others: Vec<TxKey> = call
                    .forks
                    .iter()
                    .enumerate()
                    .filter(|(j, f)| *j != i && !f.done)
                    .map(|(_, f)| f.key.clone())
                    .collect();
                for k in others {
                    ctx.cancel(&k);
                }
                let r = a_response(
                    ctx,
                    self.relay.as_deref(),
                    call,
                    code,
                    reason_of(msg),
                    Some(msg),
                );
                let a_contact = ctx.local.contact(&call.callee, call.a_peer);
                call.a_dialog = Dialog::uas(&call.a_invite, &r, &a_contact);
                // The ACK to B waits for A's ACK so an answer carried in it reaches B.
                call.owed_ack = Some((Side::B, 1));
                ctx.respond(&call.a_key.clone(), r);
                ctx.write(Command::AnswerCall(Box::new(call.record(self.cfg.node))));
            }
            _ => {
                call.forks[i].done = true;
                let better = match &call.best_failure {
                    None => true,
                    Some((best, _)) => failure_rank(code) > failure_rank(*best),
                };
                if better {
                    call.best_failure = Some((code, reason_of(msg).to_string()));
                }
                if call.winner.is_none()
                    && matches!(call.phase, Phase::Calling | Phase::Ringing)
                    && call.forks.iter().all(|f| f.done)
                {
                    let (code, reason) = call
                        .best_failure
                        .clone()
                        .unwrap_or((480, "Temporarily Unavailable".into()));
                    // Only final codes the caller can act on go back as they are.
                    let (code, reason) = match code {
                        300..=399 => (480, "Temporarily Unavailable".to_string()),
                        401 | 407 => (403, "Forbidden".to_string()),
                        _ => (code, reason),
                    };
                    self.fail_call(ctx, id, code, &reason, None);
                }
            }
        }
    }

    /// Sends the caller a final failure, gives up the forks and writes the CDR.
    fn fail_call(
        &mut self,
        ctx: &mut SipCtx<'_>,
        id: u64,
        code: u16,
        reason: &str,
        cause: Option<&str>,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let r = a_response(ctx, None, call, code, reason, None);
        ctx.respond(&call.a_key.clone(), r);
        ctx.metrics
            .call_setup
            .observe_duration(ctx.now.saturating_duration_since(call.arrived));
        let pending: Vec<TxKey> = call
            .forks
            .iter()
            .filter(|f| !f.done)
            .map(|f| f.key.clone())
            .collect();
        for k in pending {
            ctx.cancel(&k);
        }
        let (disposition, default_cause) = classify_failure(code);
        self.finish(
            ctx,
            id,
            disposition,
            cause.unwrap_or(default_cause),
            code,
            None,
        );
    }

    /// Writes the CDR once and marks the call ended.
    fn finish(
        &mut self,
        ctx: &mut SipCtx<'_>,
        id: u64,
        disposition: Disposition,
        cause: &str,
        status: u16,
        hangup_by: Option<Side>,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.phase == Phase::Ended {
            return;
        }
        call.phase = Phase::Ended;
        self.live = self.live.saturating_sub(1);
        let end = SystemTime::now();
        let media_counters = match (call.media.take(), self.relay.as_deref()) {
            (Some(ports), Some(relay)) => {
                self.by_session.remove(&ports.id.0);
                match relay.destroy(ports.id) {
                    Ok(stats) => Some(Box::new(CallMedia {
                        caller: MediaCounters::of(&stats.a),
                        callee: MediaCounters::of(&stats.b),
                    })),
                    Err(e) => {
                        tracing::warn!(error = %e, "relay session not closed cleanly");
                        None
                    }
                }
            }
            _ => None,
        };
        ctx.write(Command::EndCall {
            call_id: call.a_call_id.clone(),
        });
        ctx.write(Command::AppendCdr(Cdr {
            call_id: call.a_call_id.clone(),
            caller: call.caller.clone(),
            callee: call.callee.clone(),
            start: rfc3339(call.start),
            answer: call.answer.map(rfc3339),
            end: rfc3339(end),
            duration: secs_between(call.start, end),
            billsec: call.answer.map(|a| secs_between(a, end)).unwrap_or(0),
            disposition,
            hangup_cause: cause.to_string(),
            sip_status: status,
            hangup_by: hangup_by.map(|s| match s {
                Side::A => "caller".to_string(),
                Side::B => "callee".to_string(),
            }),
            media: media_counters,
        }));
        call.shed();
        self.reap(id);
    }

    /// Forgets an ended call once none of its transactions can still deliver events.
    fn reap(&mut self, id: u64) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.phase != Phase::Ended || call.open_tx > 0 || call.a_tx_open {
            return;
        }
        if let Some(call) = self.calls.remove(&id) {
            self.by_invite.remove(&call.a_key);
            self.by_dialog.remove(&(call.a_call_id, call.a_tag));
            self.by_dialog.remove(&(call.b_call_id, call.b_tag));
        }
    }

    /// ACKs a 2xx that lost the race and hangs that leg up.
    fn ack_and_bye(
        &mut self,
        ctx: &mut SipCtx<'_>,
        id: u64,
        invite: &SipMessage,
        resp: &SipMessage,
        peer: Peer,
    ) {
        let contact = ctx.local.contact("b2bua", peer);
        let Some(mut d) = Dialog::uac(invite, resp, &contact) else {
            return;
        };
        let via = ctx.local.new_via(peer);
        let ack = d.ack_for(1, &via);
        ctx.send_raw(&ack, peer);
        let via = ctx.local.new_via(peer);
        let bye = d.request(Method::Bye, &via);
        self.fire(ctx, id, bye, peer);
    }

    /// Sends a request whose answer we do not need, keeping the call alive until it ends.
    fn fire(&mut self, ctx: &mut SipCtx<'_>, id: u64, req: SipMessage, peer: Peer) {
        let k = ctx.request(req, peer);
        self.clients.insert(k, (id, Role::Fire));
        if let Some(c) = self.calls.get_mut(&id) {
            c.open_tx += 1;
        }
    }

    fn on_relay_response(
        &mut self,
        ctx: &mut SipCtx<'_>,
        id: u64,
        key: &TxKey,
        code: u16,
        msg: &SipMessage,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some((_, Role::Relay(relay))) = self.clients.get(key) else {
            return;
        };
        let method = relay.request.method().cloned().unwrap_or(Method::Ack);
        let from_side = relay.to_side.other();
        if let Some(d) = call.dialog(relay.to_side) {
            d.on_response(&method, msg);
        }
        let mut r = relay.request.response(code, reason_of(msg));
        if (200..300).contains(&code) && matches!(method, Method::Invite | Method::Update) {
            if let Some(peer) = call.peer(from_side) {
                let user = match from_side {
                    Side::A => call.callee.clone(),
                    Side::B => call.caller.clone(),
                };
                r.headers.push("Contact", ctx.local.contact(&user, peer));
            }
        }
        if let Some(peer) = call.peer(from_side) {
            let (session, sender) = (call.media.as_ref(), relay.to_side);
            let anchor = self.relay.as_deref();
            if let Some(p) = media::carry(anchor, session, ctx.local, sender, msg, &mut r, peer) {
                call.media_peers[sender.index()] = Some(p);
            }
        }
        if method == Method::Invite && code >= 200 {
            call.reinvite_pending = false;
            if code < 300 {
                if let Some((cseq, _)) = msg.cseq() {
                    call.owed_ack = Some((relay.to_side, cseq));
                }
            }
        }
        let server = relay.server.clone();
        ctx.respond(&server, r);
        // A target refresh or new media: the record another node would continue from
        // must say so.
        if (200..300).contains(&code)
            && matches!(method, Method::Invite | Method::Update)
            && call.phase == Phase::Answered
        {
            ctx.write(Command::AnswerCall(Box::new(call.record(self.cfg.node))));
        }
    }

    /// The ACK for a 2xx we sent (initial INVITE or a relayed re-INVITE).
    pub fn on_ack(&mut self, ctx: &mut SipCtx<'_>, msg: &SipMessage, _invite: Option<&TxKey>) {
        let (Some(call_id), Some(tag)) = (msg.call_id(), msg.to_tag()) else {
            return;
        };
        let Some(&(id, side)) = self.by_dialog.get(&(call_id.to_string(), tag)) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some((owed_side, cseq)) = call.owed_ack else {
            return;
        };
        if owed_side != side.other() {
            return;
        }
        let Some(peer) = call.peer(owed_side) else {
            return;
        };
        let via = ctx.local.new_via(peer);
        let Some(d) = call.dialog(owed_side) else {
            return;
        };
        let mut ack = d.ack_for(cseq, &via);
        let anchor = self.relay.as_deref();
        if let Some(p) = media::carry(
            anchor,
            call.media.as_ref(),
            ctx.local,
            side,
            msg,
            &mut ack,
            peer,
        ) {
            call.media_peers[side.index()] = Some(p);
        }
        let bytes = ctx.send_raw(&ack, peer);
        call.owed_ack = None;
        *call.ack_slot(owed_side) = Some(SentAck { cseq, bytes });
    }

    /// CANCEL from the caller (RFC 3261 §9.2).
    pub fn on_cancel(
        &mut self,
        ctx: &mut SipCtx<'_>,
        key: &TxKey,
        msg: &SipMessage,
        invite: Option<&TxKey>,
    ) {
        let id = invite.and_then(|k| self.by_invite.get(k)).copied();
        let Some(id) = id else {
            let r = no_such_dialog(msg);
            return ctx.respond(key, r);
        };
        let mut ok = msg.response(200, "OK");
        if let Some(call) = self.calls.get(&id) {
            ok.set_to_tag(&call.a_tag);
        }
        ctx.respond(key, ok);
        let ringing = self
            .calls
            .get(&id)
            .is_some_and(|c| matches!(c.phase, Phase::Calling | Phase::Ringing));
        if ringing {
            self.fail_call(
                ctx,
                id,
                487,
                "Request Terminated",
                Some("originator_cancel"),
            );
        }
    }

    /// A request inside an established dialog (BYE, re-INVITE, UPDATE, INFO, ...).
    pub fn on_in_dialog(&mut self, ctx: &mut SipCtx<'_>, key: TxKey, msg: SipMessage, _from: Peer) {
        let method = msg.method().cloned().unwrap_or(Method::Ack);
        let found = match (msg.call_id(), msg.to_tag()) {
            (Some(c), Some(t)) => self.by_dialog.get(&(c.to_string(), t)).copied(),
            _ => None,
        };
        let Some((id, side)) = found else {
            let mut r = no_such_dialog(&msg);
            r.set_to_tag(&ctx.local.unique());
            return ctx.respond(&key, r);
        };
        let Some(call) = self.calls.get_mut(&id) else {
            let r = no_such_dialog(&msg);
            return ctx.respond(&key, r);
        };
        let Some(d) = call.dialog(side) else {
            let r = no_such_dialog(&msg);
            return ctx.respond(&key, r);
        };
        if d.on_request(&msg).is_err() {
            let r = msg.response(500, "Server Internal Error");
            return ctx.respond(&key, r);
        }
        if call.phase == Phase::Ended {
            let r = no_such_dialog(&msg);
            return ctx.respond(&key, r);
        }
        match method {
            Method::Bye => {
                ctx.respond(&key, msg.response(200, "OK"));
                let other = side.other();
                if let (Some(peer), Some(d)) = (call.peer(other), call.dialog(other).cloned()) {
                    let mut d = d;
                    let via = ctx.local.new_via(peer);
                    let mut bye = d.request(Method::Bye, &via);
                    bye.headers
                        .push("Reason", "Q.850;cause=16;text=\"Normal Clearing\"");
                    if let Some(slot) = call.dialog(other) {
                        *slot = d;
                    }
                    self.fire(ctx, id, bye, peer);
                }
                self.finish(
                    ctx,
                    id,
                    Disposition::Answered,
                    "normal_clearing",
                    200,
                    Some(side),
                );
            }
            Method::Invite if call.reinvite_pending => {
                let mut r = msg.response(491, "Request Pending");
                r.headers.push("Retry-After", "1");
                ctx.respond(&key, r);
            }
            _ => {
                let other = side.other();
                let Some(peer) = call.peer(other) else {
                    return ctx.respond(&key, no_such_dialog(&msg));
                };
                let via = ctx.local.new_via(peer);
                let Some(d) = call.dialog(other) else {
                    return ctx.respond(&key, no_such_dialog(&msg));
                };
                let mut req = d.request(method.clone(), &via);
                for h in RELAYED_HEADERS {
                    for v in msg.headers.get_all(h) {
                        req.headers.push(h, v);
                    }
                }
                let anchor = self.relay.as_deref();
                if let Some(p) = media::carry(
                    anchor,
                    call.media.as_ref(),
                    ctx.local,
                    side,
                    &msg,
                    &mut req,
                    peer,
                ) {
                    call.media_peers[side.index()] = Some(p);
                }
                if method == Method::Invite {
                    call.reinvite_pending = true;
                }
                call.open_tx += 1;
                let client = ctx.request(req, peer);
                self.clients.insert(
                    client,
                    (
                        id,
                        Role::Relay(Box::new(Relay {
                            server: key,
                            request: msg,
                            to_side: other,
                        })),
                    ),
                );
            }
        }
    }

    /// A client or server transaction timed out.
    pub fn on_timeout(&mut self, ctx: &mut SipCtx<'_>, key: &TxKey) {
        if let Some(&id) = self.by_invite.get(key) {
            // Our 2xx to the caller was never acknowledged (RFC 3261 §13.3.1.4): hang up.
            let answered = self
                .calls
                .get(&id)
                .is_some_and(|c| c.phase == Phase::Answered);
            if answered {
                self.hang_up_both(ctx, id);
                self.finish(
                    ctx,
                    id,
                    Disposition::Answered,
                    "recovery_on_timer_expire",
                    408,
                    None,
                );
            }
            return;
        }
        let Some((id, role)) = self.clients.get(key) else {
            return;
        };
        let id = *id;
        match role {
            Role::Fork(i) => {
                let i = *i;
                let timeout = SipMessage {
                    start: crate::sip::message::StartLine::Response {
                        code: 408,
                        reason: "Request Timeout".into(),
                    },
                    headers: Default::default(),
                    body: Bytes::new(),
                };
                self.on_fork_response(ctx, id, i, 408, &timeout);
            }
            Role::Relay(relay) => {
                let r = relay.request.response(408, "Request Timeout");
                let server = relay.server.clone();
                if relay.request.method() == Some(&Method::Invite) {
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.reinvite_pending = false;
                    }
                }
                ctx.respond(&server, r);
            }
            Role::Fire => {}
        }
    }

    /// An event of a call's relay session: a side that stopped sending RTP ends the
    /// call (BYE to both sides, the CDR says `media_timeout`).
    pub fn on_media_event(&mut self, ctx: &mut SipCtx<'_>, event: RelayEvent) {
        let Some(&id) = self.by_session.get(&event.session.0) else {
            return;
        };
        let answered = self
            .calls
            .get(&id)
            .is_some_and(|c| c.phase == Phase::Answered);
        tracing::info!(session = %event.session, ?event.event, answered, "RTP timeout: ending the call");
        if answered {
            self.hang_up_both(ctx, id);
            self.finish(ctx, id, Disposition::Answered, "media_timeout", 200, None);
        }
    }

    /// Ends the call whose caller's leg has Call-ID `call_id` on an operator's word: an
    /// answered call gets a BYE on both legs, a ringing one is cancelled toward the
    /// callee and refused to the caller (480); the CDR says `admin_hangup`. False if
    /// this node has no such live call.
    pub fn hang_up(&mut self, ctx: &mut SipCtx<'_>, call_id: &str) -> bool {
        let Some((id, phase)) = self
            .calls
            .iter()
            .find(|(_, c)| c.a_call_id == call_id && c.phase != Phase::Ended)
            .map(|(id, c)| (*id, c.phase))
        else {
            return false;
        };
        tracing::info!(call_id, ?phase, "call hung up through the admin API");
        if phase == Phase::Answered {
            self.hang_up_both(ctx, id);
            self.finish(ctx, id, Disposition::Answered, "admin_hangup", 200, None);
        } else {
            self.fail_call(
                ctx,
                id,
                480,
                "Temporarily Unavailable",
                Some("admin_hangup"),
            );
        }
        true
    }

    fn hang_up_both(&mut self, ctx: &mut SipCtx<'_>, id: u64) {
        for side in [Side::A, Side::B] {
            let Some(call) = self.calls.get_mut(&id) else {
                return;
            };
            let (Some(peer), Some(d)) = (call.peer(side), call.dialog(side)) else {
                continue;
            };
            let via = ctx.local.new_via(peer);
            let bye = d.request(Method::Bye, &via);
            self.fire(ctx, id, bye, peer);
        }
    }

    /// A 2xx that matched no transaction: a retransmission after the transaction ended.
    pub fn on_stray_response(&mut self, ctx: &mut SipCtx<'_>, msg: &SipMessage, from: Peer) {
        let (Some(code), Some(call_id), Some(tag), Some((cseq, Method::Invite))) =
            (msg.status(), msg.call_id(), msg.from_tag(), msg.cseq())
        else {
            return;
        };
        if !(200..300).contains(&code) {
            return;
        }
        let Some(&(id, side)) = self.by_dialog.get(&(call_id.to_string(), tag)) else {
            return;
        };
        if let Some(call) = self.calls.get_mut(&id) {
            if let Some(ack) = call.ack_slot(side).as_ref().filter(|a| a.cseq == cseq) {
                ctx.resend(ack.bytes.clone(), from);
            }
        }
    }

    /// A transaction is gone; calls that have ended and have no open ones are freed.
    pub fn on_terminated(&mut self, key: &TxKey) {
        if let Some(&id) = self.by_invite.get(key) {
            if let Some(c) = self.calls.get_mut(&id) {
                c.a_tx_open = false;
            }
            self.reap(id);
            return;
        }
        if let Some((id, _)) = self.clients.remove(key) {
            if let Some(c) = self.calls.get_mut(&id) {
                c.open_tx = c.open_tx.saturating_sub(1);
            }
            self.reap(id);
        }
    }

    /// Fires due ring timeouts.
    pub fn on_timer(&mut self, ctx: &mut SipCtx<'_>) {
        self.alerts.on_timer(ctx);
        while let Some(Reverse((t, id))) = self.ring_timers.peek().copied() {
            if t > ctx.now {
                break;
            }
            self.ring_timers.pop();
            let ringing = self
                .calls
                .get(&id)
                .is_some_and(|c| matches!(c.phase, Phase::Calling | Phase::Ringing));
            if ringing {
                self.fail_call(ctx, id, 480, "Temporarily Unavailable", Some("no_answer"));
            }
        }
    }
}

/// A response to the caller's INVITE with our To tag, our Contact for 1xx/2xx and the
/// body of `relayed` (the callee's response) when given.
fn a_response(
    ctx: &mut SipCtx<'_>,
    relay: Option<&MediaRelay>,
    call: &mut Call,
    code: u16,
    reason: &str,
    relayed: Option<&SipMessage>,
) -> SipMessage {
    let mut r = call.a_invite.response(code, reason);
    r.set_to_tag(&call.a_tag);
    if code < 300 {
        r.headers
            .push("Contact", ctx.local.contact(&call.callee, call.a_peer));
        r.headers.push("Allow", crate::core::ALLOW);
    }
    if let Some(m) = relayed {
        let (session, peer) = (call.media.as_ref(), call.a_peer);
        if let Some(p) = media::carry(relay, session, ctx.local, Side::B, m, &mut r, peer) {
            call.media_peers[Side::B.index()] = Some(p);
        }
    }
    r
}

/// 481 for a request that names a dialog or transaction we do not have.
fn no_such_dialog(req: &SipMessage) -> SipMessage {
    req.response(481, "Call/Transaction Does Not Exist")
}

fn reason_of(msg: &SipMessage) -> &str {
    match &msg.start {
        crate::sip::message::StartLine::Response { reason, .. } => reason,
        _ => "",
    }
}

/// RFC 3261 §16.7 step 6, simplified: 6xx beats everything, busy beats other failures,
/// then 4xx over 5xx over 3xx, and our own 408/487 least.
fn failure_rank(code: u16) -> u8 {
    match code {
        600..=699 => 6,
        486 => 5,
        487 | 408 => 1,
        400..=499 => 4,
        500..=599 => 3,
        _ => 2,
    }
}
