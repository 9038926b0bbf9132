//! Media anchored on the node's relay, driven by two phones written here (SIP and RTP
//! over plain UDP sockets), so the test sees every byte: the SDP each side gets points
//! at the relay, RTP crosses it with payloads intact, a phone behind NAT (its SDP names
//! an address nobody can reach) still gets audio once it has sent some, the CDR has the
//! relay's counters, and a side that stops sending ends the call.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use tests::phone::{answer, answer_bye, invite, media_of, receive, rtp, sdp, with_body, Phone};
use tests::{free_port, header, scenario, status_code, token, Ext, Node, NodeOpts, Sipp, Value};

const CALLER: &str = "1001";
const CALLEE: &str = "1002";

struct Call {
    node: Node,
    caller: Phone,
    callee: Phone,
    invite: String,
    ok: String,
    /// The INVITE as the callee got it.
    b_invite: String,
    callee_tag: String,
}

/// Starts a node, registers the callee at a phone socket, and sets up an answered call
/// whose caller SDP names `caller_ip` (its real RTP socket is on loopback).
fn answered_call(caller_ip: &str, extra_toml: &str) -> Call {
    let node = Node::start(NodeOpts {
        extensions: vec![
            Ext {
                trusted_ips: vec!["127.0.0.1".into()],
                ..Ext::new(CALLER)
            },
            Ext::new(CALLEE),
        ],
        extra_toml: extra_toml.into(),
        ..NodeOpts::default()
    })
    .expect("node");
    let callee_port = free_port();
    let r = Sipp::new("register-callee", scenario("register.xml"))
        .remote(node.addr)
        .local_port(callee_port)
        .args(["-s", CALLEE, "-au", CALLEE, "-ap", "pw1002"])
        .key("expires", "3600")
        .run()
        .unwrap();
    assert!(r.ok(), "{}", r.describe());
    let callee = Phone::bind(callee_port);
    let caller = Phone::bind(0);

    let offer = sdp(caller_ip, caller.rtp_port());
    let invite = invite(&caller, CALLER, CALLEE, node.addr, "media", &offer);
    caller.send(node.addr, &invite);

    let (b_invite, from) = callee.expect(Duration::from_secs(5), "INVITE at the callee", |m| {
        m.starts_with("INVITE ")
    });
    let (ip, port) = media_of(&b_invite);
    assert_eq!(
        ip, "127.0.0.1",
        "the callee is offered the relay's address\n{b_invite}"
    );
    assert!(
        (10_000..=20_000).contains(&port) && port != caller.rtp_port(),
        "the callee is offered a relay port, not the caller's\n{b_invite}"
    );
    let callee_tag = token("b");
    let ok = answer(
        &b_invite,
        200,
        "OK",
        &callee_tag,
        callee.sip_addr(),
        &sdp("127.0.0.1", callee.rtp_port()),
    );
    callee.send(from, &ok);
    let (ok, _) = caller.expect(Duration::from_secs(5), "200 at the caller", |m| {
        status_code(m) == Some(200)
    });
    let (ip, port) = media_of(&ok);
    assert_eq!(ip, "127.0.0.1", "{ok}");
    assert!(
        (10_000..=20_000).contains(&port) && port != callee.rtp_port(),
        "the caller is answered with a relay port\n{ok}"
    );
    let to = header(&ok, &["To", "t"]).unwrap_or_default();
    let ack = format!(
        "ACK sip:{CALLEE}@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{br};rport\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        node = node.addr,
        me = caller.sip_addr(),
        br = token("ack"),
        from = header(&invite, &["From"]).unwrap_or_default(),
        cid = header(&invite, &["Call-ID"]).unwrap_or_default(),
    );
    caller.send(node.addr, &ack);
    callee.expect(Duration::from_secs(5), "ACK at the callee", |m| {
        m.starts_with("ACK ")
    });
    Call {
        node,
        caller,
        callee,
        invite,
        ok,
        b_invite,
        callee_tag,
    }
}

