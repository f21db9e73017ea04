//! Several workers on the memory backend: every packet of a connection, both directions,
//! before and after NAT, meets the session state of the worker that owns the connection
//! (`handoff`: the address hash, the flow directory for translated replies), and packets
//! for another worker's port are transmitted by that worker.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroplane_engine::handoff::{addr_owner, links, FlowDirectory, PortOwners};
use ferroplane_engine::testutil::*;
use ferroplane_engine::testutil_services::*;
use ferroplane_engine::worker::Command;
use ferroplane_engine::{Shared, Worker, WorkerControl};
use ferroplane_io::{MemIo, PacketIo};
use ferroplane_tables::{Conntrack, CtState, NatConfig, ServicePortDef};
use ferroplane_wire::Ipv4Packet;

const WORKERS: usize = 2;

/// Two workers stepped in turn on one thread; pod `i`'s port belongs to worker `i % 2`,
/// the uplink (port 0) to worker 0.
struct Group {
    workers: Vec<Worker<MemIo>>,
    owners: Arc<PortOwners>,
    dir: Arc<FlowDirectory>,
}

fn owner_of_port(port: u16) -> usize {
    port as usize % WORKERS
}

fn group(pods: u16, defs: Vec<ServicePortDef>, nat: NatConfig) -> Group {
    let shared = Arc::new(Shared::new(snapshot_with(pods, defs, nat)));
    let owners = Arc::new(PortOwners::default());
    for p in 0..=pods {
        owners.set(p, Some(owner_of_port(p)));
    }
    let dir = Arc::new(FlowDirectory::new(1 << 12));
    let workers = links(WORKERS, owners.clone(), dir.clone())
        .into_iter()
        .map(|link| {
            let io = MemIo::new(1024, 2048, pods as usize + 1);
            let mut w =
                Worker::new(io, shared.clone(), Arc::new(WorkerControl::default())).unwrap();
            w.set_handoff(link);
            w
        })
        .collect();
    Group {
        workers,
        owners,
        dir,
    }
}

impl Group {
    /// Receive `frame` on `port` (its owner's backend) and run the workers until idle.
    fn send(&mut self, port: u16, frame: &[u8]) {
        let w = self.owners.get(port).unwrap();
        assert!(self.workers[w].io_mut().inject(port, frame));
        self.settle();
    }

    fn settle(&mut self) {
        for _ in 0..16 {
            let mut busy = 0;
            for w in &mut self.workers {
                busy += w.poll().unwrap();
            }
            if busy == 0 {
                return;
            }
        }
        panic!("workers did not settle");
    }

    /// What was transmitted on `port` (by its owner).
    fn tx(&mut self, port: u16) -> Vec<Vec<u8>> {
        let w = self.owners.get(port).unwrap();
        // No other worker transmits on it.
        for (i, other) in self.workers.iter_mut().enumerate() {
            if i != w {
                assert_eq!(
                    other.io_mut().tx_count(port),
                    0,
                    "worker {i} sent on port {port}"
                );
            }
        }
        self.workers[w].io_mut().take_tx(port)
    }

    fn one(&mut self, port: u16) -> Vec<u8> {
        let mut v = self.tx(port);
        assert_eq!(v.len(), 1, "one frame on port {port}");
        v.remove(0)
    }

    fn sessions(&self, w: usize) -> Arc<Mutex<Conntrack>> {
        self.workers[w]
            .shared_state("ip4-nat")
            .unwrap()
            .downcast::<Mutex<Conntrack>>()
            .unwrap()
    }

    /// (worker, orig tuple, state) of every session.
    fn all_sessions(&self) -> Vec<(usize, ferroplane_tables::FlowKey, CtState)> {
        let mut v = Vec::new();
        for w in 0..WORKERS {
            let s = self.sessions(w);
            let ct = s.lock().unwrap();
            v.extend(ct.iter().map(|(_, s)| (w, s.orig, s.state)));
        }
        v
    }

