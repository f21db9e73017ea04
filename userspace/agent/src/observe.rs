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
        // Each worker numbers its packets: group within this worker's records only.
        let first = out.len();
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
            match out[first..].iter_mut().rev().find(|p| p.id == r.id) {
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

/// Most packets one capture may take.
pub const MAX_CAPTURE_PACKETS: u32 = 100_000;
/// Bytes of frames a capture takes when the request does not say.
pub const DEFAULT_CAPTURE_BYTES: u64 = 16 << 20;
/// Most bytes of frames one capture may take (and so hold until `ferroctl` takes them).
pub const MAX_CAPTURE_BYTES: u64 = 64 << 20;
/// Most bytes of frames one `capture_take` answer carries (the rest waits for the next).
pub const TAKE_BYTES: usize = 1 << 20;

/// How much a capture may take: packets and bytes, within the hard maximums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureLimits {
    /// Packets.
    pub count: u32,
    /// Bytes of frames.
    pub bytes: u64,
}

impl CaptureLimits {
    /// Checks a request's `count` and `max_bytes` (default [`DEFAULT_CAPTURE_BYTES`]).
    pub fn new(count: u32, max_bytes: Option<u64>) -> Result<CaptureLimits, String> {
        if count == 0 {
            return Err("capture --count must be at least 1".into());
        }
        if count > MAX_CAPTURE_PACKETS {
            return Err(format!(
                "capture --count {count}: at most {MAX_CAPTURE_PACKETS} packets per capture"
            ));
        }
        let bytes = max_bytes.unwrap_or(DEFAULT_CAPTURE_BYTES);
        if bytes == 0 || bytes > MAX_CAPTURE_BYTES {
            return Err(format!(
                "capture --max-bytes {bytes}: between 1 and {MAX_CAPTURE_BYTES} bytes"
            ));
        }
        Ok(CaptureLimits { count, bytes })
    }
}

/// How much of the capture in progress was handed out: every worker captures what it sees,
/// each armed with the whole count; the takes stop at the count over all of them.
#[derive(Debug, Default)]
pub struct CaptureBook {
    count: u32,
    delivered: u32,
}

