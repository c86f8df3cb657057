//! Compact sets of custom_ids.
//!
//! A million-line batch must fit in a few megabytes, so sets of custom_ids hold a 64-bit
//! hash of each id instead of the string. With 64 bits the chance that two of a million
//! distinct ids collide is about 3 in 100 million; a collision would make volley treat a
//! new id as already seen, which is why the hash is keyed by nothing random: the same
//! file always behaves the same.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A 64-bit FNV-1a hash of a custom_id: stable across runs and platforms.
pub fn id_hash(id: &str) -> u64 {
    let mut h = StableHash::new();
    h.update(id.as_bytes());
    h.finish()
}

/// A streaming 64-bit hash that never changes between volley versions, platforms or
/// Rust releases (std's `DefaultHasher` may): its values are written to files and
/// compared by later runs. FNV-1a over the bytes, then an avalanche step.
#[derive(Debug, Clone, Copy)]
pub struct StableHash(u64);

impl StableHash {
    pub fn new() -> StableHash {
        StableHash(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h = self.0;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
        self.0 = h;
    }

    pub fn finish(self) -> u64 {
        // FNV mixes its last bytes poorly into the high bits that hash tables use; a
        // final avalanche step (from splitmix64) fixes that.
        let mut h = self.0;
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }
}

impl Default for StableHash {
    fn default() -> StableHash {
        StableHash::new()
    }
}

/// Lets `serde_json::to_writer` feed a value's bytes straight into the hash, so hashing
/// a request body needs no buffer.
impl std::io::Write for StableHash {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The values are already hashes: hashing them again would only cost time.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by custom_id, storing only the id's hash (see the module docs).
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// A map from id hashes to small values, for the tables that hold one entry per line of
/// a big file (the input's ids, RESULTS' fingerprints): open addressing with linear
/// probing in one flat array, sized to the count it is given at 80% load rather than
/// rounded up to a power of two. A std `HashMap` of a million `(u64, u64)` entries takes
/// 34 MB (two million buckets and their control bytes); this one 20 MB, and a lookup
/// reads one or two neighbouring cache lines.
///
/// Keys are [`id_hash`] values, already well mixed, so a slot is picked from the hash's
/// high bits by multiplication. 0 marks an empty slot: the one id whose hash is 0 is
/// stored as 1 (two ids sharing a hash is the risk the module docs weigh already).
/// Nothing is ever removed.
#[derive(Debug, Clone)]
pub struct IdTable<V> {
    slots: Vec<(u64, V)>,
    len: usize,
}

/// The most a table is filled before it grows: past it, probes for absent keys get long.
const LOAD: f64 = 0.8;

impl<V: Copy + Default> IdTable<V> {
    /// A table with room for `n` entries before it grows.
    pub fn with_capacity(n: usize) -> IdTable<V> {
        let slots = ((n.max(8) as f64) / LOAD).ceil() as usize;
        IdTable {
            slots: vec![(0, V::default()); slots],
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn key(hash: u64) -> u64 {
        hash.max(1)
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn slot(&self, key: u64) -> usize {
        let n = self.slots.len();
        let mut i = ((u128::from(key) * n as u128) >> 64) as usize;
        loop {
            let k = self.slots[i].0;
            if k == key || k == 0 {
                return i;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Where `hash` is held (below [`IdTable::slots`]), if it is: a place a caller can
    /// keep a mark of its own for, in a bitmap beside the table.
    pub fn slot_of(&self, hash: u64) -> Option<usize> {
        let key = Self::key(hash);
        let i = self.slot(key);
        (self.slots[i].0 == key).then_some(i)
    }

    pub fn get(&self, hash: u64) -> Option<&V> {
        self.slot_of(hash).map(|i| &self.slots[i].1)
    }

    pub fn contains_key(&self, hash: u64) -> bool {
        self.slot_of(hash).is_some()
    }

    /// How many slots the table has (fixed until it grows).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Adds `hash` with `value` unless it is there already; true if it was added.
    pub fn insert_new(&mut self, hash: u64, value: V) -> bool {
        self.get_or_insert(hash, value).is_none()
    }

    /// The value `hash` has, or `None` after adding it with `value`: one probe for what
    /// would be a lookup and then an insert.
    pub fn get_or_insert(&mut self, hash: u64, value: V) -> Option<V> {
        if (self.len + 1) as f64 > self.slots.len() as f64 * LOAD {
            self.grow();
        }
        let key = Self::key(hash);
        let i = self.slot(key);
        if self.slots[i].0 == key {
            return Some(self.slots[i].1);
        }
        self.slots[i] = (key, value);
        self.len += 1;
        None
    }

    fn grow(&mut self) {
        let bigger = IdTable::with_capacity(self.slots.len().saturating_mul(2));
        let old = std::mem::replace(self, bigger);
        for (key, value) in old.slots {
            if key != 0 {
                self.insert_new(key, value);
            }
        }
    }
}

impl<V: Copy + Default> Default for IdTable<V> {
    fn default() -> IdTable<V> {
        IdTable::with_capacity(0)
    }
}

/// A set of custom_ids stored as hashes.
#[derive(Default)]
pub struct IdSet(IdTable<()>);

impl IdSet {
    pub fn new() -> IdSet {
        IdSet::default()
    }
    /// A set with room for `n` ids.
    pub fn with_capacity(n: usize) -> IdSet {
        IdSet(IdTable::with_capacity(n))
    }
    /// Adds an id; false if it was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        self.insert_hash(id_hash(id))
    }
    /// Adds an id by its [`id_hash`]; false if it was already there.
    pub fn insert_hash(&mut self, hash: u64) -> bool {
        self.0.insert_new(hash, ())
    }
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains_key(id_hash(id))
    }
    /// Membership by [`id_hash`], for maps that keep only the hash.
    pub fn contains_hash(&self, hash: u64) -> bool {
        self.0.contains_key(hash)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_membership() {
        let mut s = IdSet::new();
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
        assert!(s.contains("a"));
        assert!(!s.contains("b"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_table_holds_what_a_hash_map_holds_across_growth() {
        use proptest::prelude::*;
        proptest!(|(ops in proptest::collection::vec((0u64..64, any::<u64>(), any::<bool>()), 0..400))| {
            let mut table: IdTable<u64> = IdTable::with_capacity(4);
            let mut model = std::collections::HashMap::new();
            for (key, value, look) in ops {
                // Small keys collide on purpose; 0 and 1 are one key to the table.
                let key = key.saturating_sub(1).max(1) * if key % 3 == 0 { u64::MAX / 64 } else { 1 };
                if look {
                    prop_assert_eq!(table.get(key), model.get(&key));
                    prop_assert_eq!(table.slot_of(key).is_some(), model.contains_key(&key));
                } else {
                    let had = table.get_or_insert(key, value);
                    prop_assert_eq!(had, model.get(&key).copied());
                    model.entry(key).or_insert(value);
                }
            }
            prop_assert_eq!(table.len(), model.len());
            for (key, value) in &model {
                prop_assert_eq!(table.get(*key), Some(value));
            }
        });
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(id_hash("line-1"), id_hash("line-1"));
        assert_ne!(id_hash("line-1"), id_hash("line-2"));
    }
}
