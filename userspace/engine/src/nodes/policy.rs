//! `ip4-policy`: NetworkPolicy enforcement (per-pod ingress and egress ACLs).
//!
//! Placement: after `ip4-nat` (so a service flow is checked against its backend, not the
//! VIP) and before `ip4-lookup`. Only the first packet of a flow is classified:
//! - packets `ip4-nat` matched to a session that has seen a reply (or in the reply
//!   direction) carry [`FLAG_CT_ESTABLISHED`] and pass: replies of allowed service
//!   connections and their later packets never re-enter the classifier;
//! - other flows (pod to pod without translation) are remembered in this node's own flow
//!   table once allowed; packets of the flow in either direction then pass (replies of an
//!   allowed connection pass both ways), as do ICMP errors quoting it;
//! - a pod's traffic to itself always passes, also through a service that picked the pod
//!   itself as backend (hairpin: SNATed to the service address; `ip4-nat` flags it
//!   [`crate::buffer::FLAG_SELF`]).
//!
//! A new flow is checked against the source pod's egress ACL, then the destination pod's
//! ingress ACL; a denial drops it with the reason `policy-denied-egress` or
//! `policy-denied-ingress` (counters and traces). The new flows of a vector are classified
//! together ([`ferroplane_tables::policy::PolicyTables::check_batch`], which overlaps the
//! memory latency of their lookups). The result is the same as deciding the packets one by
//! one in order: a packet whose flow (either direction, or the flow an ICMP error quotes)
//! is related to a flow already waiting for the batch in this vector is set aside and
//! decided after the batch, in order, as it would have been after its predecessor.
//!
//! **Established connections when a policy changes**: a connection allowed before the
//! change keeps working (its flow entry, or its replied NAT session, is kept) until it is
//! idle for its timeout (TCP 10 minutes, other protocols 60 s) or, for TCP, until it
//! closes; every *new* connection is decided by the new policy. This is what conntrack-based
//! enforcement (iptables, Calico, Cilium) does; `ferroctl clear-flows`-style revocation is
//! not offered.

use std::time::Instant;

use ferroplane_io::{BufIdx, FrameMemory};
use ferroplane_tables::hash::FastMap;
use ferroplane_tables::policy::{Acl, FlowQuery, PolicyTables, Verdict};

use crate::buffer::{FLAG_CT_ESTABLISHED, FLAG_SELF};
use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::{AclOutcome, PolicyStep, TraceData};
use crate::{node_errors, node_nexts};

use super::{be16, ip_at};

node_nexts! {
    /// Next arcs of `ip4-policy`.
    pub enum PolicyNext { Drop = "error-drop", Lookup = "ip4-lookup" }
}

