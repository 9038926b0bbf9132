//! Counters every part of the node increments, logged periodically and exported on the
//! admin listener's `/metrics` (see `admin::prometheus` and ops/METRICS.md).

pub mod histogram;
pub mod sip;

pub use histogram::Histogram;

use crate::calls::cdr::Cdr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Process-wide counters (monotonic unless named as a gauge).
#[derive(Debug)]
pub struct Metrics {
    /// Well-formed messages received.
    pub messages_in: AtomicU64,
    /// Messages that failed to parse (answered 400/505/513 where addressable).
    pub malformed: AtomicU64,
    /// Datagrams above the size limit, dropped unread.
    pub dropped_oversize: AtomicU64,
    /// Messages dropped because the core queue was full (requests got 503).
    pub dropped_overload: AtomicU64,
    /// UDP sends that failed.
    pub udp_send_errors: AtomicU64,
    /// TCP sends that failed (no connection, queue full).
    pub tcp_send_errors: AtomicU64,
    /// TCP connections refused by the per-IP or total limit.
    pub tcp_refused: AtomicU64,
    /// TCP connections closed for idleness.
    pub tcp_idle_closed: AtomicU64,
    /// Gauge: open TCP connections.
    pub tcp_connections: AtomicU64,
    /// REGISTER requests answered 200.
    pub registrations_ok: AtomicU64,
    /// REGISTER requests without credentials, challenged statelessly (401).
    pub registrations_challenged: AtomicU64,
    /// REGISTER requests refused after credentials were given.
    pub registrations_failed: AtomicU64,
    /// Calls attempted (past authentication).
    pub calls_attempted: AtomicU64,
    /// Calls answered.
    pub calls_answered: AtomicU64,
    /// Requests refused with 503 by the call or transaction limits.
    pub overload_rejects: AtomicU64,
    /// New REGISTERs/INVITEs refused with 503 while no cluster leader was known.
    pub no_quorum_rejects: AtomicU64,
    /// Store writes that failed.
    pub store_errors: AtomicU64,
    /// Times this node took the virtual IP over.
    pub vip_acquired: AtomicU64,
    /// Times this node let go of the virtual IP.
    pub vip_released: AtomicU64,
    /// Gauge: 1 while this node holds the virtual IP.
    pub vip_held: AtomicU64,
    /// SIP messages not sent because this node does not hold the VIP.
    pub vip_sends_dropped: AtomicU64,
    /// Answered calls taken over from another node's records.
    pub calls_taken_over: AtomicU64,
    /// Ringing calls ended because the node handling them went away.
    pub calls_failed_over: AtomicU64,
    /// Switchover notifications delivered (one per channel and switchover).
    pub notifications_sent: AtomicU64,
    /// Switchover notifications given up after every attempt failed.
    pub notifications_failed: AtomicU64,
    /// Switchover notifications not attempted: too many announcements in flight.
    pub notifications_dropped: AtomicU64,
    /// Requests received and responses sent, by method (and code).
    pub sip: sip::SipCounters,
    /// Gauge, published by the SIP core: transactions in flight.
    pub transactions: AtomicU64,
    /// Published by the SIP core: retransmissions its timers sent (A, E, G, 2xx).
    pub retransmissions: AtomicU64,
    /// Gauge, published by the SIP core: registration bindings (contacts).
    pub registered_contacts: AtomicU64,
    /// Gauge, published by the SIP core: addresses of record with a binding.
    pub registered_extensions: AtomicU64,
    /// Gauge, published by the SIP core: configured extensions.
    pub extensions: AtomicU64,
    /// Gauge, published by the SIP core: calls in progress.
    pub calls_active: AtomicU64,
    /// Calls ended, by disposition in [`DISPOSITIONS`] order.
    pub calls_ended: [AtomicU64; 5],
    /// INVITE received to final answer relayed to the caller.
    pub call_setup: Histogram,
    /// RTP packets lost (sequence gaps) in ended calls' streams.
    pub media_lost: AtomicU64,
    /// Interarrival jitter of ended calls' streams.
    pub media_jitter: Histogram,
    /// Cluster writes: proposal to committed and applied.
    pub raft_commit: Histogram,
}

