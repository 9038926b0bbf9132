//! The batched-UDP relay on loopback: two sockets play the phones.

mod common;
use common::{phone, rtp};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use media::ports::PortRange;
use media::rtp::RtpPacket;
use media::sdp;
use media::session::{PeerMedia, SessionEvent, Side};
use media::udp::{Relay, RelayConfig, RelayError, RelayHandle};

fn config(min: u16, max: u16) -> RelayConfig {
    RelayConfig {
        bind: "127.0.0.1".parse().unwrap(),
        ports: PortRange { min, max },
        ..RelayConfig::default()
    }
}

fn offer_from(addr: SocketAddr, mux: bool) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{mux}a=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port(),
        mux = if mux { "a=rtcp-mux\r\n" } else { "" }
    )
}

/// Waits until `want` port pairs are free: closing a session is queued, and its pairs
/// come back once its forwarding thread has closed the sockets.
fn wait_ports(relay: &RelayHandle, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.ports_available() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(relay.ports_available(), want);
}

fn expect_silence(s: &UdpSocket) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(s.recv_from(&mut buf).is_err(), "unexpected datagram");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
}

#[test]
fn phones_talk_through_the_relay_and_a_spoofer_is_dropped() {
    let relay = Relay::start(config(23000, 23099)).unwrap();
    let full = relay.ports_available();
    let (a, b, spoofer) = (phone(), phone(), phone());

    // A's offer: the relay learns A, B gets an offer pointing at the relay.
    let offer = offer_from(a.local_addr().unwrap(), false);
    let a_media = PeerMedia::from_sdp(&sdp::parse(&offer).unwrap().media[0]);
    let s = relay.create_session(a_media, PeerMedia::unknown()).unwrap();
    let to_b = sdp::rewrite(
        &offer,
        s.addr,
        &[sdp::RelayPorts {
            rtp: s.b.rtp,
            rtcp: s.b.rtcp,
        }],
    )
    .unwrap();
    let relay_for_b = sdp::parse(&to_b).unwrap().media[0]
        .rtp_destination()
        .unwrap();
    assert_eq!(relay_for_b, SocketAddr::new(s.addr, s.b.rtp));
    // B answers with rtcp-mux; A gets the answer pointing at the relay's A pair.
    let answer = offer_from(b.local_addr().unwrap(), true);
    let b_media = PeerMedia::from_sdp(&sdp::parse(&answer).unwrap().media[0]);
    relay.update(s.id, Side::B, b_media).unwrap();
    let relay_for_a = SocketAddr::new(s.addr, s.a.rtp);

    let mut buf = [0u8; 2048];
    for seq in 0..50u16 {
        a.send_to(&rtp(seq, 0xA), relay_for_a).unwrap();
        let (n, from) = b.recv_from(&mut buf).unwrap();
        assert_eq!(from, relay_for_b, "B hears the relay's B port");
        assert_eq!(&buf[..n], rtp(seq, 0xA).as_slice(), "intact payload");
        b.send_to(&rtp(seq, 0xB), relay_for_b).unwrap();
        let (n, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!(from, relay_for_a);
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!((p.sequence(), p.ssrc()), (seq, 0xB));
    }
    // A's RTCP on its RTCP port reaches muxing B on B's RTP address.
    let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 0xA];
    a.send_to(&rr, SocketAddr::new(s.addr, s.a.rtcp)).unwrap();
    let (n, from) = b.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&rr[..], relay_for_b));

    // Someone else sends to A's relay port: dropped, counted, B hears nothing.
    for seq in 0..5 {
        spoofer.send_to(&rtp(seq, 0xE), relay_for_a).unwrap();
    }
    expect_silence(&b);

    let st = relay.stats(s.id).unwrap();
    assert_eq!(st.a.dropped_wrong_source, 5);
    assert_eq!(st.a.latched_rtp, Some(a.local_addr().unwrap()));
    let fin = relay.destroy(s.id).unwrap();
    assert_eq!(fin.a.rx.packets, 50);
    assert_eq!(fin.a.rx.bytes, 50 * 172);
    assert_eq!(fin.a.rx.lost, 0);
    assert_eq!(fin.a.rx.rtcp_packets, 1);
    assert_eq!(fin.a.forwarded_packets, 51);
    assert_eq!(fin.b.rx.packets, 50);
    assert_eq!(fin.b.forwarded_packets, 50);
    assert_eq!(fin.b.dropped_wrong_source, 0);
    let c = relay.counters();
    assert_eq!((c.forwarded, c.dropped, c.sessions), (101, 5, 0));
    wait_ports(&relay, full);
    assert!(matches!(
        relay.destroy(s.id),
        Err(RelayError::UnknownSession(_))
    ));
    // The sockets are closed: the ports can be bound again without SO_REUSEPORT.
    UdpSocket::bind(relay_for_a).unwrap();
}

