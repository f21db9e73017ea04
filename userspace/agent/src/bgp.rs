//! BGP in the agent: the `bgp:` section of the node spec, the speaker
//! ([`ferroplane_bgp::Speaker`]) it starts, and the kernel routes it keeps in the
//! node's namespace.
//!
//! ```yaml
//! bgp:
//!   localAS: 64512
//!   routerID: 192.168.100.2        # optional, default node.address
//!   listenPort: 179                # optional
//!   holdTime: 90                   # optional (0 or >= 3)
//!   connectRetry: 5                # optional, seconds (>= 1)
//!   multipath: true                # optional: equal paths become ECMP groups
//!   gracefulRestart: { enabled: true, restartTime: 120 }
//!   fullMesh: true                 # optional: iBGP to every cluster.nodes[] address
//!   kernelRoutes: true             # optional: learnt routes into the node's kernel table
//!   advertise:
//!     podCIDR: true                # optional
//!     serviceClusterIPRange: 10.96.0.0/12   # optional
//!     externalIPs: false           # optional: services' externalIPs as /32
//!     loadBalancerIPs: false       # optional: LoadBalancer ingress IPs as /32
//!     ipv6Prefixes: [fd00:10::/64] # optional: IPv6 prefixes to originate
//!   nextHopV6: fd00:100::2         # IPv6 next hop for them on IPv4 sessions (required
//!                                  # with ipv6Prefixes when any session is over IPv4)
//!   peers:
//!     - address: 192.168.100.1
//!       as: 64500
//!       passive: false             # optional
//!       holdTime: 9                # optional
//!       routeReflectorClient: false
//!       nextHopSelf: false
//!       export: originated         # originated (default) | all (transit) | none
//!       families: [ipv4-unicast, ipv6-unicast]   # optional, default both
//!       password: s3cret           # optional: TCP-MD5 (RFC 2385), 1-80 octets
//! ```
//!
//! For `externalTrafficPolicy: Local` services the external and load-balancer IPs are
//! only advertised while this node has a ready endpoint of the service.
//!
//! Learnt IPv4 routes become engine FIB routes (source `bgp`, one path per ECMP next
//! hop) through [`crate::state::NodeState::bgp_routes`]; learnt IPv4 and IPv6 routes go
//! into the kernel with protocol [`RTPROT_FERROPLANE`] (`ip route show proto 157`),
//! replaced in place, removed when withdrawn. The engine datapath is IPv4-only, so
//! IPv6 routes (MP_REACH_NLRI, AFI 2) are kernel routes only (`show bgp routes` says
//! where each prefix is installed). IPv6 peers are reached over TCP/IPv6 (the
//! listener is dual-stack); IPv6 prefixes are advertised to a peer on an IPv4 session
//! only with `nextHopV6` set (and on IPv6 sessions with our session address). On a graceful stop the kernel routes are
//! left in place and the sessions closed without NOTIFICATION, so peers keep our routes
//! (RFC 4724); on the next start the agent finds them, announces the Restart State bit
//! and removes the leftovers only once the peers have sent End-of-RIB.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::TryStreamExt;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteNextHop, RouteProtocol,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::{info, warn};

use ferroplane_bgp::intern::Interner;
use ferroplane_bgp::prefix_map::PrefixMap;
use ferroplane_bgp::{Afi, Nlri, PeerConfig, Speaker, SpeakerConfig};
use ferroplane_tables::Ipv4Prefix;
use ipnet::IpNet;

pub use crate::spec::bgp::{AdvertiseSpec, BgpSpec, GracefulRestartSpec};
use crate::spec::NodeSpec;

