//! Compact sets of custom_ids.
//!
//! A million-line batch must fit in a few megabytes, so sets of custom_ids hold a 64-bit
//! hash of each id instead of the string. With 64 bits the chance that two of a million
//! distinct ids collide is about 3 in 100 million; a collision would make volley treat a
//! new id as already seen, which is why the hash is keyed by nothing random: the same
//! file always behaves the same.

use std::collections::{HashMap, HashSet};
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

/// A set of custom_ids stored as hashes.
#[derive(Default)]
pub struct IdSet(HashSet<u64, BuildHasherDefault<PassThrough>>);

impl IdSet {
    pub fn new() -> IdSet {
        IdSet::default()
    }
    /// A set with room for `n` ids.
    pub fn with_capacity(n: usize) -> IdSet {
        IdSet(HashSet::with_capacity_and_hasher(n, Default::default()))
    }
    /// Adds an id; false if it was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        self.0.insert(id_hash(id))
    }
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains(&id_hash(id))
    }
    /// Membership by [`id_hash`], for maps that keep only the hash.
    pub fn contains_hash(&self, hash: u64) -> bool {
        self.0.contains(&hash)
    }
    pub fn remove(&mut self, id: &str) -> bool {
        self.0.remove(&id_hash(id))
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
        assert!(s.remove("a"));
        assert!(s.is_empty());
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(id_hash("line-1"), id_hash("line-1"));
        assert_ne!(id_hash("line-1"), id_hash("line-2"));
    }
}
