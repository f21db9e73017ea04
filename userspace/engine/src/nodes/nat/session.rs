//! Session lookup: the per-packet loop of `ip4-nat`. Each packet is classified into its
//! flow key (TCP, UDP, ICMP echo; ICMP errors go to [`super::icmp_error`]; non-first
//! fragments carry the ports `ip4-frag` took from their first fragment), its session is
//! looked up (one probe), a miss creates the session of a new flow
//! ([`Ip4Nat::new_flow`]: a service frontend, masquerade, tracking) and the session's
//! translation is applied ([`super::translate`]).

use std::any::Any;
use std::sync::Arc;

use ferroplane_io::{BufIdx, FrameMemory};
use ferroplane_tables::conntrack::{TCP_ACK, TCP_SYN};
use ferroplane_tables::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use ferroplane_tables::{Conntrack, Dir, FlowKey, NatKind};

use crate::interfaces::IfKind;
use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::{NatStep, TraceData};

use super::super::{be16, ip_at};
use super::icmp_error::translate_icmp_error;
use super::service::trace_new_flow;
use super::translate::{build_rst, rewrite};
use super::{lock, Decision, Env, Ip4Nat, NatError, NatNext, Origin, Parsed, INFO};

/// What kind of packet, for NAT purposes.
enum Class {
    /// TCP, UDP or ICMP echo: has a tuple.
    Flow(Parsed),
    /// An ICMP error quoting a packet.
    IcmpError(usize),
    /// Nothing to translate.
    Other,
}

#[inline(always)]
fn classify(l3: &[u8], m: &crate::buffer::BufMeta) -> Class {
    if l3.len() < 20 {
        return Class::Other;
    }
    let hl = ((l3[0] & 0x0f) as usize) * 4;
    let frag = be16(l3, 6) & 0x1fff;
    if frag != 0 {
        return classify_tail(l3, hl, m);
    }
    let proto = l3[9];
    let (src, dst) = (ip_at(l3, 12), ip_at(l3, 16));
    let mut key = FlowKey {
        src,
        dst,
        sport: 0,
        dport: 0,
        proto,
    };
    match proto {
        PROTO_TCP if l3.len() >= hl + 20 => {
            key.sport = be16(l3, hl);
            key.dport = be16(l3, hl + 2);
            let flags = (l3[hl + 13] as u16) & 0x3f;
            Class::Flow(Parsed {
                hl,
                key,
                tcp_flags: flags,
                icmp_type: 0,
                tail: false,
            })
        }
        PROTO_UDP if l3.len() >= hl + 8 => {
            key.sport = be16(l3, hl);
            key.dport = be16(l3, hl + 2);
            Class::Flow(Parsed {
                hl,
                key,
                tcp_flags: 0,
                icmp_type: 0,
                tail: false,
            })
        }
        PROTO_ICMP if l3.len() >= hl + 8 => {
            let t = l3[hl];
            let id = be16(l3, hl + 4);
            match t {
                8 => key.sport = id,
                0 => key.dport = id,
                3 | 4 | 5 | 11 | 12 => return Class::IcmpError(hl),
                _ => return Class::Other,
            }
            Class::Flow(Parsed {
                hl,
                key,
                tcp_flags: 0,
                icmp_type: t,
                tail: false,
            })
        }
        _ => Class::Other,
    }
}

/// A non-first fragment: a flow with the ports `ip4-frag` took from its first fragment
/// (TCP, UDP, ICMP echo), or nothing to translate when `ip4-frag` did not tag it.
#[inline(always)]
fn classify_tail(l3: &[u8], hl: usize, m: &crate::buffer::BufMeta) -> Class {
    let proto = l3[9];
    let flow = match proto {
        PROTO_TCP | PROTO_UDP => true,
        PROTO_ICMP => matches!(m.frag_icmp, 0 | 8),
        _ => false,
    };
    if m.flags & crate::buffer::FLAG_FRAG_TAIL == 0 || !flow {
        return Class::Other;
    }
    Class::Flow(Parsed {
        hl,
        key: FlowKey {
            src: ip_at(l3, 12),
            dst: ip_at(l3, 16),
            sport: m.frag_ports.0,
            dport: m.frag_ports.1,
            proto,
        },
        tcp_flags: 0,
        icmp_type: m.frag_icmp,
        tail: true,
    })
}

