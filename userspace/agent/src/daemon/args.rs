//! The agent's command line (`ferroplane-agent --help`): every flag, with its default and
//! what it trades off.

use std::path::PathBuf;

use clap::Parser;

/// The command line.
#[derive(Parser, Debug)]
#[command(name = "ferroplane-agent", version, about = "ferroplane node agent")]
pub struct Args {
    /// YAML node spec (standalone mode).
    #[arg(long)]
    pub config: PathBuf,
    /// Unix socket of the local API (ferroctl).
    #[arg(long, default_value = ferroplane_api::DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
    /// Pin BPF maps under this directory (bpffs is mounted there if needed), so
    /// `ferroctl map list|dump` and the next agent find them.
    #[arg(long, default_value = "/sys/fs/bpf/ferroplane")]
    pub pin_dir: PathBuf,
    /// Do not pin the BPF maps.
    #[arg(long)]
    pub no_pin: bool,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g. 127.0.0.1:9464.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Log format.
    #[arg(long, default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
    /// Frames in the AF_XDP UMEM (2 KiB each; shared by every port): 16384 is 32 MiB,
    /// pinned. A port's fill ring holds `--idle-fill` frames while idle and up to 2048 when
    /// busy, within its share of three quarters of the pool (an uplink queue counts 4
    /// shares, a pod 1) and never taking the floors (32 frames) kept for the ports still to
    /// come up to `--max-ports`. More frames cost kernel memory and CNI ADD time: every
    /// AF_XDP socket on the shared UMEM makes the kernel allocate and clear 128 bytes per
    /// UMEM frame (16384 frames: 2 MiB per socket).
    #[arg(long, default_value_t = 16384)]
    pub frames: u32,
    /// Frames an idle port keeps in its fill ring (at most 2048): what the kernel can take
    /// for it before the engine worker runs; on its first packets the port jumps to the
    /// busy fill (2048) and is refilled at once. With the real-time worker
    /// (`--worker-priority`), 128 takes a 1,000-packet burst into or out of an idle pod
    /// whole; under the normal scheduler it takes about 1024 (and then `--frames` must grow:
    /// roughly `frames * 3/4 >= idle fill * (pods + 4 * uplink queues)`).
    #[arg(long, default_value_t = 128)]
    pub idle_fill: u32,
    /// The most AF_XDP ports (pods plus uplink queues) the pool keeps a fill-ring floor
    /// (32 frames) for: ports opened early never take the frames of ports opened later,
    /// because the kernel cannot hand back what an idle port's fill ring holds. The
    /// default covers kubelet's default maxPods (110) and a 16-queue uplink.
    #[arg(long, default_value_t = 128)]
    pub max_ports: u32,
    /// Real-time priority (`SCHED_FIFO`, 1-99) of the engine worker thread; 0 keeps it
    /// under the normal scheduler. Real-time lets the worker preempt a pod that floods
    /// an idle port, so it refills the port's fill ring during the burst instead of after
    /// it (with 0, a 1,000-packet burst loses what exceeds the idle fill).
    #[arg(long, default_value_t = 1)]
    pub worker_priority: u8,
    /// Engine worker threads (1-64). Each has its own AF_XDP frame pool (`--frames` each);
    /// the uplink's RX queues (queue q to worker q mod N) and the pods' ports (each to the
    /// worker owning the fewest) are spread over them, and a packet whose connection another
    /// worker owns is handed to it (see DESIGN.md, "Several workers"). Default: one per CPU
    /// the agent may run on, at most one per uplink RX queue, at most 8.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: Option<u16>,
    /// Serve the CNI plugin (`ferroplane-cni`) on this unix socket (mode 0600).
    #[arg(long)]
    pub cni_socket: Option<PathBuf>,
    /// Persistent state (IPAM reservations under `ipam/`, the WireGuard key
    /// `wireguard.key` unless `cluster.wireguard.privateKeyFile` says otherwise).
    #[arg(long, default_value = "/var/lib/ferroplane")]
    pub state_dir: PathBuf,
    /// Serve `/healthz` and `/readyz` over HTTP on this address (e.g. 127.0.0.1:9644).
    #[arg(long)]
    pub health_addr: Option<std::net::SocketAddr>,
    /// Kubernetes mode: `--config` is the agent config (ConfigMap file); the node, its pod
    /// CIDR, the other nodes and the services come from the API server.
    #[arg(long)]
    pub k8s: bool,
    /// Kubeconfig for Kubernetes mode (default: $KUBECONFIG, then in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// With `--cni-socket`: spare pod veths kept ready (AF_XDP socket open, XDP attached),
    /// so a CNI ADD does not wait for the kernel's AF_XDP setup; 0 disables the pool.
    /// Adopting a spare moves its peer into the pod's namespace, which costs a kernel RCU
    /// barrier (~17 ms): with the default `--frames`, plumbing cold is quicker, so the
    /// pool is off unless asked for (it pays off with a large UMEM).
    #[arg(long, default_value_t = 0)]
    pub warm_pods: usize,
    /// What the agent leaves behind when it stops cleanly (SIGTERM, Ctrl-C). `detach`: the
    /// XDP programs are removed and the node's kernel takes all traffic back (uninstall).
    /// `keep` (for restarts and upgrades): the programs stay attached (pinned links) and flows
    /// the engine was forwarding keep forwarding from the XDP flow cache until the next agent
    /// adopts the programs; new flows are dropped until then (fail closed). Needs the pin
    /// directory. Whatever this says, an agent that dies (crash, SIGKILL, OOM) leaves the
    /// programs attached: their links are pinned while it runs (unless `--no-pin`).
    #[arg(long, default_value = "detach", value_parser = ["detach", "keep"])]
    pub on_exit: String,
    /// Test only (fault injection for the e2e suites; never in production): SIGUSR1 makes
    /// the engine worker stall (no heartbeat), SIGUSR2 makes it exit.
    #[arg(long, hide = true)]
    pub test_faults: bool,
    /// `on` (the default): the XDP programs forward established flows themselves (the flow
    /// cache as a steady-state fast path; first packets, TCP SYN/FIN/RST, fragments, ICMP
    /// errors, traced and captured flows stay in the engine). `off`: every packet goes
    /// through the engine (for comparison and debugging); see README.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub fast_path: String,
}
