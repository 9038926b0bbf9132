//! The network-namespace lab that the cluster tests build on, with the real node: a node
//! in its own namespace is reachable over the bridge from the test process and from
//! another namespace, and taking its bridge port down cuts it off until it comes back.

use std::time::Duration;
use tests::netns::Lab;
use tests::{Node, NodeOpts};

/// Sends OPTIONS from inside host `from`'s namespace (with python3) and returns the
/// status line of the answer, or an empty string.
fn options_from(lab: &Lab, from: usize, to: std::net::SocketAddr) -> String {
    let script = format!(
        "import socket\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
s.settimeout(2)\n\
s.bind(('{me}', 0))\n\
p = s.getsockname()[1]\n\
m = ('OPTIONS sip:{to} SIP/2.0\\r\\nVia: SIP/2.0/UDP {me}:%d;branch=z9hG4bKns1\\r\\n'\n\
     'From: <sip:t@{me}>;tag=1\\r\\nTo: <sip:{to}>\\r\\nCall-ID: ns-1\\r\\nCSeq: 1 OPTIONS\\r\\n'\n\
     'Max-Forwards: 70\\r\\nContent-Length: 0\\r\\n\\r\\n') % p\n\
s.sendto(m.encode(), ('{ip}', {port}))\n\
try:\n    print(s.recv(65535).decode().split('\\r\\n')[0])\n\
except OSError:\n    pass\n",
        me = lab.ip(from),
        to = to,
        ip = to.ip(),
        port = to.port()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (status, stdout, stderr) = tests::run_bounded(
        lab.command(from, "python3").arg("-c").arg(script),
        dir.path(),
        "options",
        Duration::from_secs(10),
    )
    .expect("python3 in the namespace");
    assert!(
        status.is_some_and(|s| s.success()),
        "python3 failed: {stderr}"
    );
    stdout.trim().to_string()
}

#[test]
fn nodes_in_namespaces_are_reachable_and_a_downed_link_partitions_them() {
    let lab = Lab::create(2).expect("lab");
    let node = Node::start(NodeOpts {
        host: Some(lab.hosts[0].clone()),
        ..Default::default()
    })
    .expect("node in host 0");
    assert_eq!(node.addr.ip(), std::net::IpAddr::V4(lab.ip(0)));
    assert!(
        node.options_ok(Duration::from_secs(2)),
        "from the test process"
    );
    assert_eq!(
        options_from(&lab, 1, node.addr),
        "SIP/2.0 200 OK",
        "from host 1"
    );

    lab.link_down(0).expect("link down");
    assert!(!node.options_ok(Duration::from_millis(800)), "cut off");
    assert_eq!(options_from(&lab, 1, node.addr), "", "cut off from host 1");

    lab.link_up(0).expect("link up");
    let back = (0..20).any(|_| node.options_ok(Duration::from_millis(500)));
    assert!(back, "reachable again after the link came back");
}
