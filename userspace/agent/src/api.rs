//! The agent's answers to `ferroctl` (the local API).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ferroplane_api::{
    BuffersReport, CountersReport, ErrorCounter, Handler, InterfaceInfo, InterfaceKind, NamedCount,
    NodeCounters, PortBuffers, Request, RouteInfo, RoutePath, RouteSource, Severity, VersionInfo,
    XdpReport,
};
use ferroplane_bpf::{Dataplane, FpDropReason, FpVerdict};
use ferroplane_engine::counters::WorkerStats;
use ferroplane_engine::graph::GraphInfo;
use ferroplane_engine::{IfKind, Shared, WorkerControl};
use ferroplane_io::{PacketIo, PortId};
use ferroplane_tables::{AdjKind, RouteSource as TableSource};
use serde_json::Value;

/// Formats a MAC address.
pub fn mac_str(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// What the API handler reads.
pub struct AgentView {
    /// Engine tables.
    pub shared: Arc<Shared>,
    /// Per-worker counters.
    pub workers: Vec<Arc<WorkerStats>>,
    /// Worker knobs.
    pub controls: Vec<Arc<WorkerControl>>,
    /// Node and error names.
    pub info: GraphInfo,
    /// The BPF side.
    pub bpf: Arc<Mutex<Dataplane>>,
    /// The overlay (remote nodes, tunnels); replaced when nodes join or leave.
    pub overlay: Arc<std::sync::RwLock<Arc<crate::overlay::Overlay>>>,
    /// The BGP speaker, when `bgp:` is configured.
    pub bgp: Option<Arc<ferroplane_bgp::Speaker>>,
    /// The workers' session tables.
    pub sessions: Vec<Arc<Mutex<ferroplane_tables::Conntrack>>>,
    /// The service tables.
    pub services: crate::services::ServiceCacheHandle,
    /// Runs queries on the engine workers (their AF_XDP frame pools), one at a time.
    pub worker: crate::engine::PortOpener,
    /// The engine workers' watchdog (their state in `show counters`).
    pub watchdog: Option<Arc<crate::watchdog::Watchdog>>,
    /// Pods whose interface vanished or whose namespace is missing.
    pub gone: crate::vanish::GonePods,
    /// The capture in progress over the workers.
    pub captures: Mutex<crate::observe::CaptureBook>,
}

impl AgentView {
    /// Every AF_XDP socket's counters by interface name, in queue order (several for a
    /// multi-queue interface); empty when the worker does not answer.
    fn queue_counters(&self) -> std::collections::HashMap<String, Vec<ferroplane_api::QueueInfo>> {
        // Each worker in turn reports the ports it owns.
        let mut all: std::collections::HashMap<String, Vec<ferroplane_api::QueueInfo>> =
            std::collections::HashMap::new();
        for part in self.worker.exec_each(|_, io| {
            let mut m: std::collections::HashMap<String, Vec<ferroplane_api::QueueInfo>> =
                std::collections::HashMap::new();
            for i in 0..io.num_ports() {
                let Ok(port) = PortId::try_from(i) else {
                    continue;
                };
                let (Some((ifname, queue)), Some(s)) = (io.port_info(port), io.port_stats(port))
                else {
                    continue;
                };
                let k = io.kernel_stats(port).unwrap_or_default();
                m.entry(ifname.to_string())
                    .or_default()
                    .push(ferroplane_api::QueueInfo {
                        queue,
                        port,
                        rx_packets: s.rx_packets,
                        rx_bytes: s.rx_bytes,
                        tx_packets: s.tx_packets,
                        tx_bytes: s.tx_bytes,
                        tx_drops: s.tx_ring_full + s.tx_over_cap + s.tx_invalid,
                        rx_drops: k.rx_dropped + k.rx_ring_full,
                        rx_fill_ring_empty: k.rx_fill_ring_empty_descs,
                        rx_ring_full: k.rx_ring_full,
                        fill_frames: s.fill_frames,
                        fill_target: s.fill_target,
                    });
            }
            m
        }) {
            for (name, queues) in part.unwrap_or_default() {
                all.entry(name).or_default().extend(queues);
            }
        }
        for v in all.values_mut() {
            v.sort_by_key(|q| q.queue);
        }
        all
    }

    /// The interfaces with the dataplane's counters: `rx_packets` and the others count what
    /// the engine and the XDP fast path forwarded; `fast_*` the fast path's part.
    pub(crate) fn interfaces(&self) -> Vec<InterfaceInfo> {
        /// Ethernet header bytes of a fast-path frame (its counters hold IPv4 lengths).
        const ETH_HLEN: u64 = 14;
        let mut queues = self.queue_counters();
        let snap = self.shared.load();
        // Fast-path packets per kernel ifindex (XDP's fastif map).
        let fast: std::collections::HashMap<u32, ferroplane_bpf::FpIfCount> = self
            .bpf
            .lock()
            .ok()
            .and_then(|dp| dp.fastif().ok())
            .unwrap_or_default()
            .into_iter()
            .collect();
        snap.ifaces
            .iter()
            .map(|i| {
                let sum = |f: &dyn Fn(&ferroplane_engine::counters::IfCounters) -> u64| {
                    self.workers
                        .iter()
                        .map(|w| f(w.iface(i.sw_if)))
                        .sum::<u64>()
                };
                let f = fast.get(&i.ifindex).copied().unwrap_or_default();
                InterfaceInfo {
                    name: i.name.clone(),
                    sw_if_index: i.sw_if as u32,
                    kind: match i.kind {
                        IfKind::Uplink => InterfaceKind::Uplink,
                        IfKind::Pod => InterfaceKind::Pod,
                        IfKind::Punt => InterfaceKind::Punt,
                        IfKind::Tunnel => InterfaceKind::Tunnel,
                    },
                    ifindex: i.ifindex,
                    mac: mac_str(&i.mac),
                    ipv4: i.ip4.map(|(a, l)| format!("{a}/{l}")),
                    mtu: i.mtu as u32,
                    xdp_mode: i.xdp_mode.clone(),
                    port: i.port,
                    // The dataplane's totals: the engine's and the fast path's (whose
                    // byte counts are IPv4 lengths: plus the Ethernet header, as the
                    // engine counts frames).
                    rx_packets: sum(&|c| c.rx_packets.get()) + f.rx_packets,
                    rx_bytes: sum(&|c| c.rx_bytes.get()) + f.rx_bytes + ETH_HLEN * f.rx_packets,
                    tx_packets: sum(&|c| c.tx_packets.get()) + f.tx_packets,
                    tx_bytes: sum(&|c| c.tx_bytes.get()) + f.tx_bytes + ETH_HLEN * f.tx_packets,
                    drops: sum(&|c| c.tx_drops.get()),
                    fast_rx_packets: f.rx_packets,
                    fast_tx_packets: f.tx_packets,
                    pod: i.pod.as_ref().map(|p| format!("{} ({})", p.name, p.ip)),
                    state: ferroplane_api::InterfaceState::Up,
                    queues: queues.remove(&i.name).unwrap_or_default(),
                }
            })
            .chain(
                crate::vanish::lock(&self.gone)
                    .values()
                    .map(|g| InterfaceInfo {
                        name: g.host_ifname.clone(),
                        sw_if_index: 0,
                        kind: InterfaceKind::Pod,
                        ifindex: 0,
                        mac: String::new(),
                        ipv4: None,
                        mtu: 0,
                        xdp_mode: None,
                        port: None,
                        rx_packets: 0,
                        rx_bytes: 0,
                        tx_packets: 0,
                        tx_bytes: 0,
                        drops: 0,
                        fast_rx_packets: 0,
                        fast_tx_packets: 0,
                        pod: Some(format!("{} ({})", g.key, g.ip)),
                        state: g.state,
                        queues: Vec::new(),
                    }),
            )
            .collect()
    }

    pub(crate) fn routes(&self) -> Vec<RouteInfo> {
        let snap = self.shared.load();
        let fib = &snap.fib;
        let name = |sw_if: u16| {
            snap.ifaces
                .get(sw_if)
                .map(|i| i.name.clone())
                .unwrap_or_else(|| format!("sw_if {sw_if}"))
        };
        fib.route_table()
            .map(|(r, adjs)| RouteInfo {
                prefix: r.prefix.to_string(),
                source: match r.source {
                    TableSource::Connected => RouteSource::Connected,
                    TableSource::Pod => RouteSource::Pod,
                    TableSource::Static if r.prefix.is_default() => RouteSource::Default,
                    TableSource::Static => RouteSource::Static,
                    TableSource::Local => RouteSource::Local,
                    TableSource::Neighbour => RouteSource::Neighbour,
                    TableSource::Bgp => RouteSource::Bgp,
                    TableSource::Cluster => RouteSource::Cluster,
                },
                paths: adjs
                    .iter()
                    .filter_map(|a| match a.kind {
                        AdjKind::Drop => None,
                        AdjKind::Local => Some(RoutePath {
                            via: None,
                            interface: "host".into(),
                            resolved_mac: None,
                        }),
                        AdjKind::Rewrite | AdjKind::Incomplete => Some(RoutePath {
                            via: a.next_hop.map(|n| n.to_string()),
                            interface: name(a.sw_if),
                            resolved_mac: (a.kind == AdjKind::Rewrite).then(|| mac_str(&a.dst_mac)),
                        }),
                    })
                    .collect(),
            })
            .collect()
    }

    pub(crate) fn counters(&self) -> CountersReport {
        let nodes = self
            .info
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let sum = |f: &dyn Fn(&ferroplane_engine::counters::NodeCounters) -> u64| {
                    self.workers
                        .iter()
                        .filter_map(|w| w.nodes.get(i))
                        .map(f)
                        .sum::<u64>()
                };
                NodeCounters::from_totals(
                    n.name,
                    sum(&|c| c.calls.get()),
                    sum(&|c| c.vectors.get()),
                    sum(&|c| c.packets.get()),
                    sum(&|c| c.nanos.get()),
                )
            })
            .collect();
        let total = |f: &dyn Fn(&ferroplane_engine::counters::WorkerStats) -> u64| {
            self.workers.iter().map(|w| f(w)).sum::<u64>()
        };
        CountersReport {
            worker_count: self.workers.len() as u32,
            nodes,
            commands: total(&|w| w.commands.get()),
            command_nanos: total(&|w| w.command_nanos.get()),
            command_max_nanos: self
                .workers
                .iter()
                .map(|w| w.command_max_nanos.get())
                .max()
                .unwrap_or(0),
            workers: self.worker_lines(),
        }
    }

    /// One line per worker: its health (the watchdog's) and its totals.
    fn worker_lines(&self) -> Vec<ferroplane_api::WorkerInfo> {
        let health = self
            .watchdog
            .as_ref()
            .map(|d| d.workers())
            .unwrap_or_default();
        let ports = self.worker.ports_per_worker();
        let n = health.len().max(self.workers.len());
        (0..n)
            .map(|i| {
                let mut line = ferroplane_api::WorkerInfo {
                    worker: i as u32,
                    ports: ports.get(i).copied().unwrap_or(0) as u32,
                    ..Default::default()
                };
                if let Some(w) = health.get(i) {
                    line.state = w.state.as_str().to_string();
                    line.heartbeat = w.heartbeat;
                    line.heartbeat_age_secs = w.since_beat.as_secs_f64();
                    line.port_errors = w.port_errors;
                    line.io_errors = w.io_errors;
                    line.last_io_error = w.last_io_error.clone();
                }
                if let Some(s) = self.workers.get(i) {
                    let t = s.totals();
                    line.rx_packets = t.rx_packets;
                    line.tx_packets = t.tx_packets;
                    line.node_packets = t.node_packets;
                    line.node_nanos = t.nanos;
                    line.loops = t.loops;
                    line.handoff_sent = t.handoff_sent;
                    line.handoff_received = t.handoff_received;
                    line.handoff_drops = t.handoff_drops;
                }
                // One worker's table locked at a time.
                if let Some(ct) = self.sessions.get(i) {
                    line.sessions = match ct.lock() {
                        Ok(g) => g.len() as u64,
                        Err(p) => p.into_inner().len() as u64,
                    };
                }
                line
            })
            .collect()
    }

    pub(crate) fn errors(&self) -> Vec<ErrorCounter> {
        self.info
            .errors
            .iter()
            .enumerate()
            .map(|(code, (node, e))| ErrorCounter {
                node: self
                    .info
                    .nodes
                    .get(*node as usize)
                    .map(|n| n.name.to_string())
                    .unwrap_or_default(),
                reason: e.name.to_string(),
                description: e.description.to_string(),
                count: self
                    .workers
                    .iter()
                    .filter_map(|w| w.errors.get(code))
                    .map(|c| c.get())
                    .sum(),
                severity: match e.severity {
                    ferroplane_engine::Severity::Error => Severity::Error,
                    ferroplane_engine::Severity::Info => Severity::Info,
                },
            })
            .collect()
    }

    pub(crate) fn xdp(&self) -> Result<XdpReport, String> {
        let dp = self
            .bpf
            .lock()
            .map_err(|_| "BPF state lock poisoned".to_string())?;
        let s = dp
            .stats()
            .map_err(|e| format!("reading BPF counters: {e}"))?;
        Ok(XdpReport {
            verdicts: FpVerdict::ALL
                .iter()
                .map(|v| NamedCount {
                    name: v.name().to_string(),
                    description: v.description().to_string(),
                    count: s.verdict(*v),
                })
                .collect(),
            drops: FpDropReason::ALL
                .iter()
                .map(|r| NamedCount {
                    name: r.name().to_string(),
                    description: r.description().to_string(),
                    count: s.reason(*r),
                })
                .collect(),
            fast_path: dp
                .config()
                .is_ok_and(|c| c.flags & ferroplane_bpf::FpConfig::FAST_PATH != 0),
            flow_entries: dp.flow4().map_or(0, |e| e.len() as u64),
            flow_cache: ferroplane_bpf::FpFlowStat::ALL
                .iter()
                .map(|f| NamedCount {
                    name: f.name().to_string(),
                    description: f.description().to_string(),
                    count: s.flow(*f),
                })
                .collect(),
        })
    }

    /// `show_buffers`: asks the worker where its frames are.
    pub(crate) fn buffers(&self) -> Result<BuffersReport, String> {
        // Each worker's pool in turn, summed (ports in id order).
        let mut total: Option<BuffersReport> = None;
        for part in self.worker.exec_each(|_, io| {
            let pool = io.pool_stats();
            let ports = (0..io.num_ports())
                .filter_map(|i| {
                    let port = PortId::try_from(i).ok()?;
                    let (iface, queue) = io.port_info(port)?;
                    let s = io.port_stats(port)?;
                    let k = io.kernel_stats(port).unwrap_or_default();
                    Some(PortBuffers {
                        port,
                        interface: iface.to_string(),
                        queue,
                        rx_packets: s.rx_packets,
                        tx_packets: s.tx_packets,
                        fill_target: s.fill_target,
                        fill_frames: s.fill_frames,
                        fill_grown: s.fill_grown,
                        tx_in_flight: s.tx_in_flight,
                        rx_fill_ring_empty: k.rx_fill_ring_empty_descs,
                        rx_ring_full: k.rx_ring_full,
                        rx_dropped: k.rx_dropped,
                    })
                })
                .collect();
            BuffersReport {
                total: pool.total,
                frame_size: io.config().frame_size,
                free: pool.free,
                user: pool.user,
                fill: pool.fill,
                tx: pool.tx,
                max_fill_target: io.config().fill_target,
                closing_ports: io.closing_ports() as u32,
                closed_ports: io.closed_ports(),
                ports,
            }
        }) {
            let part = part.map_err(|e| format!("engine worker: {e}"))?;
            total = Some(match total {
                None => part,
                Some(mut t) => {
                    t.total += part.total;
                    t.free += part.free;
                    t.user += part.user;
                    t.fill += part.fill;
                    t.tx += part.tx;
                    t.closing_ports += part.closing_ports;
                    t.closed_ports += part.closed_ports;
                    t.ports.extend(part.ports);
                    t
                }
            });
        }
        let mut t = total.ok_or("no engine worker")?;
        t.ports.sort_by_key(|p| p.port);
        Ok(t)
    }
}

