//! The reconciler: the node's desired state ([`NodeState`]) turned into the engine's
//! tables, recomputing only what an event changed.
//!
//! Every watcher of the agent (the spec file, the Kubernetes reflectors, BGP, netlink, CNI
//! requests) changes [`NodeState`] and says what it changed as a [`Changes`]; the agent
//! merges the changes of the events at hand and calls [`Reconciler::snapshot`] once. The
//! reconciler keeps what it built last and recomputes only the parts the changes touch:
//!
//! | change | recomputed |
//! |---|---|
//! | pods (CNI ADD/DEL, a veth vanished, a missing namespace appeared) | the pods' /32 routes, interfaces and neighbours (FIB delta), the interface table, policy, hostPorts |
//! | learnt routes (BGP) | those prefixes only (FIB delta), the tunnel table if a route through a tunnel changed |
//! | neighbours (kernel neighbour table of the uplink) | the FIB's adjacencies and neighbour /32s |
//! | services (spec file, Service/EndpointSlice watchers) | the service table (unchanged Maglev tables shared) |
//! | policy (spec file, NetworkPolicy/Pod/Namespace watchers) | the policy tables |
//! | node (the cluster's nodes: overlay, or anything else) | everything |
//!
//! The FIB is never rebuilt for a pod or a route: the routes are kept in layers by owner
//! (node, pods, learnt, overlay: a later layer wins a prefix, as the full build's order
//! does), the [`FibBuilder`] learns only the prefixes whose winning route changed, and
//! [`FibBuilder::build_from`] applies them to the previous FIB, sharing its unchanged trie
//! chunks. The other tables are `Arc`s: an untouched one is the previous snapshot's.
//! [`NodeState::snapshot`] stays the from-scratch build (tests compare the two; the
//! reconcile bench measures both).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_engine::{IfKind, Interface, Interfaces, PodInfo, Snapshot};
use ferroplane_tables::{
    FibBuilder, FibError, Ipv4Prefix, Mac, Path, RouteAction, RouteEntry, RouteSource,
};

use crate::state::{NodeState, UPLINK_SW_IF};

/// What changed in a [`NodeState`] since the last [`Reconciler::snapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Anything: recompute everything (the first publish, the periodic resync).
    pub all: bool,
    /// The node, the uplink or the cluster's nodes (overlay).
    pub node: bool,
    /// Pods plumbed, removed, vanished, or their identity or hostPorts.
    pub pods: bool,
    /// The uplink's neighbours.
    pub neighbours: bool,
    /// Learnt (BGP) routes whose next hops changed.
    pub routes: BTreeSet<Ipv4Prefix>,
    /// Services, endpoint slices, service proxy settings, the Kubernetes pods' hostPorts.
    pub services: bool,
    /// NetworkPolicies, or the pods and namespaces they select.
    pub policy: bool,
}

impl Changes {
    /// Everything changed.
    pub fn all() -> Changes {
        Changes {
            all: true,
            ..Changes::default()
        }
    }

    /// The node or the cluster changed.
    pub fn node() -> Changes {
        Changes {
            node: true,
            ..Changes::default()
        }
    }

    /// Pods changed.
    pub fn pods() -> Changes {
        Changes {
            pods: true,
            ..Changes::default()
        }
    }

    /// The uplink's neighbours changed.
    pub fn neighbours() -> Changes {
        Changes {
            neighbours: true,
            ..Changes::default()
        }
    }

    /// Learnt routes for `prefixes` changed.
    pub fn routes(prefixes: impl IntoIterator<Item = Ipv4Prefix>) -> Changes {
        Changes {
            routes: prefixes.into_iter().collect(),
            ..Changes::default()
        }
    }

    /// Services changed.
    pub fn services() -> Changes {
        Changes {
            services: true,
            ..Changes::default()
        }
    }

    /// Network policy inputs changed.
    pub fn policy() -> Changes {
        Changes {
            policy: true,
            ..Changes::default()
        }
    }

    /// What a new version of the spec changes for the tables: services, policy, or (any
    /// other field: the node, its routes, the cluster) the node.
    pub fn between(old: &crate::config::NodeSpec, new: &crate::config::NodeSpec) -> Changes {
        let mut c = Changes::default();
        if old.services != new.services
            || old.endpoint_slices != new.endpoint_slices
            || old.service_proxy != new.service_proxy
        {
            c.services = true;
        }
        if old.namespaces != new.namespaces
            || old.network_policies != new.network_policies
            || old.pods != new.pods
        {
            c.policy = true;
        }
        let rest = |s: &crate::config::NodeSpec| {
            (
                s.node.clone(),
                s.routes.clone(),
                s.cluster.clone(),
                s.bgp.clone(),
            )
        };
        if rest(old) != rest(new) {
            c.node = true;
        }
        c
    }

