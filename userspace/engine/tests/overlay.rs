//! Overlay nodes on the memory backend: two engines ("node 1" and "node 2") whose uplink
//! outputs are fed into each other, in IPIP, VXLAN and WireGuard; PMTU; decap checks.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_engine::testutil::tunnel::{
    host_mac, node_ip, pod_ip, pod_mac, tunnel_node, uplink_mac, vtep_mac, TunnelNode,
};
use ferroplane_engine::testutil::udp_frame;
use ferroplane_engine::tunnel::{TunnelCounters, TunnelMode, WgPeer};
use ferroplane_engine::{Shared, Worker, WorkerControl};
use ferroplane_io::MemIo;
use ferroplane_wire::Ipv4Packet;

struct Node {
    worker: Worker<MemIo>,
    counters: Arc<TunnelCounters>,
    wg: Option<Arc<WgPeer>>,
}

impl Node {
    fn new(me: u8, mode: TunnelMode) -> Node {
        let TunnelNode {
            snapshot,
            counters,
            wg,
        } = tunnel_node(me, mode, false);
        let io = MemIo::new(512, 4096, 2);
        let worker = Worker::new(
            io,
            Arc::new(Shared::new(snapshot)),
            Arc::new(WorkerControl::default()),
        )
        .unwrap();
        Node {
            worker,
            counters,
            wg,
        }
    }

    fn send(&mut self, port: u16, frame: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        assert!(self.worker.io_mut().inject(port, frame));
        self.worker.poll().unwrap();
        (
            self.worker.io_mut().take_tx(0),
            self.worker.io_mut().take_tx(1),
        )
    }

    fn error(&self, node: &str, reason: &str) -> u64 {
        let info = self.worker.graph_info();
        let code = info.error_code(node, reason).unwrap();
        self.worker.stats().errors[code as usize].get()
    }
}

fn from_pod(me: u8, len: usize) -> Vec<u8> {
    udp_frame(
        host_mac(me),
        pod_mac(me),
        pod_ip(me),
        pod_ip(3 - me),
        64,
        len,
    )
}

/// node 1's pod -> node 2's pod; returns what node 2's pod receives and the wire frame.
fn across(n1: &mut Node, n2: &mut Node, len: usize) -> (Vec<u8>, Vec<u8>) {
    let (up, _) = n1.send(1, &from_pod(1, len));
    assert_eq!(up.len(), 1, "one frame on node 1's uplink");
    let wire = up[0].clone();
    assert_eq!(&wire[0..6], &uplink_mac(2));
    assert_eq!(&wire[6..12], &uplink_mac(1));
    let outer = Ipv4Packet::new_checked(&wire[14..]).unwrap();
    assert!(outer.verify_checksum());
    assert_eq!(outer.src_addr(), node_ip(1));
    assert_eq!(outer.dst_addr(), node_ip(2));
    let (_, pod) = n2.send(0, &wire);
    assert_eq!(pod.len(), 1, "one frame to node 2's pod");
    (pod[0].clone(), wire)
}

fn check_delivery(sent: &[u8], got: &[u8]) {
    assert_eq!(&got[0..6], &pod_mac(2));
    assert_eq!(&got[6..12], &host_mac(2));
    let ip = Ipv4Packet::new_checked(&got[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.src_addr(), pod_ip(1));
    assert_eq!(ip.dst_addr(), pod_ip(2));
    assert_eq!(ip.ttl(), 62, "one hop per engine");
    assert_eq!(&got[34..], &sent[34..], "payload intact");
}

#[test]
fn ipip_round_trip() {
    let (mut n1, mut n2) = (
        Node::new(1, TunnelMode::Ipip),
        Node::new(2, TunnelMode::Ipip),
    );
    let sent = from_pod(1, 200);
    let (got, wire) = across(&mut n1, &mut n2, 200);
    check_delivery(&sent, &got);
    assert_eq!(wire[14 + 9], 4, "outer protocol IPIP");
    assert_eq!(wire.len(), sent.len() + 20);
    // The inner header follows the outer one.
    let inner = Ipv4Packet::new_checked(&wire[34..]).unwrap();
    assert_eq!(inner.src_addr(), pod_ip(1));
    assert_eq!(n1.counters.get().2, 1);
    assert_eq!(n2.counters.get().0, 1);
}

#[test]
fn vxlan_round_trip_and_format() {
    let (mut n1, mut n2) = (
        Node::new(1, TunnelMode::Vxlan),
        Node::new(2, TunnelMode::Vxlan),
    );
    let sent = from_pod(1, 300);
    let (got, wire) = across(&mut n1, &mut n2, 300);
    check_delivery(&sent, &got);
    assert_eq!(wire[14 + 9], 17);
    let udp = &wire[34..42];
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4789);
    assert!(
        u16::from_be_bytes([udp[0], udp[1]]) >= 49152,
        "source port from the flow hash"
    );
    assert_eq!(
        &wire[42..50],
        &[0x08, 0, 0, 0, 0, 0, 42, 0],
        "flags I, VNI 42"
    );
    assert_eq!(
        &wire[50..56],
        &vtep_mac(2),
        "inner destination: remote VTEP MAC"
    );
    assert_eq!(&wire[56..62], &vtep_mac(1), "inner source: our VTEP MAC");
    assert_eq!(wire.len(), sent.len() + 50);
    // Same flow, same source port; another flow (other UDP port) usually another.
    let (again, _) = n1.send(1, &from_pod(1, 300));
    assert_eq!(&again[0][34..36], &wire[34..36]);
}