    fn handoffs(&self) -> (u64, u64) {
        let sent = self
            .workers
            .iter()
            .map(|w| w.stats().handoff_sent.get())
            .sum();
        let drops = self
            .workers
            .iter()
            .map(|w| w.stats().handoff_drops.get())
            .sum();
        (sent, drops)
    }

    /// Frames waiting in any backend's pools are all back (no leak across workers).
    fn assert_no_leak(&mut self) {
        for (i, w) in self.workers.iter_mut().enumerate() {
            assert_eq!(w.io_mut().free_frames(), 1024, "worker {i} leaked frames");
        }
    }
}

fn tuple(f: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    assert!(ip.verify_checksum());
    let p = ip.payload();
    (
        ip.src_addr(),
        ip.dst_addr(),
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    )
}

/// Clients on both workers' pods connect to a ClusterIP whose backends are pods of both
/// workers: the handshake completes through DNAT and reverse NAT for every connection, each
/// session exists once, on the worker its client-to-VIP addresses hash to, and it is
/// established (both directions met the same state).
#[test]
fn service_connections_keep_one_session_across_workers() {
    let backends = (5..=8).map(|p| backend(pod_ip(p), 8080, true)).collect();
    let mut g = group(
        8,
        vec![tcp_service("default/web", vip(0), None, backends)],
        nat_default(),
    );
    let clients: Vec<u16> = (1..=4).collect();
    let want_owner = |c: u16| addr_owner(pod_ip(c), vip(0), WORKERS);
    let owners: std::collections::HashSet<usize> = clients.iter().map(|&c| want_owner(c)).collect();
    assert_eq!(
        owners.len(),
        WORKERS,
        "the clients must hash to both workers"
    );
    let mut conns = 0;
    for &c in &clients {
        for sport in 40000..40016u16 {
            let syn = tcp_frame(
                host_mac(c),
                pod_mac(c),
                pod_ip(c),
                vip(0),
                sport,
                80,
                SYN,
                0,
            );
            g.send(c, &syn);
            // The SYN reaches one backend, sent by the owner of that backend's port.
            let mut got = None;
            for b in 5..=8u16 {
                let tx = g.tx(b);
                if let Some(f) = tx.first() {
                    assert!(got.is_none(), "SYN sent twice");
                    got = Some((b, tuple(f)));
                }
            }
            let (b, (s, d, sp, dp)) = got.expect("SYN forwarded to a backend");
            assert_eq!((s, d, sp, dp), (pod_ip(c), pod_ip(b), sport, 8080));
            // The backend answers on its own port: reverse NAT on the client's worker.
            let synack = tcp_frame(
                host_mac(b),
                pod_mac(b),
                pod_ip(b),
                pod_ip(c),
                8080,
                sport,
                SYN | ACK,
                0,
            );
            g.send(b, &synack);
            assert_eq!(tuple(&g.one(c)), (vip(0), pod_ip(c), 80, sport));
            let ack = tcp_frame(
                host_mac(c),
                pod_mac(c),
                pod_ip(c),
                vip(0),
                sport,
                80,
                ACK,
                0,
            );
            g.send(c, &ack);
            assert_eq!(tuple(&g.one(b)), (pod_ip(c), pod_ip(b), sport, 8080));
            conns += 1;
        }
    }
    let sessions = g.all_sessions();
    assert_eq!(
        sessions.len(),
        conns,
        "one session per connection: {sessions:?}"
    );
    for (w, orig, state) in &sessions {
        let c = (1..=4u16).find(|&c| pod_ip(c) == orig.src).unwrap();
        assert_eq!(*w, want_owner(c), "session of {orig:?} on the wrong worker");
        assert_eq!(*state, CtState::Established, "{orig:?}");
    }
    let (sent, drops) = g.handoffs();
    assert!(
        sent > 0,
        "nothing was handed off: the test did not cross workers"
    );
    assert_eq!(drops, 0);
    assert!(!g.dir.is_empty(), "translated replies registered");
    g.assert_no_leak();
}

