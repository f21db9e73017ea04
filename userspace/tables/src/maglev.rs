//! Maglev consistent hashing (Eisenbud et al., NSDI 2016).
//!
//! A lookup table of prime size `M` is filled from each backend's preference
//! permutation (`offset + j * skip mod M`, both derived from the backend's
//! identity), round-robin across backends, so every backend owns an almost
//! equal share of the slots (proportional to its weight), and adding or
//! removing one backend moves little more than its own share. A flow is sent
//! to `table[hash(flow) % M]`: the choice costs one load whatever the number
//! of backends or services.
//!
//! Table size: the paper wants `M` well above the number of backends (≥ 100×
//! for < 1% imbalance). A table of the default maximum, [`DEFAULT_TABLE_SIZE`]
//! (65537), takes ≈ 1 ms to fill and 128 KiB; with tens of thousands of
//! services that is seconds and gigabytes. [`Maglev::size_for`] therefore
//! picks the smallest prime of [`SIZE_LADDER`] at or above
//! [`SLOTS_PER_BACKEND`] × backends, capped at the configured maximum; callers
//! that rebuild a table keep the previous size when it is larger (so removing
//! a backend never reshuffles the table through a size change).
//!
//! Disruption: adding or removing a backend moves, besides that backend's own
//! share, about 0.5% of the table on average at these sizes, but the tail is
//! long: a few percent for some small sets, and up to a third when two of the
//! remaining backends draw the same skip (their permutations are then shifts
//! of one another; odds about n²/2M for n backends). Only new flows see it:
//! the engine's connection tracking keeps established flows on their backend.

/// The default (and largest) lookup table size: a prime.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Prime table sizes, roughly doubling.
pub const SIZE_LADDER: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65537, 131071,
];

/// Slots wanted per backend when sizing a table.
pub const SLOTS_PER_BACKEND: u32 = 1000;

/// Marks an empty slot (no backends).
const EMPTY: u16 = u16::MAX;

/// Errors building a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The size is not a prime above 2.
    #[error("maglev table size {0} is not an odd prime")]
    NotPrime(u32),
    /// More backends than the table (or the index type) can hold.
    #[error("{backends} backends do not fit a maglev table of {size} slots")]
    TooManyBackends {
        /// Number of backends.
        backends: usize,
        /// Table size.
        size: u32,
    },
}

/// A backend as Maglev sees it: a stable identity and a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// Stable identity (e.g. a hash of address and port): it, not the
    /// backend's position in the list, decides its permutation.
    pub key: u64,
    /// Relative weight (0 = takes no slots).
    pub weight: u32,
}

/// A filled Maglev lookup table: slot → backend index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Maglev {
    table: Vec<u16>,
    backends: usize,
}

/// splitmix64 finaliser.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn is_prime(n: u32) -> bool {
    if n < 3 || n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

impl Maglev {
    /// The table size for `backends` backends with `max` as the largest allowed size:
    /// the smallest prime of [`SIZE_LADDER`] ≥ [`SLOTS_PER_BACKEND`] × backends, at most `max`.
    pub fn size_for(backends: usize, max: u32) -> u32 {
        let want = (backends as u64).saturating_mul(SLOTS_PER_BACKEND as u64);
        SIZE_LADDER
            .iter()
            .copied()
            .find(|&s| s as u64 >= want)
            .unwrap_or(max)
            .min(max)
    }

