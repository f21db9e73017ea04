//! Serde types of the API: the envelope and the data each request returns.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::API_VERSION;

/// One request to the agent, tagged by `kind` on the wire:
/// `{"kind":"show_interfaces"}`.
///
/// The comment on each variant names the type of the `data` the agent answers
/// with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// `show_interfaces`: answers `Vec<InterfaceInfo>`.
    ShowInterfaces,
    /// `show_routes`: answers `Vec<RouteInfo>`.
    ShowRoutes,
    /// `show_counters`: answers [`CountersReport`] (per-node runtime counters).
    ShowCounters,
    /// `show_errors`: answers `Vec<ErrorCounter>`, zero counters included.
    ShowErrors,
    /// `show_xdp`: answers [`XdpReport`] (the XDP programs' counters).
    ShowXdp,
    /// `clear_counters`: resets node, error and interface counters; answers `null`.
    ClearCounters,
    /// `version`: answers [`VersionInfo`].
    Version,
    /// `show_tunnels`: answers [`crate::TunnelsReport`] (overlay peers, modes, WireGuard state).
    ShowTunnels,
    /// `show_bgp`: answers [`crate::BgpReport`] (speaker and peers).
    ShowBgp,
    /// `show_bgp_routes`: answers `Vec<crate::BgpRoute>` (the Loc-RIB, best path first).
    ShowBgpRoutes,
    /// `trace_add`: trace the next `count` packets received (on `iface`, matching
    /// `filter`, e.g. `dst 10.244.1.11 and proto tcp`); answers `null`.
    TraceAdd {
        /// Interface name (any when absent).
        #[serde(default)]
        iface: Option<String>,
        /// How many packets.
        count: u32,
        /// Filter expression (all when absent).
        #[serde(default)]
        filter: Option<String>,
    },
    /// `show_trace`: answers `Vec<TracePacket>`, the path of each traced packet.
    ShowTrace,
    /// `clear_trace`: drops the trace records; answers `null`.
    ClearTrace,
    /// `capture_start`: copy the next `count` packets seen on `iface` (rx and tx) or
    /// entering graph node `node`, matching `filter`; answers `null`.
    CaptureStart {
        /// Interface name.
        #[serde(default)]
        iface: Option<String>,
        /// Graph node name (e.g. `error-drop`).
        #[serde(default)]
        node: Option<String>,
        /// How many packets (the agent refuses more than its hard maximum, 100000).
        count: u32,
        /// Filter expression.
        #[serde(default)]
        filter: Option<String>,
        /// At most this many bytes of frames (the agent's default when absent: 16 MiB;
        /// more than its hard maximum, 64 MiB, is refused); the capture ends when the next
        /// frame would pass it.
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    /// `capture_take`: answers [`CaptureReport`] with what the capture took so far.
    CaptureTake,
    /// `show_services`: answers `Vec<crate::ServiceInfo>` (frontends, backends, Maglev fill).
    ShowServices,
    /// `show_hostports`: answers `Vec<crate::HostPortInfo>` (the pods' hostPorts, served or
    /// shadowed).
    #[serde(rename = "show_hostports")]
    ShowHostPorts,
    /// `show_sessions`: answers [`crate::SessionsReport`] (sessions matching `filter`).
    ShowSessions {
        /// Filters.
        #[serde(default)]
        filter: crate::SessionFilter,
    },
    /// `show_policies`: answers [`crate::PoliciesReport`] (compiled NetworkPolicy ACLs of
    /// every pod, or of `pod` given as `namespace/name`).
    ShowPolicies {
        /// Only this pod (`namespace/name`).
        #[serde(default)]
        pod: Option<String>,
    },
    /// `show_neighbors`: answers `Vec<crate::NeighborInfo>` (the engine's next hops: IP,
    /// MAC, interface, state).
    ShowNeighbors,
    /// `show_buffers`: answers [`crate::BuffersReport`] (the AF_XDP frame pool and each
    /// port's fill ring).
    ShowBuffers,
}

