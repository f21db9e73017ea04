//! What the plumbing reports: links, pod links, spare pairs, neighbours; host-side names.

use std::net::Ipv4Addr;

/// What [`Plumber::link_info`] reports about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// Hardware address (zero when the link has no 6-byte address, e.g. TUN).
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// IPv4 addresses with their prefix lengths.
    pub ipv4: Vec<(Ipv4Addr, u8)>,
    /// Administratively up (IFF_UP).
    pub up: bool,
}

/// The result of [`Plumber::create_pod`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    /// Host-side veth name (`fp` + 11 hex chars).
    pub host_ifname: String,
    /// Host-side veth index (agent's namespace).
    pub host_ifindex: u32,
    /// Host-side veth MAC: what the engine answers ARP for the gateway with.
    pub host_mac: [u8; 6],
    /// Pod-side veth MAC.
    pub pod_mac: [u8; 6],
    /// Pod-side veth index (inside the pod's namespace).
    pub pod_ifindex: u32,
    /// Whether an existing, matching veth was reused rather than created.
    pub reused: bool,
    /// Where the time went (veth creation, pod side, host side).
    pub phases: crate::timing::Phases,
}

/// Name prefix of spare veth pairs (the warm pool of [`Plumber::create_spare`]).
pub const SPARE_PREFIX: &str = "fpsp";

/// Host and peer names of spare pair `seq`: `fpsp` / `fpsq` + 8 hex digits.
pub fn spare_ifnames(seq: u32) -> (String, String) {
    (format!("{SPARE_PREFIX}{seq:08x}"), format!("fpsq{seq:08x}"))
}

/// A spare veth pair, both ends down in the agent's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareLink {
    /// Host-side name (until adopted).
    pub host_ifname: String,
    /// Host-side index (kept when adopted).
    pub host_ifindex: u32,
    /// Host-side MAC.
    pub host_mac: [u8; 6],
    /// Peer index (in the agent's namespace until adopted).
    pub peer_ifindex: u32,
}

/// A neighbour cache state (NUD_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourState {
    /// Confirmed recently.
    Reachable,
    /// Usable, not confirmed recently.
    Stale,
    /// Usable, waiting before probing.
    Delay,
    /// Usable, being probed.
    Probe,
    /// Static entry.
    Permanent,
    /// No resolution needed.
    Noarp,
    /// Any other state that came with a link-layer address (raw NUD_* value).
    Other(u16),
}

/// A resolved IPv4 neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Cache state.
    pub state: NeighbourState,
    /// Whether the entry is kernel-managed (NTF_EXT_MANAGED).
    pub managed: bool,
}

/// Host-side veth name for a pod: `fp` + the first 11 hex digits of the FNV-1a 64 hash of
/// `namespace/name` (13 chars, within IFNAMSIZ).
pub fn host_ifname(namespace: &str, name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(name.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fp{:011x}", h >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_and_short() {
        let a = host_ifname("default", "a");
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("fp"));
        assert!(a[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, host_ifname("default", "a"));
        assert_ne!(a, host_ifname("default", "b"));
        assert_ne!(a, host_ifname("other", "a"));
        // FNV-1a 64 of "default/a", top 44 bits.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in b"default/a" {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        assert_eq!(a, format!("fp{:011x}", h >> 20));
    }
}
