//! `ferroplane-agent`: the node daemon (standalone mode: a YAML node spec).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferroplane_agent::api::AgentView;
use ferroplane_agent::config::{NodeSpec, PodSpec, XdpMode};
use ferroplane_agent::engine::Engine;
use ferroplane_agent::netlink::{Plumber, POD_GATEWAY};
use ferroplane_agent::state::{NodeState, PodState, UplinkState};
use ferroplane_api::ApiServer;
use ferroplane_bpf::{AttachMode, Dataplane, FpIface, FpSteerKind, XdpProg};
use ferroplane_io::{TunDevice, XskConfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// Name of the TUN device packets for the host are written to.
const PUNT_IF: &str = "fppunt0";

#[derive(Parser, Debug)]
#[command(name = "ferroplane-agent", version, about = "ferroplane node agent")]
struct Args {
    /// YAML node spec (standalone mode).
    #[arg(long)]
    config: PathBuf,
    /// Unix socket of the local API (ferroctl).
    #[arg(long, default_value = ferroplane_api::DEFAULT_SOCKET)]
    api_socket: PathBuf,
    /// Pin BPF maps under this directory (bpffs is mounted there if needed).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    /// Frames in the AF_XDP UMEM.
    #[arg(long, default_value_t = 32768)]
    frames: u32,
}

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
}

impl Agent {
    fn bpf(&self) -> Result<std::sync::MutexGuard<'_, Dataplane>> {
        self.bpf
            .lock()
            .map_err(|_| anyhow::anyhow!("BPF state lock poisoned"))
    }

    /// Open the AF_XDP socket, program the maps, attach XDP. Returns (port, mode).
    fn plug(&self, ifname: &str, ifindex: u32, prog: XdpProg) -> Result<(u16, String)> {
        let (port, fd) = self
            .engine
            .add_port(ifname)
            .with_context(|| format!("opening AF_XDP socket on {ifname}"))?;
        let slot = port as u32;
        let mut bpf = self.bpf()?;
        bpf.set_xsk(slot, fd)
            .with_context(|| format!("XSKMAP slot {slot} for {ifname}"))?;
        let entry = match prog {
            XdpProg::Uplink => FpIface::uplink(slot),
            XdpProg::Pod => FpIface::pod(slot),
        };
        bpf.set_iface(ifindex, entry)
            .with_context(|| format!("ifaces map entry for {ifname}"))?;
        let mode = bpf
            .attach(prog, ifname, self.attach)
            .with_context(|| format!("attaching {prog} to {ifname}"))?;
        info!(iface = ifname, port, mode = %mode, "XDP attached, AF_XDP socket open");
        Ok((port, mode.name().to_string()))
    }

    async fn add_pod(&mut self, pod: &PodSpec) -> Result<()> {
        let mtu = self
            .state
            .spec
            .node
            .pod_mtu_or(self.state.uplink.mtu as u32);
        let link = self
            .plumber
            .create_pod(pod, mtu, POD_GATEWAY)
            .await
            .with_context(|| format!("plumbing pod {}", pod.key()))?;
        let (port, mode) = self.plug(&link.host_ifname, link.host_ifindex, XdpProg::Pod)?;
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
            },
        );
        info!(pod = %pod.key(), ip = %pod.ip, veth = %link.host_ifname, reused = link.reused, "pod plugged");
        Ok(())
    }

    fn publish(&self) -> Result<()> {
        let snap = self.state.snapshot().context("building the FIB")?;
        self.engine.shared.publish(snap);
        Ok(())
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
            self.publish()?;
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

async fn run(args: Args) -> Result<()> {
    let spec = NodeSpec::load(&args.config)
        .with_context(|| format!("reading node spec {}", args.config.display()))?;
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

    let bpf = Dataplane::load(args.pin_dir.as_deref()).context("loading the XDP programs")?;
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

    let engine = Engine::start(
        XskConfig {
            num_frames: args.frames,
            ..XskConfig::default()
        },
        Some(tun),
    )
    .context("starting the engine")?;

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
                xdp_mode: None,
            },
            pods: BTreeMap::new(),
            neighbours: BTreeMap::new(),
        },
        attach,
    };
    agent.publish()?;

    // Steering: pod CIDR to the engine, the node's own addresses to the kernel.
    {
        let mut bpf = agent.bpf()?;
        bpf.add_steer4(
            spec.node.pod_cidr.addr,
            spec.node.pod_cidr.prefix_len,
            FpSteerKind::PodCidr,
        )
        .context("steer4: pod CIDR")?;
        for (a, _) in &up.ipv4 {
            bpf.add_host4(*a).context("host4")?;
        }
    }
    let (port, mode) = agent.plug(&up.name, up.ifindex, XdpProg::Uplink)?;
    agent.state.uplink.port = Some(port);
    agent.state.uplink.xdp_mode = Some(mode);
    for hop in agent.state.uplink_next_hops() {
        agent.resolve(hop).await;
    }
    for pod in &spec.pods {
        agent.add_pod(pod).await?;
    }
    agent.refresh_neighbours().await?;
    agent.publish()?;

    let view = AgentView {
        shared: agent.engine.shared.clone(),
        workers: vec![agent.engine.stats.clone()],
        controls: vec![agent.engine.control.clone()],
        info: agent.engine.info.clone(),
        bpf: agent.bpf.clone(),
    };
    let server = ApiServer::bind(&args.api_socket, Arc::new(view))
        .with_context(|| format!("API socket {}", args.api_socket.display()))?;
    info!(
        node = %spec.node.name,
        pods = spec.pods.len(),
        api = %args.api_socket.display(),
        "ferroplane agent ready"
    );

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut refresh = 0u32;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = tick.tick() => {
                let misses = agent.engine.take_misses();
                for (_, ip) in &misses {
                    agent.resolve(*ip).await;
                }
                refresh += 1;
                if !misses.is_empty() || refresh.is_multiple_of(5) {
                    if let Err(e) = agent.refresh_neighbours().await {
                        warn!("{e:#}");
                    }
                }
            }
        }
    }

    drop(server);
    agent.engine.stop();
    let mut bpf = agent.bpf()?;
    for (ifname, _, _) in bpf.attached() {
        if let Err(e) = bpf.detach(&ifname) {
            warn!(iface = %ifname, "detaching XDP: {e}");
        }
    }
    info!("stopped: XDP programs detached, pod namespaces left as they are");
    Ok(())
}
