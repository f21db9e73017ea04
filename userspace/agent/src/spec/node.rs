//! The node spec: its types, YAML parsing, defaulting and validation.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::*;

/// Directory where `ip netns add NAME` bind-mounts named network namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Smallest pod MTU accepted (the IPv4 minimum datagram size every host must accept).
pub const MIN_POD_MTU: u32 = 576;
/// Largest pod MTU accepted.
pub const MAX_POD_MTU: u32 = 9000;

/// Maximum length of a Linux interface name (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;

/// How the XDP programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic (skb) mode.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Skb,
}

/// The whole node spec file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node itself.
    pub node: NodeConfig,
    /// Pods to plumb.
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    /// Extra static routes for the engine FIB.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// The other nodes of the cluster and how their pods are reached (overlay).
    #[serde(default)]
    pub cluster: Option<super::cluster::ClusterSpec>,
    /// Services (core/v1 `Service` objects, as `k8s-openapi` types; see
    /// [`super::services`]).
    #[serde(default)]
    pub services: Vec<super::services::ServiceObject>,
    /// Their endpoints (discovery/v1 `EndpointSlice` objects).
    #[serde(default, rename = "endpointSlices")]
    pub endpoint_slices: Vec<super::services::EndpointSliceObject>,
    /// Service proxy settings: masquerade, SNAT ports, session table.
    #[serde(default, rename = "serviceProxy")]
    pub service_proxy: super::services::ServiceProxyConfig,
    /// BGP speaker (see [`super::bgp`]).
    #[serde(default)]
    pub bgp: Option<super::bgp::BgpSpec>,
    /// Namespaces and their labels (see [`super::policy`]).
    #[serde(default)]
    pub namespaces: Vec<super::policy::NamespaceSpec>,
    /// NetworkPolicies (networking.k8s.io/v1 objects).
    #[serde(default, rename = "networkPolicies")]
    pub network_policies: Vec<super::policy::PolicyObject>,
}

/// The `node:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// Existing uplink interface in the agent's netns.
    pub uplink: String,
    /// The node's IPv4 address and prefix on the uplink (host bits set).
    #[serde(deserialize_with = "crate::spec::de::ipv4_net")]
    pub address: Ipv4Net,
    /// Default route next hop on the uplink, if any.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// The pod network of this node (no host bits).
    #[serde(rename = "podCIDR", deserialize_with = "crate::spec::de::ipv4_net")]
    pub pod_cidr: Ipv4Net,
    /// Pod interface MTU; `None` means the uplink's MTU (see [`NodeConfig::pod_mtu_or`]).
    #[serde(default, rename = "podMTU")]
    pub pod_mtu: Option<u32>,
    /// XDP attach mode.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// The uplink's driver (see [`super::uplink`]).
    #[serde(default)]
    pub uplink_driver: super::uplink::UplinkDriver,
    /// DPDK settings, with `uplinkDriver: dpdk`.
    #[serde(default)]
    pub dpdk: Option<super::uplink::DpdkSpec>,
}

impl NodeConfig {
    /// The pod MTU to use given the uplink's MTU.
    pub fn pod_mtu_or(&self, uplink_mtu: u32) -> u32 {
        self.pod_mtu.unwrap_or(uplink_mtu)
    }
}

fn default_namespace() -> String {
    "default".to_string()
}

fn default_interface() -> String {
    "eth0".to_string()
}

/// One pod to plumb.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The pod's network namespace: a name under [`NETNS_RUN_DIR`] or an absolute path.
    pub netns: String,
    /// The pod's IPv4 address (configured as /32).
    pub ip: Ipv4Addr,
    /// Interface name inside the pod (default `eth0`).
    #[serde(default = "default_interface")]
    pub interface: String,
    /// Labels (NetworkPolicy selectors).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Container ports (NetworkPolicy named ports).
    #[serde(default)]
    pub ports: Vec<super::policy::ContainerPort>,
}

