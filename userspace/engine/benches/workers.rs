//! One against two workers on the memory backend, the full service graph: 64-byte TCP
//! frames of established connections from 8 pods to 8 ClusterIPs (one per pod), each
//! translated to a backend pod (session lookup, DNAT, policy, FIB, rewrite, output). Every
//! client port generates frames without end (the backend's receive template) and every
//! port counts and frees what it transmits, so the workers do all the work.
//!
//! Configurations (pod `i`'s port belongs to worker `i % 2` with two workers):
//! - `1 worker`: one worker owns every port (no handoff code runs);
//! - `2 workers, aligned`: each connection's addresses hash to the worker receiving it and
//!   its backend's port is that worker's: no handoff;
//! - `2 workers, crossed`: each connection's addresses hash to the other worker, whose port
//!   the backend is on: every packet is handed off once (copied to the other worker).
//!
//! Workers run on their own threads ([`Worker::run`]); delivered packets are counted from
//! the workers' counters over 1 s windows, 5 rounds alternating configurations (the
//! machine is shared: the spread is printed). Criterion measures the dispatch step alone
//! (the owner lookup a worker of a group adds per packet).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use ferroplane_engine::counters::WorkerStats;
use ferroplane_engine::handoff::{
    addr_owner, flow_id, flow_owner, links, FlowDirectory, FlowId, PortOwners,
};
use ferroplane_engine::testutil::*;
use ferroplane_engine::testutil_services::*;
use ferroplane_engine::{Shared, Worker, WorkerControl};
use ferroplane_io::MemIo;
use ferroplane_tables::{NatConfig, ServicePortDef};

const PODS: u16 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    One,
    Aligned,
    Crossed,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::One => "1 worker",
            Layout::Aligned => "2 workers, aligned (no handoff)",
            Layout::Crossed => "2 workers, crossed (1 handoff/pkt)",
        }
    }
    fn workers(self) -> usize {
        if self == Layout::One {
            1
        } else {
            2
        }
    }
}

/// The worker owning pod `p`'s port with two workers.
fn port_owner(p: u16) -> usize {
    p as usize % 2
}

/// For each client pod: (its VIP, its backend pod), so that the connection's address hash
/// names `want(client)` and the backend is on that worker's port.
fn plan(crossed: bool) -> Vec<(u16, Ipv4Addr, u16)> {
    let mut used = std::collections::HashSet::new();
    (1..=PODS)
        .map(|c| {
            let want = if crossed {
                1 - port_owner(c)
            } else {
                port_owner(c)
            };
            let v = (0..10_000u32)
                .map(vip)
                .find(|&v| !used.contains(&v) && addr_owner(pod_ip(c), v, 2) == want)
                .unwrap_or_else(|| panic!("no VIP hashes to worker {want}"));
            used.insert(v);
            // A backend pod on the owner's side, not the client itself.
            let b = (1..=PODS)
                .find(|&b| b != c && port_owner(b) == want)
                .unwrap_or(1);
            (c, v, b)
        })
        .collect()
}

fn services(plan: &[(u16, Ipv4Addr, u16)]) -> Vec<ServicePortDef> {
    plan.iter()
        .map(|&(c, v, b)| {
            tcp_service(
                &format!("default/svc-{c}"),
                v,
                None,
                vec![backend(pod_ip(b), 8080, true)],
            )
        })
        .collect()
}