node_errors! {
    /// Error reasons of `ip4-policy`.
    pub enum PolicyError {
        DeniedIngress = (Error, "policy-denied-ingress", "NetworkPolicy: denied by the destination pod's ingress policy"),
        DeniedEgress = (Error, "policy-denied-egress", "NetworkPolicy: denied by the source pod's egress policy"),
        Allowed = (Info, "policy-allowed", "NetworkPolicy: new flows of isolated pods allowed by a rule"),
        FlowsFull = (Info, "policy-flows-full", "NetworkPolicy flow table full: allowed flow not remembered (its replies are classified)"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "ip4-policy",
    nexts: PolicyNext::NAMES,
    errors: PolicyError::INFO,
};

/// Idle timeout of TCP flows (ms).
pub const TCP_TIMEOUT_MS: u64 = 600_000;
/// Idle timeout of other flows (ms).
pub const OTHER_TIMEOUT_MS: u64 = 60_000;
/// Flows remembered per worker.
pub const MAX_FLOWS: usize = 1 << 18;

#[inline(always)]
fn pack(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> u128 {
    ((src as u128) << 96)
        | ((dst as u128) << 64)
        | ((sport as u128) << 48)
        | ((dport as u128) << 32)
        | proto as u128
}

#[inline(always)]
fn reverse(k: u128) -> u128 {
    let src = (k >> 96) as u32;
    let dst = (k >> 64) as u32;
    let sport = (k >> 48) as u16;
    let dport = (k >> 32) as u16;
    pack(dst, src, dport, sport, k as u8)
}

/// The flow tuple of the IPv4 packet `l3` (ICMP echo: the id as source port of requests,
/// destination port of replies), and for ICMP errors the tuple of the quoted packet.
#[inline(always)]
fn tuple(l3: &[u8]) -> Option<(u128, u16, Option<u128>)> {
    if l3.len() < 20 {
        return None;
    }
    let hl = ((l3[0] & 0x0f) as usize) * 4;
    let proto = l3[9];
    let src = u32::from(ip_at(l3, 12));
    let dst = u32::from(ip_at(l3, 16));
    let first = be16(l3, 6) & 0x1fff == 0;
    let (sport, dport, quoted) = match proto {
        6 | 17 | 132 if first => (be16(l3, hl), be16(l3, hl + 2), None),
        1 if first && l3.len() >= hl + 8 => match l3[hl] {
            8 => (be16(l3, hl + 4), 0, None),
            0 => (0, be16(l3, hl + 4), None),
            3 | 4 | 5 | 11 | 12 => (0, 0, quoted_tuple(l3.get(hl + 8..).unwrap_or(&[]))),
            _ => (0, 0, None),
        },
        _ => (0, 0, None),
    };
    Some((pack(src, dst, sport, dport, proto), dport, quoted))
}

/// A non-first fragment tagged by `ip4-frag` is decided on its first fragment's ports (as
/// `ip4-nat` left them), so it gets its first fragment's verdict.
#[inline(always)]
fn fragment_ports(m: &crate::buffer::BufMeta, key: u128, dport: u16) -> (u128, u16) {
    if m.flags & crate::buffer::FLAG_FRAG_TAIL == 0 {
        return (key, dport);
    }
    let (sport, dport) = m.frag_ports;
    (
        pack(
            (key >> 96) as u32,
            (key >> 64) as u32,
            sport,
            dport,
            key as u8,
        ),
        dport,
    )
}

fn quoted_tuple(q: &[u8]) -> Option<u128> {
    let (k, _, _) = tuple(q)?;
    Some(k)
}

/// What `acl` says about `(proto, port, peer)`, for a trace (does not count).
fn acl_outcome(acl: Option<&Acl>, proto: u8, port: u16, peer: std::net::Ipv4Addr) -> AclOutcome {
    let Some(acl) = acl else {
        return AclOutcome::NotIsolated;
    };
    match acl.classifier.classify(proto, port, peer) {
        Some(i) => match acl.spec.rules.get(i as usize) {
            Some(r) => AclOutcome::Rule {
                policy: format!("{}/{}", r.namespace, r.policy),
                index: r.index,
                acl_rule: i,
            },
            None => AclOutcome::Rule {
                policy: String::new(),
                index: i,
                acl_rule: i,
            },
        },
        None => {
            let mut policies: Vec<String> = acl
                .spec
                .rules
                .iter()
                .map(|r| format!("{}/{}", r.namespace, r.policy))
                .collect();
            policies.dedup();
            AclOutcome::DefaultDeny { policies }
        }
    }
}

/// The trace record of a packet of flow `key` (traced packets only). `verdict`: the
/// classifier's decision when the flow was classified.
fn trace_record(
    tables: &PolicyTables,
    key: u128,
    dport: u16,
    step: PolicyStep,
    verdict: Option<Verdict>,
) -> TraceData {
    let src = std::net::Ipv4Addr::from((key >> 96) as u32);
    let dst = std::net::Ipv4Addr::from((key >> 64) as u32);
    let proto = key as u8;
    let (egress, ingress) = match verdict {
        None => (AclOutcome::NotChecked, AclOutcome::NotChecked),
        Some(v) => {
            let e = tables.pod(src).and_then(|p| p.egress.as_deref());
            let i = tables.pod(dst).and_then(|p| p.ingress.as_deref());
            let mut eo = acl_outcome(e, proto, dport, dst);
            let mut io = acl_outcome(i, proto, dport, src);
            // The verdict in force decides; the outcomes explain it.
            match v {
                Verdict::DenyEgress => {
                    io = AclOutcome::NotChecked;
                    if !matches!(eo, AclOutcome::DefaultDeny { .. }) {
                        eo = AclOutcome::DefaultDeny { policies: vec![] };
                    }
                }
                Verdict::DenyIngress => {
                    if !matches!(io, AclOutcome::DefaultDeny { .. }) {
                        io = AclOutcome::DefaultDeny { policies: vec![] };
                    }
                }
                Verdict::Allow => {}
            }
            (eo, io)
        }
    };
    TraceData::Policy {
        step,
        src,
        dst,
        proto,
        dport,
        egress,
        ingress,
    }
}

/// A packet waiting for a decision (batched or set aside).
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Index in the vector.
    i: usize,
    /// Flow tuple.
    key: u128,
    /// Destination port.
    dport: u16,
    /// Tuple quoted by an ICMP error.
    quoted: Option<u128>,
    /// Whether the flow's direction is restricted (see [`Ip4Policy::process`]).
    isolated: bool,
}

/// Flows (tuples, their reverses, quoted tuples) of the packets waiting in this vector: a
/// 4,096-bit filter, so a hit may be false (the packet is then only decided later, still
/// exactly), a miss is certain.
struct Related([u64; 64]);

impl Related {
    #[inline(always)]
    fn bit(k: u128) -> usize {
        let x = (k as u64) ^ ((k >> 64) as u64).rotate_left(29);
        (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize
    }

    #[inline(always)]
    fn test(&self, k: u128) -> bool {
        let b = Self::bit(k);
        self.0[b / 64] & (1 << (b % 64)) != 0
    }

    #[inline(always)]
    fn set(&mut self, k: u128) {
        let b = Self::bit(k);
        self.0[b / 64] |= 1 << (b % 64);
    }

    /// Whether the packet's flows may be related to a waiting one.
    #[inline(always)]
    fn any(&self, key: u128, quoted: Option<u128>) -> bool {
        self.test(key) || self.test(reverse(key)) || quoted.is_some_and(|q| self.test(q))
    }

    /// Record the flows of a waiting packet.
    #[inline(always)]
    fn add(&mut self, key: u128, quoted: Option<u128>) {
        self.set(key);
        self.set(reverse(key));
        if let Some(q) = quoted {
            self.set(q);
        }
    }
}

/// The policy enforcement node.
#[derive(Debug)]
pub struct Ip4Policy {
    flows: FastMap<u128, u64>,
    start: Instant,
    /// New flows of the current vector, classified as one batch.
    batch: Vec<Pending>,
    /// Their queries and verdicts.
    queries: Vec<FlowQuery>,
    verdicts: Vec<Verdict>,
    /// Packets related to a batched one, decided after the batch.
    later: Vec<Pending>,
}

impl Default for Ip4Policy {
    fn default() -> Self {
        Ip4Policy {
            flows: FastMap::default(),
            start: Instant::now(),
            batch: Vec::new(),
            queries: Vec::new(),
            verdicts: Vec::new(),
            later: Vec::new(),
        }
    }
}

/// Counts of one vector.
#[derive(Default)]
struct Counts {
    allowed: u64,
    unremembered: u64,
}

impl Ip4Policy {
    /// Number of flows remembered.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    #[inline(always)]
    fn known(&mut self, k: u128, now: u64) -> bool {
        match self.flows.get_mut(&k) {
            Some(exp) if *exp > now => {
                let t = if (k as u8) == 6 {
                    TCP_TIMEOUT_MS
                } else {
                    OTHER_TIMEOUT_MS
                };
                *exp = now + t;
                true
            }
            Some(_) => {
                self.flows.remove(&k);
                false
            }
            None => false,
        }
    }

    fn remember(&mut self, k: u128, now: u64) -> bool {
        if self.flows.len() >= MAX_FLOWS {
            self.flows.retain(|_, e| *e > now);
            if self.flows.len() >= MAX_FLOWS {
                return false;
            }
        }
        let t = if (k as u8) == 6 {
            TCP_TIMEOUT_MS
        } else {
            OTHER_TIMEOUT_MS
        };
        self.flows.insert(k, now + t);
        true
    }

    /// Look a packet's flows up in the flow table (in vector order, or after the batch for
    /// a packet related to a batched one): `true` when it needs the classifier; otherwise
    /// it is handled here (a known flow passes; a flow only whose replies are restricted is
    /// remembered and passes).
    #[inline(always)]
    fn unknown<M: FrameMemory>(
        &mut self,
        cx: &mut Ctx<'_, M>,
        tables: &PolicyTables,
        b: BufIdx,
        p: &Pending,
        now: u64,
        n: &mut Counts,
    ) -> bool {
        let traced = cx.traced(b);
        if self.known(p.key, now)
            || self.known(reverse(p.key), now)
            || p.quoted.is_some_and(|q| self.known(q, now))
        {
            if traced {
                cx.trace(
                    b,
                    trace_record(tables, p.key, p.dport, PolicyStep::KnownFlow, None),
                );
            }
            return false;
        }
        if !p.isolated {
            if traced {
                cx.trace(
                    b,
                    trace_record(tables, p.key, p.dport, PolicyStep::NotIsolated, None),
                );
            }
            // Nothing restricts this direction, but the replies would be denied by
            // the other pod's policy: remember the flow so they pass (stateful).
            if !self.remember(p.key, now) {
                n.unremembered += 1;
            }
            return false;
        }
        true
    }

    /// Apply the classifier's verdict on a packet.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn apply<M: FrameMemory>(
        &mut self,
        cx: &mut Ctx<'_, M>,
        tables: &PolicyTables,
        b: BufIdx,
        p: &Pending,
        verdict: Verdict,
        now: u64,
        next: &mut u16,
        n: &mut Counts,
    ) {
        if cx.traced(b) {
            cx.trace(
                b,
                trace_record(
                    tables,
                    p.key,
                    p.dport,
                    PolicyStep::Classified,
                    Some(verdict),
                ),
            );
        }
        match verdict {
            Verdict::Allow => {
                n.allowed += 1;
                if !self.remember(p.key, now) {
                    n.unremembered += 1;
                }
            }
            Verdict::DenyEgress => *next = cx.drop_with(b, PolicyError::DeniedEgress),
            Verdict::DenyIngress => *next = cx.drop_with(b, PolicyError::DeniedIngress),
        }
    }
}

#[inline(always)]
fn query(key: u128, dport: u16) -> FlowQuery {
    FlowQuery {
        src: std::net::Ipv4Addr::from((key >> 96) as u32),
        dst: std::net::Ipv4Addr::from((key >> 64) as u32),
        proto: key as u8,
        dport,
    }
}

impl<M: FrameMemory> Node<M> for Ip4Policy {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        nexts.fill(PolicyNext::Lookup.into());
        let tables = cx.snap.policy.clone();
        if tables.is_empty() {
            return;
        }
        let now = self.start.elapsed().as_millis() as u64;
        let mut n = Counts::default();
        let mut related = Related([0; 64]);
        self.batch.clear();
        self.queries.clear();
        self.later.clear();
        for (i, &b) in bufs.iter().enumerate() {
            let traced = cx.traced(b);
            let established = cx.meta(b).flags & FLAG_CT_ESTABLISHED != 0;
            if established && !traced {
                continue;
            }
            let pkt = cx.packet(b);
            let Some((key, dport, quoted)) = pkt.get(14..).and_then(tuple) else {
                continue;
            };
            let (key, dport) = fragment_ports(&cx.meta(b), key, dport);
            let record = |step, verdict| trace_record(&tables, key, dport, step, verdict);
            if established {
                cx.trace(b, record(PolicyStep::Established, None));
                continue;
            }
            let src = std::net::Ipv4Addr::from((key >> 96) as u32);
            let dst = std::net::Ipv4Addr::from((key >> 64) as u32);
            // A pod's traffic to itself, directly or through a service (hairpin).
            if src == dst || cx.meta(b).flags & FLAG_SELF != 0 {
                if traced {
                    cx.trace(b, record(PolicyStep::SelfTraffic, None));
                }
                continue;
            }
            let isolated = tables.pod(src).is_some_and(|p| p.egress.is_some())
                || tables.pod(dst).is_some_and(|p| p.ingress.is_some());
            // Whether this flow's replies would be classified (the source pod isolated for
            // ingress or the destination pod for egress).
            let replies_isolated = tables.pod(dst).is_some_and(|p| p.egress.is_some())
                || tables.pod(src).is_some_and(|p| p.ingress.is_some());
            if !isolated && !replies_isolated {
                if traced {
                    cx.trace(b, record(PolicyStep::NotIsolated, None));
                }
                continue;
            }
            let p = Pending {
                i,
                key,
                dport,
                quoted,
                isolated,
            };
            // Related to a flow waiting for the batch: decided after it, in order.
            if related.any(key, quoted) {
                related.add(key, quoted);
                self.later.push(p);
                continue;
            }
            if self.unknown(cx, &tables, b, &p, now, &mut n) {
                related.add(key, quoted);
                self.batch.push(p);
                self.queries.push(query(key, dport));
            }
        }
        if !self.batch.is_empty() {
            self.verdicts.clear();
            self.verdicts.resize(self.queries.len(), Verdict::Allow);
            tables.check_batch(&self.queries, &mut self.verdicts);
            let (batch, verdicts) = (
                std::mem::take(&mut self.batch),
                std::mem::take(&mut self.verdicts),
            );
            for (p, &v) in batch.iter().zip(&verdicts) {
                if let (Some(&b), Some(next)) = (bufs.get(p.i), nexts.get_mut(p.i)) {
                    self.apply(cx, &tables, b, p, v, now, next, &mut n);
                }
            }
            (self.batch, self.verdicts) = (batch, verdicts);
        }
        let later = std::mem::take(&mut self.later);
        for p in &later {
            let (Some(&b), Some(next)) = (bufs.get(p.i), nexts.get_mut(p.i)) else {
                continue;
            };
            if self.unknown(cx, &tables, b, p, now, &mut n) {
                let q = query(p.key, p.dport);
                let v = tables.check(q.src, q.dst, q.proto, q.dport);
                self.apply(cx, &tables, b, p, v, now, next, &mut n);
            }
        }
        self.later = later;
        if n.allowed > 0 {
            cx.count(PolicyError::Allowed, n.allowed);
        }
        if n.unremembered > 0 {
            cx.count(PolicyError::FlowsFull, n.unremembered);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_and_reverse() {
        let f = crate::testutil::udp_frame(
            [0; 6],
            [0; 6],
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            64,
            8,
        );
        let (k, dport, q) = tuple(&f[14..]).unwrap();
        assert_eq!(q, None);
        assert_eq!(k as u8, 17);
        assert_eq!(dport, be16(&f[14..], 22));
        assert_eq!(reverse(reverse(k)), k);
        assert_eq!((reverse(k) >> 96) as u32, u32::from_be_bytes([10, 0, 0, 2]));
    }
}
