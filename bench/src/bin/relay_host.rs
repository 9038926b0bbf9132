//! Hosts our media relay (`media::udp::Relay`, the `udp` backend) for the relay benchmark.
//!
//! `relay_host --sessions N --out FILE [--bind 127.0.0.1] [--port-min 30000]
//!             [--port-max 49999] [--threads 1] [--a-ip 127.0.0.2] [--b-ip 127.0.0.3]
//!             [--base-port 20000] [--per-side M] [--max-s 600] [--stats FILE]
//!             [--kernel BPF_OBJECT [--dev lo]]`
//!
//! Starts the relay with its default configuration except the bind address, a port range
//! wide enough for N sessions, `max_sessions = N` and `threads`; creates N sessions
//! through the public API, each with both peers known from "signalling" (`PeerMedia` for
//! caller `a-ip` and callee `b-ip`, port `base-port + 2 * (i % M)`, RTCP on the next
//! port; M defaults to N: every session its own endpoints), and writes the sessions file
//! the blaster reads (`bench::rtp::SessionLine` per line). Prints `ready sessions=N` on
//! stdout, then relays until killed (or `max-s` seconds), writing the relay's counters
//! to `--stats FILE` every second.
//!
//! With `--kernel OBJ` (a BPF object or `media/bpf/relay_tc.c`), the relay runs with
//! its in-kernel fast path (`RelayConfig::kernel_forwarding`) on `dev`'s ingress: each
//! session's first packets latch in user space, then its RTP goes through the kernel;
//! the kernel's packets (as of the forwarding thread's last scan, once a second) are
//! added to `forwarded` in the stats file.

use anyhow::{bail, Context};
use bench::rtp::{endpoints, raise_nofile, write_sessions, SessionLine};
use media::kernel::KernelForwarding;
use media::ports::PortRange;
use media::session::PeerMedia;
use media::udp::{Relay, RelayConfig};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Args {
    sessions: usize,
    out: PathBuf,
    bind: IpAddr,
    port_min: u16,
    port_max: u16,
    threads: usize,
    a_ip: IpAddr,
    b_ip: IpAddr,
    base_port: u16,
    per_side: Option<usize>,
    max_s: u64,
    stats: Option<PathBuf>,
    kernel: Option<PathBuf>,
    dev: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        sessions: 0,
        out: PathBuf::new(),
        bind: "127.0.0.1".parse()?,
        port_min: 30000,
        port_max: 49999,
        threads: RelayConfig::default().threads,
        a_ip: "127.0.0.2".parse()?,
        b_ip: "127.0.0.3".parse()?,
        base_port: 20000,
        per_side: None,
        max_s: 600,
        stats: None,
        kernel: None,
        dev: "lo".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--sessions" => a.sessions = v()?.parse()?,
            "--out" => a.out = PathBuf::from(v()?),
            "--bind" => a.bind = v()?.parse()?,
            "--port-min" => a.port_min = v()?.parse()?,
            "--port-max" => a.port_max = v()?.parse()?,
            "--threads" => a.threads = v()?.parse()?,
            "--a-ip" => a.a_ip = v()?.parse()?,
            "--b-ip" => a.b_ip = v()?.parse()?,
            "--base-port" => a.base_port = v()?.parse()?,
            "--per-side" => a.per_side = Some(v()?.parse()?),
            "--max-s" => a.max_s = v()?.parse()?,
            "--stats" => a.stats = Some(PathBuf::from(v()?)),
            "--kernel" => a.kernel = Some(PathBuf::from(v()?)),
            "--dev" => a.dev = v()?,
            _ => bail!("unknown argument {k} (see the doc comment of relay_host.rs)"),
        }
    }
    if a.sessions == 0 || a.out.as_os_str().is_empty() {
        bail!("--sessions N (> 0) and --out FILE are required");
    }
    Ok(a)
}

fn peer(at: SocketAddr) -> PeerMedia {
    PeerMedia {
        rtp: Some(at),
        rtcp: Some(SocketAddr::new(at.ip(), at.port().wrapping_add(1))),
        ..PeerMedia::unknown()
    }
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    raise_nofile();
    let config = RelayConfig {
        bind: a.bind,
        ports: PortRange {
            min: a.port_min,
            max: a.port_max,
        },
        threads: a.threads,
        max_sessions: a.sessions,
        kernel_forwarding: a.kernel.clone().map(|program| KernelForwarding {
            interface: a.dev.clone(),
            program,
        }),
        ..RelayConfig::default()
    };
    let relay = Relay::start(config).context("starting the relay")?;
    let per_side = a.per_side.unwrap_or(a.sessions);
    let mut lines = Vec::with_capacity(a.sessions);
    for i in 0..a.sessions {
        let (pa, pb) = endpoints(i, a.a_ip, a.b_ip, a.base_port, per_side)?;
        let s = relay
            .create_session(peer(pa), peer(pb))
            .with_context(|| format!("creating session {i}"))?;
        lines.push(SessionLine {
            a: pa,
            b: pb,
            relay_for_a: SocketAddr::new(s.addr, s.a.rtp),
            relay_for_b: SocketAddr::new(s.addr, s.b.rtp),
        });
    }
    write_sessions(&a.out, &lines)?;
    println!("ready sessions={} pid={}", a.sessions, std::process::id());
    std::io::stdout().flush()?;
    let end = Instant::now() + Duration::from_secs(a.max_s);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(path) = &a.stats {
            let c = relay.counters();
            let text = format!(
                "sessions={} forwarded={} kernel_forwarded={} dropped={} send_failed={} truncated={}\n",
                c.sessions,
                c.forwarded + c.kernel_forwarded,
                c.kernel_forwarded,
                c.dropped,
                c.send_failed,
                c.truncated
            );
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
