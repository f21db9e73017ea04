//! `ip4-nat`: connection tracking, service load balancing (DNAT), reverse
//! NAT of replies, SNAT (hairpin, externalTrafficPolicy=Cluster to a remote
//! backend, masquerade of pod traffic leaving the cluster), rejection of
//! services without endpoints, and translation of ICMP errors about
//! translated flows (outer and quoted inner headers).
//!
//! One session-table probe per packet; a miss on a service frontend costs one
//! service-table probe and one Maglev slot load, whatever the number of
//! services. The session table belongs to this worker (see
//! [`Ip4Nat::sessions`]); the node takes its mutex once per vector.
//!
//! Sessions track TCP, UDP and ICMP states as the kernel's conntrack does
//! ([`ferroplane_tables::conntrack`]): a TCP session is established only once the
//! three-way handshake completes. A full table evicts an unestablished or closing
//! session for a new flow (`conntrack-early-drop`) and refuses new flows only when
//! every session is an established connection (`conntrack-full`), so a SYN flood
//! cannot lock services out. Only packets of established sessions are offered to
//! the XDP flow cache.
//!
//! Masquerade applies to connections a pod *originated*, as the kernel's MASQUERADE (a
//! rule on the connection's first packet, replies restored from conntrack): with
//! masquerade on, a connection from outside the cluster to a local pod is tracked
//! untranslated from its first packet ([`NatKind::Untranslated`]), so the pod's replies
//! are that session's reply direction and keep the pod's address.
//!
//! The node is one graph node, as VPP's `nat44-ed` fast path is, but its code follows
//! VPP's division of the work:
//!
//! - `session`: the per-packet loop: classify the packet into its flow key, look its
//!   session up, create one for a new flow, apply the translation;
//! - `translate`: rewrite addresses and ports with incremental checksums, and the TCP
//!   reset answering a service without endpoints;
//! - `icmp_error`: translation of ICMP errors quoting a translated packet;
//! - `service`: a new flow to a service frontend: backend choice (Maglev, ClientIP
//!   affinity), DNAT, and the SNAT that hairpin, the node's own traffic and
//!   externalTrafficPolicy=Cluster need;
//! - `snat`: masquerade of pod flows leaving the cluster, untranslated tracking of
//!   connections from outside to local pods, and SNAT port allocation.
//!
//! It stays one node (its name, next arcs and counters are the `ip4-nat ...` names that
//! `show errors`, the metrics, the tests and the README use): the steps share one session
//! probe and one lock hold per vector, and separate nodes would add a dispatch per vector
//! and a second probe for what the first already found.

mod icmp_error;
mod service;
mod session;
mod snat;
mod translate;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use ferroplane_tables::hash::FastMap;
use ferroplane_tables::{Conntrack, FlowKey, FrontendKey, Ipv4Prefix, NatConfig, ServiceTable};

use crate::node::NodeInfo;
use crate::{node_errors, node_nexts};

use service::Affinity;

node_nexts! {
    /// Next arcs of `ip4-nat`.
    pub enum NatNext { Drop = "error-drop", Lookup = "ip4-policy", IcmpError = "ip4-icmp-error" }
}

node_errors! {
    /// Error reasons of `ip4-nat`.
    pub enum NatError {
        NewService = (Info, "service-sessions", "new service flows load-balanced to a backend"),
        NewMasquerade = (Info, "masquerade-sessions", "new pod flows leaving the cluster masqueraded"),
        Hairpin = (Info, "hairpin", "new service flows whose backend is the client itself (SNAT to the VIP)"),
        ClusterSnat = (Info, "external-snat", "new external flows to a remote backend SNATed to the node (externalTrafficPolicy=Cluster)"),
        IcmpTranslated = (Info, "icmp-error-translated", "ICMP errors about a translated flow rewritten"),
        NoEndpoints = (Error, "no-endpoints", "service without endpoints: TCP reset or ICMP port unreachable sent"),
        NoLocalEndpoints = (Error, "no-local-endpoints", "traffic policy Local and no endpoint on this node"),
        Full = (Error, "conntrack-full", "session table full of established connections: new flow dropped"),
        EarlyDrop = (Info, "conntrack-early-drop", "session table full: an unestablished or closing session evicted for a new flow"),
        NoPort = (Error, "snat-ports-exhausted", "no free SNAT port for the destination"),
        NoSnatAddress = (Error, "no-snat-address", "SNAT needed but the node has no address"),
        FragmentNoSession = (Error, "fragment-no-session", "non-first fragment of a flow to translate whose first fragment made no session (dropped or rejected)"),
        HostService = (Info, "host-sessions", "new service flows from the node itself (punt TUN): source port SNATed into the SNAT range so replies come back to the engine"),
        Tracked = (Info, "tracked-sessions", "new connections from outside the cluster to local pods tracked untranslated (masquerade on: their replies are not masqueraded)"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "ip4-nat",
    nexts: NatNext::NAMES,
    errors: NatError::INFO,
};

/// The worker's session table, shared with the control plane for display.
pub type SharedSessions = Arc<Mutex<Conntrack>>;

/// The connection tracking and NAT node.
#[derive(Debug)]
pub struct Ip4Nat {
    sessions: SharedSessions,
    affinity: FastMap<(FrontendKey, Ipv4Addr), Affinity>,
}

impl Default for Ip4Nat {
    fn default() -> Self {
        let cfg = NatConfig::default();
        Ip4Nat {
            sessions: Arc::new(Mutex::new(Conntrack::new(cfg.conntrack_max, cfg.timeouts))),
            affinity: FastMap::default(),
        }
    }
}

impl Ip4Nat {
    /// The session table (lock it to read; the worker takes it once per vector).
    pub fn sessions(&self) -> SharedSessions {
        self.sessions.clone()
    }
}

/// Parsed addressing of one packet.
#[derive(Debug, Clone, Copy)]
struct Parsed {
    hl: usize,
    key: FlowKey,
    tcp_flags: u16,
    /// ICMP type for ICMP packets.
    icmp_type: u8,
    /// A non-first fragment: ports from its first fragment (`ip4-frag`), no L4 header.
    tail: bool,
}

/// Where a packet without a session came from, for NAT purposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A local pod's interface.
    Pod,
    /// The node itself: the punt TUN's read side (its traffic to service addresses).
    Host,
    /// The uplink or a tunnel.
    Outside,
}

/// Where a new flow goes.
enum Decision {
    /// Translate with this session.
    Session(u32),
    /// Forward untranslated.
    Pass,
    /// Drop with a reason.
    Drop(NatError),
    /// Reject (RST / port unreachable).
    Reject,
}

fn lock(m: &Mutex<Conntrack>) -> MutexGuard<'_, Conntrack> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Per-vector context.
struct Env<'a> {
    services: &'a ServiceTable,
    nat: &'a NatConfig,
    node_ip: Option<Ipv4Addr>,
    /// This node's pod CIDRs.
    pod_cidrs: &'a [Ipv4Prefix],
    now: u64,
}

impl Env<'_> {
    /// Whether a pod's packet to `addr` leaves the cluster, so that a new pod flow to it
    /// is masqueraded (when masquerade is on): outside `clusterCIDRs` and not one of the
    /// node's addresses.
    #[inline(always)]
    fn leaves_cluster(&self, addr: Ipv4Addr) -> bool {
        !self.nat.in_cluster(addr)
            && Some(addr) != self.node_ip
            && !self.services.node_addrs().contains(&addr)
    }
}
