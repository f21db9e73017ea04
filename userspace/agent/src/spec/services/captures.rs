//! Service entries that would capture traffic that is not the service's
//! (CVE-2020-8554 class): refused in the standalone spec, left out in Kubernetes mode.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use ipnet::Ipv4Net;

use super::invalid;
use super::*;
use crate::spec::{ConfigError, NodeSpec};

/// Ports of the agent's own listeners a `healthCheckNodePort` must not take (the
/// documented defaults of `--health-addr` and `--metrics-addr`; BGP and WireGuard ports
/// come from the spec).
pub const AGENT_LISTENER_PORTS: &[(u16, &str)] = &[
    (
        9644,
        "the agent's health endpoint (--health-addr default port)",
    ),
    (
        9464,
        "the agent's metrics endpoint (--metrics-addr default port)",
    ),
];

/// What a Service's `externalIPs`, LoadBalancer ingress IPs and `healthCheckNodePort`
/// must not capture (the CVE-2020-8554 class: a Service that claims another pod's, a node's
/// or the cluster's own address takes its traffic). Each entry says what it is, for the
/// error message.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    /// Pod addresses.
    pub pods: BTreeMap<Ipv4Addr, String>,
    /// Pod ranges: this node's and the other nodes' pod CIDRs, `serviceProxy.clusterCIDRs`.
    pub pod_cidrs: Vec<(Ipv4Net, String)>,
    /// Service ranges: `serviceProxy.serviceCIDRs`.
    pub service_cidrs: Vec<(Ipv4Net, String)>,
    /// Services' cluster IPs.
    pub cluster_ips: BTreeMap<Ipv4Addr, String>,
    /// This node's and the other nodes' addresses, the node's gateway, the masquerade
    /// address, the uplink subnet's broadcast address.
    pub nodes: BTreeMap<Ipv4Addr, String>,
    /// Ports of the agent's own listeners.
    pub listener_ports: BTreeMap<u16, String>,
    /// `serviceProxy.snatPorts` (steered to the engine).
    pub snat_ports: (u16, u16),
}

