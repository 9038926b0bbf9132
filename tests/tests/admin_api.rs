//! The admin API of the real node, as operators and `switchctl` use it: the token made
//! on first start, roles (a read-only token refused a change), the audit log, CDR
//! query and CSV export after a SIPp call, hanging a call up, and unregistering.

use std::time::{Duration, Instant};
use tests::*;

const CALLER: &str = "1001";
const CALLEE: &str = "1002";

fn api(node: &Node, token: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let auth = format!("Authorization: Bearer {token}\r\n");
    let (code, text) = http_request(node.admin, method, path, &auth, body).expect("admin API");
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `switchctl --admin ... ARGS` with `token`; (exit code, stdout, stderr).
fn ctl(node: &Node, token: &str, args: &[&str]) -> (i32, String, String) {
    switchctl_as(node.admin, token, &node.dir, args)
}

#[test]
fn tokens_roles_audit_cdrs_hangup_and_unregister() {
    let node = Node::start(NodeOpts::default()).expect("node");
    let admin = node
        .admin_token()
        .expect("admin-token written on first start");
    let dir = node.data_dir.join("admin-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "admin-token is private");
    }

    // No token: 401 with a Bearer challenge; switchctl exits 5.
    let (code, _) = api(&node, "", "GET", "/v1/extensions", "");
    assert_eq!(code, 401);
    let (code, _, err) = ctl(&node, "wrong", &["extension", "list"]);
    assert_eq!(code, 5, "{err}");

    // A read-only token reads, is refused a change (403, exit 5), and the refusal is audited.
    let (code, out, err) = ctl(
        &node,
        &admin,
        &["token", "add", "viewer", "--role", "read-only"],
    );
    assert_eq!(code, 0, "{err}");
    let viewer = out.trim().to_string();
    let (code, out, err) = ctl(&node, &viewer, &["extension", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1001"), "{out}");
    let (code, _, err) = ctl(
        &node,
        &viewer,
        &["extension", "add", "3100", "--password", "pw3100"],
    );
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("403"), "{err}");
    let (code, _, err) = ctl(
        &node,
        &admin,
        &["token", "add", "viewer", "--role", "admin"],
    );
    assert_eq!(code, 4, "a taken name is a conflict: {err}");
    let (code, _, err) = ctl(&node, &admin, &["extension", "show", "9999"]);
    assert_eq!(code, 3, "not found: {err}");
    let (code, out, err) = ctl(
        &node,
        &admin,
        &["extension", "add", "3100", "--password", "pw3100"],
    );
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = ctl(&node, &admin, &["--output", "json", "audit"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON audit");
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    let has = |token: &str, path: &str, status: u64| {
        entries
            .iter()
            .any(|e| e["token"] == token && e["path"] == path && e["status"] == status)
    };
    assert!(has("viewer", "/v1/extensions", 403), "{out}");
    assert!(has("admin", "/v1/extensions", 201), "{out}");
    assert!(has("admin", "/v1/tokens", 201), "{out}");
    assert!(!out.contains("pw3100"), "passwords are masked: {out}");

    // A call, hung up through the API: both legs get a BYE, the CDR says so.
    let caller_port = free_port();
    let callee_port = free_port();
    sipp_register(&node, CALLER, caller_port);
    sipp_register(&node, CALLEE, callee_port);
    let (code, out, err) = ctl(
        &node,
        &viewer,
        &[
            "--output",
            "json",
            "registrations",
            "list",
            "--extension",
            CALLEE,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON registrations");
    assert_eq!(v["total"], 1, "{out}");

    let mut uas = Sipp::new("uas-answer", scenario("uas-answer.xml"))
        .local_port(callee_port)
        .args(["-s", CALLEE])
        .timeout_s(30)
        .spawn()
        .unwrap();
    assert!(uas.wait_bound(callee_port, Duration::from_secs(5)));
    let addr = node.addr.to_string();
    let uac = Sipp::new("uac-wait-bye", scenario("uac-wait-bye.xml"))
        .dialling(&addr, CALLEE, CALLER)
        .local_port(caller_port)
        .timeout_s(30)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let call_id = loop {
        let (_, v) = api(&node, &viewer, "GET", "/v1/calls", "");
        let answered = v["calls"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["answer"].is_string()).cloned());
        if let Some(c) = answered {
            break c["call_id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the call was not answered: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (code, _, _) = ctl(&node, &viewer, &["calls", "hangup", &call_id]);
    assert_eq!(code, 5, "read-only may not hang up");
    let (code, out, err) = ctl(&node, &admin, &["calls", "hangup", &call_id]);
    assert_eq!(code, 0, "{out}{err}");
    let r = uac.wait();
    assert!(r.ok(), "the caller got a BYE: {}", r.describe());
    let u = uas.wait();
    assert!(u.ok(), "the callee got a BYE: {}", u.describe());

    // The CDR, queried and exported.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = api(
            &node,
            &viewer,
            "GET",
            "/v1/cdrs?disposition=answered&number=1002",
            "",
        );
        if v["total"] == 1 {
            assert_eq!(v["cdrs"][0]["hangup_cause"], "admin_hangup", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "no CDR: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = ctl(&node, &viewer, &["cdr", "query", "--number", CALLEE]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ANSWERED") && out.contains(&call_id), "{out}");
    let (code, out, err) = ctl(
        &node,
        &viewer,
        &[
            "cdr",
            "export",
            "--format",
            "csv",
            "--disposition",
            "answered",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("call_id,caller,callee,start"), "{out}");
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[1].contains(&call_id) && lines[1].contains("admin_hangup"),
        "{out}"
    );
    let (code, _, err) = ctl(&node, &viewer, &["cdr", "query", "--from", "yesterday"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("from"), "the field is named: {err}");

    // Unregister: the operator role suffices; the contact is gone.
    let (code, out, err) = ctl(
        &node,
        &admin,
        &["token", "add", "ops", "--role", "operator"],
    );
    assert_eq!(code, 0, "{err}");
    let ops = out.trim().to_string();
    let (code, out, err) = ctl(&node, &ops, &["registrations", "remove", CALLEE]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, v) = api(
        &node,
        &viewer,
        "GET",
        "/v1/registrations?extension=1002",
        "",
    );
    assert_eq!(v["total"], 0, "{v}");
    let (code, _, err) = ctl(&node, &ops, &["registrations", "remove", CALLEE]);
    assert_eq!(code, 3, "{err}");

    // Revoked at once.
    let (code, _, err) = ctl(&node, &admin, &["token", "remove", "viewer"]);
    assert_eq!(code, 0, "{err}");
    let (code, _) = api(&node, &viewer, "GET", "/v1/extensions", "");
    assert_eq!(code, 401);
}
