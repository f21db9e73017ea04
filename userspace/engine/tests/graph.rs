//! The foundation graph on the memory backend: forwarding, ARP, errors, ICMP.

use std::sync::mpsc;
use std::sync::Arc;

use ferroplane_engine::testutil::*;
use ferroplane_engine::{Shared, Worker, WorkerControl};
use ferroplane_io::MemIo;
use ferroplane_wire::{checksum, Ipv4Packet};

struct Rig {
    worker: Worker<MemIo>,
    info: ferroplane_engine::graph::GraphInfo,
}

fn rig(pods: u16) -> Rig {
    let io = MemIo::new(1024, 2048, pods as usize + 1);
    let shared = Arc::new(Shared::new(node_snapshot(pods, 0)));
    let worker = Worker::new(io, shared, Arc::new(WorkerControl::default())).unwrap();
    let info = worker.graph_info();
    Rig { worker, info }
}

impl Rig {
    fn send(&mut self, port: u16, frame: &[u8]) {
        assert!(self.worker.io_mut().inject(port, frame));
        self.worker.poll().unwrap();
    }
    fn tx(&mut self, port: u16) -> Vec<Vec<u8>> {
        self.worker.io_mut().take_tx(port)
    }
    fn errors(&self, node: &str, reason: &str) -> u64 {
        let code = self
            .info
            .error_code(node, reason)
            .unwrap_or_else(|| panic!("no error {node}: {reason}"));
        self.worker.stats().errors[code as usize].get()
    }
}

#[test]
fn pod_to_pod_is_rewritten_and_ttl_decremented() {
    let mut r = rig(2);
    let f = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 64, 100);
    r.send(1, &f);
    let out = r.tx(2);
    assert_eq!(out.len(), 1);
    let o = &out[0];
    assert_eq!(&o[0..6], &pod_mac(2));
    assert_eq!(&o[6..12], &host_mac(2));
    let ip = Ipv4Packet::new_checked(&o[14..]).unwrap();
    assert_eq!(ip.ttl(), 63);
    assert!(ip.verify_checksum());
    assert_eq!(&o[14 + 20..], &f[14 + 20..], "payload unchanged");
    assert!(r.tx(0).is_empty() && r.tx(1).is_empty());
}

#[test]
fn pod_to_outside_goes_to_router() {
    let mut r = rig(1);
    let f = udp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        "8.8.4.4".parse().unwrap(),
        64,
        10,
    );
    r.send(1, &f);
    let out = r.tx(0);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][0..6], &ROUTER_MAC);
    assert_eq!(&out[0][6..12], &UPLINK_MAC);
}

#[test]
fn router_to_pod() {
    let mut r = rig(1);
    let f = udp_frame(UPLINK_MAC, ROUTER_MAC, ROUTER_IP, pod_ip(1), 64, 10);
    r.send(0, &f);
    let out = r.tx(1);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][0..6], &pod_mac(1));
}

#[test]
fn arp_for_gateway_is_answered() {
    let mut r = rig(1);
    let req = arp_request(pod_mac(1), pod_ip(1), ferroplane_engine::POD_GATEWAY);
    r.send(1, &req);
    let out = r.tx(1);
    assert_eq!(out.len(), 1);
    let a = &out[0];
    assert_eq!(&a[0..6], &pod_mac(1));
    assert_eq!(&a[6..12], &host_mac(1));
    assert_eq!(&a[14 + 6..14 + 8], &2u16.to_be_bytes(), "reply");
    assert_eq!(&a[14 + 8..14 + 14], &host_mac(1), "sender hw = gateway mac");
    assert_eq!(&a[14 + 14..14 + 18], &[169, 254, 1, 1]);
    assert_eq!(&a[14 + 18..14 + 24], &pod_mac(1));
    assert_eq!(&a[14 + 24..14 + 28], &pod_ip(1).octets());
    assert_eq!(r.errors("arp-input", "replied"), 1);
    // DAD probe for its own address is not answered.
    let dad = arp_request(pod_mac(1), pod_ip(1), pod_ip(1));
    r.send(1, &dad);
    assert!(r.tx(1).is_empty());
    assert_eq!(r.errors("arp-input", "own-address"), 1);
}

