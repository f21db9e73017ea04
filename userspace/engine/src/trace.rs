//! Packet trace records: small plain values taken on the fast path and
//! formatted only when shown.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ferroplane_tables::service::{proto_name, FrontendKey, FrontendKind};
use ferroplane_tables::{AdjKind, FlowKey, Ipv4Prefix, NatKind};

use crate::tunnel::TunnelMode;

/// How `ip4-nat` treated a traced packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatStep {
    /// A new flow to a service frontend: a backend was chosen (DNAT, maybe with SNAT).
    ServiceNew {
        /// Service and port name (`namespace/name:port`).
        service: String,
        /// How the frontend is reached.
        kind: FrontendKind,
        /// The frontend hit.
        frontend: FrontendKey,
        /// Backend address and port chosen.
        backend: (Ipv4Addr, u16),
        /// Source rewritten to this address and port (hairpin, externalTrafficPolicy=Cluster).
        snat: Option<(Ipv4Addr, u16)>,
        /// The backend is the client itself (hairpin).
        hairpin: bool,
        /// Session created.
        session: u32,
    },
    /// A service frontend without a usable endpoint.
    NoEndpoint {
        /// Service and port name.
        service: String,
        /// The frontend hit.
        frontend: FrontendKey,
        /// True: a TCP reset or ICMP unreachable answers; false: dropped (no local endpoint).
        rejected: bool,
    },
    /// A new pod flow leaving the cluster: source masqueraded.
    Masquerade {
        /// Source before.
        from: (Ipv4Addr, u16),
        /// Source after.
        to: (Ipv4Addr, u16),
        /// Session created.
        session: u32,
    },
    /// A packet of an existing session, translated (`reply`: reverse NAT of a reply).
    Session {
        /// Session.
        session: u32,
        /// Translation kind of the session.
        nat: NatKind,
        /// In the reply direction.
        reply: bool,
        /// Tuple before.
        old: FlowKey,
        /// Tuple after.
        new: FlowKey,
    },
    /// A new connection from outside the cluster to a local pod, untranslated but tracked
    /// (masquerade is on: the pod's replies belong to this session and keep its address).
    Tracked {
        /// Session created.
        session: u32,
    },
    /// An ICMP error quoting a translated flow, rewritten.
    IcmpError,
    /// Nothing to translate (no service, no session, no masquerade).
    Untranslated,
}

/// What an ACL said about a traced new flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AclOutcome {
    /// The pod is not isolated in this direction (everything allowed).
    NotIsolated,
    /// Not consulted (an earlier ACL denied).
    NotChecked,
    /// Allowed by rule `index` of policy `policy` (`namespace/name`); `acl_rule` is the
    /// rule's position in the compiled ACL.
    Rule {
        /// Source policy (`namespace/name`).
        policy: String,
        /// Index of the rule in the policy's ingress / egress list.
        index: u32,
        /// Position in the compiled ACL.
        acl_rule: u32,
    },
    /// No rule allows the flow: denied by default (the pod is isolated).
    DefaultDeny {
        /// Policies with rules in the ACL (`namespace/name`; empty when the isolating
        /// policies allow nothing in this direction).
        policies: Vec<String>,
    },
}

/// How `ip4-policy` treated a traced packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyStep {
    /// Part of an established (replied) NAT session: not classified.
    Established,
    /// The flow, its reverse, or the flow an ICMP error quotes was allowed before.
    KnownFlow,
    /// Neither pod isolated for this direction (the flow is remembered for its replies).
    NotIsolated,
    /// A pod's traffic to itself.
    SelfTraffic,
    /// Classified by the ACLs (see the outcomes).
    Classified,
}

