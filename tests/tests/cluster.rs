//! A three-member cluster, each member in its own network namespace on a bridge:
//! formed with `switchctl` (a token from the first member, an offline join from inside
//! each new member's namespace), and a REGISTER through one member visible in another
//! member's replicated state.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::netns::Lab;
use tests::{http_get, run_bounded, scenario, switchctl_bin, Node, NodeOpts, Sipp, Value};

const LIMIT: Duration = Duration::from_secs(60);

fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok((200, _)) = http_get(admin, "/readyz") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("member at {admin} never became ready");
}

/// Runs `cmd` (switchctl) bounded; returns stdout, failing the test on a non-zero exit.
fn ok(cmd: &mut Command, dir: &Path, tag: &str) -> String {
    let (st, out, err) = run_bounded(cmd, dir, tag, LIMIT).expect("switchctl runs");
    assert!(st.is_some_and(|s| s.success()), "{tag}: {out}\n{err}");
    out
}

#[test]
fn three_members_form_with_switchctl_and_share_registrations() {
    let lab = Lab::create(3).expect("lab");
    let first = Node::start(NodeOpts {
        host: Some(lab.hosts[0].clone()),
        ..Default::default()
    })
    .expect("first member");
    wait_ready(first.admin);
    let work = tempfile::tempdir().unwrap();
    let mut members = vec![first];
    for i in 1..3 {
        let admin = members[0].admin.to_string();
        let token = ok(
            Command::new(switchctl_bin()).args(["--admin", &admin, "cluster", "token"]),
            work.path(),
            &format!("token{i}"),
        );
        let data = work.path().join(format!("data{i}"));
        let ip = lab.ip(i);
        // From inside the new member's namespace, so it enrolls from its own address.
        ok(
            lab.command(i, switchctl_bin()).args([
                "cluster",
                "join",
                token.trim(),
                "--data-dir",
                data.to_str().unwrap(),
                "--raft-addr",
                &format!("{ip}:7000"),
                "--admin-addr",
                &format!("{ip}:8060"),
            ]),
            work.path(),
            &format!("join{i}"),
        );
        let node = Node::start(NodeOpts {
            host: Some(lab.hosts[i].clone()),
            data_dir: Some(data),
            bootstrap: false,
            ..Default::default()
        })
        .expect("joined member");
        wait_ready(node.admin);
        members.push(node);
    }

    // Three voters, whichever member is asked.
    for m in &members {
        let out = ok(
            Command::new(switchctl_bin()).args([
                "--admin",
                &m.admin.to_string(),
                "--output",
                "json",
                "cluster",
                "status",
            ]),
            work.path(),
            "status",
        );
        let v: Value = serde_json::from_str(&out).expect("JSON status");
        let voters = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "voter")
            .count();
        assert_eq!(voters, 3, "{out}");
    }

    // A phone registers through the first member (SIPp in the test's namespace, bound
    // to the bridge address) ...
    let r = Sipp::new("cluster-register", scenario("register.xml"))
        .remote(members[0].addr)
        .local_ip(lab.gateway)
        .local_port(tests::free_port())
        .args(["-s", "1001", "-au", "1001", "-ap", "pw1001"])
        .key("expires", "3600")
        .run()
        .unwrap();
    assert!(r.ok(), "{}", r.describe());

    // ... and the third member has the binding in its replicated state.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ok(
            Command::new(switchctl_bin()).args([
                "registrations",
                "list",
                "--data-dir",
                members[2].data_dir.to_str().unwrap(),
            ]),
            work.path(),
            "registrations",
        );
        if out.contains("\"aor\":\"1001\"") {
            break;
        }
        assert!(Instant::now() < deadline, "binding not replicated: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
