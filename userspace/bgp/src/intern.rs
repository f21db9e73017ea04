//! Interning of shared route data: one `Arc` per distinct value (a path attribute set,
//! or a path's attributes with its next hop and source peer), however many prefixes
//! carry it. A full table usually has a few thousand distinct attribute sets for
//! hundreds of thousands of prefixes; holding one copy per prefix would cost ~200
//! bytes per route (BIRD's `rta` cache and FRR's `attrhash` do the same).

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

/// Values shared by reference count. An entry whose only reference is the pool's own is
/// garbage: [`Interner::intern`] sweeps them out once the pool has doubled since the
/// last sweep, so the pool stays within twice the live set (amortised O(1)).
#[derive(Debug)]
pub struct Interner<T: Hash + Eq + ?Sized> {
    set: HashSet<Arc<T>>,
    /// Sweep when the pool grows past this many entries.
    sweep_at: usize,
}

impl<T: Hash + Eq + ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            set: HashSet::new(),
            sweep_at: Self::MIN_SWEEP,
        }
    }
}

impl<T: Hash + Eq> Interner<T> {
    /// The shared `Arc` equal to `v` (stored on first sight).
    pub fn intern(&mut self, v: T) -> Arc<T> {
        if let Some(a) = self.set.get(&v) {
            return a.clone();
        }
        self.insert(Arc::new(v))
    }
}

impl<T: Hash + Eq + ?Sized> Interner<T> {
    const MIN_SWEEP: usize = 64;

    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared `Arc` equal to `*v`, copied into the pool on first sight (for unsized
    /// values: `Interner<[Ipv4Addr]>` hands out `Arc<[Ipv4Addr]>`).
    pub fn intern_ref(&mut self, v: &T) -> Arc<T>
    where
        for<'a> Arc<T>: From<&'a T>,
    {
        if let Some(a) = self.set.get(v) {
            return a.clone();
        }
        self.insert(Arc::from(v))
    }

    fn insert(&mut self, a: Arc<T>) -> Arc<T> {
        if self.set.len() >= self.sweep_at {
            self.sweep();
        }
        self.set.insert(a.clone());
        a
    }

    /// Drop the entries nothing else refers to.
    pub fn sweep(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
        if self.set.capacity() > 4 * self.set.len().max(Self::MIN_SWEEP) {
            self.set.shrink_to_fit();
        }
        self.sweep_at = (2 * self.set.len()).max(Self::MIN_SWEEP);
    }

    /// Entries in the pool (live or not yet swept).
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_arc_and_garbage_is_swept() {
        let mut pool = Interner::new();
        let a = pool.intern(String::from("65001 65002"));
        let b = pool.intern(String::from("65001 65002"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(pool.len(), 1);
        let held: Vec<Arc<String>> = (0..200).map(|i| pool.intern(i.to_string())).collect();
        assert!(pool.len() <= 201);
        drop(held);
        drop(b);
        pool.sweep();
        assert_eq!(pool.len(), 1, "only the value still referenced stays");
        assert_eq!(*pool.intern(String::from("65001 65002")), "65001 65002");
        drop(a);
        pool.sweep();
        assert!(pool.is_empty());
        // Sweeps happen by themselves as the pool grows: 10,000 short-lived values
        // never leave more than the minimum behind.
        let mut ints = Interner::new();
        for i in 0..10_000 {
            drop(ints.intern(i));
        }
        assert!(ints.len() <= Interner::<i32>::MIN_SWEEP, "{}", ints.len());
        // Unsized values: slices shared as `Arc<[T]>`.
        let mut sets: Interner<[u32]> = Interner::new();
        let x = sets.intern_ref(&[1, 2][..]);
        let owned: Vec<u32> = (1..3).collect();
        let y = sets.intern_ref(&owned[..]);
        assert!(Arc::ptr_eq(&x, &y));
        assert!(!Arc::ptr_eq(&x, &sets.intern_ref(&[2, 1][..])));
    }
}
