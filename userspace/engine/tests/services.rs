//! Services on the memory backend: DNAT to Maglev-chosen backends, reverse
//! NAT of replies, rejection without endpoints, traffic policies, SNAT
//! (hairpin, externalTrafficPolicy=Cluster, masquerade), ICMP error
//! translation, affinity, a full session table and a SYN flood against it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ferroplane_engine::testutil::*;
use ferroplane_engine::testutil_services::*;
use ferroplane_engine::{Shared, Worker, WorkerControl};
use ferroplane_io::MemIo;
use ferroplane_tables::{Conntrack, NatConfig, ServicePortDef};
use ferroplane_wire::{checksum, Ipv4Packet, TcpPacket, UdpPacket};

struct Rig {
    worker: Worker<MemIo>,
    shared: Arc<Shared>,
    info: ferroplane_engine::graph::GraphInfo,
}

fn rig(pods: u16, defs: Vec<ServicePortDef>, nat: NatConfig) -> Rig {
    let io = MemIo::new(1024, 2048, pods as usize + 1);
    let shared = Arc::new(Shared::new(snapshot_with(pods, defs, nat)));
    let worker = Worker::new(io, shared.clone(), Arc::new(WorkerControl::default())).unwrap();
    let info = worker.graph_info();
    Rig {
        worker,
        shared,
        info,
    }
}

impl Rig {
    fn send(&mut self, port: u16, frame: &[u8]) {
        assert!(self.worker.io_mut().inject(port, frame));
        self.worker.poll().unwrap();
    }
    fn tx(&mut self, port: u16) -> Vec<Vec<u8>> {
        self.worker.io_mut().take_tx(port)
    }
    fn one(&mut self, port: u16) -> Vec<u8> {
        let mut v = self.tx(port);
        assert_eq!(v.len(), 1, "one frame on port {port}");
        v.remove(0)
    }
    fn errors(&self, node: &str, reason: &str) -> u64 {
        let code = self
            .info
            .error_code(node, reason)
            .unwrap_or_else(|| panic!("no error {node}: {reason}"));
        self.worker.stats().errors[code as usize].get()
    }
    fn sessions(&self) -> Arc<Mutex<Conntrack>> {
        self.worker
            .shared_state("ip4-nat")
            .unwrap()
            .downcast::<Mutex<Conntrack>>()
            .unwrap()
    }
}

/// (src, dst, sport, dport) of a TCP or UDP frame; asserts valid checksums.
fn tuple(f: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    assert!(ip.verify_checksum(), "ip checksum");
    let (s, d) = (ip.src_addr(), ip.dst_addr());
    match ip.protocol().0 {
        6 => {
            let t = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(t.verify_checksum(s, d), "tcp checksum");
            (s, d, t.src_port(), t.dst_port())
        }
        17 => {
            let u = UdpPacket::new_checked(ip.payload()).unwrap();
            assert!(u.verify_checksum(s, d), "udp checksum");
            (s, d, u.src_port(), u.dst_port())
        }
        p => panic!("proto {p}"),
    }
}

fn three_local() -> Vec<ferroplane_tables::Backend> {
    (2..=4).map(|p| backend(pod_ip(p), 8080, true)).collect()
}

#[test]
fn cluster_ip_tcp_dnat_and_reverse_nat() {
    let mut r = rig(
        4,
        vec![tcp_service("default/web", vip(0), None, three_local())],
        nat_default(),
    );
    let syn = tcp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        vip(0),
        40000,
        80,
        SYN,
        0,
    );
    r.send(1, &syn);
    let mut out = None;
    for p in 2..=4 {
        let v = r.tx(p);
        if !v.is_empty() {
            out = Some((p, v[0].clone()));
        }
    }
    let (port, f) = out.expect("forwarded to a backend");
    let (s, d, sp, dp) = tuple(&f);
    assert_eq!((s, sp), (pod_ip(1), 40000), "client address kept");
    assert_eq!((d, dp), (pod_ip(port), 8080));
    assert_eq!(&f[0..6], &pod_mac(port));
    // Same flow, same backend.
    let ack = tcp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        vip(0),
        40000,
        80,
        ACK,
        10,
    );
    r.send(1, &ack);
    assert_eq!(tuple(&r.one(port)).1, pod_ip(port));
    // Reply: source restored to the VIP.
    let synack = tcp_frame(
        host_mac(port),
        pod_mac(port),
        pod_ip(port),
        pod_ip(1),
        8080,
        40000,
        SYN | ACK,
        0,
    );
    r.send(port, &synack);
    let back = r.one(1);
    assert_eq!(tuple(&back), (vip(0), pod_ip(1), 80, 40000));
    assert_eq!(r.errors("ip4-nat", "service-sessions"), 1);
    let state = |r: &Rig| {
        let ct = r.sessions();
        let ct = ct.lock().unwrap();
        assert_eq!(ct.len(), 1);
        let s = *ct.iter().next().unwrap().1;
        (s.state, s.assured)
    };
    // The backend's SYN-ACK alone does not establish the connection (the early ACK
    // before it did not fit SYN_SENT and changed nothing).
    assert_eq!(state(&r), (ferroplane_tables::CtState::SynRecv, false));
    // The client's ACK completes the handshake.
    r.send(1, &ack);
    assert_eq!(tuple(&r.one(port)).1, pod_ip(port));
    assert_eq!(state(&r), (ferroplane_tables::CtState::Established, true));
}

