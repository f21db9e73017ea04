//! The `bgp:` part of the spec: the speaker's settings, peers and what it advertises,
//! with their defaults and validation. The speaker itself and the kernel routes it keeps
//! are [`crate::bgp`]'s.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferroplane_bgp::PeerConfig;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::spec::{ConfigError, NodeSpec};

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

fn yes() -> bool {
    true
}
fn default_port() -> u16 {
    179
}
fn default_hold() -> u16 {
    90
}
fn default_retry() -> u32 {
    5
}
fn default_restart_time() -> u16 {
    120
}

/// `bgp.gracefulRestart`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GracefulRestartSpec {
    /// Announce the capability (restarting and receiving speaker).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds peers keep our routes while we restart (<= 4095).
    #[serde(default = "default_restart_time")]
    pub restart_time: u16,
}

impl Default for GracefulRestartSpec {
    fn default() -> Self {
        GracefulRestartSpec {
            enabled: true,
            restart_time: default_restart_time(),
        }
    }
}

/// `bgp.advertise`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdvertiseSpec {
    /// The node's pod CIDR.
    #[serde(default = "yes", rename = "podCIDR")]
    pub pod_cidr: bool,
    /// The service ClusterIP range.
    #[serde(
        default,
        rename = "serviceClusterIPRange",
        deserialize_with = "crate::spec::de::opt_ipv4_net"
    )]
    pub service_cluster_ip_range: Option<Ipv4Net>,
    /// Services' externalIPs.
    #[serde(default, rename = "externalIPs")]
    pub external_ips: bool,
    /// LoadBalancer ingress IPs.
    #[serde(default, rename = "loadBalancerIPs")]
    pub load_balancer_ips: bool,
    /// IPv6 prefixes to originate (kernel-routed on this node: the engine is IPv4-only;
    /// host bits are cleared when originated).
    #[serde(default, rename = "ipv6Prefixes")]
    pub ipv6_prefixes: Vec<Ipv6Net>,
}

impl Default for AdvertiseSpec {
    fn default() -> Self {
        AdvertiseSpec {
            pod_cidr: true,
            service_cluster_ip_range: None,
            external_ips: false,
            load_balancer_ips: false,
            ipv6_prefixes: Vec::new(),
        }
    }
}

/// The `bgp:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpSpec {
    /// Our AS.
    #[serde(rename = "localAS")]
    pub local_as: u32,
    /// BGP identifier (default: node.address).
    #[serde(default, rename = "routerID")]
    pub router_id: Option<Ipv4Addr>,
    /// TCP port to listen on.
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// Hold time we propose.
    #[serde(default = "default_hold")]
    pub hold_time: u16,
    /// ConnectRetryTime (seconds).
    #[serde(default = "default_retry")]
    pub connect_retry: u32,
    /// ECMP across equal paths.
    #[serde(default = "yes")]
    pub multipath: bool,
    /// Graceful restart.
    #[serde(default)]
    pub graceful_restart: GracefulRestartSpec,
    /// iBGP sessions to every `cluster.nodes[]` address.
    #[serde(default = "yes")]
    pub full_mesh: bool,
    /// Install learnt routes in the kernel.
    #[serde(default = "yes")]
    pub kernel_routes: bool,
    /// What the node originates.
    #[serde(default)]
    pub advertise: AdvertiseSpec,
    /// IPv6 next hop for originated IPv6 prefixes advertised over IPv4 sessions (one of
    /// the node's IPv6 addresses on the link toward the peers).
    #[serde(default, rename = "nextHopV6")]
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Explicit neighbours.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

impl BgpSpec {
    /// Semantic checks (field-named errors).
    pub fn validate(&self, spec: &NodeSpec) -> Result<(), ConfigError> {
        if self.local_as == 0 {
            return Err(invalid("bgp.localAS", "must not be 0"));
        }
        if self.hold_time == 1 || self.hold_time == 2 {
            return Err(invalid("bgp.holdTime", "must be 0 or >= 3"));
        }
        if self.connect_retry == 0 {
            return Err(invalid(
                "bgp.connectRetry",
                "must be at least 1 (seconds between connection attempts)",
            ));
        }
        if self.graceful_restart.restart_time > 4095 {
            return Err(invalid(
                "bgp.gracefulRestart.restartTime",
                "must be <= 4095 (12 bits)",
            ));
        }
        if let Some(r) = self.router_id {
            if r.is_unspecified() || r.is_multicast() {
                return Err(invalid("bgp.routerID", format!("{r} is not usable")));
            }
        }
        if let Some(a) = self.next_hop_v6 {
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                return Err(invalid("bgp.nextHopV6", format!("{a} is not usable")));
            }
        }
        // IPv6 prefixes go to IPv4 sessions only with nextHopV6: without it they would be
        // silently not advertised there.
        if !self.advertise.ipv6_prefixes.is_empty() && self.next_hop_v6.is_none() {
            if let Some(p) = self.peers(spec).iter().find(|p| p.address.is_ipv4()) {
                return Err(invalid(
                    "bgp.nextHopV6",
                    format!(
                        "required with bgp.advertise.ipv6Prefixes: the session to {} is over IPv4",
                        p.address
                    ),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let f = |x: &str| format!("bgp.peers[{i}].{x}");
            if p.address == IpAddr::V4(spec.node.address.addr()) {
                return Err(invalid(&f("address"), "is this node's address"));
            }
            if !seen.insert(p.address) {
                return Err(invalid(
                    &f("address"),
                    format!("{} listed twice", p.address),
                ));
            }
            if p.remote_as == 0 {
                return Err(invalid(&f("as"), "must not be 0"));
            }
            if p.hold_time.is_some_and(|h| h == 1 || h == 2) {
                return Err(invalid(&f("holdTime"), "must be 0 or >= 3"));
            }
            if let Some(pw) = &p.password {
                ferroplane_bgp::md5::validate(pw).map_err(|e| invalid(&f("password"), e))?;
            }
            if p.families.is_empty() {
                return Err(invalid(
                    &f("families"),
                    "must list ipv4-unicast, ipv6-unicast or both",
                ));
            }
        }
        Ok(())
    }
}
