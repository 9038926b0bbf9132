//! The SIP core as a whole state machine: real transactions, registrar, calls and a
//! RocksDB store in a temp dir, with a recording wire and an injected clock.

use super::*;
use crate::calls::cdr::{Cdr, Disposition};
use crate::registrar::Binding;
use crate::routing::Extension;
use crate::sip::message::parse;
use crate::store::{Expect, Store};
use std::sync::Mutex;

type Sent = Arc<Mutex<Vec<(Peer, Bytes)>>>;

struct Recorder(Sent);

impl Wire for Recorder {
    fn send(&self, to: Peer, bytes: Bytes) {
        self.0.lock().unwrap().push((to, bytes));
    }
}

fn udp(port: u16) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
    }
}

const A: u16 = 7001;
const B1: u16 = 7002;
const B2: u16 = 7003;

struct Harness {
    core: Core,
    sent: Sent,
    store: Arc<Store>,
    t0: Instant,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A core with extensions 1001 (trusted from 127.0.0.1) and 1002 (registered at B1
    /// and B2, or at the given ports).
    fn new(callee_ports: &[u16]) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut cmds = vec![
            Command::PutExtension {
                extension: Extension {
                    number: "1001".into(),
                    name: "Alice".into(),
                    password: "pw1001".into(),
                    max_contacts: None,
                    trusted_ips: vec!["127.0.0.1".parse().unwrap()],
                },
                expect: Expect::Any,
            },
            Command::PutExtension {
                extension: Extension {
                    number: "1002".into(),
                    name: String::new(),
                    password: "pw1002".into(),
                    max_contacts: None,
                    trusted_ips: vec![],
                },
                expect: Expect::Any,
            },
        ];
        let far = unix_now(SystemTime::now()) + 3600;
        for p in callee_ports {
            cmds.push(Command::PutBinding {
                aor: "1002".into(),
                binding: Binding {
                    contact: format!("sip:1002@127.0.0.1:{p}"),
                    expires_at: far,
                    q: 1.0,
                    call_id: format!("reg-{p}"),
                    cseq: 1,
                    source: udp(*p),
                    user_agent: None,
                },
            });
        }
        store.apply_all(&cmds).unwrap();
        let sent: Sent = Arc::default();
        let cfg = NodeConfig::from_toml("[calls]\nring_timeout_secs = 30\n").unwrap();
        let local = Local::new(
            "",
            "test",
            vec!["127.0.0.1:5060".parse().unwrap()],
            vec!["127.0.0.1:5060".parse().unwrap()],
        );
        let state = InitialState {
            bindings: store.bindings().unwrap(),
            extensions: store.extensions().unwrap(),
        };
        let core = Core::new(
            &cfg,
            state,
            Box::new(crate::persist::LocalStore(store.clone())),
            local,
            Box::new(Recorder(sent.clone())),
            Arc::new(Metrics::default()),
        );
        Harness {
            core,
            sent,
            store,
            t0: Instant::now(),
            _dir: dir,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn recv(&mut self, from: u16, msg: &SipMessage, ms: u64) {
        let msg = parse(&msg.to_bytes()).unwrap();
        self.core.on_inbound(
            Inbound {
                msg,
                from: udp(from),
                received: self.at(ms),
            },
            self.at(ms),
        );
        self.core.commit(self.at(ms));
    }

    fn recv_text(&mut self, from: u16, text: &str, ms: u64) {
        let msg = parse(text.as_bytes()).unwrap();
        self.core.on_inbound(
            Inbound {
                msg,
                from: udp(from),
                received: self.at(ms),
            },
            self.at(ms),
        );
        self.core.commit(self.at(ms));
    }

    fn tick(&mut self, ms: u64) {
        self.core.on_timer(self.at(ms));
    }

    /// Everything sent since the last call, parsed, with its destination port.
    fn take(&mut self) -> Vec<(u16, SipMessage)> {
        self.sent
            .lock()
            .unwrap()
            .drain(..)
            .map(|(p, b)| (p.addr.port(), parse(&b).unwrap()))
            .collect()
    }

    /// The stored CDRs, once the writes the core still coalesces are made.
    fn cdrs(&mut self) -> Vec<Cdr> {
        self.core.commit_all();
        self.store.cdrs().unwrap()
    }

    /// The stored call records, once the writes the core still coalesces are made.
    fn calls(&mut self) -> Vec<crate::calls::record::CallRecord> {
        self.core.commit_all();
        self.store.read(crate::store::calls).unwrap()
    }
}

fn find(
    msgs: &[(u16, SipMessage)],
    port: u16,
    pred: impl Fn(&SipMessage) -> bool,
) -> Option<&SipMessage> {
    msgs.iter()
        .find(|(p, m)| *p == port && pred(m))
        .map(|(_, m)| m)
}

fn is_req(m: &SipMessage, method: Method) -> bool {
    m.method() == Some(&method)
}

fn is_status(m: &SipMessage, code: u16) -> bool {
    m.status() == Some(code)
}

const SDP: &str = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

fn invite(to: &str, branch: &str) -> String {
    format!(
        "INVITE sip:{to}@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{A};branch={branch};rport\r\n\
From: \"Alice\" <sip:1001@127.0.0.1>;tag=atag\r\nTo: <sip:{to}@127.0.0.1>\r\nCall-ID: call-a\r\n\
CSeq: 1 INVITE\r\nContact: <sip:1001@127.0.0.1:{A}>\r\nMax-Forwards: 70\r\n\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
}

/// The callee's response to the INVITE the core sent it.
fn answer(req: &SipMessage, code: u16, reason: &str, tag: &str, port: u16) -> SipMessage {
    let mut r = req.response(code, reason);
    r.set_to_tag(tag);
    if code < 300 {
        r.headers
            .push("Contact", format!("<sip:1002@127.0.0.1:{port}>"));
    }
    if code == 200 {
        r.set_body(
            Some("application/sdp"),
            Bytes::from_static(b"v=0\r\nanswer\r\n"),
        );
    }
    r
}

/// The ACK the caller sends for the 2xx it got.
fn ack_for(ok: &SipMessage) -> String {
    let to = ok.headers.get("To").unwrap();
    format!(
        "ACK sip:1002@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{A};branch=z9hG4bKack1;rport\r\n\
From: \"Alice\" <sip:1001@127.0.0.1>;tag=atag\r\nTo: {to}\r\nCall-ID: call-a\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n\r\n"
    )
}

#[test]
fn answered_call_forks_relays_and_writes_one_cdr() {
    let mut h = Harness::new(&[B1, B2]);
    h.recv_text(A, &invite("1002", "z9hG4bKinv1"), 0);
    let out = h.take();
    assert!(
        find(&out, A, |m| is_status(m, 100)).is_some(),
        "100 Trying to the caller"
    );
    let inv1 = find(&out, B1, |m| is_req(m, Method::Invite))
        .expect("fork to B1")
        .clone();
    let inv2 = find(&out, B2, |m| is_req(m, Method::Invite))
        .expect("fork to B2")
        .clone();
    assert_ne!(inv1.call_id(), Some("call-a"), "B-leg has its own Call-ID");
    assert_eq!(inv1.call_id(), inv2.call_id());
    assert_eq!(
        &inv1.body[..],
        SDP.as_bytes(),
        "SDP passes through unchanged"
    );
    assert_eq!(inv1.uri(), Some("sip:1002@127.0.0.1:7002"));
    assert!(inv1.headers.get("From").unwrap().contains("Alice"));

    h.recv(B1, &answer(&inv1, 180, "Ringing", "b1", B1), 100);
    let out = h.take();
    let ringing = find(&out, A, |m| is_status(m, 180)).expect("180 relayed");
    let a_tag = ringing.to_tag().expect("our To tag");
    let live = h.calls();
    assert_eq!(live.len(), 1, "a ringing call is recorded");
    assert_eq!(
        (live[0].call_id.as_str(), live[0].callee.as_str()),
        ("call-a", "1002")
    );
    assert!(live[0].answer.is_none() && live[0].legs.is_none());

    h.recv(B2, &answer(&inv2, 200, "OK", "b2", B2), 2000);
    let out = h.take();
    let ok = find(&out, A, |m| is_status(m, 200))
        .expect("200 relayed")
        .clone();
    assert_eq!(ok.to_tag().as_deref(), Some(a_tag.as_str()));
    assert_eq!(&ok.body[..], b"v=0\r\nanswer\r\n");
    assert!(ok
        .headers
        .get("Contact")
        .unwrap()
        .contains("127.0.0.1:5060"));
    assert!(
        find(&out, B1, |m| is_req(m, Method::Cancel)).is_some(),
        "losing fork cancelled"
    );
    assert!(
        find(&out, B2, |m| is_req(m, Method::Ack)).is_none(),
        "ACK waits for the caller's"
    );

    // The cancelled fork answers 200 to the CANCEL and 487 to the INVITE, which we ACK.
    let cancel = find(&out, B1, |m| is_req(m, Method::Cancel))
        .unwrap()
        .clone();
    h.recv(B1, &cancel.response(200, "OK"), 2010);
    h.recv(
        B1,
        &answer(&inv1, 487, "Request Terminated", "b1", B1),
        2020,
    );
    let out = h.take();
    assert!(
        find(&out, B1, |m| is_req(m, Method::Ack)).is_some(),
        "487 acknowledged"
    );

    let live = h.calls();
    assert!(live[0].answer.is_some(), "the answer is recorded");
    let legs = live[0].legs.as_ref().expect("both dialogs recorded");
    assert_eq!(legs.a.dialog.call_id, "call-a");
    assert_eq!(legs.a.dialog.local_tag, a_tag);
    assert_eq!(
        (legs.b.dialog.remote_tag.as_str(), legs.b.peer.addr.port()),
        ("b2", B2)
    );

    h.recv_text(A, &ack_for(&ok), 2100);
    let out = h.take();
    let ack = find(&out, B2, |m| is_req(m, Method::Ack)).expect("ACK to the winner");
    assert_eq!(ack.to_tag().as_deref(), Some("b2"));
    assert_eq!(ack.cseq(), Some((1, Method::Ack)));

    // The callee hangs up: 200 to it, BYE to the caller, one CDR.
    let b_dialog_bye = format!(
        "BYE sip:1001@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{B2};branch=z9hG4bKbye2;rport\r\n\
From: <sip:1002@127.0.0.1>;tag=b2\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\n\r\n",
        inv2.headers.get("From").unwrap(),
        inv2.call_id().unwrap()
    );
    h.recv_text(B2, &b_dialog_bye, 5200);
    let out = h.take();
    assert!(find(&out, B2, |m| is_status(m, 200)).is_some());
    let bye = find(&out, A, |m| is_req(m, Method::Bye)).expect("BYE to the caller");
    assert_eq!(bye.call_id(), Some("call-a"));
    assert_eq!(bye.from_tag().as_deref(), Some(a_tag.as_str()));
    assert_eq!(bye.to_tag().as_deref(), Some("atag"));
    assert_eq!(bye.uri(), Some("sip:1001@127.0.0.1:7001"));

    let cdrs = h.cdrs();
    assert_eq!(cdrs.len(), 1);
    let c = &cdrs[0];
    assert_eq!((c.caller.as_str(), c.callee.as_str()), ("1001", "1002"));
    assert_eq!(c.disposition, Disposition::Answered);
    assert_eq!(c.hangup_cause, "normal_clearing");
    assert_eq!(c.hangup_by.as_deref(), Some("callee"));
    assert!(c.answer.is_some());
    assert!(h.calls().is_empty(), "the ended call's record is gone");
}

#[test]
fn all_forks_busy_gives_486_and_busy_cdr() {
    let mut h = Harness::new(&[B1, B2]);
    h.recv_text(A, &invite("1002", "z9hG4bKinv2"), 0);
    let out = h.take();
    let inv1 = find(&out, B1, |m| is_req(m, Method::Invite))
        .unwrap()
        .clone();
    let inv2 = find(&out, B2, |m| is_req(m, Method::Invite))
        .unwrap()
        .clone();
    h.recv(B1, &answer(&inv1, 486, "Busy Here", "b1", B1), 10);
    assert!(find(&h.take(), A, |m| m.status().is_some_and(|c| c >= 300)).is_none());
    h.recv(B2, &answer(&inv2, 486, "Busy Here", "b2", B2), 20);
    let out = h.take();
    let busy = find(&out, A, |m| is_status(m, 486)).expect("486 to the caller");
    assert!(busy.to_tag().is_some());
    let cdrs = h.cdrs();
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].disposition, Disposition::Busy);
    assert_eq!(cdrs[0].hangup_cause, "user_busy");
}

#[test]
fn ring_timeout_gives_480_and_cancels_forks() {
    let mut h = Harness::new(&[B1]);
    h.recv_text(A, &invite("1002", "z9hG4bKinv3"), 0);
    let out = h.take();
    let inv1 = find(&out, B1, |m| is_req(m, Method::Invite))
        .unwrap()
        .clone();
    h.recv(B1, &answer(&inv1, 180, "Ringing", "b1", B1), 50);
    h.take();
    h.tick(29_000);
    assert!(
        find(&h.take(), A, |m| is_status(m, 480)).is_none(),
        "not before 30 s"
    );
    h.tick(30_001);
    let out = h.take();
    assert!(find(&out, A, |m| is_status(m, 480)).is_some());
    assert!(find(&out, B1, |m| is_req(m, Method::Cancel)).is_some());
    let cdrs = h.cdrs();
    assert_eq!(cdrs[0].disposition, Disposition::NoAnswer);
    assert_eq!(cdrs[0].hangup_cause, "no_answer");
}

#[test]
fn caller_cancel_gives_487_and_cancelled_cdr() {
    let mut h = Harness::new(&[B1]);
    h.recv_text(A, &invite("1002", "z9hG4bKinv4"), 0);
    let out = h.take();
    let inv1 = find(&out, B1, |m| is_req(m, Method::Invite))
        .unwrap()
        .clone();
    h.recv(B1, &answer(&inv1, 180, "Ringing", "b1", B1), 50);
    h.take();
    let cancel = format!(
        "CANCEL sip:1002@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{A};branch=z9hG4bKinv4;rport\r\n\
From: \"Alice\" <sip:1001@127.0.0.1>;tag=atag\r\nTo: <sip:1002@127.0.0.1>\r\nCall-ID: call-a\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\n\r\n"
    );
    h.recv_text(A, &cancel, 1000);
    let out = h.take();
    assert!(find(&out, A, |m| is_status(m, 200)
        && m.cseq().unwrap().1 == Method::Cancel)
    .is_some());
    assert!(find(&out, A, |m| is_status(m, 487)).is_some());
    assert!(find(&out, B1, |m| is_req(m, Method::Cancel)).is_some());
    assert_eq!(h.cdrs()[0].disposition, Disposition::Cancelled);
}

#[test]
fn unknown_and_unregistered_numbers() {
    let mut h = Harness::new(&[]);
    h.recv_text(A, &invite("1999", "z9hG4bKinv5"), 0);
    assert!(find(&h.take(), A, |m| is_status(m, 404)).is_some());
    h.recv_text(A, &invite("1002", "z9hG4bKinv6"), 10);
    assert!(find(&h.take(), A, |m| is_status(m, 480)).is_some());
    let cdrs = h.cdrs();
    assert_eq!(cdrs.len(), 2);
    assert_eq!(cdrs[0].hangup_cause, "unallocated_number");
    assert_eq!(cdrs[0].disposition, Disposition::Failed);
    assert_eq!(cdrs[1].hangup_cause, "subscriber_absent");
}

#[test]
fn untrusted_caller_is_challenged_with_407() {
    let mut h = Harness::new(&[B1]);
    let text =
        invite("1001", "z9hG4bKinv7").replace("sip:1001@127.0.0.1>;tag", "sip:1002@127.0.0.1>;tag");
    h.recv_text(A, &text, 0);
    let out = h.take();
    let r = find(&out, A, |m| is_status(m, 407)).expect("407");
    assert!(r
        .headers
        .get("Proxy-Authenticate")
        .unwrap()
        .contains("qop=\"auth\""));
    assert!(h.cdrs().is_empty(), "a challenge is not a call attempt");
}

fn options(extra: &str, branch: &str) -> String {
    format!(
        "OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{A};branch={branch}\r\n\
From: <sip:1001@127.0.0.1>;tag=o1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: opt-{branch}\r\nCSeq: 1 OPTIONS\r\n{extra}\r\n"
    )
}

#[test]
fn core_checks_answer_as_rfc_3261_says() {
    let mut h = Harness::new(&[B1]);
    h.recv_text(A, &options("Max-Forwards: 70\r\n", "z9hG4bKo1"), 0);
    let out = h.take();
    let ok = find(&out, A, |m| is_status(m, 200)).unwrap();
    assert!(ok.headers.get("Allow").unwrap().contains("INVITE"));
    assert_eq!(ok.headers.get("Accept"), Some("application/sdp"));
    assert!(ok.headers.get("Supported").is_some());

    h.recv_text(A, &options("Max-Forwards: 0\r\n", "z9hG4bKo2"), 0);
    assert!(find(&h.take(), A, |m| is_status(m, 483)).is_some());

    h.recv_text(A, &options("Require: foo, bar\r\n", "z9hG4bKo3"), 0);
    let out = h.take();
    let r = find(&out, A, |m| is_status(m, 420)).unwrap();
    assert_eq!(r.headers.get("Unsupported"), Some("foo, bar"));

    let foo = options("", "z9hG4bKo4").replace("OPTIONS", "FOO");
    h.recv_text(A, &foo, 0);
    assert!(find(&h.take(), A, |m| is_status(m, 501)).is_some());

    let sub = options("", "z9hG4bKo5").replace("OPTIONS", "SUBSCRIBE");
    h.recv_text(A, &sub, 0);
    assert!(find(&h.take(), A, |m| is_status(m, 405)).is_some());

    // A request that carries one of our own branches has come back to us.
    h.recv_text(A, &invite("1002", "z9hG4bKinv8"), 0);
    let out = h.take();
    let fork = find(&out, B1, |m| is_req(m, Method::Invite)).unwrap();
    let ours = fork.headers.get("Via").unwrap().to_string();
    let looped = options(&format!("Via: {ours}\r\n"), "z9hG4bKo6");
    h.recv_text(A, &looped, 0);
    assert!(find(&h.take(), A, |m| is_status(m, 482)).is_some());

    let bye = options("", "z9hG4bKo7").replace("OPTIONS", "BYE");
    h.recv_text(A, &bye, 0);
    assert!(find(&h.take(), A, |m| is_status(m, 481)).is_some());
}

#[test]
fn reinvite_is_relayed_and_acked_end_to_end() {
    let mut h = Harness::new(&[B1]);
    h.recv_text(A, &invite("1002", "z9hG4bKinv9"), 0);
    let out = h.take();
    let inv1 = find(&out, B1, |m| is_req(m, Method::Invite))
        .unwrap()
        .clone();
    h.recv(B1, &answer(&inv1, 200, "OK", "b1", B1), 100);
    let ok = find(&h.take(), A, |m| is_status(m, 200)).unwrap().clone();
    h.recv_text(A, &ack_for(&ok), 150);
    h.take();

    // Caller puts the call on hold.
    let hold_sdp = SDP.replace("m=audio", "a=sendonly\r\nm=audio");
    let reinvite = format!(
        "INVITE sip:1002@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{A};branch=z9hG4bKre1;rport\r\n\
From: \"Alice\" <sip:1001@127.0.0.1>;tag=atag\r\nTo: {}\r\nCall-ID: call-a\r\nCSeq: 2 INVITE\r\n\
Contact: <sip:1001@127.0.0.1:{A}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{hold_sdp}",
        ok.headers.get("To").unwrap(),
        hold_sdp.len()
    );
    h.recv_text(A, &reinvite, 1000);
    let out = h.take();
    let re_b = find(&out, B1, |m| is_req(m, Method::Invite))
        .expect("re-INVITE relayed")
        .clone();
    assert_eq!(re_b.call_id(), inv1.call_id());
    assert_eq!(re_b.cseq(), Some((2, Method::Invite)));
    assert_eq!(&re_b.body[..], hold_sdp.as_bytes());

    // A second re-INVITE while one is pending gets 491.
    let glare = reinvite
        .replace("z9hG4bKre1", "z9hG4bKre2")
        .replace("CSeq: 2 INVITE", "CSeq: 3 INVITE");
    h.recv_text(A, &glare, 1010);
    assert!(find(&h.take(), A, |m| is_status(m, 491)).is_some());

    h.recv(B1, &answer(&re_b, 200, "OK", "b1", B1), 1100);
    let out = h.take();
    let ok2 =
        find(&out, A, |m| is_status(m, 200) && m.cseq().unwrap().0 == 2).expect("200 relayed");
    assert!(!ok2.body.is_empty());
    let ack2 = ack_for(ok2)
        .replace("CSeq: 1 ACK", "CSeq: 2 ACK")
        .replace("z9hG4bKack1", "z9hG4bKack2");
    h.recv_text(A, &ack2, 1200);
    let out = h.take();
    let ack_b = find(&out, B1, |m| is_req(m, Method::Ack)).expect("ACK relayed");
    assert_eq!(ack_b.cseq(), Some((2, Method::Ack)));
}

fn register(user: &str, cseq: u32, auth: &str) -> String {
    format!(
        "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{B1};branch=z9hG4bKreg{cseq};rport\r\n\
From: <sip:{user}@127.0.0.1>;tag=r1\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: reg-call\r\nCSeq: {cseq} REGISTER\r\n\
Contact: <sip:{user}@127.0.0.1:{B1}>\r\nExpires: 600\r\nMax-Forwards: 70\r\n{auth}\r\n"
    )
}

#[test]
fn register_with_sha256_digest_is_stored_before_200() {
    use crate::registrar::digest::{response_hex, Algorithm, QopParams, ResponseParams};
    let mut h = Harness::new(&[]);
    h.recv_text(B1, &register("1002", 1, ""), 0);
    let out = h.take();
    let challenge = find(&out, B1, |m| is_status(m, 401)).expect("401");
    let www = challenge
        .headers
        .get_all("WWW-Authenticate")
        .find(|v| v.contains("SHA-256"))
        .expect("SHA-256 offered first")
        .to_string();
    let param = |name: &str| {
        let start = www.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        www[start..start + www[start..].find('"').unwrap()].to_string()
    };
    let (nonce, opaque) = (param("nonce"), param("opaque"));
    let response = response_hex(&ResponseParams {
        algorithm: Algorithm::Sha256,
        username: "1002",
        realm: "softswitch",
        password: "pw1002",
        method: "REGISTER",
        uri: "sip:127.0.0.1:5060",
        nonce: &nonce,
        qop: Some(QopParams {
            qop: "auth",
            nc: "00000001",
            cnonce: "c0ffee",
        }),
    });
    let auth = format!(
        "Authorization: Digest username=\"1002\",realm=\"softswitch\",nonce=\"{nonce}\",uri=\"sip:127.0.0.1:5060\",\
response=\"{response}\",algorithm=SHA-256,qop=auth,nc=00000001,cnonce=\"c0ffee\",opaque=\"{opaque}\"\r\n"
    );
    h.recv_text(B1, &register("1002", 2, &auth), 10);
    let out = h.take();
    let ok = find(&out, B1, |m| is_status(m, 200)).unwrap_or_else(|| panic!("{out:?}"));
    assert!(ok.headers.get("Contact").unwrap().contains("expires=600"));
    let stored = h.store.bindings().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, "1002");

