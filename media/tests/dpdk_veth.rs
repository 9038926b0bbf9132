//! The DPDK backend between two network namespaces: phone A (netns A) and phone B
//! (netns B), real kernel UDP sockets, reach each other only through the relay
//! address, which no kernel holds: DPDK answers its ARP and relays the RTP through
//! `net_af_packet` on a veth end bridged with both phones.
//!
//! ```text
//!  netns A: eth0 10.77.0.2 ─┐            netns R: br0 ── d1 ═ d0 ← DPDK (relay 10.77.0.1)
//!  netns B: eth0 10.77.0.3 ─┴─ ra/rb ── br0
//! ```
//!
//! `DPDK_VETH_VDEV` replaces the device (e.g. `net_af_xdp0,iface=d0`). One test per
//! process: EAL starts once. Needs root (namespaces, raw sockets);
//! without it the test says so and passes.

#![cfg(feature = "dpdk")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use media::dpdk::{DpdkConfig, DpdkRelay};
use media::ports::PortRange;
use media::rtp::RtpHeader;
use media::session::PeerMedia;
use media::udp::RelayError;

const RELAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PHONE_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PHONE_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const PACKETS: u16 = 50;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's namespaces; deleting them removes every interface made here.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn path(&self, i: usize) -> String {
        format!("/run/netns/{}", self.names[i])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// netns R (bridge and the DPDK veth end), A and B (one phone each).
fn topology() -> Namespaces {
    let pid = std::process::id();
    let ns = Namespaces {
        names: ["r", "a", "b"]
            .iter()
            .map(|s| format!("ssdpdk-{s}-{pid}"))
            .collect(),
    };
    for n in &ns.names {
        ip(&["netns", "add", n]);
    }
    let (r, a, b) = (&ns.names[0], &ns.names[1], &ns.names[2]);
    ip(&["-n", r, "link", "add", "br0", "type", "bridge"]);
    ip(&[
        "link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", "ra", "netns", r,
    ]);
    ip(&[
        "link", "add", "eth0", "netns", b, "type", "veth", "peer", "name", "rb", "netns", r,
    ]);
    ip(&[
        "-n", r, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
    ]);
    for port in ["ra", "rb", "d1"] {
        ip(&["-n", r, "link", "set", port, "master", "br0"]);
    }
    for dev in ["br0", "ra", "rb", "d0", "d1"] {
        ip(&["-n", r, "link", "set", dev, "up"]);
    }
    for (n, addr) in [(a, "10.77.0.2/24"), (b, "10.77.0.3/24")] {
        ip(&["-n", n, "addr", "add", addr, "dev", "eth0"]);
        ip(&["-n", n, "link", "set", "eth0", "up"]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    ns
}

/// Runs `f` on a thread that entered the network namespace at `path`.
fn in_netns<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a valid namespace descriptor; only this thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Turns off transmit checksum offload on `dev`: on veth the kernel would leave
/// UDP checksums for hardware that does not exist, and a raw-socket reader (DPDK's
/// af_packet) would see them unfinished. A physical NIC delivers finished ones.
fn tx_checksum_off(sock: &UdpSocket, dev: &str) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: ifreq is plain data; the name fits (IFNAMSIZ); ifr_data points at
    // `value`, alive during the call.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_data = &mut value as *mut EthtoolValue as *mut libc::c_char;
        let rc = libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req);
        assert_eq!(
            rc,
            0,
            "ETHTOOL_STXCSUM: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn phone(ns: String, addr: Ipv4Addr, port: u16) -> UdpSocket {
    in_netns(ns, move || {
        let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(addr), port)).unwrap();
        tx_checksum_off(&s, "eth0");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    })
}

fn rtp(seq: u16) -> Vec<u8> {
    let payload: Vec<u8> = (0..160u16).map(|i| (i as u8) ^ (seq as u8)).collect();
    let mut buf = vec![0u8; 12 + payload.len()];
    let n = RtpHeader {
        marker: false,
        payload_type: 0,
        sequence: seq,
        timestamp: u32::from(seq) * 160,
        ssrc: 0x1234,
    }
    .write(&payload, &mut buf)
    .unwrap();
    buf.truncate(n);
    buf
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).expect("relayed datagram");
    (buf[..n].to_vec(), from)
}

