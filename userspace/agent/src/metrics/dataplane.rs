//! The dataplane's metrics: interfaces and their AF_XDP queues, the graph nodes, error
//! and drop reasons, the XDP programs and their flow cache, the engine's tables, gone pods
//! and the workers' health.

use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::families::{counter_family, gauge, gauge_family, l, Labels, Total};
use crate::api::AgentView;

/// Per interface (engine and fast-path counters) and per AF_XDP socket (RX queue).
pub(super) fn interfaces(reg: &mut Registry, ifs: &[ferroplane_api::InterfaceInfo]) {
    let by_if = |f: &dyn Fn(&ferroplane_api::InterfaceInfo) -> u64| {
        ifs.iter()
            .map(|i| {
                (
                    l(&[("interface", &i.name), ("kind", i.kind.as_str())]),
                    f(i),
                )
            })
            .collect::<Vec<_>>()
    };
    counter_family(
        reg,
        "interface_rx_packets",
        "Packets received from the interface by the dataplane (the engine and the XDP fast path)",
        by_if(&|i| i.rx_packets),
    );
    counter_family(
        reg,
        "interface_rx_bytes",
        "Bytes received from the interface by the dataplane (the engine and the XDP fast path)",
        by_if(&|i| i.rx_bytes),
    );
    counter_family(
        reg,
        "interface_tx_packets",
        "Packets sent on the interface by the dataplane (the engine and the XDP fast path)",
        by_if(&|i| i.tx_packets),
    );
    counter_family(
        reg,
        "interface_tx_bytes",
        "Bytes sent on the interface by the dataplane (the engine and the XDP fast path)",
        by_if(&|i| i.tx_bytes),
    );
    counter_family(
        reg,
        "interface_drops",
        "Packets that could not be queued on the interface",
        by_if(&|i| i.drops),
    );
    counter_family(
        reg,
        "interface_fast_path_rx_packets",
        "Packets the XDP fast path forwarded that arrived on the interface (part of interface_rx_packets; not seen by the engine)",
        by_if(&|i| i.fast_rx_packets),
    );
    counter_family(
        reg,
        "interface_fast_path_tx_packets",
        "Packets the XDP fast path forwarded out of the interface (part of interface_tx_packets)",
        by_if(&|i| i.fast_tx_packets),
    );
    gauge(
        reg,
        "interfaces",
        "Interfaces in the engine's table",
        ifs.len() as i64,
    );
    // One series per AF_XDP socket (RX queue) of each interface.
    let by_queue = |f: &dyn Fn(&ferroplane_api::QueueInfo) -> u64| {
        ifs.iter()
            .flat_map(|i| {
                i.queues.iter().map(move |q| {
                    let queue = q.queue.to_string();
                    (l(&[("interface", &i.name), ("queue", &queue)]), f(q))
                })
            })
            .collect::<Vec<_>>()
    };
    for (name, help, f) in [
        (
            "interface_queue_rx_packets",
            "Packets the engine read from the AF_XDP socket of the interface's RX queue",
            (|q| q.rx_packets) as fn(&ferroplane_api::QueueInfo) -> u64,
        ),
        (
            "interface_queue_tx_packets",
            "Packets the engine queued for TX on the AF_XDP socket of the queue",
            |q| q.tx_packets,
        ),
        (
            "interface_queue_tx_drops",
            "Packets the AF_XDP socket of the queue could not take for TX",
            |q| q.tx_drops,
        ),
        (
            "interface_queue_rx_drops",
            "Packets the kernel dropped for the AF_XDP socket of the queue (fill ring empty, RX ring full, other)",
            |q| q.rx_drops,
        ),
        (
            "interface_queue_fill_ring_empty",
            "Packets that found the fill ring of the queue's AF_XDP socket empty",
            |q| q.rx_fill_ring_empty,
        ),
    ] {
        counter_family(reg, name, help, by_queue(&f));
    }
}

