//! `switchctl cluster ...` against real nodes over their admin HTTP API, and an
//! offline join of a second node.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::{
    die_with_parent, free_port, http_get, run_bounded, softswitch_bin, stop_child, switchctl_bin,
    Node, NodeOpts, Value,
};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs switchctl against `admin`; returns (exit code, stdout, stderr).
fn switchctl(dir: &Path, tag: &str, admin: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(switchctl_bin());
    cmd.arg("--admin").arg(admin).args(args);
    if let Some(t) = admin.parse().ok().and_then(tests::admin_token_for) {
        cmd.env("SWITCHCTL_TOKEN", t);
    }
    let (st, out, err) = run_bounded(&mut cmd, dir, tag, LIMIT).unwrap();
    (st.and_then(|s| s.code()).unwrap_or(-1), out, err)
}

/// A softswitch started on a data dir that `switchctl cluster join` prepared.
struct Joined {
    child: Child,
}

impl Drop for Joined {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

fn start_joined(dir: &Path, raft: SocketAddr, admin: SocketAddr) -> Joined {
    let sip = free_port();
    let toml = format!(
        "[node]\ndata_dir = \"{}\"\n\n[sip]\nudp = [\"127.0.0.1:{sip}\"]\ntcp = []\n\
         advertised_host = \"127.0.0.1\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [cluster]\nbootstrap = false\nraft_listen = \"{raft}\"\n",
        dir.join("data").display()
    );
    let cfg = dir.join("node2.toml");
    std::fs::write(&cfg, toml).unwrap();
    let log = std::fs::File::create(dir.join("node2.log")).unwrap();
    let child = die_with_parent(
        Command::new(softswitch_bin())
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .spawn()
    .unwrap();
    let joined = Joined { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = http_get(admin, "/readyz") {
            return joined;
        }
        assert!(
            Instant::now() < deadline,
            "joined node not ready: {}",
            std::fs::read_to_string(dir.join("node2.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_ready(admin: SocketAddr) {
    tests::wait_admin_ready(admin, Duration::from_secs(20));
}

#[test]
fn status_token_and_offline_join() {
    let node = Node::start(NodeOpts::default()).expect("node");
    wait_ready(node.admin);
    let admin = node.admin.to_string();
    let dir = node.dir.clone();

    let (code, out, err) = switchctl(&dir, "status", &admin, &["cluster", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ROLE") && out.contains("voter"), "{out}");
    assert!(
        out.contains(&format!("leader:    1 (admin {admin})")),
        "{out}"
    );

    let (code, out, err) = switchctl(
        &dir,
        "status-json",
        &admin,
        &["--output", "json", "cluster", "status"],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["id"], 1);
    assert_eq!(v["role"], "leader");
    assert_eq!(v["leader"]["id"], 1);
    assert_eq!(v["members"][0]["role"], "voter");

    let (code, token, err) = switchctl(&dir, "token", &admin, &["cluster", "token", "--ttl", "5m"]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    assert!(token.starts_with("ssjoin1."), "{token}");

    // A second node joins offline with the token, then starts on that data dir.
    let tmp = tempfile::tempdir().unwrap();
    let raft = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin2 = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let data = tmp.path().join("data");
    let (code, out, err) = switchctl(
        tmp.path(),
        "join",
        &admin,
        &[
            "cluster",
            "join",
            &token,
            "--data-dir",
            data.to_str().unwrap(),
            "--raft-addr",
            &raft.to_string(),
            "--admin-addr",
            &admin2.to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Joined as node 2"), "{out}");
    // The tokens are replicated: the first member's works on the second too.
    tests::set_admin_token(admin2, &node.admin_token().expect("admin token"));
    let _second = start_joined(tmp.path(), raft, admin2);

    // Both are voters, whichever node is asked.
    for a in [admin.clone(), admin2.to_string()] {
        let (code, out, err) = switchctl(
            &dir,
            "status-two",
            &a,
            &["--output", "json", "cluster", "status"],
        );
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).expect("JSON");
        let members = v["members"].as_array().unwrap();
        assert_eq!(members.len(), 2, "{out}");
        assert!(members.iter().all(|m| m["role"] == "voter"), "{out}");
    }

    // The joined member holds the CA too, so it issues tokens as well.
    let (code, out, err) = switchctl(&dir, "token2", &admin2.to_string(), &["cluster", "token"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().starts_with("ssjoin1."), "{out}");

    // The second node leaves: the first one is alone again.
    let (code, out, err) = switchctl(&dir, "leave", &admin2.to_string(), &["cluster", "leave"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("node 2 left the cluster"), "{out}");
    let (code, out, err) = switchctl(
        &dir,
        "status-after-leave",
        &admin,
        &["--output", "json", "cluster", "status"],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let ids: Vec<u64> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(ids, [1], "{out}");
}

#[test]
fn bad_admin_address_and_unknown_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = switchctl(tmp.path(), "dead", &dead, &["cluster", "status"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the admin API"), "{err}");

    let (code, _, err) = switchctl(tmp.path(), "unknown", &dead, &["cluster", "frobnicate"]);
    assert_eq!(code, 2, "{err}");
}