#[test]
fn malformed_frames_are_counted_and_dropped() {
    let mut r = rig(2);
    let good = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 64, 20);

    r.send(1, &good[..10]);
    assert_eq!(r.errors("ethernet-input", "truncated"), 1);

    r.send(1, &good[..14 + 12]);
    assert_eq!(r.errors("ip4-input", "truncated"), 1);

    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43;
    r.send(1, &bad_ihl);
    assert_eq!(r.errors("ip4-input", "bad-header-length"), 1);

    let mut bad_ver = good.clone();
    bad_ver[14] = 0x65;
    r.send(1, &bad_ver);
    assert_eq!(r.errors("ip4-input", "bad-version"), 1);

    let mut bad_sum = good.clone();
    bad_sum[14 + 10] ^= 0xff;
    r.send(1, &bad_sum);
    assert_eq!(r.errors("ip4-input", "bad-checksum"), 1);

    let mut bad_len = good.clone();
    bad_len[14 + 2..14 + 4].copy_from_slice(&2000u16.to_be_bytes());
    let c = {
        bad_len[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        checksum::checksum(&bad_len[14..34])
    };
    bad_len[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    r.send(1, &bad_len);
    assert_eq!(r.errors("ip4-input", "truncated"), 2);

    let mut ipv6 = good.clone();
    ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    r.send(1, &ipv6);
    assert_eq!(r.errors("ethernet-input", "unknown-ethertype"), 1);

    let mut other_mac = good.clone();
    other_mac[0..6].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
    r.send(1, &other_mac);
    assert_eq!(r.errors("ethernet-input", "not-for-us"), 1);

    assert!(r.tx(2).is_empty(), "nothing malformed forwarded");
    // Every byte length of a truncated frame is handled without panicking.
    for len in 0..good.len() {
        r.send(1, &good[..len]);
    }
    r.tx(2);
}

#[test]
fn ttl_expiry_returns_time_exceeded() {
    let mut r = rig(2);
    let f = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 1, 20);
    r.send(1, &f);
    assert!(r.tx(2).is_empty());
    let back = r.tx(1);
    assert_eq!(back.len(), 1, "ICMP error goes back to the sender's port");
    let o = &back[0];
    assert_eq!(&o[0..6], &pod_mac(1));
    let ip = Ipv4Packet::new_checked(&o[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.protocol().0, 1);
    assert_eq!(ip.src_addr(), NODE_IP);
    assert_eq!(ip.dst_addr(), pod_ip(1));
    let icmp = &o[14 + 20..];
    assert_eq!(icmp[0], 11, "time exceeded");
    assert_eq!(icmp[1], 0);
    assert_eq!(checksum::checksum(icmp), 0, "ICMP checksum valid");
    assert_eq!(
        &icmp[8..8 + 20 + 8],
        &f[14..14 + 28],
        "quotes header + 8 bytes"
    );
    assert_eq!(r.errors("ip4-rewrite", "ttl-expired"), 1);
    assert_eq!(r.errors("ip4-icmp-error", "sent"), 1);
}

#[test]
fn df_packet_over_mtu_gets_frag_needed() {
    let mut r = rig(2);
    // Pod MTU is 1500: a 1600-byte IP packet with DF.
    let f = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 64, 1572);
    r.send(1, &f);
    assert!(r.tx(2).is_empty());
    let back = r.tx(1);
    assert_eq!(back.len(), 1);
    let icmp = &back[0][14 + 20..];
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1500);
}

#[test]
fn no_icmp_error_about_icmp_errors() {
    let mut r = rig(2);
    let mut f = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 1, 20);
    f[14 + 9] = 1; // ICMP
    f[14 + 20] = 3; // destination unreachable
    f[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&f[14..34]);
    f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    r.send(1, &f);
    assert!(r.tx(1).is_empty() && r.tx(2).is_empty());
    assert_eq!(r.errors("ip4-icmp-error", "suppressed"), 1);
}

#[test]
fn unresolved_neighbour_is_reported_once() {
    let mut r = rig(1);
    let (tx, rx) = mpsc::channel();
    r.worker.set_miss_reports(tx);
    let dst = "192.168.100.77".parse().unwrap();
    let f = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), dst, 64, 10);
    r.send(1, &f);
    r.send(1, &f);
    assert_eq!(r.errors("ip4-lookup", "neighbour-miss"), 2);
    assert_eq!(rx.try_recv().unwrap(), (0, dst));
    assert!(rx.try_recv().is_err(), "rate limited");
}

