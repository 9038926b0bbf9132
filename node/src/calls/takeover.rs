//! Calls changing hands with the virtual IP. The node taking the VIP over continues the
//! answered calls of the replicated records (their dialogs, and their relay sessions on
//! the same ports, which the phones keep sending to) and ends the ringing ones cleanly.
//! The node letting go of it keeps its calls suspended (the core fires none of their
//! timers); if it takes the VIP back, the records say which of them are still its own.

use super::cdr::{rfc3339, secs_between, Cdr, Disposition};
use super::media::MediaRecord;
use super::record::{CallRecord, Legs, Setup};
use super::{Call, Calls, Phase, Side};
use crate::core::SipCtx;
use crate::sip::message::{self, Method, SipMessage};
use crate::sip::transaction::TxKey;
use crate::store::Command;
use ::media::ports::PortPair;
use ::media::session::PeerMedia;
use ::media::udp::SessionPorts;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// How far our CSeq jumps in a dialog taken over: requests the previous node sent after
/// it last wrote the record stay below the next one sent from here (RFC 3261 §12.2.1.1
/// asks for an increase, not for consecutive numbers).
const CSEQ_JUMP: u32 = 1000;

/// Attempts, 2 ms apart, to open ports this relay is still closing.
const PORTS_BACK_TRIES: usize = 50;

/// What a takeover did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TakeOver {
    /// Answered calls continued here.
    pub continued: usize,
    /// Ringing calls ended.
    pub ended: usize,
    /// Calls of this node's own (suspended) that the records confirm.
    pub kept: usize,
    /// Calls of this node's own that ended elsewhere meanwhile, or changed there.
    pub dropped: usize,
}

fn time_of(text: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(SystemTime::from)
        .unwrap_or_else(|_| SystemTime::now())
}

fn pair(rtp: u16) -> PortPair {
    PortPair {
        rtp,
        rtcp: rtp.wrapping_add(1),
    }
}

impl Calls {
    /// Takes over the cluster's live calls from their records.
    pub fn take_over(&mut self, ctx: &mut SipCtx<'_>, records: Vec<CallRecord>) -> TakeOver {
        let mut done = TakeOver::default();
        let known = self.reconcile(&records, &mut done);
        for r in records {
            if known.contains(&r.call_id) {
                continue;
            }
            if r.legs.is_some() {
                self.continue_answered(r);
                done.continued += 1;
                ctx.metrics.inc(&ctx.metrics.calls_taken_over);
            } else {
                end_ringing(ctx, r);
                done.ended += 1;
                ctx.metrics.inc(&ctx.metrics.calls_failed_over);
            }
        }
        done
    }

    /// Continues an answered call here: its dialogs as recorded, its relay session on
    /// the recorded ports.
    fn continue_answered(&mut self, r: CallRecord) {
        let Some(Legs { a, b }) = r.legs else {
            return;
        };
        let (mut ad, mut bd) = (a.dialog, b.dialog);
        ad.local_seq = ad.local_seq.saturating_add(CSEQ_JUMP);
        bd.local_seq = bd.local_seq.saturating_add(CSEQ_JUMP);
        let media = r.media.as_ref().and_then(|m| self.reopen_media(m));
        let id = self.next_id;
        self.next_id += 1;
        let call = Call {
            caller: r.caller,
            callee: r.callee,
            // The initial INVITE's transaction ended on the old node; nothing here
            // answers it again.
            a_invite: SipMessage::request(Method::Invite, ad.remote_target.clone()),
            a_key: TxKey::Server {
                branch: format!("taken-over-{id}"),
                method: Method::Invite,
                sent_by: String::new(),
            },
            a_peer: a.peer,
            a_tag: ad.local_tag.clone(),
            a_call_id: r.call_id,
            b_call_id: bd.call_id.clone(),
            b_tag: bd.local_tag.clone(),
            a_dialog: Some(ad),
            forks: Vec::new(),
            winner: None,
            b_dialog: Some(bd),
            b_peer: Some(b.peer),
            phase: Phase::Answered,
            start: time_of(&r.start),
            // Answered before it came here: its setup time was the old node's to measure.
            arrived: std::time::Instant::now(),
            answer: Some(
                r.answer
                    .as_deref()
                    .map(time_of)
                    .unwrap_or_else(SystemTime::now),
            ),
            best_failure: None,
            owed_ack: None,
            acks: [None, None],
            reinvite_pending: false,
            open_tx: 0,
            a_tx_open: false,
            media,
            media_peers: r
                .media
                .as_ref()
                .map(|m| [m.a_peer, m.b_peer])
                .unwrap_or_default(),
        };
        self.by_dialog
            .insert((call.a_call_id.clone(), call.a_tag.clone()), (id, Side::A));
        self.by_dialog
            .insert((call.b_call_id.clone(), call.b_tag.clone()), (id, Side::B));
        if let Some(s) = &call.media {
            self.by_session.insert(s.id.0, id);
        }
        self.calls.insert(id, call);
        self.live += 1;
    }

