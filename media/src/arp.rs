//! The kernel-bypass relay's neighbour table: IPv4 address → MAC, learned from ARP
//! and from the source of every received frame, with a bounded size, a refresh
//! age after which the relay asks again (still using the known MAC meanwhile) and
//! a retry interval that rate-limits requests. Sans-I/O: the caller passes `now`
//! and sends the requests the table asks for.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::wire::{is_unicast, Mac};

/// Table settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpConfig {
    /// Most neighbours kept; beyond it unknown addresses are not resolved.
    pub capacity: usize,
    /// Age after which a known entry is confirmed again by a request.
    pub refresh: Duration,
    /// Least time between two requests for the same address.
    pub retry: Duration,
}

impl Default for ArpConfig {
    fn default() -> ArpConfig {
        ArpConfig {
            capacity: 65_536,
            refresh: Duration::from_secs(300),
            retry: Duration::from_secs(1),
        }
    }
}

/// The answer of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// The MAC to send to, if known.
    pub mac: Option<Mac>,
    /// The caller must send an ARP request for the address now.
    pub ask: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: Option<Mac>,
    confirmed: Instant,
    asked: Option<Instant>,
}

/// A multiply-shift hash: the keys are IPv4 addresses the relay's own peers use,
/// and SipHash would cost more than the rest of a lookup on the forwarding path.
#[derive(Default)]
pub struct Ipv4Hasher(u64);

impl Hasher for Ipv4Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 29;
    }
}

/// The neighbour table.
#[derive(Debug)]
pub struct ArpTable {
    config: ArpConfig,
    entries: HashMap<u32, Entry, BuildHasherDefault<Ipv4Hasher>>,
}

impl ArpTable {
    /// An empty table.
    pub fn new(config: ArpConfig) -> ArpTable {
        ArpTable {
            config,
            entries: HashMap::default(),
        }
    }

    /// Entries (known and pending).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry exists.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that `ip` is at `mac` (an ARP packet or a frame from it); returns
    /// true when the entry is new or changed. Non-unicast MACs and 0.0.0.0 are
    /// ignored; a full table keeps only the entries it has.
    pub fn learn(&mut self, ip: Ipv4Addr, mac: Mac, now: Instant) -> bool {
        if !is_unicast(&mac) || ip.is_unspecified() || ip.is_broadcast() {
            return false;
        }
        let key = u32::from(ip);
        if let Some(e) = self.entries.get_mut(&key) {
            let changed = e.mac != Some(mac);
            e.mac = Some(mac);
            e.confirmed = now;
            e.asked = None;
            return changed;
        }
        if !self.make_room(now) {
            return false;
        }
        self.entries.insert(
            key,
            Entry {
                mac: Some(mac),
                confirmed: now,
                asked: None,
            },
        );
        true
    }

    /// Where to send a frame for `ip` at `now`, and whether to ask for it.
    pub fn resolve(&mut self, ip: Ipv4Addr, now: Instant) -> Resolution {
        let key = u32::from(ip);
        let retry = self.config.retry;
        let due = |asked: Option<Instant>| match asked {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= retry,
        };
        if let Some(e) = self.entries.get_mut(&key) {
            let stale = now.saturating_duration_since(e.confirmed) >= self.config.refresh;
            let ask = (e.mac.is_none() || stale) && due(e.asked);
            if ask {
                e.asked = Some(now);
            }
            return Resolution { mac: e.mac, ask };
        }
        if !self.make_room(now) {
            return Resolution {
                mac: None,
                ask: false,
            };
        }
        self.entries.insert(
            key,
            Entry {
                mac: None,
                confirmed: now,
                asked: Some(now),
            },
        );
        Resolution {
            mac: None,
            ask: true,
        }
    }