impl PodSpec {
    /// A pod with the default namespace and interface name.
    pub fn new(name: impl Into<String>, netns: impl Into<String>, ip: Ipv4Addr) -> Self {
        PodSpec {
            name: name.into(),
            namespace: default_namespace(),
            netns: netns.into(),
            ip,
            interface: default_interface(),
            labels: Default::default(),
            ports: Vec::new(),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The filesystem path of the pod's network namespace.
    pub fn netns_path(&self) -> PathBuf {
        if self.netns.starts_with('/') {
            PathBuf::from(&self.netns)
        } else {
            Path::new(NETNS_RUN_DIR).join(&self.netns)
        }
    }
}

/// An extra static route for the engine FIB.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Destination prefix (no host bits).
    #[serde(deserialize_with = "crate::spec::de::ipv4_net")]
    pub prefix: Ipv4Net,
    /// Next hop, on the uplink subnet.
    pub via: Ipv4Addr,
}

impl NodeSpec {
    /// Parses and validates a YAML node spec.
    pub fn from_yaml(text: &str) -> Result<NodeSpec, ConfigError> {
        let mut spec: NodeSpec = super::from_yaml_str(text)?;
        spec.set_defaults();
        spec.validate()?;
        Ok(spec)
    }

    /// Applies the Kubernetes API server's defaults to the objects the spec takes in
    /// Kubernetes shape (Services, EndpointSlices, NetworkPolicies; see
    /// [`super::services::set_defaults`] and [`super::policy::set_defaults`]), so they mean
    /// what the same objects mean in a cluster. Done by [`NodeSpec::from_yaml`]; the
    /// Kubernetes watchers apply the same functions to what they receive. Idempotent.
    pub fn set_defaults(&mut self) {
        super::services::set_defaults(self);
        super::policy::set_defaults(self);
    }

    /// Reads, parses and validates a YAML node spec file.
    pub fn load(path: impl AsRef<Path>) -> Result<NodeSpec, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        NodeSpec::from_yaml(&text)
    }

    /// Semantic validation (done by [`NodeSpec::from_yaml`]; call again after editing a spec).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let node = &self.node;
        if node.name.trim().is_empty() {
            return Err(ConfigError::invalid("node.name", "must not be empty"));
        }
        check_ifname("node.uplink", &node.uplink)?;
        super::uplink::validate(node.uplink_driver, node.dpdk.as_ref())?;

        let addr = node.address;
        if addr.prefix_len() == 0 {
            return Err(ConfigError::invalid(
                "node.address",
                format!("{addr}: prefix length must be 1..32"),
            ));
        }
        check_unicast("node.address", addr.addr())?;
        if !addr.is_host_of(addr.addr()) {
            return Err(ConfigError::invalid(
                "node.address",
                format!(
                    "{addr} is the network or broadcast address of {}",
                    addr.trunc()
                ),
            ));
        }
        let uplink_net = addr.trunc();

        if let Some(gw) = node.gateway {
            if gw == addr.addr() {
                return Err(ConfigError::invalid(
                    "node.gateway",
                    format!("{gw} is the node's own address"),
                ));
            }
            if !uplink_net.is_host_of(gw) {
                return Err(ConfigError::invalid(
                    "node.gateway",
                    format!("{gw} is not a host of the uplink subnet {uplink_net} (node.address {addr})"),
                ));
            }
        }

        let pod_cidr = node.pod_cidr;
        if pod_cidr.prefix_len() == 0 || pod_cidr.prefix_len() > 31 {
            return Err(ConfigError::invalid(
                "node.podCIDR",
                format!("{pod_cidr}: prefix length must be 1..31"),
            ));
        }
        if !pod_cidr.is_network() {
            return Err(ConfigError::invalid(
                "node.podCIDR",
                format!(
                    "{pod_cidr} has host bits set (the network is {})",
                    pod_cidr.trunc()
                ),
            ));
        }
        check_unicast("node.podCIDR", pod_cidr.addr())?;
        if pod_cidr.overlaps(&uplink_net) {
            return Err(ConfigError::invalid(
                "node.podCIDR",
                format!("{pod_cidr} overlaps the uplink subnet {uplink_net} (node.address {addr})"),
            ));
        }

        if let Some(mtu) = node.pod_mtu {
            if !(MIN_POD_MTU..=MAX_POD_MTU).contains(&mtu) {
                return Err(ConfigError::invalid(
                    "node.podMTU",
                    format!("{mtu} is outside {MIN_POD_MTU}..={MAX_POD_MTU}"),
                ));
            }
        }

