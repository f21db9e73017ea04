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

mod captures;
mod defaults;
mod validate;

pub use captures::*;
pub use defaults::*;
pub use validate::*;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ferroplane_tables::service::{PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Deserializer};

use crate::spec::{ConfigError, Ipv4Cidr};

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

pub(crate) fn proto_of(p: &Option<String>) -> Result<u8, String> {
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

    pub(crate) fn has_node_ports(&self) -> bool {
        match self.spec.type_ {
            ServiceType::NodePort => true,
            ServiceType::LoadBalancer => self.spec.allocate_load_balancer_node_ports != Some(false),
            _ => false,
        }
    }

    pub(crate) fn external_local(&self) -> bool {
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
