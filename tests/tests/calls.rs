//! Calls through the B2BUA between two SIPp agents registered as extensions 1001 (caller)
//! and 1002 (callee), with the CDR checked after each call through `switchctl cdr list`.
//!
//! Each agent first registers from its own port (register.xml), then the UAS / UAC scenario
//! runs from that same port, so the node reaches the callee at the registered contact.

use std::time::Duration;
use tests::*;

const CALLER: &str = "1001";
const CALLEE: &str = "1002";

struct Setup {
    node: Node,
    caller_port: u16,
    callee_port: u16,
}

fn setup(opts: NodeOpts, register_callee: bool) -> Setup {
    let node = Node::start(opts).expect("start softswitch");
    let caller_port = free_port();
    let callee_port = free_port();
    sipp_register(&node, CALLER, caller_port);
    if register_callee {
        sipp_register(&node, CALLEE, callee_port);
    }
    Setup {
        node,
        caller_port,
        callee_port,
    }
}

fn uas(s: &Setup, scn: &str, pause_ms: u32) -> SippProc {
    let mut p = Sipp::new(scn.trim_end_matches(".xml"), scenario(scn))
        .local_port(s.callee_port)
        .args(["-s", CALLEE, "-d", &pause_ms.to_string()])
        .timeout_s(30)
        .spawn()
        .unwrap();
    assert!(
        p.wait_bound(s.callee_port, Duration::from_secs(5)),
        "UAS sipp did not bind its port"
    );
    p
}

fn uac(s: &Setup, scn: &std::path::Path, dialled: &str, pause_ms: u32) -> SippResult {
    let addr = s.node.addr.to_string();
    Sipp::new("uac", scn)
        .dialling(&addr, dialled, CALLER)
        .local_port(s.caller_port)
        .args(["-d", &pause_ms.to_string()])
        .timeout_s(30)
        .run()
        .unwrap()
}

/// uac-reject.xml with its expected final response code filled in.
fn reject_scenario(code: u16) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(scenario("uac-reject.xml"))
        .unwrap()
        .replace("@CODE@", &code.to_string());
    let p = dir.path().join(format!("uac-reject-{code}.xml"));
    std::fs::write(&p, text).unwrap();
    (dir, p)
}

