//! The node's service tables, rebuilt only when their inputs change.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ferroplane_tables::{NatConfig, ServiceTable};

use super::*;
use crate::spec::NodeSpec;

/// What the service tables were last built from.
type Source = (
    Vec<ServiceSpec>,
    Vec<EndpointSliceSpec>,
    ServiceProxyConfig,
    Ipv4Addr,
    String,
);

/// The service tables of the node, rebuilt only when their inputs change, and
/// the XDP steering last applied for them.
#[derive(Debug, Default)]
pub struct ServiceCache {
    source: Option<Source>,
    /// Tables in force.
    pub state: ServiceState,
    pub(super) applied: Steering,
    /// Health-check node ports, read by [`serve_health_checks`].
    pub health: HealthChecks,
    /// How long the last rebuild took.
    pub last_build: Option<std::time::Duration>,
    /// The pods' hostPorts in the table (NodePorts bound to one pod,
    /// [`crate::hostports`]) and what a new one may not take.
    pub host_ports: crate::hostports::HostPortTable,
}

/// Shared handle on the [`ServiceCache`].
pub type ServiceCacheHandle = Arc<Mutex<ServiceCache>>;

/// The tables for `spec`, rebuilt if its services, endpoint slices or settings changed.
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
    bindings: &[crate::hostports::Binding],
    merge_shadowed: Vec<crate::hostports::Shadowed>,
) -> (Arc<ServiceTable>, Arc<NatConfig>) {
    let mut c = match cache.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    };
    let same = matches!(&c.source, Some((s, e, p, a, n))
        if s == &spec.services && e == &spec.endpoint_slices && p == &spec.service_proxy
            && *a == spec.node.address.addr && n == &spec.node.name)
        && c.host_ports.input == bindings;
    if !same {
        let t0 = std::time::Instant::now();
        let mut services = service_defs(spec);
        let (host_defs, mut shadowed) = crate::hostports::defs(&services, bindings, spec);
        shadowed.extend(merge_shadowed);
        let served: Vec<crate::hostports::Binding> = bindings
            .iter()
            .filter(|b| !shadowed.iter().any(|s| &s.binding == *b))
            .cloned()
            .collect();
        let listeners = c.host_ports.listeners.clone();
        c.host_ports = crate::hostports::HostPortTable {
            input: bindings.to_vec(),
            served: served.clone(),
            shadowed,
            reserved: crate::hostports::Reserved::of(spec, &services, &listeners, &served),
            listeners,
        };
        services.extend(host_defs);
        match c.state.rebuild_defs(spec, services) {
            Ok(()) => {
                c.last_build = Some(t0.elapsed());
                let hc = health_checks(&c.state.table);
                if let Ok(mut h) = c.health.lock() {
                    *h = hc;
                }
                tracing::info!(
                    service_ports = c.state.table.len(),
                    took_ms = t0.elapsed().as_secs_f64() * 1e3,
                    "service table built"
                );
            }
            Err(e) => tracing::warn!("service table not rebuilt: {e}"),
        }
        c.source = Some((
            spec.services.clone(),
            spec.endpoint_slices.clone(),
            spec.service_proxy.clone(),
            spec.node.address.addr,
            spec.node.name.clone(),
        ));
    }
    (c.state.table.clone(), c.state.nat.clone())
}
