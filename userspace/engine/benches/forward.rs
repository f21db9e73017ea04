//! Forwarding rate of the foundation graph on the memory backend:
//! 64-byte UDP frames, ethernet-input → ip4-input → ip4-lookup → ip4-rewrite
//! → interface-output, one core. Prints Mpps with 10k routes in the FIB and
//! the ratio against the same run with a minimal FIB and against the I/O
//! backend alone (the baseline: what the memory backend costs without the graph).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use ferroplane_engine::testutil::*;
use ferroplane_engine::{Shared, Worker, WorkerControl};
use ferroplane_io::{Desc, MemIo, PacketIo};

fn worker(routes: u32) -> Worker<MemIo> {
    let mut io = MemIo::new(4096, 2048, 2);
    // 64-byte frame: 14 + 20 + 8 + 18 payload + 4 (FCS not carried) = 60 bytes on the wire buffer.
    let frame = udp_frame(
        host_mac(1),
        pod_mac(1),
        pod_ip(1),
        "20.0.77.5".parse().unwrap_or(ROUTER_IP),
        64,
        18,
    );
    io.set_rx_template(1, &frame);
    io.set_tx_sink(0, true);
    let shared = Arc::new(Shared::new(node_snapshot(1, routes)));
    Worker::new(io, shared, Arc::new(WorkerControl::default())).unwrap_or_else(|e| panic!("{e}"))
}

fn io_only() -> MemIo {
    let mut io = MemIo::new(4096, 2048, 2);
    let frame = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), ROUTER_IP, 64, 18);
    io.set_rx_template(1, &frame);
    io.set_tx_sink(0, true);
    io
}

fn io_poll(io: &mut MemIo, descs: &mut [Desc]) -> usize {
    let n = io.rx_burst(1, descs);
    let s = io.tx_burst(0, &descs[..n]);
    let _ = io.flush();
    s
}

fn rate(mut f: impl FnMut() -> usize, dur: Duration) -> f64 {
    let t0 = Instant::now();
    let mut pkts = 0usize;
    while t0.elapsed() < dur {
        for _ in 0..64 {
            pkts += f();
        }
    }
    pkts as f64 / t0.elapsed().as_secs_f64() / 1e6
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward");
    g.throughput(Throughput::Elements(256));
    for routes in [1u32, 10_000] {
        let mut w = worker(routes);
        g.bench_function(format!("fib_{routes}_routes"), |b| {
            b.iter(|| black_box(w.poll().unwrap_or(0)))
        });
    }
    let mut io = io_only();
    let mut descs = vec![Desc::default(); 256];
    g.bench_function("io_only_baseline", |b| {
        b.iter(|| black_box(io_poll(&mut io, &mut descs)))
    });
    g.finish();
}

fn summary() {
    let d = Duration::from_secs(2);
    let mut w10k = worker(10_000);
    let mut w1 = worker(1);
    let mut io = io_only();
    let mut descs = vec![Desc::default(); 256];
    let r10k = rate(|| w10k.poll().unwrap_or(0), d);
    let r1 = rate(|| w1.poll().unwrap_or(0), d);
    let rio = rate(|| io_poll(&mut io, &mut descs), d);
    println!();
    println!("== engine forward (memory backend, 64-byte UDP, 1 core) ==");
    println!("graph, FIB with 10k routes : {r10k:8.2} Mpps   (target >= 10)");
    println!(
        "graph, FIB with 1 route    : {r1:8.2} Mpps   ratio 10k/1 = {:.3}",
        r10k / r1
    );
    println!(
        "I/O backend alone (baseline): {rio:8.2} Mpps   graph/baseline = {:.3}",
        r10k / rio
    );
}

criterion_group!(benches, bench);

ferroplane_engine::bench_main_with_summary!(benches, summary);
