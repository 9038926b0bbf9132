//! The switchover event and its two written forms: JSON for machines (the webhook
//! body) and plain text for people (the e-mail).

use serde::{Serialize, Serializer};
use std::fmt;
use std::time::SystemTime;

/// Whether the node took the virtual IP or gave it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchoverKind {
    /// The node now answers on the VIP.
    Acquired,
    /// The node no longer answers on the VIP.
    Released,
}

impl fmt::Display for SwitchoverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwitchoverKind::Acquired => "acquired",
            SwitchoverKind::Released => "released",
        })
    }
}

/// One node acquiring or releasing the virtual IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switchover {
    /// Id of the node that acquired or released the VIP.
    pub node: u64,
    /// The virtual IP, as configured (e.g. `10.0.0.100`).
    pub vip: String,
    /// Acquired or released.
    pub event: SwitchoverKind,
    /// Why, in words (e.g. `elected leader`, `lost leadership`, `shutdown`).
    pub reason: String,
    /// Raft term in which it happened, to order reports from different nodes.
    pub term: u64,
    /// When it happened; RFC 3339 UTC in the JSON form.
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
}

fn rfc3339<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*at))
}

fn format_time(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A header must stay on one line whatever `vip` holds.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Switchover {
    /// A switchover happening now.
    pub fn now(node: u64, vip: &str, event: SwitchoverKind, reason: &str, term: u64) -> Self {
        Switchover {
            node,
            vip: vip.to_string(),
            event,
            reason: reason.to_string(),
            term,
            at: SystemTime::now(),
        }
    }

    /// The webhook body: `{"node":2,"vip":"10.0.0.100","event":"acquired","reason":...,
    /// "term":7,"at":"2024-05-01T12:00:00.000Z"}`.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// E-mail subject, e.g. `softswitch: node 2 acquired VIP 10.0.0.100`.
    pub fn email_subject(&self) -> String {
        one_line(&format!(
            "softswitch: node {} {} VIP {}",
            self.node, self.event, self.vip
        ))
    }

    /// E-mail body: one sentence, then the fields one per line.
    pub fn email_body(&self) -> String {
        let sentence = match self.event {
            SwitchoverKind::Acquired => "now answers on",
            SwitchoverKind::Released => "no longer answers on",
        };
        format!(
            "Node {node} {sentence} the virtual IP {vip}.\n\
             \n\
             Event:  {event}\n\
             Node:   {node}\n\
             VIP:    {vip}\n\
             Reason: {reason}\n\
             Term:   {term}\n\
             Time:   {time}\n",
            node = self.node,
            vip = self.vip,
            event = self.event,
            reason = self.reason,
            term = self.term,
            time = format_time(self.at),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn ev(event: SwitchoverKind) -> Switchover {
        Switchover {
            node: 2,
            vip: "10.0.0.100".into(),
            event,
            reason: "elected leader".into(),
            term: 7,
            at: UNIX_EPOCH + Duration::from_millis(1_714_564_800_250),
        }
    }

    #[test]
    fn json_form_has_every_field() {
        let v: serde_json::Value =
            serde_json::from_slice(&ev(SwitchoverKind::Acquired).to_json().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "node": 2,
                "vip": "10.0.0.100",
                "event": "acquired",
                "reason": "elected leader",
                "term": 7,
                "at": "2024-05-01T12:00:00.250Z",
            })
        );
        let v: serde_json::Value =
            serde_json::from_slice(&ev(SwitchoverKind::Released).to_json().unwrap()).unwrap();
        assert_eq!(v["event"], "released");
    }

    #[test]
    fn email_form_reads_well() {
        let a = ev(SwitchoverKind::Acquired);
        assert_eq!(
            a.email_subject(),
            "softswitch: node 2 acquired VIP 10.0.0.100"
        );
        assert_eq!(
            a.email_body(),
            "Node 2 now answers on the virtual IP 10.0.0.100.\n\n\
             Event:  acquired\nNode:   2\nVIP:    10.0.0.100\nReason: elected leader\n\
             Term:   7\nTime:   2024-05-01T12:00:00.250Z\n"
        );
        let r = ev(SwitchoverKind::Released);
        assert_eq!(
            r.email_subject(),
            "softswitch: node 2 released VIP 10.0.0.100"
        );
        assert!(r.email_body().starts_with("Node 2 no longer answers on"));
    }

    #[test]
    fn subject_stays_on_one_line() {
        let mut e = ev(SwitchoverKind::Acquired);
        e.vip = "10.0.0.100\r\nBcc: x@example.com".into();
        assert!(!e.email_subject().contains(['\r', '\n']));
    }
}
