//! Virtual-IP failover for the batched-UDP relay on loopback: a relay that takes over
//! another's calls adopts their exact port pairs, and the phones, which never learn
//! of the failover, keep talking to the same address and ports.

mod common;
use common::{phone, rtp};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use media::ports::{PortError, PortPair, PortRange};
use media::session::PeerMedia;
use media::udp::{
    bind_udp, Relay, RelayConfig, RelayError, RelayHandle, SessionPorts, SocketOptions,
};

fn config(min: u16, max: u16) -> RelayConfig {
    RelayConfig {
        bind: "127.0.0.1".parse().unwrap(),
        ports: PortRange { min, max },
        freebind: true,
        ..RelayConfig::default()
    }
}

/// A phone as its SDP describes it: RTP and RTCP on one port (rtcp-mux).
fn peer(s: &UdpSocket) -> PeerMedia {
    PeerMedia {
        rtp: Some(s.local_addr().unwrap()),
        rtcp_mux: true,
        ..PeerMedia::unknown()
    }
}

fn pair(rtp: u16) -> PortPair {
    PortPair { rtp, rtcp: rtp + 1 }
}

/// A sends `seqs` to the relay's A port and B hears each from the relay's B port,
/// and the other way round.
fn talk(a: &UdpSocket, b: &UdpSocket, s: &SessionPorts, seqs: std::ops::Range<u16>) {
    let to_a = SocketAddr::new(s.addr, s.a.rtp);
    let to_b = SocketAddr::new(s.addr, s.b.rtp);
    let mut buf = [0u8; 2048];
    for seq in seqs {
        a.send_to(&rtp(seq, 0xA), to_a).unwrap();
        let (n, from) = b.recv_from(&mut buf).expect("A's packet relayed to B");
        assert_eq!((&buf[..n], from), (rtp(seq, 0xA).as_slice(), to_b));
        b.send_to(&rtp(seq, 0xB), to_b).unwrap();
        let (n, from) = a.recv_from(&mut buf).expect("B's packet relayed to A");
        assert_eq!((&buf[..n], from), (rtp(seq, 0xB).as_slice(), to_a));
    }
}

/// Waits until `want` port pairs are free (a close is queued to the forwarding
/// thread).
fn wait_ports(relay: &RelayHandle, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.ports_available() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(relay.ports_available(), want);
}

#[test]
fn a_relay_that_takes_over_continues_the_calls_on_their_ports() {
    let (a, b) = (phone(), phone());
    // The node holding the VIP relays a call, and replicates what the call record
    // needs: the session's pairs and both peers.
    let old = Relay::start(config(23500, 23519)).unwrap();
    let s = old.create_session(peer(&a), peer(&b)).unwrap();
    talk(&a, &b, &s, 0..10);
    let record = serde_json::to_string(&(s.a, s.b, peer(&a), peer(&b))).unwrap();
    // It dies: every socket of its relay closes.
    drop(old);

    // The node the VIP moves to continues the call from the record.
    let new = Relay::start(config(23500, 23519)).unwrap();
    let (pa, pb, a_peer, b_peer): (PortPair, PortPair, PeerMedia, PeerMedia) =
        serde_json::from_str(&record).unwrap();
    let adopted = new.adopt_session(pa, pb, a_peer, b_peer).unwrap();
    assert_eq!((adopted.addr, adopted.a, adopted.b), (s.addr, s.a, s.b));
    // The phones keep sending where they did.
    talk(&a, &b, &adopted, 10..30);
    let st = new.stats(adopted.id).unwrap();
    assert_eq!((st.a.forwarded_packets, st.b.forwarded_packets), (20, 20));
    assert_eq!(st.a.latched_rtp, Some(a.local_addr().unwrap()));

    // Its pairs are taken now: neither a second adoption nor a new call gets them.
    assert!(matches!(
        new.adopt_session(pa, pb, a_peer, b_peer),
        Err(RelayError::PortsInUse(p)) if p == pa.rtp
    ));
    let fresh = new
        .create_session(PeerMedia::unknown(), PeerMedia::unknown())
        .unwrap();
    for p in [fresh.a, fresh.b] {
        assert!(p != pa && p != pb, "{p:?} handed out twice");
    }
    assert_ne!(fresh.id, adopted.id);
    // Pairs outside the range, or not pairs, are refused.
    assert!(matches!(
        new.adopt_session(pair(23520), pair(23516), a_peer, b_peer),
        Err(RelayError::Ports(PortError::NotInRange(23520)))
    ));
    assert!(matches!(
        new.adopt_session(pair(23515), pair(23516), a_peer, b_peer),
        Err(RelayError::Ports(PortError::NotInRange(23515)))
    ));
    // Closed, the pairs can be adopted again.
    new.destroy(adopted.id).unwrap();
    wait_ports(&new, 8);
    let again = new.adopt_session(pa, pb, a_peer, b_peer).unwrap();
    talk(&a, &b, &again, 30..31);
}

