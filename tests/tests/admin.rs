//! The admin HTTP listener of the real node: health and counters as JSON, errors named.

use std::time::Duration;
use tests::{http_get, options_request, udp_exchange, Node, NodeOpts, Value};

#[test]
fn healthz_and_counters_answer_json() {
    let node = Node::start(NodeOpts::default()).expect("node");
    let (status, body) = http_get(node.admin, "/healthz").expect("healthz");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["node_id"], 1);

    // The counters move with SIP traffic.
    let msg = options_request(node.addr, "udp", &[]);
    udp_exchange(node.addr, msg.as_bytes(), Duration::from_secs(2)).expect("OPTIONS");
    let (status, body) = http_get(node.admin, "/v1/counters").expect("counters");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert!(v["messages_in"].as_u64().unwrap_or(0) >= 1, "{body}");

    let (status, body) = http_get(node.admin, "/v1/nothing-here").expect("404");
    assert_eq!(status, 404);
    assert!(body.contains("no such resource"), "{body}");
}
