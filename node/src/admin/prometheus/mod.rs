//! `GET /metrics`: the node's metrics in the Prometheus text format. Names, types and
//! labels follow the contract in ops/METRICS.md (a dashboard and alert rules are written
//! against it); every series carries `node="<Raft member id>"`.
//!
//! Values are read at scrape time from what the node keeps anyway: the atomics of
//! [`Metrics`], the media relay's counters and the Raft status. Nothing on the SIP
//! core's thread touches a label map or a lock.

mod families;
mod process;

use super::reply::{error, Reply};
use super::AdminState;
use crate::metrics::{Metrics, DISPOSITIONS};
use bytes::Bytes;
use families::{Families, Labels};
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use prometheus::Encoder;

/// `GET /metrics`.
pub fn metrics(state: &AdminState) -> Reply {
    match render(state) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            if let Ok(v) = HeaderValue::from_str(prometheus::TEXT_FORMAT) {
                r.headers_mut().insert(CONTENT_TYPE, v);
            }
            r
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}"),
        ),
    }
}

/// The text exposition of every metric.
pub fn render(state: &AdminState) -> Result<Vec<u8>, prometheus::Error> {
    let families = collect(state);
    let mut out = Vec::with_capacity(16 * 1024);
    prometheus::TextEncoder::new().encode(&families, &mut out)?;
    Ok(out)
}

fn collect(state: &AdminState) -> Vec<prometheus::proto::MetricFamily> {
    let status = state.member().and_then(|w| w.upgrade()).map(|m| m.status());
    // A cluster member is known by its Raft id; a standalone node by its configured one.
    let node = status.as_ref().map_or(state.node_id, |s| s.id);
    let mut f = Families::new(node);
    let m = &state.metrics;
    f.gauges(
        "softswitch_up",
        "1 while the node serves; version is the build's.",
        vec![(
            vec![("version", env!("CARGO_PKG_VERSION").to_string())],
            1.0,
        )],
    );
    sip_metrics(&mut f, m);
    calls(&mut f, m);
    media(&mut f, state);
    if let Some(s) = &status {
        raft(&mut f, s);
    }
    f.histogram(
        "softswitch_raft_commit_seconds",
        "Cluster writes from proposal to committed and applied.",
        m.raft_commit.snapshot(),
    );
    f.gauge(
        "softswitch_vip_held",
        "1 while this node holds the virtual IP.",
        Metrics::get(&m.vip_held) as f64,
    );
    f.counter(
        "softswitch_vip_acquired_total",
        "Virtual IP takeovers by this node.",
        Metrics::get(&m.vip_acquired),
    );
    f.counter(
        "softswitch_vip_released_total",
        "Virtual IP releases by this node.",
        Metrics::get(&m.vip_released),
    );
    memory(&mut f);
    f.into_inner()
}

fn labelled(name: &'static str, value: impl ToString) -> Labels {
    vec![(name, value.to_string())]
}

fn sip_metrics(f: &mut Families, m: &Metrics) {
    let g = Metrics::get;
    f.counters(
        "softswitch_sip_requests_total",
        "SIP requests received, by method (unknown methods as OTHER).",
        m.sip
            .requests()
            .map(|(method, n)| (labelled("method", method), n))
            .collect(),
    );
    f.counters(
        "softswitch_sip_responses_total",
        "SIP responses sent by this node, by the transaction's method and the code.",
        m.sip
            .responses()
            .map(|(method, code, n)| {
                (
                    vec![("method", method.to_string()), ("code", code.to_string())],
                    n,
                )
            })
            .collect(),
    );
    f.gauge(
        "softswitch_sip_transactions",
        "SIP transactions in flight.",
        g(&m.transactions) as f64,
    );
    f.counter(
        "softswitch_sip_retransmissions_total",
        "Retransmissions sent by the transaction timers (A, E, G).",
        g(&m.retransmissions),
    );
    f.counter(
        "softswitch_sip_parse_errors_total",
        "SIP messages that failed to parse.",
        g(&m.malformed),
    );
    f.counters(
        "softswitch_sip_dropped_total",
        "SIP messages dropped or refused, by reason.",
        vec![
            (labelled("reason", "oversize"), g(&m.dropped_oversize)),
            (
                labelled("reason", "overload"),
                g(&m.dropped_overload) + g(&m.overload_rejects) + g(&m.tcp_refused),
            ),
            (labelled("reason", "no_quorum"), g(&m.no_quorum_rejects)),
            (
                labelled("reason", "send_error"),
                g(&m.udp_send_errors) + g(&m.tcp_send_errors),
            ),
            (
                labelled("reason", "not_vip_holder"),
                g(&m.vip_sends_dropped),
            ),
        ],
    );
    f.gauge(
        "softswitch_registered_contacts",
        "Registered contacts (bindings).",
        g(&m.registered_contacts) as f64,
    );
    f.gauge(
        "softswitch_registered_extensions",
        "Extensions with at least one registered contact.",
        g(&m.registered_extensions) as f64,
    );
    f.gauge(
        "softswitch_extensions",
        "Configured extensions.",
        g(&m.extensions) as f64,
    );
    f.counters(
        "softswitch_registrations_total",
        "REGISTER requests by result.",
        vec![
            (labelled("result", "ok"), g(&m.registrations_ok)),
            (
                labelled("result", "challenged"),
                g(&m.registrations_challenged),
            ),
            (labelled("result", "failed"), g(&m.registrations_failed)),
        ],
    );
}

