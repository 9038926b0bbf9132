//! Zero-copy views of RTCP compound packets (RFC 3550 §6.4): sender and receiver
//! reports with their report blocks (fraction lost, cumulative lost, jitter).

use crate::rtp::RTP_VERSION;

/// RTCP packet type of a sender report.
pub const PT_SR: u8 = 200;
/// RTCP packet type of a receiver report.
pub const PT_RR: u8 = 201;
/// Length of one report block.
pub const REPORT_BLOCK_LEN: usize = 24;

/// Why a datagram is not a valid RTCP compound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    /// Shorter than a 4-byte RTCP header, or a packet's length runs past the datagram.
    #[error("RTCP packet truncated")]
    Truncated,
    /// Version field other than 2.
    #[error("RTCP version {0}, expected 2")]
    BadVersion(u8),
    /// Packet type outside 192–223.
    #[error("RTCP packet type {0} outside 192-223")]
    BadType(u8),
    /// A report announces more blocks than its length holds.
    #[error("report count {0} does not fit the packet length")]
    BadReportCount(u8),
}

/// One report block: what the reporter received from the source `ssrc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// Source this block reports on.
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost since the beginning (signed 24 bits; negative with duplicates).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received.
    pub last_sr: u32,
    /// Delay since the last SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    fn parse(b: &[u8]) -> ReportBlock {
        let word = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        // 24-bit two's complement: shift into the top of an i32 and back.
        let cumulative_lost = (i32::from_be_bytes([b[5], b[6], b[7], 0])) >> 8;
        ReportBlock {
            ssrc: word(0),
            fraction_lost: b[4],
            cumulative_lost,
            highest_seq: word(8),
            jitter: word(12),
            last_sr: word(16),
            delay_since_last_sr: word(20),
        }
    }
}

/// Iterator over the report blocks of one SR or RR.
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    rest: &'a [u8],
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;
    fn next(&mut self) -> Option<ReportBlock> {
        if self.rest.len() < REPORT_BLOCK_LEN {
            return None;
        }
        let (b, rest) = self.rest.split_at(REPORT_BLOCK_LEN);
        self.rest = rest;
        Some(ReportBlock::parse(b))
    }
}

/// Sender information of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    /// NTP wall-clock time of the report.
    pub ntp: u64,
    /// RTP timestamp corresponding to `ntp`.
    pub rtp_timestamp: u32,
    /// Packets sent since the start.
    pub packet_count: u32,
    /// Payload octets sent since the start.
    pub octet_count: u32,
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone)]
pub enum RtcpPacket<'a> {
    /// Sender report (PT 200).
    SenderReport {
        /// Sender's SSRC.
        ssrc: u32,
        /// Its sending counters.
        info: SenderInfo,
        /// Its reception reports.
        blocks: ReportBlocks<'a>,
    },
    /// Receiver report (PT 201).
    ReceiverReport {
        /// Reporter's SSRC.
        ssrc: u32,
        /// Its reception reports.
        blocks: ReportBlocks<'a>,
    },
    /// SDES, BYE, APP, feedback or anything else, left uninterpreted.
    Other {
        /// Packet type.
        packet_type: u8,
        /// The whole packet, header included.
        bytes: &'a [u8],
    },
}

/// Iterator over the packets of a compound RTCP datagram; stops at the first error.
#[derive(Debug, Clone)]
pub struct Compound<'a> {
    rest: &'a [u8],
}

/// Iterates the packets of `buf`. Validate first with [`validate`] to reject the
/// whole datagram on any fault.
pub fn packets(buf: &[u8]) -> Compound<'_> {
    Compound { rest: buf }
}

