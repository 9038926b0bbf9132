//! Paced G.711 RTP through relay sessions, counting what comes back intact.
//!
//! `rtp_blast --sessions FILE --n N [--warmup 2] [--measure 6] [--pps 50]
//!            [--relay-pid PID [--threads-prefix media-fwd-]] [--account-cpu N]`
//!
//! FILE holds one session per line, `a b relay_for_a relay_for_b` (socket addresses, see
//! `bench::rtp::SessionLine`); the first N are driven. Every distinct peer address of the
//! file gets one UDP socket (sessions may share them); each session has two streams, A to
//! `relay_for_a` (arriving at B) and B to `relay_for_b` (arriving at A), each sending `pps`
//! packets per second: a PCMU RTP packet of 172 bytes (12-byte header with its own SSRC,
//! sequence number and timestamp, 160 bytes of payload). Streams are spread evenly over
//! 1 ms slots, sent with `sendmmsg` per socket and slot; when the blaster is more than 20
//! slots late it skips slots rather than bursting (reported), so it never offers more than
//! the nominal load. Received datagrams are read with `recvmmsg` from an epoll loop and
//! checked: length, RTP header, payload bytes, the SSRC of a stream whose far end is the
//! socket it arrived on. Packets out of sequence (duplicates, reordering) are counted.
//!
//! After `warmup` seconds, a `measure` second window: packets sent and relayed intact in
//! the window, the relay's CPU (utime + stime of all threads of `--relay-pid` from
//! `/proc`, and separately of its threads named `--threads-prefix*`) and the blaster's.
//! With `--account-cpu N`, the relay's CPU is instead CPU N's whole busy time: the
//! window minus CPU N's idle time from `/proc/stat` (exact on a tickless kernel) and its
//! nice > 0 time (for a relay pinned to CPU N with receive processing steered there by
//! RPS: it includes the softirq work an in-kernel fast path does); `softirq_pct` lists
//! every CPU's (tick-sampled) softirq time in the window, a hint of where that work ran.
//! Prints one line of `key=value` pairs. Bounded: warm-up + window <= 120 s.

use anyhow::{bail, Context};
use bench::rtp::{
    check_packet, cpu_times, process_cpu_s, raise_nofile, read_sessions, self_cpu_s, threads_cpu_s,
    write_packet, PACKET_LEN, SSRC_BASE,
};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Slot length: streams are spread over the packet interval in slots of 1 ms.
const SLOT: Duration = Duration::from_millis(1);
/// Slots the blaster may be late before it skips instead of catching up: one packet
/// interval (a phone's jitter buffer absorbs that much).
const MAX_BEHIND: u64 = 20;
/// Datagrams per `sendmmsg` call at most.
const SEND_BATCH: usize = 1024;
/// Datagrams per `recvmmsg` call.
const RECV_BATCH: usize = 64;
/// Receive buffer per datagram (larger than a packet, to see oversized ones).
const RECV_BUF: usize = 2048;
/// Socket buffers asked for (the relay may answer in bursts).
const SOCK_BUF: libc::c_int = 8 << 20;
/// epoll token of the slot timer.
const TIMER: u64 = u64::MAX;

struct Args {
    sessions: PathBuf,
    n: usize,
    warmup: f64,
    measure: f64,
    pps: u32,
    relay_pid: Option<u32>,
    threads_prefix: Option<String>,
    account_cpu: Option<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        sessions: PathBuf::new(),
        n: 0,
        warmup: 2.0,
        measure: 6.0,
        pps: 50,
        relay_pid: None,
        threads_prefix: None,
        account_cpu: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--sessions" => a.sessions = PathBuf::from(v()?),
            "--n" => a.n = v()?.parse()?,
            "--warmup" => a.warmup = v()?.parse()?,
            "--measure" => a.measure = v()?.parse()?,
            "--pps" => a.pps = v()?.parse()?,
            "--relay-pid" => a.relay_pid = Some(v()?.parse()?),
            "--threads-prefix" => a.threads_prefix = Some(v()?),
            "--account-cpu" => a.account_cpu = Some(v()?.parse()?),
            _ => bail!("unknown argument {k} (see the doc comment of rtp_blast.rs)"),
        }
    }
    if a.n == 0 || a.pps == 0 || a.pps > 1000 {
        bail!("--n must be > 0 and --pps in 1..=1000");
    }
    if a.warmup < 0.0 || a.measure <= 0.0 || a.warmup + a.measure > 120.0 {
        bail!("want warmup >= 0, measure > 0, warmup + measure <= 120 s");
    }
    Ok(a)
}

