//! Tables in force, published by the control plane.

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ferroplane_tables::Fib;

use crate::interfaces::Interfaces;

/// Everything a worker reads while processing a vector.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Version (increments with every publish).
    pub version: u64,
    /// The FIB.
    pub fib: Arc<Fib>,
    /// The interfaces.
    pub ifaces: Arc<Interfaces>,
    /// The node's primary address (source of ICMP errors when the receiving interface has none).
    pub node_ip: Option<Ipv4Addr>,
    /// This node's pod CIDRs: a packet from the uplink with a source inside them is
    /// spoofed (`ip4-input` drops it as `spoofed-source`).
    pub pod_cidrs: Vec<ferroplane_tables::Ipv4Prefix>,
    /// Overlay tunnels (IPIP, VXLAN, WireGuard) to remote nodes.
    pub tunnels: Arc<crate::tunnel::TunnelTable>,
    /// Services (VIPs, NodePorts, backends, Maglev tables).
    pub services: Arc<ferroplane_tables::ServiceTable>,
    /// NAT settings (masquerade, SNAT ports, session table bounds).
    pub nat: Arc<ferroplane_tables::NatConfig>,
    /// NetworkPolicy: compiled per-pod ACLs (empty: no pod isolated).
    pub policy: Arc<ferroplane_tables::policy::PolicyTables>,
    /// Report forwarded flows for the XDP flow cache ([`crate::flow_export`]).
    pub flow_export: bool,
}

/// The published snapshot, shared by the control plane and the workers.
#[derive(Debug, Default)]
pub struct Shared {
    current: ArcSwap<Snapshot>,
}

impl Shared {
    /// Start with `snap`.
    pub fn new(snap: Snapshot) -> Self {
        Shared {
            current: ArcSwap::from_pointee(snap),
        }
    }

    /// The snapshot in force.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publish a new snapshot (its version is set to the previous one + 1).
    pub fn publish(&self, mut snap: Snapshot) {
        snap.version = self.current.load().version + 1;
        self.current.store(Arc::new(snap));
    }

    /// Change the current snapshot with `f` and publish the result.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut s = (**self.current.load()).clone();
        f(&mut s);
        self.publish(s);
    }
}
