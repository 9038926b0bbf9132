//! SIP messages: parsing with limits and normalisation, typed accessors and serialisation.
//!
//! Raw input is normalised before anything looks at it (line folding undone, compact
//! header names expanded, comma-separated Via/Contact/Route/Record-Route split into one
//! header each), so the rest of the node sees one canonical shape. URIs are parsed by
//! `rsip`, which has no compact forms and no folding, hence the pre-pass here.

use bytes::Bytes;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Largest message accepted on any transport (bytes).
pub const MAX_MESSAGE_SIZE: usize = 65_536;
/// Largest number of header fields accepted in one message.
pub const MAX_HEADERS: usize = 256;

/// SIP request method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// REGISTER
    Register,
    /// OPTIONS
    Options,
    /// INFO
    Info,
    /// UPDATE
    Update,
    /// PRACK
    Prack,
    /// SUBSCRIBE
    Subscribe,
    /// NOTIFY
    Notify,
    /// REFER
    Refer,
    /// MESSAGE
    Message,
    /// PUBLISH
    Publish,
    /// Any other token.
    Other(String),
}

impl Method {
    /// Parses a method token (case-sensitive, as RFC 3261 §7.1 says).
    pub fn parse(s: &str) -> Option<Method> {
        if s.is_empty() || !s.bytes().all(is_token_byte) {
            return None;
        }
        Some(match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_string()),
        })
    }

    /// The method token.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// First line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD uri SIP/2.0`
    Request {
        /// Request method.
        method: Method,
        /// Request-URI as received (validated by rsip).
        uri: String,
    },
    /// `SIP/2.0 code reason`
    Response {
        /// Status code 100..=699.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// One header field with its canonical name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Canonical name (long form, conventional capitalisation for known headers).
    pub name: Cow<'static, str>,
    /// Value with surrounding whitespace removed.
    pub value: String,
}

/// Ordered header fields; lookups ignore case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<Header>);

impl Headers {
    /// First value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Appends a header.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push(Header {
            name: canonical_name(name),
            value: value.into(),
        });
    }

    /// Inserts a header before all others of any name (used for Via).
    pub fn push_front(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(
            0,
            Header {
                name: canonical_name(name),
                value: value.into(),
            },
        );
    }

    /// Replaces every `name` header with one value, keeping the first one's position.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        if let Some(pos) = self
            .0
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(name))
        {
            self.0[pos].value = value;
            let mut i = 0;
            self.0.retain(|h| {
                let keep = i <= pos || !h.name.eq_ignore_ascii_case(name);
                i += 1;
                keep
            });
        } else {
            self.push(name, value);
        }
    }

    /// Replaces the value of the first `name` header only (e.g. the top Via), or appends.
    pub fn set_first(&mut self, name: &str, value: impl Into<String>) {
        match self
            .0
            .iter_mut()
            .find(|h| h.name.eq_ignore_ascii_case(name))
        {
            Some(h) => h.value = value.into(),
            None => self.push(name, value),
        }
    }

    /// Removes every `name` header.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// Removes the first `name` header and returns its value.
    pub fn remove_first(&mut self, name: &str) -> Option<String> {
        let pos = self
            .0
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(name))?;
        Some(self.0.remove(pos).value)
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    /// Number of header fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A parsed SIP request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    /// Request or status line.
    pub start: StartLine,
    /// Header fields.
    pub headers: Headers,
    /// Body (exactly Content-Length bytes).
    pub body: Bytes,
}

/// Why a message was refused, and what the node should answer (if it can).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {reason}")]
pub struct ParseError {
    /// Status to answer a request with: 400, 505 or 513.
    pub status: u16,
    /// Reason phrase for the answer, naming the fault.
    pub reason: String,
    /// The request line and whatever headers could be read, for addressing a reply.
    pub partial: Option<Box<SipMessage>>,
}

