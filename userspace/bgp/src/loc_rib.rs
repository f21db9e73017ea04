//! The Loc-RIB (RFC 4271 §3.2): every prefix with its candidate paths and the outcome
//! of the decision process ([`crate::rib::select`]).
//!
//! Kept compact, as there is one entry per prefix (a full Internet table is ~1M):
//! a [`PrefixMap`] (an IPv4 key is one `u64`), a destination with one
//! path holds it inline (32 bytes, no allocation) and only prefixes with several paths
//! allocate a list with their ECMP members.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::prefix_map::PrefixMap;
use crate::rib::{select, Path, PathInfo, Selection, Source};

/// Several candidate paths and the cached outcome of the decision process.
#[derive(Debug, Clone)]
struct Many {
    paths: Vec<Path>,
    /// Index of the best path.
    best: Option<u32>,
    /// ECMP members other than the best (indices into `paths`).
    others: Box<[u32]>,
}

/// All paths for one prefix and the outcome of the decision process: the best path and
/// the other ECMP members are indices, stored without allocating for the usual single
/// path; [`Dest::selection`] runs the decision process again for the reasons `show`
/// prints.
#[derive(Debug, Clone, Default)]
pub enum Dest {
    /// No path (only while a destination is being built or torn down).
    #[default]
    Empty,
    /// One path: the best, alone in its ECMP set.
    One(Path),
    /// Several paths (boxed: keeps every destination 32 bytes).
    Many(Box<ManyPaths>),
}

/// The paths of a destination with more than one (opaque; see [`Dest`]).
#[derive(Debug, Clone)]
pub struct ManyPaths(Many);

impl Dest {
    /// Candidate paths (one per source).
    pub fn paths(&self) -> &[Path] {
        match self {
            Dest::Empty => &[],
            Dest::One(p) => std::slice::from_ref(p),
            Dest::Many(m) => &m.0.paths,
        }
    }

    /// Candidate paths, to flag them (stale); the selection does not depend on the flag.
    pub fn paths_mut(&mut self) -> &mut [Path] {
        match self {
            Dest::Empty => &mut [],
            Dest::One(p) => std::slice::from_mut(p),
            Dest::Many(m) => &mut m.0.paths,
        }
    }

    /// The best path.
    pub fn best(&self) -> Option<&Path> {
        self.best_index().and_then(|i| self.paths().get(i))
    }

    /// Index of the best path in [`Dest::paths`].
    pub fn best_index(&self) -> Option<usize> {
        match self {
            Dest::Empty => None,
            Dest::One(_) => Some(0),
            Dest::Many(m) => m.0.best.map(|i| i as usize),
        }
    }

    fn others(&self) -> &[u32] {
        match self {
            Dest::Many(m) => &m.0.others,
            _ => &[],
        }
    }

    /// Whether path `i` is in the ECMP set (the best path included).
    pub fn is_multipath(&self, i: usize) -> bool {
        self.best_index() == Some(i) || self.others().iter().any(|&o| o as usize == i)
    }

    /// The full decision process result (with each losing path's reason).
    pub fn selection(&self, local_as: u32) -> Selection {
        select(self.paths(), local_as)
    }

    /// Distinct next hops of the ECMP set (the best path's first); `multipath = false`
    /// gives the best path's alone.
    pub fn next_hops(&self, multipath: bool) -> Vec<IpAddr> {
        let Some(best) = self.best() else {
            return Vec::new();
        };
        let mut v = vec![best.next_hop];
        if multipath {
            for &i in self.others() {
                if let Some(p) = self.paths().get(i as usize) {
                    if !v.contains(&p.next_hop) {
                        v.push(p.next_hop);
                    }
                }
            }
        }
        v
    }

    fn fingerprint(&self, multipath: bool) -> Option<(Source, Arc<PathInfo>, Vec<IpAddr>)> {
        self.best()
            .map(|b| (b.source, b.info.clone(), self.next_hops(multipath)))
    }

