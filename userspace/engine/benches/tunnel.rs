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
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use ferroplane_engine::testutil::tunnel::{host_mac, pod_ip, pod_mac, tunnel_node, POD, UPLINK};
use ferroplane_engine::testutil::udp_frame;
use ferroplane_engine::tunnel::TunnelMode;
use ferroplane_engine::{Shared, Worker, WorkerControl};
use ferroplane_io::MemIo;

/// Node `me` (1 or 2) with a pod, an uplink, and a tunnel to the other node.
fn node(me: u8, mode: TunnelMode) -> Worker<MemIo> {
    let snapshot = tunnel_node(me, mode, false).snapshot;
    Worker::new(
        MemIo::new(4096, 2048, 2),
        Arc::new(Shared::new(snapshot)),
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

ferroplane_engine::bench_main_with_summary!(benches, summary);
