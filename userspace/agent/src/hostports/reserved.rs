//! What a new hostPort may not take on the node (service and health-check node ports, the
//! agent's listeners, tunnel ports, the SNAT range, the ephemeral range, bindings in
//! force), and the check of a CNI ADD's hostPorts against it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ferroplane_cni::{code, CniError};
use ferroplane_tables::service::{ServicePortDef, PROTO_TCP, PROTO_UDP};

use super::{Binding, HostPort};
use crate::config::NodeSpec;

/// What a new hostPort may not take on this node, besides the other attachments'
/// hostPorts (those are checked under the IPAM lock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// The node address hostPorts are served on.
    pub node_addr: Option<Ipv4Addr>,
    /// (protocol, port) → what has it.
    pub ports: BTreeMap<(u8, u16), String>,
    /// Port ranges (both protocols) → what they are.
    pub ranges: Vec<(u16, u16, String)>,
    /// The bindings in force (a Kubernetes pod's hostPort the runtime did not pass).
    pub bindings: Vec<Binding>,
}

impl Reserved {
    /// What `spec` takes: its services' node ports and health-check node ports, the
    /// agent's listeners (`listeners`: the actual health and metrics ports; BGP and
    /// WireGuard from the spec), the tunnel ports and the SNAT range, plus the
    /// `bindings` in force.
    pub fn of<'a>(
        spec: &NodeSpec,
        services: impl IntoIterator<Item = &'a ServicePortDef>,
        listeners: &BTreeMap<u16, String>,
        bindings: &[Binding],
    ) -> Reserved {
        let mut r = Reserved {
            node_addr: Some(spec.node.address.addr()),
            bindings: bindings.to_vec(),
            ..Reserved::default()
        };
        for d in services {
            if let Some(np) = d.node_port {
                r.ports.insert(
                    (d.proto, np),
                    format!("the node port of service {}", d.service),
                );
            }
            if let Some(hc) = d.health_check_node_port {
                r.ports.entry((PROTO_TCP, hc)).or_insert_with(|| {
                    format!("the health-check node port of service {}", d.service)
                });
            }
        }
        let protected = crate::services::Protected::ports_of_spec(spec);
        for (port, what) in protected.listener_ports.iter().chain(listeners) {
            for proto in [PROTO_TCP, PROTO_UDP] {
                r.ports
                    .entry((proto, *port))
                    .or_insert_with(|| what.clone());
            }
        }
        if let Some(c) = &spec.cluster {
            r.ports.entry((PROTO_UDP, c.vxlan.port)).or_insert_with(|| {
                "the VXLAN port the engine decapsulates (cluster.vxlan.port)".to_string()
            });
            r.ports
                .entry((PROTO_UDP, c.wireguard.port))
                .or_insert_with(|| {
                    "the WireGuard port the engine decapsulates (cluster.wireguard.port)"
                        .to_string()
                });
        }
        let (lo, hi) = protected.snat_ports;
        r.ranges.push((
            lo,
            hi,
            format!("inside serviceProxy.snatPorts {lo}-{hi} (the engine's own translations come back there)"),
        ));
        r
    }

    /// Checks the hostPorts of an ADD for pod `identity` (`namespace/name`, when the
    /// runtime said). `ephemeral`: the node's `net.ipv4.ip_local_port_range` (a hostPort
    /// there would take the replies to the node's own connections). A conflict is
    /// [`code::HOSTPORT_CONFLICT`] naming what has the port.
    pub fn check(
        &self,
        ports: &[HostPort],
        identity: Option<&str>,
        ephemeral: Option<(u16, u16)>,
    ) -> Result<(), CniError> {
        let conflict = |p: &HostPort, what: String| {
            CniError::new(
                code::HOSTPORT_CONFLICT,
                format!("hostPort {} is taken: {what}", p.name()),
            )
        };
        for p in ports {
            if let Some(what) = self.ports.get(&(p.proto, p.host_port)) {
                return Err(conflict(p, what.clone()));
            }
            for (lo, hi, what) in &self.ranges {
                if (*lo..=*hi).contains(&p.host_port) {
                    return Err(conflict(p, what.clone()));
                }
            }
            if let Some((lo, hi)) = ephemeral {
                if (lo..=hi).contains(&p.host_port) {
                    return Err(conflict(
                        p,
                        format!("inside the node's ephemeral port range {lo}-{hi} (net.ipv4.ip_local_port_range): it would take the replies to the node's own connections"),
                    ));
                }
            }
            if let Some(b) = self
                .bindings
                .iter()
                .find(|b| b.port.overlaps(p) && Some(b.pod.as_str()) != identity)
            {
                return Err(conflict(
                    p,
                    format!(
                        "bound to pod {} ({}:{}, {})",
                        b.pod,
                        b.pod_ip,
                        b.port.container_port,
                        b.source.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The node's ephemeral port range (`net.ipv4.ip_local_port_range` of the agent's
/// namespace, the node's), if readable.
pub fn ephemeral_range() -> Option<(u16, u16)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}