#[test]
fn traffic_to_node_is_punted() {
    let mut r = rig(1);
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    r.worker.set_punt(Box::new(move |p: &[u8]| {
        g.lock().unwrap().push(p.to_vec());
        true
    }));
    let f = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), NODE_IP, 64, 10);
    r.send(1, &f);
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0][..], &f[14..], "IPv4 packet without Ethernet header");
    assert_eq!(r.errors("host-punt", "punted"), 1);
}

#[test]
fn counters_and_trace() {
    let control = Arc::new(WorkerControl::default());
    control
        .trace_remaining
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let io = MemIo::new(1024, 2048, 3);
    let shared = Arc::new(Shared::new(node_snapshot(2, 0)));
    let mut w = Worker::new(io, shared, control.clone()).unwrap();
    let f = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 64, 10);
    for _ in 0..3 {
        assert!(w.io_mut().inject(1, &f));
    }
    w.poll().unwrap();
    assert_eq!(w.io_mut().take_tx(2).len(), 3);
    let stats = w.stats();
    let info = w.graph_info();
    let lookup = info.node_index("ip4-lookup").unwrap() as usize;
    assert_eq!(stats.nodes[lookup].packets.get(), 3);
    assert_eq!(stats.nodes[lookup].vectors.get(), 1);
    assert_eq!(stats.iface(1).rx_packets.get(), 3);
    assert_eq!(stats.iface(2).tx_packets.get(), 3);
    let traces = control.traces.lock().unwrap();
    let nodes: Vec<&str> = traces
        .iter()
        .map(|t| info.nodes[t.node as usize].name)
        .collect();
    assert_eq!(
        nodes,
        [
            "ethernet-input",
            "ethernet-input",
            "ip4-input",
            "ip4-lookup",
            "ip4-rewrite",
            "interface-output"
        ],
        "one packet traced through the graph"
    );
    assert!(traces.iter().all(|t| t.id == traces[0].id));
}

#[test]
fn trace_filter_picks_matching_packets_only() {
    let control = Arc::new(WorkerControl::default());
    *control.trace_filter.lock().unwrap() = Some((
        Some(1),
        ferroplane_engine::filter::PacketFilter::parse("dst 10.244.1.12").unwrap(),
    ));
    control
        .trace_remaining
        .store(5, std::sync::atomic::Ordering::Relaxed);
    let io = MemIo::new(1024, 2048, 3);
    let shared = Arc::new(Shared::new(node_snapshot(2, 0)));
    let mut w = Worker::new(io, shared, control.clone()).unwrap();
    let to_pod2 = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 64, 10);
    let to_router = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), ROUTER_IP, 64, 10);
    let from_pod2 = udp_frame(host_mac(2), pod_mac(2), pod_ip(2), pod_ip(1), 64, 10);
    for f in [&to_router, &to_pod2, &to_router] {
        assert!(w.io_mut().inject(1, f));
    }
    assert!(w.io_mut().inject(2, &from_pod2));
    w.poll().unwrap();
    let traces = control.traces.lock().unwrap();
    let ids: std::collections::BTreeSet<u32> = traces.iter().map(|t| t.id).collect();
    assert_eq!(ids.len(), 1, "only the packet to pod2 on sw_if 1 is traced");
    assert_eq!(
        control
            .trace_remaining
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

#[test]
fn capture_on_interface_and_at_error_drop() {
    use ferroplane_engine::worker::{CapturePoint, CaptureSpec};
    let control = Arc::new(WorkerControl::default());
    let io = MemIo::new(1024, 2048, 3);
    let shared = Arc::new(Shared::new(node_snapshot(2, 0)));
    let mut w = Worker::new(io, shared, control.clone()).unwrap();
    let info = w.graph_info();
    let f = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 64, 10);
    // Interface capture: rx on pod1's interface and tx on pod2's are both seen on their own.
    control.capture.lock().unwrap().spec = Some(CaptureSpec {
        point: CapturePoint::Interface(2),
        filter: Default::default(),
        remaining: 2,
        remaining_bytes: u64::MAX,
    });
    control
        .capture_active
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..3 {
        assert!(w.io_mut().inject(1, &f));
        w.poll().unwrap();
    }
    {
        let cap = control.capture.lock().unwrap();
        assert_eq!(cap.packets.len(), 2, "count honoured");
        assert_eq!(&cap.packets[0].data[0..6], &pod_mac(2), "as transmitted");
        assert!(cap.done());
    }
    assert!(!control
        .capture_active
        .load(std::sync::atomic::Ordering::Relaxed));
    // Node capture at error-drop: a bad checksum packet is seen there.
    let drop = info.node_index("error-drop").unwrap();
    {
        let mut cap = control.capture.lock().unwrap();
        cap.packets.clear();
        cap.spec = Some(CaptureSpec {
            point: CapturePoint::Node(drop),
            filter: Default::default(),
            remaining: 1,
            remaining_bytes: u64::MAX,
        });
    }
    control
        .capture_active
        .store(true, std::sync::atomic::Ordering::Relaxed);
    w.poll().unwrap(); // arms the tap
    let mut bad = f.clone();
    bad[14 + 10] ^= 0xff;
    assert!(w.io_mut().inject(1, &bad));
    w.poll().unwrap();
    w.poll().unwrap();
    let cap = control.capture.lock().unwrap();
    assert_eq!(cap.packets.len(), 1);
    assert_eq!(cap.packets[0].data, bad);
}

