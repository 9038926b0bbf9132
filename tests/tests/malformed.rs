//! Malformed and protocol-error input over raw UDP/TCP sockets. Every case is tried (the
//! failures are collected and reported together); afterwards the node must still be alive
//! and answer OPTIONS with 200.

use std::net::SocketAddr;
use std::time::Duration;
use tests::*;

const WAIT: Duration = Duration::from_millis(1500);

fn node() -> Node {
    let mut caller = Ext::new("1001");
    // IP-authenticated, so the INVITE below needs no digest round trip
    caller.trusted_ips = vec!["127.0.0.1".into()];
    Node::start(NodeOpts {
        extensions: vec![caller, Ext::new("1002")],
        ..NodeOpts::default()
    })
    .expect("start softswitch")
}

#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, case: &str, ok: bool, detail: impl FnOnce() -> String) {
        if ok {
            eprintln!("ok   {case}");
        } else {
            let d = detail();
            eprintln!("FAIL {case}: {d}");
            self.0.push(format!("{case}: {d}"));
        }
    }
    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} case(s) failed:\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

fn first_line(r: &str) -> &str {
    r.lines().next().unwrap_or("")
}

/// A final response with this code and a non-empty reason phrase.
fn has_code(rs: &[String], code: u16) -> bool {
    rs.iter().any(|r| {
        status_code(r) == Some(code)
            && first_line(r)
                .splitn(3, ' ')
                .nth(2)
                .map(|p| !p.trim().is_empty())
                .unwrap_or(false)
    })
}

fn summary(rs: &[String]) -> String {
    if rs.is_empty() {
        "no response".into()
    } else {
        rs.iter()
            .map(|r| r.lines().take(12).collect::<Vec<_>>().join("\n"))
            .collect::<Vec<_>>()
            .join("\n--\n")
    }
}

/// Headers of a well-formed request, minus the ones named in `drop`.
fn msg_without(
    addr: SocketAddr,
    method: &str,
    drop: &[&str],
    body: &str,
    declared_len: Option<usize>,
) -> String {
    let all = [
        (
            "Via",
            "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK".to_string() + &token("m") + ";rport",
        ),
        ("Max-Forwards", "70".into()),
        ("From", format!("<sip:e2e@127.0.0.1>;tag={}", token("t"))),
        ("To", format!("<sip:{addr}>")),
        ("Call-ID", token("c")),
        ("CSeq", format!("1 {method}")),
    ];
    let mut m = format!("{method} sip:{addr} SIP/2.0\r\n");
    for (h, v) in all.iter() {
        if !drop.contains(h) {
            m.push_str(&format!("{h}: {v}\r\n"));
        }
    }
    m.push_str(&format!(
        "Content-Length: {}\r\n\r\n{body}",
        declared_len.unwrap_or(body.len())
    ));
    m
}

fn huge(addr: SocketAddr, total: usize, transport: &str) -> Vec<u8> {
    let head = options_request(addr, transport, &[]);
    let head = head
        .trim_end_matches("Content-Length: 0\r\n\r\n")
        .to_string();
    let mut m = head.into_bytes();
    let filler = total.saturating_sub(m.len() + 40);
    m.extend_from_slice(b"X-Filler: ");
    m.extend_from_slice(&vec![b'a'; filler]);
    m.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    m
}

