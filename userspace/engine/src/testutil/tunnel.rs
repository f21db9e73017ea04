//! Two overlay nodes for tunnel tests and benches: node `me` (1 or 2) with an uplink
//! (sw_if 0), one pod (sw_if 1) and a tunnel to the other node (sw_if [`TUN`]).

use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_tables::{FibBuilder, Ipv4Prefix, Path, RouteAction, RouteEntry, RouteSource};

use crate::interfaces::{IfKind, Interface, Interfaces, PodInfo};
use crate::snapshot::Snapshot;
use crate::tunnel::{
    wg_public_key, Tunnel, TunnelCounters, TunnelMode, TunnelTable, WgPeer, TUNNEL_SW_IF_BASE,
};

/// sw_if of the tunnel to the other node.
pub const TUN: u16 = TUNNEL_SW_IF_BASE;
/// sw_if (and port) of the uplink.
pub const UPLINK: u16 = 0;
/// sw_if (and port) of the pod.
pub const POD: u16 = 1;

/// Address of node `i` on the underlay (192.168.100.10 + i).
pub fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, 10 + i)
}

/// MAC of node `i`'s uplink.
pub fn uplink_mac(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, i]
}

/// MAC of node `i`'s VTEP (the inner source of its VXLAN frames).
pub fn vtep_mac(i: u8) -> [u8; 6] {
    [2, 0xfe, 0, 0, 0, i]
}

/// MAC of the host end of node `i`'s pod veth.
pub fn host_mac(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, 1, i]
}

/// MAC of node `i`'s pod.
pub fn pod_mac(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, 2, i]
}

/// Address of node `i`'s pod (10.244.i.10; node `i`'s pod CIDR is 10.244.i.0/24).
pub fn pod_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i, 10)
}

/// Node `i`'s WireGuard private key (clamped X25519 scalar).
pub fn wg_key(i: u8) -> [u8; 32] {
    let mut k = [i.wrapping_mul(37).wrapping_add(1); 32];
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

/// What [`tunnel_node`] built: the snapshot and handles on its tunnel's state.
pub struct TunnelNode {
    /// The node's tables.
    pub snapshot: Snapshot,
    /// Counters of the tunnel to the other node.
    pub counters: Arc<TunnelCounters>,
    /// The WireGuard peer (for [`TunnelMode::WireGuard`]).
    pub wg: Option<Arc<WgPeer>>,
}

fn iface(sw_if: u16, name: &str, kind: IfKind, mac: [u8; 6], mtu: u16) -> Interface {
    let port = (sw_if < TUN).then_some(sw_if);
    Interface {
        sw_if,
        name: name.into(),
        kind,
        ifindex: port.map_or(0, |p| u32::from(p) + 2),
        mac,
        ip4: None,
        mtu,
        port,
        xdp_mode: None,
        pod: None,
    }
}

/// Node `me` (1 or 2): uplink, one pod, a tunnel of `mode` to the other node, whose pod
/// CIDR is routed through it; `mss_clamp` sets the tunnel table's MSS clamping.
///
/// # Panics
/// If the tables refuse the fixed layout (a bug in this helper).
pub fn tunnel_node(me: u8, mode: TunnelMode, mss_clamp: bool) -> TunnelNode {
    let other = 3 - me;
    let mtu = 1500 - mode.overhead();
    let mut ifaces = Interfaces::new();
    let mut up = iface(UPLINK, "up0", IfKind::Uplink, uplink_mac(me), 1500);
    up.ip4 = Some((node_ip(me), 24));
    ifaces.insert(up);
    let mut pod = iface(POD, "fppod", IfKind::Pod, host_mac(me), 1500);
    pod.pod = Some(PodInfo {
        name: "default/p".into(),
        ip: pod_ip(me),
        mac: pod_mac(me),
    });
    ifaces.insert(pod);
    ifaces.insert(iface(TUN, "tun", IfKind::Tunnel, vtep_mac(me), mtu));
    let mut b = FibBuilder::new();
    b.interface(UPLINK, uplink_mac(me), 1500)
        .interface(POD, host_mac(me), 1500)
        .interface(TUN, vtep_mac(me), mtu);
    b.neighbour(UPLINK, node_ip(other), uplink_mac(other))
        .neighbour(POD, pod_ip(me), pod_mac(me))
        .neighbour(TUN, node_ip(other), vtep_mac(other));
    let forward = |via, sw_if| RouteAction::Forward(vec![Path { via, sw_if }]);
    let prefix = |a, len| Ipv4Prefix::new(a, len).unwrap_or_else(|e| panic!("{e}"));
    let remote = prefix(Ipv4Addr::new(10, 244, other, 0), 24);
    for (prefix, source, action) in [
        (
            prefix(node_ip(me), 24),
            RouteSource::Connected,
            forward(None, UPLINK),
        ),
        (
            Ipv4Prefix::host(node_ip(me)),
            RouteSource::Local,
            RouteAction::Local,
        ),
        (
            Ipv4Prefix::host(pod_ip(me)),
            RouteSource::Pod,
            forward(None, POD),
        ),
        (
            remote,
            RouteSource::Static,
            forward(Some(node_ip(other)), TUN),
        ),
    ] {
        b.route(RouteEntry {
            prefix,
            source,
            action,
        });
    }
    let wg = (mode == TunnelMode::WireGuard).then(|| {
        Arc::new(WgPeer::new(
            wg_key(me),
            wg_public_key(wg_key(other)),
            u32::from(me),
            51820,
            None,
        ))
    });
    let counters = Arc::new(TunnelCounters::default());
    let mut tunnels = TunnelTable::new(42, 4789, 51820);
    tunnels.mss_clamp = mss_clamp;
    tunnels
        .insert(Tunnel {
            sw_if: TUN,
            name: format!("node-{other}"),
            mode,
            local: node_ip(me),
            remote: node_ip(other),
            allowed: vec![remote],
            vtep_mac: vtep_mac(other),
            counters: counters.clone(),
            wg: wg.clone(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let snapshot = Snapshot {
        fib: Arc::new(b.build().unwrap_or_else(|e| panic!("{e}"))),
        ifaces: Arc::new(ifaces),
        node_ip: Some(node_ip(me)),
        tunnels: Arc::new(tunnels),
        ..Snapshot::default()
    };
    TunnelNode {
        snapshot,
        counters,
        wg,
    }
}
