//! The agent's Kubernetes-mode configuration: a YAML file mounted from a ConfigMap.
//!
//! ```yaml
//! nodeName: ""                 # default: $NODE_NAME (downward API)
//! uplink: ""                   # default: the interface holding the Node's InternalIP
//! gateway: 10.0.0.1            # optional: default route next hop on the uplink
//! xdpMode: auto                # auto | native | skb
//! podMTU: 1450                 # optional, default: uplink MTU minus the tunnel overhead
//! clusterPoolCIDR: 10.244.0.0/16   # optional: used when Node.spec.podCIDRs is empty
//! nodeBlockPrefix: 24          # size of a node's block taken from clusterPoolCIDR
//! overlay: vxlan               # direct | ipip | vxlan | wireguard
//! annotationPrefix: ferroplane.io
//! serviceCIDRs: [10.96.0.0/12]  # optional: Service external/LB IPs inside are ignored
//! ```
//!
//! Every field has a default; every error names its field (`clusterPoolCIDR: ...`).

use std::path::Path;

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::spec::cluster::Mode;
use crate::spec::{ConfigError, Ipv4NetExt, XdpMode, MAX_POD_MTU, MIN_POD_MTU};

/// The ConfigMap-mounted agent configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    /// This node's name (default `$NODE_NAME`).
    #[serde(default)]
    pub node_name: String,
    /// Uplink interface (default: the one holding the Node's InternalIP).
    #[serde(default)]
    pub uplink: String,
    /// Default route next hop on the uplink.
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// XDP attach mode.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Pod MTU.
    #[serde(default, rename = "podMTU")]
    pub pod_mtu: Option<u32>,
    /// Pool the agent takes its block from when the Node has no podCIDR.
    #[serde(
        default,
        rename = "clusterPoolCIDR",
        deserialize_with = "crate::spec::de::opt_ipv4_net"
    )]
    pub cluster_pool_cidr: Option<Ipv4Net>,
    /// Prefix length of a node's block from the pool.
    #[serde(default = "default_block")]
    pub node_block_prefix: u8,
    /// How pods on other nodes are reached.
    #[serde(default)]
    pub overlay: Mode,
    /// Prefix of the Node annotations the agent reads and writes.
    #[serde(default = "default_prefix")]
    pub annotation_prefix: String,
    /// The cluster's ClusterIP ranges (kube-apiserver `--service-cluster-ip-range`):
    /// Services' external and load-balancer IPs inside them are ignored (optional).
    #[serde(
        default,
        rename = "serviceCIDRs",
        deserialize_with = "crate::spec::de::vec_ipv4_net"
    )]
    pub service_cidrs: Vec<Ipv4Net>,
}

fn default_block() -> u8 {
    24
}

fn default_prefix() -> String {
    "ferroplane.io".to_string()
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node_name: String::new(),
            uplink: String::new(),
            gateway: None,
            xdp_mode: XdpMode::Auto,
            pod_mtu: None,
            cluster_pool_cidr: None,
            node_block_prefix: default_block(),
            overlay: Mode::Direct,
            annotation_prefix: default_prefix(),
            service_cidrs: Vec::new(),
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

impl AgentConfig {
    /// Parses and validates the YAML (an empty document gives the defaults).
    pub fn from_yaml(text: &str) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = if text.trim().is_empty() {
            AgentConfig::default()
        } else {
            crate::spec::from_yaml_str(text)?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates the file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        AgentConfig::from_yaml(&text)
    }

    /// Field checks (done by [`AgentConfig::from_yaml`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.node_name.is_empty() && !is_dns_subdomain(&self.node_name) {
            return Err(invalid(
                "nodeName",
                format!("{:?} is not a valid node name", self.node_name),
            ));
        }
        if !self.uplink.is_empty()
            && (self.uplink.len() > 15 || self.uplink.contains(['/', ':', ' ']))
        {
            return Err(invalid(
                "uplink",
                format!("{:?} is not a valid interface name", self.uplink),
            ));
        }
        if let Some(mtu) = self.pod_mtu {
            if !(MIN_POD_MTU..=MAX_POD_MTU).contains(&mtu) {
                return Err(invalid(
                    "podMTU",
                    format!("{mtu} is outside {MIN_POD_MTU}..={MAX_POD_MTU}"),
                ));
            }
        }
        if let Some(pool) = self.cluster_pool_cidr {
            if !pool.is_network() {
                return Err(invalid(
                    "clusterPoolCIDR",
                    format!("{pool} has host bits set (the network is {})", pool.trunc()),
                ));
            }
            if pool.prefix_len() == 0 || pool.prefix_len() > 30 {
                return Err(invalid(
                    "clusterPoolCIDR",
                    format!("{pool}: prefix length must be 1..30"),
                ));
            }
            if self.node_block_prefix < pool.prefix_len() || self.node_block_prefix > 30 {
                return Err(invalid(
                    "nodeBlockPrefix",
                    format!(
                        "{} must be between clusterPoolCIDR's prefix ({}) and 30",
                        self.node_block_prefix,
                        pool.prefix_len()
                    ),
                ));
            }
        } else if !(1..=30).contains(&self.node_block_prefix) {
            return Err(invalid(
                "nodeBlockPrefix",
                format!("{} is outside 1..=30", self.node_block_prefix),
            ));
        }
        if self.annotation_prefix.is_empty() || !is_dns_subdomain(&self.annotation_prefix) {
            return Err(invalid(
                "annotationPrefix",
                format!("{:?} is not a DNS subdomain", self.annotation_prefix),
            ));
        }
        Ok(())
    }

    /// The node name: the configured one, else `$NODE_NAME`.
    pub fn node_name_or_env(&self) -> Result<String, ConfigError> {
        if !self.node_name.is_empty() {
            return Ok(self.node_name.clone());
        }
        match std::env::var("NODE_NAME") {
            Ok(n) if is_dns_subdomain(&n) => Ok(n),
            _ => Err(invalid(
                "nodeName",
                "not set and $NODE_NAME is missing or invalid",
            )),
        }
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(yaml: &str) -> String {
        AgentConfig::from_yaml(yaml)
            .unwrap_err()
            .field()
            .to_string()
    }

    #[test]
    fn defaults_and_fields() {
        let c = AgentConfig::from_yaml("").unwrap();
        assert_eq!(c, AgentConfig::default());
        let c = AgentConfig::from_yaml(
            "overlay: vxlan\nclusterPoolCIDR: 10.244.0.0/16\npodMTU: 1450\n",
        )
        .unwrap();
        assert_eq!(c.overlay, Mode::Vxlan);
        assert_eq!(c.node_block_prefix, 24);
        assert_eq!(field("bogus: 1\n"), "bogus");
        assert_eq!(field("overlay: gre\n"), "overlay");
        assert_eq!(field("podMTU: 100\n"), "podMTU");
        assert_eq!(field("clusterPoolCIDR: 10.244.0.1/16\n"), "clusterPoolCIDR");
        assert_eq!(
            field("clusterPoolCIDR: 10.244.0.0/16\nnodeBlockPrefix: 8\n"),
            "nodeBlockPrefix"
        );
        assert_eq!(field("nodeName: Bad_Name\n"), "nodeName");
        assert_eq!(field("uplink: a/b\n"), "uplink");
        assert_eq!(field("annotationPrefix: \"\"\n"), "annotationPrefix");
        assert_eq!(field("gateway: 1.2.3\n"), "gateway");
    }
}
