//! Call detail records: one per call attempt, written once when the call ends.

use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// How a call attempt ended, in the categories billing systems and the reference PBXs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposition {
    /// Answered and then hung up.
    #[serde(rename = "ANSWERED")]
    Answered,
    /// Rang out (ring timeout, 408/480 from the callee, or callee unreachable).
    #[serde(rename = "NO ANSWER")]
    NoAnswer,
    /// The callee was busy (486/600).
    #[serde(rename = "BUSY")]
    Busy,
    /// Could not be placed (unknown number, errors).
    #[serde(rename = "FAILED")]
    Failed,
    /// The caller gave up before an answer.
    #[serde(rename = "CANCELLED")]
    Cancelled,
}

/// One call detail record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cdr {
    /// Call-ID of the caller's leg.
    pub call_id: String,
    /// Calling extension.
    pub caller: String,
    /// Dialled number.
    pub callee: String,
    /// When the INVITE was accepted for routing (RFC 3339, UTC).
    pub start: String,
    /// When the callee answered, if it did.
    pub answer: Option<String>,
    /// When the call ended.
    pub end: String,
    /// Whole seconds from start to end.
    pub duration: u64,
    /// Whole seconds from answer to end (0 when unanswered).
    pub billsec: u64,
    /// Outcome category.
    pub disposition: Disposition,
    /// Cause in Q.850 naming, e.g. `normal_clearing`, `user_busy`, `no_answer`.
    pub hangup_cause: String,
    /// SIP status the caller's INVITE was finally answered with.
    pub sip_status: u16,
    /// Which side ended an answered call: `caller`, `callee` or `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hangup_by: Option<String>,
    /// What the media relay counted, for a call whose media it carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Box<CallMedia>>,
}

/// The relay's counters of an anchored call, per sending side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallMedia {
    /// What the caller sent.
    pub caller: MediaCounters,
    /// What the callee sent.
    pub callee: MediaCounters,
}

/// What one side sent through the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaCounters {
    /// RTP packets received from the side.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Packets missing by the sequence numbers.
    pub lost: u64,
    /// Interarrival jitter (RFC 3550), microseconds.
    pub jitter_us: u32,
    /// Cumulative loss the side itself reported in RTCP, if it sent any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtcp_reported_lost: Option<i32>,
    /// Packets dropped because they came from another source than the latched one.
    pub dropped_wrong_source: u64,
    /// RFC 4733 digits the side sent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dtmf: String,
}

impl MediaCounters {
    /// The counters of one side of a finished relay session.
    pub fn of(side: &media::session::SideStats) -> MediaCounters {
        MediaCounters {
            packets: side.rx.packets,
            bytes: side.rx.bytes,
            lost: side.rx.lost,
            jitter_us: side.rx.jitter_us,
            rtcp_reported_lost: side.rx.reported.map(|r| r.cumulative_lost),
            dropped_wrong_source: side.dropped_wrong_source,
            dtmf: side.dtmf_digits.clone(),
        }
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Whole seconds between two times (0 if reversed).
pub fn secs_between(from: SystemTime, to: SystemTime) -> u64 {
    to.duration_since(from).map(|d| d.as_secs()).unwrap_or(0)
}

/// Disposition and Q.850-style cause for a final failure status sent to the caller.
pub fn classify_failure(status: u16) -> (Disposition, &'static str) {
    match status {
        486 | 600 => (Disposition::Busy, "user_busy"),
        404 | 484 | 604 => (Disposition::Failed, "unallocated_number"),
        408 | 480 => (Disposition::NoAnswer, "no_answer"),
        487 => (Disposition::Cancelled, "originator_cancel"),
        403 | 603 => (Disposition::Failed, "call_rejected"),
        503 => (Disposition::Failed, "normal_circuit_congestion"),
        _ => (Disposition::Failed, "normal_unspecified"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_shape_is_stable() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = Cdr {
            call_id: "c1".into(),
            caller: "1001".into(),
            callee: "1002".into(),
            start: rfc3339(t0),
            answer: None,
            end: rfc3339(t0 + Duration::from_secs(5)),
            duration: secs_between(t0, t0 + Duration::from_secs(5)),
            billsec: 0,
            disposition: Disposition::NoAnswer,
            hangup_cause: "no_answer".into(),
            sip_status: 480,
            hangup_by: None,
            media: None,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert!(j.contains("\"disposition\":\"NO ANSWER\""), "{j}");
        assert!(j.contains("\"start\":\"2023-11-14T22:13:20.000Z\""), "{j}");
        assert_eq!(serde_json::from_str::<Cdr>(&j).unwrap(), c);
        assert_eq!(classify_failure(486).0, Disposition::Busy);
        assert_eq!(classify_failure(487).0, Disposition::Cancelled);
    }
}