/// Masquerade: pods of both workers connect out through the uplink (worker 0's); the
/// outside's replies, addressed to the node, reach the worker owning each session through
/// the flow directory and are restored. When the sessions are gone, their directory entries
/// are removed.
#[test]
fn masqueraded_replies_reach_the_owner_and_entries_go_with_sessions() {
    let mut nat = nat_default();
    nat.masquerade = true;
    let mut g = group(8, vec![], nat);
    let ext: Ipv4Addr = "8.8.8.8".parse().unwrap();
    let owners: std::collections::HashSet<usize> = (1..=8)
        .map(|c| addr_owner(pod_ip(c), ext, WORKERS))
        .collect();
    assert_eq!(owners.len(), WORKERS, "the pods must hash to both workers");
    for c in 1..=8u16 {
        let syn = tcp_frame(
            host_mac(c),
            pod_mac(c),
            pod_ip(c),
            ext,
            5000 + c,
            443,
            SYN,
            0,
        );
        g.send(c, &syn);
        let (s, d, sp, dp) = tuple(&g.one(0));
        assert_eq!((s, d, dp), (NODE_IP, ext, 443));
        let back = tcp_frame(UPLINK_MAC, ROUTER_MAC, ext, NODE_IP, 443, sp, SYN | ACK, 0);
        g.send(0, &back);
        assert_eq!(tuple(&g.one(c)), (ext, pod_ip(c), 443, 5000 + c));
        // An ICMP error about the flow, from a router to the node: to the owner, translated.
        let mut icmp = vec![3u8, 4, 0, 0, 0, 0, 0x05, 0xdc];
        let quoted = tcp_frame(ROUTER_MAC, UPLINK_MAC, NODE_IP, ext, sp, 443, ACK, 0);
        icmp.extend_from_slice(&quoted[14..14 + 28]);
        let c16 = ferroplane_wire::checksum::checksum(&icmp);
        icmp[2..4].copy_from_slice(&c16.to_be_bytes());
        let err = icmp_frame(ROUTER_IP, NODE_IP, &icmp);
        g.send(0, &err);
        let out = g.one(c);
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (ROUTER_IP, pod_ip(c)),
            "ICMP error to pod {c}"
        );
    }
    let per_worker: Vec<usize> = (0..WORKERS)
        .map(|w| g.sessions(w).lock().unwrap().len())
        .collect();
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "sessions on every worker: {per_worker:?}"
    );
    let registered = g.dir.len();
    assert!(registered > 0);
    // Sessions end (cleared here as a timeout would): the workers drop their entries.
    for w in 0..WORKERS {
        let s = g.sessions(w);
        let mut ct = s.lock().unwrap();
        let ids: Vec<u32> = ct.iter().map(|(i, _)| i).collect();
        for i in ids {
            ct.remove(i);
        }
    }
    for _ in 0..4 {
        for w in &mut g.workers {
            w.poll().unwrap();
        }
    }
    assert!(
        g.dir.is_empty(),
        "{} of {registered} entries left",
        g.dir.len()
    );
    g.assert_no_leak();
}

/// An Ethernet + IPv4 frame carrying `icmp` from the router to the node's uplink.
fn icmp_frame(src: Ipv4Addr, dst: Ipv4Addr, icmp: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 34];
    f[0..6].copy_from_slice(&UPLINK_MAC);
    f[6..12].copy_from_slice(&ROUTER_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = ferroplane_wire::checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(icmp);
    f
}

