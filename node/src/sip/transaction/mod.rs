//! SIP transactions (RFC 3261 §17, with the Accepted states of RFC 6026), sans-I/O.
//!
//! The layer owns no sockets and no clock: every entry point takes `now`, and returns the
//! [`Action`]s to perform (bytes to send, events for the transaction user). The caller asks
//! [`TransactionLayer::next_deadline`] when to call [`TransactionLayer::on_timer`] next.
//!
//! Timers live in one queue ([`timers`]) with lazy deletion: each transaction remembers the
//! deadline of each of its (at most three) timer slots, and a queued entry whose deadline
//! no longer matches its slot is stale and skipped. That keeps a tick proportional to the
//! timers that fire instead of a scan of every transaction, which matters at thousands of
//! transactions per second.

use crate::sharded_map::ShardedMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;

use super::message::{format_host, Method, SipMessage};
use super::Peer;

#[cfg(test)]
mod tests;
mod timers;

use timers::{Entry, TimerQueue};

/// Branch prefix that marks an RFC 3261 branch (§8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Default cap on live transactions (see [`TransactionLayer::with_limit`]).
pub const DEFAULT_MAX_TRANSACTIONS: usize = 100_000;

/// How long a transaction may wait for a final response with no RFC timer running
/// (client INVITE in Proceeding, server transaction before the TU answers). RFC 3261 puts
/// no bound there and relies on the TU; this guard keeps a lost TU or a peer that rings
/// forever from pinning table space. Like a proxy's Timer C (> 3 min, §16.6).
pub const DEFAULT_PROCEEDING_LIMIT: Duration = Duration::from_secs(300);

/// Timer D on unreliable transports: "at least 32 seconds" (RFC 3261 §17.1.1.2).
const TIMER_D: Duration = Duration::from_secs(32);

/// RFC 3261 timer base values (§17.1.1.1, Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate; base of every retransmission interval and the 64*T1 timeouts.
    pub t1: Duration,
    /// Cap on non-INVITE and 2xx/non-2xx response retransmission intervals.
    pub t2: Duration,
    /// Maximum time a message stays in the network (Timers I and K).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// 64*T1: Timers B, F, H, J, L and M.
    fn t64(&self) -> Duration {
        self.t1 * 64
    }
}

/// Identifies one transaction in the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TxKey {
    /// Server transaction (RFC 3261 §17.2.3): branch, sent-by of the top Via, and method
    /// (INVITE for an ACK, so that an ACK for a non-2xx finds its INVITE transaction).
    Server {
        /// Top Via branch (or a synthetic RFC 2543 key when it lacks the magic cookie).
        branch: String,
        /// Request method; INVITE for ACK.
        method: Method,
        /// Top Via sent-by as `host:port` (port defaulted to 5060).
        sent_by: String,
    },
    /// Client transaction (RFC 3261 §17.1.3): our branch and the CSeq method.
    Client {
        /// Branch of the Via we put on top.
        branch: String,
        /// Request method.
        method: Method,
    },
}

impl TxKey {
    /// The branch part of the key.
    pub fn branch(&self) -> &str {
        match self {
            TxKey::Server { branch, .. } | TxKey::Client { branch, .. } => branch,
        }
    }

    /// The method part of the key.
    pub fn method(&self) -> &Method {
        match self {
            TxKey::Server { method, .. } | TxKey::Client { method, .. } => method,
        }
    }
}

/// Something the caller must do.
// Actions live only until the caller drains the Vec; boxing the event would cost an
// allocation per delivery for no memory saved.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Action {
    /// Put bytes on the wire to `to`.
    Send {
        /// Serialised message.
        bytes: Bytes,
        /// Destination (for responses: the peer the request came from).
        to: Peer,
    },
    /// Hand an event to the transaction user (the core).
    Deliver(TuEvent),
}

