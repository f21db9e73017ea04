//! The `cluster:` section of the node spec: how pods on other nodes are reached.
//!
//! ```yaml
//! cluster:
//!   mode: vxlan                  # direct | ipip | vxlan | wireguard (default direct)
//!   vtepMAC: 02:fe:c0:a8:c8:02   # optional: this node's VTEP MAC (default 02:fe + node address)
//!   vxlan:
//!     vni: 1                     # optional, default 1
//!     port: 4789                 # optional, default 4789
//!   wireguard:
//!     port: 51820                # optional, default 51820 (this node's listen port)
//!     privateKeyFile: /var/lib/ferroplane/wireguard.key   # default <--state-dir>/wireguard.key; created 0600 on first start
//!     persistentKeepalive: 25    # optional, seconds
//!   nodes:
//!     - name: node-2
//!       address: 192.168.200.3   # the node's uplink address (next hop / outer destination)
//!       podCIDR: 10.244.2.0/24   # optional with `bgp:` (then learnt over BGP from the node)
//!       mode: ipip               # optional per-node override
//!       vtepMAC: 02:fe:c0:a8:c8:03   # optional (VXLAN inner destination MAC)
//!       publicKey: BASE64        # WireGuard public key (required in wireguard mode)
//!       wireguardPort: 51820     # optional, default cluster.wireguard.port
//! ```
//!
//! A node listed without `podCIDR` is still a peer of the overlay (its tunnel, and with
//! `bgp:` an iBGP session of the full mesh): the pod CIDR(s) it announces over BGP are routed
//! toward it, through its tunnel or directly per its mode.
//!
//! Errors name the field: `cluster.nodes[1].publicKey: required when the mode is wireguard`.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use ferroplane_engine::tunnel::{TunnelMode, VXLAN_PORT, WIREGUARD_PORT};
use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer};

use crate::spec::{ConfigError, Ipv4NetExt, NodeSpec};

/// File name of the WireGuard private key under the agent's `--state-dir` when
/// `cluster.wireguard.privateKeyFile` is not set.
pub const WG_KEY_FILE_NAME: &str = "wireguard.key";

/// The agent's default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferroplane";

static STATE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Records the agent's `--state-dir` (once, at start): the default WireGuard key file
/// lives there ([`WireguardSpec::key_file`]).
pub fn set_state_dir(dir: &std::path::Path) {
    let _ = STATE_DIR.set(dir.to_path_buf());
}

/// The agent's `--state-dir` ([`DEFAULT_STATE_DIR`] until [`set_state_dir`] is called).
pub fn state_dir() -> PathBuf {
    STATE_DIR
        .get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// An Ethernet address in `aa:bb:cc:dd:ee:ff` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
            }
            *o = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
        }
        Ok(MacAddr(out))
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl MacAddr {
    /// The default VTEP MAC of a node: `02:fe` followed by its IPv4 address
    /// (locally administered, unique per node address).
    pub fn vtep_for(addr: Ipv4Addr) -> MacAddr {
        let o = addr.octets();
        MacAddr([0x02, 0xfe, o[0], o[1], o[2], o[3]])
    }
}

/// How pod traffic reaches a remote node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The remote node is the next hop (same L2 segment or a routed fabric that knows pod CIDRs).
    #[default]
    Direct,
    /// IPv4-in-IPv4.
    Ipip,
    /// VXLAN (flannel compatible).
    Vxlan,
    /// WireGuard.
    Wireguard,
}

impl Mode {
    /// The engine's tunnel mode.
    pub fn tunnel(self) -> TunnelMode {
        match self {
            Mode::Direct => TunnelMode::Direct,
            Mode::Ipip => TunnelMode::Ipip,
            Mode::Vxlan => TunnelMode::Vxlan,
            Mode::Wireguard => TunnelMode::WireGuard,
        }
    }
}

fn default_vni() -> u32 {
    1
}
fn default_vxlan_port() -> u16 {
    VXLAN_PORT
}
fn default_wg_port() -> u16 {
    WIREGUARD_PORT
}

/// `cluster.vxlan`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanSpec {
    /// VXLAN network identifier (1..=16777215).
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// UDP destination port.
    #[serde(default = "default_vxlan_port")]
    pub port: u16,
}

impl Default for VxlanSpec {
    fn default() -> Self {
        VxlanSpec {
            vni: default_vni(),
            port: default_vxlan_port(),
        }
    }
}

