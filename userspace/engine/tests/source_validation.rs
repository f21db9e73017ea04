//! Source validation (anti-spoofing) and martian destinations on the memory backend: a
//! pod sends with its own MAC and address only, the uplink never brings a source inside
//! the node's pod CIDR, and destinations no router forwards are dropped; legitimate
//! traffic still passes.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_engine::testutil::*;
use ferroplane_engine::{Shared, Worker, WorkerControl, POD_GATEWAY};
use ferroplane_io::MemIo;

struct Rig {
    worker: Worker<MemIo>,
    info: ferroplane_engine::graph::GraphInfo,
}

/// The one-node test snapshot: uplink on port 0, pods 1..=`pods` on ports 1.., pod CIDR
/// 10.244.1.0/24.
fn rig(pods: u16) -> Rig {
    let io = MemIo::new(1024, 2048, pods as usize + 1);
    let shared = Arc::new(Shared::new(node_snapshot(pods, 0)));
    let worker = Worker::new(io, shared, Arc::new(WorkerControl::default())).unwrap();
    let info = worker.graph_info();
    Rig { worker, info }
}

impl Rig {
    /// Injects `frame` on `port`, runs the graph; returns every frame transmitted on any port.
    fn send(&mut self, port: u16, frame: &[u8]) -> Vec<(u16, Vec<u8>)> {
        assert!(self.worker.io_mut().inject(port, frame));
        self.worker.poll().unwrap();
        let mut out = Vec::new();
        for p in 0..=3 {
            for f in self.worker.io_mut().take_tx(p) {
                out.push((p, f));
            }
        }
        out
    }

    fn errors(&self, node: &str, reason: &str) -> u64 {
        let code = self
            .info
            .error_code(node, reason)
            .unwrap_or_else(|| panic!("no error {node}: {reason}"));
        self.worker.stats().errors[code as usize].get()
    }

    /// Every non-zero error counter as ("node: reason", count).
    fn nonzero(&self) -> Vec<(String, u64)> {
        let stats = self.worker.stats();
        (0..self.info.errors.len() as u16)
            .filter_map(|code| {
                let n = stats.errors[code as usize].get();
                (n != 0).then(|| (self.info.error_name(code), n))
            })
            .collect()
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A frame from pod 1 (to its host veth) with this source MAC and address.
fn from_pod1(src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    udp_frame(host_mac(1), src_mac, src, dst, 64, 10)
}

#[test]
fn a_pod_sends_with_its_own_address_only() {
    let mut r = rig(2);
    let cases = [
        ("another pod's address", pod_ip(2), pod_ip(2)),
        (
            "another pod's address, to the outside",
            pod_ip(2),
            ip("8.8.8.8"),
        ),
        ("the node's address", NODE_IP, pod_ip(2)),
        ("the node's address, to the outside", NODE_IP, ip("8.8.8.8")),
        ("an outside address", ip("8.8.8.8"), ip("1.1.1.1")),
        (
            "an unused address of the pod CIDR",
            ip("10.244.1.200"),
            pod_ip(2),
        ),
        ("0.0.0.0 (DHCP-like)", Ipv4Addr::UNSPECIFIED, ip("8.8.8.8")),
    ];
    for (n, (what, src, dst)) in cases.into_iter().enumerate() {
        let out = r.send(1, &from_pod1(pod_mac(1), src, dst));
        assert!(out.is_empty(), "{what}: forwarded {out:?}");
        assert_eq!(
            r.errors("ip4-input", "spoofed-source"),
            n as u64 + 1,
            "{what}"
        );
    }
    // Legit traffic from the same pod still goes out: to a pod, to the outside.
    let out = r.send(1, &from_pod1(pod_mac(1), pod_ip(1), pod_ip(2)));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 2);
    let out = r.send(1, &from_pod1(pod_mac(1), pod_ip(1), ip("8.8.8.8")));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 0);
    assert_eq!(r.errors("ip4-input", "spoofed-source"), 7);
    assert_eq!(r.nonzero(), vec![("ip4-input: spoofed-source".into(), 7)]);
}

#[test]
fn a_pod_sends_with_its_own_mac_only() {
    let mut r = rig(2);
    // Its own address but pod 2's MAC, or any other MAC.
    for (n, mac) in [pod_mac(2), [0x02, 0x11, 0x22, 0x33, 0x44, 0x55]]
        .into_iter()
        .enumerate()
    {
        let out = r.send(1, &from_pod1(mac, pod_ip(1), pod_ip(2)));
        assert!(out.is_empty(), "{mac:02x?}: forwarded");
        assert_eq!(r.errors("ethernet-input", "spoofed-source"), n as u64 + 1);
    }
    // Pod 2's MAC and address on pod 1's port: the MAC already gives it away.
    let out = r.send(1, &from_pod1(pod_mac(2), pod_ip(2), pod_ip(2)));
    assert!(out.is_empty());
    assert_eq!(r.errors("ethernet-input", "spoofed-source"), 3);
    // Pod 2's own frame on its own port passes.
    let out = r.send(
        2,
        &udp_frame(host_mac(2), pod_mac(2), pod_ip(2), pod_ip(1), 64, 10),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 1);
    assert_eq!(r.errors("ip4-input", "spoofed-source"), 0);
}

