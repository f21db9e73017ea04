//! `ferroplane-agent`: the node daemon (standalone mode: a YAML node spec).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use daemon::args::Args;
use ferroplane_agent::api::AgentView;
use ferroplane_agent::cni_server::{self, CniContext, CniServer, PodOp};
use ferroplane_agent::config::{NodeSpec, XdpMode};
use ferroplane_agent::engine::Engine;
use ferroplane_agent::health::{self, Health};
use ferroplane_agent::ipam::Ipam;
use ferroplane_agent::netlink::Plumber;
use ferroplane_agent::reconcile::{Changes, Reconciler};
use ferroplane_agent::state::{NodeState, UplinkState};
use ferroplane_api::ApiServer;
use ferroplane_bpf::{AttachMode, Dataplane, FpSteerKind, XdpProg};
use ferroplane_io::{TunDevice, XskConfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

mod daemon;

use daemon::agent::{Agent, PUNT_IF};
use daemon::ports::rx_queues;
use daemon::warm::{make_spare, Spare};

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