    // The same credentials again (same nonce count) are a replay: challenged, not stored.
    h.recv_text(B1, &register("1002", 3, &auth), 20);
    assert!(find(&h.take(), B1, |m| is_status(m, 401)).is_some());
}

#[test]
fn new_work_that_waited_too_long_is_shed_with_503() {
    let mut h = Harness::new(&[B1]);
    let msg = parse(invite("1002", "z9hG4bKlate").as_bytes()).unwrap();
    // Read off the socket at t=0 but reached the core 1.2 s later (limit 1 s).
    h.core.on_inbound(
        Inbound {
            msg,
            from: udp(A),
            received: h.at(0),
        },
        h.at(1200),
    );
    h.core.commit(h.at(1200));
    let out = h.take();
    let r = find(&out, A, |m| is_status(m, 503)).expect("503");
    assert_eq!(r.headers.get("Retry-After"), Some("5"));
    assert!(
        find(&out, B1, |m| is_req(m, Method::Invite)).is_none(),
        "no call was started"
    );
    assert!(h.cdrs().is_empty());

    // In-dialog requests and responses are never shed: calls in progress must finish.
    let bye = options("", "z9hG4bKlate2").replace("OPTIONS", "BYE");
    let bye = bye.replace("To: <sip:127.0.0.1>", "To: <sip:127.0.0.1>;tag=x");
    h.core.on_inbound(
        Inbound {
            msg: parse(bye.as_bytes()).unwrap(),
            from: udp(A),
            received: h.at(0),
        },
        h.at(1200),
    );
    h.core.commit(h.at(1200));
    assert!(find(&h.take(), A, |m| is_status(m, 481)).is_some());
}

