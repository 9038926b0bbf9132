//! Receive statistics of one direction of a media stream: packets, bytes, loss from
//! extended sequence numbers (RFC 3550 A.1, A.3), interarrival jitter (A.8) and the
//! loss the far end reports in RTCP.

use std::time::Instant;

use crate::rtcp;
use crate::rtp::RtpPacket;

/// A jump of fewer packets than this ahead of the highest sequence is in order (A.1).
const MAX_DROPOUT: u16 = 3000;
/// Sequence numbers up to this far behind the highest are late, not a restart (A.1).
const MAX_MISORDER: u16 = 100;
const SEQ_MOD: u32 = 1 << 16;

/// Loss and jitter as the far end reported them in its last RTCP report block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportedLoss {
    /// Fraction lost in the last report interval, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (may be negative with duplicates).
    pub cumulative_lost: i32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
}

/// A snapshot of one direction's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionStats {
    /// Valid RTP packets received.
    pub packets: u64,
    /// Bytes of those packets (whole datagrams).
    pub bytes: u64,
    /// Packets expected from the sequence numbers (all sources so far).
    pub expected: u64,
    /// Expected minus received, never below zero.
    pub lost: u64,
    /// Interarrival jitter in timestamp units (RFC 3550 A.8).
    pub jitter: u32,
    /// The same jitter in microseconds, from the clock rate.
    pub jitter_us: u32,
    /// Times the sender's SSRC changed.
    pub ssrc_changes: u32,
    /// RTCP datagrams received.
    pub rtcp_packets: u64,
    /// Bytes of those RTCP datagrams.
    pub rtcp_bytes: u64,
    /// The last report block the sender of this direction put in its RTCP.
    pub reported: Option<ReportedLoss>,
}

/// Sequence state of the current source (RFC 3550 A.1 `source`, without probation:
/// a relay counts from the first packet).
#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    payload_type: u8,
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    received: u64,
    transit: Option<u32>,
}

impl Source {
    fn new(ssrc: u32, payload_type: u8, seq: u16) -> Source {
        Source {
            ssrc,
            payload_type,
            max_seq: seq,
            cycles: 0,
            base_seq: u32::from(seq),
            bad_seq: SEQ_MOD + 1,
            received: 0,
            transit: None,
        }
    }

    fn extended_max(&self) -> u64 {
        u64::from(self.cycles) + u64::from(self.max_seq)
    }

    fn expected(&self) -> u64 {
        (self.extended_max() + 1).saturating_sub(u64::from(self.base_seq))
    }
}

/// Receive statistics of one direction, updated per packet with the arrival time.
#[derive(Debug, Clone)]
pub struct ReceiveStats {
    clock_rate: u32,
    epoch: Option<Instant>,
    source: Option<Source>,
    expected_before: u64,
    received_before: u64,
    packets: u64,
    bytes: u64,
    jitter_q4: u32,
    ssrc_changes: u32,
    rtcp_packets: u64,
    rtcp_bytes: u64,
    reported: Option<ReportedLoss>,
}

impl ReceiveStats {
    /// Empty statistics for a payload clocked at `clock_rate` Hz (8000 for G.711).
    pub fn new(clock_rate: u32) -> ReceiveStats {
        ReceiveStats {
            clock_rate: clock_rate.max(1),
            epoch: None,
            source: None,
            expected_before: 0,
            received_before: 0,
            packets: 0,
            bytes: 0,
            jitter_q4: 0,
            ssrc_changes: 0,
            rtcp_packets: 0,
            rtcp_bytes: 0,
            reported: None,
        }
    }

    /// Changes the payload clock rate (after a codec change); jitter restarts.
    pub fn set_clock_rate(&mut self, clock_rate: u32) {
        self.clock_rate = clock_rate.max(1);
        if let Some(s) = &mut self.source {
            s.transit = None;
        }
    }

    /// Folds the current source into the totals and starts a new one.
    fn restart(&mut self, ssrc: u32, payload_type: u8, seq: u16) {
        if let Some(s) = &self.source {
            self.expected_before += s.expected();
            self.received_before += s.received;
        }
        self.source = Some(Source::new(ssrc, payload_type, seq));
    }

    /// Accounts one RTP packet that arrived at `now`.
    pub fn on_rtp(&mut self, p: &RtpPacket<'_>, now: Instant) {
        self.packets += 1;
        self.bytes += p.as_bytes().len() as u64;
        let seq = p.sequence();
        match self.source {
            Some(s) if s.ssrc == p.ssrc() => {}
            Some(_) => {
                self.ssrc_changes += 1;
                self.restart(p.ssrc(), p.payload_type(), seq);
            }
            None => self.restart(p.ssrc(), p.payload_type(), seq),
        }
        if !self.update_seq(seq, p.payload_type()) {
            return;
        }
        self.update_jitter(p, now);
    }

