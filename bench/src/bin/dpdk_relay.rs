//! Relayed RTP packets per second on one core, DPDK backend, on virtual devices.
//!
//! The relay serves a `net_ring` port whose receive ring a generator on the other
//! core fills and whose transmit ring it drains: no kernel, no copies, so the
//! figure is the backend's own cost per packet (parse, session decision with RTP
//! statistics, in-place rewrite with checksums, bursts). The generator keeps a fixed
//! number of frames in flight and turns every relayed frame into the next packet of
//! the stream it reached (swap addresses, next sequence number and timestamp), so
//! every session carries two well-formed RTP streams.
//!
//! Env: DPDK_SESSIONS (100), DPDK_SECONDS (5), DPDK_INFLIGHT (2048 frames),
//! DPDK_RELAY_CPU (1), DPDK_GEN_CPU (0), DPDK_GOAL_MPPS (2.0).
//! The figure is packets relayed per second of CPU time the relay thread got (from
//! its schedstat): on a shared machine other processes take turns on its core, and
//! wall-clock time would count their share against the relay. The thread polls
//! without pause, so idle polls count too (a generator slower than the relay makes
//! the figure a lower bound); the wall-clock rate and the rate over polls that found
//! frames are printed as well. Last line:
//! `dpdk_relay mpps_per_core=X goal=G wall_mpps=W`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use media::dpdk::{init_eal, sys, DpdkConfig, DpdkRelay};
use media::ports::PortRange;
use media::rtp::RtpHeader;
use media::session::PeerMedia;
use media::wire::{self, Mac};

