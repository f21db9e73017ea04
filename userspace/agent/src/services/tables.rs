//! What the spec's services become: the engine's service port definitions and NAT settings.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ferroplane_tables::conntrack::Timeouts;
use ferroplane_tables::{
    Backend, EndpointState, Ipv4Prefix, NatConfig, ServicePortDef, ServiceTable, DEFAULT_TABLE_SIZE,
};

use super::*;
use crate::spec::NodeSpec;

/// The service port definitions of a spec, in the spec's order.
pub fn service_defs(spec: &NodeSpec) -> Vec<ServicePortDef> {
    defs_by_service(spec, None)
        .into_iter()
        .flat_map(|(_, d)| d)
        .collect()
}

/// The service port definitions of the spec's services by service (`namespace/name`), in
/// the spec's order; with `only`, of those services only (`(namespace, name)`), in one
/// pass over the spec without compiling the others. Objects that do not compile are left
/// out (validation refuses them; the Kubernetes source does not pass them on).
pub fn defs_by_service(
    spec: &NodeSpec,
    only: Option<&BTreeSet<(&str, &str)>>,
) -> Vec<(String, Vec<ServicePortDef>)> {
    let wanted = |ns: &str, name: &str| only.is_none_or(|o| o.contains(&(ns, name)));
    let mut slices: HashMap<(&str, &str), Vec<CompiledSlice>> = HashMap::new();
    for es in &spec.endpoint_slices {
        if !es.is_ipv4() {
            continue;
        }
        if let Some(svc) = es.service_name() {
            if wanted(es.namespace(), svc) {
                if let Ok(c) = es.compile() {
                    slices.entry((es.namespace(), svc)).or_default().push(c);
                }
            }
        }
    }
    spec.services
        .iter()
        .filter(|s| wanted(s.namespace(), s.name()))
        .filter_map(|s| {
            let c = s.compile().ok()?;
            let of = slices
                .get(&(s.namespace(), s.name()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            Some((c.key(), port_defs(&c, of, &spec.node.name)))
        })
        .collect()
}

/// The port definitions of service `s` with its endpoint slices `slices`, on node
/// `node_name`.
pub fn port_defs(
    s: &CompiledService,
    slices: &[CompiledSlice],
    node_name: &str,
) -> Vec<ServicePortDef> {
    let mut defs = Vec::new();
    if s.type_ == ServiceType::ExternalName {
        return defs;
    }
    let key = s.key();
    for p in &s.ports {
        let mut backends: Vec<Backend> = Vec::new();
        for es in slices {
            // The slice port for this service port: same name and protocol (kube-proxy).
            let sp = es
                .ports
                .iter()
                .find(|ep| ep.name == p.name && ep.proto == p.proto);
            let port = match (sp.and_then(|x| x.port), &p.target_port) {
                (Some(n), _) => n,
                (None, TargetPort::Number(n)) if es.ports.is_empty() => *n,
                _ => continue,
            };
            for e in &es.endpoints {
                let Some(&addr) = e.addresses.first() else {
                    continue;
                };
                let node = e.node_name.clone().unwrap_or_default();
                backends.push(Backend {
                    addr,
                    port,
                    local: node == node_name,
                    state: EndpointState::from_conditions(
                        Some(e.ready),
                        Some(e.serving),
                        Some(e.terminating),
                    ),
                    weight: 1,
                    target: e.target.clone().unwrap_or_default(),
                    node,
                });
            }
        }
        backends.sort_by_key(|b| (b.addr, b.port));
        backends.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
        defs.push(ServicePortDef {
            service: key.clone(),
            port_name: p.name.clone(),
            proto: p.proto,
            port: p.port,
            node_port: if s.has_node_ports() {
                p.node_port
            } else {
                None
            },
            cluster_ips: s.cluster_ips.clone(),
            external_ips: s.external_ips.clone(),
            lb_ips: s.lb_ips(),
            backends,
            internal_local: s.internal_local(),
            external_local: s.external_local(),
            affinity_secs: s.affinity_secs,
            health_check_node_port: s.health_check_node_port(),
        });
    }
    defs
}

/// The NAT settings of a spec.
pub fn nat_config(spec: &NodeSpec) -> NatConfig {
    let px = &spec.service_proxy;
    let mut cluster: Vec<Ipv4Prefix> = px.cluster_cidrs.iter().map(|&c| c.into()).collect();
    if cluster.is_empty() {
        cluster.push(spec.node.pod_cidr.into());
    }
    NatConfig {
        masquerade: px.masquerade,
        masquerade_addr: Some(px.masquerade_address.unwrap_or(spec.node.address.addr())),
        cluster_cidrs: cluster,
        snat_ports: px
            .snat_range()
            .unwrap_or(ferroplane_tables::nat::DEFAULT_SNAT_PORTS),
        conntrack_max: px
            .conntrack_max
            .unwrap_or(ferroplane_tables::nat::DEFAULT_CONNTRACK_MAX),
        timeouts: Timeouts::default(),
    }
}

/// The service side of the node state.
#[derive(Debug, Clone, Default)]
pub struct ServiceState {
    /// The table published to the engine.
    pub table: Arc<ServiceTable>,
    /// NAT settings published to the engine.
    pub nat: Arc<NatConfig>,
}

impl ServiceState {
    /// Rebuild from `spec` (sharing unchanged Maglev tables with the current one).
    pub fn rebuild(&mut self, spec: &NodeSpec) -> Result<(), ferroplane_tables::ServiceError> {
        self.rebuild_defs(spec, service_defs(spec))
    }

    /// [`ServiceState::rebuild`] from the service ports `defs` ([`service_defs`] of `spec`
    /// and the hostPorts).
    pub fn rebuild_defs(
        &mut self,
        spec: &NodeSpec,
        defs: Vec<ServicePortDef>,
    ) -> Result<(), ferroplane_tables::ServiceError> {
        let max = spec
            .service_proxy
            .maglev_table_size
            .unwrap_or(DEFAULT_TABLE_SIZE);
        let table =
            ServiceTable::build(defs, vec![spec.node.address.addr()], max, Some(&self.table))?;
        self.table = Arc::new(table);
        self.nat = Arc::new(nat_config(spec));
        Ok(())
    }
}