/// Events for the transaction user.
#[derive(Debug, Clone)]
pub enum TuEvent {
    /// A new server transaction (not ACK, not CANCEL).
    Request {
        /// Key to answer with [`TransactionLayer::respond`].
        key: TxKey,
        /// The request.
        msg: SipMessage,
        /// Where it came from.
        from: Peer,
    },
    /// A CANCEL server transaction, and the INVITE server transaction it matches (§9.2).
    Cancel {
        /// Key of the CANCEL transaction (answer it 200 or 481).
        key: TxKey,
        /// The CANCEL.
        msg: SipMessage,
        /// Where it came from.
        from: Peer,
        /// The INVITE server transaction with the same branch and sent-by, if any.
        invite: Option<TxKey>,
    },
    /// An ACK that is not absorbed by a transaction: the end-to-end ACK for a 2xx.
    Ack {
        /// The ACK.
        msg: SipMessage,
        /// Where it came from.
        from: Peer,
        /// The Accepted INVITE server transaction it matched (its 2xx retransmission stops).
        invite: Option<TxKey>,
    },
    /// A response on a client transaction.
    Response {
        /// The client transaction.
        key: TxKey,
        /// The response.
        msg: SipMessage,
        /// Where it came from.
        from: Peer,
    },
    /// A response that matches no transaction (e.g. a 2xx retransmission after Timer M).
    StrayResponse {
        /// The response.
        msg: SipMessage,
        /// Where it came from.
        from: Peer,
    },
    /// Client Timer B/F (treat as 408), server Timer H, Timer L without an ACK for our 2xx
    /// (send BYE), or the proceeding guard ([`DEFAULT_PROCEEDING_LIMIT`]) expired.
    /// Usually followed at once by `Terminated`; a client INVITE whose guard expired in
    /// Proceeding is CANCELled and stays until its 487 (delivered as usual) or 64*T1.
    Timeout {
        /// The transaction.
        key: TxKey,
    },
    /// The transaction was removed from the table; its key is now meaningless.
    Terminated {
        /// The transaction.
        key: TxKey,
    },
}

/// Transaction state (RFC 3261 §17 figures 5-8, RFC 6026 figures 3 and 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    /// Client INVITE: request sent, nothing heard.
    Calling,
    /// Non-INVITE: request sent/received, no response yet.
    Trying,
    /// A provisional response was sent/received.
    Proceeding,
    /// A final response (non-2xx for INVITE) was sent/received; absorbing retransmissions.
    Completed,
    /// Server INVITE: ACK for the non-2xx received (Timer I running).
    Confirmed,
    /// INVITE with a 2xx: waiting for retransmissions/ACK (RFC 6026).
    Accepted,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Transactions created (server and client).
    pub created: u64,
    /// Transactions removed from the table.
    pub terminated: u64,
    /// New server transactions refused with 503 because the table was full.
    pub rejected_full: u64,
    /// Responses that matched no client transaction.
    pub stray_responses: u64,
    /// Requests and responses resent by a retransmission timer (A, E, G, 2xx).
    pub retransmissions: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InvServer,
    NonInvServer,
    InvClient,
    NonInvClient,
}

/// Timer slots; each state uses each slot for at most one RFC timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// A, E, G, and the 2xx retransmission in server Accepted.
    Retransmit = 0,
    /// B, F, H, the CANCEL wait (§9.1) and the proceeding guard.
    Timeout = 1,
    /// D, I, J, K, L, M: how long a finished transaction lingers.
    Linger = 2,
}

/// What identifies the INVITE a 2xx ACK belongs to (its branch differs, RFC 3261 §17.1.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AckKey {
    call_id: String,
    cseq: u32,
    from_tag: String,
}

impl AckKey {
    fn of(msg: &SipMessage) -> Option<AckKey> {
        Some(AckKey {
            call_id: msg.call_id()?.to_string(),
            cseq: msg.cseq()?.0,
            from_tag: msg.from_tag().unwrap_or_default(),
        })
    }
}

struct Tx {
    /// Distinguishes a transaction from a later one reusing its key, for stale heap entries.
    id: u64,
    kind: Kind,
    state: TxState,
    peer: Peer,
    /// Client: the request, for building CANCEL and the non-2xx ACK.
    request: Option<SipMessage>,
    /// Client: request bytes for retransmission.
    request_bytes: Bytes,
    /// Server: last response sent, for retransmission.
    last_response: Option<Bytes>,
    /// Client INVITE: the ACK sent for a non-2xx, resent on retransmitted finals.
    ack: Option<Bytes>,
    /// Current retransmission interval.
    interval: Duration,
    timers: [Option<Instant>; 3],
    /// Client INVITE: CANCEL asked for before any provisional (§9.1).
    cancel_pending: bool,
    /// Client INVITE: CANCEL sent.
    cancel_sent: bool,
    /// Server INVITE in Accepted: an ACK for our 2xx arrived.
    ack_seen: bool,
    /// Server INVITE: index entry for matching the 2xx ACK.
    ack_key: Option<AckKey>,
    /// Client INVITE: Timeout already delivered (proceeding guard); do not repeat it.
    timed_out: bool,
}

