//! NetworkPolicy enforcement tables: compiled per-pod ACLs and their classifier.
//!
//! The control plane (crate `ferroplane-policy`) compiles Kubernetes NetworkPolicies into
//! one [`AclSpec`] per pod and direction: a list of [`Entry`] (rule, ports, address set).
//! Pods whose effective policy is the same share one [`Acl`] (interned by its spec).
//!
//! The classifier answers "which rule allows (protocol, port, peer address)" with a cost
//! that does not grow with the number of rules:
//! 1. the destination port selects a *port class* (the set of entries allowing it) through
//!    a two-level table per protocol (256 chunks of 256 ports; identical chunks share one
//!    leaf), so a lookup is at most two loads whatever the number of ports and ranges; the
//!    value also says which prefix lengths the class's address table uses;
//! 2. one open-addressing hash table, shared by all classes and keyed by (class, prefix),
//!    gives the first rule allowing that address range at those ports: one probe per
//!    prefix length the class uses, longest first (pod peers are all /32: one probe). The
//!    table is made of 64-byte buckets of three slots (key, rule and hit counter side by
//!    side), so a probe reads and counts in one cache line, comparing the three keys without
//!    branches.
//!
//! The data path classifies whole vectors ([`Acl::check_batch`],
//! [`PolicyTables::check_batch`]), VPP style: a first pass over a group of packets
//! prefetches their port-map lines, a second computes their bucket and prefetches it, a
//! third decides and counts. The memory latency of one packet is then hidden behind the
//! work on the others, so a table of 10,000 rules (which no longer fits the first-level
//! cache) decides at nearly the rate of a table of one.
//!
//! Set semantics (ipBlock `except`, unions of peers) are resolved at build time: an address
//! takes the value of its longest matching *interesting* prefix (a block, an exception or a
//! pod address), and that value is computed from the blocks containing that prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::hash::FastMap;
use crate::prefix::Ipv4Prefix;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of SCTP.
pub const PROTO_SCTP: u8 = 132;

/// Protocols with ports, in port-table order.
const PORT_PROTOS: [u8; 3] = [PROTO_TCP, PROTO_UDP, PROTO_SCTP];

/// Value of an address range no rule allows.
const DENY: u32 = u32::MAX;

/// Direction of an ACL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic arriving at the pod (peer = source).
    Ingress,
    /// Traffic leaving the pod (peer = destination).
    Egress,
}

impl Direction {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Where a compiled rule came from: rule `index` of the ingress or egress list of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    /// Namespace of the policy.
    pub namespace: String,
    /// Name of the policy.
    pub policy: String,
    /// Index of the rule in the policy's `ingress` / `egress` list.
    pub index: u32,
}

/// Ports an entry allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    /// Every protocol and port (a rule without `ports`).
    All,
    /// Every port of one protocol.
    Proto {
        /// IP protocol number.
        proto: u8,
    },
    /// A port range (inclusive) of one protocol.
    Range {
        /// IP protocol number.
        proto: u8,
        /// First port.
        lo: u16,
        /// Last port.
        hi: u16,
    },
}

impl std::fmt::Display for PortMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            PortMatch::All => write!(f, "any"),
            PortMatch::Proto { proto } => write!(f, "{}/any", proto_name(proto)),
            PortMatch::Range { proto, lo, hi } if lo == hi => {
                write!(f, "{}/{lo}", proto_name(proto))
            }
            PortMatch::Range { proto, lo, hi } => write!(f, "{}/{lo}-{hi}", proto_name(proto)),
        }
    }
}

/// Name of a protocol number (`tcp`, `udp`, `sctp`, or the number).
pub fn proto_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_SCTP => "sctp".into(),
        1 => "icmp".into(),
        n => n.to_string(),
    }
}

/// An ipBlock: a prefix minus exceptions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    /// The block.
    pub cidr: Ipv4Prefix,
    /// Exceptions (inside the block).
    pub except: Vec<Ipv4Prefix>,
}

impl Block {
    /// A block without exceptions.
    pub fn new(cidr: Ipv4Prefix) -> Block {
        Block {
            cidr,
            except: Vec::new(),
        }
    }

    /// Whether every address of `p` is in the block (inside `cidr`, outside every exception).
    /// For the prefixes the classifier is built from this is the membership of `p`.
    fn covers(&self, p: &Ipv4Prefix) -> bool {
        prefix_contains(&self.cidr, p) && !self.except.iter().any(|e| prefix_contains(e, p))
    }
}

fn prefix_contains(outer: &Ipv4Prefix, inner: &Ipv4Prefix) -> bool {
    outer.len() <= inner.len() && outer.contains(inner.addr())
}

/// A set of peer addresses: a union of blocks and single hosts (pods).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AddrSet {
    /// Blocks (ipBlock peers; `0.0.0.0/0` for "every peer").
    pub blocks: Vec<Block>,
    /// Host addresses (pod peers), sorted, unique.
    pub hosts: Vec<Ipv4Addr>,
}

