//! `ip4-nat`: connection tracking, service load balancing (DNAT), reverse
//! NAT of replies, SNAT (hairpin, externalTrafficPolicy=Cluster to a remote
//! backend, masquerade of pod traffic leaving the cluster), rejection of
//! services without endpoints, and translation of ICMP errors about
//! translated flows (outer and quoted inner headers).
//!
//! One session-table probe per packet; a miss on a service frontend costs one
//! service-table probe and one Maglev slot load, whatever the number of
//! services. The session table belongs to this worker (see
//! [`Ip4Nat::sessions`]); the node takes its mutex once per vector.
//!
//! Sessions track TCP, UDP and ICMP states as the kernel's conntrack does
//! ([`ferroplane_tables::conntrack`]): a TCP session is established only once the
//! three-way handshake completes. A full table evicts an unestablished or closing
//! session for a new flow (`conntrack-early-drop`) and refuses new flows only when
//! every session is an established connection (`conntrack-full`), so a SYN flood
//! cannot lock services out. Only packets of established sessions are offered to
//! the XDP flow cache.
//!
//! Masquerade applies to connections a pod *originated*, as the kernel's MASQUERADE (a
//! rule on the connection's first packet, replies restored from conntrack): with
//! masquerade on, a connection from outside the cluster to a local pod is tracked
//! untranslated from its first packet ([`NatKind::Untranslated`]), so the pod's replies
//! are that session's reply direction and keep the pod's address.

use std::any::Any;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use ferroplane_io::{BufIdx, FrameMemory};
use ferroplane_tables::conntrack::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use ferroplane_tables::hash::FastMap;
use ferroplane_tables::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use ferroplane_tables::{
    Conntrack, CtError, Dir, FlowKey, FrontendKey, Ipv4Prefix, NatConfig, NatKind, ServiceTable,
};
use ferroplane_wire::{checksum, Ipv4Packet};

use crate::interfaces::IfKind;
use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::{NatStep, TraceData};
use crate::{node_errors, node_nexts};

use super::ip4_lookup::flow_hash;
use super::{be16, ip_at};

node_nexts! {
    /// Next arcs of `ip4-nat`.
    pub enum NatNext { Drop = "error-drop", Lookup = "ip4-policy", IcmpError = "ip4-icmp-error" }
}

