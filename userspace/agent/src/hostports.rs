//! hostPorts without netfilter: the CNI `portMappings` capability (and, in Kubernetes
//! mode, `Pod.spec.containers[].ports[].hostPort`) served by the engine.
//!
//! A hostPort is a NodePort bound to one pod: it joins the service table as a service port
//! whose node port is the hostPort and whose one backend is the pod's address and
//! container port ([`defs`]), so `xdp_uplink` steers it into the engine through `ports4`
//! like any NodePort, `ip4-nat` translates it (DNAT to the pod, replies reversed) and the
//! client's address is kept (the backend is local: no SNAT). Whatever steers NodePorts
//! (pods through `xdp_pod`, the node's own traffic) steers hostPorts too.
//!
//! Where they come from and how long they live:
//! - CNI ADD with `runtimeConfig.portMappings`: checked against what is taken on the node
//!   ([`Reserved::check`]: service node ports, health-check node ports, the agent's own
//!   listeners, the tunnel ports, the SNAT range, the node's ephemeral port range, the
//!   hostPorts the watchers bound) and against the other attachments (under the IPAM lock,
//!   [`crate::ipam::Ipam::reserve_unsynced`]) before anything is allocated; refused with
//!   [`ferroplane_cni::code::HOSTPORT_CONFLICT`]. Kept in the attachment's IPAM record
//!   (crash-safe like the address), restored from it after a restart, released with it on
//!   DEL and GC.
//! - Kubernetes mode: the hostPorts of this node's pods ([`from_pods`]), for runtimes that
//!   pass no `portMappings`. A binding both sources give once counts once
//!   ([`merge`]); the runtime's wins a disagreement.
//!
//! A later Service whose node port takes a bound hostPort wins it (node ports are the
//! cluster's, a hostPort is one pod's): the hostPort is shown as shadowed
//! (`ferroctl show hostports`) and counted, and comes back when the Service goes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ferroplane_cni::{code, CniError, PortMapping};
use ferroplane_tables::service::{
    proto_name, Backend, EndpointState, ServicePortDef, PROTO_TCP, PROTO_UDP,
};
use serde::{Deserialize, Serialize};

use crate::config::NodeSpec;

/// Prefix of the service name of a hostPort's service port (`hostport:<pod>`).
pub const SERVICE_PREFIX: &str = "hostport:";

/// One hostPort of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostPort {
    /// IP protocol ([`PROTO_TCP`] or [`PROTO_UDP`]).
    pub proto: u8,
    /// Port on the node.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// The node address it is bound to; `None`: every address the engine serves node
    /// ports on.
    pub host_ip: Option<Ipv4Addr>,
}

impl HostPort {
    /// From a mapping the plugin validated (`tcp`/`udp`, ports 1-65535, `hostIP` empty or
    /// IPv4); anything else is an invalid configuration (code 7).
    pub fn from_mapping(m: &PortMapping) -> Result<HostPort, CniError> {
        let bad = |msg: String| {
            CniError::new(
                code::INVALID_NETWORK_CONFIG,
                format!("runtimeConfig.portMappings: {msg}"),
            )
        };
        let proto = match m.protocol.to_ascii_lowercase().as_str() {
            "tcp" | "" => PROTO_TCP,
            "udp" => PROTO_UDP,
            p => return Err(bad(format!("protocol {p:?} is not tcp or udp"))),
        };
        if m.host_port == 0 || m.container_port == 0 {
            return Err(bad(format!(
                "hostPort {} / containerPort {}: ports must be 1-65535",
                m.host_port, m.container_port
            )));
        }
        let host_ip = match m.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            a => Some(
                a.parse::<Ipv4Addr>()
                    .map_err(|_| bad(format!("hostIP {a:?} is not an IPv4 address")))?,
            ),
        };
        Ok(HostPort {
            proto,
            host_port: m.host_port,
            container_port: m.container_port,
            host_ip,
        })
    }

    /// The mapping as an IPAM record keeps it (`tcp`/`udp`, `hostIP` empty for every
    /// address).
    pub fn to_mapping(&self) -> PortMapping {
        PortMapping {
            host_port: self.host_port,
            container_port: self.container_port,
            protocol: proto_name(self.proto),
            host_ip: self.host_ip.map(|a| a.to_string()).unwrap_or_default(),
        }
    }

    /// `8080/tcp`, or `192.168.100.2:8080/tcp` with an address.
    pub fn name(&self) -> String {
        match self.host_ip {
            Some(a) => format!("{a}:{}/{}", self.host_port, proto_name(self.proto)),
            None => format!("{}/{}", self.host_port, proto_name(self.proto)),
        }
    }

    /// Whether two hostPorts claim the same node port (same protocol and port, and the
    /// same address or either on every address).
    pub fn overlaps(&self, other: &HostPort) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

