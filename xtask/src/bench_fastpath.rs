//! `cargo xtask bench forward`, the fast-path rows: the same 60-byte UDP flows (router ->
//! node -> pod0) through
//! - (a) kernel IP forwarding,
//! - (b) a bare XDP redirect on the node's uplink (MAC rewrite + `bpf_redirect` into a veth
//!   to pod0, nothing else: the ceiling of this path, `xtask/shim/xdp_redirect.c`),
//! - (c) ferroplane with `--fast-path off` (every packet through AF_XDP and the engine),
//! - (d) ferroplane with the fast path on (established flows forwarded by XDP),
//!
//! each as Mpps delivered and CPU nanoseconds per delivered packet: every CPU's busy time
//! (`/proc/stat`: user, nice, system, irq, softirq, steal) over the measured window, divided
//! by the packets the sink counted. The generator's own CPU is in every row alike.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use ferroplane_e2e::bench::{self, BenchTools, Endpoint, Flow, RunConfig};
use ferroplane_e2e::{link_veth, Netns, Topology};

/// Host-side veth toward pod0 for rows (a) and (b) (the agent's plumbing replaces it in (c)
/// and (d)).
const POD_VETH: &str = "fpfbench0";

/// One row: Mpps and CPU ns per delivered packet, one value per run.
#[derive(Debug, Clone)]
pub struct Row {
    /// What carried the packets.
    pub label: &'static str,
    /// Packets per second delivered, per run.
    pub pps: Vec<f64>,
    /// CPU nanoseconds (all CPUs) per delivered packet, per run.
    pub cpu_ns: Vec<f64>,
    /// Anything worth printing under the table (e.g. fast-path hits).
    pub note: String,
}

