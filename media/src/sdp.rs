//! The parts of SDP (RFC 4566, RFC 3264) the relay needs: reading where a peer wants
//! its media, and rewriting an offer or answer so that media points at the relay.
//!
//! Rewriting changes only `c=` (session and media level), the `m=` ports, `a=rtcp`
//! (RFC 3605) and drops ICE attributes (the relay is the only candidate). Codecs,
//! `a=rtpmap`/`a=fmtp`, `a=ptime`, direction attributes, telephone-event and every
//! other line are kept byte for byte. `o=` is left to the B2BUA, which owns the
//! session version of each leg.

use std::net::{IpAddr, SocketAddr};

/// Largest SDP body accepted.
pub const MAX_SDP_LEN: usize = 16 * 1024;
/// Most `m=` lines accepted.
pub const MAX_MEDIA: usize = 16;

/// Why an SDP body was refused; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Longer than [`MAX_SDP_LEN`].
    #[error("SDP longer than {MAX_SDP_LEN} bytes")]
    TooLarge,
    /// More than [`MAX_MEDIA`] media descriptions.
    #[error("more than {MAX_MEDIA} m= lines")]
    TooManyMedia,
    /// Does not start with `v=0`.
    #[error("SDP does not start with v=0")]
    MissingVersion,
    /// A line that is not `<letter>=<value>`.
    #[error("line {line}: not a <type>=<value> line")]
    BadLine {
        /// Line number.
        line: usize,
    },
    /// A `c=` line without a literal IPv4/IPv6 address.
    #[error("line {line}: bad c= line")]
    BadConnection {
        /// Line number.
        line: usize,
    },
    /// An `m=` line without media, port, protocol and formats.
    #[error("line {line}: bad m= line")]
    BadMedia {
        /// Line number.
        line: usize,
    },
    /// An `a=rtcp` attribute without a valid port or address.
    #[error("line {line}: bad a=rtcp attribute")]
    BadRtcp {
        /// Line number.
        line: usize,
    },
    /// An active media description with no `c=` at either level.
    #[error("m= line {index} has no connection address")]
    NoConnection {
        /// Index of the media description (0-based).
        index: usize,
    },
    /// The relay offered a different number of port pairs than there are `m=` lines.
    #[error("{media} m= lines but {ports} port pairs")]
    PortCount {
        /// `m=` lines in the SDP.
        media: usize,
        /// Port pairs given.
        ports: usize,
    },
}

/// Media direction (RFC 3264 §5.1). Serialized as its SDP attribute name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// `a=sendrecv` (the default).
    #[default]
    SendRecv,
    /// `a=sendonly`: this party sends only (it puts the other on hold).
    SendOnly,
    /// `a=recvonly`: this party receives only.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    fn from_attr(a: &str) -> Option<Direction> {
        match a {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// An `a=rtcp` attribute (RFC 3605).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpAttr {
    /// RTCP port.
    pub port: u16,
    /// RTCP address, when given.
    pub addr: Option<IpAddr>,
}

/// One `m=` section as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// Media type (`audio`, `video`, ...).
    pub kind: String,
    /// RTP port; 0 is a disabled stream.
    pub port: u16,
    /// Transport protocol (`RTP/AVP`, ...).
    pub proto: String,
    /// Format list (payload types for RTP).
    pub formats: Vec<String>,
    /// Connection address: media level, else session level.
    pub connection: Option<IpAddr>,
    /// `a=rtcp`, if present.
    pub rtcp: Option<RtcpAttr>,
    /// `a=rtcp-mux` present.
    pub rtcp_mux: bool,
    /// Direction: media level, else session level, else sendrecv.
    pub direction: Direction,
    /// Payload types mapped to `telephone-event` by `a=rtpmap`.
    pub telephone_event: Option<u8>,
}

