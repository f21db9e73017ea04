//! Source NAT settings of a node: masquerade of pod traffic leaving the
//! cluster, the port range SNATed flows use on the node's address, and the
//! session table bounds.

use std::net::Ipv4Addr;

use crate::conntrack::Timeouts;
use crate::prefix::Ipv4Prefix;

/// Default first port of the SNAT range: above Linux's default ephemeral range
/// (`net.ipv4.ip_local_port_range` = 32768..60999), so the node's own
/// connections never collide with translated ones.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (61000, 65535);

/// Default session table limit per worker.
pub const DEFAULT_CONNTRACK_MAX: usize = 262_144;

/// NAT settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// Translate pod traffic to destinations outside `cluster_cidrs` to `masquerade_addr`.
    pub masquerade: bool,
    /// The address SNATed flows leave with (the node's address).
    pub masquerade_addr: Option<Ipv4Addr>,
    /// Destinations inside the cluster (pod and service networks): never masqueraded.
    pub cluster_cidrs: Vec<Ipv4Prefix>,
    /// Ports (inclusive) SNATed flows use on `masquerade_addr`.
    pub snat_ports: (u16, u16),
    /// Session table limit per worker.
    pub conntrack_max: usize,
    /// Session timeouts.
    pub timeouts: Timeouts,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            masquerade: false,
            masquerade_addr: None,
            cluster_cidrs: Vec::new(),
            snat_ports: DEFAULT_SNAT_PORTS,
            conntrack_max: DEFAULT_CONNTRACK_MAX,
            timeouts: Timeouts::default(),
        }
    }
}

impl NatConfig {
    /// Whether `dst` is inside the cluster.
    #[inline]
    pub fn in_cluster(&self, dst: Ipv4Addr) -> bool {
        self.cluster_cidrs.iter().any(|p| p.contains(dst))
    }
}