impl Tx {
    fn new(id: u64, kind: Kind, state: TxState, peer: Peer, t1: Duration) -> Tx {
        Tx {
            id,
            kind,
            state,
            peer,
            request: None,
            request_bytes: Bytes::new(),
            last_response: None,
            ack: None,
            interval: t1,
            timers: [None; 3],
            cancel_pending: false,
            cancel_sent: false,
            ack_seen: false,
            ack_key: None,
            timed_out: false,
        }
    }

    fn clear(&mut self, slot: Slot) {
        self.timers[slot as usize] = None;
    }
}

#[derive(Default)]
struct Timers {
    queue: TimerQueue,
}

impl Timers {
    /// Arms `slot` of `tx` to fire `delay` after `now`.
    fn arm(&mut self, tx: &mut Tx, key: &TxKey, slot: Slot, now: Instant, delay: Duration) {
        let at = self.queue.push(now, delay, tx.id, slot, key.clone());
        tx.timers[slot as usize] = Some(at);
    }
}

fn entry_live(txs: &ShardedMap<TxKey, Box<Tx>>, e: &Entry) -> bool {
    txs.get(&e.key)
        .is_some_and(|tx| tx.id == e.tx_id && tx.timers[e.slot as usize] == Some(e.at))
}

/// The table of all transactions of one node.
pub struct TransactionLayer {
    cfg: TimerConfig,
    max: usize,
    proceeding_limit: Duration,
    // Sharded and boxed: growing the table moves one shard of small buckets at a time.
    txs: ShardedMap<TxKey, Box<Tx>>,
    /// Server INVITE transactions in Accepted, for matching the ACK of a 2xx.
    accepted: ShardedMap<AckKey, TxKey>,
    timers: Timers,
    next_id: u64,
    stats: TxStats,
}

impl TransactionLayer {
    /// A layer with [`DEFAULT_MAX_TRANSACTIONS`].
    pub fn new(cfg: TimerConfig) -> Self {
        Self::with_limit(cfg, DEFAULT_MAX_TRANSACTIONS)
    }

    /// A layer that refuses new server transactions with 503 once `max` are live.
    pub fn with_limit(cfg: TimerConfig, max: usize) -> Self {
        TransactionLayer {
            cfg,
            max,
            proceeding_limit: DEFAULT_PROCEEDING_LIMIT,
            txs: ShardedMap::default(),
            accepted: ShardedMap::default(),
            timers: Timers::default(),
            next_id: 0,
            stats: TxStats::default(),
        }
    }

    /// Changes the guard on transactions waiting for a final response with no RFC timer.
    pub fn set_proceeding_limit(&mut self, limit: Duration) {
        self.proceeding_limit = limit;
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// True when no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Counters since creation.
    pub fn stats(&self) -> TxStats {
        self.stats
    }

    /// State of a live transaction.
    pub fn state(&self, key: &TxKey) -> Option<TxState> {
        self.txs.get(key).map(|tx| tx.state)
    }

    /// Earliest instant at which [`Self::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        // Every mutating call prunes stale entries off the top, so the top is live.
        self.timers.queue.next_at()
    }

    fn new_tx(&mut self, kind: Kind, state: TxState, peer: Peer) -> Tx {
        self.next_id += 1;
        self.stats.created += 1;
        Tx::new(self.next_id, kind, state, peer, self.cfg.t1)
    }

    /// Removes a transaction and tells the TU.
    fn terminate(&mut self, key: &TxKey, out: &mut Vec<Action>) {
        if let Some(tx) = self.txs.remove(key) {
            if let Some(ak) = tx.ack_key {
                if self.accepted.get(&ak) == Some(key) {
                    self.accepted.remove(&ak);
                }
            }
            self.stats.terminated += 1;
            out.push(Action::Deliver(TuEvent::Terminated { key: key.clone() }));
        }
    }

    /// Arms the Linger slot, or terminates at once for a zero wait (reliable transports).
    fn linger(&mut self, key: &TxKey, wait: Duration, now: Instant, out: &mut Vec<Action>) {
        if wait.is_zero() {
            self.terminate(key, out);
        } else if let Some(tx) = self.txs.get_mut(key) {
            self.timers.arm(tx, key, Slot::Linger, now, wait);
        }
    }

    /// Drops stale entries off the heap top (so `next_deadline` is exact) and compacts the
    /// heap when stale entries dominate, so memory follows the live transaction count.
    fn prune(&mut self) {
        let txs = &self.txs;
        self.timers.queue.prune_fronts(|e| entry_live(txs, e));
        if self.timers.queue.len() > 4 * self.txs.len() + 1024 {
            self.timers.queue.retain(|e| entry_live(txs, e));
        }
    }