/// One direction of one session.
struct Stream {
    /// Socket it is sent from.
    from: usize,
    /// Socket it must arrive at.
    to: usize,
    /// Relay address, as a sockaddr for sendmmsg.
    relay: libc::sockaddr_in,
    seq: u16,
    ts: u32,
    /// Highest sequence number received so far (for the out-of-sequence count).
    last_rx: Option<u16>,
}

fn sockaddr_in(a: SocketAddr) -> anyhow::Result<libc::sockaddr_in> {
    let SocketAddr::V4(v4) = a else {
        bail!("IPv4 addresses only, got {a}");
    };
    Ok(libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    })
}

fn set_buf(fd: RawFd, force: libc::c_int, plain: libc::c_int) {
    let v = SOCK_BUF;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let p = &v as *const libc::c_int as *const libc::c_void;
    // SAFETY: fd is an open socket; the option is a c_int.
    unsafe {
        if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, len);
        }
    }
}

fn open_endpoint(at: SocketAddr) -> anyhow::Result<UdpSocket> {
    let s = UdpSocket::bind(at).with_context(|| format!("binding {at}"))?;
    s.set_nonblocking(true)?;
    set_buf(s.as_raw_fd(), libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
    set_buf(s.as_raw_fd(), libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
    Ok(s)
}

fn epoll_add(ep: RawFd, fd: RawFd, token: u64) -> anyhow::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: both descriptors are open; ev is valid.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error()).context("epoll_ctl");
    }
    Ok(())
}

/// A periodic CLOCK_MONOTONIC timer firing every [`SLOT`].
fn slot_timer() -> anyhow::Result<OwnedFd> {
    // SAFETY: plain syscall, result checked.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("timerfd_create");
    }
    // SAFETY: fresh descriptor nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: SLOT.as_nanos() as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: ts,
        it_value: ts,
    };
    // SAFETY: valid descriptor and itimerspec.
    if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error()).context("timerfd_settime");
    }
    Ok(owned)
}

/// Counters, snapshotted at the window's edges.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    sent: u64,
    send_err: u64,
    recv: u64,
    bad: u64,
    out_of_seq: u64,
    recv_calls: u64,
    send_calls: u64,
    late_slots: u64,
    skipped_slots: u64,
}

struct Blaster {
    socks: Vec<UdpSocket>,
    streams: Vec<Stream>,
    /// Per slot: stream indexes, sorted by sending socket.
    schedule: Vec<Vec<u32>>,
    c: Counts,
    send_bufs: Vec<[u8; PACKET_LEN]>,
    send_iov: Vec<libc::iovec>,
    send_hdrs: Vec<libc::mmsghdr>,
    recv_data: Vec<u8>,
    recv_iov: Vec<libc::iovec>,
    recv_hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
fn zeroed_mmsghdr() -> libc::mmsghdr {
    unsafe { std::mem::zeroed() }
}

impl Blaster {
    fn send_slot(&mut self, slot: usize) {
        let list = std::mem::take(&mut self.schedule[slot]);
        let mut at = 0;
        while at < list.len() {
            let from = self.streams[list[at] as usize].from;
            let mut k = 0;
            while at < list.len() && k < SEND_BATCH {
                let j = list[at] as usize;
                if self.streams[j].from != from {
                    break;
                }
                let st = &mut self.streams[j];
                write_packet(&mut self.send_bufs[k], st.seq, st.ts, SSRC_BASE + j as u32);
                st.seq = st.seq.wrapping_add(1);
                st.ts = st.ts.wrapping_add(160);
                self.send_iov[k] = libc::iovec {
                    iov_base: self.send_bufs[k].as_mut_ptr() as *mut libc::c_void,
                    iov_len: PACKET_LEN,
                };
                let h = &mut self.send_hdrs[k];
                *h = zeroed_mmsghdr();
                h.msg_hdr.msg_name = &mut st.relay as *mut libc::sockaddr_in as *mut libc::c_void;
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_hdr.msg_iov = &mut self.send_iov[k];
                h.msg_hdr.msg_iovlen = 1;
                k += 1;
                at += 1;
            }
            let fd = self.socks[from].as_raw_fd();
            let mut done = 0;
            while done < k {
                // SAFETY: the headers point into buffers owned by self (and streams),
                // unmoved during the call.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.send_hdrs[done..k].as_mut_ptr(),
                        (k - done) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                self.c.send_calls += 1;
                if r > 0 {
                    self.c.sent += r as u64;
                    done += r as usize;
                } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    self.c.send_err += 1;
                    done += 1;
                }
            }
        }
        self.schedule[slot] = list;
    }