/// `8080/tcp` (or `ADDRESS:8080/tcp`) of a mapping.
pub fn mapping_name(m: &PortMapping) -> String {
    if m.host_ip.is_empty() {
        format!("{}/{}", m.host_port, m.protocol)
    } else {
        format!("{}:{}/{}", m.host_ip, m.host_port, m.protocol)
    }
}

/// The hostPorts of a CNI ADD, each bound to an address the engine serves node ports on
/// (empty, `0.0.0.0` or `node_addr`); another `hostIP` is an invalid configuration (code 7:
/// nothing would ever reach it).
pub fn from_request(
    mappings: &[PortMapping],
    node_addr: Ipv4Addr,
) -> Result<Vec<HostPort>, CniError> {
    let mut out = Vec::with_capacity(mappings.len());
    for m in mappings {
        let hp = HostPort::from_mapping(m)?;
        if let Some(a) = hp.host_ip {
            if a != node_addr {
                return Err(CniError::new(
                    code::INVALID_NETWORK_CONFIG,
                    format!(
                        "runtimeConfig.portMappings: hostIP {a} of hostPort {} is not this node's address ({node_addr}): hostPorts are served on the node's address only",
                        hp.name()
                    ),
                ));
            }
        }
        if !out.contains(&hp) {
            out.push(hp);
        }
    }
    Ok(out)
}

/// Where a binding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The runtime's `portMappings` (CNI ADD).
    Cni,
    /// The pod's spec (Kubernetes watchers).
    Kubernetes,
    /// Both, agreeing.
    Both,
}

impl Source {
    /// `cni`, `kubernetes` or `cni+kubernetes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cni => "cni",
            Source::Kubernetes => "kubernetes",
            Source::Both => "cni+kubernetes",
        }
    }
}

/// A hostPort bound to a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Binding {
    /// The pod (`namespace/name`, or the attachment's key `cni/<container>/<ifname>`).
    pub pod: String,
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// The port.
    pub port: HostPort,
    /// Where it comes from.
    pub source: Source,
}

/// A binding that is not served, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    /// The binding.
    pub binding: Binding,
    /// Why (the service node port or binding that has the port).
    pub reason: String,
}

/// The bindings of the CNI attachments (authoritative) and of the Kubernetes pods
/// (`k8s`: only those of pods plumbed here, `local_ips`). A Kubernetes binding equal to a
/// CNI one (same pod address, protocol, port, container port, overlapping address) marks
/// it [`Source::Both`]; one that overlaps another binding is left out as shadowed.
pub fn merge(
    cni: Vec<Binding>,
    k8s: &[Binding],
    local_ips: &std::collections::BTreeSet<Ipv4Addr>,
) -> (Vec<Binding>, Vec<Shadowed>) {
    let mut out = cni;
    let mut shadowed = Vec::new();
    for b in k8s {
        if !local_ips.contains(&b.pod_ip) {
            continue;
        }
        if let Some(same) = out.iter_mut().find(|o| {
            o.pod_ip == b.pod_ip
                && o.port.container_port == b.port.container_port
                && o.port.overlaps(&b.port)
        }) {
            if same.source == Source::Cni {
                same.source = Source::Both;
            }
            continue;
        }
        match out.iter().find(|o| o.port.overlaps(&b.port)) {
            Some(o) => shadowed.push(Shadowed {
                binding: b.clone(),
                reason: format!(
                    "hostPort {} is bound to {} ({}:{}, {})",
                    o.port.name(),
                    o.pod,
                    o.pod_ip,
                    o.port.container_port,
                    o.source.as_str()
                ),
            }),
            None => out.push(b.clone()),
        }
    }
    (out, shadowed)
}

