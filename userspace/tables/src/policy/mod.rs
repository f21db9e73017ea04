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
//!
//! Files: `mod.rs` (what the control plane compiles: ACL specs, port matches, address
//! sets), `classifier.rs` (the port classes and the prefix hash table), `tables.rs`
//! (shared ACLs with counters, the per-pod tables and their batch check).

mod classifier;
mod tables;
#[cfg(test)]
mod tests;

pub use classifier::Classifier;
pub use tables::{Acl, FlowQuery, PodAcls, PolicyTables, Verdict};

use std::net::Ipv4Addr;
use std::sync::Arc;

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
