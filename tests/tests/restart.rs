//! The node restarts on its own data directory: the store reopens, the PBX seeded at first
//! start is still there, and CDRs written before the restart are still listed.

use std::time::Duration;
use tests::*;

fn register(node: &Node, number: &str) -> SippResult {
    Sipp::new(&format!("register-{number}"), scenario("register.xml"))
        .remote(node.addr)
        .local_port(free_port())
        .registering(number)
        .run()
        .unwrap()
}

#[test]
fn restart_keeps_store_extensions_and_cdrs() {
    let mut n = Node::start(NodeOpts::default()).expect("start softswitch");
    let r = register(&n, "1001");
    assert!(r.ok(), "before restart: {}", r.describe());

    // one failed call (unknown number) to get a CDR on disk
    let dir = tempfile::tempdir().unwrap();
    let scn = dir.path().join("uac-reject-404.xml");
    std::fs::write(
        &scn,
        std::fs::read_to_string(scenario("uac-reject.xml"))
            .unwrap()
            .replace("@CODE@", "404"),
    )
    .unwrap();
    let addr = n.addr.to_string();
    let r = Sipp::new("uac-404", &scn)
        .dialling(&addr, "5999", "1001")
        .local_port(free_port())
        .run()
        .unwrap();
    assert!(r.ok(), "404 call: {}", r.describe());
    let before = n
        .wait_cdrs(Duration::from_secs(10), |l| !l.is_empty())
        .expect("switchctl cdr list before restart");
    assert!(!before.is_empty(), "no CDR before the restart");

    n.restart()
        .expect("the node does not come back on its own data directory");

    let r = register(&n, "1002");
    assert!(
        r.ok(),
        "after restart (extensions from the store): {}",
        r.describe()
    );
    let after = n.cdrs().expect("switchctl cdr list after restart");
    for c in &before {
        assert!(
            after.iter().any(|a| a["call_id"] == c["call_id"]),
            "CDR {} lost across the restart; after: {after:#?}",
            c["call_id"]
        );
    }
}
