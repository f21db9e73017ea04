//! What serves the programmed node, started in this order: the node's own service traffic
//! (hostsvc), BGP, the local API (ferroctl), Prometheus metrics, the engine watchdog, fault
//! injection (tests), the kernel's link events, the health endpoints, the CNI server (with
//! the attachments of a previous run plumbed again), the Kubernetes watchers; then the
//! agent is ready.

use std::sync::{Arc, RwLock};

use anyhow::{bail, Context, Result};
use ferroplane_agent::api::AgentView;
use ferroplane_agent::bgp::BgpRuntime;
use ferroplane_agent::cni_server::{self, CniContext, CniServer, PodOp};
use ferroplane_agent::health::{self, Health};
use ferroplane_agent::hostsvc::HostServicesTask;
use ferroplane_agent::ipam::Ipam;
use ferroplane_agent::k8s::K8sSource;
use ferroplane_agent::metrics::MetricsServer;
use ferroplane_agent::overlay::Overlay;
use ferroplane_agent::reconcile::Changes;
use ferroplane_agent::watch::netlink::LinkEvent;
use ferroplane_api::ApiServer;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::agent::{Agent, PUNT_IF};
use super::args::Args;
use super::faults;
use super::start::NodeSource;

/// What [`start`] started, for the event loop and the stop. The fields are in the reverse
/// of their start order: a struct drops its fields in declaration order, so the last one
/// started stops first.
pub struct Serving {
    /// The Kubernetes watchers (Kubernetes mode).
    pub k8s_source: Option<K8sSource>,
    _cni_server: Option<CniServer>,
    /// The CNI server's requests.
    pub pod_ops: mpsc::Receiver<PodOp>,
    _pod_ops_tx: mpsc::Sender<PodOp>,
    _health_task: Option<tokio::task::JoinHandle<()>>,
    _link_watch: tokio::task::JoinHandle<()>,
    /// The kernel's link deletions and neighbour changes.
    pub links: mpsc::UnboundedReceiver<LinkEvent>,
    _watchdog_thread: std::thread::JoinHandle<()>,
    /// Liveness and readiness.
    pub health: Arc<Health>,
    _metrics: Option<MetricsServer>,
    /// The local API (ferroctl).
    pub server: ApiServer,
    /// The overlay the API shows (replaced when the cluster's nodes change).
    pub overlay_view: Arc<RwLock<Arc<Overlay>>>,
    /// The BGP speaker (`bgp:`).
    pub bgp: Option<BgpRuntime>,
    /// The node's own service traffic routed to the engine.
    pub host_services: HostServicesTask,
}

/// Starts what serves the node (see the module doc), in order, and logs that the agent is
/// ready.
pub async fn start(args: &Args, agent: &mut Agent, node: &NodeSource) -> Result<Serving> {
    let spec = &node.spec;
    let Some(punt_ifindex) = agent.engine.punt_ifindex else {
        bail!("the engine has no punt TUN");
    };
    // The node's own traffic to services goes to the engine through the punt TUN.
    let host_services = ferroplane_agent::hostsvc::start(
        agent.plumber.handle().clone(),
        punt_ifindex,
        PUNT_IF,
        spec.node.address.addr(),
        agent.pod_mtu(),
        agent.state.services.clone(),
    )
    .await
    .context("routing the node's own service traffic to the engine (hostsvc)")?;

    let bgp = match &spec.bgp {
        Some(b) => Some(
            BgpRuntime::start(b, spec, agent.plumber.handle().clone())
                .await
                .context("starting BGP (bgp:)")?,
        ),
        None => None,
    };
    let overlay_view = Arc::new(RwLock::new(agent.state.overlay.clone()));
    let watchdog = ferroplane_agent::watchdog::Watchdog::new(
        agent.engine.controls(),
        ferroplane_agent::watchdog::STALL_AFTER,
    );
    let view = AgentView {
        shared: agent.engine.shared.clone(),
        workers: agent.engine.all_stats(),
        controls: agent.engine.controls(),
        info: agent.engine.info.clone(),
        bpf: agent.bpf.clone(),
        overlay: overlay_view.clone(),
        bgp: bgp.as_ref().map(|b| b.speaker.clone()),
        sessions: agent.engine.all_sessions(),
        services: agent.state.services.clone(),
        worker: agent.engine.port_opener(),
        watchdog: Some(watchdog.clone()),
        gone: agent.gone.clone(),
        captures: Default::default(),
    };
    let view = Arc::new(view);
    let server = ApiServer::bind(&args.api_socket, view.clone())
        .with_context(|| format!("API socket {}", args.api_socket.display()))?;
    let _metrics = match args.metrics_addr {
        Some(addr) => {
            let m = MetricsServer::start(addr, view.clone())
                .with_context(|| format!("metrics endpoint {addr}"))?;
            info!(addr = %m.addr(), "Prometheus metrics on /metrics");
            Some(m)
        }
        None => None,
    };
    let health = Arc::new(Health::default());
    let _watchdog_thread = watchdog
        .start(health.clone(), ferroplane_agent::watchdog::CHECK_EVERY)
        .context("starting the engine watchdog")?;
    if args.test_faults {
        faults::install(agent.engine.control.clone())?;
    }
    // The kernel's link deletions (pods' veths that vanish: namespace deleted without CNI
    // DEL) and neighbour changes.
    let (links_tx, links) = mpsc::unbounded_channel();
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
    // CNI: IPAM on the node's pod CIDR, attachments of a previous run plumbed again, then
    // the socket the plugin talks to.
    let (pod_ops_tx, pod_ops) = mpsc::channel::<PodOp>(256);
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
    let k8s_source = match &node.kube {
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
            let ann = ferroplane_agent::k8s::own_annotations(spec, wg_key);
            ferroplane_agent::k8s::source::publish_annotations(
                &b.client,
                &b.node_name,
                &b.config.annotation_prefix,
                &ann,
            )
            .await
            .context("publishing the Node annotations")?;
            Some(K8sSource::start(
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
    Ok(Serving {
        k8s_source,
        _cni_server,
        pod_ops,
        _pod_ops_tx: pod_ops_tx,
        _health_task,
        _link_watch,
        links,
        _watchdog_thread,
        health,
        _metrics,
        server,
        overlay_view,
        bgp,
        host_services,
    })
}