    /// True when there is room for one more entry, after dropping unanswered
    /// requests and stale entries if the table is full.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.entries.len() < self.config.capacity {
            return true;
        }
        let (refresh, retry) = (self.config.refresh, self.config.retry);
        self.entries.retain(|_, e| match e.mac {
            None => e
                .asked
                .is_some_and(|t| now.saturating_duration_since(t) < retry),
            Some(_) => now.saturating_duration_since(e.confirmed) < refresh,
        });
        self.entries.len() < self.config.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: Mac = [2, 0, 0, 0, 0, 1];
    const M2: Mac = [2, 0, 0, 0, 0, 2];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn table(capacity: usize) -> ArpTable {
        ArpTable::new(ArpConfig {
            capacity,
            refresh: Duration::from_secs(300),
            retry: Duration::from_secs(1),
        })
    }

    #[test]
    fn an_unknown_address_is_asked_for_once_per_retry_interval() {
        let mut t = table(8);
        let t0 = Instant::now();
        let x = ip("10.0.0.2");
        let r = t.resolve(x, t0);
        assert_eq!(
            r,
            Resolution {
                mac: None,
                ask: true
            }
        );
        let r = t.resolve(x, t0 + Duration::from_millis(500));
        assert_eq!(
            r,
            Resolution {
                mac: None,
                ask: false
            }
        );
        let r = t.resolve(x, t0 + Duration::from_millis(1000));
        assert_eq!(
            r,
            Resolution {
                mac: None,
                ask: true
            }
        );
    }

    #[test]
    fn a_learned_address_resolves_without_asking() {
        let mut t = table(8);
        let t0 = Instant::now();
        let x = ip("10.0.0.2");
        t.resolve(x, t0);
        assert!(t.learn(x, M1, t0 + Duration::from_millis(3)));
        let r = t.resolve(x, t0 + Duration::from_millis(4));
        assert_eq!(
            r,
            Resolution {
                mac: Some(M1),
                ask: false
            }
        );
        // Same MAC again: not a change. A new MAC: a change.
        assert!(!t.learn(x, M1, t0 + Duration::from_secs(1)));
        assert!(t.learn(x, M2, t0 + Duration::from_secs(2)));
        assert_eq!(t.resolve(x, t0 + Duration::from_secs(2)).mac, Some(M2));
    }

    #[test]
    fn a_stale_entry_is_still_used_while_it_is_confirmed_again() {
        let mut t = table(8);
        let t0 = Instant::now();
        let x = ip("10.0.0.2");
        t.learn(x, M1, t0);
        let at = t0 + Duration::from_secs(300);
        assert_eq!(
            t.resolve(x, at),
            Resolution {
                mac: Some(M1),
                ask: true
            }
        );
        assert_eq!(
            t.resolve(x, at + Duration::from_millis(10)),
            Resolution {
                mac: Some(M1),
                ask: false
            }
        );
        // Traffic from it confirms it: no more requests.
        t.learn(x, M1, at + Duration::from_millis(20));
        assert_eq!(
            t.resolve(x, at + Duration::from_secs(5)),
            Resolution {
                mac: Some(M1),
                ask: false
            }
        );
    }

    #[test]
    fn broadcast_multicast_and_unspecified_are_not_learned() {
        let mut t = table(8);
        let t0 = Instant::now();
        assert!(!t.learn(ip("10.0.0.2"), [0xff; 6], t0));
        assert!(!t.learn(ip("10.0.0.2"), [1, 0, 0x5e, 0, 0, 1], t0));
        assert!(!t.learn(ip("0.0.0.0"), M1, t0));
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_makes_room_only_from_stale_or_unanswered_entries() {
        let mut t = table(2);
        let t0 = Instant::now();
        t.learn(ip("10.0.0.2"), M1, t0);
        t.resolve(ip("10.0.0.3"), t0);
        // Full, nothing expired: a third address is neither learned nor asked for.
        assert!(!t.learn(ip("10.0.0.4"), M2, t0));
        assert_eq!(
            t.resolve(ip("10.0.0.5"), t0),
            Resolution {
                mac: None,
                ask: false
            }
        );
        // The unanswered request expires after the retry interval.
        let later = t0 + Duration::from_secs(2);
        assert!(t.learn(ip("10.0.0.4"), M2, later));
        assert_eq!(t.len(), 2);
        assert_eq!(t.resolve(ip("10.0.0.2"), later).mac, Some(M1));
    }

    #[test]
    fn many_addresses_hash_apart() {
        let mut t = table(100_000);
        let t0 = Instant::now();
        for i in 0..50_000u32 {
            t.learn(Ipv4Addr::from(0x0a00_0000 + i), M1, t0);
        }
        assert_eq!(t.len(), 50_000);
        assert_eq!(t.resolve(ip("10.0.1.0"), t0).mac, Some(M1));
    }
}
