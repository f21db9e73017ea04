//! NetworkPolicy enforcement tables: compiled per-pod ACLs and their classifier.
//!
//! The control plane (crate `ferroplane-policy`) compiles Kubernetes NetworkPolicies into
//! one [`AclSpec`] per pod and direction: a list of [`Entry`] (rule, ports, address set).
//! Pods whose effective policy is the same share one [`Acl`] (interned by its spec).
//!
//! The classifier answers "which rule allows (protocol, port, peer address)" with a cost
//! that does not grow with the number of rules:
//! 1. the destination port selects a *port class* through a two-level table per protocol
//!    (256 chunks of 256 ports; a chunk where every port has the same class needs no leaf),
//!    so a lookup is at most two loads whatever the number of ports and ranges;
//! 2. the port class owns a longest-prefix-match table over the peer address (one hash
//!    probe per distinct prefix length, longest first; pod peers are all /32), whose value
//!    is the first rule allowing that address range at those ports.
//!
//! Set semantics (ipBlock `except`, unions of peers) are resolved at build time: an address
//! takes the value of its longest matching *interesting* prefix (a block, an exception or a
//! pod address), and that value is computed from the blocks containing that prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::hash::FastMap;
use crate::prefix::{mask, Ipv4Prefix};

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

/// Longest-prefix match over peer addresses: one hash table per prefix length in use.
#[derive(Debug, Clone, Default)]
struct Lpm {
    /// (mask, table), longest prefix first.
    levels: Vec<(u32, FastMap<u32, u32>)>,
}

impl Lpm {
    #[inline(always)]
    fn lookup(&self, ip: u32) -> u32 {
        for (m, t) in &self.levels {
            if let Some(v) = t.get(&(ip & m)) {
                return *v;
            }
        }
        DENY
    }

    fn build(entries: &[&Entry]) -> Lpm {
        // First rule per host; blocks scanned per interesting prefix.
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
        let mut by_len: BTreeMap<u8, FastMap<u32, u32>> = BTreeMap::new();
        for p in interesting {
            let mut v = DENY;
            if p.len() == 32 {
                if let Some(r) = host_first.get(&p.addr_u32()) {
                    v = *r;
                }
            }
            if let Some((r, _)) = blocks.iter().find(|(_, b)| b.covers(&p)) {
                v = v.min(*r);
            }
            by_len.entry(p.len()).or_default().insert(p.addr_u32(), v);
        }
        Lpm {
            levels: by_len
                .into_iter()
                .rev()
                .map(|(len, t)| (mask(len), t))
                .collect(),
        }
    }
}

const LEAF: u32 = 1 << 31;

/// Port -> class for one protocol: 256 chunks of 256 ports.
#[derive(Debug, Clone)]
enum PortMap {
    /// Every port has this class.
    Uniform(u32),
    /// Two levels: `top[port >> 8]` is a class, or `LEAF | leaf index`.
    Table {
        top: Box<[u32; 256]>,
        leaves: Vec<[u32; 256]>,
    },
}

impl PortMap {
    #[inline(always)]
    fn class(&self, port: u16) -> u32 {
        match self {
            PortMap::Uniform(c) => *c,
            PortMap::Table { top, leaves } => {
                let t = top[(port >> 8) as usize];
                if t & LEAF == 0 {
                    t
                } else {
                    match leaves.get((t & !LEAF) as usize) {
                        Some(l) => l[(port & 0xff) as usize],
                        None => 0,
                    }
                }
            }
        }
    }
}

/// The classifier of one ACL.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// Port maps for TCP, UDP, SCTP.
    ports: [PortMap; 3],
    /// Class of other protocols (ICMP, ...): entries allowing every protocol.
    other: u32,
    /// Address tables per class.
    classes: Vec<Lpm>,
}

