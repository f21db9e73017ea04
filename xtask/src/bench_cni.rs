//! `cargo xtask bench cni`: CNI ADD latency, ferroplane-cni (through the agent: IPAM, veth,
//! AF_XDP port, XDP attach, tables) against the reference `bridge` + `host-local` plugins,
//! in the same run, from the same "host" namespace, alternating pod by pod.
//!
//! Each sample is the plugin process's wall time (spawn to exit), the way a runtime waits for
//! it. Printed: p50, p99, mean and max per plugin, and the p50 ratio (target: <= 1).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferroplane_e2e::cni::{
    bridge_conf, ferroplane_conf, invoke, percentile_ms, reference_plugin, CniCall, CniEnv,
};
use ferroplane_e2e::{bin_dir, bin_path, Netns, Topology};

use crate::load::build_binaries;
use crate::progress::{require_root, Progress};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Pods added (and deleted) before measuring, per plugin.
const WARMUP: usize = 3;
/// Pause after each plugin call in the paced pass (pods arriving this far apart).
const PACE: Duration = Duration::from_millis(150);

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
    /// The engine worker's control commands during the ADDs and during the DELs.
    add_worker: WorkerTime,
    del_worker: WorkerTime,
}

/// Control commands the engine worker ran (it forwards nothing meanwhile), from
/// `ferroctl show counters`.
#[derive(Clone, Copy, Debug, Default)]
struct WorkerTime {
    commands: u64,
    nanos: u64,
    max_nanos: u64,
}

impl WorkerTime {
    fn read(agent: &ferroplane_e2e::AgentGuard) -> Result<WorkerTime> {
        let c = agent.ctl_json(&["show", "counters"])?;
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        Ok(WorkerTime {
            commands: n("commands"),
            nanos: n("command_nanos"),
            max_nanos: n("command_max_nanos"),
        })
    }

    /// What ran between `before` and `self` (the longest is since the agent started).
    fn since(self, before: WorkerTime) -> WorkerTime {
        WorkerTime {
            commands: self.commands.saturating_sub(before.commands),
            nanos: self.nanos.saturating_sub(before.nanos),
            max_nanos: self.max_nanos,
        }
    }

    /// Worker time per call over `calls` calls, in ms.
    fn per_call_ms(&self, calls: usize) -> f64 {
        self.nanos as f64 / 1e6 / calls.max(1) as f64
    }
}

fn ok(call: CniCall, what: &str) -> Result<Duration> {
    if !call.ok() {
        bail!(
            "{what} failed: exit {} {}{}",
            call.exit,
            call.stdout,
            call.stderr
        );
    }
    Ok(call.elapsed)
}

fn line(name: &str, s: &[Duration]) -> String {
    let mean = s.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3 / s.len().max(1) as f64;
    let max = s.iter().max().copied().unwrap_or_default().as_secs_f64() * 1e3;
    format!(
        "{name:<34} p50 {:7.2} ms   p99 {:7.2} ms   mean {:7.2} ms   max {:7.2} ms   (n={})",
        percentile_ms(s, 50.0),
        percentile_ms(s, 99.0),
        mean,
        max,
        s.len()
    )
}

