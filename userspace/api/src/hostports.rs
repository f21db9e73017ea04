//! Data of `show_hostports`.

use serde::{Deserialize, Serialize};

/// One hostPort (answer of `show_hostports` is a list of these): a port of the node
/// translated to one pod, from the runtime's CNI `portMappings` or the pod's spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPortInfo {
    /// The pod (`namespace/name`, or the CNI attachment `cni/<container id>/<ifname>`).
    pub pod: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The node address it is bound to; empty for the node's address(es).
    #[serde(default)]
    pub host_ip: String,
    /// Port on the node.
    pub host_port: u16,
    /// The pod's address.
    pub pod_ip: String,
    /// Port in the pod.
    pub container_port: u16,
    /// `cni`, `kubernetes` or `cni+kubernetes`.
    pub source: String,
    /// Whether the engine serves it (false: another owner has the port, see `reason`).
    pub served: bool,
    /// Why it is not served (empty when served).
    #[serde(default)]
    pub reason: String,
}
