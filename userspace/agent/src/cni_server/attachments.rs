//! CNI attachments as pods, and their persistence: an attachment's pod spec (keyed
//! `cni/<container id>/<ifname>`), what its IPAM record keeps (identity, hostPorts), and the
//! attachments plumbed again when the agent starts.

use std::net::Ipv4Addr;

use ferroplane_cni::netns::{check_pod_netns, host_namespaces, NetnsError};
use tracing::warn;

use super::CNI_POD_NAMESPACE;
use crate::config::PodSpec;
use crate::ipam::{Ipam, IpamError, Record};

/// The pod spec of a CNI attachment.
pub fn attachment_pod(container_id: &str, ifname: &str, netns: &str, ip: Ipv4Addr) -> PodSpec {
    PodSpec {
        name: format!("{container_id}/{ifname}"),
        namespace: CNI_POD_NAMESPACE.to_string(),
        netns: netns.to_string(),
        ip,
        interface: ifname.to_string(),
        labels: Default::default(),
        ports: Vec::new(),
    }
}

/// The pod spec of a reservation.
pub fn record_pod(r: &Record) -> PodSpec {
    attachment_pod(&r.container_id, &r.ifname, &r.netns, r.ip)
}

/// The Kubernetes identity (`namespace/name`, from `CNI_ARGS`) of a reservation, if both
/// parts are known.
pub fn record_identity(r: &Record) -> Option<String> {
    match (&r.pod_namespace, &r.pod_name) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
            Some(format!("{ns}/{name}"))
        }
        _ => None,
    }
}

/// The hostPorts a reservation records (entries that no longer parse are logged and
/// left out).
pub fn record_host_ports(r: &Record) -> Vec<crate::hostports::HostPort> {
    r.port_mappings
        .iter()
        .filter_map(|m| match crate::hostports::HostPort::from_mapping(m) {
            Ok(hp) => Some(hp),
            Err(e) => {
                warn!(container = %r.container_id, "hostPort not restored: {}", e.msg);
                None
            }
        })
        .collect()
}

/// A CNI attachment to plumb again at start: its pod, identity and hostPorts.
pub type Restore = (PodSpec, Option<String>, Vec<crate::hostports::HostPort>);

/// Pods to plumb again when the agent starts: reservations whose network namespace still
/// exists, is a network namespace and is not the node's own (the others wait for DEL or
/// GC), with their [`record_identity`] and [`record_host_ports`].
pub fn pods_to_restore(ipam: &Ipam) -> Result<Vec<Restore>, IpamError> {
    let host = host_namespaces();
    Ok(ipam
        .records()?
        .iter()
        .filter(|r| !r.container_id.is_empty() && !r.netns.is_empty())
        .filter(|r| match check_pod_netns(&r.netns, &host) {
            Ok(_) => true,
            Err(e @ NetnsError::Missing { .. }) => {
                tracing::debug!(container = %r.container_id, "not restored: {e}");
                false
            }
            Err(e) => {
                warn!(container = %r.container_id, "not restored: {e}");
                false
            }
        })
        .map(|r| (record_pod(r), record_identity(r), record_host_ports(r)))
        .collect())
}
