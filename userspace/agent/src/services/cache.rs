//! The node's service tables, changed only where their inputs changed.
//!
//! The cache keeps a copy of the services and endpoint slices the table in force was
//! built from and each service's port definitions. A new spec is compared with the copy
//! (the runs at both ends that are equal are skipped in one pass; what lies between is
//! matched by name), the services whose Service or EndpointSlices changed get new port
//! definitions, and [`ServiceTable::update`] replaces only their ports (Maglev tables
//! only for them). The hostPorts, the ports a new hostPort may not take and the
//! health-check node ports follow from the services with node ports and the bindings,
//! not from every service. A change of the service proxy settings or of the node, the
//! first build, and a build after one that failed, start from scratch
//! ([`ServiceTable::build`], sharing unchanged Maglev tables with the table in force).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ferroplane_tables::{NatConfig, ServicePortDef, ServiceTable};

use super::*;
use crate::hostports::{Binding, HostPortTable, Reserved, Shadowed};
use crate::spec::NodeSpec;

/// What the table in force was built from.
#[derive(Debug, Clone, Default)]
struct Built {
    /// Copies of the spec's services and endpoint slices.
    services: Vec<ServiceObject>,
    slices: Vec<EndpointSliceObject>,
    /// The settings: a change builds everything again.
    proxy: ServiceProxyConfig,
    node_addr: Option<Ipv4Addr>,
    node_name: String,
    /// Port definitions by service (`namespace/name`).
    defs: HashMap<String, Vec<ServicePortDef>>,
    /// The services with NodePorts or health-check node ports (what hostPorts yield to).
    node_port_services: BTreeSet<String>,
    /// The hostPorts' port definitions in the table.
    host_defs: Vec<ServicePortDef>,
    /// The table could not be built from these inputs (the previous one is in force): a
    /// change builds everything again.
    failed: bool,
}

impl Built {
    /// Copies of `spec`'s inputs, nothing built yet.
    fn of(spec: &NodeSpec) -> Built {
        Built {
            services: spec.services.clone(),
            slices: spec.endpoint_slices.clone(),
            proxy: spec.service_proxy.clone(),
            node_addr: Some(spec.node.address.addr()),
            node_name: spec.node.name.clone(),
            ..Built::default()
        }
    }

    fn same_settings(&self, spec: &NodeSpec) -> bool {
        self.proxy == spec.service_proxy
            && self.node_addr == Some(spec.node.address.addr())
            && self.node_name == spec.node.name
    }

    /// The spec's port definitions of the services with node ports.
    fn node_port_defs(&self) -> impl Iterator<Item = &ServicePortDef> + Clone {
        self.node_port_services
            .iter()
            .filter_map(|k| self.defs.get(k))
            .flatten()
    }

    /// Records the port definitions of service `key`.
    fn set_defs(&mut self, key: String, defs: Vec<ServicePortDef>) {
        if defs
            .iter()
            .any(|d| d.node_port.is_some() || d.health_check_node_port.is_some())
        {
            self.node_port_services.insert(key.clone());
        } else {
            self.node_port_services.remove(&key);
        }
        if defs.is_empty() {
            self.defs.remove(&key);
        } else {
            self.defs.insert(key, defs);
        }
    }
}

/// The service tables of the node, changed only where their inputs changed, and
/// the XDP steering last applied for them.
#[derive(Debug, Default)]
pub struct ServiceCache {
    /// What the tables in force were built from (`None`: build everything next time).
    built: Option<Built>,
    /// Tables in force.
    pub state: ServiceState,
    pub(super) applied: Steering,
    /// The tables [`Steering`] was last computed for.
    pub(super) steered: Option<(Arc<ServiceTable>, Arc<NatConfig>)>,
    /// Health-check node ports, read by [`serve_health_checks`].
    pub health: HealthChecks,
    /// How long the last rebuild took.
    pub last_build: Option<std::time::Duration>,
    /// The pods' hostPorts in the table (NodePorts bound to one pod,
    /// [`crate::hostports`]) and what a new one may not take.
    pub host_ports: HostPortTable,
}

/// Shared handle on the [`ServiceCache`].
pub type ServiceCacheHandle = Arc<Mutex<ServiceCache>>;

