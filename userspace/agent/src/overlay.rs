//! The overlay toward other nodes: the "remote pod CIDR → next hop +
//! encapsulation" table, the tunnels behind it, WireGuard keys and timers.
//!
//! The table ([`RemoteRoute`]) is fed by the standalone spec's `cluster:`
//! section today; another source (BGP) can replace its routes with
//! [`Overlay::set_routes`]. Each remote node reached through an encapsulation
//! gets one engine tunnel interface (IPIP, VXLAN or WireGuard); direct routes
//! use the remote node as the uplink next hop.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use boringtun::noise::TunnResult;
use ferroplane_api::{TunnelPeer, TunnelsReport};
use ferroplane_engine::tunnel::{
    wg_public_key, Tunnel, TunnelCounters, TunnelMode, TunnelTable, WgPeer, TUNNEL_SW_IF_BASE,
};
use ferroplane_engine::{IfKind, Interface, Interfaces, Snapshot};
use ferroplane_tables::{
    FibBuilder, Ipv4Prefix, Path as FibPath, RouteAction, RouteEntry, RouteSource,
};

use crate::cluster::{decode_key, encode_key, ClusterSpec, MacAddr, Mode};
use crate::config::NodeSpec;

/// Errors setting up the overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The WireGuard key file could not be read or written.
    #[error("WireGuard key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A remote node is listed with this node's own WireGuard public key.
    #[error(
        "cluster.nodes: {node}'s publicKey is this node's own key (from {path}): each node needs its own key"
    )]
    OwnKey {
        /// The remote node.
        node: String,
        /// Our key file.
        path: PathBuf,
    },
    /// The tunnel table refused a tunnel.
    #[error("tunnel table: {0}")]
    Table(#[from] ferroplane_engine::tunnel::TunnelError),
}

/// One entry of the remote table: a pod CIDR, the node that owns it, how to get there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRoute {
    /// The remote pod CIDR.
    pub prefix: Ipv4Prefix,
    /// The remote node's address (next hop or outer destination).
    pub next_hop: Ipv4Addr,
    /// The encapsulation.
    pub mode: TunnelMode,
}

/// A remote node and its tunnel state (kept across snapshots).
#[derive(Debug)]
struct Peer {
    name: String,
    address: Ipv4Addr,
    mode: TunnelMode,
    vtep_mac: [u8; 6],
    public_key: Option<[u8; 32]>,
    sw_if: Option<u16>,
    counters: Arc<TunnelCounters>,
    wg: Option<Arc<WgPeer>>,
}

/// The overlay of a node.
#[derive(Debug, Default)]
pub struct Overlay {
    node: String,
    local: Option<Ipv4Addr>,
    default_mode: Option<TunnelMode>,
    vtep_mac: [u8; 6],
    vni: u32,
    vxlan_port: u16,
    wg_port: u16,
    mss_clamp: bool,
    public_key: Option<[u8; 32]>,
    peers: Vec<Peer>,
    routes: Vec<RemoteRoute>,
    table: Arc<TunnelTable>,
}

/// Reads the WireGuard private key at `path`, or creates it (mode 0600) on first start.
/// Returns the key and whether it was created.
pub fn load_or_create_key(path: &Path) -> Result<([u8; 32], bool), OverlayError> {
    let err = |message: String| OverlayError::Key {
        path: path.to_path_buf(),
        message,
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let key =
                decode_key(&text).ok_or_else(|| err("not a base64 32-byte private key".into()))?;
            if let Ok(meta) = fs::metadata(path) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "WireGuard private key is readable by others; setting 0600");
                    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
                }
            }
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut key))
                .map_err(|e| err(format!("reading /dev/urandom: {e}")))?;
            // Curve25519 clamping (as `wg genkey` does).
            key[0] &= 248;
            key[31] &= 127;
            key[31] |= 64;
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)
                    .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
            }
            let tmp = path.with_extension("tmp");
            let _ = fs::remove_file(&tmp);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| err(format!("creating {}: {e}", tmp.display())))?;
            f.write_all(format!("{}\n", encode_key(&key)).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| err(format!("writing {}: {e}", tmp.display())))?;
            fs::rename(&tmp, path).map_err(|e| err(format!("renaming {}: {e}", tmp.display())))?;
            Ok((key, true))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