node_errors! {
    /// Error reasons of `ip4-nat`.
    pub enum NatError {
        NewService = (Info, "service-sessions", "new service flows load-balanced to a backend"),
        NewMasquerade = (Info, "masquerade-sessions", "new pod flows leaving the cluster masqueraded"),
        Hairpin = (Info, "hairpin", "new service flows whose backend is the client itself (SNAT to the VIP)"),
        ClusterSnat = (Info, "external-snat", "new external flows to a remote backend SNATed to the node (externalTrafficPolicy=Cluster)"),
        IcmpTranslated = (Info, "icmp-error-translated", "ICMP errors about a translated flow rewritten"),
        NoEndpoints = (Error, "no-endpoints", "service without endpoints: TCP reset or ICMP port unreachable sent"),
        NoLocalEndpoints = (Error, "no-local-endpoints", "traffic policy Local and no endpoint on this node"),
        Full = (Error, "conntrack-full", "session table full of established connections: new flow dropped"),
        EarlyDrop = (Info, "conntrack-early-drop", "session table full: an unestablished or closing session evicted for a new flow"),
        NoPort = (Error, "snat-ports-exhausted", "no free SNAT port for the destination"),
        NoSnatAddress = (Error, "no-snat-address", "SNAT needed but the node has no address"),
        FragmentNoSession = (Error, "fragment-no-session", "non-first fragment of a flow to translate whose first fragment made no session (dropped or rejected)"),
        HostService = (Info, "host-sessions", "new service flows from the node itself (punt TUN): source port SNATed into the SNAT range so replies come back to the engine"),
        Tracked = (Info, "tracked-sessions", "new connections from outside the cluster to local pods tracked untranslated (masquerade on: their replies are not masqueraded)"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "ip4-nat",
    nexts: NatNext::NAMES,
    errors: NatError::INFO,
};

/// A ClientIP affinity entry.
#[derive(Debug, Clone, Copy)]
struct Affinity {
    backend: Ipv4Addr,
    port: u16,
    expires: u64,
}

/// The worker's session table, shared with the control plane for display.
pub type SharedSessions = Arc<Mutex<Conntrack>>;

/// The connection tracking and NAT node.
#[derive(Debug)]
pub struct Ip4Nat {
    sessions: SharedSessions,
    affinity: FastMap<(FrontendKey, Ipv4Addr), Affinity>,
}

impl Default for Ip4Nat {
    fn default() -> Self {
        let cfg = NatConfig::default();
        Ip4Nat {
            sessions: Arc::new(Mutex::new(Conntrack::new(cfg.conntrack_max, cfg.timeouts))),
            affinity: FastMap::default(),
        }
    }
}

impl Ip4Nat {
    /// The session table (lock it to read; the worker takes it once per vector).
    pub fn sessions(&self) -> SharedSessions {
        self.sessions.clone()
    }
}

/// Parsed addressing of one packet.
#[derive(Debug, Clone, Copy)]
struct Parsed {
    hl: usize,
    key: FlowKey,
    tcp_flags: u16,
    /// ICMP type for ICMP packets.
    icmp_type: u8,
    /// A non-first fragment: ports from its first fragment (`ip4-frag`), no L4 header.
    tail: bool,
}

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

#[inline(always)]
fn get16(b: &[u8], at: usize) -> u16 {
    be16(b, at)
}

#[inline(always)]
fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

#[inline(always)]
fn put_ip(b: &mut [u8], at: usize, a: Ipv4Addr) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&a.octets());
    }
}

/// Rewrite the addresses and ports of the IPv4 packet at `l3` (header length `hl`)
/// from `old` to `new`, updating the IP and L4 checksums incrementally.
/// `icmp_type`: for ICMP echo the id follows `sport` (request) or `dport` (reply).
/// `l4_csum`: whether the L4 checksum is present in the buffer (false for
/// truncated quotes inside ICMP errors).
#[inline(always)]
fn rewrite(l3: &mut [u8], hl: usize, old: &FlowKey, new: &FlowKey, icmp_type: u8) {
    let (os, od, ns, nd) = (
        u32::from(old.src),
        u32::from(old.dst),
        u32::from(new.src),
        u32::from(new.dst),
    );
    let mut ipc = get16(l3, 10);
    if os != ns {
        ipc = checksum::update32(ipc, os, ns);
        put_ip(l3, 12, new.src);
    }
    if od != nd {
        ipc = checksum::update32(ipc, od, nd);
        put_ip(l3, 16, new.dst);
    }
    put16(l3, 10, ipc);
    match old.proto {
        PROTO_TCP | PROTO_UDP => {
            let at = if old.proto == PROTO_TCP {
                hl + 16
            } else {
                hl + 6
            };
            let present = l3.len() >= at + 2;
            let mut c = if present { get16(l3, at) } else { 0 };
            let udp_zero = old.proto == PROTO_UDP && c == 0;
            if os != ns {
                c = checksum::update32(c, os, ns);
            }
            if od != nd {
                c = checksum::update32(c, od, nd);
            }
            if old.sport != new.sport {
                c = checksum::update16(c, old.sport, new.sport);
                put16(l3, hl, new.sport);
            }
            if old.dport != new.dport {
                c = checksum::update16(c, old.dport, new.dport);
                put16(l3, hl + 2, new.dport);
            }
            if present && !udp_zero {
                // A UDP checksum that computes to 0 is sent as 0xffff (RFC 768).
                if old.proto == PROTO_UDP && c == 0 {
                    c = 0xffff;
                }
                put16(l3, at, c);
            }
        }
        PROTO_ICMP => {
            let (oid, nid) = if icmp_type == 8 {
                (old.sport, new.sport)
            } else {
                (old.dport, new.dport)
            };
            if oid != nid {
                let c = checksum::update16(get16(l3, hl + 2), oid, nid);
                put16(l3, hl + 4, nid);
                put16(l3, hl + 2, c);
            }
        }
        _ => {}
    }
}

