//! Prometheus metrics: `GET /metrics` on a local address, text exposition
//! (prometheus-client), computed from the same counters `ferroctl show` reads.
//!
//! The body is the Prometheus text format 0.0.4 (what `promtool check metrics` and
//! Prometheus' classic parser read), written by prometheus-client's encoder as it is:
//! [`encode_registry`] (no OpenMetrics `# EOF` line), and counters as [`Total`], a
//! counter metric type whose samples carry the family's own name (`x_total`), as 0.0.4
//! wants (prometheus-client's `Counter` writes OpenMetrics' `x` family with `x_total`
//! samples).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::encoding::{EncodeGaugeValue, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::api::AgentView;
use crate::listen::{self, AbortOnDrop, ConnTable, HttpLimits};

type Labels = Vec<(String, String)>;

/// A counter read from the engine's or the agent's own counters when scraped (its value is
/// set, not counted here), exposed in the Prometheus text format 0.0.4: registered under
/// its full name (`errors_total`), its samples carry that name. prometheus-client's text
/// encoder writes OpenMetrics, whose counter family `errors` has samples `errors_total`;
/// 0.0.4 names the family like its samples. The crate's extension point for metric types
/// ([`EncodeMetric`]) gives that without touching the encoder's output.
#[derive(Debug, Default)]
struct Total<V = u64>(std::sync::Mutex<V>);

impl<V: Copy + Default + std::ops::AddAssign> Total<V> {
    /// Adds `v` (a label set listed twice is summed).
    fn add(&self, v: V) {
        match self.0.lock() {
            Ok(mut g) => *g += v,
            Err(p) => *p.into_inner() += v,
        }
    }

    fn get(&self) -> V {
        match self.0.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
}

impl<V> TypedMetric for Total<V> {
    const TYPE: MetricType = MetricType::Counter;
}

impl<V: Copy + Default + std::ops::AddAssign + EncodeGaugeValue + std::fmt::Debug> EncodeMetric
    for Total<V>
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The sample line `name{labels} value`, without OpenMetrics' `_total` suffix.
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Registers the counter family `{name}_total`.
fn counter_family(
    reg: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, u64)>,
) {
    let fam = Family::<Labels, Total>::default();
    for (labels, v) in values {
        fam.get_or_create(&labels).add(v);
    }
    reg.register(format!("{name}_total"), help, fam);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

fn gauge_family(
    reg: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, i64)>,
) {
    let fam = Family::<Labels, Gauge>::default();
    for (labels, v) in values {
        fam.get_or_create(&labels).inc_by(v);
    }
    reg.register(name, help, fam);
}

type Durations = Family<Labels, Histogram, fn() -> Histogram>;

/// Durations of the agent's reconciles, by what was reconciled (lives as long as the agent).
fn reconciles() -> &'static Durations {
    static R: std::sync::OnceLock<Durations> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 4.0, 10)))
    })
}

/// Record one reconcile of `what` (e.g. `publish`: desired state to engine tables and BPF
/// steering) that took `elapsed`.
pub fn observe_reconcile(what: &str, elapsed: Duration) {
    reconciles()
        .get_or_create(&l(&[("what", what)]))
        .observe(elapsed.as_secs_f64());
}

/// Times a reconcile: records its duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    what: &'static str,
    start: std::time::Instant,
}

impl ReconcileTimer {
    /// Start timing a reconcile of `what`.
    pub fn start(what: &'static str) -> ReconcileTimer {
        ReconcileTimer {
            what,
            start: std::time::Instant::now(),
        }
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        observe_reconcile(self.what, self.start.elapsed());
    }
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The exposition text of every metric.
pub fn render(view: &AgentView) -> String {
    let mut reg = Registry::with_prefix("ferroplane");
    let ifs = view.interfaces();
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
        &mut reg,
        "interface_rx_packets",
        "Packets the engine received from the interface",
        by_if(&|i| i.rx_packets),
    );
    counter_family(
        &mut reg,
        "interface_rx_bytes",
        "Bytes the engine received from the interface",
        by_if(&|i| i.rx_bytes),
    );
    counter_family(
        &mut reg,
        "interface_tx_packets",
        "Packets the engine sent on the interface",
        by_if(&|i| i.tx_packets),
    );
    counter_family(
        &mut reg,
        "interface_tx_bytes",
        "Bytes the engine sent on the interface",
        by_if(&|i| i.tx_bytes),
    );
    counter_family(
        &mut reg,
        "interface_drops",
        "Packets that could not be queued on the interface",
        by_if(&|i| i.drops),
    );
    counter_family(
        &mut reg,
        "interface_fast_path_rx_packets",
        "Packets the XDP fast path forwarded that arrived on the interface (not seen by the engine)",
        by_if(&|i| i.fast_rx_packets),
    );
    counter_family(
        &mut reg,
        "interface_fast_path_tx_packets",
        "Packets the XDP fast path forwarded out of the interface",
        by_if(&|i| i.fast_tx_packets),
    );
    gauge(
        &mut reg,
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
        counter_family(&mut reg, name, help, by_queue(&f));
    }