/// The tables for `spec`, changed where its services, endpoint slices or settings changed.
/// A table that cannot be built (the spec validation catches what would fail) keeps the
/// previous one in force and is logged.
pub fn tables(cache: &ServiceCacheHandle, spec: &NodeSpec) -> (Arc<ServiceTable>, Arc<NatConfig>) {
    tables_with_host_ports(cache, spec, &[], Vec::new())
}

/// [`tables`] with the pods' hostPorts (`bindings`, [`crate::hostports::merge`]d, and what
/// the merge left out) as NodePorts bound to one pod each.
pub fn tables_with_host_ports(
    cache: &ServiceCacheHandle,
    spec: &NodeSpec,
    bindings: &[Binding],
    merge_shadowed: Vec<Shadowed>,
) -> (Arc<ServiceTable>, Arc<NatConfig>) {
    let mut c = match cache.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    };
    c.update(spec, bindings, merge_shadowed);
    (c.state.table.clone(), c.state.nat.clone())
}

impl ServiceCache {
    /// Forgets what the tables were built from: the next update builds every service
    /// again (sharing unchanged Maglev tables with the table in force), as the agent did
    /// before the tables were changed in place. For comparisons (the reconcile bench).
    pub fn forget_inputs(&mut self) {
        self.built = None;
    }

    fn update(&mut self, spec: &NodeSpec, bindings: &[Binding], merge_shadowed: Vec<Shadowed>) {
        let t0 = std::time::Instant::now();
        let (mut b, done) = match self.built.take() {
            Some(mut b) if b.same_settings(spec) => {
                let mut changed = BTreeSet::new();
                sync(&mut b.services, &spec.services, &mut changed);
                sync(&mut b.slices, &spec.endpoint_slices, &mut changed);
                if changed.is_empty() && self.host_ports.input == bindings {
                    self.built = Some(b);
                    return;
                }
                let done = if b.failed {
                    self.build_all(&mut b, spec, bindings, merge_shadowed)
                } else {
                    self.apply_changes(&mut b, spec, &changed, bindings, merge_shadowed)
                };
                (b, done)
            }
            _ => {
                let mut b = Built::of(spec);
                let done = self.build_all(&mut b, spec, bindings, merge_shadowed);
                (b, done)
            }
        };
        b.failed = done.is_err();
        self.built = Some(b);
        match done {
            Ok(()) => {
                self.last_build = Some(t0.elapsed());
                let hc = health_checks(&self.state.table);
                if let Ok(mut h) = self.health.lock() {
                    *h = hc;
                }
                tracing::debug!(
                    service_ports = self.state.table.len(),
                    took_ms = t0.elapsed().as_secs_f64() * 1e3,
                    "service table built"
                );
            }
            // The table in force stays; the next change builds everything again.
            Err(e) => tracing::warn!("service table not rebuilt: {e}"),
        }
    }

    /// Every service from scratch (`b` holds the copies of the spec's inputs).
    fn build_all(
        &mut self,
        b: &mut Built,
        spec: &NodeSpec,
        bindings: &[Binding],
        merge_shadowed: Vec<Shadowed>,
    ) -> Result<(), ferroplane_tables::ServiceError> {
        b.defs.clear();
        b.node_port_services.clear();
        let mut all = Vec::new();
        for (key, defs) in defs_by_service(spec, None) {
            all.extend(defs.iter().cloned());
            b.set_defs(key, defs);
        }
        b.host_defs = self.host_ports_of(b, spec, bindings, merge_shadowed);
        all.extend(b.host_defs.iter().cloned());
        self.state.rebuild_defs(spec, all)
    }