/// Whether a flow without a session would be translated (a service frontend, or masquerade
/// of a pod's flow leaving the cluster): a non-first fragment of such a flow whose first
/// fragment made no session is dropped, never forwarded untranslated.
fn fragment_needs_session(env: &Env<'_>, p: &Parsed, from_pod: bool) -> bool {
    let (nat, key) = (env.nat, &p.key);
    (key.proto != PROTO_ICMP && env.services.lookup(key.dst, key.proto, key.dport).is_some())
        || (nat.masquerade
            && from_pod
            && !nat.in_cluster(key.dst)
            && Some(key.dst) != env.node_ip
            && !env.services.node_addrs().contains(&key.dst)
            && (key.proto != PROTO_ICMP || p.icmp_type == 8))
}

impl Ip4Nat {
    /// A packet without a session: create the session of a new flow (a service frontend,
    /// masquerade of a pod's flow leaving the cluster, tracking of a connection from
    /// outside to a local pod), or say what else to do with it.
    fn new_flow(
        &mut self,
        ct: &mut Conntrack,
        env: &Env<'_>,
        p: &Parsed,
        l3: &[u8],
        from: Origin,
        counts: &mut [u64; NatError::INFO.len()],
    ) -> Decision {
        let from_pod = from == Origin::Pod;
        let key = p.key;
        if let Some((pi, kind)) = env.services.lookup(key.dst, key.proto, key.dport) {
            return self.new_service_flow(ct, env, p, l3, from, (pi, kind), counts);
        }
        let nat = env.nat;
        if nat.masquerade
            && from_pod
            && env.leaves_cluster(key.dst)
            && (key.proto != PROTO_ICMP || p.icmp_type == 8)
        {
            return super::snat::masquerade(ct, env, p, counts);
        }
        // The connection's direction, for masquerade. A connection that arrives from outside
        // the cluster for a pod of this node (a router with a route to the pod CIDR, a
        // host-network client on another node, a service connection another node SNATed to
        // its own address and forwarded here) is tracked from its first packet, as the
        // kernel's conntrack does: the pod's answers are then this session's reply direction
        // and leave untranslated. Untracked, they would look like new pod flows leaving the
        // cluster and be masqueraded, and the client would get its answers from the node's
        // address (a connection that never completes). A stateless mark cannot tell a reply
        // from a new flow (UDP; TCP past its handshake), so the session is the record.
        // Cost: one session insert per such connection, and only for what the answers would
        // be masqueraded to (masquerade on, TCP or UDP: ICMP echo replies never are, source
        // leaving the cluster, destination in this node's pod CIDRs); later packets in both
        // directions hit the session instead of missing and re-running this function.
        // A table full of established connections drops the new connection (as the kernel
        // does): its answers could not be told from new flows.
        if nat.masquerade
            && !from_pod
            && matches!(key.proto, PROTO_TCP | PROTO_UDP)
            && env.pod_cidrs.iter().any(|c| c.contains(key.dst))
            && env.leaves_cluster(key.src)
        {
            return super::snat::track(ct, env, p, counts);
        }
        Decision::Pass
    }
}