/// Where a packet without a session came from, for NAT purposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A local pod's interface.
    Pod,
    /// The node itself: the punt TUN's read side (its traffic to service addresses).
    Host,
    /// The uplink or a tunnel.
    Outside,
}

/// Where a new flow goes.
enum Decision {
    /// Translate with this session.
    Session(u32),
    /// Forward untranslated.
    Pass,
    /// Drop with a reason.
    Drop(NatError),
    /// Reject (RST / port unreachable).
    Reject,
}

/// Pick a port on `snat` for replies from `remote` so that the reply tuple is unused.
fn alloc_port(
    ct: &Conntrack,
    now: u64,
    proto: u8,
    remote: (Ipv4Addr, u16),
    snat: Ipv4Addr,
    preferred: u16,
    range: (u16, u16),
) -> Option<u16> {
    let (lo, hi) = (range.0.min(range.1), range.0.max(range.1));
    let size = (hi - lo) as u32 + 1;
    let start = if (lo..=hi).contains(&preferred) {
        (preferred - lo) as u32
    } else {
        let h = ferroplane_tables::maglev::mix64(
            ((u32::from(remote.0) as u64) << 32) ^ ((remote.1 as u64) << 16) ^ preferred as u64,
        );
        (h % size as u64) as u32
    };
    for i in 0..size.min(512) {
        let p = lo + ((start + i) % size) as u16;
        let key = FlowKey {
            src: remote.0,
            dst: snat,
            sport: remote.1,
            dport: p,
            proto,
        };
        if !ct.contains(&key, now) {
            return Some(p);
        }
    }
    None
}

fn lock(m: &Mutex<Conntrack>) -> MutexGuard<'_, Conntrack> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Per-vector context.
struct Env<'a> {
    services: &'a ServiceTable,
    nat: &'a NatConfig,
    node_ip: Option<Ipv4Addr>,
    /// This node's pod CIDRs.
    pod_cidrs: &'a [Ipv4Prefix],
    now: u64,
}

impl Env<'_> {
    /// Whether a pod's packet to `addr` leaves the cluster, so that a new pod flow to it
    /// is masqueraded (when masquerade is on): outside `clusterCIDRs` and not one of the
    /// node's addresses.
    #[inline(always)]
    fn leaves_cluster(&self, addr: Ipv4Addr) -> bool {
        !self.nat.in_cluster(addr)
            && Some(addr) != self.node_ip
            && !self.services.node_addrs().contains(&addr)
    }
}

