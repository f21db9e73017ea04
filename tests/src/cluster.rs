//! An emulated cluster: N node namespaces on one fabric bridge, each running its own agent
//! (and engine) with its own pod CIDR and pods, connected by direct routing or a tunnel.
//!
//! ```text
//!              fabric netns: br0 192.168.200.1/24
//!        ┌──────────────┬───────────┴──┬──────────────┐
//!  [up0 .11] node-1  [up0 .12] node-2  [up0 .13] node-3   (+ extra namespaces: Cluster::attach)
//!   pods 10.244.1.10+   pods 10.244.2.10+  pods 10.244.3.10+
//! ```
//!
//! Every node's spec lists the other nodes under `cluster.nodes` (with their VTEP MAC and
//! WireGuard public key; the harness writes each node's private key file, 0600, which the
//! agent reuses). With [`Cluster::bgp`] set, every spec also gets a `bgp:` section (iBGP
//! full mesh between the nodes) and, with [`ClusterBgp::omit_pod_cidrs`], lists the other
//! nodes without their `podCIDR`: the routes to remote pods then come from BGP only. Extra peers that are not ferroplane nodes (a kernel VXLAN namespace, a
//! wireguard-go namespace) are added with [`Cluster::add_external_peer`] before
//! [`Cluster::start`]. Drop stops the agents, then deletes pods, nodes, the fabric and the
//! temp dir, also when a test panics.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::{bin_path, link_veth, tail_file, AgentGuard, Error, Netns, Pod, Result, TempDir};

/// How long [`Cluster::start`] waits for each agent's API.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(15);

/// How pods on other nodes are reached (`cluster.mode` of the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayMode {
    /// Remote node address as the next hop.
    Direct,
    /// IPv4-in-IPv4.
    Ipip,
    /// VXLAN (VNI [`Cluster::VNI`], UDP 4789).
    Vxlan,
    /// WireGuard (UDP 51820).
    WireGuard,
}

impl OverlayMode {
    /// Every mode.
    pub const ALL: [OverlayMode; 4] = [
        OverlayMode::Direct,
        OverlayMode::Ipip,
        OverlayMode::Vxlan,
        OverlayMode::WireGuard,
    ];

    /// The spec's name of the mode.
    pub fn as_str(&self) -> &'static str {
        match self {
            OverlayMode::Direct => "direct",
            OverlayMode::Ipip => "ipip",
            OverlayMode::Vxlan => "vxlan",
            OverlayMode::WireGuard => "wireguard",
        }
    }

    /// Encapsulation overhead in bytes (IPv4 outer).
    pub fn overhead(&self) -> u32 {
        match self {
            OverlayMode::Direct => 0,
            OverlayMode::Ipip => 20,
            OverlayMode::Vxlan => 50,
            OverlayMode::WireGuard => 60,
        }
    }
}

impl std::str::FromStr for OverlayMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        OverlayMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown mode {s:?} (direct, ipip, vxlan, wireguard)"))
    }
}

/// A WireGuard key pair (base64, as `wg genkey` / `wg pubkey` print them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgKeys {
    /// Private key.
    pub private: String,
    /// Public key.
    pub public: String,
}

impl WgKeys {
    /// A fresh random key pair.
    pub fn generate() -> Result<WgKeys> {
        let mut k = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut k))
            .map_err(|e| Error::io("reading /dev/urandom", e))?;
        k[0] &= 248;
        k[31] &= 127;
        k[31] |= 64;
        let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(k));
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(WgKeys {
            private: b64.encode(k),
            public: b64.encode(public.as_bytes()),
        })
    }
}

/// A peer of the cluster that is not a ferroplane node (listed in every node's spec).
#[derive(Debug, Clone)]
pub struct ExternalPeer {
    /// Name in the spec.
    pub name: String,
    /// Its address on the fabric.
    pub address: Ipv4Addr,
    /// Its pod CIDR (`10.244.9.0/24`).
    pub pod_cidr: String,
    /// Mode toward it (default: the cluster's).
    pub mode: Option<OverlayMode>,
    /// Its VTEP MAC (VXLAN).
    pub vtep_mac: Option<String>,
    /// Its WireGuard public key.
    pub public_key: Option<String>,
}