impl ParseError {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        ParseError {
            status,
            reason: reason.into(),
            partial: None,
        }
    }

    /// A response to the offending request, when the request got far enough to route
    /// one: a readable top Via is enough (RFC 3261 §18.2.2); whichever of From, To,
    /// Call-ID and CSeq were present are copied, so the sender can match it.
    pub fn reply(&self) -> Option<SipMessage> {
        let partial = self.partial.as_ref()?;
        if !partial.is_request() || partial.method() == Some(&Method::Ack) {
            return None;
        }
        partial.top_via()?;
        Some(partial.response(self.status, &self.reason))
    }
}

/// Canonical long name for a header name in any case or compact form.
pub fn canonical_name(name: &str) -> Cow<'static, str> {
    const KNOWN: &[&str] = &[
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Event",
        "Expires",
        "From",
        "Max-Forwards",
        "Min-Expires",
        "Min-SE",
        "Organization",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "RAck",
        "Server",
        "Session-Expires",
        "Subject",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    ];
    let long = match name.len() {
        1 => match name.as_bytes()[0].to_ascii_lowercase() {
            b'i' => Some("Call-ID"),
            b'm' => Some("Contact"),
            b'e' => Some("Content-Encoding"),
            b'l' => Some("Content-Length"),
            b'c' => Some("Content-Type"),
            b'f' => Some("From"),
            b's' => Some("Subject"),
            b'k' => Some("Supported"),
            b't' => Some("To"),
            b'v' => Some("Via"),
            b'o' => Some("Event"),
            b'u' => Some("Allow-Events"),
            b'r' => Some("Refer-To"),
            b'b' => Some("Referred-By"),
            b'x' => Some("Session-Expires"),
            _ => None,
        },
        _ => None,
    };
    if let Some(l) = long {
        return Cow::Borrowed(l);
    }
    // Most peers already write the canonical spelling: try an exact match first.
    if let Some(k) = KNOWN.iter().find(|k| **k == name) {
        return Cow::Borrowed(k);
    }
    KNOWN
        .iter()
        .find(|k| k.eq_ignore_ascii_case(name))
        .map(|k| Cow::Borrowed(*k))
        .unwrap_or_else(|| Cow::Owned(name.to_string()))
}

/// Headers whose comma-separated values are split into one field each.
fn is_list_header(canonical: &str) -> bool {
    matches!(canonical, "Via" | "Contact" | "Route" | "Record-Route")
}

/// Splits a header value at top-level commas (not inside quotes or `<>`).
pub fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_quote, mut in_angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '<' if !in_quote => in_angle = true,
            '>' if !in_quote => in_angle = false,
            ',' if !in_quote && !in_angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// Where the head ends: index of the blank line and the length of the separator.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = find(buf, b"\r\n\r\n").map(|i| (i, 4));
    let lf = find(buf, b"\n\n").map(|i| (i, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one datagram (or one framed stream message) into a [`SipMessage`].
///
/// The body is taken as Content-Length bytes; a datagram shorter than that is an error,
/// extra bytes after it are ignored (RFC 3261 §18.3).
pub fn parse(buf: &[u8]) -> Result<SipMessage, ParseError> {
    if buf.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::new(513, "Message Too Large"));
    }
    // Leading CRLFs are keep-alives or padding between messages (RFC 3261 §7.5).
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or_else(|| ParseError::new(400, "Empty Message"))?;
    let buf = &buf[start..];
    let (head_len, sep) = find_head_end(buf).unwrap_or((buf.len(), 0));
    let head = std::str::from_utf8(&buf[..head_len])
        .map_err(|_| ParseError::new(400, "Bad Header Encoding"))?;
    let rest = &buf[(head_len + sep).min(buf.len())..];

    let mut lines = unfold(head);
    if lines.is_empty() {
        return Err(ParseError::new(400, "Empty Message"));
    }
    let first = lines.remove(0);
    let (start, version_err) = parse_start_line(&first)?;

    let mut headers = Headers::default();
    let mut partial_err: Option<ParseError> = version_err;
    for line in &lines {
        let Some(colon) = line.find(':') else {
            partial_err.get_or_insert(ParseError::new(400, "Bad Header Line"));
            continue;
        };
        let raw_name = line[..colon].trim();
        if raw_name.is_empty() || !raw_name.bytes().all(is_token_byte) {
            partial_err.get_or_insert(ParseError::new(400, "Bad Header Name"));
            continue;
        }
        let name = canonical_name(raw_name);
        let value = line[colon + 1..].trim();
        if is_list_header(&name) && !value.starts_with('*') {
            for v in split_list(value) {
                headers.0.push(Header {
                    name: name.clone(),
                    value: v.to_string(),
                });
            }
        } else {
            headers.0.push(Header {
                name,
                value: value.to_string(),
            });
        }
        if headers.len() > MAX_HEADERS {
            partial_err = Some(ParseError::new(513, "Too Many Headers"));
            break;
        }
    }

    let mut msg = SipMessage {
        start,
        headers,
        body: Bytes::new(),
    };
    let fail = |mut e: ParseError, msg: SipMessage| {
        e.partial = Some(Box::new(msg));
        Err(e)
    };
    if let Some(e) = partial_err {
        return fail(e, msg);
    }
    let body_len = match msg.headers.get("Content-Length") {
        None => rest.len(),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= rest.len() => n,
            Ok(_) => return fail(ParseError::new(400, "Content-Length Exceeds Body"), msg),
            Err(_) => return fail(ParseError::new(400, "Bad Content-Length"), msg),
        },
    };
    msg.body = Bytes::copy_from_slice(&rest[..body_len]);
    if let Err(reason) = msg.check_mandatory() {
        return fail(ParseError::new(400, reason), msg);
    }
    Ok(msg)
}

