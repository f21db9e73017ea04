//! Service load balancing on the memory backend, one core: 64-byte TCP
//! frames from a pod to a ClusterIP, with 1, 1,000 and 10,000 services in the
//! table (the target VIP is the last one added).
//!
//! - established: every packet belongs to one of 4,096 existing sessions
//!   (one session-table probe + rewrite per packet);
//! - new flow: every packet is the SYN of a new connection (service lookup,
//!   Maglev choice, session creation); the session table is cleared between
//!   bursts so it never fills.
//!
//! Prints Mpps and the ratio at 10,000 against 1 service (target ≥ 0.95), and
//! the time to build the tables of 10,000 services with 3 endpoints each.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use ferroplane_engine::testutil::*;
use ferroplane_engine::testutil_services::*;
use ferroplane_engine::{Shared, Worker, WorkerControl};
use ferroplane_io::MemIo;
use ferroplane_tables::{Conntrack, NatConfig, ServiceTable, DEFAULT_TABLE_SIZE};

const FLOWS: u16 = 4096;

struct Bench {
    worker: Worker<MemIo>,
    sessions: Arc<Mutex<Conntrack>>,
    frames: Vec<Vec<u8>>,
    next: usize,
}

/// A worker with `n` services; frames from pod 1 to the last service's VIP, one per
/// source port.
fn bench(n: u32, flags: u8) -> Bench {
    let mut io = MemIo::new(8192, 2048, 5);
    for p in 0..=4 {
        io.set_tx_sink(p, true);
    }
    let nat = NatConfig {
        conntrack_max: 1 << 20,
        ..NatConfig::default()
    };
    let shared = Arc::new(Shared::new(snapshot_with(4, many_services(n), nat)));
    let worker = Worker::new(io, shared, Arc::new(WorkerControl::default()))
        .unwrap_or_else(|e| panic!("{e}"));
    let sessions = worker
        .shared_state("ip4-nat")
        .and_then(|s| s.downcast::<Mutex<Conntrack>>().ok())
        .unwrap_or_else(|| panic!("no session table"));
    let frames = (0..FLOWS)
        .map(|i| {
            tcp_frame(
                host_mac(1),
                pod_mac(1),
                pod_ip(1),
                vip(n - 1),
                10000 + i,
                80,
                flags,
                6,
            )
        })
        .collect();
    Bench {
        worker,
        sessions,
        frames,
        next: 0,
    }
}

impl Bench {
    /// One burst of 256 packets through the graph.
    fn burst(&mut self) -> usize {
        let io = self.worker.io_mut();
        for _ in 0..256 {
            let f = &self.frames[self.next];
            self.next = (self.next + 1) % self.frames.len();
            if !io.inject(1, f) {
                break;
            }
        }
        self.worker.poll().unwrap_or(0)
    }

    fn clear_sessions(&self) {
        if let Ok(mut ct) = self.sessions.lock() {
            let ids: Vec<u32> = ct.iter().map(|(i, _)| i).collect();
            for i in ids {
                ct.remove(i);
            }
        }
    }
}

/// Cost of injecting the frames alone (copies into the memory backend), subtracted from
/// nothing: printed as the baseline of the harness.
fn inject_only(frames: &[Vec<u8>]) -> f64 {
    let mut io = MemIo::new(8192, 2048, 2);
    let mut descs = vec![ferroplane_io::Desc::default(); 256];
    let t0 = Instant::now();
    let mut pkts = 0usize;
    let mut next = 0;
    while t0.elapsed() < Duration::from_millis(500) {
        for _ in 0..256 {
            let _ = io.inject(1, &frames[next]);
            next = (next + 1) % frames.len();
        }
        use ferroplane_io::PacketIo;
        let n = io.rx_burst(1, &mut descs);
        io.free(&descs[..n].iter().map(|d| d.buf).collect::<Vec<_>>());
        pkts += n;
    }
    pkts as f64 / t0.elapsed().as_secs_f64() / 1e6
}

