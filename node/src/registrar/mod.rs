//! The registrar: authenticates REGISTER requests and maintains bindings (RFC 3261 §10).
//!
//! Sans-I/O: [`Registrar::handle`] takes a parsed request, where it came from and the
//! time, and returns the response plus the binding changes to replicate. The caller
//! commits the changes (before sending a 200 that promises them) and adds Server.

pub mod bindings;
pub mod digest;

pub use bindings::{Binding, BindingTable, Change, Limits, RegisterError};
pub use digest::{Algorithm, DigestAuth, DigestConfig, Verdict};

use crate::sip::message::{uri_user, Method, SipMessage};
use crate::sip::Peer;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::time::{SystemTime, UNIX_EPOCH};

/// Registrar settings.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// Expiry limits.
    pub limits: Limits,
    /// Contacts per AOR when the extension sets no limit of its own.
    pub max_contacts: usize,
    /// Digest authentication settings.
    pub digest: DigestConfig,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            limits: Limits::default(),
            max_contacts: 2,
            digest: DigestConfig::default(),
        }
    }
}

/// What the registrar knows of extensions (from the replicated configuration).
pub trait ExtensionLookup {
    /// The SIP password of `user`, or `None` when there is no such extension.
    fn password(&self, user: &str) -> Option<String>;
    /// The contact limit of `user`, or `None` for the registrar default.
    fn max_contacts(&self, user: &str) -> Option<usize>;
}

/// Result of handling one REGISTER.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The response to send (the caller adds Server).
    pub response: SipMessage,
    /// Binding changes to replicate before sending a 2xx.
    pub changes: Vec<Change>,
}

/// REGISTER handler: digest authentication plus the binding table.
#[derive(Debug)]
pub struct Registrar {
    /// Challenges and credential checks.
    pub auth: DigestAuth,
    /// Current registrations.
    pub bindings: BindingTable,
    cfg: RegistrarConfig,
    rng: StdRng,
    /// Keys the To tags of stateless challenges (same request, same tag; unguessable).
    tag_hasher: ahash::RandomState,
}

/// Formats a SIP Date header value: RFC 1123 with a literal `GMT` (RFC 3261 §20.17).
/// The text changes once a second, so the last one is kept per thread.
pub fn sip_date(now: SystemTime) -> String {
    thread_local!(static LAST: std::cell::RefCell<(u64, String)> = Default::default());
    let secs = unix_secs(now);
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        if l.1.is_empty() || l.0 != secs {
            *l = (
                secs,
                chrono::DateTime::<chrono::Utc>::from(now)
                    .format("%a, %d %b %Y %H:%M:%S GMT")
                    .to_string(),
            );
        }
        l.1.clone()
    })
}

fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Registrar {
    /// A registrar with an empty binding table and a fresh digest secret.
    pub fn new(cfg: RegistrarConfig) -> Self {
        Registrar {
            auth: DigestAuth::new(cfg.digest.clone()),
            bindings: BindingTable::new(),
            cfg,
            rng: StdRng::from_entropy(),
            tag_hasher: ahash::RandomState::new(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    fn reply(&mut self, req: &SipMessage, code: u16, reason: &str) -> SipMessage {
        let mut r = req.response(code, reason);
        // REGISTER creates no dialog, but RFC 3261 §8.2.6.2 asks for a To tag on every
        // final response; a random one costs nothing and keeps clients happy.
        r.set_to_tag(&format!("{:016x}", self.rng.next_u64()));
        r
    }

    /// 401 with one WWW-Authenticate per algorithm. Built the same way for every
    /// failure, so an unknown user and a wrong password look identical.
    fn challenge(&mut self, req: &SipMessage, now: SystemTime, stale: bool) -> Outcome {
        let mut r = self.reply(req, 401, "Unauthorized");
        for v in self.auth.challenge(now, stale) {
            r.headers.push("WWW-Authenticate", v);
        }
        Outcome {
            response: r,
            changes: Vec::new(),
        }
    }

    /// The 401 for a REGISTER that carries no credentials at all, answered without a
    /// server transaction (RFC 3261 §8.2.7: "the most common use of a stateless UAS is
    /// to respond to an unauthenticated request with a challenge"). Half of all REGISTER
    /// traffic is this first leg; keeping no state for it halves the transactions held
    /// for Timer J and means a flood of unauthenticated requests allocates nothing.
    /// A retransmission gets a fresh nonce and the same To tag, derived from the request
    /// as §8.2.7 asks. `None` when the request needs the stateful path.
    pub fn stateless_challenge(&mut self, req: &SipMessage, now: SystemTime) -> Option<SipMessage> {
        if req.method() != Some(&Method::Register)
            || req.headers.get("Authorization").is_some()
            || req.to_addr().and_then(|to| uri_user(&to.uri)).is_none()
        {
            return None;
        }
        let tag = self.tag_hasher.hash_one((
            req.call_id(),
            req.from_tag(),
            req.cseq().map(|c| c.0),
            req.branch(),
        ));
        let mut r = req.response(401, "Unauthorized");
        r.set_to_tag(&format!("{tag:016x}"));
        for v in self.auth.challenge(now, false) {
            r.headers.push("WWW-Authenticate", v);
        }
        Some(r)
    }

    fn simple(&mut self, req: &SipMessage, code: u16, reason: &str) -> Outcome {
        Outcome {
            response: self.reply(req, code, reason),
            changes: Vec::new(),
        }
    }

    /// Picks the credentials meant for our realm when a phone sends several.
    fn credentials<'a>(&self, req: &'a SipMessage) -> Option<&'a str> {
        let realm = format!("realm=\"{}\"", self.cfg.digest.realm);
        let mut all = req.headers.get_all("Authorization");
        let first = all.next()?;
        if first.contains(&realm) {
            return Some(first);
        }
        req.headers
            .get_all("Authorization")
            .find(|v| v.contains(&realm))
            .or(Some(first))
    }

    /// Handles one REGISTER received from `source` at time `now`.
    pub fn handle(
        &mut self,
        req: &SipMessage,
        source: Peer,
        ext: &dyn ExtensionLookup,
        now: SystemTime,
    ) -> Outcome {
        if req.method() != Some(&Method::Register) {
            let mut o = self.simple(req, 405, "Method Not Allowed");
            o.response.headers.push("Allow", "REGISTER");
            return o;
        }
        let Some(aor) = req.to_addr().and_then(|to| uri_user(&to.uri)) else {
            return self.simple(req, 400, "Bad To");
        };

        // The digest `uri` is hashed but not compared with the Request-URI: phones
        // differ in how they write it (with or without port/params), and the nonce
        // and nc checks already stop reuse of the credentials elsewhere.
        let verdict = match self.credentials(req) {
            None => Verdict::Missing,
            Some(v) => self.auth.verify("REGISTER", v, |u| ext.password(u), now),
        };
        match verdict {
            Verdict::Ok { username } if username == aor => {}
            // Correct credentials of another extension: forbidden, not re-challenged
            // (RFC 3261 §10.3 step 3).
            Verdict::Ok { .. } => return self.simple(req, 403, "Forbidden"),
            Verdict::Stale => return self.challenge(req, now, true),
            Verdict::Failed | Verdict::Missing => return self.challenge(req, now, false),
        }

        let max_contacts = ext.max_contacts(&aor).unwrap_or(self.cfg.max_contacts);
        let now_unix = unix_secs(now);
        let limits = self.cfg.limits;
        match self
            .bindings
            .apply(&aor, req, source, max_contacts, &limits, now_unix)
        {
            Ok((current, changes)) => {
                let mut r = self.reply(req, 200, "OK");
                for b in &current {
                    let left = b.expires_at.saturating_sub(now_unix);
                    r.headers
                        .push("Contact", format!("<{}>;expires={left}", b.contact));
                }
                r.headers.push("Date", sip_date(now));
                Outcome {
                    response: r,
                    changes,
                }
            }
            Err(RegisterError::IntervalTooBrief { min }) => {
                let mut o = self.simple(req, 423, "Interval Too Brief");
                o.response.headers.push("Min-Expires", min.to_string());
                o
            }
            Err(RegisterError::TooManyContacts) => self.simple(req, 403, "Too Many Contacts"),
            Err(RegisterError::BadContact) => self.simple(req, 400, "Bad Contact"),
            Err(RegisterError::WildcardMisuse) => self.simple(req, 400, "Invalid Wildcard"),
            Err(RegisterError::OutOfOrder) => self.simple(req, 500, "Out of Order"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::digest::{response_hex, QopParams, ResponseParams};
    use super::*;
    use crate::sip::message::parse;
    use crate::sip::Transport;
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::time::Duration;

    struct Exts(HashMap<&'static str, &'static str>);

    impl ExtensionLookup for Exts {
        fn password(&self, user: &str) -> Option<String> {
            self.0.get(user).map(|p| p.to_string())
        }
        fn max_contacts(&self, user: &str) -> Option<usize> {
            (user == "1002").then_some(1)
        }
    }

    fn exts() -> Exts {
        Exts(HashMap::from([("1001", "s3cret"), ("1002", "other")]))
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn src() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: SocketAddr::from(([192, 0, 2, 10], 5060)),
        }
    }

    fn registrar() -> Registrar {
        Registrar::new(RegistrarConfig {
            digest: DigestConfig {
                realm: "pbx.example".into(),
                ..DigestConfig::default()
            },
            ..RegistrarConfig::default()
        })
    }

    fn register(to: &str, cseq: u32, extra: &[String]) -> SipMessage {
        let mut s = format!(
            "REGISTER sip:pbx.example SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{cseq}\r\n\
             From: <sip:{to}@pbx.example>;tag=f\r\nTo: <sip:{to}@pbx.example>\r\n\
             Call-ID: call-{to}\r\nCSeq: {cseq} REGISTER\r\n"
        );
        for h in extra {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        parse(s.as_bytes()).unwrap()
    }

    fn nonce_of(r: &SipMessage) -> String {
        let c = r.headers.get("WWW-Authenticate").unwrap();
        let i = c.find("nonce=\"").unwrap() + 7;
        c[i..i + c[i..].find('"').unwrap()].to_string()
    }

    fn authorization(user: &str, pw: &str, nonce: &str, nc: u32) -> String {
        let nc = format!("{nc:08x}");
        let resp = response_hex(&ResponseParams {
            algorithm: Algorithm::Sha256,
            username: user,
            realm: "pbx.example",
            password: pw,
            method: "REGISTER",
            uri: "sip:pbx.example",
            nonce,
            qop: Some(QopParams {
                qop: "auth",
                nc: &nc,
                cnonce: "c0ffee",
            }),
        });
        format!(
            "Authorization: Digest username=\"{user}\",realm=\"pbx.example\",nonce=\"{nonce}\",\
             uri=\"sip:pbx.example\",response=\"{resp}\",algorithm=SHA-256,qop=auth,nc={nc},cnonce=\"c0ffee\""
        )
    }

    /// Drives the challenge round and returns the authenticated request's outcome.
    fn authed(
        r: &mut Registrar,
        user: &str,
        cseq: u32,
        extra: &[&str],
        now: SystemTime,
    ) -> Outcome {
        let first = r.handle(&register(user, cseq, &[]), src(), &exts(), now);
        assert_eq!(first.response.status(), Some(401));
        let nonce = nonce_of(&first.response);
        let mut h: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        h.push(authorization(
            user,
            exts().password(user).as_deref().unwrap_or("x"),
            &nonce,
            1,
        ));
        r.handle(&register(user, cseq + 1, &h), src(), &exts(), now)
    }

    fn shape(m: &SipMessage) -> (Option<u16>, Vec<String>) {
        let names = m.headers.iter().map(|h| h.name.to_string()).collect();
        (m.status(), names)
    }

    #[test]
    fn challenge_then_200_with_contacts_and_date() {
        let mut r = registrar();
        let o = r.handle(&register("1001", 1, &[]), src(), &exts(), at(0));
        assert_eq!(o.response.status(), Some(401));
        assert_eq!(o.response.headers.get_all("WWW-Authenticate").count(), 2);
        assert!(o.response.to_tag().is_some());
        assert!(o.changes.is_empty());

        let o = authed(
            &mut r,
            "1001",
            1,
            &["Contact: <sip:1001@192.0.2.10:5060>;expires=600"],
            at(0),
        );
        assert_eq!(o.response.status(), Some(200));
        assert_eq!(
            o.response.headers.get("Contact"),
            Some("<sip:1001@192.0.2.10:5060>;expires=600")
        );
        assert_eq!(
            o.response.headers.get("Date"),
            Some("Tue, 14 Nov 2023 22:13:20 GMT")
        );
        assert!(o.response.to_tag().is_some());
        assert_eq!(o.changes.len(), 1);
        assert_eq!(r.bindings.len(), 1);

        // Query 100 s later lists the remaining time.
        let o = authed(&mut r, "1001", 10, &[], at(100));
        assert_eq!(o.response.status(), Some(200));
        assert_eq!(
            o.response.headers.get("Contact"),
            Some("<sip:1001@192.0.2.10:5060>;expires=500")
        );
        assert!(o.changes.is_empty());
    }

    #[test]
    fn unknown_user_and_wrong_password_look_the_same() {
        let mut r = registrar();
        let n1 = nonce_of(
            &r.handle(&register("1001", 1, &[]), src(), &exts(), at(0))
                .response,
        );
        let n2 = nonce_of(
            &r.handle(&register("1999", 1, &[]), src(), &exts(), at(0))
                .response,
        );
        let wrong = r.handle(
            &register("1001", 2, &[authorization("1001", "bad", &n1, 1)]),
            src(),
            &exts(),
            at(1),
        );
        let unknown = r.handle(
            &register("1999", 2, &[authorization("1999", "bad", &n2, 1)]),
            src(),
            &exts(),
            at(1),
        );
        assert_eq!(wrong.response.status(), Some(401));
        assert_eq!(shape(&wrong.response), shape(&unknown.response));
        // Only the user, the fresh nonce and the random tag differ.
        let norm = |m: &SipMessage, user: &str| {
            let s = String::from_utf8(m.to_bytes().to_vec()).unwrap();
            let s = s
                .replace(&nonce_of(m), "N")
                .replace(&m.to_tag().unwrap(), "T");
            s.replace(user, "U")
        };
        assert_eq!(
            norm(&wrong.response, "1001"),
            norm(&unknown.response, "1999")
        );
    }

    #[test]
    fn stale_nonce_rechallenges_with_stale_true() {
        let mut r = registrar();
        let n = nonce_of(
            &r.handle(&register("1001", 1, &[]), src(), &exts(), at(0))
                .response,
        );
        let o = r.handle(
            &register("1001", 2, &[authorization("1001", "s3cret", &n, 1)]),
            src(),
            &exts(),
            at(60),
        );
        assert_eq!(o.response.status(), Some(401));
        assert!(o
            .response
            .headers
            .get("WWW-Authenticate")
            .unwrap()
            .ends_with("stale=true"));
    }

    #[test]
    fn per_extension_contact_limit() {
        let mut r = registrar();
        let o = authed(&mut r, "1002", 1, &["Contact: <sip:1002@192.0.2.1>"], at(0));
        assert_eq!(o.response.status(), Some(200));
        let o = authed(&mut r, "1002", 3, &["Contact: <sip:1002@192.0.2.2>"], at(0));
        assert_eq!(o.response.status(), Some(403));
    }

    #[test]
    fn other_users_credentials_are_forbidden() {
        let mut r = registrar();
        let n = nonce_of(
            &r.handle(&register("1001", 1, &[]), src(), &exts(), at(0))
                .response,
        );
        let o = r.handle(
            &register("1001", 2, &[authorization("1002", "other", &n, 1)]),
            src(),
            &exts(),
            at(1),
        );
        assert_eq!(o.response.status(), Some(403));
    }

    #[test]
    fn error_answers() {
        let mut r = registrar();
        let o = authed(
            &mut r,
            "1001",
            1,
            &["Contact: <sip:1001@192.0.2.10>;expires=10"],
            at(0),
        );
        assert_eq!(o.response.status(), Some(423));
        assert_eq!(o.response.headers.get("Min-Expires"), Some("60"));

        let o = authed(&mut r, "1001", 3, &["Contact: *"], at(0));
        assert_eq!(o.response.status(), Some(400));

        for (i, ip) in [1, 2].iter().enumerate() {
            let c = format!("Contact: <sip:1001@192.0.2.{ip}>");
            let o = authed(&mut r, "1001", 10 + 2 * i as u32, &[&c], at(0));
            assert_eq!(o.response.status(), Some(200));
        }
        let o = authed(
            &mut r,
            "1001",
            20,
            &["Contact: <sip:1001@192.0.2.3>"],
            at(0),
        );
        assert_eq!(o.response.status(), Some(403));
        let o = authed(
            &mut r,
            "1001",
            22,
            &["Contact: <sip:1001@192.0.2.1>"],
            at(0),
        );
        assert_eq!(
            o.response.status(),
            Some(200),
            "refresh at the limit is fine"
        );
        assert_eq!(o.response.headers.get_all("Contact").count(), 2);

        // Same Call-ID, lower CSeq than stored.
        let o = authed(&mut r, "1001", 5, &["Contact: <sip:1001@192.0.2.1>"], at(0));
        assert_eq!(o.response.status(), Some(500));

        let o = authed(&mut r, "1001", 30, &["Contact: *", "Expires: 0"], at(0));
        assert_eq!(o.response.status(), Some(200));
        assert_eq!(o.response.headers.get("Contact"), None);
        assert_eq!(o.changes.len(), 2);
        assert_eq!(r.bindings.len(), 0);

        let o = r.handle(
            &register("1001", 40, &["Contact: <sip:1001@192.0.2.1>;q=7".into()]),
            src(),
            &exts(),
            at(0),
        );
        assert_eq!(
            o.response.status(),
            Some(401),
            "auth comes before contact checks"
        );
    }
}