impl Overlay {
    /// The overlay of `spec` (empty without a `cluster:` section). Loads or
    /// creates the WireGuard key when a remote node uses WireGuard.
    pub fn from_spec(
        spec: &NodeSpec,
        cluster: Option<&ClusterSpec>,
    ) -> Result<Overlay, OverlayError> {
        Overlay::from_spec_after(spec, cluster, None)
    }

    /// [`Overlay::from_spec`] for a cluster that changed (nodes joined or left): the
    /// peers `previous` already had (same name, address, mode and key) keep their engine
    /// interface, counters and WireGuard session, so the tunnels to the other nodes are not
    /// disturbed; new peers get interfaces no kept peer uses.
    pub fn from_spec_after(
        spec: &NodeSpec,
        cluster: Option<&ClusterSpec>,
        previous: Option<&Overlay>,
    ) -> Result<Overlay, OverlayError> {
        let Some(c) = cluster else {
            return Ok(Overlay::default());
        };
        let local = spec.node.address.addr();
        let mut private = None;
        let mut public_key = None;
        if c.uses_wireguard() {
            let key_file = c.wireguard.key_file();
            let (key, created) = load_or_create_key(&key_file)?;
            let public = wg_public_key(key);
            // Our own key listed for another node: its tunnel could never handshake.
            if let Some(n) = c
                .nodes
                .iter()
                .find(|n| n.public_key.as_deref().and_then(decode_key) == Some(public))
            {
                return Err(OverlayError::OwnKey {
                    node: n.name.clone(),
                    path: key_file,
                });
            }
            tracing::info!(
                key_file = %key_file.display(),
                created,
                public_key = %encode_key(&public),
                "WireGuard key"
            );
            private = Some(key);
            public_key = Some(public);
        }
        let mut peers = Vec::new();
        let mut routes = Vec::new();
        let mut next_sw_if = TUNNEL_SW_IF_BASE;
        // Peers carried over from `previous`, by position in `c.nodes`.
        let kept: Vec<Option<&Peer>> = c
            .nodes
            .iter()
            .map(|n| {
                let mode = c.mode_of(n).tunnel();
                let public = n.public_key.as_deref().and_then(decode_key);
                previous.and_then(|o| {
                    o.peers.iter().find(|p| {
                        p.name == n.name
                            && p.address == n.address
                            && p.mode == mode
                            && p.public_key == public
                    })
                })
            })
            .collect();
        let taken: std::collections::BTreeSet<u16> =
            kept.iter().flatten().filter_map(|p| p.sw_if).collect();
        for (n, kept) in c.nodes.iter().zip(kept) {
            let mode = c.mode_of(n).tunnel();
            let public = n.public_key.as_deref().and_then(decode_key);
            if let Some(old) = kept {
                peers.push(Peer {
                    name: old.name.clone(),
                    address: old.address,
                    mode: old.mode,
                    vtep_mac: n.vtep_mac.unwrap_or(MacAddr::vtep_for(n.address)).0,
                    public_key: old.public_key,
                    sw_if: old.sw_if,
                    counters: old.counters.clone(),
                    wg: old.wg.clone(),
                });
                if let Some(prefix) = n.pod_cidr.map(Ipv4Prefix::from) {
                    routes.push(RemoteRoute {
                        prefix,
                        next_hop: n.address,
                        mode,
                    });
                }
                continue;
            }
            let sw_if = (mode != TunnelMode::Direct).then(|| {
                while taken.contains(&next_sw_if) {
                    next_sw_if += 1;
                }
                let s = next_sw_if;
                next_sw_if += 1;
                s
            });
            let wg = match (c.mode_of(n), private, public) {
                (Mode::Wireguard, Some(k), Some(p)) => Some(Arc::new(WgPeer::new(
                    k,
                    p,
                    u32::from(sw_if.unwrap_or(0)),
                    n.wireguard_port.unwrap_or(c.wireguard.port),
                    c.wireguard.persistent_keepalive,
                ))),
                _ => None,
            };
            peers.push(Peer {
                name: n.name.clone(),
                address: n.address,
                mode,
                vtep_mac: n.vtep_mac.unwrap_or(MacAddr::vtep_for(n.address)).0,
                public_key: public,
                sw_if,
                counters: Arc::new(TunnelCounters::default()),
                wg,
            });
            // Without a podCIDR in the spec the node's prefixes come from BGP
            // (see `table_with_learnt` and `tunnel_to`).
            if let Some(prefix) = n.pod_cidr.map(Ipv4Prefix::from) {
                routes.push(RemoteRoute {
                    prefix,
                    next_hop: n.address,
                    mode,
                });
            }
        }
        let mut o = Overlay {
            node: spec.node.name.clone(),
            local: Some(local),
            default_mode: Some(c.mode.tunnel()),
            vtep_mac: c.vtep_mac.unwrap_or(MacAddr::vtep_for(local)).0,
            vni: c.vxlan.vni,
            vxlan_port: c.vxlan.port,
            wg_port: c.wireguard.port,
            mss_clamp: c.mss_clamp,
            public_key,
            peers,
            routes,
            table: Arc::default(),
        };
        o.rebuild_table()?;
        Ok(o)
    }