    /// Add or replace the path from `path.source`.
    fn upsert(&mut self, path: Path, local_as: u32) {
        match self {
            Dest::Empty => *self = Dest::One(path),
            Dest::One(p) if p.source == path.source => *p = path,
            Dest::One(_) => {
                let Dest::One(old) = std::mem::take(self) else {
                    return;
                };
                let mut m = Many {
                    paths: vec![old, path],
                    best: None,
                    others: Box::new([]),
                };
                m.reselect(local_as);
                *self = Dest::Many(Box::new(ManyPaths(m)));
            }
            Dest::Many(m) => {
                let m = &mut m.0;
                match m.paths.iter_mut().find(|p| p.source == path.source) {
                    Some(p) => *p = path,
                    None => m.paths.push(path),
                }
                m.reselect(local_as);
            }
        }
    }

    /// Remove the path from `source`.
    fn remove(&mut self, source: Source, local_as: u32) {
        match self {
            Dest::Empty => {}
            Dest::One(p) => {
                if p.source == source {
                    *self = Dest::Empty;
                }
            }
            Dest::Many(m) => {
                let m = &mut m.0;
                m.paths.retain(|p| p.source != source);
                if m.paths.len() == 1 {
                    if let Some(p) = m.paths.pop() {
                        *self = Dest::One(p);
                    }
                } else {
                    m.reselect(local_as);
                }
            }
        }
    }
}

impl Many {
    fn reselect(&mut self, local_as: u32) {
        let s = select(&self.paths, local_as);
        self.best = s.best.and_then(|b| u32::try_from(b).ok());
        self.others = s
            .multipath
            .iter()
            .filter(|&&i| Some(i) != s.best)
            .filter_map(|&i| u32::try_from(i).ok())
            .collect();
    }
}

/// The Loc-RIB: every prefix with its candidate paths and selection.
#[derive(Debug, Default)]
pub struct LocRib {
    /// Destinations by prefix.
    table: PrefixMap<Dest>,
    /// Our AS (MED grouping of internal paths).
    pub local_as: u32,
    /// Install equal paths as ECMP.
    pub multipath: bool,
}

impl LocRib {
    /// An empty Loc-RIB.
    pub fn new(local_as: u32, multipath: bool) -> LocRib {
        LocRib {
            table: PrefixMap::new(),
            local_as,
            multipath,
        }
    }

    /// Add or replace `path` (keyed by its source). Returns true when the best path or
    /// the ECMP set changed.
    pub fn insert(&mut self, prefix: IpNet, path: Path) -> bool {
        let (la, mp) = (self.local_as, self.multipath);
        let d = self.table.get_or_insert_with(prefix, Dest::default);
        let before = d.fingerprint(mp);
        d.upsert(path, la);
        before != d.fingerprint(mp)
    }

    /// Remove the path from `source`. Returns true when the selection changed.
    pub fn remove(&mut self, prefix: &IpNet, source: Source) -> bool {
        let (la, mp) = (self.local_as, self.multipath);
        let Some(d) = self.table.get_mut(prefix) else {
            return false;
        };
        let before = d.fingerprint(mp);
        d.remove(source, la);
        if d.paths().is_empty() {
            self.table.remove(prefix);
            return before.is_some();
        }
        before != d.fingerprint(mp)
    }

    /// The destination of a prefix.
    pub fn get(&self, prefix: &IpNet) -> Option<&Dest> {
        self.table.get(prefix)
    }

    /// The destination of a prefix, to flag its paths ([`Dest::paths_mut`]).
    pub fn get_mut(&mut self, prefix: &IpNet) -> Option<&mut Dest> {
        self.table.get_mut(prefix)
    }

    /// Every destination, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &Dest)> + '_ {
        self.table.iter()
    }

    /// Every prefix, in no particular order.
    pub fn prefixes(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.table.keys()
    }

    /// Number of prefixes with a best path.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_keys_round_trip_and_sizes() {
        // What a one-path destination costs in the table (plus its 8-byte key).
        assert_eq!(std::mem::size_of::<Path>(), 32);
        assert_eq!(std::mem::size_of::<Dest>(), 32);
    }
}