#[test]
fn register_without_credentials_is_challenged_with_no_transaction() {
    let mut h = Harness::new(&[]);
    h.recv_text(B1, &register("1002", 1, ""), 0);
    let first = h.take();
    let c1 = find(&first, B1, |m| is_status(m, 401))
        .expect("401")
        .clone();
    assert_eq!(h.core.txn.len(), 0, "no transaction kept for the challenge");
    assert!(c1.headers.get("WWW-Authenticate").is_some());
    assert_eq!(c1.headers.get("Server"), Some("test"));
    // A retransmission is answered again, with the same To tag (RFC 3261 §8.2.7).
    h.recv_text(B1, &register("1002", 1, ""), 500);
    let again = h.take();
    let c2 = find(&again, B1, |m| is_status(m, 401)).expect("401 again");
    assert!(c1.to_tag().is_some());
    assert_eq!(c1.to_tag(), c2.to_tag());
    // Nothing is retransmitted later: there is no timer.
    h.tick(40_000);
    assert!(h.take().is_empty());
    // A different request (new CSeq and branch) gets a different tag.
    h.recv_text(B1, &register("1002", 2, ""), 41_000);
    let other = h.take();
    assert_ne!(
        find(&other, B1, |m| is_status(m, 401)).unwrap().to_tag(),
        c1.to_tag()
    );

    // The §8.2 checks still come first: they need the stateful path.
    let req = register("1002", 3, "Require: foo\r\n");
    h.recv_text(B1, &req, 42_000);
    let r = h.take();
    assert!(find(&r, B1, |m| is_status(m, 420)).is_some(), "{r:?}");
    let req = register("1002", 4, "").replace("Max-Forwards: 70", "Max-Forwards: 0");
    h.recv_text(B1, &req, 43_000);
    assert!(find(&h.take(), B1, |m| is_status(m, 483)).is_some());
}

