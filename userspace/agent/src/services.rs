//! Services in the standalone spec, in the shape of Kubernetes `Service` and
//! `EndpointSlice` objects (so the Kubernetes watcher maps them 1:1), their
//! validation, and what they become: the engine's service table and NAT
//! settings, the XDP steering entries, and the health-check node ports.
//!
//! ```yaml
//! serviceProxy:                      # optional
//!   clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]  # never masqueraded (default: node.podCIDR)
//!   masquerade: true                 # pod traffic leaving the cluster gets the node address
//!   masqueradeAddress: 192.168.100.2 # default node.address
//!   snatPorts: 61000-65535           # ports SNATed flows use on that address
//!   conntrackMax: 262144             # sessions per engine worker
//!   maglevTableSize: 65537           # largest Maglev table (a prime)
//!   serviceCIDRs: [10.96.0.0/12]     # ClusterIP ranges: no external/LB IP inside (optional)
//! services:
//!   - metadata: { name: web, namespace: default }
//!     spec:
//!       type: NodePort               # ClusterIP | NodePort | LoadBalancer
//!       clusterIP: 10.96.0.10
//!       ports:
//!         - { name: http, protocol: TCP, port: 80, targetPort: http, nodePort: 30080 }
//!       externalIPs: [203.0.113.5]
//!       sessionAffinity: ClientIP
//!       sessionAffinityConfig: { clientIP: { timeoutSeconds: 10800 } }
//!       externalTrafficPolicy: Local
//!       internalTrafficPolicy: Cluster
//!       healthCheckNodePort: 32000
//!     status: { loadBalancer: { ingress: [ { ip: 203.0.113.10 } ] } }
//! endpointSlices:
//!   - metadata: { name: web-abc, namespace: default, labels: { kubernetes.io/service-name: web } }
//!     addressType: IPv4
//!     ports: [ { name: http, protocol: TCP, port: 8080 } ]
//!     endpoints:
//!       - addresses: [10.244.1.10]
//!         conditions: { ready: true, serving: true, terminating: false }
//!         nodeName: node-1
//!         targetRef: { kind: Pod, namespace: default, name: a }
//! ```
//!
//! Captures are refused (the CVE-2020-8554 class): an `externalIPs` entry or a
//! LoadBalancer ingress IP that is a pod's address, inside a pod CIDR (this node's,
//! `cluster.nodes`', `serviceProxy.clusterCIDRs`), a cluster IP or inside
//! `serviceProxy.serviceCIDRs`, a node's address (this node's, its gateway, the masquerade
//! address, `cluster.nodes`', the uplink broadcast) or a special address (0.0.0.0/8,
//! loopback, link-local, multicast, 240.0.0.0/4, broadcast); a `healthCheckNodePort` below
//! 1024, equal to a node port or another health-check port, one of the agent's listener
//! ports, or inside `serviceProxy.snatPorts`. The standalone spec refuses them with an error
//! naming the field ([`validate_captures`]; a reload with one is refused and the old spec
//! stays); Kubernetes mode leaves just those entries out with a warning
//! ([`drop_refused`], [`ignored_entries`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ferroplane_tables::conntrack::Timeouts;
use ferroplane_tables::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use ferroplane_tables::{
    Backend, EndpointState, Ipv4Prefix, NatConfig, ServicePortDef, ServiceTable, DEFAULT_TABLE_SIZE,
};
use serde::{Deserialize, Deserializer};

use crate::config::{ConfigError, Ipv4Cidr, NodeSpec};

/// The label of an EndpointSlice naming its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default NodePort range.
pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// `metadata` of a Service or EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Name.
    pub name: String,
    /// Namespace (default `default`).
    #[serde(default = "default_ns")]
    pub namespace: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (ignored).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// UID (ignored).
    #[serde(default)]
    pub uid: Option<String>,
    /// Resource version (ignored).
    #[serde(default)]
    pub resource_version: Option<String>,
}

fn default_ns() -> String {
    "default".into()
}

/// A Kubernetes `Service` (the fields the dataplane uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `apiVersion` (ignored; `v1`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// `kind` (ignored; `Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: ServiceSpecBody,
    /// Status.
    #[serde(default)]
    pub status: Option<ServiceStatus>,
}

/// `Service.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpecBody {
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// The cluster IP (`None` for a headless service).
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// All cluster IPs (IPv4 ones are used).
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
    /// External IPs.
    #[serde(default, rename = "externalIPs")]
    pub external_ips: Vec<Ipv4Addr>,
    /// `None` (default) or `ClientIP`.
    #[serde(default)]
    pub session_affinity: Option<String>,
    /// Affinity settings.
    #[serde(default)]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// `Cluster` (default) or `Local`.
    #[serde(default)]
    pub external_traffic_policy: Option<TrafficPolicy>,
    /// `Cluster` (default) or `Local`.
    #[serde(default)]
    pub internal_traffic_policy: Option<TrafficPolicy>,
    /// Health check node port (LoadBalancer with externalTrafficPolicy Local).
    #[serde(default)]
    pub health_check_node_port: Option<u16>,
    /// Selector (ignored: endpoints come from EndpointSlices).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// IP families (ignored).
    #[serde(default)]
    pub ip_families: Vec<String>,
    /// IP family policy (ignored).
    #[serde(default)]
    pub ip_family_policy: Option<String>,
    /// Whether NodePorts are allocated for LoadBalancer services (default true).
    #[serde(default)]
    pub allocate_load_balancer_node_ports: Option<bool>,
}

/// Service type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ServiceType {
    /// Cluster IP only.
    #[default]
    ClusterIP,
    /// Plus a NodePort on every node.
    NodePort,
    /// Plus load-balancer ingress IPs.
    LoadBalancer,
    /// DNS alias: no dataplane.
    ExternalName,
}

/// Traffic policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TrafficPolicy {
    /// All endpoints.
    Cluster,
    /// Endpoints on this node only.
    Local,
}

/// `sessionAffinityConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    /// ClientIP settings.
    #[serde(rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

/// `sessionAffinityConfig.clientIP`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientIpConfig {
    /// Timeout (default 10800 s, at most 86400).
    pub timeout_seconds: Option<u32>,
}

/// One service port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePortSpec {
    /// Name (required when there are several ports).
    #[serde(default)]
    pub name: Option<String>,
    /// `TCP` (default) or `UDP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Service port.
    pub port: u16,
    /// Target port: number or name (default: `port`).
    #[serde(default)]
    pub target_port: Option<TargetPort>,
    /// NodePort.
    #[serde(default)]
    pub node_port: Option<u16>,
    /// Application protocol (ignored).
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// `targetPort`: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A port name, resolved per endpoint from its EndpointSlice.
    Name(String),
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u16),
            S(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::N(n) => TargetPort::Number(n),
            Raw::S(s) => match s.parse::<u16>() {
                Ok(n) => TargetPort::Number(n),
                Err(_) => TargetPort::Name(s),
            },
        })
    }
}

/// `Service.status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Load balancer status.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerStatus>,
}

/// `status.loadBalancer`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerStatus {
    /// Ingress points.
    #[serde(default)]
    pub ingress: Vec<LoadBalancerIngress>,
}

/// One ingress point.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerIngress {
    /// IP.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Hostname (ignored).
    #[serde(default)]
    pub hostname: Option<String>,
    /// `VIP` (default) or `Proxy` (ignored).
    #[serde(default)]
    pub ip_mode: Option<String>,
}

/// A Kubernetes `EndpointSlice`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSliceSpec {
    /// `apiVersion` (ignored).
    #[serde(default)]
    pub api_version: Option<String>,
    /// `kind` (ignored).
    #[serde(default)]
    pub kind: Option<String>,
    /// Metadata; `labels["kubernetes.io/service-name"]` names the service.
    pub metadata: ObjectMeta,
    /// `IPv4` (others are ignored).
    #[serde(default = "ipv4")]
    pub address_type: String,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

fn ipv4() -> String {
    "IPv4".into()
}

/// An EndpointSlice port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointPort {
    /// Name (matches the service port's name).
    #[serde(default)]
    pub name: Option<String>,
    /// Protocol.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Port number on the endpoints.
    pub port: Option<u16>,
    /// Application protocol (ignored).
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// Addresses (the first is used, as kube-proxy does).
    pub addresses: Vec<Ipv4Addr>,
    /// Conditions.
    #[serde(default)]
    pub conditions: EndpointConditions,
    /// Node.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Hostname (ignored).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Zone (ignored).
    #[serde(default)]
    pub zone: Option<String>,
    /// Target reference, for display.
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
}

/// Endpoint conditions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EndpointConditions {
    /// Ready.
    pub ready: Option<bool>,
    /// Serving.
    pub serving: Option<bool>,
    /// Terminating.
    pub terminating: Option<bool>,
}

/// `targetRef`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    /// Kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// UID (ignored).
    #[serde(default)]
    pub uid: Option<String>,
}

/// `serviceProxy:` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceProxyConfig {
    /// Destinations never masqueraded (default: `node.podCIDR`).
    #[serde(default, rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<Ipv4Cidr>,
    /// Masquerade pod traffic leaving the cluster.
    #[serde(default)]
    pub masquerade: bool,
    /// Address for SNAT (default `node.address`).
    #[serde(default)]
    pub masquerade_address: Option<Ipv4Addr>,
    /// SNAT port range `LO-HI`.
    #[serde(default)]
    pub snat_ports: Option<String>,
    /// Sessions per worker.
    #[serde(default)]
    pub conntrack_max: Option<usize>,
    /// Largest Maglev table.
    #[serde(default)]
    pub maglev_table_size: Option<u32>,
    /// The ClusterIP ranges (kube-apiserver `--service-cluster-ip-range`): external and
    /// load-balancer IPs inside them are refused (optional: every service's cluster IP is
    /// refused anyway).
    #[serde(default, rename = "serviceCIDRs")]
    pub service_cidrs: Vec<Ipv4Cidr>,
}

