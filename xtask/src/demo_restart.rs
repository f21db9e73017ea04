//! The demo's agent restart: with `--on-exit keep` the XDP programs stay attached while the
//! agent is down, flows the engine was forwarding keep forwarding from the XDP flow cache,
//! and a new flow waits for the next agent (fail closed).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferroplane_e2e::{epoch_now, ping, AgentGuard, ContinuousPing, Topology};

/// Seconds the agent stays down.
const DOWN_SECS: u64 = 2;

/// Stops `agent`, keeps it down for [`DOWN_SECS`] while pings run, starts a new one with
/// `args`. Returns the new agent and the number of failed checks (printed as it goes).
pub fn run(
    topo: &Topology,
    agent: AgentGuard,
    bin_dir: &Path,
    args: &[&str],
) -> Result<(AgentGuard, usize)> {
    println!("\nagent restart with --on-exit keep (the XDP flow cache bridges the gap):");
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    let flows = [
        (format!("{} -> {}", p0.name, p1.name), &p0.ns, p1.ip),
        (format!("router -> {}", p0.name), &topo.router, p0.ip),
        (
            format!("{} -> router", p1.name),
            &p1.ns,
            Topology::ROUTER_IP,
        ),
    ];
    let mut pings = Vec::new();
    for (i, (name, ns, ip)) in flows.into_iter().enumerate() {
        let log = topo.dir().join(format!("restart-ping-{i}.log"));
        pings.push((name, ContinuousPing::start(ns, ip, &log)?));
    }
    std::thread::sleep(Duration::from_millis(1500));
    agent.stop();
    drop(agent);
    let down_from = epoch_now();
    let mut failed = 0;
    let new_flow = ping(&p0.ns, p1.ip, 1).is_err();
    std::thread::sleep(Duration::from_secs(DOWN_SECS));
    let down_until = epoch_now();
    let t = Instant::now();
    let agent = topo
        .start_agent_with(bin_dir, args)
        .context("restarting the agent")?;
    let back_ms = t.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_millis(1000));
    for (name, p) in &pings {
        let times = p.finish();
        let during = times
            .iter()
            .filter(|t| **t > down_from && **t < down_until)
            .count();
        let after = times.iter().filter(|t| **t > down_until + 0.5).count();
        let ok = during >= 5 && after >= 3;
        failed += usize::from(!ok);
        println!(
            "  {} established flow {name}: {during} replies while the agent was down, {after} after",
            if ok { "PASS" } else { "FAIL" },
        );
    }
    failed += usize::from(!new_flow);
    println!(
        "  {} a new flow while the agent was down was {}",
        if new_flow { "PASS" } else { "FAIL" },
        if new_flow {
            "refused (fail closed)"
        } else {
            "let through"
        }
    );
    let again = ping(&p0.ns, p1.ip, 2).is_ok();
    failed += usize::from(!again);
    println!(
        "  {} new flows pass again once the agent is back ({back_ms:.0} ms to answer)",
        if again { "PASS" } else { "FAIL" }
    );
    Ok((agent, failed))
}
