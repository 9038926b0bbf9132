//! A three-member cluster, each member in its own network namespace on a bridge:
//! formed with `switchctl` (a token from the first member, an offline join from inside
//! each new member's namespace), and a REGISTER through one member visible in another
//! member's replicated state; leader loss, partition, restart and leadership transfer.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::cluster::{
    form_cluster, ok, register_from_gateway, registered, status, switchctl, wait_ready,
    SWITCHCTL_LIMIT,
};
use tests::netns::Lab;
use tests::{run_bounded, scenario, Ext, NodeOpts, Sipp, Value};

#[test]
fn three_members_form_with_switchctl_and_share_registrations() {
    let lab = Lab::create(3).expect("lab");
    let work = tempfile::tempdir().unwrap();
    let members = form_cluster(&lab, 3, work.path(), NodeOpts::default());

    // Three voters, whichever member is asked.
    for m in &members {
        let v = status(m.admin, work.path());
        let voters = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "voter")
            .count();
        assert_eq!(voters, 3, "{v}");
    }

    // A phone registers through the first member (SIPp in the test's namespace, bound
    // to the bridge address) ...
    let r = register_from_gateway(&lab, &members[0], "1001", "register.xml");
    assert!(r.ok(), "{}", r.describe());

    // ... and the third member has the binding in its replicated state.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !registered(&members[2], work.path()).contains("1001") {
        assert!(
            Instant::now() < deadline,
            "binding not replicated to member 3"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn leader_killed_under_register_load_keeps_every_acknowledged_binding() {
    let lab = Lab::create(3).expect("lab");
    let work = tempfile::tempdir().unwrap();
    let users: Vec<String> = (2000..2300).map(|n| n.to_string()).collect();
    let exts = users.iter().map(|u| Ext::new(u)).collect();
    let mut members = form_cluster(
        &lab,
        3,
        work.path(),
        NodeOpts {
            extensions: exts,
            ..NodeOpts::default()
        },
    );
    assert_eq!(status(members[0].admin, work.path())["leader"]["id"], 1);

    // 300 phones register with the leader at 60/s ...
    let csv = work.path().join("users.csv");
    let mut text = String::from("SEQUENTIAL\n");
    for u in &users {
        text.push_str(&format!("{u};pw{u}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let port = tests::free_port();
    let load = Sipp::new("cluster-load", scenario("register-load.xml"))
        .remote(members[0].addr)
        .local_ip(lab.gateway)
        .local_port(port)
        .calls(300)
        .timeout_s(30)
        .args(["-r", "60", "-recv_timeout", "3000"])
        .arg("-inf")
        .arg(csv.display())
        .key("expires", "3600")
        .spawn()
        .unwrap();
    // ... and about two seconds in, the leader dies (kill -9).
    std::thread::sleep(Duration::from_secs(2));
    members[0].kill9();
    let r = load.wait();

    // Every REGISTER answered 200 before the kill, by SIPp's own log.
    let acked: HashSet<String> = r
        .sip_messages()
        .into_iter()
        .filter(|m| m.starts_with("SIP/2.0 200"))
        .filter_map(|m| {
            let to = m.lines().find(|l| l.starts_with("To:"))?;
            let user = to.split("sip:").nth(1)?.split('@').next()?;
            Some(user.to_string())
        })
        .collect();
    assert!(
        acked.len() >= 30,
        "the load ran before the kill: {} acknowledged\n{}",
        acked.len(),
        r.describe()
    );
    assert!(acked.len() < 300, "the kill happened during the load");
    eprintln!(
        "{} REGISTERs acknowledged before the leader was killed",
        acked.len()
    );

    // A new leader among the survivors ...
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = status(members[1].admin, work.path());
        let leader = v["leader"]["id"].as_u64();
        if matches!(leader, Some(2 | 3)) {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // ... and every acknowledged binding on both of them.
    for m in &members[1..] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let have = registered(m, work.path());
            let missing: Vec<&String> = acked.iter().filter(|u| !have.contains(*u)).collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} acknowledged bindings missing on {}: {missing:?}",
                missing.len(),
                m.addr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// One REGISTER of `user` (password pw<user>) with `scenario`, from inside lab host
/// `from`'s namespace to `to`; true when SIPp saw what the scenario expects.
fn register_from(
    lab: &Lab,
    from: usize,
    to: SocketAddr,
    user: &str,
    scenario_name: &str,
    work: &Path,
) -> bool {
    let csv = work.join(format!("{user}.csv"));
    std::fs::write(&csv, format!("SEQUENTIAL\n{user};pw{user}\n")).unwrap();
    let r = Sipp::new(&format!("reg-{user}"), scenario(scenario_name))
        .in_netns(&lab.hosts[from].netns)
        .remote(to)
        .local_ip(lab.ip(from))
        .local_port(5070)
        .timeout_s(20)
        .arg("-inf")
        .arg(csv.display())
        .key("expires", "3600")
        .run()
        .unwrap();
    if !r.ok() {
        eprintln!("{}", r.describe());
    }
    r.ok()
}

#[test]
fn a_partitioned_leader_refuses_writes_and_catches_up_after_healing() {
    let lab = Lab::create(3).expect("lab");
    let work = tempfile::tempdir().unwrap();
    let members = form_cluster(&lab, 3, work.path(), NodeOpts::default());
    assert_eq!(status(members[0].admin, work.path())["leader"]["id"], 1);

    // Cut the leader off (its bridge port down).
    lab.link_down(0).expect("link down");

    // The old leader, alone, promises nothing. About a second later its lease has run
    // out (openraft 0.9 keeps it Leader, but no majority acknowledged it within the
    // lease): a phone on its side gets 503 + Retry-After to its very first REGISTER,
    // before any challenge, instead of a challenge and then the proposal timeout.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        register_from(
            &lab,
            0,
            members[0].addr,
            "1003",
            "register-unavailable.xml",
            work.path()
        ),
        "the minority side refuses the first REGISTER with 503"
    );

    // The majority elects a new leader and keeps registering phones.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = status(members[1].admin, work.path());
        if matches!(v["leader"]["id"].as_u64(), Some(2 | 3)) {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        register_from(
            &lab,
            1,
            members[1].addr,
            "1002",
            "register-load.xml",
            work.path()
        ),
        "the majority side accepts a REGISTER"
    );

    // Healed: the old leader follows the new one and has what the majority wrote, and
    // not what it could not commit.
    lab.link_up(0).expect("link up");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let have = registered(&members[0], work.path());
        if have.contains("1002") {
            assert!(
                !have.contains("1003"),
                "an uncommitted write survived: {have:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader did not catch up: {have:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = status(members[0].admin, work.path());
    assert!(matches!(v["leader"]["id"].as_u64(), Some(2 | 3)), "{v}");
    for m in &members {
        let have = registered(m, work.path());
        assert!(
            have.contains("1002") && !have.contains("1003"),
            "{}: {have:?}",
            m.addr
        );
    }
}

#[test]
fn all_members_stopped_and_started_again_keep_everything() {
    let lab = Lab::create(3).expect("lab");
    let work = tempfile::tempdir().unwrap();
    let mut members = form_cluster(&lab, 3, work.path(), NodeOpts::default());
    assert!(register_from(
        &lab,
        1,
        members[0].addr,
        "1001",
        "register-load.xml",
        work.path()
    ));
    assert!(register_from(
        &lab,
        2,
        members[0].addr,
        "1002",
        "register-load.xml",
        work.path()
    ));

    // Stop all three (TERM), then start them again from their data dirs.
    for m in members.iter_mut() {
        m.stop();
    }
    for m in members.iter_mut() {
        m.start_again().expect("restart");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let v = status(members[2].admin, work.path());
        if let Some(l) = v["leader"]["id"].as_u64() {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no leader after the restart: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!((1..=3).contains(&leader));
    for m in &members {
        wait_ready(m.admin);
        let have = registered(m, work.path());
        assert!(
            have.contains("1001") && have.contains("1002"),
            "{}: {have:?}",
            m.addr
        );
    }
    // And it still takes new registrations.
    assert!(register_from(
        &lab,
        1,
        members[1].addr,
        "1003",
        "register-load.xml",
        work.path()
    ));
}

/// The leader the member at `admin` names, once it names `want` (bounded).
fn wait_leader_named(admin: SocketAddr, want: u64, work: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = status(admin, work);
        if v["leader"]["id"].as_u64() == Some(want) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{admin} does not name node {want}: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn switchctl_transfers_leadership_to_a_named_follower() {
    let lab = Lab::create(3).expect("lab");
    let work = tempfile::tempdir().unwrap();
    let members = form_cluster(&lab, 3, work.path(), NodeOpts::default());
    assert_eq!(status(members[0].admin, work.path())["leader"]["id"], 1);
    let target = status(members[2].admin, work.path())["id"]
        .as_u64()
        .expect("member id");

    // Asked on the other follower: the request goes to the leader, which hands over.
    let out = ok(
        &mut switchctl(
            members[1].admin,
            &["cluster", "transfer-leader", "--to", &target.to_string()],
        ),
        work.path(),
        "transfer",
    );
    assert!(
        out.contains(&format!("node {target} is now the leader")),
        "{out}"
    );

    // Every member names it; it reports itself leader with the others' progress.
    for m in &members {
        wait_leader_named(m.admin, target, work.path());
    }
    let v = status(members[2].admin, work.path());
    assert_eq!(v["role"], "leader", "{v}");
    assert_eq!(v["leader_view"], true, "{v}");

    // A phone registering through the old leader still gets its 200 (the binding is
    // committed by the new leader) ...
    assert!(
        register_from(
            &lab,
            1,
            members[0].addr,
            "1001",
            "register-load.xml",
            work.path()
        ),
        "a REGISTER after the transfer gets 200"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !registered(&members[2], work.path()).contains("1001") {
        assert!(Instant::now() < deadline, "binding not on the new leader");
        std::thread::sleep(Duration::from_millis(200));
    }

    // ... and a transfer to a node that is not a member fails (exit 1), naming the voters.
    let (st, out, err) = run_bounded(
        &mut switchctl(
            members[0].admin,
            &["cluster", "transfer-leader", "--to", "9"],
        ),
        work.path(),
        "transfer-to-stranger",
        SWITCHCTL_LIMIT,
    )
    .expect("switchctl runs");
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(4),
        "refused (409): {out}\n{err}"
    );
    assert!(
        err.contains("not a member") && err.contains("pick one of the voters"),
        "{err}"
    );
    wait_leader_named(members[0].admin, target, work.path());
}
