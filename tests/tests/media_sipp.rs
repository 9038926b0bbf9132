//! A call between two SIPp agents through the node's relay, each side playing Debian's
//! G.711 A-law capture (sip-tester's `g711a.pcap`: 236 RTP packets of 30 ms) once the
//! call is answered. tcpdump on loopback records what reaches each agent's media port,
//! so the test sees that the SDP each agent got points at the relay, that every packet
//! arrived from the relay's port with its payload intact and in order, and that the CDR
//! counts exactly what was sent.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tests::capture::{udp_datagrams, Capture, Datagram};
use tests::*;

const CALLER: &str = "1001";
const CALLEE: &str = "1002";
/// SIPp's own G.711 A-law stream (Debian package sip-tester).
const G711A_PCAP: &str = "/usr/share/sip-tester/g711a.pcap";

/// The `c=` address and `m=audio` port of the SDP in `msg`.
fn sdp_media(msg: &str) -> (String, u16) {
    // SIPp's message log ends lines with \n only.
    let msg = msg.replace("\r\n", "\n");
    let body = msg.split("\n\n").nth(1).unwrap_or_default();
    let find = |prefix: &str| {
        body.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
            .unwrap_or_default()
    };
    let port = find("m=audio ")
        .split(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    (find("c=IN IP4 ").trim().to_string(), port)
}

/// Where the capture is played, relative to an element of the scenario.
enum Play {
    Before(&'static str),
    After(&'static str),
}

/// `name` from tests/sipp with PCMA offered/answered and the capture played at `at`.
fn pcap_scenario(dir: &Path, name: &str, at: Play) -> PathBuf {
    let play = format!("<nop><action><exec play_pcap_audio=\"{G711A_PCAP}\"/></action></nop>");
    let (anchor, with_play) = match at {
        Play::Before(a) => (a, format!("{play}\n  {a}")),
        Play::After(a) => (a, format!("{a}\n  {play}")),
    };
    let text = std::fs::read_to_string(scenario(name)).unwrap();
    assert!(text.contains(anchor), "{name} has no {anchor}");
    let text = text
        .replace("RTP/AVP 0", "RTP/AVP 8")
        .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000")
        .replacen(anchor, &with_play, 1);
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The datagrams of `got` sent to `port`.
fn to_port(got: &[Datagram], port: u16) -> Vec<&Datagram> {
    got.iter().filter(|d| d.dst.port() == port).collect()
}

#[test]
fn sipp_agents_playing_g711_talk_through_the_relay() {
    let stream: Vec<Vec<u8>> = udp_datagrams(Path::new(G711A_PCAP))
        .expect("sip-tester's g711a.pcap")
        .into_iter()
        .map(|d| d.payload)
        .collect();
    assert_eq!(stream.len(), 236, "g711a.pcap is 236 packets");

    let node = Node::start(NodeOpts::default()).expect("start softswitch");
    let (caller_port, callee_port) = (free_port(), free_port());
    let (caller_media, callee_media) = (free_port(), free_port());
    sipp_register(&node, CALLER, caller_port);
    sipp_register(&node, CALLEE, callee_port);

    let dir = tempfile::tempdir().unwrap();
    // The caller plays right after its ACK, the callee once the ACK reached it.
    let uac_scn = pcap_scenario(dir.path(), "uac-call.xml", Play::Before("<pause />"));
    let uas_scn = pcap_scenario(
        dir.path(),
        "uas-answer.xml",
        Play::After(r#"<recv request="ACK" rtd="true" crlf="true" />"#),
    );
    let capture = Capture::start(
        "lo",
        &format!("udp and (dst port {caller_media} or dst port {callee_media})"),
        dir.path(),
        "media",
    )
    .expect("tcpdump");

    let mut uas = Sipp::new("uas-pcap", &uas_scn)
        .local_port(callee_port)
        .args(["-s", CALLEE, "-mi", "127.0.0.1"])
        .args(["-mp", &callee_media.to_string()])
        .timeout_s(30)
        .spawn()
        .unwrap();
    assert!(
        uas.wait_bound(callee_port, Duration::from_secs(5)),
        "UAS sipp did not bind its port"
    );
    let addr = node.addr.to_string();
    // The caller hangs up 8 s after the answer: the 7.05 s stream has been played.
    let uac = Sipp::new("uac-pcap", &uac_scn)
        .dialling(&addr, CALLEE, CALLER)
        .local_port(caller_port)
        .args(["-d", "8000", "-mi", "127.0.0.1"])
        .args(["-mp", &caller_media.to_string()])
        .timeout_s(30)
        .run()
        .unwrap();
    let uas = uas.wait();
    assert!(uac.ok(), "UAC: {}", uac.describe());
    assert!(uas.ok(), "UAS: {}", uas.describe());
    let got = capture.stop().expect("capture");

    // Each agent got SDP naming the relay, not the other agent.
    let invite = uas
        .sip_messages()
        .into_iter()
        .find(|m| m.starts_with("INVITE"))
        .expect("the UAS got an INVITE");
    let (ip, relay_for_callee) = sdp_media(&invite);
    assert_eq!(ip, "127.0.0.1", "{invite}");
    assert!(
        relay_for_callee != caller_media && relay_for_callee >= 10000,
        "the callee is offered the relay's port: {invite}"
    );
    let ok = uac
        .sip_messages()
        .into_iter()
        .find(|m| m.starts_with("SIP/2.0 200") && m.contains("application/sdp"))
        .expect("the UAC got a 200 with SDP");
    let (ip, relay_for_caller) = sdp_media(&ok);
    assert_eq!(ip, "127.0.0.1", "{ok}");
    assert!(
        relay_for_caller != callee_media && relay_for_caller >= 10000,
        "the caller is answered with the relay's port: {ok}"
    );

    // Every packet of each stream reached the far side, intact, in order, from the
    // relay port that side sends to.
    for (who, port, relay_port) in [
        ("callee", callee_media, relay_for_callee),
        ("caller", caller_media, relay_for_caller),
    ] {
        let heard = to_port(&got, port);
        assert_eq!(
            heard.len(),
            stream.len(),
            "the {who} got {} of {} packets",
            heard.len(),
            stream.len()
        );
        for (i, (d, sent)) in heard.iter().zip(&stream).enumerate() {
            assert_eq!(&d.payload, sent, "packet {i} to the {who} changed");
            assert_eq!(d.src.port(), relay_port, "the {who} hears the relay's port");
        }
    }

    // The CDR counts what each side sent.
    let cdrs = node
        .wait_cdrs(Duration::from_secs(10), |c| !c.is_empty())
        .expect("CDRs");
    let cdr = &cdrs[0];
    let bytes: usize = stream.iter().map(Vec::len).sum();
    for side in ["caller", "callee"] {
        let m = &cdr["media"][side];
        assert_eq!(m["packets"], stream.len(), "{side}: {cdr:#}");
        assert_eq!(m["bytes"], bytes, "{side}: {cdr:#}");
        assert_eq!(m["lost"], 0, "{side}: {cdr:#}");
        assert_eq!(m["dropped_wrong_source"], 0, "{side}: {cdr:#}");
    }
    assert_eq!(cdr["disposition"], "ANSWERED", "{cdr:#}");
}
