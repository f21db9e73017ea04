//! `tunnel-encap` and `tunnel-decap` through a whole worker: the outer headers written
//! byte for byte, and every decap check's verdict (the counter it bumps, what reaches the
//! pod) on crafted outer packets.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_io::MemIo;
use ferroplane_wire::{IpProtocol, Ipv4Packet, OuterIpv4Repr, UdpPacket};

use crate::snapshot::Shared;
use crate::testutil::tunnel::{
    host_mac, node_ip, pod_ip, pod_mac, tunnel_node, uplink_mac, vtep_mac, TunnelNode, POD, UPLINK,
};
use crate::testutil::udp_frame;
use crate::tunnel::{TunnelCounters, TunnelMode};
use crate::worker::{Worker, WorkerControl};

struct Node {
    worker: Worker<MemIo>,
    counters: Arc<TunnelCounters>,
}

impl Node {
    /// Node `me` (1 or 2): uplink, one pod, a tunnel to the other node (MSS clamping on).
    fn new(me: u8, mode: TunnelMode) -> Node {
        let TunnelNode {
            snapshot, counters, ..
        } = tunnel_node(me, mode, true);
        let worker = Worker::new(
            MemIo::new(256, 4096, 2),
            Arc::new(Shared::new(snapshot)),
            Arc::new(WorkerControl::default()),
        )
        .unwrap();
        Node { worker, counters }
    }

    /// Send `frame` in on `port`: (sent on the uplink, sent to the pod).
    fn send(&mut self, port: u16, frame: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        assert!(self.worker.io_mut().inject(port, frame));
        self.worker.poll().unwrap();
        (
            self.worker.io_mut().take_tx(UPLINK),
            self.worker.io_mut().take_tx(POD),
        )
    }

    fn error(&self, node: &str, reason: &str) -> u64 {
        let code = self.worker.graph_info().error_code(node, reason).unwrap();
        self.worker.stats().errors[code as usize].get()
    }
}

/// A frame from node 1's pod to node 2's pod with `len` bytes of UDP payload.
fn from_pod(len: usize) -> Vec<u8> {
    udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 64, len)
}

/// An inner IPv4/UDP packet (no Ethernet header) from `src` to node 2's pod.
fn inner_packet(src: Ipv4Addr) -> Vec<u8> {
    udp_frame([0; 6], [0; 6], src, pod_ip(2), 64, 16)[14..].to_vec()
}

/// An outer frame from `from` to node 2 on its uplink: IPv4 of `proto` carrying `payload`.
fn outer(from: Ipv4Addr, proto: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + payload.len()];
    f[0..6].copy_from_slice(&uplink_mac(2));
    f[6..12].copy_from_slice(&uplink_mac(1));
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let repr = OuterIpv4Repr {
        src_addr: from,
        dst_addr: node_ip(2),
        protocol: proto,
        dscp_ecn: 0,
        ttl: 64,
        payload_len: payload.len(),
    };
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut f[14..34]));
    f[34..].copy_from_slice(payload);
    f
}

/// A UDP datagram from `sport` to `dport` carrying `payload` (no checksum).
fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 8 + payload.len()];
    let mut u = UdpPacket::new_unchecked(&mut d[..]);
    u.set_src_port(sport);
    u.set_dst_port(dport);
    u.set_len((8 + payload.len()) as u16);
    d[8..].copy_from_slice(payload);
    d
}

/// A VXLAN payload: header bytes `hdr`, inner Ethernet of `ethertype`, inner `packet`.
fn vxlan_payload(hdr: [u8; 8], ethertype: u16, packet: &[u8]) -> Vec<u8> {
    let mut p = hdr.to_vec();
    p.extend_from_slice(&vtep_mac(2));
    p.extend_from_slice(&vtep_mac(1));
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(packet);
    p
}