    /// Opens the recorded relay session's ports here; the phones go on sending to
    /// them, and each side latches again on its first packet.
    fn reopen_media(&self, m: &MediaRecord) -> Option<SessionPorts> {
        let relay = self.relay.as_deref()?;
        let peer = |p: &Option<PeerMedia>| p.unwrap_or_else(PeerMedia::unknown);
        let adopt = || {
            relay.adopt_session(
                pair(m.a_port),
                pair(m.b_port),
                peer(&m.a_peer),
                peer(&m.b_peer),
            )
        };
        let mut result = adopt();
        // Ports this relay just closed (a call of its own dropped for its record) come
        // back once the forwarding thread has closed the sockets: a moment.
        for _ in 0..PORTS_BACK_TRIES {
            match result {
                Err(::media::udp::RelayError::PortsInUse(_)) => {
                    std::thread::sleep(Duration::from_millis(2));
                    result = adopt();
                }
                _ => break,
            }
        }
        match result {
            Ok(ports) => Some(ports),
            Err(e) => {
                tracing::warn!(error = %e, a = m.a_port, b = m.b_port, "relay session not taken over: the call continues without media");
                None
            }
        }
    }

    /// Matches this node's own calls (kept while it did not hold the VIP) against the
    /// records: a call recorded as this node last left it is kept; one that ended
    /// elsewhere, or that another node changed meanwhile, is dropped without a word (a
    /// changed one is then continued from its record). Returns the Call-IDs kept.
    fn reconcile(&mut self, records: &[CallRecord], done: &mut TakeOver) -> HashSet<String> {
        let mut kept = HashSet::new();
        let ours: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.phase != Phase::Ended)
            .map(|(id, _)| *id)
            .collect();
        for id in ours {
            let Some(call) = self.calls.get(&id) else {
                continue;
            };
            let same = records.iter().any(|r| {
                r.call_id == call.a_call_id && {
                    let mine = call.record(r.node);
                    mine.legs == r.legs && mine.answer == r.answer
                }
            });
            if same {
                kept.insert(call.a_call_id.clone());
                done.kept += 1;
            } else {
                self.drop_call(id);
                done.dropped += 1;
            }
        }
        kept
    }

    /// Forgets a call without a word on the wire or in the store.
    fn drop_call(&mut self, id: u64) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        if let (Some(relay), Some(p)) = (self.relay.as_deref(), call.media.take()) {
            self.by_session.remove(&p.id.0);
            let _ = relay.destroy(p.id);
        }
        self.by_invite.remove(&call.a_key);
        self.by_dialog.remove(&(call.a_call_id, call.a_tag));
        self.by_dialog.remove(&(call.b_call_id, call.b_tag));
        self.clients.retain(|_, (owner, _)| *owner != id);
        if call.phase != Phase::Ended {
            self.live = self.live.saturating_sub(1);
        }
    }
}

/// Ends a call that rang on a node that went away: 503 to the caller (on a server
/// transaction taken over, so it is retransmitted until ACKed), CANCEL to each fork,
/// and its CDR.
fn end_ringing(ctx: &mut SipCtx<'_>, r: CallRecord) {
    if let Some(setup) = r.setup.as_deref() {
        answer_caller(ctx, setup);
        for f in &setup.forks {
            match message::parse(f.invite.as_bytes()) {
                Ok(invite) => {
                    let actions = ctx.txn.adopt_and_cancel_invite(invite, f.peer, ctx.now);
                    ctx.out.extend(actions);
                }
                Err(e) => tracing::warn!(error = %e, "recorded fork INVITE unreadable"),
            }
        }
    }
    let start = time_of(&r.start);
    let end = SystemTime::now();
    ctx.write(Command::EndCall {
        call_id: r.call_id.clone(),
    });
    ctx.write(Command::AppendCdr(Cdr {
        call_id: r.call_id,
        caller: r.caller,
        callee: r.callee,
        start: r.start,
        answer: None,
        end: rfc3339(end),
        duration: secs_between(start, end),
        billsec: 0,
        disposition: Disposition::Failed,
        hangup_cause: "node_failover".into(),
        sip_status: 503,
        hangup_by: None,
        media: None,
    }));
}

fn answer_caller(ctx: &mut SipCtx<'_>, setup: &Setup) {
    let invite = match message::parse(setup.a_invite.as_bytes()) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "recorded caller INVITE unreadable");
            return;
        }
    };
    let Some(key) = ctx.txn.adopt_server_invite(&invite, setup.a_peer, ctx.now) else {
        return;
    };
    let mut r = invite.response(503, "Service Unavailable");
    r.set_to_tag(&setup.a_tag);
    // The call can be placed again at once: the new holder takes it.
    r.headers.push("Retry-After", "1");
    r.headers
        .push("Reason", "Q.850;cause=41;text=\"Temporary failure\"");
    ctx.respond(&key, r);
}
