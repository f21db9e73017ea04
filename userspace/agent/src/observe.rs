//! Packet trace and capture requests of the local API.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferroplane_api::{CaptureReport, CapturedPacket, TracePacket, TraceStep};
use ferroplane_engine::filter::PacketFilter;
use ferroplane_engine::graph::GraphInfo;
use ferroplane_engine::trace::TraceNames;
use ferroplane_engine::worker::{CapturePoint, CaptureSpec};
use ferroplane_engine::{Shared, WorkerControl};

fn iface_index(shared: &Shared, name: &str) -> Result<u16, String> {
    shared
        .load()
        .ifaces
        .by_name(name)
        .map(|i| i.sw_if)
        .ok_or_else(|| {
            format!("no engine interface named {name:?} (see `ferroctl show interfaces`)")
        })
}

/// Arm the trace on every worker.
pub fn trace_add(
    shared: &Shared,
    controls: &[Arc<WorkerControl>],
    iface: Option<&str>,
    count: u32,
    filter: Option<&str>,
) -> Result<(), String> {
    let sw_if = iface.map(|n| iface_index(shared, n)).transpose()?;
    let filter = PacketFilter::parse(filter.unwrap_or(""))?;
    for c in controls {
        let mut f = c.trace_filter.lock().map_err(|_| "trace lock poisoned")?;
        *f = Some((sw_if, filter.clone()));
        c.trace_remaining.store(count, Ordering::Relaxed);
    }
    Ok(())
}

/// Names for trace records: error reasons from the graph, policies from the compiler.
struct Names<'a> {
    info: &'a GraphInfo,
}

impl TraceNames for Names<'_> {
    fn error_name(&self, code: u16) -> String {
        self.info.error_name(code)
    }

    fn policies_of(&self, pod: Ipv4Addr) -> Vec<String> {
        let c = crate::policy::compiler();
        let c = match c.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let key = c
            .pods()
            .find(|p| p.ip == pod)
            .map(|p| (p.namespace.clone(), p.name.clone()));
        key.and_then(|(ns, name)| c.pod_view(&ns, &name))
            .map(|v| v.policies)
            .unwrap_or_default()
    }
}

/// The trace records, grouped by packet, formatted.
pub fn show_trace(info: &GraphInfo, controls: &[Arc<WorkerControl>]) -> Vec<TracePacket> {
    let names = Names { info };
    let mut out: Vec<TracePacket> = Vec::new();
    for c in controls {
        let Ok(records) = c.traces.lock() else {
            continue;
        };
        for r in records.iter() {
            let node = info
                .nodes
                .get(r.node as usize)
                .map(|n| n.name.to_string())
                .unwrap_or_default();
            let text = r.data.describe(&names);
            let fields = r
                .data
                .fields(&names)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let step = TraceStep { node, text, fields };
            match out.iter_mut().rev().find(|p| p.id == r.id) {
                Some(p) => p.steps.push(step),
                None => out.push(TracePacket {
                    id: r.id,
                    steps: vec![step],
                }),
            }
        }
    }
    out
}

/// Drop the trace records and disarm.
pub fn clear_trace(controls: &[Arc<WorkerControl>]) {
    for c in controls {
        c.trace_remaining.store(0, Ordering::Relaxed);
        if let Ok(mut t) = c.traces.lock() {
            t.clear();
        }
    }
}

/// Start a capture (on the first worker; the foundation runs one).
pub fn capture_start(
    shared: &Shared,
    info: &GraphInfo,
    controls: &[Arc<WorkerControl>],
    iface: Option<&str>,
    node: Option<&str>,
    count: u32,
    filter: Option<&str>,
) -> Result<(), String> {
    let point =
        match (iface, node) {
            (Some(i), None) => CapturePoint::Interface(iface_index(shared, i)?),
            (None, Some(n)) => CapturePoint::Node(info.node_index(n).ok_or_else(|| {
                format!("no graph node named {n:?} (see `ferroctl show counters`)")
            })?),
            _ => return Err("capture needs exactly one of --iface or --node".into()),
        };
    if count == 0 {
        return Err("capture --count must be at least 1".into());
    }
    let filter = PacketFilter::parse(filter.unwrap_or(""))?;
    let c = controls.first().ok_or("no engine worker")?;
    let mut cap = c.capture.lock().map_err(|_| "capture lock poisoned")?;
    cap.packets.clear();
    cap.spec = Some(CaptureSpec {
        point,
        filter,
        remaining: count,
    });
    c.capture_active.store(true, Ordering::Relaxed);
    Ok(())
}

/// Take what the capture has so far.
pub fn capture_take(controls: &[Arc<WorkerControl>]) -> Result<CaptureReport, String> {
    let c = controls.first().ok_or("no engine worker")?;
    let mut cap = c.capture.lock().map_err(|_| "capture lock poisoned")?;
    let done = cap.done();
    let packets = std::mem::take(&mut cap.packets)
        .into_iter()
        .map(|p| CapturedPacket {
            ts_ns: p.ts_ns,
            hex: p.data.iter().map(|b| format!("{b:02x}")).collect(),
        })
        .collect();
    if done {
        cap.spec = None;
        c.capture_active.store(false, Ordering::Relaxed);
    }
    Ok(CaptureReport { done, packets })
}

/// The engine's neighbour table (`show_neighbors`): every next hop of the FIB, resolved or
/// not, sorted by interface and address.
pub fn neighbors(snap: &ferroplane_engine::Snapshot) -> Vec<ferroplane_api::NeighborInfo> {
    use ferroplane_tables::AdjKind;
    let mut out: Vec<(u16, Ipv4Addr, ferroplane_api::NeighborInfo)> = snap
        .fib
        .adjacencies()
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a.kind, AdjKind::Rewrite | AdjKind::Incomplete))
        .filter_map(|(i, a)| {
            let ip = a.next_hop?;
            let resolved = a.kind == AdjKind::Rewrite;
            let info = ferroplane_api::NeighborInfo {
                ip: ip.to_string(),
                mac: resolved.then(|| {
                    a.dst_mac
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                }),
                interface: snap
                    .ifaces
                    .get(a.sw_if)
                    .map(|f| f.name.clone())
                    .unwrap_or_else(|| format!("sw_if {}", a.sw_if)),
                sw_if: a.sw_if,
                state: if resolved { "resolved" } else { "incomplete" }.into(),
                adj: i as u32,
            };
            Some((a.sw_if, ip, info))
        })
        .collect();
    out.sort_by_key(|(s, ip, _)| (*s, *ip));
    out.into_iter().map(|(_, _, n)| n).collect()
}