/// The one CDR of this test's call (waits up to 10 s for it to appear).
fn the_cdr(node: &Node, callee: &str) -> Value {
    let list = node
        .wait_cdrs(Duration::from_secs(10), |l| {
            l.iter().any(|c| {
                c["callee"]
                    .as_str()
                    .map(|s| s.contains(callee))
                    .unwrap_or(false)
            })
        })
        .expect("switchctl cdr list");
    let mine: Vec<&Value> = list
        .iter()
        .filter(|c| {
            c["callee"]
                .as_str()
                .map(|s| s.contains(callee))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "expected exactly one CDR for callee {callee}, got: {list:#?}"
    );
    mine[0].clone()
}

fn check_cdr(cdr: &Value, disposition: &str, callee: &str, causes: &[&str]) {
    assert_eq!(
        cdr["disposition"].as_str(),
        Some(disposition),
        "disposition: {cdr:#}"
    );
    assert!(
        cdr["caller"]
            .as_str()
            .map(|s| s.contains(CALLER))
            .unwrap_or(false),
        "caller: {cdr:#}"
    );
    assert!(
        cdr["callee"]
            .as_str()
            .map(|s| s.contains(callee))
            .unwrap_or(false),
        "callee: {cdr:#}"
    );
    assert!(
        cdr["call_id"]
            .as_str()
            .map(|s| !s.is_empty())
            .unwrap_or(false),
        "call_id: {cdr:#}"
    );
    assert!(
        cdr["start"].is_string() && cdr["end"].is_string(),
        "start/end: {cdr:#}"
    );
    let dur = cdr["duration"].as_i64().expect("duration integer");
    let bill = cdr["billsec"].as_i64().expect("billsec integer");
    assert!(
        dur >= bill && bill >= 0,
        "duration {dur} < billsec {bill}: {cdr:#}"
    );
    if disposition == "ANSWERED" {
        assert!(
            cdr["answer"].is_string(),
            "answered call without answer time: {cdr:#}"
        );
    } else {
        assert!(
            cdr["answer"].is_null(),
            "unanswered call with answer time: {cdr:#}"
        );
        assert_eq!(bill, 0, "unanswered call with billsec: {cdr:#}");
    }
    // causes are checked loosely: a non-empty string mentioning one of the expected words
    let cause = cdr["hangup_cause"]
        .as_str()
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(!cause.is_empty(), "no hangup_cause: {cdr:#}");
    assert!(
        causes.iter().any(|c| cause.contains(c)),
        "hangup_cause {cause:?} is none of {causes:?}: {cdr:#}"
    );
}

/// Full call, the caller hangs up after 2 s.
#[test]
fn call_answered_caller_hangs_up() {
    let s = setup(NodeOpts::default(), true);
    let callee = uas(&s, "uas-answer.xml", 0);
    let r = uac(&s, &scenario("uac-call.xml"), CALLEE, 2000);
    let u = callee.wait();
    assert!(r.ok(), "UAC: {}", r.describe());
    assert!(u.ok(), "UAS: {}", u.describe());
    // B2BUA: the callee leg has its own Call-ID
    let uac_cid = header(
        &r.sip_messages()
            .into_iter()
            .find(|m| m.starts_with("INVITE"))
            .unwrap(),
        &["Call-ID", "i"],
    )
    .unwrap()
    .to_string();
    let uas_invite = u
        .sip_messages()
        .into_iter()
        .find(|m| m.starts_with("INVITE"))
        .expect("UAS got no INVITE");
    let uas_cid = header(&uas_invite, &["Call-ID", "i"]).unwrap().to_string();
    assert_ne!(
        uac_cid, uas_cid,
        "callee leg reuses the caller's Call-ID: not a B2BUA"
    );
    let cdr = the_cdr(&s.node, CALLEE);
    check_cdr(&cdr, "ANSWERED", CALLEE, &["normal"]);
    assert!(
        cdr["billsec"].as_i64().unwrap() >= 2,
        "billsec < 2 s pause: {cdr:#}"
    );
}

/// Full call, the callee hangs up after 2 s (BYE from the UAS along the dialog's route).
#[test]
fn call_answered_callee_hangs_up() {
    let s = setup(NodeOpts::default(), true);
    let callee = uas(&s, "uas-hangup.xml", 2000);
    let r = uac(&s, &scenario("uac-wait-bye.xml"), CALLEE, 0);
    let u = callee.wait();
    assert!(r.ok(), "UAC: {}", r.describe());
    assert!(u.ok(), "UAS: {}", u.describe());
    let cdr = the_cdr(&s.node, CALLEE);
    check_cdr(&cdr, "ANSWERED", CALLEE, &["normal"]);
    assert!(
        cdr["billsec"].as_i64().unwrap() >= 2,
        "billsec < 2 s pause: {cdr:#}"
    );
}

/// The caller cancels while the callee rings: 200 for the CANCEL, 487 for the INVITE.
#[test]
fn call_cancelled_before_answer() {
    let s = setup(NodeOpts::default(), true);
    let callee = uas(&s, "uas-ring.xml", 0);
    let r = uac(&s, &scenario("uac-cancel.xml"), CALLEE, 0);
    let u = callee.wait();
    assert!(r.ok(), "UAC: {}", r.describe());
    assert!(
        u.ok(),
        "UAS (expects the node to CANCEL the callee leg): {}",
        u.describe()
    );
    let cdr = the_cdr(&s.node, CALLEE);
    check_cdr(&cdr, "CANCELLED", CALLEE, &["cancel"]);
}

/// The callee answers 486: the caller gets 486.
#[test]
fn call_busy() {
    let s = setup(NodeOpts::default(), true);
    let callee = uas(&s, "uas-busy.xml", 0);
    let (_d, scn) = reject_scenario(486);
    let r = uac(&s, &scn, CALLEE, 0);
    let u = callee.wait();
    assert!(r.ok(), "UAC: {}", r.describe());
    assert!(u.ok(), "UAS: {}", u.describe());
    let cdr = the_cdr(&s.node, CALLEE);
    check_cdr(&cdr, "BUSY", CALLEE, &["busy"]);
}

/// Unknown number: 404 (no callee agent).
#[test]
fn call_unknown_number_404() {
    let s = setup(NodeOpts::default(), false);
    let (_d, scn) = reject_scenario(404);
    let r = uac(&s, &scn, "5999", 0);
    assert!(r.ok(), "UAC: {}", r.describe());
    let cdr = the_cdr(&s.node, "5999");
    check_cdr(
        &cdr,
        "FAILED",
        "5999",
        &["unallocated", "no_route", "not_found", "unknown"],
    );
}

/// Known but unregistered extension: 480.
#[test]
fn call_unregistered_extension_480() {
    let s = setup(NodeOpts::default(), false);
    let (_d, scn) = reject_scenario(480);
    let r = uac(&s, &scn, CALLEE, 0);
    assert!(r.ok(), "UAC: {}", r.describe());
    let cdr = the_cdr(&s.node, CALLEE);
    let disp = cdr["disposition"].as_str().unwrap_or("").to_string();
    assert!(
        disp == "FAILED" || disp == "NO ANSWER",
        "disposition: {cdr:#}"
    );
    check_cdr(
        &cdr,
        &disp,
        CALLEE,
        &[
            "unavailable",
            "not_registered",
            "no_answer",
            "unregistered",
            "subscriber_absent",
            "no_user",
        ],
    );
}

/// The callee rings and never answers: after ring_timeout_secs (3) the node cancels the
/// callee leg and answers the caller 480.
#[test]
fn call_ring_timeout_480() {
    let s = setup(
        NodeOpts {
            ring_timeout_secs: 3,
            ..NodeOpts::default()
        },
        true,
    );
    let callee = uas(&s, "uas-ring.xml", 0);
    let (_d, scn) = reject_scenario(480);
    let r = uac(&s, &scn, CALLEE, 0);
    let u = callee.wait();
    assert!(r.ok(), "UAC: {}", r.describe());
    assert!(
        u.ok(),
        "UAS (expects the node to CANCEL the callee leg): {}",
        u.describe()
    );
    let cdr = the_cdr(&s.node, CALLEE);
    check_cdr(&cdr, "NO ANSWER", CALLEE, &["no_answer", "timeout"]);
}

/// `max_calls` bounds *simultaneous* calls: with max_calls = 2, four calls one after the
/// other (never more than one live) must all be connected; ended calls must not keep
/// counting against the limit (e.g. while their transactions wait out RFC 3261 timers).
#[test]
fn sequential_calls_do_not_exhaust_max_calls() {
    let s = setup(
        NodeOpts {
            max_calls: Some(2),
            ..NodeOpts::default()
        },
        true,
    );
    let addr = s.node.addr.to_string();
    let callee = Sipp::new("uas-answer", scenario("uas-answer.xml"))
        .local_port(s.callee_port)
        .args(["-s", CALLEE])
        .calls(4)
        .timeout_s(25)
        .spawn()
        .unwrap();
    let mut callee = callee;
    assert!(
        callee.wait_bound(s.callee_port, Duration::from_secs(5)),
        "UAS sipp did not bind its port"
    );
    // one call every 2 s, each held 300 ms: at most one live call at any time
    let r = Sipp::new("uac-seq", scenario("uac-call.xml"))
        .dialling(&addr, CALLEE, CALLER)
        .local_port(s.caller_port)
        .args(["-d", "300", "-r", "1", "-rp", "2000", "-l", "1"])
        .calls(4)
        .timeout_s(25)
        .run()
        .unwrap();
    let u = callee.wait();
    assert!(
        r.ok(),
        "UAC (4 sequential calls, max_calls = 2): {}",
        r.describe()
    );
    assert!(u.ok(), "UAS: {}", u.describe());
    let list = s
        .node
        .wait_cdrs(Duration::from_secs(10), |l| {
            l.iter().filter(|c| c["disposition"] == "ANSWERED").count() >= 4
        })
        .expect("switchctl cdr list");
    let answered = list
        .iter()
        .filter(|c| c["disposition"] == "ANSWERED")
        .count();
    assert_eq!(answered, 4, "CDRs: {list:#?}");
}