impl Call {
    /// The relay's RTP address for the caller and for the callee.
    fn relay_ports(&self) -> (SocketAddr, SocketAddr) {
        let a = media_of(&self.ok).1;
        let b = media_of(&self.b_invite).1;
        (
            SocketAddr::from(([127, 0, 0, 1], a)),
            SocketAddr::from(([127, 0, 0, 1], b)),
        )
    }

    fn caller_hangs_up(&self) {
        self.caller_hangs_up_with(2);
    }

    /// A request of the caller's dialog (BYE, ACK, re-INVITE), `body` as SDP if any.
    fn caller_request(&self, method: &str, cseq: u32, body: &str) -> String {
        let head = format!(
            "{method} sip:{CALLEE}@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{br};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:{CALLER}@{me}>\r\n",
            node = self.node.addr,
            me = self.caller.sip_addr(),
            br = token(&method.to_ascii_lowercase()),
            from = header(&self.invite, &["From"]).unwrap_or_default(),
            to = header(&self.ok, &["To", "t"]).unwrap_or_default(),
            cid = header(&self.invite, &["Call-ID"]).unwrap_or_default(),
        );
        with_body(head, body)
    }

    /// The caller's BYE with CSeq `cseq` (above any re-INVITE's), answered by the callee.
    fn caller_hangs_up_with(&self, cseq: u32) {
        let bye = self.caller_request("BYE", cseq, "");
        self.caller.send(self.node.addr, &bye);
        answer_bye(&self.callee, &self.callee_tag);
        self.caller
            .expect(Duration::from_secs(5), "200 to the BYE", |m| {
                status_code(m) == Some(200) && m.contains("BYE")
            });
    }

    fn cdr(&self) -> Value {
        let cdrs = self
            .node
            .wait_cdrs(Duration::from_secs(10), |c| !c.is_empty())
            .expect("a CDR");
        cdrs.into_iter().next().expect("one CDR")
    }
}