/// `cluster.wireguard`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WireguardSpec {
    /// This node's UDP listen port.
    #[serde(default = "default_wg_port")]
    pub port: u16,
    /// Where the private key is kept (created 0600 on first start, reused after);
    /// `None`: `<--state-dir>/wireguard.key` ([`WireguardSpec::key_file`]).
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// Persistent keepalive interval in seconds (none by default).
    #[serde(default)]
    pub persistent_keepalive: Option<u16>,
}

impl Default for WireguardSpec {
    fn default() -> Self {
        WireguardSpec {
            port: default_wg_port(),
            private_key_file: None,
            persistent_keepalive: None,
        }
    }
}

impl WireguardSpec {
    /// The private key file: `privateKeyFile`, else `wireguard.key` under the agent's
    /// `--state-dir` (with the rest of its state, on the volume the DaemonSet mounts).
    pub fn key_file(&self) -> PathBuf {
        self.private_key_file
            .clone()
            .unwrap_or_else(|| state_dir().join(WG_KEY_FILE_NAME))
    }
}

/// One remote node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RemoteNodeSpec {
    /// Node name.
    pub name: String,
    /// Its uplink address.
    pub address: Ipv4Addr,
    /// Its pod network; `None`: learnt over BGP (needs the `bgp:` section).
    #[serde(
        default,
        rename = "podCIDR",
        deserialize_with = "crate::spec::de::opt_ipv4_net"
    )]
    pub pod_cidr: Option<Ipv4Net>,
    /// Per-node mode (default `cluster.mode`).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Its VTEP MAC (default `02:fe` + its address).
    #[serde(default, rename = "vtepMAC")]
    pub vtep_mac: Option<MacAddr>,
    /// Its WireGuard public key (base64).
    #[serde(default)]
    pub public_key: Option<String>,
    /// Its WireGuard port (default `cluster.wireguard.port`).
    #[serde(default)]
    pub wireguard_port: Option<u16>,
}

/// The `cluster:` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Cluster-wide default mode.
    #[serde(default)]
    pub mode: Mode,
    /// This node's VTEP MAC (default `02:fe` + node address).
    #[serde(default, rename = "vtepMAC")]
    pub vtep_mac: Option<MacAddr>,
    /// VXLAN parameters.
    #[serde(default)]
    pub vxlan: VxlanSpec,
    /// WireGuard parameters.
    #[serde(default)]
    pub wireguard: WireguardSpec,
    /// Lower the MSS option of TCP SYNs entering a tunnel so that segments fit the
    /// tunnel MTU (for senders whose interface MTU is larger than the tunnel's).
    #[serde(default, rename = "mssClamp")]
    pub mss_clamp: bool,
    /// The other nodes.
    #[serde(default)]
    pub nodes: Vec<RemoteNodeSpec>,
}

impl ClusterSpec {
    /// The mode toward `node`.
    pub fn mode_of(&self, node: &RemoteNodeSpec) -> Mode {
        node.mode.unwrap_or(self.mode)
    }

