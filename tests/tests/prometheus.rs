//! A real Prometheus server scraping a three-member cluster (each member in its own
//! network namespace, its admin listener on <host ip>:8060): after registrations through
//! one member, Prometheus' query API finds exactly one leader (the one `switchctl
//! cluster status` names), the registered contacts on every member, and the REGISTER
//! counter risen. A scraped `/metrics` body also passes `promtool check metrics`.
//!
//! A second cluster carries SIPp calls through one member: Prometheus then finds, on
//! that member and on no other, the call counters (attempts, answers, ends, setup times)
//! risen by exactly the calls made and the INVITE/ACK/BYE requests and their responses
//! by at least what the calls carried; the active calls and relay sessions seen during
//! the calls; and both gauges back at 0 after.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::cluster::{form_cluster, register_from_gateway, status};
use tests::netns::Lab;
use tests::{
    eventually, free_port, http_get, run_bounded, scenario, stop_child, udp_bound_on, Node,
    NodeOpts, Sipp, Value,
};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// A Prometheus server, stopped (TERM, then KILL) when dropped, even on a failed test.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every second, its storage in `dir`.
    fn start(dir: &Path, targets: &[String]) -> Prometheus {
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: softswitch\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = tests::die_with_parent(
            Command::new(PROMETHEUS)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .spawn()
        .expect("prometheus starts (Debian package `prometheus`)");
        let p = Prometheus { child, addr };
        eventually(Duration::from_secs(30), "Prometheus ready", || {
            matches!(http_get(p.addr, "/-/ready"), Ok((200, _)))
        });
        p
    }

    /// The result vector of an instant query.
    fn query(&self, q: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(q));
        let Ok((200, body)) = http_get(self.addr, &path) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of a query with one series as a number; `None` without one.
    fn scalar(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        match r.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `promtool check metrics` on a `/metrics` body.
fn promtool_check(body: &str, dir: &Path) {
    let path = dir.join("metrics.txt");
    std::fs::write(&path, body).unwrap();
    let (st, out, err) = run_bounded(
        Command::new("sh")
            .arg("-c")
            .arg(format!("{PROMTOOL} check metrics < {}", path.display())),
        dir,
        "promtool",
        Duration::from_secs(30),
    )
    .expect("promtool runs (Debian package `prometheus`)");
    assert!(
        st.is_some_and(|s| s.success()),
        "promtool check metrics: {out}\n{err}\n{body}"
    );
}

#[test]
fn prometheus_scrapes_a_cluster_and_finds_its_leader_and_registrations() {
    let lab = Lab::create(3).expect("lab");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let members = form_cluster(&lab, 3, dir, NodeOpts::default());

    // Every member serves a valid exposition.
    for m in &members {
        let (code, body) = http_get(m.admin, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("softswitch_up{"), "{body}");
        promtool_check(&body, dir);
    }

    let targets: Vec<String> = members.iter().map(|m| m.admin.to_string()).collect();
    let prom = Prometheus::start(dir, &targets);
    eventually(Duration::from_secs(30), "all three targets up", || {
        prom.scalar("count(up == 1)") == Some(3.0)
    });
    let registers = "sum(softswitch_sip_requests_total{method=\"REGISTER\"})";
    eventually(
        Duration::from_secs(30),
        "a REGISTER count from all three",
        || prom.scalar("count(softswitch_sip_requests_total{method=\"REGISTER\"})") == Some(3.0),
    );
    let before = prom.scalar(registers).expect("REGISTER count");

    // Phones register through the second member.
    let users = ["1001", "1002", "1003"];
    for u in users {
        let r = register_from_gateway(&lab, &members[1], u, "register.xml");
        assert!(r.ok(), "REGISTER {u}\n{}", r.describe());
    }

    // One leader, the one switchctl names.
    let leader = status(members[0].admin, dir)["leader"]["id"]
        .as_u64()
        .expect("a leader")
        .to_string();
    eventually(
        Duration::from_secs(30),
        "exactly one softswitch_raft_is_leader == 1, the leader's",
        || {
            let r = prom.query("softswitch_raft_is_leader == 1");
            r.len() == 1 && r[0]["metric"]["node"].as_str() == Some(leader.as_str())
        },
    );
    // Every member mirrors the bindings.
    eventually(
        Duration::from_secs(30),
        "softswitch_registered_contacts >= 3 on every member",
        || {
            prom.query("softswitch_registered_contacts").len() == 3
                && prom
                    .scalar("min(softswitch_registered_contacts)")
                    .is_some_and(|v| v >= users.len() as f64)
        },
    );
    // Each registration is a challenge and an authenticated REGISTER.
    eventually(Duration::from_secs(30), "the REGISTER counter rose", || {
        prom.scalar(registers)
            .is_some_and(|v| v >= before + users.len() as f64)
    });
    eventually(
        Duration::from_secs(30),
        "registrations counted as ok",
        || {
            prom.scalar("sum(softswitch_registrations_total{result=\"ok\"})")
                .is_some_and(|v| v >= users.len() as f64)
        },
    );
    // The bindings went through Raft: their commits were timed.
    eventually(Duration::from_secs(30), "commit latencies recorded", || {
        prom.scalar("sum(softswitch_raft_commit_seconds_count)")
            .is_some_and(|v| v > 0.0)
    });
    // The follower lag is the leader's alone, one series per follower.
    let lag = prom.query("softswitch_raft_follower_lag");
    assert!(
        lag.len() == 2
            && lag
                .iter()
                .all(|s| s["metric"]["node"].as_str() == Some(leader.as_str())),
        "{lag:?}"
    );

    // After traffic too (responses by code, histograms filled), the exposition is valid.
    let (_, body) = http_get(members[1].admin, "/metrics").expect("GET /metrics");
    assert!(
        body.contains("softswitch_sip_responses_total{") && body.contains("code=\"401\""),
        "{body}"
    );
    promtool_check(&body, dir);
}

const CALLER: &str = "1001";
const CALLEE: &str = "1002";
/// Calls the test makes.
const CALLS: u32 = 3;
/// How long each call is held (SIPp `-d`, ms): several scrapes see it in progress.
const HOLD_MS: u32 = 3000;

/// Registers `user` (password `pw<user>`) with `member` from the test's own namespace,
/// bound to the bridge address and `port`, where a SIPp agent then answers for it.
fn register_at(lab: &Lab, member: &Node, user: &str, port: u16) {
    let r = Sipp::new(&format!("reg-{user}"), scenario("register.xml"))
        .remote(member.addr)
        .local_ip(lab.gateway)
        .local_port(port)
        .registering(user)
        .run()
        .expect("sipp runs");
    assert!(r.ok(), "REGISTER {user}\n{}", r.describe());
}

/// A counter the calls move, and by how much.
struct Rise {
    what: &'static str,
    selector: &'static str,
    by: u32,
    /// Exactly `by` (call counters), or at least (SIP messages: a retransmission counts).
    exact: bool,
}

#[test]
fn prometheus_finds_the_call_counters_of_sipp_calls_through_a_member() {
    let lab = Lab::create(3).expect("lab");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let members = form_cluster(&lab, 3, dir, NodeOpts::default());
    let targets: Vec<String> = members.iter().map(|m| m.admin.to_string()).collect();
    let prom = Prometheus::start(dir, &targets);
    eventually(
        Duration::from_secs(30),
        "the call series of all three members scraped",
        || prom.scalar("count(softswitch_call_attempts_total)") == Some(3.0),
    );

    // The calls go through the second member (a follower).
    let through = &members[1];
    let on = format!("instance=\"{}\"", through.admin);
    let off = format!("instance!=\"{}\"", through.admin);
    // A selector's sum on the member, or on the others; 0 while absent (a response code
    // is exposed once first sent).
    let sum = |selector: &str, instance: &str| -> Option<f64> {
        let q = match selector.strip_suffix('}') {
            Some(s) => format!("{s},{instance}}}"),
            None => format!("{selector}{{{instance}}}"),
        };
        prom.scalar(&format!("sum({q}) or vector(0)"))
    };
    let n = CALLS;
    let rises = [
        Rise {
            what: "call attempts",
            selector: "softswitch_call_attempts_total",
            by: n,
            exact: true,
        },
        Rise {
            what: "answered calls",
            selector: "softswitch_calls_answered_total",
            by: n,
            exact: true,
        },
        Rise {
            what: "calls ended ANSWERED",
            selector: "softswitch_calls_ended_total{disposition=\"ANSWERED\"}",
            by: n,
            exact: true,
        },
        Rise {
            what: "call setups timed",
            selector: "softswitch_call_setup_seconds_count",
            by: n,
            exact: true,
        },
        Rise {
            what: "INVITEs (challenged, then authenticated)",
            selector: "softswitch_sip_requests_total{method=\"INVITE\"}",
            by: 2 * n,
            exact: false,
        },
        Rise {
            what: "ACKs (of the 407, of the 200)",
            selector: "softswitch_sip_requests_total{method=\"ACK\"}",
            by: 2 * n,
            exact: false,
        },
        Rise {
            what: "BYEs",
            selector: "softswitch_sip_requests_total{method=\"BYE\"}",
            by: n,
            exact: false,
        },
        Rise {
            what: "407 to INVITE",
            selector: "softswitch_sip_responses_total{method=\"INVITE\",code=\"407\"}",
            by: n,
            exact: false,
        },
        Rise {
            what: "200 to INVITE",
            selector: "softswitch_sip_responses_total{method=\"INVITE\",code=\"200\"}",
            by: n,
            exact: false,
        },
        Rise {
            what: "200 to BYE",
            selector: "softswitch_sip_responses_total{method=\"BYE\",code=\"200\"}",
            by: n,
            exact: false,
        },
    ];

    // Caller and callee register through that member, from the test's namespace.
    let (caller_port, callee_port) = (free_port(), free_port());
    register_at(&lab, through, CALLER, caller_port);
    register_at(&lab, through, CALLEE, callee_port);
    eventually(
        Duration::from_secs(30),
        "both contacts registered on the member",
        || {
            prom.scalar(&format!("softswitch_registered_contacts{{{on}}}"))
                .is_some_and(|v| v >= 2.0)
        },
    );

    // Before: no call in progress anywhere; the counters as they are.
    let idle = |gauge: &str| {
        prom.scalar(&format!("count({gauge})")) == Some(3.0)
            && prom.scalar(&format!("max({gauge})")) == Some(0.0)
    };
    assert!(idle("softswitch_calls_active"), "a call before the test's");
    assert!(idle("softswitch_media_sessions"), "a relay session before");
    let before: Vec<(f64, f64)> = rises
        .iter()
        .map(|r| {
            let on = sum(r.selector, &on).unwrap_or_else(|| panic!("{} before", r.what));
            let off = sum(r.selector, &off).unwrap_or_else(|| panic!("{} before", r.what));
            (on, off)
        })
        .collect();

    // The calls: the callee answers each, the caller hangs up after HOLD_MS.
    let started = Instant::now();
    let uas = Sipp::new("uas-answer", scenario("uas-answer.xml"))
        .local_ip(lab.gateway)
        .local_port(callee_port)
        .args(["-s", CALLEE])
        .calls(CALLS)
        .timeout_s(60)
        .spawn()
        .expect("sipp runs");
    let bound = Instant::now() + Duration::from_secs(5);
    while !udp_bound_on(lab.gateway, callee_port) {
        assert!(Instant::now() < bound, "the UAS did not bind {callee_port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let addr = through.addr.to_string();
    let uac = Sipp::new("uac-call", scenario("uac-call.xml"))
        .dialling(&addr, CALLEE, CALLER)
        .local_ip(lab.gateway)
        .local_port(caller_port)
        .args(["-d", &HOLD_MS.to_string()])
        .calls(CALLS)
        .timeout_s(60)
        .run()
        .expect("sipp runs");
    assert!(uac.ok(), "{CALLS} answered calls\n{}", uac.describe());
    let u = uas.wait();
    assert!(
        u.ok(),
        "the callee answered {CALLS} calls\n{}",
        u.describe()
    );
    eprintln!("[prometheus] {CALLS} calls in {:?}", started.elapsed());

    // Prometheus finds each counter risen on the member by what the calls made, and
    // the other members' unchanged.
    for (r, (on_before, off_before)) in rises.iter().zip(before) {
        let want = on_before + f64::from(r.by);
        let mut now = on_before;
        eventually(Duration::from_secs(30), r.what, || {
            now = sum(r.selector, &on).unwrap_or(on_before);
            now >= want
        });
        if r.exact {
            assert_eq!(now, want, "{}: {} before, {CALLS} calls", r.what, on_before);
        }
        let others = sum(r.selector, &off).expect("the other members' count");
        assert_eq!(
            others, off_before,
            "{} on members the calls avoided",
            r.what
        );
    }
    // The setup times were measured (a local answer takes milliseconds, not seconds).
    let setup = prom
        .scalar(&format!("sum(softswitch_call_setup_seconds_sum{{{on}}})"))
        .expect("setup time sum");
    assert!(
        setup > 0.0 && setup < f64::from(CALLS) * 5.0,
        "call setup seconds sum {setup}"
    );

    // During the calls Prometheus saw them in progress, and relay sessions open for
    // them (never more than the calls made); now both are back at 0 everywhere.
    for gauge in ["softswitch_calls_active", "softswitch_media_sessions"] {
        let peak = prom
            .scalar(&format!("max_over_time({gauge}{{{on}}}[10m])"))
            .expect("a peak");
        assert!(
            (1.0..=f64::from(CALLS)).contains(&peak),
            "{gauge} peaked at {peak} during {CALLS} calls"
        );
        eventually(
            Duration::from_secs(30),
            &format!("{gauge} back at 0"),
            || idle(gauge),
        );
    }
}