    /// Handles a request from the network.
    pub fn on_request(&mut self, msg: SipMessage, from: Peer, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(method) = msg.method().cloned() else {
            return out;
        };
        let Some(key) = server_key(&msg, &method) else {
            return out;
        };
        if method == Method::Ack {
            self.on_ack(key, msg, from, now, &mut out);
        } else if let Some(tx) = self.txs.get(&key) {
            // Retransmission: answer with the last response, never bother the TU again.
            // Nothing to resend in Trying; Accepted and Confirmed absorb (the 2xx is
            // retransmitted by its own timer, RFC 6026 §7.1).
            if matches!(tx.state, TxState::Proceeding | TxState::Completed) {
                if let Some(bytes) = &tx.last_response {
                    out.push(Action::Send {
                        bytes: bytes.clone(),
                        to: tx.peer,
                    });
                }
            }
        } else if self.txs.len() >= self.max {
            self.stats.rejected_full += 1;
            let mut r = msg.response(503, "Service Unavailable");
            r.headers.push("Retry-After", "5");
            out.push(Action::Send {
                bytes: r.to_bytes(),
                to: from,
            });
        } else {
            self.create_server(key, method, msg, from, now, &mut out);
        }
        self.prune();
        out
    }

    fn create_server(
        &mut self,
        key: TxKey,
        method: Method,
        msg: SipMessage,
        from: Peer,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if method == Method::Invite {
            let mut tx = self.new_tx(Kind::InvServer, TxState::Proceeding, from);
            // RFC 3261 §17.2.1 allows waiting 200 ms; answering at once stops the
            // client's Timer A retransmissions sooner and costs nothing.
            let trying = msg.response(100, "Trying").to_bytes();
            out.push(Action::Send {
                bytes: trying.clone(),
                to: from,
            });
            tx.last_response = Some(trying);
            tx.ack_key = AckKey::of(&msg);
            let guard = self.proceeding_limit;
            self.timers.arm(&mut tx, &key, Slot::Timeout, now, guard);
            self.txs.insert(key.clone(), Box::new(tx));
            out.push(Action::Deliver(TuEvent::Request { key, msg, from }));
            return;
        }
        let mut tx = self.new_tx(Kind::NonInvServer, TxState::Trying, from);
        // The client gives up after Timer F (64*T1); an answer later than that is useless.
        let guard = self.cfg.t64().min(self.proceeding_limit);
        self.timers.arm(&mut tx, &key, Slot::Timeout, now, guard);
        self.txs.insert(key.clone(), Box::new(tx));
        if method == Method::Cancel {
            let invite = TxKey::Server {
                branch: key.branch().to_string(),
                method: Method::Invite,
                sent_by: match &key {
                    TxKey::Server { sent_by, .. } => sent_by.clone(),
                    TxKey::Client { .. } => String::new(),
                },
            };
            let invite = self
                .txs
                .get(&invite)
                .is_some_and(|t| t.kind == Kind::InvServer)
                .then_some(invite);
            out.push(Action::Deliver(TuEvent::Cancel {
                key,
                msg,
                from,
                invite,
            }));
        } else {
            out.push(Action::Deliver(TuEvent::Request { key, msg, from }));
        }
    }

    fn on_ack(
        &mut self,
        key: TxKey,
        msg: SipMessage,
        from: Peer,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let cfg = self.cfg;
        if let Some(tx) = self.txs.get_mut(&key) {
            if tx.kind == Kind::InvServer {
                match tx.state {
                    TxState::Completed => {
                        // ACK for our non-2xx: absorb it and wait Timer I for stray copies.
                        tx.state = TxState::Confirmed;
                        tx.clear(Slot::Retransmit);
                        tx.clear(Slot::Timeout);
                        let wait = if tx.peer.is_reliable() {
                            Duration::ZERO
                        } else {
                            cfg.t4
                        };
                        self.linger(&key, wait, now, out);
                        return;
                    }
                    TxState::Confirmed => return,
                    TxState::Accepted => {
                        // A 2xx ACK reusing the INVITE branch (RFC 2543 style peers).
                        tx.ack_seen = true;
                        tx.clear(Slot::Retransmit);
                        out.push(Action::Deliver(TuEvent::Ack {
                            msg,
                            from,
                            invite: Some(key),
                        }));
                        return;
                    }
                    _ => {}
                }
            }
        }
        // The ACK for a 2xx carries a new branch: match by dialog fields (RFC 6026 §8.7
        // leaves this to the TU; doing it here stops the 2xx retransmission promptly).
        let invite = AckKey::of(&msg).and_then(|k| self.accepted.get(&k).cloned());
        if let Some(ik) = &invite {
            if let Some(tx) = self.txs.get_mut(ik) {
                tx.ack_seen = true;
                tx.clear(Slot::Retransmit);
            }
        }
        out.push(Action::Deliver(TuEvent::Ack { msg, from, invite }));
    }