/// Undoes line folding (RFC 3261 §7.3.1) and accepts bare LF line ends.
fn unfold(head: &str) -> Vec<Cow<'_, str>> {
    let mut lines: Vec<Cow<'_, str>> = Vec::with_capacity(16);
    for raw in head.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if (line.starts_with(' ') || line.starts_with('\t')) && !lines.is_empty() {
            if let Some(last) = lines.last_mut() {
                let joined = last.to_mut();
                joined.push(' ');
                joined.push_str(line.trim());
            }
        } else if !line.is_empty() {
            lines.push(Cow::Borrowed(line));
        }
    }
    lines
}

/// Parses the first line; a request with a SIP version other than 2.0 is returned with
/// a deferred 505 so the headers can still be read to address the reply.
fn parse_start_line(line: &str) -> Result<(StartLine, Option<ParseError>), ParseError> {
    if let Some(rest) = line.strip_prefix("SIP/") {
        let mut parts = rest.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if version != "2.0" {
            return Err(ParseError::new(505, "Version Not Supported"));
        }
        let code = parts
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..700).contains(c))
            .ok_or_else(|| ParseError::new(400, "Bad Status Line"))?;
        let reason = parts.next().unwrap_or("").to_string();
        return Ok((StartLine::Response { code, reason }, None));
    }
    let mut parts = line.split(' ').filter(|p| !p.is_empty());
    let (Some(m), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::new(400, "Bad Request Line"));
    };
    let method = Method::parse(m).ok_or_else(|| ParseError::new(400, "Bad Method"))?;
    if !version.starts_with("SIP/") {
        return Err(ParseError::new(400, "Bad Request Line"));
    }
    let version_err = (version != "SIP/2.0").then(|| ParseError::new(505, "Version Not Supported"));
    if uri.contains(':') && parse_uri(uri).is_none() && !uri.starts_with("tel:") {
        return Err(ParseError::new(400, "Bad Request-URI"));
    }
    Ok((
        StartLine::Request {
            method,
            uri: uri.to_string(),
        },
        version_err,
    ))
}

/// A SIP or SIPS URI: the parts the node routes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// `sip` or `sips`.
    pub scheme: String,
    /// User part, if any.
    pub user: Option<String>,
    /// Host (IPv6 without brackets).
    pub host: String,
    /// Port, if given.
    pub port: Option<u16>,
    /// URI parameters (`;transport=tcp`, `;lr`, ...).
    pub params: Vec<(String, Option<String>)>,
}

impl SipUri {
    /// Value of a URI parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        find_param(&self.params, name)
    }
}