/// Waits up to 5 s for `cond` (the relay's counters trail what the phones see).
fn wait_for(cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn neighbour(ns: &str, addr: Ipv4Addr) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "neigh", "show", &addr.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

#[test]
fn dpdk_relays_rtp_between_two_namespaces() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: dpdk_veth needs root (network namespaces, AF_PACKET)");
        return;
    }
    let ns = topology();
    let config = relay_config();
    // af_packet opens its socket while EAL starts: in netns R.
    let relay = in_netns(ns.path(0), move || DpdkRelay::start(config)).expect("relay starts");
    let mac = relay.mac();
    let mac_text = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");

    let a = phone(ns.path(1), PHONE_A, 4000);
    let b = phone(ns.path(2), PHONE_B, 5000);
    let peer_a = PeerMedia {
        rtp: Some(SocketAddr::new(PHONE_A.into(), 4000)),
        rtcp: Some(SocketAddr::new(PHONE_A.into(), 4001)),
        ..PeerMedia::unknown()
    };
    let peer_b = PeerMedia {
        rtp: Some(SocketAddr::new(PHONE_B.into(), 5000)),
        rtcp: Some(SocketAddr::new(PHONE_B.into(), 5001)),
        ..PeerMedia::unknown()
    };
    let s = relay.create_session(peer_a, peer_b).unwrap();
    let first = s;
    assert_eq!(s.addr, IpAddr::V4(RELAY));
    let to_relay = |port| SocketAddr::new(RELAY.into(), port);

    // Each phone first sends to a port of no session: its kernel asks ARP for the
    // relay address, DPDK answers and learns the phone; the datagram is dropped.
    a.send_to(b"hello", to_relay(9)).unwrap();
    b.send_to(b"hello", to_relay(9)).unwrap();
    wait_for(|| relay.dpdk_counters().no_session >= 2);
    let c = relay.dpdk_counters();
    assert!(c.arp_replies >= 2, "ARP answered for both phones: {c:?}");
    assert_eq!(c.no_session, 2, "{c:?}");
    for (n, name) in [(1, "A"), (2, "B")] {
        let entry = neighbour(&ns.names[n], RELAY);
        assert!(
            entry.contains(&mac_text),
            "phone {name} resolved the relay to {mac_text}: {entry}"
        );
    }

    for seq in 0..PACKETS {
        let p = rtp(seq);
        a.send_to(&p, to_relay(s.a.rtp)).unwrap();
        let (got, from) = recv(&b);
        assert_eq!(got, p, "A→B packet {seq} intact");
        assert_eq!(from, to_relay(s.b.rtp), "B sees the relay's B port");
        let q = rtp(1000 + seq);
        b.send_to(&q, to_relay(s.b.rtp)).unwrap();
        let (got, from) = recv(&a);
        assert_eq!(got, q, "B→A packet {seq} intact");
        assert_eq!(from, to_relay(s.a.rtp), "A sees the relay's A port");
    }

    // Another socket of A's host sends into A's latched stream: dropped.
    let spoof = phone(ns.path(1), PHONE_A, 4444);
    spoof.send_to(&rtp(7), to_relay(s.a.rtp)).unwrap();
    b.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(b.recv_from(&mut buf).is_err(), "spoofed packet not relayed");

    wait_for(|| relay.counters().forwarded == 2 * u64::from(PACKETS));
    let stats = relay.stats(s.id).unwrap();
    assert_eq!(stats.a.forwarded_packets, u64::from(PACKETS));
    assert_eq!(stats.b.forwarded_packets, u64::from(PACKETS));
    assert_eq!(stats.a.dropped_wrong_source, 1);
    assert_eq!(
        stats.a.latched_rtp,
        Some(SocketAddr::new(PHONE_A.into(), 4000))
    );
    let c = relay.counters();
    assert_eq!(c.forwarded, 2 * u64::from(PACKETS));
    let payload: usize = (0..PACKETS)
        .map(|seq| rtp(seq).len() + rtp(1000 + seq).len())
        .sum();
    assert_eq!(c.bytes, payload as u64, "payload bytes relayed");
    assert_eq!(c.dropped, 3, "2 to no session + 1 spoofed: {c:?}");
    assert_eq!(c.send_failed, 0);
    assert_eq!(c.sessions, 1);
    let d = relay.dpdk_counters();
    assert_eq!(d.arp_pending, 0, "{d:?}");

    let last = relay.destroy(s.id).unwrap();
    assert_eq!(last.a.forwarded_packets, u64::from(PACKETS));
    assert_eq!(relay.counters().sessions, 0);
    assert_eq!(relay.ports_available(), 50);
    // After the session, its port is no session's.
    a.send_to(&rtp(99), to_relay(s.a.rtp)).unwrap();
    wait_for(|| relay.dpdk_counters().no_session >= 3);
    assert_eq!(relay.dpdk_counters().no_session, 3);
    let config = relay_config();
    drop(relay);

    // The port serves a new relay after the first one stopped.
    let relay = DpdkRelay::start(config).expect("second relay starts");
    b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

    // It continues the first relay's call on the same ports (as the node the virtual
    // IP moves to does); the phones send where they did. Its neighbour table starts
    // empty: A's first packet teaches it A's MAC and is dropped while B is resolved.
    let adopted = relay
        .adopt_session(first.a, first.b, peer_a, peer_b)
        .unwrap();
    assert_eq!((adopted.a, adopted.b), (first.a, first.b));
    assert_eq!(relay.ports_available(), 48);
    a.send_to(&rtp(1), to_relay(first.a.rtp)).unwrap();
    wait_for(|| relay.counters().dropped >= 1);
    for seq in 2..12 {
        b.send_to(&rtp(seq), to_relay(first.b.rtp)).unwrap();
        assert_eq!(recv(&a), (rtp(seq), to_relay(first.a.rtp)));
        a.send_to(&rtp(seq), to_relay(first.a.rtp)).unwrap();
        assert_eq!(recv(&b), (rtp(seq), to_relay(first.b.rtp)));
    }
    assert!(matches!(
        relay.adopt_session(first.b, first.a, peer_b, peer_a),
        Err(RelayError::PortsInUse(p)) if p == first.b.rtp
    ));
    wait_for(|| relay.counters().forwarded == 20);
    let st = relay.destroy(adopted.id).unwrap();
    // A's first packet counts as received (and as forwarded by the session, which
    // does not know the relay found no MAC for it).
    assert_eq!((st.a.rx.packets, st.b.rx.packets), (11, 10));
    assert_eq!(st.b.forwarded_packets, 10);
    assert_eq!(relay.ports_available(), 50);
    let (dropped, forwarded) = (relay.counters().dropped, relay.counters().forwarded);

    let s = relay
        .create_session(PeerMedia::unknown(), PeerMedia::unknown())
        .unwrap();
    // Nothing known about B yet: A's first packet latches A and is dropped; B's then
    // goes to A, and A's next one to B.
    a.send_to(&rtp(1), to_relay(s.a.rtp)).unwrap();
    wait_for(|| relay.counters().dropped > dropped);
    b.send_to(&rtp(2), to_relay(s.b.rtp)).unwrap();
    assert_eq!(recv(&a).0, rtp(2));
    a.send_to(&rtp(3), to_relay(s.a.rtp)).unwrap();
    assert_eq!(recv(&b).0, rtp(3));
    // The relay counts a burst right after sending it: B may read first.
    wait_for(|| relay.counters().forwarded == forwarded + 2);
    assert_eq!(relay.counters().forwarded, forwarded + 2);
    drop(relay);
    drop(ns);
}

/// The virtual device on `d0`: `net_af_packet` unless `DPDK_VETH_VDEV` names another
/// (e.g. `net_af_xdp0,iface=d0`).
fn vdev() -> String {
    std::env::var("DPDK_VETH_VDEV").unwrap_or_else(|_| "net_af_packet0,iface=d0".into())
}

fn relay_config() -> DpdkConfig {
    DpdkConfig {
        eal_args: media::dpdk::virtual_eal_args(128)
            .into_iter()
            .chain([format!("--vdev={}", vdev())])
            .collect(),
        address: RELAY,
        ports: PortRange {
            min: 30000,
            max: 30099,
        },
        ..DpdkConfig::default()
    }
}