#[test]
fn cluster_ip_udp_and_spread() {
    let mut r = rig(
        4,
        vec![udp_service("default/dns", vip(1), three_local())],
        nat_default(),
    );
    let mut per: HashMap<u16, u32> = HashMap::new();
    for sport in 0..3000u16 {
        let f = udp_frame_ports(
            host_mac(1),
            pod_mac(1),
            pod_ip(1),
            vip(1),
            10000 + sport,
            53,
            8,
        );
        r.send(1, &f);
        for p in 2..=4 {
            for o in r.tx(p) {
                let (_, d, _, dp) = tuple(&o);
                assert_eq!((d, dp), (pod_ip(p), 8080));
                *per.entry(p).or_default() += 1;
            }
        }
    }
    assert_eq!(per.values().sum::<u32>(), 3000);
    for (p, n) in &per {
        assert!((850..=1150).contains(n), "backend {p} got {n} of 3000");
    }
    // A reply from the backend comes back from the VIP.
    let sport = 10000;
    let f = udp_frame_ports(host_mac(1), pod_mac(1), pod_ip(1), vip(1), sport, 53, 8);
    r.send(1, &f);
    let (p, _) = (2..=4u16)
        .map(|p| (p, r.tx(p)))
        .find(|(_, v)| !v.is_empty())
        .unwrap();
    let reply = udp_frame_ports(
        host_mac(p),
        pod_mac(p),
        pod_ip(p),
        pod_ip(1),
        8080,
        sport,
        8,
    );
    r.send(p, &reply);
    assert_eq!(tuple(&r.one(1)), (vip(1), pod_ip(1), 53, sport));
}

#[test]
fn no_endpoints_reject_tcp_rst_and_udp_port_unreachable() {
    let mut r = rig(
        2,
        vec![
            tcp_service("default/empty", vip(2), None, vec![]),
            udp_service("default/empty-dns", vip(3), vec![]),
        ],
        nat_default(),
    );
    let syn = tcp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        vip(2),
        40001,
        80,
        SYN,
        0,
    );
    r.send(1, &syn);
    let rst = r.one(1);
    let ip = Ipv4Packet::new_checked(&rst[14..]).unwrap();
    assert_eq!(tuple(&rst), (vip(2), pod_ip(1), 80, 40001));
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(t.flags() & 0x14, 0x14, "RST+ACK");
    assert_eq!(t.ack_number(), 1001);
    let udp = udp_frame_ports(host_mac(1), pod_mac(1), pod_ip(1), vip(3), 5000, 53, 8);
    r.send(1, &udp);
    let icmp = r.one(1);
    let ip = Ipv4Packet::new_checked(&icmp[14..]).unwrap();
    assert_eq!(ip.protocol().0, 1);
    assert_eq!(ip.dst_addr(), pod_ip(1));
    assert_eq!(&ip.payload()[0..2], &[3, 3], "port unreachable");
    assert_eq!(r.errors("ip4-nat", "no-endpoints"), 2);
}