/// The graph nodes (calls, vectors, packets, time), the workers, the error and event
/// counters, the XDP programs' verdicts, reasons and flow cache.
pub(super) fn engine(reg: &mut Registry, view: &AgentView) {
    let c = view.counters();
    let by_node = |f: &dyn Fn(&ferroplane_api::NodeCounters) -> u64| {
        c.nodes
            .iter()
            .map(|n| (l(&[("node", &n.name)]), f(n)))
            .collect::<Vec<_>>()
    };
    counter_family(
        reg,
        "node_calls",
        "Calls of the graph node",
        by_node(&|n| n.calls),
    );
    counter_family(
        reg,
        "node_vectors",
        "Vectors processed by the graph node",
        by_node(&|n| n.vectors),
    );
    counter_family(
        reg,
        "node_packets",
        "Packets processed by the graph node",
        by_node(&|n| n.packets),
    );
    let seconds = Family::<Labels, Total<f64>>::default();
    for n in &c.nodes {
        seconds
            .get_or_create(&l(&[("node", &n.name)]))
            .add(n.clocks as f64 / 1e9);
    }
    reg.register(
        "node_seconds_total",
        "Time spent in the graph node",
        seconds,
    );
    gauge(reg, "workers", "Engine workers", c.worker_count as i64);

    let errors = view.errors();
    counter_family(
        reg,
        "errors",
        "Packets dropped (severity error) or events counted (info) per graph node and reason",
        errors.iter().map(|e| {
            (
                l(&[
                    ("node", &e.node),
                    ("reason", &e.reason),
                    ("severity", e.severity.as_str()),
                ]),
                e.count,
            )
        }),
    );
    if let Ok(x) = view.xdp() {
        counter_family(
            reg,
            "xdp_verdicts",
            "Verdicts of the XDP programs",
            x.verdicts
                .iter()
                .map(|v| (l(&[("verdict", &v.name)]), v.count)),
        );
        counter_family(
            reg,
            "xdp_reasons",
            "Reason counters of the XDP programs",
            x.drops.iter().map(|v| (l(&[("reason", &v.name)]), v.count)),
        );
        counter_family(
            reg,
            "xdp_flow_cache",
            "Fast-path outcomes of the XDP flow cache (hit, or why the packet went to the engine)",
            x.flow_cache
                .iter()
                .map(|v| (l(&[("outcome", &v.name)]), v.count)),
        );
        gauge(
            reg,
            "xdp_flow_cache_entries",
            "Entries in the XDP flow cache (flow4)",
            x.flow_entries as i64,
        );
    }
}

/// The tables the engine runs.
pub(super) fn tables(reg: &mut Registry, snap: &ferroplane_engine::Snapshot) {
    gauge(
        reg,
        "routes",
        "Routes in the engine FIB",
        snap.fib.routes().count() as i64,
    );
    gauge(
        reg,
        "tables_version",
        "Version of the tables the engine runs",
        snap.version as i64,
    );
}

/// Pods whose interface vanished or whose namespace is missing; the workers' health.
pub(super) fn health(reg: &mut Registry, view: &AgentView, ifs: &[ferroplane_api::InterfaceInfo]) {
    gauge_family(
        reg,
        "pods_gone",
        "Pods whose interface vanished (namespace deleted without CNI DEL) or whose network namespace is missing",
        [
            ferroplane_api::InterfaceState::Vanished,
            ferroplane_api::InterfaceState::Missing,
        ]
        .map(|st| {
            let n = ifs.iter().filter(|i| i.state == st).count();
            (l(&[("state", st.as_str())]), n as i64)
        }),
    );
    let workers = view.watchdog.iter().flat_map(|d| d.workers()).enumerate();
    let worker = |i: usize| l(&[("worker", &i.to_string())]);
    let workers: Vec<_> = workers.collect();
    gauge_family(
        reg,
        "worker_stalled",
        "1 while the engine worker makes no progress (no heartbeat) or has exited",
        workers.iter().map(|(i, w)| {
            (
                worker(*i),
                i64::from(w.state != crate::watchdog::WorkerState::Running),
            )
        }),
    );
    counter_family(
        reg,
        "worker_port_errors",
        "Errors of single AF_XDP ports (each port reset, the worker carried on)",
        workers.iter().map(|(i, w)| (worker(*i), w.port_errors)),
    );
    counter_family(
        reg,
        "worker_io_errors",
        "Errors of the engine worker's I/O backend as a whole (retried after a back-off)",
        workers.iter().map(|(i, w)| (worker(*i), w.io_errors)),
    );
}
