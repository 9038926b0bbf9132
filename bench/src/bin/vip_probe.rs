//! Probes an address every few milliseconds and reports how long it stayed silent after
//! a crash (`bench/failover.sh`).
//!
//! `vip_probe --mode sip|icmp --target IP[:PORT] [--local IP] [--interval-ms 10]
//!            (--trigger FILE | --until-ready) [--max-s 30] [--linger-ms 300]`
//!
//! - `sip`: one SIP OPTIONS over UDP to `IP:PORT` (5060) per interval, each a new
//!   transaction (own branch, Call-ID and CSeq), never retransmitted; an answer is a
//!   `200` to it.
//! - `icmp`: one ICMP echo request per interval (raw socket: root); an answer is the echo
//!   reply with our identifier and its sequence number.
//!
//! It prints `ready` once three probes in a row were answered (with `--until-ready` it
//! then exits 0; 1 if that did not happen within `--max-s`). The crash time is written
//! by the driver into FILE (wall-clock seconds, as `date +%s.%N` prints); from then on,
//! the first answer to a probe *sent after* that instant (which the dead holder cannot
//! have sent) ends the measurement:
//!
//! `failover_ms=F gap_ms=G sent=S answered=A`  (F = crash -> that answer's arrival;
//! G = last answer before the crash -> that answer), or `failover_ms=timeout` when none
//! came within `--max-s` of the start. Bounded in time in every case.

use anyhow::{bail, Context};
use bench::sipua::wall_now;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sip,
    Icmp,
}

struct Args {
    mode: Mode,
    target: SocketAddr,
    local: IpAddr,
    interval: Duration,
    trigger: Option<PathBuf>,
    until_ready: bool,
    max_s: f64,
    linger: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let (mut mode, mut target, mut local) = (Mode::Sip, None, IpAddr::from([0, 0, 0, 0]));
    let (mut interval, mut trigger, mut max_s, mut linger) = (10u64, None, 30.0, 300u64);
    let mut until_ready = false;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--mode" => {
                mode = match v()?.as_str() {
                    "sip" => Mode::Sip,
                    "icmp" => Mode::Icmp,
                    m => bail!("unknown mode {m}"),
                }
            }
            "--target" => target = Some(v()?),
            "--local" => local = v()?.parse()?,
            "--interval-ms" => interval = v()?.parse()?,
            "--trigger" => trigger = Some(PathBuf::from(v()?)),
            "--max-s" => max_s = v()?.parse()?,
            "--linger-ms" => linger = v()?.parse()?,
            "--until-ready" => until_ready = true,
            _ => bail!("unknown argument {k}"),
        }
    }
    let target = target.context("--target is required")?;
    let target: SocketAddr = match target.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => SocketAddr::new(target.parse()?, 5060),
    };
    anyhow::ensure!((1..=1000).contains(&interval), "--interval-ms: 1..=1000");
    anyhow::ensure!(max_s > 0.0 && max_s <= 600.0, "--max-s: (0, 600]");
    anyhow::ensure!(
        trigger.is_some() || until_ready,
        "--trigger FILE or --until-ready is required"
    );
    Ok(Args {
        mode,
        target,
        local,
        interval: Duration::from_millis(interval),
        trigger,
        until_ready,
        max_s,
        linger: Duration::from_millis(linger.min(5_000)),
    })
}

/// One probe socket: sends probe `seq`, returns the sequence numbers answered.
trait Prober {
    fn send(&mut self, seq: u32) -> anyhow::Result<()>;
    /// Reads what arrived (non-blocking); answered sequence numbers.
    fn recv(&mut self, out: &mut Vec<u32>);
    fn fd(&self) -> i32;
}

struct SipProber {
    sock: UdpSocket,
    target: SocketAddr,
    local: SocketAddr,
    id: String,
}

impl Prober for SipProber {
    fn send(&mut self, seq: u32) -> anyhow::Result<()> {
        let (id, t, l) = (&self.id, self.target, self.local);
        let msg = format!(
            "OPTIONS sip:{t} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKvp{id}x{seq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{ip}>;tag=vp{id}\r\nTo: <sip:{t}>\r\nCall-ID: vp{id}x{seq}\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n",
            ip = l.ip()
        );
        // a send may fail while the route or neighbour is gone: that probe is lost
        let _ = self.sock.send_to(msg.as_bytes(), self.target);
        Ok(())
    }

    fn recv(&mut self, out: &mut Vec<u32>) {
        let mut buf = [0u8; 4096];
        while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            let Ok(m) = node::sip::message::parse(&buf[..n]) else {
                continue;
            };
            if m.status() != Some(200) {
                continue;
            }
            if let Some((seq, _)) = m.cseq() {
                if m.call_id() == Some(&format!("vp{}x{seq}", self.id)) {
                    out.push(seq);
                }
            }
        }
    }

    fn fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }
}

