//! The agent's YAML node spec (standalone mode): parsing and semantic validation.
//!
//! ```yaml
//! node:
//!   name: node-1
//!   uplink: up0
//!   address: 192.168.100.2/24
//!   gateway: 192.168.100.1       # optional
//!   podCIDR: 10.244.1.0/24
//!   podMTU: 1500                 # optional, default = uplink MTU
//!   xdpMode: auto                # auto | native | skb (optional, default auto)
//! pods:
//!   - name: a
//!     namespace: default         # optional, default "default"
//!     netns: fp-1234-pod-a       # name under /var/run/netns, or an absolute path
//!     ip: 10.244.1.10
//!     interface: eth0            # optional, default eth0
//! routes:                        # optional
//!   - prefix: 10.0.0.0/8
//!     via: 192.168.100.1
//! ```
//!
//! Every error names the offending field with its path, e.g.
//! `pods[1].ip: 10.9.0.1 is outside node.podCIDR 10.244.1.0/24`.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Directory where `ip netns add NAME` bind-mounts named network namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Smallest pod MTU accepted (the IPv4 minimum datagram size every host must accept).
pub const MIN_POD_MTU: u32 = 576;
/// Largest pod MTU accepted.
pub const MAX_POD_MTU: u32 = 9000;

/// Maximum length of a Linux interface name (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;

