//! `cargo xtask deps`: the Debian packages from RECIPES.md, installed only when missing.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::progress::{is_root, run};

/// Everything the build, the e2e suites, the benches and the shipping steps use.
pub const PACKAGES: &[&str] = &[
    // eBPF C programs (clang-19, libbpf's headers, bpftool for vmlinux.h); gcc and libc6-dev
    // link Rust binaries and build the bench's LD_PRELOAD shim.
    "clang-19",
    "libbpf-dev",
    "bpftool",
    "linux-libc-dev",
    "gcc",
    "libc6-dev",
    // `cargo xtask dist`: objcopy/strip split the debug info off the shipped binaries.
    "binutils",
    // `cargo xtask image`: the shell and cp/mv/chmod of the DaemonSet's install-cni step.
    "busybox",
    // `cargo xtask deny`: the advisory snapshot is laid out as the git repository cargo-deny
    // opens.
    "git",
    // Namespaces, probes, captures.
    "iproute2",
    "iputils-ping",
    "procps",
    "util-linux",
    "tcpdump",
    "ethtool",
    "python3-scapy",
    "tshark",
    "prometheus",
    // Traffic generators.
    "netsniff-ng",
    "iperf3",
    // Overlay interop peers (WireGuard without a kernel module).
    "wireguard-go",
    "wireguard-tools",
    // Reference CNI plugins (bridge + host-local): the CNI ADD latency baseline.
    "containernetworking-plugins",
    // BGP interop peers and the `bench bgp` baseline; FRR's zebra as a neighbour daemon
    // on the node (the bgp suite checks it never adopts the agent's kernel routes).
    "bird2",
    "gobgpd",
    "frr",
];

/// What the io crate's `dpdk` cargo feature needs to build and run: DPDK 22.11's headers
/// and libraries (with its poll-mode drivers, `net_af_packet` and `net_af_xdp` among them)
/// and pkg-config, which its build script finds DPDK with. Installed only for DPDK builds
/// (`cargo xtask deps --dpdk`), so the default build never needs DPDK.
pub const DPDK_PACKAGES: &[&str] = &["libdpdk-dev", "pkg-config"];

fn installed(pkg: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stdin(Stdio::null())
        .output()
        .context("running dpkg-query (is this a Debian system?)")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// The packages of `list` not installed.
fn missing_of(list: &[&'static str]) -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for pkg in list {
        if !installed(pkg)? {
            missing.push(*pkg);
        }
    }
    Ok(missing)
}

fn apt_get(args: &[&str]) -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .env("NEEDRESTART_MODE", "a")
        .args([
            "-q",
            "-y",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
        ])
        .args(args);
    cmd
}

/// Python tools from PyPI: (command it provides, pip package).
pub const PIP_TOOLS: &[(&str, &str)] = &[
    // Offline manifest validation (`kubernetes-validate --strict -k 1.30.0`).
    ("kubernetes-validate", "kubernetes-validate"),
];

fn on_path(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the [`PIP_TOOLS`] whose command is not on PATH (`pip install`).
pub fn ensure_pip() -> Result<()> {
    for (cmd, pkg) in PIP_TOOLS {
        if on_path(cmd) {
            continue;
        }
        println!("installing {pkg} from PyPI (pip)");
        run(Command::new("python3").args(["-m", "pip", "install", "-q", pkg]))
            .with_context(|| format!("pip install {pkg}"))?;
        if !on_path(cmd) {
            bail!("{cmd} still not on PATH after pip install {pkg}");
        }
    }
    Ok(())
}

/// Installs what is missing (`apt-get update` once, install retried once), or does nothing.
pub fn ensure() -> Result<()> {
    ensure_pip()?;
    ensure_packages(PACKAGES)
}

/// Installs the [`DPDK_PACKAGES`] that are missing (for builds with `--features dpdk`).
pub fn ensure_dpdk() -> Result<()> {
    ensure_packages(DPDK_PACKAGES)
}

fn ensure_packages(list: &[&'static str]) -> Result<()> {
    let todo = missing_of(list)?;
    if todo.is_empty() {
        println!("all {} system packages present", list.len());
        return Ok(());
    }
    println!("missing system packages: {}", todo.join(" "));
    if !is_root() {
        bail!(
            "installing {} needs root: run `sudo cargo xtask deps` (or the same command as root)",
            todo.join(" ")
        );
    }
    run(&mut apt_get(&["update"])).context("apt-get update")?;
    let mut install = vec!["install"];
    install.extend(todo.iter().copied());
    if let Err(first) = run(&mut apt_get(&install)) {
        // RECIPES: one run failed with "rename failed" fetching libllvm19; the same
        // command again worked.
        println!("apt-get install failed ({first:#}); retrying once");
        std::thread::sleep(Duration::from_secs(2));
        run(&mut apt_get(&install)).context("apt-get install (second attempt)")?;
    }
    let still = missing_of(list)?;
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    println!("installed: {}", todo.join(" "));
    Ok(())
}

/// `cargo xtask deps [--dpdk]`.
pub fn run_deps(dpdk: bool) -> Result<()> {
    let mut p = crate::progress::Progress::new(if dpdk { 2 } else { 1 });
    p.step("system packages (dpkg-query, apt-get if missing)", ensure)?;
    if dpdk {
        p.step("DPDK packages (libdpdk-dev, pkg-config)", ensure_dpdk)?;
    }
    Ok(())
}