/// `cargo xtask bench cni`.
pub fn run(pods: usize, warm_pods: usize, frames: Option<u32>) -> Result<()> {
    require_root("bench cni")?;
    if pods == 0 {
        bail!("--pods must be at least 1");
    }
    let mut p = Progress::new(6);
    p.step("system packages", crate::deps::ensure)?;
    p.step(
        "building release binaries (agent, ferroctl, ferroplane-cni)",
        build_binaries,
    )?;
    let bridge = reference_plugin("bridge")?;
    reference_plugin("host-local")?;
    let plugin = bin_path(&bin_dir(), "ferroplane-cni")?;
    let topo = p.step("node namespace + agent with its CNI socket", || {
        Ok(Topology::single_node(0)?)
    })?;
    let socket = topo.dir().join("cni.sock");
    let state = topo.dir().join("state");
    let frames_s = frames.map(|f| f.to_string());
    println!(
        "agent: {} UMEM frames, warm pool of {warm_pods}",
        frames_s.as_deref().unwrap_or("default")
    );
    let warm_s = warm_pods.to_string();
    let mut args = vec![
        "--cni-socket",
        socket.to_str().context("socket path")?,
        "--state-dir",
        state.to_str().context("state path")?,
        "--warm-pods",
        &warm_s,
    ];
    if let Some(f) = &frames_s {
        args.extend(["--frames", f.as_str()]);
    }
    let agent = topo.start_agent_with(&bin_dir(), &args)?;
    let fp_conf = ferroplane_conf("ferroplane", &socket).to_string();
    let br_conf = bridge_conf(
        "refbridge",
        "fpbench0",
        "10.250.0.0/16",
        &topo.dir().join("host-local"),
    )
    .to_string();
    // The CNI socket answers once the agent is up.
    let start = std::time::Instant::now();
    while !invoke(
        &topo.node,
        &plugin,
        &CniEnv::command_only("STATUS"),
        &fp_conf,
        TIMEOUT,
    )?
    .ok()
    {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("ferroplane CNI socket not ready:\n{}", agent.log_tail(30));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let total = pods + WARMUP;
    let (fp_ns, br_ns) = p.step(&format!("creating 2 x {total} pod namespaces"), || {
        let mk = |tag: &str| -> Result<Vec<Netns>> {
            (0..total)
                .map(|i| Ok(Netns::new(&format!("{tag}{i}"))?))
                .collect()
        };
        Ok((mk("bf")?, mk("bb")?))
    })?;
    // One pass: every pod ADDed by each plugin in turn, `pace` after each call (pods
    // arriving that far apart, as a kubelet starts them), then every pod DELeted likewise.
    let pass = |tag: &str, pace: Duration| -> Result<(Samples, Samples)> {
        let mut fp = Samples::default();
        let mut br = Samples::default();
        for cmd in ["ADD", "DEL"] {
            let mut worker_before = WorkerTime::default();
            for i in 0..total {
                if i == WARMUP {
                    worker_before = WorkerTime::read(&agent)?;
                }
                let id = format!("bench{tag}{i:04}");
                let t = ok(
                    invoke(
                        &topo.node,
                        &plugin,
                        &CniEnv::new(cmd, &id, fp_ns[i].path()),
                        &fp_conf,
                        TIMEOUT,
                    )?,
                    &format!("ferroplane {cmd}"),
                )?;
                std::thread::sleep(pace);
                let r = ok(
                    invoke(
                        &topo.node,
                        &bridge,
                        &CniEnv::new(cmd, &id, br_ns[i].path()),
                        &br_conf,
                        TIMEOUT,
                    )?,
                    &format!("bridge {cmd}"),
                )?;
                std::thread::sleep(pace);
                if i >= WARMUP {
                    let (f, b) = if cmd == "ADD" {
                        (&mut fp.add, &mut br.add)
                    } else {
                        (&mut fp.del, &mut br.del)
                    };
                    f.push(t);
                    b.push(r);
                }
            }
            let worker = WorkerTime::read(&agent)?.since(worker_before);
            if cmd == "ADD" {
                fp.add_worker = worker;
            } else {
                fp.del_worker = worker;
            }
        }
        Ok((fp, br))
    };
    let (fp, br) = p.step(
        &format!(
            "paced: ADD then DEL of {pods} pods per plugin (+{WARMUP} warm-up), alternating, {} ms apart",
            PACE.as_millis()
        ),
        || pass("p", PACE),
    )?;
    let (fp_burst, br_burst) =
        p.step("burst: the same back to back", || pass("b", Duration::ZERO))?;
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    drop(agent);
    let breakdown = phase_breakdown(&log, "CNI ADD phases", WARMUP);
    let del_breakdown = phase_breakdown(&log, "CNI DEL phases", WARMUP);
    let ratio = percentile_ms(&fp.add, 50.0) / percentile_ms(&br.add, 50.0);
    println!(
        "\n=== CNI ADD latency, {pods} pods, plugin process wall time (same run, alternating, {} ms apart) ===",
        PACE.as_millis()
    );
    println!("{}", line("ferroplane-cni ADD (agent)", &fp.add));
    println!("{}", line("bridge + host-local ADD (reference)", &br.add));
    println!("{}", line("ferroplane-cni DEL", &fp.del));
    println!("{}", line("bridge + host-local DEL", &br.del));
    println!(
        "ADD p50 ratio ferroplane / reference: {ratio:.2} (target <= 1.00: {})",
        if ratio <= 1.0 { "met" } else { "NOT met" }
    );
    let burst_ratio = percentile_ms(&fp_burst.add, 50.0) / percentile_ms(&br_burst.add, 50.0);
    println!(
        "\n--- burst: the same pods back to back{} ---",
        if warm_pods > 0 {
            " (the warm pool drains and refills meanwhile)"
        } else {
            ""
        }
    );
    println!("{}", line("ferroplane-cni ADD (agent)", &fp_burst.add));
    println!(
        "{}",
        line("bridge + host-local ADD (reference)", &br_burst.add)
    );
    println!("{}", line("ferroplane-cni DEL", &fp_burst.del));
    println!("{}", line("bridge + host-local DEL", &br_burst.del));
    println!("burst ADD p50 ratio ferroplane / reference: {burst_ratio:.2}");
    print_breakdown("ADD", &breakdown, &fp.add);
    print_breakdown("DEL", &del_breakdown, &fp.del);
    println!("\nThe engine worker's time in control commands (it forwards nothing meanwhile):");
    for (what, w, calls) in [
        ("paced ADD", fp.add_worker, fp.add.len()),
        ("paced DEL", fp.del_worker, fp.del.len()),
        ("burst ADD", fp_burst.add_worker, fp_burst.add.len()),
        ("burst DEL", fp_burst.del_worker, fp_burst.del.len()),
    ] {
        println!(
            "  {what:<10} {:6.2} ms per pod ({} commands over {calls} pods)",
            w.per_call_ms(calls),
            w.commands
        );
    }
    println!(
        "  longest single command since the agent started: {:.2} ms",
        fp_burst.del_worker.max_nanos as f64 / 1e6
    );
    Ok(())
}

/// Prints where a ferroplane `op`'s time goes (from [`phase_breakdown`]) next to the p50
/// of its wall times.
fn print_breakdown(op: &str, breakdown: &[(String, f64, f64)], wall: &[Duration]) {
    if breakdown.is_empty() {
        println!("(no `CNI {op} phases` lines in the agent log: no per-phase breakdown)");
        return;
    }
    let agent_p50: f64 = breakdown.iter().map(|(_, p50, _)| p50).sum();
    println!("\nWhere a ferroplane {op}'s time goes (agent log, ms; sum of p50s {agent_p50:.2} of the {:.2} p50 wall time; the rest is the plugin process and its socket round trip):",
        percentile_ms(wall, 50.0));
    for (name, p50, mean) in breakdown {
        println!("  {name:<12} p50 {p50:7.2}   mean {mean:7.2}");
    }
}

/// Removes ANSI colour escapes (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Per phase (in first-seen order): p50 and mean in ms over the agent's
/// `<marker> (ms) ... phases=name=ms name=ms ...` lines, skipping the first `skip`.
fn phase_breakdown(log: &str, marker: &str, skip: usize) -> Vec<(String, f64, f64)> {
    let mut order: Vec<String> = Vec::new();
    let mut samples: std::collections::HashMap<String, Vec<f64>> = Default::default();
    let lines = log
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains(marker))
        .skip(skip)
        .collect::<Vec<_>>();
    let n = lines.len();
    for line in &lines {
        let Some((_, rest)) = line.split_once("phases=") else {
            continue;
        };
        for item in rest.split_whitespace() {
            let Some((name, v)) = item.split_once('=') else {
                continue;
            };
            let Ok(v) = v.trim_matches('"').parse::<f64>() else {
                continue;
            };
            if !samples.contains_key(name) {
                order.push(name.to_string());
            }
            samples.entry(name.to_string()).or_default().push(v);
        }
    }
    order
        .into_iter()
        .map(|name| {
            let mut v = samples.remove(&name).unwrap_or_default();
            // A phase absent from some ADDs counts as 0 there.
            v.resize(n.max(v.len()), 0.0);
            let d: Vec<Duration> = v
                .iter()
                .map(|ms| Duration::from_secs_f64(ms / 1e3))
                .collect();
            let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
            (name, percentile_ms(&d, 50.0), mean)
        })
        .collect()
}