/// Workers on their own threads ([`Worker::run`]): a UDP stream between pods of the two
/// workers in both directions is delivered whole, the sleeping receiver is woken by the
/// handoff, and each worker's counters show its part.
#[test]
fn threaded_workers_forward_between_each_others_ports() {
    let shared = Arc::new(Shared::new(snapshot_with(2, vec![], NatConfig::default())));
    let owners = Arc::new(PortOwners::default());
    for p in 0..=2u16 {
        owners.set(p, Some(owner_of_port(p)));
    }
    let dir = Arc::new(FlowDirectory::new(1024));
    let mut cmds = Vec::new();
    let mut controls = Vec::new();
    let mut stats = Vec::new();
    let mut threads = Vec::new();
    for link in links(WORKERS, owners.clone(), dir) {
        let (tx, rx) = mpsc::channel::<Command<MemIo>>();
        let (stx, srx) = mpsc::channel();
        let control = Arc::new(WorkerControl::default());
        let (s, c) = (shared.clone(), control.clone());
        threads.push(std::thread::spawn(move || {
            let mut io = MemIo::new(4096, 2048, 3);
            for p in 0..3 {
                io.set_tx_sink(p, true);
            }
            let mut w = Worker::new(io, s, c).unwrap();
            w.set_handoff(link);
            w.set_commands(rx);
            stx.send(w.stats()).unwrap();
            w.run().unwrap();
            w.into_io()
        }));
        cmds.push(tx);
        controls.push(control);
        stats.push(srx.recv().unwrap());
    }
    let a_to_b = udp_frame_ports(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        pod_ip(2),
        7000,
        7001,
        64,
    );
    let b_to_a = udp_frame_ports(
        host_mac(2),
        pod_mac(2),
        pod_ip(2),
        pod_ip(1),
        7001,
        7000,
        64,
    );
    const N: u64 = 2000;
    for _ in 0..N / 100 {
        let f = a_to_b.clone();
        cmds[1]
            .send(Box::new(move |io: &mut MemIo| {
                for _ in 0..100 {
                    assert!(io.inject(1, &f));
                }
            }))
            .unwrap();
        let f = b_to_a.clone();
        cmds[0]
            .send(Box::new(move |io: &mut MemIo| {
                for _ in 0..100 {
                    assert!(io.inject(2, &f));
                }
            }))
            .unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    // Pod 1's port is worker 1's, pod 2's worker 0's: every packet is sent by the other.
    let deadline = Instant::now() + Duration::from_secs(10);
    let tx = |s: &ferroplane_engine::WorkerStats, p: u16| s.iface(p).tx_packets.get();
    while Instant::now() < deadline
        && (tx(&stats[0], 2) + tx(&stats[1], 2) < N || tx(&stats[0], 1) + tx(&stats[1], 1) < N)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    for c in &controls {
        c.stop.store(true, Ordering::Relaxed);
    }
    let ios: Vec<MemIo> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(ios[0].tx_count(2), N, "pod 2's port, worker 0");
    assert_eq!(ios[1].tx_count(1), N, "pod 1's port, worker 1");
    assert_eq!(ios[0].tx_count(1) + ios[1].tx_count(2), 0);
    for (i, s) in stats.iter().enumerate() {
        assert_eq!(s.handoff_drops.get(), 0, "worker {i}");
        assert!(s.handoff_received.get() > 0, "worker {i} received handoffs");
    }
    // Per worker totals: each received what its port brought, both together forwarded
    // everything, and every packet crossed exactly once (to the flow's owner, or from it to
    // the output port's owner).
    let t: Vec<_> = stats.iter().map(|s| s.totals()).collect();
    assert_eq!((t[0].rx_packets, t[1].rx_packets), (N, N));
    assert_eq!(t[0].tx_packets + t[1].tx_packets, 2 * N);
    assert_eq!(t[0].handoff_sent + t[1].handoff_sent, 2 * N);
    assert_eq!(t[0].handoff_received + t[1].handoff_received, 2 * N);
    let mut ios = ios;
    for io in &mut ios {
        assert_eq!(io.free_frames(), 4096);
        let _ = io.num_ports();
    }
}

/// A fragmented reply of a DNAT session whose two addresses hash to another worker than the
/// session's: its first fragment finds the session's worker through the flow directory, the
/// following fragments (no ports) follow the first one there, and the client gets the
/// whole datagram translated back (source VIP:53, checksums right).
#[test]
fn fragmented_replies_follow_their_first_fragment() {
    // A client, a VIP and a backend such that the reply's addresses hash elsewhere.
    let (c, v, b) = (1..=4u16)
        .flat_map(|c| (0..64u32).map(move |v| (c, v)))
        .flat_map(|(c, v)| (5..=8u16).map(move |b| (c, v, b)))
        .find(|&(c, v, b)| {
            addr_owner(pod_ip(c), vip(v), WORKERS) != addr_owner(pod_ip(b), pod_ip(c), WORKERS)
        })
        .expect("a layout where the reply hashes to the other worker");
    let svc = udp_service("default/dns", vip(v), vec![backend(pod_ip(b), 5353, true)]);
    let mut g = group(8, vec![svc], nat_default());
    let q = udp_frame_ports(host_mac(c), pod_mac(c), pod_ip(c), vip(v), 33000, 53, 32);
    g.send(c, &q);
    assert_eq!(tuple(&g.one(b)), (pod_ip(c), pod_ip(b), 33000, 5353));
    let d = udp_datagram(
        (host_mac(b), pod_mac(b)),
        pod_ip(b),
        pod_ip(c),
        5353,
        33000,
        0x7777,
        4000,
        0,
    );
    let frags = ipv4_fragments(&d, 1480);
    assert_eq!(frags.len(), 3);
    for f in &frags {
        g.send(b, f);
    }
    let got = g.tx(c);
    assert_eq!(got.len(), 3, "every fragment delivered to the client");
    let mut data = Vec::new();
    for (i, f) in got.iter().enumerate() {
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (vip(v), pod_ip(c)),
            "fragment {i}"
        );
        let fo = u16::from_be_bytes([f[20], f[21]]);
        assert_eq!(
            usize::from(fo & 0x1fff) * 8,
            data.len(),
            "in order, contiguous"
        );
        data.extend_from_slice(ip.payload());
    }
    let u = ferroplane_wire::UdpPacket::new_checked(&data[..]).unwrap();
    assert!(
        u.verify_checksum(vip(v), pod_ip(c)),
        "udp checksum of the whole"
    );
    assert_eq!((u.src_port(), u.dst_port()), (53, 33000));
    assert_eq!(u.payload().len(), 4000);
    assert!(u
        .payload()
        .iter()
        .enumerate()
        .all(|(i, &x)| x == (i as u8).wrapping_mul(7)));
    g.assert_no_leak();
}

