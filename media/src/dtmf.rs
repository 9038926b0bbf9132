//! RFC 4733 telephone-events: payload parsing and a per-session digit counter that
//! counts each key press once, whatever the redundancy on the wire.

/// Length of one telephone-event payload.
pub const EVENT_LEN: usize = 4;

/// Why a payload is not a telephone-event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    /// Fewer than 4 bytes.
    #[error("telephone-event payload shorter than 4 bytes ({0})")]
    TooShort(usize),
}

/// One telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code: 0–9 digits, 10 `*`, 11 `#`, 12–15 `A`–`D`, 16 flash.
    pub event: u8,
    /// End bit: this packet (and its retransmissions) ends the event.
    pub end: bool,
    /// Power level in −dBm0 (0–63).
    pub volume: u8,
    /// Duration so far, in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the first event of an RTP payload (extra bytes are ignored).
    pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, DtmfError> {
        if payload.len() < EVENT_LEN {
            return Err(DtmfError::TooShort(payload.len()));
        }
        Ok(TelephoneEvent {
            event: payload[0],
            end: payload[1] & 0x80 != 0,
            volume: payload[1] & 0x3f,
            duration: u16::from_be_bytes([payload[2], payload[3]]),
        })
    }

    /// The DTMF key of this event, if it is one of the 16 keys.
    pub fn digit(&self) -> Option<char> {
        match self.event {
            0..=9 => Some((b'0' + self.event) as char),
            10 => Some('*'),
            11 => Some('#'),
            12..=15 => Some((b'A' + self.event - 12) as char),
            _ => None,
        }
    }
}

/// Most recent digits kept for later readers (IVR, feature codes).
pub const DIGIT_HISTORY: usize = 32;

/// Counts key presses of one stream. An event is identified by its RTP timestamp
/// (the same in every packet of the event, RFC 4733 §2.5.1): its first packet,
/// start or end, counts; retransmitted starts, updates and the redundant end
/// packets do not. A long event split into segments (§2.5.1.3: same code, new
/// timestamp at the end of the previous segment, which had no end bit) is one press.
#[derive(Debug, Clone, Default)]
pub struct DigitCounter {
    last: Option<Current>,
    count: u64,
    history: [u8; DIGIT_HISTORY],
    history_len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    timestamp: u32,
    event: u8,
    duration: u16,
    ended: bool,
}

impl DigitCounter {
    /// A counter with no events seen.
    pub fn new() -> DigitCounter {
        DigitCounter::default()
    }

    /// Accounts one telephone-event packet with RTP timestamp `timestamp`; returns
    /// the event when it is a new key press.
    pub fn on_event(&mut self, timestamp: u32, ev: &TelephoneEvent) -> Option<TelephoneEvent> {
        if let Some(cur) = &mut self.last {
            if cur.timestamp == timestamp {
                cur.duration = cur.duration.max(ev.duration);
                cur.ended |= ev.end;
                return None;
            }
            let continues = !cur.ended
                && cur.event == ev.event
                && timestamp == cur.timestamp.wrapping_add(u32::from(cur.duration));
            if continues {
                *cur = Current {
                    timestamp,
                    event: ev.event,
                    duration: ev.duration,
                    ended: ev.end,
                };
                return None;
            }
            // Old timestamps (reordered retransmissions of the previous event).
            if (timestamp.wrapping_sub(cur.timestamp) as i32) < 0 {
                return None;
            }
        }
        self.last = Some(Current {
            timestamp,
            event: ev.event,
            duration: ev.duration,
            ended: ev.end,
        });
        self.count += 1;
        if let Some(d) = ev.digit() {
            if self.history_len == DIGIT_HISTORY {
                self.history.copy_within(1.., 0);
                self.history_len -= 1;
            }
            self.history[self.history_len] = d as u8;
            self.history_len += 1;
        }
        Some(*ev)
    }