/// Why `ip` is a special address no Service may claim (as Kubernetes'
/// `ValidateNonSpecialIP`, plus multicast and the reserved block), if it is one.
pub fn special_address(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(if o[0] == 0 {
        "in 0.0.0.0/8 (this network)"
    } else if ip.is_loopback() {
        "a loopback address (127.0.0.0/8)"
    } else if ip.is_link_local() {
        "a link-local address (169.254.0.0/16)"
    } else if ip.is_multicast() {
        "a multicast address (224.0.0.0/4)"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else if o[0] >= 240 {
        "a reserved address (240.0.0.0/4)"
    } else {
        return None;
    })
}

impl Protected {
    /// What the spec itself knows: its pods, node, other nodes, service ranges, cluster
    /// IPs and listeners.
    pub fn of_spec(spec: &NodeSpec) -> Protected {
        let services = compiled(spec);
        Protected::of_compiled(spec, &by_ref(&services))
    }

    /// [`Protected::of_spec`] with the spec's services already compiled (`(index,
    /// service)`).
    fn of_compiled(spec: &NodeSpec, services: &[(usize, &CompiledService)]) -> Protected {
        let node = &spec.node;
        let mut p = Protected::ports_of_spec(spec);
        for pod in &spec.pods {
            p.pods
                .insert(pod.ip, format!("the address of pod {}", pod.key()));
        }
        p.pod_cidrs.push((
            node.pod_cidr,
            format!("inside pod CIDR {} of node {}", node.pod_cidr, node.name),
        ));
        p.nodes.insert(
            node.address.addr(),
            format!("the address of node {}", node.name),
        );
        let uplink = node.address.trunc();
        if uplink.prefix_len() < 31 {
            p.nodes.insert(
                uplink.broadcast(),
                format!("the broadcast address of the node's subnet {uplink}"),
            );
        }
        if let Some(gw) = node.gateway {
            p.nodes
                .entry(gw)
                .or_insert_with(|| format!("the gateway of node {} (node.gateway)", node.name));
        }
        if let Some(m) = spec.service_proxy.masquerade_address {
            p.nodes.entry(m).or_insert_with(|| {
                "the masquerade address (serviceProxy.masqueradeAddress)".to_string()
            });
        }
        if let Some(c) = &spec.cluster {
            for n in &c.nodes {
                p.nodes
                    .entry(n.address)
                    .or_insert_with(|| format!("the address of node {}", n.name));
                if let Some(cidr) = n.pod_cidr {
                    p.pod_cidrs
                        .push((cidr, format!("inside pod CIDR {cidr} of node {}", n.name)));
                }
            }
        }
        for (i, c) in spec.service_proxy.cluster_cidrs.iter().enumerate() {
            p.pod_cidrs.push((
                c.trunc(),
                format!(
                    "inside the cluster's own range {} (serviceProxy.clusterCIDRs[{i}])",
                    c.trunc()
                ),
            ));
        }
        for (i, c) in spec.service_proxy.service_cidrs.iter().enumerate() {
            p.service_cidrs.push((
                c.trunc(),
                format!(
                    "inside the service range {} (serviceProxy.serviceCIDRs[{i}])",
                    c.trunc()
                ),
            ));
        }
        for (_, s) in services {
            for &ip in &s.cluster_ips {
                p.cluster_ips
                    .entry(ip)
                    .or_insert_with(|| format!("the cluster IP of service {}", s.key()));
            }
        }
        p
    }

    /// Only the ports of [`Protected::of_spec`] (listeners, SNAT range), without going
    /// through the services (what hostPorts are checked against).
    pub fn ports_of_spec(spec: &NodeSpec) -> Protected {
        let mut p = Protected {
            snat_ports: spec
                .service_proxy
                .snat_range()
                .unwrap_or(ferroplane_tables::nat::DEFAULT_SNAT_PORTS),
            ..Protected::default()
        };
        if let Some(c) = &spec.cluster {
            if c.uses_wireguard() || c.mode == crate::spec::cluster::Mode::Wireguard {
                p.listener_ports.insert(
                    c.wireguard.port,
                    "the agent's WireGuard port (cluster.wireguard.port)".to_string(),
                );
            }
        }
        for (port, what) in AGENT_LISTENER_PORTS {
            p.listener_ports.insert(*port, what.to_string());
        }
        if let Some(b) = &spec.bgp {
            p.listener_ports.insert(
                b.listen_port,
                "the agent's BGP listener (bgp.listenPort)".to_string(),
            );
        }
        p
    }

    /// Adds pods the spec does not list (Kubernetes mode: every pod of the cluster).
    pub fn with_pods(mut self, pods: impl IntoIterator<Item = (Ipv4Addr, String)>) -> Self {
        for (ip, who) in pods {
            self.pods
                .entry(ip)
                .or_insert_with(|| format!("the address of pod {who}"));
        }
        self
    }

    /// Why `ip` may not be an external or load-balancer IP, if it may not: the most
    /// specific reason first (special address, pod, pod range, cluster IP, service range,
    /// node).
    pub fn address_conflict(&self, ip: Ipv4Addr) -> Option<String> {
        if let Some(why) = special_address(ip) {
            return Some(format!("{ip} is {why}"));
        }
        let range = |v: &[(Ipv4Net, String)]| {
            v.iter()
                .find(|(c, _)| c.contains(&ip))
                .map(|(_, why)| why.clone())
        };
        if let Some(who) = self.pods.get(&ip) {
            return Some(match range(&self.pod_cidrs) {
                Some(inside) => format!("{ip} is {who} ({inside})"),
                None => format!("{ip} is {who}"),
            });
        }
        if let Some(why) = range(&self.pod_cidrs) {
            return Some(format!("{ip} is {why}"));
        }
        if let Some(why) = self.cluster_ips.get(&ip) {
            return Some(format!("{ip} is {why}"));
        }
        if let Some(why) = range(&self.service_cidrs) {
            return Some(format!("{ip} is {why}"));
        }
        self.nodes.get(&ip).map(|why| format!("{ip} is {why}"))
    }
}

/// Which entry of a Service a [`Refusal`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedEntry {
    /// `spec.externalIPs[i]`.
    ExternalIp(usize),
    /// `status.loadBalancer.ingress[i].ip`.
    LoadBalancerIngress(usize),
    /// `spec.healthCheckNodePort`.
    HealthCheckNodePort,
}