#[test]
fn rtp_crosses_the_relay_intact_and_the_cdr_counts_it() {
    let call = answered_call("127.0.0.1", "");
    let (to_relay_a, to_relay_b) = call.relay_ports();
    for i in 0..50u16 {
        call.caller
            .rtp
            .send_to(&rtp(i, 0xA, i as u8), to_relay_a)
            .unwrap();
        call.callee
            .rtp
            .send_to(&rtp(i, 0xB, 0x80 | i as u8), to_relay_b)
            .unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let at_callee = receive(&call.callee.rtp, 50);
    let at_caller = receive(&call.caller.rtp, 50);
    assert_eq!(
        at_callee.len(),
        50,
        "every caller packet reached the callee"
    );
    assert_eq!(
        at_caller.len(),
        50,
        "every callee packet reached the caller"
    );
    for (i, (p, from)) in at_callee.iter().enumerate() {
        assert_eq!(p, &rtp(i as u16, 0xA, i as u8), "payload intact, in order");
        assert_eq!(
            *from, to_relay_b,
            "the callee hears the relay, not the caller"
        );
    }
    for (i, (p, from)) in at_caller.iter().enumerate() {
        assert_eq!(p, &rtp(i as u16, 0xB, 0x80 | i as u8));
        assert_eq!(*from, to_relay_a);
    }
    // A stranger sending to the caller's relay port is dropped.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(&rtp(99, 0xC, 0), to_relay_a).unwrap();
    assert!(
        receive(&call.callee.rtp, 1).is_empty(),
        "a spoofed packet is not relayed"
    );

    call.caller_hangs_up();
    let cdr = call.cdr();
    let media = &cdr["media"];
    assert_eq!(media["caller"]["packets"], 50, "{cdr}");
    assert_eq!(media["callee"]["packets"], 50, "{cdr}");
    assert_eq!(media["caller"]["bytes"], 50 * 172, "{cdr}");
    assert_eq!(media["caller"]["lost"], 0, "{cdr}");
    assert_eq!(media["caller"]["dropped_wrong_source"], 1, "{cdr}");
    assert_eq!(cdr["disposition"], "ANSWERED");
}

#[test]
fn a_phone_behind_nat_gets_audio_once_it_has_sent_some() {
    // The caller's SDP names a private address nobody here can reach.
    let call = answered_call("192.0.2.55", "");
    let (to_relay_a, to_relay_b) = call.relay_ports();
    // Before the caller has sent anything, the callee's audio goes to that address.
    call.callee
        .rtp
        .send_to(&rtp(0, 0xB, 1), to_relay_b)
        .unwrap();
    assert!(receive(&call.caller.rtp, 1).is_empty());
    // Once the caller has sent from its real address, the relay answers there.
    call.caller
        .rtp
        .send_to(&rtp(0, 0xA, 2), to_relay_a)
        .unwrap();
    assert_eq!(receive(&call.callee.rtp, 1).len(), 1);
    for i in 1..20u16 {
        call.callee
            .rtp
            .send_to(&rtp(i, 0xB, 3), to_relay_b)
            .unwrap();
    }
    let got = receive(&call.caller.rtp, 19);
    assert_eq!(
        got.len(),
        19,
        "audio reaches the NATed caller after latching"
    );
    call.caller_hangs_up();
}

#[test]
fn a_side_that_stops_sending_ends_the_call_with_a_media_timeout() {
    let call = answered_call("127.0.0.1", "[media]\nrtp_timeout_secs = 1\n");
    let (to_relay_a, _) = call.relay_ports();
    call.caller
        .rtp
        .send_to(&rtp(0, 0xA, 0), to_relay_a)
        .unwrap();
    // Nobody sends anything more: both phones get a BYE.
    let (bye_a, from_a) = call
        .caller
        .expect(Duration::from_secs(10), "BYE at the caller", |m| {
            m.starts_with("BYE ")
        });
    let (bye_b, from_b) = call
        .callee
        .expect(Duration::from_secs(10), "BYE at the callee", |m| {
            m.starts_with("BYE ")
        });
    for (phone, bye, from) in [
        (&call.caller, &bye_a, from_a),
        (&call.callee, &bye_b, from_b),
    ] {
        let ok = answer(bye, 200, "OK", "x", phone.sip_addr(), "");
        phone.send(from, &ok.replacen(";tag=x", "", 1));
    }
    let cdr = call.cdr();
    assert_eq!(cdr["hangup_cause"], "media_timeout", "{cdr}");
    assert_eq!(cdr["disposition"], "ANSWERED", "{cdr}");
    assert_eq!(cdr["media"]["caller"]["packets"], 1, "{cdr}");
}

impl Call {
    /// Sends an in-dialog re-INVITE from the caller with `offer`, has the callee answer
    /// `answer_sdp`, ACKs it, and returns (the re-INVITE as the callee got it, the 200
    /// as the caller got it).
    fn caller_reinvites(&self, cseq: u32, offer: &str, answer_sdp: &str) -> (String, String) {
        self.caller
            .send(self.node.addr, &self.caller_request("INVITE", cseq, offer));
        let (b_reinvite, b_from) =
            self.callee
                .expect(Duration::from_secs(5), "re-INVITE at the callee", |m| {
                    m.starts_with("INVITE ")
                });
        let ok = answer(
            &b_reinvite,
            200,
            "OK",
            &self.callee_tag,
            self.callee.sip_addr(),
            answer_sdp,
        );
        // The re-INVITE's To already has the callee's tag: answer with it as is.
        let ok = ok.replacen(&format!(";tag={}", self.callee_tag), "", 1);
        self.callee.send(b_from, &ok);
        let (a_ok, _) = self
            .caller
            .expect(Duration::from_secs(5), "200 to the re-INVITE", |m| {
                status_code(m) == Some(200) && m.contains(&format!("{cseq} INVITE"))
            });
        let ack = self.caller_request("ACK", cseq, "");
        self.caller.send(self.node.addr, &ack);
        self.callee
            .expect(Duration::from_secs(5), "ACK of the re-INVITE", |m| {
                m.starts_with("ACK ")
            });
        (b_reinvite, a_ok)
    }
}

/// True when some line of `msg`'s SDP is exactly `line`.
fn sdp_has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l.trim() == line)
}

