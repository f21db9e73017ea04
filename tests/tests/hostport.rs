//! hostPort suite: the CNI `portMappings` capability served by the engine, no netfilter.
//!
//! `ferroplane-cni` is invoked as a runtime invokes it (`CNI_*` env, the network
//! configuration with `capabilities` and `runtimeConfig.portMappings` on stdin, from the node
//! namespace); the node runs with `ip_forward=1` and no iptables rule anywhere. Checked: a
//! TCP and a UDP hostPort reach the pod from the router and from another pod, with the
//! client's own address (no SNAT), from the node itself (the pod sees the node's address)
//! and from the pod itself (hairpin); `show hostports`; a conflicting ADD fails with code 103
//! and reserves nothing, hostPort 0 with code 7; the mapping survives an agent restart
//! (restored from the IPAM record); after DEL the port is the node kernel's again
//! (connection refused). In Kubernetes mode a Pod's `hostPort` is served although the
//! runtime passed no `portMappings`, and taken from other pods.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroplane_e2e::apiserver::ApiServer;
use ferroplane_e2e::cni::{ferroplane_conf, invoke, CniCall, CniEnv};
use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, bin_path, require_root, Netns};
use serde_json::Value;

const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_millis(1500);
const NETWORK: &str = "ferroplane";
const TCP_HOST_PORT: u16 = 8080;
const UDP_HOST_PORT: u16 = 5353;