    /// Sends a TU response on a server transaction; a no-op if the transaction is gone or
    /// the response is not allowed in its state.
    pub fn respond(&mut self, key: &TxKey, msg: SipMessage, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(code) = msg.status() else {
            return out;
        };
        let cfg = self.cfg;
        let Some(tx) = self.txs.get_mut(key) else {
            return out;
        };
        let reliable = tx.peer.is_reliable();
        let mut linger = None;
        match (tx.kind, tx.state) {
            (Kind::InvServer, TxState::Proceeding) => {
                let bytes = msg.to_bytes();
                out.push(Action::Send {
                    bytes: bytes.clone(),
                    to: tx.peer,
                });
                tx.last_response = Some(bytes);
                if (200..300).contains(&code) {
                    // RFC 6026: stay to retransmit the 2xx (on every transport, since
                    // the 2xx is end-to-end and a proxy may forward it over UDP) and to
                    // absorb INVITE retransmissions, until Timer L.
                    tx.state = TxState::Accepted;
                    tx.clear(Slot::Timeout);
                    tx.interval = cfg.t1;
                    self.timers.arm(tx, key, Slot::Retransmit, now, cfg.t1);
                    self.timers.arm(tx, key, Slot::Linger, now, cfg.t64());
                    if let Some(ak) = tx.ack_key.clone() {
                        self.accepted.insert(ak, key.clone());
                    }
                } else if code >= 300 {
                    tx.state = TxState::Completed;
                    tx.interval = cfg.t1;
                    if !reliable {
                        self.timers.arm(tx, key, Slot::Retransmit, now, cfg.t1);
                    }
                    self.timers.arm(tx, key, Slot::Timeout, now, cfg.t64());
                }
            }
            (Kind::InvServer, TxState::Accepted) if (200..300).contains(&code) => {
                // The TU may pass a 2xx again (RFC 6026 §8.5); send it and retransmit it.
                let bytes = msg.to_bytes();
                out.push(Action::Send {
                    bytes: bytes.clone(),
                    to: tx.peer,
                });
                tx.last_response = Some(bytes);
            }
            (Kind::NonInvServer, TxState::Trying | TxState::Proceeding) => {
                let bytes = msg.to_bytes();
                out.push(Action::Send {
                    bytes: bytes.clone(),
                    to: tx.peer,
                });
                tx.last_response = Some(bytes);
                if code < 200 {
                    tx.state = TxState::Proceeding;
                } else {
                    tx.state = TxState::Completed;
                    tx.clear(Slot::Timeout);
                    linger = Some(if reliable { Duration::ZERO } else { cfg.t64() });
                }
            }
            _ => {}
        }
        if let Some(wait) = linger {
            self.linger(key, wait, now, &mut out);
        }
        self.prune();
        out
    }

    /// Starts a client transaction for `msg` (which should carry its top Via with a fresh
    /// branch; one is generated into the top Via if it has none). An ACK starts no
    /// transaction and is just sent (see [`Self::send_ack`]).
    pub fn request(&mut self, mut msg: SipMessage, to: Peer, now: Instant) -> (TxKey, Vec<Action>) {
        let mut out = Vec::new();
        let method = msg
            .method()
            .cloned()
            .unwrap_or_else(|| Method::Other(String::new()));
        let branch = match msg.branch() {
            Some(b) => b,
            None => {
                let b = new_branch();
                if let Some(mut via) = msg.top_via() {
                    via.set_param("branch", Some(b.clone()));
                    msg.headers.remove_first("Via");
                    msg.headers.push_front("Via", via.to_header());
                }
                b
            }
        };
        let key = TxKey::Client {
            branch,
            method: method.clone(),
        };
        if !msg.is_request() {
            return (key, out);
        }
        let bytes = msg.to_bytes();
        out.push(Action::Send {
            bytes: bytes.clone(),
            to,
        });
        if method == Method::Ack {
            return (key, out);
        }
        // A TU reusing a live branch replaces that transaction.
        self.terminate(&key, &mut out);
        let (kind, state) = if method == Method::Invite {
            (Kind::InvClient, TxState::Calling)
        } else {
            (Kind::NonInvClient, TxState::Trying)
        };
        let mut tx = self.new_tx(kind, state, to);
        tx.request = Some(msg);
        tx.request_bytes = bytes;
        if !to.is_reliable() {
            self.timers
                .arm(&mut tx, &key, Slot::Retransmit, now, self.cfg.t1);
        }
        self.timers
            .arm(&mut tx, &key, Slot::Timeout, now, self.cfg.t64());
        self.txs.insert(key.clone(), Box::new(tx));
        self.prune();
        (key, out)
    }