/// Protocol number of the kernel routes the agent installs (`ip route show proto 157`).
///
/// A number no common routing daemon claims, so a daemon sharing the node never takes
/// our routes for its own: iproute2's `rt_protos` names 0-4, 8-16, 18 (keepalived),
/// 42 (babel), 99 (openr) and 186-192; FRR (`/etc/iproute2/rt_protos.d/frr.conf`) owns
/// 11 (zebra), 42 and 186-199 (8.4: 186-197, 196 = `static`) and its zebra adopts kernel
/// routes with those numbers as its own (and keeps them when we withdraw); BIRD uses 12,
/// mrouted 17, Calico's Felix 80. Any other number is a plain kernel route to zebra and
/// BIRD: they see it, they do not own it.
pub const RTPROT_FERROPLANE: u8 = 157;

impl BgpSpec {
    /// Explicit peers plus the full mesh (iBGP to every cluster node not listed).
    pub fn peers(&self, spec: &NodeSpec) -> Vec<PeerConfig> {
        let mut v = self.peers.clone();
        if self.full_mesh {
            if let Some(c) = &spec.cluster {
                for n in &c.nodes {
                    let a = IpAddr::V4(n.address);
                    if !v.iter().any(|p| p.address == a) {
                        v.push(PeerConfig::new(a, self.local_as));
                    }
                }
            }
        }
        for p in v.iter_mut().filter(|p| p.address.is_ipv4()) {
            p.local_address
                .get_or_insert(IpAddr::V4(spec.node.address.addr()));
        }
        v
    }

    /// The speaker configuration for this node.
    pub fn speaker_config(&self, spec: &NodeSpec, restarting: bool) -> SpeakerConfig {
        let mut c = SpeakerConfig::new(
            self.local_as,
            self.router_id.unwrap_or(spec.node.address.addr()),
        );
        c.listen = Some(std::net::SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            self.listen_port,
        ));
        c.hold_time = self.hold_time;
        c.connect_retry = self.connect_retry;
        c.multipath = self.multipath;
        c.graceful_restart = self
            .graceful_restart
            .enabled
            .then_some(self.graceful_restart.restart_time);
        c.restarting = restarting && self.graceful_restart.enabled;
        c.next_hop_v6 = self.next_hop_v6;
        c.peers = self.peers(spec);
        c
    }

    /// Prefixes this node originates.
    pub fn originated(&self, spec: &NodeSpec) -> BTreeSet<IpNet> {
        let mut s = BTreeSet::new();
        let pfx = |a: Ipv4Addr, l: u8| ferroplane_bgp::prefix::v4(a, l);
        if self.advertise.pod_cidr {
            s.extend(pfx(
                spec.node.pod_cidr.addr(),
                spec.node.pod_cidr.prefix_len(),
            ));
        }
        if let Some(r) = self.advertise.service_cluster_ip_range {
            s.extend(pfx(r.addr(), r.prefix_len()));
        }
        s.extend(
            self.advertise
                .ipv6_prefixes
                .iter()
                .map(|p| IpNet::V6(p.trunc())),
        );
        // Services that do not compile are refused by validation (or left out by the
        // Kubernetes source) before they get here.
        for svc in spec.services.iter().filter_map(|s| s.compile().ok()) {
            let local_only =
                svc.external_traffic_policy == Some(crate::services::TrafficPolicy::Local);
            if local_only && !has_local_ready_endpoint(spec, &svc.namespace, &svc.name) {
                continue;
            }
            if self.advertise.external_ips {
                s.extend(svc.external_ips.iter().filter_map(|a| pfx(*a, 32)));
            }
            if self.advertise.load_balancer_ips {
                let ingress = svc.ingress_ips.iter().flatten();
                s.extend(ingress.filter_map(|a| pfx(*a, 32)));
            }
        }
        s
    }
}

/// True when an EndpointSlice of `namespace/name` has a ready endpoint on this node.
fn has_local_ready_endpoint(spec: &NodeSpec, namespace: &str, name: &str) -> bool {
    spec.endpoint_slices
        .iter()
        .filter(|es| es.namespace() == namespace && es.service_name() == Some(name))
        .filter_map(|es| es.compile().ok())
        .flat_map(|es| es.endpoints)
        .any(|e| e.node_name.as_deref() == Some(spec.node.name.as_str()) && e.ready)
}

