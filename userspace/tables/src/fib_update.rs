//! Incremental FIB builds: the last FIB a [`FibBuilder`] built plus the routes changed since.
//!
//! A full build of a 10,000-route table sorts every route, makes every adjacency and load
//! balance again and fills the trie from scratch; a pod's /32 or one learnt route changes
//! one load balance and a few trie slots. [`FibBuilder::build_from`] copies the previous
//! version (its trie chunks and route entries are shared, not copied) and applies only the
//! prefixes whose route changed:
//!
//! - a route whose paths changed keeps its load balance: its buckets are replaced, the trie
//!   is untouched;
//! - a new route takes a free load balance, and the trie slots of its range that held the
//!   covering route (the longest shorter route, or the implicit drop) now name it; slots
//!   that belong to longer routes inside it keep theirs;
//! - a removed route gives its slots back to the covering route.
//!
//! Interfaces and neighbours that changed refresh the adjacencies in place (a neighbour
//! resolved turns its adjacency from incomplete to rewrite) and re-derive the neighbour
//! /32s. Buckets left behind are counted; when they outnumber the live ones the next build
//! is a full one, which also drops trie chunks that became uniform.

use std::collections::BTreeSet;

use crate::fib::{next_fib_id, Chunk, Fib, FibBuilder, FibError, RouteEntry, Trie, PTR};
use crate::prefix::Ipv4Prefix;
use std::sync::Arc;

/// Below this many dead buckets an incremental build never falls back to a full one.
const GARBAGE_FLOOR: usize = 4096;

impl FibBuilder {
    /// Builds the FIB for the builder's current routes, interfaces and neighbours from
    /// `prev`, the last FIB this builder built, applying only what changed since; a full
    /// build when `prev` is not that FIB (or enough garbage piled up). Either way the
    /// result is what [`FibBuilder::build`] would give.
    pub fn build_from(&mut self, prev: &Fib) -> Result<Fib, FibError> {
        let incremental = prev.id == self.last_id
            && self.last_id != 0
            && prev.garbage <= GARBAGE_FLOOR.max(prev.buckets.len() - prev.garbage);
        let derived = self.derive_neighbour_routes();
        let fib = if incremental {
            self.apply(prev, &derived)?
        } else {
            self.build()?
        };
        self.last_id = fib.id;
        self.derived = derived;
        self.dirty.clear();
        self.links_dirty = false;
        Ok(fib)
    }

    fn effective(
        &self,
        derived: &std::collections::BTreeMap<Ipv4Prefix, Arc<RouteEntry>>,
        p: &Ipv4Prefix,
    ) -> Option<Arc<RouteEntry>> {
        self.routes.get(p).or_else(|| derived.get(p)).cloned()
    }

    fn apply(
        &self,
        prev: &Fib,
        derived: &std::collections::BTreeMap<Ipv4Prefix, Arc<RouteEntry>>,
    ) -> Result<Fib, FibError> {
        let mut fib = prev.clone();
        fib.id = next_fib_id();
        let mut changed: BTreeSet<Ipv4Prefix> = self.dirty.clone();
        if self.links_dirty {
            for (p, e) in derived {
                if self.derived.get(p) != Some(e) {
                    changed.insert(*p);
                }
            }
            for p in self.derived.keys() {
                if !derived.contains_key(p) {
                    changed.insert(*p);
                }
            }
        }
        for p in changed {
            let want = self.effective(derived, &p);
            let have = fib.index.get(&p).copied();
            match (want, have) {
                (None, None) => {}
                (Some(e), Some(lb)) => {
                    if fib.route_of(lb) == Some(&*e) {
                        continue;
                    }
                    let old = fib.lbs[lb as usize];
                    let range = fib.add_buckets(self, &e)?;
                    fib.release_buckets(old);
                    fib.lbs[lb as usize] = range;
                    fib.entries[lb as usize] = Some(e);
                }
                (Some(e), None) => {
                    let lb = fib.add_lb(self, &e)?;
                    let cover = covering(&fib, p);
                    fib.trie.replace(p, cover, lb)?;
                }
                (None, Some(lb)) => {
                    let cover = covering(&fib, p);
                    fib.trie.replace(p, lb, cover)?;
                    let old = fib.lbs[lb as usize];
                    fib.release_buckets(old);
                    fib.lbs[lb as usize] = crate::fib::Lb { start: 0, len: 1 };
                    fib.entries[lb as usize] = None;
                    fib.index.remove(&p);
                    fib.free_lbs.push(lb);
                }
            }
        }
        if self.links_dirty {
            // Adjacencies in use follow the interfaces' MACs and MTUs and the neighbours.
            for i in 0..fib.adjs.len() {
                let refs = fib.adj_refs.get(i).copied().unwrap_or(0);
                if refs == 0 || refs == u32::MAX {
                    continue;
                }
                let a = fib.adjs[i];
                match self.ifaces.get(&a.sw_if) {
                    Some(&(mac, mtu)) => {
                        fib.adjs[i] = self.adjacency_for(a.sw_if, a.next_hop, mac, mtu);
                    }
                    // A route through an interface that went: the full build reports it.
                    None => return self.build(),
                }
            }
        }
        Ok(fib)
    }
}