/// Masquerade on both workers at once: pods owned by different workers open flows with the
/// same source port to the same outside address and port. Each worker allocates SNAT ports
/// from its own slice of the range, so the translated tuples differ (the same tuple twice
/// would be one connection on the wire, and its replies would reach only one worker).
#[test]
fn workers_never_hand_out_the_same_snat_tuple() {
    let mut nat = nat_default();
    nat.masquerade = true;
    let range = nat.snat_ports;
    let mut g = group(8, vec![], nat);
    let ext: Ipv4Addr = "8.8.4.4".parse().unwrap();
    let mut ports = std::collections::BTreeMap::new();
    for c in 1..=8u16 {
        let syn = tcp_frame(host_mac(c), pod_mac(c), pod_ip(c), ext, 40000, 443, SYN, 0);
        g.send(c, &syn);
        let (s, d, sp, dp) = tuple(&g.one(0));
        assert_eq!((s, d, dp), (NODE_IP, ext, 443));
        assert!((range.0..=range.1).contains(&sp), "SNAT port {sp} in range");
        let owner = addr_owner(pod_ip(c), ext, WORKERS);
        assert!(
            ports.insert(sp, owner).is_none(),
            "SNAT port {sp} handed out twice: {ports:?}"
        );
    }
    let owners: std::collections::HashSet<usize> = ports.values().copied().collect();
    assert_eq!(owners.len(), WORKERS, "flows on both workers: {ports:?}");
    // Each worker's ports lie in its own slice: worker 0's below worker 1's.
    let max0 = ports
        .iter()
        .filter(|(_, w)| **w == 0)
        .map(|(p, _)| *p)
        .max();
    let min1 = ports
        .iter()
        .filter(|(_, w)| **w == 1)
        .map(|(p, _)| *p)
        .min();
    assert!(max0 < min1, "slices: {ports:?}");
    g.assert_no_leak();
}