#[test]
fn arp_from_a_pod_carries_its_own_mac_and_address() {
    let mut r = rig(2);
    let cases = [
        ("another pod's address", pod_mac(1), pod_ip(2), POD_GATEWAY),
        ("another pod's MAC", pod_mac(2), pod_ip(1), POD_GATEWAY),
        ("the node's address", pod_mac(1), NODE_IP, POD_GATEWAY),
        (
            "0.0.0.0 for another address",
            pod_mac(1),
            Ipv4Addr::UNSPECIFIED,
            POD_GATEWAY,
        ),
    ];
    for (n, (what, mac, sender, target)) in cases.into_iter().enumerate() {
        let mut req = arp_request(mac, sender, target);
        // The Ethernet source is the pod's own: only the ARP body lies.
        req[6..12].copy_from_slice(&pod_mac(1));
        let out = r.send(1, &req);
        assert!(out.is_empty(), "{what}: answered");
        assert_eq!(
            r.errors("arp-input", "spoofed-source"),
            n as u64 + 1,
            "{what}"
        );
    }
    assert_eq!(r.errors("arp-input", "replied"), 0);
    // A probe for its own address (RFC 5227: sender 0.0.0.0) is duplicate address
    // detection, not spoofing; the pod's real request is answered.
    r.send(
        1,
        &arp_request(pod_mac(1), Ipv4Addr::UNSPECIFIED, pod_ip(1)),
    );
    assert_eq!(r.errors("arp-input", "own-address"), 1);
    let out = r.send(1, &arp_request(pod_mac(1), pod_ip(1), POD_GATEWAY));
    assert_eq!(out.len(), 1);
    assert_eq!(r.errors("arp-input", "replied"), 1);
    assert_eq!(r.errors("arp-input", "spoofed-source"), 4);
}

#[test]
fn the_uplink_never_brings_this_nodes_pod_sources() {
    let mut r = rig(2);
    for (n, src) in [pod_ip(2), pod_ip(1), ip("10.244.1.200"), ip("10.244.1.0")]
        .into_iter()
        .enumerate()
    {
        let out = r.send(
            0,
            &udp_frame(UPLINK_MAC, ROUTER_MAC, src, pod_ip(1), 64, 10),
        );
        assert!(out.is_empty(), "{src}: delivered");
        assert_eq!(r.errors("ip4-input", "spoofed-source"), n as u64 + 1);
    }
    // Outside addresses, the router, and other nodes' pods (10.244.2.0/24) are delivered.
    for src in [ip("8.8.8.8"), ROUTER_IP, ip("10.244.2.7")] {
        let out = r.send(
            0,
            &udp_frame(UPLINK_MAC, ROUTER_MAC, src, pod_ip(1), 64, 10),
        );
        assert_eq!(out.len(), 1, "{src}: not delivered");
        assert_eq!(out[0].0, 1);
    }
    assert_eq!(r.errors("ip4-input", "spoofed-source"), 4);
}

#[test]
fn martian_destinations_from_a_pod_are_dropped() {
    let mut r = rig(1);
    let martians = [
        "255.255.255.255",
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.1",
        "127.255.0.9",
        "224.0.0.1",
        "224.0.0.251",
        "239.1.1.1",
    ];
    for (n, dst) in martians.into_iter().enumerate() {
        // Sent to the gateway's MAC (a broadcast or multicast MAC is refused earlier,
        // as `l2-multicast`).
        let out = r.send(1, &from_pod1(pod_mac(1), pod_ip(1), ip(dst)));
        assert!(out.is_empty(), "{dst}: forwarded {out:?}");
        assert_eq!(
            r.errors("ip4-input", "martian-destination"),
            n as u64 + 1,
            "{dst}"
        );
    }
    // From the uplink too.
    let out = r.send(
        0,
        &udp_frame(UPLINK_MAC, ROUTER_MAC, ROUTER_IP, ip("127.0.0.1"), 64, 10),
    );
    assert!(out.is_empty());
    assert_eq!(r.errors("ip4-input", "martian-destination"), 9);
    // 240.0.0.0/4 is unicast space some clusters use: routed (to the router here).
    let out = r.send(1, &from_pod1(pod_mac(1), pod_ip(1), ip("240.1.2.3")));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 0);
    assert_eq!(r.errors("ip4-input", "martian-destination"), 9);
}

#[test]
fn loopback_and_this_network_sources_are_bad_from_the_uplink() {
    let mut r = rig(1);
    for (n, src) in ["127.0.0.1", "0.0.0.0", "0.9.9.9"].into_iter().enumerate() {
        let out = r.send(
            0,
            &udp_frame(UPLINK_MAC, ROUTER_MAC, ip(src), pod_ip(1), 64, 10),
        );
        assert!(out.is_empty(), "{src}: delivered");
        assert_eq!(r.errors("ip4-input", "bad-source"), n as u64 + 1);
    }
}