impl RefusedEntry {
    /// The field's name for metrics (`externalIPs`, `loadBalancerIngress`,
    /// `healthCheckNodePort`).
    pub fn kind(self) -> &'static str {
        match self {
            RefusedEntry::ExternalIp(_) => "externalIPs",
            RefusedEntry::LoadBalancerIngress(_) => "loadBalancerIngress",
            RefusedEntry::HealthCheckNodePort => "healthCheckNodePort",
        }
    }
}

/// A Service entry that would capture what it must not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Index in `services`.
    pub service: usize,
    /// `namespace/name` of the service.
    pub key: String,
    /// Which entry.
    pub entry: RefusedEntry,
    /// Full path of the field (`services[2].spec.externalIPs[0]`).
    pub field: String,
    /// Why (`10.244.1.5 is inside pod CIDR 10.244.1.0/24 of node node-1`).
    pub message: String,
}

/// Every entry of the spec's services that `protected` forbids: external and
/// load-balancer IPs that are pod, node, cluster or special addresses, and
/// `healthCheckNodePort`s that are well-known ports (< 1024), node ports of any service,
/// another service's health-check port, one of the agent's own listener ports, or inside
/// the SNAT port range.
pub fn refusals(spec: &NodeSpec, protected: &Protected) -> Vec<Refusal> {
    refusals_of(&by_ref(&compiled(spec)), protected)
}

fn by_ref(services: &[(usize, CompiledService)]) -> Vec<(usize, &CompiledService)> {
    services.iter().map(|(i, s)| (*i, s)).collect()
}

/// The spec's services that compile, with their index (the others are refused by
/// validation, or left out by the Kubernetes source before they get here).
fn compiled(spec: &NodeSpec) -> Vec<(usize, CompiledService)> {
    spec.services
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.compile().ok()?)))
        .collect()
}

/// [`refusals`] of compiled services (`(index in services, service)`).
fn refusals_of(services: &[(usize, &CompiledService)], protected: &Protected) -> Vec<Refusal> {
    let mut out = Vec::new();
    let mut node_ports: BTreeMap<u16, String> = BTreeMap::new();
    for (i, s) in services {
        if !s.has_node_ports() {
            continue;
        }
        for (j, p) in s.ports.iter().enumerate() {
            if let Some(np) = p.node_port {
                node_ports.entry(np).or_insert_with(|| {
                    format!(
                        "the nodePort of services[{i}].spec.ports[{j}] ({})",
                        s.key()
                    )
                });
            }
        }
    }
    let mut hc_ports: BTreeMap<u16, String> = BTreeMap::new();
    for &(i, s) in services {
        let mut refuse = |entry, field: String, message: String| {
            out.push(Refusal {
                service: i,
                key: s.key(),
                entry,
                field,
                message,
            })
        };
        for (k, ip) in s.external_ips.iter().enumerate() {
            if let Some(why) = protected.address_conflict(*ip) {
                refuse(
                    RefusedEntry::ExternalIp(k),
                    format!("services[{i}].spec.externalIPs[{k}]"),
                    why,
                );
            }
        }
        for (k, ip) in s.ingress_ips.iter().enumerate() {
            if let Some(why) = ip.and_then(|ip| protected.address_conflict(ip)) {
                refuse(
                    RefusedEntry::LoadBalancerIngress(k),
                    format!("services[{i}].status.loadBalancer.ingress[{k}].ip"),
                    why,
                );
            }
        }
        if let Some(hc) = s.health_check_node_port.filter(|hc| *hc != 0) {
            let (lo, hi) = protected.snat_ports;
            let why = if hc < 1024 {
                Some(format!("{hc} is a well-known port (below 1024)"))
            } else if let Some(np) = node_ports.get(&hc) {
                Some(format!("{hc} is {np}"))
            } else if let Some(other) = hc_ports.get(&hc) {
                Some(format!(
                    "{hc} is already the healthCheckNodePort of {other}"
                ))
            } else if let Some(l) = protected.listener_ports.get(&hc) {
                Some(format!("{hc} is {l}"))
            } else if (lo..=hi).contains(&hc) {
                Some(format!(
                    "{hc} is inside serviceProxy.snatPorts {lo}-{hi} (steered to the engine)"
                ))
            } else {
                hc_ports.insert(hc, s.key());
                None
            };
            if let Some(why) = why {
                refuse(
                    RefusedEntry::HealthCheckNodePort,
                    format!("services[{i}].spec.healthCheckNodePort"),
                    why,
                );
            }
        }
    }
    out
}

