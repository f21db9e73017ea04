//! Validation of `services`, `endpointSlices` and `serviceProxy` of a spec: every object
//! compiles ([`super::compile`]), and the checks across objects and against the service
//! type hold (names, node ports, frontends, slices' services, captures).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use super::*;
use super::{invalid, is_prime};
use crate::spec::{ConfigError, NodeSpec};

/// The spec's services compiled, in order; the first that does not compile is an error
/// naming its field (`services[0].spec.ports[1].port`).
pub fn compile_services(spec: &NodeSpec) -> Result<Vec<CompiledService>, ConfigError> {
    spec.services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.compile()
                .map_err(|e| invalid(format!("services[{i}].{}", e.field), e.message))
        })
        .collect()
}

/// The spec's endpoint slices compiled, in order; the first that does not compile is an
/// error naming its field (`endpointSlices[0].endpoints[1].addresses[0]`).
pub fn compile_slices(spec: &NodeSpec) -> Result<Vec<CompiledSlice>, ConfigError> {
    spec.endpoint_slices
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.compile()
                .map_err(|e| invalid(format!("endpointSlices[{i}].{}", e.field), e.message))
        })
        .collect()
}

/// Validate `services`, `endpointSlices` and `serviceProxy` of a spec.
pub fn validate(spec: &NodeSpec) -> Result<(), ConfigError> {
    let px = &spec.service_proxy;
    px.snat_range()
        .map_err(|m| invalid("serviceProxy.snatPorts", m))?;
    if let Some(n) = px.maglev_table_size {
        if !is_prime(n) || n > 131071 {
            return Err(invalid(
                "serviceProxy.maglevTableSize",
                format!("{n} is not an odd prime up to 131071 (e.g. 65537)"),
            ));
        }
    }
    if px.conntrack_max == Some(0) {
        return Err(invalid("serviceProxy.conntrackMax", "must be at least 1"));
    }
    let services = compile_services(spec)?;
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut frontends: HashMap<(Ipv4Addr, u8, u16), String> = HashMap::new();
    let mut node_ports: HashMap<(u8, u16), String> = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        let f = |x: &str| format!("services[{i}].{x}");
        if let Some(j) = keys.insert(s.key(), i) {
            return Err(invalid(
                f("metadata.name"),
                format!("{} is already defined by services[{j}]", s.key()),
            ));
        }
        if let Some(hc) = s.health_check_node_port {
            if s.type_ != ServiceType::LoadBalancer
                || s.external_traffic_policy != Some(TrafficPolicy::Local)
            {
                return Err(invalid(
                    f("spec.healthCheckNodePort"),
                    "only for type LoadBalancer with externalTrafficPolicy Local",
                ));
            }
            if hc == 0 {
                return Err(invalid(f("spec.healthCheckNodePort"), "must not be 0"));
            }
        }
        let mut names: BTreeSet<&str> = BTreeSet::new();
        for (j, p) in s.ports.iter().enumerate() {
            let pf = |x: &str| format!("services[{i}].spec.ports[{j}].{x}");
            if s.ports.len() > 1 && p.name.is_empty() {
                return Err(invalid(
                    pf("name"),
                    "required when a service has several ports",
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(invalid(pf("name"), format!("{:?} is used twice", p.name)));
            }
            if let Some(np) = p.node_port {
                if !s.has_node_ports() {
                    return Err(invalid(
                        pf("nodePort"),
                        "only for types NodePort and LoadBalancer",
                    ));
                }
                if !(NODE_PORT_RANGE.0..=NODE_PORT_RANGE.1).contains(&np) {
                    return Err(invalid(
                        pf("nodePort"),
                        format!(
                            "{np} is outside {}-{}",
                            NODE_PORT_RANGE.0, NODE_PORT_RANGE.1
                        ),
                    ));
                }
                if let Some(o) = node_ports.insert((p.proto, np), s.key()) {
                    return Err(invalid(
                        pf("nodePort"),
                        format!("{np} is already used by {o}"),
                    ));
                }
            } else if s.has_node_ports() {
                return Err(invalid(
                    pf("nodePort"),
                    "required for this service type in standalone mode (no allocator)",
                ));
            }
            let addrs = s
                .cluster_ips
                .iter()
                .chain(&s.external_ips)
                .copied()
                .chain(s.lb_ips());
            for a in addrs {
                if let Some(o) = frontends.insert((a, p.proto, p.port), s.key()) {
                    if o != s.key() {
                        return Err(invalid(
                            pf("port"),
                            format!("{a}:{} is already used by {o}", p.port),
                        ));
                    }
                }
            }
        }
    }
    let slices = compile_slices(spec)?;
    for (i, es) in slices.iter().enumerate() {
        let Some(key) = es.service_key() else {
            return Err(invalid(
                format!("endpointSlices[{i}].metadata.labels"),
                format!("missing {SERVICE_NAME_LABEL}"),
            ));
        };
        if !keys.contains_key(&key) {
            return Err(invalid(
                format!("endpointSlices[{i}].metadata.labels.{SERVICE_NAME_LABEL}"),
                format!("no service {key} in services"),
            ));
        }
    }
    super::captures::validate_captures_of(spec, &services)
}