#[test]
fn malformed_udp_gets_400_or_silence_and_node_survives() {
    let mut n = node();
    let a = n.addr;
    let mut f = Failures::default();
    let udp = |bytes: &[u8]| udp_exchange(a, bytes, WAIT).unwrap_or_default();

    // truncated in the middle of a header, no end of header section
    let full = msg_without(a, "OPTIONS", &[], "", None);
    let cut = &full.as_bytes()[..full.find("CSeq").unwrap() + 6];
    let rs = udp(cut);
    f.check("truncated message -> 400", has_code(&rs, 400), || {
        summary(&rs)
    });

    // Content-Length larger than the body (RFC 4475 3.1.2.7: 400 over UDP)
    let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n";
    let m = msg_without(a, "OPTIONS", &[], body, Some(body.len() + 100)).replace(
        "Content-Length",
        "Content-Type: application/sdp\r\nContent-Length",
    );
    let rs = udp(m.as_bytes());
    f.check(
        "Content-Length larger than body -> 400",
        has_code(&rs, 400),
        || summary(&rs),
    );

    // Without Call-ID or CSeq the request is still routable by its Via: 400 naming the fault.
    let rs = udp(msg_without(a, "OPTIONS", &["Call-ID"], "", None).as_bytes());
    f.check(
        "missing Call-ID -> 400",
        has_code(&rs, 400) && summary(&rs).contains("Missing Call-ID"),
        || summary(&rs),
    );

    let rs = udp(msg_without(a, "OPTIONS", &["CSeq"], "", None).as_bytes());
    f.check("missing CSeq -> 400", has_code(&rs, 400), || summary(&rs));

    // every header present but the CSeq number is not a number: addressable, so 400
    let m =
        msg_without(a, "OPTIONS", &[], "", None).replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS");
    let rs = udp(m.as_bytes());
    f.check("non-numeric CSeq -> 400", has_code(&rs, 400), || {
        summary(&rs)
    });

    // no Via: the response is not addressable by the rules; 400 to the source or silence
    let rs = udp(msg_without(a, "OPTIONS", &["Via"], "", None).as_bytes());
    f.check(
        "missing Via -> 400 or silence",
        rs.is_empty() || has_code(&rs, 400),
        || summary(&rs),
    );

    let garbage: Vec<u8> = (0..1200u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let rs = udp(&garbage);
    f.check(
        "binary garbage -> 400 or silence",
        rs.is_empty() || has_code(&rs, 400),
        || summary(&rs),
    );

    // 70 000 bytes do not fit a UDP/IPv4 datagram (max 65 507): the huge-message case runs
    // over TCP below. Here the largest datagram: below a 64 KiB limit it may be answered
    // normally (200), above it 513 or silence; either way the node must survive it.
    let big = huge(a, 65_000, "udp");
    let rs = udp(&big);
    f.check(
        "65 000-byte UDP message -> 200, 513 or silence",
        rs.is_empty() || has_code(&rs, 513) || has_code(&rs, 200),
        || summary(&rs),
    );

    f.check("process still alive", n.alive(), || {
        n.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    });
    f.check(
        "OPTIONS still answered with 200",
        n.options_ok(Duration::from_secs(3)),
        || "no 200".into(),
    );
    f.assert_none();
}

#[test]
fn malformed_tcp_gets_400_or_513_and_node_survives() {
    let mut n = node();
    let a = n.addr;
    let mut f = Failures::default();

    // addressable but malformed (non-numeric CSeq) over TCP: 400 on the same connection
    let m = msg_without(a, "OPTIONS", &[], "", None)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
        .replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS");
    let rs = tcp_exchange(a, m.as_bytes(), Duration::from_secs(3)).unwrap_or_default();
    f.check("TCP non-numeric CSeq -> 400", has_code(&rs, 400), || {
        summary(&rs)
    });

    // 70 000 bytes over TCP: 513 Message Too Large, or the connection is closed
    let big = huge(a, 70_000, "tcp");
    // (an error = connection reset while we were still writing: acceptable)
    let rs = tcp_exchange(a, &big, Duration::from_secs(3)).unwrap_or_default();
    f.check(
        "70 000-byte TCP message -> 513 or silence",
        rs.is_empty() || has_code(&rs, 513),
        || summary(&rs),
    );

    let rs = tcp_exchange(
        a,
        options_request(a, "tcp", &[]).as_bytes(),
        Duration::from_secs(3),
    )
    .unwrap_or_default();
    f.check(
        "TCP OPTIONS still answered with 200",
        has_code(&rs, 200),
        || summary(&rs),
    );
    f.check("process still alive", n.alive(), || {
        n.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    });
    f.check(
        "UDP OPTIONS still answered with 200",
        n.options_ok(Duration::from_secs(3)),
        || "no 200".into(),
    );
    f.assert_none();
}

#[test]
fn protocol_errors_get_the_rfc_responses() {
    let mut n = node();
    let a = n.addr;
    let mut f = Failures::default();
    let udp = |m: String| udp_exchange(a, m.as_bytes(), WAIT).unwrap_or_default();

    // Max-Forwards: 0 on a request the node would route -> 483
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let inv = format!(
        "INVITE sip:1002@{a} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{br};rport\r\nMax-Forwards: 0\r\n\
         From: <sip:1001@127.0.0.1>;tag={tag}\r\nTo: <sip:1002@{a}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:1001@127.0.0.1:5999>\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
        br = token("mf"),
        tag = token("t"),
        cid = token("c"),
        len = sdp.len()
    );
    let rs = udp(inv);
    f.check("Max-Forwards: 0 -> 483", has_code(&rs, 483), || {
        summary(&rs)
    });

    let rs = udp(request("FOO", &format!("sip:{a}"), a, "udp", &[], ""));
    f.check("unknown method FOO -> 501", has_code(&rs, 501), || {
        summary(&rs)
    });

    let rs = udp(options_request(a, "udp", &[]).replacen("SIP/2.0\r\n", "SIP/3.0\r\n", 1));
    f.check("SIP/3.0 -> 505", has_code(&rs, 505), || summary(&rs));

    let rs = udp(options_request(a, "udp", &["Require: foo"]));
    let unsupported_foo = rs.iter().any(|r| {
        status_code(r) == Some(420)
            && headers(r, &["Unsupported"])
                .iter()
                .any(|v| v.split(',').any(|t| t.trim() == "foo"))
    });
    f.check(
        "Require: foo -> 420 with Unsupported: foo",
        unsupported_foo,
        || summary(&rs),
    );

    let rs = udp(options_request(a, "udp", &[]));
    let ok = rs.iter().find(|r| status_code(r) == Some(200));
    let has = |h: &str| {
        ok.map(|r| {
            r.lines()
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .any(|l| {
                    l.split(':')
                        .next()
                        .map(|n| n.trim().eq_ignore_ascii_case(h))
                        .unwrap_or(false)
                })
        })
        .unwrap_or(false)
    };
    f.check(
        "OPTIONS -> 200 with Allow, Accept, Supported",
        ok.is_some() && has("Allow") && has("Accept") && has("Supported"),
        || summary(&rs),
    );
    if let Some(r) = ok {
        let allow = header(r, &["Allow"]).unwrap_or("");
        for m in ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"] {
            f.check(
                &format!("Allow lists {m}"),
                allow.to_ascii_uppercase().contains(m),
                || allow.to_string(),
            );
        }
    }

    f.check("process still alive", n.alive(), || {
        n.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    });
    f.check(
        "OPTIONS still answered with 200",
        n.options_ok(Duration::from_secs(3)),
        || "no 200".into(),
    );
    f.assert_none();
}