impl ServiceProxyConfig {
    /// The SNAT range, parsed.
    pub fn snat_range(&self) -> Result<(u16, u16), String> {
        let Some(s) = &self.snat_ports else {
            return Ok(ferroplane_tables::nat::DEFAULT_SNAT_PORTS);
        };
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected LO-HI"))?;
        let lo: u16 = a
            .trim()
            .parse()
            .map_err(|_| format!("{a:?} is not a port"))?;
        let hi: u16 = b
            .trim()
            .parse()
            .map_err(|_| format!("{b:?} is not a port"))?;
        if lo == 0 || lo > hi {
            return Err(format!("{s}: need 1 <= LO <= HI"));
        }
        Ok((lo, hi))
    }
}

fn proto_of(p: &Option<String>) -> Result<u8, String> {
    match p.as_deref().unwrap_or("TCP") {
        "TCP" => Ok(PROTO_TCP),
        "UDP" => Ok(PROTO_UDP),
        other => Err(format!("{other:?} is not supported (TCP or UDP)")),
    }
}

fn is_prime(n: u32) -> bool {
    n > 2
        && n % 2 == 1
        && (3..)
            .step_by(2)
            .take_while(|d: &u32| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

impl ServiceSpec {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// The IPv4 cluster IPs (none for headless services).
    pub fn cluster_ipv4s(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = Vec::new();
        for s in self
            .spec
            .cluster_ip
            .iter()
            .chain(self.spec.cluster_ips.iter())
        {
            if let Ok(a) = s.parse::<Ipv4Addr>() {
                if !v.contains(&a) {
                    v.push(a);
                }
            }
        }
        v
    }

    /// The load-balancer ingress IPs (LoadBalancer services only).
    pub fn lb_ips(&self) -> Vec<Ipv4Addr> {
        if self.spec.type_ != ServiceType::LoadBalancer {
            return Vec::new();
        }
        self.status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|l| l.ingress.iter())
            .filter_map(|i| i.ip)
            .collect()
    }

    fn has_node_ports(&self) -> bool {
        match self.spec.type_ {
            ServiceType::NodePort => true,
            ServiceType::LoadBalancer => self.spec.allocate_load_balancer_node_ports != Some(false),
            _ => false,
        }
    }

    fn external_local(&self) -> bool {
        self.spec.external_traffic_policy == Some(TrafficPolicy::Local)
            && (self.has_node_ports()
                || !self.spec.external_ips.is_empty()
                || self.spec.type_ == ServiceType::LoadBalancer)
    }

    /// The health check node port in force (LoadBalancer + externalTrafficPolicy Local).
    pub fn health_check_node_port(&self) -> Option<u16> {
        if self.spec.type_ == ServiceType::LoadBalancer && self.external_local() {
            self.spec.health_check_node_port
        } else {
            None
        }
    }
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset
/// (`v1.DefaultClientIPServiceAffinitySeconds`).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

/// Applies the API server's defaults to a Service, so a spec entry written by hand means
/// what the same object means once stored by Kubernetes (`SetDefaults_Service` in
/// `k8s.io/kubernetes/pkg/apis/core/v1/defaults.go`, and the service registry's
/// normalisation of `clusterIPs` and IP families):
/// - `sessionAffinity`: `None`; with `None` any `sessionAffinityConfig` is dropped; with
///   `ClientIP` a missing timeout becomes [`DEFAULT_AFFINITY_SECONDS`] (10800 s);
/// - `type`: `ClusterIP` (done by the deserializer);
/// - each port: `protocol` `TCP`; `targetPort` absent, `0` or `""` becomes `port`;
/// - `externalTrafficPolicy`: `Cluster` for externally reachable services (NodePort,
///   LoadBalancer, ClusterIP with `externalIPs`);
/// - `internalTrafficPolicy`: `Cluster` for ClusterIP, NodePort and LoadBalancer;
/// - LoadBalancer: `allocateLoadBalancerNodePorts` `true`; ingress IPs' `ipMode` `VIP`;
/// - `clusterIPs` `[clusterIP]` (and `clusterIP` the first of `clusterIPs`) when only one
///   is given; `ipFamilies` from the cluster IPs; `ipFamilyPolicy` `SingleStack` when
///   they are of one family.
///
/// Idempotent. Run once on every Service the agent takes in: the standalone spec
/// ([`crate::config::NodeSpec::from_yaml`]) and the Kubernetes watchers.
pub fn set_service_defaults(s: &mut ServiceSpec) {
    let spec = &mut s.spec;
    let affinity = spec.session_affinity.get_or_insert_with(|| "None".into());
    match affinity.as_str() {
        "None" => spec.session_affinity_config = None,
        "ClientIP" => {
            let c = spec
                .session_affinity_config
                .get_or_insert(SessionAffinityConfig { client_ip: None });
            c.client_ip
                .get_or_insert(ClientIpConfig {
                    timeout_seconds: None,
                })
                .timeout_seconds
                .get_or_insert(DEFAULT_AFFINITY_SECONDS);
        }
        _ => {} // refused by validation
    }
    for p in &mut spec.ports {
        p.protocol.get_or_insert_with(|| "TCP".into());
        match &p.target_port {
            None | Some(TargetPort::Number(0)) => p.target_port = Some(TargetPort::Number(p.port)),
            Some(TargetPort::Name(n)) if n.is_empty() => {
                p.target_port = Some(TargetPort::Number(p.port))
            }
            Some(_) => {}
        }
    }
    let externally_accessible = match spec.type_ {
        ServiceType::NodePort | ServiceType::LoadBalancer => true,
        ServiceType::ClusterIP => !spec.external_ips.is_empty(),
        ServiceType::ExternalName => false,
    };
    if externally_accessible && spec.external_traffic_policy.is_none() {
        spec.external_traffic_policy = Some(TrafficPolicy::Cluster);
    }
    if spec.type_ != ServiceType::ExternalName && spec.internal_traffic_policy.is_none() {
        spec.internal_traffic_policy = Some(TrafficPolicy::Cluster);
    }
    if spec.type_ == ServiceType::LoadBalancer {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
        for i in s
            .status
            .iter_mut()
            .flat_map(|st| st.load_balancer.iter_mut())
            .flat_map(|lb| lb.ingress.iter_mut())
        {
            if i.ip.is_some() {
                i.ip_mode.get_or_insert_with(|| "VIP".into());
            }
        }
    }
    if spec.type_ == ServiceType::ExternalName {
        return;
    }
    match (&spec.cluster_ip, spec.cluster_ips.first()) {
        (Some(ip), None) if !ip.is_empty() => spec.cluster_ips = vec![ip.clone()],
        (None, Some(first)) => spec.cluster_ip = Some(first.clone()),
        _ => {}
    }
    if spec.ip_families.is_empty() {
        for ip in &spec.cluster_ips {
            let family = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => "IPv4",
                Ok(std::net::IpAddr::V6(_)) => "IPv6",
                Err(_) => continue, // "None" (headless)
            };
            if !spec.ip_families.iter().any(|f| f == family) {
                spec.ip_families.push(family.into());
            }
        }
    }
    if spec.ip_family_policy.is_none() && spec.ip_families.len() == 1 {
        spec.ip_family_policy = Some("SingleStack".into());
    }
}

/// Applies the API defaults to an EndpointSlice (`SetDefaults_EndpointPort` in
/// `k8s.io/kubernetes/pkg/apis/discovery/v1/defaults.go`: port `name` `""`, `protocol`
/// `TCP`) and writes out what absent endpoint conditions mean per the API
/// reference (`discovery.k8s.io/v1` EndpointConditions): `ready` unset is `true`,
/// `serving` unset is `true`, `terminating` unset is `false`. Idempotent; run on every
/// slice taken in, like [`set_service_defaults`].
pub fn set_endpoint_slice_defaults(es: &mut EndpointSliceSpec) {
    for p in &mut es.ports {
        p.name.get_or_insert_with(String::new);
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    for e in &mut es.endpoints {
        let c = &mut e.conditions;
        c.ready.get_or_insert(true);
        c.serving.get_or_insert(true);
        c.terminating.get_or_insert(false);
    }
}

/// [`set_service_defaults`] and [`set_endpoint_slice_defaults`] over a spec.
pub fn set_defaults(spec: &mut NodeSpec) {
    spec.services.iter_mut().for_each(set_service_defaults);
    spec.endpoint_slices
        .iter_mut()
        .for_each(set_endpoint_slice_defaults);
}

/// Validate `services`, `endpointSlices` and `serviceProxy` of a spec.
pub fn validate(spec: &NodeSpec) -> Result<(), ConfigError> {
    let px = &spec.service_proxy;
    px.snat_range()
        .map_err(|m| invalid("serviceProxy.snatPorts", m))?;
    if let Some(n) = px.maglev_table_size {
        if !is_prime(n) || n > 131071 {
            return Err(invalid(
                "serviceProxy.maglevTableSize",
                format!("{n} is not an odd prime up to 131071 (e.g. 65537)"),
            ));
        }
    }
    if px.conntrack_max == Some(0) {
        return Err(invalid("serviceProxy.conntrackMax", "must be at least 1"));
    }
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut frontends: HashMap<(Ipv4Addr, u8, u16), String> = HashMap::new();
    let mut node_ports: HashMap<(u8, u16), String> = HashMap::new();
    for (i, s) in spec.services.iter().enumerate() {
        let f = |x: &str| format!("services[{i}].{x}");
        if s.metadata.name.is_empty() {
            return Err(invalid(f("metadata.name"), "must not be empty"));
        }
        if let Some(j) = keys.insert(s.key(), i) {
            return Err(invalid(
                f("metadata.name"),
                format!("{} is already defined by services[{j}]", s.key()),
            ));
        }
        for (k, ip) in s
            .spec
            .cluster_ip
            .iter()
            .chain(&s.spec.cluster_ips)
            .enumerate()
        {
            if ip != "None"
                && !ip.is_empty()
                && ip.parse::<Ipv4Addr>().is_err()
                && !ip.contains(':')
            {
                let field = if k == 0 && s.spec.cluster_ip.is_some() {
                    f("spec.clusterIP")
                } else {
                    f("spec.clusterIPs")
                };
                return Err(invalid(
                    field,
                    format!("{ip:?} is not an IP address or None"),
                ));
            }
        }
        if let Some(a) = &s.spec.session_affinity {
            if a != "None" && a != "ClientIP" {
                return Err(invalid(
                    f("spec.sessionAffinity"),
                    format!("{a:?}: expected None or ClientIP"),
                ));
            }
        }
        if let Some(t) = s
            .spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
        {
            if t == 0 || t > 86400 {
                return Err(invalid(
                    f("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
                    format!("{t} is outside 1..=86400"),
                ));
            }
        }
        if let Some(hc) = s.spec.health_check_node_port {
            if s.spec.type_ != ServiceType::LoadBalancer
                || s.spec.external_traffic_policy != Some(TrafficPolicy::Local)
            {
                return Err(invalid(
                    f("spec.healthCheckNodePort"),
                    "only for type LoadBalancer with externalTrafficPolicy Local",
                ));
            }
            if hc == 0 {
                return Err(invalid(f("spec.healthCheckNodePort"), "must not be 0"));
            }
        }
        let mut names: BTreeSet<&str> = BTreeSet::new();
        for (j, p) in s.spec.ports.iter().enumerate() {
            let pf = |x: &str| format!("services[{i}].spec.ports[{j}].{x}");
            let proto = proto_of(&p.protocol).map_err(|m| invalid(pf("protocol"), m))?;
            if p.port == 0 {
                return Err(invalid(pf("port"), "must be 1..=65535"));
            }
            let name = p.name.as_deref().unwrap_or("");
            if s.spec.ports.len() > 1 && name.is_empty() {
                return Err(invalid(
                    pf("name"),
                    "required when a service has several ports",
                ));
            }
            if !names.insert(name) {
                return Err(invalid(pf("name"), format!("{name:?} is used twice")));
            }
            if let Some(TargetPort::Number(0)) = p.target_port {
                return Err(invalid(
                    pf("targetPort"),
                    "must be 1..=65535 or a port name",
                ));
            }
            if let Some(np) = p.node_port {
                if !s.has_node_ports() {
                    return Err(invalid(
                        pf("nodePort"),
                        "only for types NodePort and LoadBalancer",
                    ));
                }
                if !(NODE_PORT_RANGE.0..=NODE_PORT_RANGE.1).contains(&np) {
                    return Err(invalid(
                        pf("nodePort"),
                        format!(
                            "{np} is outside {}-{}",
                            NODE_PORT_RANGE.0, NODE_PORT_RANGE.1
                        ),
                    ));
                }
                if let Some(o) = node_ports.insert((proto, np), s.key()) {
                    return Err(invalid(
                        pf("nodePort"),
                        format!("{np} is already used by {o}"),
                    ));
                }
            } else if s.has_node_ports() {
                return Err(invalid(
                    pf("nodePort"),
                    "required for this service type in standalone mode (no allocator)",
                ));
            }
            let addrs = s
                .cluster_ipv4s()
                .into_iter()
                .chain(s.spec.external_ips.iter().copied())
                .chain(s.lb_ips());
            for a in addrs {
                if let Some(o) = frontends.insert((a, proto, p.port), s.key()) {
                    if o != s.key() {
                        return Err(invalid(
                            pf("port"),
                            format!("{a}:{} is already used by {o}", p.port),
                        ));
                    }
                }
            }
        }
    }
    for (i, es) in spec.endpoint_slices.iter().enumerate() {
        let f = |x: &str| format!("endpointSlices[{i}].{x}");
        let Some(svc) = es.metadata.labels.get(SERVICE_NAME_LABEL) else {
            return Err(invalid(
                f("metadata.labels"),
                format!("missing {SERVICE_NAME_LABEL}"),
            ));
        };
        let key = format!("{}/{}", es.metadata.namespace, svc);
        if !keys.contains_key(&key) {
            return Err(invalid(
                format!("endpointSlices[{i}].metadata.labels.{SERVICE_NAME_LABEL}"),
                format!("no service {key} in services"),
            ));
        }
        if es.address_type != "IPv4" && es.address_type != "IPv6" && es.address_type != "FQDN" {
            return Err(invalid(
                f("addressType"),
                format!("{:?}: expected IPv4, IPv6 or FQDN", es.address_type),
            ));
        }
        for (j, p) in es.ports.iter().enumerate() {
            proto_of(&p.protocol)
                .map_err(|m| invalid(format!("endpointSlices[{i}].ports[{j}].protocol"), m))?;
            if p.port == Some(0) {
                return Err(invalid(
                    format!("endpointSlices[{i}].ports[{j}].port"),
                    "must be 1..=65535",
                ));
            }
        }
        for (j, e) in es.endpoints.iter().enumerate() {
            if e.addresses.is_empty() {
                return Err(invalid(
                    format!("endpointSlices[{i}].endpoints[{j}].addresses"),
                    "must list at least one address",
                ));
            }
        }
    }
    validate_captures(spec)
}

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
    pub pod_cidrs: Vec<(Ipv4Cidr, String)>,
    /// Service ranges: `serviceProxy.serviceCIDRs`.
    pub service_cidrs: Vec<(Ipv4Cidr, String)>,
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
        let node = &spec.node;
        let mut p = Protected {
            snat_ports: spec
                .service_proxy
                .snat_range()
                .unwrap_or(ferroplane_tables::nat::DEFAULT_SNAT_PORTS),
            ..Protected::default()
        };
        for pod in &spec.pods {
            p.pods
                .insert(pod.ip, format!("the address of pod {}", pod.key()));
        }
        p.pod_cidrs.push((
            node.pod_cidr,
            format!("inside pod CIDR {} of node {}", node.pod_cidr, node.name),
        ));
        p.nodes.insert(
            node.address.addr,
            format!("the address of node {}", node.name),
        );
        let uplink = node.address.network();
        if uplink.prefix_len < 31 {
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
            if c.uses_wireguard() || c.mode == crate::cluster::Mode::Wireguard {
                p.listener_ports.insert(
                    c.wireguard.port,
                    "the agent's WireGuard port (cluster.wireguard.port)".to_string(),
                );
            }
        }
        for (i, c) in spec.service_proxy.cluster_cidrs.iter().enumerate() {
            p.pod_cidrs.push((
                c.network(),
                format!(
                    "inside the cluster's own range {} (serviceProxy.clusterCIDRs[{i}])",
                    c.network()
                ),
            ));
        }
        for (i, c) in spec.service_proxy.service_cidrs.iter().enumerate() {
            p.service_cidrs.push((
                c.network(),
                format!(
                    "inside the service range {} (serviceProxy.serviceCIDRs[{i}])",
                    c.network()
                ),
            ));
        }
        for s in &spec.services {
            for ip in s.cluster_ipv4s() {
                p.cluster_ips
                    .entry(ip)
                    .or_insert_with(|| format!("the cluster IP of service {}", s.key()));
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
        let range = |v: &[(Ipv4Cidr, String)]| {
            v.iter()
                .find(|(c, _)| c.contains(ip))
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
    let mut out = Vec::new();
    let mut node_ports: BTreeMap<u16, String> = BTreeMap::new();
    for (i, s) in spec.services.iter().enumerate() {
        if !s.has_node_ports() {
            continue;
        }
        for (j, p) in s.spec.ports.iter().enumerate() {
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
    for (i, s) in spec.services.iter().enumerate() {
        let mut refuse = |entry, field: String, message: String| {
            out.push(Refusal {
                service: i,
                key: s.key(),
                entry,
                field,
                message,
            })
        };
        for (k, ip) in s.spec.external_ips.iter().enumerate() {
            if let Some(why) = protected.address_conflict(*ip) {
                refuse(
                    RefusedEntry::ExternalIp(k),
                    format!("services[{i}].spec.externalIPs[{k}]"),
                    why,
                );
            }
        }
        let ingress = s
            .status
            .iter()
            .flat_map(|st| st.load_balancer.iter())
            .flat_map(|l| l.ingress.iter());
        for (k, ing) in ingress.enumerate() {
            if let Some(why) = ing.ip.and_then(|ip| protected.address_conflict(ip)) {
                refuse(
                    RefusedEntry::LoadBalancerIngress(k),
                    format!("services[{i}].status.loadBalancer.ingress[{k}].ip"),
                    why,
                );
            }
        }
        if let Some(hc) = s.spec.health_check_node_port.filter(|hc| *hc != 0) {
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
    match refusals(spec, &Protected::of_spec(spec)).into_iter().next() {
        Some(r) => Err(invalid(r.field, r.message)),
        None => Ok(()),
    }
}

/// Kubernetes mode: leaves the refused entries out of the services (an external or
/// load-balancer IP is dropped, a health-check port unset; the rest of each service
/// stays), logs a warning for each entry not refused on the previous call, and records
/// them for [`ignored_entries`]. Returns how many were left out.
pub fn drop_refused(services: &mut [ServiceSpec], refused: &[Refusal]) -> usize {
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
        match r.entry {
            RefusedEntry::ExternalIp(k) => {
                if k < s.spec.external_ips.len() {
                    s.spec.external_ips.remove(k);
                }
            }
            RefusedEntry::LoadBalancerIngress(k) => {
                if let Some(lb) = s.status.as_mut().and_then(|st| st.load_balancer.as_mut()) {
                    if k < lb.ingress.len() {
                        lb.ingress.remove(k);
                    }
                }
            }
            RefusedEntry::HealthCheckNodePort => s.spec.health_check_node_port = None,
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

/// The service port definitions of a spec for the node `node_name`.
pub fn service_defs(spec: &NodeSpec) -> Vec<ServicePortDef> {
    let node_name = spec.node.name.as_str();
    let mut slices: HashMap<String, Vec<&EndpointSliceSpec>> = HashMap::new();
    for es in &spec.endpoint_slices {
        if es.address_type != "IPv4" {
            continue;
        }
        if let Some(svc) = es.metadata.labels.get(SERVICE_NAME_LABEL) {
            slices
                .entry(format!("{}/{}", es.metadata.namespace, svc))
                .or_default()
                .push(es);
        }
    }
    let mut defs = Vec::new();
    for s in &spec.services {
        if s.spec.type_ == ServiceType::ExternalName {
            continue;
        }
        let cluster_ips = s.cluster_ipv4s();
        let key = s.key();
        let affinity_secs = (s.spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            s.spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800)
        });
        for p in &s.spec.ports {
            let Ok(proto) = proto_of(&p.protocol) else {
                continue;
            };
            let name = p.name.clone().unwrap_or_default();
            let mut backends: Vec<Backend> = Vec::new();
            for es in slices.get(&key).map(Vec::as_slice).unwrap_or(&[]) {
                // The slice port for this service port: same name and protocol (kube-proxy).
                let sp = es.ports.iter().find(|ep| {
                    ep.name.clone().unwrap_or_default() == name
                        && proto_of(&ep.protocol).ok() == Some(proto)
                });
                let port = match (sp.and_then(|x| x.port), &p.target_port) {
                    (Some(n), _) => n,
                    (None, Some(TargetPort::Number(n))) if es.ports.is_empty() => *n,
                    (None, None) if es.ports.is_empty() => p.port,
                    _ => continue,
                };
                for e in &es.endpoints {
                    let Some(&addr) = e.addresses.first() else {
                        continue;
                    };
                    let c = &e.conditions;
                    let node = e.node_name.clone().unwrap_or_default();
                    backends.push(Backend {
                        addr,
                        port,
                        local: node == node_name,
                        state: EndpointState::from_conditions(c.ready, c.serving, c.terminating),
                        weight: 1,
                        target: e
                            .target_ref
                            .as_ref()
                            .map(|t| {
                                format!(
                                    "{}/{}",
                                    t.namespace.as_deref().unwrap_or(&es.metadata.namespace),
                                    t.name.as_deref().unwrap_or("")
                                )
                            })
                            .unwrap_or_default(),
                        node,
                    });
                }
            }
            backends.sort_by_key(|b| (b.addr, b.port));
            backends.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
            defs.push(ServicePortDef {
                service: key.clone(),
                port_name: name,
                proto,
                port: p.port,
                node_port: if s.has_node_ports() {
                    p.node_port
                } else {
                    None
                },
                cluster_ips: cluster_ips.clone(),
                external_ips: s.spec.external_ips.clone(),
                lb_ips: s.lb_ips(),
                backends,
                internal_local: s.spec.internal_traffic_policy == Some(TrafficPolicy::Local),
                external_local: s.external_local(),
                affinity_secs,
                health_check_node_port: s.health_check_node_port(),
            });
        }
    }
    defs
}

/// The NAT settings of a spec.
pub fn nat_config(spec: &NodeSpec) -> NatConfig {
    let px = &spec.service_proxy;
    let prefix = |c: &Ipv4Cidr| Ipv4Prefix::new(c.network().addr, c.prefix_len).ok();
    let mut cluster: Vec<Ipv4Prefix> = px.cluster_cidrs.iter().filter_map(prefix).collect();
    if cluster.is_empty() {
        cluster.extend(prefix(&spec.node.pod_cidr));
    }
    NatConfig {
        masquerade: px.masquerade,
        masquerade_addr: Some(px.masquerade_address.unwrap_or(spec.node.address.addr)),
        cluster_cidrs: cluster,
        snat_ports: px
            .snat_range()
            .unwrap_or(ferroplane_tables::nat::DEFAULT_SNAT_PORTS),
        conntrack_max: px
            .conntrack_max
            .unwrap_or(ferroplane_tables::nat::DEFAULT_CONNTRACK_MAX),
        timeouts: Timeouts::default(),
    }
}

/// What XDP must steer to the engine for the services of a spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steering {
    /// /32 addresses on the uplink (external and load-balancer IPs).
    pub vips: BTreeSet<Ipv4Addr>,
    /// (protocol, port, kind) on the node's addresses: NodePorts and the SNAT range.
    pub ports: BTreeMap<(u8, u16), u32>,
}

/// `ports4` kind of a NodePort.
pub const PORT_NODEPORT: u32 = 1;
/// `ports4` kind of a SNAT port.
pub const PORT_SNAT: u32 = 2;

/// Steering entries for a service table and NAT settings.
pub fn steering(table: &ServiceTable, nat: &NatConfig) -> Steering {
    let mut s = Steering::default();
    for p in table.ports() {
        s.vips.extend(p.def.external_ips.iter().copied());
        s.vips.extend(p.def.lb_ips.iter().copied());
    }
    for (proto, port) in table.node_ports() {
        s.ports.insert((proto, port), PORT_NODEPORT);
    }
    // SNATed flows come back to these ports (masquerade, hairpin, eTP=Cluster).
    let (lo, hi) = nat.snat_ports;
    for port in lo..=hi {
        for proto in [PROTO_TCP, PROTO_UDP, PROTO_ICMP] {
            s.ports.entry((proto, port)).or_insert(PORT_SNAT);
        }
    }
    s
}

/// The service side of the node state.
#[derive(Debug, Clone, Default)]
pub struct ServiceState {
    /// The table published to the engine.
    pub table: Arc<ServiceTable>,
    /// NAT settings published to the engine.
    pub nat: Arc<NatConfig>,
}

impl ServiceState {
    /// Rebuild from `spec` (sharing unchanged Maglev tables with the current one).
    pub fn rebuild(&mut self, spec: &NodeSpec) -> Result<(), ferroplane_tables::ServiceError> {
        self.rebuild_defs(spec, service_defs(spec))
    }

    /// [`ServiceState::rebuild`] from the service ports `defs` ([`service_defs`] of `spec`
    /// and the hostPorts).
    pub fn rebuild_defs(
        &mut self,
        spec: &NodeSpec,
        defs: Vec<ServicePortDef>,
    ) -> Result<(), ferroplane_tables::ServiceError> {
        let max = spec
            .service_proxy
            .maglev_table_size
            .unwrap_or(DEFAULT_TABLE_SIZE);
        let table =
            ServiceTable::build(defs, vec![spec.node.address.addr], max, Some(&self.table))?;
        self.table = Arc::new(table);
        self.nat = Arc::new(nat_config(spec));
        Ok(())
    }
}

/// Local endpoint counts per health-check node port, read by the health-check server.
pub type HealthChecks = Arc<Mutex<BTreeMap<u16, (String, usize)>>>;

/// The health-check node ports of a table: port → (service, local endpoints).
pub fn health_checks(table: &ServiceTable) -> BTreeMap<u16, (String, usize)> {
    let mut m: BTreeMap<u16, (String, usize)> = BTreeMap::new();
    for p in table.ports() {
        if let Some(hc) = p.def.health_check_node_port {
            let e = m.entry(hc).or_insert_with(|| (p.def.service.clone(), 0));
            e.1 = e.1.max(p.local_endpoints);
        }
    }
    m
}

/// The HTTP status and JSON body of a health-check node port (as kube-proxy: 200 with local
/// endpoints, 503 without).
pub fn health_response(service: &str, local: usize) -> (u16, String) {
    let (ns, name) = service.split_once('/').unwrap_or(("default", service));
    let body = format!(
        "{{\"service\":{{\"namespace\":\"{ns}\",\"name\":\"{name}\"}},\"localEndpoints\":{local},\"serviceProxyHealthy\":true}}\n"
    );
    (if local > 0 { 200 } else { 503 }, body)
}

/// Serve health-check node ports on `addr`: keeps one listener per port in `checks`
/// (re-read every second), answering with [`health_response`]. They run on the listeners'
/// runtime ([`crate::listen::runtime`]) and share one connection table and the default
/// [`crate::listen::HttpLimits`]: they face the outside, and however many connections are
/// held on them, the agent's main loop and descriptors are not theirs.
pub async fn serve_health_checks(addr: Ipv4Addr, checks: HealthChecks) {
    use crate::listen::{self, AbortOnDrop, ConnTable, HttpLimits};
    let limits = HttpLimits {
        max_connections: listen::connection_limit(HttpLimits::default().max_connections),
        ..HttpLimits::default()
    };
    let rt = match listen::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!("health check node ports not served: {e}");
            return;
        }
    };
    let table = ConnTable::new("health-check node ports", limits.max_connections);
    let mut task = AbortOnDrop(rt.spawn(health_check_ports(addr, checks, table, limits)));
    let _ = (&mut task.0).await;
}

/// The loop of [`serve_health_checks`] on the current runtime, with its connection table
/// and limits.
pub async fn health_check_ports(
    addr: Ipv4Addr,
    checks: HealthChecks,
    table: Arc<crate::listen::ConnTable>,
    limits: crate::listen::HttpLimits,
) {
    use crate::listen;
    let rt = tokio::runtime::Handle::current();
    let mut running: BTreeMap<u16, tokio::task::JoinHandle<()>> = BTreeMap::new();
    loop {
        let want: BTreeSet<u16> = match checks.lock() {
            Ok(m) => m.keys().copied().collect(),
            Err(_) => BTreeSet::new(),
        };
        running.retain(|port, h| {
            let keep = want.contains(port) && !h.is_finished();
            if !keep {
                h.abort();
            }
            keep
        });
        for port in want {
            if running.contains_key(&port) {
                continue;
            }
            let listener = match listen::bind_tcp((addr, port).into(), &rt) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%addr, port, "health check node port: {e}");
                    continue;
                }
            };
            let checks = checks.clone();
            let handler: listen::HttpHandler = Arc::new(move |_req| {
                let (svc, n) = checks
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&port).cloned())
                    .unwrap_or_default();
                let (code, body) = health_response(&svc, n);
                let mut r = listen::response(code, "application/json", body);
                r.headers_mut().insert(
                    "x-content-type-options",
                    hyper::header::HeaderValue::from_static("nosniff"),
                );
                r
            });
            running.insert(
                port,
                tokio::spawn(listen::serve_http(
                    listener,
                    "health-check node port",
                    table.clone(),
                    limits,
                    handler,
                )),
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What the service tables were last built from.
type Source = (
    Vec<ServiceSpec>,
    Vec<EndpointSliceSpec>,
    ServiceProxyConfig,
    Ipv4Addr,
    String,
);

/// The service tables of the node, rebuilt only when their inputs change, and
/// the XDP steering last applied for them.
#[derive(Debug, Default)]
pub struct ServiceCache {
    source: Option<Source>,
    /// Tables in force.
    pub state: ServiceState,
    applied: Steering,
    /// Health-check node ports, read by [`serve_health_checks`].
    pub health: HealthChecks,
    /// How long the last rebuild took.
    pub last_build: Option<std::time::Duration>,
    /// The pods' hostPorts in the table (NodePorts bound to one pod,
    /// [`crate::hostports`]) and what a new one may not take.
    pub host_ports: crate::hostports::HostPortTable,
}

/// Shared handle on the [`ServiceCache`].
pub type ServiceCacheHandle = Arc<Mutex<ServiceCache>>;

/// The tables for `spec`, rebuilt if its services, endpoint slices or settings changed.
/// A table that cannot be built (the spec validation catches what would fail) keeps the
/// previous one in force and is logged.
pub fn tables(cache: &ServiceCacheHandle, spec: &NodeSpec) -> (Arc<ServiceTable>, Arc<NatConfig>) {
    tables_with_host_ports(cache, spec, &[], Vec::new())
}

/// [`tables`] with the pods' hostPorts (`bindings`, [`crate::hostports::merge`]d, and what
/// the merge left out) as NodePorts bound to one pod each.
pub fn tables_with_host_ports(
    cache: &ServiceCacheHandle,
    spec: &NodeSpec,
    bindings: &[crate::hostports::Binding],
    merge_shadowed: Vec<crate::hostports::Shadowed>,
) -> (Arc<ServiceTable>, Arc<NatConfig>) {
    let mut c = match cache.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    };
    let same = matches!(&c.source, Some((s, e, p, a, n))
        if s == &spec.services && e == &spec.endpoint_slices && p == &spec.service_proxy
            && *a == spec.node.address.addr && n == &spec.node.name)
        && c.host_ports.input == bindings;
    if !same {
        let t0 = std::time::Instant::now();
        let mut services = service_defs(spec);
        let (host_defs, mut shadowed) = crate::hostports::defs(&services, bindings, spec);
        shadowed.extend(merge_shadowed);
        let served: Vec<crate::hostports::Binding> = bindings
            .iter()
            .filter(|b| !shadowed.iter().any(|s| &s.binding == *b))
            .cloned()
            .collect();
        let listeners = c.host_ports.listeners.clone();
        c.host_ports = crate::hostports::HostPortTable {
            input: bindings.to_vec(),
            served: served.clone(),
            shadowed,
            reserved: crate::hostports::Reserved::of(spec, &services, &listeners, &served),
            listeners,
        };
        services.extend(host_defs);
        match c.state.rebuild_defs(spec, services) {
            Ok(()) => {
                c.last_build = Some(t0.elapsed());
                let hc = health_checks(&c.state.table);
                if let Ok(mut h) = c.health.lock() {
                    *h = hc;
                }
                tracing::info!(
                    service_ports = c.state.table.len(),
                    took_ms = t0.elapsed().as_secs_f64() * 1e3,
                    "service table built"
                );
            }
            Err(e) => tracing::warn!("service table not rebuilt: {e}"),
        }
        c.source = Some((
            spec.services.clone(),
            spec.endpoint_slices.clone(),
            spec.service_proxy.clone(),
            spec.node.address.addr,
            spec.node.name.clone(),
        ));
    }
    (c.state.table.clone(), c.state.nat.clone())
}

/// Bring the XDP steering maps in line with the tables in force (only the difference is
/// written).
pub fn apply_steering(
    cache: &ServiceCacheHandle,
    bpf: &mut ferroplane_bpf::Dataplane,
) -> Result<(), ferroplane_bpf::Error> {
    let mut c = match cache.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    };
    let want = steering(&c.state.table, &c.state.nat);
    if want == c.applied {
        return Ok(());
    }
    for a in c.applied.vips.difference(&want.vips) {
        bpf.remove_steer4(*a, 32)?;
    }
    for k in c.applied.ports.keys() {
        if !want.ports.contains_key(k) {
            bpf.remove_port4(k.0, k.1)?;
        }
    }
    // An entry the kernel refuses (a full map) leaves that address or port with the
    // kernel: counted, logged, retried on the next publish; the rest is still applied.
    let mut applied = want.clone();
    let mut refused: Vec<String> = Vec::new();
    for a in want.vips.difference(&c.applied.vips) {
        if let Err(e) = bpf.add_steer4(*a, 32, ferroplane_bpf::FpSteerKind::Service) {
            applied.vips.remove(a);
            refused.push(format!("{a}: {e}"));
        }
    }
    for (k, kind) in &want.ports {
        if c.applied.ports.get(k) != Some(kind) {
            if let Err(e) = bpf.add_port4(k.0, k.1, *kind) {
                applied.ports.remove(k);
                refused.push(format!(
                    "{}/{}: {e}",
                    ferroplane_tables::service::proto_name(k.0),
                    k.1
                ));
            }
        }
    }
    if !refused.is_empty() {
        STEERING_REFUSED.fetch_add(refused.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            refused = refused.len(),
            first = %refused[0],
            "BPF steering maps refused entries: those services stay unreachable from outside the node"
        );
    }
    c.applied = applied;
    Ok(())
}

/// Steering entries (service addresses, node ports) the BPF maps refused, e.g. because
/// a map was full; exported as a metric.
pub static STEERING_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Watches the standalone spec file: a changed file is re-read and its services,
/// endpoint slices and service proxy settings applied (the rest needs a restart).
#[derive(Debug)]
pub struct SpecWatch {
    path: std::path::PathBuf,
    seen: Option<std::time::SystemTime>,
}

impl SpecWatch {
    /// Watch `path`.
    pub fn new(path: &std::path::Path) -> Self {
        let seen = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        SpecWatch {
            path: path.to_path_buf(),
            seen,
        }
    }

    /// If the file changed since the last call: the new spec (or why it was rejected).
    pub fn poll(&mut self) -> Option<Result<NodeSpec, ConfigError>> {
        let m = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if m.is_none() || m == self.seen {
            return None;
        }
        self.seen = m;
        Some(NodeSpec::load(&self.path))
    }
}

/// Copy the service parts of `from` into `into`; true when something changed.
pub fn take_services(into: &mut NodeSpec, from: NodeSpec) -> bool {
    let changed = into.services != from.services
        || into.endpoint_slices != from.endpoint_slices
        || into.service_proxy != from.service_proxy;
    into.services = from.services;
    into.endpoint_slices = from.endpoint_slices;
    into.service_proxy = from.service_proxy;
    changed
}

/// `show_services`: every service port with its frontends, backends and Maglev fill.
pub fn services_report(cache: &ServiceCacheHandle) -> Vec<ferroplane_api::ServiceInfo> {
    let table = match cache.lock() {
        Ok(c) => c.state.table.clone(),
        Err(p) => p.into_inner().state.table.clone(),
    };
    let policy = |local: bool| if local { "Local" } else { "Cluster" }.to_string();
    table
        .ports()
        .iter()
        .map(|p| {
            let d = &p.def;
            let mut frontends = Vec::new();
            for a in &d.cluster_ips {
                frontends.push(format!("cluster-ip {a}:{}", d.port));
            }
            for a in &d.external_ips {
                frontends.push(format!("external-ip {a}:{}", d.port));
            }
            for a in &d.lb_ips {
                frontends.push(format!("load-balancer {a}:{}", d.port));
            }
            if let Some(np) = d.node_port {
                frontends.push(format!("node-port {np}"));
            }
            let fill_i = p.internal.maglev.fill();
            let fill_e = p.external.maglev.fill();
            let slots = |sel: &ferroplane_tables::service::Selection, fill: &[u32], i: usize| {
                sel.backends
                    .iter()
                    .position(|&b| b as usize == i)
                    .and_then(|k| fill.get(k).copied())
                    .unwrap_or(0)
            };
            ferroplane_api::ServiceInfo {
                name: d.service.clone(),
                port_name: d.port_name.clone(),
                protocol: ferroplane_tables::service::proto_name(d.proto),
                port: d.port,
                frontends,
                external_policy: policy(d.external_local),
                internal_policy: policy(d.internal_local),
                affinity_secs: d.affinity_secs,
                health_check_node_port: d.health_check_node_port,
                maglev_size: p.internal.maglev.size(),
                maglev_size_external: p.external.maglev.size(),
                backends: d
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| ferroplane_api::BackendInfo {
                        address: format!("{}:{}", b.addr, b.port),
                        state: b.state.as_str().to_string(),
                        local: b.local,
                        node: b.node.clone(),
                        target: b.target.clone(),
                        weight: b.weight,
                        maglev_slots: slots(&p.internal, &fill_i, i),
                        maglev_slots_external: slots(&p.external, &fill_e, i),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Session slots `show sessions` copies per hold of a worker's session-table lock.
const SESSION_BATCH: usize = 1024;

/// Locks a worker's session table (a poisoned lock still gives the table).
fn lock_sessions(
    t: &Mutex<ferroplane_tables::Conntrack>,
) -> std::sync::MutexGuard<'_, ferroplane_tables::Conntrack> {
    match t.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    }
}

/// `show_sessions`: the sessions of every worker matching `filter`, at most its limit
/// (default 1000); the walk stops there. The table is read in batches of
/// [`SESSION_BATCH`] slots, each copied under one short hold of the lock the worker
/// takes per vector, and filtered after releasing it.
pub fn sessions_report(
    tables: &[Arc<Mutex<ferroplane_tables::Conntrack>>],
    filter: &ferroplane_api::SessionFilter,
) -> Result<ferroplane_api::SessionsReport, String> {
    use ferroplane_tables::FlowKey;
    let addr: Option<Ipv4Addr> = match &filter.addr {
        Some(a) => Some(
            a.parse()
                .map_err(|_| format!("addr: {a:?} is not an IPv4 address"))?,
        ),
        None => None,
    };
    let proto: Option<u8> = match filter.proto.as_deref() {
        None => None,
        Some("tcp") => Some(PROTO_TCP),
        Some("udp") => Some(PROTO_UDP),
        Some("icmp") => Some(PROTO_ICMP),
        Some(p) => return Err(format!("proto: {p:?} is not tcp, udp or icmp")),
    };
    let limit = filter.limit.unwrap_or(1000);
    let tuple = |k: &FlowKey| format!("{}:{} -> {}:{}", k.src, k.sport, k.dst, k.dport);
    let mut r = ferroplane_api::SessionsReport::default();
    // The worker takes this lock once per vector: hold it for a bounded batch of slots at
    // a time (copies), match outside it, and stop at the output limit.
    let mut batch: Vec<ferroplane_tables::Session> = Vec::with_capacity(SESSION_BATCH);
    for t in tables {
        let now = {
            let ct = lock_sessions(t);
            r.total += ct.len();
            r.limit = ct.limit();
            r.created += ct.stats.created;
            r.full += ct.stats.full;
            r.early_drops += ct.stats.early_drops;
            ct.now_ms()
        };
        let mut next = 0u32;
        loop {
            batch.clear();
            let more = {
                let ct = lock_sessions(t);
                let mut last = None;
                for (id, s) in ct.iter_from(next).take(SESSION_BATCH) {
                    batch.push(*s);
                    last = Some(id);
                }
                match last {
                    Some(id) if batch.len() == SESSION_BATCH => {
                        next = id + 1;
                        true
                    }
                    _ => false,
                }
            };
            for s in &batch {
                if s.expires <= now {
                    continue;
                }
                let keys = [s.orig, s.reply];
                if let Some(a) = addr {
                    if !keys.iter().any(|k| k.src == a || k.dst == a) {
                        continue;
                    }
                }
                if let Some(p) = filter.port {
                    if !keys.iter().any(|k| k.sport == p || k.dport == p) {
                        continue;
                    }
                }
                if proto.is_some_and(|p| p != s.orig.proto) {
                    continue;
                }
                if r.sessions.len() >= limit {
                    break;
                }
                r.sessions.push(ferroplane_api::SessionInfo {
                    protocol: ferroplane_tables::service::proto_name(s.orig.proto),
                    original: tuple(&s.orig),
                    reply: tuple(&s.reply),
                    nat: s.nat.as_str().to_string(),
                    state: s.state.as_str().to_string(),
                    service: s.frontend.map(|f| format!("{}:{}", f.addr, f.port)),
                    expires_in_secs: (s.expires - now) as f64 / 1000.0,
                    packets_orig: s.packets[0],
                    packets_reply: s.packets[1],
                });
            }
            if !more || r.sessions.len() >= limit {
                break;
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
node:
  name: node-1
  uplink: up0
  address: 192.168.100.2/24
  podCIDR: 10.244.1.0/24
"#;

    fn spec(extra: &str) -> Result<NodeSpec, ConfigError> {
        NodeSpec::from_yaml(&format!("{BASE}{extra}"))
    }

    /// A spec with a pod, another node, a BGP speaker and a LoadBalancer service `web`
    /// (index 1, after `other`) whose external IP, ingress IP and health-check port the
    /// capture tests replace.
    fn capture_spec(ext: &str, ingress: &str, hc: u16) -> String {
        format!(
            r#"
node:
  name: node-1
  uplink: up0
  address: 192.168.100.2/24
  gateway: 192.168.100.1
  podCIDR: 10.244.1.0/24
pods:
  - {{ name: pod2, netns: fp-x, ip: 10.244.1.12 }}
cluster:
  nodes:
    - {{ name: node-2, address: 192.168.100.3, podCIDR: 10.244.2.0/24 }}
serviceProxy:
  clusterCIDRs: [10.244.0.0/16]
  serviceCIDRs: [10.96.0.0/12]
services:
  - metadata: {{ name: other }}
    spec:
      type: NodePort
      clusterIP: 10.96.0.9
      ports: [ {{ name: http, port: 8080, nodePort: 30100 }} ]
  - metadata: {{ name: web }}
    spec:
      type: LoadBalancer
      clusterIP: 10.96.0.10
      externalIPs: [203.0.113.5, {ext}]
      externalTrafficPolicy: Local
      healthCheckNodePort: {hc}
      ports: [ {{ name: http, port: 80, nodePort: 30080 }} ]
    status: {{ loadBalancer: {{ ingress: [ {{ ip: {ingress} }} ] }} }}
"#
        )
    }

    #[test]
    fn real_external_addresses_are_accepted() {
        let s = NodeSpec::from_yaml(&capture_spec("198.51.100.7", "203.0.113.10", 32000)).unwrap();
        assert!(refusals(&s, &Protected::of_spec(&s)).is_empty());
        // Addresses next to the protected ones are fine too.
        for ok in [
            "10.243.255.255",
            "10.112.0.1",
            "192.168.101.1",
            "192.168.100.4",
        ] {
            NodeSpec::from_yaml(&capture_spec(ok, "203.0.113.10", 32000))
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn external_ips_that_capture_are_refused() {
        let f = "services[1].spec.externalIPs[1]";
        for (ip, why) in [
            (
                "10.244.1.12",
                "10.244.1.12 is the address of pod default/pod2 (inside pod CIDR 10.244.1.0/24 of node node-1)",
            ),
            ("10.244.1.5", "10.244.1.5 is inside pod CIDR 10.244.1.0/24 of node node-1"),
            ("10.244.2.9", "10.244.2.9 is inside pod CIDR 10.244.2.0/24 of node node-2"),
            (
                "10.244.7.1",
                "10.244.7.1 is inside the cluster's own range 10.244.0.0/16 (serviceProxy.clusterCIDRs[0])",
            ),
            ("10.96.0.9", "10.96.0.9 is the cluster IP of service default/other"),
            (
                "10.100.0.1",
                "10.100.0.1 is inside the service range 10.96.0.0/12 (serviceProxy.serviceCIDRs[0])",
            ),
            ("192.168.100.2", "192.168.100.2 is the address of node node-1"),
            ("192.168.100.3", "192.168.100.3 is the address of node node-2"),
            ("192.168.100.1", "192.168.100.1 is the gateway of node node-1"),
            ("192.168.100.255", "broadcast address of the node's subnet 192.168.100.0/24"),
            ("0.0.0.0", "in 0.0.0.0/8"),
            ("0.1.2.3", "in 0.0.0.0/8"),
            ("127.0.0.1", "loopback"),
            ("127.1.2.3", "loopback"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.5", "multicast"),
            ("239.1.1.1", "multicast"),
            ("255.255.255.255", "the broadcast address"),
            ("240.0.0.1", "reserved"),
        ] {
            let e = NodeSpec::from_yaml(&capture_spec(ip, "203.0.113.10", 32000))
                .expect_err(ip);
            assert_eq!(e.field(), f, "{ip}: {e}");
            assert!(e.to_string().starts_with(&format!("{f}: {ip} ")), "{e}");
            assert!(e.to_string().contains(why), "{ip}: {why:?} not in {e}");
        }
        // The masquerade address is the node's too.
        let y = capture_spec("192.168.100.50", "203.0.113.10", 32000).replace(
            "  serviceCIDRs:",
            "  masqueradeAddress: 192.168.100.50\n  serviceCIDRs:",
        );
        let e = NodeSpec::from_yaml(&y).unwrap_err();
        assert!(e.to_string().contains("masquerade address"), "{e}");
    }

    #[test]
    fn load_balancer_ips_that_capture_are_refused() {
        let e =
            NodeSpec::from_yaml(&capture_spec("198.51.100.7", "10.244.1.12", 32000)).unwrap_err();
        assert_eq!(e.field(), "services[1].status.loadBalancer.ingress[0].ip");
        assert!(e.to_string().contains("pod default/pod2"), "{e}");
        let e =
            NodeSpec::from_yaml(&capture_spec("198.51.100.7", "192.168.100.2", 32000)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "services[1].status.loadBalancer.ingress[0].ip: 192.168.100.2 is the address of node node-1"
        );
    }

    #[test]
    fn health_check_ports_that_clash_are_refused() {
        let f = "services[1].spec.healthCheckNodePort";
        for (hc, why) in [
            (22, "22 is a well-known port (below 1024)"),
            (1023, "below 1024"),
            (
                30100,
                "30100 is the nodePort of services[0].spec.ports[0] (default/other)",
            ),
            (
                30080,
                "30080 is the nodePort of services[1].spec.ports[0] (default/web)",
            ),
            (9644, "the agent's health endpoint"),
            (9464, "the agent's metrics endpoint"),
            (61000, "inside serviceProxy.snatPorts"),
        ] {
            let e = NodeSpec::from_yaml(&capture_spec("198.51.100.7", "203.0.113.10", hc))
                .expect_err(why);
            assert_eq!(e.field(), f, "{hc}: {e}");
            assert!(e.to_string().contains(why), "{why:?} not in {e}");
        }
        // Another service's health-check port, and the BGP listener.
        let mut s =
            NodeSpec::from_yaml(&capture_spec("198.51.100.7", "203.0.113.10", 32000)).unwrap();
        let mut twin = s.services[1].clone();
        twin.metadata.name = "twin".into();
        twin.spec.cluster_ip = Some("10.96.0.11".into());
        twin.spec.cluster_ips.clear();
        twin.spec.external_ips.clear();
        twin.status = None;
        twin.spec.ports[0].node_port = Some(30081);
        s.services.push(twin);
        let r = refusals(&s, &Protected::of_spec(&s));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].field, "services[2].spec.healthCheckNodePort");
        assert!(r[0]
            .message
            .contains("already the healthCheckNodePort of default/web"));
        let mut p = Protected::of_spec(&s);
        p.listener_ports
            .insert(1790, "the agent's BGP listener (bgp.listenPort)".into());
        s.services.pop();
        s.services[1].spec.health_check_node_port = Some(1790);
        let r = refusals(&s, &p);
        assert!(r[0].message.contains("BGP listener"), "{r:?}");
    }

    #[test]
    fn kubernetes_mode_drops_only_the_refused_entries() {
        let mut s =
            NodeSpec::from_yaml(&capture_spec("198.51.100.7", "203.0.113.10", 32000)).unwrap();
        let web = &mut s.services[1];
        // A pod the spec does not list (another node's, from the API) and a node address.
        web.spec.external_ips = vec![
            "10.250.0.4".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
            "192.168.100.3".parse().unwrap(),
        ];
        web.spec.health_check_node_port = Some(80);
        web.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: vec![
                    LoadBalancerIngress {
                        ip: Some("10.96.0.9".parse().unwrap()),
                        hostname: None,
                        ip_mode: None,
                    },
                    LoadBalancerIngress {
                        ip: Some("203.0.113.10".parse().unwrap()),
                        hostname: None,
                        ip_mode: None,
                    },
                ],
            }),
        });
        let p = Protected::of_spec(&s)
            .with_pods([("10.250.0.4".parse().unwrap(), "team-a/db-0".to_string())]);
        let r = refusals(&s, &p);
        let fields: Vec<&str> = r.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "services[1].spec.externalIPs[0]",
                "services[1].spec.externalIPs[2]",
                "services[1].status.loadBalancer.ingress[0].ip",
                "services[1].spec.healthCheckNodePort",
            ]
        );
        assert!(r[0].message.contains("pod team-a/db-0"), "{}", r[0].message);
        assert_eq!(drop_refused(&mut s.services, &r), 4);
        let web = &s.services[1];
        assert_eq!(
            web.spec.external_ips,
            ["198.51.100.7".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(web.lb_ips(), ["203.0.113.10".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(web.spec.health_check_node_port, None);
        // The rest of the service is untouched, and the result validates.
        assert_eq!(web.spec.ports[0].node_port, Some(30080));
        s.validate().unwrap();
        let counts: BTreeMap<_, _> = ignored_entries().into_iter().collect();
        assert_eq!(counts["externalIPs"], 2);
        assert_eq!(counts["loadBalancerIngress"], 1);
        assert_eq!(counts["healthCheckNodePort"], 1);
        // Nothing refused any more: the count goes back to 0.
        assert_eq!(drop_refused(&mut s.services, &[]), 0);
        assert!(ignored_entries().iter().all(|(_, n)| *n == 0));
    }

    const WEB: &str = r#"
serviceProxy:
  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]
  masquerade: true
services:
  - metadata: { name: web }
    spec:
      type: LoadBalancer
      clusterIP: 10.96.0.10
      ports:
        - { name: http, protocol: TCP, port: 80, targetPort: http, nodePort: 30080 }
        - { name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053 }
      externalTrafficPolicy: Local
      healthCheckNodePort: 32000
      sessionAffinity: ClientIP
    status: { loadBalancer: { ingress: [ { ip: 203.0.113.10 } ] } }
endpointSlices:
  - metadata: { name: web-a, labels: { kubernetes.io/service-name: web } }
    addressType: IPv4
    ports: [ { name: http, protocol: TCP, port: 8080 }, { name: dns, protocol: UDP, port: 5353 } ]
    endpoints:
      - addresses: [10.244.1.10]
        nodeName: node-1
      - addresses: [10.244.2.10]
        nodeName: node-2
        conditions: { ready: false, serving: true, terminating: true }
  - metadata: { name: web-b, labels: { kubernetes.io/service-name: web } }
    ports: [ { name: http, protocol: TCP, port: 9090 } ]
    endpoints:
      - addresses: [10.244.1.11]
        nodeName: node-1
"#;

    /// A bare Service and EndpointSlice as a user writes them, and what the API server
    /// stores for them (`SetDefaults_Service`, `SetDefaults_EndpointPort`, the API
    /// reference's reading of absent endpoint conditions).
    const BARE: &str = r#"
services:
  - metadata: { name: bare }
    spec:
      type: NodePort
      clusterIP: 10.96.0.20
      ports: [ { port: 80, nodePort: 30081 } ]
      sessionAffinity: ClientIP
  - metadata: { name: lb }
    spec:
      type: LoadBalancer
      clusterIPs: [10.96.0.21]
      ports: [ { port: 443, targetPort: 0, nodePort: 30443 } ]
      sessionAffinityConfig: { clientIP: { timeoutSeconds: 99999999 } }
    status: { loadBalancer: { ingress: [ { ip: 203.0.113.11 } ] } }
  - metadata: { name: internal }
    spec:
      clusterIP: 10.96.0.22
      ports: [ { port: 53, protocol: UDP, targetPort: dns } ]
  - metadata: { name: ext }
    spec:
      clusterIP: 10.96.0.23
      externalIPs: [203.0.113.12]
      ports: [ { port: 80 } ]
endpointSlices:
  - metadata: { name: bare-1, labels: { kubernetes.io/service-name: bare } }
    ports: [ { port: 8080 } ]
    endpoints:
      - addresses: [10.244.1.10]
      - addresses: [10.244.1.11]
        conditions: { ready: false, terminating: true }
"#;

    #[test]
    fn api_server_defaults() {
        let s = spec(BARE).unwrap();
        let bare = &s.services[0].spec;
        assert_eq!(bare.session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(
            bare.session_affinity_config,
            Some(SessionAffinityConfig {
                client_ip: Some(ClientIpConfig {
                    timeout_seconds: Some(10800)
                })
            })
        );
        let p = &bare.ports[0];
        assert_eq!(p.protocol.as_deref(), Some("TCP"));
        assert_eq!(p.target_port, Some(TargetPort::Number(80)));
        assert_eq!(bare.external_traffic_policy, Some(TrafficPolicy::Cluster));
        assert_eq!(bare.internal_traffic_policy, Some(TrafficPolicy::Cluster));
        assert_eq!(bare.cluster_ips, vec!["10.96.0.20".to_string()]);
        assert_eq!(bare.ip_families, vec!["IPv4".to_string()]);
        assert_eq!(bare.ip_family_policy.as_deref(), Some("SingleStack"));
        assert_eq!(bare.allocate_load_balancer_node_ports, None);

        // sessionAffinity None drops the config (even an out-of-range one: the API server
        // defaults before it validates); targetPort 0 is "unset"; clusterIP from clusterIPs.
        let lb = &s.services[1];
        assert_eq!(lb.spec.session_affinity.as_deref(), Some("None"));
        assert_eq!(lb.spec.session_affinity_config, None);
        assert_eq!(lb.spec.ports[0].target_port, Some(TargetPort::Number(443)));
        assert_eq!(lb.spec.cluster_ip.as_deref(), Some("10.96.0.21"));
        assert_eq!(lb.spec.allocate_load_balancer_node_ports, Some(true));
        let ingress = &lb
            .status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress;
        assert_eq!(ingress[0].ip_mode.as_deref(), Some("VIP"));

        // ClusterIP: internal policy only; external policy only with externalIPs.
        let internal = &s.services[2].spec;
        assert_eq!(internal.type_, ServiceType::ClusterIP);
        assert_eq!(internal.external_traffic_policy, None);
        assert_eq!(
            internal.internal_traffic_policy,
            Some(TrafficPolicy::Cluster)
        );
        assert_eq!(
            internal.ports[0].target_port,
            Some(TargetPort::Name("dns".into()))
        );
        assert_eq!(internal.ports[0].protocol.as_deref(), Some("UDP"));
        let ext = &s.services[3].spec;
        assert_eq!(ext.external_traffic_policy, Some(TrafficPolicy::Cluster));

        let es = &s.endpoint_slices[0];
        assert_eq!(es.ports[0].name.as_deref(), Some(""));
        assert_eq!(es.ports[0].protocol.as_deref(), Some("TCP"));
        let c = &es.endpoints[0].conditions;
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(true), Some(true), Some(false))
        );
        // serving unset reads as true (API reference), so a terminating endpoint that did
        // not say otherwise is serving-terminating, not dropped.
        let c = &es.endpoints[1].conditions;
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
        let defs = service_defs(&s);
        let bare_def = defs.iter().find(|d| d.service == "default/bare").unwrap();
        assert_eq!(bare_def.affinity_secs, Some(10800));
        let states: Vec<EndpointState> = bare_def.backends.iter().map(|b| b.state).collect();
        assert_eq!(
            states,
            vec![EndpointState::Ready, EndpointState::ServingTerminating]
        );

        // Idempotent: defaulting the defaulted spec changes nothing.
        let mut again = s.clone();
        set_defaults(&mut again);
        assert_eq!(again, s);
    }

    /// The Kubernetes path defaults with the same functions: a Service and EndpointSlice
    /// as the watchers receive them (no API-server defaults, e.g. from a minimal API
    /// server) become exactly what the same objects in the YAML spec become.
    #[test]
    fn watcher_and_spec_paths_agree() {
        let s = spec(BARE).unwrap();
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bare", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.20",
                     "ports": [{"port": 80, "nodePort": 30081}], "sessionAffinity": "ClientIP"}
        }))
        .unwrap();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "bare-1", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "bare"}},
                "addressType": "IPv4",
                "ports": [{"port": 8080}],
                "endpoints": [{"addresses": ["10.244.1.10"]},
                              {"addresses": ["10.244.1.11"],
                               "conditions": {"ready": false, "terminating": true}}]
            }))
            .unwrap();
        let objects = crate::k8s::model::Objects {
            services: vec![svc],
            endpoint_slices: vec![slice],
            ..Default::default()
        };
        // apiVersion and kind are informational (the k8s-openapi types always carry them).
        let mut from_k8s = crate::k8s::model::services(&objects);
        assert_eq!(from_k8s.len(), 1);
        (from_k8s[0].api_version, from_k8s[0].kind) = (None, None);
        assert_eq!(from_k8s[0], s.services[0]);
        let mut slices = crate::k8s::model::endpoint_slices(&objects);
        (slices[0].api_version, slices[0].kind) = (None, None);
        assert_eq!(slices[0], s.endpoint_slices[0]);
    }

    #[test]
    fn kubernetes_shapes_become_service_ports() {
        let s = spec(WEB).unwrap();
        let defs = service_defs(&s);
        assert_eq!(defs.len(), 2);
        let http = &defs[0];
        assert_eq!(http.port_name, "http");
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(
            http.lb_ips,
            vec!["203.0.113.10".parse::<Ipv4Addr>().unwrap()]
        );
        assert!(http.external_local && !http.internal_local);
        assert_eq!(http.affinity_secs, Some(10800));
        assert_eq!(http.health_check_node_port, Some(32000));
        // Named target port resolved per slice: 8080 in web-a, 9090 in web-b.
        let ports: Vec<(String, u16, bool)> = http
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.port, b.local))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("10.244.1.10".into(), 8080, true),
                ("10.244.1.11".into(), 9090, true),
                ("10.244.2.10".into(), 8080, false),
            ]
        );
        assert_eq!(http.backends[2].state, EndpointState::ServingTerminating);
        let dns = &defs[1];
        assert_eq!(dns.backends.len(), 2, "web-b has no dns port");
        let mut st = ServiceState::default();
        st.rebuild(&s).unwrap();
        let steer = steering(&st.table, &st.nat);
        assert!(steer.vips.contains(&"203.0.113.10".parse().unwrap()));
        assert_eq!(steer.ports.get(&(PROTO_TCP, 30080)), Some(&PORT_NODEPORT));
        assert_eq!(steer.ports.get(&(PROTO_TCP, 61000)), Some(&PORT_SNAT));
        assert_eq!(
            health_checks(&st.table).get(&32000),
            Some(&("default/web".into(), 2))
        );
        assert!(st.nat.masquerade);
        assert!(st.nat.in_cluster("10.96.5.5".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "services:\n  - metadata: {name: a}\n    spec: {ports: [{port: 80, protocol: SCTP}]}\n",
                "services[0].spec.ports[0].protocol",
                "SCTP",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {type: NodePort, ports: [{port: 80, nodePort: 80}]}\n",
                "services[0].spec.ports[0].nodePort",
                "outside",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {type: NodePort, ports: [{port: 80}]}\n",
                "services[0].spec.ports[0].nodePort",
                "required",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n  - metadata: {name: b}\n    spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n",
                "services[1].spec.ports[0].port",
                "default/a",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {ports: [{port: 80}], sessionAffinity: Sticky}\n",
                "services[0].spec.sessionAffinity",
                "Sticky",
            ),
            (
                "endpointSlices:\n  - metadata: {name: a, labels: {kubernetes.io/service-name: nope}}\n",
                "endpointSlices[0].metadata.labels.kubernetes.io/service-name",
                "no service default/nope",
            ),
            (
                "serviceProxy: {snatPorts: 5-1}\n",
                "serviceProxy.snatPorts",
                "LO <= HI",
            ),
            (
                "serviceProxy: {maglevTableSize: 65536}\n",
                "serviceProxy.maglevTableSize",
                "prime",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {ports: [{port: 80}], bogus: 1}\n",
                "services[0].spec.bogus",
                "unknown field",
            ),
        ];
        for (yaml, field, needle) in cases {
            let e = spec(yaml).unwrap_err();
            assert_eq!(e.field(), *field, "{yaml}: {e}");
            assert!(e.to_string().contains(needle), "{yaml}: {e}");
        }
    }

    #[test]
    fn health_response_codes() {
        assert_eq!(health_response("default/web", 2).0, 200);
        assert!(health_response("default/web", 2)
            .1
            .contains("\"localEndpoints\":2"));
        assert_eq!(health_response("default/web", 0).0, 503);
    }

    /// The health-check node ports served with the listeners' limits: answers, slow
    /// clients, oversized headers, idle connections and the shared connection limit.
    #[test]
    fn health_check_ports_hardened() {
        use crate::listen::{self, testkit, ConnTable};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let checks: HealthChecks = Arc::default();
        checks
            .lock()
            .unwrap()
            .insert(port, ("default/web".into(), 1));
        let limits = testkit::limits();
        let table = ConnTable::new("hc", limits.max_connections);
        let rt = listen::runtime().unwrap();
        let task = rt.spawn(health_check_ports(
            Ipv4Addr::LOCALHOST,
            checks.clone(),
            table.clone(),
            limits,
        ));
        let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::net::TcpStream::connect(addr).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = testkit::get(addr, "/healthz");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("x-content-type-options: nosniff"), "{out}");
        assert!(out.contains("\"localEndpoints\":1"), "{out}");
        testkit::check_all(addr, "/healthz", &table);
        checks
            .lock()
            .unwrap()
            .insert(port, ("default/web".into(), 0));
        assert!(testkit::get(addr, "/").starts_with("HTTP/1.1 503"));
        task.abort();
    }

    /// `show sessions` stops at its limit, reads a table larger than one batch whole when
    /// asked for everything, and filters.
    #[test]
    fn sessions_report_is_bounded_and_batched() {
        use ferroplane_tables::{Conntrack, FlowKey, NatKind, Timeouts};
        let mut ct = Conntrack::new(10_000, Timeouts::default());
        let now = ct.now_ms();
        let n = 2 * SESSION_BATCH as u16 + 100;
        for i in 0..n {
            let orig = FlowKey {
                src: Ipv4Addr::new(10, 244, 1, 10),
                dst: Ipv4Addr::new(10, 244, 1, 20),
                sport: 10_000 + i,
                dport: if i % 2 == 0 { 80 } else { 443 },
                proto: 6,
            };
            ct.create(orig, orig.reversed(), NatKind::Dnat, None, 0x02, now)
                .unwrap();
        }
        let tables = vec![Arc::new(Mutex::new(ct))];
        let filter = |limit: Option<usize>, port: Option<u16>| ferroplane_api::SessionFilter {
            addr: None,
            port,
            proto: None,
            limit,
        };
        let r = sessions_report(&tables, &filter(Some(10), None)).unwrap();
        assert_eq!((r.total, r.sessions.len()), (n as usize, 10));
        let r = sessions_report(&tables, &filter(Some(usize::MAX), None)).unwrap();
        assert_eq!(r.sessions.len(), n as usize);
        let r = sessions_report(&tables, &filter(Some(usize::MAX), Some(443))).unwrap();
        assert_eq!(r.sessions.len(), n as usize / 2);
        assert!(r.sessions.iter().all(|s| s.original.ends_with(":443")));
        // The default limit.
        let r = sessions_report(&tables, &filter(None, None)).unwrap();
        assert_eq!(r.sessions.len(), 1000);
    }
}
