//! A fast, non-cryptographic hasher for the small fixed-size keys of the
//! dataplane tables (flow tuples, service frontends). Keys are not chosen by
//! an attacker in a way that matters here more than for the kernel's own
//! conntrack (which uses a random seed too): the seed is random per table.

use std::hash::{BuildHasher, Hasher};

/// A multiply-fold hasher over the integers written into it.
#[derive(Debug, Clone, Copy)]
pub struct FoldHasher {
    state: u64,
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for FoldHasher {
    #[inline(always)]
    fn finish(&self) -> u64 {
        crate::maglev::mix64(self.state)
    }

    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    #[inline(always)]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }

    #[inline(always)]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(i as u64);
    }

    #[inline(always)]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }

    #[inline(always)]
    fn write_u64(&mut self, i: u64) {
        let m = (self.state ^ i) as u128 * K as u128;
        self.state = (m as u64) ^ ((m >> 64) as u64);
    }

    #[inline(always)]
    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }

    #[inline(always)]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

/// Builds [`FoldHasher`]s with a per-table random seed.
#[derive(Debug, Clone, Copy)]
pub struct FoldState {
    seed: u64,
}

impl Default for FoldState {
    fn default() -> Self {
        // RandomState is seeded from the OS once per process and per instance.
        let s = std::collections::hash_map::RandomState::new();
        let mut h = s.build_hasher();
        h.write_u64(0x5eed);
        FoldState { seed: h.finish() }
    }
}

impl BuildHasher for FoldState {
    type Hasher = FoldHasher;

    #[inline(always)]
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher { state: self.seed }
    }
}

/// A `HashMap` with [`FoldState`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FoldState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_keys_hash_apart() {
        let s = FoldState::default();
        let mut seen = std::collections::HashSet::new();
        for i in 0u128..10_000 {
            let mut h = s.build_hasher();
            h.write_u128(i << 40);
            seen.insert(h.finish());
        }
        assert_eq!(seen.len(), 10_000);
    }
}