/// Node 2 receives `frame`: asserts exactly `reason` of tunnel-decap counted once (or a
/// delivery to the pod when `None`), and returns what the pod got.
fn decap_verdict(mode: TunnelMode, frame: &[u8], reason: Option<&str>) -> Vec<Vec<u8>> {
    let mut n2 = Node::new(2, mode);
    let (_, pod) = n2.send(UPLINK, frame);
    let info = n2.worker.graph_info();
    let node = info.node_index("tunnel-decap").unwrap();
    let counted: Vec<&str> = info
        .errors
        .iter()
        .enumerate()
        .filter(|(c, (n, _))| *n == node && n2.worker.stats().errors[*c].get() > 0)
        .map(|(_, (_, e))| e.name)
        .collect();
    match reason {
        Some(r) => {
            assert_eq!(counted, vec![r], "tunnel-decap reasons");
            assert_eq!(n2.error("tunnel-decap", r), 1);
            assert!(pod.is_empty(), "{r}: nothing reaches the pod");
        }
        None => {
            assert!(counted.is_empty(), "no tunnel-decap reason: {counted:?}");
            assert_eq!(pod.len(), 1, "delivered to the pod");
            assert_eq!(n2.counters.get().0, 1, "counted as received");
        }
    }
    pod
}

#[test]
fn ipip_outer_header_bytes() {
    let mut n1 = Node::new(1, TunnelMode::Ipip);
    let mut f = from_pod(100);
    // TOS 0xb8 (EF), DF set on the inner packet: the outer copies the TOS, not DF.
    f[15] = 0xb8;
    f[20] = 0x40;
    Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
    let (up, _) = n1.send(POD, &f);
    assert_eq!(up.len(), 1);
    let w = &up[0];
    assert_eq!(&w[0..14], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let total = (20 + f.len() - 14) as u16;
    let mut expect = [
        0x45, 0xb8, 0, 0, 0, 0, 0, 0, 64, 4, 0, 0, 192, 168, 100, 11, 192, 168, 100, 12,
    ];
    expect[2..4].copy_from_slice(&total.to_be_bytes());
    let c = ferroplane_wire::checksum::checksum(&expect);
    expect[10..12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(&w[14..34], &expect, "outer IPv4 header");
    // The inner packet follows, TTL decremented once.
    assert_eq!(w[34 + 8], 63);
    assert_eq!(&w[34 + 12..34 + 20], &f[14 + 12..14 + 20]);
}

#[test]
fn vxlan_outer_header_bytes() {
    let mut n1 = Node::new(1, TunnelMode::Vxlan);
    let f = from_pod(100);
    let (up, _) = n1.send(POD, &f);
    let w = &up[0];
    let udp_len = (8 + 8 + f.len()) as u16;
    let ip = Ipv4Packet::new_checked(&w[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(
        (
            ip.total_len(),
            ip.ttl(),
            ip.protocol(),
            ip.ident(),
            ip.dont_frag()
        ),
        (20 + udp_len, 64, IpProtocol::UDP, 0, false)
    );
    assert_eq!(&w[38..40], &udp_len.to_be_bytes(), "UDP length");
    assert_eq!(&w[40..42], &[0, 0], "no UDP checksum");
    assert_eq!(&w[42..50], &[0x08, 0, 0, 0, 0, 0, 42, 0]);
}

#[test]
fn syn_mss_is_clamped_into_the_tunnel() {
    let mut n1 = Node::new(1, TunnelMode::Ipip);
    // A TCP SYN with MSS 1460 (a 24-byte segment: header and the MSS option).
    let mut f = from_pod(16);
    let l3 = &mut f[14..];
    l3[9] = 6;
    let tcp = &mut l3[20..];
    tcp[..4].copy_from_slice(&[0x30, 0x39, 0, 80]);
    tcp[4..12].fill(0);
    tcp[12] = 6 << 4;
    tcp[13] = 0x02;
    tcp[14..20].copy_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let c = ferroplane_wire::checksum::fold(
        ferroplane_wire::checksum::pseudo_header_v4(pod_ip(1), pod_ip(2), IpProtocol::TCP, 24)
            + ferroplane_wire::checksum::sum(&tcp[..24]),
    );
    tcp[16..18].copy_from_slice(&(!c).to_be_bytes());
    Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
    let (up, _) = n1.send(POD, &f);
    assert_eq!(up.len(), 1);
    assert_eq!(n1.error("tunnel-encap", "mss-clamped"), 1);
    let inner = Ipv4Packet::new_checked(&up[0][34..]).unwrap();
    let seg = ferroplane_wire::TcpPacket::new_checked(inner.payload()).unwrap();
    assert!(seg.verify_checksum(inner.src_addr(), inner.dst_addr()));
    assert_eq!(
        &inner.payload()[20..24],
        &[2, 4, 0x05, 0xa0],
        "MSS 1500 - 20 - 40"
    );
}

#[test]
fn ipip_decap_verdicts() {
    let m = TunnelMode::Ipip;
    let p = IpProtocol::IPIP;
    let good = inner_packet(pod_ip(1));
    let pod = decap_verdict(m, &outer(node_ip(1), p, &good), None);
    assert_eq!(&pod[0][0..6], &pod_mac(2));
    assert_eq!(&pod[0][14 + 12..14 + 16], &pod_ip(1).octets());
    decap_verdict(m, &outer(node_ip(1), p, &good[..19]), Some("truncated"));
    let mut v6 = good.clone();
    v6[0] = 0x65;
    decap_verdict(m, &outer(node_ip(1), p, &v6), Some("inner-not-ipv4"));
    let spoofed = inner_packet(Ipv4Addr::new(10, 244, 9, 9));
    decap_verdict(m, &outer(node_ip(1), p, &spoofed), Some("spoofed-source"));
    // The peer node's own address is accepted as an inner source.
    decap_verdict(m, &outer(node_ip(1), p, &inner_packet(node_ip(1))), None);
    decap_verdict(
        m,
        &outer(Ipv4Addr::new(192, 168, 100, 99), p, &good),
        Some("unknown-peer"),
    );
}

#[test]
fn vxlan_decap_verdicts() {
    let m = TunnelMode::Vxlan;
    let u = IpProtocol::UDP;
    let good = inner_packet(pod_ip(1));
    let hdr = [0x08, 0, 0, 0, 0, 0, 42, 0];
    let frame = |hdr, et, pkt: &[u8]| {
        outer(
            node_ip(1),
            u,
            &udp(50000, 4789, &vxlan_payload(hdr, et, pkt)),
        )
    };
    decap_verdict(m, &frame(hdr, 0x0800, &good), None);
    // Reserved bits are ignored.
    decap_verdict(m, &frame([0xff, 1, 2, 3, 0, 0, 42, 4], 0x0800, &good), None);
    decap_verdict(
        m,
        &frame([0, 0, 0, 0, 0, 0, 42, 0], 0x0800, &good),
        Some("bad-vxlan"),
    );
    decap_verdict(
        m,
        &frame([0x08, 0, 0, 0, 0, 0, 43, 0], 0x0800, &good),
        Some("bad-vxlan"),
    );
    decap_verdict(m, &frame(hdr, 0x0806, &good), Some("inner-not-ipv4"));
    decap_verdict(m, &frame(hdr, 0x0800, &good[..19]), Some("truncated"));
    let spoofed = inner_packet(Ipv4Addr::new(10, 244, 9, 9));
    decap_verdict(m, &frame(hdr, 0x0800, &spoofed), Some("spoofed-source"));
}

#[test]
fn wireguard_decap_verdicts() {
    let m = TunnelMode::WireGuard;
    let wg = |payload: &[u8]| outer(node_ip(1), IpProtocol::UDP, &udp(51820, 51820, payload));
    let mut data = [0u8; 48];
    data[0] = 4;
    data[4] = 0x77;
    // Malformed messages: unknown type, short transport data, reserved bytes set, a
    // handshake initiation of the wrong length.
    let mut unknown = data;
    unknown[0] = 9;
    decap_verdict(m, &wg(&unknown), Some("wg-decrypt"));
    decap_verdict(m, &wg(&data[..20]), Some("wg-decrypt"));
    decap_verdict(m, &wg(&data[..3]), Some("wg-decrypt"));
    let mut reserved = data;
    reserved[2] = 1;
    decap_verdict(m, &wg(&reserved), Some("wg-decrypt"));
    let mut init = [0u8; 149];
    init[0] = 1;
    decap_verdict(m, &wg(&init), Some("wg-decrypt"));
    // Well-formed: a handshake initiation with a bad MAC, transport data for no session.
    decap_verdict(m, &wg(&init[..148]), Some("wg-decrypt"));
    decap_verdict(m, &wg(&data), Some("wg-no-session"));
    // An empty datagram goes to the state machine (nothing queued: consumed).
    decap_verdict(m, &wg(&[]), Some("wg-control"));
}
