//! Kubernetes mode: the agent's configuration from a ConfigMap-mounted file
//! ([`config::AgentConfig`]), watchers on the API ([`source::K8sSource`]) and the mapping
//! from Kubernetes objects to the desired-state model the standalone YAML spec also
//! produces ([`model`], [`policy`]).
//!
//! At start, [`node_spec`] turns the agent config and the node's own Node object into a
//! [`NodeSpec`] (uplink, address, pod CIDR, the other nodes as `cluster.nodes`), so the rest
//! of the agent runs exactly as in standalone mode; pods come from the CNI plugin.

pub mod config;
pub mod model;
pub mod policy;
pub mod source;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;

use crate::netlink::{LinkInfo, Plumber};
use crate::spec::cluster::{ClusterSpec, Mode};
use crate::spec::{ConfigError, NodeSpec};
pub use config::AgentConfig;
pub use model::{DesiredState, Objects};
pub use source::{K8sError, K8sSource};

/// Errors building the node spec from Kubernetes.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The API failed.
    #[error(transparent)]
    K8s(#[from] K8sError),
    /// The resulting spec is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No interface carries the address the Node reports.
    #[error("no interface carries the Node's InternalIP {0}; set uplink in the agent config")]
    NoUplink(Ipv4Addr),
    /// The Node reports no InternalIP and no uplink is configured.
    #[error("Node {0} has no IPv4 InternalIP and uplink is not configured")]
    NoAddress(String),
    /// Netlink failed.
    #[error("{0}")]
    Netlink(#[from] crate::netlink::PlumbError),
}

async fn find_uplink(
    plumber: &Plumber,
    cfg: &AgentConfig,
    ip: Option<Ipv4Addr>,
    node: &str,
) -> Result<LinkInfo, BootstrapError> {
    if !cfg.uplink.is_empty() {
        return Ok(plumber.link_info(&cfg.uplink).await?);
    }
    let ip = ip.ok_or_else(|| BootstrapError::NoAddress(node.to_string()))?;
    let names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    for name in names {
        if let Ok(info) = plumber.link_info(&name).await {
            if info.ipv4.iter().any(|(a, _)| *a == ip) {
                return Ok(info);
            }
        }
    }
    Err(BootstrapError::NoUplink(ip))
}

/// The node spec of node `node` (its Node object) with pod CIDR `pod_cidr`, the other
/// nodes `remote` and the agent config.
pub async fn node_spec(
    plumber: &Plumber,
    cfg: &AgentConfig,
    node: &Node,
    pod_cidr: Ipv4Net,
    remote: Vec<crate::spec::cluster::RemoteNodeSpec>,
) -> Result<NodeSpec, BootstrapError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let internal = model::node_internal_ip(node);
    let up = find_uplink(plumber, cfg, internal, &name).await?;
    let (addr, prefix_len) = match internal {
        Some(ip) => up.ipv4.iter().copied().find(|(a, _)| *a == ip),
        None => up.ipv4.first().copied(),
    }
    .ok_or_else(|| BootstrapError::NoAddress(name.clone()))?;
    let remote: Vec<_> = remote
        .into_iter()
        .filter(|r| cfg.overlay != Mode::Wireguard || r.public_key.is_some())
        .collect();
    // Built through the YAML form so fields other parts add to NodeSpec keep their defaults.
    let mut yaml = format!(
        "node:\n  name: {name}\n  uplink: {}\n  address: {addr}/{prefix_len}\n  podCIDR: {pod_cidr}\n  xdpMode: {}\n",
        up.name,
        match cfg.xdp_mode {
            crate::spec::XdpMode::Auto => "auto",
            crate::spec::XdpMode::Native => "native",
            crate::spec::XdpMode::Skb => "skb",
        }
    );
    if let Some(gw) = cfg.gateway {
        yaml.push_str(&format!("  gateway: {gw}\n"));
    }
    if let Some(mtu) = cfg.pod_mtu {
        yaml.push_str(&format!("  podMTU: {mtu}\n"));
    }
    let mut spec = NodeSpec::from_yaml(&yaml)?;
    // The cluster's own ranges, which no Service may claim as external or load-balancer
    // IPs (see `services::Protected`): the pod pool (as clusterCIDRs, which otherwise only
    // matter for masquerading, off in Kubernetes mode) and the ClusterIP ranges.
    if let Some(pool) = cfg.cluster_pool_cidr {
        spec.service_proxy.cluster_cidrs = vec![pool.trunc(), pod_cidr.trunc()];
    }
    spec.service_proxy.service_cidrs = cfg.service_cidrs.clone();
    // Always a cluster section, even for the first node: nodes that join later are added
    // to it (see [`DesiredState::apply_to`]).
    spec.cluster = Some(ClusterSpec {
        mode: cfg.overlay,
        nodes: remote,
        ..ClusterSpec::default()
    });
    spec.validate()?;
    Ok(spec)
}