/// Busy and total jiffies of all CPUs (`/proc/stat`'s first line).
fn cpu_jiffies() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat: no cpu line"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Ok((busy, busy + at(3) + at(4)))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// `cfg.runs` windows of trafgen from the router to `sink`'s `eth0`; CPU sampled over the
/// same window as the sink's counter (a thread that waits out the warm-up alongside).
/// Returns (packets per second, CPU ns per delivered packet), one value per run.
pub(crate) fn measure(
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    sink: &Netns,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let pod = topo.pods.first().ok_or_else(|| anyhow!("no pod0"))?;
    let flow = Flow {
        dst_mac: topo.node.mac(Topology::UPLINK_IF)?,
        src_mac: topo.router.mac(Topology::ROUTER_IF)?,
        src_ip: Topology::ROUTER_IP,
        dst_ip: pod.ip,
    };
    let hz = clock_ticks();
    let (mut pps, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..cfg.runs.max(1) {
        let (warmup, window) = (cfg.warmup, cfg.duration);
        let sampler = std::thread::spawn(move || -> Result<(u64, Duration)> {
            std::thread::sleep(warmup);
            let (b0, _) = cpu_jiffies()?;
            let t0 = Instant::now();
            std::thread::sleep(window);
            let (b1, _) = cpu_jiffies()?;
            Ok((b1.saturating_sub(b0), t0.elapsed()))
        });
        let gen = Endpoint {
            ns: &topo.router,
            ifname: Topology::ROUTER_IF,
        };
        let sink_ep = Endpoint {
            ns: sink,
            ifname: Topology::POD_IF,
        };
        let rate = bench::measure_pps(tools, topo.dir(), gen, &flow, sink_ep, cfg)?;
        let (busy, elapsed) = sampler
            .join()
            .map_err(|_| anyhow!("CPU sampler panicked"))??;
        let delivered = rate * elapsed.as_secs_f64();
        pps.push(rate);
        cpu.push(if delivered > 0.0 {
            busy as f64 / hz * 1e9 / delivered
        } else {
            f64::NAN
        });
    }
    Ok((pps, cpu))
}

fn ifindex(ns: &Netns, ifname: &str) -> Result<u32> {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    v.get(0)
        .and_then(|l| l["ifindex"].as_u64())
        .map(|i| i as u32)
        .ok_or_else(|| anyhow!("no ifindex for {ifname}: {out}"))
}

/// A fresh veth node (`POD_VETH`) <-> pod0 (`eth0`): an agent that ran before leaves its
/// pod interface in the namespace (a clean stop does not unplug pods).
fn plug_pod0(topo: &Topology, pod: &Netns) -> Result<()> {
    let _ = pod.ip(&["link", "del", Topology::POD_IF]);
    link_veth(&topo.node, POD_VETH, pod, Topology::POD_IF)?;
    Ok(())
}

/// (a): the node kernel forwards to a veth into pod0 (/32 route, permanent neighbour).
fn kernel_row(topo: &Topology, tools: &BenchTools, cfg: &RunConfig) -> Result<Row> {
    let pod = topo.pods.first().ok_or_else(|| anyhow!("no pod0"))?;
    plug_pod0(topo, &pod.ns)?;
    let r = (|| -> Result<(Vec<f64>, Vec<f64>)> {
        let ip = pod.ip.to_string();
        pod.ns.add_addr(Topology::POD_IF, &format!("{ip}/32"))?;
        topo.node.add_route_dev(&format!("{ip}/32"), POD_VETH)?;
        topo.node
            .add_neigh(&ip, &pod.ns.mac(Topology::POD_IF)?, POD_VETH)?;
        topo.node.set_sysctl("net.ipv4.ip_forward", "1")?;
        bench::attach_xdp_drop(&pod.ns, Topology::POD_IF, &tools.xdp_drop)?;
        measure(topo, tools, cfg, &pod.ns)
    })();
    let _ = topo.node.ip(&["link", "del", POD_VETH]);
    let (pps, cpu_ns) = r?;
    Ok(Row {
        label: "(a) kernel IP forwarding",
        pps,
        cpu_ns,
        note: String::new(),
    })
}

/// (b): `xdp_redirect.c` on the uplink sends every frame into the veth to pod0.
fn bare_xdp_row(topo: &Topology, tools: &BenchTools, cfg: &RunConfig) -> Result<Row> {
    let pod = topo.pods.first().ok_or_else(|| anyhow!("no pod0"))?;
    plug_pod0(topo, &pod.ns)?;
    let r = (|| -> Result<(Vec<f64>, Vec<f64>)> {
        bench::attach_xdp_drop(&pod.ns, Topology::POD_IF, &tools.xdp_drop)?;
        let mac = |m: String| {
            m.split(':')
                .map(|b| format!("0x{b}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let obj = topo.dir().join("xdp_redirect.o");
        let status = Command::new("clang-19")
            .args(["-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu"])
            .arg(format!("-DOUT_IFINDEX={}", ifindex(&topo.node, POD_VETH)?))
            .arg(format!("-DDST_MAC={}", mac(pod.ns.mac(Topology::POD_IF)?)))
            .arg(format!("-DSRC_MAC={}", mac(topo.node.mac(POD_VETH)?)))
            .arg("-c")
            .arg(BenchTools::source_dir().join("xdp_redirect.c"))
            .arg("-o")
            .arg(&obj)
            .status()
            .context("clang-19")?;
        if !status.success() {
            return Err(anyhow!("compiling xdp_redirect.c: {status}"));
        }
        let obj_s = obj.to_string_lossy();
        topo.node.ip(&[
            "link",
            "set",
            "dev",
            Topology::UPLINK_IF,
            "xdpdrv",
            "obj",
            &obj_s,
            "sec",
            "xdp",
        ])?;
        measure(topo, tools, cfg, &pod.ns)
    })();
    let _ = topo
        .node
        .ip(&["link", "set", "dev", Topology::UPLINK_IF, "xdpdrv", "off"]);
    let _ = topo.node.ip(&["link", "del", POD_VETH]);
    let (pps, cpu_ns) = r?;
    Ok(Row {
        label: "(b) bare XDP redirect",
        pps,
        cpu_ns,
        note: String::new(),
    })
}

/// (c)/(d): the agent with `--fast-path off|on`.
fn ferroplane_row(
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    bin_dir: &Path,
    fast: bool,
) -> Result<Row> {
    let pod = topo.pods.first().ok_or_else(|| anyhow!("no pod0"))?;
    let (key, value) = ferroplane_e2e::topology::NODE_IP_FORWARD;
    topo.node.set_sysctl(key, value)?;
    let agent =
        topo.start_agent_with(bin_dir, &["--fast-path", if fast { "on" } else { "off" }])?;
    let r = (|| -> Result<(Vec<f64>, Vec<f64>)> {
        // The agent may reuse the pod's veth of the previous row, sink attached.
        let _ = pod
            .ns
            .ip(&["link", "set", "dev", Topology::POD_IF, "xdpdrv", "off"]);
        bench::attach_xdp_drop(&pod.ns, Topology::POD_IF, &tools.xdp_drop)?;
        measure(topo, tools, cfg, &pod.ns)
    })();
    let note = agent
        .ctl_json(&["show", "xdp"])
        .ok()
        .map(|x| {
            let count = |list: &str, name: &str| {
                x[list]
                    .as_array()
                    .and_then(|a| a.iter().find(|c| c["name"] == name))
                    .and_then(|c| c["count"].as_u64())
                    .unwrap_or(0)
            };
            format!(
                "XDP verdicts: redirect (to the engine) {}, fast_path {}",
                count("verdicts", "redirect"),
                count("verdicts", "fast_path")
            )
        })
        .unwrap_or_default();
    if r.is_err() {
        eprintln!("agent log (last 30 lines):\n{}", agent.log_tail(30));
    }
    agent.stop();
    let (pps, cpu_ns) = r?;
    Ok(Row {
        label: if fast {
            "(d) ferroplane, fast path on"
        } else {
            "(c) ferroplane, fast path off"
        },
        pps,
        cpu_ns,
        note,
    })
}

/// Measures rows (a) to (d) (without the agent: (a) and (b) only) and returns the table with
/// the targets: (d) >= 0.9x the Mpps of (b), CPU per packet of (d) <= 0.5x (c).
pub fn rows(
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    bin_dir: &Path,
    with_agent: bool,
) -> Result<String> {
    let mut rows = vec![
        kernel_row(topo, tools, cfg)?,
        bare_xdp_row(topo, tools, cfg)?,
    ];
    if with_agent {
        rows.push(ferroplane_row(topo, tools, cfg, bin_dir, false)?);
        rows.push(ferroplane_row(topo, tools, cfg, bin_dir, true)?);
    }
    Ok(render(&rows))
}

/// The table of `rows`: label (in a column of `width`), median Mpps, median CPU ns per
/// packet, every run's figures, and a row's note under it.
pub(crate) fn render_rows<'a>(
    first_column: &str,
    width: usize,
    rows: impl Iterator<Item = &'a Row>,
) -> String {
    let med = |v: &[f64]| bench::median(v);
    let mut out = format!(
        "{first_column:<width$} {:>8} {:>12}   {}\n",
        "Mpps", "CPU ns/pkt", "runs: Mpps / CPU ns per packet"
    );
    for r in rows {
        let runs: Vec<String> = r
            .pps
            .iter()
            .zip(&r.cpu_ns)
            .map(|(p, c)| format!("{:.3}/{:.0}", p / 1e6, c))
            .collect();
        let _ = writeln!(
            out,
            "{:<width$} {:>8.3} {:>12.0}   {}",
            r.label,
            med(&r.pps) / 1e6,
            med(&r.cpu_ns),
            runs.join(" ")
        );
        if !r.note.is_empty() {
            let _ = writeln!(out, "{:<width$} {}", "", r.note);
        }
    }
    out
}

fn render(rows: &[Row]) -> String {
    let med = |v: &[f64]| bench::median(v);
    let mut out = render_rows("path", 32, rows.iter());
    let find = |p: &str| rows.iter().find(|r| r.label.starts_with(p));
    if let (Some(b), Some(c), Some(d)) = (find("(b)"), find("(c)"), find("(d)")) {
        let mpps = med(&d.pps) / med(&b.pps).max(1e-9);
        let cpu = med(&d.cpu_ns) / med(&c.cpu_ns).max(1e-9);
        let _ = writeln!(
            out,
            "(d)/(b) Mpps: {mpps:.2}x (target >= 0.90x); (d)/(c) CPU per packet: {cpu:.2}x (target <= 0.50x)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_every_row_and_the_ratios() {
        let row = |label, pps: f64, ns: f64| Row {
            label,
            pps: vec![pps, pps],
            cpu_ns: vec![ns, ns],
            note: String::new(),
        };
        let t = render(&[
            row("(a) kernel IP forwarding", 0.8e6, 2000.0),
            row("(b) bare XDP redirect", 1.0e6, 1000.0),
            row("(c) ferroplane, fast path off", 0.5e6, 3000.0),
            row("(d) ferroplane, fast path on", 0.95e6, 1200.0),
        ]);
        assert!(t.contains("(b) bare XDP redirect"), "{t}");
        assert!(t.contains("(d)/(b) Mpps: 0.95x"), "{t}");
        assert!(t.contains("CPU per packet: 0.40x"), "{t}");
        let two = render(&[row("(a) kernel IP forwarding", 0.8e6, 2000.0)]);
        assert!(!two.contains("(d)/(b)"), "{two}");
    }

    #[test]
    fn proc_stat_is_read() {
        let (busy, total) = cpu_jiffies().unwrap();
        assert!(total >= busy && total > 0);
    }
}