/// Parses a SIP URI.
///
/// rsip 0.4 validates the URI grammar but cannot read IPv6 references (`[2001:db8::1]`),
/// so those are split here and the rest of the URI is still checked by rsip.
pub fn parse_uri(s: &str) -> Option<SipUri> {
    let (scheme, rest) = s.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return None;
    }
    let rest = rest.split('?').next().unwrap_or_default();
    let (userinfo, hostpart) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let (hostport, params) = match hostpart.find(';') {
        Some(i) => (&hostpart[..i], &hostpart[i..]),
        None => (hostpart, ""),
    };
    let (host, port) = split_host_port(hostport)?;
    if host.is_empty() {
        return None;
    }
    if !hostport.starts_with('[') {
        if !rsip_accepts(s) {
            return None;
        }
    } else if host.parse::<std::net::Ipv6Addr>().is_err() {
        return None;
    }
    let user = userinfo.map(|u| u.split(':').next().unwrap_or_default().to_string());
    Some(SipUri {
        scheme: scheme.to_ascii_lowercase(),
        user: user.filter(|u| !u.is_empty()),
        host,
        port,
        params: parse_params(params),
    })
}

/// URIs rsip accepted lately, per parsing thread: phones send the same registrar and
/// proxy URIs over and over, and rsip's grammar check was a sizeable part of parsing.
/// Bounded: cleared when full, so a peer sending endless distinct URIs costs only the
/// checks it would have cost anyway.
const RSIP_CACHE_MAX: usize = 4096;

thread_local! {
    static RSIP_ACCEPTED: std::cell::RefCell<ahash::AHashSet<Box<str>>> =
        std::cell::RefCell::new(ahash::AHashSet::default());
}

/// True when rsip parses `s` as a URI (remembered for URIs it accepted).
fn rsip_accepts(s: &str) -> bool {
    if RSIP_ACCEPTED.with(|c| c.borrow().contains(s)) {
        return true;
    }
    if rsip::Uri::try_from(s).is_err() {
        return false;
    }
    RSIP_ACCEPTED.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= RSIP_CACHE_MAX {
            c.clear();
        }
        c.insert(s.into());
    });
    true
}

/// User part of a SIP or SIPS URI, if any. Only the user is read, so this skips the full
/// grammar check of [`parse_uri`]: callers look the user up in the directory, which
/// is the check that matters.
pub fn uri_user(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return None;
    }
    let rest = rest.split('?').next().unwrap_or_default();
    let (userinfo, hostpart) = rest.rsplit_once('@')?;
    let host = hostpart.split(';').next().unwrap_or_default();
    let user = userinfo.split(':').next().unwrap_or_default();
    (!user.is_empty() && !host.is_empty()).then(|| user.to_string())
}

/// `name-addr` or `addr-spec` with header parameters (From, To, Contact, Route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name without quotes.
    pub display: Option<String>,
    /// URI text (without `<>`).
    pub uri: String,
    /// Header parameters after the URI (`;tag=..`, `;expires=..`, `;q=..`).
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    /// Parses a From/To/Contact/Route value.
    pub fn parse(value: &str) -> Option<NameAddr> {
        let value = value.trim();
        let (display, uri, rest) = if let Some(lt) = find_unquoted(value, '<') {
            let gt = value[lt..].find('>')? + lt;
            let display = value[..lt].trim().trim_matches('"').trim();
            (
                (!display.is_empty()).then(|| display.to_string()),
                value[lt + 1..gt].trim().to_string(),
                &value[gt + 1..],
            )
        } else {
            let end = value.find(';').unwrap_or(value.len());
            (None, value[..end].trim().to_string(), &value[end..])
        };
        if uri.is_empty() {
            return None;
        }
        Some(NameAddr {
            display,
            uri,
            params: parse_params(rest),
        })
    }

    /// Value of a header parameter (case-insensitive name).
    pub fn param(&self, name: &str) -> Option<&str> {
        find_param(&self.params, name)
    }

    /// Serialises back to header form, always with `<>`.
    pub fn to_header(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.display {
            let _ = write!(s, "\"{}\" ", d.replace('"', ""));
        }
        let _ = write!(s, "<{}>", self.uri);
        write_params(&mut s, &self.params);
        s
    }
}

