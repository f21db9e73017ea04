//! The IPv4 forwarding information base.
//!
//! Routes (prefix → paths) are compiled into a DIR-16-8-8 multibit trie: one
//! 65,536-entry root array indexed by the top 16 bits of the destination,
//! then 256-entry chunks for /17–/24 and /25–/32. A lookup is at most three
//! dependent loads whatever the number of routes. Each route owns a *load
//! balance* (a slice of buckets, one per equal-cost path); each bucket names
//! an *adjacency*: what to do with the packet (rewrite and send on an
//! interface, hand to the host, drop, or resolve a neighbour first).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::prefix::{mask, Ipv4Prefix};

/// An Ethernet address as bytes.
pub type Mac = [u8; 6];

/// Where a route came from (shown by `ferroctl show routes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// The subnet of an interface address.
    Connected,
    /// A pod's /32 on its veth.
    Pod,
    /// Configured statically.
    Static,
    /// An address of the node itself.
    Local,
    /// A /32 for a resolved neighbour inside a connected subnet.
    Neighbour,
    /// Learnt over BGP.
    Bgp,
    /// A remote node's pod CIDR from the cluster spec (through the overlay).
    Cluster,
}

impl RouteSource {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteSource::Connected => "connected",
            RouteSource::Pod => "pod",
            RouteSource::Static => "static",
            RouteSource::Local => "local",
            RouteSource::Neighbour => "neighbour",
            RouteSource::Bgp => "bgp",
            RouteSource::Cluster => "cluster",
        }
    }
}

/// What a route does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteAction {
    /// Forward over one or more equal-cost paths.
    Forward(Vec<Path>),
    /// Deliver to the node's own stack.
    Local,
    /// Drop.
    Drop,
}

/// One path of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path {
    /// Next hop; `None` when the destination itself is on the link.
    pub via: Option<Ipv4Addr>,
    /// Outgoing interface (engine `sw_if_index`).
    pub sw_if: u16,
}

/// A route as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination prefix.
    pub prefix: Ipv4Prefix,
    /// Origin.
    pub source: RouteSource,
    /// What to do.
    pub action: RouteAction,
}

/// The kind of an adjacency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdjKind {
    /// Drop (no route).
    Drop,
    /// For the node itself: punt to the host.
    Local,
    /// Rewrite the Ethernet header and send on `sw_if`.
    Rewrite,
    /// The next hop's MAC is not known yet: drop and ask for resolution.
    Incomplete,
}

/// What the dataplane does with a packet once its route is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adjacency {
    /// Kind.
    pub kind: AdjKind,
    /// Outgoing interface (for `Rewrite` and `Incomplete`).
    pub sw_if: u16,
    /// Next hop; `None` for an on-link destination (resolve the packet's own destination).
    pub next_hop: Option<Ipv4Addr>,
    /// Destination MAC (for `Rewrite`).
    pub dst_mac: Mac,
    /// Source MAC (for `Rewrite`).
    pub src_mac: Mac,
    /// IP MTU of the outgoing interface.
    pub mtu: u16,
}

impl Adjacency {
    const DROP: Adjacency = Adjacency {
        kind: AdjKind::Drop,
        sw_if: u16::MAX,
        next_hop: None,
        dst_mac: [0; 6],
        src_mac: [0; 6],
        mtu: 0,
    };
    const LOCAL: Adjacency = Adjacency {
        kind: AdjKind::Local,
        ..Adjacency::DROP
    };
}

/// Errors building a FIB.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FibError {
    /// A path names an interface the builder does not know.
    #[error("route {prefix}: unknown interface sw_if_index {sw_if}")]
    UnknownInterface {
        /// The route.
        prefix: Ipv4Prefix,
        /// The interface.
        sw_if: u16,
    },
    /// A forwarding route without paths.
    #[error("route {0}: no paths")]
    NoPaths(Ipv4Prefix),
    /// More routes than the trie can index.
    #[error("too many routes or chunks for the FIB ({0})")]
    TooLarge(usize),
}

pub(crate) const PTR: u32 = 1 << 31;