impl AddrSet {
    /// Every address.
    pub fn all() -> AddrSet {
        AddrSet {
            blocks: vec![Block::new(Ipv4Prefix::DEFAULT)],
            hosts: Vec::new(),
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.hosts.is_empty()
    }

    /// Whether `ip` is in the set (reference semantics, linear).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.hosts.binary_search(&ip).is_ok()
            || self
                .blocks
                .iter()
                .any(|b| b.cidr.contains(ip) && !b.except.iter().any(|e| e.contains(ip)))
    }
}

/// One compiled entry: rule number `rule` (index into [`AclSpec::rules`]) allows `ports`
/// to or from `addrs`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    /// Index of the rule in [`AclSpec::rules`].
    pub rule: u32,
    /// Ports.
    pub ports: PortMatch,
    /// Peer addresses.
    pub addrs: Arc<AddrSet>,
}

/// The content of an ACL: what identical pods share.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AclSpec {
    /// Direction.
    pub direction: Direction,
    /// Source rules, in order; entries refer to them by index. Empty: deny everything.
    pub rules: Vec<RuleRef>,
    /// Entries, sorted by rule.
    pub entries: Vec<Entry>,
}

impl AclSpec {
    /// Which rule allows `(proto, port, peer)`, by scanning the entries (reference semantics
    /// for tests; the data path uses [`Classifier`]).
    pub fn reference_match(&self, proto: u8, port: u16, peer: Ipv4Addr) -> Option<u32> {
        self.entries
            .iter()
            .filter(|e| port_matches(&e.ports, proto, port) && e.addrs.contains(peer))
            .map(|e| e.rule)
            .min()
    }
}

fn port_matches(m: &PortMatch, proto: u8, port: u16) -> bool {
    match *m {
        PortMatch::All => true,
        PortMatch::Proto { proto: p } => p == proto,
        PortMatch::Range { proto: p, lo, hi } => p == proto && (lo..=hi).contains(&port),
    }
}

/// Bits of a class word above the class id: one per prefix length present in the class.
const LEN_SHIFT: u32 = 31;
/// Mask of the class id in a class word (31 bits; a classifier has fewer classes than
/// twice its entries plus four, far below this).
const CLASS_MASK: u64 = (1 << LEN_SHIFT) - 1;

/// The key of prefix `ip/len` of class `class`: the class above 33 bits holding the prefix
/// bits followed by a one bit (so `10.0.0.0/8` and `10.0.0.0/16` differ); never 0.
#[inline(always)]
fn slot_key(class: u64, ip: u32, len: u32) -> u64 {
    let sh = 32 - len;
    let p = (((ip as u64) >> sh) << 1 | 1) << sh;
    (class << 33) | p
}

