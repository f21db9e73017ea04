//! Validation of `services`, `endpointSlices` and `serviceProxy` of a spec.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use super::*;
use super::{invalid, is_prime, proto_of};
use crate::spec::{ConfigError, NodeSpec};

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
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut frontends: HashMap<(Ipv4Addr, u8, u16), String> = HashMap::new();
    let mut node_ports: HashMap<(u8, u16), String> = HashMap::new();
    for (i, s) in spec.services.iter().enumerate() {
        let f = |x: &str| format!("services[{i}].{x}");
        if s.metadata.name.is_empty() {
            return Err(invalid(f("metadata.name"), "must not be empty"));
        }
        if let Some(j) = keys.insert(s.key(), i) {
            return Err(invalid(
                f("metadata.name"),
                format!("{} is already defined by services[{j}]", s.key()),
            ));
        }
        for (k, ip) in s
            .spec
            .cluster_ip
            .iter()
            .chain(&s.spec.cluster_ips)
            .enumerate()
        {
            if ip != "None"
                && !ip.is_empty()
                && ip.parse::<Ipv4Addr>().is_err()
                && !ip.contains(':')
            {
                let field = if k == 0 && s.spec.cluster_ip.is_some() {
                    f("spec.clusterIP")
                } else {
                    f("spec.clusterIPs")
                };
                return Err(invalid(
                    field,
                    format!("{ip:?} is not an IP address or None"),
                ));
            }
        }
        if let Some(a) = &s.spec.session_affinity {
            if a != "None" && a != "ClientIP" {
                return Err(invalid(
                    f("spec.sessionAffinity"),
                    format!("{a:?}: expected None or ClientIP"),
                ));
            }
        }
        if let Some(t) = s
            .spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
        {
            if t == 0 || t > 86400 {
                return Err(invalid(
                    f("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
                    format!("{t} is outside 1..=86400"),
                ));
            }
        }
        if let Some(hc) = s.spec.health_check_node_port {
            if s.spec.type_ != ServiceType::LoadBalancer
                || s.spec.external_traffic_policy != Some(TrafficPolicy::Local)
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
        for (j, p) in s.spec.ports.iter().enumerate() {
            let pf = |x: &str| format!("services[{i}].spec.ports[{j}].{x}");
            let proto = proto_of(&p.protocol).map_err(|m| invalid(pf("protocol"), m))?;
            if p.port == 0 {
                return Err(invalid(pf("port"), "must be 1..=65535"));
            }
            let name = p.name.as_deref().unwrap_or("");
            if s.spec.ports.len() > 1 && name.is_empty() {
                return Err(invalid(
                    pf("name"),
                    "required when a service has several ports",
                ));
            }
            if !names.insert(name) {
                return Err(invalid(pf("name"), format!("{name:?} is used twice")));
            }
            if let Some(TargetPort::Number(0)) = p.target_port {
                return Err(invalid(
                    pf("targetPort"),
                    "must be 1..=65535 or a port name",
                ));
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
                if let Some(o) = node_ports.insert((proto, np), s.key()) {
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
                .cluster_ipv4s()
                .into_iter()
                .chain(s.spec.external_ips.iter().copied())
                .chain(s.lb_ips());
            for a in addrs {
                if let Some(o) = frontends.insert((a, proto, p.port), s.key()) {
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
    for (i, es) in spec.endpoint_slices.iter().enumerate() {
        let f = |x: &str| format!("endpointSlices[{i}].{x}");
        let Some(svc) = es.metadata.labels.get(SERVICE_NAME_LABEL) else {
            return Err(invalid(
                f("metadata.labels"),
                format!("missing {SERVICE_NAME_LABEL}"),
            ));
        };
        let key = format!("{}/{}", es.metadata.namespace, svc);
        if !keys.contains_key(&key) {
            return Err(invalid(
                format!("endpointSlices[{i}].metadata.labels.{SERVICE_NAME_LABEL}"),
                format!("no service {key} in services"),
            ));
        }
        if es.address_type != "IPv4" && es.address_type != "IPv6" && es.address_type != "FQDN" {
            return Err(invalid(
                f("addressType"),
                format!("{:?}: expected IPv4, IPv6 or FQDN", es.address_type),
            ));
        }
        for (j, p) in es.ports.iter().enumerate() {
            proto_of(&p.protocol)
                .map_err(|m| invalid(format!("endpointSlices[{i}].ports[{j}].protocol"), m))?;
            if p.port == Some(0) {
                return Err(invalid(
                    format!("endpointSlices[{i}].ports[{j}].port"),
                    "must be 1..=65535",
                ));
            }
        }
        for (j, e) in es.endpoints.iter().enumerate() {
            if e.addresses.is_empty() {
                return Err(invalid(
                    format!("endpointSlices[{i}].endpoints[{j}].addresses"),
                    "must list at least one address",
                ));
            }
        }
    }
    validate_captures(spec)
}