#[test]
fn hold_stops_the_rtp_timeout_and_a_resume_to_a_new_address_is_relayed_there() {
    let call = answered_call("127.0.0.1", "[media]\nrtp_timeout_secs = 1\n");
    let (to_relay_a, to_relay_b) = call.relay_ports();
    call.caller
        .rtp
        .send_to(&rtp(0, 0xA, 1), to_relay_a)
        .unwrap();
    call.callee
        .rtp
        .send_to(&rtp(0, 0xB, 2), to_relay_b)
        .unwrap();
    assert_eq!(receive(&call.callee.rtp, 1).len(), 1);
    assert_eq!(receive(&call.caller.rtp, 1).len(), 1);

    // Hold: the caller goes sendonly, the callee answers recvonly. The direction crosses
    // the relay unchanged and the relay ports stay the same.
    let hold = sdp("127.0.0.1", call.caller.rtp_port()).replace("a=sendrecv", "a=sendonly");
    let held = sdp("127.0.0.1", call.callee.rtp_port()).replace("a=sendrecv", "a=recvonly");
    let (b_hold, a_held) = call.caller_reinvites(2, &hold, &held);
    assert!(sdp_has(&b_hold, "a=sendonly"), "{b_hold}");
    assert_eq!(
        media_of(&b_hold),
        ("127.0.0.1".to_string(), to_relay_b.port()),
        "{b_hold}"
    );
    assert!(sdp_has(&a_held, "a=recvonly"), "{a_held}");
    assert_eq!(media_of(&a_held).1, to_relay_a.port(), "{a_held}");

    // Silence on hold for more than the RTP timeout: nobody is hung up.
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut buf = vec![0u8; 65_536];
    while Instant::now() < deadline {
        for phone in [&call.caller, &call.callee] {
            if let Ok((n, _)) = phone.sip.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]);
                assert!(!m.starts_with("BYE "), "a held call was hung up:\n{m}");
            }
        }
    }

    // Resume from a new RTP socket with another codec: the callee is offered it through
    // the same relay port, and the callee's audio now reaches the new socket only.
    let moved = UdpSocket::bind("127.0.0.1:0").unwrap();
    moved
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let resume = sdp("127.0.0.1", moved.local_addr().unwrap().port())
        .replace("RTP/AVP 0 101", "RTP/AVP 8 101")
        .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000");
    let (b_resume, a_resumed) =
        call.caller_reinvites(3, &resume, &sdp("127.0.0.1", call.callee.rtp_port()));
    assert!(sdp_has(&b_resume, "a=rtpmap:8 PCMA/8000"), "{b_resume}");
    assert!(sdp_has(&b_resume, "a=sendrecv"), "{b_resume}");
    assert_eq!(media_of(&b_resume).1, to_relay_b.port(), "{b_resume}");
    assert_eq!(media_of(&a_resumed).1, to_relay_a.port(), "{a_resumed}");
    for i in 1..=10u16 {
        moved.send_to(&rtp(i, 0xA, 3), to_relay_a).unwrap();
        call.callee
            .rtp
            .send_to(&rtp(i, 0xB, 4), to_relay_b)
            .unwrap();
    }
    let at_callee = receive(&call.callee.rtp, 10);
    assert_eq!(at_callee.len(), 10, "the moved caller's audio is relayed");
    assert!(at_callee
        .iter()
        .all(|(p, _)| p[12..].iter().all(|b| *b == 3)));
    let at_moved = receive(&moved, 10);
    assert_eq!(at_moved.len(), 10, "the callee's audio follows the caller");
    // One short look (the RTP timeout of 1 s runs again now that the call is resumed).
    let mut one = [0u8; 2048];
    assert!(
        call.caller.rtp.recv_from(&mut one).is_err(),
        "nothing goes to the caller's old address"
    );

    call.caller_hangs_up_with(4);
    let cdr = call.cdr();
    assert_eq!(cdr["disposition"], "ANSWERED", "{cdr}");
    assert_eq!(cdr["media"]["caller"]["packets"], 11, "{cdr}");
    assert_eq!(cdr["media"]["callee"]["packets"], 11, "{cdr}");
}
