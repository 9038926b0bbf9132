//! Zero-copy view of an RTP packet (RFC 3550 §5.1) and RTP/RTCP demultiplexing on one
//! port (RFC 5761 §4, RFC 7983).

/// The only RTP version in use.
pub const RTP_VERSION: u8 = 2;
/// Length of the fixed RTP header.
pub const FIXED_HEADER_LEN: usize = 12;

/// Why a datagram is not a valid RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the fixed header.
    #[error("shorter than the 12-byte RTP header ({0} bytes)")]
    TooShort(usize),
    /// Version field other than 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The CSRC list runs past the end of the datagram.
    #[error("CSRC list longer than the packet")]
    CsrcOverrun,
    /// The header extension runs past the end of the datagram.
    #[error("header extension longer than the packet")]
    ExtensionOverrun,
    /// The padding count is zero or longer than what follows the header.
    #[error("invalid padding length")]
    BadPadding,
}

/// What a datagram arriving on a media port is (RFC 7983 first-byte ranges, then
/// RFC 5761 packet-type ranges to separate RTCP from RTP under rtcp-mux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// An RTP packet.
    Rtp,
    /// An RTCP packet (second byte 192–223, i.e. the RTP PT field 64–95).
    Rtcp,
    /// STUN, DTLS, ZRTP or anything else.
    Other,
}

/// Classifies a datagram by its first two bytes without validating the rest.
pub fn classify(buf: &[u8]) -> PacketKind {
    if buf.len() < 2 || buf[0] >> 6 != RTP_VERSION {
        return PacketKind::Other;
    }
    if (64..=95).contains(&(buf[1] & 0x7f)) {
        PacketKind::Rtcp
    } else {
        PacketKind::Rtp
    }
}

/// A validated RTP packet borrowed from a receive buffer (no copy, no allocation).
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    header_len: usize,
    padding_len: usize,
    extension: Option<(usize, usize)>,
}

impl<'a> RtpPacket<'a> {
    /// Validates `buf` as an RTP packet: version, CSRC list, extension and padding
    /// lengths must all fit the datagram.
    pub fn parse(buf: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        if buf.len() < FIXED_HEADER_LEN {
            return Err(RtpError::TooShort(buf.len()));
        }
        let version = buf[0] >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::BadVersion(version));
        }
        let cc = (buf[0] & 0x0f) as usize;
        let mut header_len = FIXED_HEADER_LEN + 4 * cc;
        if header_len > buf.len() {
            return Err(RtpError::CsrcOverrun);
        }
        let mut extension = None;
        if buf[0] & 0x10 != 0 {
            if header_len + 4 > buf.len() {
                return Err(RtpError::ExtensionOverrun);
            }
            let words = u16::from_be_bytes([buf[header_len + 2], buf[header_len + 3]]) as usize;
            let start = header_len + 4;
            header_len = start + 4 * words;
            if header_len > buf.len() {
                return Err(RtpError::ExtensionOverrun);
            }
            extension = Some((start - 4, header_len));
        }
        let mut padding_len = 0;
        if buf[0] & 0x20 != 0 {
            padding_len = buf[buf.len() - 1] as usize;
            if padding_len == 0 || header_len + padding_len > buf.len() {
                return Err(RtpError::BadPadding);
            }
        }
        Ok(RtpPacket {
            buf,
            header_len,
            padding_len,
            extension,
        })
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    /// RTP version (always 2 once parsed).
    pub fn version(&self) -> u8 {
        self.buf[0] >> 6
    }
    /// Padding bit.
    pub fn has_padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }
    /// Extension bit.
    pub fn has_extension(&self) -> bool {
        self.extension.is_some()
    }
    /// Number of CSRC identifiers (0–15).
    pub fn csrc_count(&self) -> usize {
        (self.buf[0] & 0x0f) as usize
    }
    /// Marker bit (start of a talk spurt for audio).
    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }
    /// Payload type (0–127).
    pub fn payload_type(&self) -> u8 {
        self.buf[1] & 0x7f
    }
    /// Sequence number.
    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }
    /// Media timestamp, in units of the payload's clock rate.
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]])
    }
    /// Synchronisation source.
    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
    }
    /// The `i`-th contributing source, if present.
    pub fn csrc(&self, i: usize) -> Option<u32> {
        if i >= self.csrc_count() {
            return None;
        }
        let o = FIXED_HEADER_LEN + 4 * i;
        Some(u32::from_be_bytes([
            self.buf[o],
            self.buf[o + 1],
            self.buf[o + 2],
            self.buf[o + 3],
        ]))
    }
    /// The header extension as `(profile-defined 16 bits, extension data)`.
    pub fn extension(&self) -> Option<(u16, &'a [u8])> {
        self.extension.map(|(at, end)| {
            (
                u16::from_be_bytes([self.buf[at], self.buf[at + 1]]),
                &self.buf[at + 4..end],
            )
        })
    }
    /// Length of the header including CSRCs and extension.
    pub fn header_len(&self) -> usize {
        self.header_len
    }
    /// Number of padding bytes at the end (0 without the padding bit).
    pub fn padding_len(&self) -> usize {
        self.padding_len
    }
    /// The payload, without header and padding.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.header_len..self.buf.len() - self.padding_len]
    }
}