/// An error loading or validating a node spec.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the schema (unknown key, wrong type, bad address).
    #[error("{path}: {message}")]
    Yaml {
        /// Path of the offending field (`node.podCIDR`, `pods[1].ip`), or `.` for the document.
        path: String,
        /// What serde_yaml reported, with the line and column when known.
        message: String,
    },
    /// The document parsed but is semantically invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the offending field (`pods[1].ip`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// The path of the field the error is about (`.` for the whole document, empty for I/O errors).
    pub fn field(&self) -> &str {
        match self {
            ConfigError::Io { .. } => "",
            ConfigError::Yaml { path, .. } => path,
            ConfigError::Invalid { field, .. } => field,
        }
    }

    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error parsing an [`Ipv4Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrParseError {
    /// No `/` separator.
    #[error("expected ADDRESS/PREFIX, got {0:?}")]
    MissingPrefix(String),
    /// The address part is not a dotted-quad IPv4 address.
    #[error("invalid IPv4 address {0:?}")]
    BadAddress(String),
    /// The prefix part is not a number in 0..=32.
    #[error("invalid prefix length {0:?} (expected 0..=32)")]
    BadPrefix(String),
}

/// An IPv4 address with a prefix length, e.g. `192.168.100.2/24`.
///
/// The address may have host bits set (an interface address); use [`Ipv4Cidr::network`]
/// for the network itself and [`Ipv4Cidr::is_network`] to check that there are none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The address (host bits possibly set).
    pub addr: Ipv4Addr,
    /// The prefix length, 0..=32.
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// Builds a CIDR; `None` if `prefix_len > 32`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= 32).then_some(Ipv4Cidr { addr, prefix_len })
    }

    /// The netmask as a host-order integer.
    pub fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }

    /// The network: the address with its host bits cleared.
    pub fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    /// The directed broadcast address of the network (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether the address has no host bits set.
    pub fn is_network(&self) -> bool {
        self.network().addr == self.addr
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// Whether `other` is entirely inside this network (equal networks included).
    pub fn contains_net(&self, other: &Ipv4Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.addr)
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains_net(other) || other.contains_net(self)
    }

    /// Whether `ip` is a usable host address of this network: inside it and, for prefixes
    /// shorter than /31, neither the network nor the broadcast address.
    pub fn is_host_of(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip)
            && (self.prefix_len >= 31 || (ip != self.network().addr && ip != self.broadcast()))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| CidrParseError::MissingPrefix(s.to_string()))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| CidrParseError::BadAddress(addr.to_string()))?;
        // u8::from_str accepts a leading '+': require plain digits.
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrParseError::BadPrefix(prefix.to_string()));
        }
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| CidrParseError::BadPrefix(prefix.to_string()))?;
        Ipv4Cidr::new(addr, prefix_len).ok_or_else(|| CidrParseError::BadPrefix(prefix.to_string()))
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

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
    pub cluster: Option<crate::cluster::ClusterSpec>,
    /// Services (Kubernetes `Service` shape; see [`crate::services`]).
    #[serde(default)]
    pub services: Vec<crate::services::ServiceSpec>,
    /// Their endpoints (Kubernetes `EndpointSlice` shape).
    #[serde(default, rename = "endpointSlices")]
    pub endpoint_slices: Vec<crate::services::EndpointSliceSpec>,
    /// Service proxy settings: masquerade, SNAT ports, session table.
    #[serde(default, rename = "serviceProxy")]
    pub service_proxy: crate::services::ServiceProxyConfig,
    /// BGP speaker (see [`crate::bgp`]).
    #[serde(default)]
    pub bgp: Option<crate::bgp::BgpSpec>,
    /// Namespaces and their labels (see [`crate::policy`]).
    #[serde(default)]
    pub namespaces: Vec<crate::policy::NamespaceSpec>,
    /// NetworkPolicies (networking.k8s.io/v1 objects).
    #[serde(default, rename = "networkPolicies")]
    pub network_policies: Vec<crate::policy::PolicyObject>,
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
    pub address: Ipv4Cidr,
    /// Default route next hop on the uplink, if any.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// The pod network of this node (no host bits).
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Cidr,
    /// Pod interface MTU; `None` means the uplink's MTU (see [`NodeConfig::pod_mtu_or`]).
    #[serde(default, rename = "podMTU")]
    pub pod_mtu: Option<u32>,
    /// XDP attach mode.
    #[serde(default)]
    pub xdp_mode: XdpMode,
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
    pub ports: Vec<crate::policy::ContainerPort>,
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
    pub prefix: Ipv4Cidr,
    /// Next hop, on the uplink subnet.
    pub via: Ipv4Addr,
}

impl NodeSpec {
    /// Parses and validates a YAML node spec.
    pub fn from_yaml(text: &str) -> Result<NodeSpec, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let spec: NodeSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = strip_yaml_path(&path, e.into_inner().to_string());
            ConfigError::Yaml { path, message }
        })?;
        let mut spec = spec;
        spec.set_defaults();
        spec.validate()?;
        Ok(spec)
    }

    /// Applies the Kubernetes API server's defaults to the objects the spec takes in
    /// Kubernetes shape (Services, EndpointSlices, NetworkPolicies; see
    /// [`crate::services::set_defaults`] and [`crate::policy::set_defaults`]), so they mean
    /// what the same objects mean in a cluster. Done by [`NodeSpec::from_yaml`]; the
    /// Kubernetes watchers apply the same functions to what they receive. Idempotent.
    pub fn set_defaults(&mut self) {
        crate::services::set_defaults(self);
        crate::policy::set_defaults(self);
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

        let addr = node.address;
        if addr.prefix_len == 0 {
            return Err(ConfigError::invalid(
                "node.address",
                format!("{addr}: prefix length must be 1..32"),
            ));
        }
        check_unicast("node.address", addr.addr)?;
        if !addr.is_host_of(addr.addr) {
            return Err(ConfigError::invalid(
                "node.address",
                format!(
                    "{addr} is the network or broadcast address of {}",
                    addr.network()
                ),
            ));
        }
        let uplink_net = addr.network();

        if let Some(gw) = node.gateway {
            if gw == addr.addr {
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
        if pod_cidr.prefix_len == 0 || pod_cidr.prefix_len > 31 {
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
                    pod_cidr.network()
                ),
            ));
        }
        check_unicast("node.podCIDR", pod_cidr.addr)?;
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
            if !pod_cidr.contains(pod.ip) {
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

        let mut prefixes: HashMap<Ipv4Cidr, usize> = HashMap::new();
        for (i, route) in self.routes.iter().enumerate() {
            let prefix = route.prefix;
            if !prefix.is_network() {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].prefix"),
                    format!(
                        "{prefix} has host bits set (the network is {})",
                        prefix.network()
                    ),
                ));
            }
            if pod_cidr.contains_net(&prefix) {
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
            if route.via == addr.addr || !uplink_net.is_host_of(route.via) {
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
        crate::services::validate(self)?;
        crate::policy::validate(self)?;
        if let Some(bgp) = &self.bgp {
            bgp.validate(self)?;
        }
        Ok(())
    }
}

/// serde_yaml prefixes its messages with its own, coarser idea of the path ("node: ...");
/// drop it when it is a prefix of the precise path from serde_path_to_error.
fn strip_yaml_path(path: &str, message: String) -> String {
    if let Some((head, rest)) = message.split_once(": ") {
        let pathlike = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']' | '_' | '-'));
        if pathlike && path.starts_with(head) {
            return rest.to_string();
        }
    }
    message
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node:
  name: node-1
  uplink: up0
  address: 192.168.100.2/24
  gateway: 192.168.100.1
  podCIDR: 10.244.1.0/24
  podMTU: 1500
  xdpMode: auto
pods:
  - name: a
    namespace: default
    netns: fp-1234-pod-a
    ip: 10.244.1.10
    interface: eth0
  - name: b
    netns: /var/run/netns/fp-1234-pod-b
    ip: 10.244.1.11
routes:
  - prefix: 10.0.0.0/8
    via: 192.168.100.1
"#;

    fn err(yaml: &str) -> ConfigError {
        match NodeSpec::from_yaml(yaml) {
            Ok(spec) => panic!("expected an error, parsed {spec:?}"),
            Err(e) => e,
        }
    }

    /// Applies a textual substitution to GOOD (asserting that it applied) and returns the error.
    fn err_with(from: &str, to: &str) -> ConfigError {
        assert!(GOOD.contains(from), "{from:?} not in GOOD");
        err(&GOOD.replacen(from, to, 1))
    }

    fn assert_err(e: &ConfigError, field: &str, needle: &str) {
        let s = e.to_string();
        assert_eq!(e.field(), field, "error was: {s}");
        assert!(s.starts_with(&format!("{field}: ")), "error was: {s}");
        assert!(s.contains(needle), "{needle:?} not in: {s}");
    }

    #[test]
    fn parses_good_spec() {
        let spec = NodeSpec::from_yaml(GOOD).unwrap();
        assert_eq!(spec.node.name, "node-1");
        assert_eq!(spec.node.uplink, "up0");
        assert_eq!(spec.node.address, "192.168.100.2/24".parse().unwrap());
        assert_eq!(spec.node.gateway, Some(Ipv4Addr::new(192, 168, 100, 1)));
        assert_eq!(spec.node.pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(spec.node.pod_mtu, Some(1500));
        assert_eq!(spec.node.xdp_mode, XdpMode::Auto);
        assert_eq!(spec.pods.len(), 2);
        assert_eq!(spec.pods[1].namespace, "default");
        assert_eq!(spec.pods[1].interface, "eth0");
        assert_eq!(spec.pods[0].key(), "default/a");
        assert_eq!(
            spec.pods[0].netns_path(),
            PathBuf::from("/var/run/netns/fp-1234-pod-a")
        );
        assert_eq!(
            spec.pods[1].netns_path(),
            PathBuf::from("/var/run/netns/fp-1234-pod-b")
        );
        assert_eq!(spec.routes[0].prefix.to_string(), "10.0.0.0/8");
        assert_eq!(spec.routes[0].via, Ipv4Addr::new(192, 168, 100, 1));
    }

    #[test]
    fn defaults_for_optional_fields() {
        let spec = NodeSpec::from_yaml(
            "node:\n  name: n\n  uplink: up0\n  address: 192.168.1.2/24\n  podCIDR: 10.1.0.0/16\n",
        )
        .unwrap();
        assert_eq!(spec.node.gateway, None);
        assert_eq!(spec.node.pod_mtu, None);
        assert_eq!(spec.node.pod_mtu_or(1450), 1450);
        assert_eq!(spec.node.xdp_mode, XdpMode::Auto);
        assert!(spec.pods.is_empty());
        assert!(spec.routes.is_empty());
    }

    #[test]
    fn xdp_modes() {
        for (s, m) in [("native", XdpMode::Native), ("skb", XdpMode::Skb)] {
            let spec =
                NodeSpec::from_yaml(&GOOD.replace("xdpMode: auto", &format!("xdpMode: {s}")))
                    .unwrap();
            assert_eq!(spec.node.xdp_mode, m);
        }
    }

    #[test]
    fn unknown_xdp_mode() {
        let e = err_with("xdpMode: auto", "xdpMode: turbo");
        assert!(matches!(e, ConfigError::Yaml { .. }));
        assert_err(&e, "node.xdpMode", "unknown variant `turbo`");
    }

    #[test]
    fn unknown_field_names_its_place() {
        let e = err_with(
            "    interface: eth0",
            "    interface: eth0\n    colour: blue",
        );
        assert_err(
            &e,
            "pods[0].colour",
            "unknown field `colour`, expected one of",
        );
        let e = err_with("  podMTU: 1500", "  podMtu: 1500");
        assert_err(&e, "node.podMtu", "unknown field `podMtu`");
        let e = err(&format!("{GOOD}extra: 1\n"));
        assert_err(&e, "extra", "unknown field `extra`");
        // serde_yaml's own coarse path prefix is dropped.
        assert!(!e.to_string().contains("extra: extra"), "{e}");
        let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 10.244.1.0/33");
        assert!(
            e.to_string().starts_with("node.podCIDR: invalid prefix"),
            "{e}"
        );
    }

    #[test]
    fn missing_field() {
        let e = err_with("  uplink: up0\n", "");
        assert_err(&e, "node", "missing field `uplink`");
    }

    #[test]
    fn bad_ip_syntax_names_field() {
        let e = err_with("ip: 10.244.1.11", "ip: 10.244.1.300");
        assert!(matches!(e, ConfigError::Yaml { .. }));
        assert_err(&e, "pods[1].ip", "invalid IPv4 address");
    }

    #[test]
    fn bad_cidr_syntax_names_field() {
        let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 10.244.1.0/33");
        assert_err(&e, "node.podCIDR", "invalid prefix length \"33\"");
        let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 10.244.1.0");
        assert_err(&e, "node.podCIDR", "expected ADDRESS/PREFIX");
        let e = err_with("prefix: 10.0.0.0/8", "prefix: 10.0.0/8");
        assert_err(&e, "routes[0].prefix", "invalid IPv4 address");
    }

    #[test]
    fn address_prefix_must_be_1_to_32() {
        let e = err_with("address: 192.168.100.2/24", "address: 192.168.100.2/0");
        assert_err(&e, "node.address", "prefix length must be 1..32");
        // /32 is fine (a gateway is then impossible, so drop it and the route).
        let yaml = GOOD
            .replace("address: 192.168.100.2/24", "address: 192.168.100.2/32")
            .replace("  gateway: 192.168.100.1\n", "")
            .replace(
                "routes:\n  - prefix: 10.0.0.0/8\n    via: 192.168.100.1\n",
                "",
            );
        NodeSpec::from_yaml(&yaml).unwrap();
    }

    #[test]
    fn address_must_be_a_host_address() {
        let e = err_with("address: 192.168.100.2/24", "address: 192.168.100.0/24");
        assert_err(&e, "node.address", "network or broadcast");
        let e = err_with("address: 192.168.100.2/24", "address: 224.0.0.1/24");
        assert_err(&e, "node.address", "not a unicast address");
    }

    #[test]
    fn gateway_must_be_in_uplink_subnet() {
        let e = err_with("gateway: 192.168.100.1", "gateway: 192.168.101.1");
        assert_err(
            &e,
            "node.gateway",
            "192.168.101.1 is not a host of the uplink subnet 192.168.100.0/24",
        );
        let e = err_with("gateway: 192.168.100.1", "gateway: 192.168.100.2");
        assert_err(&e, "node.gateway", "node's own address");
        let e = err_with("gateway: 192.168.100.1", "gateway: 192.168.100.255");
        assert_err(&e, "node.gateway", "not a host of the uplink subnet");
    }

    #[test]
    fn pod_cidr_checks() {
        let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 10.244.1.5/24");
        assert_err(
            &e,
            "node.podCIDR",
            "has host bits set (the network is 10.244.1.0/24)",
        );
        let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 192.168.0.0/16");
        assert_err(
            &e,
            "node.podCIDR",
            "overlaps the uplink subnet 192.168.100.0/24",
        );
        let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 0.0.0.0/0");
        assert_err(&e, "node.podCIDR", "prefix length must be 1..31");
    }

    #[test]
    fn pod_mtu_range() {
        let e = err_with("podMTU: 1500", "podMTU: 575");
        assert_err(&e, "node.podMTU", "575 is outside 576..=9000");
        let e = err_with("podMTU: 1500", "podMTU: 9001");
        assert_err(&e, "node.podMTU", "9001 is outside 576..=9000");
        for ok in [576, 9000] {
            NodeSpec::from_yaml(&GOOD.replace("podMTU: 1500", &format!("podMTU: {ok}"))).unwrap();
        }
        let e = err_with("podMTU: 1500", "podMTU: -1");
        assert!(matches!(e, ConfigError::Yaml { .. }));
        assert_eq!(e.field(), "node.podMTU");
    }

    #[test]
    fn pod_ip_outside_pod_cidr() {
        let e = err_with("ip: 10.244.1.11", "ip: 10.9.0.1");
        assert_eq!(
            e.to_string(),
            "pods[1].ip: 10.9.0.1 is outside node.podCIDR 10.244.1.0/24"
        );
    }

    #[test]
    fn pod_ip_network_or_broadcast() {
        let e = err_with("ip: 10.244.1.11", "ip: 10.244.1.255");
        assert_err(&e, "pods[1].ip", "broadcast address of node.podCIDR");
        let e = err_with("ip: 10.244.1.10", "ip: 10.244.1.0");
        assert_err(&e, "pods[0].ip", "network or broadcast");
    }

    #[test]
    fn duplicate_pod_ip() {
        let e = err_with("ip: 10.244.1.11", "ip: 10.244.1.10");
        assert_eq!(
            e.to_string(),
            "pods[1].ip: 10.244.1.10 is already used by pods[0] (default/a)"
        );
    }

    #[test]
    fn duplicate_pod_name() {
        let e = err_with("  - name: b", "  - name: a");
        assert_eq!(
            e.to_string(),
            "pods[1].name: default/a is already used by pods[0]"
        );
        // Same name in another namespace is fine.
        NodeSpec::from_yaml(&GOOD.replace("  - name: b\n", "  - name: a\n    namespace: other\n"))
            .unwrap();
    }

    #[test]
    fn duplicate_interface_in_same_netns() {
        // pods[1] uses the same netns as pods[0] (once by name, once by path) and eth0.
        let e = err_with(
            "netns: /var/run/netns/fp-1234-pod-b",
            "netns: /var/run/netns/fp-1234-pod-a",
        );
        assert_err(
            &e,
            "pods[1].interface",
            "eth0 in netns /var/run/netns/fp-1234-pod-a is already used by pods[0]",
        );
    }

    #[test]
    fn bad_names() {
        let e = err_with("name: a\n", "name: A_1\n");
        assert_err(&e, "pods[0].name", "not a valid name");
        let e = err_with("namespace: default", "namespace: \"\"");
        assert_err(&e, "pods[0].namespace", "not a valid name");
        let e = err_with("interface: eth0", "interface: eth0-way-too-long-name");
        assert_err(&e, "pods[0].interface", "1..=15 bytes");
        let e = err_with("interface: eth0", "interface: lo");
        assert_err(&e, "pods[0].interface", "must not be lo");
        let e = err_with("uplink: up0", "uplink: \"up 0\"");
        assert_err(&e, "node.uplink", "not a valid interface name");
        let e = err_with("netns: fp-1234-pod-a", "netns: ../etc");
        assert_err(
            &e,
            "pods[0].netns",
            "name under /var/run/netns or an absolute path",
        );
        let e = err_with("name: node-1", "name: \"\"");
        assert_err(&e, "node.name", "must not be empty");
    }

    #[test]
    fn route_checks() {
        let e = err_with("prefix: 10.0.0.0/8", "prefix: 10.0.0.1/8");
        assert_err(
            &e,
            "routes[0].prefix",
            "host bits set (the network is 10.0.0.0/8)",
        );
        let e = err_with("via: 192.168.100.1\n", "via: 172.16.0.1\n");
        assert_err(
            &e,
            "routes[0].via",
            "not a neighbour on the uplink subnet 192.168.100.0/24",
        );
        let e = err_with("prefix: 10.0.0.0/8", "prefix: 10.244.1.128/25");
        assert_err(&e, "routes[0].prefix", "inside node.podCIDR");
        let e = err(&format!(
            "{GOOD}  - prefix: 10.0.0.0/8\n    via: 192.168.100.3\n"
        ));
        assert_err(&e, "routes[1].prefix", "already routed by routes[0]");
        // A default route covers the pod CIDR but is not inside it: fine.
        NodeSpec::from_yaml(&GOOD.replace("prefix: 10.0.0.0/8", "prefix: 0.0.0.0/0")).unwrap();
    }

    #[test]
    fn empty_document() {
        let e = err("");
        assert_err(&e, ".", "missing field `node`");
    }

    #[test]
    fn syntax_error() {
        let e = err("node: [unclosed");
        assert!(matches!(e, ConfigError::Yaml { .. }));
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn load_missing_file() {
        let e = NodeSpec::load("/nonexistent/ferroplane.yaml").unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(e
            .to_string()
            .starts_with("reading /nonexistent/ferroplane.yaml: "));
    }

    #[test]
    fn load_file() {
        let path = std::env::temp_dir().join(format!("fp-config-test-{}.yaml", std::process::id()));
        std::fs::write(&path, GOOD).unwrap();
        let r = NodeSpec::load(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(r.unwrap().pods.len(), 2);
    }

    #[test]
    fn cidr_basics() {
        let c: Ipv4Cidr = "192.168.100.2/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "192.168.100.0/24");
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 168, 100, 255));
        assert!(!c.is_network());
        assert!(c.contains(Ipv4Addr::new(192, 168, 100, 200)));
        assert!(!c.contains(Ipv4Addr::new(192, 168, 101, 1)));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.mask(), 0);
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(all.contains_net(&c));
        assert!(!c.contains_net(&all));
        assert!(c.overlaps(&all));
        let host: Ipv4Cidr = "10.0.0.1/32".parse().unwrap();
        assert!(host.is_host_of(Ipv4Addr::new(10, 0, 0, 1)));
        let p2p: Ipv4Cidr = "10.0.0.0/31".parse().unwrap();
        assert!(p2p.is_host_of(Ipv4Addr::new(10, 0, 0, 0)));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/033",
            "x/8",
            "10.0.0.0/8/8",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        assert_eq!(Ipv4Cidr::new(Ipv4Addr::LOCALHOST, 33), None);
    }
}