    /// Whether any node is reached through WireGuard.
    pub fn uses_wireguard(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| self.mode_of(n) == Mode::Wireguard)
    }

    /// Semantic checks against the rest of the spec.
    pub fn validate(&self, spec: &NodeSpec) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid { field, message };
        if self.vxlan.vni == 0 || self.vxlan.vni > 0x00ff_ffff {
            return Err(invalid(
                "cluster.vxlan.vni".into(),
                format!("{} is outside 1..=16777215", self.vxlan.vni),
            ));
        }
        if self.vxlan.port == 0 {
            return Err(invalid("cluster.vxlan.port".into(), "must not be 0".into()));
        }
        if self.wireguard.port == 0 {
            return Err(invalid(
                "cluster.wireguard.port".into(),
                "must not be 0".into(),
            ));
        }
        if self.uses_wireguard() && self.wireguard.port == self.vxlan.port {
            return Err(invalid(
                "cluster.wireguard.port".into(),
                format!("{} is also cluster.vxlan.port", self.wireguard.port),
            ));
        }
        let own = spec.node.address.addr();
        let own_cidr = spec.node.pod_cidr;
        let mut keys: HashMap<[u8; 32], usize> = HashMap::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addrs: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut cidrs: Vec<(Ipv4Net, usize)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let f = |field: &str| format!("cluster.nodes[{i}].{field}");
            if n.name.trim().is_empty() {
                return Err(invalid(f("name"), "must not be empty".into()));
            }
            if n.name == spec.node.name {
                return Err(invalid(
                    f("name"),
                    format!("{} is this node (node.name)", n.name),
                ));
            }
            if let Some(j) = names.insert(&n.name, i) {
                return Err(invalid(
                    f("name"),
                    format!("{} is already cluster.nodes[{j}]", n.name),
                ));
            }
            let a = n.address;
            if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback() {
                return Err(invalid(
                    f("address"),
                    format!("{a} is not a unicast address"),
                ));
            }
            if a == own {
                return Err(invalid(
                    f("address"),
                    format!("{a} is this node's address (node.address)"),
                ));
            }
            if let Some(j) = addrs.insert(a, i) {
                return Err(invalid(
                    f("address"),
                    format!("{a} is already cluster.nodes[{j}]"),
                ));
            }
            match n.pod_cidr {
                None if spec.bgp.is_none() => {
                    return Err(invalid(
                        f("podCIDR"),
                        "required without a bgp: section (with one it is learnt from the node)"
                            .into(),
                    ))
                }
                None => {}
                Some(c) => {
                    if !c.is_network() || c.prefix_len() == 0 {
                        return Err(invalid(
                            f("podCIDR"),
                            format!("{c} is not a network (the network is {})", c.trunc()),
                        ));
                    }
                    if c.overlaps(&own_cidr) {
                        return Err(invalid(
                            f("podCIDR"),
                            format!("{c} overlaps node.podCIDR {own_cidr}"),
                        ));
                    }
                    if let Some((o, j)) = cidrs.iter().find(|(o, _)| o.overlaps(&c)) {
                        return Err(invalid(
                            f("podCIDR"),
                            format!("{c} overlaps cluster.nodes[{j}].podCIDR {o}"),
                        ));
                    }
                    cidrs.push((c, i));
                }
            }
            let mode = self.mode_of(n);
            if mode == Mode::Direct && !spec.node.address.trunc().contains(&a) {
                return Err(invalid(
                    f("mode"),
                    format!(
                        "direct routing needs {a} on the uplink subnet {} (use a tunnel mode)",
                        spec.node.address.trunc()
                    ),
                ));
            }
            if mode == Mode::Wireguard {
                match &n.public_key {
                    None => {
                        return Err(invalid(
                            f("publicKey"),
                            "required when the mode is wireguard".into(),
                        ))
                    }
                    Some(k) => {
                        if decode_key(k).is_none() {
                            return Err(invalid(
                                f("publicKey"),
                                format!("{k:?} is not a base64 32-byte WireGuard key"),
                            ));
                        }
                    }
                }
            }
            // One key, one node: WireGuard picks the peer of a packet by its key, so two
            // nodes with one key would take each other's tunnel.
            if let Some(k) = n.public_key.as_deref().and_then(decode_key) {
                if let Some(j) = keys.insert(k, i) {
                    return Err(invalid(
                        f("publicKey"),
                        format!(
                            "is also cluster.nodes[{j}]'s ({}) public key",
                            self.nodes[j].name
                        ),
                    ));
                }
            }
            if n.wireguard_port == Some(0) {
                return Err(invalid(f("wireguardPort"), "must not be 0".into()));
            }
        }
        Ok(())
    }
}

/// Decodes a base64 WireGuard key (32 bytes).
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let v = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    v.try_into().ok()
}