#[test]
fn node_port_local_keeps_client_and_cluster_snat_for_remote() {
    let remote: Ipv4Addr = "10.244.2.10".parse().unwrap();
    let client: Ipv4Addr = "198.51.100.7".parse().unwrap();
    let mut local = tcp_service(
        "default/local",
        vip(4),
        Some(30080),
        vec![backend(pod_ip(2), 8080, true), backend(remote, 8080, false)],
    );
    local.external_local = true;
    let cluster = tcp_service(
        "default/cluster",
        vip(5),
        Some(30081),
        vec![backend(remote, 8080, false)],
    );
    let mut only_remote = tcp_service(
        "default/only-remote",
        vip(6),
        Some(30082),
        vec![backend(remote, 8080, false)],
    );
    only_remote.external_local = true;
    let mut r = rig(2, vec![local, cluster, only_remote], nat_default());
    // eTP=Local: the local backend, client address preserved.
    let syn = tcp_frame(UPLINK_MAC, ROUTER_MAC, client, NODE_IP, 1234, 30080, SYN, 0);
    r.send(0, &syn);
    assert_eq!(tuple(&r.one(2)), (client, pod_ip(2), 1234, 8080));
    let back = tcp_frame(
        host_mac(2),
        pod_mac(2),
        pod_ip(2),
        client,
        8080,
        1234,
        SYN | ACK,
        0,
    );
    r.send(2, &back);
    assert_eq!(tuple(&r.one(0)), (NODE_IP, client, 30080, 1234));
    // The same service from a pod (internal policy Cluster) may use the remote one too.
    // eTP=Cluster to a remote backend: SNAT to the node address from the SNAT range.
    let syn = tcp_frame(UPLINK_MAC, ROUTER_MAC, client, NODE_IP, 1235, 30081, SYN, 0);
    r.send(0, &syn);
    let out = r.one(0);
    let (s, d, sp, dp) = tuple(&out);
    assert_eq!((s, d, dp), (NODE_IP, remote, 8080));
    assert!((61000..=65535).contains(&sp), "snat port {sp}");
    assert_eq!(r.errors("ip4-nat", "external-snat"), 1);
    let back = tcp_frame(
        UPLINK_MAC,
        ROUTER_MAC,
        remote,
        NODE_IP,
        8080,
        sp,
        SYN | ACK,
        0,
    );
    r.send(0, &back);
    assert_eq!(tuple(&r.one(0)), (NODE_IP, client, 30081, 1235));
    // eTP=Local without a local endpoint: dropped and counted.
    let syn = tcp_frame(UPLINK_MAC, ROUTER_MAC, client, NODE_IP, 1236, 30082, SYN, 0);
    r.send(0, &syn);
    assert!(r.tx(0).is_empty() && r.tx(1).is_empty() && r.tx(2).is_empty());
    assert_eq!(r.errors("ip4-nat", "no-local-endpoints"), 1);
}

#[test]
fn hairpin_snat_to_the_vip() {
    let mut r = rig(
        1,
        vec![tcp_service(
            "default/self",
            vip(7),
            None,
            vec![backend(pod_ip(1), 8080, true)],
        )],
        nat_default(),
    );
    let syn = tcp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        vip(7),
        40002,
        80,
        SYN,
        0,
    );
    r.send(1, &syn);
    let (s, d, sp, dp) = tuple(&r.one(1));
    assert_eq!((s, d, dp), (vip(7), pod_ip(1), 8080));
    let back = tcp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        vip(7),
        8080,
        sp,
        SYN | ACK,
        0,
    );
    r.send(1, &back);
    assert_eq!(tuple(&r.one(1)), (vip(7), pod_ip(1), 80, 40002));
    assert_eq!(r.errors("ip4-nat", "hairpin"), 1);
}

#[test]
fn masquerade_outside_the_cluster_only() {
    let mut nat = nat_default();
    nat.masquerade = true;
    let mut r = rig(2, vec![], nat);
    let ext: Ipv4Addr = "8.8.8.8".parse().unwrap();
    let mut ports = std::collections::HashSet::new();
    for i in 0..2u16 {
        for sport in [5000u16, 5001] {
            let syn = tcp_frame(
                host_mac(1 + i),
                pod_mac(1 + i),
                pod_ip(1 + i),
                ext,
                sport,
                443,
                SYN,
                0,
            );
            r.send(1 + i, &syn);
            let (s, d, sp, dp) = tuple(&r.one(0));
            assert_eq!((s, d, dp), (NODE_IP, ext, 443));
            assert!(ports.insert(sp), "port {sp} allocated twice");
        }
    }
    // Reply restored.
    let syn = tcp_frame(host_mac(1), pod_mac(1), pod_ip(1), ext, 6000, 443, SYN, 0);
    r.send(1, &syn);
    let (_, _, sp, _) = tuple(&r.one(0));
    let back = tcp_frame(UPLINK_MAC, ROUTER_MAC, ext, NODE_IP, 443, sp, SYN | ACK, 0);
    r.send(0, &back);
    assert_eq!(tuple(&r.one(1)), (ext, pod_ip(1), 443, 6000));
    // Pod to pod is not translated.
    let f = tcp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        pod_ip(2),
        7000,
        80,
        SYN,
        0,
    );
    r.send(1, &f);
    assert_eq!(tuple(&r.one(2)), (pod_ip(1), pod_ip(2), 7000, 80));
    assert_eq!(r.errors("ip4-nat", "masquerade-sessions"), 5);
}