/// What Kubernetes mode starts from.
pub struct Bootstrap {
    /// The node spec built from the Node and the agent config.
    pub spec: NodeSpec,
    /// The API client.
    pub client: kube::Client,
    /// The agent config.
    pub config: AgentConfig,
    /// This node's name.
    pub node_name: String,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("spec", &self.spec)
            .field("config", &self.config)
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

/// How long [`bootstrap`] waits for the node's Node object.
pub const NODE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads the agent config, connects to the API, finds the node's pod CIDR (or takes one
/// from the pool) and the other nodes, and builds the node spec.
pub async fn bootstrap(
    config_path: &std::path::Path,
    kubeconfig: Option<&std::path::Path>,
    plumber: &Plumber,
) -> Result<Bootstrap, BootstrapError> {
    let config = AgentConfig::load(config_path)?;
    let node_name = config.node_name_or_env()?;
    let client = source::client(kubeconfig).await?;
    let prefix = config.annotation_prefix.clone();
    let (node, pod_cidr) = source::pod_cidr(
        &client,
        &node_name,
        &prefix,
        config.cluster_pool_cidr,
        config.node_block_prefix,
        NODE_WAIT,
    )
    .await?;
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let all = nodes
        .list(&Default::default())
        .await
        .map_err(|e| K8sError::Api {
            what: "listing Nodes".into(),
            source: Box::new(e),
        })?;
    let remote = all
        .items
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(node_name.as_str()))
        .filter_map(|n| model::remote_node(n, &prefix))
        .collect();
    let spec = node_spec(plumber, &config, &node, pod_cidr, remote).await?;
    Ok(Bootstrap {
        spec,
        client,
        config,
        node_name,
    })
}

/// The annotations this node publishes for the others: its tunnel address, VTEP MAC, pod
/// CIDR and (WireGuard) public key.
pub fn own_annotations(
    spec: &NodeSpec,
    wireguard_public_key: Option<String>,
) -> std::collections::BTreeMap<String, String> {
    use model::annotation;
    let addr = spec.node.address.addr();
    let vtep = spec
        .cluster
        .as_ref()
        .and_then(|c| c.vtep_mac)
        .unwrap_or_else(|| crate::spec::cluster::MacAddr::vtep_for(addr));
    let mut a = std::collections::BTreeMap::new();
    a.insert(annotation::TUNNEL_ADDRESS.to_string(), addr.to_string());
    a.insert(annotation::VTEP_MAC.to_string(), vtep.to_string());
    a.insert(
        annotation::POD_CIDR.to_string(),
        spec.node.pod_cidr.to_string(),
    );
    if let Some(k) = wireguard_public_key {
        a.insert(annotation::WIREGUARD_PUBLIC_KEY.to_string(), k);
        let port = spec.cluster.as_ref().map_or(51820, |c| c.wireguard.port);
        a.insert(annotation::WIREGUARD_PORT.to_string(), port.to_string());
    }
    a
}
