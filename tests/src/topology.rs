//! Emulated node topologies and the agent running on them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmd::run_with_timeout;
use crate::{bin_path, link_veth, tail_file, ChildGuard, Error, Netns, Result, TempDir};

/// How long [`Topology::start_agent`] waits for `ferroctl version` to answer.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit of one ferroctl call.
const CTL_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of agent log shown in errors and on panics.
const LOG_TAIL: usize = 60;
/// The sysctl every emulated node runs with, as real Kubernetes nodes do: the kernel forwards
/// IPv4, so only the XDP programs keep pod traffic from bypassing the engine.
pub const NODE_IP_FORWARD: (&str, &str) = ("net.ipv4.ip_forward", "1");

/// A pod namespace of a [`Topology`]. The namespace starts empty (only `lo`): the agent plumbs
/// the pod's interface into it from the spec.
#[derive(Debug)]
pub struct Pod {
    /// Pod name in the spec (`pod0`, `pod1`, ...).
    pub name: String,
    /// The pod's address (`10.244.1.10`, `.11`, ...).
    pub ip: Ipv4Addr,
    /// The pod's network namespace.
    pub ns: Netns,
}

/// One emulated node: `router` netns --veth-- `node` netns (where the agent runs) and `pods`.
/// The node runs with `net.ipv4.ip_forward=1`, as Kubernetes nodes do ([`NODE_IP_FORWARD`]).
///
/// ```text
///  router [rtr0 192.168.100.1/24] ---- [up0 192.168.100.2/24] node ---- pods 10.244.1.10, .11, ...
///  router: route 10.244.1.0/24 via 192.168.100.2        node: default via 192.168.100.1
/// ```
/// Everything is deleted on drop (pods first, then node, router and the temp dir).
#[derive(Debug)]
pub struct Topology {
    /// The pods, in spec order.
    pub pods: Vec<Pod>,
    /// The node's namespace (uplink [`Topology::UPLINK_IF`]).
    pub node: Netns,
    /// The upstream router's namespace (interface [`Topology::ROUTER_IF`]).
    pub router: Netns,
    spec_path: PathBuf,
    api_socket: PathBuf,
    dir: TempDir,
}

impl Topology {
    /// The router's address on the uplink segment.
    pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
    /// The node's address on its uplink.
    pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
    /// Prefix length of the uplink segment.
    pub const UPLINK_PREFIX_LEN: u8 = 24;
    /// The node's pod CIDR.
    pub const POD_CIDR: &'static str = "10.244.1.0/24";
    /// First pod address; pod `i` gets `.10 + i`.
    pub const FIRST_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
    /// The node's uplink interface name.
    pub const UPLINK_IF: &'static str = "up0";
    /// The router's interface toward the node.
    pub const ROUTER_IF: &'static str = "rtr0";
    /// The interface name inside each pod.
    pub const POD_IF: &'static str = "eth0";

