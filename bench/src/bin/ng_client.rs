//! Client of rtpengine's ng control protocol for the relay benchmark.
//!
//! `ng_client --server 127.0.0.1:22222 ping` exits 0 when rtpengine answers `pong`.
//!
//! `ng_client --server 127.0.0.1:22222 sessions --n N --out FILE [--a-ip 127.0.0.2]
//!            [--b-ip 127.0.0.3] [--base-port 20000] [--per-side M]` creates N calls, each
//! with an `offer` (caller SDP: `a-ip`, port `base-port + 2 * (i % M)`) and an `answer`
//! (callee SDP: `b-ip`, same port), and writes the sessions file the blaster reads: the
//! answer's rewritten address is where A sends, the offer's where B sends.

use anyhow::{bail, Context};
use bench::rtp::{endpoints, write_sessions, NgClient, SessionLine};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut server: SocketAddr = "127.0.0.1:22222".parse()?;
    let mut cmd = None;
    let mut n = 0usize;
    let mut out = PathBuf::new();
    let mut a_ip: IpAddr = "127.0.0.2".parse()?;
    let mut b_ip: IpAddr = "127.0.0.3".parse()?;
    let mut base_port = 20000u16;
    let mut per_side = None;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--server" => server = v()?.parse()?,
            "--n" => n = v()?.parse()?,
            "--out" => out = PathBuf::from(v()?),
            "--a-ip" => a_ip = v()?.parse()?,
            "--b-ip" => b_ip = v()?.parse()?,
            "--base-port" => base_port = v()?.parse()?,
            "--per-side" => per_side = Some(v()?.parse()?),
            "ping" | "sessions" => cmd = Some(k),
            _ => bail!("unknown argument {k} (see the doc comment of ng_client.rs)"),
        }
    }
    match cmd.as_deref() {
        Some("ping") => {
            let mut ng = NgClient::new(server, Duration::from_millis(500))?;
            if !ng.ping() {
                bail!("no pong from {server}");
            }
            Ok(())
        }
        Some("sessions") => {
            if n == 0 || out.as_os_str().is_empty() {
                bail!("sessions needs --n N (> 0) and --out FILE");
            }
            let mut ng = NgClient::new(server, Duration::from_secs(2))?;
            let per_side = per_side.unwrap_or(n);
            let t0 = Instant::now();
            let mut lines = Vec::with_capacity(n);
            for i in 0..n {
                let (a, b) = endpoints(i, a_ip, b_ip, base_port, per_side)?;
                let call_id = format!("relaybench-{}-{i}", std::process::id());
                let (relay_for_a, relay_for_b) = ng
                    .offer_answer(&call_id, a, b)
                    .with_context(|| format!("call {i}"))?;
                lines.push(SessionLine {
                    a,
                    b,
                    relay_for_a,
                    relay_for_b,
                });
            }
            write_sessions(&out, &lines)?;
            eprintln!(
                "created {n} rtpengine sessions in {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        _ => bail!("want a command: ping | sessions"),
    }
}