/// BGP between the nodes of a [`Cluster`] (set [`Cluster::bgp`] before [`Cluster::start`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterBgp {
    /// The AS of every node (iBGP full mesh).
    pub local_as: u32,
    /// List the other nodes without `podCIDR` (learnt over BGP).
    pub omit_pod_cidrs: bool,
    /// Hold time the nodes propose (seconds).
    pub hold_time: u16,
    /// Graceful restart (peers keep a stopped node's routes for 120 s).
    pub graceful_restart: bool,
}

impl Default for ClusterBgp {
    fn default() -> Self {
        ClusterBgp {
            local_as: 64512,
            omit_pod_cidrs: true,
            hold_time: 9,
            graceful_restart: true,
        }
    }
}

/// One ferroplane node of a [`Cluster`].
#[derive(Debug)]
pub struct ClusterNode {
    /// `node-1`, `node-2`, ...
    pub name: String,
    /// 1-based index.
    pub index: u8,
    /// The node's address on the fabric (`192.168.200.10 + index`).
    pub address: Ipv4Addr,
    /// Its pod CIDR (`10.244.<index>.0/24`).
    pub pod_cidr: String,
    /// Its pods (`10.244.<index>.10 + j`).
    pub pods: Vec<Pod>,
    /// The node's namespace (uplink [`Cluster::UPLINK_IF`]).
    pub ns: Netns,
    /// Its VTEP MAC.
    pub vtep_mac: String,
    /// Its WireGuard keys (the private one is written to `key_file`).
    pub wg: WgKeys,
    /// The private key file the agent reads.
    pub key_file: PathBuf,
    /// The agent spec file.
    pub spec_path: PathBuf,
    /// The agent API socket.
    pub api_socket: PathBuf,
    /// The agent log.
    pub log_path: PathBuf,
    /// Per-node `podMTU` override (for PMTU tests).
    pub pod_mtu: Option<u32>,
    /// YAML appended to the node's spec (top-level sections: services, ...).
    pub extra_yaml: String,
}

/// N nodes on a fabric bridge, each with its own agent. See the module docs.
#[derive(Debug)]
pub struct Cluster {
    agents: Vec<AgentGuard>,
    /// The nodes, `nodes[0]` is `node-1`.
    pub nodes: Vec<ClusterNode>,
    /// Extra namespaces plugged into the fabric by the test.
    pub extra: Vec<Netns>,
    /// The fabric namespace (bridge [`Cluster::BRIDGE`]).
    pub fabric: Netns,
    /// The mode toward every node.
    pub mode: OverlayMode,
    /// BGP between the nodes (none by default).
    pub bgp: Option<ClusterBgp>,
    external: Vec<ExternalPeer>,
    /// Extra arguments for every agent (see [`Cluster::set_agent_args`]).
    agent_args: Vec<String>,
    dir: TempDir,
}