/// The BGP side of a running agent.
pub struct BgpRuntime {
    /// The speaker (shared with the API handler).
    pub speaker: Arc<Speaker>,
    /// The distinct next-hop sets of the routes handed out ([`NextHops`]).
    hop_sets: Interner<[Ipv4Addr]>,
    kernel: Option<tokio::sync::mpsc::UnboundedSender<KernelCmd>>,
    kernel_task: Option<tokio::task::JoinHandle<()>>,
    stale_kernel: bool,
    graceful: bool,
    /// Route changes since the heap was last trimmed ([`trim_heap`]).
    untrimmed: usize,
}

/// The ECMP next hops of a learnt route, one `Arc` per distinct set shared by every route
/// with that set (a full table has a handful of sets): the node state holds a route as
/// its prefix and this pointer, no allocation of its own.
pub type NextHops = Arc<[Ipv4Addr]>;

/// Route changes after which the end of a burst gives freed heap back to the system.
const TRIM_AFTER: usize = 10_000;

/// Give the heap's free pages back to the system (glibc `malloc_trim`). A burst of a
/// whole table leaves many megabytes of freed transients (change lists, netlink
/// messages, FIB versions) spread between live allocations, which the allocator keeps
/// mapped otherwise: measured with 100,000 routes, it is the difference between the
/// live heap and an RSS 30 MiB higher.
fn trim_heap() {
    ferroplane_io::sys::trim_heap();
}

/// Work for the kernel route task (netlink round trips never delay the engine FIB).
enum KernelCmd {
    Apply(Vec<(IpNet, Vec<IpAddr>)>),
    /// Remove our kernel routes for every prefix not in the set.
    RemoveUnwanted(PrefixMap<()>),
}

impl BgpRuntime {
    /// Re-derives what this node originates from `spec` (its pod CIDR, and service IPs
    /// per `bgp.advertise`: externalTrafficPolicy=Local ones only while a local endpoint is
    /// ready) and advertises or withdraws the difference. Returns whether it changed.
    pub fn sync_originated(&self, spec: &NodeSpec) -> bool {
        let Some(bgp) = &spec.bgp else {
            return false;
        };
        let want = bgp.originated(spec);
        if want == self.speaker.originated() {
            return false;
        }
        self.speaker.set_originated(&want);
        true
    }