    /// Creates router, node and `pods` pod namespaces, the uplink veth with addresses and
    /// routes, and writes the agent spec ([`Topology::spec_yaml`]) into a private temp dir.
    pub fn single_node(pods: usize) -> Result<Topology> {
        if pods > 200 {
            return Err(Error::Setup(format!("{pods} pods: at most 200")));
        }
        let dir = TempDir::new("topo")?;
        let router = Netns::new("router")?;
        let node = Netns::new("node")?;
        for ns in [&router, &node] {
            ns.set_sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.set_sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        // As on every Kubernetes node (kubeadm's preflight requires it): the dataplane must
        // fail closed with the kernel ready to forward.
        node.set_sysctl(NODE_IP_FORWARD.0, NODE_IP_FORWARD.1)?;
        link_veth(&router, Self::ROUTER_IF, &node, Self::UPLINK_IF)?;
        // The router stands in for a physical network: frames on a real wire carry
        // full checksums, while a veth leaves them to offload (CHECKSUM_PARTIAL),
        // which the engine's AF_XDP path cannot see.
        // A NIC accepts frames XDP redirects to it; a veth only when its peer's receive
        // path runs NAPI (GRO on): the XDP flow cache sends to the router that way.
        router.exec_ok(&["ethtool", "-K", Self::ROUTER_IF, "tx", "off", "gro", "on"])?;
        let plen = Self::UPLINK_PREFIX_LEN;
        router.add_addr(Self::ROUTER_IF, &format!("{}/{plen}", Self::ROUTER_IP))?;
        node.add_addr(Self::UPLINK_IF, &format!("{}/{plen}", Self::NODE_IP))?;
        router.add_route(Self::POD_CIDR, &Self::NODE_IP.to_string())?;
        node.add_route("default", &Self::ROUTER_IP.to_string())?;
        let first = u32::from(Self::FIRST_POD_IP);
        let mut pod_list = Vec::with_capacity(pods);
        for i in 0..pods {
            let name = format!("pod{i}");
            pod_list.push(Pod {
                ip: Ipv4Addr::from(first + i as u32),
                ns: Netns::new(&name)?,
                name,
            });
        }
        let topo = Topology {
            pods: pod_list,
            node,
            router,
            spec_path: dir.path().join("node.yaml"),
            api_socket: dir.path().join("api.sock"),
            dir,
        };
        topo.write_spec(&topo.spec_yaml())?;
        Ok(topo)
    }

    /// The agent spec for this topology (contracts format): uplink, address, gateway,
    /// pod CIDR, `xdpMode: auto`, and every pod with its netns and IP.
    pub fn spec_yaml(&self) -> String {
        let mut y = String::from("# written by ferroplane-e2e\nnode:\n");
        let _ = writeln!(y, "  name: node-1");
        let _ = writeln!(y, "  uplink: {}", Self::UPLINK_IF);
        let _ = writeln!(
            y,
            "  address: {}/{}",
            Self::NODE_IP,
            Self::UPLINK_PREFIX_LEN
        );
        let _ = writeln!(y, "  gateway: {}", Self::ROUTER_IP);
        let _ = writeln!(y, "  podCIDR: {}", Self::POD_CIDR);
        let _ = writeln!(y, "  xdpMode: auto");
        if self.pods.is_empty() {
            y.push_str("pods: []\n");
        } else {
            y.push_str("pods:\n");
            for pod in &self.pods {
                let _ = writeln!(y, "  - name: {}", pod.name);
                let _ = writeln!(y, "    namespace: default");
                let _ = writeln!(y, "    netns: {}", pod.ns.name());
                let _ = writeln!(y, "    ip: {}", pod.ip);
                let _ = writeln!(y, "    interface: {}", Self::POD_IF);
            }
        }
        y
    }

    /// Replaces the spec file the agent will read (for suites that need another spec).
    pub fn write_spec(&self, yaml: &str) -> Result<()> {
        std::fs::write(&self.spec_path, yaml)
            .map_err(|e| Error::io(format!("writing {}", self.spec_path.display()), e))
    }

    /// Path of the agent spec.
    pub fn spec_path(&self) -> &Path {
        &self.spec_path
    }

    /// Path of the agent API socket used by [`Topology::start_agent`].
    pub fn api_socket(&self) -> &Path {
        &self.api_socket
    }

    /// The topology's private temp dir (spec, socket, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the router <-> node uplink veth with one of `queues` RX and TX queues on
    /// both ends (a multi-queue NIC as a veth can emulate it: the receiving queue follows
    /// the sender's TX queue), addressed and routed as [`Topology::single_node`] sets it up.
    pub fn set_uplink_queues(&self, queues: u32) -> Result<()> {
        let (r, u) = (Self::ROUTER_IF, Self::UPLINK_IF);
        let q = queues.to_string();
        let _ = self.router.ip(&["link", "del", r]);
        let node = self.node.name().to_string();
        self.router.ip(&[
            "link",
            "add",
            r,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            u,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            &node,
        ])?;
        self.router.set_up(r)?;
        self.node.set_up(u)?;
        self.router
            .exec_ok(&["ethtool", "-K", r, "tx", "off", "gro", "on"])?;
        let plen = Self::UPLINK_PREFIX_LEN;
        self.router
            .add_addr(r, &format!("{}/{plen}", Self::ROUTER_IP))?;
        self.node
            .add_addr(u, &format!("{}/{plen}", Self::NODE_IP))?;
        self.router
            .add_route(Self::POD_CIDR, &Self::NODE_IP.to_string())?;
        self.node
            .add_route("default", &Self::ROUTER_IP.to_string())?;
        Ok(())
    }

    /// Keeps the temp dir (logs, spec) after drop.
    pub fn keep_dir(&mut self) {
        self.dir.keep();
    }

    /// Runs `ferroplane-agent --config SPEC --api-socket SOCK` from `bin_dir` in the node
    /// namespace (output to `agent.log` in the temp dir) and waits up to 10 s until
    /// `ferroctl version` answers. On failure the error carries the end of the log.
    pub fn start_agent(&self, bin_dir: &Path) -> Result<AgentGuard> {
        self.start_agent_with(bin_dir, &[])
    }

    /// [`Topology::start_agent`] with extra agent arguments (e.g. `--cni-socket PATH`).
    pub fn start_agent_with(&self, bin_dir: &Path, extra: &[&str]) -> Result<AgentGuard> {
        let agent = bin_path(bin_dir, "ferroplane-agent")?;
        let ctl = bin_path(bin_dir, "ferroctl")?;
        let log_path = self.dir.path().join("agent.log");
        let _ = std::fs::remove_file(&self.api_socket);
        let agent_s = agent.to_string_lossy();
        let spec_s = self.spec_path.to_string_lossy();
        let sock_s = self.api_socket.to_string_lossy();
        let mut cmd = self
            .node
            .command(&[&agent_s, "--config", &spec_s, "--api-socket", &sock_s]);
        cmd.args(extra);
        cmd.args(crate::agent_env_args(extra));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("RUST_BACKTRACE", "1");
        let log = |what: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| Error::io(format!("opening {} ({what})", log_path.display()), e))
        };
        cmd.stdout(log("stdout")?).stderr(log("stderr")?);
        let child = self.node.spawn_command(cmd)?;
        let guard = AgentGuard {
            child,
            socket: self.api_socket.clone(),
            ctl_bin: ctl,
            log_path: log_path.clone(),
        };
        let fail = |guard: AgentGuard, reason: String| {
            guard.child.stop();
            Error::AgentStart {
                reason,
                log_path: log_path.display().to_string(),
                log: tail_file(&log_path, LOG_TAIL),
            }
        };
        let start = Instant::now();
        loop {
            match guard.child.try_wait() {
                Ok(Some(status)) => return Err(fail(guard, format!("agent exited: {status}"))),
                Ok(None) => {}
                Err(e) => return Err(fail(guard, e.to_string())),
            }
            let last = match guard.ctl_timeout(&["version"], Duration::from_secs(2)) {
                Ok(_) => return Ok(guard),
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= AGENT_START_TIMEOUT {
                return Err(fail(
                    guard,
                    format!(
                        "`ferroctl version` did not answer within {AGENT_START_TIMEOUT:?}; last: {last}"
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A running agent (see [`Topology::start_agent`]). Drop stops it (SIGTERM, then SIGKILL);
/// when dropped during a panic it prints the end of its log first.
#[derive(Debug)]
pub struct AgentGuard {
    child: ChildGuard,
    socket: PathBuf,
    ctl_bin: PathBuf,
    log_path: PathBuf,
}

impl AgentGuard {
    /// Wraps an agent process started elsewhere (e.g. by [`crate::cluster::Cluster`]).
    pub(crate) fn from_parts(
        child: ChildGuard,
        socket: PathBuf,
        ctl_bin: PathBuf,
        log_path: PathBuf,
    ) -> AgentGuard {
        AgentGuard {
            child,
            socket,
            ctl_bin,
            log_path,
        }
    }

    /// Runs `ferroctl --socket SOCK args...` (10 s limit); returns stdout, a non-zero exit is
    /// an error carrying stderr.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.ctl_timeout(args, CTL_TIMEOUT)
    }

    /// [`AgentGuard::ctl`] with `-o json` appended, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ctl(&all)?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Probe(format!("ferroctl {all:?}: bad JSON ({e}): {text}")))
    }

    fn ctl_timeout(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let mut cmd = std::process::Command::new(&self.ctl_bin);
        cmd.arg("--socket").arg(&self.socket).args(args);
        let line = crate::command_line(&cmd);
        crate::cmd::check(line, run_with_timeout(cmd, timeout)?)
    }

    /// The API socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The ferroctl binary used by [`AgentGuard::ctl`].
    pub fn ctl_bin(&self) -> &Path {
        &self.ctl_bin
    }

    /// The agent's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The end of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log_path, lines)
    }

    /// The agent's PID.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// True while the agent process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_running()
    }

    /// Stops the agent now (SIGTERM, then SIGKILL); returns its exit status if known.
    pub fn stop(&self) -> Option<std::process::ExitStatus> {
        self.child.stop()
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = if self.child.is_running() {
                "running"
            } else {
                "NOT running"
            };
            eprintln!(
                "--- agent ({state}) log {} (last {LOG_TAIL} lines) ---\n{}\n--- end of agent log ---",
                self.log_path.display(),
                tail_file(&self.log_path, LOG_TAIL)
            );
        }
    }
}

/// A bpffs mounted in the host mount namespace under `/run` (unique per process and call),
/// so pins outlive an agent's private `ip netns exec` mount namespace (the agent's own
/// `/sys/fs/bpf` there is a fresh, private bpffs). Unmounted on drop.
#[derive(Debug)]
pub struct BpffsMount {
    path: PathBuf,
}

impl BpffsMount {
    /// Mounts a new bpffs.
    pub fn new() -> Result<BpffsMount> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let path = PathBuf::from(format!(
            "/run/ferroplane-e2e-bpf-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("mkdir {}", path.display()), e))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .output()
            .map_err(|e| Error::io("mount -t bpf".to_string(), e))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&path);
            return Err(Error::io(
                format!("mount -t bpf bpf {}", path.display()),
                std::io::Error::other(String::from_utf8_lossy(&out.stderr).to_string()),
            ));
        }
        Ok(BpffsMount { path })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .output();
        let _ = std::fs::remove_dir(&self.path);
    }
}