    fn rebuild_table(&mut self) -> Result<(), OverlayError> {
        self.table = Arc::new(self.build_table(&[])?);
        Ok(())
    }

    /// The tunnel table; `learnt` (prefix, next hop) pairs, e.g. from BGP, are added to the
    /// prefixes accepted from the node at that next hop.
    fn build_table(&self, learnt: &[(Ipv4Prefix, Ipv4Addr)]) -> Result<TunnelTable, OverlayError> {
        let mut t = TunnelTable::new(self.vni, self.vxlan_port, self.wg_port);
        t.mss_clamp = self.mss_clamp;
        let Some(local) = self.local else {
            return Ok(t);
        };
        for p in &self.peers {
            let Some(sw_if) = p.sw_if else { continue };
            t.insert(Tunnel {
                sw_if,
                name: p.name.clone(),
                mode: p.mode,
                local,
                remote: p.address,
                allowed: self
                    .routes
                    .iter()
                    .filter(|r| r.next_hop == p.address)
                    .map(|r| r.prefix)
                    .chain(
                        learnt
                            .iter()
                            .filter(|(_, nh)| *nh == p.address)
                            .map(|(prefix, _)| *prefix),
                    )
                    .collect(),
                vtep_mac: p.vtep_mac,
                counters: p.counters.clone(),
                wg: p.wg.clone(),
            })?;
        }
        Ok(t)
    }

    /// The tunnel table with `learnt` (prefix, next hop) pairs also accepted from the
    /// tunnel of the node at that next hop (the table of the spec when there are none).
    pub fn table_with_learnt(
        &self,
        learnt: &[(Ipv4Prefix, Ipv4Addr)],
    ) -> Result<Arc<TunnelTable>, OverlayError> {
        if learnt.is_empty() {
            return Ok(self.table());
        }
        Ok(Arc::new(self.build_table(learnt)?))
    }

    /// The engine interface of the tunnel toward the node at `next_hop`; `None` when that
    /// node is reached directly or is not a cluster node (route it on the uplink).
    pub fn tunnel_to(&self, next_hop: Ipv4Addr) -> Option<u16> {
        self.peers
            .iter()
            .find(|p| p.address == next_hop)
            .and_then(|p| p.sw_if)
    }

    /// The remote table.
    pub fn routes(&self) -> &[RemoteRoute] {
        &self.routes
    }

