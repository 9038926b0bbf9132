//! A sans-I/O relay session: two sides, A and B, each reached through the relay's
//! own port pair for that side. The session decides, per datagram, whether and where
//! to forward it (`(side, channel, source, bytes, now) -> Decision`), latches each
//! side's real source address (symmetric RTP, for phones behind NAT), keeps the
//! per-side statistics and reports an RTP timeout. The caller owns the sockets and
//! the clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dtmf::{DigitCounter, TelephoneEvent};
use crate::rtp::{classify, PacketKind, RtpPacket};
use crate::sdp::{Direction, Media};
use crate::stats::{DirectionStats, ReceiveStats};

/// Default time without RTP from a side before [`SessionEvent::Timeout`].
pub const DEFAULT_RTP_TIMEOUT: Duration = Duration::from_secs(60);

/// One party of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The calling leg.
    A,
    /// The called leg.
    B,
}

impl Side {
    /// The opposite side.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// Which of a side's two relay sockets a datagram came in on or goes out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The even (RTP) port; also RTCP under rtcp-mux.
    Rtp,
    /// The odd (RTCP) port.
    Rtcp,
}

/// What signalling (SDP) says about one side's peer. Serializable: call records
/// replicated through the cluster keep it, so that the node the virtual IP moves to
/// can adopt the session ([`crate::udp::RelayHandle::adopt_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerMedia {
    /// Where it wants RTP; `None` while unknown (no answer yet) or on hold with
    /// 0.0.0.0.
    pub rtp: Option<SocketAddr>,
    /// Where it wants RTCP without rtcp-mux.
    pub rtcp: Option<SocketAddr>,
    /// It accepts RTCP on its RTP port.
    pub rtcp_mux: bool,
    /// Its direction attribute.
    pub direction: Direction,
    /// Clock rate of its audio payload (8000 for G.711).
    pub clock_rate: u32,
    /// Its telephone-event payload type.
    pub telephone_event: Option<u8>,
}

impl PeerMedia {
    /// Nothing known yet (before the answer).
    pub fn unknown() -> PeerMedia {
        PeerMedia {
            rtp: None,
            rtcp: None,
            rtcp_mux: false,
            direction: Direction::SendRecv,
            clock_rate: 8000,
            telephone_event: None,
        }
    }

    /// From the peer's `m=` line (audio clocked at 8000 Hz).
    pub fn from_sdp(m: &Media) -> PeerMedia {
        PeerMedia {
            rtp: m.rtp_destination(),
            rtcp: m.rtcp_destination(),
            rtcp_mux: m.rtcp_mux,
            direction: m.direction,
            clock_rate: 8000,
            telephone_event: m.telephone_event,
        }
    }
}

/// Session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Time without RTP from a side that should be sending before a timeout.
    pub rtp_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            rtp_timeout: DEFAULT_RTP_TIMEOUT,
        }
    }
}

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a valid RTP or RTCP packet (or STUN/DTLS, which the relay does not serve).
    NotMedia,
    /// From another address than the one the side latched to.
    WrongSource,
    /// The other side's address is not known yet.
    NoDestination,
}

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the unchanged datagram to `to` from the other side's `via` socket.
    Forward {
        /// Destination.
        to: SocketAddr,
        /// Which of the other side's relay sockets sends it.
        via: Channel,
    },
    /// Drop it (counted).
    Drop(DropReason),
}

/// Something the owner of the call must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// `side` sent no RTP for the RTP timeout while it should have.
    Timeout {
        /// The silent side.
        side: Side,
    },
}

/// Counters of what one side sent to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SideStats {
    /// RTP/RTCP receive statistics (packets, loss, jitter, RTCP-reported loss).
    pub rx: DirectionStats,
    /// Datagrams forwarded to the other side.
    pub forwarded_packets: u64,
    /// Bytes forwarded to the other side.
    pub forwarded_bytes: u64,
    /// Dropped: not RTP/RTCP.
    pub dropped_not_media: u64,
    /// Dropped: from a source other than the latched one.
    pub dropped_wrong_source: u64,
    /// Dropped: the other side had no address yet.
    pub dropped_no_destination: u64,
    /// Telephone-events (key presses) counted once each.
    pub dtmf_events: u64,
    /// The latest key presses, oldest first.
    pub dtmf_digits: String,
    /// The RTP source the side is latched to.
    pub latched_rtp: Option<SocketAddr>,
    /// The RTCP source the side is latched to.
    pub latched_rtcp: Option<SocketAddr>,
    /// Of `forwarded_packets`, those the in-kernel fast path forwarded.
    pub kernel_packets: u64,
}