/// Disposition labels of `calls_ended`, as CDRs spell them.
pub const DISPOSITIONS: [&str; 5] = ["ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CANCELLED"];

impl Default for Metrics {
    fn default() -> Self {
        let z = || AtomicU64::new(0);
        Metrics {
            messages_in: z(),
            malformed: z(),
            dropped_oversize: z(),
            dropped_overload: z(),
            udp_send_errors: z(),
            tcp_send_errors: z(),
            tcp_refused: z(),
            tcp_idle_closed: z(),
            tcp_connections: z(),
            registrations_ok: z(),
            registrations_challenged: z(),
            registrations_failed: z(),
            calls_attempted: z(),
            calls_answered: z(),
            overload_rejects: z(),
            no_quorum_rejects: z(),
            store_errors: z(),
            vip_acquired: z(),
            vip_released: z(),
            vip_held: z(),
            vip_sends_dropped: z(),
            calls_taken_over: z(),
            calls_failed_over: z(),
            notifications_sent: z(),
            notifications_failed: z(),
            notifications_dropped: z(),
            sip: sip::SipCounters::default(),
            transactions: z(),
            retransmissions: z(),
            registered_contacts: z(),
            registered_extensions: z(),
            extensions: z(),
            calls_active: z(),
            calls_ended: Default::default(),
            call_setup: Histogram::new(histogram::SETUP_BOUNDS),
            media_lost: z(),
            media_jitter: Histogram::new(histogram::JITTER_BOUNDS),
            raft_commit: Histogram::new(histogram::COMMIT_BOUNDS),
        }
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn set(&self, g: &AtomicU64, value: usize) {
        g.store(value as u64, Ordering::Relaxed);
    }

    /// Reads a counter or gauge.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Counts an ended call from its CDR: its disposition, and the loss and jitter of
    /// each stream the relay carried.
    pub fn on_cdr(&self, cdr: &Cdr) {
        use crate::calls::cdr::Disposition;
        let i = match cdr.disposition {
            Disposition::Answered => 0,
            Disposition::NoAnswer => 1,
            Disposition::Busy => 2,
            Disposition::Failed => 3,
            Disposition::Cancelled => 4,
        };
        self.inc(&self.calls_ended[i]);
        if let Some(m) = &cdr.media {
            for side in [&m.caller, &m.callee] {
                // A side that sent nothing has no jitter to speak of.
                if side.packets > 0 {
                    self.media_lost.fetch_add(side.lost, Ordering::Relaxed);
                    self.media_jitter
                        .observe_duration(Duration::from_micros(side.jitter_us.into()));
                }
            }
        }
    }

    /// Name/value pairs for logging and export.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("messages_in", g(&self.messages_in)),
            ("malformed", g(&self.malformed)),
            ("dropped_oversize", g(&self.dropped_oversize)),
            ("dropped_overload", g(&self.dropped_overload)),
            ("udp_send_errors", g(&self.udp_send_errors)),
            ("tcp_send_errors", g(&self.tcp_send_errors)),
            ("tcp_refused", g(&self.tcp_refused)),
            ("tcp_idle_closed", g(&self.tcp_idle_closed)),
            ("tcp_connections", g(&self.tcp_connections)),
            ("registrations_ok", g(&self.registrations_ok)),
            (
                "registrations_challenged",
                g(&self.registrations_challenged),
            ),
            ("registrations_failed", g(&self.registrations_failed)),
            ("calls_attempted", g(&self.calls_attempted)),
            ("calls_answered", g(&self.calls_answered)),
            ("overload_rejects", g(&self.overload_rejects)),
            ("no_quorum_rejects", g(&self.no_quorum_rejects)),
            ("store_errors", g(&self.store_errors)),
            ("vip_acquired", g(&self.vip_acquired)),
            ("vip_released", g(&self.vip_released)),
            ("vip_held", g(&self.vip_held)),
            ("vip_sends_dropped", g(&self.vip_sends_dropped)),
            ("calls_taken_over", g(&self.calls_taken_over)),
            ("calls_failed_over", g(&self.calls_failed_over)),
            ("notifications_sent", g(&self.notifications_sent)),
            ("notifications_failed", g(&self.notifications_failed)),
            ("notifications_dropped", g(&self.notifications_dropped)),
        ]
    }
}
