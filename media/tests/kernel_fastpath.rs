//! The `udp` relay with the in-kernel fast path on loopback (feature `kernel-fastpath`:
//! needs root, clang and iproute2's `tc`; `make kernel-test`). Two sockets play the
//! phones: once both sides are latched their RTP goes through the TC classifier, which
//! must deliver it intact from the relay's ports, count it into the session, keep the
//! RTP timeout quiet, and hand the streams back to user space on an update.
//! It attaches to `lo`: one such relay per host at a time (not during `KERNEL=1` benches).

mod common;
use common::{phone, rtp};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use media::kernel::{KernelForwarding, StreamMap, PINNED_MAP};
use media::ports::PortRange;
use media::rtp::RtpPacket;
use media::session::{PeerMedia, SessionEvent, Side};
use media::udp::{Relay, RelayConfig};

fn peer(at: SocketAddr) -> PeerMedia {
    PeerMedia {
        rtp: Some(at),
        rtcp: Some(SocketAddr::new(at.ip(), at.port() + 1)),
        ..PeerMedia::unknown()
    }
}

/// Sends `seq` from `from` to `relay` and checks that `to` gets it intact from `via`.
fn relay_one(from: &UdpSocket, relay: SocketAddr, to: &UdpSocket, via: SocketAddr, seq: u16) {
    let ssrc = u32::from(from.local_addr().unwrap().port());
    from.send_to(&rtp(seq, ssrc), relay).unwrap();
    let mut buf = [0u8; 2048];
    let (n, src) = to.recv_from(&mut buf).unwrap();
    assert_eq!(src, via, "heard from the relay's other port");
    assert_eq!(&buf[..n], rtp(seq, ssrc).as_slice(), "intact datagram");
    let p = RtpPacket::parse(&buf[..n]).unwrap();
    assert_eq!((p.sequence(), p.ssrc()), (seq, ssrc));
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn latched_rtp_goes_through_the_kernel_and_comes_back_on_update() {
    let relay = Relay::start(RelayConfig {
        bind: "127.0.0.1".parse().unwrap(),
        ports: PortRange {
            min: 23600,
            max: 23619,
        },
        // scans (which fold the kernel's counters in) every 250 ms
        rtp_timeout: Duration::from_secs(1),
        kernel_forwarding: Some(KernelForwarding {
            interface: "lo".into(),
            program: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bpf/relay_tc.c"),
        }),
        ..RelayConfig::default()
    })
    .expect("attaching the fast path needs root, clang and tc");
    let (a, b) = (phone(), phone());
    let (pa, pb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let s = relay.create_session(peer(pa), peer(pb)).unwrap();
    let (relay_for_a, relay_for_b) = (
        SocketAddr::new(s.addr, s.a.rtp),
        SocketAddr::new(s.addr, s.b.rtp),
    );

    // The first packet of each side latches it in user space; after B's, both
    // streams are in the kernel.
    relay_one(&a, relay_for_a, &b, relay_for_b, 0);
    relay_one(&b, relay_for_b, &a, relay_for_a, 0);
    // The relay counts a batch after sending it: the far side may see it first.
    wait_until("user space forwarded both", || {
        relay.counters().forwarded == 2
    });
    let map = StreamMap::open(std::path::Path::new(PINNED_MAP)).unwrap();
    wait_until("both streams installed", || {
        map.keys().map(|k| k.len()).unwrap_or(0) == 2
    });

    // 1.5 s of 20 ms packets both ways, longer than the RTP timeout: all through the
    // kernel, which keeps the timeout quiet.
    for seq in 1..=75u16 {
        relay_one(&a, relay_for_a, &b, relay_for_b, seq);
        relay_one(&b, relay_for_b, &a, relay_for_a, seq);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        relay.counters().forwarded,
        2,
        "user space forwarded nothing more"
    );
    wait_until("the kernel's counts in the session", || {
        let st = relay.stats(s.id).unwrap();
        st.a.kernel_packets == 75 && st.b.kernel_packets == 75
    });
    let st = relay.stats(s.id).unwrap();
    assert_eq!(st.a.forwarded_packets, 76);
    assert_eq!(st.a.forwarded_bytes, 76 * 172);
    assert_eq!(st.b.forwarded_packets, 76);
    assert_eq!(relay.counters().kernel_forwarded, 150);
    assert_eq!(relay.counters().kernel_bytes, 150 * 172);
    assert_eq!(relay.next_event(Duration::ZERO), None, "no RTP timeout");

    // A new SDP from B: both streams leave the kernel; the next packets latch again
    // in user space and go back to the kernel.
    relay.update(s.id, Side::B, peer(pb)).unwrap();
    wait_until("streams removed", || {
        map.keys().map(|k| k.is_empty()).unwrap_or(false)
    });
    relay_one(&a, relay_for_a, &b, relay_for_b, 76);
    relay_one(&b, relay_for_b, &a, relay_for_a, 76);
    wait_until("user space forwarded both again", || {
        relay.counters().forwarded == 4
    });
    wait_until("both streams installed again", || {
        map.keys().map(|k| k.len()).unwrap_or(0) == 2
    });
    relay_one(&a, relay_for_a, &b, relay_for_b, 77);
    assert_eq!(relay.counters().forwarded, 4);

    // Silence: the timeout comes from the kernel's last-seen time.
    let ev = relay.next_event(Duration::from_secs(3)).map(|e| e.event);
    assert!(
        matches!(ev, Some(SessionEvent::Timeout { .. })),
        "RTP timeout after silence, got {ev:?}"
    );

    relay.destroy(s.id).unwrap();
    wait_until("streams removed at destroy", || {
        map.keys().map(|k| k.is_empty()).unwrap_or(false)
    });
}
