//! The clean stop (SIGTERM, SIGINT): BGP withdrawn, the API closed, the warm pool's spares
//! undone, the flow-cache writer and the engine stopped, the node's service routing undone
//! (or kept), then the XDP programs detached (`--on-exit detach`) or left attached with
//! the flow cache forwarding established flows until the next agent (`--on-exit keep`).

use anyhow::Result;
use tracing::{info, warn};

use super::agent::Agent;
use super::serve::Serving;

/// Stops the agent; `keep` is `--on-exit keep`.
pub async fn stop(mut agent: Agent, mut serving: Serving, keep: bool) -> Result<()> {
    if let Some(b) = serving.bgp.as_mut() {
        b.stop().await;
    }
    drop(serving.server);
    for spare in std::mem::take(&mut agent.spares) {
        agent.discard_spare(spare).await;
    }
    agent.fast.stop();
    agent.engine.stop();
    // The engine's backend is gone: the DPDK ports close, the addresses go back.
    if let Some(run) = agent.dpdk.take() {
        super::dpdk::stop(&agent.plumber, run).await;
    }
    serving.host_services.stop(!keep).await;
    if keep {
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
