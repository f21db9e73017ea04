//! Helpers to build a node's tables and test frames (used by tests and benches).

use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_tables::{FibBuilder, Ipv4Prefix, Path, RouteAction, RouteEntry, RouteSource};
use ferroplane_wire::checksum;

use crate::interfaces::{IfKind, Interface, Interfaces, PodInfo};
use crate::snapshot::Snapshot;

pub mod tunnel;

/// MAC of the uplink in the test node.
pub const UPLINK_MAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 1];
/// MAC of the router behind the uplink.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
/// The node's address.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
/// The router's address.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

/// MAC of the host end of pod `i`'s veth.
pub fn host_mac(i: u16) -> [u8; 6] {
    [0x02, 0xfe, 0, 0, 1, i as u8]
}

/// MAC of pod `i`.
pub fn pod_mac(i: u16) -> [u8; 6] {
    [0x02, 0xcc, 0, 0, 1, i as u8]
}

/// Address of pod `i` (10.244.1.10 + i).
pub fn pod_ip(i: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 10 + i as u8)
}

/// A one-node snapshot: sw_if 0 = uplink (port 0), sw_if 1..=pods = pods (ports 1..),
/// pod CIDR 10.244.1.0/24, with `extra_routes` /32 static routes via the router (for FIB-size benches).
pub fn node_snapshot(pods: u16, extra_routes: u32) -> Snapshot {
    let mut ifaces = Interfaces::new();
    ifaces.insert(Interface {
        sw_if: 0,
        name: "up0".into(),
        kind: IfKind::Uplink,
        ifindex: 2,
        mac: UPLINK_MAC,
        ip4: Some((NODE_IP, 24)),
        mtu: 1500,
        port: Some(0),
        xdp_mode: None,
        pod: None,
    });
    let mut b = FibBuilder::new();
    b.interface(0, UPLINK_MAC, 1500);
    b.neighbour(0, ROUTER_IP, ROUTER_MAC);
    b.route(RouteEntry {
        prefix: Ipv4Prefix::new(NODE_IP, 24).unwrap_or(Ipv4Prefix::DEFAULT),
        source: RouteSource::Connected,
        action: RouteAction::Forward(vec![Path {
            via: None,
            sw_if: 0,
        }]),
    });
    b.route(RouteEntry {
        prefix: Ipv4Prefix::host(NODE_IP),
        source: RouteSource::Local,
        action: RouteAction::Local,
    });
    b.route(RouteEntry {
        prefix: Ipv4Prefix::DEFAULT,
        source: RouteSource::Static,
        action: RouteAction::Forward(vec![Path {
            via: Some(ROUTER_IP),
            sw_if: 0,
        }]),
    });
    for i in 1..=pods {
        ifaces.insert(Interface {
            sw_if: i,
            name: format!("fppod{i}"),
            kind: IfKind::Pod,
            ifindex: 10 + i as u32,
            mac: host_mac(i),
            ip4: None,
            mtu: 1500,
            port: Some(i),
            xdp_mode: None,
            pod: Some(PodInfo {
                name: format!("default/pod{i}"),
                ip: pod_ip(i),
                mac: pod_mac(i),
            }),
        });
        b.interface(i, host_mac(i), 1500);
        b.neighbour(i, pod_ip(i), pod_mac(i));
        b.route(RouteEntry {
            prefix: Ipv4Prefix::host(pod_ip(i)),
            source: RouteSource::Pod,
            action: RouteAction::Forward(vec![Path {
                via: None,
                sw_if: i,
            }]),
        });
    }
    for r in 0..extra_routes {
        // 10k+ distinct /24s and /32s spread over 20.0.0.0/8 .. 60.0.0.0/8
        let a = Ipv4Addr::from(0x1400_0000u32 + r * 0x100 + (r % 7));
        let len = if r % 2 == 0 { 24 } else { 32 };
        if let Ok(p) = Ipv4Prefix::new(a, len) {
            b.route(RouteEntry {
                prefix: p,
                source: RouteSource::Static,
                action: RouteAction::Forward(vec![Path {
                    via: Some(ROUTER_IP),
                    sw_if: 0,
                }]),
            });
        }
    }
    Snapshot {
        version: 0,
        fib: Arc::new(b.build().unwrap_or_default()),
        ifaces: Arc::new(ifaces),
        node_ip: Some(NODE_IP),
        pod_cidrs: Ipv4Prefix::new(Ipv4Addr::new(10, 244, 1, 0), 24)
            .into_iter()
            .collect(),
        ..Snapshot::default()
    }
}

/// An Ethernet + IPv4 + UDP frame with correct checksums and `payload_len` bytes of payload.
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    payload_len: usize,
) -> Vec<u8> {
    let ip_len = 20 + 8 + payload_len;
    let mut f = vec![0u8; 14 + ip_len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = ttl;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip[20..22].copy_from_slice(&4000u16.to_be_bytes());
    ip[22..24].copy_from_slice(&9u16.to_be_bytes());
    ip[24..26].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    for (i, b) in ip[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// An ARP request from `sender` (mac, ip) for `target`.
pub fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&sender_mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let a = &mut f[14..];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&1u16.to_be_bytes());
    a[8..14].copy_from_slice(&sender_mac);
    a[14..18].copy_from_slice(&sender.octets());
    a[24..28].copy_from_slice(&target.octets());
    f
}

/// Split `frame`'s IPv4 payload (an Ethernet + 20-byte IPv4 header frame) into fragments
/// of `size` bytes (a multiple of 8), each with its header's length, MF flag, offset and
/// checksum set.
pub fn ipv4_fragments(frame: &[u8], size: usize) -> Vec<Vec<u8>> {
    let payload = &frame[34..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + size).min(payload.len());
        let mut f = frame[..34].to_vec();
        f.extend_from_slice(&payload[off..end]);
        let ip = &mut f[14..];
        ip[2..4].copy_from_slice(&((20 + end - off) as u16).to_be_bytes());
        let mf = if end < payload.len() { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&((mf | (off / 8)) as u16).to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        out.push(f);
        off = end;
    }
    out
}

/// A bench's `main`: run the criterion group `$group`, print criterion's summary, then
/// call `$summary` (the bench's own table of figures). The bench must depend on criterion.
#[macro_export]
macro_rules! bench_main_with_summary {
    ($group:path, $summary:path) => {
        fn main() {
            $group();
            ::criterion::Criterion::default()
                .configure_from_args()
                .final_summary();
            $summary();
        }
    };
}