impl Media {
    /// Where the peer receives RTP, or `None` for a disabled stream or the old-style
    /// hold address 0.0.0.0 / `::`.
    pub fn rtp_destination(&self) -> Option<SocketAddr> {
        let ip = self.connection?;
        if self.port == 0 || ip.is_unspecified() {
            return None;
        }
        Some(SocketAddr::new(ip, self.port))
    }

    /// Where the peer receives RTCP: its RTP address under rtcp-mux, else `a=rtcp`,
    /// else the RTP port + 1.
    pub fn rtcp_destination(&self) -> Option<SocketAddr> {
        let rtp = self.rtp_destination()?;
        if self.rtcp_mux {
            return Some(rtp);
        }
        match self.rtcp {
            Some(r) => Some(SocketAddr::new(r.addr.unwrap_or(rtp.ip()), r.port)),
            None => Some(SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1))),
        }
    }
}

/// What the relay reads from a peer's SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// Session-level connection address.
    pub connection: Option<IpAddr>,
    /// The media descriptions in order.
    pub media: Vec<Media>,
}

/// The relay's RTP and RTCP ports for one `m=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayPorts {
    /// RTP port.
    pub rtp: u16,
    /// RTCP port.
    pub rtcp: u16,
}

/// Lines of `sdp` with their 1-based numbers, `(number, type, value)`.
fn lines(sdp: &str) -> impl Iterator<Item = (usize, &str)> {
    sdp.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.is_empty())
}

fn split_line(n: usize, l: &str) -> Result<(u8, &str), SdpError> {
    let b = l.as_bytes();
    if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
        return Err(SdpError::BadLine { line: n });
    }
    Ok((b[0], &l[2..]))
}

/// `IN IP4 addr[/ttl[/n]]` → addr.
fn parse_connection(n: usize, v: &str) -> Result<IpAddr, SdpError> {
    let bad = SdpError::BadConnection { line: n };
    let mut f = v.split_ascii_whitespace();
    let (Some("IN"), Some(family), Some(addr), None) = (f.next(), f.next(), f.next(), f.next())
    else {
        return Err(bad);
    };
    let addr = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = addr.parse().map_err(|_| bad.clone())?;
    match (family, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        _ => Err(bad),
    }
}

fn parse_media(n: usize, v: &str) -> Result<Media, SdpError> {
    let bad = || SdpError::BadMedia { line: n };
    let mut f = v.split_ascii_whitespace();
    let kind = f.next().ok_or_else(bad)?;
    let port = f.next().ok_or_else(bad)?;
    let port = port.split('/').next().unwrap_or(port);
    let port: u16 = port.parse().map_err(|_| bad())?;
    let proto = f.next().ok_or_else(bad)?;
    let formats: Vec<String> = f.map(str::to_owned).collect();
    if formats.is_empty() {
        return Err(bad());
    }
    Ok(Media {
        kind: kind.to_owned(),
        port,
        proto: proto.to_owned(),
        formats,
        connection: None,
        rtcp: None,
        rtcp_mux: false,
        direction: Direction::SendRecv,
        telephone_event: None,
    })
}

fn parse_rtcp(n: usize, v: &str) -> Result<RtcpAttr, SdpError> {
    let bad = SdpError::BadRtcp { line: n };
    let (port, rest) = match v.split_once(' ') {
        Some((p, r)) => (p, Some(r)),
        None => (v, None),
    };
    let port: u16 = port.trim().parse().map_err(|_| bad.clone())?;
    let addr = match rest {
        Some(r) => Some(parse_connection(n, r).map_err(|_| bad)?),
        None => None,
    };
    Ok(RtcpAttr { port, addr })
}

/// True for ICE attributes the relay removes.
fn is_ice(attr: &str) -> bool {
    let name = attr.split(':').next().unwrap_or(attr);
    matches!(
        name,
        "candidate"
            | "ice-ufrag"
            | "ice-pwd"
            | "ice-options"
            | "ice-lite"
            | "ice-mismatch"
            | "end-of-candidates"
            | "remote-candidates"
    )
}