fn established(n: u32, dur: Duration) -> f64 {
    let mut b = bench(n, ACK);
    for _ in 0..(FLOWS as usize / 256 + 1) {
        b.burst();
    }
    let t0 = Instant::now();
    let mut pkts = 0;
    while t0.elapsed() < dur {
        for _ in 0..16 {
            pkts += b.burst();
        }
    }
    pkts as f64 / t0.elapsed().as_secs_f64() / 1e6
}

fn new_flows(n: u32, dur: Duration) -> f64 {
    let mut b = bench(n, SYN);
    let t0 = Instant::now();
    let mut pkts = 0;
    let mut clear_time = Duration::ZERO;
    while t0.elapsed() < dur {
        // 16 bursts = 4,096 distinct SYNs, then forget them (timed apart).
        for _ in 0..16 {
            pkts += b.burst();
        }
        let c0 = Instant::now();
        b.clear_sessions();
        clear_time += c0.elapsed();
    }
    pkts as f64 / (t0.elapsed() - clear_time).as_secs_f64() / 1e6
}

fn criterion_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("services");
    g.throughput(Throughput::Elements(256));
    for n in [1u32, 10_000] {
        let mut b = bench(n, ACK);
        g.bench_function(format!("established_{n}_services"), |x| {
            x.iter(|| black_box(b.burst()))
        });
    }
    g.finish();
}

fn summary() {
    let d = Duration::from_millis(700);
    println!();
    println!("== services (memory backend, 64-byte TCP, 1 core, VIP = last service) ==");
    let probe = bench(1, ACK);
    println!(
        "harness: inject + rx alone          : {:8.2} Mpps (baseline of the generator)",
        inject_only(&probe.frames)
    );
    // Rounds alternate between table sizes and the median is kept, so that load from
    // other processes on the machine hits every size alike.
    let sizes = [1u32, 1_000, 10_000];
    let mut est = vec![Vec::new(); sizes.len()];
    let mut new = vec![Vec::new(); sizes.len()];
    for _ in 0..5 {
        for (i, &n) in sizes.iter().enumerate() {
            est[i].push(established(n, d));
            new[i].push(new_flows(n, d));
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let est: Vec<f64> = est.iter_mut().map(med).collect();
    let new: Vec<f64> = new.iter_mut().map(med).collect();
    for (i, n) in sizes.iter().enumerate() {
        println!(
            "{n:>6} services: established {:6.2} Mpps   new flow (SYN) {:6.2} Mpps   (median of 5)",
            est[i], new[i]
        );
    }
    println!(
        "ratio 10,000 / 1: established {:.3}   new flow {:.3}   (target >= 0.95)",
        est[2] / est[0],
        new[2] / new[0]
    );
    // Control side: tables for 10,000 services x 3 endpoints, from definitions to published.
    let defs = many_services_distinct(10_000);
    let shared = Shared::new(node_snapshot(4, 0));
    let t0 = Instant::now();
    let table = ServiceTable::build(defs.clone(), vec![NODE_IP], DEFAULT_TABLE_SIZE, None)
        .unwrap_or_default();
    shared.update(|s| s.services = Arc::new(table));
    let first = t0.elapsed();
    let prev = shared.load().services.clone();
    let t1 = Instant::now();
    let again = ServiceTable::build(defs, vec![NODE_IP], DEFAULT_TABLE_SIZE, Some(&prev))
        .unwrap_or_default();
    shared.update(|s| s.services = Arc::new(again));
    let rebuild = t1.elapsed();
    println!(
        "apply 10,000 services x 3 distinct endpoints: {:.0} ms from scratch, {:.0} ms after one endpoint changed (target < 1000 ms)",
        first.as_secs_f64() * 1e3,
        rebuild.as_secs_f64() * 1e3
    );
}

criterion_group!(benches, criterion_benches);

ferroplane_engine::bench_main_with_summary!(benches, summary);
