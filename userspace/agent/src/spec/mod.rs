//! The node spec: the one parsed, validated and defaulted description of what the agent
//! serves, whichever source it comes from (the standalone YAML file, or the Kubernetes
//! watchers, which build the same [`NodeSpec`]). The subsystems (services, policy, BGP,
//! overlay, IPAM, CNI) read it; it depends on none of them.
//!
//! - [`node`]: the node, its pods and routes; YAML parsing; validation driver.
//! - [`services`]: Services, EndpointSlices, `serviceProxy:`; their API defaults,
//!   validation and captures.
//! - [`policy`]: namespaces, container ports, NetworkPolicies; defaults and validation.
//! - [`cluster`]: the other nodes and the overlay (`cluster:`).
//! - [`bgp`]: the BGP speaker (`bgp:`).
//! - [`uplink`]: the uplink's driver (`node.uplinkDriver`, `node.dpdk`).
//!
//! The standalone file (standalone mode):
//!
//! ```yaml
//! node:
//!   name: node-1
//!   uplink: up0
//!   address: 192.168.100.2/24
//!   gateway: 192.168.100.1       # optional
//!   podCIDR: 10.244.1.0/24
//!   podMTU: 1500                 # optional, default = uplink MTU
//!   xdpMode: auto                # auto | native | skb (optional, default auto)
//! pods:
//!   - name: a
//!     namespace: default         # optional, default "default"
//!     netns: fp-1234-pod-a       # name under /var/run/netns, or an absolute path
//!     ip: 10.244.1.10
//!     interface: eth0            # optional, default eth0
//! routes:                        # optional
//!   - prefix: 10.0.0.0/8
//!     via: 192.168.100.1
//! ```
//!
//! Every error names the offending field with its path, e.g.
//! `pods[1].ip: 10.9.0.1 is outside node.podCIDR 10.244.1.0/24`.

pub mod bgp;
mod cidr;
pub mod cluster;
mod error;
pub mod node;
pub mod policy;
pub mod services;
#[cfg(test)]
mod tests;
pub mod uplink;
mod yaml;

pub use cidr::*;
pub use error::*;
pub use node::*;
pub use yaml::from_yaml_str;