/// Parses what the relay needs from `sdp`. Unknown lines are ignored; malformed
/// lines the relay depends on are errors.
pub fn parse(sdp: &str) -> Result<Sdp, SdpError> {
    if sdp.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge);
    }
    let mut session_conn = None;
    let mut session_dir = None;
    let mut media: Vec<Media> = Vec::new();
    let mut media_dirs: Vec<Option<Direction>> = Vec::new();
    let mut first = true;
    for (n, l) in lines(sdp) {
        let (t, v) = split_line(n, l)?;
        if first {
            if t != b'v' || v.trim() != "0" {
                return Err(SdpError::MissingVersion);
            }
            first = false;
            continue;
        }
        match t {
            b'm' => {
                if media.len() == MAX_MEDIA {
                    return Err(SdpError::TooManyMedia);
                }
                media.push(parse_media(n, v)?);
                media_dirs.push(None);
            }
            b'c' => {
                let ip = parse_connection(n, v)?;
                match media.last_mut() {
                    Some(m) => m.connection = Some(ip),
                    None => session_conn = Some(ip),
                }
            }
            b'a' => {
                let dir = Direction::from_attr(v.trim());
                match (media.last_mut(), media_dirs.last_mut()) {
                    (Some(m), Some(md)) => {
                        if let Some(d) = dir {
                            *md = Some(d);
                        } else if let Some(r) = v.strip_prefix("rtcp:") {
                            m.rtcp = Some(parse_rtcp(n, r)?);
                        } else if v.trim() == "rtcp-mux" {
                            m.rtcp_mux = true;
                        } else if let Some(map) = v.strip_prefix("rtpmap:") {
                            let mut f = map.split_ascii_whitespace();
                            if let (Some(pt), Some(enc)) = (f.next(), f.next()) {
                                let name = enc.split('/').next().unwrap_or(enc);
                                if name.eq_ignore_ascii_case("telephone-event") {
                                    m.telephone_event = pt.parse().ok();
                                }
                            }
                        }
                    }
                    _ => {
                        if dir.is_some() {
                            session_dir = dir;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if first {
        return Err(SdpError::MissingVersion);
    }
    for (i, (m, d)) in media.iter_mut().zip(media_dirs).enumerate() {
        m.connection = m.connection.or(session_conn);
        m.direction = d.or(session_dir).unwrap_or_default();
        if m.connection.is_none() && m.port != 0 {
            return Err(SdpError::NoConnection { index: i });
        }
    }
    Ok(Sdp {
        connection: session_conn,
        media,
    })
}

fn connection_line(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("IN IP4 {a}"),
        IpAddr::V6(a) => format!("IN IP6 {a}"),
    }
}

/// Rewrites `sdp` so that its media points at the relay address `relay`, one
/// [`RelayPorts`] per `m=` line in order (disabled streams, port 0, stay disabled).
/// Returns the new body with CRLF line ends.
pub fn rewrite(sdp: &str, relay: IpAddr, ports: &[RelayPorts]) -> Result<String, SdpError> {
    let parsed = parse(sdp)?;
    if parsed.media.len() != ports.len() {
        return Err(SdpError::PortCount {
            media: parsed.media.len(),
            ports: ports.len(),
        });
    }
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut index: Option<usize> = None;
    for (n, l) in lines(sdp) {
        let (t, v) = split_line(n, l)?;
        match t {
            b'm' => {
                let i = index.map_or(0, |i| i + 1);
                index = Some(i);
                let m = &parsed.media[i];
                // kind, port[/count], then the rest verbatim
                let mut f = v.splitn(3, ' ');
                let (kind, port, rest) = (f.next(), f.next(), f.next());
                let (Some(kind), Some(port), Some(rest)) = (kind, port, rest) else {
                    return Err(SdpError::BadMedia { line: n });
                };
                let count = port.split_once('/').map(|(_, c)| c);
                let new_port = if m.port == 0 { 0 } else { ports[i].rtp };
                out.push_str(&format!("m={kind} {new_port}"));
                if let Some(c) = count {
                    out.push('/');
                    out.push_str(c);
                }
                out.push(' ');
                out.push_str(rest);
            }
            b'c' => {
                out.push_str("c=");
                out.push_str(&connection_line(relay));
            }
            b'a' if is_ice(v) => continue,
            b'a' if v.starts_with("rtcp:") => {
                let Some(i) = index else {
                    out.push_str(l);
                    out.push_str("\r\n");
                    continue;
                };
                let had_addr = parsed.media[i].rtcp.is_some_and(|r| r.addr.is_some());
                out.push_str(&format!("a=rtcp:{}", ports[i].rtcp));
                if had_addr {
                    out.push(' ');
                    out.push_str(&connection_line(relay));
                }
            }
            _ => out.push_str(l),
        }
        out.push_str("\r\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.168.1.10\r\n\
s=-\r\n\
c=IN IP4 192.168.1.10\r\n\
t=0 0\r\n\
a=ice-ufrag:F7gI\r\n\
a=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=rtcp:49171 IN IP4 192.168.1.10\r\n\
a=candidate:1 1 UDP 2130706431 192.168.1.10 49170 typ host\r\n\
a=candidate:2 1 UDP 1694498815 203.0.113.7 50000 typ srflx raddr 192.168.1.10 rport 49170\r\n\
a=end-of-candidates\r\n\
a=sendrecv\r\n";

    #[test]
    fn parses_what_the_relay_needs() {
        let s = parse(OFFER).unwrap();
        assert_eq!(s.connection, Some("192.168.1.10".parse().unwrap()));
        assert_eq!(s.media.len(), 1);
        let m = &s.media[0];
        assert_eq!(m.kind, "audio");
        assert_eq!(m.port, 49170);
        assert_eq!(m.proto, "RTP/AVP");
        assert_eq!(m.formats, ["0", "8", "101"]);
        assert_eq!(m.telephone_event, Some(101));
        assert_eq!(m.direction, Direction::SendRecv);
        assert!(!m.rtcp_mux);
        assert_eq!(
            m.rtp_destination(),
            Some("192.168.1.10:49170".parse().unwrap())
        );
        assert_eq!(
            m.rtcp_destination(),
            Some("192.168.1.10:49171".parse().unwrap())
        );
    }

    #[test]
    fn rewrite_points_media_at_the_relay_and_keeps_the_rest() {
        let relay: IpAddr = "10.0.0.1".parse().unwrap();
        let out = rewrite(
            OFFER,
            relay,
            &[RelayPorts {
                rtp: 10000,
                rtcp: 10001,
            }],
        )
        .unwrap();
        let want = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.168.1.10\r\n\
s=-\r\n\
c=IN IP4 10.0.0.1\r\n\
t=0 0\r\n\
m=audio 10000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=rtcp:10001 IN IP4 10.0.0.1\r\n\
a=sendrecv\r\n";
        assert_eq!(out, want);
        // The rewritten SDP parses and points at the relay.
        let m = &parse(&out).unwrap().media[0];
        assert_eq!(m.rtp_destination(), Some("10.0.0.1:10000".parse().unwrap()));
        assert_eq!(
            m.rtcp_destination(),
            Some("10.0.0.1:10001".parse().unwrap())
        );
    }

    #[test]
    fn media_level_connection_direction_mux_and_ipv6() {
        let sdp = "v=0\n\
o=- 1 1 IN IP6 ::1\n\
s=-\n\
c=IN IP6 2001:db8::1\n\
t=0 0\n\
a=sendonly\n\
m=audio 4000 RTP/AVP 8\n\
c=IN IP4 198.51.100.2/127\n\
a=rtcp-mux\n\
a=rtcp:4000\n\
m=video 0 RTP/AVP 96\n\
m=audio 5000/2 RTP/AVP 0\n\
a=inactive\n";
        let s = parse(sdp).unwrap();
        let m = &s.media;
        assert_eq!(m[0].connection, Some("198.51.100.2".parse().unwrap()));
        assert_eq!(m[0].direction, Direction::SendOnly); // session level
        assert!(m[0].rtcp_mux);
        assert_eq!(m[0].rtcp_destination(), m[0].rtp_destination());
        assert_eq!(m[1].rtp_destination(), None); // disabled
        assert_eq!(m[2].port, 5000);
        assert_eq!(m[2].direction, Direction::Inactive);
        assert_eq!(m[2].connection, Some("2001:db8::1".parse().unwrap()));

        let relay: IpAddr = "2001:db8::99".parse().unwrap();
        let ports = [
            RelayPorts {
                rtp: 10000,
                rtcp: 10001,
            },
            RelayPorts {
                rtp: 10002,
                rtcp: 10003,
            },
            RelayPorts {
                rtp: 10004,
                rtcp: 10005,
            },
        ];
        let out = rewrite(sdp, relay, &ports).unwrap();
        assert!(out.contains("\r\nc=IN IP6 2001:db8::99\r\nt=0 0\r\na=sendonly\r\n"));
        assert!(out.contains("m=audio 10000 RTP/AVP 8\r\nc=IN IP6 2001:db8::99\r\n"));
        assert!(out.contains("a=rtcp-mux\r\na=rtcp:10001\r\n"));
        assert!(out.contains("m=video 0 RTP/AVP 96\r\n"));
        assert!(out.contains("m=audio 10004/2 RTP/AVP 0\r\na=inactive\r\n"));
        assert!(!out.contains("198.51.100.2"));
        assert!(out.starts_with("v=0\r\no=- 1 1 IN IP6 ::1\r\n"));
    }

    #[test]
    fn old_style_hold_address_has_no_destination() {
        let sdp = "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(parse(sdp).unwrap().media[0].rtp_destination(), None);
    }

    #[test]
    fn bad_sdp_is_an_error_value() {
        let cases: &[(&str, SdpError)] = &[
            ("", SdpError::MissingVersion),
            ("o=x\r\n", SdpError::MissingVersion),
            ("v=0\r\nbogus\r\n", SdpError::BadLine { line: 2 }),
            (
                "v=0\r\nc=IN IP4 pbx.example.com\r\n",
                SdpError::BadConnection { line: 2 },
            ),
            (
                "v=0\r\nc=IN IP6 1.2.3.4\r\n",
                SdpError::BadConnection { line: 2 },
            ),
            ("v=0\r\nc=IN IP4\r\n", SdpError::BadConnection { line: 2 }),
            (
                "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio x RTP/AVP 0\r\n",
                SdpError::BadMedia { line: 3 },
            ),
            (
                "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
                SdpError::BadMedia { line: 3 },
            ),
            (
                "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP\r\n",
                SdpError::BadMedia { line: 3 },
            ),
            (
                "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:abc\r\n",
                SdpError::BadRtcp { line: 4 },
            ),
            (
                "v=0\r\nm=audio 4000 RTP/AVP 0\r\n",
                SdpError::NoConnection { index: 0 },
            ),
        ];
        for (sdp, want) in cases {
            assert_eq!(parse(sdp).as_ref().unwrap_err(), want, "{sdp:?}");
            assert_eq!(
                rewrite(sdp, "10.0.0.1".parse().unwrap(), &[]).unwrap_err(),
                *want
            );
        }
        let huge = format!("v=0\r\n{}", "a=x\r\n".repeat(MAX_SDP_LEN / 5));
        assert_eq!(parse(&huge).unwrap_err(), SdpError::TooLarge);
        let many = format!(
            "v=0\r\nc=IN IP4 1.2.3.4\r\n{}",
            "m=audio 4000 RTP/AVP 0\r\n".repeat(MAX_MEDIA + 1)
        );
        assert_eq!(parse(&many).unwrap_err(), SdpError::TooManyMedia);
        assert_eq!(
            rewrite(OFFER, "10.0.0.1".parse().unwrap(), &[]).unwrap_err(),
            SdpError::PortCount { media: 1, ports: 0 }
        );
    }
}