    /// Start the speaker. Kernel routes with our protocol left by a previous run mean we
    /// are restarting (Restart State bit set, leftovers kept until convergence).
    pub async fn start(
        bgp: &BgpSpec,
        spec: &NodeSpec,
        handle: Handle,
    ) -> anyhow::Result<BgpRuntime> {
        let mut kernel = None;
        let mut restarting = false;
        if bgp.kernel_routes {
            let k = KernelRoutes { handle };
            let left = k.installed().await?.len();
            restarting = left > 0;
            if restarting {
                info!(
                    routes = left,
                    "kernel routes from a previous run: graceful restart"
                );
            }
            kernel = Some(k);
        }
        let cfg = bgp.speaker_config(spec, restarting);
        let originate: Vec<IpNet> = bgp.originated(spec).into_iter().collect();
        let speaker = Speaker::start(cfg, originate).await?;
        let (tx, task) = match kernel {
            Some(mut k) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let task = tokio::spawn(async move {
                    let mut untrimmed = 0;
                    while let Some(cmd) = rx.recv().await {
                        match cmd {
                            KernelCmd::Apply(c) => {
                                untrimmed += c.len();
                                k.apply(&c).await
                            }
                            KernelCmd::RemoveUnwanted(w) => k.remove_unwanted(&w).await,
                        }
                        // The end of a burst of a whole table: its transients are freed.
                        if untrimmed >= TRIM_AFTER && rx.is_empty() {
                            untrimmed = 0;
                            trim_heap();
                        }
                    }
                });
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        Ok(BgpRuntime {
            speaker: Arc::new(speaker),
            hop_sets: Interner::new(),
            kernel: tx,
            kernel_task: task,
            stale_kernel: restarting,
            untrimmed: 0,
            graceful: bgp.graceful_restart.enabled,
        })
    }

    /// Forwarding changes since the last call: IPv4 routes for the engine FIB
    /// (empty next hops: remove). Kernel routes are brought in line on the way.
    pub async fn poll(&mut self) -> Vec<(Ipv4Prefix, NextHops)> {
        let changes = self.speaker.take_fib_changes();
        if changes.is_empty() && self.untrimmed >= TRIM_AFTER {
            // The first quiet poll after a burst (the housekeeping timer polls too).
            self.untrimmed = 0;
            trim_heap();
        }
        self.untrimmed += changes.len();
        let mut hops = Vec::new();
        let hop_sets = &mut self.hop_sets;
        let v4 = changes
            .iter()
            .filter_map(|(p, nhs)| {
                let IpAddr::V4(a) = p.addr() else { return None };
                let prefix = Ipv4Prefix::new(a, p.prefix_len()).ok()?;
                hops.clear();
                hops.extend(nhs.iter().filter_map(|n| match n {
                    IpAddr::V4(v) => Some(*v),
                    IpAddr::V6(_) => None,
                }));
                Some((prefix, hop_sets.intern_ref(&hops[..])))
            })
            .collect();
        if let Some(k) = &self.kernel {
            if !changes.is_empty() {
                // Moved, not copied: a burst of a whole table is queued once.
                let _ = k.send(KernelCmd::Apply(changes));
            }
            if self.stale_kernel && self.speaker.converged() {
                self.stale_kernel = false;
                let want: PrefixMap<()> = self
                    .speaker
                    .fib_routes()
                    .into_iter()
                    .map(|(p, _)| (p, ()))
                    .collect();
                let _ = k.send(KernelCmd::RemoveUnwanted(want));
            }
        }
        v4
    }

    /// Stop. With graceful restart the sessions close without NOTIFICATION and the
    /// kernel routes stay; otherwise peers get Cease and the kernel routes go.
    pub async fn stop(&mut self) {
        self.speaker.shutdown(self.graceful).await;
        if let Some(k) = self.kernel.take() {
            if !self.graceful {
                let _ = k.send(KernelCmd::RemoveUnwanted(PrefixMap::new()));
            }
            drop(k); // the task drains its queue, then ends
        }
        if let Some(t) = self.kernel_task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), t).await;
        }
    }
}

/// Apply FIB changes to the node's BGP route table; returns the next hops now in use.
pub fn apply_changes(
    routes: &mut BTreeMap<Ipv4Prefix, NextHops>,
    changes: Vec<(Ipv4Prefix, NextHops)>,
) -> BTreeSet<Ipv4Addr> {
    let mut hops = BTreeSet::new();
    for (p, nhs) in changes {
        if nhs.is_empty() {
            routes.remove(&p);
        } else {
            hops.extend(nhs.iter().copied());
            routes.insert(p, nhs);
        }
    }
    hops
}

/// `show_bgp` data.
pub fn report(speaker: Option<&Speaker>) -> ferroplane_api::BgpReport {
    let Some(s) = speaker else {
        return ferroplane_api::BgpReport::default();
    };
    let (local_as, router_id) = s.identity();
    ferroplane_api::BgpReport {
        enabled: true,
        local_as,
        router_id: router_id.to_string(),
        loc_rib: s.loc_rib_len(),
        fib_routes: 0, // filled in by the API from the engine snapshot
        originated: s.originated().iter().map(|p| p.to_string()).collect(),
        peers: s
            .peers()
            .into_iter()
            .map(|p| ferroplane_api::BgpPeer {
                address: p.address.to_string(),
                remote_as: p.remote_as,
                kind: p.kind,
                state: p.state,
                uptime_secs: p.uptime_secs,
                router_id: p.router_id.map(|r| r.to_string()),
                hold_time: p.hold_time,
                received: p.received,
                accepted: p.accepted,
                advertised: p.advertised,
                stale: p.stale,
                treat_as_withdraw: p.treat_as_withdraw,
                attributes_discarded: p.attributes_discarded,
                capabilities: p.capabilities,
                last_error: p.last_error,
            })
            .collect(),
    }
}

