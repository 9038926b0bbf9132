//! A real softphone (pjsua2, PyPI `pjsua2-python`) registers two extensions, calls from one
//! to the other through the node (digest on REGISTER and INVITE), talks for 4 s with a tone
//! played on each side, and hangs up. RTP must have flowed both ways (pjmedia stream
//! statistics of both call legs), and the CDR must say ANSWERED.
//!
//! Fails when pjsua2 cannot be imported nor installed with pip (`make test` installs it).

use std::process::Command;
use std::time::Duration;
use tests::*;

#[test]
fn pjsua2_call_with_rtp_both_ways() {
    let py = match python_with_pjsua2() {
        Ok(p) => p,
        // `make test` installs pjsua2 (Makefile `deps-test`); without it this test fails
        // rather than passing silently.
        Err(why) => panic!("pjsua2 is required (pip install pjsua2-python): {why}"),
    };
    let node = Node::start(NodeOpts::default()).expect("start softswitch");
    let script = crate_dir().join("clients/pjsua_client.py");
    let ports: Vec<String> = (0..4).map(|_| free_port().to_string()).collect();
    // RTP ports: the client takes an even base and up to 10 ports above it
    let rtp_a = (free_port() & !1).to_string();
    let rtp_b = (free_port() & !1).to_string();
    let (st, out, err) = run_bounded(
        Command::new(&py).arg(&script).args([
            "call",
            "--registrar",
            &node.addr.to_string(),
            "--a",
            "1001:pw1001",
            "--b",
            "1002:pw1002",
            "--port-a",
            &ports[0],
            "--port-b",
            &ports[1],
            "--rtp-a",
            &rtp_a,
            "--rtp-b",
            &rtp_b,
            "--seconds",
            "4",
        ]),
        &node.dir,
        "pjsua-call",
        Duration::from_secs(60),
    )
    .unwrap();
    let result = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok());
    let ctx = || {
        format!(
            "exit {st:?}\nstdout:\n{out}\nstderr (tail):\n{}",
            err.lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    let r = result.unwrap_or_else(|| panic!("no result from the pjsua2 client\n{}", ctx()));
    assert_eq!(
        r["answered"],
        Value::Bool(true),
        "call not answered: {r}\n{}",
        ctx()
    );
    for side in ["caller", "callee"] {
        let rx = r[side]["rx"].as_i64().unwrap_or(0);
        let tx = r[side]["tx"].as_i64().unwrap_or(0);
        // 4 s of 20 ms frames = 200 packets; demand a clear majority of them
        assert!(
            tx > 100,
            "{side} sent only {tx} RTP packets: {r}\n{}",
            ctx()
        );
        assert!(
            rx > 100,
            "{side} received only {rx} RTP packets: {r}\n{}",
            ctx()
        );
    }
    assert!(r["error"].is_null(), "client error: {r}\n{}", ctx());

    let list = node
        .wait_cdrs(Duration::from_secs(10), |l| {
            l.iter().any(|c| c["disposition"] == "ANSWERED")
        })
        .expect("switchctl cdr list");
    let cdr = list
        .iter()
        .find(|c| c["disposition"] == "ANSWERED")
        .unwrap_or_else(|| panic!("no ANSWERED CDR: {list:#?}"));
    assert!(
        cdr["caller"].as_str().unwrap_or("").contains("1001"),
        "{cdr:#}"
    );
    assert!(
        cdr["callee"].as_str().unwrap_or("").contains("1002"),
        "{cdr:#}"
    );
    assert!(
        cdr["billsec"].as_i64().unwrap_or(0) >= 3,
        "billsec < 3 for a 4 s call: {cdr:#}"
    );
}