    /// Takes over the INVITE server transaction of a call another node was handling
    /// (it went away while the call rang): the transaction exists in Proceeding without
    /// the TU hearing of the request again, so that a final response sent on the
    /// returned key is retransmitted until the caller ACKs it.
    pub fn adopt_server_invite(
        &mut self,
        invite: &SipMessage,
        from: Peer,
        now: Instant,
    ) -> Option<TxKey> {
        let key = server_key(invite, &Method::Invite)?;
        if self.txs.get(&key).is_some() {
            return Some(key);
        }
        let mut tx = self.new_tx(Kind::InvServer, TxState::Proceeding, from);
        tx.ack_key = AckKey::of(invite);
        let guard = self.proceeding_limit;
        self.timers.arm(&mut tx, &key, Slot::Timeout, now, guard);
        self.txs.insert(key.clone(), Box::new(tx));
        Some(key)
    }

    /// Takes over an INVITE client transaction another node started (toward a callee
    /// that rings) and cancels it (RFC 3261 §9.1): the callee's 487 is then ACKed here.
    pub fn adopt_and_cancel_invite(
        &mut self,
        invite: SipMessage,
        to: Peer,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(branch) = invite.branch() else {
            return out;
        };
        let key = TxKey::Client {
            branch,
            method: Method::Invite,
        };
        let mut tx = self.new_tx(Kind::InvClient, TxState::Proceeding, to);
        tx.request_bytes = invite.to_bytes();
        tx.request = Some(invite);
        self.timers
            .arm(&mut tx, &key, Slot::Timeout, now, self.cfg.t64());
        self.txs.insert(key.clone(), Box::new(tx));
        self.start_cancel(&key, now, &mut out);
        self.prune();
        out
    }

    /// Sends an ACK for a 2xx (built by the dialog); it is not a transaction.
    pub fn send_ack(&self, msg: SipMessage, to: Peer) -> Vec<Action> {
        vec![Action::Send {
            bytes: msg.to_bytes(),
            to,
        }]
    }

    /// Cancels a client INVITE transaction (RFC 3261 §9.1). The CANCEL goes out now if a
    /// provisional was received, else as soon as one arrives (the key is returned at once
    /// either way). None if the transaction is gone, not an INVITE, already final or
    /// already being cancelled.
    pub fn cancel(&mut self, invite: &TxKey, now: Instant) -> Option<(TxKey, Vec<Action>)> {
        let tx = self.txs.get_mut(invite)?;
        if tx.kind != Kind::InvClient || tx.cancel_pending || tx.cancel_sent {
            return None;
        }
        let ckey = TxKey::Client {
            branch: invite.branch().to_string(),
            method: Method::Cancel,
        };
        match tx.state {
            TxState::Calling => {
                tx.cancel_pending = true;
                Some((ckey, Vec::new()))
            }
            TxState::Proceeding => {
                let mut out = Vec::new();
                self.start_cancel(invite, now, &mut out);
                self.prune();
                Some((ckey, out))
            }
            _ => None,
        }
    }

    fn start_cancel(&mut self, invite: &TxKey, now: Instant, out: &mut Vec<Action>) {
        let wait = self.cfg.t64();
        let Some(tx) = self.txs.get_mut(invite) else {
            return;
        };
        let Some(cancel) = tx.request.as_ref().and_then(build_cancel) else {
            return;
        };
        tx.cancel_pending = false;
        tx.cancel_sent = true;
        // §9.1: with no final response 64*T1 after the CANCEL, give the INVITE up.
        self.timers.arm(tx, invite, Slot::Timeout, now, wait);
        let peer = tx.peer;
        let (_, actions) = self.request(cancel, peer, now);
        out.extend(actions);
    }