impl Classifier {
    /// Build the classifier of `spec`.
    pub fn build(spec: &AclSpec) -> Classifier {
        let mut classes: Vec<Lpm> = Vec::new();
        let mut class_ids: FastMap<Vec<u32>, u32> = FastMap::default();
        let mut intern = |set: Vec<u32>, classes: &mut Vec<Lpm>| -> u32 {
            if let Some(c) = class_ids.get(&set) {
                return *c;
            }
            let es: Vec<&Entry> = set.iter().map(|&i| &spec.entries[i as usize]).collect();
            classes.push(Lpm::build(&es));
            let id = (classes.len() - 1) as u32;
            class_ids.insert(set, id);
            id
        };
        let all: Vec<u32> = (0..spec.entries.len() as u32)
            .filter(|&i| spec.entries[i as usize].ports == PortMatch::All)
            .collect();
        let other = intern(all.clone(), &mut classes);
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
                return PortMap::Uniform(intern(base, &mut classes));
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
            let mut flat = vec![0u32; 65536];
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
                let c = intern(set, &mut classes);
                flat[s as usize..e as usize].fill(c);
            }
            let mut top = Box::new([0u32; 256]);
            let mut leaves = Vec::new();
            for (chunk, t) in flat.chunks(256).zip(top.iter_mut()) {
                if chunk.iter().all(|c| *c == chunk[0]) {
                    *t = chunk[0];
                } else {
                    let mut leaf = [0u32; 256];
                    leaf.copy_from_slice(chunk);
                    *t = LEAF | leaves.len() as u32;
                    leaves.push(leaf);
                }
            }
            PortMap::Table { top, leaves }
        });
        Classifier {
            ports,
            other,
            classes,
        }
    }

    /// The rule (index into the ACL's rules) allowing `(proto, port, peer)`, or `None`.
    #[inline(always)]
    pub fn classify(&self, proto: u8, port: u16, peer: Ipv4Addr) -> Option<u32> {
        let class = match proto {
            PROTO_TCP => self.ports[0].class(port),
            PROTO_UDP => self.ports[1].class(port),
            PROTO_SCTP => self.ports[2].class(port),
            _ => self.other,
        };
        let v = match self.classes.get(class as usize) {
            Some(l) => l.lookup(u32::from(peer)),
            None => DENY,
        };
        (v != DENY).then_some(v)
    }

    /// Number of port classes (for display and tests).
    pub fn class_count(&self) -> usize {
        self.classes.len()
    }
}

/// A compiled ACL with its counters; shared by every pod with the same spec.
#[derive(Debug)]
pub struct Acl {
    /// Content.
    pub spec: AclSpec,
    /// The classifier.
    pub classifier: Classifier,
    /// Packets allowed per rule.
    hits: Box<[AtomicU64]>,
    /// Packets denied (no rule allowed them).
    denied: AtomicU64,
}

impl Acl {
    /// Compile `spec`.
    pub fn new(spec: AclSpec) -> Acl {
        let classifier = Classifier::build(&spec);
        let hits = (0..spec.rules.len()).map(|_| AtomicU64::new(0)).collect();
        Acl {
            spec,
            classifier,
            hits,
            denied: AtomicU64::new(0),
        }
    }

    /// Classify and count: `Some(rule)` when allowed.
    #[inline(always)]
    pub fn check(&self, proto: u8, port: u16, peer: Ipv4Addr) -> Option<u32> {
        let r = self.classifier.classify(proto, port, peer);
        match r {
            Some(i) => {
                if let Some(h) = self.hits.get(i as usize) {
                    h.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.denied.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    /// Packets allowed by each rule.
    pub fn hits(&self) -> Vec<u64> {
        self.hits
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .collect()
    }

    /// Packets denied.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// Reset the counters.
    pub fn clear_counters(&self) {
        for h in self.hits.iter() {
            h.store(0, Ordering::Relaxed);
        }
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
            for (p, port, h) in probes {
                let proto = protos[p as usize];
                let peer = Ipv4Addr::new(10, 0, 0, h);
                proptest::prop_assert_eq!(c.classify(proto, port, peer), spec.reference_match(proto, port, peer));
            }
        }
    }
}