/// With the export on, a routed flow is reported once (as it arrived, with the output
/// interface's kernel index and the MACs written); packets the engine answers itself (ARP)
/// or drops are not; with the export off nothing is.
#[test]
fn forwarded_flows_are_reported_for_the_xdp_flow_cache() {
    let io = MemIo::new(1024, 2048, 3);
    let mut snap = node_snapshot(2, 0);
    snap.flow_export = true;
    let shared = Arc::new(Shared::new(snap));
    let mut worker = Worker::new(io, shared.clone(), Arc::new(WorkerControl::default())).unwrap();
    let (tx, rx) = mpsc::sync_channel(16);
    worker.set_flow_reports(tx);
    let f = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 64, 100);
    for _ in 0..3 {
        assert!(worker.io_mut().inject(1, &f));
        worker.poll().unwrap();
    }
    let flows: Vec<_> = rx.try_iter().collect();
    assert_eq!(flows.len(), 1, "one report per flow: {flows:?}");
    let fl = flows[0];
    assert_eq!((fl.src, fl.dst, fl.proto), (pod_ip(1), pod_ip(2), 17));
    let pod2 = shared.load().ifaces.get(2).map(|i| i.ifindex).unwrap();
    assert_eq!(fl.ifindex, pod2);
    assert_eq!(fl.dst_mac, pod_mac(2));
    assert_eq!(fl.src_mac, host_mac(2));
    assert_eq!(worker.io_mut().take_tx(2).len(), 3);

    // The reply direction is its own flow; an ARP request answered by the engine is none.
    let back = udp_frame(host_mac(2), pod_mac(2), pod_ip(2), pod_ip(1), 64, 100);
    assert!(worker.io_mut().inject(2, &back));
    let arp = arp_request(pod_mac(1), pod_ip(1), "169.254.1.1".parse().unwrap());
    assert!(worker.io_mut().inject(1, &arp));
    worker.poll().unwrap();
    let flows: Vec<_> = rx.try_iter().collect();
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!((flows[0].src, flows[0].dst), (pod_ip(2), pod_ip(1)));

    // Export off: nothing, even for a new flow.
    shared.update(|s| s.flow_export = false);
    let other = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 64, 200);
    let mut other = other;
    other[14 + 20..14 + 22].copy_from_slice(&4321u16.to_be_bytes());
    assert!(worker.io_mut().inject(1, &other));
    worker.poll().unwrap();
    assert_eq!(rx.try_iter().count(), 0);
}

/// A capture ends when the next frame would pass its byte budget, whatever its count.
#[test]
fn capture_byte_budget() {
    use ferroplane_engine::worker::{CapturePoint, CaptureSpec};
    let control = Arc::new(WorkerControl::default());
    let io = MemIo::new(1024, 2048, 3);
    let shared = Arc::new(Shared::new(node_snapshot(2, 0)));
    let mut w = Worker::new(io, shared, control.clone()).unwrap();
    let f = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 64, 10);
    let budget = 2 * f.len() as u64 + f.len() as u64 / 2;
    control.capture.lock().unwrap().spec = Some(CaptureSpec {
        point: CapturePoint::Interface(1),
        filter: Default::default(),
        remaining: 1000,
        remaining_bytes: budget,
    });
    control
        .capture_active
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..5 {
        assert!(w.io_mut().inject(1, &f));
        w.poll().unwrap();
    }
    let cap = control.capture.lock().unwrap();
    assert_eq!(cap.packets.len(), 2, "two frames fit the budget");
    let taken: usize = cap.packets.iter().map(|p| p.data.len()).sum();
    assert!(taken as u64 <= budget);
    assert!(cap.done(), "the budget ends the capture");
}
