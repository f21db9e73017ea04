//! The classifier of one ACL: a two-level port map per protocol giving each port its
//! class, and one hash table keyed by (class, prefix) of 64-byte, three-slot buckets that
//! hold each slot's rule and hit counter (see the module docs of `policy`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    AclSpec, Block, Entry, PortMatch, DENY, PORT_PROTOS, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use crate::hash::FastMap;
use crate::prefix::Ipv4Prefix;

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
pub(super) struct Bucket {
    /// [`slot_key`] of each slot, 0 when empty.
    keys: [u64; WAYS],
    /// Rule allowing the slot's prefix, or [`DENY`].
    rules: [u32; WAYS],
    /// Non-zero when a key whose home is this bucket (or an earlier one) was placed in a
    /// later bucket: a lookup that misses here goes on to the next bucket only then.
    pub(super) overflow: u32,
    /// Packets allowed by each slot (per slot rather than per rule: the counter is found
    /// with the slot; per-rule counts are sums).
    hits: [AtomicU64; WAYS],
}

/// Hint the CPU to load the cache line of `r` (a no-op where there is no such hint).
#[inline(always)]
pub(super) fn prefetch<T>(r: &T) {
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
pub(super) struct Probe {
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
pub(super) const GROUP: usize = 16;

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
    pub(super) fn word(&self, port: u16) -> &u64 {
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
    /// average at most one of the three slots of a bucket is used). (Read by the tests.)
    pub(super) buckets: Box<[Bucket]>,
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
    pub(super) fn word(&self, proto: u8, port: u16) -> &u64 {
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
    pub(super) fn start_word(&self, w: u64, peer: Ipv4Addr) -> Probe {
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
    pub(super) fn decide(&self, p: &Probe, peer: Ipv4Addr) -> Option<u32> {
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
    pub(super) fn check(&self, proto: u8, port: u16, peer: Ipv4Addr) -> Option<u32> {
        self.decide(&self.start(proto, port, peer), peer)
    }

    /// Packets allowed per rule (`rules` entries), summed over the slots.
    pub(super) fn hits(&self, rules: usize) -> Vec<u64> {
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

    pub(super) fn clear(&self) {
        for b in self.buckets.iter() {
            for h in &b.hits {
                h.store(0, Ordering::Relaxed);
            }
        }
    }
}