/// With masquerade on, a connection from outside the cluster to a pod (a router with a
/// route to the pod CIDR) is tracked from its first packet: the pod's answers keep its
/// address, TCP and UDP, while the pod's own connections to the same client are still
/// masqueraded.
#[test]
fn masquerade_leaves_replies_to_outside_connections_alone() {
    let mut nat = nat_default();
    nat.masquerade = true;
    let mut r = rig(2, vec![], nat);
    let client: Ipv4Addr = "198.51.100.7".parse().unwrap();
    // Outside -> pod, TCP: SYN delivered untranslated, SYN-ACK and data back untranslated.
    let syn = tcp_frame(
        UPLINK_MAC,
        ROUTER_MAC,
        client,
        pod_ip(1),
        1234,
        8080,
        SYN,
        0,
    );
    r.send(0, &syn);
    assert_eq!(tuple(&r.one(1)), (client, pod_ip(1), 1234, 8080));
    for flags in [SYN | ACK, ACK] {
        let back = tcp_frame(
            host_mac(1),
            pod_mac(1),
            pod_ip(1),
            client,
            8080,
            1234,
            flags,
            10,
        );
        r.send(1, &back);
        assert_eq!(
            tuple(&r.one(0)),
            (pod_ip(1), client, 8080, 1234),
            "reply keeps the pod's address"
        );
        let ack = tcp_frame(
            UPLINK_MAC,
            ROUTER_MAC,
            client,
            pod_ip(1),
            1234,
            8080,
            ACK,
            5,
        );
        r.send(0, &ack);
        assert_eq!(tuple(&r.one(1)), (client, pod_ip(1), 1234, 8080));
    }
    // Outside -> pod, UDP: the answer keeps the pod's address too.
    let q = udp_frame_ports(UPLINK_MAC, ROUTER_MAC, client, pod_ip(2), 5353, 53, 8);
    r.send(0, &q);
    assert_eq!(tuple(&r.one(2)), (client, pod_ip(2), 5353, 53));
    let a = udp_frame_ports(host_mac(2), pod_mac(2), pod_ip(2), client, 53, 5353, 8);
    r.send(2, &a);
    assert_eq!(tuple(&r.one(0)), (pod_ip(2), client, 53, 5353));
    assert_eq!(r.errors("ip4-nat", "tracked-sessions"), 2);
    assert_eq!(r.errors("ip4-nat", "masquerade-sessions"), 0);
    {
        let ct = r.sessions();
        let ct = ct.lock().unwrap();
        let kinds: Vec<_> = ct.iter().map(|(_, s)| s.nat.as_str()).collect();
        assert_eq!(kinds, ["none", "none"], "tracked untranslated");
    }
    // The pod's own connection to the same client (another port): masqueraded, and its
    // reply restored.
    let out = tcp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        client,
        40000,
        443,
        SYN,
        0,
    );
    r.send(1, &out);
    let (s, d, sp, dp) = tuple(&r.one(0));
    assert_eq!(
        (s, d, dp),
        (NODE_IP, client, 443),
        "pod-originated: masqueraded"
    );
    let back = tcp_frame(
        UPLINK_MAC,
        ROUTER_MAC,
        client,
        NODE_IP,
        443,
        sp,
        SYN | ACK,
        0,
    );
    r.send(0, &back);
    assert_eq!(tuple(&r.one(1)), (client, pod_ip(1), 443, 40000));
    let out = udp_frame_ports(host_mac(2), pod_mac(2), pod_ip(2), client, 5000, 53, 8);
    r.send(2, &out);
    let (s, d, _, dp) = tuple(&r.one(0));
    assert_eq!(
        (s, d, dp),
        (NODE_IP, client, 53),
        "pod-originated UDP: masqueraded"
    );
    assert_eq!(r.errors("ip4-nat", "masquerade-sessions"), 2);
    assert_eq!(r.errors("ip4-nat", "tracked-sessions"), 2);
}