/// `show_bgp_routes` data (the whole Loc-RIB; `ferroctl` filters by prefix).
pub fn routes_report(speaker: Option<&Speaker>) -> Vec<ferroplane_api::BgpRoute> {
    let Some(s) = speaker else {
        return Vec::new();
    };
    s.routes(None)
        .into_iter()
        .map(|r| ferroplane_api::BgpRoute {
            installed: match (r.paths.first().map(|p| p.from.as_str()), r.prefix.afi()) {
                (Some("local"), _) => "local",
                (_, Afi::Ipv4) => "engine",
                (_, Afi::Ipv6) => "kernel",
            }
            .to_string(),
            prefix: r.prefix.to_string(),
            paths: r
                .paths
                .into_iter()
                .map(|p| ferroplane_api::BgpPath {
                    from: p.from,
                    next_hop: p.next_hop.to_string(),
                    as_path: p.as_path,
                    origin: p.origin,
                    local_pref: p.local_pref,
                    med: p.med,
                    communities: p.communities,
                    best: p.best,
                    multipath: p.multipath,
                    stale: p.stale,
                    reason: p.reason,
                })
                .collect(),
        })
        .collect()
}

/// Our routes in the kernel's main table. Nothing is kept per route (a full table would
/// be one more copy of it): the speaker reports only changes, a route is replaced in
/// place, a removal of a route that is not there is harmless, and the two whole-table
/// questions (routes left by a previous run, routes no peer announces any more) are
/// answered by reading the kernel's routes of our protocol.
struct KernelRoutes {
    handle: Handle,
}

/// True for "no such route" (deleting a route that is not installed).
fn no_such_route(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.map(|c| c.get().abs()) == Some(libc::ESRCH))
}