/// Counters of both sides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// What A sent.
    pub a: SideStats,
    /// What B sent.
    pub b: SideStats,
}

#[derive(Debug, Clone)]
struct SideState {
    peer: PeerMedia,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    last_rtp: Instant,
    timeout_reported: bool,
    rx: ReceiveStats,
    dtmf: DigitCounter,
    forwarded_packets: u64,
    forwarded_bytes: u64,
    dropped_not_media: u64,
    dropped_wrong_source: u64,
    dropped_no_destination: u64,
    kernel_packets: u64,
}

impl SideState {
    fn new(peer: PeerMedia, now: Instant) -> SideState {
        SideState {
            peer,
            latched_rtp: None,
            latched_rtcp: None,
            last_rtp: now,
            timeout_reported: false,
            rx: ReceiveStats::new(peer.clock_rate),
            dtmf: DigitCounter::new(),
            forwarded_packets: 0,
            forwarded_bytes: 0,
            dropped_not_media: 0,
            dropped_wrong_source: 0,
            dropped_no_destination: 0,
            kernel_packets: 0,
        }
    }

    fn stats(&self) -> SideStats {
        let mut out = SideStats::default();
        self.write_stats(&mut out);
        out
    }

    /// Writes the counters into `out`, reusing its digit buffer.
    fn write_stats(&self, out: &mut SideStats) {
        out.rx = self.rx.snapshot();
        out.forwarded_packets = self.forwarded_packets;
        out.forwarded_bytes = self.forwarded_bytes;
        out.dropped_not_media = self.dropped_not_media;
        out.dropped_wrong_source = self.dropped_wrong_source;
        out.dropped_no_destination = self.dropped_no_destination;
        out.dtmf_events = self.dtmf.count();
        if out.dtmf_digits != self.dtmf.digits() {
            out.dtmf_digits.clear();
            out.dtmf_digits.push_str(self.dtmf.digits());
        }
        out.latched_rtp = self.latched_rtp;
        out.latched_rtcp = self.latched_rtcp;
        out.kernel_packets = self.kernel_packets;
    }
}

/// The relay state of one call.
#[derive(Debug, Clone)]
pub struct Session {
    config: SessionConfig,
    sides: [SideState; 2],
}

impl Session {
    /// A session whose sides' peers are `a` and `b`, created at `now`.
    pub fn new(config: SessionConfig, a: PeerMedia, b: PeerMedia, now: Instant) -> Session {
        Session {
            config,
            sides: [SideState::new(a, now), SideState::new(b, now)],
        }
    }

    /// Applies a new SDP from `side` (answer, re-INVITE: hold, resume, codec or
    /// address change): its latches are cleared so the next packets latch again,
    /// and both sides' RTP timers restart at `now`.
    pub fn update(&mut self, side: Side, peer: PeerMedia, now: Instant) {
        let s = &mut self.sides[side.index()];
        if s.peer.clock_rate != peer.clock_rate {
            s.rx.set_clock_rate(peer.clock_rate);
        }
        s.peer = peer;
        s.latched_rtp = None;
        s.latched_rtcp = None;
        for s in &mut self.sides {
            s.last_rtp = now;
            s.timeout_reported = false;
        }
    }

    /// True while either side's SDP is not sendrecv (hold): no RTP timeout then.
    pub fn is_held(&self) -> bool {
        self.sides
            .iter()
            .any(|s| s.peer.direction != Direction::SendRecv)
    }