impl Cluster {
    /// The fabric bridge.
    pub const BRIDGE: &'static str = "br0";
    /// The bridge's own address.
    pub const FABRIC_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 1);
    /// Prefix length of the fabric.
    pub const FABRIC_PREFIX_LEN: u8 = 24;
    /// The uplink inside each node.
    pub const UPLINK_IF: &'static str = "up0";
    /// The interface name inside each pod.
    pub const POD_IF: &'static str = "eth0";
    /// VXLAN VNI of the cluster.
    pub const VNI: u32 = 42;
    /// MTU of the fabric links.
    pub const MTU: u32 = 1500;

    /// Address of node `index` (1-based).
    pub fn node_ip(index: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 200, 10 + index)
    }

    /// Builds `nodes` node namespaces with `pods` pods each on a fabric bridge, in `mode`.
    /// Agents are not started yet ([`Cluster::start`]).
    pub fn new(nodes: u8, pods: u8, mode: OverlayMode) -> Result<Cluster> {
        if !(1..=50).contains(&nodes) || pods > 100 {
            return Err(Error::Setup(format!(
                "cluster of {nodes} nodes with {pods} pods each: at most 50 nodes, 100 pods"
            )));
        }
        let dir = TempDir::new("cluster")?;
        let fabric = Netns::new("fabric")?;
        let mut cluster = Cluster {
            agents: Vec::new(),
            nodes: Vec::new(),
            extra: Vec::new(),
            fabric,
            mode,
            bgp: None,
            external: Vec::new(),
            agent_args: Vec::new(),
            dir,
        };
        let f = &cluster.fabric;
        f.set_sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        f.ip(&["link", "add", Self::BRIDGE, "type", "bridge"])?;
        f.set_up(Self::BRIDGE)?;
        f.add_addr(
            Self::BRIDGE,
            &format!("{}/{}", Self::FABRIC_IP, Self::FABRIC_PREFIX_LEN),
        )?;
        for i in 1..=nodes {
            let name = format!("node-{i}");
            let ns = Netns::new(&format!("n{i}"))?;
            ns.set_sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.set_sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
            // As on every Kubernetes node: the kernel forwards; the dataplane fails closed.
            let (key, value) = crate::topology::NODE_IP_FORWARD;
            ns.set_sysctl(key, value)?;
            let port = format!("f{i}");
            link_veth(&ns, Self::UPLINK_IF, &cluster.fabric, &port)?;
            cluster
                .fabric
                .ip(&["link", "set", &port, "master", Self::BRIDGE])?;
            // The bridge port's receive path in NAPI mode (GRO on) takes frames XDP on the
            // node's uplink redirects (the flow cache while an agent restarts), as a NIC does.
            // Its send side puts full checksums on the frames it hands the node, as a wire does:
            // with TX checksum offload on, what GRO merged here and the bridge re-segments
            // reaches the node with only the pseudo-header sum in the TCP checksum field
            // (CHECKSUM_PARTIAL), which XDP cannot see; forwarded as it is (the fast path, or
            // the engine), the receiving pod drops it (TcpInCsumErrors).
            cluster
                .fabric
                .exec_ok(&["ethtool", "-K", &port, "gro", "on", "tx", "off"])?;
            // Frames the node's kernel sends (WireGuard timers, ARP) carry full checksums,
            // as on a real wire: the receiving engine cannot see offload state.
            ns.exec_ok(&["ethtool", "-K", Self::UPLINK_IF, "tx", "off"])?;
            let address = Self::node_ip(i);
            ns.add_addr(
                Self::UPLINK_IF,
                &format!("{address}/{}", Self::FABRIC_PREFIX_LEN),
            )?;
            let mut pod_list = Vec::new();
            for j in 0..pods {
                let pname = format!("pod{j}");
                pod_list.push(Pod {
                    ip: Ipv4Addr::new(10, 244, i, 10 + j),
                    ns: Netns::new(&format!("n{i}-{pname}"))?,
                    name: pname,
                });
            }
            let ndir = cluster.dir.path().join(&name);
            std::fs::create_dir_all(&ndir)
                .map_err(|e| Error::io(format!("creating {}", ndir.display()), e))?;
            let wg = WgKeys::generate()?;
            let key_file = ndir.join("wireguard.key");
            let o = address.octets();
            cluster.nodes.push(ClusterNode {
                name,
                index: i,
                address,
                pod_cidr: format!("10.244.{i}.0/24"),
                pods: pod_list,
                ns,
                vtep_mac: format!("02:fe:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]),
                wg,
                key_file,
                spec_path: ndir.join("node.yaml"),
                api_socket: ndir.join("api.sock"),
                log_path: ndir.join("agent.log"),
                pod_mtu: None,
                extra_yaml: String::new(),
            });
        }
        Ok(cluster)
    }

    /// Extra arguments for every agent [`Cluster::start`] starts (e.g. `--fast-path on`).
    pub fn set_agent_args(&mut self, args: &[&str]) {
        self.agent_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Lists a non-ferroplane peer in every node's spec (call before [`Cluster::start`]).
    pub fn add_external_peer(&mut self, peer: ExternalPeer) {
        self.external.push(peer);
    }

    /// Plugs `ns` into the fabric bridge: veth `ifname` in `ns` (port `x<n>` on the bridge)
    /// with `address/24`, TX checksum offload off at both ends. The namespace is kept (and deleted) with
    /// the cluster.
    pub fn attach(&mut self, ns: Netns, ifname: &str, address: Ipv4Addr) -> Result<&Netns> {
        let port = format!("x{}", self.extra.len());
        link_veth(&ns, ifname, &self.fabric, &port)?;
        self.fabric
            .ip(&["link", "set", &port, "master", Self::BRIDGE])?;
        self.fabric
            .exec_ok(&["ethtool", "-K", &port, "tx", "off"])?;
        ns.exec_ok(&["ethtool", "-K", ifname, "tx", "off"])?;
        ns.add_addr(ifname, &format!("{address}/{}", Self::FABRIC_PREFIX_LEN))?;
        self.extra.push(ns);
        Ok(self.extra.last().unwrap_or_else(|| unreachable!()))
    }

    /// The spec of node `i` (0-based).
    pub fn spec_yaml(&self, i: usize) -> String {
        let n = &self.nodes[i];
        let mut y = String::from("# written by ferroplane-e2e (cluster)\nnode:\n");
        let _ = writeln!(y, "  name: {}", n.name);
        let _ = writeln!(y, "  uplink: {}", Self::UPLINK_IF);
        let _ = writeln!(y, "  address: {}/{}", n.address, Self::FABRIC_PREFIX_LEN);
        let _ = writeln!(y, "  podCIDR: {}", n.pod_cidr);
        if let Some(m) = n.pod_mtu {
            let _ = writeln!(y, "  podMTU: {m}");
        }
        let _ = writeln!(y, "  xdpMode: auto");
        if n.pods.is_empty() {
            y.push_str("pods: []\n");
        } else {
            y.push_str("pods:\n");
            for pod in &n.pods {
                let _ = writeln!(y, "  - name: {}", pod.name);
                let _ = writeln!(y, "    netns: {}", pod.ns.name());
                let _ = writeln!(y, "    ip: {}", pod.ip);
                let _ = writeln!(y, "    interface: {}", Self::POD_IF);
            }
        }
        y.push_str("cluster:\n");
        let _ = writeln!(y, "  mode: {}", self.mode.as_str());
        let _ = writeln!(y, "  vtepMAC: {}", n.vtep_mac);
        let _ = writeln!(y, "  vxlan:\n    vni: {}\n    port: 4789", Self::VNI);
        let _ = writeln!(
            y,
            "  wireguard:\n    port: 51820\n    privateKeyFile: {}",
            n.key_file.display()
        );
        y.push_str("  nodes:\n");
        for (j, o) in self.nodes.iter().enumerate() {
            if j == i {
                continue;
            }
            let _ = writeln!(y, "    - name: {}", o.name);
            let _ = writeln!(y, "      address: {}", o.address);
            if !self.bgp.as_ref().is_some_and(|b| b.omit_pod_cidrs) {
                let _ = writeln!(y, "      podCIDR: {}", o.pod_cidr);
            }
            let _ = writeln!(y, "      vtepMAC: {}", o.vtep_mac);
            let _ = writeln!(y, "      publicKey: {}", o.wg.public);
        }
        for p in &self.external {
            let _ = writeln!(y, "    - name: {}", p.name);
            let _ = writeln!(y, "      address: {}", p.address);
            let _ = writeln!(y, "      podCIDR: {}", p.pod_cidr);
            if let Some(m) = p.mode {
                let _ = writeln!(y, "      mode: {}", m.as_str());
            }
            if let Some(m) = &p.vtep_mac {
                let _ = writeln!(y, "      vtepMAC: {m}");
            }
            if let Some(k) = &p.public_key {
                let _ = writeln!(y, "      publicKey: {k}");
            }
        }
        if let Some(b) = &self.bgp {
            let _ = writeln!(
                y,
                "bgp:\n  localAS: {}\n  holdTime: {}\n  connectRetry: 1\n  fullMesh: true\n  gracefulRestart:\n    enabled: {}",
                b.local_as, b.hold_time, b.graceful_restart
            );
        }
        y.push_str(&n.extra_yaml);
        y
    }

    /// Writes every node's spec and private key (0600, unless the file exists) and starts
    /// every agent, waiting until each answers `ferroctl version`.
    pub fn start(&mut self, bin_dir: &Path) -> Result<()> {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            std::fs::write(&n.spec_path, self.spec_yaml(i))
                .map_err(|e| Error::io(format!("writing {}", n.spec_path.display()), e))?;
            if !n.key_file.exists() {
                use std::io::Write as _;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&n.key_file)
                    .and_then(|mut f| f.write_all(format!("{}\n", n.wg.private).as_bytes()))
                    .map_err(|e| Error::io(format!("writing {}", n.key_file.display()), e))?;
            }
        }
        for i in 0..self.nodes.len() {
            let guard = start_agent(&self.nodes[i], bin_dir, &self.agent_args)?;
            self.agents.push(guard);
        }
        Ok(())
    }

    /// The agent of node `i` (0-based); panics if the cluster was not started.
    pub fn agent(&self, i: usize) -> &AgentGuard {
        &self.agents[i]
    }

    /// Stops the agent of node `i` (0-based) now; its namespace and pods stay.
    pub fn stop_node(&self, i: usize) {
        if let Some(a) = self.agents.get(i) {
            a.stop();
        }
    }

    /// Stops every agent now (they are also stopped on drop).
    pub fn stop(&mut self) {
        self.agents.clear();
    }

    /// The cluster's temp dir (specs, logs, keys).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the temp dir after drop.
    pub fn keep_dir(&mut self) {
        self.dir.keep();
    }
}