impl KernelRoutes {
    /// The prefixes of our routes in the kernel now (both families).
    async fn installed(&self) -> anyhow::Result<Vec<IpNet>> {
        let mut v = Vec::new();
        for msg in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let mut s = self.handle.route().get(msg).execute();
            while let Some(r) = s.try_next().await? {
                if r.header.protocol != RouteProtocol::Other(RTPROT_FERROPLANE) {
                    continue;
                }
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
                    RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
                    _ => None,
                });
                v.extend(dst.and_then(|d| {
                    ferroplane_bgp::prefix::prefix(d, r.header.destination_prefix_length)
                }));
            }
        }
        Ok(v)
    }

    fn message(p: &IpNet, nhs: &[IpAddr]) -> RouteMessage {
        let mut m = match p.addr() {
            IpAddr::V4(a) => {
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(a, p.prefix_len())
                    .protocol(RouteProtocol::Other(RTPROT_FERROPLANE));
                if let [IpAddr::V4(g)] = nhs {
                    b = b.gateway(*g);
                }
                b.build()
            }
            IpAddr::V6(a) => {
                let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .destination_prefix(a, p.prefix_len())
                    .protocol(RouteProtocol::Other(RTPROT_FERROPLANE));
                if let [IpAddr::V6(g)] = nhs {
                    b = b.gateway(*g);
                }
                b.build()
            }
        };
        if nhs.len() > 1 {
            let hops = nhs
                .iter()
                .map(|n| {
                    let mut h = RouteNextHop::default();
                    h.attributes.push(RouteAttribute::Gateway(match n {
                        IpAddr::V4(v) => RouteAddress::Inet(*v),
                        IpAddr::V6(v) => RouteAddress::Inet6(*v),
                    }));
                    h
                })
                .collect();
            m.attributes.push(RouteAttribute::MultiPath(hops));
        }
        m
    }

    async fn apply(&mut self, changes: &[(IpNet, Vec<IpAddr>)]) {
        for (p, nhs) in changes {
            let nhs: Vec<IpAddr> = nhs
                .iter()
                .copied()
                .filter(|n| n.is_ipv4() == p.addr().is_ipv4())
                .collect();
            if nhs.is_empty() {
                // Our protocol in the message: never another daemon's route.
                let m = Self::message(p, &[]);
                match self.handle.route().del(m).execute().await {
                    Err(e) if !no_such_route(&e) => {
                        warn!(prefix = %p, "removing kernel route: {e}")
                    }
                    _ => {}
                }
                continue;
            }
            let m = Self::message(p, &nhs);
            if let Err(e) = self.handle.route().add(m).replace().execute().await {
                warn!(prefix = %p, "installing kernel route: {e}");
            }
        }
    }

    async fn remove_unwanted(&mut self, want: &PrefixMap<()>) {
        let installed = match self.installed().await {
            Ok(v) => v,
            Err(e) => {
                warn!("reading our kernel routes: {e:#}");
                return;
            }
        };
        let gone: Vec<(IpNet, Vec<IpAddr>)> = installed
            .into_iter()
            .filter(|p| !want.contains_key(p))
            .map(|p| (p, Vec::new()))
            .collect();
        if !gone.is_empty() {
            info!(
                routes = gone.len(),
                "removing kernel routes no peer announces any more"
            );
        }
        self.apply(&gone).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
node:
  name: n1
  uplink: up0
  address: 192.168.100.2/24
  podCIDR: 10.244.1.0/24
cluster:
  nodes:
    - name: n2
      address: 192.168.100.3
      podCIDR: 10.244.2.0/24
bgp:
  localAS: 64512
  holdTime: 9
  advertise:
    serviceClusterIPRange: 10.96.0.0/12
  peers:
    - address: 192.168.100.1
      as: 64500
      passive: true
"#;

    #[test]
    fn spec_to_speaker_config() {
        let spec = NodeSpec::from_yaml(SPEC).unwrap();
        let b = spec.bgp.as_ref().unwrap();
        let c = b.speaker_config(&spec, false);
        assert_eq!(c.router_id, Ipv4Addr::new(192, 168, 100, 2));
        assert_eq!(c.peers.len(), 2, "explicit peer + full mesh");
        assert_eq!(c.peers[1].remote_as, 64512);
        assert!(c.peers[0].passive);
        assert_eq!(
            c.peers[0].local_address,
            Some("192.168.100.2".parse().unwrap())
        );
        assert_eq!(c.hold_time, 9);
        assert_eq!(c.graceful_restart, Some(120));
        let o: Vec<String> = b.originated(&spec).iter().map(|p| p.to_string()).collect();
        assert_eq!(o, vec!["10.96.0.0/12", "10.244.1.0/24"]);
    }

    #[test]
    fn ipv6_prefixes_and_next_hop() {
        let y = SPEC.replace(
            "    serviceClusterIPRange: 10.96.0.0/12\n",
            "    serviceClusterIPRange: 10.96.0.0/12\n    ipv6Prefixes: [fd00:44::/64]\n  nextHopV6: fd00:100::2\n",
        );
        let spec = NodeSpec::from_yaml(&y).unwrap();
        let b = spec.bgp.as_ref().unwrap();
        let o: Vec<String> = b.originated(&spec).iter().map(|p| p.to_string()).collect();
        assert!(o.contains(&"fd00:44::/64".to_string()), "{o:?}");
        let c = b.speaker_config(&spec, false);
        assert_eq!(c.next_hop_v6, Some("fd00:100::2".parse().unwrap()));
        let bad = y.replace("[fd00:44::/64]", "[10.1.0.0/16]");
        let e = NodeSpec::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("bgp.advertise.ipv6Prefixes[0]"), "{e}");
    }

    /// Defaults that keep a node from being a transit AS, and the families spelling.
    #[test]
    fn safe_defaults_and_families() {
        let spec = NodeSpec::from_yaml(SPEC).unwrap();
        let c = spec.bgp.as_ref().unwrap().speaker_config(&spec, false);
        for p in &c.peers {
            assert_eq!(p.export, ferroplane_bgp::rib::ExportPolicy::Originated);
            assert_eq!(p.families, vec![Afi::Ipv4, Afi::Ipv6]);
        }
        assert_eq!(c.connect_retry, 5);
        let y = SPEC.replace(
            "passive: true",
            "passive: true\n      export: all\n      families: [ipv4-unicast]",
        );
        let spec = NodeSpec::from_yaml(&y).unwrap();
        let c = spec.bgp.as_ref().unwrap().speaker_config(&spec, false);
        assert_eq!(c.peers[0].export, ferroplane_bgp::rib::ExportPolicy::All);
        assert_eq!(c.peers[0].families, vec![Afi::Ipv4]);
        // The name `show bgp` prints is the configuration's spelling.
        assert_eq!(Afi::Ipv6.name(), "ipv6-unicast");
        let bad = SPEC.replace("passive: true", "passive: true\n      families: [Ipv4]");
        let e = NodeSpec::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("bgp.peers[0].families"), "{e}");
        let bad = SPEC.replace("passive: true", "passive: true\n      families: []");
        let e = NodeSpec::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("bgp.peers[0].families"), "{e}");
    }

    #[test]
    fn connect_retry_zero_is_refused() {
        let bad = SPEC.replace("holdTime: 9", "holdTime: 9\n  connectRetry: 0");
        let e = NodeSpec::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("bgp.connectRetry"), "{e}");
        let ok = SPEC.replace("holdTime: 9", "holdTime: 9\n  connectRetry: 1");
        assert!(NodeSpec::from_yaml(&ok).is_ok());
    }

    /// IPv6 prefixes need nextHopV6 as soon as one session runs over IPv4 (there they
    /// would not be advertised at all); IPv6-only sessions use their own address.
    #[test]
    fn ipv6_prefixes_need_a_next_hop_on_ipv4_sessions() {
        let bad = SPEC.replace(
            "    serviceClusterIPRange: 10.96.0.0/12\n",
            "    serviceClusterIPRange: 10.96.0.0/12\n    ipv6Prefixes: [fd00:44::/64]\n",
        );
        let e = NodeSpec::from_yaml(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bgp.nextHopV6") && e.contains("192.168.100.1"),
            "{e}"
        );
        // Only an IPv6 peer, no full mesh: fine without nextHopV6.
        let v6_only = bad
            .replace("address: 192.168.100.1", "address: fd00:100::1")
            .replace("bgp:\n", "bgp:\n  fullMesh: false\n");
        NodeSpec::from_yaml(&v6_only).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let bad = SPEC.replace("holdTime: 9", "holdTime: 2");
        let e = NodeSpec::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("bgp.holdTime"), "{e}");
        let bad = SPEC.replace("address: 192.168.100.1", "address: 192.168.100.2");
        let e = NodeSpec::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("bgp.peers[0].address"), "{e}");
        let bad = SPEC.replace("passive: true", "passive: true\n      password: \"\"");
        let e = NodeSpec::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("bgp.peers[0].password"), "{e}");
        let good = SPEC.replace("passive: true", "passive: true\n      password: s3cret");
        let spec = NodeSpec::from_yaml(&good).unwrap();
        let c = spec.bgp.as_ref().unwrap().speaker_config(&spec, false);
        assert_eq!(c.peers[0].password.as_deref(), Some("s3cret"));
        let bad = SPEC.replace("passive: true", "passive: true\n      bogus: 1");
        let e = NodeSpec::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("bgp.peers[0]"), "{e}");
    }
}

#[cfg(test)]
#[path = "bgp_memory_tests.rs"]
mod memory_tests;