    /// Decides what to do with `data`, received at `now` from `source` on `side`'s
    /// relay socket `channel`.
    pub fn on_packet(
        &mut self,
        side: Side,
        channel: Channel,
        source: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Decision {
        let kind = match (channel, classify(data)) {
            (_, PacketKind::Other) => PacketKind::Other,
            (Channel::Rtcp, _) => PacketKind::Rtcp,
            (Channel::Rtp, k) => k,
        };
        let this = &mut self.sides[side.index()];
        let rtp = match kind {
            PacketKind::Rtp => match RtpPacket::parse(data) {
                Ok(p) => Some(p),
                Err(_) => return this.drop(DropReason::NotMedia),
            },
            PacketKind::Rtcp if data.len() >= 8 => None,
            _ => return this.drop(DropReason::NotMedia),
        };
        let latch = match channel {
            Channel::Rtp => &mut this.latched_rtp,
            Channel::Rtcp => &mut this.latched_rtcp,
        };
        match latch {
            Some(l) if *l != source => return this.drop(DropReason::WrongSource),
            Some(_) => {}
            None => *latch = Some(source),
        }
        match &rtp {
            Some(p) => {
                this.rx.on_rtp(p, now);
                this.last_rtp = now;
                this.timeout_reported = false;
                if this.peer.telephone_event == Some(p.payload_type()) {
                    if let Ok(ev) = TelephoneEvent::parse(p.payload()) {
                        this.dtmf.on_event(p.timestamp(), &ev);
                    }
                }
            }
            None => this.rx.on_rtcp(data),
        }
        let other = &self.sides[side.other().index()];
        let dest = match (rtp.is_some(), other.peer.rtcp_mux) {
            (true, _) | (false, true) => other
                .latched_rtp
                .or(other.peer.rtp)
                .map(|to| (to, Channel::Rtp)),
            (false, false) => other
                .latched_rtcp
                .or(other.peer.rtcp)
                .map(|to| (to, Channel::Rtcp)),
        };
        let this = &mut self.sides[side.index()];
        match dest {
            Some((to, via)) => {
                this.forwarded_packets += 1;
                this.forwarded_bytes += data.len() as u64;
                Decision::Forward { to, via }
            }
            None => this.drop(DropReason::NoDestination),
        }
    }

    fn expects_rtp(&self, side: Side) -> bool {
        let s = &self.sides[side.index()];
        !self.is_held() && s.peer.rtp.is_some() && !s.timeout_reported
    }

    /// When [`Self::poll_event`] should be called next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        [Side::A, Side::B]
            .into_iter()
            .filter(|s| self.expects_rtp(*s))
            .map(|s| self.sides[s.index()].last_rtp + self.config.rtp_timeout)
            .min()
    }

    /// The next event due at `now`. A timeout is reported once per silence: again
    /// only after the side sent RTP or a new SDP was applied.
    pub fn poll_event(&mut self, now: Instant) -> Option<SessionEvent> {
        for side in [Side::A, Side::B] {
            if !self.expects_rtp(side) {
                continue;
            }
            let s = &mut self.sides[side.index()];
            if now.saturating_duration_since(s.last_rtp) >= self.config.rtp_timeout {
                s.timeout_reported = true;
                return Some(SessionEvent::Timeout { side });
            }
        }
        None
    }

    /// Where `side`'s RTP can be forwarded without user space: `(latched source,
    /// destination)` once both sides are latched on RTP, neither holds, and both or
    /// neither use rtcp-mux (so RTCP on the RTP port, which the kernel forwards
    /// unexamined, goes where user space would send it too). IPv4 only.
    pub fn kernel_route(
        &self,
        side: Side,
    ) -> Option<(std::net::SocketAddrV4, std::net::SocketAddrV4)> {
        if self.is_held() {
            return None;
        }
        let (this, other) = (&self.sides[side.index()], &self.sides[side.other().index()]);
        if this.peer.rtcp_mux != other.peer.rtcp_mux {
            return None;
        }
        match (this.latched_rtp?, other.latched_rtp?) {
            (SocketAddr::V4(from), SocketAddr::V4(to)) => Some((from, to)),
            _ => None,
        }
    }

    /// Accounts datagrams from `side` that the kernel forwarded on its own: counted as
    /// forwarded (the receive statistics, loss and jitter, see only what user space
    /// saw), and `last`, when the latest of them arrived, restarts the RTP timer.
    pub fn on_kernel_forwarded(&mut self, side: Side, packets: u64, bytes: u64, last: Instant) {
        let s = &mut self.sides[side.index()];
        s.forwarded_packets += packets;
        s.forwarded_bytes += bytes;
        s.kernel_packets += packets;
        if packets > 0 && last > s.last_rtp {
            s.last_rtp = last;
            s.timeout_reported = false;
        }
    }

