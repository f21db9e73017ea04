//! Services in the standalone spec, in the shape of Kubernetes `Service` and
//! `EndpointSlice` objects (so the Kubernetes watcher maps them 1:1), their
//! validation, and what they become: the engine's service table and NAT
//! settings, the XDP steering entries, and the health-check node ports.
//!
//! ```yaml
//! serviceProxy:                      # optional
//!   clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]  # never masqueraded (default: node.podCIDR)
//!   masquerade: true                 # pod traffic leaving the cluster gets the node address
//!   masqueradeAddress: 192.168.100.2 # default node.address
//!   snatPorts: 61000-65535           # ports SNATed flows use on that address
//!   conntrackMax: 262144             # sessions per engine worker
//!   maglevTableSize: 65537           # largest Maglev table (a prime)
//!   serviceCIDRs: [10.96.0.0/12]     # ClusterIP ranges: no external/LB IP inside (optional)
//! services:
//!   - metadata: { name: web, namespace: default }
//!     spec:
//!       type: NodePort               # ClusterIP | NodePort | LoadBalancer
//!       clusterIP: 10.96.0.10
//!       ports:
//!         - { name: http, protocol: TCP, port: 80, targetPort: http, nodePort: 30080 }
//!       externalIPs: [203.0.113.5]
//!       sessionAffinity: ClientIP
//!       sessionAffinityConfig: { clientIP: { timeoutSeconds: 10800 } }
//!       externalTrafficPolicy: Local
//!       internalTrafficPolicy: Cluster
//!       healthCheckNodePort: 32000
//!     status: { loadBalancer: { ingress: [ { ip: 203.0.113.10 } ] } }
//! endpointSlices:
//!   - metadata: { name: web-abc, namespace: default, labels: { kubernetes.io/service-name: web } }
//!     addressType: IPv4
//!     ports: [ { name: http, protocol: TCP, port: 8080 } ]
//!     endpoints:
//!       - addresses: [10.244.1.10]
//!         conditions: { ready: true, serving: true, terminating: false }
//!         nodeName: node-1
//!         targetRef: { kind: Pod, namespace: default, name: a }
//! ```
//!
//! Captures are refused (the CVE-2020-8554 class): an `externalIPs` entry or a
//! LoadBalancer ingress IP that is a pod's address, inside a pod CIDR (this node's,
//! `cluster.nodes`', `serviceProxy.clusterCIDRs`), a cluster IP or inside
//! `serviceProxy.serviceCIDRs`, a node's address (this node's, its gateway, the masquerade
//! address, `cluster.nodes`', the uplink broadcast) or a special address (0.0.0.0/8,
//! loopback, link-local, multicast, 240.0.0.0/4, broadcast); a `healthCheckNodePort` below
//! 1024, equal to a node port or another health-check port, one of the agent's listener
//! ports, or inside `serviceProxy.snatPorts`. The standalone spec refuses them with an error
//! naming the field ([`validate_captures`]; a reload with one is refused and the old spec
//! stays); Kubernetes mode leaves just those entries out with a warning
//! ([`drop_refused`], [`ignored_entries`]).

mod cache;
mod captures;
mod defaults;
mod health;
mod reload;
mod report;
mod steering;
mod tables;
#[cfg(test)]
mod tests;
mod types;
mod validate;

pub use cache::*;
pub use captures::*;
pub use defaults::*;
pub use health::*;
pub use reload::*;
pub use report::*;
pub use steering::*;
pub use tables::*;
pub use types::*;
pub use validate::*;
