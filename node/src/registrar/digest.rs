//! HTTP digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760).
//!
//! Nonces are stateless to issue: each one carries its issue time, a random salt and a
//! keyed hash of both, so any node holding the secret can check it without a lookup.
//! State is only kept for nonces that have been *used* (the highest nonce-count seen),
//! which is what replay protection needs; that table is bounded and swept as it is used.

use md5::Md5;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Digest hash algorithm (RFC 7616 §3.2, RFC 8760).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5`: the only one most SIP phones know.
    Md5,
    /// `SHA-256`.
    Sha256,
}

impl Algorithm {
    /// Parses an `algorithm=` token, ignoring case.
    pub fn parse(s: &str) -> Option<Algorithm> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// The token as written in challenges.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Lower-case hex digest of `data`.
    pub fn hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data)),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data)),
        }
    }
}

/// Settings of the digest authenticator.
#[derive(Debug, Clone)]
pub struct DigestConfig {
    /// Realm sent in challenges and required in credentials.
    pub realm: String,
    /// How long an issued nonce is accepted before the answer is `Stale`.
    pub nonce_ttl: Duration,
    /// Algorithms offered, one challenge each, in order of preference.
    pub algorithms: Vec<Algorithm>,
    /// Upper bound of the nonce-count tracking table.
    pub max_tracked_nonces: usize,
}

impl Default for DigestConfig {
    fn default() -> Self {
        DigestConfig {
            realm: "softswitch".into(),
            nonce_ttl: Duration::from_secs(30),
            // RFC 7616 §3.7: the preferred algorithm first; MD5 last for old phones.
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            max_tracked_nonces: 1_000_000,
        }
    }
}

/// Result of checking credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Credentials are valid for this user.
    Ok {
        /// The authenticated user name.
        username: String,
    },
    /// Correct credentials on an expired (or no longer tracked) nonce: re-challenge
    /// with `stale=true` so the client retries without asking its user.
    Stale,
    /// Anything else: bad password, unknown user, forged nonce, replay, malformed.
    Failed,
    /// No credentials were given.
    Missing,
}

/// The inputs of a qop=auth response computation.
#[derive(Debug, Clone, Copy)]
pub struct QopParams<'a> {
    /// The qop value (`auth`).
    pub qop: &'a str,
    /// Nonce count, 8 hex digits as sent.
    pub nc: &'a str,
    /// Client nonce.
    pub cnonce: &'a str,
}

/// Everything the digest `response` value is computed from.
#[derive(Debug, Clone, Copy)]
pub struct ResponseParams<'a> {
    /// Hash algorithm.
    pub algorithm: Algorithm,
    /// User name.
    pub username: &'a str,
    /// Realm.
    pub realm: &'a str,
    /// Clear-text password.
    pub password: &'a str,
    /// Request method (`REGISTER`).
    pub method: &'a str,
    /// The `uri` parameter (digest-uri) as sent.
    pub uri: &'a str,
    /// Server nonce.
    pub nonce: &'a str,
    /// qop parameters, or `None` for RFC 2069 style credentials.
    pub qop: Option<QopParams<'a>>,
}

/// The expected `response` value, lower-case hex (RFC 7616 §3.4.1, RFC 2069).
///
/// Public so that clients (tests, the load generator) compute exactly what we check.
pub fn response_hex(p: &ResponseParams<'_>) -> String {
    let h = |s: String| p.algorithm.hex(s.as_bytes());
    let ha1 = h(format!("{}:{}:{}", p.username, p.realm, p.password));
    let ha2 = h(format!("{}:{}", p.method, p.uri));
    match p.qop {
        Some(q) => h(format!(
            "{ha1}:{}:{}:{}:{}:{ha2}",
            p.nonce, q.nc, q.cnonce, q.qop
        )),
        None => h(format!("{ha1}:{}:{ha2}", p.nonce)),
    }
}

/// Compares without an early exit, so the time taken does not tell how many leading
/// bytes of a guessed response were right.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Longest credentials header we look at; real ones are a few hundred bytes.
const MAX_CREDENTIALS_LEN: usize = 4096;
/// Most parameters accepted in one credentials header.
const MAX_PARAMS: usize = 32;
/// Expired tracking entries removed per `verify` call: more than the one a call can
/// add, so the table drains without ever scanning it whole.
const SWEEP_PER_CALL: usize = 8;
/// Hex length of an issued nonce: 16 (time) + 16 (salt) + 32 (keyed hash).
const NONCE_LEN: usize = 64;
/// Password used for unknown users so that they cost the same hashing as known ones.
const DUMMY_PASSWORD: &str = "\u{1}no-such-user\u{1}";

/// Parses `Digest name=value, name="quoted, value", ...` into lower-cased names and
/// unquoted values. `None` on anything malformed or duplicated.
fn parse_credentials(value: &str) -> Option<Vec<(String, String)>> {
    if value.len() > MAX_CREDENTIALS_LEN {
        return None;
    }
    let value = value.trim();
    let (scheme, rest) = value.split_once(|c: char| c.is_ascii_whitespace())?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut out: Vec<(String, String)> = Vec::new();
    let mut it = rest.chars().peekable();
    loop {
        // Separators: any run of whitespace and commas (empty list elements are allowed).
        while it
            .peek()
            .is_some_and(|c| c.is_ascii_whitespace() || *c == ',')
        {
            it.next();
        }
        if it.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = it.peek() {
            if c.is_ascii_alphanumeric() || "-_.!%*+`'~".contains(c) {
                name.push(c.to_ascii_lowercase());
                it.next();
            } else {
                break;
            }
        }
        while it.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            it.next();
        }
        if name.is_empty() || it.next() != Some('=') {
            return None;
        }
        while it.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            it.next();
        }
        let mut val = String::new();
        if it.peek() == Some(&'"') {
            it.next();
            let mut closed = false;
            while let Some(c) = it.next() {
                match c {
                    '\\' => val.push(it.next()?),
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => val.push(c),
                }
            }
            if !closed {
                return None;
            }
        } else {
            while let Some(&c) = it.peek() {
                if c == ',' || c.is_ascii_whitespace() {
                    break;
                }
                if c == '"' {
                    return None;
                }
                val.push(c);
                it.next();
            }
            if val.is_empty() {
                return None;
            }
        }
        while it.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            it.next();
        }
        if !matches!(it.peek(), None | Some(',')) {
            return None;
        }
        // A duplicated parameter is ambiguous (which one did the client hash?): refuse.
        if out.iter().any(|(n, _)| *n == name) || out.len() >= MAX_PARAMS {
            return None;
        }
        out.push((name, val));
    }
    Some(out)
}