impl Request {
    /// Every request kind, in declaration order.
    pub const ALL: &'static [Request] = &[
        Request::ShowInterfaces,
        Request::ShowRoutes,
        Request::ShowCounters,
        Request::ShowErrors,
        Request::ShowXdp,
        Request::ClearCounters,
        Request::Version,
        Request::ShowTunnels,
        Request::ShowBgp,
        Request::ShowBgpRoutes,
        Request::TraceAdd {
            iface: None,
            count: 0,
            filter: None,
        },
        Request::ShowTrace,
        Request::ClearTrace,
        Request::CaptureStart {
            iface: None,
            node: None,
            count: 0,
            filter: None,
            max_bytes: None,
        },
        Request::CaptureTake,
        Request::ShowServices,
        Request::ShowHostPorts,
        Request::ShowSessions {
            filter: crate::SessionFilter {
                addr: None,
                port: None,
                proto: None,
                limit: None,
            },
        },
        Request::ShowPolicies { pod: None },
        Request::ShowNeighbors,
        Request::ShowBuffers,
    ];

    /// The wire name of the request (the value of `kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::ShowInterfaces => "show_interfaces",
            Request::ShowRoutes => "show_routes",
            Request::ShowCounters => "show_counters",
            Request::ShowErrors => "show_errors",
            Request::ShowXdp => "show_xdp",
            Request::ClearCounters => "clear_counters",
            Request::Version => "version",
            Request::ShowTunnels => "show_tunnels",
            Request::ShowBgp => "show_bgp",
            Request::ShowBgpRoutes => "show_bgp_routes",
            Request::TraceAdd { .. } => "trace_add",
            Request::ShowTrace => "show_trace",
            Request::ClearTrace => "clear_trace",
            Request::CaptureStart { .. } => "capture_start",
            Request::CaptureTake => "capture_take",
            Request::ShowServices => "show_services",
            Request::ShowHostPorts => "show_hostports",
            Request::ShowSessions { .. } => "show_sessions",
            Request::ShowPolicies { .. } => "show_policies",
            Request::ShowNeighbors => "show_neighbors",
            Request::ShowBuffers => "show_buffers",
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// What a client sends, one per line: `{"api_version":1,"request":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// The protocol version the client speaks ([`API_VERSION`]).
    pub api_version: u32,
    /// The request itself.
    pub request: Request,
}

impl RequestEnvelope {
    /// Wraps `request` with this crate's [`API_VERSION`].
    pub fn new(request: Request) -> Self {
        RequestEnvelope {
            api_version: API_VERSION,
            request,
        }
    }
}

/// What the agent answers, one per line:
/// `{"api_version":1,"ok":true,"data":...}` or
/// `{"api_version":1,"ok":false,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The protocol version the agent speaks ([`API_VERSION`]).
    pub api_version: u32,
    /// Whether the request succeeded; decides which of `data`/`error` is set.
    pub ok: bool,
    /// The answer when `ok` is true (its type depends on the request; absent
    /// or `null` for requests without a result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// A human-readable reason when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A successful response carrying `data`.
    pub fn success(data: serde_json::Value) -> Self {
        Response {
            api_version: API_VERSION,
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    /// A failed response carrying `message`.
    pub fn failure(message: impl Into<String>) -> Self {
        Response {
            api_version: API_VERSION,
            ok: false,
            data: None,
            error: Some(message.into()),
        }
    }
}

/// The role of an interface in the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceKind {
    /// `uplink`: the node's NIC toward the fabric.
    Uplink,
    /// `pod`: the host side of a pod's veth pair.
    Pod,
    /// `punt`: the TUN device handing packets to the host kernel.
    Punt,
    /// `tunnel`: an overlay tunnel to a remote node (virtual).
    Tunnel,
}

impl InterfaceKind {
    /// The wire name (`uplink`, `pod`, `punt`).
    pub fn as_str(&self) -> &'static str {
        match self {
            InterfaceKind::Uplink => "uplink",
            InterfaceKind::Pod => "pod",
            InterfaceKind::Punt => "punt",
            InterfaceKind::Tunnel => "tunnel",
        }
    }
}

