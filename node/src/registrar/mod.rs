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
}

/// Formats a SIP Date header value: RFC 1123 with a literal `GMT` (RFC 3261 §20.17).
pub fn sip_date(now: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(now)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
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