#[test]
fn vxlan_with_another_vni_is_dropped() {
    let (mut n1, mut n2) = (
        Node::new(1, TunnelMode::Vxlan),
        Node::new(2, TunnelMode::Vxlan),
    );
    let (up, _) = n1.send(1, &from_pod(1, 64));
    let mut wire = up[0].clone();
    wire[48] = 43;
    let (_, pod) = n2.send(0, &wire);
    assert!(pod.is_empty());
    assert_eq!(n2.error("tunnel-decap", "bad-vxlan"), 1);
}

/// Completes a WireGuard handshake between node 1 (initiator) and node 2.
fn wg_handshake(n1: &mut Node, n2: &mut Node) {
    let (up, _) = n1.send(1, &from_pod(1, 20));
    let (resp, _) = n2.send(0, &up[0]);
    let (ka, _) = n1.send(0, &resp[0]);
    n2.send(0, &ka[0]);
    assert!(n1.wg.as_ref().unwrap().handshake_age().is_some());
}

/// Node 1 forwards a frame from its uplink with this source to node 2's pod (through the
/// tunnel); returns what node 2's pod receives.
fn relay_from(n1: &mut Node, n2: &mut Node, src: Ipv4Addr) -> Vec<Vec<u8>> {
    let f = udp_frame(uplink_mac(1), [2, 0xaa, 0, 0, 0, 1], src, pod_ip(2), 64, 30);
    let (up, _) = n1.send(0, &f);
    assert_eq!(up.len(), 1, "{src}: tunnelled by node 1");
    n2.send(0, &up[0]).1
}

#[test]
fn inner_sources_belong_to_the_sending_peer() {
    for mode in [TunnelMode::Ipip, TunnelMode::Vxlan, TunnelMode::WireGuard] {
        let (mut n1, mut n2) = (Node::new(1, mode), Node::new(2, mode));
        if mode == TunnelMode::WireGuard {
            wg_handshake(&mut n1, &mut n2);
        }
        // Node 1's pod CIDR and node 1 itself (host-network and masqueraded traffic).
        for src in [pod_ip(1), Ipv4Addr::new(10, 244, 1, 77), node_ip(1)] {
            let got = relay_from(&mut n1, &mut n2, src);
            assert_eq!(got.len(), 1, "{mode:?}: {src} refused");
        }
        // An outside address, node 2's own pods, a third node's pods: spoofed.
        let spoofed = [
            Ipv4Addr::new(8, 8, 8, 8),
            pod_ip(2),
            Ipv4Addr::new(10, 244, 3, 10),
        ];
        for src in spoofed {
            let got = relay_from(&mut n1, &mut n2, src);
            assert!(got.is_empty(), "{mode:?}: {src} delivered");
        }
        assert_eq!(n2.error("tunnel-decap", "spoofed-source"), 3, "{mode:?}");
    }
}

#[test]
fn spoofed_inner_source_is_dropped() {
    let (mut n1, mut n2) = (
        Node::new(1, TunnelMode::Ipip),
        Node::new(2, TunnelMode::Ipip),
    );
    // Node 1's IPIP frame with an inner source outside node 1's pod CIDR.
    let (up, _) = n1.send(1, &from_pod(1, 64));
    let mut wire = up[0].clone();
    wire[14 + 20 + 12..14 + 20 + 16].copy_from_slice(&[10, 9, 9, 9]);
    let mut ip = Ipv4Packet::new_checked(&mut wire[14 + 20..]).unwrap();
    ip.fill_checksum();
    let (_, pod) = n2.send(0, &wire);
    assert!(pod.is_empty());
    assert_eq!(n2.error("tunnel-decap", "spoofed-source"), 1);
}

