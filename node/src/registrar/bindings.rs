//! Registrations: the AOR -> contact bindings of RFC 3261 §10.3.
//!
//! ## Which refreshes are replicated
//!
//! The table remembers, per binding, the expiry last handed out as a [`Change`]
//! (what the other nodes hold). A REGISTER yields `Change::Upsert` only when
//!
//! * the binding is new (or had expired), or
//! * its source address, q value or Call-ID changed (the phone moved or rebooted), or
//! * the replicated expiry would lapse before half of the new lifetime has run
//!   (`replicated_expires_at < now + lifetime / 2`).
//!
//! A phone refreshing every half lifetime therefore costs one replicated write per
//! lifetime instead of one per refresh, and after losing this node a replica still
//! holds the binding for at least half a lifetime: long enough for the phone's next
//! refresh to reach the new VIP holder. CSeq and User-Agent changes alone are kept
//! locally; removals are always replicated.

use crate::sip::message::{parse_uri, NameAddr, SipMessage};
use crate::sip::{Peer, Transport};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

/// One registered contact of an address of record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    /// Full Contact URI (without `<>` and header parameters).
    pub contact: String,
    /// When the binding lapses, unix seconds.
    pub expires_at: u64,
    /// Preference 0..=1 (default 1.0); higher is tried first.
    pub q: f32,
    /// Call-ID of the REGISTER that made or last refreshed it.
    pub call_id: String,
    /// CSeq of that REGISTER.
    pub cseq: u32,
    /// Where the REGISTER came from: used to reach phones behind NAT.
    #[serde(with = "peer_serde")]
    pub source: Peer,
    /// User-Agent of the registering phone, for display.
    pub user_agent: Option<String>,
}

/// Serde for [`Peer`] as `{ "transport": "UDP", "addr": "1.2.3.4:5060" }`, kept here so
/// the SIP stack does not depend on how the registrar stores bindings.
mod peer_serde {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct PeerRepr {
        transport: String,
        addr: SocketAddr,
    }

    /// Writes a Peer as its transport token and socket address.
    pub fn serialize<S: serde::Serializer>(p: &Peer, s: S) -> Result<S::Ok, S::Error> {
        PeerRepr {
            transport: p.transport.as_str().to_string(),
            addr: p.addr,
        }
        .serialize(s)
    }

    /// Reads a Peer back; an unknown transport is an error, not a default.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Peer, D::Error> {
        let r = PeerRepr::deserialize(d)?;
        let transport = if r.transport.eq_ignore_ascii_case("UDP") {
            Transport::Udp
        } else if r.transport.eq_ignore_ascii_case("TCP") {
            Transport::Tcp
        } else {
            return Err(serde::de::Error::custom(format!(
                "unknown transport {:?}",
                r.transport
            )));
        };
        Ok(Peer {
            transport,
            addr: r.addr,
        })
    }
}

/// Registration interval limits (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Shortest accepted non-zero expiry; shorter gets 423 (default 60).
    pub min_expires: u32,
    /// Longest granted expiry; longer is clamped (default 7200).
    pub max_expires: u32,
    /// Expiry when the request names none (default 1800).
    pub default_expires: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 1800,
        }
    }
}

/// Why a REGISTER was refused; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// A non-zero expiry below the minimum (answer 423 with Min-Expires).
    #[error("interval too brief (min {min})")]
    IntervalTooBrief {
        /// The minimum to advertise.
        min: u32,
    },
    /// A new contact would exceed the AOR's contact limit (answer 403).
    #[error("too many contacts")]
    TooManyContacts,
    /// A Contact could not be parsed, or has a bad q/expires (answer 400).
    #[error("bad contact")]
    BadContact,
    /// Same Call-ID with a CSeq not above the stored one (answer 500).
    #[error("out of order")]
    OutOfOrder,
    /// `Contact: *` without `Expires: 0` or mixed with other contacts (answer 400).
    #[error("wildcard misuse")]
    WildcardMisuse,
}