/// Without masquerade nothing is tracked for routed traffic (it costs nothing), and traffic
/// from inside the cluster (a pod of another node) is not tracked even with masquerade on.
#[test]
fn routed_flows_are_tracked_only_when_their_replies_would_be_masqueraded() {
    let client: Ipv4Addr = "198.51.100.7".parse().unwrap();
    let other_pod: Ipv4Addr = "10.244.2.10".parse().unwrap();
    let mut r = rig(1, vec![], nat_default());
    let syn = tcp_frame(
        UPLINK_MAC,
        ROUTER_MAC,
        client,
        pod_ip(1),
        1234,
        8080,
        SYN,
        0,
    );
    r.send(0, &syn);
    assert_eq!(tuple(&r.one(1)), (client, pod_ip(1), 1234, 8080));
    assert!(r.sessions().lock().unwrap().is_empty());
    let mut nat = nat_default();
    nat.masquerade = true;
    let mut r = rig(1, vec![], nat);
    let syn = tcp_frame(
        UPLINK_MAC,
        ROUTER_MAC,
        other_pod,
        pod_ip(1),
        1234,
        8080,
        SYN,
        0,
    );
    r.send(0, &syn);
    assert_eq!(tuple(&r.one(1)), (other_pod, pod_ip(1), 1234, 8080));
    let back = tcp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        other_pod,
        8080,
        1234,
        SYN | ACK,
        0,
    );
    r.send(1, &back);
    assert_eq!(tuple(&r.one(0)), (pod_ip(1), other_pod, 8080, 1234));
    assert!(r.sessions().lock().unwrap().is_empty());
    assert_eq!(r.errors("ip4-nat", "tracked-sessions"), 0);
}

/// externalTrafficPolicy=Cluster NodePort to a backend on another node, with masquerade on
/// both nodes: the first node DNATs and SNATs the client's connection to its own address;
/// the backend's node must answer that address untranslated (it is outside clusterCIDRs:
/// masquerading the answer broke every such connection), and the first node restores it.
#[test]
fn node_port_to_a_remote_backend_with_masquerade_on_both_nodes() {
    let client: Ipv4Addr = "198.51.100.7".parse().unwrap();
    // Node 1 (this rig's node): the client's node port, the backend on node 2.
    let backend_ip: Ipv4Addr = "10.244.2.10".parse().unwrap();
    let mut nat = nat_default();
    nat.masquerade = true;
    for (proto, udp) in [("tcp", false), ("udp", true)] {
        let svc = if udp {
            let mut d = udp_service(
                "default/remote",
                vip(5),
                vec![backend(backend_ip, 8080, false)],
            );
            d.node_port = Some(30081);
            d
        } else {
            tcp_service(
                "default/remote",
                vip(5),
                Some(30081),
                vec![backend(backend_ip, 8080, false)],
            )
        };
        let mut first = rig(1, vec![svc], nat.clone());
        let frame = |src, dst, sport, dport, flags| {
            if udp {
                udp_frame_ports(UPLINK_MAC, ROUTER_MAC, src, dst, sport, dport, 8)
            } else {
                tcp_frame(UPLINK_MAC, ROUTER_MAC, src, dst, sport, dport, flags, 0)
            }
        };
        first.send(0, &frame(client, NODE_IP, 1235, 30081, SYN));
        let (s, d, sp, dp) = tuple(&first.one(0));
        assert_eq!(
            (s, d, dp),
            (NODE_IP, backend_ip, 8080),
            "{proto}: DNAT+SNAT"
        );
        // Node 2 (a second rig whose pod 1 is the backend): the SNATed connection arrives
        // from node 1's address; the backend's answer leaves with its own address.
        let mut second = rig(1, vec![], nat.clone());
        let first_node: Ipv4Addr = "192.168.101.2".parse().unwrap();
        second.send(0, &frame(first_node, pod_ip(1), sp, 8080, SYN));
        assert_eq!(tuple(&second.one(1)), (first_node, pod_ip(1), sp, 8080));
        let answer = if udp {
            udp_frame_ports(host_mac(1), pod_mac(1), pod_ip(1), first_node, 8080, sp, 8)
        } else {
            tcp_frame(
                host_mac(1),
                pod_mac(1),
                pod_ip(1),
                first_node,
                8080,
                sp,
                SYN | ACK,
                0,
            )
        };
        second.send(1, &answer);
        assert_eq!(
            tuple(&second.one(0)),
            (pod_ip(1), first_node, 8080, sp),
            "{proto}: the backend's answer is not masqueraded"
        );
        assert_eq!(second.errors("ip4-nat", "masquerade-sessions"), 0);
        // Back on node 1 (as it arrives: from the backend to node 1's SNAT port): restored.
        first.send(0, &frame(backend_ip, NODE_IP, 8080, sp, SYN | ACK));
        assert_eq!(
            tuple(&first.one(0)),
            (NODE_IP, client, 30081, 1235),
            "{proto}: restored"
        );
    }
}

