//! The DPDK uplink's part of the agent's life (`node.uplinkDriver: dpdk`; an agent built with
//! `--features dpdk`, `ferroplane_agent::dpdk`):
//! 1. [`open`] (instead of checking the kernel uplink): DPDK's EAL, pool, the device and the
//!    exception TAP; the node's addresses and routes move to the TAP, which becomes the
//!    agent's uplink for neighbours (the kernel resolves next hops through it);
//! 2. [`plug`] (instead of the AF_XDP uplink sockets): the DPDK ports join engine worker 0's
//!    backend at port ids reserved for them, and the steering maps are copied for the
//!    exception path;
//! 3. [`stop`] (after the engine stopped): the addresses go back, the device and the TAP
//!    close, and every mbuf must be back in the pool (logged).

use ferroplane_agent::config::NodeSpec;

use super::agent::Agent;

#[cfg(feature = "dpdk")]
pub use imp::*;

#[cfg(not(feature = "dpdk"))]
pub use without::*;

#[cfg(feature = "dpdk")]
mod imp {
    use anyhow::{bail, Context, Result};
    use ferroplane_agent::config::NodeSpec;
    use ferroplane_agent::dpdk::host::{self, Moved, TakeOver};
    use ferroplane_agent::dpdk::steering::SteerSync;
    use ferroplane_agent::dpdk::{DpdkUplink, HOST_IF};
    use ferroplane_agent::netlink::{LinkInfo, Plumber};
    use tracing::{info, warn};

    use super::Agent;

    /// The open DPDK uplink and what it moved.
    pub struct DpdkRun {
        uplink: DpdkUplink,
        moved: Moved,
        uplink_name: String,
        sync: Option<SteerSync>,
    }

    /// Opens the device and the TAP and moves the node's configuration onto the TAP;
    /// returns the TAP (the agent's uplink from now on) and the run.
    pub async fn open(plumber: &Plumber, spec: &NodeSpec) -> Result<(LinkInfo, DpdkRun)> {
        let Some(d) = spec.node.dpdk.as_ref() else {
            bail!("node.uplinkDriver: dpdk needs node.dpdk");
        };
        let uplink = DpdkUplink::open(d).with_context(|| {
            format!(
                "node.dpdk.device {:?}: cannot open the DPDK device (a PCI NIC must be bound \
                 to vfio-pci and hugepages reserved; a vdev needs its kernel interface)",
                d.device
            )
        })?;
        let kernel = plumber.link_info(&spec.node.uplink).await.ok();
        let tap = plumber
            .link_info(HOST_IF)
            .await
            .with_context(|| format!("the exception TAP {HOST_IF}"))?;
        let isolate = uplink.kernel_iface() == Some(spec.node.uplink.as_str());
        let moved = host::take_over(
            plumber.handle(),
            TakeOver {
                uplink: kernel.as_ref().map(|k| k.ifindex),
                uplink_name: &spec.node.uplink,
                isolate,
                tap: HOST_IF,
                tap_ifindex: tap.ifindex,
                mac: uplink.mac(),
                address: (spec.node.address.addr(), spec.node.address.prefix_len()),
            },
        )
        .await
        .context("moving the node's addresses and routes to the exception TAP")?;
        let tap = plumber.link_info(HOST_IF).await?;
        if !tap.ipv4.iter().any(|(a, _)| *a == spec.node.address.addr()) {
            bail!(
                "node.address {} is not on {HOST_IF} after the take-over (it has {:?})",
                spec.node.address,
                tap.ipv4
            );
        }
        info!(
            device = %d.device,
            tap = HOST_IF,
            addresses = ?moved.addrs,
            routes = moved.routes.len(),
            "DPDK uplink open; the node's addresses and routes moved to the exception TAP"
        );
        Ok((
            tap,
            DpdkRun {
                uplink,
                moved,
                uplink_name: spec.node.uplink.clone(),
                sync: None,
            },
        ))
    }

    /// Puts the DPDK ports (uplink, TAP) into engine worker 0 at reserved port ids, starts
    /// the steering copy and records the uplink's port.
    pub async fn plug(agent: &mut Agent, run: &mut DpdkRun) -> Result<()> {
        if agent.engine.port_opener().workers() != 1 {
            bail!("node.uplinkDriver: dpdk runs one engine worker for now: use --workers 1");
        }
        let (io, exception) = run.uplink.backend()?;
        let opener = agent.engine.port_opener();
        let first = opener.reserve_ports(2, 0)?;
        opener.exec_backend(0, move |b| b.attach_uplink(io, first, Some(exception)))??;
        run.sync = Some(SteerSync::start(
            agent.bpf.clone(),
            run.uplink.steering().clone(),
        )?);
        agent.state.uplink.port = Some(first);
        agent.state.uplink.queues = 1;
        agent.state.uplink.xdp_mode = None;
        for hop in agent.state.uplink_next_hops() {
            agent.resolve(hop).await;
        }
        Ok(())
    }

    /// Gives the node's configuration back to the uplink's kernel interface, closes the
    /// device and the TAP (the engine's backend is gone: the engine stopped), and checks
    /// that every mbuf came back.
    pub async fn stop(plumber: &Plumber, run: DpdkRun) {
        let DpdkRun {
            uplink,
            moved,
            uplink_name,
            sync,
        } = run;
        drop(sync);
        host::give_back(plumber.handle(), &moved, &uplink_name).await;
        let pool = uplink.pool().clone();
        drop(uplink);
        let (free, total) = (pool.available(), pool.num_mbufs());
        if free == total {
            info!(
                mbufs = total,
                "DPDK uplink closed: every mbuf back in the pool"
            );
        } else {
            warn!(
                free,
                total, "DPDK uplink closed with mbufs missing from the pool"
            );
        }
    }
}

#[cfg(not(feature = "dpdk"))]
mod without {
    use anyhow::{bail, Result};
    use ferroplane_agent::config::NodeSpec;
    use ferroplane_agent::netlink::{LinkInfo, Plumber};

    use super::Agent;

    /// None exists: this agent has no DPDK support (the spec refuses `uplinkDriver: dpdk`).
    pub enum DpdkRun {}

    /// Refuses: built without the `dpdk` feature.
    pub async fn open(_: &Plumber, _: &NodeSpec) -> Result<(LinkInfo, DpdkRun)> {
        bail!("this agent was built without DPDK support (cargo feature `dpdk`)")
    }

    /// Unreachable without a [`DpdkRun`].
    pub async fn plug(_: &mut Agent, _: &mut DpdkRun) -> Result<()> {
        bail!("this agent was built without DPDK support (cargo feature `dpdk`)")
    }

    /// Unreachable without a [`DpdkRun`].
    pub async fn stop(_: &Plumber, run: DpdkRun) {
        match run {}
    }
}

/// Whether the spec drives the uplink with DPDK.
pub fn wanted(spec: &NodeSpec) -> bool {
    spec.node.uplink_driver == ferroplane_agent::spec::uplink::UplinkDriver::Dpdk
}
