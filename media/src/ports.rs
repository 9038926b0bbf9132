//! RTP/RTCP port pairs (even RTP port, RTCP on the next odd port, RFC 3550 §11) from
//! a configured range: bounded, O(1) allocate and release, least recently released
//! first so that late packets of an ended call do not reach the next one. A node that
//! takes over another's calls reserves their exact pairs instead
//! ([`PortAllocator::reserve`]).

use std::collections::VecDeque;

/// An inclusive UDP port range for media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// Lowest port (rounded up to even).
    pub min: u16,
    /// Highest port; the last pair's RTCP port is at most this.
    pub max: u16,
}

impl Default for PortRange {
    /// 10000–20000.
    fn default() -> PortRange {
        PortRange {
            min: 10000,
            max: 20000,
        }
    }
}

/// An RTP port and its RTCP port (`rtp + 1`). Serializable: replicated call records
/// keep a session's pairs for the node that adopts it after a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PortPair {
    /// Even RTP port.
    pub rtp: u16,
    /// RTCP port, `rtp + 1`.
    pub rtcp: u16,
}

/// Why a range or a release was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The range holds no even/odd pair.
    #[error("port range {min}-{max} holds no RTP/RTCP pair")]
    EmptyRange {
        /// Configured minimum.
        min: u16,
        /// Configured maximum.
        max: u16,
    },
    /// The port is not the RTP port of a pair of this range.
    #[error("port {0} is not an RTP port of this range")]
    NotInRange(u16),
    /// The pair is not allocated (double release).
    #[error("port {0} is not allocated")]
    NotAllocated(u16),
    /// The pair is already allocated (a reservation of a pair in use).
    #[error("port {0} is already allocated")]
    InUse(u16),
}

/// Allocator of [`PortPair`]s.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    first: u16,
    free: VecDeque<u16>,
    in_use: Vec<bool>,
}

impl PortAllocator {
    /// All pairs of `range` free.
    pub fn new(range: PortRange) -> Result<PortAllocator, PortError> {
        let empty = PortError::EmptyRange {
            min: range.min,
            max: range.max,
        };
        // Port 0 is not a port: the lowest pair is 2/3.
        let first = (u32::from(range.min) + u32::from(range.min) % 2).max(2);
        let end = u32::from(range.max) + 1; // exclusive
        if first + 2 > end {
            return Err(empty);
        }
        let pairs = ((end - first) / 2) as u16;
        Ok(PortAllocator {
            first: first as u16,
            free: (0..pairs).collect(),
            in_use: vec![false; usize::from(pairs)],
        })
    }

    /// The next free pair, or `None` when every pair is taken.
    pub fn allocate(&mut self) -> Option<PortPair> {
        let i = self.free.pop_front()?;
        self.in_use[usize::from(i)] = true;
        let rtp = self.first + 2 * i;
        Some(PortPair { rtp, rtcp: rtp + 1 })
    }

    /// Takes the pair whose RTP port is `rtp`, free or not next in line: for a node
    /// that continues sessions another node opened on these ports. O(free pairs),
    /// which only take-overs pay, never the allocation of a new call.
    pub fn reserve(&mut self, rtp: u16) -> Result<PortPair, PortError> {
        let i = self.index(rtp)?;
        match self.in_use.get_mut(usize::from(i)) {
            None => Err(PortError::NotInRange(rtp)),
            Some(true) => Err(PortError::InUse(rtp)),
            Some(used) => {
                // A free pair is in the queue exactly once.
                let at = self.free.iter().position(|&f| f == i);
                if let Some(at) = at {
                    self.free.remove(at);
                }
                *used = true;
                Ok(PortPair { rtp, rtcp: rtp + 1 })
            }
        }
    }

    /// Returns the pair whose RTP port is `rtp`; it is handed out again after all
    /// pairs released before it.
    pub fn release(&mut self, rtp: u16) -> Result<(), PortError> {
        let i = self.index(rtp)?;
        match self.in_use.get_mut(usize::from(i)) {
            None => Err(PortError::NotInRange(rtp)),
            Some(false) => Err(PortError::NotAllocated(rtp)),
            Some(used) => {
                *used = false;
                self.free.push_back(i);
                Ok(())
            }
        }
    }

    /// The pair index of RTP port `rtp`, if it is an even port from the first one
    /// on (the upper bound is `in_use`'s length).
    fn index(&self, rtp: u16) -> Result<u16, PortError> {
        rtp.checked_sub(self.first)
            .filter(|o| o % 2 == 0)
            .map(|o| o / 2)
            .ok_or(PortError::NotInRange(rtp))
    }