/// What a node recorded about a traced packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceData {
    /// Received on an interface.
    Rx {
        /// Interface.
        sw_if: u16,
        /// Frame length.
        len: u16,
    },
    /// Ethernet header.
    Ethernet {
        /// Source MAC.
        src: [u8; 6],
        /// Destination MAC.
        dst: [u8; 6],
        /// Ethertype.
        ethertype: u16,
    },
    /// ARP.
    Arp {
        /// Operation (1 request, 2 reply).
        op: u16,
        /// Sender protocol address.
        sender: Ipv4Addr,
        /// Target protocol address.
        target: Ipv4Addr,
        /// Whether the engine answered.
        replied: bool,
    },
    /// IPv4 header.
    Ip4 {
        /// Source.
        src: Ipv4Addr,
        /// Destination.
        dst: Ipv4Addr,
        /// Protocol number.
        proto: u8,
        /// TTL.
        ttl: u8,
        /// Total length.
        len: u16,
    },
    /// FIB decision.
    Lookup {
        /// Matched route.
        prefix: Ipv4Prefix,
        /// Adjacency index.
        adj: u32,
        /// Adjacency kind.
        kind: AdjKind,
        /// Outgoing interface.
        sw_if: u16,
    },
    /// Header rewrite.
    Rewrite {
        /// Outgoing interface.
        sw_if: u16,
        /// New destination MAC.
        dst_mac: [u8; 6],
        /// TTL after decrement.
        ttl: u8,
    },
    /// ICMP error generated in place of the packet.
    IcmpError {
        /// ICMP type.
        icmp_type: u8,
        /// ICMP code.
        code: u8,
    },
    /// Queued for transmission.
    Tx {
        /// Interface.
        sw_if: u16,
        /// I/O port.
        port: u16,
    },
    /// Handed to the host stack.
    Punt,
    /// Dropped with a global error code.
    Drop {
        /// Global error code (see the graph's error table).
        error: u16,
    },
    /// Connection tracking and NAT decision.
    Nat(NatStep),
    /// NetworkPolicy decision.
    Policy {
        /// What the node did.
        step: PolicyStep,
        /// Flow source.
        src: Ipv4Addr,
        /// Flow destination.
        dst: Ipv4Addr,
        /// IP protocol.
        proto: u8,
        /// Destination port (0 without ports).
        dport: u16,
        /// The source pod's egress ACL.
        egress: AclOutcome,
        /// The destination pod's ingress ACL.
        ingress: AclOutcome,
    },
    /// Encapsulated toward a remote node.
    Encap {
        /// Tunnel interface.
        tunnel: u16,
        /// Mode.
        mode: TunnelMode,
        /// Outer source (this node).
        local: Ipv4Addr,
        /// Outer destination (the peer).
        remote: Ipv4Addr,
        /// Outer frame length.
        len: u16,
    },
    /// Decapsulated from a remote node.
    Decap {
        /// Tunnel interface the inner packet now arrives on.
        tunnel: u16,
        /// Mode.
        mode: TunnelMode,
        /// The peer (outer source).
        remote: Ipv4Addr,
        /// Inner frame length.
        len: u16,
    },
}

/// One trace record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// Packet trace id (records of one packet share it).
    pub id: u32,
    /// Node index in the graph.
    pub node: u16,
    /// What was recorded.
    pub data: TraceData,
}

/// A worker's trace records, bounded.
#[derive(Debug, Default)]
pub struct TraceBuffer {
    /// Records taken since the last drain.
    pub records: Vec<TraceRecord>,
}

impl TraceBuffer {
    /// Most records kept between drains.
    pub const CAPACITY: usize = 65536;

    /// Record.
    pub fn push(&mut self, id: u32, node: u16, data: TraceData) {
        if self.records.len() < Self::CAPACITY {
            self.records.push(TraceRecord { id, node, data });
        }
    }
}

