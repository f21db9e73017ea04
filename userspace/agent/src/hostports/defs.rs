//! hostPorts as service ports: each binding becomes a NodePort with one local backend,
//! unless a service node port or an earlier binding has its port.

use std::collections::BTreeMap;

use ferroplane_tables::service::{proto_name, Backend, EndpointState, ServicePortDef, PROTO_TCP};

use super::{Binding, Shadowed, SERVICE_PREFIX};
use crate::config::NodeSpec;

/// The service ports of `bindings` next to the spec's service ports `services`: one per
/// binding, node port = hostPort, one local backend (the pod's address and container port).
/// A binding whose port a service node port (or health-check node port) or an earlier
/// binding has, or whose address is not the node's, is left out as shadowed.
pub fn defs<'a>(
    services: impl IntoIterator<Item = &'a ServicePortDef>,
    bindings: &[Binding],
    spec: &NodeSpec,
) -> (Vec<ServicePortDef>, Vec<Shadowed>) {
    let node_addr = spec.node.address.addr();
    let mut taken: BTreeMap<(u8, u16), String> = BTreeMap::new();
    for d in services {
        if let Some(np) = d.node_port {
            taken.insert(
                (d.proto, np),
                format!("the node port of service {}", d.service),
            );
        }
        if let Some(hc) = d.health_check_node_port {
            taken
                .entry((PROTO_TCP, hc))
                .or_insert_with(|| format!("the health-check node port of service {}", d.service));
        }
    }
    let mut out = Vec::new();
    let mut shadowed = Vec::new();
    for b in bindings {
        let p = b.port;
        let why = if p.host_ip.is_some_and(|a| a != node_addr) {
            Some(format!(
                "{} is not the node's address {node_addr}",
                p.host_ip.unwrap_or(node_addr)
            ))
        } else {
            taken.get(&(p.proto, p.host_port)).cloned()
        };
        if let Some(reason) = why {
            tracing::warn!(pod = %b.pod, hostport = %p.name(), "hostPort not served: {reason}");
            shadowed.push(Shadowed {
                binding: b.clone(),
                reason,
            });
            continue;
        }
        taken.insert(
            (p.proto, p.host_port),
            format!("hostPort {} of pod {}", p.name(), b.pod),
        );
        out.push(ServicePortDef {
            service: format!("{SERVICE_PREFIX}{}", b.pod),
            port_name: format!("{}-{}", proto_name(p.proto), p.host_port),
            proto: p.proto,
            port: p.host_port,
            node_port: Some(p.host_port),
            cluster_ips: Vec::new(),
            external_ips: Vec::new(),
            lb_ips: Vec::new(),
            backends: vec![Backend {
                addr: b.pod_ip,
                port: p.container_port,
                local: true,
                state: EndpointState::Ready,
                weight: 1,
                node: spec.node.name.clone(),
                target: b.pod.clone(),
            }],
            internal_local: false,
            // The client's address is kept: the one backend is on this node.
            external_local: true,
            affinity_secs: None,
            health_check_node_port: None,
        });
    }
    (out, shadowed)
}