    /// Pairs in the range.
    pub fn capacity(&self) -> usize {
        self.in_use.len()
    }

    /// Pairs free now.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_range_holds_5000_even_odd_pairs() {
        let mut a = PortAllocator::new(PortRange::default()).unwrap();
        assert_eq!(a.capacity(), 5000);
        let mut seen = std::collections::HashSet::new();
        while let Some(p) = a.allocate() {
            assert_eq!(p.rtp % 2, 0);
            assert_eq!(p.rtcp, p.rtp + 1);
            assert!((10000..=19998).contains(&p.rtp));
            assert!(seen.insert(p.rtp));
        }
        assert_eq!(seen.len(), 5000);
        assert_eq!(a.available(), 0);
    }

    #[test]
    fn exhaustion_refuses_and_release_reuses_least_recent_first() {
        let mut a = PortAllocator::new(PortRange {
            min: 3001,
            max: 3009,
        })
        .unwrap();
        // odd min rounds up: pairs 3002, 3004, 3006, 3008
        let got: Vec<u16> = (0..4).map(|_| a.allocate().unwrap().rtp).collect();
        assert_eq!(got, [3002, 3004, 3006, 3008]);
        assert_eq!(a.allocate(), None);
        a.release(3006).unwrap();
        a.release(3002).unwrap();
        assert_eq!(a.available(), 2);
        assert_eq!(a.allocate().unwrap().rtp, 3006);
        assert_eq!(a.allocate().unwrap().rtp, 3002);
        assert_eq!(a.allocate(), None);
    }

    #[test]
    fn bad_releases_and_ranges_are_errors() {
        let mut a = PortAllocator::new(PortRange {
            min: 4000,
            max: 4003,
        })
        .unwrap();
        assert_eq!(a.capacity(), 2);
        assert_eq!(a.release(4000), Err(PortError::NotAllocated(4000)));
        assert_eq!(a.release(4001), Err(PortError::NotInRange(4001)));
        assert_eq!(a.release(3998), Err(PortError::NotInRange(3998)));
        assert_eq!(a.release(4004), Err(PortError::NotInRange(4004)));
        let p = a.allocate().unwrap();
        assert_eq!(a.release(p.rtp), Ok(()));
        assert_eq!(a.release(p.rtp), Err(PortError::NotAllocated(p.rtp)));
        assert_eq!(a.available(), 2);
        for (min, max) in [(4001, 4002), (5000, 4000), (0, 1), (65535, 65535)] {
            assert_eq!(
                PortAllocator::new(PortRange { min, max }).unwrap_err(),
                PortError::EmptyRange { min, max }
            );
        }
        assert_eq!(a.reserve(4001), Err(PortError::NotInRange(4001)));
        assert_eq!(a.reserve(4004), Err(PortError::NotInRange(4004)));
        assert_eq!(
            PortAllocator::new(PortRange {
                min: 65534,
                max: 65535
            })
            .unwrap()
            .capacity(),
            1
        );
    }

    #[test]
    fn reserve_takes_that_exact_pair_whether_next_in_line_or_not() {
        let mut a = PortAllocator::new(PortRange {
            min: 6000,
            max: 6009,
        })
        .unwrap();
        // 6000 6002 6004 6006 6008: take one from the middle and the next in line.
        assert_eq!(
            a.reserve(6004),
            Ok(PortPair {
                rtp: 6004,
                rtcp: 6005
            })
        );
        assert_eq!(a.reserve(6000).map(|p| p.rtp), Ok(6000));
        assert_eq!(a.available(), 3);
        assert_eq!(a.reserve(6004), Err(PortError::InUse(6004)));
        // Allocation skips the reserved pairs and keeps its order otherwise.
        let got: Vec<u16> = std::iter::from_fn(|| a.allocate().map(|p| p.rtp)).collect();
        assert_eq!(got, [6002, 6006, 6008]);
        assert_eq!(a.reserve(6002), Err(PortError::InUse(6002)));
        // A reserved pair is released like an allocated one, and can be reserved again.
        a.release(6004).unwrap();
        assert_eq!(a.release(6004), Err(PortError::NotAllocated(6004)));
        assert_eq!(a.available(), 1);
        assert_eq!(a.reserve(6004).map(|p| p.rtp), Ok(6004));
        assert_eq!(a.allocate(), None);
        a.release(6008).unwrap();
        a.release(6004).unwrap();
        assert_eq!(a.allocate().map(|p| p.rtp), Some(6008));
        assert_eq!(a.allocate().map(|p| p.rtp), Some(6004));
        assert_eq!(a.available(), 0);
    }
}