/// The service ports of `bindings` next to the spec's service ports `services`: one per
/// binding, node port = hostPort, one local backend (the pod's address and container port).
/// A binding whose port a service node port (or health-check node port) or an earlier
/// binding has, or whose address is not the node's, is left out as shadowed.
pub fn defs<'a>(
    services: impl IntoIterator<Item = &'a ServicePortDef>,
    bindings: &[Binding],
    spec: &NodeSpec,
) -> (Vec<ServicePortDef>, Vec<Shadowed>) {
    let node_addr = spec.node.address.addr;
    let mut taken: BTreeMap<(u8, u16), String> = BTreeMap::new();
    for d in services {
        if let Some(np) = d.node_port {
            taken.insert(
                (d.proto, np),
                format!("the node port of service {}", d.service),
            );
        }
        if let Some(hc) = d.health_check_node_port {
            taken
                .entry((PROTO_TCP, hc))
                .or_insert_with(|| format!("the health-check node port of service {}", d.service));
        }
    }
    let mut out = Vec::new();
    let mut shadowed = Vec::new();
    for b in bindings {
        let p = b.port;
        let why = if p.host_ip.is_some_and(|a| a != node_addr) {
            Some(format!(
                "{} is not the node's address {node_addr}",
                p.host_ip.unwrap_or(node_addr)
            ))
        } else {
            taken.get(&(p.proto, p.host_port)).cloned()
        };
        if let Some(reason) = why {
            tracing::warn!(pod = %b.pod, hostport = %p.name(), "hostPort not served: {reason}");
            shadowed.push(Shadowed {
                binding: b.clone(),
                reason,
            });
            continue;
        }
        taken.insert(
            (p.proto, p.host_port),
            format!("hostPort {} of pod {}", p.name(), b.pod),
        );
        out.push(ServicePortDef {
            service: format!("{SERVICE_PREFIX}{}", b.pod),
            port_name: format!("{}-{}", proto_name(p.proto), p.host_port),
            proto: p.proto,
            port: p.host_port,
            node_port: Some(p.host_port),
            cluster_ips: Vec::new(),
            external_ips: Vec::new(),
            lb_ips: Vec::new(),
            backends: vec![Backend {
                addr: b.pod_ip,
                port: p.container_port,
                local: true,
                state: EndpointState::Ready,
                weight: 1,
                node: spec.node.name.clone(),
                target: b.pod.clone(),
            }],
            internal_local: false,
            // The client's address is kept: the one backend is on this node.
            external_local: true,
            affinity_secs: None,
            health_check_node_port: None,
        });
    }
    (out, shadowed)
}

/// The hostPorts of the Kubernetes pods on node `me` (not hostNetwork, with an IPv4
/// address): every container port with a `hostPort`, TCP or UDP (SCTP is not served), on
/// every address or an IPv4 `hostIP`.
pub fn from_pods(pods: &[k8s_openapi::api::core::v1::Pod], me: &str) -> Vec<Binding> {
    let mut out = Vec::new();
    for p in pods {
        let Some(spec) = p.spec.as_ref() else {
            continue;
        };
        if spec.node_name.as_deref() != Some(me) || spec.host_network == Some(true) {
            continue;
        }
        let Some(status) = p.status.as_ref() else {
            continue;
        };
        let Some(ip) = status
            .pod_ips
            .iter()
            .flatten()
            .map(|i| i.ip.as_str())
            .chain(status.pod_ip.as_deref())
            .find_map(|a| a.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let pod = format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or("default"),
            p.metadata.name.as_deref().unwrap_or("")
        );
        for cp in spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
        {
            let (Some(hp), Ok(container_port)) = (cp.host_port, u16::try_from(cp.container_port))
            else {
                continue;
            };
            let Ok(host_port) = u16::try_from(hp) else {
                continue;
            };
            let proto = match cp.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => PROTO_TCP,
                "UDP" => PROTO_UDP,
                _ => continue,
            };
            let host_ip = match cp.host_ip.as_deref().unwrap_or("") {
                "" | "0.0.0.0" => None,
                a => match a.parse::<Ipv4Addr>() {
                    Ok(a) => Some(a),
                    Err(_) => continue,
                },
            };
            if host_port == 0 || container_port == 0 {
                continue;
            }
            let b = Binding {
                pod: pod.clone(),
                pod_ip: ip,
                port: HostPort {
                    proto,
                    host_port,
                    container_port,
                    host_ip,
                },
                source: Source::Kubernetes,
            };
            if !out.contains(&b) {
                out.push(b);
            }
        }
    }
    out.sort();
    out
}

