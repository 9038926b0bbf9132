//! `switchctl apply -f ops/examples/pbx.yaml` against a real node: the plan is shown
//! (dry run changes nothing), applied, and a second run changes nothing and says so;
//! the SIP core serves what was applied; bad descriptions are refused with the field
//! named; `--keep-unlisted` keeps what the file leaves out.

use std::path::{Path, PathBuf};
use tests::*;

fn example() -> PathBuf {
    crate_dir().join("../ops/examples/pbx.yaml")
}

/// `switchctl --admin ... ARGS`; (exit code, stdout, stderr).
fn ctl(node: &Node, token: &str, args: &[&str]) -> (i32, String, String) {
    switchctl_as(node.admin, token, &node.dir, args)
}

/// The extensions as `extension list --output json` shows them: (number, name, version).
fn extensions(node: &Node, token: &str) -> Vec<(String, String, u64)> {
    let (code, out, err) = ctl(node, token, &["--output", "json", "extension", "list"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    v["extensions"]
        .as_array()
        .expect("extensions")
        .iter()
        .map(|e| {
            (
                e["number"].as_str().unwrap_or_default().to_string(),
                e["name"].as_str().unwrap_or_default().to_string(),
                e["version"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn register(node: &Node, number: &str, password: &str) -> SippResult {
    Sipp::new(&format!("register-{number}"), scenario("register.xml"))
        .remote(node.addr)
        .local_port(free_port())
        .args(["-s", number, "-au", number, "-ap", password])
        .key("expires", "3600")
        .run()
        .expect("sipp")
}

fn apply(node: &Node, token: &str, file: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["apply", "-f", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    ctl(node, token, &args)
}

#[test]
fn apply_shows_the_plan_applies_it_and_a_second_run_changes_nothing() {
    let node = Node::start(NodeOpts::default()).expect("node");
    let token = node.admin_token().expect("admin token");
    let seeded = extensions(&node, &token);
    assert_eq!(seeded.len(), 3);

    // Dry run: the plan, and nothing changes.
    let (code, out, err) = apply(&node, &token, &example(), &["--dry-run"]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "~ extension 1001",
        "~ extension 1002",
        "+ extension 1100",
        "+ extension 1900",
        "Dry run, nothing applied: 2 to create, 3 to update, 0 to remove.",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    assert!(!out.contains("change-me"), "no password in a plan:\n{out}");
    assert_eq!(extensions(&node, &token), seeded);

    // Applied: the PBX is the file.
    let (code, out, err) = apply(&node, &token, &example(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Applied"), "{out}");
    let applied = extensions(&node, &token);
    let names: Vec<(&str, &str)> = applied
        .iter()
        .map(|(n, name, _)| (n.as_str(), name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("1001", "Reception"),
            ("1002", "Sales desk"),
            ("1003", "Support"),
            ("1100", "Lobby phone"),
            ("1900", "Door intercom"),
        ]
    );
    // The SIP core took it: the new password registers, the old one no longer does.
    let r = register(&node, "1100", "change-me-1100");
    assert!(r.ok(), "REGISTER 1100: {}", r.describe());
    let r = register(&node, "1001", "pw1001");
    assert!(!r.ok(), "the replaced password is refused");

    // Idempotent: the second run changes nothing, says so, and no version moves.
    let (code, out, err) = apply(&node, &token, &example(), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!(
            "No changes: the running PBX matches {}.",
            example().display()
        )
    );
    assert_eq!(extensions(&node, &token), applied);

    // Extensions the file leaves out are removed, unless kept.
    let (code, _, err) = ctl(
        &node,
        &token,
        &["extension", "add", "2000", "--password", "pw2000"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = apply(&node, &token, &example(), &["--keep-unlisted"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("No changes"), "{out}");
    let (code, out, err) = apply(&node, &token, &example(), &["--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("- extension 2000") && out.contains("0 to create, 0 to update, 1 to remove"),
        "{out}"
    );

    // A bad description is refused with the entry and field named; nothing changes.
    let bad = node.dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "extensions:\n  - number: \"1001\"\n    password: \"pw\"\n",
    )
    .unwrap();
    let (code, _, err) = apply(&node, &token, &bad, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("extensions[0].password"), "{err}");
    let (code, text) = http_request(
        node.admin,
        "POST",
        "/v1/pbx",
        &format!("Authorization: Bearer {token}\r\n"),
        r#"{"extensions":[{"number":"12a","password":"secret1"}]}"#,
    )
    .expect("admin API");
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("extensions[0].number"), "{text}");
    let (code, text) = http_request(
        node.admin,
        "POST",
        "/v1/pbx",
        &format!("Authorization: Bearer {token}\r\n"),
        "",
    )
    .expect("admin API");
    assert_eq!(code, 400, "an empty body removes nothing: {text}");
    assert_eq!(extensions(&node, &token).len(), 6);
}
