//! The transaction layer's timer queue: FIFO lanes, one per delay.
//!
//! Nearly every SIP timer is armed as `now + d` for a handful of delays (T1·2ⁿ, T2, T4,
//! 64·T1, the proceeding guard), and `now` only moves forward, so the entries of one
//! delay arrive already sorted. Each lane is a FIFO of fixed-size chunks: arming is a
//! push at the back, firing a pop at the front of the earliest lane, and the queue never
//! reallocates one large buffer. A binary heap did, and at tens of thousands of
//! transactions per second (each lingering 32 s for Timer J) its doubling copied hundreds
//! of megabytes into fresh pages and stalled the core for up to a second. Entries that do
//! not fit a lane (a clock that went backwards, more distinct delays than lanes) go to a
//! small heap, so the order stays exact whatever the caller does.

use super::{Slot, TxKey};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// Entries per chunk: growth allocates this much at a time, never more.
const CHUNK: usize = 4096;

/// Distinct delays given their own lane; more go to the fallback heap.
const MAX_LANES: usize = 32;

/// One armed timer of one transaction.
pub(super) struct Entry {
    /// When it fires.
    pub at: Instant,
    /// Arming order: breaks ties between equal deadlines first-armed first.
    pub seq: u64,
    /// The transaction generation it was armed for (stale if the key was reused).
    pub tx_id: u64,
    /// Which of the transaction's timer slots.
    pub slot: Slot,
    /// The transaction.
    pub key: TxKey,
}

impl Entry {
    fn order(&self) -> (Instant, u64) {
        (self.at, self.seq)
    }
}

/// Heap wrapper: reversed so the max-heap pops the earliest deadline.
struct Earliest(Entry);

impl PartialEq for Earliest {
    fn eq(&self, other: &Self) -> bool {
        self.0.order() == other.0.order()
    }
}
impl Eq for Earliest {}
impl PartialOrd for Earliest {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Earliest {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.order().cmp(&self.0.order())
    }
}

/// Entries armed with one delay, in deadline order.
struct Lane {
    delay: Duration,
    chunks: VecDeque<VecDeque<Entry>>,
}

impl Lane {
    fn front(&self) -> Option<&Entry> {
        self.chunks.front().and_then(|c| c.front())
    }

    fn back(&self) -> Option<&Entry> {
        self.chunks.back().and_then(|c| c.back())
    }

    fn push(&mut self, e: Entry) {
        match self.chunks.back_mut() {
            Some(c) if c.len() < CHUNK => c.push_back(e),
            _ => {
                let mut c = VecDeque::with_capacity(CHUNK);
                c.push_back(e);
                self.chunks.push_back(c);
            }
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        let c = self.chunks.front_mut()?;
        let e = c.pop_front();
        if c.is_empty() {
            self.chunks.pop_front();
        }
        e
    }

    fn retain(&mut self, keep: &mut impl FnMut(&Entry) -> bool) {
        for c in &mut self.chunks {
            c.retain(|e| keep(e));
        }
        self.chunks.retain(|c| !c.is_empty());
    }
}

/// Where the earliest entry sits.
#[derive(Clone, Copy)]
enum Source {
    Lane(usize),
    Heap,
}

/// All armed timers, earliest first.
#[derive(Default)]
pub(super) struct TimerQueue {
    lanes: Vec<Lane>,
    heap: BinaryHeap<Earliest>,
    seq: u64,
    len: usize,
}

impl TimerQueue {
    /// Arms a timer `delay` after `now`; returns its deadline.
    pub fn push(
        &mut self,
        now: Instant,
        delay: Duration,
        tx_id: u64,
        slot: Slot,
        key: TxKey,
    ) -> Instant {
        let at = now + delay;
        self.seq += 1;
        let e = Entry {
            at,
            seq: self.seq,
            tx_id,
            slot,
            key,
        };
        self.len += 1;
        let lane = match self.lanes.iter().position(|l| l.delay == delay) {
            Some(i) => Some(i),
            None if self.lanes.len() < MAX_LANES => {
                self.lanes.push(Lane {
                    delay,
                    chunks: VecDeque::new(),
                });
                Some(self.lanes.len() - 1)
            }
            None => None,
        };
        match lane {
            Some(i) if self.lanes[i].back().is_none_or(|b| b.at <= at) => self.lanes[i].push(e),
            _ => self.heap.push(Earliest(e)),
        }
        at
    }

    fn earliest(&self) -> Option<(Source, &Entry)> {
        let lanes = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.front().map(|e| (Source::Lane(i), e)));
        let heap = self.heap.peek().map(|h| (Source::Heap, &h.0));
        lanes.chain(heap).min_by_key(|(_, e)| e.order())
    }

    fn pop_from(&mut self, source: Source) -> Option<Entry> {
        let e = match source {
            Source::Lane(i) => self.lanes[i].pop(),
            Source::Heap => self.heap.pop().map(|h| h.0),
        };
        if e.is_some() {
            self.len -= 1;
        }
        e
    }