fn find_unquoted(s: &str, needle: char) -> Option<usize> {
    let mut in_quote = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quote = !in_quote,
            c if c == needle && !in_quote => return Some(i),
            _ => {}
        }
    }
    None
}

/// Value of a parameter in a parsed list (case-insensitive name; `""` for a bare flag).
pub fn find_param<'a>(params: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref().unwrap_or(""))
}

/// Appends `;k=v` / `;k` for each parameter.
fn write_params(s: &mut String, params: &[(String, Option<String>)]) {
    for (k, v) in params {
        let _ = match v {
            Some(v) => write!(s, ";{k}={v}"),
            None => write!(s, ";{k}"),
        };
    }
}

/// Parses `;a=b;c` parameter lists.
pub fn parse_params(s: &str) -> Vec<(String, Option<String>)> {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (
                k.trim().to_string(),
                Some(v.trim().trim_matches('"').to_string()),
            ),
            None => (p.to_string(), None),
        })
        .collect()
}

/// Transport named in a Via or URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Transport {
    /// UDP
    Udp,
    /// TCP
    Tcp,
}

impl Transport {
    /// Upper-case token used in Via.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// A parsed Via header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token as written (UDP, TCP, TLS, ...).
    pub transport: String,
    /// sent-by host (IPv6 without brackets).
    pub host: String,
    /// sent-by port, when present.
    pub port: Option<u16>,
    /// Parameters.
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    /// Parses `SIP/2.0/UDP host:port;params`.
    pub fn parse(value: &str) -> Option<Via> {
        let value = value.trim();
        let (proto, rest) = value.split_once(|c: char| c.is_whitespace())?;
        let mut p = proto.split('/');
        let (name, version, transport) = (p.next()?, p.next()?, p.next()?);
        if !name.trim().eq_ignore_ascii_case("SIP") || version.trim() != "2.0" {
            return None;
        }
        let rest = rest.trim();
        let (sent_by, params) = match rest.find(';') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(sent_by.trim())?;
        Some(Via {
            transport: transport.trim().to_ascii_uppercase(),
            host,
            port,
            params: parse_params(params),
        })
    }

    /// Value of a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        find_param(&self.params, name)
    }

    /// True when the parameter is present (with or without value).
    pub fn has_param(&self, name: &str) -> bool {
        self.params
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&str> {
        self.param("branch")
    }

    /// Sets (or adds) a parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        if let Some(p) = self
            .params
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            p.1 = value;
        } else {
            self.params.push((name.to_string(), value));
        }
    }

    /// Serialises back to header form.
    pub fn to_header(&self) -> String {
        let mut s = format!("SIP/2.0/{} {}", self.transport, format_host(&self.host));
        if let Some(p) = self.port {
            let _ = write!(s, ":{p}");
        }
        write_params(&mut s, &self.params);
        s
    }
}

/// Formats a host for a URI or Via: IPv6 literals in brackets.
pub fn format_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Formats a socket address for a URI or Via (`[v6]:port`).
pub fn format_addr(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

/// Splits `host[:port]` and `[v6][:port]`.
pub fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let close = rest.find(']')?;
        let host = rest[..close].to_string();
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host, port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_string(), Some(p.parse().ok()?))),
        Some(_) => Some((s.to_string(), None)), // bare IPv6 without brackets
        None if !s.is_empty() => Some((s.to_string(), None)),
        None => None,
    }
}

impl SipMessage {
    /// A new request with no headers.
    pub fn request(method: Method, uri: impl Into<String>) -> SipMessage {
        SipMessage {
            start: StartLine::Request {
                method,
                uri: uri.into(),
            },
            headers: Headers::default(),
            body: Bytes::new(),
        }
    }