/// Identity of an issued nonce: (issue time in ms, salt). Ordered by issue time, which
/// is also expiry order because every nonce lives for the same TTL.
type NonceId = (u64, u64);

/// Digest authenticator: issues challenges and verifies credentials.
pub struct DigestAuth {
    cfg: DigestConfig,
    /// Key of the nonce hash; random per process, so nonces do not survive a restart
    /// (clients then get `Failed` once and a fresh challenge).
    secret: [u8; 32],
    opaque: String,
    rng: StdRng,
    /// Highest nonce-count seen per used nonce (`u32::MAX` for a spent RFC 2069 nonce).
    seen: BTreeMap<NonceId, u32>,
    /// Highest nonce evicted for lack of room: an untracked nonce at or below it may
    /// have been used already, so it is answered `Stale` rather than trusted.
    evicted_floor: Option<NonceId>,
    /// Counters for /metrics: replayed nonce-counts refused, entries evicted for room.
    replays: u64,
    evictions: u64,
}

impl std::fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("DigestAuth")
            .field("cfg", &self.cfg)
            .field("tracked_nonces", &self.seen.len())
            .finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl DigestAuth {
    /// A new authenticator with a fresh random secret.
    pub fn new(cfg: DigestConfig) -> Self {
        let mut rng = StdRng::from_entropy();
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let mut h = Sha256::new();
        h.update(secret);
        h.update(b"opaque");
        let opaque = hex::encode(&h.finalize()[..16]);
        DigestAuth {
            cfg,
            secret,
            opaque,
            rng,
            seen: BTreeMap::new(),
            evicted_floor: None,
            replays: 0,
            evictions: 0,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &DigestConfig {
        &self.cfg
    }

    /// Number of nonces currently tracked for replay protection.
    pub fn tracked_nonces(&self) -> usize {
        self.seen.len()
    }

    /// Credentials refused because their nonce-count (or single-use nonce) was reused.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// Tracking entries dropped because the table was full (their nonces turn stale).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn nonce_mac(&self, id: NonceId) -> [u8; 16] {
        // Fixed-length input and a fixed-format nonce, so SHA-256's length extension
        // cannot forge a nonce that parses; an HMAC crate would add nothing here.
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(b"nonce");
        h.update(id.0.to_be_bytes());
        h.update(id.1.to_be_bytes());
        let full = h.finalize();
        let mut mac = [0u8; 16];
        mac.copy_from_slice(&full[..16]);
        mac
    }

    fn issue_nonce(&mut self, now: SystemTime) -> String {
        let id = (unix_ms(now), self.rng.next_u64());
        format!(
            "{:016x}{:016x}{}",
            id.0,
            id.1,
            hex::encode(self.nonce_mac(id))
        )
    }

    /// Checks that we issued `nonce` and returns its identity.
    fn open_nonce(&self, nonce: &str) -> Option<NonceId> {
        let b = nonce.as_bytes();
        if b.len() != NONCE_LEN || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let ts = u64::from_str_radix(&nonce[..16], 16).ok()?;
        let salt = u64::from_str_radix(&nonce[16..32], 16).ok()?;
        let mac = hex::decode(&nonce[32..]).ok()?;
        ct_eq(&mac, &self.nonce_mac((ts, salt))).then_some((ts, salt))
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.cfg.nonce_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn is_expired(&self, id: NonceId, now_ms: u64) -> bool {
        now_ms.saturating_sub(id.0) > self.ttl_ms()
    }

    /// Drops a few expired tracking entries (oldest first).
    fn sweep(&mut self, now_ms: u64) {
        for _ in 0..SWEEP_PER_CALL {
            match self.seen.first_key_value() {
                Some((&id, _)) if self.is_expired(id, now_ms) => {
                    self.seen.remove(&id);
                }
                _ => break,
            }
        }
    }

    /// Challenge header values (for WWW-Authenticate or Proxy-Authenticate), one per
    /// configured algorithm in preference order, sharing one fresh nonce.
    pub fn challenge(&mut self, now: SystemTime, stale: bool) -> Vec<String> {
        let nonce = self.issue_nonce(now);
        self.cfg
            .algorithms
            .iter()
            .map(|a| {
                let mut v = format!(
                    "Digest realm=\"{}\",nonce=\"{nonce}\",opaque=\"{}\",algorithm={},qop=\"auth\"",
                    self.cfg.realm.replace(['"', '\\'], ""),
                    self.opaque,
                    a.as_str()
                );
                if stale {
                    v.push_str(",stale=true");
                }
                v
            })
            .collect()
    }

    /// Verifies an Authorization / Proxy-Authorization header value for `method`.
    ///
    /// `password_of` is asked exactly once per well-formed header, for any user name,
    /// and the same hashing is done whether or not the user exists, so neither the
    /// verdict nor the time taken tells which extensions exist.
    pub fn verify(
        &mut self,
        method: &str,
        header_value: &str,
        password_of: impl FnOnce(&str) -> Option<String>,
        now: SystemTime,
    ) -> Verdict {
        if header_value.trim().is_empty() {
            return Verdict::Missing;
        }
        let now_ms = unix_ms(now);
        self.sweep(now_ms);
        let Some(params) = parse_credentials(header_value) else {
            return Verdict::Failed;
        };
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let (Some(username), Some(realm), Some(nonce), Some(uri), Some(response)) = (
            get("username"),
            get("realm"),
            get("nonce"),
            get("uri"),
            get("response"),
        ) else {
            return Verdict::Failed;
        };

        // Collect every reason to fail, but keep going: the work done must not depend
        // on which check failed.
        let mut ok = true;
        // RFC 7616 §3.4: no algorithm parameter means MD5.
        let algorithm = match Algorithm::parse(get("algorithm").unwrap_or("MD5")) {
            Some(a) if self.cfg.algorithms.contains(&a) => a,
            _ => {
                ok = false;
                Algorithm::Md5
            }
        };
        ok &= realm == self.cfg.realm;
        ok &= get("userhash").is_none_or(|v| v.eq_ignore_ascii_case("false"));
        // Clients must echo opaque; tolerate its absence (RFC 2617 made it optional)
        // but never a different value.
        ok &= get("opaque").is_none_or(|o| ct_eq(o.as_bytes(), self.opaque.as_bytes()));
        let id = self.open_nonce(nonce);
        ok &= id.is_some();
        let qop = match get("qop") {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => match (get("nc"), get("cnonce")) {
                (Some(nc), Some(cnonce)) => Some(QopParams { qop: q, nc, cnonce }),
                _ => {
                    ok = false;
                    None
                }
            },
            Some(_) => {
                ok = false;
                None
            }
        };
        let nc = match qop {
            Some(q) => match parse_nc(q.nc) {
                Some(n) => n,
                None => {
                    ok = false;
                    0
                }
            },
            None => 0,
        };
        let password = password_of(username);
        ok &= password.is_some();
        let expected = response_hex(&ResponseParams {
            algorithm,
            username,
            realm,
            password: password.as_deref().unwrap_or(DUMMY_PASSWORD),
            method,
            uri,
            nonce,
            qop,
        });
        let matches = ct_eq(
            expected.as_bytes(),
            response.to_ascii_lowercase().as_bytes(),
        );
        let (true, true, Some(id)) = (ok, matches, id) else {
            return Verdict::Failed;
        };
        if self.is_expired(id, now_ms) {
            return Verdict::Stale;
        }
        match self.seen.get_mut(&id) {
            Some(last) => {
                // Seen before: only a strictly higher nc (qop) is fresh; a no-qop
                // nonce is single use, and a spent one is stored as u32::MAX.
                if qop.is_none() || nc <= *last {
                    self.replays += 1;
                    return Verdict::Failed;
                }
                *last = nc;
            }
            None => {
                if self.evicted_floor.is_some_and(|f| id <= f) {
                    // Its history was dropped for room: it may be a replay, so make the
                    // client fetch a fresh nonce instead of trusting it.
                    return Verdict::Stale;
                }
                while self.seen.len() >= self.cfg.max_tracked_nonces.max(1) {
                    match self.seen.pop_first() {
                        Some((old, _)) => {
                            self.evictions += 1;
                            self.evicted_floor =
                                Some(self.evicted_floor.map_or(old, |f| f.max(old)))
                        }
                        None => break,
                    }
                }
                self.seen
                    .insert(id, if qop.is_some() { nc } else { u32::MAX });
            }
        }
        Verdict::Ok {
            username: username.to_string(),
        }
    }
}

/// Parses an `nc` value: exactly 8 hex digits, not zero (RFC 7616 §3.4).
fn parse_nc(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn auth() -> DigestAuth {
        DigestAuth::new(DigestConfig {
            realm: "pbx.example".into(),
            ..DigestConfig::default()
        })
    }

    fn param(challenge: &str, name: &str) -> String {
        parse_credentials(challenge)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == name)
            .unwrap()
            .1
    }

    /// What a phone would send, computed independently with md-5/sha2.
    #[allow(clippy::too_many_arguments)]
    fn client(
        challenge: &str,
        alg: &str,
        user: &str,
        pw: &str,
        nc: u32,
        cnonce: &str,
        method: &str,
        uri: &str,
    ) -> String {
        let realm = param(challenge, "realm");
        let nonce = param(challenge, "nonce");
        let opaque = param(challenge, "opaque");
        let h = |s: String| match alg {
            "MD5" => hex::encode(Md5::digest(s.as_bytes())),
            _ => hex::encode(Sha256::digest(s.as_bytes())),
        };
        let ha1 = h(format!("{user}:{realm}:{pw}"));
        let ha2 = h(format!("{method}:{uri}"));
        let resp = h(format!("{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{resp}\", algorithm={alg}, cnonce=\"{cnonce}\", opaque=\"{opaque}\", \
             qop=auth, nc={nc:08x}"
        )
    }

    fn pw(user: &str) -> Option<String> {
        (user == "1001").then(|| "s3cret".to_string())
    }

    fn ok(user: &str) -> Verdict {
        Verdict::Ok {
            username: user.into(),
        }
    }

    #[test]
    fn rfc7616_vectors() {
        let mut p = ResponseParams {
            algorithm: Algorithm::Md5,
            username: "Mufasa",
            realm: "http-auth@example.org",
            password: "Circle of Life",
            method: "GET",
            uri: "/dir/index.html",
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            qop: Some(QopParams {
                qop: "auth",
                nc: "00000001",
                cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            }),
        };
        assert_eq!(response_hex(&p), "8ca523f5e9506fed4657c9700eebdbec");
        p.algorithm = Algorithm::Sha256;
        assert_eq!(
            response_hex(&p),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn challenge_shape() {
        let mut a = auth();
        let c = a.challenge(t(0), false);
        assert_eq!(c.len(), 2);
        assert!(c[0].starts_with("Digest realm=\"pbx.example\",nonce=\""));
        assert!(c[0].contains("algorithm=SHA-256,qop=\"auth\""));
        assert!(c[1].contains("algorithm=MD5"));
        assert!(!c[0].contains("stale"));
        assert!(a.challenge(t(0), true)[1].ends_with(",stale=true"));
        assert_eq!(Algorithm::parse("sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::parse("md5"), Some(Algorithm::Md5));
        assert_eq!(Algorithm::parse("MD5-sess"), None);
    }

    #[test]
    fn md5_and_sha256_accepted() {
        let mut a = auth();
        for (i, alg) in ["SHA-256", "MD5"].iter().enumerate() {
            let c = a.challenge(t(0), false).remove(i);
            let h = client(
                &c,
                alg,
                "1001",
                "s3cret",
                1,
                "abc",
                "REGISTER",
                "sip:pbx.example",
            );
            assert_eq!(a.verify("REGISTER", &h, pw, t(1)), ok("1001"), "{alg}");
        }
    }

    #[test]
    fn stale_forged_and_wrong() {
        let mut a = auth();
        let c = a.challenge(t(0), false).remove(1);
        let h = client(
            &c,
            "MD5",
            "1001",
            "s3cret",
            1,
            "x",
            "REGISTER",
            "sip:pbx.example",
        );
        assert_eq!(a.verify("REGISTER", &h, pw, t(31)), Verdict::Stale);
        // Stale needs a correct response: a wrong password on an old nonce is Failed.
        let bad = client(
            &c,
            "MD5",
            "1001",
            "guess",
            1,
            "x",
            "REGISTER",
            "sip:pbx.example",
        );
        assert_eq!(a.verify("REGISTER", &bad, pw, t(31)), Verdict::Failed);

        // Forged: a nonce of the right shape that we never issued, and a tampered time.
        let nonce = param(&c, "nonce");
        let mut forged = nonce.clone().into_bytes();
        forged[40] = if forged[40] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        let fc = c.replace(&nonce, &forged);
        let h = client(
            &fc,
            "MD5",
            "1001",
            "s3cret",
            1,
            "x",
            "REGISTER",
            "sip:pbx.example",
        );
        assert_eq!(a.verify("REGISTER", &h, pw, t(1)), Verdict::Failed);
        let later = format!(
            "{:016x}{}",
            u64::from_str_radix(&nonce[..16], 16).unwrap() + 60_000,
            &nonce[16..]
        );
        let fc = c.replace(&nonce, &later);
        let h = client(
            &fc,
            "MD5",
            "1001",
            "s3cret",
            1,
            "x",
            "REGISTER",
            "sip:pbx.example",
        );
        assert_eq!(a.verify("REGISTER", &h, pw, t(40)), Verdict::Failed);
        // Another authenticator's nonce (different secret).
        let c2 = auth().challenge(t(0), false).remove(1);
        let h = client(
            &c2,
            "MD5",
            "1001",
            "s3cret",
            1,
            "x",
            "REGISTER",
            "sip:pbx.example",
        );
        assert_eq!(a.verify("REGISTER", &h, pw, t(1)), Verdict::Failed);

        // Wrong password, unknown user, wrong realm, unsupported algorithm.
        let c = a.challenge(t(0), false).remove(1);
        let cases = [
            client(
                &c,
                "MD5",
                "1001",
                "nope",
                1,
                "x",
                "REGISTER",
                "sip:pbx.example",
            ),
            client(
                &c,
                "MD5",
                "1999",
                "s3cret",
                1,
                "x",
                "REGISTER",
                "sip:pbx.example",
            ),
            client(
                &c,
                "MD5",
                "1001",
                "s3cret",
                1,
                "x",
                "REGISTER",
                "sip:pbx.example",
            )
            .replace("realm=\"pbx.example\"", "realm=\"other\""),
            client(
                &c,
                "MD5",
                "1001",
                "s3cret",
                1,
                "x",
                "REGISTER",
                "sip:pbx.example",
            )
            .replace("algorithm=MD5", "algorithm=MD5-sess"),
            client(
                &c,
                "MD5",
                "1001",
                "s3cret",
                1,
                "x",
                "REGISTER",
                "sip:pbx.example",
            )
            .replace("opaque=\"", "opaque=\"0"),
            client(
                &c,
                "MD5",
                "1001",
                "s3cret",
                1,
                "x",
                "INVITE",
                "sip:pbx.example",
            ),
        ];
        for h in &cases {
            assert_eq!(a.verify("REGISTER", h, pw, t(1)), Verdict::Failed, "{h}");
        }
        assert_eq!(a.verify("REGISTER", "  ", pw, t(1)), Verdict::Missing);
    }

    #[test]
    fn unknown_user_costs_a_lookup_and_a_hash() {
        let mut a = auth();
        let c = a.challenge(t(0), false).remove(0);
        let h = client(
            &c,
            "SHA-256",
            "1999",
            "x",
            1,
            "x",
            "REGISTER",
            "sip:pbx.example",
        );
        let mut asked = None;
        let v = a.verify(
            "REGISTER",
            &h,
            |u| {
                asked = Some(u.to_string());
                None
            },
            t(1),
        );
        assert_eq!(v, Verdict::Failed);
        assert_eq!(asked.as_deref(), Some("1999"));
    }

    #[test]
    fn nonce_count_replay() {
        let mut a = auth();
        let c = a.challenge(t(0), false).remove(0);
        let mk = |nc| {
            client(
                &c,
                "SHA-256",
                "1001",
                "s3cret",
                nc,
                "cn",
                "REGISTER",
                "sip:pbx.example",
            )
        };
        assert_eq!(a.verify("REGISTER", &mk(1), pw, t(1)), ok("1001"));
        assert_eq!(
            a.verify("REGISTER", &mk(1), pw, t(2)),
            Verdict::Failed,
            "replay"
        );
        assert_eq!(a.verify("REGISTER", &mk(2), pw, t(3)), ok("1001"));
        assert_eq!(a.verify("REGISTER", &mk(5), pw, t(4)), ok("1001"));
        assert_eq!(
            a.verify("REGISTER", &mk(3), pw, t(5)),
            Verdict::Failed,
            "older nc"
        );
        assert_eq!(a.tracked_nonces(), 1);
        assert_eq!(a.replays(), 2);
        let zero = mk(1).replace("nc=00000001", "nc=00000000");
        assert_eq!(a.verify("REGISTER", &zero, pw, t(5)), Verdict::Failed);
    }

    #[test]
    fn rfc2069_nonce_is_single_use() {
        let mut a = auth();
        let c = a.challenge(t(0), false).remove(1);
        let nonce = param(&c, "nonce");
        let resp = response_hex(&ResponseParams {
            algorithm: Algorithm::Md5,
            username: "1001",
            realm: "pbx.example",
            password: "s3cret",
            method: "REGISTER",
            uri: "sip:pbx.example",
            nonce: &nonce,
            qop: None,
        });
        let h = format!(
            "Digest username=\"1001\",realm=\"pbx.example\",nonce=\"{nonce}\",uri=\"sip:pbx.example\",response=\"{resp}\""
        );
        assert_eq!(a.verify("REGISTER", &h, pw, t(1)), ok("1001"));
        assert_eq!(a.verify("REGISTER", &h, pw, t(2)), Verdict::Failed);
        assert_eq!(a.replays(), 1);
    }

    #[test]
    fn tracking_table_is_bounded_and_swept() {
        let mut a = DigestAuth::new(DigestConfig {
            realm: "pbx.example".into(),
            max_tracked_nonces: 2,
            ..DigestConfig::default()
        });
        let cs: Vec<String> = (0..3).map(|i| a.challenge(t(i), false).remove(0)).collect();
        let mk = |c: &str, nc| client(c, "SHA-256", "1001", "s3cret", nc, "cn", "REGISTER", "u");
        for c in &cs {
            assert_eq!(a.verify("REGISTER", &mk(c, 1), pw, t(5)), ok("1001"));
        }
        assert_eq!(a.tracked_nonces(), 2);
        assert_eq!(a.evictions(), 1);
        // The evicted nonce can no longer be checked for replay: re-challenge it.
        assert_eq!(
            a.verify("REGISTER", &mk(&cs[0], 1), pw, t(6)),
            Verdict::Stale
        );
        assert_eq!(a.verify("REGISTER", &mk(&cs[1], 2), pw, t(6)), ok("1001"));
        // Once they expire, use sweeps them away.
        assert_eq!(
            a.verify("REGISTER", "Digest x=y", pw, t(100)),
            Verdict::Failed
        );
        assert_eq!(a.tracked_nonces(), 0);
    }

    #[test]
    fn credentials_parser() {
        let p = parse_credentials(
            "digest  URI=\"sip:a, b\" ,response=abc,username=\"x\\\"y\",, REALM = \"r\"",
        )
        .unwrap();
        assert_eq!(
            p,
            vec![
                ("uri".into(), "sip:a, b".into()),
                ("response".into(), "abc".into()),
                ("username".into(), "x\"y".into()),
                ("realm".into(), "r".into()),
            ]
        );
        for bad in [
            "",
            "Digest",
            "Basic dXNlcjpwYXNz",
            "Digest username=\"unterminated",
            "Digest username=",
            "Digest =x",
            "Digest a=b c=d",
            "Digest a=b, a=c",
            "Digest a=b\"c\"",
            "Digest \u{e9}=1",
        ] {
            assert!(parse_credentials(bad).is_none(), "{bad:?}");
        }
        let long = format!("Digest a=\"{}\"", "x".repeat(5000));
        assert!(parse_credentials(&long).is_none());
        let mut a = auth();
        for junk in [
            "Digest",
            "Digest a=\"",
            "\u{0}\u{ff}",
            "Digest nonce=zz,username=1001",
        ] {
            assert_eq!(a.verify("REGISTER", junk, pw, t(0)), Verdict::Failed);
        }
    }
}