/// The writes a [`Deferred`] store was asked for.
type Asked = Arc<Mutex<Vec<(WriteId, Vec<Command>)>>>;

/// A store that answers later, like a cluster: records what it was asked to write.
struct Deferred(Asked);

impl Persist for Deferred {
    fn write(&mut self, id: WriteId, cmds: Vec<Command>) -> Written {
        self.0.lock().unwrap().push((id, cmds));
        Written::Pending
    }
}

#[test]
fn register_answers_wait_for_a_write_that_completes_later() {
    let mut h = Harness::new(&[]);
    let asked: Asked = Arc::default();
    h.core.persist = Box::new(Deferred(asked.clone()));
    // Extension 1001 is trusted from 127.0.0.1 for calls, but REGISTER needs digest:
    // take the challenge, answer it, and see the 200 wait for the write.
    let (user, pw) = ("1002", "pw1002");
    h.recv_text(B1, &register(user, 1, ""), 0);
    let out = h.take();
    let www = find(&out, B1, |m| is_status(m, 401))
        .expect("401")
        .headers
        .get_all("WWW-Authenticate")
        .find(|v| v.contains("MD5"))
        .expect("MD5 offered")
        .to_string();
    let param = |name: &str| {
        let start = www.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        www[start..start + www[start..].find('"').unwrap()].to_string()
    };
    let auth = |cseq: u32, nc: &str| {
        use crate::registrar::digest::{response_hex, Algorithm, QopParams, ResponseParams};
        let nonce = param("nonce");
        let response = response_hex(&ResponseParams {
            algorithm: Algorithm::Md5,
            username: user,
            realm: "softswitch",
            password: pw,
            method: "REGISTER",
            uri: "sip:127.0.0.1:5060",
            nonce: &nonce,
            qop: Some(QopParams {
                qop: "auth",
                nc,
                cnonce: "abc",
            }),
        });
        register(
            user,
            cseq,
            &format!(
                "Authorization: Digest username=\"{user}\",realm=\"softswitch\",nonce=\"{nonce}\",\
uri=\"sip:127.0.0.1:5060\",response=\"{response}\",algorithm=MD5,qop=auth,nc={nc},cnonce=\"abc\",\
opaque=\"{}\"\r\n",
                param("opaque")
            ),
        )
    };
    h.recv_text(B1, &auth(2, "00000001"), 10);
    assert!(
        h.take().is_empty(),
        "nothing is answered before the write is done"
    );
    let (id, cmds) = asked.lock().unwrap().pop().expect("a write was started");
    assert!(matches!(&cmds[..], [Command::PutBinding { aor, .. }] if aor == user));
    // A retransmission meanwhile is absorbed by the transaction.
    h.recv_text(B1, &auth(2, "00000001"), 20);
    assert!(h.take().is_empty());
    h.core.on_written(id, Ok(()), h.at(30));
    let out = h.take();
    assert!(find(&out, B1, |m| is_status(m, 200)).is_some(), "{out:?}");

    // A refresh that changes nothing needs no write: answered at once.
    h.recv_text(B1, &auth(3, "00000002"), 35);
    assert!(find(&h.take(), B1, |m| is_status(m, 200)).is_some());
    assert!(asked.lock().unwrap().is_empty());

    // A failed write answers 503 with Retry-After instead.
    let new_contact = auth(4, "00000003").replace(
        &format!("Contact: <sip:{user}@127.0.0.1:{B1}>"),
        &format!("Contact: <sip:{user}@127.0.0.1:{B2}>"),
    );
    h.recv_text(B1, &new_contact, 40);
    let (id, _) = asked.lock().unwrap().pop().expect("second write");
    h.core.on_written(id, Err("no quorum".into()), h.at(50));
    let out = h.take();
    let r = find(&out, B1, |m| is_status(m, 503)).expect("503");
    assert_eq!(r.headers.get("Retry-After"), Some("5"));
}

