//! Smoke check of the media relay benchmark's tools: `relay_host` (our relay with sessions
//! created through its API) and `rtp_blast` relay a short paced G.711 load on loopback,
//! every packet back intact.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A port free on both 127.0.0.2 and 127.0.0.3 (the blaster's caller and callee).
fn free_endpoint_port() -> u16 {
    for _ in 0..50 {
        let a = UdpSocket::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.3", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

#[test]
fn relay_host_and_blaster_relay_every_packet_intact() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions.txt");
    let base = free_endpoint_port();
    let mut relay = Command::new(env!("CARGO_BIN_EXE_relay_host"))
        .args(["--sessions", "20", "--per-side", "1", "--max-s", "30"])
        .args(["--port-min", "41000", "--port-max", "42999"])
        .args(["--base-port", &base.to_string()])
        .arg("--out")
        .arg(&sessions)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sessions.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_rtp_blast"))
        .arg("--sessions")
        .arg(&sessions)
        .args(["--n", "20", "--warmup", "0.5", "--measure", "1.5"])
        .args(["--relay-pid", &relay.id().to_string()])
        .args(["--threads-prefix", "media-fwd-"])
        .output()
        .unwrap();
    let _ = relay.kill();
    let _ = relay.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let r: HashMap<&str, f64> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        // numbers only: softirq_pct is a list, one per CPU
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    // 20 sessions x 2 directions x 50 pps for 1.5 s
    assert!(r["sent"] >= 2500.0, "{line}");
    assert!(r["loss_pct"].abs() < 2.0, "{line}");
    assert_eq!(r["bad"], 0.0, "{line}");
    assert!(r["relay_cpu_pct"] >= 0.0, "{line}");
}
