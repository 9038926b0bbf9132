//! Forming and inspecting a cluster of softswitch members in a lab (one network
//! namespace per member), through `switchctl` as an operator would.

use crate::netns::Lab;
use crate::{run_bounded, switchctl_bin, Node, NodeOpts, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Bound on one `switchctl` run.
pub const SWITCHCTL_LIMIT: Duration = Duration::from_secs(60);

/// Waits for a member's admin API to say it is ready.
pub fn wait_ready(admin: SocketAddr) {
    crate::wait_admin_ready(admin, Duration::from_secs(30));
}

/// Runs `cmd` (switchctl) bounded; returns stdout, failing the test on a non-zero exit.
pub fn ok(cmd: &mut Command, dir: &Path, tag: &str) -> String {
    let (st, out, err) = run_bounded(cmd, dir, tag, SWITCHCTL_LIMIT).expect("switchctl runs");
    assert!(st.is_some_and(|s| s.success()), "{tag}: {out}\n{err}");
    out
}

/// `switchctl --admin ADMIN ARGS...` as a command, with the admin token known for
/// `admin` (see [`crate::set_admin_token`]) in `SWITCHCTL_TOKEN`.
pub fn switchctl(admin: SocketAddr, args: &[&str]) -> Command {
    let mut c = Command::new(switchctl_bin());
    c.args(["--admin", &admin.to_string()]).args(args);
    if let Some(t) = crate::admin_token_for(admin) {
        c.env("SWITCHCTL_TOKEN", t);
    }
    c
}

/// Forms a cluster of one member on each of the first `count` lab hosts, each started
/// with `opts` (its host, data dir and bootstrap set here): the first bootstraps, the
/// others join with `switchctl` (a token from the first, the join from inside their own
/// namespace) and start on the data dir the join prepared.
pub fn form_cluster(lab: &Lab, count: usize, work: &Path, opts: NodeOpts) -> Vec<Node> {
    let first = Node::start(NodeOpts {
        host: Some(lab.hosts[0].clone()),
        ..opts.clone()
    })
    .expect("first member");
    wait_ready(first.admin);
    let mut members = vec![first];
    for i in 1..count {
        members.push(join_member(lab, i, &members[0], work, opts.clone()).0);
    }
    first_leads(&members, work);
    members
}

/// Makes sure the first member leads, as the tests expect of a cluster just formed: a
/// busy machine may have let another member win an election while the others joined
/// (the Raft timers are sub-second); leadership is then handed back.
pub fn first_leads(members: &[Node], work: &Path) {
    let want = status(members[0].admin, work)["id"].as_u64();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leader = status(members[0].admin, work)["leader"]["id"].as_u64();
        if leader.is_some() && leader == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first member does not lead (leader {leader:?})"
        );
        if let (Some(_), Some(id)) = (leader, want) {
            let _ = run_bounded(
                &mut switchctl(
                    members[0].admin,
                    &["cluster", "transfer-leader", "--to", &id.to_string()],
                ),
                work,
                "first-leads",
                SWITCHCTL_LIMIT,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Joins lab host `i` to the cluster `via` belongs to, and starts it; also returns
/// what `switchctl cluster join` reported while the member caught up.
pub fn join_member(lab: &Lab, i: usize, via: &Node, work: &Path, opts: NodeOpts) -> (Node, String) {
    let token = ok(
        &mut switchctl(via.admin, &["cluster", "token"]),
        work,
        &format!("token{i}"),
    );
    let data = work.join(format!("data{i}"));
    let ip = lab.ip(i);
    let (st, _, progress) = run_bounded(
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
        work,
        &format!("join{i}"),
        SWITCHCTL_LIMIT,
    )
    .expect("switchctl runs");
    assert!(st.is_some_and(|s| s.success()), "join{i}: {progress}");
    let node = Node::start(NodeOpts {
        host: Some(lab.hosts[i].clone()),
        data_dir: Some(data),
        bootstrap: false,
        ..opts
    })
    .expect("joined member");
    // The tokens are replicated: the first member's works on this one too.
    if let Some(t) = crate::admin_token_for(via.admin) {
        crate::set_admin_token(node.admin, &t);
    }
    wait_ready(node.admin);
    (node, progress)
}

/// The `cluster status` JSON of the member at `admin`.
pub fn status(admin: SocketAddr, work: &Path) -> Value {
    let out = ok(
        &mut switchctl(admin, &["--output", "json", "cluster", "status"]),
        work,
        "status",
    );
    serde_json::from_str(&out).expect("JSON status")
}

/// Every binding in a member's replicated state, as `(aor, contact)`.
pub fn bindings(member: &Node, work: &Path) -> Vec<(String, String)> {
    let out = ok(
        Command::new(switchctl_bin()).args([
            "registrations",
            "list",
            "--data-dir",
            member.data_dir.to_str().unwrap(),
        ]),
        work,
        "registrations",
    );
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let aor = v["aor"].as_str()?.to_string();
            let contact = v["binding"]["contact"].as_str()?.to_string();
            Some((aor, contact))
        })
        .collect()
}

/// Addresses of record registered in a member's replicated state.
pub fn registered(member: &Node, work: &Path) -> HashSet<String> {
    bindings(member, work)
        .into_iter()
        .map(|(aor, _)| aor)
        .collect()
}

/// One REGISTER of `user` (password `pw<user>`, expires 3600) with `scenario_file`, from
/// the test's own namespace (bound to the bridge address) to `member`.
pub fn register_from_gateway(
    lab: &Lab,
    member: &Node,
    user: &str,
    scenario_file: &str,
) -> crate::SippResult {
    crate::Sipp::new(&format!("reg-{user}"), crate::scenario(scenario_file))
        .remote(member.addr)
        .local_ip(lab.gateway)
        .local_port(crate::free_port())
        .registering(user)
        .run()
        .expect("sipp runs")
}
