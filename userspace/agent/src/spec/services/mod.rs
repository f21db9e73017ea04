//! Services in the spec: Kubernetes `Service` and `EndpointSlice` objects, as the
//! `k8s-openapi` types ([`ServiceObject`], [`EndpointSliceObject`]; the YAML spec is read
//! straight into them, the Kubernetes watchers hand them over as they are), the API
//! server's defaults ([`set_defaults`]), their compiled form ([`compile`]: the typed values
//! the service tables, captures and BGP use), validation, and the `serviceProxy:` settings.
//! What they become at run time (the engine's service table and NAT settings, the XDP
//! steering entries, the health-check node ports) is [`crate::services`]'.
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
//!     addressType: IPv4              # default IPv4 (the API requires it)
//!     ports: [ { name: http, protocol: TCP, port: 8080 } ]
//!     endpoints:
//!       - addresses: [10.244.1.10]
//!         conditions: { ready: true, serving: true, terminating: false }
//!         nodeName: node-1
//!         targetRef: { kind: Pod, namespace: default, name: a }
//! ```
//!
//! Every field of the API objects may be written (`apiVersion` and `kind`, when given,
//! must be the object's); a key the API does not have is refused with its path, as
//! elsewhere in the spec ([`crate::spec::from_yaml_str`]). Fields the dataplane does not
//! use (`selector`, `ipFamilies`, `topology hints`, ...) are accepted and ignored. A
//! value the dataplane cannot take is refused with the field named
//! (`services[0].spec.ports[1].port: 70000: must be 1..=65535`).
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
pub mod compile;
mod defaults;
mod validate;

pub use captures::*;
pub use compile::{
    compile_service, compile_slice, proto_of, AddressType, CompiledEndpoint, CompiledEndpointPort,
    CompiledPort, CompiledService, CompiledSlice, FieldError, ServiceType, TargetPort,
    TrafficPolicy,
};
pub use defaults::*;
pub use validate::*;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

use crate::spec::ConfigError;

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

/// A Service of the spec (`services:`), as the API has it (core/v1 `k8s-openapi` type).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(transparent)]
pub struct ServiceObject(pub Service);

// A Service holds no floating-point value: equality is total.
impl Eq for ServiceObject {}

impl ServiceObject {
    /// `metadata.namespace` (`default` when unset).
    pub fn namespace(&self) -> &str {
        compile::namespace_of(&self.0.metadata)
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        compile::name_of(&self.0.metadata)
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }

    /// The compiled service ([`compile_service`]).
    pub fn compile(&self) -> Result<CompiledService, FieldError> {
        compile_service(&self.0)
    }
}

/// An EndpointSlice of the spec (`endpointSlices:`), as the API has it (discovery/v1
/// `k8s-openapi` type).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(transparent)]
pub struct EndpointSliceObject(pub EndpointSlice);

// An EndpointSlice holds no floating-point value: equality is total.
impl Eq for EndpointSliceObject {}

impl EndpointSliceObject {
    /// `metadata.namespace` (`default` when unset).
    pub fn namespace(&self) -> &str {
        compile::namespace_of(&self.0.metadata)
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        compile::name_of(&self.0.metadata)
    }

    /// The name of its service (`kubernetes.io/service-name` label).
    pub fn service_name(&self) -> Option<&str> {
        self.0
            .metadata
            .labels
            .as_ref()?
            .get(SERVICE_NAME_LABEL)
            .map(String::as_str)
    }

    /// Whether it holds IPv4 endpoints (the only ones the dataplane serves).
    pub fn is_ipv4(&self) -> bool {
        self.0.address_type == "IPv4"
    }

    /// The compiled slice ([`compile_slice`]).
    pub fn compile(&self) -> Result<CompiledSlice, FieldError> {
        compile_slice(&self.0)
    }
}

/// `serviceProxy:` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceProxyConfig {
    /// Destinations never masqueraded (default: `node.podCIDR`).
    #[serde(
        default,
        rename = "clusterCIDRs",
        deserialize_with = "crate::spec::de::vec_ipv4_net"
    )]
    pub cluster_cidrs: Vec<Ipv4Net>,
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
    #[serde(
        default,
        rename = "serviceCIDRs",
        deserialize_with = "crate::spec::de::vec_ipv4_net"
    )]
    pub service_cidrs: Vec<Ipv4Net>,
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

fn is_prime(n: u32) -> bool {
    n > 2
        && n % 2 == 1
        && (3..)
            .step_by(2)
            .take_while(|d: &u32| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}