/// Builds [`Fib`] snapshots: from scratch ([`FibBuilder::build`]) or, for a builder kept
/// across publishes, as the last FIB it built plus the routes changed since
/// ([`FibBuilder::build_from`]).
#[derive(Clone, Debug, Default)]
pub struct FibBuilder {
    /// Shared with the FIBs built ([`Fib`]'s entries) and with whoever keeps the routes it
    /// gave ([`FibBuilder::route_shared`]): one copy of a route, however many hold it.
    pub(crate) routes: BTreeMap<Ipv4Prefix, Arc<RouteEntry>>,
    pub(crate) ifaces: HashMap<u16, (Mac, u16)>,
    pub(crate) neighbours: HashMap<(u16, Ipv4Addr), Mac>,
    /// Prefixes whose configured route changed since the last build.
    pub(crate) dirty: BTreeSet<Prefix>,
    /// Interfaces or neighbours changed since the last build (adjacencies to refresh,
    /// neighbour routes to derive again).
    pub(crate) links_dirty: bool,
    /// The neighbour routes of the last build.
    pub(crate) derived: BTreeMap<Ipv4Prefix, Arc<RouteEntry>>,
    /// Id of the last FIB this builder built (0: none).
    pub(crate) last_id: u64,
}

type Prefix = Ipv4Prefix;

/// Ids of built FIBs, so [`FibBuilder::build_from`] knows whether a FIB is its last.
static NEXT_FIB_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_fib_id() -> u64 {
    NEXT_FIB_ID.fetch_add(1, Ordering::Relaxed)
}