impl Ip4Nat {
    #[allow(clippy::too_many_arguments)]
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
            if key.proto == PROTO_ICMP {
                return Decision::Pass;
            }
            let Some(sp) = env.services.port(pi) else {
                return Decision::Pass;
            };
            // The node itself is inside the cluster: its traffic to a NodePort or an external
            // address uses every endpoint, as kube-proxy's (externalTrafficPolicy is about
            // traffic from outside).
            let from_outside = from == Origin::Outside;
            let sel = sp.selection(kind, from_outside);
            if sel.is_empty() {
                return if sp.has_endpoints {
                    Decision::Drop(NatError::NoLocalEndpoints)
                } else {
                    Decision::Reject
                };
            }
            let frontend = FrontendKey {
                addr: key.dst,
                proto: key.proto,
                port: key.dport,
            };
            let mut chosen: Option<u16> = None;
            if let Some(secs) = sp.def.affinity_secs {
                if let Some(a) = self.affinity.get(&(frontend, key.src)) {
                    if a.expires > env.now {
                        chosen = sel.backends.iter().copied().find(|&i| {
                            sp.def
                                .backends
                                .get(i as usize)
                                .is_some_and(|b| b.addr == a.backend && b.port == a.port)
                        });
                    }
                }
                if chosen.is_none() {
                    chosen = sel.pick(flow_hash(l3));
                }
                if let Some(b) = chosen.and_then(|i| sp.def.backends.get(i as usize)) {
                    if self.affinity.len() >= env.nat.conntrack_max.max(1024) {
                        let now = env.now;
                        self.affinity.retain(|_, a| a.expires > now);
                    }
                    self.affinity.insert(
                        (frontend, key.src),
                        Affinity {
                            backend: b.addr,
                            port: b.port,
                            expires: env.now + secs as u64 * 1000,
                        },
                    );
                }
            } else {
                chosen = sel.pick(flow_hash(l3));
            }
            let Some(b) = chosen.and_then(|i| sp.def.backends.get(i as usize)) else {
                return Decision::Reject;
            };
            let hairpin = b.addr == key.src;
            // The node's own connection keeps its source address and gets a port of the SNAT
            // range: the backend's answers to that port are steered back to the engine
            // (ports4, by xdp_uplink and xdp_pod), which restores the service address; with
            // its own port they would go to the node's kernel untranslated.
            let snat = if hairpin {
                Some(key.dst)
            } else if from == Origin::Host {
                Some(key.src)
            } else if from_outside && kind.is_external() && !b.local {
                match env.nat.masquerade_addr.or(env.node_ip) {
                    Some(a) => Some(a),
                    None => return Decision::Drop(NatError::NoSnatAddress),
                }
            } else {
                None
            };
            let mut reply = FlowKey {
                src: b.addr,
                dst: key.src,
                sport: b.port,
                dport: key.sport,
                proto: key.proto,
            };
            if let Some(a) = snat {
                let Some(port) = alloc_port(
                    ct,
                    env.now,
                    key.proto,
                    (b.addr, b.port),
                    a,
                    key.sport,
                    env.nat.snat_ports,
                ) else {
                    return Decision::Drop(NatError::NoPort);
                };
                reply.dst = a;
                reply.dport = port;
            }
            let nat = if snat.is_some() {
                NatKind::DnatSnat
            } else {
                NatKind::Dnat
            };
            let mut r = ct.create(key, reply, nat, Some(frontend), p.tcp_flags, env.now);
            if r == Err(CtError::Exists) {
                // Another session already uses this reply tuple (the client reused its
                // port toward another service with the same backend): translate the port.
                if let Some(port) = alloc_port(
                    ct,
                    env.now,
                    key.proto,
                    (b.addr, b.port),
                    reply.dst,
                    0,
                    env.nat.snat_ports,
                ) {
                    reply.dport = port;
                    r = ct.create(
                        key,
                        reply,
                        NatKind::DnatSnat,
                        Some(frontend),
                        p.tcp_flags,
                        env.now,
                    );
                }
            }
            return match r {
                Ok(id) => {
                    counts[NatError::NewService as usize] += 1;
                    if hairpin {
                        counts[NatError::Hairpin as usize] += 1;
                    } else if from == Origin::Host {
                        counts[NatError::HostService as usize] += 1;
                    } else if snat.is_some() {
                        counts[NatError::ClusterSnat as usize] += 1;
                    }
                    Decision::Session(id)
                }
                Err(CtError::Full) => Decision::Drop(NatError::Full),
                Err(CtError::Exists) => Decision::Drop(NatError::NoPort),
            };
        }
        let nat = env.nat;
        if nat.masquerade
            && from_pod
            && env.leaves_cluster(key.dst)
            && (key.proto != PROTO_ICMP || p.icmp_type == 8)
        {
            let Some(a) = nat.masquerade_addr.or(env.node_ip) else {
                return Decision::Drop(NatError::NoSnatAddress);
            };
            let Some(port) = alloc_port(
                ct,
                env.now,
                key.proto,
                (key.dst, key.dport),
                a,
                key.sport,
                nat.snat_ports,
            ) else {
                return Decision::Drop(NatError::NoPort);
            };
            let reply = FlowKey {
                src: key.dst,
                dst: a,
                sport: key.dport,
                dport: port,
                proto: key.proto,
            };
            return match ct.create(key, reply, NatKind::Snat, None, p.tcp_flags, env.now) {
                Ok(id) => {
                    counts[NatError::NewMasquerade as usize] += 1;
                    Decision::Session(id)
                }
                Err(CtError::Full) => Decision::Drop(NatError::Full),
                Err(CtError::Exists) => Decision::Drop(NatError::NoPort),
            };
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
            let r = ct.create(
                key,
                key.reversed(),
                NatKind::Untranslated,
                None,
                p.tcp_flags,
                env.now,
            );
            return match r {
                Ok(id) => {
                    counts[NatError::Tracked as usize] += 1;
                    Decision::Session(id)
                }
                Err(CtError::Full) => Decision::Drop(NatError::Full),
                // The pod uses this tuple toward the client already (a simultaneous open):
                // that session carries the connection.
                Err(CtError::Exists) => Decision::Pass,
            };
        }
        Decision::Pass
    }
}