#[test]
fn icmp_error_about_a_translated_flow_is_rewritten() {
    let mut r = rig(
        2,
        vec![udp_service(
            "default/dns",
            vip(8),
            vec![backend(pod_ip(2), 5353, true)],
        )],
        nat_default(),
    );
    let f = udp_frame_ports(host_mac(1), pod_mac(1), pod_ip(1), vip(8), 5000, 53, 8);
    r.send(1, &f);
    let fwd = r.one(2);
    // The backend answers port unreachable quoting the translated datagram.
    let quote = &fwd[14..14 + 28];
    let mut l3 = vec![0u8; 20 + 8 + 28];
    l3[0] = 0x45;
    let n = l3.len() as u16;
    l3[2..4].copy_from_slice(&n.to_be_bytes());
    l3[8] = 64;
    l3[9] = 1;
    l3[12..16].copy_from_slice(&pod_ip(2).octets());
    l3[16..20].copy_from_slice(&pod_ip(1).octets());
    l3[20] = 3;
    l3[21] = 3;
    l3[28..].copy_from_slice(quote);
    let c = checksum::checksum(&l3[20..]);
    l3[22..24].copy_from_slice(&c.to_be_bytes());
    let c = checksum::checksum(&l3[..20]);
    l3[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&host_mac(2));
    frame.extend_from_slice(&pod_mac(2));
    frame.extend_from_slice(&[8, 0]);
    frame.extend_from_slice(&l3);
    r.send(2, &frame);
    let out = r.one(1);
    let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.src_addr(), vip(8), "outer source is the VIP");
    assert_eq!(ip.dst_addr(), pod_ip(1));
    let icmp = ip.payload();
    assert_eq!(checksum::checksum(icmp), 0, "icmp checksum");
    let inner = Ipv4Packet::new_checked(&icmp[8..])
        .unwrap_or_else(|_| Ipv4Packet::new_unchecked(&icmp[8..]));
    assert!(inner.verify_checksum(), "inner checksum");
    assert_eq!(inner.src_addr(), pod_ip(1));
    assert_eq!(inner.dst_addr(), vip(8));
    assert_eq!(&icmp[8 + 20 + 2..8 + 20 + 4], &53u16.to_be_bytes());
    assert_eq!(r.errors("ip4-nat", "icmp-error-translated"), 1);
}

#[test]
fn client_ip_affinity_pins() {
    let mut def = tcp_service("default/sticky", vip(9), None, three_local());
    def.affinity_secs = Some(60);
    let mut r = rig(4, vec![def], nat_default());
    let mut seen = std::collections::HashSet::new();
    for sport in 0..50u16 {
        let syn = tcp_frame(
            host_mac(1),
            pod_mac(1),
            pod_ip(1),
            vip(9),
            30000 + sport,
            80,
            SYN,
            0,
        );
        r.send(1, &syn);
        for p in 2..=4 {
            if !r.tx(p).is_empty() {
                seen.insert(p);
            }
        }
    }
    assert_eq!(
        seen.len(),
        1,
        "all connections of one client on one backend"
    );
}

/// The backend port a client SYN was forwarded to (one frame), or None when dropped.
fn forwarded(r: &mut Rig) -> Option<u16> {
    let mut to = None;
    for p in 0..=4 {
        let v = r.tx(p);
        assert!(v.len() <= 1, "one frame");
        if !v.is_empty() {
            to = Some(p);
        }
    }
    to
}

/// A complete handshake from pod 1's `sport` to `vip(0)`: the backend's port.
fn handshake(r: &mut Rig, sport: u16) -> Option<u16> {
    let c = |flags| {
        tcp_frame(
            host_mac(1),
            pod_mac(1),
            pod_ip(1),
            vip(0),
            sport,
            80,
            flags,
            0,
        )
    };
    r.send(1, &c(SYN));
    let port = forwarded(r)?;
    let synack = tcp_frame(
        host_mac(port),
        pod_mac(port),
        pod_ip(port),
        pod_ip(1),
        8080,
        sport,
        SYN | ACK,
        0,
    );
    r.send(port, &synack);
    assert_eq!(r.tx(1).len(), 1, "SYN-ACK back to the client");
    r.send(1, &c(ACK));
    assert_eq!(r.tx(port).len(), 1, "ACK to the backend");
    Some(port)
}

