//! Helpers for service tests and benches: TCP frames, service tables on the
//! one-node snapshot of [`crate::testutil`].

use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_tables::service::{PROTO_TCP, PROTO_UDP};
use ferroplane_tables::{
    Backend, EndpointState, Ipv4Prefix, NatConfig, ServicePortDef, ServiceTable, DEFAULT_TABLE_SIZE,
};
use ferroplane_wire::checksum;

use crate::snapshot::Snapshot;
use crate::testutil::{node_snapshot, pod_ip, NODE_IP};

/// TCP flag bits.
pub const SYN: u8 = 0x02;
/// ACK.
pub const ACK: u8 = 0x10;
/// FIN.
pub const FIN: u8 = 0x01;
/// RST.
pub const RST: u8 = 0x04;

/// An Ethernet + IPv4 + TCP frame (20-byte TCP header, `payload_len` bytes) with valid checksums.
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload_len: usize,
) -> Vec<u8> {
    let ip_len = 20 + 20 + payload_len;
    let mut f = vec![0u8; 14 + ip_len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut ip[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[8..12].copy_from_slice(&(if flags & ACK != 0 { 1u32 } else { 0 }).to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    for (i, b) in t[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = checksum::fold(
        checksum::pseudo_header_v4(
            src,
            dst,
            ferroplane_wire::IpProtocol::TCP,
            (20 + payload_len) as u16,
        ) + checksum::sum(t),
    );
    t[16..18].copy_from_slice(&(!c).to_be_bytes());
    f
}

/// An Ethernet + IPv4 + UDP frame with the given ports and a valid checksum.
pub fn udp_frame_ports(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload_len: usize,
) -> Vec<u8> {
    let mut f = crate::testutil::udp_frame(dst_mac, src_mac, src, dst, 64, payload_len);
    let u = &mut f[34..];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[6..8].copy_from_slice(&[0, 0]);
    let c = checksum::fold(
        checksum::pseudo_header_v4(
            src,
            dst,
            ferroplane_wire::IpProtocol::UDP,
            (8 + payload_len) as u16,
        ) + checksum::sum(u),
    );
    u[6..8].copy_from_slice(&(!c).to_be_bytes());
    f
}

/// The cluster IP of test service `i` (10.96.0.0/12, from 10.96.0.1).
pub fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i)
}

/// A backend.
pub fn backend(addr: Ipv4Addr, port: u16, local: bool) -> Backend {
    Backend {
        addr,
        port,
        local,
        state: EndpointState::Ready,
        weight: 1,
        node: if local {
            "node-1".into()
        } else {
            "node-2".into()
        },
        target: String::new(),
    }
}

/// A TCP service port `name` on `vip:80` with NodePort `node_port` to `backends` (port 8080).
pub fn tcp_service(
    name: &str,
    vip: Ipv4Addr,
    node_port: Option<u16>,
    backends: Vec<Backend>,
) -> ServicePortDef {
    ServicePortDef {
        service: name.into(),
        port_name: "http".into(),
        proto: PROTO_TCP,
        port: 80,
        node_port,
        cluster_ips: vec![vip],
        external_ips: vec![],
        lb_ips: vec![],
        backends,
        internal_local: false,
        external_local: false,
        affinity_secs: None,
        health_check_node_port: None,
    }
}

/// The same as UDP port 53.
pub fn udp_service(name: &str, vip: Ipv4Addr, backends: Vec<Backend>) -> ServicePortDef {
    ServicePortDef {
        proto: PROTO_UDP,
        port: 53,
        port_name: "dns".into(),
        ..tcp_service(name, vip, None, backends)
    }
}

/// The one-node snapshot (`pods` pods) with these services and NAT settings.
pub fn snapshot_with(pods: u16, defs: Vec<ServicePortDef>, nat: NatConfig) -> Snapshot {
    let mut s = node_snapshot(pods, 0);
    s.services = Arc::new(
        ServiceTable::build(defs, vec![NODE_IP], DEFAULT_TABLE_SIZE, None).unwrap_or_default(),
    );
    s.nat = Arc::new(nat);
    s
}

/// `n` services, service `i` on [`vip`]`(i)` with 3 backends on pods 2..=4 (local).
pub fn many_services(n: u32) -> Vec<ServicePortDef> {
    (0..n)
        .map(|i| {
            tcp_service(
                &format!("default/svc-{i}"),
                vip(i),
                None,
                (2..=4).map(|p| backend(pod_ip(p), 8080, true)).collect(),
            )
        })
        .collect()
}

/// `n` services like [`many_services`] but each with its own 3 endpoints
/// (10.245.0.0/16 on node-2), so no two services share a Maglev table.
pub fn many_services_distinct(n: u32) -> Vec<ServicePortDef> {
    (0..n)
        .map(|i| {
            tcp_service(
                &format!("default/svc-{i}"),
                vip(i),
                None,
                (0..3)
                    .map(|k| backend(Ipv4Addr::from(0x0af5_0000 + i * 3 + k), 8080, false))
                    .collect(),
            )
        })
        .collect()
}

/// The NAT configuration of the test node: masquerade to [`NODE_IP`], cluster CIDRs
/// 10.244.0.0/16 (pods) and 10.96.0.0/12 (services), masquerading off.
pub fn nat_default() -> NatConfig {
    let prefix = |a, len| Ipv4Prefix::new(a, len).unwrap_or_else(|e| panic!("{e}"));
    NatConfig {
        masquerade_addr: Some(NODE_IP),
        cluster_cidrs: vec![
            prefix(Ipv4Addr::new(10, 244, 0, 0), 16),
            prefix(Ipv4Addr::new(10, 96, 0, 0), 12),
        ],
        ..NatConfig::default()
    }
}

/// A UDP datagram (payload of `len` bytes, a pattern keyed by `seed`) as one unfragmented
/// frame with IP ID `id`, DF clear and valid checksums (split it with
/// [`crate::testutil::ipv4_fragments`]).
#[allow(clippy::too_many_arguments)]
pub fn udp_datagram(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    id: u16,
    len: usize,
    seed: u8,
) -> Vec<u8> {
    let mut f = udp_frame_ports(macs.0, macs.1, src, dst, sport, dport, len);
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(seed);
    }
    let ip = &mut f[14..];
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6] = 0;
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let u = &mut ip[20..];
    u[6..8].copy_from_slice(&[0, 0]);
    let c = checksum::fold(
        checksum::pseudo_header_v4(src, dst, ferroplane_wire::IpProtocol::UDP, u.len() as u16)
            + checksum::sum(u),
    );
    u[6..8].copy_from_slice(&(!c).to_be_bytes());
    f
}
