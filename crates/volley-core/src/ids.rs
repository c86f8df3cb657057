//! Compact sets of custom_ids.
//!
//! A million-line batch must fit in a few megabytes, so sets of custom_ids hold a 64-bit
//! hash of each id instead of the string. With 64 bits the chance that two of a million
//! distinct ids collide is about 3 in 100 million; a collision would make volley treat a
//! new id as already seen, which is why the hash is keyed by nothing random: the same
//! file always behaves the same.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// A 64-bit FNV-1a hash of a custom_id: stable across runs and platforms.
pub fn id_hash(id: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    // FNV mixes its last bytes poorly into the high bits that hash tables use; a final
    // avalanche step (from splitmix64) fixes that.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
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

/// A set of custom_ids stored as hashes.
#[derive(Default)]
pub struct IdSet(HashSet<u64, BuildHasherDefault<PassThrough>>);

impl IdSet {
    pub fn new() -> IdSet {
        IdSet::default()
    }
    /// Adds an id; false if it was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        self.0.insert(id_hash(id))
    }
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains(&id_hash(id))
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
