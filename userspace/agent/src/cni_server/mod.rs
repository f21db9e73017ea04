//! The agent's CNI socket: what `ferroplane-cni` forwards ADD/DEL/CHECK/STATUS/GC to.
//!
//! The server owns IPAM ([`crate::ipam`]) and hands the plumbing to the agent's main loop as
//! [`PodOp`]s, which calls the same pod add/remove code the standalone YAML spec uses. A CNI
//! attachment becomes a pod spec keyed `cni/<container id>/<ifname>`
//! ([`attachment_pod`]), so its host veth name is stable and derived from the container id
//! and interface name alone (DEL needs nothing else to find it).
//!
//! Protocol: one JSON [`AgentRequest`](ferroplane_cni::AgentRequest) line, one JSON
//! [`AgentResponse`](ferroplane_cni::AgentResponse) line (see [`ferroplane_cni::proto`]).
//! The socket is mode 0600 (root only).

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::PodSpec;
use crate::ipam::Ipam;

mod add;
mod attachments;
mod check;
mod del;
mod handle;
mod server;
#[cfg(test)]
mod tests;

pub use attachments::{
    attachment_pod, pods_to_restore, record_host_ports, record_identity, record_pod, Restore,
};
pub use handle::{check_request_netns, handle};
pub use server::{CniServer, CniServerError};

/// Kubernetes-namespace part of the pod key of CNI attachments.
pub const CNI_POD_NAMESPACE: &str = "cni";

/// What the agent reports back about a plumbed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlumbedPod {
    /// Host-side veth name.
    pub host_ifname: String,
    /// Host-side veth MAC.
    pub host_mac: [u8; 6],
    /// Pod-side MAC.
    pub pod_mac: [u8; 6],
    /// Pod address.
    pub ip: Ipv4Addr,
    /// MTU.
    pub mtu: u16,
    /// Where the plumbing time went (empty when nothing was plumbed).
    pub phases: crate::timing::Phases,
}

/// Work for the agent's main loop (it owns the engine, the BPF maps and the node state).
#[derive(Debug)]
pub enum PodOp {
    /// Plumb a pod (idempotent) and report it.
    Add {
        /// The pod.
        pod: PodSpec,
        /// `namespace/name` of its Kubernetes pod (`CNI_ARGS`), if known.
        identity: Option<String>,
        /// Its hostPorts (checked and reserved with its address).
        host_ports: Vec<crate::hostports::HostPort>,
        /// The answer.
        reply: oneshot::Sender<Result<PlumbedPod, String>>,
    },
    /// Tear a pod down (veth, engine port, XDP, tables); `Ok(true)` if anything was there.
    Del {
        /// The pod (only its key, hence its veth name, matters).
        pod: PodSpec,
        /// The answer.
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// Report a plumbed pod by key.
    Get {
        /// `namespace/name`.
        key: String,
        /// The answer.
        reply: oneshot::Sender<Option<PlumbedPod>>,
    },
    /// Keys of every plumbed pod.
    Keys {
        /// The answer.
        reply: oneshot::Sender<Vec<String>>,
    },
}

/// Everything a request handler needs.
#[derive(Debug, Clone)]
pub struct CniContext {
    /// The node's pool.
    pub ipam: Arc<Ipam>,
    /// The agent's main loop.
    pub ops: mpsc::Sender<PodOp>,
    /// The service tables in force: what a hostPort may not take
    /// ([`crate::hostports::Reserved`]).
    pub services: crate::services::ServiceCacheHandle,
}
