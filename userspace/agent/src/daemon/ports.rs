//! Plugging an interface into the dataplane: its AF_XDP socket(s) opened on the engine, the
//! XSKMAP and `ifaces` map entries, the XDP program attached.

use anyhow::{bail, Context, Result};
use ferroplane_agent::timing::Phases;
use ferroplane_bpf::{FpIface, XdpProg};
use tracing::info;

use super::agent::Agent;

impl Agent {
    /// Open the AF_XDP socket, program the maps, attach XDP, recording its phases. Returns
    /// (port, mode).
    pub fn plug_timed(
        &self,
        ifname: &str,
        ifindex: u32,
        prog: XdpProg,
        phases: &mut Phases,
    ) -> Result<(u16, String)> {
        phases.skip();
        let (port, fd) = self
            .engine
            .add_port(ifname)
            .with_context(|| format!("opening AF_XDP socket on {ifname}"))?;
        phases.mark("af_xdp");
        self.plug_ports(ifname, ifindex, prog, &[(port, fd)], phases)
    }

    /// [`Agent::plug_timed`] for an interface with `queues` RX queues: one AF_XDP socket per queue,
    /// their ports consecutive (queue q is XSKMAP slot `first + q`, as the programs steer).
    pub fn plug_queues(
        &self,
        ifname: &str,
        ifindex: u32,
        prog: XdpProg,
        queues: u32,
    ) -> Result<(u16, String)> {
        let ports = self
            .engine
            .add_ports(ifname, queues)
            .with_context(|| format!("opening {queues} AF_XDP sockets on {ifname}"))?;
        self.plug_ports(ifname, ifindex, prog, &ports, &mut Phases::new())
    }

    /// Programs the maps for `ports` (consecutive, one per RX queue from 0) and attaches XDP.
    pub fn plug_ports(
        &self,
        ifname: &str,
        ifindex: u32,
        prog: XdpProg,
        ports: &[(u16, std::os::fd::RawFd)],
        phases: &mut Phases,
    ) -> Result<(u16, String)> {
        let Some(&(port, _)) = ports.first() else {
            bail!("no AF_XDP socket on {ifname}");
        };
        let slot = port as u32;
        let mut bpf = self.bpf()?;
        for &(p, fd) in ports {
            bpf.set_xsk(u32::from(p), fd)
                .with_context(|| format!("XSKMAP slot {p} for {ifname}"))?;
        }
        let queues = ports.len() as u32;
        let entry = match prog {
            XdpProg::Uplink => FpIface::uplink(slot),
            XdpProg::Pod => FpIface::pod(slot),
        }
        .with_queues(queues);
        bpf.set_iface(ifindex, entry)
            .with_context(|| format!("ifaces map entry for {ifname}"))?;
        phases.mark("bpf_maps");
        let mode = bpf
            .attach(prog, ifname, self.attach)
            .with_context(|| format!("attaching {prog} to {ifname}"))?;
        phases.mark("xdp_attach");
        info!(iface = ifname, port, queues, mode = %mode, "XDP attached, AF_XDP sockets open");
        Ok((port, mode.name().to_string()))
    }
}

/// RX queues of `ifname` the kernel delivers on (`/sys/class/net/IF/queues/rx-N`, the
/// device's real_num_rx_queues: an AF_XDP socket binds to each); 1 if unreadable.
pub fn rx_queues(ifname: &str) -> u32 {
    let n = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(0);
    u32::try_from(n).unwrap_or(1).clamp(1, u32::from(u16::MAX))
}
