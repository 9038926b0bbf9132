//! Counters every part of the node increments; exported by the admin API in a later issue
//! and logged periodically until then.

use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters (monotonic unless named as a gauge).
#[derive(Debug, Default)]
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
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
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
        ]
    }
}