/// Start a capture on every worker (each sees the packets of the flows it owns).
#[allow(clippy::too_many_arguments)]
pub fn capture_start(
    shared: &Shared,
    info: &GraphInfo,
    controls: &[Arc<WorkerControl>],
    book: &std::sync::Mutex<CaptureBook>,
    iface: Option<&str>,
    node: Option<&str>,
    limits: CaptureLimits,
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
    let filter = PacketFilter::parse(filter.unwrap_or(""))?;
    if controls.is_empty() {
        return Err("no engine worker".into());
    }
    {
        let mut b = book.lock().map_err(|_| "capture lock poisoned")?;
        *b = CaptureBook {
            count: limits.count,
            delivered: 0,
        };
    }
    for c in controls {
        let mut cap = c.capture.lock().map_err(|_| "capture lock poisoned")?;
        cap.packets.clear();
        cap.spec = Some(CaptureSpec {
            point: point.clone(),
            filter: filter.clone(),
            remaining: limits.count,
            remaining_bytes: limits.bytes,
        });
        c.capture_active.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// Take what the capture has so far, every worker's, in time order, at most [`TAKE_BYTES`]
/// of frames (at least one packet) and never past the capture's count; `done` once the
/// capture ended (the count reached, or every worker done) and everything was taken.
pub fn capture_take(
    controls: &[Arc<WorkerControl>],
    book: &std::sync::Mutex<CaptureBook>,
) -> Result<CaptureReport, String> {
    if controls.is_empty() {
        return Err("no engine worker".into());
    }
    let mut book = book.lock().map_err(|_| "capture lock poisoned")?;
    let left = book.count.saturating_sub(book.delivered) as usize;
    let mut taken = Vec::new();
    let mut bytes = 0;
    let mut pending = false;
    let mut all_done = true;
    // One worker's capture locked at a time.
    for c in controls {
        let mut cap = c.capture.lock().map_err(|_| "capture lock poisoned")?;
        let mut n = 0;
        while n < cap.packets.len()
            && (taken.is_empty() && n == 0 || bytes + cap.packets[n].data.len() <= TAKE_BYTES)
        {
            bytes += cap.packets[n].data.len();
            n += 1;
        }
        taken.extend(cap.packets.drain(..n));
        pending |= !cap.packets.is_empty();
        all_done &= cap.done();
    }
    // In time order; past the count only when the count is reached (the rest is dropped
    // with the capture).
    taken.sort_by_key(|p| p.ts_ns);
    taken.truncate(left);
    book.delivered = book.delivered.saturating_add(taken.len() as u32);
    let reached = book.delivered >= book.count;
    let done = reached || (all_done && !pending);
    if done {
        for c in controls {
            if let Ok(mut cap) = c.capture.lock() {
                cap.spec = None;
                cap.packets.clear();
            }
            c.capture_active.store(false, Ordering::Relaxed);
        }
    }
    let packets = taken
        .into_iter()
        .map(|p| CapturedPacket {
            ts_ns: p.ts_ns,
            hex: p.data.iter().map(|b| format!("{b:02x}")).collect(),
        })
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferroplane_engine::worker::CapturedPacket as Frame;

    #[test]
    fn capture_limits() {
        assert_eq!(
            CaptureLimits::new(10, None).unwrap(),
            CaptureLimits {
                count: 10,
                bytes: DEFAULT_CAPTURE_BYTES
            }
        );
        assert!(CaptureLimits::new(0, None).is_err());
        assert!(CaptureLimits::new(MAX_CAPTURE_PACKETS + 1, None)
            .unwrap_err()
            .contains("at most 100000"));
        assert!(CaptureLimits::new(1, Some(MAX_CAPTURE_BYTES + 1)).is_err());
        assert!(CaptureLimits::new(1, Some(0)).is_err());
        assert_eq!(CaptureLimits::new(1, Some(1500)).unwrap().bytes, 1500);
    }

    /// A take carries at most [`TAKE_BYTES`] of frames; `done` only once all were taken.
    #[test]
    fn take_in_bounded_answers() {
        let c = Arc::new(WorkerControl::default());
        {
            let mut cap = c.capture.lock().unwrap();
            for _ in 0..600 {
                cap.packets.push(Frame {
                    ts_ns: 1,
                    data: vec![0xab; 4000],
                });
            }
        }
        let controls = [c];
        let book = std::sync::Mutex::new(CaptureBook {
            count: 600,
            delivered: 0,
        });
        let mut total = 0;
        let mut takes = 0;
        loop {
            let r = capture_take(&controls, &book).unwrap();
            takes += 1;
            let bytes: usize = r.packets.iter().map(|p| p.hex.len() / 2).sum();
            assert!(bytes <= TAKE_BYTES);
            total += r.packets.len();
            if r.done {
                break;
            }
            assert!(takes < 10);
        }
        assert_eq!(total, 600);
        assert_eq!(takes, 3);
    }

    /// Two workers capture: the takes merge them in time order and stop at the count over
    /// both; then both are disarmed.
    #[test]
    fn capture_over_workers_stops_at_the_count() {
        let controls: Vec<Arc<WorkerControl>> =
            (0..2).map(|_| Arc::new(WorkerControl::default())).collect();
        let book = std::sync::Mutex::new(CaptureBook::default());
        let shared = Shared::new(ferroplane_engine::Snapshot::default());
        let info = ferroplane_engine::nodes::standard_graph::<ferroplane_io::MemFrames>()
            .unwrap()
            .info()
            .clone();
        capture_start(
            &shared,
            &info,
            &controls,
            &book,
            None,
            Some("ip4-lookup"),
            CaptureLimits::new(5, None).unwrap(),
            None,
        )
        .unwrap();
        for (w, c) in controls.iter().enumerate() {
            assert!(c.capture_active.load(Ordering::Relaxed));
            let mut cap = c.capture.lock().unwrap();
            for i in 0..4u64 {
                cap.packets.push(Frame {
                    ts_ns: i * 2 + w as u64,
                    data: vec![w as u8; 60],
                });
            }
        }
        let r = capture_take(&controls, &book).unwrap();
        assert!(r.done);
        let ts: Vec<u64> = r.packets.iter().map(|p| p.ts_ns).collect();
        assert_eq!(ts, vec![0, 1, 2, 3, 4]);
        for c in &controls {
            assert!(!c.capture_active.load(Ordering::Relaxed));
            assert!(c.capture.lock().unwrap().spec.is_none());
        }
    }

    /// Trace records of two workers with the same packet ids stay two packets.
    #[test]
    fn traces_of_workers_do_not_merge() {
        let info = ferroplane_engine::nodes::standard_graph::<ferroplane_io::MemFrames>()
            .unwrap()
            .info()
            .clone();
        let controls: Vec<Arc<WorkerControl>> =
            (0..2).map(|_| Arc::new(WorkerControl::default())).collect();
        for c in &controls {
            c.traces
                .lock()
                .unwrap()
                .push(ferroplane_engine::TraceRecord {
                    id: 1,
                    node: 0,
                    data: ferroplane_engine::TraceData::Rx { sw_if: 0, len: 60 },
                });
        }
        assert_eq!(show_trace(&info, &controls).len(), 2);
    }
}