impl fmt::Display for InterfaceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an interface is there (`show_interfaces`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceState {
    /// `up`: plumbed and served by the engine.
    #[default]
    Up,
    /// `vanished`: a pod's veth disappeared (its network namespace was deleted without a
    /// CNI DEL); its engine port is closed and its frames returned; its address stays
    /// reserved until CNI DEL or GC.
    Vanished,
    /// `missing`: the node spec names a pod whose network namespace does not exist; the
    /// agent plumbs it when the namespace appears.
    Missing,
}

impl InterfaceState {
    /// The wire name (`up`, `vanished`, `missing`).
    pub fn as_str(&self) -> &'static str {
        match self {
            InterfaceState::Up => "up",
            InterfaceState::Vanished => "vanished",
            InterfaceState::Missing => "missing",
        }
    }
}

impl fmt::Display for InterfaceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One interface known to the engine (`show_interfaces`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    /// Kernel interface name, e.g. `up0` or `fp1a2b3c4d5e6`.
    pub name: String,
    /// The engine's own interface index (VPP's sw_if_index).
    pub sw_if_index: u32,
    /// Role of the interface.
    pub kind: InterfaceKind,
    /// Kernel ifindex in the agent's network namespace.
    pub ifindex: u32,
    /// MAC address, lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// IPv4 address with prefix length (`192.168.100.2/24`), if any.
    pub ipv4: Option<String>,
    /// MTU in bytes (L3).
    pub mtu: u32,
    /// How the XDP program is attached: `native` or `skb`; `None` when none is.
    pub xdp_mode: Option<String>,
    /// The engine's AF_XDP port id, when the interface has one.
    pub port: Option<u16>,
    /// Packets received on this interface by the dataplane: by the engine (AF_XDP) and by
    /// the XDP fast path (`fast_rx_packets` of them).
    pub rx_packets: u64,
    /// Bytes of those packets (frames; for the fast path's, IPv4 length plus 14).
    pub rx_bytes: u64,
    /// Packets sent on this interface by the dataplane: by the engine and by the XDP fast
    /// path (`fast_tx_packets` of them).
    pub tx_packets: u64,
    /// Bytes of those packets (frames; for the fast path's, IPv4 length plus 14).
    pub tx_bytes: u64,
    /// Packets dropped on this interface (rx or tx).
    pub drops: u64,
    /// Packets the XDP fast path forwarded that arrived on this interface (never seen by
    /// the engine; part of `rx_packets`).
    #[serde(default)]
    pub fast_rx_packets: u64,
    /// Packets the XDP fast path forwarded out of this interface (part of `tx_packets`).
    #[serde(default)]
    pub fast_tx_packets: u64,
    /// For pod interfaces: the pod as `namespace/name`.
    pub pod: Option<String>,
    /// Whether it is there (a pod's interface may have vanished).
    #[serde(default)]
    pub state: InterfaceState,
    /// One entry per AF_XDP socket of the interface (one per RX queue: several for a
    /// multi-queue uplink), in queue order; empty when the worker did not answer.
    #[serde(default)]
    pub queues: Vec<QueueInfo>,
}

/// The counters of one RX queue's AF_XDP socket of an interface (`show_interfaces`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// The device's RX queue the socket is bound to.
    pub queue: u32,
    /// The engine's AF_XDP port id (the XSKMAP slot).
    pub port: u16,
    /// Packets the engine read from the socket.
    pub rx_packets: u64,
    /// Bytes the engine read from the socket.
    pub rx_bytes: u64,
    /// Packets the engine queued on the socket's TX ring.
    pub tx_packets: u64,
    /// Bytes the engine queued on the socket's TX ring.
    pub tx_bytes: u64,
    /// Packets the socket could not take for TX (ring full, over the port's share of the
    /// pool, invalid).
    pub tx_drops: u64,
    /// Packets the kernel dropped for this socket (no fill-ring frame, RX ring full or
    /// other reasons: XDP_STATISTICS).
    pub rx_drops: u64,
    /// Packets that found the fill ring empty (counted in `rx_drops` too).
    pub rx_fill_ring_empty: u64,
    /// Packets dropped because the RX ring was full (counted in `rx_drops` too).
    pub rx_ring_full: u64,
    /// Frames in the fill ring now.
    pub fill_frames: u32,
    /// Frames the fill ring is topped up to now.
    pub fill_target: u32,
}

