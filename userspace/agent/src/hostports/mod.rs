//! hostPorts without netfilter: the CNI `portMappings` capability (and, in Kubernetes
//! mode, `Pod.spec.containers[].ports[].hostPort`) served by the engine.
//!
//! A hostPort is a NodePort bound to one pod: it joins the service table as a service port
//! whose node port is the hostPort and whose one backend is the pod's address and
//! container port ([`defs`]), so `xdp_uplink` steers it into the engine through `ports4`
//! like any NodePort, `ip4-nat` translates it (DNAT to the pod, replies reversed) and the
//! client's address is kept (the backend is local: no SNAT). Whatever steers NodePorts
//! (pods through `xdp_pod`, the node's own traffic) steers hostPorts too.
//!
//! Where they come from and how long they live:
//! - CNI ADD with `runtimeConfig.portMappings`: checked against what is taken on the node
//!   ([`Reserved::check`]: service node ports, health-check node ports, the agent's own
//!   listeners, the tunnel ports, the SNAT range, the node's ephemeral port range, the
//!   hostPorts the watchers bound) and against the other attachments (under the IPAM lock,
//!   [`crate::ipam::Ipam::reserve_unsynced`]) before anything is allocated; refused with
//!   [`ferroplane_cni::code::HOSTPORT_CONFLICT`]. Kept in the attachment's IPAM record
//!   (crash-safe like the address), restored from it after a restart, released with it on
//!   DEL and GC.
//! - Kubernetes mode: the hostPorts of this node's pods ([`from_pods`]), for runtimes that
//!   pass no `portMappings`. A binding both sources give once counts once
//!   ([`merge`]); the runtime's wins a disagreement.
//!
//! A later Service whose node port takes a bound hostPort wins it (node ports are the
//! cluster's, a hostPort is one pod's): the hostPort is shown as shadowed
//! (`ferroctl show hostports`) and counted, and comes back when the Service goes.

use std::net::Ipv4Addr;

use ferroplane_cni::{code, CniError, PortMapping};
use ferroplane_tables::service::{proto_name, PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Serialize};

mod bindings;
mod defs;
mod reserved;
mod table;
#[cfg(test)]
mod tests;

pub use bindings::{from_pods, from_request, merge};
pub use defs::defs;
pub use reserved::{ephemeral_range, Reserved};
pub use table::{report, report_of, HostPortTable};

/// Prefix of the service name of a hostPort's service port (`hostport:<pod>`).
pub const SERVICE_PREFIX: &str = "hostport:";

/// One hostPort of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostPort {
    /// IP protocol ([`PROTO_TCP`] or [`PROTO_UDP`]).
    pub proto: u8,
    /// Port on the node.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// The node address it is bound to; `None`: every address the engine serves node
    /// ports on.
    pub host_ip: Option<Ipv4Addr>,
}

impl HostPort {
    /// From a mapping the plugin validated (`tcp`/`udp`, ports 1-65535, `hostIP` empty or
    /// IPv4); anything else is an invalid configuration (code 7).
    pub fn from_mapping(m: &PortMapping) -> Result<HostPort, CniError> {
        let bad = |msg: String| {
            CniError::new(
                code::INVALID_NETWORK_CONFIG,
                format!("runtimeConfig.portMappings: {msg}"),
            )
        };
        let proto = match m.protocol.to_ascii_lowercase().as_str() {
            "tcp" | "" => PROTO_TCP,
            "udp" => PROTO_UDP,
            p => return Err(bad(format!("protocol {p:?} is not tcp or udp"))),
        };
        if m.host_port == 0 || m.container_port == 0 {
            return Err(bad(format!(
                "hostPort {} / containerPort {}: ports must be 1-65535",
                m.host_port, m.container_port
            )));
        }
        let host_ip = match m.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            a => Some(
                a.parse::<Ipv4Addr>()
                    .map_err(|_| bad(format!("hostIP {a:?} is not an IPv4 address")))?,
            ),
        };
        Ok(HostPort {
            proto,
            host_port: m.host_port,
            container_port: m.container_port,
            host_ip,
        })
    }

    /// The mapping as an IPAM record keeps it (`tcp`/`udp`, `hostIP` empty for every
    /// address).
    pub fn to_mapping(&self) -> PortMapping {
        PortMapping {
            host_port: self.host_port,
            container_port: self.container_port,
            protocol: proto_name(self.proto),
            host_ip: self.host_ip.map(|a| a.to_string()).unwrap_or_default(),
        }
    }

    /// `8080/tcp`, or `192.168.100.2:8080/tcp` with an address.
    pub fn name(&self) -> String {
        match self.host_ip {
            Some(a) => format!("{a}:{}/{}", self.host_port, proto_name(self.proto)),
            None => format!("{}/{}", self.host_port, proto_name(self.proto)),
        }
    }

    /// Whether two hostPorts claim the same node port (same protocol and port, and the
    /// same address or either on every address).
    pub fn overlaps(&self, other: &HostPort) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

/// `8080/tcp` (or `ADDRESS:8080/tcp`) of a mapping.
pub fn mapping_name(m: &PortMapping) -> String {
    if m.host_ip.is_empty() {
        format!("{}/{}", m.host_port, m.protocol)
    } else {
        format!("{}:{}/{}", m.host_ip, m.host_port, m.protocol)
    }
}

/// Where a binding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The runtime's `portMappings` (CNI ADD).
    Cni,
    /// The pod's spec (Kubernetes watchers).
    Kubernetes,
    /// Both, agreeing.
    Both,
}

impl Source {
    /// `cni`, `kubernetes` or `cni+kubernetes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cni => "cni",
            Source::Kubernetes => "kubernetes",
            Source::Both => "cni+kubernetes",
        }
    }
}

/// A hostPort bound to a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Binding {
    /// The pod (`namespace/name`, or the attachment's key `cni/<container>/<ifname>`).
    pub pod: String,
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// The port.
    pub port: HostPort,
    /// Where it comes from.
    pub source: Source,
}

/// A binding that is not served, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    /// The binding.
    pub binding: Binding,
    /// Why (the service node port or binding that has the port).
    pub reason: String,
}