const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const GEN_MAC: Mac = [0x02, 0, 0, 0, 0, 0x99];
const RING_SIZE: u32 = 8192;
/// Ethernet + IPv4 + UDP headers, then the RTP header.
const RTP_AT: usize = wire::ETH_LEN + wire::IPV4_LEN + wire::UDP_LEN;
const UDP_AT: usize = wire::ETH_LEN + wire::IPV4_LEN;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pin(cpu: usize) {
    // SAFETY: plain data and a call on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Nanoseconds the thread named `name` of this process has run on a CPU.
fn thread_cpu_nanos(name: &str) -> Option<u64> {
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            return stat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

fn ring(name: &str) -> anyhow::Result<*mut sys::rte_ring> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid name; single producer and single consumer on each ring.
    let r = unsafe {
        sys::rte_ring_create(
            c.as_ptr(),
            RING_SIZE,
            0,
            sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ,
        )
    };
    if r.is_null() {
        bail!("rte_ring_create {name} failed");
    }
    Ok(r)
}

/// One's-complement adjustment of a checksum for a changed 32-bit value.
fn adjust32(sum: u16, old: u32, new: u32) -> u16 {
    let mut acc = u32::from(!sum);
    acc += u32::from(!(old >> 16) as u16) + u32::from(!(old as u16));
    acc += (new >> 16) + (new & 0xffff);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    match !(acc as u16) {
        0 => 0xffff,
        c => c,
    }
}

/// Next sequence number per destination relay port (a stream per direction).
struct Streams {
    seq: Vec<u16>,
}

/// Turns a frame the relay sent to phone X into X's next packet to the relay.
///
/// # Safety
/// `data` points at `len` bytes of a single-segment frame built by this generator.
unsafe fn recycle(data: *mut u8, len: usize, relay_mac: &Mac, streams: &mut Streams) -> bool {
    if len < RTP_AT + 12 {
        return false;
    }
    // SAFETY: per the contract.
    let f = unsafe { std::slice::from_raw_parts_mut(data, len) };
    if u16::from_be_bytes([f[12], f[13]]) != wire::ETHERTYPE_IPV4 {
        return false;
    }
    f[0..6].copy_from_slice(relay_mac);
    f[6..12].copy_from_slice(&GEN_MAC);
    // Swapping source and destination leaves both checksums valid.
    let ip = wire::ETH_LEN;
    for i in 0..4 {
        f.swap(ip + 12 + i, ip + 16 + i);
    }
    for i in 0..2 {
        f.swap(UDP_AT + i, UDP_AT + 2 + i);
    }
    let port = u16::from_be_bytes([f[UDP_AT + 2], f[UDP_AT + 3]]);
    let s = &mut streams.seq[usize::from(port)];
    *s = s.wrapping_add(1);
    let old_seq = u16::from_be_bytes([f[RTP_AT + 2], f[RTP_AT + 3]]);
    let old_ts = u32::from_be_bytes([f[RTP_AT + 4], f[RTP_AT + 5], f[RTP_AT + 6], f[RTP_AT + 7]]);
    let ts = u32::from(*s).wrapping_mul(160);
    f[RTP_AT + 2..RTP_AT + 4].copy_from_slice(&s.to_be_bytes());
    f[RTP_AT + 4..RTP_AT + 8].copy_from_slice(&ts.to_be_bytes());
    let sum = u16::from_be_bytes([f[UDP_AT + 6], f[UDP_AT + 7]]);
    if sum != 0 {
        let sum = adjust32(sum, u32::from(old_seq), u32::from(*s));
        let sum = adjust32(sum, old_ts, ts);
        f[UDP_AT + 6..UDP_AT + 8].copy_from_slice(&sum.to_be_bytes());
    }
    true
}

fn main() -> anyhow::Result<()> {
    let sessions: usize = env("DPDK_SESSIONS", 100);
    let seconds: u64 = env("DPDK_SECONDS", 5);
    let inflight: usize = env("DPDK_INFLIGHT", 2048);
    let relay_cpu: usize = env("DPDK_RELAY_CPU", 1);
    let gen_cpu: usize = env("DPDK_GEN_CPU", 0);
    let goal: f64 = env("DPDK_GOAL_MPPS", 2.0);

    let eal = media::dpdk::virtual_eal_args(512);
    init_eal(&eal).context("EAL")?;
    let (to_relay, from_relay) = (ring("bench_in")?, ring("bench_out")?);
    let name = std::ffi::CString::new("net_ring_bench")?;
    // SAFETY: two valid rings, one queue each way.
    let port = unsafe { sys::rte_eth_from_rings(name.as_ptr(), &to_relay, 1, &from_relay, 1, 0) };
    let port = u16::try_from(port).context("rte_eth_from_rings failed")?;
    let relay = DpdkRelay::start(DpdkConfig {
        eal_args: eal,
        port,
        address: RELAY_IP,
        prefix_len: 8,
        ports: PortRange {
            min: 20000,
            max: 60000,
        },
        max_sessions: sessions.max(1),
        command_queue: sessions + 64,
        idle_sleep: Duration::ZERO,
        cpu: Some(relay_cpu),
        mbufs: 4095,
        ..DpdkConfig::default()
    })
    .context("relay")?;
    let relay_mac = relay.mac();
    pin(gen_cpu);

    // Sessions whose phones' addresses are in their SDP; the relay learns their MACs
    // from the first frames (the generator's MAC, as if behind one router).
    let mut flows = Vec::new();
    for i in 0..sessions {
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8), 4000);
        let b = SocketAddrV4::new(Ipv4Addr::new(10, 2, (i >> 8) as u8, i as u8), 6000);
        let peer = |x: SocketAddrV4| PeerMedia {
            rtp: Some(SocketAddr::V4(x)),
            rtcp: Some(SocketAddr::V4(SocketAddrV4::new(*x.ip(), x.port() + 1))),
            ..PeerMedia::unknown()
        };
        let s = relay.create_session(peer(a), peer(b))?;
        flows.push((a, SocketAddrV4::new(RELAY_IP, s.a.rtp)));
        flows.push((b, SocketAddrV4::new(RELAY_IP, s.b.rtp)));
    }

    let pool_name = std::ffi::CString::new("bench_gen")?;
    let n_mbufs = (inflight as u32 * 2).next_power_of_two() - 1;
    // SAFETY: valid name and sizes.
    let pool = unsafe {
        sys::rte_pktmbuf_pool_create(
            pool_name.as_ptr(),
            n_mbufs,
            256,
            0,
            sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            0,
        )
    };
    if pool.is_null() {
        bail!("generator pool");
    }
    // The first frames: every flow in turn, 160 bytes of G.711 each.
    let payload = [0xd5u8; 160];
    let mut rtp = [0u8; 172];
    let mut seeded = 0usize;
    let mut batch: Vec<*mut sys::rte_mbuf> = Vec::with_capacity(inflight);
    for k in 0..inflight {
        let (src, dst) = flows[k % flows.len()];
        RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: 0,
            timestamp: 0,
            ssrc: k as u32,
        }
        .write(&payload, &mut rtp)
        .context("rtp")?;
        // SAFETY: a fresh mbuf from our pool.
        let m = unsafe { sys::ss_pktmbuf_alloc(pool) };
        if m.is_null() {
            break;
        }
        let len = RTP_AT + rtp.len();
        let mut got = 0u16;
        // SAFETY: the mbuf has 2 KiB of room; `len` bytes are set before use.
        unsafe {
            if sys::ss_mbuf_set_len(m, len as u16) != 0 {
                sys::ss_pktmbuf_free(m);
                break;
            }
            let d = sys::ss_mbuf_data(m, &mut got);
            let f = std::slice::from_raw_parts_mut(d, usize::from(got));
            wire::write_udp(f, relay_mac, GEN_MAC, src, dst, &rtp).context("frame")?;
        }
        batch.push(m);
        seeded += 1;
    }
    let mut at = 0;
    while at < batch.len() {
        // SAFETY: the pointers are ours; the ring takes what it accepts.
        let n = unsafe {
            sys::ss_ring_enqueue_burst(
                to_relay,
                batch[at..].as_mut_ptr() as *mut *mut std::ffi::c_void,
                (batch.len() - at) as u32,
            )
        } as usize;
        at += n;
    }

    let mut streams = Streams {
        seq: vec![0; 65_536],
    };
    let mut buf: [*mut sys::rte_mbuf; 64] = [std::ptr::null_mut(); 64];
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let relay_thread = format!("media-dpdk-{port}");
    let mut measured: Option<(Instant, media::dpdk::DpdkCounters, Option<u64>)> = None;
    let end = start + warmup + Duration::from_secs(seconds);
    let mut not_rtp = 0u64;
    let mut spins = 0u32;
    loop {
        // SAFETY: room for 64 pointers.
        let n =
            unsafe { sys::ss_ring_dequeue_burst(from_relay, buf.as_mut_ptr() as *mut *mut _, 64) }
                as usize;
        let mut keep = 0;
        for i in 0..n {
            let m = buf[i];
            let mut len = 0u16;
            // SAFETY: frames the relay sent: single segment, ours again.
            let ok = unsafe {
                let d = sys::ss_mbuf_data(m, &mut len);
                !d.is_null() && recycle(d, usize::from(len), &relay_mac, &mut streams)
            };
            if ok {
                buf[keep] = m;
                keep += 1;
            } else {
                // The relay's ARP requests (before it learned a phone): not load.
                // SAFETY: ours.
                unsafe { sys::ss_pktmbuf_free(m) };
                not_rtp += 1;
            }
        }
        let mut at = 0;
        while at < keep {
            // SAFETY: as above.
            at += unsafe {
                sys::ss_ring_enqueue_burst(
                    to_relay,
                    buf[at..keep].as_mut_ptr() as *mut *mut _,
                    (keep - at) as u32,
                )
            } as usize;
        }
        spins = spins.wrapping_add(1);
        if spins & 1023 != 0 {
            continue;
        }
        let now = Instant::now();
        if measured.is_none() && now >= start + warmup {
            measured = Some((now, relay.dpdk_counters(), thread_cpu_nanos(&relay_thread)));
        }
        if now >= end {
            break;
        }
    }
    let (t0, c0, cpu0) = measured.context("no measurement window")?;
    let c1 = relay.dpdk_counters();
    let cpu1 = thread_cpu_nanos(&relay_thread);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e9,
        _ => secs,
    };
    let forwarded = c1.forwarded - c0.forwarded;
    let busy = (c1.busy_nanos - c0.busy_nanos) as f64 / 1e9;
    let bursts = ((c1.polls - c0.polls) - (c1.idle_polls - c0.idle_polls)).max(1);
    let offered = forwarded as f64 / secs / 1e6;
    // Per core: packets per second of CPU time the relay thread got (it polls
    // without pause, so this counts its idle polls too: a lower bound).
    let mpps = forwarded as f64 / cpu.max(1e-9) / 1e6;
    let busy_mpps = forwarded as f64 / busy.max(1e-9) / 1e6;
    let cpu_pct = cpu / secs * 100.0;
    println!(
        "# dpdk relay on net_ring: {sessions} sessions ({} RTP streams), {seeded} frames in flight, \
         relay pinned to CPU {relay_cpu}, generator on CPU {gen_cpu}, {secs:.1} s",
        2 * sessions
    );
    println!(
        "# forwarded {forwarded} in {secs:.2} s; dropped {} (of which waiting for ARP {}), \
         send_failed {}; {not_rtp} ARP frames from the relay",
        c1.dropped - c0.dropped,
        c1.arp_pending - c0.arp_pending,
        c1.send_failed - c0.send_failed,
    );
    println!(
        "# relayed {offered:.2} Mpps wall clock; the relay thread ran {cpu:.2} s on its CPU \
         ({cpu_pct:.0} % of the window: the rest went to other processes), {:.1} frames per \
         burst; {busy_mpps:.2} Mpps counting only polls that found frames",
        forwarded as f64 / bursts as f64,
    );
    println!("dpdk_relay mpps_per_core={mpps:.2} goal={goal} wall_mpps={offered:.2}");
    Ok(())
}