    /// Adds `other`'s changes to these.
    pub fn merge(&mut self, other: Changes) {
        self.all |= other.all;
        self.node |= other.node;
        self.pods |= other.pods;
        self.neighbours |= other.neighbours;
        self.services |= other.services;
        self.policy |= other.policy;
        self.routes.extend(other.routes);
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// Owners of routes, in the order the full build applies them: a later layer's route
/// wins a prefix.
#[derive(Debug, Clone, Copy)]
enum Layer {
    /// The node's connected, local, default and static routes and its pod CIDR.
    Node = 0,
    /// The pods' /32s.
    Pods = 1,
    /// Learnt routes.
    Learnt = 2,
    /// Remote nodes' pod CIDRs through the overlay.
    Overlay = 3,
}

/// Interfaces and neighbours one owner declared to the FIB builder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Links {
    ifaces: BTreeMap<u16, (Mac, u16)>,
    neighbours: BTreeMap<(u16, Ipv4Addr), Mac>,
}

/// Keeps what it built last; see the module documentation.
#[derive(Debug, Default)]
pub struct Reconciler {
    fib: FibBuilder,
    /// Each route is one `Arc`, shared with the FIB builder and the FIBs built from it.
    layers: [BTreeMap<Ipv4Prefix, Arc<RouteEntry>>; 4],
    node_links: Links,
    pod_links: Links,
    uplink_neighbours: Links,
    overlay_links: Links,
    /// Learnt routes whose next hop is a cluster node behind a tunnel (the tunnel accepts
    /// them as inner sources).
    via_tunnels: BTreeMap<Ipv4Prefix, Vec<Ipv4Addr>>,
    /// The hostPort bindings the service table was last built with.
    bindings: Option<Vec<crate::hostports::Binding>>,
    last: Option<Snapshot>,
}

impl Reconciler {
    /// A reconciler that has built nothing yet (its first snapshot is a full one).
    pub fn new() -> Reconciler {
        Reconciler::default()
    }

    /// The snapshot for `state`, recomputing what `changes` says changed since the last
    /// call (everything on the first call). Its `version` and `flow_export` are the
    /// publisher's.
    pub fn snapshot(&mut self, state: &NodeState, changes: &Changes) -> Result<Snapshot, FibError> {
        let snap = self.update(state, changes);
        if snap.is_err() {
            // Whatever half was applied, the next snapshot starts from scratch.
            self.last = None;
        }
        snap
    }

    fn update(&mut self, state: &NodeState, changes: &Changes) -> Result<Snapshot, FibError> {
        let Some(last) = self.last.clone().filter(|_| !changes.all) else {
            return self.rebuild(state);
        };
        let node = changes.node;
        if node {
            self.sync_node(state);
            self.sync_overlay(state);
        }
        if node || changes.pods {
            self.sync_pods(state);
        }
        if node || changes.neighbours {
            self.sync_uplink_neighbours(state);
        }
        let tunnels_before = self.via_tunnels.clone();
        if node {
            self.sync_all_learnt(state);
        } else {
            for p in &changes.routes {
                self.sync_learnt(state, *p);
            }
        }
        let fib = Arc::new(self.fib.build_from(&last.fib)?);
        let ifaces = if node || changes.pods {
            Arc::new(interfaces(state))
        } else {
            last.ifaces.clone()
        };
        let tunnels = if node || self.via_tunnels != tunnels_before {
            self.tunnel_table(state)
        } else {
            last.tunnels.clone()
        };
        let kept = (last.services.clone(), last.nat.clone());
        let (services, nat) = if node || changes.pods || changes.services {
            self.service_tables(state, node || changes.services, kept)
        } else {
            kept
        };
        let policy = if node || changes.pods || changes.policy {
            crate::policy::compile_pods(&state.spec, &state.policy_pods())
        } else {
            last.policy.clone()
        };
        let snap = Snapshot {
            fib,
            ifaces,
            tunnels,
            services,
            nat,
            policy,
            node_ip: Some(state.spec.node.address.addr()),
            pod_cidrs: pod_cidrs(state),
            version: 0,
            flow_export: false,
        };
        self.last = Some(snap.clone());
        Ok(snap)
    }