fn mac(m: &[u8; 6]) -> String {
    let mut s = String::with_capacity(17);
    for (i, b) in m.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Names a trace needs when it is shown (not when it is taken).
pub trait TraceNames {
    /// "node: reason" of a global error code.
    fn error_name(&self, code: u16) -> String;
    /// NetworkPolicies selecting the pod with address `pod` (`namespace/name`), to name the
    /// policies behind a default deny whose ACL has no rules.
    fn policies_of(&self, _pod: Ipv4Addr) -> Vec<String> {
        Vec::new()
    }
}

impl<F: Fn(u16) -> String> TraceNames for F {
    fn error_name(&self, code: u16) -> String {
        self(code)
    }
}

fn endpoint(a: Ipv4Addr, port: u16) -> String {
    format!("{a}:{port}")
}

fn frontend(f: &FrontendKey) -> String {
    format!("{}:{}/{}", f.addr, f.port, proto_name(f.proto))
}

fn tuple(k: &FlowKey) -> String {
    format!(
        "{}:{} -> {}:{} {}",
        k.src,
        k.sport,
        k.dst,
        k.dport,
        proto_name(k.proto)
    )
}

impl AclOutcome {
    fn verdict(&self) -> &'static str {
        match self {
            AclOutcome::NotIsolated => "not-isolated",
            AclOutcome::NotChecked => "not-checked",
            AclOutcome::Rule { .. } => "allow",
            AclOutcome::DefaultDeny { .. } => "deny",
        }
    }

    fn policies(&self, pod: Ipv4Addr, names: &dyn TraceNames) -> Vec<String> {
        match self {
            AclOutcome::DefaultDeny { policies } if policies.is_empty() => names.policies_of(pod),
            AclOutcome::DefaultDeny { policies } => policies.clone(),
            _ => Vec::new(),
        }
    }

    fn describe(&self, dir: &str, pod: Ipv4Addr, names: &dyn TraceNames) -> String {
        match self {
            AclOutcome::NotIsolated => format!("{dir} of {pod}: not isolated"),
            AclOutcome::NotChecked => format!("{dir} of {pod}: not checked"),
            AclOutcome::Rule {
                policy,
                index,
                acl_rule,
            } => format!(
                "{dir} of {pod}: allowed by {policy} {dir} rule {index} (acl rule {acl_rule})"
            ),
            AclOutcome::DefaultDeny { .. } => {
                let p = self.policies(pod, names);
                let by = if p.is_empty() {
                    String::new()
                } else {
                    format!(" (isolated by {})", p.join(", "))
                };
                format!("{dir} of {pod}: denied, no rule allows it: default deny{by}")
            }
        }
    }
}

impl PolicyStep {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyStep::Established => "established",
            PolicyStep::KnownFlow => "known-flow",
            PolicyStep::NotIsolated => "not-isolated",
            PolicyStep::SelfTraffic => "self",
            PolicyStep::Classified => "classified",
        }
    }
}