#[test]
fn pairs_the_binder_holds_bound_in_advance_can_be_adopted() {
    // Four pairs, all of which the binder wants bound as spares.
    let relay = Relay::start(RelayConfig {
        spare_pairs: 8,
        ..config(23530, 23537)
    })
    .unwrap();
    let bound = |port| {
        matches!(
            UdpSocket::bind(("127.0.0.1", port)),
            Err(e) if e.kind() == ErrorKind::AddrInUse
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(23530..23538).all(bound) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!((23530..23538).all(bound), "the binder holds every pair");
    assert_eq!(relay.ports_available(), 4);

    let (a, b) = (phone(), phone());
    let s = relay
        .adopt_session(pair(23536), pair(23532), peer(&a), peer(&b))
        .unwrap();
    assert_eq!((s.a, s.b), (pair(23536), pair(23532)));
    talk(&a, &b, &s, 0..10);
    assert_eq!(relay.ports_available(), 2);
    // The other two spares make one more session; then nothing is left.
    let s2 = relay
        .create_session(PeerMedia::unknown(), PeerMedia::unknown())
        .unwrap();
    let mut got = [s2.a.rtp, s2.b.rtp];
    got.sort_unstable();
    assert_eq!(got, [23530, 23534]);
    assert!(matches!(
        relay.adopt_session(pair(23530), pair(23534), peer(&a), peer(&b)),
        Err(RelayError::PortsInUse(23530))
    ));
    assert!(matches!(
        relay.create_session(PeerMedia::unknown(), PeerMedia::unknown()),
        Err(RelayError::PortsExhausted)
    ));
}

#[test]
fn adoption_counts_toward_the_session_limit() {
    let relay = Relay::start(RelayConfig {
        max_sessions: 1,
        ..config(23540, 23559)
    })
    .unwrap();
    let none = PeerMedia::unknown;
    relay
        .adopt_session(pair(23540), pair(23542), none(), none())
        .unwrap();
    assert!(matches!(
        relay.adopt_session(pair(23544), pair(23546), none(), none()),
        Err(RelayError::TooManySessions(1))
    ));
    assert!(matches!(
        relay.create_session(none(), none()),
        Err(RelayError::TooManySessions(1))
    ));
}

#[test]
fn with_freebind_a_relay_binds_an_address_this_host_does_not_hold() {
    // TEST-NET-1: on no interface, as the VIP is on every node but its holder.
    let vip: IpAddr = "192.0.2.77".parse().unwrap();
    let without = Relay::start(RelayConfig {
        bind: vip,
        freebind: false,
        spare_pairs: 0,
        ..config(23560, 23569)
    })
    .unwrap();
    match without.create_session(PeerMedia::unknown(), PeerMedia::unknown()) {
        Err(RelayError::Io(e)) => assert_eq!(e.kind(), ErrorKind::AddrNotAvailable),
        other => panic!("bound without freebind: {other:?}"),
    }
    drop(without);
    let with = Relay::start(RelayConfig {
        bind: vip,
        ..config(23560, 23569)
    })
    .unwrap();
    let s = with
        .create_session(PeerMedia::unknown(), PeerMedia::unknown())
        .unwrap();
    assert_eq!(s.addr, vip);
    let adopted = with
        .adopt_session(
            pair(23566),
            pair(23568),
            PeerMedia::unknown(),
            PeerMedia::unknown(),
        )
        .unwrap();
    assert_eq!(adopted.addr, vip);
    // The sockets are there: binding the port again without SO_REUSEPORT fails.
    let e = bind_udp(
        SocketAddr::new(vip, 23566),
        SocketOptions {
            reuse_port: false,
            freebind: true,
        },
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddrInUse);
}