#[test]
fn a_silent_side_times_out_and_is_named() {
    let relay = Relay::start(RelayConfig {
        rtp_timeout: Duration::from_millis(300),
        ..config(23100, 23199)
    })
    .unwrap();
    let (a, b) = (phone(), phone());
    let peer = |s: &UdpSocket| PeerMedia {
        rtp: Some(s.local_addr().unwrap()),
        ..PeerMedia::unknown()
    };
    let s = relay.create_session(peer(&a), peer(&b)).unwrap();
    let to = SocketAddr::new(s.addr, s.a.rtp);
    // A talks for 700 ms, B never does.
    let start = Instant::now();
    let mut seq = 0u16;
    let mut first = None;
    while start.elapsed() < Duration::from_millis(700) {
        a.send_to(&rtp(seq, 1), to).unwrap();
        seq += 1;
        // One packet per 20 ms, like a phone.
        match first {
            None => first = relay.next_event(Duration::from_millis(20)),
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let first = first.expect("B's timeout while A talks");
    assert_eq!(first.session, s.id);
    assert_eq!(first.event, SessionEvent::Timeout { side: Side::B });
    // Then A stops too.
    let second = relay
        .next_event(Duration::from_secs(3))
        .expect("A's timeout");
    assert_eq!(second.event, SessionEvent::Timeout { side: Side::A });
    let fin = relay.destroy(s.id).unwrap();
    assert_eq!(fin.a.rx.packets, u64::from(seq));
    assert_eq!(relay.next_event(Duration::from_millis(50)), None);
}

#[test]
fn sessions_are_bounded_by_ports_and_limit() {
    // 4 pairs: two sessions.
    let relay = Relay::start(config(23200, 23207)).unwrap();
    let none = PeerMedia::unknown;
    let s1 = relay.create_session(none(), none()).unwrap();
    let s2 = relay.create_session(none(), none()).unwrap();
    let all = [s1.a.rtp, s1.b.rtp, s2.a.rtp, s2.b.rtp];
    let mut sorted = all;
    sorted.sort_unstable();
    assert_eq!(sorted, [23200, 23202, 23204, 23206]);
    assert!(matches!(
        relay.create_session(none(), none()),
        Err(RelayError::PortsExhausted)
    ));
    relay.destroy(s1.id).unwrap();
    wait_ports(&relay, 2);
    let s3 = relay.create_session(none(), none()).unwrap();
    assert_ne!(s3.id, s1.id);
    assert!(matches!(
        relay.update(s1.id, Side::A, none()),
        Err(RelayError::UnknownSession(_))
    ));
    assert!(matches!(
        relay.stats(s1.id),
        Err(RelayError::UnknownSession(_))
    ));

    let limited = Relay::start(RelayConfig {
        max_sessions: 1,
        ..config(23210, 23229)
    })
    .unwrap();
    limited.create_session(none(), none()).unwrap();
    assert!(matches!(
        limited.create_session(none(), none()),
        Err(RelayError::TooManySessions(1))
    ));
}

#[test]
fn a_port_held_by_another_process_is_skipped() {
    // Someone holds the first pair's RTP port without SO_REUSEPORT.
    let squatter = UdpSocket::bind("127.0.0.1:23240").unwrap();
    let relay = Relay::start(config(23240, 23249)).unwrap();
    let s = relay
        .create_session(PeerMedia::unknown(), PeerMedia::unknown())
        .unwrap();
    assert_ne!(s.a.rtp, 23240);
    assert_ne!(s.b.rtp, 23240);
    drop(squatter);
    // The skipped pair went back to the pool.
    assert_eq!(relay.ports_available(), 3);
}

#[test]
fn sessions_spread_over_two_threads_all_forward() {
    let relay = Relay::start(RelayConfig {
        threads: 2,
        ..config(23260, 23299)
    })
    .unwrap();
    let mut buf = [0u8; 256];
    let mut ids = Vec::new();
    for k in 0..4u32 {
        let (a, b) = (phone(), phone());
        let peer = |s: &UdpSocket| PeerMedia {
            rtp: Some(s.local_addr().unwrap()),
            ..PeerMedia::unknown()
        };
        let s = relay.create_session(peer(&a), peer(&b)).unwrap();
        a.send_to(&rtp(1, k), SocketAddr::new(s.addr, s.a.rtp))
            .unwrap();
        let (n, _) = b.recv_from(&mut buf).unwrap();
        assert_eq!(RtpPacket::parse(&buf[..n]).unwrap().ssrc(), k);
        ids.push(s.id);
    }
    for id in ids {
        assert_eq!(relay.destroy(id).unwrap().a.forwarded_packets, 1);
    }
}