impl TraceData {
    /// Human text; `names` maps a global error code to "node: reason" (a closure does).
    pub fn describe(&self, names: &dyn TraceNames) -> String {
        match self {
            TraceData::Rx { sw_if, len } => format!("rx sw_if {sw_if} len {len}"),
            TraceData::Ethernet {
                src,
                dst,
                ethertype,
            } => format!("{} -> {} type 0x{ethertype:04x}", mac(src), mac(dst)),
            TraceData::Arp {
                op,
                sender,
                target,
                replied,
            } => format!(
                "arp {} who-has {target} tell {sender}{}",
                if *op == 1 { "request" } else { "reply" },
                if *replied { ": replied" } else { "" }
            ),
            TraceData::Ip4 {
                src,
                dst,
                proto,
                ttl,
                len,
            } => format!("{src} -> {dst} proto {proto} ttl {ttl} len {len}"),
            TraceData::Lookup {
                prefix,
                adj,
                kind,
                sw_if,
            } => format!("route {prefix} adj {adj} {kind:?} sw_if {sw_if}"),
            TraceData::Rewrite {
                sw_if,
                dst_mac,
                ttl,
            } => format!("rewrite to {} on sw_if {sw_if} ttl {ttl}", mac(dst_mac)),
            TraceData::IcmpError { icmp_type, code } => {
                format!("icmp error type {icmp_type} code {code}")
            }
            TraceData::Tx { sw_if, port } => format!("tx sw_if {sw_if} port {port}"),
            TraceData::Punt => "punt to host".to_string(),
            TraceData::Drop { error } => format!("drop: {}", names.error_name(*error)),
            TraceData::Nat(step) => match step {
                NatStep::ServiceNew {
                    service,
                    kind,
                    frontend: f,
                    backend,
                    snat,
                    hairpin,
                    session,
                } => {
                    let mut t = format!(
                        "service-dnat {service} {} {} -> backend {} session {session}",
                        kind.as_str(),
                        frontend(f),
                        endpoint(backend.0, backend.1)
                    );
                    if let Some((a, p)) = snat {
                        let why = if *hairpin { "hairpin" } else { "external" };
                        let _ = write!(t, ", snat to {} ({why})", endpoint(*a, *p));
                    }
                    t
                }
                NatStep::NoEndpoint {
                    service,
                    frontend: f,
                    rejected,
                } => format!(
                    "service {service} {}: no {}endpoint{}",
                    frontend(f),
                    if *rejected { "" } else { "local " },
                    if *rejected {
                        ", rejected (tcp reset or icmp unreachable)"
                    } else {
                        ""
                    }
                ),
                NatStep::Masquerade { from, to, session } => format!(
                    "masquerade {} -> {} session {session}",
                    endpoint(from.0, from.1),
                    endpoint(to.0, to.1)
                ),
                NatStep::Session {
                    session,
                    nat,
                    reply,
                    old,
                    new,
                } => format!(
                    "{} session {session} ({}): {} => {}",
                    if *reply { "reverse-nat" } else { "nat" },
                    nat.as_str(),
                    tuple(old),
                    tuple(new)
                ),
                NatStep::Tracked { session } => {
                    format!("untranslated, tracked session {session} (replies not masqueraded)")
                }
                NatStep::IcmpError => "icmp error about a translated flow rewritten".to_string(),
                NatStep::Untranslated => "no service, session or masquerade: untranslated".into(),
            },
            TraceData::Policy {
                step,
                src,
                dst,
                proto,
                dport,
                egress,
                ingress,
            } => {
                let flow = format!("{src} -> {dst} {}/{dport}", proto_name(*proto));
                match step {
                    PolicyStep::Classified => {
                        let allowed = !matches!(egress, AclOutcome::DefaultDeny { .. })
                            && !matches!(ingress, AclOutcome::DefaultDeny { .. });
                        format!(
                            "policy {flow}: {}; {}; {}",
                            if allowed { "allow" } else { "deny" },
                            egress.describe("egress", *src, names),
                            ingress.describe("ingress", *dst, names)
                        )
                    }
                    PolicyStep::Established => {
                        format!("policy {flow}: established connection, not classified")
                    }
                    PolicyStep::KnownFlow => {
                        format!("policy {flow}: flow allowed before, not classified")
                    }
                    PolicyStep::NotIsolated => {
                        format!("policy {flow}: allow, neither pod isolated for this direction")
                    }
                    PolicyStep::SelfTraffic => format!("policy {flow}: allow, pod to itself"),
                }
            }
            TraceData::Encap {
                tunnel,
                mode,
                local,
                remote,
                len,
            } => format!(
                "encap {} sw_if {tunnel} {local} -> peer {remote} len {len}",
                mode.as_str()
            ),
            TraceData::Decap {
                tunnel,
                mode,
                remote,
                len,
            } => format!(
                "decap {} from peer {remote} to sw_if {tunnel} inner len {len}",
                mode.as_str()
            ),
        }
    }