fn status(id: u64, leader: Option<u64>) -> consensus::Status {
    consensus::Status {
        id,
        role: if leader == Some(id) {
            consensus::Role::Leader
        } else {
            consensus::Role::Follower
        },
        term: 1,
        leader,
        last_log: None,
        committed: None,
        applied: None,
        snapshot: None,
        purged: None,
        voters: Default::default(),
        members: Default::default(),
        matched: Default::default(),
    }
}

#[test]
fn a_member_without_a_leader_refuses_new_work_and_mirrors_applied_changes() {
    let mut h = Harness::new(&[]);
    let (tx, rx) = watch::channel(status(2, None));
    h.core.follow_cluster(rx);
    // No leader known: new REGISTERs and INVITEs get 503 + Retry-After at once.
    h.recv_text(B1, &register("1002", 1, ""), 0);
    let r = h.take();
    let refused = find(&r, B1, |m| is_status(m, 503)).expect("503");
    assert_eq!(refused.headers.get("Retry-After"), Some("5"));
    h.recv_text(A, &invite("1002", "z9hG4bKnl1"), 10);
    assert!(find(&h.take(), A, |m| is_status(m, 503)).is_some());
    // In-dialog requests are still served (here: 481, no such call).
    let bye = options("", "z9hG4bKnl2")
        .replace("OPTIONS", "BYE")
        .replace("To: <sip:127.0.0.1>", "To: <sip:127.0.0.1>;tag=x");
    h.recv_text(A, &bye, 20);
    assert!(find(&h.take(), A, |m| is_status(m, 481)).is_some());

    // A leader appears (another member): work resumes; a binding that member
    // registered reaches this core through the applied feed, so 1002 can be called.
    tx.send(status(2, Some(1))).unwrap();
    h.core.on_applied(Command::Batch(vec![Command::PutBinding {
        aor: "1002".into(),
        binding: Binding {
            contact: format!("sip:1002@127.0.0.1:{B2}"),
            expires_at: unix_now(SystemTime::now()) + 600,
            q: 1.0,
            call_id: "elsewhere".into(),
            cseq: 1,
            source: udp(B2),
            user_agent: None,
        },
    }]));
    h.recv_text(A, &invite("1002", "z9hG4bKnl3"), 30);
    let out = h.take();
    assert!(
        find(&out, B2, |m| is_req(m, Method::Invite)).is_some(),
        "the INVITE reaches the contact registered through another member: {out:?}"
    );
    // An extension deleted on another member is gone here too.
    h.core.on_applied(Command::RemoveExtension {
        number: "1002".into(),
        expect: Expect::Any,
    });
    h.recv_text(A, &invite("1002", "z9hG4bKnl4"), 40);
    assert!(find(&h.take(), A, |m| is_status(m, 404)).is_some());

    // A snapshot replaces everything: 1002 exists again but has no binding (and the
    // caller 1001 is still trusted by address).
    let ext = |n: &str, trusted: Vec<IpAddr>| Extension {
        number: n.into(),
        name: String::new(),
        password: format!("pw{n}"),
        max_contacts: None,
        trusted_ips: trusted,
    };
    h.core
        .on_replicated(crate::cluster::Applied::Reset(InitialState {
            bindings: vec![],
            extensions: vec![
                ext("1001", vec!["127.0.0.1".parse().unwrap()]),
                ext("1002", vec![]),
            ],
        }));
    h.recv_text(A, &invite("1002", "z9hG4bKnl5"), 50);
    let out = h.take();
    assert!(find(&out, A, |m| is_status(m, 480)).is_some(), "{out:?}");
    assert!(find(&out, B2, |m| is_req(m, Method::Invite)).is_none());
}

