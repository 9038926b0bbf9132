//! A minimal SIP user agent for the VIP failover benchmark (`bench/failover.sh`): the
//! requests and responses a phone sends (REGISTER, INVITE, ACK, BYE, OPTIONS), digest
//! credentials for a challenge (computed with the node's own [`response_hex`]), and the
//! parts of SDP a phone reads (where to send its RTP).
//!
//! Messages are written as text and parsed with the node's parser
//! ([`node::sip::message::parse`]), so the load speaks exactly the SIP the node reads.

use node::registrar::digest::{response_hex, Algorithm, QopParams, ResponseParams};
use node::sip::message::{NameAddr, SipMessage};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A token unique in this process and very likely across runs (pid, time, counter):
/// tags, branches, Call-IDs.
pub fn token() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    format!("{:x}{:x}{:x}", std::process::id(), t & 0xff_ffff_ffff, n)
}

/// A new Via branch (RFC 3261 magic cookie).
pub fn branch() -> String {
    format!("z9hG4bK{}", token())
}

/// Wall clock in seconds since the epoch (what the shell's `date +%s.%N` prints).
pub fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Everything a request needs besides its method-specific parts.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Method (`REGISTER`, `INVITE`, ...).
    pub method: &'a str,
    /// Request-URI.
    pub uri: &'a str,
    /// This phone's address (Via, Contact).
    pub local: SocketAddr,
    /// Branch of the top Via.
    pub branch: &'a str,
    /// From header value (with its tag).
    pub from: &'a str,
    /// To header value (with the peer's tag in a dialog).
    pub to: &'a str,
    /// Call-ID.
    pub call_id: &'a str,
    /// CSeq number (the method is `method`, except for an ACK's own).
    pub cseq: u32,
    /// Contact user; `None`: no Contact header.
    pub contact_user: Option<&'a str>,
    /// Further header lines, each `Name: value`.
    pub extra: &'a [String],
    /// SDP body, if any.
    pub sdp: Option<&'a str>,
}

impl Request<'_> {
    /// Wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = String::with_capacity(512);
        let _ = write!(s, "{} {} SIP/2.0\r\n", self.method, self.uri);
        let _ = write!(
            s,
            "Via: SIP/2.0/UDP {};branch={};rport\r\n",
            self.local, self.branch
        );
        s.push_str("Max-Forwards: 70\r\n");
        let _ = write!(s, "From: {}\r\n", self.from);
        let _ = write!(s, "To: {}\r\n", self.to);
        let _ = write!(s, "Call-ID: {}\r\n", self.call_id);
        let _ = write!(s, "CSeq: {} {}\r\n", self.cseq, self.method);
        if let Some(u) = self.contact_user {
            let _ = write!(s, "Contact: <sip:{u}@{}>\r\n", self.local);
        }
        for h in self.extra {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("User-Agent: bench-vip-phone\r\n");
        match self.sdp {
            Some(body) => {
                let _ = write!(
                    s,
                    "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
            None => s.push_str("Content-Length: 0\r\n\r\n"),
        }
        s.into_bytes()
    }
}

/// A response to `req` (Via, From, To, Call-ID and CSeq copied; `to_tag` added to To
/// when it has none), optionally with a Contact and an SDP body.
pub fn response(
    req: &SipMessage,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    contact: Option<String>,
    sdp: Option<&str>,
) -> Vec<u8> {
    let mut r = req.response(code, reason);
    if let Some(t) = to_tag {
        r.set_to_tag(t);
    }
    if let Some(c) = contact {
        r.headers.push("Contact", c);
    }
    if let Some(body) = sdp {
        r.set_body(
            Some("application/sdp"),
            bytes::Bytes::copy_from_slice(body.as_bytes()),
        );
    }
    r.to_bytes().to_vec()
}

/// An audio offer or answer: PCMU at `at` (c= and m= lines).
pub fn sdp(at: SocketAddr, session: u64) -> String {
    format!(
        "v=0\r\no=bench {session} {session} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        ip = at.ip(),
        port = at.port()
    )
}

/// Where an SDP body asks for audio: the session (or media) `c=` address and the first
/// `m=audio` port.
pub fn sdp_audio_target(body: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(body).ok()?;
    let mut ip: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix("c=IN IP4 ") {
            if port.is_none() || ip.is_none() {
                ip = c
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.parse().ok())
                    .or(ip);
            }
        } else if let Some(m) = line.strip_prefix("m=audio ") {
            if port.is_none() {
                port = m.split_whitespace().next().and_then(|p| p.parse().ok());
            }
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

/// The parameters of a `Digest` challenge (`WWW-Authenticate`, `Proxy-Authenticate`).
#[derive(Debug, Clone, Default)]
pub struct Challenge {
    /// realm
    pub realm: String,
    /// nonce
    pub nonce: String,
    /// opaque, echoed back when present
    pub opaque: Option<String>,
    /// algorithm (MD5 when absent)
    pub algorithm: String,
    /// true when `qop` offers `auth`
    pub qop_auth: bool,
}

/// Parses a `Digest k=v, k="v"` challenge.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let rest = value.trim().strip_prefix("Digest")?.trim();
    let mut c = Challenge {
        algorithm: "MD5".into(),
        ..Challenge::default()
    };
    for (k, v) in split_auth_params(rest) {
        match k.to_ascii_lowercase().as_str() {
            "realm" => c.realm = v,
            "nonce" => c.nonce = v,
            "opaque" => c.opaque = Some(v),
            "algorithm" => c.algorithm = v,
            "qop" => c.qop_auth = v.split(',').any(|q| q.trim() == "auth"),
            _ => {}
        }
    }
    (!c.nonce.is_empty()).then_some(c)
}

fn split_auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',' || b[i] == b'\t') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = s[ks..i].trim().to_string();
        if i >= b.len() || b[i] == b',' {
            continue;
        }
        i += 1; // '='
        let val = if i < b.len() && b[i] == b'"' {
            i += 1;
            let vs = i;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            let v = s[vs..i].to_string();
            i += 1;
            v
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            s[vs..i].trim().to_string()
        };
        if !key.is_empty() {
            out.push((key, val));
        }
    }
    out
}

