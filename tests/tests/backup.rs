//! `switchctl backup` of a three-member cluster and `switchctl restore` into a new
//! three-member cluster: every member of the new one ends up with exactly the
//! extensions (passwords included) and CDRs of the old one, its SIP core serves the
//! restored extensions at once, and its own admin token keeps working.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tests::cluster::{form_cluster, register_from_gateway};
use tests::netns::Lab;
use tests::*;

/// What `switchctl <what> list --data-dir` prints of a member's replicated state, one
/// JSON document per line (extensions with their passwords, CDRs whole).
fn offline(member: &Node, what: &str, work: &Path) -> Vec<String> {
    let mut c = Command::new(switchctl_bin());
    c.args([
        what,
        "list",
        "--data-dir",
        member.data_dir.to_str().unwrap(),
    ]);
    let (st, out, err) =
        run_bounded(&mut c, work, "switchctl", Duration::from_secs(30)).expect("switchctl runs");
    assert!(st.is_some_and(|s| s.success()), "{what} list: {err}");
    out.lines().map(str::to_owned).collect()
}

/// A call from 1001 to `dialled`, refused with `code`, through `member`: one CDR.
fn refused_call(lab: &Lab, member: &Node, dialled: &str, code: u16) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(scenario("uac-reject.xml"))
        .unwrap()
        .replace("@CODE@", &code.to_string());
    let scn = dir.path().join("reject.xml");
    std::fs::write(&scn, text).unwrap();
    let addr = member.addr.to_string();
    let r = Sipp::new("uac", &scn)
        .dialling(&addr, dialled, "1001")
        .local_ip(lab.gateway)
        .local_port(free_port())
        .timeout_s(30)
        .run()
        .unwrap();
    assert!(r.ok(), "call to {dialled}: {}", r.describe());
}

#[test]
fn a_backup_restored_into_a_new_cluster_has_the_same_extensions_and_cdrs() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();

    // The old cluster: seeded 1001-1003, one extension added and one changed through
    // the API, a registration, and two calls that left CDRs.
    let lab_a = Lab::create(3).expect("lab");
    let old = form_cluster(&lab_a, 3, work, NodeOpts::default());
    let token_a = old[0].admin_token().expect("admin token");
    let (code, _, err) = switchctl_as(
        old[1].admin,
        &token_a,
        work,
        &[
            "extension",
            "add",
            "3100",
            "--name",
            "Sales",
            "--password",
            "pw3100",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = switchctl_as(
        old[2].admin,
        &token_a,
        work,
        &["extension", "set", "1002", "--name", "Reception"],
    );
    assert_eq!(code, 0, "{err}");
    let r = register_from_gateway(&lab_a, &old[0], "1001", "register.xml");
    assert!(r.ok(), "REGISTER 1001: {}", r.describe());
    refused_call(&lab_a, &old[0], "5999", 404);
    refused_call(&lab_a, &old[0], "1003", 480);
    eventually(
        Duration::from_secs(30),
        "two CDRs on the last member",
        || offline(&old[2], "cdr", work).len() == 2,
    );

    // Only an admin may take a backup (it holds the passwords).
    let (code, out, err) = switchctl_as(
        old[0].admin,
        &token_a,
        work,
        &["token", "add", "viewer", "--role", "read-only"],
    );
    assert_eq!(code, 0, "{err}");
    let viewer = out.trim().to_string();
    let file = work.join("cluster.backup");
    let (code, _, err) = switchctl_as(
        old[2].admin,
        &viewer,
        work,
        &["backup", file.to_str().unwrap()],
    );
    assert_eq!(code, 5, "a read-only token is refused: {err}");
    assert!(!file.exists());

    // The backup, taken through a follower.
    let (code, out, err) = switchctl_as(
        old[2].admin,
        &token_a,
        work,
        &["backup", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("extensions=4") && out.contains("cdrs=2"),
        "{out}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the backup is private");
    }
    let extensions = offline(&old[0], "extensions", work);
    let cdrs = offline(&old[0], "cdr", work);
    assert_eq!(extensions.len(), 4, "{extensions:?}");
    assert!(
        extensions.iter().any(|e| e.contains("Reception")),
        "{extensions:?}"
    );

    // A damaged backup is refused whole, before anything is sent.
    let mut damaged = std::fs::read(&file).unwrap();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x55;
    let bad = work.join("damaged.backup");
    std::fs::write(&bad, &damaged).unwrap();

    // The new cluster, seeded with something else.
    let lab_b = Lab::create(3).expect("lab");
    let opts = NodeOpts {
        extensions: vec![Ext::new("4001")],
        ..NodeOpts::default()
    };
    let work_b = tempfile::tempdir().unwrap();
    let new = form_cluster(&lab_b, 3, work_b.path(), opts);
    let token_b = new[0].admin_token().expect("admin token");
    let (code, _, err) = switchctl_as(
        new[1].admin,
        &token_b,
        work,
        &["restore", bad.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(offline(&new[1], "extensions", work).len(), 1);

    // Restored through a follower; every member has the old cluster's state.
    let (code, out, err) = switchctl_as(
        new[1].admin,
        &token_b,
        work,
        &["restore", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("restored"), "{out}");
    for (i, m) in new.iter().enumerate() {
        eventually(
            Duration::from_secs(30),
            &format!("member {i} restored"),
            || offline(m, "extensions", work) == extensions && offline(m, "cdr", work) == cdrs,
        );
    }

    // The SIP core took the restored extensions: 3100 registers with its password,
    // the extension the restore replaced no longer does.
    let r = register_from_gateway(&lab_b, &new[2], "3100", "register.xml");
    assert!(r.ok(), "REGISTER 3100 after the restore: {}", r.describe());
    let r = register_from_gateway(&lab_b, &new[0], "4001", "register.xml");
    assert!(!r.ok(), "4001 is gone after the restore");

    // The new cluster's own token still works, and the restore is in its audit log.
    let (code, out, err) =
        switchctl_as(new[0].admin, &token_b, work, &["--output", "json", "audit"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON audit");
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|e| e["path"] == "/v1/restore" && e["status"] == 200),
        "{out}"
    );
    // The old cluster's history came along too (the extension added there).
    assert!(
        entries
            .iter()
            .any(|e| e["path"] == "/v1/extensions" && e["status"] == 201),
        "{out}"
    );
}