fn calls(f: &mut Families, m: &Metrics) {
    let g = Metrics::get;
    f.gauge(
        "softswitch_calls_active",
        "Calls in progress on this node.",
        g(&m.calls_active) as f64,
    );
    f.counter(
        "softswitch_call_attempts_total",
        "Calls attempted (past authentication).",
        g(&m.calls_attempted),
    );
    f.counter(
        "softswitch_calls_answered_total",
        "Calls answered.",
        g(&m.calls_answered),
    );
    f.counters(
        "softswitch_calls_ended_total",
        "Calls ended, by CDR disposition.",
        DISPOSITIONS
            .iter()
            .zip(m.calls_ended.iter())
            .map(|(d, n)| (labelled("disposition", d), g(n)))
            .collect(),
    );
    f.histogram(
        "softswitch_call_setup_seconds",
        "INVITE received to final answer relayed to the caller.",
        m.call_setup.snapshot(),
    );
}

fn media(f: &mut Families, state: &AdminState) {
    let c = state.relay.as_ref().map(|r| r.counters());
    let (sessions, packets, bytes, dropped) = c.map_or((0, 0, 0, 0), |c| {
        (
            c.sessions,
            c.forwarded + c.kernel_forwarded,
            c.bytes + c.kernel_bytes,
            c.dropped + c.send_failed,
        )
    });
    f.gauge(
        "softswitch_media_sessions",
        "Media relay sessions open.",
        sessions as f64,
    );
    f.counter(
        "softswitch_media_packets_total",
        "Packets relayed.",
        packets,
    );
    f.counter(
        "softswitch_media_bytes_total",
        "Payload bytes relayed (every backend and path).",
        bytes,
    );
    f.counter(
        "softswitch_media_packets_dropped_total",
        "Packets the relay dropped.",
        dropped,
    );
    let m = &state.metrics;
    f.counter(
        "softswitch_media_packets_lost_total",
        "RTP packets lost (sequence gaps) in ended calls' streams.",
        Metrics::get(&m.media_lost),
    );
    f.histogram(
        "softswitch_media_jitter_seconds",
        "Interarrival jitter of ended calls' streams.",
        m.media_jitter.snapshot(),
    );
}

fn raft(f: &mut Families, s: &consensus::Status) {
    f.gauge("softswitch_raft_term", "Current Raft term.", s.term as f64);
    f.gauge(
        "softswitch_raft_is_leader",
        "1 on the leader holding its lease.",
        if s.holds_lease() { 1.0 } else { 0.0 },
    );
    f.gauge(
        "softswitch_raft_leader",
        "Id of the leader this node follows (0: none).",
        s.leader.unwrap_or(0) as f64,
    );
    f.gauge(
        "softswitch_raft_commit_index",
        "Committed log index.",
        s.committed.unwrap_or(0) as f64,
    );
    f.gauge(
        "softswitch_raft_applied_index",
        "Applied log index.",
        s.applied.unwrap_or(0) as f64,
    );
    if s.holds_lease() {
        let last = s.last_log.unwrap_or(0);
        f.gauges(
            "softswitch_raft_follower_lag",
            "On the leader: log entries each follower is behind.",
            s.matched
                .iter()
                .filter(|(id, _)| **id != s.id)
                .map(|(id, matched)| {
                    let lag = last.saturating_sub(matched.unwrap_or(0));
                    (labelled("follower", id), lag as f64)
                })
                .collect(),
        );
    }
}

fn memory(f: &mut Families) {
    if let Some(rss) = process::resident_bytes() {
        f.gauge(
            "softswitch_process_resident_memory_bytes",
            "Resident set size of the process.",
            rss as f64,
        );
    }
    if let Some((allocated, resident)) = process::jemalloc_bytes() {
        f.gauge(
            "softswitch_jemalloc_allocated_bytes",
            "Bytes allocated by the application (jemalloc stats.allocated).",
            allocated as f64,
        );
        f.gauge(
            "softswitch_jemalloc_resident_bytes",
            "Bytes in physically resident jemalloc pages (stats.resident).",
            resident as f64,
        );
    }
}

#[cfg(test)]
mod tests;