        let mut by_ip: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut by_key: HashMap<(&str, &str), usize> = HashMap::new();
        let mut by_iface: HashMap<(PathBuf, &str), usize> = HashMap::new();
        for (i, pod) in self.pods.iter().enumerate() {
            let f = |field: &str| format!("pods[{i}].{field}");
            check_k8s_name(&f("name"), &pod.name)?;
            check_k8s_name(&f("namespace"), &pod.namespace)?;
            check_netns(&f("netns"), &pod.netns)?;
            check_ifname(&f("interface"), &pod.interface)?;
            if pod.interface == "lo" {
                return Err(ConfigError::invalid(f("interface"), "must not be lo"));
            }
            if !pod_cidr.contains(&pod.ip) {
                return Err(ConfigError::invalid(
                    f("ip"),
                    format!("{} is outside node.podCIDR {pod_cidr}", pod.ip),
                ));
            }
            if !pod_cidr.is_host_of(pod.ip) {
                return Err(ConfigError::invalid(
                    f("ip"),
                    format!(
                        "{} is the network or broadcast address of node.podCIDR {pod_cidr}",
                        pod.ip
                    ),
                ));
            }
            if let Some(j) = by_key.insert((&pod.namespace, &pod.name), i) {
                return Err(ConfigError::invalid(
                    f("name"),
                    format!("{} is already used by pods[{j}]", pod.key()),
                ));
            }
            if let Some(j) = by_ip.insert(pod.ip, i) {
                return Err(ConfigError::invalid(
                    f("ip"),
                    format!(
                        "{} is already used by pods[{j}] ({})",
                        pod.ip,
                        self.pods[j].key()
                    ),
                ));
            }
            if let Some(j) = by_iface.insert((pod.netns_path(), &pod.interface), i) {
                return Err(ConfigError::invalid(
                    f("interface"),
                    format!(
                        "{} in netns {} is already used by pods[{j}] ({})",
                        pod.interface,
                        pod.netns,
                        self.pods[j].key()
                    ),
                ));
            }
        }

        let mut prefixes: HashMap<Ipv4Net, usize> = HashMap::new();
        for (i, route) in self.routes.iter().enumerate() {
            let prefix = route.prefix;
            if !prefix.is_network() {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].prefix"),
                    format!(
                        "{prefix} has host bits set (the network is {})",
                        prefix.trunc()
                    ),
                ));
            }
            if pod_cidr.contains(&prefix) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].prefix"),
                    format!("{prefix} is inside node.podCIDR {pod_cidr}"),
                ));
            }
            if let Some(j) = prefixes.insert(prefix, i) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].prefix"),
                    format!("{prefix} is already routed by routes[{j}]"),
                ));
            }
            if route.via == addr.addr() || !uplink_net.is_host_of(route.via) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].via"),
                    format!(
                        "{} is not a neighbour on the uplink subnet {uplink_net} (node.address {addr})",
                        route.via
                    ),
                ));
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate(self)?;
        }
        super::services::validate(self)?;
        super::policy::validate(self)?;
        if let Some(bgp) = &self.bgp {
            bgp.validate(self)?;
        }
        Ok(())
    }
}

fn check_unicast(field: &str, ip: Ipv4Addr) -> Result<(), ConfigError> {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
        return Err(ConfigError::invalid(
            field,
            format!("{ip} is not a unicast address"),
        ));
    }
    Ok(())
}

fn check_ifname(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(ConfigError::invalid(
            field,
            format!("{name:?} must be 1..={MAX_IFNAME_LEN} bytes long"),
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError::invalid(
            field,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    Ok(())
}

fn check_k8s_name(field: &str, name: &str) -> Result<(), ConfigError> {
    // Kubernetes object names: DNS subdomain (lowercase alphanumerics, '-', '.'), <= 253.
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !ok {
        return Err(ConfigError::invalid(
            field,
            format!(
                "{name:?} is not a valid name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253)"
            ),
        ));
    }
    Ok(())
}

fn check_netns(field: &str, netns: &str) -> Result<(), ConfigError> {
    if netns.is_empty() {
        return Err(ConfigError::invalid(field, "must not be empty"));
    }
    if netns.starts_with('/') {
        return Ok(());
    }
    if netns == "." || netns == ".." || netns.contains('/') || netns.contains('\0') {
        return Err(ConfigError::invalid(
            field,
            format!("{netns:?} must be a name under {NETNS_RUN_DIR} or an absolute path"),
        ));
    }
    Ok(())
}
