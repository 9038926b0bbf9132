//! A lock-free histogram with fixed bucket bounds: observing is two relaxed atomic adds,
//! cheap enough for the SIP core's thread, and it needs no fallible construction (the
//! `prometheus` crate's own histogram validates its options at run time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds (seconds) for call setup: a local answer takes milliseconds, a phone
/// rings for tens of seconds.
pub const SETUP_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// Bucket bounds (seconds) for a Raft commit: one replication round on a LAN is well
/// under a millisecond, a disk sync a few.
pub const COMMIT_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Bucket bounds (seconds) for RTP interarrival jitter: a few ms is normal, 30 ms and
/// more is audible.
pub const JITTER_BOUNDS: &[f64] = &[0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5];

/// Counts of observations per bucket (not cumulative) and their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then the overflow bucket (+Inf).
    counts: Box<[AtomicU64]>,
    /// Sum of the observations, in nanoseconds (integer, so it can be one atomic add).
    sum_nanos: AtomicU64,
}

/// A consistent-enough copy for export.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// (upper bound, cumulative count) for each finite bound.
    pub buckets: Vec<(f64, u64)>,
    /// Every observation (the +Inf bucket).
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over these ascending bounds (seconds).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one value in seconds (negative and NaN count as 0).
    pub fn observe(&self, secs: f64) {
        let secs = if secs.is_finite() && secs > 0.0 {
            secs
        } else {
            0.0
        };
        let i = self.bounds.partition_point(|b| *b < secs);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        // `as` saturates: an absurd value cannot wrap the sum.
        self.sum_nanos
            .fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
    }

    /// Records a duration.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Cumulative buckets as Prometheus wants them. The count is the sum of the
    /// buckets read, so `+Inf` always equals `_count` even while others observe.
    pub fn snapshot(&self) -> Snapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, c) in self.bounds.iter().zip(self.counts.iter()) {
            running += c.load(Ordering::Relaxed);
            buckets.push((*bound, running));
        }
        let overflow = self
            .counts
            .last()
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0);
        Snapshot {
            buckets,
            count: running + overflow,
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.1); // le="0.1" includes 0.1
        h.observe(0.5);
        h.observe(5.0);
        h.observe(f64::NAN);
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.1, 3), (1.0, 4)]);
        assert_eq!(s.count, 5);
        assert!((s.sum - 5.65).abs() < 1e-6, "{}", s.sum);
    }
}