/// The trace record of a new flow's decision (traced packets only).
fn trace_new_flow(
    ct: &Conntrack,
    services: &ServiceTable,
    key: &FlowKey,
    decision: &Decision,
) -> Option<NatStep> {
    let name = |f: &FrontendKey| {
        services
            .lookup(f.addr, f.proto, f.port)
            .and_then(|(pi, kind)| services.port(pi).map(|sp| (sp, kind)))
            .map(|(sp, kind)| {
                let n = if sp.def.port_name.is_empty() {
                    format!("{}:{}", sp.def.service, sp.def.port)
                } else {
                    format!("{}:{}", sp.def.service, sp.def.port_name)
                };
                (n, kind)
            })
    };
    let fk = FrontendKey {
        addr: key.dst,
        proto: key.proto,
        port: key.dport,
    };
    match decision {
        Decision::Session(id) => {
            let s = ct.get(*id)?;
            if s.nat == NatKind::Untranslated {
                return Some(NatStep::Tracked { session: *id });
            }
            match s.frontend {
                Some(f) => {
                    let (service, kind) = name(&f)?;
                    let backend = (s.reply.src, s.reply.sport);
                    let snat = (s.nat == NatKind::DnatSnat).then_some((s.reply.dst, s.reply.dport));
                    Some(NatStep::ServiceNew {
                        service,
                        kind,
                        frontend: f,
                        backend,
                        snat,
                        hairpin: backend.0 == key.src,
                        session: *id,
                    })
                }
                None => Some(NatStep::Masquerade {
                    from: (key.src, key.sport),
                    to: (s.reply.dst, s.reply.dport),
                    session: *id,
                }),
            }
        }
        Decision::Pass => Some(NatStep::Untranslated),
        Decision::Reject => name(&fk).map(|(service, _)| NatStep::NoEndpoint {
            service,
            frontend: fk,
            rejected: true,
        }),
        Decision::Drop(NatError::NoLocalEndpoints) => {
            name(&fk).map(|(service, _)| NatStep::NoEndpoint {
                service,
                frontend: fk,
                rejected: false,
            })
        }
        Decision::Drop(_) => None,
    }
}