    /// True for requests.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// Request method (None for responses).
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// Request-URI (None for responses).
    pub fn uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// Status code (None for requests).
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.headers.get("Call-ID")
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, Method)> {
        let v = self.headers.get("CSeq")?;
        let mut it = v.split_whitespace();
        let n = it.next()?.parse().ok()?;
        let m = Method::parse(it.next()?)?;
        Some((n, m))
    }

    /// Topmost Via, parsed.
    pub fn top_via(&self) -> Option<Via> {
        Via::parse(self.headers.get("Via")?)
    }

    /// Branch of the topmost Via.
    pub fn branch(&self) -> Option<String> {
        self.top_via()?.branch().map(str::to_string)
    }

    /// Parsed From header.
    pub fn from_addr(&self) -> Option<NameAddr> {
        NameAddr::parse(self.headers.get("From")?)
    }

    /// Parsed To header.
    pub fn to_addr(&self) -> Option<NameAddr> {
        NameAddr::parse(self.headers.get("To")?)
    }

    /// From tag.
    pub fn from_tag(&self) -> Option<String> {
        self.from_addr()?.param("tag").map(str::to_string)
    }

    /// To tag.
    pub fn to_tag(&self) -> Option<String> {
        self.to_addr()?.param("tag").map(str::to_string)
    }

    /// Max-Forwards (70 when absent, as a proxy would assume).
    pub fn max_forwards(&self) -> Option<u32> {
        match self.headers.get("Max-Forwards") {
            None => Some(70),
            Some(v) => v.trim().parse().ok(),
        }
    }

    /// Expires header as seconds.
    pub fn expires(&self) -> Option<u32> {
        self.headers.get("Expires")?.trim().parse().ok()
    }

    /// Every Contact value, parsed (`*` is returned as a NameAddr with uri `*`).
    pub fn contacts(&self) -> Vec<NameAddr> {
        self.headers
            .get_all("Contact")
            .filter_map(|v| {
                if v.trim() == "*" {
                    Some(NameAddr {
                        display: None,
                        uri: "*".into(),
                        params: vec![],
                    })
                } else {
                    NameAddr::parse(v)
                }
            })
            .collect()
    }

    /// Option tags of a comma-list header such as Require or Supported.
    pub fn option_tags(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    }

    fn check_mandatory(&self) -> Result<(), &'static str> {
        for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
            if self.headers.get(h).is_none() {
                return Err(match h {
                    "Via" => "Missing Via",
                    "From" => "Missing From",
                    "To" => "Missing To",
                    "Call-ID" => "Missing Call-ID",
                    _ => "Missing CSeq",
                });
            }
        }
        if self.top_via().is_none() {
            return Err("Bad Via");
        }
        let Some((_, m)) = self.cseq() else {
            return Err("Bad CSeq");
        };
        if let Some(method) = self.method() {
            if *method != m {
                return Err("CSeq Method Mismatch");
            }
        }
        if self.from_addr().is_none() {
            return Err("Bad From");
        }
        if self.to_addr().is_none() {
            return Err("Bad To");
        }
        if self.max_forwards().is_none() {
            return Err("Bad Max-Forwards");
        }
        Ok(())
    }

    /// A response to this request (RFC 3261 §8.2.6): Via, From, To, Call-ID and CSeq copied.
    pub fn response(&self, code: u16, reason: &str) -> SipMessage {
        let mut headers = Headers::default();
        for h in self.headers.iter() {
            if matches!(h.name.as_ref(), "Via" | "From" | "To" | "Call-ID" | "CSeq")
                || (h.name == "Record-Route" && (101..300).contains(&code))
                || (h.name == "Timestamp" && code == 100)
            {
                headers.0.push(h.clone());
            }
        }
        SipMessage {
            start: StartLine::Response {
                code,
                reason: reason.to_string(),
            },
            headers,
            body: Bytes::new(),
        }
    }

    /// Adds a tag to the To header if it has none.
    pub fn set_to_tag(&mut self, tag: &str) {
        if let Some(mut to) = self.to_addr() {
            if to.param("tag").is_none() {
                to.params.push(("tag".into(), Some(tag.to_string())));
                self.headers.set("To", to.to_header());
            }
        }
    }

    /// Sets the body and its Content-Type (Content-Length is written on serialisation).
    pub fn set_body(&mut self, content_type: Option<&str>, body: Bytes) {
        self.headers.remove("Content-Type");
        if let Some(ct) = content_type {
            if !body.is_empty() {
                self.headers.push("Content-Type", ct);
            }
        }
        self.body = body;
    }

    /// Wire form; Content-Length always matches the body.
    pub fn to_bytes(&self) -> Bytes {
        let mut s = String::with_capacity(512 + self.body.len());
        match &self.start {
            StartLine::Request { method, uri } => {
                let _ = write!(s, "{method} {uri} SIP/2.0\r\n");
            }
            StartLine::Response { code, reason } => {
                let _ = write!(s, "SIP/2.0 {code} {reason}\r\n");
            }
        }
        for h in self.headers.iter() {
            if h.name == "Content-Length" {
                continue;
            }
            s.push_str(&h.name);
            s.push_str(": ");
            s.push_str(&h.value);
            s.push_str("\r\n");
        }
        let _ = write!(s, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        Bytes::from(out)
    }
}