struct IcmpProber {
    sock: OwnedFd,
    target: Ipv4Addr,
    ident: u16,
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl IcmpProber {
    fn new(target: Ipv4Addr, local: IpAddr) -> anyhow::Result<IcmpProber> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        };
        if fd < 0 {
            bail!(
                "raw ICMP socket: {} (needs root)",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: fd is a fresh descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        if let IpAddr::V4(l) = local {
            if !l.is_unspecified() {
                let sa = sockaddr(l, 0);
                // SAFETY: sa is a valid sockaddr_in for the call's duration.
                let r = unsafe {
                    libc::bind(
                        fd,
                        &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                if r < 0 {
                    bail!("bind {l}: {}", std::io::Error::last_os_error());
                }
            }
        }
        Ok(IcmpProber {
            sock,
            target,
            ident: (std::process::id() & 0xffff) as u16,
        })
    }
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
    sa
}

impl Prober for IcmpProber {
    fn send(&mut self, seq: u32) -> anyhow::Result<()> {
        let mut p = [0u8; 16];
        p[0] = 8; // echo request
        p[4..6].copy_from_slice(&self.ident.to_be_bytes());
        p[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
        p[8..16].copy_from_slice(&(seq as u64).to_be_bytes());
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        let sa = sockaddr(self.target, 0);
        // SAFETY: p and sa are valid for the call; errors (no route while the link is
        // down) lose this probe only.
        unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                p.as_ptr() as *const libc::c_void,
                p.len(),
                0,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
        }
        Ok(())
    }

    fn recv(&mut self, out: &mut Vec<u32>) {
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n <= 0 {
                return;
            }
            let b = &buf[..n as usize];
            if b.len() < 20 {
                continue;
            }
            let ihl = ((b[0] & 0x0f) as usize) * 4;
            let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
            if src != self.target || b.len() < ihl + 16 {
                continue;
            }
            let icmp = &b[ihl..];
            if icmp[0] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != self.ident {
                continue;
            }
            // the full sequence number rides in the payload (the header keeps 16 bits)
            let mut s = [0u8; 8];
            s.copy_from_slice(&icmp[8..16]);
            out.push(u64::from_be_bytes(s) as u32);
        }
    }

    fn fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }
}

fn read_trigger(path: &Option<PathBuf>) -> Option<f64> {
    std::fs::read_to_string(path.as_ref()?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    let mut prober: Box<dyn Prober> = match a.mode {
        Mode::Sip => {
            let sock = UdpSocket::bind(SocketAddr::new(a.local, 0)).context("bind")?;
            sock.set_nonblocking(true)?;
            let local = sock.local_addr()?;
            Box::new(SipProber {
                sock,
                target: a.target,
                local,
                id: format!("{:x}{:x}", std::process::id(), wall_now() as u64 & 0xffffff),
            })
        }
        Mode::Icmp => {
            let IpAddr::V4(t) = a.target.ip() else {
                bail!("icmp: IPv4 targets only")
            };
            Box::new(IcmpProber::new(t, a.local)?)
        }
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.max_s);
    // probe seq -> wall time it was sent
    let mut sent_at: HashMap<u32, f64> = HashMap::new();
    let mut seq: u32 = 0;
    let mut next_send = Instant::now();
    let mut answered_seqs = Vec::new();
    let (mut answered, mut streak, mut ready) = (0u64, 0u32, false);
    let mut last_seq_answered: Option<u32> = None;
    // arrival times of the latest answers (bounded), to find the last one before the crash
    let mut recent: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
    let mut last_before_crash: Option<f64> = None;
    let mut crash: Option<f64> = None;
    let mut next_trigger_check = Instant::now();
    let mut result: Option<(f64, f64)> = None;
    let mut end: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline || end.is_some_and(|e| now >= e) {
            break;
        }
        if now >= next_send {
            seq += 1;
            sent_at.insert(seq, wall_now());
            prober.send(seq)?;
            next_send += a.interval;
            if next_send < now {
                next_send = now + a.interval; // never burst to catch up
            }
            // forget probes older than 5 s (bounded map)
            if seq > 500 {
                sent_at.remove(&(seq - 500));
            }
        }
        if crash.is_none() && now >= next_trigger_check {
            crash = read_trigger(&a.trigger);
            if let Some(c) = crash {
                last_before_crash = recent.iter().rev().find(|w| **w <= c).copied();
            }
            next_trigger_check = now + Duration::from_millis(2);
        }
        let wait = next_send
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(2));
        let mut pfd = libc::pollfd {
            fd: prober.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as i32) };
        answered_seqs.clear();
        prober.recv(&mut answered_seqs);
        let w = wall_now();
        for &s in &answered_seqs {
            let Some(&sent) = sent_at.get(&s) else {
                continue;
            };
            answered += 1;
            if last_seq_answered.is_some_and(|l| s == l + 1) {
                streak += 1;
            } else {
                streak = 1;
            }
            last_seq_answered = Some(s);
            if !ready && streak >= 3 && crash.is_none() {
                ready = true;
                println!("ready");
                if a.until_ready {
                    return Ok(());
                }
            }
            if let Some(c) = crash {
                if result.is_none() && sent > c {
                    let gap = last_before_crash.map(|l| w - l).unwrap_or(w - c);
                    result = Some(((w - c) * 1000.0, gap * 1000.0));
                    end = Some(Instant::now() + a.linger);
                }
            } else {
                recent.push_back(w);
                if recent.len() > 500 {
                    recent.pop_front();
                }
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    if a.until_ready {
        println!("not_ready sent={seq} answered={answered}");
        std::process::exit(1);
    }
    match result {
        Some((f, g)) => println!("failover_ms={f:.0} gap_ms={g:.0} sent={seq} answered={answered}"),
        None if crash.is_none() => {
            println!("failover_ms=timeout note=no_trigger sent={seq} answered={answered}")
        }
        None => println!("failover_ms=timeout sent={seq} answered={answered}"),
    }
    Ok(())
}