/// A state change to replicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// Add or replace the binding of `binding.contact` under `aor`.
    Upsert {
        /// Address of record (user part).
        aor: String,
        /// The binding as it now stands.
        binding: Binding,
    },
    /// Remove one binding.
    Remove {
        /// Address of record.
        aor: String,
        /// Contact URI of the binding.
        contact: String,
    },
}

/// A binding plus the expiry last replicated for it.
#[derive(Debug, Clone)]
struct Entry {
    binding: Binding,
    replicated_expires_at: u64,
}

/// All bindings, with an expiry index so sweeping only visits what has expired.
#[derive(Debug, Default)]
pub struct BindingTable {
    by_aor: HashMap<String, Vec<Entry>>,
    /// (expires_at, aor, contact) for every binding, exactly in step with `by_aor`.
    expiry: BTreeSet<(u64, String, String)>,
    total: usize,
}

/// A parsed Contact of the request.
struct Wanted {
    uri: String,
    expires: u32,
    q: f32,
}

/// Parses a delta-seconds value; values beyond 2^32-1 saturate (RFC 3261 §20.19).
fn parse_delta(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = s.trim_start_matches('0');
    if digits.len() > 10 {
        return Some(u32::MAX);
    }
    Some(u32::try_from(digits.parse::<u64>().unwrap_or(0)).unwrap_or(u32::MAX))
}

/// Parses a q value: a number in 0..=1 (RFC 3261 §20.10).
fn parse_q(s: &str) -> Option<f32> {
    if !s.starts_with(|c: char| c.is_ascii_digit()) || s.len() > 8 {
        return None;
    }
    s.parse::<f32>()
        .ok()
        .filter(|q| q.is_finite() && (0.0..=1.0).contains(q))
}