    /// The decision as named fields (`decision` names the kind of record), for JSON.
    pub fn fields(&self, names: &dyn TraceNames) -> Vec<(&'static str, String)> {
        let mut f: Vec<(&'static str, String)> = Vec::new();
        match self {
            TraceData::Rx { sw_if, len } => {
                f.push(("decision", "rx".into()));
                f.push(("sw_if", sw_if.to_string()));
                f.push(("len", len.to_string()));
            }
            TraceData::Ethernet {
                src,
                dst,
                ethertype,
            } => {
                f.push(("decision", "ethernet".into()));
                f.push(("src", mac(src)));
                f.push(("dst", mac(dst)));
                f.push(("ethertype", format!("0x{ethertype:04x}")));
            }
            TraceData::Arp {
                op,
                sender,
                target,
                replied,
            } => {
                f.push(("decision", "arp".into()));
                f.push(("op", op.to_string()));
                f.push(("sender", sender.to_string()));
                f.push(("target", target.to_string()));
                f.push(("replied", replied.to_string()));
            }
            TraceData::Ip4 {
                src,
                dst,
                proto,
                ttl,
                len,
            } => {
                f.push(("decision", "ip4".into()));
                f.push(("src", src.to_string()));
                f.push(("dst", dst.to_string()));
                f.push(("proto", proto_name(*proto)));
                f.push(("ttl", ttl.to_string()));
                f.push(("len", len.to_string()));
            }
            TraceData::Lookup {
                prefix,
                adj,
                kind,
                sw_if,
            } => {
                f.push(("decision", "route".into()));
                f.push(("prefix", prefix.to_string()));
                f.push(("adj", adj.to_string()));
                f.push(("kind", format!("{kind:?}").to_lowercase()));
                f.push(("sw_if", sw_if.to_string()));
            }
            TraceData::Rewrite {
                sw_if,
                dst_mac,
                ttl,
            } => {
                f.push(("decision", "rewrite".into()));
                f.push(("sw_if", sw_if.to_string()));
                f.push(("dst_mac", mac(dst_mac)));
                f.push(("ttl", ttl.to_string()));
            }
            TraceData::IcmpError { icmp_type, code } => {
                f.push(("decision", "icmp-error".into()));
                f.push(("type", icmp_type.to_string()));
                f.push(("code", code.to_string()));
            }
            TraceData::Tx { sw_if, port } => {
                f.push(("decision", "tx".into()));
                f.push(("sw_if", sw_if.to_string()));
                f.push(("port", port.to_string()));
            }
            TraceData::Punt => f.push(("decision", "punt".into())),
            TraceData::Drop { error } => {
                f.push(("decision", "drop".into()));
                f.push(("error", error.to_string()));
                f.push(("reason", names.error_name(*error)));
            }
            TraceData::Nat(step) => match step {
                NatStep::ServiceNew {
                    service,
                    kind,
                    frontend: fr,
                    backend,
                    snat,
                    hairpin,
                    session,
                } => {
                    f.push(("decision", "service-dnat".into()));
                    f.push(("service", service.clone()));
                    f.push(("frontend_kind", kind.as_str().into()));
                    f.push(("frontend", frontend(fr)));
                    f.push(("backend", endpoint(backend.0, backend.1)));
                    if let Some((a, p)) = snat {
                        f.push(("snat", endpoint(*a, *p)));
                    }
                    f.push(("hairpin", hairpin.to_string()));
                    f.push(("session", session.to_string()));
                }
                NatStep::NoEndpoint {
                    service,
                    frontend: fr,
                    rejected,
                } => {
                    f.push(("decision", "service-no-endpoint".into()));
                    f.push(("service", service.clone()));
                    f.push(("frontend", frontend(fr)));
                    f.push(("rejected", rejected.to_string()));
                }
                NatStep::Masquerade { from, to, session } => {
                    f.push(("decision", "masquerade".into()));
                    f.push(("from", endpoint(from.0, from.1)));
                    f.push(("to", endpoint(to.0, to.1)));
                    f.push(("session", session.to_string()));
                }
                NatStep::Session {
                    session,
                    nat,
                    reply,
                    old,
                    new,
                } => {
                    f.push((
                        "decision",
                        if *reply { "reverse-nat" } else { "nat" }.into(),
                    ));
                    f.push(("session", session.to_string()));
                    f.push(("nat", nat.as_str().into()));
                    f.push(("old", tuple(old)));
                    f.push(("new", tuple(new)));
                }
                NatStep::Tracked { session } => {
                    f.push(("decision", "untranslated-tracked".into()));
                    f.push(("session", session.to_string()));
                }
                NatStep::IcmpError => f.push(("decision", "icmp-error-nat".into())),
                NatStep::Untranslated => f.push(("decision", "untranslated".into())),
            },
            TraceData::Policy {
                step,
                src,
                dst,
                proto,
                dport,
                egress,
                ingress,
            } => {
                f.push(("decision", "policy".into()));
                f.push(("step", step.as_str().into()));
                let denied = [(egress, "egress"), (ingress, "ingress")]
                    .into_iter()
                    .find(|(o, _)| matches!(o, AclOutcome::DefaultDeny { .. }));
                f.push((
                    "verdict",
                    if denied.is_some() { "deny" } else { "allow" }.into(),
                ));
                f.push(("src", src.to_string()));
                f.push(("dst", dst.to_string()));
                f.push(("proto", proto_name(*proto)));
                f.push(("dport", dport.to_string()));
                f.push(("egress", egress.verdict().into()));
                f.push(("ingress", ingress.verdict().into()));
                if let Some((o, dir)) = denied {
                    let pod = if dir == "egress" { *src } else { *dst };
                    f.push(("denied_by", dir.into()));
                    f.push(("policies", o.policies(pod, names).join(",")));
                } else {
                    let rules: Vec<String> = [(egress, "egress"), (ingress, "ingress")]
                        .into_iter()
                        .filter_map(|(o, dir)| match o {
                            AclOutcome::Rule { policy, index, .. } => {
                                Some(format!("{policy} {dir} rule {index}"))
                            }
                            _ => None,
                        })
                        .collect();
                    if !rules.is_empty() {
                        f.push(("rules", rules.join(",")));
                    }
                }
            }
            TraceData::Encap {
                tunnel,
                mode,
                local,
                remote,
                len,
            } => {
                f.push(("decision", "encap".into()));
                f.push(("mode", mode.as_str().into()));
                f.push(("sw_if", tunnel.to_string()));
                f.push(("local", local.to_string()));
                f.push(("peer", remote.to_string()));
                f.push(("len", len.to_string()));
            }
            TraceData::Decap {
                tunnel,
                mode,
                remote,
                len,
            } => {
                f.push(("decision", "decap".into()));
                f.push(("mode", mode.as_str().into()));
                f.push(("sw_if", tunnel.to_string()));
                f.push(("peer", remote.to_string()));
                f.push(("len", len.to_string()));
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Names;

    impl TraceNames for Names {
        fn error_name(&self, code: u16) -> String {
            format!("ip4-policy: reason {code}")
        }

        fn policies_of(&self, pod: Ipv4Addr) -> Vec<String> {
            vec![format!("ns/isolates-{pod}")]
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn field<'a>(f: &'a [(&'static str, String)], k: &str) -> Option<&'a str> {
        f.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn service_dnat_names_service_and_backend() {
        let d = TraceData::Nat(NatStep::ServiceNew {
            service: "default/web:http".into(),
            kind: FrontendKind::ClusterIp,
            frontend: FrontendKey {
                addr: ip("10.96.0.10"),
                proto: 6,
                port: 80,
            },
            backend: (ip("10.244.1.11"), 8080),
            snat: Some((ip("10.96.0.10"), 4000)),
            hairpin: true,
            session: 3,
        });
        assert_eq!(
            d.describe(&Names),
            "service-dnat default/web:http cluster-ip 10.96.0.10:80/tcp -> backend \
             10.244.1.11:8080 session 3, snat to 10.96.0.10:4000 (hairpin)"
        );
        let f = d.fields(&Names);
        assert_eq!(field(&f, "decision"), Some("service-dnat"));
        assert_eq!(field(&f, "backend"), Some("10.244.1.11:8080"));
        assert_eq!(field(&f, "snat"), Some("10.96.0.10:4000"));
    }

    #[test]
    fn policy_deny_names_direction_and_policies() {
        let policy = |ingress: AclOutcome| TraceData::Policy {
            step: PolicyStep::Classified,
            src: ip("10.244.1.10"),
            dst: ip("10.244.1.12"),
            proto: 6,
            dport: 8080,
            egress: AclOutcome::NotIsolated,
            ingress,
        };
        // An ACL without rules: the policies come from the names (the compiler).
        let d = policy(AclOutcome::DefaultDeny { policies: vec![] });
        let f = d.fields(&Names);
        assert_eq!(field(&f, "verdict"), Some("deny"));
        assert_eq!(field(&f, "denied_by"), Some("ingress"));
        assert_eq!(field(&f, "policies"), Some("ns/isolates-10.244.1.12"));
        assert!(d
            .describe(&Names)
            .contains("ingress of 10.244.1.12: denied, no rule allows it: default deny (isolated by ns/isolates-10.244.1.12)"));
        // An ACL with rules names them itself.
        let d = policy(AclOutcome::DefaultDeny {
            policies: vec!["ns/p".into()],
        });
        assert_eq!(field(&d.fields(&Names), "policies"), Some("ns/p"));
        // Allowed: the rule.
        let d = policy(AclOutcome::Rule {
            policy: "ns/p".into(),
            index: 1,
            acl_rule: 0,
        });
        let f = d.fields(&Names);
        assert_eq!(field(&f, "verdict"), Some("allow"));
        assert_eq!(field(&f, "rules"), Some("ns/p ingress rule 1"));
        assert_eq!(field(&f, "denied_by"), None);
    }

    #[test]
    fn drop_uses_the_error_name() {
        let d = TraceData::Drop { error: 7 };
        assert_eq!(d.describe(&Names), "drop: ip4-policy: reason 7");
        // A closure is enough where no policy names are needed.
        assert_eq!(d.describe(&|c: u16| format!("e{c}")), "drop: e7");
    }
}