/// Turn a TCP segment into the RST answering it (addresses and ports swapped), in place.
/// Returns the new IP length, or None when no RST must be sent (the segment is a RST).
fn build_rst(l3: &mut [u8], hl: usize) -> Option<usize> {
    if l3.len() < hl + 20 {
        return None;
    }
    let total = be16(l3, 2) as usize;
    let flags = l3[hl + 13] as u16;
    if flags & TCP_RST != 0 {
        return None;
    }
    let (src, dst) = (ip_at(l3, 12), ip_at(l3, 16));
    let (sport, dport) = (be16(l3, hl), be16(l3, hl + 2));
    let seq = u32::from_be_bytes([l3[hl + 4], l3[hl + 5], l3[hl + 6], l3[hl + 7]]);
    let ack = u32::from_be_bytes([l3[hl + 8], l3[hl + 9], l3[hl + 10], l3[hl + 11]]);
    let tcp_hl = ((l3[hl + 12] >> 4) as usize) * 4;
    let payload = total.saturating_sub(hl + tcp_hl) as u32;
    let (rseq, rack, rflags) = if flags & TCP_ACK != 0 {
        (ack, 0u32, TCP_RST)
    } else {
        let mut a = seq.wrapping_add(payload);
        if flags & TCP_SYN != 0 {
            a = a.wrapping_add(1);
        }
        if flags & TCP_FIN != 0 {
            a = a.wrapping_add(1);
        }
        (0, a, TCP_RST | TCP_ACK)
    };
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&dport.to_be_bytes());
    tcp[2..4].copy_from_slice(&sport.to_be_bytes());
    tcp[4..8].copy_from_slice(&rseq.to_be_bytes());
    tcp[8..12].copy_from_slice(&rack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = rflags as u8;
    let ip = &mut l3[..40];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&dst.octets());
    ip[16..20].copy_from_slice(&src.octets());
    ip[20..40].copy_from_slice(&tcp);
    let c = checksum::fold(
        checksum::pseudo_header_v4(dst, src, ferroplane_wire::IpProtocol::TCP, 20)
            + checksum::sum(&ip[20..40]),
    );
    ip[36..38].copy_from_slice(&(!c).to_be_bytes());
    if let Ok(mut p) = Ipv4Packet::new_checked(&mut ip[..]) {
        p.fill_checksum();
    }
    Some(40)
}