impl BindingTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Total number of bindings (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.total
    }

    /// Addresses of record with at least one binding (registered extensions).
    pub fn aors(&self) -> usize {
        self.by_aor.len()
    }

    /// True when there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Live bindings of `aor`, highest q first (ties keep registration order).
    pub fn lookup(&self, aor: &str, now_unix: u64) -> Vec<Binding> {
        let mut out: Vec<Binding> = self
            .by_aor
            .get(aor)
            .map(|v| {
                v.iter()
                    .filter(|e| e.binding.expires_at > now_unix)
                    .map(|e| e.binding.clone())
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| b.q.total_cmp(&a.q));
        out
    }

    /// Removes every binding whose expiry has passed and returns the removals.
    pub fn sweep(&mut self, now_unix: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        while let Some(first) = self.expiry.first() {
            if first.0 > now_unix {
                break;
            }
            let Some((_, aor, contact)) = self.expiry.pop_first() else {
                break;
            };
            if let Some(v) = self.by_aor.get_mut(&aor) {
                let before = v.len();
                v.retain(|e| e.binding.contact != contact);
                self.total -= before - v.len();
                if v.is_empty() {
                    self.by_aor.remove(&aor);
                }
            }
            changes.push(Change::Remove { aor, contact });
        }
        changes
    }

    /// Loads a binding from the store (or applies a replicated Upsert): replaces any
    /// binding of the same contact. It counts as already replicated.
    pub fn restore(&mut self, aor: &str, binding: Binding) {
        let old = self.by_aor.remove(aor).unwrap_or_default();
        let mut new: Vec<Entry> = old
            .iter()
            .filter(|e| e.binding.contact != binding.contact)
            .cloned()
            .collect();
        new.push(Entry {
            replicated_expires_at: binding.expires_at,
            binding,
        });
        self.replace(aor, old, new);
    }

    /// Removes one binding (a replicated Remove). True when it existed.
    pub fn remove(&mut self, aor: &str, contact: &str) -> bool {
        let old = self.by_aor.remove(aor).unwrap_or_default();
        let new: Vec<Entry> = old
            .iter()
            .filter(|e| e.binding.contact != contact)
            .cloned()
            .collect();
        let existed = new.len() != old.len();
        self.replace(aor, old, new);
        existed
    }

    /// Swaps the entries of `aor` (already taken out of `by_aor`) for `new`, keeping
    /// the expiry index and the count exact.
    fn replace(&mut self, aor: &str, old: Vec<Entry>, new: Vec<Entry>) {
        for e in &old {
            self.expiry.remove(&(
                e.binding.expires_at,
                aor.to_string(),
                e.binding.contact.clone(),
            ));
        }
        for e in &new {
            self.expiry.insert((
                e.binding.expires_at,
                aor.to_string(),
                e.binding.contact.clone(),
            ));
        }
        self.total = self.total - old.len() + new.len();
        if !new.is_empty() {
            self.by_aor.insert(aor.to_string(), new);
        }
    }

    /// Applies a REGISTER for `aor` (RFC 3261 §10.3 steps 6–8), all or nothing.
    ///
    /// Returns the live bindings after the request (highest q first) and the changes
    /// to replicate. A request without Contact is a query and changes nothing.
    pub fn apply(
        &mut self,
        aor: &str,
        req: &SipMessage,
        source: Peer,
        max_contacts: usize,
        limits: &Limits,
        now_unix: u64,
    ) -> Result<(Vec<Binding>, Vec<Change>), RegisterError> {
        let raw: Vec<&str> = req.headers.get_all("Contact").collect();
        if raw.is_empty() {
            return Ok((self.lookup(aor, now_unix), Vec::new()));
        }
        // An unparseable Expires header is ignored, as if absent.
        let header_expires = req.headers.get("Expires").and_then(parse_delta);
        let call_id = req.call_id().unwrap_or_default();
        let cseq = req.cseq().map(|(n, _)| n).unwrap_or(0);
        let user_agent = req.headers.get("User-Agent").map(str::to_string);

        // Step 6: wildcard.
        let wildcard = raw.iter().any(|v| v.trim_start().starts_with('*'));
        if wildcard && (raw.len() != 1 || raw[0].trim() != "*" || header_expires != Some(0)) {
            return Err(RegisterError::WildcardMisuse);
        }

        // Step 6 continued: parse every contact and its expiry before touching state.
        let mut wanted: Vec<Wanted> = Vec::new();
        if !wildcard {
            for v in &raw {
                let na = NameAddr::parse(v).ok_or(RegisterError::BadContact)?;
                if parse_uri(&na.uri).is_none() {
                    return Err(RegisterError::BadContact);
                }
                let q = match na.param("q") {
                    Some(s) => parse_q(s).ok_or(RegisterError::BadContact)?,
                    None => 1.0,
                };
                let expires = match na.param("expires") {
                    Some(s) => parse_delta(s).ok_or(RegisterError::BadContact)?,
                    None => header_expires.unwrap_or(limits.default_expires),
                };
                if expires > 0 && expires < limits.min_expires {
                    return Err(RegisterError::IntervalTooBrief {
                        min: limits.min_expires,
                    });
                }
                let expires = expires.min(limits.max_expires);
                // A contact listed twice: the last one wins.
                wanted.retain(|w| w.uri != na.uri);
                wanted.push(Wanted {
                    uri: na.uri,
                    expires,
                    q,
                });
            }
        }

        let old = self.by_aor.get(aor).cloned().unwrap_or_default();
        let live = |e: &&Entry| e.binding.expires_at > now_unix;

        // Step 7: Call-ID / CSeq ordering against the live bindings concerned.
        let concerned = |e: &Entry| wildcard || wanted.iter().any(|w| w.uri == e.binding.contact);
        if old
            .iter()
            .filter(live)
            .any(|e| concerned(e) && e.binding.call_id == call_id && cseq <= e.binding.cseq)
        {
            return Err(RegisterError::OutOfOrder);
        }

        // Build the new set: live bindings not mentioned stay as they are.
        let mut new: Vec<Entry> = if wildcard {
            Vec::new()
        } else {
            old.iter()
                .filter(live)
                .filter(|e| !concerned(e))
                .cloned()
                .collect()
        };
        let mut changes = Vec::new();
        let mut added = false;
        for w in &wanted {
            if w.expires == 0 {
                continue;
            }
            let expires_at = now_unix + u64::from(w.expires);
            let prev = old.iter().filter(live).find(|e| e.binding.contact == w.uri);
            let binding = Binding {
                contact: w.uri.clone(),
                expires_at,
                q: w.q,
                call_id: call_id.to_string(),
                cseq,
                source,
                user_agent: user_agent.clone(),
            };
            let replicate = match prev {
                None => {
                    added = true;
                    true
                }
                Some(p) => {
                    p.binding.source != source
                        || p.binding.q != w.q
                        || p.binding.call_id != call_id
                        || p.replicated_expires_at < now_unix + u64::from(w.expires / 2)
                }
            };
            let replicated_expires_at = match (replicate, prev) {
                (false, Some(p)) => p.replicated_expires_at,
                _ => expires_at,
            };
            if replicate {
                changes.push(Change::Upsert {
                    aor: aor.to_string(),
                    binding: binding.clone(),
                });
            }
            new.push(Entry {
                binding,
                replicated_expires_at,
            });
        }
        // Step 8's limit: only growth is refused, so a full AOR can still refresh.
        if added && new.len() > max_contacts {
            return Err(RegisterError::TooManyContacts);
        }
        // Everything stored before and not kept (removed, or expired and unswept) is
        // replicated as a removal so the replicas converge.
        for e in &old {
            if !new.iter().any(|n| n.binding.contact == e.binding.contact) {
                changes.push(Change::Remove {
                    aor: aor.to_string(),
                    contact: e.binding.contact.clone(),
                });
            }
        }

        self.by_aor.remove(aor);
        self.replace(aor, old, new);
        Ok((self.lookup(aor, now_unix), changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse;

    const NOW: u64 = 1_700_000_000;

    fn peer(port: u16) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: SocketAddr::from(([192, 0, 2, 10], port)),
        }
    }

    fn register(call_id: &str, cseq: u32, extra: &[&str]) -> SipMessage {
        let mut s = format!(
            "REGISTER sip:pbx.example SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{cseq}\r\n\
             From: <sip:1001@pbx.example>;tag=f\r\nTo: <sip:1001@pbx.example>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
        );
        for h in extra {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        parse(s.as_bytes()).unwrap()
    }

    fn apply(
        t: &mut BindingTable,
        req: &SipMessage,
        now: u64,
    ) -> Result<(Vec<Binding>, Vec<Change>), RegisterError> {
        t.apply("1001", req, peer(5060), 2, &Limits::default(), now)
    }

    #[test]
    fn expiry_default_clamp_and_too_brief() {
        let mut t = BindingTable::new();
        let (b, ch) = apply(
            &mut t,
            &register("c", 1, &["Contact: <sip:1001@192.0.2.10>"]),
            NOW,
        )
        .unwrap();
        assert_eq!(b[0].expires_at, NOW + 1800);
        assert!(matches!(&ch[..], [Change::Upsert { .. }]));
        let (b, _) = apply(
            &mut t,
            &register(
                "c",
                2,
                &["Contact: <sip:1001@192.0.2.10>", "Expires: 99999999999"],
            ),
            NOW,
        )
        .unwrap();
        assert_eq!(b[0].expires_at, NOW + 7200);
        let (b, _) = apply(
            &mut t,
            &register(
                "c",
                3,
                &[
                    "Contact: <sip:1001@192.0.2.10>;expires=300",
                    "Expires: 7000",
                ],
            ),
            NOW,
        )
        .unwrap();
        assert_eq!(
            b[0].expires_at,
            NOW + 300,
            "contact param wins over the header"
        );
        let e = apply(
            &mut t,
            &register("c", 4, &["Contact: <sip:1001@192.0.2.10>;expires=30"]),
            NOW,
        );
        assert_eq!(e, Err(RegisterError::IntervalTooBrief { min: 60 }));
        // Nothing applied when one contact of several is too brief.
        let e = apply(
            &mut t,
            &register(
                "c",
                5,
                &["Contact: <sip:a@192.0.2.11>, <sip:1001@192.0.2.10>;expires=1"],
            ),
            NOW,
        );
        assert_eq!(e, Err(RegisterError::IntervalTooBrief { min: 60 }));
        assert_eq!(t.lookup("1001", NOW).len(), 1);
        assert_eq!(t.lookup("1001", NOW)[0].expires_at, NOW + 300);
    }

    #[test]
    fn contact_limit_allows_refresh() {
        let mut t = BindingTable::new();
        let c = |n| format!("Contact: <sip:1001@192.0.2.{n}>");
        apply(&mut t, &register("a", 1, &[&c(1)]), NOW).unwrap();
        apply(&mut t, &register("b", 1, &[&c(2)]), NOW).unwrap();
        let e = apply(&mut t, &register("c", 1, &[&c(3)]), NOW);
        assert_eq!(e, Err(RegisterError::TooManyContacts));
        let (b, _) = apply(&mut t, &register("a", 2, &[&c(1)]), NOW + 10).unwrap();
        assert_eq!(b.len(), 2);
        // Replacing one contact by another in the same request stays within the limit.
        let r = register("a", 3, &[&format!("{};expires=0", c(1)), &c(3)]);
        let (b, ch) = apply(&mut t, &r, NOW + 20).unwrap();
        assert_eq!(b.len(), 2);
        assert!(ch.contains(&Change::Remove {
            aor: "1001".into(),
            contact: "sip:1001@192.0.2.1".into()
        }));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn wildcard() {
        let mut t = BindingTable::new();
        apply(
            &mut t,
            &register(
                "a",
                1,
                &["Contact: <sip:1001@192.0.2.1>, <sip:1001@192.0.2.2>"],
            ),
            NOW,
        )
        .unwrap();
        for bad in [
            &["Contact: *"][..],
            &["Contact: *", "Expires: 60"],
            &["Contact: *", "Contact: <sip:1001@192.0.2.1>", "Expires: 0"],
            &["Contact: *, <sip:1001@192.0.2.1>", "Expires: 0"],
        ] {
            assert_eq!(
                apply(&mut t, &register("z", 1, bad), NOW),
                Err(RegisterError::WildcardMisuse)
            );
        }
        // Same Call-ID, old CSeq: out of order even for a wildcard.
        let e = apply(
            &mut t,
            &register("a", 1, &["Contact: *", "Expires: 0"]),
            NOW,
        );
        assert_eq!(e, Err(RegisterError::OutOfOrder));
        let (b, ch) = apply(
            &mut t,
            &register("a", 2, &["Contact: *", "Expires: 0"]),
            NOW,
        )
        .unwrap();
        assert!(b.is_empty());
        assert_eq!(ch.len(), 2);
        assert!(ch.iter().all(|c| matches!(c, Change::Remove { .. })));
        assert_eq!(t.len(), 0);
        assert!(t.sweep(NOW + 100_000).is_empty(), "index cleaned too");
    }

    #[test]
    fn query_q_order_and_bad_contacts() {
        let mut t = BindingTable::new();
        let r = register(
            "a",
            1,
            &["Contact: <sip:1001@192.0.2.1>;q=0.2, <sip:1001@192.0.2.2>;q=0.9"],
        );
        apply(&mut t, &r, NOW).unwrap();
        let (b, ch) = apply(&mut t, &register("a", 2, &[]), NOW + 5).unwrap();
        assert!(ch.is_empty());
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].contact, "sip:1001@192.0.2.2");
        assert_eq!(b[1].q, 0.2);
        for bad in [
            "Contact: <sip:1001@192.0.2.3>;q=1.5",
            "Contact: <sip:1001@192.0.2.3>;q=abc",
            "Contact: <sip:1001@192.0.2.3>;q=nan",
            "Contact: <sip:1001@192.0.2.3>;expires=-1",
            "Contact: <>",
            "Contact: <http://x>",
        ] {
            assert_eq!(
                apply(&mut t, &register("a", 9, &[bad]), NOW),
                Err(RegisterError::BadContact),
                "{bad}"
            );
        }
    }

    #[test]
    fn out_of_order_and_new_call_id() {
        let mut t = BindingTable::new();
        let c = "Contact: <sip:1001@192.0.2.1>";
        apply(&mut t, &register("a", 5, &[c]), NOW).unwrap();
        assert_eq!(
            apply(&mut t, &register("a", 5, &[c]), NOW),
            Err(RegisterError::OutOfOrder)
        );
        assert_eq!(
            apply(&mut t, &register("a", 4, &[c]), NOW),
            Err(RegisterError::OutOfOrder)
        );
        // A rebooted phone (new Call-ID) may start again at CSeq 1.
        let (b, ch) = apply(&mut t, &register("b", 1, &[c]), NOW).unwrap();
        assert_eq!(b[0].call_id, "b");
        assert_eq!(ch.len(), 1, "new Call-ID is replicated");
    }

    #[test]
    fn refreshes_are_not_all_replicated() {
        let mut t = BindingTable::new();
        let c = "Contact: <sip:1001@192.0.2.1>;expires=3600";
        let (_, ch) = apply(&mut t, &register("a", 1, &[c]), NOW).unwrap();
        assert_eq!(ch.len(), 1);
        // Refresh at half time: the replica still holds it for a half lifetime.
        let (b, ch) = apply(&mut t, &register("a", 2, &[c]), NOW + 1800).unwrap();
        assert!(ch.is_empty());
        assert_eq!(b[0].expires_at, NOW + 5400, "extended locally");
        // Next refresh: the replicated expiry (NOW+3600) is too close: replicate.
        let (_, ch) = apply(&mut t, &register("a", 3, &[c]), NOW + 3600).unwrap();
        assert!(
            matches!(&ch[..], [Change::Upsert { binding, .. }] if binding.expires_at == NOW + 7200)
        );
        // A moved phone (new source) is replicated at once.
        let (_, ch) = t
            .apply(
                "1001",
                &register("a", 4, &[c]),
                peer(6000),
                2,
                &Limits::default(),
                NOW + 3601,
            )
            .unwrap();
        assert_eq!(ch.len(), 1);
    }

    #[test]
    fn sweep_restore_and_serde() {
        let mut t = BindingTable::new();
        apply(
            &mut t,
            &register("a", 1, &["Contact: <sip:1001@192.0.2.1>;expires=60"]),
            NOW,
        )
        .unwrap();
        apply(
            &mut t,
            &register("a", 2, &["Contact: <sip:1001@192.0.2.2>;expires=120"]),
            NOW,
        )
        .unwrap();
        assert!(t.sweep(NOW + 59).is_empty());
        assert_eq!(
            t.lookup("1001", NOW + 60).len(),
            1,
            "expired is not looked up"
        );
        let ch = t.sweep(NOW + 60);
        assert_eq!(
            ch,
            vec![Change::Remove {
                aor: "1001".into(),
                contact: "sip:1001@192.0.2.1".into()
            }]
        );
        assert_eq!(t.len(), 1);
        let b = t.lookup("1001", NOW)[0].clone();
        let json = serde_json::to_string(&b).unwrap();
        assert!(json.contains("\"transport\":\"UDP\""), "{json}");
        assert!(json.contains("\"addr\":\"192.0.2.10:5060\""), "{json}");
        let back: Binding = serde_json::from_str(&json).unwrap();
        assert_eq!(back, b);
        let mut t2 = BindingTable::new();
        t2.restore("1001", back.clone());
        t2.restore("1001", back);
        assert_eq!(t2.len(), 1);
        assert_eq!(t2.sweep(NOW + 120).len(), 1);
        assert!(t2.is_empty());
        assert!(serde_json::from_str::<Binding>(&json.replace("UDP", "SCTP")).is_err());
    }

    #[test]
    fn expired_unswept_binding_is_replaced_and_removed() {
        let mut t = BindingTable::new();
        apply(
            &mut t,
            &register("a", 1, &["Contact: <sip:1001@192.0.2.1>;expires=60"]),
            NOW,
        )
        .unwrap();
        // Past expiry but not swept: a new registration of another contact drops it.
        let (b, ch) = apply(
            &mut t,
            &register("b", 1, &["Contact: <sip:1001@192.0.2.2>"]),
            NOW + 61,
        )
        .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(ch.len(), 2);
        assert_eq!(t.len(), 1);
        assert!(t.sweep(NOW + 100).is_empty());
    }
}