/// Servers on threads inside a namespace, answering "PEER" (the address they saw);
/// stopped on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn new() -> Self {
        Servers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    fn spawn(&mut self, ns: &Netns, body: impl FnOnce(Arc<AtomicBool>) + Send + 'static) {
        let (path, stop) = (ns.path().to_path_buf(), self.stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let _ = ready_tx.send(());
            body(stop);
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server thread");
    }

    /// TCP on `port`: every line is answered with the peer's address.
    fn tcp(&mut self, ns: &Netns, port: u16) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.spawn(ns, move |stop| {
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(());
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                            let Ok(mut w) = s.try_clone() else {
                                return;
                            };
                            for line in BufReader::new(s).lines() {
                                if line.is_err()
                                    || w.write_all(format!("{peer}\n").as_bytes()).is_err()
                                {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("tcp bound");
    }

    /// UDP on `port`: every datagram is answered with the peer's address.
    fn udp(&mut self, ns: &Netns, port: u16) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.spawn(ns, move |stop| {
            let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let _ = tx.send(());
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(peer.to_string().as_bytes(), peer);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("udp bound");
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects, asks once: the address the server saw (without its port).
fn tcp_once(dst: SocketAddrV4) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&dst.into(), IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"hi\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("connection closed"));
    }
    Ok(host(line.trim()))
}

fn udp_once(dst: SocketAddrV4) -> std::io::Result<String> {
    let s = UdpSocket::bind(("0.0.0.0", 0))?;
    s.connect(dst)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.send(b"hi")?;
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf)?;
    Ok(host(String::from_utf8_lossy(&buf[..n]).trim()))
}

fn host(peer: &str) -> String {
    peer.split(':').next().unwrap_or(peer).to_string()
}

/// The first success within `within` (retries cover the agent publishing the mapping).
fn eventually<T>(
    within: Duration,
    mut f: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= within => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One node, the agent serving the CNI socket, the plugin binary.
struct Node {
    topo: Topology,
    agent: Option<AgentGuard>,
    plugin: PathBuf,
    socket: PathBuf,
    state: PathBuf,
}

impl Node {
    fn start() -> Node {
        let topo = Topology::single_node(0).expect("topology");
        let socket = topo.dir().join("cni.sock");
        let state = topo.dir().join("state");
        let plugin = bin_path(&bin_dir(), "ferroplane-cni").expect("ferroplane-cni built");
        let mut node = Node {
            topo,
            agent: None,
            plugin,
            socket,
            state,
        };
        node.start_agent();
        node
    }

    fn start_agent(&mut self) {
        let (socket, state) = (
            self.socket.display().to_string(),
            self.state.display().to_string(),
        );
        let agent = self
            .topo
            .start_agent_with(
                &bin_dir(),
                &["--cni-socket", &socket, "--state-dir", &state],
            )
            .expect("agent start");
        self.agent = Some(agent);
        let start = Instant::now();
        while !self
            .call(&CniEnv::command_only("STATUS"), &self.conf(&[]))
            .ok()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "CNI socket not ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn agent(&self) -> &AgentGuard {
        self.agent.as_ref().expect("agent running")
    }

    /// The network configuration as a runtime passes it to a plugin that declares the
    /// `portMappings` capability: `capabilities` kept, `runtimeConfig.portMappings` filled in.
    fn conf(&self, mappings: &[Value]) -> Value {
        let mut c = ferroplane_conf(NETWORK, &self.socket);
        c["capabilities"] = serde_json::json!({"portMappings": true});
        c["runtimeConfig"] = serde_json::json!({ "portMappings": mappings });
        c
    }

    fn call(&self, env: &CniEnv, conf: &Value) -> CniCall {
        invoke(
            &self.topo.node,
            &self.plugin,
            env,
            &conf.to_string(),
            CALL_TIMEOUT,
        )
        .expect("plugin ran")
    }

    fn add(&self, id: &str, ns: &Path, mappings: &[Value]) -> CniCall {
        self.call(&CniEnv::new("ADD", id, ns), &self.conf(mappings))
    }

    fn del(&self, id: &str, ns: &Path, mappings: &[Value]) -> CniCall {
        self.call(&CniEnv::new("DEL", id, ns), &self.conf(mappings))
    }

    fn reservations(&self) -> usize {
        std::fs::read_dir(self.state.join("ipam"))
            .expect("IPAM dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_ok())
            .count()
    }

    fn hostports(&self) -> Vec<Value> {
        let v = self
            .agent()
            .ctl_json(&["show", "hostports"])
            .expect("show hostports");
        v.as_array().cloned().unwrap_or_default()
    }
}

fn mapping(host_port: u16, container_port: u16, protocol: &str) -> Value {
    serde_json::json!({
        "hostPort": host_port, "containerPort": container_port, "protocol": protocol, "hostIP": ""
    })
}

#[test]
fn host_ports_through_the_engine() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let mut node = Node::start();
    let node_ip = Topology::NODE_IP;
    let router_ip = Topology::ROUTER_IP;
    let web_ns = Netns::new("hpweb").expect("netns");
    let client_ns = Netns::new("hpcli").expect("netns");
    let other_ns = Netns::new("hpother").expect("netns");
    let web_maps = [
        mapping(TCP_HOST_PORT, 80, "tcp"),
        mapping(UDP_HOST_PORT, 53, "udp"),
    ];

    // ADD with portMappings (TCP and UDP), as a runtime passes them.
    let web = node.add("web", web_ns.path(), &web_maps);
    assert!(web.ok(), "ADD web: {web:?}");
    let web_ip = web.ip().expect("web address");
    let client = node.add("client", client_ns.path(), &[]);
    assert!(client.ok(), "ADD client: {client:?}");
    let client_ip = client.ip().expect("client address");
    let mut servers = Servers::new();
    servers.tcp(&web_ns, 80);
    servers.udp(&web_ns, 53);

    let tcp_dst = SocketAddrV4::new(node_ip, TCP_HOST_PORT);
    let udp_dst = SocketAddrV4::new(node_ip, UDP_HOST_PORT);
    // From outside (the router): the pod sees the router's own address.
    let seen = node
        .topo
        .router
        .run(move || eventually(Duration::from_secs(5), || tcp_once(tcp_dst)))
        .expect("router ns");
    assert_eq!(
        seen.as_ref().map(String::as_str).ok(),
        Some(router_ip.to_string().as_str()),
        "router -> node:{TCP_HOST_PORT}/tcp: {seen:?}\n{}",
        node.agent().log_tail(30)
    );
    let seen = node
        .topo
        .router
        .run(move || eventually(Duration::from_secs(3), || udp_once(udp_dst)))
        .expect("router ns");
    assert_eq!(
        seen.ok(),
        Some(router_ip.to_string()),
        "router -> node:{UDP_HOST_PORT}/udp"
    );
    // From another pod on the node: the pod sees the client pod's address.
    let seen = client_ns
        .run(move || eventually(Duration::from_secs(3), || tcp_once(tcp_dst)))
        .expect("client ns");
    assert_eq!(
        seen.as_ref().ok(),
        Some(&client_ip.to_string()),
        "pod -> node:{TCP_HOST_PORT}/tcp: {seen:?}"
    );
    let seen = client_ns
        .run(move || eventually(Duration::from_secs(3), || udp_once(udp_dst)))
        .expect("client ns");
    assert_eq!(
        seen.ok(),
        Some(client_ip.to_string()),
        "pod -> node:{UDP_HOST_PORT}/udp"
    );
    // Hairpin: the pod to its own hostPort (SNATed to the node's address, its answer comes
    // back through the SNAT range).
    let seen = web_ns
        .run(move || eventually(Duration::from_secs(3), || tcp_once(tcp_dst)))
        .expect("web ns");
    assert_eq!(
        seen.as_ref().ok(),
        Some(&node_ip.to_string()),
        "pod -> its own hostPort: {seen:?}"
    );
    // From the node itself (the node's own traffic to its node ports is routed into the
    // engine, which re-syncs its rules every 250 ms): the pod sees the node's address.
    for (what, dst, udp) in [("tcp", tcp_dst, false), ("udp", udp_dst, true)] {
        let seen = node
            .topo
            .node
            .run(move || {
                eventually(Duration::from_secs(3), || {
                    if udp {
                        udp_once(dst)
                    } else {
                        tcp_once(dst)
                    }
                })
            })
            .expect("node ns");
        assert_eq!(
            seen.as_ref().ok(),
            Some(&node_ip.to_string()),
            "node -> node:{}/{what}: {seen:?}",
            dst.port()
        );
    }

    // show hostports: both, served, from CNI, to the pod.
    let hp = node.hostports();
    assert_eq!(hp.len(), 2, "{hp:?}");
    for h in &hp {
        assert_eq!(h["served"], true, "{h}");
        assert_eq!(h["source"], "cni", "{h}");
        assert_eq!(h["pod_ip"], web_ip.to_string(), "{h}");
        assert_eq!(h["pod"], "default/pod-web", "{h}");
    }
    assert!(hp.iter().any(|h| h["host_port"] == TCP_HOST_PORT
        && h["protocol"] == "tcp"
        && h["container_port"] == 80));
    assert!(hp.iter().any(|h| h["host_port"] == UDP_HOST_PORT
        && h["protocol"] == "udp"
        && h["container_port"] == 53));

    // A second pod on the same hostPort: code 103, nothing reserved, no interface.
    let before = node.reservations();
    let clash = node.add(
        "other",
        other_ns.path(),
        &[mapping(TCP_HOST_PORT, 9000, "tcp")],
    );
    assert!(!clash.ok(), "{clash:?}");
    assert_eq!(clash.code(), Some(103), "{clash:?}");
    let msg = clash
        .json
        .as_ref()
        .and_then(|j| j["msg"].as_str())
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains("8080/tcp") && msg.contains("default/pod-web"),
        "{msg}"
    );
    // hostPort 0: an invalid configuration (7).
    let zero = node.add("other", other_ns.path(), &[mapping(0, 9000, "tcp")]);
    assert_eq!(zero.code(), Some(7), "{zero:?}");
    assert_eq!(
        node.reservations(),
        before,
        "a refused ADD reserved an address"
    );
    let links = other_ns.exec(&["ip", "-o", "link"]).expect("ip link");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("eth0"),
        "refused ADD plumbed eth0"
    );
    // The same port over UDP is another hostPort: allowed.
    let udp_other = node.add(
        "other",
        other_ns.path(),
        &[mapping(TCP_HOST_PORT, 9000, "udp")],
    );
    assert!(udp_other.ok(), "{udp_other:?}");
    assert!(node.del("other", other_ns.path(), &[]).ok());

    // Agent restart: the mapping comes back from the IPAM record.
    if let Some(a) = node.agent.take() {
        a.stop();
    }
    node.start_agent();
    let seen = node
        .topo
        .router
        .run(move || eventually(Duration::from_secs(5), || tcp_once(tcp_dst)))
        .expect("router ns");
    assert_eq!(
        seen.ok(),
        Some(router_ip.to_string()),
        "after restart: router -> node:{TCP_HOST_PORT}/tcp"
    );
    let seen = node
        .topo
        .router
        .run(move || eventually(Duration::from_secs(3), || udp_once(udp_dst)))
        .expect("router ns");
    assert_eq!(seen.ok(), Some(router_ip.to_string()), "after restart: UDP");
    assert_eq!(node.hostports().len(), 2);
    // Still taken after the restart.
    let clash = node.add(
        "other",
        other_ns.path(),
        &[mapping(UDP_HOST_PORT, 53, "udp")],
    );
    assert_eq!(clash.code(), Some(103), "{clash:?}");

    // DEL: the port is the node kernel's again (nothing listens: refused; UDP: no answer).
    let del = node.del("web", web_ns.path(), &web_maps);
    assert!(del.ok(), "DEL web: {del:?}");
    assert!(node.hostports().is_empty());
    let after = node
        .topo
        .router
        .run(move || tcp_once(tcp_dst))
        .expect("router ns");
    assert!(
        after.is_err(),
        "router -> node:{TCP_HOST_PORT} after DEL: {after:?}"
    );
    let after = node
        .topo
        .router
        .run(move || udp_once(udp_dst))
        .expect("router ns");
    assert!(
        after.is_err(),
        "router -> node:{UDP_HOST_PORT}/udp after DEL: {after:?}"
    );
    // The port is free for another pod.
    let again = node.add(
        "other",
        other_ns.path(),
        &[mapping(TCP_HOST_PORT, 80, "tcp")],
    );
    assert!(again.ok(), "{again:?}");
    assert!(node.del("other", other_ns.path(), &[]).ok());
    assert!(node.del("client", client_ns.path(), &[]).ok());
    drop(servers);
    println!("hostport suite: {:.1} s", t0.elapsed().as_secs_f64());
}

/// Kubernetes mode: the runtime passes no `portMappings`; the Pod's `hostPort` (from the API
/// server) is served all the same, to the pod CNI plumbed, and refused to another pod.
#[test]
fn pod_spec_host_ports_in_kubernetes_mode() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(0).expect("topology");
    let srv = ApiServer::start_in(&topo.node).expect("api server in the node namespace");
    srv.apply(serde_json::json!({"kind": "Namespace", "metadata": {"name": "default"}}));
    srv.apply(serde_json::json!({
        "kind": "Node",
        "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": Topology::NODE_IP.to_string()}]}
    }));
    let kubeconfig = topo.dir().join("kubeconfig");
    std::fs::write(&kubeconfig, srv.kubeconfig()).expect("kubeconfig");
    topo.write_spec(
        "nodeName: node-1\nuplink: up0\ngateway: 192.168.100.1\nxdpMode: auto\noverlay: direct\n",
    )
    .expect("agent config");
    let socket = topo.dir().join("cni.sock");
    let state = topo.dir().join("state");
    let agent = topo
        .start_agent_with(
            &bin_dir(),
            &[
                "--k8s",
                "--kubeconfig",
                kubeconfig.to_str().expect("path"),
                "--cni-socket",
                socket.to_str().expect("path"),
                "--state-dir",
                state.to_str().expect("path"),
            ],
        )
        .expect("agent in Kubernetes mode");
    let plugin = bin_path(&bin_dir(), "ferroplane-cni").expect("ferroplane-cni");
    let call = |env: &CniEnv, conf: &Value| {
        invoke(&topo.node, &plugin, env, &conf.to_string(), CALL_TIMEOUT).expect("plugin")
    };
    // A runtime that passes no portMappings (no runtimeConfig at all).
    let conf = ferroplane_conf(NETWORK, &socket);
    let web_ns = Netns::new("hpk8sweb").expect("netns");
    let start = Instant::now();
    let web = loop {
        let r = call(&CniEnv::new("ADD", "kweb", web_ns.path()), &conf);
        if r.ok() || start.elapsed() > Duration::from_secs(20) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(web.ok(), "ADD: {web:?}\n{}", agent.log_tail(30));
    let web_ip = web.ip().expect("address");
    let mut servers = Servers::new();
    servers.tcp(&web_ns, 80);
    // The Pod as the API server has it (CNI_ARGS named it default/pod-kweb).
    srv.apply(serde_json::json!({
        "kind": "Pod",
        "metadata": {"name": "pod-kweb", "namespace": "default"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x",
                 "ports": [{"containerPort": 80, "hostPort": 8081, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": web_ip.to_string(), "podIPs": [{"ip": web_ip.to_string()}]}
    }));
    let dst = SocketAddrV4::new(Topology::NODE_IP, 8081);
    let seen = topo
        .router
        .run(move || eventually(Duration::from_secs(15), || tcp_once(dst)))
        .expect("router ns");
    assert_eq!(
        seen.as_ref().ok(),
        Some(&Topology::ROUTER_IP.to_string()),
        "router -> node:8081 (Pod hostPort): {seen:?}\n{}",
        agent.log_tail(30)
    );
    let hp = agent
        .ctl_json(&["show", "hostports"])
        .expect("show hostports");
    assert_eq!(hp.as_array().map(Vec::len), Some(1), "{hp}");
    assert_eq!(hp[0]["source"], "kubernetes", "{hp}");
    assert_eq!(hp[0]["served"], true, "{hp}");
    // Another pod asking the runtime for the same hostPort: refused, 103.
    let other_ns = Netns::new("hpk8sother").expect("netns");
    let mut with = conf.clone();
    with["runtimeConfig"] = serde_json::json!({"portMappings": [mapping(8081, 9000, "tcp")]});
    let clash = call(&CniEnv::new("ADD", "kother", other_ns.path()), &with);
    assert_eq!(clash.code(), Some(103), "{clash:?}");
    // The Pod gone: the hostPort is released (the node's kernel refuses the connection).
    assert!(srv.delete("Pod", "default", "pod-kweb"));
    let start = Instant::now();
    loop {
        let r = topo.router.run(move || tcp_once(dst)).expect("router ns");
        if r.is_err() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still served after the Pod was deleted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(call(&CniEnv::new("DEL", "kweb", web_ns.path()), &conf).ok());
    drop(servers);
}