/// Where a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// `connected`: the uplink's subnet.
    Connected,
    /// `pod`: a pod's /32.
    Pod,
    /// `static`: configured by the admin.
    Static,
    /// `local`: one of the node's own addresses (punted to the kernel).
    Local,
    /// `default`: the default route toward the gateway.
    Default,
    /// `neighbour`: a /32 for a resolved neighbour inside a connected subnet.
    Neighbour,
    /// `bgp`: learnt over BGP.
    Bgp,
    /// `cluster`: a remote node's pod CIDR from the cluster spec, through the overlay.
    Cluster,
}

impl RouteSource {
    /// The wire name (`connected`, `pod`, `static`, `local`, `default`, `neighbour`, `bgp`, `cluster`).
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteSource::Connected => "connected",
            RouteSource::Pod => "pod",
            RouteSource::Static => "static",
            RouteSource::Local => "local",
            RouteSource::Default => "default",
            RouteSource::Neighbour => "neighbour",
            RouteSource::Bgp => "bgp",
            RouteSource::Cluster => "cluster",
        }
    }
}

impl fmt::Display for RouteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One next hop of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePath {
    /// The next-hop IPv4 address; `None` for an attached (on-link) path.
    pub via: Option<String>,
    /// Name of the outgoing interface.
    pub interface: String,
    /// The next hop's MAC once resolved (ARP); `None` while unresolved.
    pub resolved_mac: Option<String>,
}

/// One entry of the engine's FIB (`show_routes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// The destination prefix, `10.244.1.0/24`.
    pub prefix: String,
    /// Where the route came from.
    pub source: RouteSource,
    /// Its paths (several for ECMP; empty for a drop route).
    pub paths: Vec<RoutePath>,
}

/// Runtime counters of one graph node, summed over workers (like VPP's
/// `show runtime`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCounters {
    /// The node's name, e.g. `ip4-lookup`.
    pub name: String,
    /// How many times the node ran.
    pub calls: u64,
    /// Vectors processed (a call processes one vector).
    pub vectors: u64,
    /// Packets processed.
    pub packets: u64,
    /// CPU clocks (TSC ticks) spent in the node.
    pub clocks: u64,
    /// Average vector size, `packets / calls` (VPP's "Vectors/Call", whose
    /// "vectors" are packets); 0 when there was no call.
    pub vectors_per_call: f64,
    /// `clocks / packets` (0 when there was no packet).
    pub clocks_per_packet: f64,
}

impl NodeCounters {
    /// Builds the counters of `name` from raw totals, computing the ratios.
    pub fn from_totals(
        name: impl Into<String>,
        calls: u64,
        vectors: u64,
        packets: u64,
        clocks: u64,
    ) -> Self {
        let ratio = |num: u64, den: u64| {
            if den == 0 {
                0.0
            } else {
                num as f64 / den as f64
            }
        };
        NodeCounters {
            name: name.into(),
            calls,
            vectors,
            packets,
            clocks,
            vectors_per_call: ratio(packets, calls),
            clocks_per_packet: ratio(clocks, packets),
        }
    }
}

/// Answer to `show_counters`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CountersReport {
    /// Number of engine workers the counters were summed over.
    pub worker_count: u32,
    /// One entry per graph node.
    pub nodes: Vec<NodeCounters>,
    /// Control-plane commands the workers ran between vectors (opening and closing
    /// pods' ports, reading their pools); the workers forward nothing meanwhile.
    #[serde(default)]
    pub commands: u64,
    /// Time spent in those commands, in nanoseconds.
    #[serde(default)]
    pub command_nanos: u64,
    /// The longest of them, in nanoseconds.
    #[serde(default)]
    pub command_max_nanos: u64,
    /// Each worker's health, as the agent's watchdog sees it.
    #[serde(default)]
    pub workers: Vec<WorkerInfo>,
}

