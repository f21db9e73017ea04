//! A new flow to a service frontend: the backend (Maglev slot of the flow's hash, or the
//! client's ClientIP affinity), DNAT to it, and SNAT where the answers would not come
//! back through this node otherwise: hairpin (the client is its own backend: SNAT to the
//! service address), the node's own traffic (a port of the SNAT range) and
//! externalTrafficPolicy=Cluster to a remote backend (SNAT to the node). Services without
//! endpoints are rejected, traffic policy Local without a local endpoint is dropped.

use std::net::Ipv4Addr;

use ferroplane_tables::service::PROTO_ICMP;
use ferroplane_tables::{
    Conntrack, CtError, FlowKey, FrontendKey, FrontendKind, NatKind, ServiceTable,
};

use crate::trace::NatStep;

use super::super::ip4_lookup::flow_hash;
use super::snat::alloc_port;
use super::{Decision, Env, Ip4Nat, NatError, Origin, Parsed};

/// A ClientIP affinity entry.
#[derive(Debug, Clone, Copy)]
pub(super) struct Affinity {
    backend: Ipv4Addr,
    port: u16,
    expires: u64,
}

impl Ip4Nat {
    /// A new flow to service port `pi`, reached through a frontend of kind `kind`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_service_flow(
        &mut self,
        ct: &mut Conntrack,
        env: &Env<'_>,
        p: &Parsed,
        l3: &[u8],
        from: Origin,
        (pi, kind): (u32, FrontendKind),
        counts: &mut [u64; NatError::INFO.len()],
    ) -> Decision {
        let key = p.key;
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
        match r {
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
        }
    }
}

/// The trace record of a new flow's decision (traced packets only).
pub(super) fn trace_new_flow(
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
