//! The agent itself: [`Agent`], the state it keeps and what it programs, and the steps every
//! event handler ends with: publishing the tables (through the reconciler), reading the
//! uplink's neighbours, asking the kernel to resolve a next hop, the periodic resync.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use ferroplane_agent::engine::Engine;
use ferroplane_agent::netlink::Plumber;
use ferroplane_agent::reconcile::{Changes, Reconciler};
use ferroplane_agent::state::NodeState;
use ferroplane_bpf::{AttachMode, Dataplane};
use tracing::warn;

use super::warm::Spare;

/// Name of the TUN device packets for the host are written to.
pub const PUNT_IF: &str = "fppunt0";

/// The running agent: the node's state and what programs it (netlink, the BPF maps, the
/// engine, the reconciler). Its methods are split by concern across `daemon::*`.
pub struct Agent {
    pub plumber: Plumber,
    pub bpf: Arc<Mutex<Dataplane>>,
    pub engine: Engine,
    pub state: NodeState,
    pub attach: AttachMode,
    /// The warm pool: spare veth pairs with their AF_XDP port open and XDP attached.
    pub spares: Vec<Spare>,
    /// Pods whose interface vanished or whose namespace is missing (shared with the API).
    pub gone: ferroplane_agent::vanish::GonePods,
    /// The flow-cache writer (ferroplane_agent::fastpath).
    pub fast: ferroplane_agent::fastpath::FastPath,
    /// Turns the state into the engine's tables, recomputing what changed.
    pub rec: Reconciler,
    /// The DPDK uplink (`node.uplinkDriver: dpdk`), closed after the engine at stop.
    pub dpdk: Option<super::dpdk::DpdkRun>,
}

impl Agent {
    pub fn bpf(&self) -> Result<std::sync::MutexGuard<'_, Dataplane>> {
        self.bpf
            .lock()
            .map_err(|_| anyhow::anyhow!("BPF state lock poisoned"))
    }

    /// The pods' MTU: the spec's, else the uplink's minus the overlay overhead.
    pub fn pod_mtu(&self) -> u32 {
        self.state.spec.node.pod_mtu_or(u32::from(
            self.state
                .uplink
                .mtu
                .saturating_sub(self.state.overlay.overhead()),
        ))
    }

    /// Publishes the tables for the current state; `changes` says what changed since the
    /// last publish (the reconciler recomputes only that).
    pub fn publish(&mut self, changes: Changes) -> Result<()> {
        let _timer = ferroplane_agent::metrics::ReconcileTimer::start("publish");
        let mut snap = self
            .rec
            .snapshot(&self.state, &changes)
            .context("building the tables")?;
        snap.flow_export = self.fast.exports();
        if let Some(i) = self.engine.punt_ifindex {
            ferroplane_agent::hostsvc::with_punt(&mut snap, i, PUNT_IF);
        }
        self.engine.shared.publish(snap);
        let mut bpf = self.bpf()?;
        ferroplane_agent::services::apply_steering(&self.state.services, &mut bpf)
            .context("steering services to the engine")?;
        Ok(())
    }

    /// The safety net: neighbours read again, and the tables rebuilt from scratch and
    /// compared with the reconciler's (published, with a warning, if they differ).
    pub async fn resync(&mut self) {
        if let Err(e) = self.refresh_neighbours().await {
            warn!("{e:#}");
        }
        match self.rec.drifted(&self.state) {
            Ok(false) => {}
            Ok(true) => {
                warn!("resync: the incremental tables differ from a full build; publishing the full build");
                if let Err(e) = self.publish(Changes::all()) {
                    warn!("{e:#}");
                }
            }
            Err(e) => warn!("resync: {e}"),
        }
    }

    /// Pull the kernel's neighbours on the uplink; republish if they changed.
    pub async fn refresh_neighbours(&mut self) -> Result<()> {
        let neigh = self
            .plumber
            .neighbours(self.state.uplink.ifindex)
            .await
            .context("reading neighbours")?;
        let map: BTreeMap<Ipv4Addr, [u8; 6]> = neigh.iter().map(|n| (n.ip, n.mac)).collect();
        if map != self.state.neighbours {
            self.state.neighbours = map;
            self.publish(Changes::neighbours())?;
        }
        Ok(())
    }

    pub async fn resolve(&self, ip: Ipv4Addr) {
        if let Err(e) = self
            .plumber
            .ensure_managed_neighbour(ip, self.state.uplink.ifindex)
            .await
        {
            warn!(%ip, "asking the kernel to resolve a next hop failed: {e}");
        }
    }
}