    fn drain(&mut self, ep: usize) {
        let fd = self.socks[ep].as_raw_fd();
        loop {
            let base = self.recv_data.as_mut_ptr();
            for i in 0..RECV_BATCH {
                self.recv_iov[i] = libc::iovec {
                    // SAFETY: i * RECV_BUF + RECV_BUF <= recv_data.len().
                    iov_base: unsafe { base.add(i * RECV_BUF) } as *mut libc::c_void,
                    iov_len: RECV_BUF,
                };
                let h = &mut self.recv_hdrs[i];
                *h = zeroed_mmsghdr();
                h.msg_hdr.msg_iov = &mut self.recv_iov[i];
                h.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: headers point into self's buffers, unmoved during the call.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.recv_hdrs.as_mut_ptr(),
                    RECV_BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            self.c.recv_calls += 1;
            if n <= 0 {
                return;
            }
            let n = n as usize;
            for i in 0..n {
                let len = (self.recv_hdrs[i].msg_len as usize).min(RECV_BUF);
                let data = &self.recv_data[i * RECV_BUF..i * RECV_BUF + len];
                let j = check_packet(data).map(|ssrc| ssrc.wrapping_sub(SSRC_BASE) as usize);
                match j.and_then(|j| self.streams.get_mut(j)) {
                    Some(st) if st.to == ep => {
                        self.c.recv += 1;
                        let seq = u16::from_be_bytes([data[2], data[3]]);
                        if let Some(last) = st.last_rx {
                            if seq.wrapping_sub(last) == 0 || seq.wrapping_sub(last) > 0x8000 {
                                self.c.out_of_seq += 1;
                                continue;
                            }
                        }
                        st.last_rx = Some(seq);
                    }
                    _ => self.c.bad += 1,
                }
            }
            if n < RECV_BATCH {
                return;
            }
        }
    }
}

struct Cpu {
    relay: Option<f64>,
    relay_threads: Option<f64>,
    me: f64,
    cpus: Vec<bench::rtp::CpuTimes>,
}

fn cpu(a: &Args) -> Cpu {
    Cpu {
        relay: a.relay_pid.and_then(process_cpu_s),
        relay_threads: match (a.relay_pid, &a.threads_prefix) {
            (Some(p), Some(pre)) => threads_cpu_s(p, pre),
            _ => None,
        },
        me: self_cpu_s(),
        cpus: cpu_times(),
    }
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    raise_nofile();
    let lines = read_sessions(&a.sessions, a.n)?;
    let mut index: HashMap<SocketAddr, usize> = HashMap::new();
    let mut socks = Vec::new();
    let mut endpoint = |at: SocketAddr| -> anyhow::Result<usize> {
        if let Some(&i) = index.get(&at) {
            return Ok(i);
        }
        socks.push(open_endpoint(at)?);
        index.insert(at, socks.len() - 1);
        Ok(socks.len() - 1)
    };
    let mut streams = Vec::with_capacity(2 * lines.len());
    for l in &lines {
        let (ea, eb) = (endpoint(l.a)?, endpoint(l.b)?);
        for (from, to, relay) in [(ea, eb, l.relay_for_a), (eb, ea, l.relay_for_b)] {
            let j = streams.len() as u32;
            streams.push(Stream {
                from,
                to,
                relay: sockaddr_in(relay)?,
                seq: (j.wrapping_mul(7919)) as u16,
                ts: j.wrapping_mul(1000),
                last_rx: None,
            });
        }
    }
    let slots = ((1000 / a.pps) as usize).max(1);
    let mut schedule: Vec<Vec<u32>> = vec![Vec::new(); slots];
    for (j, _) in streams.iter().enumerate() {
        schedule[j % slots].push(j as u32);
    }
    for s in &mut schedule {
        s.sort_by_key(|&j| streams[j as usize].from);
    }

    // SAFETY: plain syscall, result checked.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(io::Error::last_os_error()).context("epoll_create1");
    }
    // SAFETY: fresh descriptor nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
    for (i, s) in socks.iter().enumerate() {
        epoll_add(epfd, s.as_raw_fd(), i as u64)?;
    }
    let mut b = Blaster {
        socks,
        streams,
        schedule,
        c: Counts::default(),
        send_bufs: vec![[0u8; PACKET_LEN]; SEND_BATCH],
        send_iov: vec![
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0
            };
            SEND_BATCH
        ],
        send_hdrs: vec![zeroed_mmsghdr(); SEND_BATCH],
        recv_data: vec![0u8; RECV_BATCH * RECV_BUF],
        recv_iov: vec![
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0
            };
            RECV_BATCH
        ],
        recv_hdrs: vec![zeroed_mmsghdr(); RECV_BATCH],
    };
    let timer = slot_timer()?;
    epoll_add(epfd, timer.as_raw_fd(), TIMER)?;

    let start = Instant::now();
    let t_warm = start + Duration::from_secs_f64(a.warmup);
    let t_end = t_warm + Duration::from_secs_f64(a.measure);
    let mut slot = 0usize;
    let mut window: Option<(Instant, Counts, Cpu)> = None;
    // SAFETY: epoll_event is plain data.
    let mut events: [libc::epoll_event; 256] = unsafe { std::mem::zeroed() };
    b.send_slot(slot);
    loop {
        // SAFETY: `events` has room for 256 entries.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), 256, 100) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("epoll_wait");
        }
        let now = Instant::now();
        if window.is_none() && now >= t_warm {
            window = Some((now, b.c, cpu(&a)));
        }
        if now >= t_end {
            break;
        }
        for ev in events.iter().take(n as usize) {
            let token = ev.u64;
            if token != TIMER {
                b.drain(token as usize);
                continue;
            }
            let mut buf = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer.
            let r =
                unsafe { libc::read(timer.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 8) };
            if r != 8 {
                continue;
            }
            let due = u64::from_ne_bytes(buf);
            if due > 1 {
                b.c.late_slots += 1;
            }
            let send = if due > MAX_BEHIND {
                // Too late: skip to the current slot rather than bursting.
                b.c.skipped_slots += due - 1;
                slot = (slot + (due - 1) as usize) % slots;
                1
            } else {
                due
            };
            for _ in 0..send {
                slot = (slot + 1) % slots;
                b.send_slot(slot);
            }
        }
    }
    let t1 = Instant::now();
    let c1 = b.c;
    let cpu1 = cpu(&a);
    let Some((t0, c0, cpu0)) = window else {
        bail!("the window never started");
    };
    let win = (t1 - t0).as_secs_f64();
    let sent = c1.sent - c0.sent;
    let recv = c1.recv - c0.recv;
    let pct = |x0: Option<f64>, x1: Option<f64>| match (x0, x1) {
        (Some(x0), Some(x1)) => 100.0 * (x1 - x0) / win,
        _ => -1.0,
    };
    let relay_pct = match a.account_cpu {
        Some(n) => match (cpu0.cpus.get(n), cpu1.cpus.get(n)) {
            (Some(x0), Some(x1)) => 100.0 * x0.busy_s(x1, win) / win,
            _ => -1.0,
        },
        None => pct(cpu0.relay, cpu1.relay),
    };
    let softirq: Vec<String> = cpu0
        .cpus
        .iter()
        .zip(&cpu1.cpus)
        .map(|(x0, x1)| format!("{:.1}", 100.0 * (x1.softirq - x0.softirq) / win))
        .collect();
    let threads_pct = pct(cpu0.relay_threads, cpu1.relay_threads);
    let recv_pps = recv as f64 / win;
    let offered = b.streams.len() as u64 * u64::from(a.pps);
    let recv_calls = (c1.recv_calls - c0.recv_calls).max(1);
    println!(
        "sessions={} streams={} sockets={} offered_pps={} window_s={:.2} sent={} recv={} \
         send_pps={:.0} recv_pps={:.0} loss_pct={:.3} bad={} out_of_seq={} \
         relay_cpu_pct={:.1} relay_threads_cpu_pct={:.1} pps_per_core={:.0} \
         blaster_cpu_pct={:.1} pkts_per_recvmmsg={:.2} pkts_per_sendmmsg={:.2} \
         late_slots={} skipped_slots={} send_err={} softirq_pct={}",
        a.n,
        b.streams.len(),
        b.socks.len(),
        offered,
        win,
        sent,
        recv,
        sent as f64 / win,
        recv_pps,
        if sent > 0 {
            100.0 * (sent as f64 - recv as f64) / sent as f64
        } else {
            0.0
        },
        c1.bad - c0.bad,
        c1.out_of_seq - c0.out_of_seq,
        relay_pct,
        threads_pct,
        if relay_pct > 0.0 {
            recv_pps / (relay_pct / 100.0)
        } else {
            0.0
        },
        100.0 * (cpu1.me - cpu0.me) / win,
        recv as f64 / recv_calls as f64,
        sent as f64 / (c1.send_calls - c0.send_calls).max(1) as f64,
        c1.late_slots - c0.late_slots,
        c1.skipped_slots - c0.skipped_slots,
        c1.send_err - c0.send_err,
        softirq.join(","),
    );
    drop(epoll);
    Ok(())
}
