//! The event loop: every arm but the timers is an event from a watcher
//! (`ferroplane_agent::watch`, the CNI server, the Kubernetes source, BGP), applied to the
//! state and published through the reconciler with what it changed. Timers, for what no
//! event announces:
//! - housekeeping (200 ms): next hops the engine could not resolve (it queues them),
//!   WireGuard's timers, BGP's graceful-restart convergence (also time-based);
//! - missing pod namespaces (5 s): a namespace appearing is not announced;
//! - resync (60 s), the safety net: the uplink's neighbours read again, the tables rebuilt
//!   from scratch and compared with the reconciler's; published (and logged) only if they
//!   differ.
//!
//! It runs until SIGTERM or SIGINT.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};
use ferroplane_agent::overlay::Overlay;
use ferroplane_agent::watch::spec::SpecUpdate;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::agent::Agent;
use super::args::Args;
use super::serve::Serving;
use super::warm::WarmPool;

/// Period of the housekeeping timer (engine misses, WireGuard timers, BGP convergence).
const HOUSEKEEPING: Duration = Duration::from_millis(200);
/// Period of the retry of spec pods whose namespace is missing.
const MISSING_RETRY: Duration = Duration::from_secs(5);
/// Period of the safety-net resync (tables rebuilt from scratch and compared).
const RESYNC: Duration = Duration::from_secs(60);

/// The socket WireGuard's handshake retries, rekeys and keepalives leave through (the
/// kernel's).
fn open_wg_sock(node: Ipv4Addr, overlay: &Overlay) -> Result<UdpSocket> {
    let addr = SocketAddrV4::new(node, overlay.wg_port());
    let s = UdpSocket::bind(addr).with_context(|| format!("WireGuard timer socket {addr}"))?;
    s.set_nonblocking(true).context("WireGuard timer socket")?;
    Ok(s)
}

/// Runs the event loop (see the module doc) until SIGTERM or SIGINT.
pub async fn run(
    args: &Args,
    agent: &mut Agent,
    serving: &mut Serving,
    mut spec_updates: mpsc::Receiver<SpecUpdate>,
) -> Result<()> {
    let Serving {
        k8s_source,
        pod_ops,
        links,
        health,
        overlay_view,
        bgp,
        ..
    } = serving;
    let node = agent.state.spec.node.address.addr();
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // Services' health-check node ports.
    let _hc_task = tokio::spawn(ferroplane_agent::services::serve_health_checks(
        node,
        agent
            .state
            .services
            .lock()
            .map(|c| c.health.clone())
            .unwrap_or_default(),
    ));
    // WireGuard handshake retries, rekeys and keepalives leave through the kernel.
    let mut wg_sock = if agent.state.overlay.has_wireguard() {
        Some(open_wg_sock(node, &agent.state.overlay)?)
    } else {
        None
    };
    // The warm pool (CNI only).
    let mut warm = WarmPool::new(if args.cni_socket.is_some() {
        args.warm_pods
    } else {
        0
    });
    // BGP: the speaker bumps this when it has forwarding changes.
    let mut bgp_fib = bgp.as_ref().map(|b| b.speaker.fib_watch());
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = tokio::time::Instant::now();
    let mut missing = tokio::time::interval_at(start + MISSING_RETRY, MISSING_RETRY);
    let mut resync = tokio::time::interval_at(start + RESYNC, RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        warm.refill(agent);
        tokio::select! {
            biased;
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            Some(op) = pod_ops.recv() => agent.pod_op(op).await,
            Some(ev) = links.recv() => agent.link_events(ev, links).await,
            Some(made) = warm.made.recv() => warm.take(agent, made),
            _ = tokio::time::sleep_until(warm.retry), if warm.wants(agent) => {}
            Ok(()) = async {
                match k8s_source.as_mut() {
                    Some(s) => s.desired.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(src) = k8s_source.as_ref() {
                    let desired = src.desired.borrow().clone();
                    let cluster_changed = agent.k8s_changed(&desired, overlay_view, bgp.as_ref()).await;
                    if cluster_changed && wg_sock.is_none() && agent.state.overlay.has_wireguard() {
                        match open_wg_sock(node, &agent.state.overlay) {
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
    Ok(())
}
