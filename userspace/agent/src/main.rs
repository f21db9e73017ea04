//! `ferroplane-agent`: the node daemon (standalone mode: a YAML node spec).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use daemon::args::Args;
use ferroplane_agent::api::AgentView;
use ferroplane_agent::cni_server::{self, CniContext, CniServer, PlumbedPod, PodOp};
use ferroplane_agent::config::{NodeSpec, PodSpec, XdpMode};
use ferroplane_agent::engine::Engine;
use ferroplane_agent::engine::PortOpener;
use ferroplane_agent::health::{self, Health};
use ferroplane_agent::ipam::Ipam;
use ferroplane_agent::netlink::{Plumber, SpareLink, POD_GATEWAY};
use ferroplane_agent::reconcile::{Changes, Reconciler};
use ferroplane_agent::state::{NodeState, PodState, UplinkState};
use ferroplane_agent::timing::Phases;
use ferroplane_agent::watch::netlink::LinkEvent;
use ferroplane_api::ApiServer;
use ferroplane_bpf::{AttachMode, Dataplane, FpIface, FpSteerKind, XdpProg};
use ferroplane_io::{TunDevice, XskConfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

mod daemon;

/// Name of the TUN device packets for the host are written to.
const PUNT_IF: &str = "fppunt0";
/// Period of the housekeeping timer (engine misses, WireGuard timers, BGP convergence).
const HOUSEKEEPING: Duration = Duration::from_millis(200);
/// Period of the retry of spec pods whose namespace is missing.
const MISSING_RETRY: Duration = Duration::from_secs(5);
/// Period of the safety-net resync (tables rebuilt from scratch and compared).
const RESYNC: Duration = Duration::from_secs(60);

fn main() -> Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    // Descriptors for the listeners' connection limits (ferroplane_agent::listen) and more.
    match ferroplane_agent::listen::raise_nofile_limit() {
        Ok(n) => info!(nofile = n, "open file limit"),
        Err(e) => warn!("raising RLIMIT_NOFILE to its hard limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(args))
}

struct Agent {
    plumber: Plumber,
    bpf: Arc<Mutex<Dataplane>>,
    engine: Engine,
    state: NodeState,
    attach: AttachMode,
    /// The warm pool: spare veth pairs with their AF_XDP port open and XDP attached.
    spares: Vec<Spare>,
    /// Pods whose interface vanished or whose namespace is missing (shared with the API).
    gone: ferroplane_agent::vanish::GonePods,
    /// The flow-cache writer (ferroplane_agent::fastpath).
    fast: ferroplane_agent::fastpath::FastPath,
    /// Turns the state into the engine's tables, recomputing what changed.
    rec: Reconciler,
}

/// A spare veth pair of the warm pool, ready to become a pod's (see
/// [`Plumber::adopt_spare`]): opening an AF_XDP socket on a shared UMEM costs the kernel
/// time proportional to the UMEM's size, so it is done before the CNI ADD that needs it.
#[derive(Debug)]
struct Spare {
    link: SpareLink,
    port: u16,
    mode: String,
}

/// Creates one spare for the warm pool: veth pair, AF_XDP port (opened on the worker while
/// this task's caller keeps serving), `xsks`/`ifaces` entries, XDP attached. Undoes what it
/// did on error.
async fn make_spare(
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
    fn bpf(&self) -> Result<std::sync::MutexGuard<'_, Dataplane>> {
        self.bpf
            .lock()
            .map_err(|_| anyhow::anyhow!("BPF state lock poisoned"))
    }

    /// Open the AF_XDP socket, program the maps, attach XDP, recording its phases. Returns
    /// (port, mode).
    fn plug_timed(
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
    fn plug_queues(
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
    fn plug_ports(
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

    /// Rebuilds the overlay after `cluster.nodes` changed (a Node joined or left): routes
    /// and tunnels for the new set (the kept peers' tunnels untouched), steering for new
    /// decapsulation ports, next hops resolved. The caller publishes.
    async fn apply_cluster(
        &mut self,
        view: &std::sync::RwLock<Arc<ferroplane_agent::overlay::Overlay>>,
    ) -> Result<()> {
        let next = Arc::new(
            ferroplane_agent::overlay::Overlay::from_spec_after(
                &self.state.spec,
                self.state.spec.cluster.as_ref(),
                Some(&self.state.overlay),
            )
            .context("rebuilding the overlay (cluster nodes changed)")?,
        );
        {
            let mut bpf = self.bpf()?;
            let (ipip, vxlan, wg) = next.decap_ports();
            let steer = ipip
                .then_some((4u8, 0u16))
                .into_iter()
                .chain(vxlan.map(|p| (17, p)))
                .chain(wg.map(|p| (17, p)));
            for (proto, port) in steer {
                bpf.add_tunnel4(proto, port)
                    .with_context(|| format!("tunnel4: protocol {proto} port {port}"))?;
            }
        }
        info!(
            routes = next.routes().len(),
            "cluster nodes changed: overlay rebuilt"
        );
        self.state.overlay = next.clone();
        match view.write() {
            Ok(mut v) => *v = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        for hop in self.state.uplink_next_hops() {
            if !self.state.neighbours.contains_key(&hop) {
                self.resolve(hop).await;
            }
        }
        Ok(())
    }

    /// The pods' MTU: the spec's, else the uplink's minus the overlay overhead.
    fn pod_mtu(&self) -> u32 {
        self.state.spec.node.pod_mtu_or(u32::from(
            self.state
                .uplink
                .mtu
                .saturating_sub(self.state.overlay.overhead()),
        ))
    }

    /// Undoes a spare: XDP, map entries, AF_XDP port, veth pair.
    async fn discard_spare(&mut self, spare: Spare) {
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
    async fn adopt_spare(
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

    /// Plumbs and plugs a pod; returns where the time went.
    async fn add_pod(&mut self, pod: &PodSpec) -> Result<Phases> {
        let mtu = self.pod_mtu();
        let (link, port, mode, phases) = match self.adopt_spare(pod, mtu).await? {
            Some((link, port, mode)) => {
                let phases = link.phases.clone();
                (link, port, mode, phases)
            }
            None => {
                let link = self
                    .plumber
                    .create_pod(pod, mtu, POD_GATEWAY)
                    .await
                    .with_context(|| format!("plumbing pod {}", pod.key()))?;
                let mut phases = link.phases.clone();
                let (port, mode) = self.plug_timed(
                    &link.host_ifname,
                    link.host_ifindex,
                    XdpProg::Pod,
                    &mut phases,
                )?;
                (link, port, mode, phases)
            }
        };
        let sw_if = self.state.free_sw_if();
        self.state.pods.insert(
            pod.key(),
            PodState {
                key: pod.key(),
                ip: pod.ip,
                pod_mac: link.pod_mac,
                host_ifname: link.host_ifname.clone(),
                host_ifindex: link.host_ifindex,
                host_mac: link.host_mac,
                mtu: mtu as u16,
                sw_if,
                port: Some(port),
                xdp_mode: Some(mode),
                identity: None,
                host_ports: Vec::new(),
            },
        );
        info!(pod = %pod.key(), ip = %pod.ip, veth = %link.host_ifname, reused = link.reused, "pod plugged");
        ferroplane_agent::vanish::lock(&self.gone).remove(&pod.key());
        Ok(phases)
    }

    /// A spec pod whose network namespace does not exist: reported as missing (plumbed
    /// when the namespace appears, see [`Agent::retry_missing`]) instead of failing.
    fn missing_pod(&self, pod: &PodSpec) {
        warn!(pod = %pod.key(), netns = %pod.netns_path().display(), "pod network namespace missing: not plumbed (retried every 5 s)");
        ferroplane_agent::vanish::lock(&self.gone).insert(
            pod.key(),
            ferroplane_agent::vanish::GonePod {
                key: pod.key(),
                ip: pod.ip,
                host_ifname: ferroplane_agent::netlink::host_ifname(&pod.namespace, &pod.name),
                state: ferroplane_api::InterfaceState::Missing,
                since: std::time::SystemTime::now(),
                spec: Some(pod.clone()),
            },
        );
    }

    /// Plumbs the spec pods reported gone whose namespace exists (again).
    async fn retry_missing(&mut self) {
        let due: Vec<PodSpec> = ferroplane_agent::vanish::lock(&self.gone)
            .values()
            .filter_map(|g| g.spec.clone())
            .filter(|p| p.netns_path().exists())
            .collect();
        for pod in due {
            match self.add_pod(&pod).await {
                Ok(_) => {
                    info!(pod = %pod.key(), "pod network namespace appeared: pod plumbed");
                    if let Err(e) = self.publish(Changes::pods()) {
                        warn!("{e:#}");
                    }
                }
                Err(e) => warn!(pod = %pod.key(), "plumbing a pod whose namespace appeared: {e:#}"),
            }
        }
    }

    /// The kernel deleted link `ifindex`: if it was a pod's veth (its namespace was deleted
    /// without CNI DEL), the pod leaves the tables, its XDP and map entries go and its
    /// AF_XDP port is closed (its frames return to the pool); it is reported as vanished
    /// until CNI DEL or GC, which keep its address reserved until then.
    fn vanish(&mut self, ifindex: u32) {
        let Some(key) = self
            .state
            .pods
            .iter()
            .find(|(_, p)| p.host_ifindex == ifindex)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        let Some(p) = self.state.pods.remove(&key) else {
            return;
        };
        if let Err(e) = self.publish(Changes::pods()) {
            warn!(pod = %key, "{e:#}");
        }
        if let Ok(mut bpf) = self.bpf() {
            if let Some(port) = p.port {
                let _ = bpf.clear_xsk(u32::from(port));
            }
            let _ = bpf.remove_iface(p.host_ifindex);
            // The link is gone with its XDP program; this drops our record of it.
            let _ = bpf.detach(&p.host_ifname);
        }
        if let Some(port) = p.port {
            if let Err(e) = self.engine.close_port(port) {
                warn!(pod = %key, "closing the AF_XDP port of a vanished pod: {e}");
            }
        }
        warn!(pod = %key, ip = %p.ip, veth = %p.host_ifname, port = ?p.port, "pod interface vanished (its network namespace was deleted without CNI DEL): engine port closed, frames returned; the address stays reserved until CNI DEL or GC");
        let spec = self
            .state
            .spec
            .pods
            .iter()
            .find(|s| s.key() == key)
            .cloned();
        ferroplane_agent::vanish::lock(&self.gone).insert(
            key.clone(),
            ferroplane_agent::vanish::GonePod {
                key,
                ip: p.ip,
                host_ifname: p.host_ifname,
                state: ferroplane_api::InterfaceState::Vanished,
                since: std::time::SystemTime::now(),
                spec,
            },
        );
    }

    /// Tears a pod down (CNI DEL and GC): tables first, then XDP, then its AF_XDP port
    /// (closed by the engine while the veth pair is deleted), recording the phases.
    /// Returns whether anything was there.
    async fn remove_pod(&mut self, pod: &PodSpec, phases: &mut Phases) -> Result<bool> {
        let key = pod.key();
        let was_gone = ferroplane_agent::vanish::lock(&self.gone)
            .remove(&key)
            .is_some();
        let known = self.state.pods.remove(&key);
        if let Some(p) = &known {
            self.publish(Changes::pods())?;
            phases.mark("publish");
            {
                let mut bpf = self.bpf()?;
                if let Some(port) = p.port {
                    let _ = bpf.clear_xsk(u32::from(port));
                }
                let _ = bpf.remove_iface(p.host_ifindex);
                phases.mark("bpf_maps");
                if let Err(e) = bpf.detach(&p.host_ifname) {
                    warn!(pod = %key, "detaching XDP: {e}");
                }
                phases.mark("xdp_detach");
            }
            if let Some(port) = p.port {
                // The socket's close (an RCU grace period) overlaps the veth's deletion.
                self.engine
                    .close_port(port)
                    .with_context(|| format!("closing the AF_XDP port of {key}"))?;
                phases.mark("af_xdp");
            }
        }
        let deleted = self
            .plumber
            .delete_pod(pod)
            .await
            .with_context(|| format!("deleting the veth of {key}"))?;
        phases.mark("veth");
        if known.is_some() || deleted || was_gone {
            info!(pod = %key, "pod removed");
        }
        Ok(known.is_some() || deleted || was_gone)
    }

    /// Carries out a CNI server request (same add/remove path as the YAML spec's pods).
    async fn pod_op(&mut self, op: PodOp) {
        let plumbed = |s: &PodState| PlumbedPod {
            host_ifname: s.host_ifname.clone(),
            host_mac: s.host_mac,
            pod_mac: s.pod_mac,
            ip: s.ip,
            mtu: s.mtu,
            phases: Phases::default(),
        };
        match op {
            PodOp::Add {
                pod,
                identity,
                host_ports,
                reply,
            } => {
                // A repeated ADD of a plumbed attachment answers what is there.
                if let Some(p) = self.state.pods.get(&pod.key()).filter(|p| p.ip == pod.ip) {
                    let _ = reply.send(Ok(plumbed(p)));
                    return;
                }
                let added = self.add_pod(&pod).await.and_then(|mut phases| {
                    if let Some(p) = self.state.pods.get_mut(&pod.key()) {
                        p.identity = identity;
                        p.host_ports = host_ports;
                    }
                    phases.skip();
                    self.publish(Changes::pods())?;
                    phases.mark("publish");
                    Ok(phases)
                });
                let r = match added {
                    Ok(phases) => self
                        .state
                        .pods
                        .get(&pod.key())
                        .map(|p| PlumbedPod {
                            phases,
                            ..plumbed(p)
                        })
                        .ok_or_else(|| "pod vanished after plumbing".to_string()),
                    Err(e) => Err(format!("{e:#}")),
                };
                let _ = reply.send(r);
            }
            PodOp::Del { pod, reply } => {
                let mut phases = Phases::new();
                let r = self.remove_pod(&pod, &mut phases).await;
                info!(pod = %pod.key(), phases = %phases, "CNI DEL phases (ms)");
                let _ = reply.send(r.map_err(|e| format!("{e:#}")));
            }
            PodOp::Get { key, reply } => {
                let _ = reply.send(self.state.pods.get(&key).map(plumbed));
            }
            PodOp::Keys { reply } => {
                let _ = reply.send(self.state.pods.keys().cloned().collect());
            }
        }
    }

    /// Publishes the tables for the current state; `changes` says what changed since the
    /// last publish (the reconciler recomputes only that).
    fn publish(&mut self, changes: Changes) -> Result<()> {
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

    /// The kernel's link events: a deleted link may be a pod's veth
    /// ([`Agent::vanish`]); neighbour changes on the uplink are read again. Drains what
    /// else is queued first, so a burst of neighbour changes reads the table once.
    async fn link_events(
        &mut self,
        first: LinkEvent,
        more: &mut tokio::sync::mpsc::UnboundedReceiver<LinkEvent>,
    ) {
        let mut neighbours = false;
        let mut next = Some(first);
        while let Some(ev) = next {
            match ev {
                LinkEvent::Deleted(ifindex) => self.vanish(ifindex),
                LinkEvent::Neighbour(ifindex) => {
                    neighbours |= ifindex == self.state.uplink.ifindex;
                }
            }
            next = more.try_recv().ok();
        }
        if neighbours {
            if let Err(e) = self.refresh_neighbours().await {
                warn!("{e:#}");
            }
        }
    }

    /// A new version of the standalone spec file: its network policies and services are
    /// applied (the rest needs a restart).
    fn spec_file_changed(
        &mut self,
        update: ferroplane_agent::watch::spec::SpecUpdate,
        bgp: Option<&ferroplane_agent::bgp::BgpRuntime>,
    ) {
        let new = match update {
            Ok(new) => new,
            Err(e) => {
                warn!("spec file change rejected: {e}");
                return;
            }
        };
        if ferroplane_agent::policy::take_policies(&mut self.state.spec, &new) {
            info!("spec file changed: network policies re-applied");
            if let Err(e) = self.publish(Changes::policy()) {
                warn!("applying network policies: {e:#}");
            }
        }
        if ferroplane_agent::services::take_services(&mut self.state.spec, new) {
            info!("spec file changed: services re-applied");
            if let Err(e) = self.publish(Changes::services()) {
                warn!("applying services: {e:#}");
            }
            if bgp.is_some_and(|b| b.sync_originated(&self.state.spec)) {
                info!("BGP: originated prefixes follow the services");
            }
        }
    }

    /// The Kubernetes watchers' desired state changed: the spec, the pods network policy
    /// selects and their hostPorts follow it. Returns whether the cluster's nodes changed.
    async fn k8s_changed(
        &mut self,
        desired: &ferroplane_agent::k8s::DesiredState,
        overlay_view: &std::sync::RwLock<Arc<ferroplane_agent::overlay::Overlay>>,
        bgp: Option<&ferroplane_agent::bgp::BgpRuntime>,
    ) -> bool {
        let mut next = self.state.spec.clone();
        desired.apply_to(&mut next);
        let mut changes = Changes::default();
        // hostPorts of this node's pods (runtimes that pass no portMappings).
        if desired.host_ports != self.state.k8s_host_ports {
            self.state.k8s_host_ports = desired.host_ports.clone();
            changes.merge(Changes::services());
        }
        // Pods (policy peers, labels of CNI-plumbed pods) for the policy compiler.
        let k8s_pods = desired.policy_pods(&next.node.name);
        if k8s_pods != self.state.k8s_pods {
            self.state.k8s_pods = k8s_pods;
            changes.merge(Changes::policy());
        }
        let mut spec_changed = false;
        let mut cluster_changed = false;
        if next != self.state.spec {
            match next.validate() {
                Ok(()) => {
                    cluster_changed = next.cluster != self.state.spec.cluster;
                    changes.merge(Changes::between(&self.state.spec, &next));
                    self.state.spec = next;
                    spec_changed = true;
                    if cluster_changed {
                        if let Err(e) = self.apply_cluster(overlay_view).await {
                            warn!("{e:#}");
                        }
                    }
                }
                Err(e) => warn!("desired state from Kubernetes rejected: {e}"),
            }
        }
        if !changes.is_empty() {
            if let Err(e) = self.publish(changes) {
                warn!("applying the Kubernetes desired state: {e:#}");
            }
        }
        if spec_changed && bgp.is_some_and(|b| b.sync_originated(&self.state.spec)) {
            info!("BGP: originated prefixes follow the services");
        }
        info!(
            services = desired.services.len(),
            endpoint_slices = desired.endpoint_slices.len(),
            remote_nodes = desired.remote_nodes.len(),
            pods = desired.policy.pods().len(),
            policies = desired.policy.policy_count(),
            "Kubernetes desired state"
        );
        cluster_changed
    }

    /// BGP's forwarding changes: learnt routes into the FIB (only those prefixes), their
    /// next hops resolved. Kernel routes follow in the BGP runtime.
    async fn bgp_changes(&mut self, b: &mut ferroplane_agent::bgp::BgpRuntime) {
        let changes = b.poll().await;
        if changes.is_empty() {
            return;
        }
        let prefixes: Vec<_> = changes.iter().map(|(p, _)| *p).collect();
        let hops = ferroplane_agent::bgp::apply_changes(&mut self.state.bgp_routes, changes);
        for h in hops
            .iter()
            .filter(|h| !self.state.neighbours.contains_key(h))
        {
            self.resolve(*h).await;
        }
        if let Err(e) = self.publish(Changes::routes(prefixes)) {
            warn!("BGP routes: {e:#}");
        }
    }

    /// The safety net: neighbours read again, and the tables rebuilt from scratch and
    /// compared with the reconciler's (published, with a warning, if they differ).
    async fn resync(&mut self) {
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
    async fn refresh_neighbours(&mut self) -> Result<()> {
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

    async fn resolve(&self, ip: Ipv4Addr) {
        if let Err(e) = self
            .plumber
            .ensure_managed_neighbour(ip, self.state.uplink.ifindex)
            .await
        {
            warn!(%ip, "asking the kernel to resolve a next hop failed: {e}");
        }
    }
}

/// RX queues of `ifname` the kernel delivers on (`/sys/class/net/IF/queues/rx-N`, the
/// device's real_num_rx_queues: an AF_XDP socket binds to each); 1 if unreadable.
fn rx_queues(ifname: &str) -> u32 {
    let n = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(0);
    u32::try_from(n).unwrap_or(1).clamp(1, u32::from(u16::MAX))
}

async fn run(args: Args) -> Result<()> {
    // Standalone: the spec file is watched from before it is read, so no rewrite is missed.
    let (spec_tx, mut spec_updates) = tokio::sync::mpsc::channel(4);
    let _spec_watch = if args.k8s {
        None
    } else {
        Some(
            ferroplane_agent::watch::spec::watch(&args.config, None, spec_tx.clone())
                .with_context(|| format!("watching {}", args.config.display()))?,
        )
    };
    drop(spec_tx);
    // The default WireGuard key file lives under --state-dir.
    ferroplane_agent::cluster::set_state_dir(&args.state_dir);
    let (spec, kube) = if args.k8s {
        let plumber = Plumber::new().context("opening netlink")?;
        let b =
            ferroplane_agent::k8s::bootstrap(&args.config, args.kubeconfig.as_deref(), &plumber)
                .await
                .with_context(|| {
                    format!("Kubernetes mode (agent config {})", args.config.display())
                })?;
        info!(node = %b.node_name, pod_cidr = %b.spec.node.pod_cidr, uplink = %b.spec.node.uplink, "node spec from Kubernetes");
        (b.spec.clone(), Some(b))
    } else {
        let spec = NodeSpec::load(&args.config)
            .with_context(|| format!("reading node spec {}", args.config.display()))?;
        (spec, None)
    };
    let overlay = Arc::new(
        ferroplane_agent::overlay::Overlay::from_spec(&spec, spec.cluster.as_ref())
            .context("setting up the overlay (cluster:)")?,
    );
    let plumber = Plumber::new().context("opening netlink")?;
    let up = plumber
        .link_info(&spec.node.uplink)
        .await
        .with_context(|| format!("uplink {}", spec.node.uplink))?;
    if !up
        .ipv4
        .iter()
        .any(|(a, l)| *a == spec.node.address.addr && *l == spec.node.address.prefix_len)
    {
        bail!(
            "node.address: {} is not configured on uplink {} (it has {:?})",
            spec.node.address,
            up.name,
            up.ipv4
        );
    }
    let attach = match spec.node.xdp_mode {
        XdpMode::Auto => AttachMode::Auto,
        XdpMode::Native => AttachMode::Native,
        XdpMode::Skb => AttachMode::Skb,
    };

    let on_exit_keep = args.on_exit == "keep";
    if on_exit_keep && args.no_pin {
        bail!("--on-exit keep needs pinned maps and links: drop --no-pin");
    }
    let mut bpf = Dataplane::load((!args.no_pin).then_some(args.pin_dir.as_path()))
        .context("loading the XDP programs")?;
    if !bpf.replaced_maps().is_empty() {
        let maps = bpf.replaced_maps();
        info!(
            ?maps,
            "pinned maps of another layout (an older version) replaced"
        );
    }
    let stale = bpf.release_stale_links();
    if stale > 0 {
        info!(
            released = stale,
            "kept XDP links of interfaces gone since the last run released"
        );
    }
    // Pinned links from the start, whatever --on-exit says: an agent that dies (SIGKILL, OOM,
    // panic) must leave the programs attached, or the kernel would take pod traffic with no
    // policy (it forwards with ip_forward=1). Only a clean `--on-exit detach` stop removes them.
    let keep = !args.no_pin;
    if keep {
        bpf.keep_attached()
            .context("pinning the XDP links (programs stay attached if the agent dies)")?;
    }
    let bpf = Arc::new(Mutex::new(bpf));

    // Packets the engine hands to the host arrive on this TUN.
    let tun = TunDevice::create(PUNT_IF).context("creating the punt TUN device")?;
    let punt = plumber.link_info(PUNT_IF).await.context("punt TUN")?;
    plumber
        .handle()
        .link()
        .set(
            rtnetlink::LinkUnspec::new_with_index(punt.ifindex)
                .up()
                .build(),
        )
        .execute()
        .await
        .context("setting the punt TUN up")?;
    // Replies go out through the pod veths: loose reverse-path filtering on the TUN.
    let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{PUNT_IF}/rp_filter"), "2");

    let mut engine = Engine::start(
        XskConfig {
            num_frames: args.frames,
            idle_fill: args.idle_fill,
            max_ports: args.max_ports,
            ..XskConfig::default()
        },
        Some(tun),
        args.worker_priority,
    )
    .context("starting the engine")?;
    engine.punt_ifindex = Some(punt.ifindex);
    let fast = ferroplane_agent::fastpath::FastPath::start(
        bpf.clone(),
        &mut engine,
        args.fast_path == "on",
        keep,
    );

    let mut agent = Agent {
        plumber,
        bpf,
        engine,
        state: NodeState {
            spec: spec.clone(),
            uplink: UplinkState {
                name: up.name.clone(),
                ifindex: up.ifindex,
                mac: up.mac,
                mtu: up.mtu.min(u16::MAX as u32) as u16,
                port: None,
                queues: 1,
                xdp_mode: None,
            },
            pods: BTreeMap::new(),
            neighbours: BTreeMap::new(),
            overlay: overlay.clone(),
            bgp_routes: BTreeMap::new(),
            services: Default::default(),
            k8s_pods: Vec::new(),
            k8s_host_ports: Vec::new(),
        },
        attach,
        spares: Vec::new(),
        gone: Default::default(),
        fast,
        rec: Reconciler::new(),
    };
    // hostPorts may not take the agent's own listeners (hostports::Reserved).
    if let Ok(mut c) = agent.state.services.lock() {
        let l = &mut c.host_ports.listeners;
        for (addr, what) in [
            (args.health_addr, "the agent's health endpoint"),
            (args.metrics_addr, "the agent's metrics endpoint"),
        ] {
            if let Some(a) = addr {
                l.insert(a.port(), what.to_string());
            }
        }
    }
    // Spare pairs of a previous run that was killed.
    match agent.plumber.delete_spares().await {
        Ok(0) => {}
        Ok(n) => info!(
            deleted = n,
            "stale spare veth pairs of a previous run removed"
        ),
        Err(e) => warn!("removing stale spare veth pairs: {e}"),
    }
    agent.publish(Changes::all())?;

    // Steering: pod CIDR to the engine, the node's own addresses to the kernel.
    {
        let mut bpf = agent.bpf()?;
        bpf.add_steer4(
            spec.node.pod_cidr.addr,
            spec.node.pod_cidr.prefix_len,
            FpSteerKind::PodCidr,
        )
        .context("steer4: pod CIDR")?;
        let (ipip, vxlan, wg) = overlay.decap_ports();
        let steer = ipip
            .then_some((4u8, 0u16))
            .into_iter()
            .chain(vxlan.map(|p| (17, p)))
            .chain(wg.map(|p| (17, p)));
        for (proto, port) in steer {
            bpf.add_tunnel4(proto, port)
                .with_context(|| format!("tunnel4: protocol {proto} port {port}"))?;
        }
        for (a, _) in &up.ipv4 {
            bpf.add_host4(*a).context("host4")?;
        }
    }
    let queues = rx_queues(&up.name);
    let (port, mode) = agent.plug_queues(&up.name, up.ifindex, XdpProg::Uplink, queues)?;
    agent.state.uplink.port = Some(port);
    agent.state.uplink.queues = queues as u16;
    agent.state.uplink.xdp_mode = Some(mode);
    for hop in agent.state.uplink_next_hops() {
        agent.resolve(hop).await;
    }
    for pod in &spec.pods {
        if !pod.netns_path().exists() {
            agent.missing_pod(pod);
            continue;
        }
        agent.add_pod(pod).await?;
    }
    agent.publish(Changes::all())?;
    agent.refresh_neighbours().await?;
    // The node's own traffic to services goes to the engine through the punt TUN.
    let host_services = ferroplane_agent::hostsvc::start(
        agent.plumber.handle().clone(),
        punt.ifindex,
        PUNT_IF,
        spec.node.address.addr,
        agent.pod_mtu(),
        agent.state.services.clone(),
    )
    .await
    .context("routing the node's own service traffic to the engine (hostsvc)")?;

    let mut bgp = match &spec.bgp {
        Some(b) => Some(
            ferroplane_agent::bgp::BgpRuntime::start(b, &spec, agent.plumber.handle().clone())
                .await
                .context("starting BGP (bgp:)")?,
        ),
        None => None,
    };
    let overlay_view = Arc::new(std::sync::RwLock::new(overlay.clone()));
    let watchdog = ferroplane_agent::watchdog::Watchdog::new(
        vec![agent.engine.control.clone()],
        ferroplane_agent::watchdog::STALL_AFTER,
    );
    let view = AgentView {
        shared: agent.engine.shared.clone(),
        workers: vec![agent.engine.stats.clone()],
        controls: vec![agent.engine.control.clone()],
        info: agent.engine.info.clone(),
        bpf: agent.bpf.clone(),
        overlay: overlay_view.clone(),
        bgp: bgp.as_ref().map(|b| b.speaker.clone()),
        sessions: agent.engine.sessions.iter().cloned().collect(),
        services: agent.state.services.clone(),
        worker: agent.engine.port_opener(),
        watchdog: Some(watchdog.clone()),
        gone: agent.gone.clone(),
    };
    let view = Arc::new(view);
    let server = ApiServer::bind(&args.api_socket, view.clone())
        .with_context(|| format!("API socket {}", args.api_socket.display()))?;
    let _metrics = match args.metrics_addr {
        Some(addr) => {
            let m = ferroplane_agent::metrics::MetricsServer::start(addr, view.clone())
                .with_context(|| format!("metrics endpoint {addr}"))?;
            info!(addr = %m.addr(), "Prometheus metrics on /metrics");
            Some(m)
        }
        None => None,
    };
    // CNI: IPAM on the node's pod CIDR, attachments of a previous run plumbed again, then
    // the socket the plugin talks to.
    let health = Arc::new(Health::default());
    let _watchdog_thread = watchdog
        .start(health.clone(), ferroplane_agent::watchdog::CHECK_EVERY)
        .context("starting the engine watchdog")?;
    if args.test_faults {
        warn!("--test-faults: SIGUSR1 stalls the engine worker, SIGUSR2 ends it (tests only)");
        let control = agent.engine.control.clone();
        let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
        let mut usr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
        tokio::spawn(async move {
            use ferroplane_engine::worker::WorkerFault;
            loop {
                tokio::select! {
                    Some(()) = usr1.recv() => {
                        warn!("test fault: engine worker stalls");
                        control.inject_fault(Some(WorkerFault::Stall));
                    }
                    Some(()) = usr2.recv() => {
                        warn!("test fault: engine worker exits");
                        control.inject_fault(Some(WorkerFault::Exit));
                    }
                    else => break,
                }
            }
        });
    }
    // The kernel's link deletions (pods' veths that vanish: namespace deleted without CNI
    // DEL) and neighbour changes.
    let (links_tx, mut links) = tokio::sync::mpsc::unbounded_channel();
    let _link_watch = ferroplane_agent::watch::netlink::watch(links_tx)
        .context("subscribing to link and neighbour notifications")?;
    let _health_task = match args.health_addr {
        Some(addr) => Some(
            health::serve(addr, health.clone())
                .await
                .with_context(|| format!("health endpoint {addr}"))?,
        ),
        None => None,
    };
    let (pod_ops_tx, mut pod_ops) = tokio::sync::mpsc::channel::<PodOp>(256);
    let _cni_server = match &args.cni_socket {
        Some(path) => {
            let ipam_dir = args.state_dir.join("ipam");
            let ipam = Ipam::open(&ipam_dir, spec.node.pod_cidr)
                .with_context(|| format!("IPAM store {}", ipam_dir.display()))?;
            for (pod, identity, host_ports) in cni_server::pods_to_restore(&ipam)? {
                match agent.add_pod(&pod).await {
                    Ok(_) => {
                        if let Some(p) = agent.state.pods.get_mut(&pod.key()) {
                            p.identity = identity;
                            p.host_ports = host_ports;
                        }
                    }
                    Err(e) => warn!(pod = %pod.key(), "restoring a CNI attachment: {e:#}"),
                }
            }
            agent.publish(Changes::pods())?;
            let ctx = CniContext {
                ipam: Arc::new(ipam),
                ops: pod_ops_tx.clone(),
                services: agent.state.services.clone(),
            };
            Some(CniServer::bind(path, ctx).context("CNI socket")?)
        }
        None => None,
    };
    // Kubernetes: watchers, this node's annotations; ready once every watcher has listed.
    let mut k8s_source = match &kube {
        Some(b) => {
            let wg_key = match spec.cluster.as_ref().filter(|c| {
                c.uses_wireguard() || c.mode == ferroplane_agent::cluster::Mode::Wireguard
            }) {
                Some(c) => {
                    let (private, _) =
                        ferroplane_agent::overlay::load_or_create_key(&c.wireguard.key_file())
                            .context("WireGuard key")?;
                    Some(ferroplane_agent::cluster::encode_key(
                        &ferroplane_engine::tunnel::wg_public_key(private),
                    ))
                }
                None => None,
            };
            let ann = ferroplane_agent::k8s::own_annotations(&spec, wg_key);
            ferroplane_agent::k8s::source::publish_annotations(
                &b.client,
                &b.node_name,
                &b.config.annotation_prefix,
                &ann,
            )
            .await
            .context("publishing the Node annotations")?;
            Some(ferroplane_agent::k8s::K8sSource::start(
                b.client.clone(),
                &b.node_name,
                &b.config.annotation_prefix,
            ))
        }
        None => None,
    };
    health.set_ready(k8s_source.is_none());
    info!(
        node = %spec.node.name,
        pods = spec.pods.len(),
        api = %args.api_socket.display(),
        cni = ?args.cni_socket,
        "ferroplane agent ready"
    );

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // Services' health-check node ports.
    let _hc_task = tokio::spawn(ferroplane_agent::services::serve_health_checks(
        spec.node.address.addr,
        agent
            .state
            .services
            .lock()
            .map(|c| c.health.clone())
            .unwrap_or_default(),
    ));
    // WireGuard handshake retries, rekeys and keepalives leave through the kernel.
    let open_wg_sock =
        |overlay: &ferroplane_agent::overlay::Overlay| -> Result<std::net::UdpSocket> {
            let addr = std::net::SocketAddrV4::new(spec.node.address.addr, overlay.wg_port());
            let s = std::net::UdpSocket::bind(addr)
                .with_context(|| format!("WireGuard timer socket {addr}"))?;
            s.set_nonblocking(true).context("WireGuard timer socket")?;
            Ok(s)
        };
    let mut wg_sock = if overlay.has_wireguard() {
        Some(open_wg_sock(&overlay)?)
    } else {
        None
    };
    // The warm pool (CNI only): one spare in the making at a time, in its own task, so the
    // event loop keeps serving while the kernel sets the AF_XDP socket up.
    let warm_target = if args.cni_socket.is_some() {
        args.warm_pods
    } else {
        0
    };
    let (spare_tx, mut spare_rx) = tokio::sync::mpsc::channel::<Result<Spare>>(1);
    let mut spare_pending = false;
    let mut spare_seq = 0u32;
    let mut spare_retry = tokio::time::Instant::now();
    // BGP: the speaker bumps this when it has forwarding changes.
    let mut bgp_fib = bgp.as_ref().map(|b| b.speaker.fib_watch());
    // The event loop: every arm but the timers below is an event from a watcher
    // (ferroplane_agent::watch), applied to the state and published through the reconciler
    // with what it changed. Timers, for what no event announces:
    // - housekeeping (200 ms): next hops the engine could not resolve (it queues them),
    //   WireGuard's timers, BGP's graceful-restart convergence (also time-based);
    // - missing pod namespaces (5 s): a namespace appearing is not announced;
    // - resync (60 s), the safety net: the uplink's neighbours read again, the tables
    //   rebuilt from scratch and compared with the reconciler's; published (and logged)
    //   only if they differ.
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = tokio::time::Instant::now();
    let mut missing = tokio::time::interval_at(start + MISSING_RETRY, MISSING_RETRY);
    let mut resync = tokio::time::interval_at(start + RESYNC, RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !spare_pending
            && agent.spares.len() < warm_target
            && tokio::time::Instant::now() >= spare_retry
        {
            spare_pending = true;
            spare_seq = spare_seq.wrapping_add(1);
            let task = make_spare(
                agent.plumber.clone(),
                agent.engine.port_opener(),
                agent.bpf.clone(),
                agent.attach,
                spare_seq,
                agent.pod_mtu(),
            );
            let tx = spare_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(task.await).await;
            });
        }
        tokio::select! {
            biased;
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            Some(op) = pod_ops.recv() => agent.pod_op(op).await,
            Some(ev) = links.recv() => agent.link_events(ev, &mut links).await,
            Some(made) = spare_rx.recv() => {
                spare_pending = false;
                match made {
                    Ok(spare) => agent.spares.push(spare),
                    Err(e) => {
                        warn!("warm pool: {e:#}; retrying in 5 s");
                        spare_retry = tokio::time::Instant::now() + Duration::from_secs(5);
                    }
                }
            }
            _ = tokio::time::sleep_until(spare_retry), if !spare_pending && agent.spares.len() < warm_target => {}
            Ok(()) = async {
                match k8s_source.as_mut() {
                    Some(s) => s.desired.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(src) = &k8s_source {
                    let desired = src.desired.borrow().clone();
                    let cluster_changed = agent.k8s_changed(&desired, &overlay_view, bgp.as_ref()).await;
                    if cluster_changed && wg_sock.is_none() && agent.state.overlay.has_wireguard() {
                        match open_wg_sock(&agent.state.overlay) {
                            Ok(s) => wg_sock = Some(s),
                            Err(e) => warn!("{e:#}"),
                        }
                    }
                    health.set_ready(true);
                }
            }
            Some(update) = spec_updates.recv() => agent.spec_file_changed(update, bgp.as_ref()),
            changed = async {
                match bgp_fib.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            } => match (changed, bgp.as_mut()) {
                (Ok(()), Some(b)) => agent.bgp_changes(b).await,
                _ => bgp_fib = None,
            },
            _ = housekeeping.tick() => {
                let misses = agent.engine.take_misses();
                for (_, ip) in &misses {
                    agent.resolve(*ip).await;
                }
                if !misses.is_empty() {
                    if let Err(e) = agent.refresh_neighbours().await {
                        warn!("{e:#}");
                    }
                }
                if let Some(s) = &wg_sock {
                    agent.state.overlay.tick(s);
                }
                if let Some(b) = bgp.as_mut() {
                    agent.bgp_changes(b).await;
                }
            }
            _ = missing.tick() => agent.retry_missing().await,
            _ = resync.tick() => agent.resync().await,
        }
    }

    if let Some(b) = bgp.as_mut() {
        b.stop().await;
    }
    drop(server);
    for spare in std::mem::take(&mut agent.spares) {
        agent.discard_spare(spare).await;
    }
    agent.fast.stop();
    agent.engine.stop();
    host_services.stop(!on_exit_keep).await;
    if on_exit_keep {
        let flows = agent.bpf()?.flow4().map(|f| f.len()).unwrap_or(0);
        info!(
            flows,
            "stopped (--on-exit keep): XDP programs left attached; established flows forward \
             from the flow cache until the next agent adopts them"
        );
        return Ok(());
    }
    let mut bpf = agent.bpf()?;
    for (ifname, _, _) in bpf.attached() {
        if let Err(e) = bpf.detach(&ifname) {
            warn!(iface = %ifname, "detaching XDP: {e}");
        }
    }
    info!("stopped: XDP programs detached, pod namespaces left as they are");
    Ok(())
}