    /// Handles a response from the network.
    pub fn on_response(&mut self, msg: SipMessage, from: Peer, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let (Some(code), Some(branch), Some((_, method))) =
            (msg.status(), msg.branch(), msg.cseq())
        else {
            return out;
        };
        let key = TxKey::Client { branch, method };
        let cfg = self.cfg;
        let proceeding_limit = self.proceeding_limit;
        let Some(tx) = self.txs.get_mut(&key) else {
            self.stats.stray_responses += 1;
            out.push(Action::Deliver(TuEvent::StrayResponse { msg, from }));
            return out;
        };
        let reliable = tx.peer.is_reliable();
        let deliver = |msg: SipMessage| {
            Action::Deliver(TuEvent::Response {
                key: key.clone(),
                msg,
                from,
            })
        };
        let mut linger = None;
        let mut send_cancel = false;
        match (tx.kind, tx.state) {
            (Kind::InvClient, TxState::Calling | TxState::Proceeding) => {
                if code < 200 {
                    tx.state = TxState::Proceeding;
                    tx.clear(Slot::Retransmit);
                    if !tx.cancel_sent {
                        // Timer B only covers Calling; the guard replaces it.
                        self.timers
                            .arm(tx, &key, Slot::Timeout, now, proceeding_limit);
                    }
                    send_cancel = tx.cancel_pending;
                    out.push(deliver(msg));
                } else if code < 300 {
                    tx.state = TxState::Accepted;
                    tx.cancel_pending = false;
                    tx.clear(Slot::Retransmit);
                    tx.clear(Slot::Timeout);
                    // Accepted lingers 64*T1 and never resends or cancels: free the request.
                    tx.request = None;
                    tx.request_bytes = Bytes::new();
                    self.timers.arm(tx, &key, Slot::Linger, now, cfg.t64());
                    out.push(deliver(msg));
                } else {
                    tx.state = TxState::Completed;
                    tx.cancel_pending = false;
                    tx.clear(Slot::Retransmit);
                    tx.clear(Slot::Timeout);
                    let ack = tx.request.take().and_then(|r| build_ack(&r, &msg));
                    tx.request_bytes = Bytes::new();
                    out.push(deliver(msg));
                    if let Some(ack) = ack {
                        let bytes = ack.to_bytes();
                        out.push(Action::Send {
                            bytes: bytes.clone(),
                            to: tx.peer,
                        });
                        tx.ack = Some(bytes);
                    }
                    linger = Some(if reliable { Duration::ZERO } else { TIMER_D });
                }
            }
            // Retransmitted 2xx or another fork's 2xx: the TU must ACK (or BYE) each.
            (Kind::InvClient, TxState::Accepted) if (200..300).contains(&code) => {
                out.push(deliver(msg));
            }
            // Retransmitted non-2xx final: our ACK was lost, resend it.
            (Kind::InvClient, TxState::Completed) if code >= 300 => {
                if let Some(bytes) = &tx.ack {
                    out.push(Action::Send {
                        bytes: bytes.clone(),
                        to: tx.peer,
                    });
                }
            }
            (Kind::NonInvClient, TxState::Trying | TxState::Proceeding) => {
                if code < 200 {
                    // Timer E keeps running; it switches to T2 when it next fires.
                    tx.state = TxState::Proceeding;
                } else {
                    tx.state = TxState::Completed;
                    tx.clear(Slot::Retransmit);
                    tx.clear(Slot::Timeout);
                    tx.request = None;
                    tx.request_bytes = Bytes::new();
                    linger = Some(if reliable { Duration::ZERO } else { cfg.t4 });
                }
                out.push(deliver(msg));
            }
            _ => {}
        }
        if send_cancel {
            self.start_cancel(&key, now, &mut out);
        }
        if let Some(wait) = linger {
            self.linger(&key, wait, now, &mut out);
        }
        self.prune();
        out
    }

