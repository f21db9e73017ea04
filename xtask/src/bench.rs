//! `cargo xtask bench [forward|engine|all|reconcile]`.

use std::time::Duration;

use anyhow::{bail, Result};
use ferroplane_e2e::bench::{self, BenchTools, RunConfig};
use ferroplane_e2e::{TempDir, Topology};

use crate::load::build_binaries;
use crate::progress::{cargo, require_root, run as run_cmd, Progress};
use crate::BenchKind;

/// `cargo xtask bench`.
pub fn run(kind: BenchKind, runs: usize, secs: u64, kernel_only: bool) -> Result<()> {
    if matches!(kind, BenchKind::Forward | BenchKind::All) {
        forward(runs, secs, kernel_only)?;
    }
    if matches!(kind, BenchKind::Engine | BenchKind::All) {
        engine()?;
    }
    if matches!(kind, BenchKind::Reconcile) {
        reconcile()?;
    }
    Ok(())
}

/// The reconcile bench (agent crate, no root): the tables after one pod ADD, route change
/// and service change at 10,000 routes and services, full rebuild vs incremental.
fn reconcile() -> Result<()> {
    let mut p = Progress::new(1);
    p.step(
        "reconcile bench (cargo bench -p ferroplane-agent --bench reconcile)",
        || run_cmd(cargo().args(["bench", "-p", "ferroplane-agent", "--bench", "reconcile"])),
    )
}

/// The engine's own benches (criterion, memory I/O backend).
fn engine() -> Result<()> {
    let mut p = Progress::new(1);
    p.step("engine benches (cargo bench -p ferroplane-engine)", || {
        run_cmd(cargo().args(["bench", "-p", "ferroplane-engine"]))
    })
}

/// trafgen through the node: kernel IP forwarding, then ferroplane, same namespaces.
fn forward(runs: usize, secs: u64, kernel_only: bool) -> Result<()> {
    require_root("bench forward")?;
    if runs == 0 || secs == 0 {
        bail!("--runs and --secs must be at least 1");
    }
    let cfg = RunConfig {
        runs,
        duration: Duration::from_secs(secs),
        warmup: Duration::from_secs(1),
    };
    let mut p = Progress::new(if kernel_only { 4 } else { 6 });
    p.step("system packages", crate::deps::ensure)?;
    if !kernel_only {
        p.step(
            "building release binaries (agent, ferroctl, BPF objects)",
            build_binaries,
        )?;
    }
    let tools_dir = TempDir::new("bench-tools")?;
    let tools = p.step(
        "compiling the trafgen LD_PRELOAD shim (cc) and the XDP_DROP sink (clang-19)",
        || {
            Ok(BenchTools::build(
                &BenchTools::source_dir(),
                tools_dir.path(),
            )?)
        },
    )?;
    let topo = p.step(
        "creating router (generator), node and pod0 (sink) namespaces",
        || Ok(Topology::single_node(1)?),
    )?;
    let kernel = p.step(
        &format!("kernel IP forwarding: {runs} x {secs} s of 60-byte UDP, router -> node -> pod0"),
        || {
            let rates = bench::kernel_forward(&topo, &tools, &cfg)?;
            println!("  runs (Mpps): {}", fmt_rates(&rates));
            Ok(rates)
        },
    )?;
    let ferroplane = if kernel_only {
        Err(ferroplane_e2e::Error::Setup(
            "skipped (--kernel-only)".into(),
        ))
    } else {
        let r = p.step(
            &format!("ferroplane (XDP + engine): {runs} x {secs} s, same namespaces"),
            || {
                let rates =
                    bench::ferroplane_forward(&topo, &tools, &cfg, &ferroplane_e2e::bin_dir())?;
                println!("  runs (Mpps): {}", fmt_rates(&rates));
                Ok(rates)
            },
        );
        r.map_err(|e| ferroplane_e2e::Error::Setup(format!("{e:#}").replace('\n', " | ")))
    };
    println!(
        "\n=== forwarding, 60-byte UDP frames, medians of {runs} x {secs} s (sink: XDP_DROP rx count) ===\n{}",
        bench::report(&kernel, ferroplane.as_deref().map_err(clone_err))
    );
    if !kernel_only && ferroplane.is_err() {
        bail!("the ferroplane half of the benchmark failed (see above)");
    }
    // Issue 17: the fast path next to the kernel and a bare XDP redirect (Mpps, CPU/packet).
    let table = crate::bench_fastpath::rows(
        &topo,
        &tools,
        &cfg,
        &ferroplane_e2e::bin_dir(),
        !kernel_only,
    )?;
    println!("\n=== fast path: (a) kernel, (b) bare XDP redirect, (c)/(d) ferroplane fast path off/on ===\n{table}");
    if !kernel_only {
        // Issue 15: one AF_XDP socket per RX queue, a 1-queue against a 4-queue uplink.
        let table = crate::bench_queues::rows(&topo, &tools, &cfg, &ferroplane_e2e::bin_dir())?;
        println!("\n=== multi-queue uplink: ferroplane (defaults) with a 1-queue and a 4-queue uplink ===\n{table}");
    }
    Ok(())
}

fn clone_err(e: &ferroplane_e2e::Error) -> ferroplane_e2e::Error {
    ferroplane_e2e::Error::Setup(e.to_string())
}

/// Each run's rate in Mpps: `0.123 0.456`.
pub(crate) fn fmt_rates(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| format!("{:.3}", r / 1e6))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The table of a bench measuring the kernel and ferroplane at several sizes N: per N
/// both median rates (packets/s), ferroplane/kernel, and each path against its first N.
pub(crate) fn scaling_report(title: &str, label: &str, results: &[(usize, f64, f64)]) -> String {
    use std::fmt::Write as _;
    let mut s = format!("\n=== {title} ===\n");
    let w = label.len().max(7);
    let _ = writeln!(
        s,
        "{label:>w$} {:>13} {:>10} {:>17} {:>10} {:>14}",
        "kernel Mpps", "vs N=1", "ferroplane Mpps", "vs N=1", "ferro/kernel"
    );
    let (k1, f1) = results.first().map_or((0.0, 0.0), |r| (r.1, r.2));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    for &(n, k, f) in results {
        let _ = writeln!(
            s,
            "{n:>w$} {:>13.3} {:>9.2}x {:>17.3} {:>9.2}x {:>13.2}x",
            k / 1e6,
            ratio(k, k1),
            f / 1e6,
            ratio(f, f1),
            ratio(f, k)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_report_ratios() {
        let t = scaling_report(
            "t",
            "services",
            &[(1, 0.2e6, 0.4e6), (10_000, 0.01e6, 0.4e6)],
        );
        assert!(t.contains("2.00x"), "{t}");
        assert!(t.contains("40.00x"), "{t}");
        assert!(t.contains("0.05x"), "{t}");
        assert!(t.contains("services"), "{t}");
    }
}