    /// Parses `payload` and accounts it (see [`Self::on_event`]).
    pub fn on_payload(
        &mut self,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<Option<TelephoneEvent>, DtmfError> {
        let ev = TelephoneEvent::parse(payload)?;
        Ok(self.on_event(timestamp, &ev))
    }

    /// Events counted so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The last [`DIGIT_HISTORY`] digits, oldest first.
    pub fn digits(&self) -> &str {
        // Only ASCII key characters are stored.
        std::str::from_utf8(&self.history[..self.history_len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: u8, end: bool, duration: u16) -> [u8; 4] {
        let d = duration.to_be_bytes();
        [event, if end { 0x80 | 10 } else { 10 }, d[0], d[1]]
    }

    #[test]
    fn parses_the_payload_fields() {
        let e = TelephoneEvent::parse(&[11, 0x80 | 0x40 | 7, 0x03, 0x20, 99]).unwrap();
        assert_eq!(
            e,
            TelephoneEvent {
                event: 11,
                end: true,
                volume: 7,
                duration: 800
            }
        );
        assert_eq!(e.digit(), Some('#'));
        assert_eq!(
            TelephoneEvent::parse(&[1, 2, 3]),
            Err(DtmfError::TooShort(3))
        );
        let digits: String = (0..=16u8)
            .filter_map(|event| {
                TelephoneEvent {
                    event,
                    end: false,
                    volume: 0,
                    duration: 0,
                }
                .digit()
            })
            .collect();
        assert_eq!(digits, "0123456789*#ABCD");
    }

    /// A typical key press: start retransmitted 3 times, updates, 3 end packets.
    fn press(c: &mut DigitCounter, ts: u32, event: u8) -> usize {
        let mut new = 0;
        for d in [0u16, 0, 0, 160, 320, 480, 640, 800, 800, 800] {
            let end = d == 800;
            if c.on_payload(ts, &ev(event, end, d)).unwrap().is_some() {
                new += 1;
            }
        }
        new
    }

    #[test]
    fn each_press_counts_once_despite_redundancy() {
        let mut c = DigitCounter::new();
        assert_eq!(press(&mut c, 1000, 1), 1);
        assert_eq!(press(&mut c, 9000, 2), 1);
        assert_eq!(press(&mut c, 17000, 2), 1); // same key again: a new press
        assert_eq!(c.count(), 3);
        assert_eq!(c.digits(), "122");
        // A late redundant end of the first event changes nothing.
        assert_eq!(c.on_payload(1000, &ev(1, true, 800)).unwrap(), None);
        assert_eq!(c.count(), 3);
    }

    #[test]
    fn an_event_seen_only_by_its_end_packets_counts_once() {
        let mut c = DigitCounter::new();
        for _ in 0..3 {
            c.on_payload(500, &ev(10, true, 1200)).unwrap();
        }
        assert_eq!(c.count(), 1);
        assert_eq!(c.digits(), "*");
    }

    #[test]
    fn a_long_event_in_segments_is_one_press() {
        let mut c = DigitCounter::new();
        c.on_payload(0, &ev(5, false, 65535)).unwrap();
        c.on_payload(65535, &ev(5, false, 20_000)).unwrap();
        c.on_payload(65535, &ev(5, true, 24_000)).unwrap();
        assert_eq!(c.count(), 1);
        // After an end, the same key at the next timestamp is a new press.
        c.on_payload(65535 + 24_000, &ev(5, false, 0)).unwrap();
        assert_eq!(c.count(), 2);
    }

    #[test]
    fn history_is_bounded_and_keeps_the_latest() {
        let mut c = DigitCounter::new();
        for i in 0..40u32 {
            assert_eq!(press(&mut c, 10_000 * (i + 1), (i % 10) as u8), 1);
        }
        assert_eq!(c.count(), 40);
        assert_eq!(c.digits().len(), DIGIT_HISTORY);
        assert!(c.digits().ends_with("0123456789"));
        assert!(c.digits().starts_with("89012345"));
    }
}