/// Checks that `buf` is a well-formed compound RTCP datagram.
pub fn validate(buf: &[u8]) -> Result<(), RtcpError> {
    if buf.is_empty() {
        return Err(RtcpError::Truncated);
    }
    let mut it = packets(buf);
    for p in &mut it {
        p?;
    }
    Ok(())
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = parse_one(self.rest);
        match r {
            Ok((p, len)) => {
                self.rest = &self.rest[len..];
                Some(Ok(p))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

fn parse_one(buf: &[u8]) -> Result<(RtcpPacket<'_>, usize), RtcpError> {
    if buf.len() < 4 {
        return Err(RtcpError::Truncated);
    }
    let version = buf[0] >> 6;
    if version != RTP_VERSION {
        return Err(RtcpError::BadVersion(version));
    }
    let count = buf[0] & 0x1f;
    let pt = buf[1];
    if !(192..=223).contains(&pt) {
        return Err(RtcpError::BadType(pt));
    }
    let len = 4 * (u16::from_be_bytes([buf[2], buf[3]]) as usize + 1);
    if len > buf.len() {
        return Err(RtcpError::Truncated);
    }
    let p = &buf[..len];
    let word = |o: usize| u32::from_be_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
    let blocks_at = |start: usize| -> Result<ReportBlocks<'_>, RtcpError> {
        let end = start + REPORT_BLOCK_LEN * count as usize;
        if end > len {
            return Err(RtcpError::BadReportCount(count));
        }
        Ok(ReportBlocks {
            rest: &p[start..end],
        })
    };
    let packet = match pt {
        PT_SR => {
            if len < 28 {
                return Err(RtcpError::Truncated);
            }
            RtcpPacket::SenderReport {
                ssrc: word(4),
                info: SenderInfo {
                    ntp: (u64::from(word(8)) << 32) | u64::from(word(12)),
                    rtp_timestamp: word(16),
                    packet_count: word(20),
                    octet_count: word(24),
                },
                blocks: blocks_at(28)?,
            }
        }
        PT_RR => {
            if len < 8 {
                return Err(RtcpError::Truncated);
            }
            RtcpPacket::ReceiverReport {
                ssrc: word(4),
                blocks: blocks_at(8)?,
            }
        }
        _ => RtcpPacket::Other {
            packet_type: pt,
            bytes: p,
        },
    };
    Ok((packet, len))
}

/// The report blocks of every SR and RR in a compound datagram (empty on error).
pub fn report_blocks(buf: &[u8]) -> impl Iterator<Item = ReportBlock> + '_ {
    packets(buf)
        .map_while(Result::ok)
        .flat_map(|p| match p {
            RtcpPacket::SenderReport { blocks, .. } | RtcpPacket::ReceiverReport { blocks, .. } => {
                Some(blocks)
            }
            RtcpPacket::Other { .. } => None,
        })
        .flatten()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a report block's 24 bytes.
    pub(crate) fn block(ssrc: u32, fraction: u8, cumulative: i32, jitter: u32) -> Vec<u8> {
        let mut b = ssrc.to_be_bytes().to_vec();
        b.push(fraction);
        b.extend_from_slice(&cumulative.to_be_bytes()[1..]);
        b.extend_from_slice(&70_000u32.to_be_bytes());
        b.extend_from_slice(&jitter.to_be_bytes());
        b.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        b.extend_from_slice(&0x0001_0000u32.to_be_bytes());
        b
    }

    /// A receiver report from `ssrc` carrying `blocks`.
    pub(crate) fn rr(ssrc: u32, blocks: &[Vec<u8>]) -> Vec<u8> {
        let len_words = (8 + 24 * blocks.len()) / 4 - 1;
        let mut p = vec![0x80 | blocks.len() as u8, PT_RR];
        p.extend_from_slice(&(len_words as u16).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        for b in blocks {
            p.extend_from_slice(b);
        }
        p
    }

    fn sr(ssrc: u32, blocks: &[Vec<u8>]) -> Vec<u8> {
        let len_words = (28 + 24 * blocks.len()) / 4 - 1;
        let mut p = vec![0x80 | blocks.len() as u8, PT_SR];
        p.extend_from_slice(&(len_words as u16).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        p.extend_from_slice(&160u32.to_be_bytes());
        p.extend_from_slice(&50u32.to_be_bytes());
        p.extend_from_slice(&8000u32.to_be_bytes());
        for b in blocks {
            p.extend_from_slice(b);
        }
        p
    }

    #[test]
    fn parses_a_compound_sr_rr_sdes() {
        let mut buf = sr(7, &[block(9, 25, 1000, 40)]);
        buf.extend(rr(7, &[block(10, 0, -3, 0), block(11, 255, 0x7f_ffff, 1)]));
        buf.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0, 7]); // SDES, 1 word body
        assert_eq!(validate(&buf), Ok(()));
        let ps: Vec<_> = packets(&buf).map(|p| p.unwrap()).collect();
        assert_eq!(ps.len(), 3);
        match &ps[0] {
            RtcpPacket::SenderReport { ssrc, info, blocks } => {
                assert_eq!(*ssrc, 7);
                assert_eq!(info.ntp, 0x0102_0304_0506_0708);
                assert_eq!(info.rtp_timestamp, 160);
                assert_eq!(info.packet_count, 50);
                assert_eq!(info.octet_count, 8000);
                let b: Vec<_> = blocks.clone().collect();
                assert_eq!(b.len(), 1);
                assert_eq!(b[0].ssrc, 9);
                assert_eq!(b[0].fraction_lost, 25);
                assert_eq!(b[0].cumulative_lost, 1000);
                assert_eq!(b[0].highest_seq, 70_000);
                assert_eq!(b[0].jitter, 40);
                assert_eq!(b[0].last_sr, 0x1234_5678);
                assert_eq!(b[0].delay_since_last_sr, 0x1_0000);
            }
            other => panic!("{other:?}"),
        }
        let all: Vec<_> = report_blocks(&buf).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].cumulative_lost, -3);
        assert_eq!(all[2].cumulative_lost, 0x7f_ffff);
        assert!(matches!(
            ps[2],
            RtcpPacket::Other {
                packet_type: 202,
                ..
            }
        ));
    }

    #[test]
    fn malformed_rtcp_is_an_error() {
        assert_eq!(validate(&[]), Err(RtcpError::Truncated));
        assert_eq!(validate(&[0x80, 201, 0]), Err(RtcpError::Truncated));
        assert_eq!(
            validate(&[0x40, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::BadVersion(1))
        );
        assert_eq!(
            validate(&[0x80, 96, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::BadType(96))
        );
        // length says 3 words follow, only 1 does
        assert_eq!(
            validate(&[0x80, 201, 0, 3, 0, 0, 0, 0]),
            Err(RtcpError::Truncated)
        );
        // RR announcing 1 block with no room for it
        assert_eq!(
            validate(&[0x81, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::BadReportCount(1))
        );
        let mut good_then_bad = rr(1, &[]);
        good_then_bad.extend_from_slice(&[0x80, 201]);
        assert_eq!(validate(&good_then_bad), Err(RtcpError::Truncated));
        assert_eq!(report_blocks(&[0x81, 201, 0, 1, 0, 0, 0, 0]).count(), 0);
    }
}