impl<M: FrameMemory> Node<M> for Ip4Nat {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn shared_state(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(self.sessions.clone())
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let services = cx.snap.services.clone();
        let nat = cx.snap.nat.clone();
        let sessions = self.sessions.clone();
        let mut ct = lock(&sessions);
        if services.is_empty() && ct.is_empty() && !nat.masquerade {
            nexts.fill(NatNext::Lookup.into());
            return;
        }
        let now = ct.now_ms();
        // Several workers: each table holds its share of the node's limit.
        let limit = ct.share_of_limit(nat.conntrack_max);
        if ct.limit() != limit {
            ct.set_limit(limit);
        }
        if ct.timeouts != nat.timeouts {
            ct.timeouts = nat.timeouts;
        }
        let env = Env {
            services: &services,
            nat: &nat,
            node_ip: cx.snap.node_ip,
            pod_cidrs: &cx.snap.pod_cidrs,
            now,
        };
        let ifaces = cx.snap.ifaces.clone();
        let mut counts = [0u64; NatError::INFO.len()];
        let early_drops = ct.stats.early_drops;
        for (i, &b) in bufs.iter().enumerate() {
            nexts[i] = NatNext::Lookup.into();
            let m = cx.meta(b);
            let rx_if = m.rx_if;
            // Traced packets get records while `l3` borrows the frame: push through the
            // trace field (disjoint from the packet memory).
            let traced = m.flags & crate::buffer::FLAG_TRACED != 0;
            let node = cx.node;
            let (start, end) = (m.offset as usize, m.offset as usize + m.len as usize);
            let pkt = cx.mem.frame_mut(b).get_mut(start..end).unwrap_or(&mut []);
            let Some(l3) = pkt.get_mut(14..) else {
                continue;
            };
            let p = match classify(l3, &m) {
                Class::Flow(p) => p,
                Class::IcmpError(hl) => {
                    if translate_icmp_error(&mut ct, l3, hl, now) {
                        counts[NatError::IcmpTranslated as usize] += 1;
                        cx.meta_mut(b).flags |= crate::buffer::FLAG_NO_CACHE;
                        cx.meta_mut(b).flags |= crate::buffer::FLAG_CT_ESTABLISHED;
                        if traced {
                            cx.trace
                                .push(m.trace_id, node, TraceData::Nat(NatStep::IcmpError));
                        }
                    }
                    continue;
                }
                Class::Other => {
                    if traced {
                        cx.trace
                            .push(m.trace_id, node, TraceData::Nat(NatStep::Untranslated));
                    }
                    continue;
                }
            };
            let mut hit = ct.lookup(&p.key, now);
            if let Some((id, Dir::Orig)) = hit {
                // A new connection reusing the tuple of a closing one.
                let reopen = p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
                    && ct.get(id).is_some_and(|s| s.state.is_closing());
                if reopen {
                    ct.remove(id);
                    hit = None;
                }
            }
            let existing = hit.is_some();
            let (id, dir) = match hit {
                Some(h) => h,
                None => {
                    let from = match ifaces.get(rx_if).map(|f| f.kind) {
                        Some(IfKind::Pod) => Origin::Pod,
                        Some(IfKind::Punt) => Origin::Host,
                        _ => Origin::Outside,
                    };
                    let from_pod = from == Origin::Pod;
                    if p.tail {
                        // Its first fragment made no session (passed untranslated, or was
                        // dropped or rejected): never create one from a fragment.
                        if fragment_needs_session(&env, &p, from_pod) {
                            nexts[i] = cx.drop_with(b, NatError::FragmentNoSession);
                        }
                        continue;
                    }
                    let decision = self.new_flow(&mut ct, &env, &p, l3, from, &mut counts);
                    if traced {
                        if let Some(step) = trace_new_flow(&ct, &services, &p.key, &decision) {
                            cx.trace.push(m.trace_id, node, TraceData::Nat(step));
                        }
                    }
                    match decision {
                        Decision::Session(id) => {
                            // Translated: its replies carry another tuple (see `handoff`).
                            if let Some(s) = ct.get(id).filter(|s| s.nat != NatKind::Untranslated) {
                                cx.out.translated.push(s.reply);
                            }
                            (id, Dir::Orig)
                        }
                        Decision::Pass => continue,
                        Decision::Drop(e) => {
                            nexts[i] = cx.drop_with(b, e);
                            continue;
                        }
                        Decision::Reject => {
                            counts[NatError::NoEndpoints as usize] += 1;
                            // `l3` borrows the frame memory: reach the metadata field directly.
                            if let Some(mm) = cx.meta.get_mut(b as usize) {
                                mm.flags |= crate::buffer::FLAG_NO_CACHE;
                            }
                            if p.key.proto == PROTO_TCP {
                                match build_rst(l3, p.hl) {
                                    Some(len) => {
                                        cx.meta_mut(b).len = (14 + len) as u16;
                                    }
                                    None => nexts[i] = cx.drop_with(b, NatError::NoEndpoints),
                                }
                            } else {
                                let m = cx.meta_mut(b);
                                m.icmp_type = 3;
                                m.icmp_code = 3;
                                m.icmp_mtu = 0;
                                nexts[i] = NatNext::IcmpError.into();
                            }
                            continue;
                        }
                    }
                }
            };
            let Some(s) = ct.get(id) else {
                continue;
            };
            if s.nat == NatKind::Untranslated {
                // Tracked for its direction only: nothing to rewrite, and ip4-policy decides
                // it as any untranslated flow (its own flow memory), so no established flag.
                if existing && traced {
                    let step = NatStep::Session {
                        session: id,
                        nat: s.nat,
                        reply: dir == Dir::Reply,
                        old: p.key,
                        new: p.key,
                    };
                    cx.trace.push(m.trace_id, node, TraceData::Nat(step));
                }
                ct.touch(id, dir, p.tcp_flags, now);
                if !ct.get(id).is_some_and(|s| s.is_established()) {
                    cx.meta_mut(b).flags |= crate::buffer::FLAG_NO_CACHE;
                }
                continue;
            }
            let new = match dir {
                Dir::Orig => s.reply.reversed(),
                Dir::Reply => s.orig.reversed(),
            };
            // An established connection (replied, or this is a reply) skips ip4-policy.
            let established = existing && (dir == Dir::Reply || s.packets[1] > 0);
            // Hairpin (the client is its own backend): a pod's traffic to itself.
            let hairpin = s.reply.src == s.orig.src;
            if existing && traced {
                let step = NatStep::Session {
                    session: id,
                    nat: s.nat,
                    reply: dir == Dir::Reply,
                    old: p.key,
                    new,
                };
                cx.trace.push(m.trace_id, node, TraceData::Nat(step));
            }
            if p.tail {
                // A non-first fragment: only its IP header (the L4 header and checksum,
                // which covers the whole datagram, are in the first fragment).
                let ip_only = FlowKey { proto: 0, ..p.key };
                rewrite(l3, p.hl, &ip_only, &new, 0);
            } else {
                rewrite(l3, p.hl, &p.key, &new, p.icmp_type);
            }
            ct.touch(id, dir, p.tcp_flags, now);
            // Only established connections go to the XDP flow cache (a handshake, a
            // half-open flood or a closing connection stays in the engine), and it can
            // replay a TCP/UDP translation, not an ICMP one.
            let cacheable = ct.get(id).is_some_and(|s| s.is_established());
            let mm = cx.meta_mut(b);
            if !cacheable {
                mm.flags |= crate::buffer::FLAG_NO_CACHE;
            }
            if p.tail {
                // ip4-policy decides the fragment on the translated ports.
                mm.frag_ports = (new.sport, new.dport);
            }
            if matches!(p.key.proto, PROTO_TCP | PROTO_UDP) {
                mm.flags |= crate::buffer::FLAG_NAT;
                mm.pre_nat = (
                    u32::from(p.key.src),
                    u32::from(p.key.dst),
                    p.key.sport,
                    p.key.dport,
                );
            } else {
                mm.flags |= crate::buffer::FLAG_NO_CACHE;
            }
            if established {
                cx.meta_mut(b).flags |= crate::buffer::FLAG_CT_ESTABLISHED;
            }
            if hairpin {
                cx.meta_mut(b).flags |= crate::buffer::FLAG_SELF;
            }
        }
        ct.sweep(now, 64);
        counts[NatError::EarlyDrop as usize] += ct.stats.early_drops - early_drops;
        drop(ct);
        for (code, n) in counts.iter().enumerate() {
            if *n > 0 {
                cx.count(code as u16, *n);
            }
        }
    }
}