#[test]
fn full_table_of_established_connections_refuses_new_flows() {
    let mut nat = nat_default();
    nat.conntrack_max = 8;
    let mut r = rig(
        4,
        vec![tcp_service("default/web", vip(0), None, three_local())],
        nat,
    );
    let ports: Vec<u16> = (0..8u16)
        .map(|i| handshake(&mut r, 20000 + i).expect("within the limit"))
        .collect();
    assert!(handshake(&mut r, 29999).is_none(), "new flow dropped");
    assert_eq!(r.errors("ip4-nat", "conntrack-full"), 1);
    assert_eq!(r.errors("ip4-nat", "conntrack-early-drop"), 0);
    let ack = tcp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        vip(0),
        20000,
        80,
        ACK,
        10,
    );
    r.send(1, &ack);
    assert_eq!(r.tx(ports[0]).len(), 1, "established flow still forwarded");
}

#[test]
fn node_port_syn_flood_evicts_half_open_sessions_not_established_ones() {
    const MAX: usize = 64;
    let client: Ipv4Addr = "198.51.100.7".parse().unwrap();
    let svc = tcp_service(
        "default/web",
        vip(0),
        Some(30080),
        vec![backend(pod_ip(2), 8080, true)],
    );
    let mut nat = nat_default();
    nat.conntrack_max = MAX;
    let mut r = rig(2, vec![svc], nat);
    let from_client = |src: Ipv4Addr, sport: u16, flags: u8, payload: usize| {
        tcp_frame(
            UPLINK_MAC, ROUTER_MAC, src, NODE_IP, sport, 30080, flags, payload,
        )
    };
    let from_backend = |dst: Ipv4Addr, dport: u16, flags: u8, payload: usize| {
        tcp_frame(
            host_mac(2),
            pod_mac(2),
            pod_ip(2),
            dst,
            8080,
            dport,
            flags,
            payload,
        )
    };
    // One established connection through the NodePort.
    let connect = |r: &mut Rig, sport: u16| {
        r.send(0, &from_client(client, sport, SYN, 0));
        assert_eq!(tuple(&r.one(2)), (client, pod_ip(2), sport, 8080));
        r.send(2, &from_backend(client, sport, SYN | ACK, 0));
        assert_eq!(tuple(&r.one(0)), (NODE_IP, client, 30080, sport));
        r.send(0, &from_client(client, sport, ACK, 0));
        assert_eq!(r.one(2).len(), from_client(client, sport, ACK, 0).len());
    };
    connect(&mut r, 5000);
    // The flood: SYNs from 20 * MAX random sources, each answered by the backend, none
    // acknowledged. The established connection talks in the middle of it, and a new
    // connection is made.
    let mut x: u32 = 0x1234_5678;
    let flood = 20 * MAX as u32;
    for i in 0..flood {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let src = Ipv4Addr::from(0x6440_0000 | (x & 0x003f_ffff));
        let sport = 1024 + (x >> 22) as u16;
        r.send(0, &from_client(src, sport, SYN, 0));
        let Some(f) = r.tx(2).pop() else {
            panic!("SYN {i} dropped: the table must make room");
        };
        assert_eq!(tuple(&f).0, src);
        r.send(2, &from_backend(src, sport, SYN | ACK, 0));
        assert_eq!(r.tx(0).len(), 1, "SYN-ACK out");
        if i % 256 == 0 {
            r.send(0, &from_client(client, 5000, ACK | 0x08, 10));
            assert_eq!(
                r.tx(2).len(),
                1,
                "established flow forwarded during the flood"
            );
            r.send(2, &from_backend(client, 5000, ACK | 0x08, 10));
            assert_eq!(r.tx(0).len(), 1, "and its replies");
        }
        if i == flood / 2 {
            connect(&mut r, 5001);
        }
    }
    assert_eq!(r.errors("ip4-nat", "conntrack-full"), 0);
    let drops = r.errors("ip4-nat", "conntrack-early-drop");
    assert_eq!(
        drops,
        u64::from(flood) + 2 - MAX as u64,
        "one eviction per SYN"
    );
    let ct = r.sessions();
    let ct = ct.lock().unwrap();
    assert_eq!(ct.len(), MAX);
    let established: Vec<u16> = ct
        .iter()
        .filter(|(_, s)| s.is_established())
        .map(|(_, s)| s.orig.sport)
        .collect();
    assert_eq!(established.len(), 2, "both connections, nothing else");
    assert!(established.contains(&5000) && established.contains(&5001));
    assert!(ct
        .iter()
        .all(|(_, s)| s.is_established() || s.state == ferroplane_tables::CtState::SynRecv));
}