    /// Whether the last snapshot's FIB, interfaces or tunnel sources differ from what a
    /// full build of `state` gives (the agent's periodic safety net); the next snapshot is
    /// a full one when they do. False when nothing was built yet.
    pub fn drifted(&mut self, state: &NodeState) -> Result<bool, FibError> {
        let Some(last) = &self.last else {
            return Ok(false);
        };
        let full = Reconciler::new().snapshot(state, &Changes::all())?;
        let routes = |s: &Snapshot| {
            s.fib
                .route_table()
                .map(|(r, adjs)| (r.clone(), adjs.into_iter().copied().collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        };
        let ifaces = |s: &Snapshot| {
            s.ifaces
                .iter()
                .map(|i| (i.sw_if, i.name.clone(), i.ifindex, i.mac, i.mtu, i.port))
                .collect::<Vec<_>>()
        };
        let drifted = routes(last) != routes(&full) || ifaces(last) != ifaces(&full);
        if drifted {
            self.last = None;
        }
        Ok(drifted)
    }

    /// Everything from scratch (the FIB builder forgets its routes).
    fn rebuild(&mut self, state: &NodeState) -> Result<Snapshot, FibError> {
        *self = Reconciler::default();
        self.sync_node(state);
        self.sync_pods(state);
        self.sync_uplink_neighbours(state);
        self.sync_all_learnt(state);
        self.sync_overlay(state);
        let fib = Arc::new(self.fib.build_from(&Default::default())?);
        let (services, nat) = self.service_tables(state, true, Default::default());
        let snap = Snapshot {
            fib,
            ifaces: Arc::new(interfaces(state)),
            tunnels: self.tunnel_table(state),
            services,
            nat,
            policy: crate::policy::compile_pods(&state.spec, &state.policy_pods()),
            node_ip: Some(state.spec.node.address.addr()),
            pod_cidrs: pod_cidrs(state),
            version: 0,
            flow_export: false,
        };
        self.last = Some(snap.clone());
        Ok(snap)
    }

    /// Sets `layer`'s route for `prefix` (`None`: it has none) and tells the FIB builder
    /// the route that wins the prefix now.
    fn set(&mut self, layer: Layer, prefix: Ipv4Prefix, entry: Option<RouteEntry>) {
        let l = &mut self.layers[layer as usize];
        match entry {
            Some(e) => {
                if l.get(&prefix).is_some_and(|old| **old == e) {
                    return;
                }
                l.insert(prefix, Arc::new(e));
            }
            None => {
                if l.remove(&prefix).is_none() {
                    return;
                }
            }
        }
        match self.layers.iter().rev().find_map(|l| l.get(&prefix)) {
            Some(e) => {
                self.fib.route_shared(e.clone());
            }
            None => {
                self.fib.remove(&prefix);
            }
        }
    }

    /// Replaces `layer`'s routes with `want`.
    fn set_layer(&mut self, layer: Layer, want: BTreeMap<Ipv4Prefix, RouteEntry>) {
        let gone: Vec<Ipv4Prefix> = self.layers[layer as usize]
            .keys()
            .filter(|p| !want.contains_key(p))
            .copied()
            .collect();
        for p in gone {
            self.set(layer, p, None);
        }
        for (p, e) in want {
            self.set(layer, p, Some(e));
        }
    }

    fn sync_node(&mut self, state: &NodeState) {
        let want = node_routes(state)
            .into_iter()
            .map(|e| (e.prefix, e))
            .collect();
        self.set_layer(Layer::Node, want);
        let mut links = Links::default();
        links
            .ifaces
            .insert(UPLINK_SW_IF, (state.uplink.mac, state.uplink.mtu));
        sync_links(&mut self.fib, &mut self.node_links, links);
    }

    fn sync_pods(&mut self, state: &NodeState) {
        let mut want = BTreeMap::new();
        let mut links = Links::default();
        for p in state.pods.values() {
            links.ifaces.insert(p.sw_if, (p.host_mac, p.mtu));
            links.neighbours.insert((p.sw_if, p.ip), p.pod_mac);
            let e = pod_route(p);
            want.insert(e.prefix, e);
        }
        self.set_layer(Layer::Pods, want);
        sync_links(&mut self.fib, &mut self.pod_links, links);
    }

    fn sync_uplink_neighbours(&mut self, state: &NodeState) {
        let links = Links {
            ifaces: BTreeMap::new(),
            neighbours: state
                .neighbours
                .iter()
                .map(|(ip, mac)| ((UPLINK_SW_IF, *ip), *mac))
                .collect(),
        };
        sync_links(&mut self.fib, &mut self.uplink_neighbours, links);
    }

    fn sync_overlay(&mut self, state: &NodeState) {
        let mut b = FibBuilder::new();
        let mut ifaces = Interfaces::new();
        state
            .overlay
            .contribute(&mut b, &mut ifaces, UPLINK_SW_IF, state.uplink.mtu);
        let want = b.configured().map(|e| (e.prefix, e.clone())).collect();
        self.set_layer(Layer::Overlay, want);
        let links = Links {
            ifaces: b.interfaces().iter().map(|(k, v)| (*k, *v)).collect(),
            neighbours: b.neighbours().iter().map(|(k, v)| (*k, *v)).collect(),
        };
        sync_links(&mut self.fib, &mut self.overlay_links, links);
    }

    fn sync_all_learnt(&mut self, state: &NodeState) {
        let stale: Vec<Ipv4Prefix> = self.layers[Layer::Learnt as usize]
            .keys()
            .chain(self.via_tunnels.keys())
            .filter(|p| !state.bgp_routes.contains_key(p))
            .copied()
            .collect();
        for p in stale.into_iter().chain(state.bgp_routes.keys().copied()) {
            self.sync_learnt(state, p);
        }
    }

    /// The learnt route for `p`. A next hop that is a cluster node reached through a
    /// tunnel goes through that tunnel (and the tunnel accepts the prefix as inner
    /// source); others are on the uplink.
    fn sync_learnt(&mut self, state: &NodeState, p: Ipv4Prefix) {
        let node = &state.spec.node;
        let own = [
            Ipv4Prefix::from(node.address),
            Ipv4Prefix::from(node.pod_cidr),
        ];
        let hops = state
            .bgp_routes
            .get(&p)
            .filter(|h| !h.is_empty() && !own.contains(&p));
        let Some(hops) = hops else {
            self.via_tunnels.remove(&p);
            self.set(Layer::Learnt, p, None);
            return;
        };
        let (entry, through) = learnt_route(state, p, hops);
        if through.is_empty() {
            self.via_tunnels.remove(&p);
        } else {
            self.via_tunnels.insert(p, through);
        }
        self.set(Layer::Learnt, p, Some(entry));
    }

    fn tunnel_table(&self, state: &NodeState) -> Arc<ferroplane_engine::tunnel::TunnelTable> {
        let learnt: Vec<(Ipv4Prefix, Ipv4Addr)> = self
            .via_tunnels
            .iter()
            .flat_map(|(p, hops)| hops.iter().map(move |h| (*p, *h)))
            .collect();
        state
            .overlay
            .table_with_learnt(&learnt)
            .unwrap_or_else(|e| {
                tracing::warn!("tunnel table with BGP routes: {e}");
                state.overlay.table()
            })
    }

    /// The service tables; `kept` (the last ones) when the services did not change and
    /// the pods' hostPorts are the same.
    fn service_tables(
        &mut self,
        state: &NodeState,
        services_changed: bool,
        kept: ServiceTables,
    ) -> ServiceTables {
        let (bindings, shadowed) = state.host_port_bindings();
        if !services_changed && self.bindings.as_ref() == Some(&bindings) {
            return kept;
        }
        let t = crate::services::tables_with_host_ports(
            &state.services,
            &state.spec,
            &bindings,
            shadowed,
        );
        self.bindings = Some(bindings);
        t
    }
}

type ServiceTables = (
    Arc<ferroplane_tables::ServiceTable>,
    Arc<ferroplane_tables::NatConfig>,
);

/// Declares `new` to the builder in place of `old` (what the same owner declared before).
fn sync_links(fib: &mut FibBuilder, old: &mut Links, new: Links) {
    if *old == new {
        return;
    }
    for k in old.ifaces.keys().filter(|k| !new.ifaces.contains_key(k)) {
        fib.remove_interface(*k);
    }
    for (k, _) in old
        .neighbours
        .iter()
        .filter(|(k, _)| !new.neighbours.contains_key(k))
    {
        fib.remove_neighbour(k.0, k.1);
    }
    for (k, (mac, mtu)) in &new.ifaces {
        fib.interface(*k, *mac, *mtu);
    }
    for ((sw_if, ip), mac) in &new.neighbours {
        fib.neighbour(*sw_if, *ip, *mac);
    }
    *old = new;
}

/// The node's routes: its subnet (connected), its address (local), the default and
/// static routes, and its pod CIDR (addresses without a pod are dropped here, not sent
/// back to the gateway).
pub(crate) fn node_routes(state: &NodeState) -> Vec<RouteEntry> {
    let node = &state.spec.node;
    let mut v = vec![
        RouteEntry {
            prefix: Ipv4Prefix::from(node.address),
            source: RouteSource::Connected,
            action: forward(None, UPLINK_SW_IF),
        },
        RouteEntry {
            prefix: Ipv4Prefix::host(node.address.addr()),
            source: RouteSource::Local,
            action: RouteAction::Local,
        },
    ];
    if let Some(gw) = node.gateway {
        v.push(RouteEntry {
            prefix: Ipv4Prefix::DEFAULT,
            source: RouteSource::Static,
            action: forward(Some(gw), UPLINK_SW_IF),
        });
    }
    for r in &state.spec.routes {
        v.push(RouteEntry {
            prefix: Ipv4Prefix::from(r.prefix),
            source: RouteSource::Static,
            action: forward(Some(r.via), UPLINK_SW_IF),
        });
    }
    v.push(RouteEntry {
        prefix: Ipv4Prefix::from(node.pod_cidr),
        source: RouteSource::Pod,
        action: RouteAction::Drop,
    });
    v
}

/// The route for learnt prefix `p` through `hops`, and the hops that are cluster nodes
/// reached through a tunnel (the route goes through that tunnel, which accepts the prefix
/// as inner source); other hops are on the uplink.
pub(crate) fn learnt_route(
    state: &NodeState,
    p: Ipv4Prefix,
    hops: &[Ipv4Addr],
) -> (RouteEntry, Vec<Ipv4Addr>) {
    let mut through = Vec::new();
    let paths = hops
        .iter()
        .map(|h| {
            let tunnel = state.overlay.tunnel_to(*h);
            if tunnel.is_some() {
                through.push(*h);
            }
            Path {
                via: Some(*h),
                sw_if: tunnel.unwrap_or(UPLINK_SW_IF),
            }
        })
        .collect();
    let entry = RouteEntry {
        prefix: p,
        source: RouteSource::Bgp,
        action: RouteAction::Forward(paths),
    };
    (entry, through)
}

/// A pod's /32 through its veth.
pub(crate) fn pod_route(p: &crate::state::PodState) -> RouteEntry {
    RouteEntry {
        prefix: Ipv4Prefix::host(p.ip),
        source: RouteSource::Pod,
        action: forward(None, p.sw_if),
    }
}

fn forward(via: Option<Ipv4Addr>, sw_if: u16) -> RouteAction {
    RouteAction::Forward(vec![Path { via, sw_if }])
}

/// This node's pod CIDRs.
pub(crate) fn pod_cidrs(state: &NodeState) -> Vec<Ipv4Prefix> {
    vec![state.spec.node.pod_cidr.into()]
}

/// The engine's interface table: the uplink, the pods, the tunnels.
pub(crate) fn interfaces(state: &NodeState) -> Interfaces {
    let node = &state.spec.node;
    let mut ifaces = Interfaces::new();
    ifaces.insert(Interface {
        sw_if: UPLINK_SW_IF,
        name: state.uplink.name.clone(),
        kind: IfKind::Uplink,
        ifindex: state.uplink.ifindex,
        mac: state.uplink.mac,
        ip4: Some((node.address.addr(), node.address.prefix_len())),
        mtu: state.uplink.mtu,
        port: state.uplink.port,
        xdp_mode: state.uplink.xdp_mode.clone(),
        pod: None,
    });
    ifaces.set_queues(UPLINK_SW_IF, state.uplink.queues);
    for p in state.pods.values() {
        ifaces.insert(Interface {
            sw_if: p.sw_if,
            name: p.host_ifname.clone(),
            kind: IfKind::Pod,
            ifindex: p.host_ifindex,
            mac: p.host_mac,
            ip4: None,
            mtu: p.mtu,
            port: p.port,
            xdp_mode: p.xdp_mode.clone(),
            pod: Some(PodInfo {
                name: p.key.clone(),
                ip: p.ip,
                mac: p.pod_mac,
            }),
        });
    }
    state.overlay.contribute(
        &mut FibBuilder::new(),
        &mut ifaces,
        UPLINK_SW_IF,
        state.uplink.mtu,
    );
    ifaces
}

#[cfg(test)]
mod tests;