    /// Replace the remote table (e.g. routes learnt over BGP). A route whose
    /// next hop is a configured node uses that node's tunnel; any other next hop is
    /// routed directly.
    pub fn set_routes(&mut self, routes: Vec<RemoteRoute>) -> Result<(), OverlayError> {
        self.routes = routes
            .into_iter()
            .map(|mut r| {
                r.mode = self
                    .peers
                    .iter()
                    .find(|p| p.address == r.next_hop)
                    .map(|p| p.mode)
                    .unwrap_or(TunnelMode::Direct);
                r
            })
            .collect();
        self.rebuild_table()
    }

    /// Largest encapsulation overhead toward any remote node (0 without tunnels).
    pub fn overhead(&self) -> u16 {
        self.peers
            .iter()
            .map(|p| p.mode.overhead())
            .max()
            .unwrap_or(0)
    }

    /// Remote node addresses (uplink next hops to resolve: direct routes and tunnel endpoints).
    pub fn uplink_next_hops(&self) -> Vec<Ipv4Addr> {
        self.routes
            .iter()
            .filter(|r| r.mode == TunnelMode::Direct)
            .map(|r| r.next_hop)
            .chain(
                self.peers
                    .iter()
                    .filter(|p| p.sw_if.is_some())
                    .map(|p| p.address),
            )
            .collect()
    }

    /// The tunnel table to publish.
    pub fn table(&self) -> Arc<TunnelTable> {
        self.table.clone()
    }

    /// The UDP ports and protocols the engine decapsulates: (IPIP?, VXLAN port, WireGuard port).
    pub fn decap_ports(&self) -> (bool, Option<u16>, Option<u16>) {
        let has = |m: TunnelMode| self.peers.iter().any(|p| p.mode == m);
        (
            has(TunnelMode::Ipip),
            has(TunnelMode::Vxlan).then_some(self.vxlan_port),
            has(TunnelMode::WireGuard).then_some(self.wg_port),
        )
    }

    /// Add the tunnel interfaces and remote routes to the tables being built.
    pub fn contribute(
        &self,
        b: &mut FibBuilder,
        ifaces: &mut Interfaces,
        uplink_sw_if: u16,
        uplink_mtu: u16,
    ) {
        for p in &self.peers {
            let Some(sw_if) = p.sw_if else { continue };
            let mtu = uplink_mtu.saturating_sub(p.mode.overhead());
            ifaces.insert(Interface {
                sw_if,
                name: format!("{}-{}", p.mode.as_str(), p.name),
                kind: IfKind::Tunnel,
                ifindex: 0,
                mac: self.vtep_mac,
                ip4: None,
                mtu,
                port: None,
                xdp_mode: None,
                pod: None,
            });
            b.interface(sw_if, self.vtep_mac, mtu);
            b.neighbour(sw_if, p.address, p.vtep_mac);
        }
        for r in &self.routes {
            let sw_if = self
                .peers
                .iter()
                .find(|p| p.address == r.next_hop && r.mode != TunnelMode::Direct)
                .and_then(|p| p.sw_if)
                .unwrap_or(uplink_sw_if);
            b.route(RouteEntry {
                prefix: r.prefix,
                source: RouteSource::Cluster,
                action: RouteAction::Forward(vec![FibPath {
                    via: Some(r.next_hop),
                    sw_if,
                }]),
            });
        }
    }

    /// Run the WireGuard timers (handshake retries, rekey, keepalives) and send
    /// packets queued while a handshake was in flight; everything goes out through
    /// `sock` (bound to the node address and the WireGuard port).
    pub fn tick(&self, sock: &UdpSocket) {
        let mut buf = vec![0u8; 65536];
        for p in &self.peers {
            let Some(wg) = &p.wg else { continue };
            let to = SocketAddrV4::new(p.address, wg.port);
            let mut out: Vec<Vec<u8>> = Vec::new();
            {
                let mut tunn = wg.lock();
                match tunn.update_timers(&mut buf) {
                    TunnResult::WriteToNetwork(pkt) => out.push(pkt.to_vec()),
                    TunnResult::Err(e) => {
                        tracing::debug!(peer = %p.name, "WireGuard timers: {e:?}")
                    }
                    _ => {}
                }
                for _ in 0..256 {
                    match tunn.decapsulate(None, &[], &mut buf) {
                        TunnResult::WriteToNetwork(pkt) => out.push(pkt.to_vec()),
                        _ => break,
                    }
                }
            }
            for pkt in out {
                if let Err(e) = sock.send_to(&pkt, to) {
                    tracing::debug!(peer = %p.name, "sending WireGuard packet: {e}");
                }
            }
        }
    }