/// CPU time (user + system) of thread `tid` of this process, in seconds (clock ticks of
/// `/proc`, 100 per second).
fn thread_cpu(tid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

/// One measurement of a layout.
struct Sample {
    /// Delivered Mpps (wall clock).
    mpps: f64,
    /// Handoffs per delivered packet.
    handoffs: f64,
    /// Mpps per CPU-second the busiest worker got: what the layout delivers when each
    /// worker has a core of its own (the machine is shared: the wall figure is not that).
    mpps_per_worker_core: f64,
    /// CPU seconds the workers got per wall second, summed.
    cores: f64,
}

/// A measurement of `layout` over `window` (after a warm-up).
fn run(layout: Layout, window: Duration) -> Sample {
    let plan = plan(layout == Layout::Crossed);
    let nat = NatConfig {
        conntrack_max: 1 << 16,
        ..NatConfig::default()
    };
    let shared = Arc::new(Shared::new(snapshot_with(PODS, services(&plan), nat)));
    let n = layout.workers();
    let owners = Arc::new(PortOwners::default());
    for p in 0..=PODS {
        owners.set(p, Some(if n == 1 { 0 } else { port_owner(p) }));
    }
    let dir = Arc::new(FlowDirectory::new(1 << 16));
    let mut link_list: Vec<Option<_>> = if n == 1 {
        vec![None]
    } else {
        links(n, owners.clone(), dir)
            .into_iter()
            .map(Some)
            .collect()
    };
    let mut controls = Vec::new();
    let mut stats: Vec<Arc<WorkerStats>> = Vec::new();
    let mut tids = Vec::new();
    let mut threads = Vec::new();
    for (w, link) in link_list.drain(..).enumerate() {
        let control = Arc::new(WorkerControl::default());
        let (s, c) = (shared.clone(), control.clone());
        let plan = plan.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        threads.push(std::thread::spawn(move || {
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            let mut io = MemIo::new(8192, 2048, PODS as usize + 1);
            for p in 0..=PODS {
                io.set_tx_sink(p, true);
            }
            for &(cl, v, _) in &plan {
                if n == 1 || port_owner(cl) == w {
                    let f = tcp_frame(
                        host_mac(cl),
                        pod_mac(cl),
                        pod_ip(cl),
                        v,
                        10000 + cl,
                        80,
                        ACK,
                        6,
                    );
                    io.set_rx_template(cl, &f);
                }
            }
            let mut worker = Worker::new(io, s, c).unwrap_or_else(|e| panic!("{e}"));
            if let Some(l) = link {
                worker.set_handoff(l);
            }
            let _ = tx.send((worker.stats(), tid));
            let _ = worker.run();
        }));
        controls.push(control);
        let (st, tid) = rx.recv().unwrap_or_else(|e| panic!("{e}"));
        stats.push(st);
        tids.push(tid);
    }
    // Packets the graph sent out (no configuration hands packets off after the graph, so
    // these are delivered; packets dropped at a handoff never reach the graph).
    let delivered = |stats: &[Arc<WorkerStats>]| -> (u64, u64) {
        let mut pkts = 0;
        let mut handoffs = 0;
        for s in stats {
            for p in 0..=PODS {
                pkts += s.iface(p).tx_packets.get();
            }
            handoffs += s.handoff_sent.get();
        }
        (pkts, handoffs)
    };
    std::thread::sleep(Duration::from_millis(200));
    let cpu0: Vec<f64> = tids.iter().map(|t| thread_cpu(t)).collect();
    let (p0, h0) = delivered(&stats);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let (p1, h1) = delivered(&stats);
    let secs = t0.elapsed().as_secs_f64();
    let cpu: Vec<f64> = tids
        .iter()
        .zip(&cpu0)
        .map(|(t, c0)| thread_cpu(t) - c0)
        .collect();
    for c in &controls {
        c.stop.store(true, Ordering::Relaxed);
    }
    for t in threads {
        let _ = t.join();
    }
    let pkts = (p1 - p0) as f64;
    let busiest = cpu.iter().copied().fold(0.0, f64::max).max(0.01);
    Sample {
        mpps: pkts / secs / 1e6,
        handoffs: (h1 - h0) as f64 / pkts.max(1.0),
        mpps_per_worker_core: pkts / busiest / 1e6,
        cores: cpu.iter().sum::<f64>() / secs,
    }
}

fn criterion_benches(c: &mut Criterion) {
    // The owner lookup of one packet (parse + directory probe + address hash).
    let dir = FlowDirectory::new(1 << 16);
    let frames: Vec<Vec<u8>> = (1..=PODS)
        .map(|p| {
            tcp_frame(
                host_mac(p),
                pod_mac(p),
                pod_ip(p),
                vip(p as u32),
                10000,
                80,
                ACK,
                6,
            )
        })
        .collect();
    let mut g = c.benchmark_group("workers");
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("flow_owner", |b| {
        b.iter(|| {
            let mut acc = 0;
            for f in &frames {
                if let Some(FlowId::Tuple(k)) = flow_id(&f[14..], 4789) {
                    acc += flow_owner(&k, &dir, 2);
                }
            }
            black_box(acc)
        })
    });
    g.finish();
}

fn summary() {
    let window = Duration::from_millis(1000);
    let layouts = [Layout::One, Layout::Aligned, Layout::Crossed];
    let mut samples: Vec<Vec<Sample>> = layouts.iter().map(|_| Vec::new()).collect();
    let load0 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    for _ in 0..5 {
        for (i, &l) in layouts.iter().enumerate() {
            samples[i].push(run(l, window));
        }
    }
    let stats = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!();
    println!("== workers (memory backend, full service graph, 64-byte TCP, established) ==");
    let mut wall = Vec::new();
    let mut core = Vec::new();
    for (i, l) in layouts.iter().enumerate() {
        let s = &samples[i];
        let (m, lo, hi) = stats(s.iter().map(|x| x.mpps).collect());
        let (c, clo, chi) = stats(s.iter().map(|x| x.mpps_per_worker_core).collect());
        let (cores, _, _) = stats(s.iter().map(|x| x.cores).collect());
        let (h, _, _) = stats(s.iter().map(|x| x.handoffs).collect());
        wall.push(m);
        core.push(c);
        println!(
            "{:<36}: {:6.2} Mpps wall (min {:5.2}, max {:5.2}) on {:.2} cores; {:6.2} Mpps per busiest-worker CPU-second (min {:5.2}, max {:5.2}); {:.2} handoffs/pkt",
            l.name(),
            m,
            lo,
            hi,
            cores,
            c,
            clo,
            chi,
            h
        );
    }
    println!(
        "ratio 2 / 1 worker, wall: aligned {:.2}x, crossed {:.2}x; per worker core: aligned {:.2}x, crossed {:.2}x (target >= 1.7x on 2 cores)",
        wall[1] / wall[0],
        wall[2] / wall[0],
        core[1] / core[0],
        core[2] / core[0],
    );
    println!(
        "medians of 5 rounds of 1 s; load average before: {}, after: {}",
        load0.trim(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

criterion_group!(benches, criterion_benches);

ferroplane_engine::bench_main_with_summary!(benches, summary);
