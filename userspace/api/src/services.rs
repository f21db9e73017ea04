//! Data of `show_services` and `show_sessions`.

use serde::{Deserialize, Serialize};

/// One port of one service (answer of `show_services` is a list of these).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// `namespace/name`.
    pub name: String,
    /// Port name.
    pub port_name: String,
    /// `tcp` / `udp`.
    pub protocol: String,
    /// Service port.
    pub port: u16,
    /// Frontends: `kind addr:port` (cluster-ip, external-ip, load-balancer) and `node-port N`.
    pub frontends: Vec<String>,
    /// externalTrafficPolicy (`Cluster` / `Local`).
    pub external_policy: String,
    /// internalTrafficPolicy.
    pub internal_policy: String,
    /// ClientIP affinity timeout (seconds), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_secs: Option<u32>,
    /// Health check node port, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<u16>,
    /// Backends.
    pub backends: Vec<BackendInfo>,
    /// Maglev table size (in-cluster selection).
    pub maglev_size: u32,
    /// Maglev table size (external selection).
    pub maglev_size_external: u32,
}

/// One backend.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BackendInfo {
    /// `addr:port`.
    pub address: String,
    /// `ready`, `serving-terminating`, `not-serving`.
    pub state: String,
    /// On this node.
    pub local: bool,
    /// Node name.
    pub node: String,
    /// Target (`namespace/pod`).
    pub target: String,
    /// Weight.
    pub weight: u32,
    /// Slots of the in-cluster Maglev table it owns.
    pub maglev_slots: u32,
    /// Slots of the external Maglev table it owns.
    pub maglev_slots_external: u32,
}

/// Filters of `show_sessions` (all optional).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct SessionFilter {
    /// Any address of either tuple equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Any port of either tuple equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp`, `udp` or `icmp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// At most this many sessions (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Answer of `show_sessions`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SessionsReport {
    /// Sessions in the tables (all workers).
    pub total: usize,
    /// Sessions the tables can hold, summed over the workers (each holds up to
    /// `conntrackMax`).
    pub limit: usize,
    /// Sessions created since start.
    pub created: u64,
    /// Creations refused because a table was full of established connections.
    pub full: u64,
    /// Unestablished or closing sessions evicted to make room for new ones (early drop).
    #[serde(default)]
    pub early_drops: u64,
    /// Sessions matching the filter (at most `filter.limit`).
    pub sessions: Vec<SessionInfo>,
}

/// One session.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Protocol.
    pub protocol: String,
    /// Original tuple `src:sport -> dst:dport`.
    pub original: String,
    /// Reply tuple.
    pub reply: String,
    /// `dnat`, `snat`, `dnat+snat`.
    pub nat: String,
    /// State.
    pub state: String,
    /// Service frontend, if a service session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Seconds until expiry.
    pub expires_in_secs: f64,
    /// Packets original direction.
    pub packets_orig: u64,
    /// Packets reply direction.
    pub packets_reply: u64,
}