/// What a new hostPort may not take on this node, besides the other attachments'
/// hostPorts (those are checked under the IPAM lock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// The node address hostPorts are served on.
    pub node_addr: Option<Ipv4Addr>,
    /// (protocol, port) → what has it.
    pub ports: BTreeMap<(u8, u16), String>,
    /// Port ranges (both protocols) → what they are.
    pub ranges: Vec<(u16, u16, String)>,
    /// The bindings in force (a Kubernetes pod's hostPort the runtime did not pass).
    pub bindings: Vec<Binding>,
}

impl Reserved {
    /// What `spec` takes: its services' node ports and health-check node ports, the
    /// agent's listeners (`listeners`: the actual health and metrics ports; BGP and
    /// WireGuard from the spec), the tunnel ports and the SNAT range, plus the
    /// `bindings` in force.
    pub fn of<'a>(
        spec: &NodeSpec,
        services: impl IntoIterator<Item = &'a ServicePortDef>,
        listeners: &BTreeMap<u16, String>,
        bindings: &[Binding],
    ) -> Reserved {
        let mut r = Reserved {
            node_addr: Some(spec.node.address.addr),
            bindings: bindings.to_vec(),
            ..Reserved::default()
        };
        for d in services {
            if let Some(np) = d.node_port {
                r.ports.insert(
                    (d.proto, np),
                    format!("the node port of service {}", d.service),
                );
            }
            if let Some(hc) = d.health_check_node_port {
                r.ports.entry((PROTO_TCP, hc)).or_insert_with(|| {
                    format!("the health-check node port of service {}", d.service)
                });
            }
        }
        let protected = crate::services::Protected::ports_of_spec(spec);
        for (port, what) in protected.listener_ports.iter().chain(listeners) {
            for proto in [PROTO_TCP, PROTO_UDP] {
                r.ports
                    .entry((proto, *port))
                    .or_insert_with(|| what.clone());
            }
        }
        if let Some(c) = &spec.cluster {
            r.ports.entry((PROTO_UDP, c.vxlan.port)).or_insert_with(|| {
                "the VXLAN port the engine decapsulates (cluster.vxlan.port)".to_string()
            });
            r.ports
                .entry((PROTO_UDP, c.wireguard.port))
                .or_insert_with(|| {
                    "the WireGuard port the engine decapsulates (cluster.wireguard.port)"
                        .to_string()
                });
        }
        let (lo, hi) = protected.snat_ports;
        r.ranges.push((
            lo,
            hi,
            format!("inside serviceProxy.snatPorts {lo}-{hi} (the engine's own translations come back there)"),
        ));
        r
    }

    /// Checks the hostPorts of an ADD for pod `identity` (`namespace/name`, when the
    /// runtime said). `ephemeral`: the node's `net.ipv4.ip_local_port_range` (a hostPort
    /// there would take the replies to the node's own connections). A conflict is
    /// [`code::HOSTPORT_CONFLICT`] naming what has the port.
    pub fn check(
        &self,
        ports: &[HostPort],
        identity: Option<&str>,
        ephemeral: Option<(u16, u16)>,
    ) -> Result<(), CniError> {
        let conflict = |p: &HostPort, what: String| {
            CniError::new(
                code::HOSTPORT_CONFLICT,
                format!("hostPort {} is taken: {what}", p.name()),
            )
        };
        for p in ports {
            if let Some(what) = self.ports.get(&(p.proto, p.host_port)) {
                return Err(conflict(p, what.clone()));
            }
            for (lo, hi, what) in &self.ranges {
                if (*lo..=*hi).contains(&p.host_port) {
                    return Err(conflict(p, what.clone()));
                }
            }
            if let Some((lo, hi)) = ephemeral {
                if (lo..=hi).contains(&p.host_port) {
                    return Err(conflict(
                        p,
                        format!("inside the node's ephemeral port range {lo}-{hi} (net.ipv4.ip_local_port_range): it would take the replies to the node's own connections"),
                    ));
                }
            }
            if let Some(b) = self
                .bindings
                .iter()
                .find(|b| b.port.overlaps(p) && Some(b.pod.as_str()) != identity)
            {
                return Err(conflict(
                    p,
                    format!(
                        "bound to pod {} ({}:{}, {})",
                        b.pod,
                        b.pod_ip,
                        b.port.container_port,
                        b.source.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The node's ephemeral port range (`net.ipv4.ip_local_port_range` of the agent's
/// namespace, the node's), if readable.
pub fn ephemeral_range() -> Option<(u16, u16)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// The hostPorts as the service cache last built them: what is served, what is shadowed,
/// and what a new one may not take.
#[derive(Debug, Clone, Default)]
pub struct HostPortTable {
    /// The bindings the table was built from (after [`merge`]).
    pub input: Vec<Binding>,
    /// Served.
    pub served: Vec<Binding>,
    /// Not served, with the reason.
    pub shadowed: Vec<Shadowed>,
    /// What a new hostPort may not take.
    pub reserved: Reserved,
    /// The agent's own listener ports (set once at start: `--health-addr`, `--metrics-addr`).
    pub listeners: BTreeMap<u16, String>,
}

/// `show_hostports` from the service cache in force.
pub fn report_of(cache: &crate::services::ServiceCacheHandle) -> Vec<ferroplane_api::HostPortInfo> {
    match cache.lock() {
        Ok(c) => report(&c.host_ports),
        Err(p) => report(&p.into_inner().host_ports),
    }
}

/// `show_hostports`: every binding, served or shadowed.
pub fn report(t: &HostPortTable) -> Vec<ferroplane_api::HostPortInfo> {
    let info = |b: &Binding, served: bool, reason: &str| ferroplane_api::HostPortInfo {
        pod: b.pod.clone(),
        protocol: proto_name(b.port.proto),
        host_ip: b.port.host_ip.map(|a| a.to_string()).unwrap_or_default(),
        host_port: b.port.host_port,
        pod_ip: b.pod_ip.to_string(),
        container_port: b.port.container_port,
        source: b.source.as_str().to_string(),
        served,
        reason: reason.to_string(),
    };
    let mut v: Vec<_> = t
        .served
        .iter()
        .map(|b| info(b, true, ""))
        .chain(
            t.shadowed
                .iter()
                .map(|s| info(&s.binding, false, &s.reason)),
        )
        .collect();
    v.sort_by(|a, b| (a.host_port, &a.protocol, &a.pod).cmp(&(b.host_port, &b.protocol, &b.pod)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
node:
  name: n1
  uplink: up0
  address: 192.168.100.2/24
  gateway: 192.168.100.1
  podCIDR: 10.244.1.0/24
cluster:
  mode: vxlan
  nodes: []
services:
  - metadata: {name: web, namespace: shop}
    spec:
      type: LoadBalancer
      clusterIP: 10.96.0.10
      externalTrafficPolicy: Local
      healthCheckNodePort: 30999
      ports: [{name: http, protocol: TCP, port: 80, nodePort: 30080}]
"#;

    fn hp(proto: u8, host_port: u16, container_port: u16) -> HostPort {
        HostPort {
            proto,
            host_port,
            container_port,
            host_ip: None,
        }
    }

    fn binding(pod: &str, ip: &str, port: HostPort, source: Source) -> Binding {
        Binding {
            pod: pod.into(),
            pod_ip: ip.parse().unwrap(),
            port,
            source,
        }
    }

    fn pm(host_port: u16, container_port: u16, protocol: &str, host_ip: &str) -> PortMapping {
        PortMapping {
            host_port,
            container_port,
            protocol: protocol.into(),
            host_ip: host_ip.into(),
        }
    }

    #[test]
    fn requests_become_host_ports_on_the_node_address() {
        let node: Ipv4Addr = "192.168.100.2".parse().unwrap();
        let v = from_request(
            &[
                pm(8080, 80, "tcp", ""),
                pm(5353, 53, "udp", "192.168.100.2"),
                pm(8080, 80, "TCP", "0.0.0.0"),
            ],
            node,
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                hp(PROTO_TCP, 8080, 80),
                HostPort {
                    host_ip: Some(node),
                    ..hp(PROTO_UDP, 5353, 53)
                }
            ]
        );
        assert_eq!(v[1].name(), "192.168.100.2:5353/udp");
        for (bad, needle) in [
            (pm(80, 80, "tcp", "10.0.0.1"), "not this node's address"),
            (pm(80, 80, "sctp", ""), "not tcp or udp"),
            (pm(0, 80, "tcp", ""), "1-65535"),
            (pm(80, 80, "tcp", "::"), "not an IPv4"),
        ] {
            let e = from_request(&[bad], node).unwrap_err();
            assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
            assert!(e.msg.contains(needle), "{needle:?}: {e:?}");
        }
    }

    #[test]
    fn static_conflicts_are_refused_with_their_reason() {
        let spec = NodeSpec::from_yaml(SPEC).unwrap();
        let services = crate::services::service_defs(&spec);
        let listeners: BTreeMap<u16, String> = [(
            9100,
            "the agent's metrics endpoint (--metrics-addr)".to_string(),
        )]
        .into();
        let bound = vec![binding(
            "shop/db",
            "10.244.1.20",
            hp(PROTO_TCP, 5432, 5432),
            Source::Kubernetes,
        )];
        let r = Reserved::of(&spec, &services, &listeners, &bound);
        let refused = |p: HostPort, id: Option<&str>| {
            let e = r.check(&[p], id, Some((32768, 60999))).unwrap_err();
            assert_eq!(e.code, code::HOSTPORT_CONFLICT, "{e:?}");
            e.msg
        };
        assert!(refused(hp(PROTO_TCP, 30080, 80), None).contains("node port of service shop/web"));
        assert!(refused(hp(PROTO_TCP, 30999, 80), None).contains("health-check node port"));
        assert!(refused(hp(PROTO_TCP, 9644, 80), None).contains("health endpoint"));
        assert!(refused(hp(PROTO_UDP, 9100, 80), None).contains("metrics"));
        assert!(refused(hp(PROTO_UDP, 4789, 80), None).contains("VXLAN"));
        assert!(refused(hp(PROTO_TCP, 62000, 80), None).contains("snatPorts"));
        assert!(refused(hp(PROTO_UDP, 40000, 80), None).contains("ephemeral"));
        assert!(
            refused(hp(PROTO_TCP, 5432, 1), Some("shop/other")).contains("bound to pod shop/db")
        );
        // Another protocol of a node port, an ordinary port: free.
        r.check(
            &[hp(PROTO_UDP, 30080, 80), hp(PROTO_TCP, 8080, 80)],
            None,
            Some((32768, 60999)),
        )
        .unwrap();
        // The pod's own Kubernetes binding is not a conflict (the runtime passes the same).
        r.check(&[hp(PROTO_TCP, 5432, 5432)], Some("shop/db"), None)
            .unwrap();
        // The ephemeral range, when it differs from the SNAT range.
        let e = r
            .check(&[hp(PROTO_TCP, 20000, 80)], None, Some((15000, 25000)))
            .unwrap_err();
        assert!(e.msg.contains("ephemeral"), "{e:?}");
    }

    #[test]
    fn bindings_become_node_ports_and_service_node_ports_win() {
        let spec = NodeSpec::from_yaml(SPEC).unwrap();
        let services = crate::services::service_defs(&spec);
        let bindings = vec![
            binding("ns/a", "10.244.1.10", hp(PROTO_TCP, 8080, 80), Source::Cni),
            binding("ns/a", "10.244.1.10", hp(PROTO_UDP, 8080, 53), Source::Cni),
            binding(
                "ns/b",
                "10.244.1.11",
                hp(PROTO_TCP, 30080, 80),
                Source::Kubernetes,
            ),
            binding(
                "ns/c",
                "10.244.1.12",
                HostPort {
                    host_ip: Some("10.9.9.9".parse().unwrap()),
                    ..hp(PROTO_TCP, 81, 80)
                },
                Source::Kubernetes,
            ),
        ];
        let (d, shadowed) = defs(&services, &bindings, &spec);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].node_port, Some(8080));
        assert_eq!(d[0].service, "hostport:ns/a");
        assert_eq!(
            d[0].backends[0].addr,
            "10.244.1.10".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(d[0].backends[0].port, 80);
        assert!(d[0].backends[0].local && d[0].external_local);
        assert_eq!((d[1].proto, d[1].backends[0].port), (PROTO_UDP, 53));
        assert_eq!(shadowed.len(), 2);
        assert!(shadowed[0].reason.contains("node port of service shop/web"));
        assert!(shadowed[1].reason.contains("not the node's address"));
        // The table builds with the service and the hostPorts together, and looks them up.
        let mut all = services.clone();
        all.extend(d);
        let t =
            ferroplane_tables::ServiceTable::build(all, vec![spec.node.address.addr], 251, None)
                .unwrap();
        let (i, kind) = t.lookup(spec.node.address.addr, PROTO_TCP, 8080).unwrap();
        assert_eq!(kind, ferroplane_tables::service::FrontendKind::NodePort);
        assert_eq!(t.port(i).unwrap().def.service, "hostport:ns/a");
        assert!(t.lookup(spec.node.address.addr, PROTO_TCP, 8081).is_none());
    }

    #[test]
    fn cni_and_kubernetes_bindings_merge() {
        let local: std::collections::BTreeSet<Ipv4Addr> = [
            "10.244.1.10".parse().unwrap(),
            "10.244.1.11".parse().unwrap(),
        ]
        .into();
        let cni = vec![binding(
            "cni/c1/eth0",
            "10.244.1.10",
            hp(PROTO_TCP, 8080, 80),
            Source::Cni,
        )];
        let k8s = vec![
            // The same, from the pod's spec: one binding, both sources.
            binding(
                "ns/a",
                "10.244.1.10",
                hp(PROTO_TCP, 8080, 80),
                Source::Kubernetes,
            ),
            // Only in the spec (the runtime passed nothing for it): served.
            binding(
                "ns/a",
                "10.244.1.10",
                hp(PROTO_UDP, 5353, 53),
                Source::Kubernetes,
            ),
            // Another pod on the same port: shadowed.
            binding(
                "ns/b",
                "10.244.1.11",
                hp(PROTO_TCP, 8080, 80),
                Source::Kubernetes,
            ),
            // A pod not plumbed here: ignored.
            binding(
                "ns/z",
                "10.244.1.99",
                hp(PROTO_TCP, 9090, 80),
                Source::Kubernetes,
            ),
        ];
        let (b, shadowed) = merge(cni, &k8s, &local);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].source, Source::Both);
        assert_eq!(b[1].port, hp(PROTO_UDP, 5353, 53));
        assert_eq!(shadowed.len(), 1);
        assert_eq!(shadowed[0].binding.pod, "ns/b");
        assert!(
            shadowed[0].reason.contains("cni/c1/eth0"),
            "{:?}",
            shadowed[0]
        );
    }

    #[test]
    fn pods_on_this_node_with_host_ports() {
        let pod = |name: &str, node: &str, host_network: bool| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [{"name": "c", "ports": [
                    {"containerPort": 80, "hostPort": 8080},
                    {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "192.168.100.2"},
                    {"containerPort": 9000},
                    {"containerPort": 7, "hostPort": 7, "protocol": "SCTP"}
                ]}]},
                "status": {"podIP": "10.244.1.10", "podIPs": [{"ip": "10.244.1.10"}]}
            }))
            .unwrap()
        };
        let v = from_pods(
            &[
                pod("a", "n1", false),
                pod("b", "n2", false),
                pod("c", "n1", true),
            ],
            "n1",
        );
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v
            .iter()
            .all(|b| b.pod == "ns/a" && b.source == Source::Kubernetes));
        assert!(v.contains(&binding(
            "ns/a",
            "10.244.1.10",
            hp(PROTO_TCP, 8080, 80),
            Source::Kubernetes
        )));
        assert!(v.iter().any(|b| b.port.proto == PROTO_UDP
            && b.port.host_ip == Some("192.168.100.2".parse().unwrap())));
    }
}