/// Encodes a WireGuard key as base64.
pub fn encode_key(k: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    fn spec(cluster: &str) -> Result<NodeSpec, ConfigError> {
        NodeSpec::from_yaml(&format!(
            "node:\n  name: node-1\n  uplink: up0\n  address: 192.168.200.11/24\n  podCIDR: 10.244.1.0/24\ncluster:\n{cluster}"
        ))
    }

    #[test]
    fn defaults_and_overrides() {
        let s = spec(&format!(
            "  mode: vxlan\n  nodes:\n    - name: node-2\n      address: 192.168.200.12\n      podCIDR: 10.244.2.0/24\n    - name: node-3\n      address: 10.0.0.3\n      podCIDR: 10.244.3.0/24\n      mode: wireguard\n      publicKey: {KEY}\n"
        ))
        .unwrap();
        let c = s.cluster.unwrap();
        assert_eq!(c.vxlan, VxlanSpec { vni: 1, port: 4789 });
        assert_eq!(c.wireguard.port, 51820);
        assert_eq!(c.mode_of(&c.nodes[0]), Mode::Vxlan);
        assert_eq!(c.mode_of(&c.nodes[1]), Mode::Wireguard);
        assert!(c.uses_wireguard());
        assert_eq!(
            MacAddr::vtep_for("192.168.200.12".parse().unwrap()).to_string(),
            "02:fe:c0:a8:c8:0c"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("  vxlan:\n    vni: 0\n", "cluster.vxlan.vni"),
            (
                "  nodes:\n    - name: node-1\n      address: 192.168.200.12\n      podCIDR: 10.244.2.0/24\n",
                "cluster.nodes[0].name",
            ),
            (
                "  nodes:\n    - name: b\n      address: 192.168.200.11\n      podCIDR: 10.244.2.0/24\n",
                "cluster.nodes[0].address",
            ),
            (
                "  nodes:\n    - name: b\n      address: 192.168.200.12\n      podCIDR: 10.244.1.128/25\n",
                "cluster.nodes[0].podCIDR",
            ),
            (
                "  nodes:\n    - name: b\n      address: 192.168.200.12\n      podCIDR: 10.244.2.0/24\n    - name: c\n      address: 192.168.200.13\n      podCIDR: 10.244.2.0/23\n",
                "cluster.nodes[1].podCIDR",
            ),
            (
                "  nodes:\n    - name: b\n      address: 10.9.9.9\n      podCIDR: 10.244.2.0/24\n",
                "cluster.nodes[0].mode",
            ),
            (
                "  mode: wireguard\n  nodes:\n    - name: b\n      address: 192.168.200.12\n      podCIDR: 10.244.2.0/24\n",
                "cluster.nodes[0].publicKey",
            ),
            (
                "  mode: wireguard\n  nodes:\n    - name: b\n      address: 192.168.200.12\n      podCIDR: 10.244.2.0/24\n      publicKey: nope\n",
                "cluster.nodes[0].publicKey",
            ),
            ("  mode: gre\n", "cluster.mode"),
            (
                "  nodes:\n    - name: b\n      address: 192.168.200.12\n",
                "cluster.nodes[0].podCIDR",
            ),
            (
                "  nodes:\n    - name: b\n      address: 192.168.200.12\n      podCIDR: 10.244.2.0/24\n      vtepMAC: 02:zz:00:00:00:01\n",
                "cluster.nodes[0].vtepMAC",
            ),
        ];
        for (yaml, field) in cases {
            let e = spec(yaml).expect_err(yaml);
            assert_eq!(e.field(), field, "{yaml}: {e}");
        }
    }

    #[test]
    fn pod_cidr_is_optional_with_bgp() {
        let s = spec(
            "  nodes:\n    - name: b\n      address: 192.168.200.12\nbgp:\n  localAS: 64512\n",
        )
        .unwrap();
        let c = s.cluster.as_ref().unwrap();
        assert_eq!(c.nodes[0].pod_cidr, None);
        let peers = s.bgp.as_ref().unwrap().peers(&s);
        assert_eq!(peers.len(), 1, "full mesh toward the listed node");
        assert_eq!(
            peers[0].address,
            "192.168.200.12".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(peers[0].remote_as, 64512, "iBGP");
    }

    /// Two nodes with one WireGuard key would take each other's tunnel: refused.
    #[test]
    fn duplicate_public_keys_are_refused() {
        let e = spec(&format!(
            "  mode: wireguard\n  nodes:\n    - name: node-2\n      address: 192.168.200.12\n      podCIDR: 10.244.2.0/24\n      publicKey: {KEY}\n    - name: node-3\n      address: 192.168.200.13\n      podCIDR: 10.244.3.0/24\n      publicKey: {KEY}\n"
        ))
        .unwrap_err();
        assert_eq!(e.field(), "cluster.nodes[1].publicKey", "{e}");
        assert!(e.to_string().contains("node-2"), "{e}");
    }

    /// Without privateKeyFile the key lives under the agent's --state-dir.
    #[test]
    fn default_key_file_is_under_the_state_dir() {
        let w = WireguardSpec::default();
        assert_eq!(w.private_key_file, None);
        assert_eq!(w.key_file(), state_dir().join("wireguard.key"));
        let dir = std::env::temp_dir().join(format!("fp-state-{}", std::process::id()));
        set_state_dir(&dir);
        // Set once per process; whoever set it first, key_file follows it.
        assert_eq!(w.key_file(), state_dir().join(WG_KEY_FILE_NAME));
        assert_eq!(state_dir(), dir);
        let set = WireguardSpec {
            private_key_file: Some("/etc/wg.key".into()),
            ..WireguardSpec::default()
        };
        assert_eq!(set.key_file(), PathBuf::from("/etc/wg.key"));
    }

    #[test]
    fn keys_round_trip() {
        let k = decode_key(KEY).unwrap();
        assert_eq!(encode_key(&k), KEY);
        assert!(decode_key("AAAA").is_none());
    }
}