    let c = view.counters();
    let by_node = |f: &dyn Fn(&ferroplane_api::NodeCounters) -> u64| {
        c.nodes
            .iter()
            .map(|n| (l(&[("node", &n.name)]), f(n)))
            .collect::<Vec<_>>()
    };
    counter_family(
        &mut reg,
        "node_calls",
        "Calls of the graph node",
        by_node(&|n| n.calls),
    );
    counter_family(
        &mut reg,
        "node_vectors",
        "Vectors processed by the graph node",
        by_node(&|n| n.vectors),
    );
    counter_family(
        &mut reg,
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
    gauge(&mut reg, "workers", "Engine workers", c.worker_count as i64);

    let errors = view.errors();
    counter_family(
        &mut reg,
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
            &mut reg,
            "xdp_verdicts",
            "Verdicts of the XDP programs",
            x.verdicts
                .iter()
                .map(|v| (l(&[("verdict", &v.name)]), v.count)),
        );
        counter_family(
            &mut reg,
            "xdp_reasons",
            "Reason counters of the XDP programs",
            x.drops.iter().map(|v| (l(&[("reason", &v.name)]), v.count)),
        );
        counter_family(
            &mut reg,
            "xdp_flow_cache",
            "Fast-path outcomes of the XDP flow cache (hit, or why the packet went to the engine)",
            x.flow_cache
                .iter()
                .map(|v| (l(&[("outcome", &v.name)]), v.count)),
        );
        gauge(
            &mut reg,
            "xdp_flow_cache_entries",
            "Entries in the XDP flow cache (flow4)",
            x.flow_entries as i64,
        );
    }
    let snap = view.shared.load();
    gauge(
        &mut reg,
        "routes",
        "Routes in the engine FIB",
        snap.fib.routes().count() as i64,
    );
    gauge(
        &mut reg,
        "tables_version",
        "Version of the tables the engine runs",
        snap.version as i64,
    );
    // Pods whose interface vanished or whose namespace is missing; the workers' health.
    gauge_family(
        &mut reg,
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
        &mut reg,
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
        &mut reg,
        "worker_port_errors",
        "Errors of single AF_XDP ports (each port reset, the worker carried on)",
        workers.iter().map(|(i, w)| (worker(*i), w.port_errors)),
    );
    counter_family(
        &mut reg,
        "worker_io_errors",
        "Errors of the engine worker's I/O backend as a whole (retried after a back-off)",
        workers.iter().map(|(i, w)| (worker(*i), w.io_errors)),
    );
    control_plane(&mut reg, view, &snap);
    let mut out = String::new();
    if encode_registry(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

/// Sessions, services, policies, BGP, tunnels and reconcile durations.
fn control_plane(reg: &mut Registry, view: &AgentView, snap: &ferroplane_engine::Snapshot) {
    let (mut used, mut capacity) = (0usize, 0usize);
    for t in &view.sessions {
        let ct = match t.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        used += ct.len();
        capacity += ct.limit();
    }
    gauge(
        reg,
        "sessions",
        "Connection tracking / NAT sessions in use (all workers)",
        used as i64,
    );
    gauge(
        reg,
        "sessions_capacity",
        "Connection tracking / NAT sessions the workers can hold",
        capacity as i64,
    );
    let ports = snap.services.ports();
    // hostPorts are service ports too (`hostport:<pod>`); counted apart below.
    let names: std::collections::BTreeSet<&str> = ports
        .iter()
        .map(|p| p.def.service.as_str())
        .filter(|n| !n.starts_with(crate::hostports::SERVICE_PREFIX))
        .collect();
    gauge(
        reg,
        "services",
        "Services programmed in the engine",
        names.len() as i64,
    );
    gauge(
        reg,
        "service_ports",
        "Service ports programmed in the engine",
        ports.len() as i64,
    );
    counter_family(
        reg,
        "service_steering_refused",
        "Service addresses and node ports the BPF steering maps refused (full map): left to the kernel",
        [(
            Labels::new(),
            crate::services::STEERING_REFUSED.load(std::sync::atomic::Ordering::Relaxed),
        )],
    );
    gauge(
        reg,
        "service_frontends",
        "Service frontends (cluster IP, NodePort, external and load-balancer addresses)",
        snap.services.frontends().count() as i64,
    );
    {
        let hp = match view.services.lock() {
            Ok(c) => (c.host_ports.served.len(), c.host_ports.shadowed.len()),
            Err(p) => {
                let c = p.into_inner();
                (c.host_ports.served.len(), c.host_ports.shadowed.len())
            }
        };
        gauge_family(
            reg,
            "hostports",
            "Pods' hostPorts (CNI portMappings, Pod hostPort): served by the engine, or shadowed (another owner has the port)",
            [
                (l(&[("state", "served")]), hp.0 as i64),
                (l(&[("state", "shadowed")]), hp.1 as i64),
            ],
        );
    }
    // Service entries refused in Kubernetes mode (address hijack: an externalIP or
    // load-balancer IP that is a pod, node or service address; a bad healthCheckNodePort).
    gauge_family(
        reg,
        "service_entries_ignored",
        "Service entries left out because they would capture pod, node or service addresses or ports (Kubernetes mode), by field",
        crate::services::ignored_entries()
            .into_iter()
            .map(|(field, n)| (l(&[("field", field)]), n as i64)),
    );
    {
        let c = crate::policy::compiler();
        let c = match c.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        gauge(
            reg,
            "network_policies",
            "NetworkPolicies known to the policy compiler",
            c.policy_count() as i64,
        );
        gauge(
            reg,
            "policy_acls",
            "Distinct compiled ACLs (shared by pods with the same effective policy)",
            c.acl_count() as i64,
        );
    }
    gauge(
        reg,
        "policy_isolated_pods",
        "Pods isolated by a NetworkPolicy in the engine's tables",
        snap.policy.len() as i64,
    );

    let bgp = crate::bgp::report(view.bgp.as_deref());
    let mut by_state: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for p in &bgp.peers {
        *by_state.entry(p.state.clone()).or_default() += 1;
    }
    gauge_family(
        reg,
        "bgp_peers",
        "BGP peers by session state",
        by_state.into_iter().map(|(s, n)| (l(&[("state", &s)]), n)),
    );
    gauge_family(
        reg,
        "bgp_peer_up",
        "1 when the BGP session with the peer is Established",
        bgp.peers.iter().map(|p| {
            (
                l(&[("peer", &p.address)]),
                i64::from(p.state.eq_ignore_ascii_case("established")),
            )
        }),
    );
    gauge_family(
        reg,
        "bgp_peer_prefixes",
        "Prefixes per BGP peer: received, accepted (after policy) and advertised",
        bgp.peers.iter().flat_map(|p| {
            [
                ("received", p.received),
                ("accepted", p.accepted),
                ("advertised", p.advertised),
            ]
            .into_iter()
            .map(|(d, n)| (l(&[("peer", &p.address), ("direction", d)]), n as i64))
        }),
    );
    gauge(
        reg,
        "bgp_loc_rib_prefixes",
        "Prefixes in the BGP Loc-RIB",
        bgp.loc_rib as i64,
    );

    let tunnels = {
        // A poisoned lock still holds a complete overlay.
        let overlay = match view.overlay.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        overlay.report(snap)
    };
    gauge_family(
        reg,
        "tunnel_peer_state",
        "Overlay peers: 1 for the peer's current state (up, handshaking, expired)",
        tunnels.peers.iter().map(|p| {
            (
                l(&[("peer", &p.name), ("mode", &p.mode), ("state", &p.state)]),
                1,
            )
        }),
    );
    counter_family(
        reg,
        "tunnel_rx_packets",
        "Inner packets received from the overlay peer",
        tunnels
            .peers
            .iter()
            .map(|p| (l(&[("peer", &p.name), ("mode", &p.mode)]), p.rx_packets)),
    );
    counter_family(
        reg,
        "tunnel_tx_packets",
        "Inner packets sent to the overlay peer",
        tunnels
            .peers
            .iter()
            .map(|p| (l(&[("peer", &p.name), ("mode", &p.mode)]), p.tx_packets)),
    );
    reg.register(
        "reconcile_duration_seconds",
        "Time the agent took to turn its desired state into engine tables and BPF steering",
        reconciles().clone(),
    );
}

/// Status, content type and body for `method` on `path` (with its query, if any).
fn answer(
    method: &str,
    path: &str,
    render: impl FnOnce() -> String,
) -> (u16, &'static str, String) {
    let get = method == "GET" || method == "HEAD";
    if get && (path == "/metrics" || path.starts_with("/metrics?")) {
        (200, "text/plain; version=0.0.4; charset=utf-8", render())
    } else if get && path == "/healthz" {
        (200, "text/plain", "ok\n".to_string())
    } else {
        (404, "text/plain", "try /metrics\n".to_string())
    }
}

/// A running metrics endpoint (on the listeners' runtime, [`listen::runtime`]); dropping
/// it stops the listener.
pub struct MetricsServer {
    addr: SocketAddr,
    table: Arc<ConnTable>,
    _task: AbortOnDrop,
}

impl MetricsServer {
    /// Listen on `addr` and answer `/metrics` (and `/healthz`) from `view`, with the
    /// default [`HttpLimits`].
    pub fn start(addr: SocketAddr, view: Arc<AgentView>) -> std::io::Result<MetricsServer> {
        let limits = HttpLimits {
            max_connections: listen::connection_limit(HttpLimits::default().max_connections),
            ..HttpLimits::default()
        };
        Self::start_with(addr, view, limits)
    }

    /// [`MetricsServer::start`] with `limits`.
    pub fn start_with(
        addr: SocketAddr,
        view: Arc<AgentView>,
        limits: HttpLimits,
    ) -> std::io::Result<MetricsServer> {
        let handler: listen::HttpHandler = Arc::new(move |req| {
            let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
            let (code, ctype, body) = answer(req.method().as_str(), path, || render(&view));
            listen::response(code, ctype, body)
        });
        Self::start_handler(addr, handler, limits)
    }

    fn start_handler(
        addr: SocketAddr,
        handler: listen::HttpHandler,
        limits: HttpLimits,
    ) -> std::io::Result<MetricsServer> {
        let rt = listen::runtime()?;
        let listener = listen::bind_tcp(addr, &rt)?;
        let addr = listener.local_addr()?;
        let table = ConnTable::new("metrics", limits.max_connections);
        let task = rt.spawn(listen::serve_http(
            listener,
            "metrics",
            table.clone(),
            limits,
            handler,
        ));
        Ok(MetricsServer {
            addr,
            table,
            _task: AbortOnDrop(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its connections.
    pub fn connections(&self) -> &Arc<ConnTable> {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::testkit;

    /// The endpoint with [`answer`]'s routing over a small registry (the agent's view needs
    /// a live dataplane).
    fn start() -> MetricsServer {
        let handler: listen::HttpHandler = Arc::new(|req| {
            let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
            let (code, ctype, body) = answer(req.method().as_str(), path, || {
                let mut reg = Registry::with_prefix("ferroplane");
                counter_family(
                    &mut reg,
                    "errors",
                    "Packets dropped",
                    [(l(&[("node", "ip4-input")]), 3)],
                );
                gauge(&mut reg, "workers", "Engine workers", 1);
                let seconds = Family::<Labels, Total<f64>>::default();
                seconds
                    .get_or_create(&l(&[("node", "ip4-input")]))
                    .add(0.25);
                reg.register("node_seconds_total", "Time spent", seconds);
                let mut out = String::new();
                encode_registry(&mut out, &reg).unwrap();
                out
            });
            listen::response(code, ctype, body)
        });
        MetricsServer::start_handler("127.0.0.1:0".parse().unwrap(), handler, testkit::limits())
            .unwrap()
    }

    #[test]
    fn serves_prometheus_text() {
        let m = start();
        let out = testkit::get(m.addr(), "/metrics");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            out.contains("content-type: text/plain; version=0.0.4"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE ferroplane_errors_total counter"),
            "{out}"
        );
        assert!(
            out.contains("ferroplane_errors_total{node=\"ip4-input\"} 3"),
            "{out}"
        );
        assert!(
            out.contains("# HELP ferroplane_errors_total Packets dropped."),
            "{out}"
        );
        assert!(
            out.contains("ferroplane_node_seconds_total{node=\"ip4-input\"} 0.25"),
            "{out}"
        );
        assert!(!out.contains("_total_total"), "{out}");
        assert!(!out.contains("# EOF"), "{out}");
        assert!(testkit::get(m.addr(), "/x").starts_with("HTTP/1.1 404"));
        assert!(testkit::get(m.addr(), "/healthz").starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn hardened() {
        let m = start();
        testkit::check_all(m.addr(), "/metrics", m.connections());
    }
}