    /// Fill a table of `size` slots (a prime) for `backends` (indices into this slice).
    pub fn new(backends: &[MaglevBackend], size: u32) -> Result<Maglev, MaglevError> {
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        let live: Vec<(usize, &MaglevBackend)> = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.weight > 0)
            .collect();
        if backends.len() >= EMPTY as usize || live.len() > size as usize {
            return Err(MaglevError::TooManyBackends {
                backends: backends.len(),
                size,
            });
        }
        let m = size as u64;
        let mut table = vec![EMPTY; size as usize];
        if live.is_empty() {
            return Ok(Maglev {
                table: Vec::new(),
                backends: backends.len(),
            });
        }
        // (next position in the permutation, skip, turns per round, index)
        let mut perm: Vec<(u64, u64, u32, u16)> = live
            .iter()
            .map(|(i, b)| {
                let offset = mix64(b.key ^ 0x9e37_79b9_7f4a_7c15) % m;
                let skip = mix64(b.key ^ 0x6a09_e667_f3bc_c908) % (m - 1) + 1;
                (offset, skip, b.weight, *i as u16)
            })
            .collect();
        // Weights: normalise so the smallest weight takes one turn per round.
        let min_w = perm.iter().map(|p| p.2).min().unwrap_or(1).max(1);
        for p in &mut perm {
            p.2 = (p.2 / min_w).max(1);
        }
        let mut filled = 0u64;
        'fill: loop {
            for p in perm.iter_mut() {
                for _ in 0..p.2 {
                    let mut c = p.0;
                    while table[c as usize] != EMPTY {
                        c += p.1;
                        if c >= m {
                            c -= m;
                        }
                    }
                    table[c as usize] = p.3;
                    c += p.1;
                    if c >= m {
                        c -= m;
                    }
                    p.0 = c;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Ok(Maglev {
            table,
            backends: backends.len(),
        })
    }

    /// The backend index for a flow hash (`None` when there are no backends with weight).
    #[inline(always)]
    pub fn lookup(&self, hash: u32) -> Option<u16> {
        if self.table.is_empty() {
            return None;
        }
        let slot = (hash as u64 % self.table.len() as u64) as usize;
        self.table.get(slot).copied()
    }

    /// Number of slots (0 when empty).
    pub fn size(&self) -> u32 {
        self.table.len() as u32
    }

    /// Number of backends the table was built for.
    pub fn backends(&self) -> usize {
        self.backends
    }

    /// Slots owned by each backend (index = backend index).
    pub fn fill(&self) -> Vec<u32> {
        let mut v = vec![0u32; self.backends];
        for &b in &self.table {
            if let Some(c) = v.get_mut(b as usize) {
                *c += 1;
            }
        }
        v
    }

    /// The raw slots (backend index per slot).
    pub fn slots(&self) -> &[u16] {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backends(keys: &[u64]) -> Vec<MaglevBackend> {
        keys.iter()
            .map(|&key| MaglevBackend { key, weight: 1 })
            .collect()
    }

    #[test]
    fn rejects_non_prime() {
        assert_eq!(
            Maglev::new(&backends(&[1]), 65536),
            Err(MaglevError::NotPrime(65536))
        );
        assert!(Maglev::new(&backends(&[1]), 65537).is_ok());
    }

    #[test]
    fn even_spread_at_default_size() {
        let t = Maglev::new(&backends(&[11, 22, 33]), DEFAULT_TABLE_SIZE).unwrap();
        let f = t.fill();
        assert_eq!(f.iter().sum::<u32>(), DEFAULT_TABLE_SIZE);
        for c in f {
            let share = c as f64 / DEFAULT_TABLE_SIZE as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.001, "share {share}");
        }
    }

    #[test]
    fn weights_are_respected() {
        let b = vec![
            MaglevBackend { key: 1, weight: 1 },
            MaglevBackend { key: 2, weight: 3 },
            MaglevBackend { key: 3, weight: 0 },
        ];
        let t = Maglev::new(&b, 4093).unwrap();
        let f = t.fill();
        assert_eq!(f[2], 0);
        let ratio = f[1] as f64 / f[0] as f64;
        assert!((ratio - 3.0).abs() < 0.05, "ratio {ratio}");
    }

    #[test]
    fn empty_table_has_no_backend() {
        let t = Maglev::new(&[], 251).unwrap();
        assert_eq!(t.lookup(7), None);
        let t = Maglev::new(&[MaglevBackend { key: 1, weight: 0 }], 251).unwrap();
        assert_eq!(t.lookup(7), None);
    }

    #[test]
    fn sizes_follow_the_ladder() {
        assert_eq!(Maglev::size_for(0, DEFAULT_TABLE_SIZE), 251);
        assert_eq!(Maglev::size_for(3, DEFAULT_TABLE_SIZE), 4093);
        assert_eq!(Maglev::size_for(60, DEFAULT_TABLE_SIZE), 65537);
        assert_eq!(Maglev::size_for(1000, DEFAULT_TABLE_SIZE), 65537);
        assert_eq!(Maglev::size_for(3, 1021), 1021);
        for s in SIZE_LADDER {
            assert!(is_prime(s), "{s}");
        }
    }

    /// Slots of surviving backends that change owner, as a fraction of the
    /// table, when backend `v` of `before` is removed (`after` is built
    /// without it: index i maps to i below v and to i - 1 above).
    fn removal_moves(before: &Maglev, after: &Maglev, v: usize) -> f64 {
        let moved = before
            .slots()
            .iter()
            .zip(after.slots())
            .filter(|(b, a)| {
                let b = **b as usize;
                b != v && (if b < v { b } else { b - 1 }) != **a as usize
            })
            .count();
        moved as f64 / before.size() as f64
    }

    /// Slots that change owner to someone other than the added backend `new`.
    fn addition_moves(before: &Maglev, after: &Maglev, new: u16) -> f64 {
        let moved = before
            .slots()
            .iter()
            .zip(after.slots())
            .filter(|(b, a)| b != a && **a != new)
            .count();
        moved as f64 / before.size() as f64
    }

    /// Maglev's disruption is small on average but has a tail: a few percent
    /// of the table for some small backend sets, and up to a third when two
    /// survivors happen to draw the same skip (their permutations are then
    /// shifts of one another; odds about n²/2M per set). A random-seeded
    /// property test with a tight per-case bound therefore fails now and then
    /// (it did in CI: n = 3, two keys with skip 56434, 8% moved). This checks
    /// the statistics instead, on the same backend sets every run (splitmix64
    /// from a fixed seed) and at the table sizes the engine uses
    /// ([`Maglev::size_for`]): the mean stays under 1% and no set moves more
    /// than a quarter. Keying by position (`hash % n`) instead of by backend
    /// would move about half of the table on either change.
    #[test]
    fn disruption_is_small_on_average_and_bounded() {
        let mut seed = 0x5eed_f00du64;
        let mut next = || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix64(seed)
        };
        for n in [2usize, 3, 4, 5, 8, 16, 39] {
            let sets = 120;
            let size = Maglev::size_for(n, DEFAULT_TABLE_SIZE);
            let (mut removal_sum, mut addition_sum) = (0.0, 0.0);
            for _ in 0..sets {
                let keys: Vec<u64> = (0..n).map(|_| next()).collect();
                let before = Maglev::new(&backends(&keys), size).unwrap();

                let v = (next() % n as u64) as usize;
                let mut rest = keys.clone();
                rest.remove(v);
                let after = Maglev::new(&backends(&rest), size).unwrap();
                let moved = removal_moves(&before, &after, v);
                assert!(
                    moved < 0.25,
                    "n = {n}, keys {keys:?}: removing {v} moved {moved}"
                );
                removal_sum += moved;

                let mut more = keys.clone();
                more.push(next());
                let after = Maglev::new(&backends(&more), size).unwrap();
                let moved = addition_moves(&before, &after, n as u16);
                assert!(moved < 0.25, "n = {n}, keys {keys:?}: adding moved {moved}");
                addition_sum += moved;
            }
            let (removal, addition) = (removal_sum / sets as f64, addition_sum / sets as f64);
            assert!(
                removal < 0.01,
                "n = {n}: removal moves {removal} of the table on average"
            );
            assert!(
                addition < 0.01,
                "n = {n}: addition moves {addition} of the table on average"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Removing a backend: every slot it owned goes to a survivor, every
        /// survivor's share is within one slot of M/(n-1), and no slot points
        /// past the new backend list.
        #[test]
        fn removal_reassigns_the_victims_slots(
            keys in proptest::collection::hash_set(any::<u64>(), 2..40),
            victim in any::<prop::sample::Index>(),
        ) {
            let keys: Vec<u64> = keys.into_iter().collect();
            let size = Maglev::size_for(keys.len(), DEFAULT_TABLE_SIZE);
            let v = victim.index(keys.len());
            let mut rest = keys.clone();
            rest.remove(v);
            let after = Maglev::new(&backends(&rest), size).unwrap();
            prop_assert_eq!(after.size(), size);
            prop_assert!(after.slots().iter().all(|&b| (b as usize) < rest.len()));
            let fair = size as f64 / rest.len() as f64;
            for (i, &c) in after.fill().iter().enumerate() {
                prop_assert!((c as f64 - fair).abs() < 1.0, "backend {} holds {} of {}", i, c, size);
            }
        }

        /// Adding a backend: every backend, the new one included, holds
        /// M/(n+1) slots to within one.
        #[test]
        fn addition_takes_a_fair_share(
            keys in proptest::collection::hash_set(any::<u64>(), 2..40),
        ) {
            let mut keys: Vec<u64> = keys.into_iter().collect();
            let new = keys.pop().unwrap_or(0);
            let size = Maglev::size_for(keys.len() + 1, DEFAULT_TABLE_SIZE);
            let mut more = keys.clone();
            more.push(new);
            let after = Maglev::new(&backends(&more), size).unwrap();
            let fair = size as f64 / more.len() as f64;
            for (i, &c) in after.fill().iter().enumerate() {
                prop_assert!((c as f64 - fair).abs() < 1.0, "backend {} holds {} of {}", i, c, size);
            }
        }

        /// Lookups are stable: the same hash gives the same backend in two builds.
        #[test]
        fn deterministic(keys in proptest::collection::vec(any::<u64>(), 1..10), h in any::<u32>()) {
            let a = Maglev::new(&backends(&keys), 1021).unwrap();
            let b = Maglev::new(&backends(&keys), 1021).unwrap();
            prop_assert_eq!(a.lookup(h), b.lookup(h));
        }
    }
}