impl FibBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declare an interface: its MAC (the source of rewrites) and IP MTU.
    pub fn interface(&mut self, sw_if: u16, mac: Mac, mtu: u16) -> &mut Self {
        if self.ifaces.insert(sw_if, (mac, mtu)) != Some((mac, mtu)) {
            self.links_dirty = true;
        }
        self
    }

    /// Forget an interface.
    pub fn remove_interface(&mut self, sw_if: u16) -> &mut Self {
        if self.ifaces.remove(&sw_if).is_some() {
            self.links_dirty = true;
        }
        self
    }

    /// Declare a resolved neighbour.
    pub fn neighbour(&mut self, sw_if: u16, ip: Ipv4Addr, mac: Mac) -> &mut Self {
        if self.neighbours.insert((sw_if, ip), mac) != Some(mac) {
            self.links_dirty = true;
        }
        self
    }

    /// Forget a neighbour.
    pub fn remove_neighbour(&mut self, sw_if: u16, ip: Ipv4Addr) -> &mut Self {
        if self.neighbours.remove(&(sw_if, ip)).is_some() {
            self.links_dirty = true;
        }
        self
    }

    /// The neighbours declared, by (interface, address).
    pub fn neighbours(&self) -> &HashMap<(u16, Ipv4Addr), Mac> {
        &self.neighbours
    }

    /// The interfaces declared: (MAC, MTU) by interface.
    pub fn interfaces(&self) -> &HashMap<u16, (Mac, u16)> {
        &self.ifaces
    }

    /// Add or replace a route.
    pub fn route(&mut self, entry: RouteEntry) -> &mut Self {
        self.route_shared(Arc::new(entry))
    }

    /// Add or replace a route kept by the caller too: the builder and the FIBs it builds
    /// hold the same `Arc` (a full table is not copied into each of them).
    pub fn route_shared(&mut self, entry: Arc<RouteEntry>) -> &mut Self {
        let prefix = entry.prefix;
        if self.routes.get(&prefix) != Some(&entry) {
            self.dirty.insert(prefix);
            self.routes.insert(prefix, entry);
        }
        self
    }

    /// Remove a route.
    pub fn remove(&mut self, prefix: &Ipv4Prefix) -> Option<RouteEntry> {
        let old = self.routes.remove(prefix);
        if old.is_some() {
            self.dirty.insert(*prefix);
        }
        old.map(Arc::unwrap_or_clone)
    }

    /// The configured route for `prefix`.
    pub fn get(&self, prefix: &Ipv4Prefix) -> Option<&RouteEntry> {
        self.routes.get(prefix).map(|e| &**e)
    }

    /// The configured routes, in prefix order.
    pub fn configured(&self) -> impl Iterator<Item = &RouteEntry> {
        self.routes.values().map(|e| &**e)
    }

    /// Number of configured routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no route is configured.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Compile a snapshot from scratch.
    pub fn build(&self) -> Result<Fib, FibError> {
        self.build_full(&self.derive_neighbour_routes())
    }

    /// Neighbour /32s inside connected subnets, unless a route says otherwise.
    pub(crate) fn derive_neighbour_routes(&self) -> BTreeMap<Ipv4Prefix, Arc<RouteEntry>> {
        // Connected routes are few: collect them once (not once per neighbour).
        let connected: Vec<&RouteEntry> = self
            .configured()
            .filter(|r| r.source == RouteSource::Connected)
            .collect();
        let mut derived = BTreeMap::new();
        for &(sw_if, ip) in self.neighbours.keys() {
            let on_link = connected.iter().any(|r| {
                r.prefix.contains(ip)
                    && matches!(&r.action, RouteAction::Forward(p) if p.iter().any(|p| p.sw_if == sw_if))
            });
            let host = Ipv4Prefix::host(ip);
            if on_link && !self.routes.contains_key(&host) {
                derived.insert(
                    host,
                    Arc::new(RouteEntry {
                        prefix: host,
                        source: RouteSource::Neighbour,
                        action: RouteAction::Forward(vec![Path {
                            via: Some(ip),
                            sw_if,
                        }]),
                    }),
                );
            }
        }
        derived
    }

    /// The adjacency of a path (`prefix`'s, for an on-link /32) as the interfaces and
    /// neighbours declared now make it.
    pub(crate) fn adjacency(&self, prefix: Ipv4Prefix, p: &Path) -> Result<Adjacency, FibError> {
        let (src_mac, mtu) = *self
            .ifaces
            .get(&p.sw_if)
            .ok_or(FibError::UnknownInterface {
                prefix,
                sw_if: p.sw_if,
            })?;
        // An on-link /32 resolves to the destination itself.
        let nh = p.via.or(if prefix.len() == 32 {
            Some(prefix.addr())
        } else {
            None
        });
        Ok(self.adjacency_for(p.sw_if, nh, src_mac, mtu))
    }

    pub(crate) fn adjacency_for(
        &self,
        sw_if: u16,
        nh: Option<Ipv4Addr>,
        src_mac: Mac,
        mtu: u16,
    ) -> Adjacency {
        let resolved = nh.and_then(|ip| self.neighbours.get(&(sw_if, ip)).copied());
        Adjacency {
            kind: if resolved.is_some() {
                AdjKind::Rewrite
            } else {
                AdjKind::Incomplete
            },
            sw_if,
            next_hop: nh,
            dst_mac: resolved.unwrap_or([0; 6]),
            src_mac,
            mtu,
        }
    }

    fn build_full(&self, derived: &BTreeMap<Ipv4Prefix, Arc<RouteEntry>>) -> Result<Fib, FibError> {
        let mut fib = Fib::empty();
        // Merged with the configured routes by reference: with a full table the routes are
        // the bulk of the builder, and a copy of them would double the peak memory.
        let mut all: Vec<&Arc<RouteEntry>> = self.routes.values().chain(derived.values()).collect();
        all.sort_by_key(|e| e.prefix);
        fib.lbs.reserve(all.len());
        fib.entries.reserve(all.len());
        let mut order: Vec<(Ipv4Prefix, u32)> = Vec::with_capacity(all.len());
        for entry in all {
            let lb = fib.add_lb(self, entry)?;
            order.push((entry.prefix, lb));
        }
        // Shorter prefixes first so longer ones overwrite their ranges.
        order.sort_by_key(|(p, _)| p.len());
        for (prefix, lb) in order {
            fib.trie.insert(prefix, lb)?;
        }
        Ok(fib)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Lb {
    pub(crate) start: u32,
    pub(crate) len: u32,
}

/// A 256-entry trie chunk, shared between FIB versions until one of them changes it.
pub(crate) type Chunk = Arc<[u32; 256]>;

#[derive(Clone, Debug)]
pub(crate) struct Trie {
    pub(crate) root: Arc<Vec<u32>>,
    pub(crate) l2: Vec<Chunk>,
    pub(crate) l3: Vec<Chunk>,
}

impl Trie {
    fn new() -> Self {
        Trie {
            root: Arc::new(vec![0; 1 << 16]),
            l2: Vec::new(),
            l3: Vec::new(),
        }
    }

    fn insert(&mut self, prefix: Ipv4Prefix, lb: u32) -> Result<(), FibError> {
        let addr = prefix.addr_u32();
        let len = prefix.len();
        if len <= 16 {
            let first = (addr >> 16) as usize;
            let count = 1usize << (16 - len);
            for e in &mut Arc::make_mut(&mut self.root)[first..first + count] {
                *e = lb; // shorter prefixes were inserted first: no pointer can be here yet
            }
            return Ok(());
        }
        let r = (addr >> 16) as usize;
        let c2 = Self::chunk(&mut Arc::make_mut(&mut self.root)[r], &mut self.l2)?;
        if len <= 24 {
            let first = ((addr >> 8) & 0xff) as usize;
            let count = 1usize << (24 - len);
            for e in &mut Arc::make_mut(&mut self.l2[c2])[first..first + count] {
                *e = lb;
            }
            return Ok(());
        }
        let i2 = ((addr >> 8) & 0xff) as usize;
        let mut slot = self.l2[c2][i2];
        let c3 = Self::chunk(&mut slot, &mut self.l3)?;
        Arc::make_mut(&mut self.l2[c2])[i2] = slot;
        let first = (addr & 0xff) as usize;
        let count = 1usize << (32 - len);
        for e in &mut Arc::make_mut(&mut self.l3[c3])[first..first + count] {
            *e = lb;
        }
        Ok(())
    }

    /// Turn a leaf slot into a chunk pointer (filled with the leaf), or follow it.
    pub(crate) fn chunk(slot: &mut u32, chunks: &mut Vec<Chunk>) -> Result<usize, FibError> {
        if *slot & PTR != 0 {
            return Ok((*slot & !PTR) as usize);
        }
        let idx = chunks.len();
        if idx as u32 >= PTR {
            return Err(FibError::TooLarge(idx));
        }
        chunks.push(Arc::new([*slot; 256]));
        *slot = PTR | idx as u32;
        Ok(idx)
    }

    #[inline(always)]
    fn lookup(&self, dst: u32) -> u32 {
        let e = self.root[(dst >> 16) as usize];
        if e & PTR == 0 {
            return e;
        }
        let e = match self.l2.get((e & !PTR) as usize) {
            Some(c) => c[((dst >> 8) & 0xff) as usize],
            None => return 0,
        };
        if e & PTR == 0 {
            return e;
        }
        match self.l3.get((e & !PTR) as usize) {
            Some(c) => c[(dst & 0xff) as usize],
            None => 0,
        }
    }
}

/// An immutable, compiled FIB snapshot.
///
/// Versions built one from another ([`FibBuilder::build_from`]) share what did not change:
/// trie chunks and route entries are reference-counted, so a new version costs the copy
/// of the root array and of the small per-route arrays, not a rebuild.
#[derive(Clone, Debug)]
pub struct Fib {
    pub(crate) trie: Trie,
    pub(crate) lbs: Vec<Lb>,
    pub(crate) buckets: Vec<u32>,
    pub(crate) adjs: Vec<Adjacency>,
    /// The route of each load balance (`None`: a free slot; slot 0 is the implicit drop).
    pub(crate) entries: Vec<Option<Arc<RouteEntry>>>,
    /// Load balance of each route.
    pub(crate) index: HashMap<Ipv4Prefix, u32>,
    /// Adjacency of each (interface, next hop).
    pub(crate) adj_index: HashMap<(u16, Option<Ipv4Addr>), u32>,
    /// Buckets naming each adjacency (an adjacency named by none is free).
    pub(crate) adj_refs: Vec<u32>,
    pub(crate) free_lbs: Vec<u32>,
    pub(crate) free_adjs: Vec<u32>,
    /// Buckets no load balance uses any more (left behind by incremental builds).
    pub(crate) garbage: usize,
    /// Identifies this version for [`FibBuilder::build_from`].
    pub(crate) id: u64,
}

impl Default for Fib {
    fn default() -> Self {
        Fib::empty()
    }
}

impl Fib {
    /// No routes: everything drops.
    fn empty() -> Fib {
        Fib {
            trie: Trie::new(),
            lbs: vec![Lb { start: 0, len: 1 }],
            buckets: vec![0],
            adjs: vec![Adjacency::DROP, Adjacency::LOCAL],
            entries: vec![Some(Arc::new(RouteEntry {
                prefix: Ipv4Prefix::DEFAULT,
                source: RouteSource::Static,
                action: RouteAction::Drop,
            }))],
            index: HashMap::new(),
            adj_index: HashMap::new(),
            adj_refs: vec![u32::MAX, u32::MAX],
            free_lbs: Vec::new(),
            free_adjs: Vec::new(),
            garbage: 0,
            id: next_fib_id(),
        }
    }

    /// Appends the buckets of `entry` (adjacencies found or made); returns their range.
    pub(crate) fn add_buckets(
        &mut self,
        builder: &FibBuilder,
        entry: &RouteEntry,
    ) -> Result<Lb, FibError> {
        let start = self.buckets.len() as u32;
        match &entry.action {
            RouteAction::Drop => self.buckets.push(0),
            RouteAction::Local => self.buckets.push(1),
            RouteAction::Forward(paths) => {
                if paths.is_empty() {
                    return Err(FibError::NoPaths(entry.prefix));
                }
                let mut sorted = paths.clone();
                sorted.sort();
                sorted.dedup();
                for p in sorted {
                    // Checks the interface even when the adjacency exists.
                    let adj = builder.adjacency(entry.prefix, &p)?;
                    let key = (p.sw_if, adj.next_hop);
                    let idx = match self.adj_index.get(&key) {
                        Some(&i) => i,
                        None => {
                            let i = match self.free_adjs.pop() {
                                Some(i) => {
                                    self.adjs[i as usize] = adj;
                                    i
                                }
                                None => {
                                    self.adjs.push(adj);
                                    self.adj_refs.push(0);
                                    (self.adjs.len() - 1) as u32
                                }
                            };
                            self.adj_index.insert(key, i);
                            i
                        }
                    };
                    if let Some(r) = self.adj_refs.get_mut(idx as usize) {
                        *r = r.saturating_add(1);
                    }
                    self.buckets.push(idx);
                }
            }
        }
        Ok(Lb {
            start,
            len: self.buckets.len() as u32 - start,
        })
    }

    /// Gives back the buckets of `lb`: adjacencies no bucket names any more become free.
    pub(crate) fn release_buckets(&mut self, lb: Lb) {
        for i in lb.start..lb.start + lb.len {
            let Some(&a) = self.buckets.get(i as usize) else {
                continue;
            };
            let Some(r) = self.adj_refs.get_mut(a as usize) else {
                continue;
            };
            if *r == u32::MAX {
                continue; // drop and local are never freed
            }
            *r = r.saturating_sub(1);
            if *r == 0 {
                let adj = self.adjs[a as usize];
                self.adj_index.remove(&(adj.sw_if, adj.next_hop));
                self.adjs[a as usize] = Adjacency::DROP;
                self.free_adjs.push(a);
            }
        }
        self.garbage += lb.len as usize;
    }

    /// A load balance for `entry` (its buckets appended, the entry shared); returns its
    /// index.
    pub(crate) fn add_lb(
        &mut self,
        builder: &FibBuilder,
        entry: &Arc<RouteEntry>,
    ) -> Result<u32, FibError> {
        let range = self.add_buckets(builder, entry)?;
        let lb = match self.free_lbs.pop() {
            Some(lb) => {
                self.lbs[lb as usize] = range;
                self.entries[lb as usize] = Some(entry.clone());
                lb
            }
            None => {
                let lb = self.lbs.len() as u32;
                if lb >= PTR {
                    return Err(FibError::TooLarge(lb as usize));
                }
                self.lbs.push(range);
                self.entries.push(Some(entry.clone()));
                lb
            }
        };
        self.index.insert(entry.prefix, lb);
        Ok(lb)
    }

    /// The load-balance index of the longest matching route (0 = no route).
    #[inline(always)]
    pub fn lookup(&self, dst: Ipv4Addr) -> u32 {
        self.trie.lookup(u32::from(dst))
    }

    /// The adjacency index for a destination; `flow_hash` is only called for
    /// routes with several paths.
    #[inline(always)]
    pub fn resolve(&self, dst: Ipv4Addr, flow_hash: impl FnOnce() -> u32) -> u32 {
        let lb = self.lookup(dst);
        let Some(l) = self.lbs.get(lb as usize) else {
            return 0;
        };
        let pick = if l.len <= 1 { 0 } else { flow_hash() % l.len };
        self.buckets
            .get((l.start + pick) as usize)
            .copied()
            .unwrap_or(0)
    }

    /// An adjacency by index (index 0, the drop adjacency, for an unknown one).
    #[inline(always)]
    pub fn adj(&self, idx: u32) -> &Adjacency {
        self.adjs.get(idx as usize).unwrap_or(&Adjacency::DROP)
    }

    /// The route a load-balance index belongs to (for traces and `show routes`).
    pub fn route_of(&self, lb: u32) -> Option<&RouteEntry> {
        self.entries.get(lb as usize).and_then(|e| e.as_deref())
    }

    /// Load balances of the routes in prefix order, without the implicit drop.
    fn sorted_lbs(&self) -> Vec<(Ipv4Prefix, u32)> {
        let mut v: Vec<(Ipv4Prefix, u32)> = self.index.iter().map(|(p, lb)| (*p, *lb)).collect();
        v.sort_unstable();
        v
    }

    /// Number of routes (configured and derived), without the implicit drop.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when there is no route.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// All routes (configured and derived), in prefix order, without the implicit drop.
    pub fn routes(&self) -> impl Iterator<Item = &RouteEntry> {
        self.sorted_lbs()
            .into_iter()
            .filter_map(move |(_, lb)| self.route_of(lb))
    }

    /// Every route (configured and derived) with the adjacencies of its paths.
    pub fn route_table(&self) -> impl Iterator<Item = (&RouteEntry, Vec<&Adjacency>)> {
        self.sorted_lbs()
            .into_iter()
            .filter_map(move |(_, lb)| self.route_of(lb).map(|r| (r, self.route_adjs(lb))))
    }

    /// All adjacencies (free slots of incremental builds show as drop adjacencies).
    pub fn adjacencies(&self) -> &[Adjacency] {
        &self.adjs
    }

    /// The adjacencies of a route's paths.
    pub fn route_adjs(&self, lb: u32) -> Vec<&Adjacency> {
        match self.lbs.get(lb as usize) {
            Some(l) => (l.start..l.start + l.len)
                .filter_map(|i| self.buckets.get(i as usize))
                .map(|&a| self.adj(a))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Next hops that need a neighbour resolution (incomplete adjacencies).
    pub fn unresolved(&self) -> impl Iterator<Item = (u16, Ipv4Addr)> + '_ {
        self.adjs
            .iter()
            .filter(|a| a.kind == AdjKind::Incomplete)
            .filter_map(|a| a.next_hop.map(|nh| (a.sw_if, nh)))
    }

    /// Memory used by the trie (bytes).
    pub fn trie_bytes(&self) -> usize {
        (self.trie.root.len() + (self.trie.l2.len() + self.trie.l3.len()) * 256) * 4
    }
}

/// Reference longest-prefix match over a route list (for tests).
#[doc(hidden)]
pub fn naive_lpm(routes: &[Ipv4Prefix], dst: Ipv4Addr) -> Option<Ipv4Prefix> {
    let d = u32::from(dst);
    routes
        .iter()
        .filter(|p| d & mask(p.len()) == p.addr_u32())
        .max_by_key(|p| p.len())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC_A: Mac = [2, 0, 0, 0, 0, 1];
    const MAC_N: Mac = [2, 0, 0, 0, 0, 9];

    fn fwd(prefix: &str, via: Option<&str>, sw_if: u16, source: RouteSource) -> RouteEntry {
        RouteEntry {
            prefix: prefix.parse().unwrap(),
            source,
            action: RouteAction::Forward(vec![Path {
                via: via.map(|v| v.parse().unwrap()),
                sw_if,
            }]),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_match_wins() {
        let mut b = FibBuilder::new();
        b.interface(0, MAC_A, 1500).interface(1, MAC_A, 1500);
        b.route(fwd(
            "0.0.0.0/0",
            Some("192.168.100.1"),
            0,
            RouteSource::Static,
        ));
        b.route(fwd("10.244.1.0/24", None, 1, RouteSource::Connected));
        b.route(fwd("10.244.1.10/32", None, 1, RouteSource::Pod));
        b.neighbour(0, ip("192.168.100.1"), MAC_N);
        b.neighbour(1, ip("10.244.1.10"), MAC_N);
        let fib = b.build().unwrap();

        let a = fib.adj(fib.resolve(ip("10.244.1.10"), || 0));
        assert_eq!(a.kind, AdjKind::Rewrite);
        assert_eq!(a.sw_if, 1);
        assert_eq!(a.next_hop, Some(ip("10.244.1.10")));

        let a = fib.adj(fib.resolve(ip("10.244.1.11"), || 0));
        assert_eq!(a.kind, AdjKind::Incomplete);
        assert_eq!(a.next_hop, None);

        let a = fib.adj(fib.resolve(ip("8.8.8.8"), || 0));
        assert_eq!(a.kind, AdjKind::Rewrite);
        assert_eq!(a.dst_mac, MAC_N);
        assert_eq!(a.src_mac, MAC_A);
    }

    #[test]
    fn no_route_drops_and_local_punts() {
        let mut b = FibBuilder::new();
        b.route(RouteEntry {
            prefix: "192.168.100.2/32".parse().unwrap(),
            source: RouteSource::Local,
            action: RouteAction::Local,
        });
        let fib = b.build().unwrap();
        assert_eq!(
            fib.adj(fib.resolve(ip("1.1.1.1"), || 0)).kind,
            AdjKind::Drop
        );
        assert_eq!(
            fib.adj(fib.resolve(ip("192.168.100.2"), || 0)).kind,
            AdjKind::Local
        );
    }

    #[test]
    fn neighbours_in_connected_subnets_get_host_routes() {
        let mut b = FibBuilder::new();
        b.interface(0, MAC_A, 1500);
        b.route(fwd("192.168.100.0/24", None, 0, RouteSource::Connected));
        b.neighbour(0, ip("192.168.100.1"), MAC_N);
        let fib = b.build().unwrap();
        let a = fib.adj(fib.resolve(ip("192.168.100.1"), || 0));
        assert_eq!(a.kind, AdjKind::Rewrite);
        assert_eq!(a.dst_mac, MAC_N);
        assert!(fib
            .routes()
            .any(|r| r.source == RouteSource::Neighbour && r.prefix.len() == 32));
        assert_eq!(
            fib.adj(fib.resolve(ip("192.168.100.7"), || 0)).kind,
            AdjKind::Incomplete
        );
    }

    #[test]
    fn ecmp_spreads_by_hash() {
        let mut b = FibBuilder::new();
        b.interface(0, MAC_A, 1500).interface(1, MAC_A, 1500);
        b.neighbour(0, ip("10.0.0.1"), MAC_N)
            .neighbour(1, ip("10.0.1.1"), MAC_N);
        b.route(RouteEntry {
            prefix: "10.9.0.0/16".parse().unwrap(),
            source: RouteSource::Static,
            action: RouteAction::Forward(vec![
                Path {
                    via: Some(ip("10.0.0.1")),
                    sw_if: 0,
                },
                Path {
                    via: Some(ip("10.0.1.1")),
                    sw_if: 1,
                },
            ]),
        });
        let fib = b.build().unwrap();
        let a0 = fib.adj(fib.resolve(ip("10.9.1.1"), || 0)).sw_if;
        let a1 = fib.adj(fib.resolve(ip("10.9.1.1"), || 1)).sw_if;
        assert_ne!(a0, a1);
        let lb = fib.lookup(ip("10.9.1.1"));
        assert_eq!(fib.route_adjs(lb).len(), 2);
    }

    #[test]
    fn unknown_interface_is_an_error() {
        let mut b = FibBuilder::new();
        b.route(fwd("10.0.0.0/8", None, 7, RouteSource::Static));
        assert!(matches!(
            b.build(),
            Err(FibError::UnknownInterface { sw_if: 7, .. })
        ));
    }

    proptest! {
        #[test]
        fn trie_matches_naive_lpm(
            routes in proptest::collection::vec((any::<u32>(), 0u8..=32), 1..200),
            probes in proptest::collection::vec(any::<u32>(), 1..200),
        ) {
            let mut b = FibBuilder::new();
            b.interface(0, MAC_A, 1500);
            let mut prefixes = Vec::new();
            for (a, l) in routes {
                let p = Ipv4Prefix::new(Ipv4Addr::from(a), l).unwrap();
                prefixes.push(p);
                b.route(RouteEntry { prefix: p, source: RouteSource::Static, action: RouteAction::Local });
            }
            let fib = b.build().unwrap();
            // Probe random addresses and the route addresses themselves (and their neighbours).
            let mut all: Vec<u32> = probes;
            for p in &prefixes {
                all.push(p.addr_u32());
                all.push(p.addr_u32().wrapping_sub(1));
                all.push(p.addr_u32() | !mask(p.len()));
            }
            for d in all {
                let dst = Ipv4Addr::from(d);
                let expect = naive_lpm(&prefixes, dst);
                let got = fib.route_of(fib.lookup(dst)).filter(|_| fib.lookup(dst) != 0).map(|r| r.prefix);
                prop_assert_eq!(got, expect, "dst {}", dst);
            }
        }
    }
}
