//! The warm pool (`--warm-pods`): spare veth pairs with their AF_XDP port open and XDP
//! attached, made ahead of the CNI ADD that adopts one, and undone at the stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferroplane_agent::config::PodSpec;
use ferroplane_agent::engine::PortOpener;
use ferroplane_agent::netlink::{Plumber, SpareLink, POD_GATEWAY};
use ferroplane_bpf::{AttachMode, Dataplane, FpIface, XdpProg};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::agent::Agent;

/// The warm pool's refilling (CNI only): one spare in the making at a time, in its own
/// task, so the event loop keeps serving while the kernel sets the AF_XDP socket up.
pub struct WarmPool {
    /// Spares to keep ready (`--warm-pods`).
    target: usize,
    tx: mpsc::Sender<Result<Spare>>,
    /// Spares made (or why not), from the task making one.
    pub made: mpsc::Receiver<Result<Spare>>,
    pending: bool,
    seq: u32,
    /// When to try again after a failure.
    pub retry: Instant,
}

impl WarmPool {
    /// A pool that keeps `target` spares ready (0: none).
    pub fn new(target: usize) -> WarmPool {
        let (tx, made) = mpsc::channel::<Result<Spare>>(1);
        WarmPool {
            target,
            tx,
            made,
            pending: false,
            seq: 0,
            retry: Instant::now(),
        }
    }

    /// Whether the pool wants another spare: none in the making, fewer than the target.
    pub fn wants(&self, agent: &Agent) -> bool {
        !self.pending && agent.spares.len() < self.target
    }

    /// Starts making a spare if the pool wants one and its retry time has come.
    pub fn refill(&mut self, agent: &Agent) {
        if self.wants(agent) && Instant::now() >= self.retry {
            self.pending = true;
            self.seq = self.seq.wrapping_add(1);
            let task = make_spare(
                agent.plumber.clone(),
                agent.engine.port_opener(),
                agent.bpf.clone(),
                agent.attach,
                self.seq,
                agent.pod_mtu(),
            );
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(task.await).await;
            });
        }
    }

    /// A spare made (into the pool) or not (retried in 5 s).
    pub fn take(&mut self, agent: &mut Agent, made: Result<Spare>) {
        self.pending = false;
        match made {
            Ok(spare) => agent.spares.push(spare),
            Err(e) => {
                warn!("warm pool: {e:#}; retrying in 5 s");
                self.retry = Instant::now() + Duration::from_secs(5);
            }
        }
    }
}

/// A spare veth pair of the warm pool, ready to become a pod's (see
/// [`Plumber::adopt_spare`]): opening an AF_XDP socket on a shared UMEM costs the kernel
/// time proportional to the UMEM's size, so it is done before the CNI ADD that needs it.
#[derive(Debug)]
pub struct Spare {
    pub link: SpareLink,
    pub port: u16,
    pub mode: String,
}

/// Creates one spare for the warm pool: veth pair, AF_XDP port (opened on the worker while
/// this task's caller keeps serving), `xsks`/`ifaces` entries, XDP attached. Undoes what it
/// did on error.
pub async fn make_spare(
    plumber: Plumber,
    opener: PortOpener,
    bpf: Arc<Mutex<Dataplane>>,
    attach: AttachMode,
    seq: u32,
    mtu: u32,
) -> Result<Spare> {
    let link = plumber
        .create_spare(seq, mtu)
        .await
        .context("creating a spare veth pair")?;
    let name = link.host_ifname.clone();
    let opened = {
        let opener = opener.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || opener.add_port(&name)).await
    };
    let (port, fd) = match opened {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let _ = plumber.delete_spare(&link).await;
            return Err(e).with_context(|| format!("opening an AF_XDP socket on {name}"));
        }
        Err(e) => {
            let _ = plumber.delete_spare(&link).await;
            bail!("AF_XDP socket task for {name}: {e}");
        }
    };
    let slot = u32::from(port);
    let plugged = (|| -> Result<String> {
        let mut bpf = bpf
            .lock()
            .map_err(|_| anyhow::anyhow!("BPF state lock poisoned"))?;
        bpf.set_xsk(slot, fd)
            .with_context(|| format!("XSKMAP slot {slot} for {name}"))?;
        bpf.set_iface(link.host_ifindex, FpIface::pod(slot))
            .with_context(|| format!("ifaces map entry for {name}"))?;
        let mode = bpf
            .attach(XdpProg::Pod, &name, attach)
            .with_context(|| format!("attaching {} to {name}", XdpProg::Pod))?;
        Ok(mode.name().to_string())
    })();
    match plugged {
        Ok(mode) => Ok(Spare { link, port, mode }),
        Err(e) => {
            if let Ok(mut bpf) = bpf.lock() {
                let _ = bpf.clear_xsk(slot);
                let _ = bpf.remove_iface(link.host_ifindex);
            }
            let _ = tokio::task::spawn_blocking(move || opener.remove_port(port)).await;
            let _ = plumber.delete_spare(&link).await;
            Err(e)
        }
    }
}

impl Agent {
    /// Undoes a spare: XDP, map entries, AF_XDP port, veth pair.
    pub async fn discard_spare(&mut self, spare: Spare) {
        if let Ok(mut bpf) = self.bpf() {
            let _ = bpf.clear_xsk(u32::from(spare.port));
            let _ = bpf.remove_iface(spare.link.host_ifindex);
            let _ = bpf.detach(&spare.link.host_ifname);
        }
        if let Err(e) = self.engine.remove_port(spare.port) {
            warn!(spare = %spare.link.host_ifname, "closing a spare's AF_XDP port: {e}");
        }
        if let Err(e) = self.plumber.delete_spare(&spare.link).await {
            warn!(spare = %spare.link.host_ifname, "deleting a spare veth pair: {e}");
        }
    }

    /// Plumbs `pod` with a spare of the warm pool if there is one and the pod has no veth
    /// yet (a restart's reuse goes through [`Plumber::create_pod`]). `None`: plumb cold.
    pub async fn adopt_spare(
        &mut self,
        pod: &PodSpec,
        mtu: u32,
    ) -> Result<Option<(ferroplane_agent::netlink::PodLink, u16, String)>> {
        if self.spares.is_empty() {
            return Ok(None);
        }
        let host_name = ferroplane_agent::netlink::host_ifname(&pod.namespace, &pod.name);
        if self.plumber.link_exists(&host_name).await? {
            return Ok(None);
        }
        let spare = self.spares.remove(0);
        match self
            .plumber
            .adopt_spare(&spare.link, pod, mtu, POD_GATEWAY)
            .await
        {
            Ok(link) => {
                self.bpf()?
                    .rename_attached(&spare.link.host_ifname, &link.host_ifname)
                    .context("renaming the XDP attachment")?;
                Ok(Some((link, spare.port, spare.mode)))
            }
            Err(e) => {
                warn!(pod = %pod.key(), spare = %spare.link.host_ifname, "adopting a spare veth failed, plumbing cold: {e}");
                self.discard_spare(spare).await;
                // The half-moved peer may hold the pod's interface name: remove it.
                let _ = self.plumber.delete_pod(pod).await;
                Ok(None)
            }
        }
    }
}