/// One engine worker's health (`show_counters`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker index.
    pub worker: u32,
    /// `running`, `stalled` (no heartbeat for seconds: the probes fail) or `exited`.
    pub state: String,
    /// Its heartbeat counter (one per loop iteration that worked).
    pub heartbeat: u64,
    /// Seconds since the heartbeat last moved.
    pub heartbeat_age_secs: f64,
    /// Errors of single ports (each port was reset, the worker carried on).
    pub port_errors: u64,
    /// Errors of the I/O backend as a whole (retried after a back-off).
    pub io_errors: u64,
    /// The last of those.
    #[serde(default)]
    pub last_io_error: Option<String>,
    /// Packets it received from its ports (and the host), over all interfaces.
    #[serde(default)]
    pub rx_packets: u64,
    /// Packets its graph sent to interfaces (some transmitted by another worker).
    #[serde(default)]
    pub tx_packets: u64,
    /// Packets through graph nodes, summed over nodes.
    #[serde(default)]
    pub node_packets: u64,
    /// Time in graph nodes, in nanoseconds.
    #[serde(default)]
    pub node_nanos: u64,
    /// Loop iterations.
    #[serde(default)]
    pub loops: u64,
    /// Packets it handed to other workers (their flow or output port is another's).
    #[serde(default)]
    pub handoff_sent: u64,
    /// Packets other workers handed to it.
    #[serde(default)]
    pub handoff_received: u64,
    /// Packets dropped at its handoffs (a receiver's queue full, or no free frame).
    #[serde(default)]
    pub handoff_drops: u64,
    /// AF_XDP ports it owns (uplink queues and pod veths).
    #[serde(default)]
    pub ports: u32,
    /// Sessions in its table.
    #[serde(default)]
    pub sessions: u64,
}

/// How bad an error counter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// `error`: a packet was dropped for a reason worth looking at.
    Error,
    /// `info`: an expected event that is only counted.
    Info,
}

impl Severity {
    /// The wire name (`error`, `info`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One error/event counter of a node (like VPP's `show errors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounter {
    /// The node counting it, e.g. `ip4-input`.
    pub node: String,
    /// Short machine name of the reason, e.g. `ttl_expired`.
    pub reason: String,
    /// Human description, e.g. `ip4 ttl <= 1`.
    pub description: String,
    /// Count summed over workers since start or the last `clear_counters`.
    pub count: u64,
    /// How bad it is.
    pub severity: Severity,
}

/// A named counter with a description (XDP verdicts and drop reasons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedCount {
    /// Short machine name, e.g. `redirect` or `truncated_ip`.
    pub name: String,
    /// Human description.
    pub description: String,
    /// Count summed over CPUs.
    pub count: u64,
}

/// Answer to `show_xdp`: the counters kept by the XDP programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpReport {
    /// One entry per verdict (`pass`, `redirect`, `drop`, `redirect_failed`).
    pub verdicts: Vec<NamedCount>,
    /// One entry per drop/anomaly reason, zero counts included.
    pub drops: Vec<NamedCount>,
    /// Whether the XDP fast path (`--fast-path on`) forwards established flows itself.
    #[serde(default)]
    pub fast_path: bool,
    /// Entries in the flow cache (`flow4`).
    #[serde(default)]
    pub flow_entries: u64,
    /// Fast-path outcomes: `hit` (forwarded by XDP), then why other packets went to the
    /// engine (`miss`, `stale`, `control`, `uncacheable`, `bypass`), zero counts included.
    #[serde(default)]
    pub flow_cache: Vec<NamedCount>,
}

/// Answer to `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The agent's crate version, e.g. `0.1.0`.
    pub agent_version: String,
    /// The API version the agent speaks.
    pub api_version: u32,
}

