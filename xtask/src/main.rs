//! `cargo xtask`: the project's build, run, demo, test and bench entry points.
//!
//! Run `cargo xtask --help`. Everything that touches the network needs root; commands say so
//! clearly and exit non-zero when they need it and do not have it.

mod bench;
mod bench_bgp;
mod bench_cni;
mod bench_fastpath;
mod bench_overlay;
mod bench_policy;
mod bench_queues;
mod bench_services;
mod bench_tcp;
mod demo;
mod demo_cluster;
mod demo_cni;
mod demo_policy;
mod demo_restart;
mod demo_services;
mod deny;
mod deps;
mod dist;
mod image;
mod load;
mod progress;
mod rootfs;
mod test;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

/// ferroplane developer tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install the system packages the build, tests and benches need (apt-get; root).
    Deps {
        /// Also the packages of the io crate's `dpdk` feature (libdpdk-dev, pkg-config).
        #[arg(long)]
        dpdk: bool,
    },
    /// Build the XDP programs (release build of ferroplane-bpf) and list the objects.
    BuildEbpf,
    /// Install deps, build agent and ferroctl (release), and run the agent on IFACE in the
    /// foreground.
    BuildAndLoad {
        /// The node's uplink interface.
        #[arg(long)]
        iface: String,
        /// Agent YAML spec; default: generated from IFACE's current IPv4 address.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Agent API socket (ferroctl --socket).
        #[arg(long, default_value = load::DEFAULT_API_SOCKET)]
        api_socket: PathBuf,
        /// Pod CIDR for the generated spec.
        #[arg(long, default_value = "10.244.0.0/24")]
        pod_cidr: String,
    },
    /// Build, then run one emulated node with 3 pods in network namespaces and check it.
    Demo {
        /// Keep the topology and the agent up until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Nodes of the cluster part of the demo (0: single node only).
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Overlay mode between the nodes: direct, ipip, vxlan or wireguard.
        #[arg(long, default_value = "vxlan")]
        mode: ferroplane_e2e::cluster::OverlayMode,
    },
    /// Everything CI runs: deps, fmt, clippy, release build, unit tests, root e2e suites.
    Test,
    /// cargo-deny (licenses, bans, sources, advisories) against deny.toml and the vendored
    /// RustSec advisory snapshot (installs cargo-deny when missing).
    Deny {
        /// First rewrite supply-chain/advisory-db/ from this checkout (or bare clone) of the
        /// RustSec advisory-db.
        #[arg(long, value_name = "DIR")]
        refresh_advisories: Option<PathBuf>,
    },
    /// Build the release binaries and put them, stripped, with split debug info
    /// (`<bin>.debug`, linked by .gnu_debuglink), in target/dist/.
    Dist {
        /// Use the release binaries already in target/release.
        #[arg(long)]
        no_build: bool,
    },
    /// `dist`, then the OCI image archive target/dist/ferroplane-<version>.oci.tar that
    /// manifests/03-daemonset.yaml names (no network); checked, and run in a chroot as root.
    Image {
        /// Use the release binaries already in target/release.
        #[arg(long)]
        no_build: bool,
    },
    /// Benchmarks.
    Bench {
        /// Which benchmark.
        #[arg(value_enum, default_value_t = BenchKind::All)]
        kind: BenchKind,
        /// Measured runs per path (forward).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per run (forward).
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Only measure the kernel IP forwarding baseline (forward).
        #[arg(long)]
        kernel_only: bool,
        /// Pods per plugin (cni).
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// The agent's warm pool size (cni; 0, the agent's default: every ADD plumbs cold).
        #[arg(long, default_value_t = 0)]
        warm_pods: usize,
        /// Frames in the agent's UMEM (cni; default: the agent's default).
        #[arg(long)]
        frames: Option<u32>,
        /// Prefixes GoBGP injects (bgp).
        #[arg(long, default_value_t = 100_000)]
        prefixes: usize,
    },
}

/// Benchmark selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchKind {
    /// trafgen through the node: ferroplane vs kernel IP forwarding (root).
    Forward,
    /// The engine's criterion benches (cargo bench -p ferroplane-engine).
    Engine,
    /// Both.
    All,
    /// CNI ADD latency: ferroplane-cni vs the reference bridge + host-local plugins (root).
    Cni,
    /// Pod-to-pod across nodes per overlay mode vs kernel routing / kernel VXLAN / wireguard-go (root).
    Overlay,
    /// GoBGP injects --prefixes IPv4 routes: time to Loc-RIB / engine FIB and RSS, BIRD 2 as baseline (root).
    Bgp,
    /// Forwarding with 1 / 1,000 / 10,000 rules: NetworkPolicy in ferroplane vs iptables-nft FORWARD (root).
    Policy,
    /// New connections to 1 / 1,000 / 10,000 services (3 endpoints each): ferroplane vs iptables-nft in kube-proxy's layout (root).
    Services,
    /// TCP pod -> pod (one node; two nodes direct): iperf3 1 / 8 streams and 1-byte round trips (pod, ClusterIP), kernel routing vs ferroplane (fast path off/on) (root).
    Tcp,
    /// Reconcile: publish time of one pod ADD, route change and service change at 10,000 routes and services, full rebuild vs incremental (no root).
    Reconcile,
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Cmd::Deps { dpdk } => deps::run_deps(dpdk),
        Cmd::BuildEbpf => load::build_ebpf(),
        Cmd::BuildAndLoad {
            iface,
            config,
            api_socket,
            pod_cidr,
        } => load::build_and_load(&iface, config, &api_socket, &pod_cidr),
        Cmd::Demo { keep, nodes, mode } => demo::run(keep, nodes, mode),
        Cmd::Test => test::run(),
        Cmd::Deny { refresh_advisories } => deny::run_deny(refresh_advisories),
        Cmd::Dist { no_build } => dist::run_dist(!no_build),
        Cmd::Image { no_build } => rootfs::run_image(!no_build),
        Cmd::Bench {
            kind: BenchKind::Cni,
            pods,
            warm_pods,
            frames,
            ..
        } => bench_cni::run(pods, warm_pods, frames),
        Cmd::Bench {
            kind: BenchKind::Bgp,
            prefixes,
            ..
        } => bench_bgp::run(prefixes),
        Cmd::Bench {
            kind: BenchKind::Overlay,
            secs,
            ..
        } => bench_overlay::run(secs),
        Cmd::Bench {
            kind: BenchKind::Policy,
            runs,
            secs,
            ..
        } => bench_policy::run(runs, secs),
        Cmd::Bench {
            kind: BenchKind::Tcp,
            secs,
            ..
        } => bench_tcp::run(secs),
        Cmd::Bench {
            kind: BenchKind::Services,
            runs,
            secs,
            ..
        } => bench_services::run(runs, secs),
        Cmd::Bench {
            kind,
            runs,
            secs,
            kernel_only,
            ..
        } => bench::run(kind, runs, secs, kernel_only),
    };
    if let Err(e) = result {
        eprintln!("\nxtask failed: {e:#}");
        std::process::exit(1);
    }
}
