//! What the data path checks: compiled ACLs shared by the pods with the same spec (with
//! their counters), each pod's ingress and egress ACLs, and the check of one flow or a
//! batch of flows (prefetching in stages, VPP style).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::classifier::{prefetch, Probe, GROUP};
use super::{AclSpec, Classifier};
use crate::hash::FastMap;

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