#[test]
fn wireguard_handshake_data_and_replay() {
    let (mut n1, mut n2) = (
        Node::new(1, TunnelMode::WireGuard),
        Node::new(2, TunnelMode::WireGuard),
    );
    // No session: the packet is queued and a handshake initiation leaves instead.
    let (up, _) = n1.send(1, &from_pod(1, 100));
    assert_eq!(up.len(), 1);
    let init = up[0].clone();
    assert_eq!(init.len(), 42 + 148, "handshake initiation");
    assert_eq!(n1.error("tunnel-encap", "wg-handshake-sent"), 1);
    // Node 2 answers from the data path.
    let (resp, pod) = n2.send(0, &init);
    assert!(pod.is_empty());
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].len(), 42 + 92, "handshake response");
    assert_eq!(&resp[0][0..6], &uplink_mac(1));
    // Node 1 completes the handshake (and answers with a keepalive).
    let (ka, _) = n1.send(0, &resp[0]);
    assert_eq!(ka.len(), 1, "keepalive confirming the session");
    n2.send(0, &ka[0]);
    assert!(n1.wg.as_ref().unwrap().handshake_age().is_some());
    // Now data flows, encrypted.
    let sent = from_pod(1, 400);
    let (got, wire) = across(&mut n1, &mut n2, 400);
    check_delivery(&sent, &got);
    assert_eq!(wire.len(), 42 + (sent.len() - 14) + 32);
    assert!(
        !wire.windows(16).any(|w| w == &sent[50..66]),
        "payload not in clear"
    );
    // A replayed packet is refused.
    let (_, pod) = n2.send(0, &wire);
    assert!(pod.is_empty());
    assert_eq!(n2.error("tunnel-decap", "wg-replay"), 1);
    // And the reverse direction works on the same session.
    let back = udp_frame(host_mac(2), pod_mac(2), pod_ip(2), pod_ip(1), 64, 50);
    let (up, _) = n2.send(1, &back);
    let (_, pod) = n1.send(0, &up[0]);
    assert_eq!(pod.len(), 1);
    assert!(n2.wg.as_ref().unwrap().handshake_age().is_some());
}

#[test]
fn oversized_df_packet_gets_icmp_with_the_tunnel_mtu() {
    let mut n1 = Node::new(1, TunnelMode::Vxlan);
    let mut f = from_pod(1, 1472);
    f[20] |= 0x40; // DF
    let mut ip = Ipv4Packet::new_checked(&mut f[14..]).unwrap();
    ip.fill_checksum();
    let (up, pod) = n1.send(1, &f);
    assert!(up.is_empty(), "nothing tunnelled");
    assert_eq!(pod.len(), 1, "ICMP back to the pod");
    let icmp = &pod[0][34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450);
    assert_eq!(n1.error("ip4-rewrite", "mtu-exceeded"), 1);
    // Without DF the engine does not fragment: dropped and counted.
    let mut f = from_pod(1, 1472);
    f[20] &= !0x40;
    let mut ip = Ipv4Packet::new_checked(&mut f[14..]).unwrap();
    ip.fill_checksum();
    let (up, _) = n1.send(1, &f);
    assert!(up.is_empty());
    assert_eq!(n1.error("ip4-rewrite", "mtu-exceeded-no-frag"), 1);
}

#[test]
fn tunnel_packets_from_unknown_peers_are_dropped() {
    let (mut n1, _) = (Node::new(1, TunnelMode::Ipip), ());
    let mut n3 = Node::new(2, TunnelMode::Ipip);
    // node 2's frame, but with another outer source.
    let (up, _) = n1.send(1, &from_pod(1, 64));
    let mut wire = up[0].clone();
    wire[26..30].copy_from_slice(&[192, 168, 100, 99]);
    let mut ip = Ipv4Packet::new_checked(&mut wire[14..]).unwrap();
    ip.fill_checksum();
    let (_, pod) = n3.send(0, &wire);
    assert!(pod.is_empty());
    assert_eq!(n3.error("tunnel-decap", "unknown-peer"), 1);
}
