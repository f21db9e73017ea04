//! The node's own traffic to services (issue 15, item 3), on the memory backend: packets
//! the kernel routes to the punt TUN enter the engine through [`HostSource`], are
//! load-balanced like a pod's, get a source port of the SNAT range (so the backend's
//! answers come back to the engine), and the answers are restored and punted to the host.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::Arc;

use ferroplane_engine::interfaces::{IfKind, Interface, Interfaces, PUNT_SW_IF};
use ferroplane_engine::testutil::*;
use ferroplane_engine::testutil_services::*;
use ferroplane_engine::worker::HostSource;
use ferroplane_engine::{Shared, Worker, WorkerControl};
use ferroplane_io::MemIo;
use ferroplane_tables::nat::DEFAULT_SNAT_PORTS;
use ferroplane_tables::ServicePortDef;
use ferroplane_wire::{Ipv4Packet, TcpPacket, UdpPacket};

const PUNT_MAC: [u8; 6] = [0x02, 0xfe, 0xff, 0, 0, 1];
/// A pod on another node (reached through the uplink's default route in the test node).
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);

/// Packets the "kernel" routed to the TUN, waiting for the engine.
#[derive(Clone, Default)]
struct FakeTun(Rc<RefCell<VecDeque<Vec<u8>>>>);

impl HostSource for FakeTun {
    fn ready(&self) -> bool {
        !self.0.borrow().is_empty()
    }

    fn read(&mut self, buf: &mut [u8]) -> Option<usize> {
        let p = self.0.borrow_mut().pop_front()?;
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        Some(n)
    }
}

struct Rig {
    worker: Worker<MemIo>,
    tun: FakeTun,
    punted: Rc<RefCell<Vec<Vec<u8>>>>,
    info: ferroplane_engine::graph::GraphInfo,
}

fn rig(defs: Vec<ServicePortDef>) -> Rig {
    let nat = nat_default();
    let mut snap = snapshot_with(4, defs, nat);
    let mut ifaces: Interfaces = (*snap.ifaces).clone();
    ifaces.insert(Interface {
        sw_if: PUNT_SW_IF,
        name: "fppunt0".into(),
        kind: IfKind::Punt,
        ifindex: 99,
        mac: PUNT_MAC,
        ip4: None,
        mtu: 1500,
        port: None,
        xdp_mode: None,
        pod: None,
    });
    snap.ifaces = Arc::new(ifaces);
    let io = MemIo::new(1024, 2048, 5);
    let shared = Arc::new(Shared::new(snap));
    let mut worker = Worker::new(io, shared, Arc::new(WorkerControl::default())).unwrap();
    let tun = FakeTun::default();
    worker.set_host_input(Box::new(tun.clone()));
    let punted: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let sink = punted.clone();
    worker.set_punt(Box::new(move |p: &[u8]| {
        sink.borrow_mut().push(p.to_vec());
        true
    }));
    let info = worker.graph_info();
    Rig {
        worker,
        tun,
        punted,
        info,
    }
}

impl Rig {
    /// The host sends `ip` (an IPv4 packet, no link header) through the TUN.
    fn host_send(&mut self, ip: &[u8]) {
        self.tun.0.borrow_mut().push_back(ip.to_vec());
        self.worker.poll().unwrap();
    }
    fn send(&mut self, port: u16, frame: &[u8]) {
        assert!(self.worker.io_mut().inject(port, frame));
        self.worker.poll().unwrap();
    }
    fn take_punted(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.punted.borrow_mut())
    }
    fn counter(&self, node: &str, reason: &str) -> u64 {
        let code = self
            .info
            .error_code(node, reason)
            .unwrap_or_else(|| panic!("no error {node}: {reason}"));
        self.worker.stats().errors[code as usize].get()
    }
    /// The one frame sent on any port, and the port.
    fn one_out(&mut self) -> (u16, Vec<u8>) {
        let mut all = Vec::new();
        for p in 0..5 {
            for f in self.worker.io_mut().take_tx(p) {
                all.push((p, f));
            }
        }
        assert_eq!(all.len(), 1, "one frame out: {all:?}");
        all.remove(0)
    }
}

/// (proto, src, dst, sport, dport) of an IPv4 TCP/UDP packet; asserts valid checksums.
fn tuple(ip: &[u8]) -> (u8, Ipv4Addr, Ipv4Addr, u16, u16) {
    let ip = Ipv4Packet::new_checked(ip).unwrap();
    assert!(ip.verify_checksum(), "ip checksum");
    let (s, d) = (ip.src_addr(), ip.dst_addr());
    match ip.protocol().0 {
        6 => {
            let t = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(t.verify_checksum(s, d), "tcp checksum");
            (6, s, d, t.src_port(), t.dst_port())
        }
        17 => {
            let u = UdpPacket::new_checked(ip.payload()).unwrap();
            assert!(u.verify_checksum(s, d), "udp checksum");
            (17, s, d, u.src_port(), u.dst_port())
        }
        p => panic!("proto {p}"),
    }
}