/// The load balance of the longest route strictly shorter than `p` that contains it (0,
/// the implicit drop, if none).
fn covering(fib: &Fib, p: Ipv4Prefix) -> u32 {
    (0..p.len())
        .rev()
        .filter_map(|len| Ipv4Prefix::new(p.addr(), len).ok())
        .find_map(|s| fib.index.get(&s).copied())
        .unwrap_or(0)
}

impl Trie {
    /// In `prefix`'s range, every slot that names `from` names `to` instead (slots of
    /// longer routes inside it name something else and are kept). Chunks are copied on
    /// write; a slot that must be split gets a new chunk.
    pub(crate) fn replace(
        &mut self,
        prefix: Ipv4Prefix,
        from: u32,
        to: u32,
    ) -> Result<(), FibError> {
        let addr = prefix.addr_u32();
        let len = prefix.len();
        if len <= 16 {
            let first = (addr >> 16) as usize;
            let count = 1usize << (16 - len);
            let Trie { root, l2, l3 } = self;
            let root = Arc::make_mut(root);
            for slot in &mut root[first..first + count] {
                replace_slot(slot, from, to, 2, l2, l3);
            }
            return Ok(());
        }
        let r = (addr >> 16) as usize;
        if !self.split(Level::Root, r, from)? {
            return Ok(());
        }
        let c2 = (self.root[r] & !PTR) as usize;
        if len <= 24 {
            let first = ((addr >> 8) & 0xff) as usize;
            let count = 1usize << (24 - len);
            let Trie { l2, l3, .. } = self;
            let chunk = Arc::make_mut(&mut l2[c2]);
            for slot in &mut chunk[first..first + count] {
                replace_slot(slot, from, to, 3, &mut Vec::new(), l3);
            }
            return Ok(());
        }
        let i2 = ((addr >> 8) & 0xff) as usize;
        if !self.split(Level::L2(c2), i2, from)? {
            return Ok(());
        }
        let c3 = (self.l2[c2][i2] & !PTR) as usize;
        let first = (addr & 0xff) as usize;
        let count = 1usize << (32 - len);
        for slot in &mut Arc::make_mut(&mut self.l3[c3])[first..first + count] {
            if *slot == from {
                *slot = to;
            }
        }
        Ok(())
    }

    /// Makes slot `i` of `level` a chunk pointer if it is the leaf `from`; false when it is
    /// another leaf (nothing of the range names `from`).
    fn split(&mut self, level: Level, i: usize, from: u32) -> Result<bool, FibError> {
        let (slot, chunks) = match level {
            Level::Root => (self.root[i], &mut self.l2),
            Level::L2(c) => (self.l2[c][i], &mut self.l3),
        };
        if slot & PTR == 0 && slot != from {
            return Ok(false);
        }
        let mut s = slot;
        Trie::chunk(&mut s, chunks)?;
        if s != slot {
            match level {
                Level::Root => Arc::make_mut(&mut self.root)[i] = s,
                Level::L2(c) => Arc::make_mut(&mut self.l2[c])[i] = s,
            }
        }
        Ok(true)
    }
}

#[derive(Clone, Copy)]
enum Level {
    Root,
    L2(usize),
}

