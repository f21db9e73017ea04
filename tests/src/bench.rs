//! Forwarding benchmark: trafgen in the router netns sends 60-byte UDP frames to pod0 through
//! the node; the pod's interface drops them in native XDP and its rx counter is the rate.
//!
//! The same [`Topology`] carries both paths, one after the other, in one run:
//! - [`kernel_forward`]: the node kernel forwards (`ip_forward=1`, a `/32` route and a
//!   permanent neighbour toward a veth into pod0, like the agent's plumbing);
//! - [`ferroplane_forward`]: the agent (XDP steering + engine) forwards; the kernel keeps
//!   `ip_forward=1` as on a Kubernetes node, but XDP hands it none of the pod's traffic.
//!
//! trafgen runs with an `LD_PRELOAD` shim (`xtask/shim/trafgen_shim.c`, see RECIPES.md) so it
//! does not abort inside a namespace.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cmd::run_ok;
use crate::{link_veth, tail_file, Error, Netns, Result, Signal, Topology};

/// Host-side veth name used for the kernel path's pod plumbing.
const KERNEL_POD_IF: &str = "fpkbench0";

/// The compiled helpers: the trafgen shim and the XDP_DROP sink program.
#[derive(Debug, Clone)]
pub struct BenchTools {
    /// `trafgen_shim.so`, for `LD_PRELOAD`.
    pub shim: PathBuf,
    /// `xdp_drop.o`, attached to the sink with `ip link set ... xdpdrv obj`.
    pub xdp_drop: PathBuf,
}

impl BenchTools {
    /// Where the C sources live in the workspace (`xtask/shim/`).
    pub fn source_dir() -> PathBuf {
        crate::workspace_root().join("xtask").join("shim")
    }

    /// Compiles `trafgen_shim.c` with `cc` and `xdp_drop.c` with `clang-19 -target bpf` from
    /// `src_dir` into `out_dir`.
    pub fn build(src_dir: &Path, out_dir: &Path) -> Result<BenchTools> {
        std::fs::create_dir_all(out_dir)
            .map_err(|e| Error::io(format!("creating {}", out_dir.display()), e))?;
        let shim = out_dir.join("trafgen_shim.so");
        let xdp_drop = out_dir.join("xdp_drop.o");
        let mut cc = Command::new("cc");
        cc.args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&shim)
            .arg(src_dir.join("trafgen_shim.c"))
            .arg("-ldl");
        run_ok(cc, Duration::from_secs(60))?;
        let mut clang = Command::new("clang-19");
        clang
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-I/usr/include/x86_64-linux-gnu",
                "-c",
            ])
            .arg(src_dir.join("xdp_drop.c"))
            .arg("-o")
            .arg(&xdp_drop);
        run_ok(clang, Duration::from_secs(60))?;
        Ok(BenchTools { shim, xdp_drop })
    }
}

/// One UDP flow as trafgen builds it: 60-byte frames, source port cycling 1024..=2048.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Destination MAC (the node's uplink).
    pub dst_mac: String,
    /// Source MAC (the generator's interface).
    pub src_mac: String,
    /// Source address.
    pub src_ip: Ipv4Addr,
    /// Destination address.
    pub dst_ip: Ipv4Addr,
}

/// trafgen packet configuration for `flow`: Ethernet, IPv4 (TTL 64), UDP to port 9, 18 bytes
/// of payload (60 bytes on the wire before FCS).
pub fn trafgen_config(flow: &Flow) -> String {
    format!(
        "{{ eth(da={}, sa={}), ipv4(saddr={}, daddr={}, ttl=64), udp(sp=dinc(1024,2048), dp=9), fill(0x41,18) }}\n",
        flow.dst_mac, flow.src_mac, flow.src_ip, flow.dst_ip
    )
}

/// How long and how often to measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunConfig {
    /// Measured runs per path.
    pub runs: usize,
    /// Length of one measured window.
    pub duration: Duration,
    /// Traffic before the window opens (rings fill, neighbours resolve).
    pub warmup: Duration,
}

impl Default for RunConfig {
    /// 3 runs of 5 s after 1 s of warm-up.
    fn default() -> Self {
        RunConfig {
            runs: 3,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
        }
    }
}

/// Attaches the XDP_DROP sink program to `ifname` in `ns` (native mode).
pub fn attach_xdp_drop(ns: &Netns, ifname: &str, obj: &Path) -> Result<()> {
    let obj = obj.to_string_lossy();
    ns.ip(&[
        "link", "set", "dev", ifname, "xdpdrv", "obj", &obj, "sec", "xdp",
    ])
    .map(drop)
}

/// An interface in a namespace.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    /// The namespace.
    pub ns: &'a Netns,
    /// The interface in it.
    pub ifname: &'a str,
}