impl VersionInfo {
    /// The version info of a program built with this crate: `agent_version`
    /// as given, `api_version` = [`API_VERSION`].
    pub fn new(agent_version: impl Into<String>) -> Self {
        VersionInfo {
            agent_version: agent_version.into(),
            api_version: API_VERSION,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_wire_names() {
        for req in Request::ALL {
            let v = serde_json::to_value(req).unwrap();
            assert_eq!(v["kind"], json!(req.kind()));
            let back: Request = serde_json::from_value(v).unwrap();
            assert_eq!(&back, req);
        }
    }

    #[test]
    fn envelope_shape() {
        let s = serde_json::to_string(&RequestEnvelope::new(Request::ShowInterfaces)).unwrap();
        assert_eq!(
            s,
            r#"{"api_version":1,"request":{"kind":"show_interfaces"}}"#
        );
    }

    #[test]
    fn response_shapes() {
        let ok = serde_json::to_string(&Response::success(json!([1]))).unwrap();
        assert_eq!(ok, r#"{"api_version":1,"ok":true,"data":[1]}"#);
        let err = serde_json::to_string(&Response::failure("boom")).unwrap();
        assert_eq!(err, r#"{"api_version":1,"ok":false,"error":"boom"}"#);
    }

    #[test]
    fn interface_field_names() {
        let i = InterfaceInfo {
            name: "up0".into(),
            sw_if_index: 1,
            kind: InterfaceKind::Uplink,
            ifindex: 7,
            mac: "02:00:00:00:00:01".into(),
            ipv4: Some("192.168.100.2/24".into()),
            mtu: 1500,
            xdp_mode: Some("native".into()),
            port: Some(0),
            rx_packets: 1,
            rx_bytes: 2,
            tx_packets: 3,
            tx_bytes: 4,
            drops: 5,
            fast_rx_packets: 0,
            fast_tx_packets: 0,
            pod: None,
            state: InterfaceState::Up,
            queues: Vec::new(),
        };
        // Older agents send no fast-path counters (zero) and no queues (none).
        let mut old = serde_json::to_value(&i).unwrap();
        if let Some(o) = old.as_object_mut() {
            o.remove("fast_rx_packets");
            o.remove("fast_tx_packets");
            o.remove("queues");
        }
        assert_eq!(serde_json::from_value::<InterfaceInfo>(old).unwrap(), i);
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(
            v,
            json!({
                "name": "up0", "sw_if_index": 1, "kind": "uplink", "ifindex": 7,
                "mac": "02:00:00:00:00:01", "ipv4": "192.168.100.2/24", "mtu": 1500,
                "xdp_mode": "native", "port": 0, "rx_packets": 1, "rx_bytes": 2,
                "tx_packets": 3, "tx_bytes": 4, "drops": 5, "fast_rx_packets": 0,
                "fast_tx_packets": 0, "pod": null, "state": "up", "queues": []
            })
        );
        assert_eq!(serde_json::from_value::<InterfaceInfo>(v).unwrap(), i);
    }

    #[test]
    fn enum_wire_names() {
        assert_eq!(
            serde_json::to_value(InterfaceKind::Punt).unwrap(),
            json!("punt")
        );
        assert_eq!(
            serde_json::to_value(RouteSource::Default).unwrap(),
            json!("default")
        );
        assert_eq!(serde_json::to_value(Severity::Info).unwrap(), json!("info"));
        for k in [
            InterfaceKind::Uplink,
            InterfaceKind::Pod,
            InterfaceKind::Punt,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
        }
        for s in [
            RouteSource::Connected,
            RouteSource::Pod,
            RouteSource::Static,
            RouteSource::Local,
            RouteSource::Default,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
    }

    #[test]
    fn node_counter_ratios() {
        let n = NodeCounters::from_totals("ip4-lookup", 4, 4, 512, 10240);
        assert_eq!(n.vectors_per_call, 128.0);
        assert_eq!(n.clocks_per_packet, 20.0);
        let idle = NodeCounters::from_totals("idle", 0, 0, 0, 0);
        assert_eq!(idle.vectors_per_call, 0.0);
        assert_eq!(idle.clocks_per_packet, 0.0);
    }
}

/// One step of a traced packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStep {
    /// Graph node.
    pub node: String,
    /// What the node recorded (its decision).
    pub text: String,
    /// The same as named fields: `decision` names the kind of record (`rx`, `ethernet`,
    /// `ip4`, `service-dnat`, `service-no-endpoint`, `masquerade`, `nat`, `reverse-nat`,
    /// `untranslated`, `policy`, `route`, `rewrite`, `encap`, `decap`, `tx`, `punt`,
    /// `drop`, ...); the other keys depend on it (`service`, `backend`, `verdict`,
    /// `rules`, `denied_by`, `prefix`, `reason`, ...). Absent from older agents.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
}

/// A traced packet: its steps through the graph, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracePacket {
    /// Trace id.
    pub id: u32,
    /// Steps.
    pub steps: Vec<TraceStep>,
}

/// One captured packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedPacket {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The frame, hex-encoded (Ethernet header first).
    pub hex: String,
}

/// What a capture took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureReport {
    /// Whether the capture took all it asked for.
    pub done: bool,
    /// Packets (taken out of the agent: each is returned once).
    pub packets: Vec<CapturedPacket>,
}
