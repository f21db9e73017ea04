//! Data of `show_tunnels`: the overlay toward remote nodes.

use serde::{Deserialize, Serialize};

/// Answer of `show_tunnels`: this node's overlay settings and one entry per remote node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TunnelsReport {
    /// This node's name.
    pub node: String,
    /// This node's address (the outer source).
    pub local_address: String,
    /// Cluster-wide default mode (`direct`, `ipip`, `vxlan`, `wireguard`).
    pub default_mode: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// This node's VTEP MAC (inner source MAC of VXLAN frames).
    pub vtep_mac: String,
    /// WireGuard UDP port.
    pub wireguard_port: u16,
    /// This node's WireGuard public key (base64), when WireGuard is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Remote nodes.
    pub peers: Vec<TunnelPeer>,
}

/// One remote node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TunnelPeer {
    /// Remote node name.
    pub name: String,
    /// Remote node address (outer destination / next hop).
    pub address: String,
    /// Its pod CIDRs.
    pub pod_cidrs: Vec<String>,
    /// `direct`, `ipip`, `vxlan` or `wireguard`.
    pub mode: String,
    /// Engine interface of the tunnel (none for direct routing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sw_if_index: Option<u32>,
    /// MTU of the path to the remote pods (uplink MTU minus the encapsulation overhead).
    pub mtu: u32,
    /// `up` (direct, IPIP, VXLAN: configured; WireGuard: session established),
    /// `handshaking` (WireGuard without a session yet), or `expired`.
    pub state: String,
    /// Seconds since the WireGuard session's handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_age_secs: Option<f64>,
    /// The remote VTEP MAC (VXLAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    /// The peer's WireGuard public key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Inner packets received through the tunnel.
    pub rx_packets: u64,
    /// Inner bytes received through the tunnel.
    pub rx_bytes: u64,
    /// Inner packets sent through the tunnel.
    pub tx_packets: u64,
    /// Inner bytes sent through the tunnel.
    pub tx_bytes: u64,
}