#[test]
fn a_leader_without_its_lease_refuses_new_work_until_a_majority_answers_again() {
    let mut h = Harness::new(&[]);
    // The leader lost its lease (no majority heard within it): consensus reports no
    // usable leader although the role is still Leader.
    let cut_off = consensus::Status {
        role: consensus::Role::Leader,
        ..status(1, None)
    };
    assert!(!cut_off.holds_lease());
    let (tx, rx) = watch::channel(cut_off);
    h.core.follow_cluster(rx);
    h.recv_text(B1, &register("1002", 1, ""), 0);
    let out = h.take();
    let refused = find(&out, B1, |m| is_status(m, 503)).expect("503 at once");
    assert_eq!(refused.headers.get("Retry-After"), Some("5"));

    // The majority answers again: the lease is back and so is the service.
    let back = status(1, Some(1));
    assert!(back.holds_lease());
    tx.send(back).unwrap();
    h.recv_text(B1, &register("1002", 2, ""), 10);
    assert!(find(&h.take(), B1, |m| is_status(m, 401)).is_some());
}

#[test]
fn call_records_nobody_waits_for_are_coalesced_into_one_write() {
    let mut h = Harness::new(&[B1, B2]);
    let asked: Asked = Arc::default();
    h.core.persist = Box::new(Deferred(asked.clone()));
    h.recv_text(A, &invite("1002", "z9hG4bKco1"), 0);
    h.recv_text(
        A,
        &invite("1002", "z9hG4bKco2").replace("call-a", "call-b"),
        2,
    );
    assert!(asked.lock().unwrap().is_empty(), "held back for the window");
    assert_eq!(
        h.core.next_deadline(h.at(2)),
        h.at(5),
        "the core wakes when the window of the first record ends"
    );
    h.tick(4);
    assert!(asked.lock().unwrap().is_empty());
    h.tick(5);
    let writes = asked.lock().unwrap().clone();
    assert_eq!(writes.len(), 1, "both calls' records in one write");
    let starts = match &writes[0].1[..] {
        [Command::Batch(cmds)] => cmds.len(),
        cmds => cmds.len(),
    };
    assert_eq!(starts, 2, "{:?}", writes[0].1);
    // Nothing pending: no wake-up for it.
    assert!(h.core.writes_since.is_none());
}