    /// The counters of both sides.
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            a: self.sides[0].stats(),
            b: self.sides[1].stats(),
        }
    }

    /// Writes the counters of both sides into `out` without allocating once its
    /// digit buffers have grown (the forwarding threads publish them this way).
    pub fn write_stats(&self, out: &mut SessionStats) {
        self.sides[0].write_stats(&mut out.a);
        self.sides[1].write_stats(&mut out.b);
    }
}

impl SideState {
    fn drop(&mut self, why: DropReason) -> Decision {
        match why {
            DropReason::NotMedia => self.dropped_not_media += 1,
            DropReason::WrongSource => self.dropped_wrong_source += 1,
            DropReason::NoDestination => self.dropped_no_destination += 1,
        }
        Decision::Drop(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpHeader;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn peer(rtp: &str) -> PeerMedia {
        let rtp = addr(rtp);
        PeerMedia {
            rtp: Some(rtp),
            rtcp: Some(SocketAddr::new(rtp.ip(), rtp.port() + 1)),
            telephone_event: Some(101),
            ..PeerMedia::unknown()
        }
    }

    fn rtp(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 12 + payload.len()];
        RtpHeader {
            marker: false,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc: 42,
        }
        .write(payload, &mut buf)
        .unwrap();
        buf
    }

    const RR: [u8; 8] = [0x80, 201, 0, 1, 0, 0, 0, 42];

    struct T {
        s: Session,
        t0: Instant,
    }

    impl T {
        fn new() -> T {
            let t0 = Instant::now();
            T {
                s: Session::new(
                    SessionConfig::default(),
                    peer("192.168.1.10:4000"),
                    peer("10.9.9.9:6000"),
                    t0,
                ),
                t0,
            }
        }
        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }
    }

    fn fwd(to: &str, via: Channel) -> Decision {
        Decision::Forward { to: addr(to), via }
    }

    #[test]
    fn forwards_rtp_to_the_sdp_address_then_to_the_latched_one() {
        let mut t = T::new();
        let now = t.at(0);
        // A is behind NAT: its packets come from a public address.
        let a_nat = addr("203.0.113.5:31000");
        let p = rtp(0, 1, 160, &[0xff; 160]);
        assert_eq!(
            t.s.on_packet(Side::A, Channel::Rtp, a_nat, &p, now),
            fwd("10.9.9.9:6000", Channel::Rtp)
        );
        // B's packets go to where A's come from, not to A's private SDP address.
        let b = addr("10.9.9.9:6000");
        assert_eq!(
            t.s.on_packet(Side::B, Channel::Rtp, b, &p, now),
            fwd("203.0.113.5:31000", Channel::Rtp)
        );
        let st = t.s.stats();
        assert_eq!(st.a.latched_rtp, Some(a_nat));
        assert_eq!(st.a.forwarded_packets, 1);
        assert_eq!(st.a.forwarded_bytes, 172);
        assert_eq!(st.a.rx.packets, 1);
        assert_eq!(st.b.rx.packets, 1);
    }

    #[test]
    fn a_spoofed_source_is_dropped_and_counted_until_a_new_sdp() {
        let mut t = T::new();
        let now = t.at(0);
        let real = addr("203.0.113.5:31000");
        let evil = addr("198.51.100.66:1234");
        let p = rtp(0, 1, 160, b"x");
        assert!(matches!(
            t.s.on_packet(Side::A, Channel::Rtp, real, &p, now),
            Decision::Forward { .. }
        ));
        for _ in 0..3 {
            assert_eq!(
                t.s.on_packet(Side::A, Channel::Rtp, evil, &p, now),
                Decision::Drop(DropReason::WrongSource)
            );
        }
        let st = t.s.stats().a;
        assert_eq!((st.dropped_wrong_source, st.rx.packets), (3, 1));
        // After a re-INVITE from A the next source latches again.
        t.s.update(Side::A, peer("192.168.1.10:4002"), t.at(1));
        assert_eq!(t.s.stats().a.latched_rtp, None);
        assert!(matches!(
            t.s.on_packet(Side::A, Channel::Rtp, evil, &p, t.at(1)),
            Decision::Forward { .. }
        ));
        assert_eq!(
            t.s.on_packet(Side::A, Channel::Rtp, real, &p, t.at(1)),
            Decision::Drop(DropReason::WrongSource)
        );
    }