    /// Fires every timer due at `now`.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(e) = self.timers.queue.pop_due(now) {
            self.fire(e, now, &mut out);
        }
        self.prune();
        out
    }

    fn fire(&mut self, e: Entry, now: Instant, out: &mut Vec<Action>) {
        if !entry_live(&self.txs, &e) {
            return;
        }
        let cfg = self.cfg;
        let Some(tx) = self.txs.get_mut(&e.key) else {
            return;
        };
        tx.clear(e.slot);
        match e.slot {
            Slot::Retransmit => {
                let bytes = match (tx.kind, tx.state) {
                    // Timer A doubles without the T2 cap (RFC 3261 §17.1.1.2).
                    (Kind::InvClient, TxState::Calling) => {
                        tx.interval *= 2;
                        Some(tx.request_bytes.clone())
                    }
                    (Kind::NonInvClient, TxState::Trying) => {
                        tx.interval = (tx.interval * 2).min(cfg.t2);
                        Some(tx.request_bytes.clone())
                    }
                    (Kind::NonInvClient, TxState::Proceeding) => {
                        tx.interval = cfg.t2;
                        Some(tx.request_bytes.clone())
                    }
                    (Kind::InvServer, TxState::Completed | TxState::Accepted) => {
                        tx.interval = (tx.interval * 2).min(cfg.t2);
                        tx.last_response.clone()
                    }
                    _ => None,
                };
                if let Some(bytes) = bytes {
                    self.stats.retransmissions += 1;
                    out.push(Action::Send { bytes, to: tx.peer });
                    // At least 1 ms, so a zero T1 cannot spin this loop.
                    let delay = tx.interval.max(Duration::from_millis(1));
                    self.timers.arm(tx, &e.key, Slot::Retransmit, now, delay);
                }
            }
            Slot::Timeout => {
                if tx.kind == Kind::InvClient && tx.state == TxState::Proceeding && !tx.cancel_sent
                {
                    // Proceeding guard: CANCEL so the callee stops ringing, and keep the
                    // transaction until the 487 (which it must ACK) or 64*T1 (§9.1).
                    tx.timed_out = true;
                    out.push(Action::Deliver(TuEvent::Timeout { key: e.key.clone() }));
                    self.start_cancel(&e.key, now, out);
                    return;
                }
                if !tx.timed_out {
                    out.push(Action::Deliver(TuEvent::Timeout { key: e.key.clone() }));
                }
                self.terminate(&e.key, out);
            }
            Slot::Linger => {
                // Timer L with no ACK for our 2xx: the TU should tear the dialog down.
                if tx.kind == Kind::InvServer && tx.state == TxState::Accepted && !tx.ack_seen {
                    out.push(Action::Deliver(TuEvent::Timeout { key: e.key.clone() }));
                }
                self.terminate(&e.key, out);
            }
        }
    }
}

/// A fresh RFC 3261 branch: the magic cookie and 16 random alphanumerics.
pub fn new_branch() -> String {
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(MAGIC_COOKIE.len() + 16);
    s.push_str(MAGIC_COOKIE);
    s.extend((0..16).map(|_| char::from(rng.sample(rand::distributions::Alphanumeric))));
    s
}

/// Server transaction key for a request (RFC 3261 §17.2.3).
fn server_key(msg: &SipMessage, method: &Method) -> Option<TxKey> {
    let via = msg.top_via()?;
    let sent_by = format!(
        "{}:{}",
        format_host(&via.host.to_ascii_lowercase()),
        via.port.unwrap_or(5060)
    );
    let key_method = match method {
        Method::Ack | Method::Invite => Method::Invite,
        m => m.clone(),
    };
    let branch = match via.branch() {
        Some(b) if b.starts_with(MAGIC_COOKIE) => b.to_string(),
        _ => {
            // RFC 2543 peer: build a key from what its INVITE, CANCEL and non-2xx ACK
            // share (the To tag is left out: the ACK carries one the INVITE lacked).
            let (n, _) = msg.cseq()?;
            format!(
                "rfc2543|{}|{}|{}|{}|{}",
                msg.uri()?,
                msg.call_id()?,
                msg.from_tag().unwrap_or_default(),
                n,
                msg.headers.get("Via")?
            )
        }
    };
    Some(TxKey::Server {
        branch,
        method: key_method,
        sent_by,
    })
}

/// Headers a CANCEL or non-2xx ACK copies from the INVITE (RFC 3261 §9.1, §17.1.1.3).
fn build_from_invite(invite: &SipMessage, method: Method, to: &str) -> Option<SipMessage> {
    let (n, _) = invite.cseq()?;
    let mut m = SipMessage::request(method.clone(), invite.uri()?);
    m.headers.push("Via", invite.headers.get("Via")?);
    m.headers.push("Max-Forwards", "70");
    for r in invite.headers.get_all("Route") {
        m.headers.push("Route", r);
    }
    m.headers.push("From", invite.headers.get("From")?);
    m.headers.push("To", to);
    m.headers.push("Call-ID", invite.call_id()?);
    m.headers.push("CSeq", format!("{n} {method}"));
    Some(m)
}

fn build_cancel(invite: &SipMessage) -> Option<SipMessage> {
    build_from_invite(invite, Method::Cancel, invite.headers.get("To")?)
}

fn build_ack(invite: &SipMessage, resp: &SipMessage) -> Option<SipMessage> {
    build_from_invite(invite, Method::Ack, resp.headers.get("To")?)
}