    /// RFC 3550 A.1 `update_seq`; false for a packet not counted (a first jump).
    fn update_seq(&mut self, seq: u16, payload_type: u8) -> bool {
        let Some(s) = &mut self.source else {
            return false;
        };
        let udelta = seq.wrapping_sub(s.max_seq);
        if s.received == 0 && udelta == 0 {
            // first packet of the source
        } else if udelta < MAX_DROPOUT {
            if seq < s.max_seq {
                s.cycles += SEQ_MOD;
            }
            s.max_seq = seq;
        } else if u32::from(udelta) <= SEQ_MOD - u32::from(MAX_MISORDER) {
            // A very large jump: a restart if the next packet confirms it.
            if u32::from(seq) == s.bad_seq {
                let ssrc = s.ssrc;
                self.restart(ssrc, payload_type, seq);
            } else {
                s.bad_seq = (u32::from(seq) + 1) & (SEQ_MOD - 1);
                return false;
            }
        }
        // else: duplicate or reordered, counted as received
        if let Some(s) = &mut self.source {
            s.received += 1;
        }
        true
    }

    /// RFC 3550 A.8, in 1/16 timestamp units, for the source's main payload type
    /// only (telephone-events reuse one timestamp for a whole event).
    fn update_jitter(&mut self, p: &RtpPacket<'_>, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let Some(s) = &mut self.source else {
            return;
        };
        if p.payload_type() != s.payload_type {
            return;
        }
        let elapsed = now.saturating_duration_since(epoch).as_nanos();
        let arrival = (elapsed * u128::from(self.clock_rate) / 1_000_000_000) as u32;
        let transit = arrival.wrapping_sub(p.timestamp());
        if let Some(prev) = s.transit {
            let d = (transit.wrapping_sub(prev) as i32).unsigned_abs();
            let d = d.min(u32::MAX >> 5); // keep the fixed-point sum in range
            self.jitter_q4 = self
                .jitter_q4
                .wrapping_add(d)
                .wrapping_sub((self.jitter_q4 + 8) >> 4);
        }
        s.transit = Some(transit);
    }

    /// Accounts one RTCP datagram from the sender of this direction and keeps the
    /// first report block it carries (what that sender says it receives).
    pub fn on_rtcp(&mut self, datagram: &[u8]) {
        self.rtcp_packets += 1;
        self.rtcp_bytes += datagram.len() as u64;
        if let Some(b) = rtcp::report_blocks(datagram).next() {
            self.reported = Some(ReportedLoss {
                fraction_lost: b.fraction_lost,
                cumulative_lost: b.cumulative_lost,
                jitter: b.jitter,
            });
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> DirectionStats {
        let (expected_now, received_now) = self
            .source
            .map(|s| (s.expected(), s.received))
            .unwrap_or_default();
        let expected = self.expected_before + expected_now;
        let received = self.received_before + received_now;
        let jitter = self.jitter_q4 >> 4;
        DirectionStats {
            packets: self.packets,
            bytes: self.bytes,
            expected,
            lost: expected.saturating_sub(received),
            jitter,
            jitter_us: (u64::from(jitter) * 1_000_000 / u64::from(self.clock_rate)) as u32,
            ssrc_changes: self.ssrc_changes,
            rtcp_packets: self.rtcp_packets,
            rtcp_bytes: self.rtcp_bytes,
            reported: self.reported,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpHeader;
    use std::time::Duration;

    struct Feed {
        stats: ReceiveStats,
        t0: Instant,
    }

    impl Feed {
        fn new() -> Feed {
            Feed {
                stats: ReceiveStats::new(8000),
                t0: Instant::now(),
            }
        }
        fn rtp(&mut self, ssrc: u32, pt: u8, seq: u16, ts: u32, at_us: u64) {
            let mut buf = [0u8; 12 + 160];
            let h = RtpHeader {
                marker: false,
                payload_type: pt,
                sequence: seq,
                timestamp: ts,
                ssrc,
            };
            let n = h.write(&[0xff; 160], &mut buf).unwrap();
            let p = RtpPacket::parse(&buf[..n]).unwrap();
            self.stats
                .on_rtp(&p, self.t0 + Duration::from_micros(at_us));
        }
        fn seqs(&mut self, seqs: &[u16]) {
            for (i, s) in seqs.iter().enumerate() {
                self.rtp(1, 0, *s, u32::from(*s) * 160, i as u64 * 20_000);
            }
        }
    }

    #[test]
    fn counts_packets_bytes_and_no_loss_in_order() {
        let mut f = Feed::new();
        f.seqs(&[10, 11, 12, 13]);
        let s = f.stats.snapshot();
        assert_eq!((s.packets, s.bytes, s.expected, s.lost), (4, 4 * 172, 4, 0));
    }

    #[test]
    fn a_gap_is_loss_and_a_late_packet_fills_it() {
        let mut f = Feed::new();
        f.seqs(&[1, 2, 4, 6]);
        assert_eq!(f.stats.snapshot().lost, 2);
        let mut f = Feed::new();
        f.seqs(&[1, 2, 4, 3, 5]);
        let s = f.stats.snapshot();
        assert_eq!((s.expected, s.lost), (5, 0));
    }

    #[test]
    fn sequence_wrap_is_counted_as_a_cycle() {
        let mut f = Feed::new();
        f.seqs(&[65533, 65534, 65535, 0, 1, 2]);
        let s = f.stats.snapshot();
        assert_eq!((s.expected, s.lost), (6, 0));
        let mut f = Feed::new();
        f.seqs(&[65534, 65535, 1, 0, 3]);
        let s = f.stats.snapshot();
        assert_eq!((s.expected, s.lost), (6, 1));
    }

    #[test]
    fn a_confirmed_large_jump_restarts_without_fake_loss() {
        let mut f = Feed::new();
        f.seqs(&[100, 101, 102, 30_000, 30_001, 30_002]);
        let s = f.stats.snapshot();
        // 3 from the first run, then 30_001.. re-based: 2 expected, 2 received.
        assert_eq!(s.packets, 6);
        assert_eq!(s.lost, 0);
        assert_eq!(s.expected, 5);
        // A single stray far packet is not counted and does not move the base.
        let mut f = Feed::new();
        f.seqs(&[100, 101, 40_000, 102, 103]);
        let s = f.stats.snapshot();
        assert_eq!((s.expected, s.lost, s.packets), (4, 0, 5));
    }

    #[test]
    fn an_ssrc_change_keeps_the_previous_source_in_the_totals() {
        let mut f = Feed::new();
        f.seqs(&[1, 2, 4]); // 1 lost
        f.rtp(2, 0, 5000, 0, 100_000);
        f.rtp(2, 0, 5002, 320, 140_000); // 1 lost
        let s = f.stats.snapshot();
        assert_eq!(s.ssrc_changes, 1);
        assert_eq!((s.expected, s.lost), (7, 2));
    }

    #[test]
    fn jitter_is_zero_for_a_perfect_clock_and_converges_to_the_deviation() {
        let mut f = Feed::new();
        for i in 0..50u16 {
            f.rtp(1, 0, i, u32::from(i) * 160, u64::from(i) * 20_000);
        }
        assert_eq!(f.stats.snapshot().jitter, 0);
        // Every other packet 5 ms late: |D| = 40 timestamp units each time.
        let mut f = Feed::new();
        for i in 0..400u16 {
            let late = if i % 2 == 1 { 5_000 } else { 0 };
            f.rtp(1, 0, i, u32::from(i) * 160, u64::from(i) * 20_000 + late);
        }
        let s = f.stats.snapshot();
        assert!((39..=40).contains(&s.jitter), "{}", s.jitter);
        assert!((4_875..=5_000).contains(&s.jitter_us), "{}", s.jitter_us);
        // One deviation: J = 40/16 (A.8 fixed point rounds to 2).
        let mut f = Feed::new();
        f.rtp(1, 0, 0, 0, 0);
        f.rtp(1, 0, 1, 160, 25_000);
        assert_eq!(f.stats.snapshot().jitter, 2);
    }

    #[test]
    fn telephone_events_do_not_disturb_jitter() {
        let mut f = Feed::new();
        for i in 0..20u16 {
            f.rtp(1, 0, i, u32::from(i) * 160, u64::from(i) * 20_000);
        }
        for i in 20..30u16 {
            // one event: same timestamp for every packet
            f.rtp(1, 101, i, 20 * 160, u64::from(i) * 20_000);
        }
        let s = f.stats.snapshot();
        assert_eq!((s.jitter, s.lost, s.packets), (0, 0, 30));
    }

    #[test]
    fn rtcp_reports_are_kept() {
        let mut f = Feed::new();
        assert_eq!(f.stats.snapshot().reported, None);
        let rr = crate::rtcp::tests::rr(5, &[crate::rtcp::tests::block(1, 64, 12, 33)]);
        f.stats.on_rtcp(&rr);
        f.stats.on_rtcp(&[0x80, 201]); // malformed: counted, no report
        let s = f.stats.snapshot();
        assert_eq!(s.rtcp_packets, 2);
        assert_eq!(s.rtcp_bytes, rr.len() as u64 + 2);
        assert_eq!(
            s.reported,
            Some(ReportedLoss {
                fraction_lost: 64,
                cumulative_lost: 12,
                jitter: 33
            })
        );
    }
}