/// The call of [`invite`] answered by B1 and ACKed: returns the caller's 200.
fn answered_call(h: &mut Harness) -> SipMessage {
    h.recv_text(A, &invite("1002", "z9hG4bKinv1"), 0);
    let out = h.take();
    let inv = find(&out, B1, |m| is_req(m, Method::Invite))
        .unwrap()
        .clone();
    h.recv(B1, &answer(&inv, 200, "OK", "b1", B1), 1000);
    let out = h.take();
    let ok = find(&out, A, |m| is_status(m, 200)).unwrap().clone();
    h.recv_text(A, &ack_for(&ok), 1100);
    h.take();
    ok
}

fn take_over(h: &mut Harness, calls: Vec<crate::calls::record::CallRecord>, ms: u64) {
    let (ack, mut done) = tokio::sync::oneshot::channel();
    h.core.on_vip(
        crate::cluster::vip::VipEvent::Acquired { calls, ack },
        h.at(ms),
    );
    assert!(done.try_recv().is_ok(), "the takeover is acknowledged");
}

#[test]
fn an_answered_call_continues_on_the_node_taking_the_vip_over() {
    let mut old = Harness::new(&[B1]);
    let ok = answered_call(&mut old);
    let records = old.calls();
    assert!(records[0].legs.is_some() && records[0].setup.is_none());

    // The VIP moves: the old holder forgets the call without a word or a write ...
    old.core
        .on_vip(crate::cluster::vip::VipEvent::Released, old.at(2000));
    old.tick(40_000);
    assert!(old.take().is_empty(), "the old holder sends nothing more");
    assert!(old.cdrs().is_empty(), "and writes no CDR");

    // ... and the new one answers the caller's BYE and hangs the callee up.
    let mut new = Harness::new(&[B1]);
    take_over(&mut new, records.clone(), 0);
    let bye = format!(
        "BYE sip:1002@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{A};branch=z9hG4bKbye9;rport\r\n\
From: \"Alice\" <sip:1001@127.0.0.1>;tag=atag\r\nTo: {}\r\nCall-ID: call-a\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\n\r\n",
        ok.headers.get("To").unwrap()
    );
    new.recv_text(A, &bye, 3000);
    let out = new.take();
    assert!(
        find(&out, A, |m| is_status(m, 200)).is_some(),
        "200 to the BYE"
    );
    let b_bye = find(&out, B1, |m| is_req(m, Method::Bye)).expect("BYE to the callee");
    let legs = records[0].legs.as_ref().unwrap();
    assert_eq!(b_bye.call_id(), Some(legs.b.dialog.call_id.as_str()));
    assert_eq!(b_bye.to_tag().as_deref(), Some("b1"));
    let (cseq, _) = b_bye.cseq().unwrap();
    assert!(
        cseq > legs.b.dialog.local_seq + 999,
        "our CSeq jumped: {cseq}"
    );
    new.recv(B1, &b_bye.response(200, "OK"), 3010);
    let cdrs = new.cdrs();
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].disposition, Disposition::Answered);
    assert_eq!(
        cdrs[0].start, records[0].start,
        "the CDR starts when the call did"
    );
    assert_eq!(cdrs[0].answer, records[0].answer);
    assert_eq!(cdrs[0].hangup_by.as_deref(), Some("caller"));
    assert!(new.calls().is_empty());
}