/// Standalone validation: the first [`refusals`] entry of the spec (with only what the
/// spec itself knows, [`Protected::of_spec`]) is an error naming its field.
pub fn validate_captures(spec: &NodeSpec) -> Result<(), ConfigError> {
    validate_captures_of(spec, &super::compile_services(spec)?)
}

/// [`validate_captures`] with the spec's services already compiled (all of them, in
/// order).
pub(super) fn validate_captures_of(
    spec: &NodeSpec,
    services: &[CompiledService],
) -> Result<(), ConfigError> {
    let services: Vec<(usize, &CompiledService)> = services.iter().enumerate().collect();
    let protected = Protected::of_compiled(spec, &services);
    match refusals_of(&services, &protected).into_iter().next() {
        Some(r) => Err(invalid(r.field, r.message)),
        None => Ok(()),
    }
}

/// Kubernetes mode: leaves the refused entries out of the services (an external or
/// load-balancer IP is dropped, a health-check port unset; the rest of each service
/// stays), logs a warning for each entry not refused on the previous call, and records
/// them for [`ignored_entries`]. Returns how many were left out.
pub fn drop_refused(services: &mut [ServiceObject], refused: &[Refusal]) -> usize {
    // Highest index first, so earlier indices stay valid while removing.
    let mut sorted: Vec<&Refusal> = refused.iter().collect();
    sorted.sort_by_key(|r| {
        std::cmp::Reverse(match r.entry {
            RefusedEntry::ExternalIp(k) | RefusedEntry::LoadBalancerIngress(k) => k,
            RefusedEntry::HealthCheckNodePort => 0,
        })
    });
    for r in &sorted {
        let Some(s) = services.get_mut(r.service) else {
            continue;
        };
        let s = &mut s.0;
        match r.entry {
            RefusedEntry::ExternalIp(k) => {
                if let Some(ips) = s.spec.as_mut().and_then(|sp| sp.external_ips.as_mut()) {
                    if k < ips.len() {
                        ips.remove(k);
                    }
                }
            }
            RefusedEntry::LoadBalancerIngress(k) => {
                let ingress = s
                    .status
                    .as_mut()
                    .and_then(|st| st.load_balancer.as_mut())
                    .and_then(|lb| lb.ingress.as_mut());
                if let Some(ingress) = ingress {
                    if k < ingress.len() {
                        ingress.remove(k);
                    }
                }
            }
            RefusedEntry::HealthCheckNodePort => {
                if let Some(sp) = s.spec.as_mut() {
                    sp.health_check_node_port = None;
                }
            }
        }
    }
    let now: BTreeMap<String, (&'static str, String)> = refused
        .iter()
        .map(|r| {
            (
                format!("{} {}", r.key, r.field),
                (r.entry.kind(), r.message.clone()),
            )
        })
        .collect();
    let mut last = match IGNORED.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    for (what, (_, why)) in &now {
        if !last.contains_key(what) {
            tracing::warn!(
                "service entry ignored: {what}: {why} (it would capture traffic that is not the service's)"
            );
        }
    }
    *last = now;
    refused.len()
}

/// Entries [`drop_refused`] left out last time: `service field` → (kind, why).
static IGNORED: Mutex<BTreeMap<String, (&'static str, String)>> = Mutex::new(BTreeMap::new());

/// How many service entries are left out now (Kubernetes mode), by kind
/// ([`RefusedEntry::kind`]); every kind is listed, with 0 when none is.
pub fn ignored_entries() -> Vec<(&'static str, u64)> {
    let last = match IGNORED.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    ["externalIPs", "loadBalancerIngress", "healthCheckNodePort"]
        .into_iter()
        .map(|k| {
            (
                k,
                last.values().filter(|(kind, _)| *kind == k).count() as u64,
            )
        })
        .collect()
}
