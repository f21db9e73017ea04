//! Start-up, up to a programmed node: the node spec (the file, watched from before it is
//! read, or Kubernetes), the uplink checked, the XDP programs loaded (pinned), the punt TUN,
//! the engine and the flow-cache writer started, the [`Agent`] built, steering programmed,
//! the uplink plugged and the spec's pods plumbed, the tables published.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use ferroplane_agent::config::{NodeSpec, XdpMode};
use ferroplane_agent::engine::Engine;
use ferroplane_agent::fastpath::FastPath;
use ferroplane_agent::k8s::Bootstrap;
use ferroplane_agent::netlink::{LinkInfo, Plumber};
use ferroplane_agent::overlay::Overlay;
use ferroplane_agent::reconcile::{Changes, Reconciler};
use ferroplane_agent::state::{NodeState, UplinkState};
use ferroplane_agent::watch::spec::SpecUpdate;
use ferroplane_bpf::{AttachMode, Dataplane, FpSteerKind, XdpProg};
use ferroplane_io::{TunDevice, XskConfig};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::agent::{Agent, PUNT_IF};
use super::args::Args;
use super::ports::rx_queues;

/// The node spec and where it comes from.
pub struct NodeSource {
    /// The spec the agent starts with.
    pub spec: NodeSpec,
    /// Kubernetes mode: the client, this node's name and the agent config.
    pub kube: Option<Bootstrap>,
    /// Standalone mode: new versions of the spec file (closed in Kubernetes mode).
    pub updates: mpsc::Receiver<SpecUpdate>,
    /// The spec file's watch task (standalone mode).
    _watch: Option<tokio::task::JoinHandle<()>>,
}

/// Reads the node spec: the YAML file (standalone), or the agent config and the API server
/// (`--k8s`).
pub async fn node_spec(args: &Args) -> Result<NodeSource> {
    // Standalone: the spec file is watched from before it is read, so no rewrite is missed.
    let (spec_tx, spec_updates) = mpsc::channel(4);
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
    Ok(NodeSource {
        spec,
        kube,
        updates: spec_updates,
        _watch: _spec_watch,
    })
}

/// Brings the dataplane up for `spec` and programs the node: returns the agent with the
/// uplink plugged, the spec's pods plumbed and the tables published.
pub async fn agent(args: &Args, spec: &NodeSpec) -> Result<Agent> {
    let overlay = Arc::new(
        Overlay::from_spec(spec, spec.cluster.as_ref())
            .context("setting up the overlay (cluster:)")?,
    );
    let plumber = Plumber::new().context("opening netlink")?;
    // A DPDK uplink: the node's addresses move to the exception TAP, the agent's uplink for
    // neighbours from now on (daemon::dpdk).
    let (up, mut dpdk_run) = if super::dpdk::wanted(spec) {
        let (tap, run) = super::dpdk::open(&plumber, spec).await?;
        (tap, Some(run))
    } else {
        (uplink(&plumber, spec).await?, None)
    };
    let attach = match spec.node.xdp_mode {
        XdpMode::Auto => AttachMode::Auto,
        XdpMode::Native => AttachMode::Native,
        XdpMode::Skb => AttachMode::Skb,
    };
    let bpf = load_programs(args)?;
    let (tun, punt_ifindex) = punt_tun(&plumber).await?;
    let (engine, fast) = start_engine(
        args,
        tun,
        punt_ifindex,
        &bpf,
        rx_queues(&up.name),
        dpdk_run.is_some(),
    )?;

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
        dpdk: None,
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

    steer(&agent, spec, &overlay, &up)?;
    match dpdk_run.as_mut() {
        Some(run) => super::dpdk::plug(&mut agent, run).await?,
        None => plug_uplink(&mut agent, &up).await?,
    }
    agent.dpdk = dpdk_run;
    for pod in &spec.pods {
        if !pod.netns_path().exists() {
            agent.missing_pod(pod);
            continue;
        }
        agent.add_pod(pod).await?;
    }
    agent.publish(Changes::all())?;
    agent.refresh_neighbours().await?;
    Ok(agent)
}

/// The uplink, which must carry the node's address.
async fn uplink(plumber: &Plumber, spec: &NodeSpec) -> Result<LinkInfo> {
    let up = plumber
        .link_info(&spec.node.uplink)
        .await
        .with_context(|| format!("uplink {}", spec.node.uplink))?;
    if !up
        .ipv4
        .iter()
        .any(|(a, l)| *a == spec.node.address.addr() && *l == spec.node.address.prefix_len())
    {
        bail!(
            "node.address: {} is not configured on uplink {} (it has {:?})",
            spec.node.address,
            up.name,
            up.ipv4
        );
    }
    Ok(up)
}

/// Loads the XDP programs and their maps (pinned unless `--no-pin`), releasing what a
/// previous run left behind, and pins the links of what will be attached.
fn load_programs(args: &Args) -> Result<Arc<Mutex<Dataplane>>> {
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
    if !args.no_pin {
        bpf.keep_attached()
            .context("pinning the XDP links (programs stay attached if the agent dies)")?;
    }
    Ok(Arc::new(Mutex::new(bpf)))
}

/// Creates the TUN packets for the host arrive on ([`PUNT_IF`]) and sets it up; returns it
/// with its ifindex.
async fn punt_tun(plumber: &Plumber) -> Result<(TunDevice, u32)> {
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
    Ok((tun, punt.ifindex))
}

/// Starts the engine (its workers, each with its AF_XDP UMEM) and the flow-cache writer
/// (the fast path off with a DPDK uplink, `dpdk`).
fn start_engine(
    args: &Args,
    tun: TunDevice,
    punt_ifindex: u32,
    bpf: &Arc<Mutex<Dataplane>>,
    uplink_queues: u32,
    dpdk: bool,
) -> Result<(Engine, FastPath)> {
    let workers = args.workers.map_or_else(
        || ferroplane_agent::engine::default_workers(uplink_queues),
        usize::from,
    );
    let mut engine = Engine::start(
        XskConfig {
            num_frames: args.frames,
            idle_fill: args.idle_fill,
            max_ports: args.max_ports,
            ..XskConfig::default()
        },
        Some(tun),
        args.worker_priority,
        workers,
    )
    .context("starting the engine")?;
    engine.punt_ifindex = Some(punt_ifindex);
    let fast = FastPath::start(
        bpf.clone(),
        &mut engine,
        // Not with a DPDK uplink: XDP would forward cached flows to the kernel's TAP.
        args.fast_path == "on" && !dpdk,
        !args.no_pin,
    );
    Ok((engine, fast))
}

/// Steering: pod CIDR to the engine, the overlay's decapsulation ports too, the node's own
/// addresses to the kernel.
fn steer(agent: &Agent, spec: &NodeSpec, overlay: &Overlay, up: &LinkInfo) -> Result<()> {
    let mut bpf = agent.bpf()?;
    bpf.add_steer4(
        spec.node.pod_cidr.addr(),
        spec.node.pod_cidr.prefix_len(),
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
    Ok(())
}

/// Plugs the uplink (one AF_XDP socket per RX queue) and resolves its next hops.
async fn plug_uplink(agent: &mut Agent, up: &LinkInfo) -> Result<()> {
    let queues = rx_queues(&up.name);
    let (port, mode) = agent.plug_queues(&up.name, up.ifindex, XdpProg::Uplink, queues)?;
    agent.state.uplink.port = Some(port);
    agent.state.uplink.queues = queues as u16;
    agent.state.uplink.xdp_mode = Some(mode);
    for hop in agent.state.uplink_next_hops() {
        agent.resolve(hop).await;
    }
    Ok(())
}
