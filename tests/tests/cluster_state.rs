//! The replicated state seen from every member of a cluster (each member in its own
//! network namespace): configuration changed through one member is served by the
//! others, concurrent edits conflict, and a new member catches up on a large state by
//! snapshot.

use std::collections::HashSet;
use std::time::{Duration, Instant};
use tests::cluster::{
    bindings, form_cluster, join_member, ok, register_from_gateway, status, switchctl,
};
use tests::netns::Lab;
use tests::{eventually, run_bounded, scenario, Ext, NodeOpts, Sipp, Value};

#[test]
fn extension_created_on_one_member_is_served_by_the_others() {
    let lab = Lab::create(3).expect("lab");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let members = form_cluster(&lab, 3, dir, NodeOpts::default());

    // Created through member 1 ...
    let out = ok(
        &mut switchctl(
            members[0].admin,
            &[
                "extension",
                "add",
                "2500",
                "--password",
                "pw2500",
                "--name",
                "Carol",
            ],
        ),
        dir,
        "add",
    );
    assert!(out.contains("created (version 1)"), "{out}");

    // ... readable through member 3 ...
    let show = |i: usize| -> Option<Value> {
        let (st, out, _) = run_bounded(
            &mut switchctl(
                members[i].admin,
                &["--output", "json", "extension", "show", "2500"],
            ),
            dir,
            "show",
            Duration::from_secs(30),
        )
        .ok()?;
        st.filter(|s| s.success())?;
        serde_json::from_str(&out).ok()
    };
    eventually(
        Duration::from_secs(10),
        "extension 2500 not on member 3",
        || show(2).is_some_and(|v| v["name"] == "Carol" && v["version"] == 1),
    );
    assert!(
        show(2).is_some_and(|v| v.get("password").is_none()),
        "no password shown"
    );

    // ... and member 3's SIP core knows it: the phone registers there.
    let r = register_from_gateway(&lab, &members[2], "2500", "register.xml");
    assert!(
        r.ok(),
        "REGISTER of the new extension on member 3\n{}",
        r.describe()
    );

    // Two operators edit version 1 at once through different members: one wins, the
    // other is told it changed (409), and nobody's edit is silently lost.
    let set = |i: usize, name: &str| {
        run_bounded(
            &mut switchctl(
                members[i].admin,
                &["extension", "set", "2500", "--version", "1", "--name", name],
            ),
            dir,
            &format!("set{i}"),
            Duration::from_secs(30),
        )
        .expect("switchctl runs")
    };
    let (first, _, _) = set(1, "Carol A");
    assert!(
        first.is_some_and(|s| s.success()),
        "the first edit succeeds"
    );
    let (second, _, err) = set(2, "Carol B");
    assert_eq!(second.and_then(|s| s.code()), Some(4), "a conflict: {err}");
    assert!(err.contains("409") && err.contains("version 2"), "{err}");
    eventually(
        Duration::from_secs(10),
        "the winning edit everywhere",
        || (0..3).all(|i| show(i).is_some_and(|v| v["name"] == "Carol A" && v["version"] == 2)),
    );

    // Deleted through member 2: gone everywhere, and the phone can no longer register.
    ok(
        &mut switchctl(members[1].admin, &["extension", "remove", "2500"]),
        dir,
        "remove",
    );
    eventually(
        Duration::from_secs(10),
        "extension 2500 still listed",
        || (0..3).all(|i| show(i).is_none()),
    );
    let r = register_from_gateway(&lab, &members[0], "2500", "register-reject.xml");
    assert!(
        r.ok(),
        "REGISTER of the removed extension refused\n{}",
        r.describe()
    );
}

#[test]
fn a_fourth_member_catches_up_on_100000_bindings_by_snapshot() {
    const USERS: u32 = 10_000;
    const PER_USER: u32 = 10;
    let lab = Lab::create(4).expect("lab");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let users: Vec<String> = (20_000..20_000 + USERS).map(|n| n.to_string()).collect();
    let opts = NodeOpts {
        extensions: users.iter().map(|u| Ext::new(u)).collect(),
        max_contacts: PER_USER,
        // Snapshots early and a short log after them: a new member must take the
        // snapshot, the log it would need is gone. Catch-up is what is tested, not
        // failover speed: the more tolerant Raft timers of earlier releases keep the
        // leader's lease through the stalls of 3 000 writes/s and a snapshot every 500
        // entries on a 2-core machine running other tests beside it.
        cluster_toml: "snapshot_every = 500\nlogs_kept_after_snapshot = 100\n\
                       heartbeat_ms = 50\nelection_timeout_min_ms = 150\n\
                       election_timeout_max_ms = 300\n"
            .into(),
        log_level: "info".into(),
        ..NodeOpts::default()
    };
    let members = form_cluster(&lab, 3, dir, opts.clone());

    // 100 000 bindings: every user registers ten contacts of its own, through the leader.
    let csv = dir.join("users.csv");
    let mut text = String::from("SEQUENTIAL\n");
    for u in &users {
        text.push_str(&format!("{u};pw{u}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let total = USERS * PER_USER;
    let started = Instant::now();
    let r = Sipp::new("cluster-100k", scenario("register-many.xml"))
        .quiet()
        .remote(members[0].addr)
        .local_ip(lab.gateway)
        .local_port(tests::free_port())
        .calls(total)
        .timeout_s(240)
        .args(["-r", "3000", "-l", "3000", "-recv_timeout", "10000"])
        .arg("-inf")
        .arg(csv.display())
        .key("expires", "3600")
        .run()
        .unwrap();
    assert!(r.ok(), "every REGISTER acknowledged\n{}", r.describe());
    eprintln!("{total} REGISTERs acknowledged in {:?}", started.elapsed());
    let on_leader = bindings(&members[0], dir).len();
    assert_eq!(on_leader, total as usize, "bindings on the leader");

    // A fourth member joins (`switchctl cluster join` catches it up before it starts):
    // it has no log to replay from, so it takes a snapshot.
    let started = Instant::now();
    let (fourth, progress) = join_member(&lab, 3, &members[0], dir, opts);
    assert!(
        progress.contains("installed snapshot"),
        "the join caught up by snapshot:\n{progress}"
    );
    let mut have = Vec::new();
    eventually(
        Duration::from_secs(60),
        "the fourth member caught up",
        || {
            have = bindings(&fourth, dir);
            have.len() == total as usize
        },
    );
    eprintln!("the fourth member caught up in {:?}", started.elapsed());
    let distinct: HashSet<&(String, String)> = have.iter().collect();
    assert_eq!(distinct.len(), total as usize);
    // It serves reads: its admin API answers from its own applied state, and it is a
    // voter of the cluster now.
    let v = status(fourth.admin, dir);
    let roles: Vec<&Value> = v["members"].as_array().unwrap().iter().collect();
    assert_eq!(roles.len(), 4, "{v}");
    eventually(
        Duration::from_secs(30),
        "the fourth member is a voter",
        || {
            status(members[0].admin, dir)["members"]
                .as_array()
                .is_some_and(|m| m.iter().filter(|m| m["role"] == "voter").count() == 4)
        },
    );
    let out = ok(
        &mut switchctl(
            fourth.admin,
            &["--output", "json", "extension", "show", "29999"],
        ),
        dir,
        "show",
    );
    assert!(out.contains("\"29999\""), "{out}");
}