    /// The services in `changed` (`namespace/name`) and the hostPorts again; the rest
    /// stays as built.
    fn apply_changes(
        &mut self,
        b: &mut Built,
        spec: &NodeSpec,
        changed: &BTreeSet<String>,
        bindings: &[Binding],
        merge_shadowed: Vec<Shadowed>,
    ) -> Result<(), ferroplane_tables::ServiceError> {
        let only: BTreeSet<(&str, &str)> =
            changed.iter().filter_map(|k| k.split_once('/')).collect();
        let mut fresh: HashMap<String, Vec<ServicePortDef>> =
            defs_by_service(spec, Some(&only)).into_iter().collect();
        let mut replaced = changed.clone();
        let mut defs = Vec::new();
        for key in changed {
            let d = fresh.remove(key).unwrap_or_default();
            defs.extend(d.iter().cloned());
            b.set_defs(key.clone(), d);
        }
        let host_defs = self.host_ports_of(b, spec, bindings, merge_shadowed);
        if host_defs != b.host_defs {
            replaced.extend(b.host_defs.iter().map(|d| d.service.clone()));
            replaced.extend(host_defs.iter().map(|d| d.service.clone()));
            defs.extend(host_defs.iter().cloned());
            b.host_defs = host_defs;
        }
        self.state.table = Arc::new(self.state.table.update(&replaced, defs)?);
        Ok(())
    }

    /// The hostPorts' port definitions for `bindings` next to the services of `b`; records
    /// what is served, what is shadowed and what a new hostPort may not take.
    fn host_ports_of(
        &mut self,
        b: &Built,
        spec: &NodeSpec,
        bindings: &[Binding],
        merge_shadowed: Vec<Shadowed>,
    ) -> Vec<ServicePortDef> {
        let (host_defs, mut shadowed) = crate::hostports::defs(b.node_port_defs(), bindings, spec);
        shadowed.extend(merge_shadowed);
        let served: Vec<Binding> = bindings
            .iter()
            .filter(|x| !shadowed.iter().any(|s| &s.binding == *x))
            .cloned()
            .collect();
        let listeners = std::mem::take(&mut self.host_ports.listeners);
        self.host_ports = HostPortTable {
            input: bindings.to_vec(),
            reserved: Reserved::of(spec, b.node_port_defs(), &listeners, &served),
            served,
            shadowed,
            listeners,
        };
        host_defs
    }
}

/// A Kubernetes object of the service tables' inputs.
trait Input: Clone + PartialEq {
    /// `(namespace, name)`.
    fn id(&self) -> (&str, &str);
    /// The service (`namespace/name`) whose port definitions it is part of.
    fn service(&self) -> Option<String>;
}

impl Input for ServiceObject {
    fn id(&self) -> (&str, &str) {
        (self.namespace(), self.name())
    }

    fn service(&self) -> Option<String> {
        Some(self.key())
    }
}

impl Input for EndpointSliceObject {
    fn id(&self) -> (&str, &str) {
        (self.namespace(), self.name())
    }

    fn service(&self) -> Option<String> {
        Some(format!("{}/{}", self.namespace(), self.service_name()?))
    }
}

/// Brings the copy `old` in line with `new`, cloning only what lies between the equal
/// runs at both ends, and adds to `changed` the services of what changed (before and
/// after). Between the runs, objects are matched by name: a reordered but equal object
/// is no change.
fn sync<T: Input>(old: &mut Vec<T>, new: &[T], changed: &mut BTreeSet<String>) {
    let head = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let tail = old[head..]
        .iter()
        .rev()
        .zip(new[head..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (was, now) = (head..old.len() - tail, head..new.len() - tail);
    if was.is_empty() && now.is_empty() {
        return;
    }
    {
        let before: HashMap<(&str, &str), &T> =
            old[was.clone()].iter().map(|o| (o.id(), o)).collect();
        let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
        for n in &new[now.clone()] {
            seen.insert(n.id());
            match before.get(&n.id()) {
                Some(o) if *o == n => {}
                Some(o) => {
                    changed.extend(o.service());
                    changed.extend(n.service());
                }
                None => changed.extend(n.service()),
            }
        }
        for (id, o) in &before {
            if !seen.contains(id) {
                changed.extend(o.service());
            }
        }
    }
    old.splice(was, new[now].iter().cloned());
}

/// Copy the service parts of `from` into `into`; true when something changed.
pub fn take_services(into: &mut NodeSpec, from: NodeSpec) -> bool {
    let changed = into.services != from.services
        || into.endpoint_slices != from.endpoint_slices
        || into.service_proxy != from.service_proxy;
    into.services = from.services;
    into.endpoint_slices = from.endpoint_slices;
    into.service_proxy = from.service_proxy;
    changed
}