    /// Whether a WireGuard peer exists (the agent then opens the timer socket).
    pub fn has_wireguard(&self) -> bool {
        self.peers.iter().any(|p| p.wg.is_some())
    }

    /// Our WireGuard listen port.
    pub fn wg_port(&self) -> u16 {
        self.wg_port
    }

    /// `show tunnels`.
    pub fn report(&self, snap: &Snapshot) -> TunnelsReport {
        let mac = |m: &[u8; 6]| MacAddr(*m).to_string();
        let mut by_node: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
        for r in &self.routes {
            by_node
                .entry(r.next_hop)
                .or_default()
                .push(r.prefix.to_string());
        }
        // Prefixes learnt over BGP from a node (in the published FIB) are its pod CIDRs too.
        for r in snap.fib.routes().filter(|r| r.source == RouteSource::Bgp) {
            if let RouteAction::Forward(paths) = &r.action {
                for via in paths.iter().filter_map(|p| p.via) {
                    let v = by_node.entry(via).or_default();
                    let prefix = r.prefix.to_string();
                    if !v.contains(&prefix) {
                        v.push(prefix);
                    }
                }
            }
        }
        TunnelsReport {
            node: self.node.clone(),
            local_address: self.local.map(|a| a.to_string()).unwrap_or_default(),
            default_mode: self
                .default_mode
                .unwrap_or(TunnelMode::Direct)
                .as_str()
                .to_string(),
            vni: self.vni,
            vxlan_port: self.vxlan_port,
            vtep_mac: mac(&self.vtep_mac),
            wireguard_port: self.wg_port,
            public_key: self.public_key.as_ref().map(encode_key),
            peers: self
                .peers
                .iter()
                .map(|p| {
                    let (rxp, rxb, txp, txb) = p.counters.get();
                    let age = p.wg.as_ref().and_then(|w| w.handshake_age());
                    let mtu = snap
                        .ifaces
                        .get(p.sw_if.unwrap_or(u16::MAX))
                        .map(|i| u32::from(i.mtu))
                        .or_else(|| snap.ifaces.get(0).map(|i| u32::from(i.mtu)))
                        .unwrap_or(0);
                    let state = match (p.mode, age) {
                        (TunnelMode::WireGuard, None) => "handshaking",
                        (TunnelMode::WireGuard, Some(a)) if a.as_secs() >= 180 => "expired",
                        _ => "up",
                    };
                    TunnelPeer {
                        name: p.name.clone(),
                        address: p.address.to_string(),
                        pod_cidrs: by_node.get(&p.address).cloned().unwrap_or_default(),
                        mode: p.mode.as_str().to_string(),
                        sw_if_index: p.sw_if.map(u32::from),
                        mtu,
                        state: state.to_string(),
                        handshake_age_secs: age.map(|a| a.as_secs_f64()),
                        vtep_mac: (p.mode == TunnelMode::Vxlan).then(|| mac(&p.vtep_mac)),
                        public_key: p.public_key.as_ref().map(encode_key),
                        rx_packets: rxp,
                        rx_bytes: rxb,
                        tx_packets: txp,
                        tx_bytes: txb,
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_0600_then_reused() {
        let dir = std::env::temp_dir().join(format!("fp-overlay-key-{}", std::process::id()));
        let path = dir.join("sub").join("wireguard.key");
        let (k1, created) = load_or_create_key(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = load_or_create_key(&path).unwrap();
        assert!(!created);
        assert_eq!(k1, k2);
        fs::write(&path, "garbage\n").unwrap();
        assert!(load_or_create_key(&path).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    /// Our own public key listed for a remote node is refused when the key is loaded.
    #[test]
    fn own_key_as_a_peers_is_refused() {
        let dir = std::env::temp_dir().join(format!("fp-overlay-own-{}", std::process::id()));
        let path = dir.join("wg.key");
        let (k, _) = load_or_create_key(&path).unwrap();
        let own = encode_key(&wg_public_key(k));
        let other = encode_key(&wg_public_key([7u8; 32]));
        let yaml = |key: &str| {
            format!(
                "node:\n  name: node-1\n  uplink: up0\n  address: 192.168.200.11/24\n  podCIDR: 10.244.1.0/24\ncluster:\n  mode: wireguard\n  wireguard: {{privateKeyFile: {}}}\n  nodes:\n    - name: node-2\n      address: 192.168.200.12\n      podCIDR: 10.244.2.0/24\n      publicKey: {key}\n",
                path.display()
            )
        };
        let spec = NodeSpec::from_yaml(&yaml(&other)).unwrap();
        assert!(Overlay::from_spec(&spec, spec.cluster.as_ref()).is_ok());
        let spec = NodeSpec::from_yaml(&yaml(&own)).unwrap();
        let Err(e) = Overlay::from_spec(&spec, spec.cluster.as_ref()) else {
            panic!("own key accepted");
        };
        let e = e.to_string();
        assert!(e.contains("node-2") && e.contains("own key"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn spec_becomes_tunnels_and_routes() {
        let spec = NodeSpec::from_yaml(
            "node:\n  name: node-1\n  uplink: up0\n  address: 192.168.200.11/24\n  podCIDR: 10.244.1.0/24\ncluster:\n  mode: ipip\n  nodes:\n    - name: node-2\n      address: 192.168.200.12\n      podCIDR: 10.244.2.0/24\n    - name: node-3\n      address: 192.168.200.13\n      podCIDR: 10.244.3.0/24\n      mode: direct\n",
        )
        .unwrap();
        let o = Overlay::from_spec(&spec, spec.cluster.as_ref()).unwrap();
        assert_eq!(o.overhead(), 20);
        assert_eq!(o.routes().len(), 2);
        let t = o.table();
        assert_eq!(t.len(), 1, "direct peers have no tunnel");
        let tun = t.by_remote("192.168.200.12".parse().unwrap()).unwrap();
        assert_eq!(tun.mode, TunnelMode::Ipip);
        assert!(tun.allows("10.244.2.7".parse().unwrap()));
        assert!(!tun.allows("10.244.3.7".parse().unwrap()));
        let mut b = FibBuilder::new();
        let mut ifaces = Interfaces::new();
        b.interface(0, [2, 0, 0, 0, 0, 1], 1500);
        o.contribute(&mut b, &mut ifaces, 0, 1500);
        let fib = b.build().unwrap();
        let a = fib.adj(fib.resolve("10.244.2.5".parse().unwrap(), || 0));
        assert_eq!(a.sw_if, TUNNEL_SW_IF_BASE);
        assert_eq!(a.mtu, 1480);
        let d = fib.adj(fib.resolve("10.244.3.5".parse().unwrap(), || 0));
        assert_eq!(d.sw_if, 0);
        assert_eq!(d.next_hop, Some("192.168.200.13".parse().unwrap()));
        let mut o = o;
        o.set_routes(vec![RemoteRoute {
            prefix: "10.250.0.0/16".parse().unwrap(),
            next_hop: "192.168.200.12".parse().unwrap(),
            mode: TunnelMode::Direct,
        }])
        .unwrap();
        assert_eq!(
            o.routes()[0].mode,
            TunnelMode::Ipip,
            "fed routes use the node's tunnel"
        );
        let report = o.report(&Snapshot::default());
        assert_eq!(report.peers.len(), 2);
        assert_eq!(report.default_mode, "ipip");
    }
}
