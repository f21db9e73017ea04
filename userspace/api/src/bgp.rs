//! Data of `show_bgp` and `show_bgp_routes`.

use serde::{Deserialize, Serialize};

/// Answer of `show_bgp`: the speaker and its peers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BgpReport {
    /// Whether a `bgp:` section is configured.
    pub enabled: bool,
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: String,
    /// Prefixes in the Loc-RIB.
    pub loc_rib: usize,
    /// Routes learnt over BGP in the engine FIB (IPv4; the kernel gets IPv6 ones too).
    #[serde(default)]
    pub fib_routes: usize,
    /// Prefixes this node originates.
    pub originated: Vec<String>,
    /// Peers.
    pub peers: Vec<BgpPeer>,
}

/// One neighbour.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BgpPeer {
    /// Address.
    pub address: String,
    /// AS.
    pub remote_as: u32,
    /// `ebgp` or `ibgp`.
    pub kind: String,
    /// RFC 4271 state (`Established`, `Active`, ...).
    pub state: String,
    /// Seconds in Established.
    pub uptime_secs: Option<u64>,
    /// Neighbour's BGP identifier.
    pub router_id: Option<String>,
    /// Negotiated hold time.
    pub hold_time: Option<u16>,
    /// Prefixes received (Adj-RIB-In).
    pub received: usize,
    /// Prefixes accepted by import policy.
    pub accepted: usize,
    /// Prefixes advertised (Adj-RIB-Out).
    pub advertised: usize,
    /// Routes retained as stale under graceful restart.
    pub stale: usize,
    /// UPDATEs handled as withdrawals (RFC 7606).
    pub treat_as_withdraw: u64,
    /// Attributes discarded (RFC 7606).
    pub attributes_discarded: u64,
    /// Negotiated capabilities.
    pub capabilities: Vec<String>,
    /// Last error.
    pub last_error: Option<String>,
}

/// One prefix of the Loc-RIB (answer of `show_bgp_routes` is a list of these).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BgpRoute {
    /// Prefix.
    pub prefix: String,
    /// Paths, best first.
    pub paths: Vec<BgpPath>,
    /// Where the best path is installed on this node: `engine` (IPv4: the engine FIB,
    /// and the kernel too when the agent keeps kernel routes), `kernel` (IPv6: kernel
    /// routes only, the engine datapath is IPv4-only), `local` (originated here).
    #[serde(default)]
    pub installed: String,
}

/// One path.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BgpPath {
    /// `local` or the peer address.
    pub from: String,
    /// Next hop.
    pub next_hop: String,
    /// AS path.
    pub as_path: String,
    /// ORIGIN.
    pub origin: String,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// MED.
    pub med: Option<u32>,
    /// Communities.
    pub communities: Vec<String>,
    /// Best path.
    pub best: bool,
    /// In the ECMP set.
    pub multipath: bool,
    /// Stale (graceful restart).
    pub stale: bool,
    /// Why it is not the best.
    pub reason: Option<String>,
}
