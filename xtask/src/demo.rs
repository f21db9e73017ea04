//! `cargo xtask demo`: one emulated node with 3 pods, the agent, and checks anyone can read.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ferroplane_e2e::{ping, tcp_transfer, AgentGuard, Topology};
use nix::sys::signal::{SigSet, Signal};

use crate::load::build_binaries;
use crate::progress::{require_root, Progress};

/// Size of the byte-checked TCP transfer.
const TRANSFER_BYTES: u64 = 10 * 1024 * 1024;
const PODS: usize = 3;

/// One check's outcome.
struct Check {
    name: String,
    ok: bool,
    ms: f64,
    detail: String,
}

fn check(name: String, f: impl FnOnce() -> Result<String>) -> Check {
    let t = Instant::now();
    let r = f();
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    match r {
        Ok(detail) => Check {
            name,
            ok: true,
            ms,
            detail,
        },
        Err(e) => Check {
            name,
            ok: false,
            ms,
            detail: format!("{e:#}").replace('\n', " | "),
        },
    }
}

fn ping_check(from: &ferroplane_e2e::Netns, ip: Ipv4Addr) -> Result<String> {
    let s = ping(from, ip, 3)?;
    Ok(format!(
        "{}/{} replies, avg rtt {:.3} ms",
        s.received,
        s.transmitted,
        s.rtt_avg.as_secs_f64() * 1000.0
    ))
}

fn run_checks(topo: &Topology) -> Vec<Check> {
    let pods = &topo.pods;
    let (p0, p1, p2) = (&pods[0], &pods[1], &pods[2]);
    let mut checks = vec![
        check(
            format!("ping {} -> {} ({})", p0.name, p1.name, p1.ip),
            || ping_check(&p0.ns, p1.ip),
        ),
        check(
            format!("ping {} -> {} ({})", p2.name, p0.name, p0.ip),
            || ping_check(&p2.ns, p0.ip),
        ),
        check(
            format!("ping {} -> router ({})", p0.name, Topology::ROUTER_IP),
            || ping_check(&p0.ns, Topology::ROUTER_IP),
        ),
        check(
            format!("ping router -> node ({})", Topology::NODE_IP),
            || ping_check(&topo.router, Topology::NODE_IP),
        ),
        check(format!("ping node -> {} ({})", p0.name, p0.ip), || {
            ping_check(&topo.node, p0.ip)
        }),
    ];
    for (name, r) in crate::demo_services::checks(topo) {
        checks.push(check(name, || r));
    }
    for (name, r) in crate::demo_policy::checks(topo) {
        checks.push(check(name, || r));
    }
    checks.push(check(
        format!(
            "tcp {} -> {} ({}:5201), {} MB byte-checked",
            p0.name,
            p1.name,
            p1.ip,
            TRANSFER_BYTES / (1024 * 1024)
        ),
        || {
            let s = tcp_transfer(&p0.ns, &p1.ns, p1.ip, 5201, TRANSFER_BYTES)?;
            Ok(format!("{} bytes, {:.0} Mbit/s", s.bytes, s.mbit_per_s()))
        },
    ));
    checks
}

fn created(topo: &Topology) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "  {:<8} {:<22} addresses", "role", "netns");
    let _ = writeln!(
        s,
        "  {:<8} {:<22} {} {}/{} (route {} via node)",
        "router",
        topo.router.name(),
        Topology::ROUTER_IF,
        Topology::ROUTER_IP,
        Topology::UPLINK_PREFIX_LEN,
        Topology::POD_CIDR
    );
    let _ = writeln!(
        s,
        "  {:<8} {:<22} {} {}/{} (uplink; agent runs here)",
        "node",
        topo.node.name(),
        Topology::UPLINK_IF,
        Topology::NODE_IP,
        Topology::UPLINK_PREFIX_LEN
    );
    for pod in &topo.pods {
        let _ = writeln!(
            s,
            "  {:<8} {:<22} {} {}/32 (plumbed by the agent)",
            pod.name,
            pod.ns.name(),
            Topology::POD_IF,
            pod.ip
        );
    }
    s
}