/// Translate an ICMP error (outer header at `l3`, ICMP at `hl`) about a translated flow.
/// Returns true when it was translated.
fn translate_icmp_error(ct: &mut Conntrack, l3: &mut [u8], hl: usize, now: u64) -> bool {
    let total = (be16(l3, 2) as usize).min(l3.len());
    let inner_at = hl + 8;
    if total < inner_at + 20 {
        return false;
    }
    let ihl = ((l3[inner_at] & 0x0f) as usize) * 4;
    let l4 = inner_at + ihl;
    if ihl < 20 || total < l4 + 8 {
        return false;
    }
    let proto = l3[inner_at + 9];
    let mut inner = FlowKey {
        src: ip_at(l3, inner_at + 12),
        dst: ip_at(l3, inner_at + 16),
        sport: 0,
        dport: 0,
        proto,
    };
    let mut inner_icmp = 0u8;
    match proto {
        PROTO_TCP | PROTO_UDP => {
            inner.sport = be16(l3, l4);
            inner.dport = be16(l3, l4 + 2);
        }
        PROTO_ICMP => {
            inner_icmp = l3[l4];
            let id = be16(l3, l4 + 4);
            match inner_icmp {
                8 => inner.sport = id,
                0 => inner.dport = id,
                _ => return false,
            }
        }
        _ => return false,
    }
    // The error travels like a packet with the reversed inner tuple.
    let Some((id, dir)) = ct.lookup(&inner.reversed(), now) else {
        return false;
    };
    let Some(s) = ct.get(id).copied() else {
        return false;
    };
    if s.nat == NatKind::Untranslated {
        return false;
    }
    let (x, x2) = match dir {
        Dir::Orig => (s.orig, s.reply.reversed()),
        Dir::Reply => (s.reply, s.orig.reversed()),
    };
    let new_inner = x2.reversed();
    // Inner header (the quoted packet): addresses, ports, its own checksums.
    {
        let q = &mut l3[inner_at..total];
        rewrite(q, ihl, &inner, &new_inner, inner_icmp);
    }
    // Outer header: destination always; source when the error came from the peer itself.
    let outer_src = ip_at(l3, 12);
    let new_src = if outer_src == x.src {
        x2.src
    } else {
        outer_src
    };
    put_ip(l3, 12, new_src);
    put_ip(l3, 16, x2.dst);
    put16(l3, hl + 2, 0);
    let c = checksum::checksum(&l3[hl..total]);
    put16(l3, hl + 2, c);
    if let Ok(mut p) = Ipv4Packet::new_checked(&mut l3[..total]) {
        p.fill_checksum();
    }
    true
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
        if ct.limit() != nat.conntrack_max {
            ct.set_limit(nat.conntrack_max);
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
                        Decision::Session(id) => (id, Dir::Orig),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = crate::testutil::udp_frame([0; 6], [0; 6], src, dst, 64, 12);
        let l3 = &mut f[14..];
        l3[20..22].copy_from_slice(&sport.to_be_bytes());
        l3[22..24].copy_from_slice(&dport.to_be_bytes());
        l3[26..28].copy_from_slice(&[0, 0]);
        let c = checksum::fold(
            checksum::pseudo_header_v4(src, dst, ferroplane_wire::IpProtocol::UDP, 20)
                + checksum::sum(&l3[20..40]),
        );
        l3[26..28].copy_from_slice(&(!c).to_be_bytes());
        f
    }

    fn valid(l3: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(l3).unwrap();
        let udp = ferroplane_wire::UdpPacket::new_checked(ip.payload()).unwrap();
        ip.verify_checksum() && udp.verify_checksum(ip.src_addr(), ip.dst_addr())
    }

    #[test]
    fn rewrite_keeps_checksums_valid() {
        let a: Ipv4Addr = "10.244.1.10".parse().unwrap();
        let v: Ipv4Addr = "10.96.0.10".parse().unwrap();
        let mut f = udp_packet(a, v, 5555, 53);
        assert!(valid(&f[14..]));
        let old = FlowKey {
            src: a,
            dst: v,
            sport: 5555,
            dport: 53,
            proto: PROTO_UDP,
        };
        let new = FlowKey {
            src: "192.168.100.2".parse().unwrap(),
            dst: "10.244.2.7".parse().unwrap(),
            sport: 61001,
            dport: 5353,
            proto: PROTO_UDP,
        };
        rewrite(&mut f[14..], 20, &old, &new, 0);
        assert!(valid(&f[14..]));
        assert_eq!(ip_at(&f[14..], 16), new.dst);
        assert_eq!(be16(&f[14..], 20), 61001);
    }

    #[test]
    fn rst_answers_a_syn() {
        let mut l3 = vec![0u8; 60];
        l3[0] = 0x45;
        l3[2..4].copy_from_slice(&40u16.to_be_bytes());
        l3[8] = 64;
        l3[9] = PROTO_TCP;
        l3[12..16].copy_from_slice(&[10, 244, 1, 10]);
        l3[16..20].copy_from_slice(&[10, 96, 0, 10]);
        l3[20..22].copy_from_slice(&4000u16.to_be_bytes());
        l3[22..24].copy_from_slice(&80u16.to_be_bytes());
        l3[24..28].copy_from_slice(&1000u32.to_be_bytes());
        l3[32] = 5 << 4;
        l3[33] = TCP_SYN as u8;
        assert_eq!(build_rst(&mut l3, 20), Some(40));
        let ip = Ipv4Packet::new_checked(&l3[..40]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), "10.96.0.10".parse::<Ipv4Addr>().unwrap());
        let tcp = ferroplane_wire::TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(ip.src_addr(), ip.dst_addr()));
        assert_eq!(tcp.src_port(), 80);
        assert_eq!(tcp.dst_port(), 4000);
        assert_eq!(tcp.ack_number(), 1001);
        assert_eq!(tcp.flags() & 0x3f, (TCP_RST | TCP_ACK));
    }
}