    /// The earliest deadline.
    pub fn next_at(&self) -> Option<Instant> {
        self.earliest().map(|(_, e)| e.at)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Entry> {
        let (source, e) = self.earliest()?;
        if e.at > now {
            return None;
        }
        self.pop_from(source)
    }

    /// Drops entries that `live` rejects from the front of every lane and the heap top,
    /// so that [`Self::next_at`] names a live timer.
    pub fn prune_fronts(&mut self, live: impl Fn(&Entry) -> bool) {
        for i in 0..self.lanes.len() {
            while self.lanes[i].front().is_some_and(|e| !live(e)) {
                self.lanes[i].pop();
                self.len -= 1;
            }
        }
        while self.heap.peek().is_some_and(|h| !live(&h.0)) {
            self.heap.pop();
            self.len -= 1;
        }
    }

    /// Keeps only the entries `live` accepts.
    pub fn retain(&mut self, live: impl Fn(&Entry) -> bool) {
        let mut keep = |e: &Entry| live(e);
        for l in &mut self.lanes {
            l.retain(&mut keep);
        }
        self.heap.retain(|h| live(&h.0));
        self.len = self
            .lanes
            .iter()
            .flat_map(|l| l.chunks.iter())
            .map(VecDeque::len)
            .sum::<usize>()
            + self.heap.len();
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::Method;

    fn key(n: u32) -> TxKey {
        TxKey::Client {
            branch: format!("b{n}"),
            method: Method::Options,
        }
    }

    fn drain(q: &mut TimerQueue, t0: Instant, now: Instant) -> Vec<(Duration, TxKey)> {
        std::iter::from_fn(|| q.pop_due(now))
            .map(|e| (e.at - t0, e.key))
            .collect()
    }

    #[test]
    fn fires_in_deadline_order_across_lanes_and_ties_in_arming_order() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let ms = Duration::from_millis;
        q.push(t0, ms(500), 1, Slot::Retransmit, key(1));
        q.push(t0, ms(32_000), 1, Slot::Linger, key(1));
        q.push(t0 + ms(100), ms(500), 2, Slot::Retransmit, key(2));
        // Same deadline as key 1's first timer, armed later: fires after it.
        q.push(t0 + ms(100), ms(400), 3, Slot::Retransmit, key(3));
        q.push(t0 + ms(200), ms(5_000), 4, Slot::Linger, key(4));
        assert_eq!(q.len(), 5);
        assert_eq!(q.next_at(), Some(t0 + ms(500)));
        assert!(q.pop_due(t0 + ms(499)).is_none());
        assert_eq!(
            drain(&mut q, t0, t0 + ms(600)),
            vec![(ms(500), key(1)), (ms(500), key(3)), (ms(600), key(2))]
        );
        assert_eq!(q.next_at(), Some(t0 + ms(5_200)));
        assert_eq!(
            drain(&mut q, t0, t0 + ms(40_000)),
            vec![(ms(5_200), key(4)), (ms(32_000), key(1))]
        );
        assert_eq!(q.len(), 0);
        assert!(q.next_at().is_none());
    }

    #[test]
    fn a_clock_that_goes_backwards_still_fires_in_order() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut q = TimerQueue::default();
        let ms = Duration::from_millis;
        q.push(t0, ms(500), 1, Slot::Retransmit, key(1));
        q.push(t0 - ms(300), ms(500), 2, Slot::Retransmit, key(2)); // earlier than the back
        let order: Vec<TxKey> = std::iter::from_fn(|| q.pop_due(t0 + ms(1_000)))
            .map(|e| e.key)
            .collect();
        assert_eq!(order, vec![key(2), key(1)]);
    }

    #[test]
    fn more_delays_than_lanes_fall_back_to_the_heap_in_order() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let n = MAX_LANES as u64 + 10;
        for i in (0..n).rev() {
            q.push(
                t0,
                Duration::from_millis(10 + i),
                i,
                Slot::Timeout,
                key(i as u32),
            );
        }
        assert_eq!(q.lanes.len(), MAX_LANES);
        let ids: Vec<u64> = std::iter::from_fn(|| q.pop_due(t0 + Duration::from_secs(1)))
            .map(|e| e.tx_id)
            .collect();
        assert_eq!(ids, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn lanes_span_many_chunks_and_prune_and_retain_drop_stale_entries() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let n = 3 * CHUNK as u64 + 7;
        for i in 0..n {
            q.push(
                t0 + Duration::from_micros(i),
                Duration::from_secs(32),
                i,
                Slot::Linger,
                key(i as u32),
            );
        }
        assert!(q.lanes[0].chunks.len() >= 4);
        // The first 10 are stale: pruning the fronts moves next_at to entry 10.
        q.prune_fronts(|e| e.tx_id >= 10);
        assert_eq!(q.len(), n as usize - 10);
        assert_eq!(
            q.next_at(),
            Some(t0 + Duration::from_micros(10) + Duration::from_secs(32))
        );
        // Keep the even ones only.
        q.retain(|e| e.tx_id % 2 == 0);
        let ids: Vec<u64> = std::iter::from_fn(|| q.pop_due(t0 + Duration::from_secs(60)))
            .map(|e| e.tx_id)
            .collect();
        assert_eq!(ids, (10..n).filter(|i| i % 2 == 0).collect::<Vec<_>>());
        assert_eq!(q.len(), 0);
    }
}