    #[test]
    fn rtcp_follows_its_own_port_or_mux() {
        let mut t = T::new();
        let now = t.at(0);
        let a_rtcp = addr("203.0.113.5:31001");
        // A → B over A's RTCP port; B has no mux: to B's RTCP address via B's RTCP port.
        assert_eq!(
            t.s.on_packet(Side::A, Channel::Rtcp, a_rtcp, &RR, now),
            fwd("10.9.9.9:6001", Channel::Rtcp)
        );
        // A muxes RTCP on its RTP port: demultiplexed, still to B's RTCP address.
        let a_rtp = addr("203.0.113.5:31000");
        assert_eq!(
            t.s.on_packet(Side::A, Channel::Rtp, a_rtp, &RR, now),
            fwd("10.9.9.9:6001", Channel::Rtcp)
        );
        // B accepts mux: RTCP to it goes to its RTP address through its RTP port.
        t.s.update(
            Side::B,
            PeerMedia {
                rtcp_mux: true,
                ..peer("10.9.9.9:6000")
            },
            now,
        );
        assert_eq!(
            t.s.on_packet(Side::A, Channel::Rtcp, a_rtcp, &RR, now),
            fwd("10.9.9.9:6000", Channel::Rtp)
        );
        let st = t.s.stats().a;
        assert_eq!(st.rx.rtcp_packets, 3);
        assert_eq!(st.rx.packets, 0);
        assert_eq!(st.latched_rtcp, Some(a_rtcp));
    }

