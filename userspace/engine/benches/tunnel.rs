//! Overlay encapsulation and decapsulation on the memory backend, one core:
//! 64-byte UDP frames from a pod to a pod of another node, through IPIP, VXLAN
//! or WireGuard.
//!
//! - encap: node 1 receives the pod's frames and sends them into the tunnel
//!   (ethernet-input → ip4-input → ip4-lookup → ip4-rewrite → interface-output
//!   → tunnel-encap → interface-output on the uplink);
//! - decap: node 2 receives what node 1 sent and delivers the inner packet to
//!   its pod (… → ip4-lookup → tunnel-decap → ip4-input → … → the pod).
//!
//! WireGuard is measured for encap only (ChaCha20-Poly1305 of every packet); its
//! decap would need a fresh counter per packet (the replay window refuses a
//! repeated template). Prints Mpps per path, median of 5 rounds.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use ferroplane_engine::testutil::udp_frame;
use ferroplane_engine::tunnel::{
    wg_public_key, Tunnel, TunnelCounters, TunnelMode, TunnelTable, WgPeer, TUNNEL_SW_IF_BASE,
};
use ferroplane_engine::{
    IfKind, Interface, Interfaces, PodInfo, Shared, Snapshot, Worker, WorkerControl,
};
use ferroplane_io::MemIo;
use ferroplane_tables::{FibBuilder, Ipv4Prefix, Path, RouteAction, RouteEntry, RouteSource};

const TUN: u16 = TUNNEL_SW_IF_BASE;
const UPLINK: u16 = 0;
const POD: u16 = 1;

fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, 10 + i)
}
fn uplink_mac(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, i]
}
fn vtep_mac(i: u8) -> [u8; 6] {
    [2, 0xfe, 0, 0, 0, i]
}
fn host_mac(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, 1, i]
}
fn pod_mac(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, 2, i]
}
fn pod_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i, 10)
}
fn key(i: u8) -> [u8; 32] {
    let mut k = [i.wrapping_mul(37).wrapping_add(1); 32];
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

fn iface(sw_if: u16, name: &str, kind: IfKind, mac: [u8; 6], mtu: u16) -> Interface {
    Interface {
        sw_if,
        name: name.into(),
        kind,
        ifindex: u32::from(sw_if) + 2,
        mac,
        ip4: None,
        mtu,
        port: (sw_if < TUN).then_some(sw_if),
        xdp_mode: None,
        pod: None,
    }
}

/// Node `me` (1 or 2) with a pod, an uplink, and a tunnel to the other node.
fn node(me: u8, mode: TunnelMode) -> Worker<MemIo> {
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
            key(me),
            wg_public_key(key(other)),
            u32::from(me),
            51820,
            None,
        ))
    });
    let mut tunnels = TunnelTable::new(42, 4789, 51820);
    tunnels
        .insert(Tunnel {
            sw_if: TUN,
            name: format!("node-{other}"),
            mode,
            local: node_ip(me),
            remote: node_ip(other),
            allowed: vec![remote],
            vtep_mac: vtep_mac(other),
            counters: Arc::new(TunnelCounters::default()),
            wg,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let snap = Snapshot {
        fib: Arc::new(b.build().unwrap_or_else(|e| panic!("{e}"))),
        ifaces: Arc::new(ifaces),
        node_ip: Some(node_ip(me)),
        tunnels: Arc::new(tunnels),
        ..Snapshot::default()
    };
    Worker::new(
        MemIo::new(4096, 2048, 2),
        Arc::new(Shared::new(snap)),
        Arc::new(WorkerControl::default()),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A 64-byte frame (60 in the buffer) from node `me`'s pod to the other node's pod.
fn from_pod(me: u8) -> Vec<u8> {
    udp_frame(
        host_mac(me),
        pod_mac(me),
        pod_ip(me),
        pod_ip(3 - me),
        64,
        18,
    )
}

/// Send `frame` into `w` on `port`; what `w` sent on the uplink.
fn send(w: &mut Worker<MemIo>, port: u16, frame: &[u8]) -> Vec<Vec<u8>> {
    assert!(w.io_mut().inject(port, frame), "inject");
    w.poll().unwrap_or_else(|e| panic!("{e}"));
    w.io_mut().take_tx(UPLINK)
}

/// Node 1 encapsulating its pod's frames (and node 2, with whom a WireGuard session exists).
fn encap(mode: TunnelMode) -> (Worker<MemIo>, Worker<MemIo>) {
    let (mut n1, mut n2) = (node(1, mode), node(2, mode));
    if mode == TunnelMode::WireGuard {
        let init = send(&mut n1, POD, &from_pod(1));
        let resp = send(&mut n2, UPLINK, &init[0]);
        let keepalive = send(&mut n1, UPLINK, &resp[0]);
        send(&mut n2, UPLINK, &keepalive[0]);
    }
    n1.io_mut().set_rx_template(POD, &from_pod(1));
    n1.io_mut().set_tx_sink(UPLINK, true);
    (n1, n2)
}

/// Node 2 decapsulating what node 1 sends.
fn decap(mode: TunnelMode) -> Worker<MemIo> {
    let mut n1 = node(1, mode);
    let wire = send(&mut n1, POD, &from_pod(1));
    let mut n2 = node(2, mode);
    n2.io_mut().set_rx_template(UPLINK, &wire[0]);
    n2.io_mut().set_tx_sink(POD, true);
    // One poll to check the path delivers to the pod.
    n2.io_mut().set_tx_sink(POD, false);
    let n = n2.poll().unwrap_or(0);
    let got = n2.io_mut().take_tx(POD);
    assert!(
        n > 0 && got.len() == n,
        "decap delivers: {} of {n}",
        got.len()
    );
    n2.io_mut().set_tx_sink(POD, true);
    n2
}

fn rate(w: &mut Worker<MemIo>, dur: Duration) -> f64 {
    let t0 = Instant::now();
    let mut pkts = 0usize;
    while t0.elapsed() < dur {
        for _ in 0..64 {
            pkts += w.poll().unwrap_or(0);
        }
    }
    pkts as f64 / t0.elapsed().as_secs_f64() / 1e6
}

const MODES: [TunnelMode; 3] = [TunnelMode::Ipip, TunnelMode::Vxlan, TunnelMode::WireGuard];

fn criterion_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("tunnel");
    g.throughput(Throughput::Elements(256));
    for mode in MODES {
        let (mut w, _peer) = encap(mode);
        g.bench_function(format!("encap_{}", mode.as_str()), |b| {
            b.iter(|| black_box(w.poll().unwrap_or(0)))
        });
        if mode != TunnelMode::WireGuard {
            let mut w = decap(mode);
            g.bench_function(format!("decap_{}", mode.as_str()), |b| {
                b.iter(|| black_box(w.poll().unwrap_or(0)))
            });
        }
    }
    g.finish();
}

fn summary() {
    let d = Duration::from_millis(700);
    println!();
    println!("== tunnels (memory backend, 64-byte UDP inner frames, 1 core, median of 5) ==");
    let mut workers: Vec<(String, Worker<MemIo>, Option<Worker<MemIo>>)> = Vec::new();
    for mode in MODES {
        let (w, peer) = encap(mode);
        workers.push((format!("encap {}", mode.as_str()), w, Some(peer)));
        if mode != TunnelMode::WireGuard {
            workers.push((format!("decap {}", mode.as_str()), decap(mode), None));
        }
    }
    // Rounds alternate between paths so that load from other processes hits each alike.
    let mut rates = vec![Vec::new(); workers.len()];
    for _ in 0..5 {
        for (i, (_, w, _)) in workers.iter_mut().enumerate() {
            rates[i].push(rate(w, d));
        }
    }
    for (i, (name, _, _)) in workers.iter().enumerate() {
        let r = &mut rates[i];
        r.sort_by(|a, b| a.total_cmp(b));
        println!("{name:<16}: {:8.2} Mpps", r[r.len() / 2]);
    }
}

criterion_group!(benches, criterion_benches);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    summary();
}