/// [`Trie::replace`] on one slot whose whole range is inside the prefix: a leaf is
/// replaced if it names `from`; a pointer is followed (`next`: the level it points to).
fn replace_slot(slot: &mut u32, from: u32, to: u32, next: u8, l2: &mut [Chunk], l3: &mut [Chunk]) {
    if *slot & PTR == 0 {
        if *slot == from {
            *slot = to;
        }
        return;
    }
    let c = (*slot & !PTR) as usize;
    if next == 2 {
        let Some(chunk) = l2.get_mut(c) else { return };
        if !chunk.iter().any(|&s| s == from || s & PTR != 0) {
            return;
        }
        let chunk = Arc::make_mut(chunk);
        for s in chunk.iter_mut() {
            replace_slot(s, from, to, 3, &mut [], l3);
        }
    } else {
        let Some(chunk) = l3.get_mut(c) else { return };
        if !chunk.contains(&from) {
            return;
        }
        for s in Arc::make_mut(chunk).iter_mut() {
            if *s == from {
                *s = to;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use crate::fib::{naive_lpm, AdjKind, FibBuilder, Path, RouteAction, RouteEntry, RouteSource};
    use crate::prefix::Ipv4Prefix;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn route(p: Ipv4Prefix, sw_if: u16) -> RouteEntry {
        RouteEntry {
            prefix: p,
            source: RouteSource::Static,
            action: RouteAction::Forward(vec![Path {
                via: Some(Ipv4Addr::new(192, 168, 0, sw_if as u8)),
                sw_if,
            }]),
        }
    }

    /// Both builds answer every probe alike: same route, same adjacency.
    fn same(a: &crate::Fib, b: &crate::Fib, probes: &[u32]) -> Result<(), TestCaseError> {
        for &d in probes {
            let dst = Ipv4Addr::from(d);
            let ra = a.route_of(a.lookup(dst)).map(|r| r.prefix);
            let rb = b.route_of(b.lookup(dst)).map(|r| r.prefix);
            prop_assert_eq!(ra, rb, "route for {}", dst);
            prop_assert_eq!(
                a.adj(a.resolve(dst, || 0)),
                b.adj(b.resolve(dst, || 0)),
                "adj {}",
                dst
            );
        }
        prop_assert_eq!(
            a.routes().cloned().collect::<Vec<_>>(),
            b.routes().cloned().collect::<Vec<_>>()
        );
        Ok(())
    }

    #[test]
    fn neighbour_resolution_and_removal() {
        let mut b = FibBuilder::new();
        b.interface(0, MAC, 1500);
        b.route(RouteEntry {
            prefix: "192.168.0.0/24".parse().unwrap(),
            source: RouteSource::Connected,
            action: RouteAction::Forward(vec![Path {
                via: None,
                sw_if: 0,
            }]),
        });
        b.route(route("10.0.0.0/8".parse().unwrap(), 1));
        b.interface(1, MAC, 1400);
        let f1 = b.build_from(&crate::Fib::default()).unwrap();
        let nh = Ipv4Addr::new(192, 168, 0, 1);
        assert_eq!(
            f1.adj(f1.resolve("10.1.1.1".parse().unwrap(), || 0)).kind,
            AdjKind::Incomplete
        );
        b.neighbour(1, nh, [2, 9, 9, 9, 9, 9]);
        b.neighbour(0, Ipv4Addr::new(192, 168, 0, 7), [2, 7, 7, 7, 7, 7]);
        let f2 = b.build_from(&f1).unwrap();
        let a = f2.adj(f2.resolve("10.1.1.1".parse().unwrap(), || 0));
        assert_eq!(
            (a.kind, a.dst_mac, a.mtu),
            (AdjKind::Rewrite, [2, 9, 9, 9, 9, 9], 1400)
        );
        assert!(
            f2.routes().any(|r| r.source == RouteSource::Neighbour),
            "derived /32"
        );
        assert_eq!(
            f1.adj(f1.resolve("10.1.1.1".parse().unwrap(), || 0)).kind,
            AdjKind::Incomplete,
            "old version unchanged"
        );
        b.remove(&"10.0.0.0/8".parse().unwrap());
        b.remove_neighbour(0, Ipv4Addr::new(192, 168, 0, 7));
        let f3 = b.build_from(&f2).unwrap();
        let full = b.build().unwrap();
        same(&f3, &full, &[0x0a010101, 0xc0a80007, 0xc0a80001]).unwrap();
        assert_eq!(
            f3.unresolved().count(),
            0,
            "the freed adjacency asks for nothing"
        );
    }

    proptest! {
        #[test]
        fn incremental_matches_full(
            start in proptest::collection::vec((any::<u32>(), 0u8..=32, 0u16..3), 0..60),
            steps in proptest::collection::vec(
                proptest::collection::vec((any::<u32>(), 0u8..=32, 0u16..4), 1..8), 1..12),
            probes in proptest::collection::vec(any::<u32>(), 1..64),
        ) {
            let mut b = FibBuilder::new();
            for i in 0..3 {
                b.interface(i, MAC, 1500);
            }
            // Few distinct top bits, so routes nest and share chunks.
            let p = |a: u32, l: u8| Ipv4Prefix::new(Ipv4Addr::from(a & 0x0a03_ffff | 0x0a00_0000), l).unwrap();
            let mut all = Vec::new();
            for (a, l, i) in start {
                all.push(p(a, l));
                b.route(route(p(a, l), i));
            }
            let mut fib = b.build_from(&crate::Fib::default()).unwrap();
            for step in steps {
                for (a, l, i) in step {
                    let pre = p(a, l);
                    all.push(pre);
                    // sw_if 3: remove the route.
                    if i == 3 { b.remove(&pre); } else { b.route(route(pre, i)); }
                }
                let next = b.build_from(&fib).unwrap();
                let full = b.build().unwrap();
                let mut ps: Vec<u32> = probes.iter().map(|d| d & 0x0a03_ffff | 0x0a00_0000).collect();
                for q in &all {
                    ps.push(q.addr_u32());
                    ps.push(q.addr_u32().wrapping_sub(1));
                    ps.push(q.addr_u32() | !crate::prefix::mask(q.len()));
                }
                same(&next, &full, &ps)?;
                let configured: Vec<Ipv4Prefix> = next.routes().map(|r| r.prefix).collect();
                for &d in &ps {
                    let dst = Ipv4Addr::from(d);
                    let got = Some(next.lookup(dst)).filter(|&lb| lb != 0).and_then(|lb| next.route_of(lb)).map(|r| r.prefix);
                    prop_assert_eq!(got, naive_lpm(&configured, dst));
                }
                fib = next;
            }
        }
    }
}