#[test]
fn backend_removal_moves_only_its_flows() {
    let backends = three_local();
    let mut r = rig(
        4,
        vec![udp_service("default/dns", vip(1), backends.clone())],
        nat_default(),
    );
    let mut before = HashMap::new();
    for sport in 0..600u16 {
        let f = udp_frame_ports(
            host_mac(1),
            pod_mac(1),
            pod_ip(1),
            vip(1),
            10000 + sport,
            53,
            8,
        );
        r.send(1, &f);
        for p in 2..=4 {
            if !r.tx(p).is_empty() {
                before.insert(sport, p);
            }
        }
    }
    // Remove backend on pod 3; clear sessions so new packets pick again.
    let prev = r.shared.load();
    let defs = vec![udp_service(
        "default/dns",
        vip(1),
        backends
            .iter()
            .filter(|b| b.addr != pod_ip(3))
            .cloned()
            .collect(),
    )];
    let table =
        ferroplane_tables::ServiceTable::build(defs, vec![NODE_IP], 65537, Some(&prev.services))
            .unwrap();
    r.shared.update(|s| s.services = Arc::new(table));
    {
        let ct = r.sessions();
        let mut ct = ct.lock().unwrap();
        let ids: Vec<u32> = ct.iter().map(|(i, _)| i).collect();
        for i in ids {
            ct.remove(i);
        }
    }
    let mut moved_survivors = 0;
    for sport in 0..600u16 {
        let f = udp_frame_ports(
            host_mac(1),
            pod_mac(1),
            pod_ip(1),
            vip(1),
            10000 + sport,
            53,
            8,
        );
        r.send(1, &f);
        let now = (2..=4).find(|&p| !r.tx(p).is_empty()).unwrap();
        assert_ne!(now, 3);
        if before[&sport] != 3 && before[&sport] != now {
            moved_survivors += 1;
        }
    }
    assert!(
        moved_survivors <= 12,
        "{moved_survivors} flows of surviving backends moved"
    );
}

/// With the flow export on, a service connection is reported for the XDP flow cache in both
/// directions with its translation: the client's tuple (to the VIP) mapped to the backend,
/// and the backend's reply mapped back to the VIP.
#[test]
fn translated_flows_are_reported_with_their_tuples() {
    let mut r = rig(
        4,
        vec![tcp_service("default/web", vip(0), None, three_local())],
        nat_default(),
    );
    r.shared.update(|s| s.flow_export = true);
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    r.worker.set_flow_reports(tx);
    let syn = tcp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        vip(0),
        40000,
        80,
        SYN,
        0,
    );
    r.send(1, &syn);
    let port = (2..=4)
        .find(|p| !r.tx(*p).is_empty())
        .expect("forwarded to a backend");
    let synack = tcp_frame(
        host_mac(port),
        pod_mac(port),
        pod_ip(port),
        pod_ip(1),
        8080,
        40000,
        SYN | ACK,
        0,
    );
    r.send(port, &synack);
    assert_eq!(r.one(1).len(), synack.len());
    // The handshake is not complete: nothing for the flow cache yet.
    assert_eq!(rx.try_iter().count(), 0);
    let client = |flags| {
        tcp_frame(
            host_mac(1),
            pod_mac(1),
            pod_ip(1),
            vip(0),
            40000,
            80,
            flags,
            0,
        )
    };
    r.send(1, &client(ACK));
    assert_eq!(r.one(port).len(), synack.len());
    let data = tcp_frame(
        host_mac(port),
        pod_mac(port),
        pod_ip(port),
        pod_ip(1),
        8080,
        40000,
        ACK,
        10,
    );
    r.send(port, &data);
    assert_eq!(r.one(1).len(), data.len());
    let flows: Vec<_> = rx.try_iter().collect();
    assert_eq!(flows.len(), 2, "{flows:?}");
    let fwd = flows[0];
    assert_eq!(
        (fwd.src, fwd.dst, fwd.sport, fwd.dport, fwd.proto),
        (pod_ip(1), vip(0), 40000, 80, 6)
    );
    assert_eq!(fwd.nat, Some((pod_ip(1), pod_ip(port), 40000, 8080)));
    assert_eq!(fwd.dst_mac, pod_mac(port));
    let back = flows[1];
    assert_eq!(
        (back.src, back.dst, back.sport, back.dport),
        (pod_ip(port), pod_ip(1), 8080, 40000)
    );
    assert_eq!(back.nat, Some((vip(0), pod_ip(1), 80, 40000)));
}