/// Starts node `n`'s agent in its namespace and waits for its API.
fn start_agent(n: &ClusterNode, bin_dir: &Path, extra: &[String]) -> Result<AgentGuard> {
    let agent = bin_path(bin_dir, "ferroplane-agent")?;
    let ctl = bin_path(bin_dir, "ferroctl")?;
    let _ = std::fs::remove_file(&n.api_socket);
    let agent_s = agent.to_string_lossy();
    let spec_s = n.spec_path.to_string_lossy();
    let sock_s = n.api_socket.to_string_lossy();
    let mut cmd =
        n.ns.command(&[&agent_s, "--config", &spec_s, "--api-socket", &sock_s]);
    cmd.args(extra);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    cmd.args(crate::agent_env_args(&extra));
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd.env("RUST_BACKTRACE", "1");
    let log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log_path)
            .map_err(|e| Error::io(format!("opening {}", n.log_path.display()), e))
    };
    cmd.stdout(log()?).stderr(log()?);
    let child = n.ns.spawn_command(cmd)?;
    let guard = AgentGuard::from_parts(child, n.api_socket.clone(), ctl, n.log_path.clone());
    let fail = |guard: AgentGuard, reason: String| {
        guard.stop();
        Error::AgentStart {
            reason: format!("{}: {reason}", n.name),
            log_path: n.log_path.display().to_string(),
            log: tail_file(&n.log_path, 60),
        }
    };
    let start = Instant::now();
    loop {
        if !guard.is_running() {
            return Err(fail(guard, "agent exited".into()));
        }
        let last = match guard.ctl(&["version"]) {
            Ok(_) => return Ok(guard),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= AGENT_START_TIMEOUT {
            return Err(fail(
                guard,
                format!("`ferroctl version` did not answer within {AGENT_START_TIMEOUT:?}; last: {last}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
