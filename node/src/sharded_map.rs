//! A hash map split into shards that grow one at a time.
//!
//! A single table holding a million transactions doubles by rehashing all of them at
//! once, which stalled the SIP core for over half a second. Split in [`SHARDS`] parts,
//! each growth moves one part, so the worst pause shrinks by the same factor while
//! lookups cost one extra hash of the key.

use crate::FastMap;
use std::borrow::Borrow;
use std::hash::Hash;

/// Number of shards (a power of two).
pub const SHARDS: usize = 64;

/// A hash map of [`SHARDS`] independently growing tables.
pub struct ShardedMap<K, V> {
    pick: ahash::RandomState,
    shards: Vec<FastMap<K, V>>,
    len: usize,
}

impl<K: Hash + Eq, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            pick: ahash::RandomState::new(),
            shards: (0..SHARDS).map(|_| FastMap::default()).collect(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // The top bits: the shard tables themselves use the low ones of their own hash.
        (self.pick.hash_one(key) >> 58) as usize % SHARDS
    }

    /// The value for `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard(key)].get(key)
    }

    /// The value for `key`, mutably.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.shard(key);
        self.shards[i].get_mut(key)
    }

    /// Inserts, returning the value `key` had before.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let i = self.shard(&key);
        let old = self.shards[i].insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.shard(key);
        let old = self.shards[i].remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_one_map_and_spreads_over_the_shards() {
        let mut m: ShardedMap<String, u32> = ShardedMap::default();
        assert!(m.is_empty());
        for i in 0..10_000u32 {
            assert_eq!(m.insert(format!("k{i}"), i), None);
        }
        assert_eq!(m.insert("k7".into(), 70), Some(7));
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get("k7"), Some(&70));
        *m.get_mut("k8").unwrap() += 1;
        assert_eq!(m.get("k8"), Some(&9));
        assert_eq!(m.remove("k9"), Some(9));
        assert_eq!(m.remove("k9"), None);
        assert_eq!(m.get("k9"), None);
        assert_eq!(m.len(), 9_999);
        // Every shard got a fair part (expected ~156 each).
        assert!(m.shards.iter().all(|s| s.len() > 80), "uneven shards");
    }
}