/// Appends `title`, then the output of `ferroctl show <what>`, indented.
fn ctl_section(s: &mut String, agent: &AgentGuard, title: &str, what: &str) {
    let _ = writeln!(s, "\n{title}");
    match agent.ctl(&["show", what]) {
        Ok(text) => {
            for line in text.lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
        Err(e) => {
            let _ = writeln!(s, "  (ferroctl failed: {e})");
        }
    }
}

fn summary(topo: &Topology, agent: &AgentGuard, checks: &[Check]) -> String {
    let mut s = String::from("\n=== ferroplane demo ===\n\ncreated:\n");
    s.push_str(&created(topo));
    let _ = writeln!(s, "  spec     {}", topo.spec_path().display());
    let _ = writeln!(
        s,
        "  agent    pid {} log {}",
        agent.pid(),
        agent.log_path().display()
    );
    let _ = writeln!(s, "\nchecks:");
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(10);
    for c in checks {
        let _ = writeln!(
            s,
            "  {:<width$}  {:<4} {:>8.1} ms  {}",
            c.name,
            if c.ok { "PASS" } else { "FAIL" },
            c.ms,
            c.detail
        );
    }
    let passed = checks.iter().filter(|c| c.ok).count();
    let _ = writeln!(s, "  {passed}/{} checks passed", checks.len());
    ctl_section(
        &mut s,
        agent,
        "engine counters (ferroctl show counters):",
        "counters",
    );
    ctl_section(
        &mut s,
        agent,
        "AF_XDP frames (ferroctl show buffers; a port's fill ring grows with its traffic):",
        "buffers",
    );
    if checks.iter().any(|c| !c.ok) {
        ctl_section(
            &mut s,
            agent,
            "error counters (ferroctl show errors), since a check failed:",
            "errors",
        );
    }
    let ctl = agent.ctl_bin().display().to_string();
    let sock = agent.socket().display().to_string();
    let _ = writeln!(s, "\nwhere to look:");
    for what in ["counters", "interfaces", "routes", "errors", "buffers"] {
        let _ = writeln!(s, "  {ctl} --socket {sock} show {what}");
    }
    let _ = writeln!(s, "  (add `-o json` for machine-readable output)");
    let _ = writeln!(
        s,
        "  ip netns exec {} ip -d link show      # XDP programs on the uplink and pod veths",
        topo.node.name()
    );
    let _ = writeln!(
        s,
        "  ip netns exec {} ping {}        # try it yourself",
        topo.pods[0].ns.name(),
        topo.pods[1].ip
    );
    let _ = writeln!(s, "  less {}", agent.log_path().display());
    s
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_ctrl_c() -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    let sig = set.wait().context("waiting for a signal")?;
    println!("\n{sig:?}: tearing down");
    Ok(())
}

/// `cargo xtask demo [--keep] [--nodes N] [--mode M]`.
pub fn run(keep: bool, nodes: u8, mode: ferroplane_e2e::cluster::OverlayMode) -> Result<()> {
    require_root("demo")?;
    let mut p = Progress::new(5);
    p.step("system packages", crate::deps::ensure)?;
    p.step(
        "building release binaries (agent, ferroctl, BPF objects)",
        build_binaries,
    )?;
    let topo = p.step(
        "creating router, node and 3 pod namespaces (veth uplink, addresses, routes)",
        || Ok(Topology::single_node(PODS)?),
    )?;
    print!("{}", created(&topo));
    // A ClusterIP + NodePort service in front of pods 1 and 2 (see demo_services).
    topo.write_spec(&format!(
        "{}{}",
        topo.spec_yaml(),
        crate::demo_services::spec(&topo)
    ))?;
    // A default-deny namespace with one pod and one allow rule (see demo_policy).
    let secure = crate::demo_policy::Secure::start()?;
    topo.write_spec(&secure.spec(&topo, &std::fs::read_to_string(topo.spec_path())?))?;
    let _backends = crate::demo_services::Backends::start(&topo)?;
    let bin_dir = ferroplane_e2e::bin_dir();
    // Pins in a bpffs of the host's mount namespace (the agent's `ip netns exec` one is
    // private), so `--on-exit keep` can leave the programs to the next agent.
    let bpffs = ferroplane_e2e::BpffsMount::new()?;
    let pin_dir = bpffs.path().join("node").to_string_lossy().to_string();
    let agent_args = ["--pin-dir", pin_dir.as_str(), "--on-exit", "keep"];
    let agent = p.step("starting ferroplane-agent in the node namespace", || {
        Ok(topo.start_agent_with(&bin_dir, &agent_args)?)
    })?;
    let checks = p.step("checking pod/router/node connectivity", || {
        let checks = run_checks(&topo);
        for c in &checks {
            println!(
                "  {} {} ({:.1} ms)",
                if c.ok { "PASS" } else { "FAIL" },
                c.name,
                c.ms
            );
        }
        Ok(checks)
    })?;
    print!("{}", summary(&topo, &agent, &checks));
    if !agent.is_running() {
        println!(
            "\nthe agent is no longer running; its log ends with:\n{}",
            agent.log_tail(30)
        );
    }
    let mut failed = checks.iter().filter(|c| !c.ok).count();
    // An agent restart that established flows ride through (demo_restart).
    let (agent, f) = crate::demo_restart::run(&topo, agent, &bin_dir, &agent_args)?;
    failed += f;
    // The CNI path: one pod added by ferroplane-cni as a container runtime does (demo_cni).
    failed += crate::demo_cni::run()?;
    // The multi-node part: pods on several nodes, each with its own agent (demo_cluster).
    let _cluster = if nodes >= 2 {
        let (cluster, f) = crate::demo_cluster::run(nodes, mode)?;
        failed += f;
        Some(cluster)
    } else {
        None
    };
    if keep {
        println!("\n--keep: topology and agent stay up; press Ctrl-C to tear down");
        wait_for_ctrl_c()?;
    } else {
        println!("\ntearing down (run with --keep to leave the topology up)");
    }
    drop(agent);
    drop(topo);
    if failed > 0 {
        bail!("{failed} of {} demo checks failed", checks.len());
    }
    Ok(())
}
