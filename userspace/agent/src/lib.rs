//! ferroplane node agent library: configuration, pod plumbing, the engine
//! thread, the tables computed from the node's state, and the local API.
#![deny(missing_docs)]

pub mod api;
pub mod bgp;
pub mod cluster;
pub mod cni_server;
pub mod config;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod engine;
pub mod fastpath;
pub mod health;
pub mod hostports;
pub mod hostsvc;
pub mod ipam;
pub mod k8s;
pub mod listen;
pub mod metrics;
pub mod netlink;
pub mod observe;
pub mod overlay;
pub mod policy;
pub mod reconcile;
pub mod services;
pub mod spec;
pub mod state;
pub mod timing;
pub mod vanish;
pub mod watch;
pub mod watchdog;
