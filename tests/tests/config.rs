//! Config handling of the real binary: an unknown field is an error that names the field.

use std::process::Command;
use std::time::Duration;
use tests::*;

fn run_with_config(toml: &str) -> (Option<std::process::ExitStatus>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, toml).unwrap();
    run_bounded(
        Command::new(softswitch_bin())
            .arg("--config")
            .arg(&cfg)
            .current_dir(dir.path()),
        dir.path(),
        "softswitch",
        Duration::from_secs(15),
    )
    .unwrap()
}

#[test]
fn unknown_field_is_rejected_by_name() {
    let port = free_port();
    let (st, out, err) = run_with_config(&format!(
        "[node]\ndata_dir = \"./data\"\n[sip]\nudp = [\"127.0.0.1:{port}\"]\ntcp = []\nudpp_typo = 1\n"
    ));
    let st = st.expect("softswitch kept running with an unknown config field (killed after 15 s)");
    assert!(
        !st.success(),
        "exit status {st} for an unknown field\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        err.contains("udpp_typo"),
        "stderr does not name the unknown field:\n{err}"
    );
}

#[test]
fn unknown_section_is_rejected_by_name() {
    let port = free_port();
    let (st, out, err) = run_with_config(&format!(
        "[node]\ndata_dir = \"./data\"\n[sip]\nudp = [\"127.0.0.1:{port}\"]\ntcp = []\n[registrarr]\nrealm = \"x\"\n"
    ));
    let st =
        st.expect("softswitch kept running with an unknown config section (killed after 15 s)");
    assert!(
        !st.success(),
        "exit status {st} for an unknown section\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        err.contains("registrarr"),
        "stderr does not name the unknown section:\n{err}"
    );
}