#[inline(always)]
fn slot_hash(key: u64, shift: u32) -> usize {
    ((key ^ (key >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as usize
}

/// Slots per bucket.
const WAYS: usize = 3;

/// One bucket of the merged prefix table: three slots in one 64-byte cache line, the
/// counters next to the keys so that deciding and counting touch the same line.
#[derive(Debug, Default)]
#[repr(C, align(64))]
struct Bucket {
    /// [`slot_key`] of each slot, 0 when empty.
    keys: [u64; WAYS],
    /// Rule allowing the slot's prefix, or [`DENY`].
    rules: [u32; WAYS],
    /// Non-zero when a key whose home is this bucket (or an earlier one) was placed in a
    /// later bucket: a lookup that misses here goes on to the next bucket only then.
    overflow: u32,
    /// Packets allowed by each slot (per slot rather than per rule: the counter is found
    /// with the slot; per-rule counts are sums).
    hits: [AtomicU64; WAYS],
}

/// Hint the CPU to load the cache line of `r` (a no-op where there is no such hint).
#[inline(always)]
fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it does not read memory the program can observe,
    // never faults, and `r` is a valid reference in any case.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// A lookup in progress (see [`Classifier::start`]).
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    /// Key of the first (longest) prefix, 0 when the class has no prefix at all; the
    /// class is `key >> 33`.
    key: u64,
    /// Prefix lengths still to probe after the first (one bit per length).
    lens: u64,
    /// Home bucket of `key`.
    bucket: usize,
}

/// Packets handled per group in the batched paths: enough work between the prefetch of a
/// line and its use to hide a second-level cache hit, few enough that the lines of a group
/// and their pages stay in the first-level cache and TLB (72 entries on AMD Zen 4; groups
/// of 32 and 64 measured slower there).
const GROUP: usize = 16;

/// Port -> class word for one protocol: 256 chunks of 256 ports.
#[derive(Debug, Clone)]
enum PortMap {
    /// Every port has this class word.
    Uniform(u64),
    /// Two levels: `leaves[top[port >> 8]][port & 0xff]`.
    Table {
        top: Box<[u16; 256]>,
        leaves: Vec<[u64; 256]>,
    },
}

impl PortMap {
    #[inline(always)]
    fn word(&self, port: u16) -> &u64 {
        match self {
            PortMap::Uniform(w) => w,
            PortMap::Table { top, leaves } => {
                let t = top[(port >> 8) as usize] as usize;
                match leaves.get(t) {
                    Some(l) => &l[(port & 0xff) as usize],
                    None => &0,
                }
            }
        }
    }

    /// The two-level map of `flat` (65,536 class words); identical chunks share a leaf.
    fn build(flat: &[u64]) -> PortMap {
        if flat.iter().all(|w| *w == flat[0]) {
            return PortMap::Uniform(flat[0]);
        }
        let mut top = Box::new([0u16; 256]);
        let mut leaves: Vec<[u64; 256]> = Vec::new();
        let mut ids: FastMap<&[u64], u16> = FastMap::default();
        for (chunk, t) in flat.chunks(256).zip(top.iter_mut()) {
            *t = *ids.entry(chunk).or_insert_with(|| {
                let mut leaf = [0u64; 256];
                leaf.copy_from_slice(chunk);
                leaves.push(leaf);
                (leaves.len() - 1) as u16
            });
        }
        PortMap::Table { top, leaves }
    }
}

/// The classifier of one ACL.
///
/// Per packet: the protocol and destination port give a *class word* (at most two loads,
/// see [`PortMap`]): the port class (the set of entries allowing that port) and the prefix
/// lengths its address table uses. Then, longest length first, one probe per length into a
/// single table of three-slot buckets shared by every class, keyed by (class, prefix).
/// Neither step depends on the number of rules; pod peers are all /32, so a class without
/// ipBlocks costs exactly one probe (one cache line, which also holds the hit counter).
#[derive(Debug)]
pub struct Classifier {
    /// Port maps for TCP, UDP, SCTP.
    ports: [PortMap; 3],
    /// Class word of other protocols (ICMP, ...): entries allowing every protocol.
    other: u64,
    /// Merged prefix table: a power of two of buckets, at least one per prefix (so on
    /// average at most one of the three slots of a bucket is used).
    buckets: Box<[Bucket]>,
    /// `64 - log2(buckets.len())`.
    shift: u32,
    /// Number of port classes.
    classes: usize,
}

/// The (prefix, value) pairs of the address table of a port class: every *interesting*
/// prefix (pod address, block, exception) with the first rule whose addresses cover it.
fn class_prefixes(entries: &[&Entry]) -> Vec<(Ipv4Prefix, u32)> {
    let mut host_first: FastMap<u32, u32> = FastMap::default();
    let mut blocks: Vec<(u32, &Block)> = Vec::new();
    let mut interesting: BTreeSet<Ipv4Prefix> = BTreeSet::new();
    for e in entries {
        for h in &e.addrs.hosts {
            let v = host_first.entry(u32::from(*h)).or_insert(e.rule);
            *v = (*v).min(e.rule);
            interesting.insert(Ipv4Prefix::host(*h));
        }
        for b in &e.addrs.blocks {
            blocks.push((e.rule, b));
            interesting.insert(b.cidr);
            interesting.extend(b.except.iter().copied());
        }
    }
    blocks.sort_by_key(|(r, _)| *r);
    interesting
        .into_iter()
        .map(|p| {
            let mut v = DENY;
            if p.len() == 32 {
                if let Some(r) = host_first.get(&p.addr_u32()) {
                    v = *r;
                }
            }
            if let Some((r, _)) = blocks.iter().find(|(_, b)| b.covers(&p)) {
                v = v.min(*r);
            }
            (p, v)
        })
        .collect()
}

impl Classifier {
    /// Build the classifier of `spec`.
    pub fn build(spec: &AclSpec) -> Classifier {
        // Port classes: sets of entries, interned; each gets its prefix list.
        let mut class_ids: FastMap<Vec<u32>, u64> = FastMap::default();
        let mut prefixes: Vec<Vec<(Ipv4Prefix, u32)>> = Vec::new();
        let mut words: Vec<u64> = Vec::new();
        let mut intern = |set: Vec<u32>| -> u64 {
            if let Some(w) = class_ids.get(&set) {
                return *w;
            }
            let es: Vec<&Entry> = set.iter().map(|&i| &spec.entries[i as usize]).collect();
            let ps = class_prefixes(&es);
            let class = prefixes.len() as u64 & CLASS_MASK;
            let lens = ps.iter().fold(0u64, |m, (p, _)| m | 1 << p.len());
            let w = class | lens << LEN_SHIFT;
            prefixes.push(ps);
            words.push(w);
            class_ids.insert(set, w);
            w
        };
        let all: Vec<u32> = (0..spec.entries.len() as u32)
            .filter(|&i| spec.entries[i as usize].ports == PortMatch::All)
            .collect();
        let other = intern(all.clone());
        let mut flat = vec![0u64; 65536];
        let ports = PORT_PROTOS.map(|proto| {
            let mut base = all.clone();
            let mut ranges: Vec<(u16, u16, u32)> = Vec::new();
            for (i, e) in spec.entries.iter().enumerate() {
                match e.ports {
                    PortMatch::Proto { proto: p } if p == proto => base.push(i as u32),
                    PortMatch::Range { proto: p, lo, hi } if p == proto => {
                        ranges.push((lo, hi, i as u32))
                    }
                    _ => {}
                }
            }
            base.sort_unstable();
            if ranges.is_empty() {
                return PortMap::Uniform(intern(base));
            }
            // Sweep the port space: events at range starts and ends.
            let mut starts: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            let mut ends: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            for &(lo, hi, i) in &ranges {
                starts.entry(lo as u32).or_default().push(i);
                ends.entry(hi as u32 + 1).or_default().push(i);
            }
            let mut bounds: BTreeSet<u32> = starts.keys().chain(ends.keys()).copied().collect();
            bounds.insert(0);
            bounds.insert(65536);
            let bounds: Vec<u32> = bounds.into_iter().collect();
            let mut active: BTreeSet<u32> = BTreeSet::new();
            for w in bounds.windows(2) {
                let (s, e) = (w[0], w[1]);
                for i in ends.get(&s).into_iter().flatten() {
                    active.remove(i);
                }
                active.extend(starts.get(&s).into_iter().flatten().copied());
                let mut set = base.clone();
                set.extend(active.iter().copied());
                set.sort_unstable();
                set.dedup();
                let c = intern(set);
                flat[s as usize..e as usize].fill(c);
            }
            PortMap::build(&flat)
        });
        // The merged prefix table.
        let n: usize = prefixes.iter().map(Vec::len).sum();
        let cap = n.next_power_of_two().max(2);
        let shift = 64 - cap.trailing_zeros();
        let mut buckets: Box<[Bucket]> = (0..cap).map(|_| Bucket::default()).collect();
        for (class, ps) in prefixes.iter().enumerate() {
            for (p, v) in ps {
                let key = slot_key(class as u64, p.addr_u32(), p.len() as u32);
                let mut b = slot_hash(key, shift);
                // Terminates: there are at most `cap` keys and `WAYS * cap` slots.
                loop {
                    let bk = &mut buckets[b];
                    if let Some(w) = bk.keys.iter().position(|k| *k == 0) {
                        bk.keys[w] = key;
                        bk.rules[w] = *v;
                        break;
                    }
                    bk.overflow = 1;
                    b = (b + 1) & (cap - 1);
                }
            }
        }
        Classifier {
            ports,
            other,
            buckets,
            shift,
            classes: prefixes.len(),
        }
    }

    /// The class word of `(proto, port)` (a reference, to be prefetched in a batch).
    #[inline(always)]
    fn word(&self, proto: u8, port: u16) -> &u64 {
        match proto {
            PROTO_TCP => self.ports[0].word(port),
            PROTO_UDP => self.ports[1].word(port),
            PROTO_SCTP => self.ports[2].word(port),
            _ => &self.other,
        }
    }

    /// First step of a lookup: the class word of `(proto, port)` gives the key and home
    /// bucket of the longest prefix length of the class; the bucket is prefetched.
    #[inline(always)]
    fn start(&self, proto: u8, port: u16, peer: Ipv4Addr) -> Probe {
        self.start_word(*self.word(proto, port), peer)
    }

    /// [`Classifier::start`] from the class word (whose line a batch prefetched before).
    #[inline(always)]
    fn start_word(&self, w: u64, peer: Ipv4Addr) -> Probe {
        let lens = w >> LEN_SHIFT;
        if lens == 0 {
            return Probe::default();
        }
        let len = 63 - lens.leading_zeros();
        let key = slot_key(w & CLASS_MASK, u32::from(peer), len);
        let bucket = slot_hash(key, self.shift);
        if let Some(b) = self.buckets.get(bucket) {
            prefetch(b);
        }
        Probe {
            key,
            lens: lens & !(1u64 << len),
            bucket,
        }
    }

    /// The bucket and way holding `key`, whose home bucket is `b`.
    #[inline(always)]
    fn lookup(&self, key: u64, mut b: usize) -> Option<(&Bucket, usize)> {
        let mask = self.buckets.len() - 1;
        loop {
            let bk = self.buckets.get(b)?;
            let m = (bk.keys[0] == key) as u32
                | ((bk.keys[1] == key) as u32) << 1
                | ((bk.keys[2] == key) as u32) << 2;
            if m != 0 {
                return Some((bk, m.trailing_zeros() as usize));
            }
            if bk.overflow == 0 {
                return None;
            }
            b = (b + 1) & mask;
        }
    }

    /// Last step: the slot deciding the probe of `peer`, the longest prefix of the class's
    /// address table containing it.
    #[inline(always)]
    fn finish(&self, p: &Probe, peer: Ipv4Addr) -> Option<(&Bucket, usize)> {
        if p.key == 0 {
            return None;
        }
        if let Some(s) = self.lookup(p.key, p.bucket) {
            return Some(s);
        }
        self.finish_shorter(p, peer)
    }

    /// The shorter prefix lengths of a probe whose first length missed (classes with
    /// ipBlocks only).
    #[inline(never)]
    fn finish_shorter(&self, p: &Probe, peer: Ipv4Addr) -> Option<(&Bucket, usize)> {
        let class = p.key >> 33;
        let mut lens = p.lens;
        while lens != 0 {
            let len = 63 - lens.leading_zeros();
            lens &= !(1u64 << len);
            let key = slot_key(class, u32::from(peer), len);
            if let Some(s) = self.lookup(key, slot_hash(key, self.shift)) {
                return Some(s);
            }
        }
        None
    }

    /// The rule of the probe's slot, counting the packet in it when allowed.
    #[inline(always)]
    fn decide(&self, p: &Probe, peer: Ipv4Addr) -> Option<u32> {
        let (b, w) = self.finish(p, peer)?;
        let rule = *b.rules.get(w)?;
        if rule == DENY {
            return None;
        }
        if let Some(h) = b.hits.get(w) {
            h.fetch_add(1, Ordering::Relaxed);
        }
        Some(rule)
    }

    /// The rule (index into the ACL's rules) allowing `(proto, port, peer)`, or `None`.
    #[inline(always)]
    pub fn classify(&self, proto: u8, port: u16, peer: Ipv4Addr) -> Option<u32> {
        let (b, w) = self.finish(&self.start(proto, port, peer), peer)?;
        b.rules.get(w).copied().filter(|r| *r != DENY)
    }

    /// Number of port classes (for display and tests).
    pub fn class_count(&self) -> usize {
        self.classes
    }

    /// Classify and count an allowed packet in the deciding slot.
    #[inline(always)]
    fn check(&self, proto: u8, port: u16, peer: Ipv4Addr) -> Option<u32> {
        self.decide(&self.start(proto, port, peer), peer)
    }

    /// Packets allowed per rule (`rules` entries), summed over the slots.
    fn hits(&self, rules: usize) -> Vec<u64> {
        let mut h = vec![0u64; rules];
        for b in self.buckets.iter() {
            for w in 0..WAYS {
                if b.keys[w] != 0 {
                    if let Some(c) = h.get_mut(b.rules[w] as usize) {
                        *c += b.hits[w].load(Ordering::Relaxed);
                    }
                }
            }
        }
        h
    }

    fn clear(&self) {
        for b in self.buckets.iter() {
            for h in &b.hits {
                h.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// A compiled ACL with its counters; shared by every pod with the same spec.
#[derive(Debug)]
pub struct Acl {
    /// Content.
    pub spec: AclSpec,
    /// The classifier (holding the per-rule hit counters, kept per prefix slot).
    pub classifier: Classifier,
    /// Packets denied (no rule allowed them).
    denied: AtomicU64,
}

impl Acl {
    /// Compile `spec`.
    pub fn new(spec: AclSpec) -> Acl {
        let classifier = Classifier::build(&spec);
        Acl {
            spec,
            classifier,
            denied: AtomicU64::new(0),
        }
    }

    /// Classify and count: `Some(rule)` when allowed.
    #[inline(always)]
    pub fn check(&self, proto: u8, port: u16, peer: Ipv4Addr) -> Option<u32> {
        let r = self.classifier.check(proto, port, peer);
        if r.is_none() {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Classify and count a vector of packets, `(proto, port, peer)` each: `out[i]` is
    /// `Some(rule)` when `packets[i]` is allowed. The same decisions and counts as
    /// [`Acl::check`] on each packet in turn, with the memory latency of the lookups
    /// overlapped (see the module documentation). `out` must be as long as `packets`
    /// (extra packets are left out).
    pub fn check_batch(&self, packets: &[(u8, u16, Ipv4Addr)], out: &mut [Option<u32>]) {
        let c = &self.classifier;
        let mut denied = 0u64;
        let mut probes = [Probe::default(); GROUP];
        let mut words = [&0u64; GROUP];
        for (ps, os) in packets.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            for (w, &(proto, port, _)) in words.iter_mut().zip(ps) {
                *w = c.word(proto, port);
                prefetch(*w);
            }
            for ((p, w), &(_, _, peer)) in probes.iter_mut().zip(&words).zip(ps) {
                *p = c.start_word(**w, peer);
            }
            for ((o, p), &(_, _, peer)) in os.iter_mut().zip(&probes).zip(ps) {
                *o = c.decide(p, peer);
                denied += o.is_none() as u64;
            }
        }
        if denied > 0 {
            self.denied.fetch_add(denied, Ordering::Relaxed);
        }
    }

    /// Packets allowed by each rule.
    pub fn hits(&self) -> Vec<u64> {
        self.classifier.hits(self.spec.rules.len())
    }

    /// Packets denied.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// Reset the counters.
    pub fn clear_counters(&self) {
        self.classifier.clear();
        self.denied.store(0, Ordering::Relaxed);
    }
}

/// The ACLs of one pod (`None`: not isolated in that direction).
#[derive(Debug, Clone, Default)]
pub struct PodAcls {
    /// Ingress ACL.
    pub ingress: Option<Arc<Acl>>,
    /// Egress ACL.
    pub egress: Option<Arc<Acl>>,
}

/// Verdict of [`PolicyTables::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Denied by the source pod's egress ACL.
    DenyEgress,
    /// Denied by the destination pod's ingress ACL.
    DenyIngress,
}

/// A new flow to decide (see [`PolicyTables::check_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowQuery {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol.
    pub proto: u8,
    /// Destination port (0 for protocols without ports).
    pub dport: u16,
}

/// The policy tables a worker reads: pod address -> ACLs.
#[derive(Debug, Clone, Default)]
pub struct PolicyTables {
    /// Generation (increments with every compile).
    pub generation: u64,
    pods: FastMap<Ipv4Addr, PodAcls>,
}

impl PolicyTables {
    /// Tables from pod ACLs (pods without any ACL may be left out).
    pub fn new(generation: u64, pods: impl IntoIterator<Item = (Ipv4Addr, PodAcls)>) -> Self {
        PolicyTables {
            generation,
            pods: pods
                .into_iter()
                .filter(|(_, a)| a.ingress.is_some() || a.egress.is_some())
                .collect(),
        }
    }

    /// True when no pod is isolated (the policy stage can be skipped).
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The ACLs of the pod with address `ip`.
    pub fn pod(&self, ip: Ipv4Addr) -> Option<&PodAcls> {
        self.pods.get(&ip)
    }

    /// Number of isolated pods.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Decide a new flow `src -> dst` (protocol, destination port), counting hits: the
    /// source's egress ACL, then the destination's ingress ACL. A pod's traffic to itself
    /// is always allowed.
    #[inline(always)]
    pub fn check(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, dport: u16) -> Verdict {
        if src == dst || self.pods.is_empty() {
            return Verdict::Allow;
        }
        if let Some(acl) = self.pods.get(&src).and_then(|p| p.egress.as_ref()) {
            if acl.check(proto, dport, dst).is_none() {
                return Verdict::DenyEgress;
            }
        }
        if let Some(acl) = self.pods.get(&dst).and_then(|p| p.ingress.as_ref()) {
            if acl.check(proto, dport, src).is_none() {
                return Verdict::DenyIngress;
            }
        }
        Verdict::Allow
    }

    /// Decide a vector of new flows, counting hits: `out[i]` is what
    /// [`PolicyTables::check`] says of `flows[i]`, with the same counts, but the lookups of
    /// the whole vector are overlapped (see the module documentation). `out` must be as
    /// long as `flows` (extra flows are left out).
    pub fn check_batch(&self, flows: &[FlowQuery], out: &mut [Verdict]) {
        if self.pods.is_empty() {
            out.fill(Verdict::Allow);
            return;
        }
        let mut acls: [(Option<&Acl>, Option<&Acl>); GROUP] = [(None, None); GROUP];
        let mut words = [(&0u64, &0u64); GROUP];
        let mut probes = [(Probe::default(), Probe::default()); GROUP];
        for (fs, os) in flows.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            for ((a, w), f) in acls.iter_mut().zip(words.iter_mut()).zip(fs) {
                *a = if f.src == f.dst {
                    (None, None)
                } else {
                    (
                        self.pods.get(&f.src).and_then(|p| p.egress.as_deref()),
                        self.pods.get(&f.dst).and_then(|p| p.ingress.as_deref()),
                    )
                };
                if let Some(e) = a.0 {
                    w.0 = e.classifier.word(f.proto, f.dport);
                    prefetch(w.0);
                }
                if let Some(i) = a.1 {
                    w.1 = i.classifier.word(f.proto, f.dport);
                    prefetch(w.1);
                }
            }
            for (((p, a), w), f) in probes.iter_mut().zip(&acls).zip(&words).zip(fs) {
                if let Some(e) = a.0 {
                    p.0 = e.classifier.start_word(*w.0, f.dst);
                }
                if let Some(i) = a.1 {
                    p.1 = i.classifier.start_word(*w.1, f.src);
                }
            }
            for (((o, p), a), f) in os.iter_mut().zip(&probes).zip(&acls).zip(fs) {
                *o = Verdict::Allow;
                if let Some(e) = a.0 {
                    if e.classifier.decide(&p.0, f.dst).is_none() {
                        e.denied.fetch_add(1, Ordering::Relaxed);
                        *o = Verdict::DenyEgress;
                        continue;
                    }
                }
                if let Some(i) = a.1 {
                    if i.classifier.decide(&p.1, f.src).is_none() {
                        i.denied.fetch_add(1, Ordering::Relaxed);
                        *o = Verdict::DenyIngress;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn pfx(s: &str) -> Ipv4Prefix {
        s.parse().unwrap()
    }

    fn rr(i: u32) -> RuleRef {
        RuleRef {
            namespace: "ns".into(),
            policy: "p".into(),
            index: i,
        }
    }

    #[test]
    fn except_and_host_union() {
        // Rule 0: 10.0.0.0/8 except 10.1.0.0/16 on tcp/80; rule 1: host 10.1.2.3 on any port.
        let spec = AclSpec {
            direction: Direction::Ingress,
            rules: vec![rr(0), rr(1)],
            entries: vec![
                Entry {
                    rule: 0,
                    ports: PortMatch::Range {
                        proto: PROTO_TCP,
                        lo: 80,
                        hi: 80,
                    },
                    addrs: Arc::new(AddrSet {
                        blocks: vec![Block {
                            cidr: pfx("10.0.0.0/8"),
                            except: vec![pfx("10.1.0.0/16")],
                        }],
                        hosts: vec![],
                    }),
                },
                Entry {
                    rule: 1,
                    ports: PortMatch::All,
                    addrs: Arc::new(AddrSet {
                        blocks: vec![],
                        hosts: vec![ip("10.1.2.3")],
                    }),
                },
            ],
        };
        let c = Classifier::build(&spec);
        assert_eq!(c.classify(PROTO_TCP, 80, ip("10.2.0.1")), Some(0));
        assert_eq!(c.classify(PROTO_TCP, 80, ip("10.1.0.1")), None);
        assert_eq!(c.classify(PROTO_TCP, 80, ip("10.1.2.3")), Some(1));
        assert_eq!(c.classify(PROTO_TCP, 81, ip("10.2.0.1")), None);
        assert_eq!(c.classify(PROTO_UDP, 80, ip("10.1.2.3")), Some(1));
        assert_eq!(c.classify(1, 0, ip("10.1.2.3")), Some(1));
        assert_eq!(c.classify(1, 0, ip("10.2.0.1")), None);
        assert_eq!(c.classify(PROTO_TCP, 80, ip("11.0.0.1")), None);
    }

    #[test]
    fn ranges_and_empty_acl() {
        let deny = AclSpec {
            direction: Direction::Egress,
            rules: vec![],
            entries: vec![],
        };
        let c = Classifier::build(&deny);
        assert_eq!(c.classify(PROTO_TCP, 80, ip("1.2.3.4")), None);
        let spec = AclSpec {
            direction: Direction::Egress,
            rules: vec![rr(0), rr(1)],
            entries: vec![
                Entry {
                    rule: 0,
                    ports: PortMatch::Range {
                        proto: PROTO_UDP,
                        lo: 1000,
                        hi: 2000,
                    },
                    addrs: Arc::new(AddrSet::all()),
                },
                Entry {
                    rule: 1,
                    ports: PortMatch::Proto { proto: PROTO_SCTP },
                    addrs: Arc::new(AddrSet::all()),
                },
            ],
        };
        let c = Classifier::build(&spec);
        for (p, port, want) in [
            (PROTO_UDP, 999, None),
            (PROTO_UDP, 1000, Some(0)),
            (PROTO_UDP, 1500, Some(0)),
            (PROTO_UDP, 2000, Some(0)),
            (PROTO_UDP, 2001, None),
            (PROTO_TCP, 1500, None),
            (PROTO_SCTP, 7, Some(1)),
        ] {
            assert_eq!(c.classify(p, port, ip("8.8.8.8")), want, "{p} {port}");
            assert_eq!(spec.reference_match(p, port, ip("8.8.8.8")), want);
        }
    }

    /// A large ACL (buckets overflow into their neighbours) and the tables' batched path
    /// against the scalar ones and the reference.
    #[test]
    fn large_acl_and_tables_batch() {
        let hosts: Vec<Ipv4Addr> = (0..3000u32)
            .map(|i| Ipv4Addr::from(0x0a01_0000 + i * 7))
            .collect();
        let spec = AclSpec {
            direction: Direction::Ingress,
            rules: (0..4).map(rr).collect(),
            entries: vec![
                Entry {
                    rule: 0,
                    ports: PortMatch::Range {
                        proto: PROTO_TCP,
                        lo: 80,
                        hi: 90,
                    },
                    addrs: Arc::new(AddrSet {
                        blocks: vec![],
                        hosts: hosts.clone(),
                    }),
                },
                Entry {
                    rule: 1,
                    ports: PortMatch::Proto { proto: PROTO_UDP },
                    addrs: Arc::new(AddrSet {
                        blocks: vec![Block {
                            cidr: pfx("10.1.0.0/16"),
                            except: vec![pfx("10.1.0.0/20"), pfx("10.1.128.0/24")],
                        }],
                        hosts: hosts[..100].to_vec(),
                    }),
                },
                Entry {
                    rule: 2,
                    ports: PortMatch::Range {
                        proto: PROTO_TCP,
                        lo: 85,
                        hi: 2000,
                    },
                    addrs: Arc::new(AddrSet {
                        blocks: vec![Block::new(pfx("10.1.64.0/18"))],
                        hosts: vec![],
                    }),
                },
                Entry {
                    rule: 3,
                    ports: PortMatch::All,
                    addrs: Arc::new(AddrSet {
                        blocks: vec![],
                        hosts: vec![ip("10.1.0.1")],
                    }),
                },
            ],
        };
        let acl = Acl::new(spec.clone());
        assert!(acl.classifier.buckets.iter().any(|b| b.overflow != 0));
        let packets: Vec<(u8, u16, Ipv4Addr)> = (0..20_000u32)
            .map(|k| {
                let proto = [PROTO_TCP, PROTO_UDP, 1][(k % 3) as usize];
                let port = 75 + (k * 13 % 40) as u16;
                (proto, port, Ipv4Addr::from(0x0a01_0000 + k * 3))
            })
            .collect();
        let mut out = vec![None; packets.len()];
        acl.check_batch(&packets, &mut out);
        for (&(proto, port, peer), o) in packets.iter().zip(&out) {
            assert_eq!(
                spec.reference_match(proto, port, peer),
                *o,
                "{proto} {port} {peer}"
            );
        }
        let allowed = out.iter().filter(|o| o.is_some()).count() as u64;
        assert_eq!(acl.hits().iter().sum::<u64>(), allowed);
        assert_eq!(acl.denied(), packets.len() as u64 - allowed);

        // Tables: pod a (egress and ingress), pod b (ingress only), pod c (not isolated).
        let tables = |acl: &Arc<Acl>| {
            PolicyTables::new(
                1,
                [
                    (
                        ip("10.1.0.1"),
                        PodAcls {
                            ingress: Some(acl.clone()),
                            egress: Some(acl.clone()),
                        },
                    ),
                    (
                        ip("10.1.0.7"),
                        PodAcls {
                            ingress: Some(acl.clone()),
                            egress: None,
                        },
                    ),
                ],
            )
        };
        let (one, batch) = (Arc::new(Acl::new(spec.clone())), Arc::new(Acl::new(spec)));
        let (t1, tb) = (tables(&one), tables(&batch));
        let pods = [
            ip("10.1.0.1"),
            ip("10.1.0.7"),
            ip("10.1.0.9"),
            ip("10.1.64.5"),
        ];
        let flows: Vec<FlowQuery> = (0..5000usize)
            .map(|k| FlowQuery {
                src: pods[k % 4],
                dst: pods[k / 4 % 4],
                proto: [PROTO_TCP, PROTO_UDP, 1][k % 3],
                dport: 78 + (k * 7 % 20) as u16,
            })
            .collect();
        let mut verdicts = vec![Verdict::Allow; flows.len()];
        tb.check_batch(&flows, &mut verdicts);
        let mut seen = BTreeSet::new();
        for (f, v) in flows.iter().zip(&verdicts) {
            assert_eq!(t1.check(f.src, f.dst, f.proto, f.dport), *v, "{f:?}");
            seen.insert(format!("{v:?}"));
        }
        assert_eq!(seen.len(), 3, "every verdict occurs: {seen:?}");
        assert_eq!(one.hits(), batch.hits());
        assert_eq!(one.denied(), batch.denied());
    }

    proptest::proptest! {
        #[test]
        fn classifier_matches_reference(
            rules in proptest::collection::vec(
                (0u8..4, 0u16..40, 0u16..8, 0u8..3, proptest::collection::vec(0u8..16, 0..3)), 0..8),
            probes in proptest::collection::vec((0u8..4, 0u16..50, 0u8..16), 1..64),
        ) {
            let protos = [PROTO_TCP, PROTO_UDP, PROTO_SCTP, 1];
            let mut entries = Vec::new();
            for (i, (pk, lo, w, ak, hosts)) in rules.iter().enumerate() {
                let ports = match pk {
                    0 => PortMatch::All,
                    1 => PortMatch::Proto { proto: protos[(*lo % 3) as usize] },
                    _ => PortMatch::Range { proto: protos[(*lo % 3) as usize], lo: *lo, hi: lo + w },
                };
                let addrs = match ak {
                    0 => AddrSet::all(),
                    1 => AddrSet { blocks: vec![Block { cidr: pfx("10.0.0.0/28"), except: vec![pfx("10.0.0.4/30")] }], hosts: vec![] },
                    _ => {
                        let mut h: Vec<Ipv4Addr> = hosts.iter().map(|x| Ipv4Addr::new(10, 0, 0, *x)).collect();
                        h.sort(); h.dedup();
                        AddrSet { blocks: vec![], hosts: h }
                    }
                };
                entries.push(Entry { rule: i as u32, ports, addrs: Arc::new(addrs) });
            }
            let spec = AclSpec { direction: Direction::Ingress, rules: (0..entries.len() as u32).map(rr).collect(), entries };
            let c = Classifier::build(&spec);
            let packets: Vec<(u8, u16, Ipv4Addr)> = probes
                .iter()
                .map(|&(p, port, h)| (protos[p as usize], port, Ipv4Addr::new(10, 0, 0, h)))
                .collect();
            for &(proto, port, peer) in &packets {
                proptest::prop_assert_eq!(c.classify(proto, port, peer), spec.reference_match(proto, port, peer));
            }
            // The batched path decides and counts exactly as the scalar one.
            let (one, batch) = (Acl::new(spec.clone()), Acl::new(spec.clone()));
            let mut out = vec![Some(u32::MAX); packets.len()];
            batch.check_batch(&packets, &mut out);
            for (&(proto, port, peer), o) in packets.iter().zip(&out) {
                proptest::prop_assert_eq!(one.check(proto, port, peer), *o);
                proptest::prop_assert_eq!(spec.reference_match(proto, port, peer), *o);
            }
            proptest::prop_assert_eq!(one.hits(), batch.hits());
            proptest::prop_assert_eq!(one.denied(), batch.denied());
            let allowed = out.iter().filter(|o| o.is_some()).count() as u64;
            proptest::prop_assert_eq!(batch.hits().iter().sum::<u64>(), allowed);
            proptest::prop_assert_eq!(batch.denied(), packets.len() as u64 - allowed);
        }
    }
}