fn json<T: serde::Serialize>(v: T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

impl Handler for AgentView {
    fn handle(&self, req: &Request) -> Result<Value, String> {
        match req {
            Request::ShowInterfaces => json(self.interfaces()),
            Request::ShowRoutes => json(self.routes()),
            Request::ShowCounters => json(self.counters()),
            Request::ShowErrors => json(self.errors()),
            Request::ShowXdp => json(self.xdp()?),
            Request::ShowBuffers => json(self.buffers()?),
            Request::ClearCounters => {
                for c in &self.controls {
                    c.clear.store(true, Ordering::Relaxed);
                }
                if let Ok(mut dp) = self.bpf.lock() {
                    dp.clear_stats()
                        .map_err(|e| format!("clearing BPF counters: {e}"))?;
                }
                json(serde_json::json!({"cleared": true}))
            }
            Request::Version => json(VersionInfo::new(env!("CARGO_PKG_VERSION"))),
            Request::TraceAdd {
                iface,
                count,
                filter,
            } => {
                crate::observe::trace_add(
                    &self.shared,
                    &self.controls,
                    iface.as_deref(),
                    *count,
                    filter.as_deref(),
                )?;
                Ok(Value::Null)
            }
            Request::ShowTrace => json(crate::observe::show_trace(&self.info, &self.controls)),
            Request::ClearTrace => {
                crate::observe::clear_trace(&self.controls);
                Ok(Value::Null)
            }
            Request::CaptureStart {
                iface,
                node,
                count,
                filter,
                max_bytes,
            } => {
                crate::observe::capture_start(
                    &self.shared,
                    &self.info,
                    &self.controls,
                    &self.captures,
                    iface.as_deref(),
                    node.as_deref(),
                    crate::observe::CaptureLimits::new(*count, *max_bytes)?,
                    filter.as_deref(),
                )?;
                Ok(Value::Null)
            }
            Request::CaptureTake => json(crate::observe::capture_take(
                &self.controls,
                &self.captures,
            )?),
            Request::ShowTunnels => {
                // A poisoned lock still holds a complete overlay.
                let overlay = match self.overlay.read() {
                    Ok(o) => o.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                json(overlay.report(&self.shared.load()))
            }
            Request::ShowBgp => {
                let mut r = crate::bgp::report(self.bgp.as_deref());
                r.fib_routes = self
                    .shared
                    .load()
                    .fib
                    .routes()
                    .filter(|r| r.source == TableSource::Bgp)
                    .count();
                json(r)
            }
            Request::ShowBgpRoutes => json(crate::bgp::routes_report(self.bgp.as_deref())),
            Request::ShowServices => json(crate::services::services_report(&self.services)),
            Request::ShowHostPorts => json(crate::hostports::report_of(&self.services)),
            Request::ShowPolicies { pod } => json(crate::policy::report(pod.as_deref())?),
            Request::ShowNeighbors => json(crate::observe::neighbors(&self.shared.load())),
            Request::ShowSessions { filter } => {
                json(crate::services::sessions_report(&self.sessions, filter)?)
            }
        }
    }
}
