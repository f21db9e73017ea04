//! Where hostPort bindings come from: a CNI ADD's `portMappings` ([`from_request`]), the
//! Kubernetes pods of this node ([`from_pods`]), and the two merged ([`merge`]).

use std::net::Ipv4Addr;

use ferroplane_cni::{code, CniError, PortMapping};
use ferroplane_tables::service::{PROTO_TCP, PROTO_UDP};

use super::{Binding, HostPort, Shadowed, Source};

/// The hostPorts of a CNI ADD, each bound to an address the engine serves node ports on
/// (empty, `0.0.0.0` or `node_addr`); another `hostIP` is an invalid configuration (code 7:
/// nothing would ever reach it).
pub fn from_request(
    mappings: &[PortMapping],
    node_addr: Ipv4Addr,
) -> Result<Vec<HostPort>, CniError> {
    let mut out = Vec::with_capacity(mappings.len());
    for m in mappings {
        let hp = HostPort::from_mapping(m)?;
        if let Some(a) = hp.host_ip {
            if a != node_addr {
                return Err(CniError::new(
                    code::INVALID_NETWORK_CONFIG,
                    format!(
                        "runtimeConfig.portMappings: hostIP {a} of hostPort {} is not this node's address ({node_addr}): hostPorts are served on the node's address only",
                        hp.name()
                    ),
                ));
            }
        }
        if !out.contains(&hp) {
            out.push(hp);
        }
    }
    Ok(out)
}

/// The bindings of the CNI attachments (authoritative) and of the Kubernetes pods
/// (`k8s`: only those of pods plumbed here, `local_ips`). A Kubernetes binding equal to a
/// CNI one (same pod address, protocol, port, container port, overlapping address) marks
/// it [`Source::Both`]; one that overlaps another binding is left out as shadowed.
pub fn merge(
    cni: Vec<Binding>,
    k8s: &[Binding],
    local_ips: &std::collections::BTreeSet<Ipv4Addr>,
) -> (Vec<Binding>, Vec<Shadowed>) {
    let mut out = cni;
    let mut shadowed = Vec::new();
    for b in k8s {
        if !local_ips.contains(&b.pod_ip) {
            continue;
        }
        if let Some(same) = out.iter_mut().find(|o| {
            o.pod_ip == b.pod_ip
                && o.port.container_port == b.port.container_port
                && o.port.overlaps(&b.port)
        }) {
            if same.source == Source::Cni {
                same.source = Source::Both;
            }
            continue;
        }
        match out.iter().find(|o| o.port.overlaps(&b.port)) {
            Some(o) => shadowed.push(Shadowed {
                binding: b.clone(),
                reason: format!(
                    "hostPort {} is bound to {} ({}:{}, {})",
                    o.port.name(),
                    o.pod,
                    o.pod_ip,
                    o.port.container_port,
                    o.source.as_str()
                ),
            }),
            None => out.push(b.clone()),
        }
    }
    (out, shadowed)
}

/// The hostPorts of the Kubernetes pods on node `me` (not hostNetwork, with an IPv4
/// address): every container port with a `hostPort`, TCP or UDP (SCTP is not served), on
/// every address or an IPv4 `hostIP`.
pub fn from_pods(pods: &[k8s_openapi::api::core::v1::Pod], me: &str) -> Vec<Binding> {
    let mut out = Vec::new();
    for p in pods {
        let Some(spec) = p.spec.as_ref() else {
            continue;
        };
        if spec.node_name.as_deref() != Some(me) || spec.host_network == Some(true) {
            continue;
        }
        let Some(status) = p.status.as_ref() else {
            continue;
        };
        let Some(ip) = status
            .pod_ips
            .iter()
            .flatten()
            .map(|i| i.ip.as_str())
            .chain(status.pod_ip.as_deref())
            .find_map(|a| a.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let pod = format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or("default"),
            p.metadata.name.as_deref().unwrap_or("")
        );
        for cp in spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
        {
            let (Some(hp), Ok(container_port)) = (cp.host_port, u16::try_from(cp.container_port))
            else {
                continue;
            };
            let Ok(host_port) = u16::try_from(hp) else {
                continue;
            };
            let proto = match cp.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => PROTO_TCP,
                "UDP" => PROTO_UDP,
                _ => continue,
            };
            let host_ip = match cp.host_ip.as_deref().unwrap_or("") {
                "" | "0.0.0.0" => None,
                a => match a.parse::<Ipv4Addr>() {
                    Ok(a) => Some(a),
                    Err(_) => continue,
                },
            };
            if host_port == 0 || container_port == 0 {
                continue;
            }
            let b = Binding {
                pod: pod.clone(),
                pod_ip: ip,
                port: HostPort {
                    proto,
                    host_port,
                    container_port,
                    host_ip,
                },
                source: Source::Kubernetes,
            };
            if !out.contains(&b) {
                out.push(b);
            }
        }
    }
    out.sort();
    out
}