/// Runs trafgen on `gen` for `cfg.warmup` + `cfg.duration` and returns the packets per second
/// counted on `sink` (its rx counter) during the measured window. trafgen's config and log go
/// to `work_dir`.
pub fn measure_pps(
    tools: &BenchTools,
    work_dir: &Path,
    gen: Endpoint<'_>,
    flow: &Flow,
    sink: Endpoint<'_>,
    cfg: &RunConfig,
) -> Result<f64> {
    measure_pps_conf(tools, work_dir, gen, &trafgen_config(flow), &[sink], cfg)
}

/// [`measure_pps`] with a trafgen configuration written by the caller (`conf`, trafgen's
/// packet syntax) and several sinks: the rate is the sum of their rx counters.
pub fn measure_pps_conf(
    tools: &BenchTools,
    work_dir: &Path,
    gen: Endpoint<'_>,
    conf: &str,
    sinks: &[Endpoint<'_>],
    cfg: &RunConfig,
) -> Result<f64> {
    let rx = |sinks: &[Endpoint<'_>]| -> Result<u64> {
        let mut total = 0u64;
        for s in sinks {
            total = total.saturating_add(s.ns.link_stats(s.ifname)?.rx_packets);
        }
        Ok(total)
    };
    let conf_path = work_dir.join("trafgen.cfg");
    std::fs::write(&conf_path, conf)
        .map_err(|e| Error::io(format!("writing {}", conf_path.display()), e))?;
    let log = work_dir.join("trafgen.log");
    let conf_s = conf_path.to_string_lossy();
    let mut cmd = gen.ns.command(&[
        "trafgen",
        "--dev",
        gen.ifname,
        "--conf",
        &conf_s,
        "--cpus",
        "1",
        "--qdisc-path",
        "--no-sock-mem",
        "--no-cpu-stats",
    ]);
    cmd.env("LD_PRELOAD", &tools.shim);
    // trafgen forks its workers: its own process group lets stop() signal all of them.
    cmd.process_group(0);
    let file = std::fs::File::create(&log)
        .map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
    let file2 = file
        .try_clone()
        .map_err(|e| Error::io("cloning log handle", e))?;
    cmd.stdout(file).stderr(file2);
    let trafgen = gen.ns.spawn_command(cmd)?;
    std::thread::sleep(cfg.warmup);
    let before = rx(sinks)?;
    let t0 = Instant::now();
    std::thread::sleep(cfg.duration);
    let after = rx(sinks)?;
    let elapsed = t0.elapsed();
    if let Ok(Some(status)) = trafgen.try_wait() {
        return Err(Error::Probe(format!(
            "trafgen exited early ({status}):\n{}",
            tail_file(&log, 20)
        )));
    }
    trafgen.stop_with(Signal::SIGINT, Duration::from_secs(3));
    Ok(after.saturating_sub(before) as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// Median of the values (mean of the middle two for an even count; 0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The flow from the router to pod0 through the node's uplink.
fn uplink_flow(topo: &Topology) -> Result<Flow> {
    let pod = topo
        .pods
        .first()
        .ok_or_else(|| Error::Setup("the forwarding bench needs a topology with a pod".into()))?;
    Ok(Flow {
        dst_mac: topo.node.mac(Topology::UPLINK_IF)?,
        src_mac: topo.router.mac(Topology::ROUTER_IF)?,
        src_ip: Topology::ROUTER_IP,
        dst_ip: pod.ip,
    })
}

fn runs(
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    flow: &Flow,
    sink: &Netns,
) -> Result<Vec<f64>> {
    let mut rates = Vec::with_capacity(cfg.runs);
    for _ in 0..cfg.runs.max(1) {
        let gen = Endpoint {
            ns: &topo.router,
            ifname: Topology::ROUTER_IF,
        };
        let sink = Endpoint {
            ns: sink,
            ifname: Topology::POD_IF,
        };
        rates.push(measure_pps(tools, topo.dir(), gen, flow, sink, cfg)?);
    }
    Ok(rates)
}

/// Kernel IP forwarding baseline on `topo` (which must have at least one pod and no agent
/// running): plumbs pod0 like the agent would, forwards with the node kernel, measures
/// `cfg.runs` windows, then removes the plumbing. The node keeps `ip_forward=1` (as every
/// emulated node, [`crate::topology::NODE_IP_FORWARD`]): the ferroplane path is measured
/// with the kernel ready to forward too, as on a Kubernetes node.
/// Returns packets per second, one value per run.
pub fn kernel_forward(topo: &Topology, tools: &BenchTools, cfg: &RunConfig) -> Result<Vec<f64>> {
    let pod = topo
        .pods
        .first()
        .ok_or_else(|| Error::Setup("the forwarding bench needs a topology with a pod".into()))?;
    link_veth(&topo.node, KERNEL_POD_IF, &pod.ns, Topology::POD_IF)?;
    let result = (|| {
        let pod_ip = pod.ip.to_string();
        pod.ns.add_addr(Topology::POD_IF, &format!("{pod_ip}/32"))?;
        topo.node
            .add_route_dev(&format!("{pod_ip}/32"), KERNEL_POD_IF)?;
        let pod_mac = pod.ns.mac(Topology::POD_IF)?;
        topo.node.add_neigh(&pod_ip, &pod_mac, KERNEL_POD_IF)?;
        topo.node.set_sysctl("net.ipv4.ip_forward", "1")?;
        attach_xdp_drop(&pod.ns, Topology::POD_IF, &tools.xdp_drop)?;
        let flow = uplink_flow(topo)?;
        runs(topo, tools, cfg, &flow, &pod.ns)
    })();
    let cleanup = topo.node.ip(&["link", "del", KERNEL_POD_IF]).map(|_| ());
    let rates = result?;
    cleanup?;
    Ok(rates)
}

/// The ferroplane path on `topo`: `ip_forward=1` as on a Kubernetes node, agent from `bin_dir` started with the
/// topology's spec, XDP_DROP on pod0's interface (plumbed by the agent), `cfg.runs` windows,
/// agent stopped. Returns packets per second, one value per run.
pub fn ferroplane_forward(
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    bin_dir: &Path,
) -> Result<Vec<f64>> {
    let pod = topo
        .pods
        .first()
        .ok_or_else(|| Error::Setup("the forwarding bench needs a topology with a pod".into()))?;
    let (key, value) = crate::topology::NODE_IP_FORWARD;
    topo.node.set_sysctl(key, value)?;
    let agent = topo.start_agent(bin_dir)?;
    attach_xdp_drop(&pod.ns, Topology::POD_IF, &tools.xdp_drop)?;
    let flow = uplink_flow(topo)?;
    let rates = runs(topo, tools, cfg, &flow, &pod.ns);
    if rates.is_err() {
        eprintln!("agent log (last 30 lines):\n{}", agent.log_tail(30));
    }
    agent.stop();
    rates
}

/// A printable comparison of the two paths (Mpps medians, each run, and the ratio).
pub fn report(kernel: &[f64], ferroplane: Result<&[f64]>) -> String {
    let fmt_runs = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{:.3}", r / 1e6))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = String::new();
    let k = median(kernel) / 1e6;
    let _ = writeln!(
        out,
        "{:<28} {:>12} {:>24}",
        "path", "median Mpps", "runs (Mpps)"
    );
    let _ = writeln!(
        out,
        "{:<28} {:>12.3} {:>24}",
        "kernel IP forwarding",
        k,
        fmt_runs(kernel)
    );
    match ferroplane {
        Ok(f_runs) => {
            let f = median(f_runs) / 1e6;
            let _ = writeln!(
                out,
                "{:<28} {:>12.3} {:>24}",
                "ferroplane (XDP + engine)",
                f,
                fmt_runs(f_runs)
            );
            let ratio = if k > 0.0 { f / k } else { f64::NAN };
            let _ = writeln!(out, "ratio ferroplane / kernel: {ratio:.2}x");
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "{:<28} {:>12}   ({e})",
                "ferroplane (XDP + engine)", "n/a"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[f64::NAN, 1.0]), 1.0);
    }

    #[test]
    fn trafgen_config_shape() {
        let flow = Flow {
            dst_mac: "02:00:00:00:00:02".into(),
            src_mac: "02:00:00:00:00:01".into(),
            src_ip: Ipv4Addr::new(192, 168, 100, 1),
            dst_ip: Ipv4Addr::new(10, 244, 1, 10),
        };
        assert_eq!(
            trafgen_config(&flow),
            "{ eth(da=02:00:00:00:00:02, sa=02:00:00:00:00:01), ipv4(saddr=192.168.100.1, \
             daddr=10.244.1.10, ttl=64), udp(sp=dinc(1024,2048), dp=9), fill(0x41,18) }\n"
        );
    }

    #[test]
    fn report_with_and_without_ferroplane() {
        let k = [800_000.0, 850_000.0, 830_000.0];
        let f = [400_000.0, 415_000.0, 410_000.0];
        let text = report(&k, Ok(&f));
        assert!(text.contains("0.830"), "{text}");
        assert!(text.contains("0.410"), "{text}");
        assert!(text.contains("ratio ferroplane / kernel: 0.49x"), "{text}");
        let text = report(&k, Err(Error::Setup("agent missing".into())));
        assert!(
            text.contains("n/a") && text.contains("agent missing"),
            "{text}"
        );
    }
}