#[test]
fn a_ringing_call_ends_cleanly_when_the_vip_moves() {
    let mut old = Harness::new(&[B1, B2]);
    old.recv_text(A, &invite("1002", "z9hG4bKinv1"), 0);
    let out = old.take();
    let inv1 = find(&out, B1, |m| is_req(m, Method::Invite))
        .unwrap()
        .clone();
    old.recv(B1, &answer(&inv1, 180, "Ringing", "b1", B1), 100);
    let ringing = find(&old.take(), A, |m| is_status(m, 180)).unwrap().clone();
    let records = old.calls();
    let setup = records[0]
        .setup
        .as_ref()
        .expect("a ringing call keeps its setup");
    assert_eq!(setup.forks.len(), 2);

    let mut new = Harness::new(&[B1, B2]);
    take_over(&mut new, records.clone(), 0);
    new.core.commit(new.at(0));
    let out = new.take();
    let r = find(&out, A, |m| is_status(m, 503)).expect("503 to the caller");
    assert_eq!(
        r.to_tag(),
        ringing.to_tag(),
        "in the dialog the caller knows"
    );
    assert_eq!(r.headers.get("Retry-After"), Some("1"));
    assert_eq!(r.call_id(), Some("call-a"));
    let cancel = find(&out, B1, |m| is_req(m, Method::Cancel)).expect("CANCEL to B1");
    assert_eq!(
        cancel.branch(),
        inv1.branch(),
        "CANCEL matches the fork's INVITE"
    );
    assert!(find(&out, B2, |m| is_req(m, Method::Cancel)).is_some());
    // The caller's ACK ends the retransmissions; the fork's 487 is acknowledged.
    let ack = format!(
        "ACK sip:1002@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{A};branch=z9hG4bKinv1;rport\r\n\
From: \"Alice\" <sip:1001@127.0.0.1>;tag=atag\r\nTo: {}\r\nCall-ID: call-a\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n\r\n",
        r.headers.get("To").unwrap()
    );
    new.recv_text(A, &ack, 100);
    new.recv(B1, &answer(&inv1, 487, "Request Terminated", "b1", B1), 120);
    let out = new.take();
    assert!(
        find(&out, B1, |m| is_req(m, Method::Ack)).is_some(),
        "487 ACKed"
    );
    new.tick(5_000);
    assert!(
        find(&new.take(), A, |m| is_status(m, 503)).is_none(),
        "no retransmission after the ACK"
    );
    let cdrs = new.cdrs();
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].disposition, Disposition::Failed);
    assert_eq!(cdrs[0].hangup_cause, "node_failover");
    assert!(new.calls().is_empty());
}