    #[test]
    fn junk_and_unknown_destinations_are_dropped() {
        let t0 = Instant::now();
        let mut s = Session::new(
            SessionConfig::default(),
            peer("192.168.1.10:4000"),
            PeerMedia::unknown(),
            t0,
        );
        let src = addr("192.168.1.10:4000");
        let stun = [0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        assert_eq!(
            s.on_packet(Side::A, Channel::Rtp, src, &stun, t0),
            Decision::Drop(DropReason::NotMedia)
        );
        assert_eq!(
            s.on_packet(Side::A, Channel::Rtp, src, &[0x80, 0, 1], t0),
            Decision::Drop(DropReason::NotMedia)
        );
        assert_eq!(
            s.on_packet(Side::A, Channel::Rtcp, src, &[0x80, 201, 0], t0),
            Decision::Drop(DropReason::NotMedia)
        );
        // Junk does not latch.
        assert_eq!(s.stats().a.latched_rtp, None);
        // B has not answered: nowhere to send.
        assert_eq!(
            s.on_packet(Side::A, Channel::Rtp, src, &rtp(0, 1, 0, b"x"), t0),
            Decision::Drop(DropReason::NoDestination)
        );
        let st = s.stats().a;
        assert_eq!((st.dropped_not_media, st.dropped_no_destination), (3, 1));
        assert_eq!(st.latched_rtp, Some(src));
        // B never timed out: its address is unknown. A does, after 60 s.
        assert_eq!(s.next_deadline(), Some(t0 + DEFAULT_RTP_TIMEOUT));
    }

    #[test]
    fn timeout_names_the_silent_side_once() {
        let mut t = T::new();
        let a = addr("192.168.1.10:4000");
        let b = addr("10.9.9.9:6000");
        assert_eq!(t.s.next_deadline(), Some(t.at(60)));
        // Both talk for 30 s, then B goes silent.
        for sec in 0..=30u64 {
            let p = rtp(0, sec as u16, sec as u32 * 8000, b"x");
            t.s.on_packet(Side::A, Channel::Rtp, a, &p, t.at(sec));
            t.s.on_packet(Side::B, Channel::Rtp, b, &p, t.at(sec));
        }
        for sec in 31..=95u64 {
            let p = rtp(0, sec as u16, sec as u32 * 8000, b"x");
            t.s.on_packet(Side::A, Channel::Rtp, a, &p, t.at(sec));
        }
        assert_eq!(t.s.poll_event(t.at(89)), None);
        assert_eq!(t.s.next_deadline(), Some(t.at(90)));
        assert_eq!(
            t.s.poll_event(t.at(90)),
            Some(SessionEvent::Timeout { side: Side::B })
        );
        assert_eq!(t.s.poll_event(t.at(91)), None); // once
        assert_eq!(t.s.next_deadline(), Some(t.at(155))); // A's
                                                          // RTCP alone does not keep a side alive.
        t.s.on_packet(
            Side::A,
            Channel::Rtcp,
            addr("192.168.1.10:4001"),
            &RR,
            t.at(150),
        );
        assert_eq!(
            t.s.poll_event(t.at(155)),
            Some(SessionEvent::Timeout { side: Side::A })
        );
        assert_eq!(t.s.next_deadline(), None);
        // B speaks again: re-armed.
        let p = rtp(0, 100, 800_000, b"x");
        t.s.on_packet(Side::B, Channel::Rtp, b, &p, t.at(200));
        assert_eq!(t.s.next_deadline(), Some(t.at(260)));
    }

    #[test]
    fn no_timeout_while_held_and_the_timer_restarts_on_resume() {
        let mut t = T::new();
        // A puts B on hold (sendonly); B answers recvonly; nobody sends.
        t.s.update(
            Side::A,
            PeerMedia {
                direction: Direction::SendOnly,
                ..peer("192.168.1.10:4000")
            },
            t.at(10),
        );
        assert!(t.s.is_held());
        assert_eq!(t.s.next_deadline(), None);
        assert_eq!(t.s.poll_event(t.at(1000)), None);
        t.s.update(
            Side::A,
            PeerMedia {
                direction: Direction::Inactive,
                ..peer("192.168.1.10:4000")
            },
            t.at(1000),
        );
        assert_eq!(t.s.poll_event(t.at(2000)), None);
        // Resume: both timers start from the re-INVITE.
        t.s.update(Side::A, peer("192.168.1.10:4000"), t.at(2000));
        assert!(!t.s.is_held());
        assert_eq!(t.s.poll_event(t.at(2059)), None);
        let ev = t.s.poll_event(t.at(2060));
        assert_eq!(ev, Some(SessionEvent::Timeout { side: Side::A }));
        assert_eq!(
            t.s.poll_event(t.at(2060)),
            Some(SessionEvent::Timeout { side: Side::B })
        );
    }

    #[test]
    fn dtmf_digits_are_counted_per_side() {
        let mut t = T::new();
        let a = addr("192.168.1.10:4000");
        let mut seq = 0;
        for (ts, digit) in [(1000u32, 1u8), (5000, 11)] {
            for (end, dur) in [
                (false, 0u16),
                (false, 0),
                (false, 160),
                (true, 400),
                (true, 400),
                (true, 400),
            ] {
                seq += 1;
                let d = dur.to_be_bytes();
                let payload = [digit, if end { 0x8a } else { 0x0a }, d[0], d[1]];
                let p = rtp(101, seq, ts, &payload);
                assert!(matches!(
                    t.s.on_packet(Side::A, Channel::Rtp, a, &p, t.at(1)),
                    Decision::Forward { .. }
                ));
            }
        }
        let st = t.s.stats();
        assert_eq!(st.a.dtmf_events, 2);
        assert_eq!(st.a.dtmf_digits, "1#");
        assert_eq!(st.b.dtmf_events, 0);
        assert_eq!(st.a.rx.packets, 12);
        assert_eq!(st.a.forwarded_packets, 12);
    }

    #[test]
    fn peer_media_survives_a_call_record_round_trip() {
        let p = PeerMedia {
            direction: Direction::SendOnly,
            rtcp_mux: true,
            ..peer("192.168.1.10:4000")
        };
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("\"sendonly\""), "{text}");
        assert_eq!(serde_json::from_str::<PeerMedia>(&text).unwrap(), p);
        let unknown = PeerMedia::unknown();
        let text = serde_json::to_string(&unknown).unwrap();
        assert_eq!(serde_json::from_str::<PeerMedia>(&text).unwrap(), unknown);
    }
}