fn in_snat_range(port: u16) -> bool {
    (DEFAULT_SNAT_PORTS.0..=DEFAULT_SNAT_PORTS.1).contains(&port)
}

#[test]
fn host_to_cluster_ip_with_local_backend_tcp() {
    let mut r = rig(vec![tcp_service(
        "default/web",
        vip(0),
        None,
        vec![backend(pod_ip(2), 8080, true)],
    )]);
    let syn = tcp_frame([0; 6], [0; 6], NODE_IP, vip(0), 40000, 80, SYN, 0);
    r.host_send(&syn[14..]);
    let (port, out) = r.one_out();
    assert_eq!(port, 2, "to the backend pod's port");
    assert_eq!(&out[0..6], &pod_mac(2));
    let (_, src, dst, sport, dport) = tuple(&out[14..]);
    assert_eq!((src, dst, dport), (NODE_IP, pod_ip(2), 8080));
    assert!(
        in_snat_range(sport),
        "source port {sport} from the SNAT range"
    );
    assert_eq!(r.counter("ip4-nat", "host-sessions"), 1);

    // The pod answers the node's SNAT port: restored and handed to the host.
    let synack = tcp_frame(
        host_mac(2),
        pod_mac(2),
        pod_ip(2),
        NODE_IP,
        8080,
        sport,
        SYN | ACK,
        0,
    );
    r.send(2, &synack);
    let punted = r.take_punted();
    assert_eq!(punted.len(), 1, "the answer goes to the host");
    assert_eq!(tuple(&punted[0]), (6, vip(0), NODE_IP, 80, 40000));

    // The rest of the connection hits the session, both ways, with data.
    let data = tcp_frame([0; 6], [0; 6], NODE_IP, vip(0), 40000, 80, ACK, 100);
    r.host_send(&data[14..]);
    let (port, out) = r.one_out();
    assert_eq!(port, 2);
    assert_eq!(tuple(&out[14..]), (6, NODE_IP, pod_ip(2), sport, 8080));
    assert_eq!(r.counter("ip4-nat", "host-sessions"), 1, "no new session");
}

#[test]
fn host_to_node_port_with_remote_backend_udp() {
    let mut def = udp_service(
        "default/dns",
        vip(1),
        vec![backend(REMOTE_POD, 5353, false)],
    );
    def.node_port = Some(30053);
    // externalTrafficPolicy=Local with no local endpoint: the node's own traffic is not
    // external, it uses every endpoint (as kube-proxy's).
    def.external_local = true;
    let mut r = rig(vec![def]);
    let q = udp_frame_ports([0; 6], [0; 6], NODE_IP, NODE_IP, 45000, 30053, 40);
    r.host_send(&q[14..]);
    let (port, out) = r.one_out();
    assert_eq!(port, 0, "to the uplink (the remote node)");
    assert_eq!(&out[0..6], &ROUTER_MAC);
    let (_, src, dst, sport, dport) = tuple(&out[14..]);
    assert_eq!((src, dst, dport), (NODE_IP, REMOTE_POD, 5353));
    assert!(
        in_snat_range(sport),
        "source port {sport} from the SNAT range"
    );

    let answer = udp_frame_ports(
        UPLINK_MAC, ROUTER_MAC, REMOTE_POD, NODE_IP, 5353, sport, 300,
    );
    r.send(0, &answer);
    let punted = r.take_punted();
    assert_eq!(punted.len(), 1);
    assert_eq!(tuple(&punted[0]), (17, NODE_IP, NODE_IP, 30053, 45000));
    assert_eq!(punted[0].len(), 20 + 8 + 300, "payload kept");
}

#[test]
fn host_packets_claiming_a_pod_address_or_not_ipv4_are_refused() {
    let mut r = rig(vec![tcp_service(
        "default/web",
        vip(0),
        None,
        vec![backend(pod_ip(2), 8080, true)],
    )]);
    let spoofed = tcp_frame([0; 6], [0; 6], pod_ip(1), vip(0), 40000, 80, SYN, 0);
    r.host_send(&spoofed[14..]);
    let mut ipv6 = vec![0u8; 60];
    ipv6[0] = 0x60;
    r.host_send(&ipv6);
    for p in 0..5 {
        assert!(
            r.worker.io_mut().take_tx(p).is_empty(),
            "nothing out on {p}"
        );
    }
    assert_eq!(r.counter("ip4-input", "spoofed-source"), 1);
    assert_eq!(r.counter("ip4-nat", "host-sessions"), 0);
    assert!(r.take_punted().is_empty());
    // Every frame taken for the host went back to the pool.
    let free_before = r.worker.io_mut().free_frames();
    let ok = tcp_frame([0; 6], [0; 6], NODE_IP, vip(0), 40001, 80, SYN, 0);
    r.host_send(&ok[14..]);
    let (port, _) = r.one_out();
    assert_eq!(port, 2);
    assert_eq!(r.worker.io_mut().free_frames(), free_before);
}