/// Fields of a plain RTP header (no CSRC, no extension, no padding) to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtpHeader {
    /// Marker bit.
    pub marker: bool,
    /// Payload type (0–127; higher bits are masked off).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

impl RtpHeader {
    /// Writes the 12-byte header followed by `payload` into `out`; returns the packet
    /// length, or `None` when `out` is too small.
    pub fn write(&self, payload: &[u8], out: &mut [u8]) -> Option<usize> {
        let len = FIXED_HEADER_LEN + payload.len();
        let out = out.get_mut(..len)?;
        out[0] = RTP_VERSION << 6;
        out[1] = (self.payload_type & 0x7f) | if self.marker { 0x80 } else { 0 };
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        out[12..].copy_from_slice(payload);
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 12 + payload.len()];
        let h = RtpHeader {
            marker: true,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc,
        };
        assert_eq!(h.write(payload, &mut out), Some(out.len()));
        out
    }

    #[test]
    fn parses_the_fixed_header_fields() {
        let buf = packet(0, 0xBEEF, 0xDEADBEEF, 0x01020304, b"abcd");
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.version(), 2);
        assert!(p.marker());
        assert_eq!(p.payload_type(), 0);
        assert_eq!(p.sequence(), 0xBEEF);
        assert_eq!(p.timestamp(), 0xDEADBEEF);
        assert_eq!(p.ssrc(), 0x01020304);
        assert_eq!(p.csrc_count(), 0);
        assert!(!p.has_extension() && !p.has_padding());
        assert_eq!(p.header_len(), 12);
        assert_eq!(p.payload(), b"abcd");
        assert_eq!(classify(&buf), PacketKind::Rtp);
    }

    #[test]
    fn csrc_extension_and_padding_are_measured() {
        // V=2 P=1 X=1 CC=2, PT 8
        let mut buf = vec![0xB2, 8, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
        buf.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // CSRCs
        buf.extend_from_slice(&[0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // extension, 1 word
        buf.extend_from_slice(b"PAYLOAD");
        buf.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.csrc_count(), 2);
        assert_eq!(p.csrc(0), Some(1));
        assert_eq!(p.csrc(1), Some(2));
        assert_eq!(p.csrc(2), None);
        assert_eq!(p.extension(), Some((0xBEDE, &[1u8, 2, 3, 4][..])));
        assert_eq!(p.header_len(), 12 + 8 + 8);
        assert_eq!(p.padding_len(), 3);
        assert_eq!(p.payload(), b"PAYLOAD");
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(
            RtpPacket::parse(&[0x80; 11]).unwrap_err(),
            RtpError::TooShort(11)
        );
        let mut v1 = packet(0, 1, 1, 1, b"x");
        v1[0] = 0x40;
        assert_eq!(RtpPacket::parse(&v1).unwrap_err(), RtpError::BadVersion(1));
        let mut cc = packet(0, 1, 1, 1, b"x");
        cc[0] |= 0x01; // one CSRC announced, 1 byte follows
        assert_eq!(RtpPacket::parse(&cc).unwrap_err(), RtpError::CsrcOverrun);
        let mut ext = packet(0, 1, 1, 1, &[0xBE, 0xDE, 0, 2, 0, 0, 0, 0]);
        ext[0] |= 0x10; // extension of 2 words, 1 present
        assert_eq!(
            RtpPacket::parse(&ext).unwrap_err(),
            RtpError::ExtensionOverrun
        );
        let mut ext_short = packet(0, 1, 1, 1, &[0xBE]);
        ext_short[0] |= 0x10;
        assert_eq!(
            RtpPacket::parse(&ext_short).unwrap_err(),
            RtpError::ExtensionOverrun
        );
        for last in [0u8, 6] {
            let mut pad = packet(0, 1, 1, 1, &[1, 2, 3, 4, last]);
            pad[0] |= 0x20;
            assert_eq!(RtpPacket::parse(&pad).unwrap_err(), RtpError::BadPadding);
        }
    }

    #[test]
    fn rtcp_mux_demultiplexing_follows_rfc5761() {
        for second in [192u8, 200, 201, 202, 203, 204, 205, 206, 207, 223] {
            assert_eq!(classify(&[0x80, second]), PacketKind::Rtcp, "{second}");
        }
        for pt in [0u8, 8, 18, 63, 96, 101, 127] {
            assert_eq!(classify(&[0x80, pt]), PacketKind::Rtp, "{pt}");
            assert_eq!(classify(&[0x80, pt | 0x80]), PacketKind::Rtp, "marker {pt}");
        }
        assert_eq!(classify(&[0x00, 0x01]), PacketKind::Other); // STUN binding request
        assert_eq!(classify(&[22, 0xfe]), PacketKind::Other); // DTLS
        assert_eq!(classify(&[0x80]), PacketKind::Other);
    }

    #[test]
    fn header_writer_refuses_a_short_buffer() {
        let mut out = [0u8; 13];
        assert_eq!(RtpHeader::default().write(b"ab", &mut out), None);
        assert_eq!(RtpHeader::default().write(b"a", &mut out), Some(13));
    }
}