/// Length of the first complete message at the start of a stream buffer.
///
/// `Ok(None)` means more bytes are needed; `Err` means the stream cannot be framed
/// (no or bad Content-Length, or a head beyond the size limit) and must be closed.
pub fn frame_stream(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let Some((head_len, sep)) = find_head_end(buf) else {
        if buf.len() > MAX_MESSAGE_SIZE {
            return Err(ParseError::new(513, "Message Too Large"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_len])
        .map_err(|_| ParseError::new(400, "Bad Header Encoding"))?;
    let mut len = None;
    for line in unfold(head) {
        if let Some((n, v)) = line.split_once(':') {
            let n = n.trim();
            if n.eq_ignore_ascii_case("Content-Length") || n.eq_ignore_ascii_case("l") {
                len = Some(
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| ParseError::new(400, "Bad Content-Length"))?,
                );
            }
        }
    }
    // RFC 3261 §18.3: Content-Length is mandatory on stream transports.
    let len = len.ok_or_else(|| ParseError::new(400, "Missing Content-Length"))?;
    let total = head_len + sep + len;
    if total > MAX_MESSAGE_SIZE {
        return Err(ParseError::new(513, "Message Too Large"));
    }
    Ok((buf.len() >= total).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:1002@example.com SIP/2.0\r\n\
v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2\r\n\
f: \"Alice, A\" <sip:1001@example.com>;tag=abc\r\n\
t: <sip:1002@example.com>\r\n\
i: call-1\r\n\
CSEQ: 1 INVITE\r\n\
m: <sip:1001@10.0.0.1:5060>\r\n\
Subject: a long\r\n subject\r\n\
c: application/sdp\r\n\
l: 4\r\n\r\nv=0\r\nEXTRA";

    #[test]
    fn compact_folding_lists_and_case() {
        let m = parse(INVITE.as_bytes()).unwrap();
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.headers.get_all("via").count(), 2);
        assert_eq!(m.branch().as_deref(), Some("z9hG4bK1"));
        assert_eq!(m.call_id(), Some("call-1"));
        assert_eq!(m.cseq(), Some((1, Method::Invite)));
        assert_eq!(m.from_tag().as_deref(), Some("abc"));
        assert_eq!(m.from_addr().unwrap().display.as_deref(), Some("Alice, A"));
        assert_eq!(m.headers.get("Subject"), Some("a long subject"));
        assert_eq!(&m.body[..], b"v=0\r");
        assert_eq!(m.contacts()[0].uri, "sip:1001@10.0.0.1:5060");
    }

    #[test]
    fn round_trip() {
        let m = parse(INVITE.as_bytes()).unwrap();
        let again = parse(&m.to_bytes()).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn ipv6_references() {
        let v = Via::parse("SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKx;rport").unwrap();
        assert_eq!(v.host, "2001:db8::1");
        assert_eq!(v.port, Some(5070));
        assert!(v.has_param("rport"));
        assert_eq!(
            v.to_header(),
            "SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKx;rport"
        );
        let msg = "OPTIONS sip:[2001:db8::2]:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK3\r\nFrom: <sip:a@[2001:db8::1]>;tag=1\r\nTo: <sip:[2001:db8::2]>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let m = parse(msg.as_bytes()).unwrap();
        assert_eq!(m.top_via().unwrap().port, None);
    }

    #[test]
    fn errors_name_the_fault() {
        let e = parse(b"OPTIONS sip:a@b SIP/3.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n")
            .unwrap_err();
        assert_eq!(e.status, 505);
        assert_eq!(e.reply().unwrap().status(), Some(505));
        let e = parse(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCSeq: 1 OPTIONS\r\n\r\n").unwrap_err();
        assert_eq!((e.status, e.reason.as_str()), (400, "Missing Call-ID"));
        let reply = e.reply().expect("routable by its Via");
        assert_eq!(reply.status(), Some(400));
        assert!(reply.call_id().is_none());
        let e = parse(b"OPTIONS sip:a@b SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n").unwrap_err();
        assert!(e.reply().is_none(), "no Via, no route for a reply");
        let e = parse(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 50\r\n\r\nshort").unwrap_err();
        assert_eq!(e.reason, "Content-Length Exceeds Body");
        let reply = e.reply().unwrap();
        assert_eq!(reply.status(), Some(400));
        assert!(parse(&[0xffu8; 100]).is_err());
        assert_eq!(parse(&vec![b'a'; 70_000]).unwrap_err().status, 513);
        assert!(parse(b"").is_err());
        assert!(parse(b"\x00\x01\x02garbage\r\n\r\n").is_err());
    }

    #[test]
    fn too_many_headers() {
        let mut s = String::from("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n");
        for i in 0..300 {
            s.push_str(&format!("X-H{i}: v\r\n"));
        }
        s.push_str("\r\n");
        let e = parse(s.as_bytes()).unwrap_err();
        assert_eq!(e.status, 513);
        assert_eq!(e.reply().unwrap().status(), Some(513));
    }

    #[test]
    fn stream_framing() {
        let one = b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";
        let mut two = one.to_vec();
        two.extend_from_slice(b"OPTIONS");
        assert_eq!(frame_stream(one).unwrap(), Some(one.len()));
        assert_eq!(frame_stream(&two).unwrap(), Some(one.len()));
        assert_eq!(frame_stream(&one[..10]).unwrap(), None);
        assert!(frame_stream(b"OPTIONS sip:a SIP/2.0\r\n\r\n").is_err());
    }

    #[test]
    fn response_copies_dialog_headers() {
        let m = parse(INVITE.as_bytes()).unwrap();
        let mut r = m.response(180, "Ringing");
        r.set_to_tag("xyz");
        assert_eq!(r.to_tag().as_deref(), Some("xyz"));
        assert_eq!(r.headers.get_all("Via").count(), 2);
        assert_eq!(r.status(), Some(180));
    }

    #[test]
    fn uri_user_reads_only_the_user_part() {
        assert_eq!(uri_user("sip:1001@10.0.0.1:5060").as_deref(), Some("1001"));
        assert_eq!(
            uri_user("SIPS:alice:pw@example.com;transport=tls").as_deref(),
            Some("alice")
        );
        assert_eq!(
            uri_user("sip:+1555;npdi@gw?subject=x").as_deref(),
            Some("+1555;npdi")
        );
        assert_eq!(uri_user("sip:example.com"), None);
        assert_eq!(uri_user("sip:@example.com"), None);
        assert_eq!(uri_user("sip:1001@"), None);
        assert_eq!(uri_user("tel:+15551234"), None);
    }

    #[test]
    fn remembered_rsip_verdicts_do_not_change_results() {
        for _ in 0..2 {
            assert!(parse_uri("sip:1001@127.0.0.1:5060").is_some());
            assert!(parse_uri("sip:1001@host:abc").is_none());
        }
        // Past the cache bound it is cleared, not grown.
        for i in 0..RSIP_CACHE_MAX + 10 {
            assert!(parse_uri(&format!("sip:u{i}@h")).is_some());
        }
        assert!(RSIP_ACCEPTED.with(|c| c.borrow().len()) <= RSIP_CACHE_MAX);
    }
}