/// The first challenge of `header` (`WWW-Authenticate` or `Proxy-Authenticate`) in
/// `msg` whose algorithm we compute.
pub fn challenge_of(msg: &SipMessage, header: &str) -> Option<Challenge> {
    msg.headers
        .get_all(header)
        .filter_map(parse_challenge)
        .find(|c| Algorithm::parse(&c.algorithm).is_some())
}

/// The `Authorization` / `Proxy-Authorization` value answering `ch` for a request.
pub fn credentials(ch: &Challenge, user: &str, password: &str, method: &str, uri: &str) -> String {
    let algorithm = Algorithm::parse(&ch.algorithm).unwrap_or(Algorithm::Md5);
    let cnonce = token();
    let nc = "00000001";
    let qop = ch.qop_auth.then_some(QopParams {
        qop: "auth",
        nc,
        cnonce: &cnonce,
    });
    let response = response_hex(&ResponseParams {
        algorithm,
        username: user,
        realm: &ch.realm,
        password,
        method,
        uri,
        nonce: &ch.nonce,
        qop,
    });
    let mut s = format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
        ch.realm,
        ch.nonce,
        algorithm.as_str()
    );
    if ch.qop_auth {
        let _ = write!(s, ", qop=auth, nc={nc}, cnonce=\"{cnonce}\"");
    }
    if let Some(o) = &ch.opaque {
        let _ = write!(s, ", opaque=\"{o}\"");
    }
    s
}

/// The URI of the first Contact of `msg`, if any.
pub fn contact_uri(msg: &SipMessage) -> Option<String> {
    msg.headers
        .get("Contact")
        .and_then(NameAddr::parse)
        .map(|n| n.uri)
}

/// The address a request to `uri` goes to: its host (an IP literal) and port (5060).
pub fn uri_target(uri: &str) -> Option<SocketAddr> {
    let u = node::sip::message::parse_uri(uri)?;
    let ip: IpAddr = u.host.parse().ok()?;
    Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
}

/// Record-Route values of a response, reversed into the route set a UAC uses.
pub fn route_set(msg: &SipMessage) -> Vec<String> {
    let mut v: Vec<String> = msg
        .headers
        .get_all("Record-Route")
        .flat_map(node::sip::message::split_list)
        .map(|s| s.trim().to_string())
        .collect();
    v.reverse();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_round_trip() {
        let c = parse_challenge(
            "Digest realm=\"softswitch\", nonce=\"abc,def\", algorithm=MD5, qop=\"auth,auth-int\", opaque=\"x\"",
        )
        .unwrap();
        assert_eq!(c.realm, "softswitch");
        assert_eq!(c.nonce, "abc,def");
        assert!(c.qop_auth);
        assert_eq!(c.opaque.as_deref(), Some("x"));
        let v = credentials(&c, "2000", "pw2000", "REGISTER", "sip:10.0.0.1");
        assert!(v.contains("username=\"2000\"") && v.contains("qop=auth"));
    }

    #[test]
    fn sdp_target() {
        let s = sdp("10.99.0.10:20000".parse().unwrap(), 1);
        assert_eq!(
            sdp_audio_target(s.as_bytes()),
            Some("10.99.0.10:20000".parse().unwrap())
        );
    }
}
