use super::*;
use crate::admin::Data;
use crate::sip::message::Method;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

/// The contract the dashboard and alert rules are written against.
const CONTRACT: &str = include_str!("../../../../ops/METRICS.md");

/// name -> (type, label names) from the contract's table.
fn contract() -> BTreeMap<String, (String, BTreeSet<String>)> {
    CONTRACT
        .lines()
        .filter(|l| l.starts_with("| softswitch_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let labels = cells[3]
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            (cells[1].to_string(), (cells[2].to_string(), labels))
        })
        .collect()
}

fn standalone(metrics: Arc<Metrics>) -> (AdminState, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
    let state = AdminState {
        node_id: 7,
        metrics,
        started: Instant::now(),
        enroller: None,
        relay: None,
        data: Data::Local {
            store,
            feed: tokio::sync::mpsc::unbounded_channel().0,
        },
        core: None,
        vip: Vec::new(),
    };
    (state, dir)
}

/// (family, label names) of every sample line, with the histogram suffixes folded
/// into their family and `le` left out.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (head, _value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = head.split_once('{').unwrap_or((head, "}"));
            let labels = labels.trim_end_matches('}');
            let mut map = BTreeMap::new();
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap();
                map.insert(k.to_string(), v.trim_matches('"').to_string());
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            map.remove("le");
            (family.to_string(), map)
        })
        .collect()
}

fn rendered(state: &AdminState) -> String {
    String::from_utf8(render(state).unwrap()).unwrap()
}

#[test]
fn every_series_keeps_to_the_contract_and_carries_the_node() {
    let m = Arc::new(Metrics::default());
    m.sip.request(&Method::Register);
    m.sip.response(&Method::Register, 200);
    m.inc(&m.registrations_ok);
    m.call_setup.observe(0.3);
    let (state, _dir) = standalone(m);
    let text = rendered(&state);
    let contract = contract();
    assert!(
        contract.len() >= 35,
        "contract table read: {}",
        contract.len()
    );
    for (family, labels) in samples(&text) {
        let (_, want) = contract
            .get(&family)
            .unwrap_or_else(|| panic!("{family} is not in ops/METRICS.md"));
        assert_eq!(
            labels.get("node").map(String::as_str),
            Some("7"),
            "{family}"
        );
        let mut got: BTreeSet<String> = labels.keys().cloned().collect();
        got.remove("node");
        if family == "softswitch_up" {
            got.remove("version");
        }
        assert_eq!(&got, want, "labels of {family}");
    }
    for (name, (kind, _)) in &contract {
        let present = text.contains(&format!("# TYPE {name} {kind}\n"));
        // A standalone node has no Raft status; the leader's lag needs followers.
        let raft_status =
            name.starts_with("softswitch_raft_") && name != "softswitch_raft_commit_seconds";
        assert!(present || raft_status, "{name} ({kind}) missing:\n{text}");
    }
    assert!(
        text.contains("softswitch_sip_requests_total{node=\"7\",method=\"REGISTER\"} 1"),
        "{text}"
    );
    assert!(text
        .contains("softswitch_sip_responses_total{node=\"7\",method=\"REGISTER\",code=\"200\"} 1"));
    assert!(text.contains("softswitch_call_setup_seconds_bucket{node=\"7\",le=\"0.5\"} 1"));
    assert!(text.contains("softswitch_call_setup_seconds_count{node=\"7\"} 1"));
    assert!(text.contains("softswitch_up{node=\"7\",version=\""));
}

#[test]
fn raft_figures_of_a_leader_with_followers() {
    let s = consensus::Status {
        id: 2,
        role: consensus::Role::Leader,
        term: 5,
        leader: Some(2),
        last_log: Some(100),
        committed: Some(99),
        applied: Some(98),
        snapshot: None,
        purged: None,
        voters: [1, 2, 3].into_iter().collect(),
        members: BTreeMap::new(),
        matched: [(1, Some(100)), (2, Some(100)), (3, Some(90))]
            .into_iter()
            .collect(),
    };
    let mut f = Families::new(2);
    raft(&mut f, &s);
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&f.into_inner(), &mut out)
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    for line in [
        "softswitch_raft_term{node=\"2\"} 5",
        "softswitch_raft_is_leader{node=\"2\"} 1",
        "softswitch_raft_leader{node=\"2\"} 2",
        "softswitch_raft_commit_index{node=\"2\"} 99",
        "softswitch_raft_applied_index{node=\"2\"} 98",
        "softswitch_raft_follower_lag{node=\"2\",follower=\"1\"} 0",
        "softswitch_raft_follower_lag{node=\"2\",follower=\"3\"} 10",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(
        !text.contains("follower=\"2\""),
        "the leader is no follower"
    );
    let contract = contract();
    for (family, labels) in samples(&text) {
        let (_, want) = &contract[&family];
        let got: BTreeSet<String> = labels.keys().filter(|k| *k != "node").cloned().collect();
        assert_eq!(&got, want, "{family}");
    }
}

#[test]
fn ended_calls_count_by_disposition_with_their_media() {
    use crate::calls::cdr::{CallMedia, Cdr, Disposition, MediaCounters};
    let m = Metrics::default();
    let side = |lost, jitter_us| MediaCounters {
        packets: 100,
        bytes: 17200,
        lost,
        jitter_us,
        rtcp_reported_lost: None,
        dropped_wrong_source: 0,
        dtmf: String::new(),
    };
    let mut cdr = Cdr {
        call_id: "c".into(),
        caller: "1001".into(),
        callee: "1002".into(),
        start: String::new(),
        answer: None,
        end: String::new(),
        duration: 1,
        billsec: 1,
        disposition: Disposition::Answered,
        hangup_cause: "normal_clearing".into(),
        sip_status: 200,
        hangup_by: None,
        media: Some(Box::new(CallMedia {
            caller: side(3, 4000),
            callee: side(2, 40_000),
        })),
    };
    m.on_cdr(&cdr);
    cdr.disposition = Disposition::Busy;
    cdr.media = None;
    m.on_cdr(&cdr);
    let ended: Vec<u64> = m.calls_ended.iter().map(Metrics::get).collect();
    assert_eq!(ended, vec![1, 0, 1, 0, 0]);
    assert_eq!(Metrics::get(&m.media_lost), 5);
    let j = m.media_jitter.snapshot();
    assert_eq!(j.count, 2);
    // 4 ms falls in le=0.005, 40 ms in le=0.05.
    assert_eq!(j.buckets[2], (0.005, 1));
    assert_eq!(j.buckets[6], (0.05, 2));
}
