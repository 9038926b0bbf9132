//! A phone written in the test (SIP and RTP over plain UDP sockets), so a test sees
//! every byte it sends and gets.

use crate::header;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A phone: its SIP socket and its RTP socket.
pub struct Phone {
    pub sip: UdpSocket,
    pub rtp: UdpSocket,
}

impl Phone {
    /// A phone on loopback, its SIP socket on `sip_port` (0: any).
    pub fn bind(sip_port: u16) -> Phone {
        let sip = UdpSocket::bind(("127.0.0.1", sip_port)).expect("SIP socket");
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("RTP socket");
        Phone::of(sip, rtp)
    }

    /// A phone on these sockets (e.g. made inside a lab host's namespace).
    pub fn of(sip: UdpSocket, rtp: UdpSocket) -> Phone {
        for s in [&sip, &rtp] {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("read timeout");
        }
        Phone { sip, rtp }
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.sip.local_addr().unwrap()
    }

    pub fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().unwrap().port()
    }

    pub fn send(&self, to: SocketAddr, msg: &str) {
        self.sip.send_to(msg.as_bytes(), to).expect("send");
    }

    /// The next SIP message that `want` accepts (others are skipped), within `limit`.
    pub fn expect(
        &self,
        limit: Duration,
        what: &str,
        want: impl Fn(&str) -> bool,
    ) -> (String, SocketAddr) {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            if let Ok((n, from)) = self.sip.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if want(&m) {
                    return (m, from);
                }
            }
        }
        panic!("no {what} within {limit:?}");
    }
}

/// A G.711 audio offer/answer for media at `ip:port`.
pub fn sdp(ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// The `c=` address and `m=audio` port of an SDP body.
pub fn media_of(msg: &str) -> (String, u16) {
    let body = msg.split("\r\n\r\n").nth(1).unwrap_or_default();
    let c = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .unwrap_or_default()
        .trim()
        .to_string();
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    (c, port)
}

/// `head` completed with Content-Type (for a body), Content-Length and the body.
pub fn with_body(head: String, body: &str) -> String {
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".to_string()
    };
    format!("{head}{ct}Content-Length: {}\r\n\r\n{body}", body.len())
}

/// A response to `req` copying its Via, From, To (with `tag`), Call-ID and CSeq.
pub fn answer(
    req: &str,
    code: u16,
    reason: &str,
    tag: &str,
    contact: SocketAddr,
    body: &str,
) -> String {
    let mut head = format!("SIP/2.0 {code} {reason}\r\n");
    for v in crate::headers(req, &["Via", "v"]) {
        head.push_str(&format!("Via: {v}\r\n"));
    }
    let to = header(req, &["To", "t"]).unwrap_or_default();
    head.push_str(&format!(
        "From: {}\r\nTo: {to};tag={tag}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:phone@{contact}>\r\n",
        header(req, &["From", "f"]).unwrap_or_default(),
        header(req, &["Call-ID", "i"]).unwrap_or_default(),
        header(req, &["CSeq"]).unwrap_or_default(),
    ));
    with_body(head, body)
}

/// An RTP packet: PCMU, sequence `seq`, payload 160 bytes of `fill`.
pub fn rtp(seq: u16, ssrc: u32, fill: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(fill, 160));
    p
}

/// Receives up to `n` datagrams on `sock` (bounded by time).
pub fn receive(sock: &UdpSocket, n: usize) -> Vec<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < n && Instant::now() < deadline {
        if let Ok((len, from)) = sock.recv_from(&mut buf) {
            got.push((buf[..len].to_vec(), from));
        }
    }
    got
}

/// An INVITE from `from` (this phone's user) to `to@server`, with a fresh branch, tag
/// and Call-ID (prefixed `call`), and `sdp` as its offer.
pub fn invite(
    phone: &Phone,
    from: &str,
    to: &str,
    server: SocketAddr,
    call: &str,
    sdp: &str,
) -> String {
    let head = format!(
        "INVITE sip:{to}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{br};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{from}@{server}>;tag={tag}\r\nTo: <sip:{to}@{server}>\r\n\
         Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:{from}@{me}>\r\n",
        me = phone.sip_addr(),
        br = crate::token("inv"),
        tag = crate::token("a"),
        cid = crate::token(call),
    );
    with_body(head, sdp)
}

/// The callee answers 200 to the next BYE it gets (whose To already carries `tag`).
pub fn answer_bye(callee: &Phone, tag: &str) {
    let (bye, from) = callee.expect(Duration::from_secs(5), "BYE at the callee", |m| {
        m.starts_with("BYE ")
    });
    let ok = answer(&bye, 200, "OK", tag, callee.sip_addr(), "");
    // The To of a BYE from us already has the callee's tag: answer with it as is.
    let ok = ok.replacen(&format!(";tag={tag}"), "", 1);
    callee.send(from, &ok);
}
