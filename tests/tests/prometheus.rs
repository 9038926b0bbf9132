//! A real Prometheus server scraping a three-member cluster (each member in its own
//! network namespace, its admin listener on <host ip>:8060): after registrations through
//! one member, Prometheus' query API finds exactly one leader (the one `switchctl
//! cluster status` names), the registered contacts on every member, and the REGISTER
//! counter risen. A scraped `/metrics` body also passes `promtool check metrics`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::cluster::{form_cluster, register_from_gateway, status};
use tests::netns::Lab;
use tests::{free_port, http_get, run_bounded, stop_child, NodeOpts, Value};

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

/// Polls `check` every 250 ms until it holds, failing with `what` after `limit`.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
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
