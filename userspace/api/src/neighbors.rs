//! Data of `show_neighbors`: the engine's neighbour table.

use serde::{Deserialize, Serialize};

/// One neighbour the engine forwards to (a next hop of its FIB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighborInfo {
    /// IPv4 address.
    pub ip: String,
    /// MAC address (`aa:bb:cc:dd:ee:ff`); absent while unresolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Engine interface name.
    pub interface: String,
    /// Engine interface index.
    pub sw_if: u16,
    /// `resolved` (packets are rewritten with `mac`) or `incomplete` (resolution requested;
    /// packets to it are dropped with `neighbour-miss`).
    pub state: String,
    /// Engine adjacency index (what `show trace` names in its route decisions).
    pub adj: u32,
}
