//! G.711 µ-law (PCMU, payload type 0) and A-law (PCMA, payload type 8) for 16-bit
//! linear PCM, following the ITU-T G.191 reference implementation of G.711.

/// Encodes one 16-bit linear sample to µ-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    // 14-bit magnitude with the 33 bias; negative values by one's complement.
    let mut absno: i32 = if sample < 0 {
        ((!sample) as i32 >> 2) + 33
    } else {
        (sample as i32 >> 2) + 33
    };
    if absno > 0x1fff {
        absno = 0x1fff;
    }
    let mut i = absno >> 6;
    let mut segno = 1;
    while i != 0 {
        segno += 1;
        i >>= 1;
    }
    let high = 8 - segno;
    let low = 0x0f - ((absno >> segno) & 0x0f);
    let code = ((high << 4) | low) as u8;
    if sample >= 0 {
        code | 0x80
    } else {
        code
    }
}

/// Decodes one µ-law code to 16-bit linear.
pub fn ulaw_decode(code: u8) -> i16 {
    let inv = !code;
    let exponent = i32::from((inv >> 4) & 0x07);
    let mantissa = i32::from(inv & 0x0f);
    let step = 4 << (exponent + 1);
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
    if code < 0x80 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Encodes one 16-bit linear sample to A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    // 12-bit magnitude; negative values by one's complement.
    let mut ix: i32 = if sample < 0 {
        (!sample) as i32 >> 4
    } else {
        sample as i32 >> 4
    };
    if ix > 15 {
        let mut exp = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            exp += 1;
        }
        ix -= 16;
        ix += exp << 4;
    }
    if sample >= 0 {
        ix |= 0x80;
    }
    (ix ^ 0x55) as u8
}

/// Decodes one A-law code to 16-bit linear.
pub fn alaw_decode(code: u8) -> i16 {
    let ix = (code ^ 0x55) & 0x7f;
    let exp = i32::from(ix >> 4);
    let mut mant = i32::from(ix & 0x0f);
    if exp > 0 {
        mant += 16;
    }
    mant = (mant << 4) + 8;
    if exp > 1 {
        mant <<= exp - 1;
    }
    if code > 127 {
        mant as i16
    } else {
        -mant as i16
    }
}

/// The two G.711 laws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum G711 {
    /// µ-law, PCMU, static payload type 0.
    Ulaw,
    /// A-law, PCMA, static payload type 8.
    Alaw,
}

impl G711 {
    /// The law of a static RTP payload type (0 or 8).
    pub fn from_payload_type(pt: u8) -> Option<G711> {
        match pt {
            0 => Some(G711::Ulaw),
            8 => Some(G711::Alaw),
            _ => None,
        }
    }

    /// Encodes `pcm` into `out` (one byte per sample); returns the samples written,
    /// `min(pcm.len(), out.len())`.
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) -> usize {
        let f = match self {
            G711::Ulaw => ulaw_encode,
            G711::Alaw => alaw_encode,
        };
        let n = pcm.len().min(out.len());
        for (o, s) in out[..n].iter_mut().zip(&pcm[..n]) {
            *o = f(*s);
        }
        n
    }

    /// Decodes `codes` into `out`; returns the samples written,
    /// `min(codes.len(), out.len())`.
    pub fn decode(self, codes: &[u8], out: &mut [i16]) -> usize {
        let f = match self {
            G711::Ulaw => ulaw_decode,
            G711::Alaw => alaw_decode,
        };
        let n = codes.len().min(out.len());
        for (o, c) in out[..n].iter_mut().zip(&codes[..n]) {
            *o = f(*c);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_reference_values() {
        // G.711 table 2: the extremes, and both zeros.
        assert_eq!(ulaw_decode(0xff), 0);
        assert_eq!(ulaw_decode(0x7f), 0);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0xfe), 8);
        assert_eq!(ulaw_decode(0x7e), -8);
        assert_eq!(ulaw_decode(0xef), 132); // first code of segment 1
        assert_eq!(ulaw_decode(0xf0), 120); // last code of segment 0
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(ulaw_encode(-1), 0x7f);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_encode(8), 0xfe);
        assert_eq!(ulaw_encode(1000), 0xce);
        assert_eq!(ulaw_encode(-1000), 0x4e);
    }

    #[test]
    fn alaw_reference_values() {
        assert_eq!(alaw_decode(0xd5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xaa), 32256);
        assert_eq!(alaw_decode(0x2a), -32256);
        assert_eq!(alaw_decode(0xd4), 24);
        assert_eq!(alaw_encode(0), 0xd5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xaa);
        assert_eq!(alaw_encode(i16::MIN), 0x2a);
        assert_eq!(alaw_encode(1000), 0xfa);
        assert_eq!(alaw_encode(-1000), 0x7a);
    }

    #[test]
    fn every_code_round_trips_decode_then_encode() {
        for code in 0..=255u8 {
            assert_eq!(alaw_encode(alaw_decode(code)), code, "A-law {code:#04x}");
            // µ-law has two zeros; negative zero (0x7f) decodes to 0, which encodes
            // as positive zero (0xff). Every other code is its own image.
            let want = if code == 0x7f { 0xff } else { code };
            assert_eq!(ulaw_encode(ulaw_decode(code)), want, "µ-law {code:#04x}");
        }
    }

    #[test]
    fn quantisation_is_monotonic_and_close() {
        for law in [G711::Ulaw, G711::Alaw] {
            let mut prev = i16::MIN;
            for x in i16::MIN..=i16::MAX {
                let (mut c, mut y) = ([0u8], [0i16]);
                law.encode(&[x], &mut c);
                law.decode(&c, &mut y);
                let y = y[0];
                assert!(y >= prev, "{law:?}: {x} -> {y} after {prev}");
                prev = y;
                let err = (i32::from(x) - i32::from(y)).abs();
                let bound = 16.max(i32::from(x).abs() / 16);
                assert!(err <= bound, "{law:?}: {x} -> {y}");
            }
        }
    }

    #[test]
    fn buffers_encode_and_decode_to_the_shorter_length() {
        let pcm = [0i16, 1000, -1000, i16::MAX];
        let mut codes = [0u8; 3];
        assert_eq!(G711::Ulaw.encode(&pcm, &mut codes), 3);
        assert_eq!(codes, [0xff, 0xce, 0x4e]);
        let mut back = [0i16; 8];
        assert_eq!(G711::Alaw.decode(&[0xd5, 0x55], &mut back), 2);
        assert_eq!(&back[..2], &[8, -8]);
        assert_eq!(G711::from_payload_type(0), Some(G711::Ulaw));
        assert_eq!(G711::from_payload_type(8), Some(G711::Alaw));
        assert_eq!(G711::from_payload_type(18), None);
    }
}
