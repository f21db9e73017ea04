//! Services suite: ClusterIP, NodePort, LoadBalancer and external IPs through
//! the real agent (XDP + AF_XDP + engine), with backends that answer with
//! their own name and the client address they saw.
//!
//! Topology: the foundation's single node (router — node — pods) plus a
//! "remote" namespace behind the router standing in for a pod on another node
//! (10.244.2.10, endpoint `nodeName: node-2`); and a three-node cluster per
//! overlay mode (direct, VXLAN) for the masquerade matrix; a two-node cluster
//! per mode for the node's own traffic to services. Every spec has
//! masquerade on. Ports used by this suite: services 80/53, targets
//! 8080/8081/5353, node ports 30080-30098, health check node ports
//! 32100-32101, router server 7000.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroplane_e2e::cluster::{Cluster, OverlayMode};
use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, link_veth, require_root, Netns};
use serde_json::Value;

const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
const IO_TIMEOUT: Duration = Duration::from_millis(1500);

/// Backend servers running on threads inside namespaces; stopped on drop.
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

    fn enter(path: &PathBuf) {
        let f = std::fs::File::open(path).expect("open netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }

    /// TCP: every line read is answered with "NAME PEER\n".
    fn tcp(&mut self, ns: &Netns, name: &str, port: u16) {
        let (path, name, stop) = (ns.path().to_path_buf(), name.to_string(), self.stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            Self::enter(&path);
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        let name = name.clone();
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                            let mut w = match s.try_clone() {
                                Ok(w) => w,
                                Err(_) => return,
                            };
                            for line in BufReader::new(s).lines() {
                                if line.is_err() {
                                    break;
                                }
                                if w.write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server ready");
    }

    /// UDP: every datagram is answered with "NAME PEER".
    fn udp(&mut self, ns: &Netns, name: &str, port: u16) {
        let (path, name, stop) = (ns.path().to_path_buf(), name.to_string(), self.stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            Self::enter(&path);
            let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let _ = ready_tx.send(());
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{name} {peer}").as_bytes(), peer);
                }
            }
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server ready");
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

/// A TCP connection from `src_port` (0: any) that closes with RST (no TIME_WAIT).
fn connect(dst: SocketAddrV4, src_port: u16) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(
        &fd,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(1, 500_000),
    )?;
    socket::setsockopt(
        &fd,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    if src_port != 0 {
        socket::bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, src_port))?;
    }
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// One question on a connection: the answer "NAME PEER".
fn ask(s: &mut TcpStream) -> std::io::Result<String> {
    s.write_all(b"hi\n")?;
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone()?);
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("connection closed"));
    }
    Ok(line.trim().to_string())
}

/// Connect, ask once, close: (backend name, address it saw).
fn tcp_once(dst: SocketAddrV4, src_port: u16) -> std::io::Result<(String, String)> {
    let mut s = connect(dst, src_port)?;
    let a = ask(&mut s)?;
    split(&a)
}

fn split(a: &str) -> std::io::Result<(String, String)> {
    let (n, p) = a
        .split_once(' ')
        .ok_or_else(|| std::io::Error::other(format!("bad answer {a:?}")))?;
    Ok((n.to_string(), p.to_string()))
}

fn udp_once(dst: SocketAddrV4) -> std::io::Result<(String, String)> {
    let s = UdpSocket::bind(("0.0.0.0", 0))?;
    s.connect(dst)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.send(b"hi")?;
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf)?;
    split(&String::from_utf8_lossy(&buf[..n]))
}

fn addr(ip: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip.parse().expect("ip"), port)
}

fn host(peer: &str) -> &str {
    peer.split(':').next().unwrap_or(peer)
}

fn error_count(agent: &AgentGuard, node: &str, reason: &str) -> u64 {
    let v = agent
        .ctl_json(&["show", "errors", "--all"])
        .expect("show errors");
    v.as_array()
        .expect("errors array")
        .iter()
        .find(|e| e["node"] == node && e["reason"] == reason)
        .unwrap_or_else(|| panic!("no error counter {node}: {reason} in {v}"))["count"]
        .as_u64()
        .expect("count")
}

/// A service (YAML list item) and its EndpointSlice(s).
struct Svc {
    yaml: String,
    slices: String,
}

fn endpoint(ip: Ipv4Addr, node: &str, target: &str) -> String {
    format!(
        "      - addresses: [{ip}]\n        conditions: {{ ready: true, serving: true, terminating: false }}\n        nodeName: {node}\n        targetRef: {{ kind: Pod, namespace: default, name: {target} }}\n"
    )
}

fn slice(svc: &str, suffix: &str, ports: &str, endpoints: &[String]) -> String {
    format!(
        "  - metadata: {{ name: {svc}-{suffix}, namespace: default, labels: {{ kubernetes.io/service-name: {svc} }} }}\n    addressType: IPv4\n    ports: {ports}\n    endpoints:\n{}",
        endpoints.concat()
    )
}

struct Rig {
    topo: Topology,
    agent: Option<AgentGuard>,
    _remote: Netns,
    _servers: Servers,
}

impl Rig {
    /// Node with `pods` pods, the remote namespace, and servers: every pod i>=1 and the
    /// remote one serve TCP 8080, 8081 and UDP 5353.
    fn new(pods: usize) -> Rig {
        let topo = Topology::single_node(pods).expect("topology");
        let remote = Netns::new("remote").expect("remote ns");
        link_veth(&topo.router, "rtr9", &remote, "eth0").expect("veth");
        topo.router
            .add_addr("rtr9", "192.168.101.1/24")
            .expect("addr");
        remote.add_addr("eth0", "192.168.101.2/24").expect("addr");
        remote
            .add_addr("lo", &format!("{REMOTE_POD}/32"))
            .expect("addr");
        remote.add_route("default", "192.168.101.1").expect("route");
        let _ = remote.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        let _ = topo.router.exec(&["ethtool", "-K", "rtr9", "tx", "off"]);
        topo.router
            .add_route("10.244.2.0/24", "192.168.101.2")
            .expect("route");
        topo.router
            .add_route("203.0.113.0/24", &Topology::NODE_IP.to_string())
            .expect("route");
        topo.router
            .set_sysctl("net.ipv4.ip_forward", "1")
            .expect("forwarding");
        let mut servers = Servers::new();
        for p in topo.pods.iter().skip(1) {
            servers.tcp(&p.ns, &p.name, 8080);
            servers.tcp(&p.ns, &p.name, 8081);
            servers.udp(&p.ns, &p.name, 5353);
        }
        servers.tcp(&remote, "remote", 8080);
        servers.udp(&remote, "remote", 5353);
        Rig {
            topo,
            agent: None,
            _remote: remote,
            _servers: servers,
        }
    }

    fn spec(&self, proxy: &str, services: &[Svc]) -> String {
        let mut y = self.topo.spec_yaml();
        y.push_str(proxy);
        y.push_str("services:\n");
        for s in services {
            y.push_str(&s.yaml);
        }
        y.push_str("endpointSlices:\n");
        for s in services {
            y.push_str(&s.slices);
        }
        y
    }

    fn start(&mut self, yaml: &str) {
        self.topo.write_spec(yaml).expect("spec");
        self.agent = Some(self.topo.start_agent(&bin_dir()).expect("agent start"));
    }

    fn agent(&self) -> &AgentGuard {
        self.agent.as_ref().expect("agent")
    }

    fn pod(&self, i: usize) -> &Netns {
        &self.topo.pods[i].ns
    }

    fn pod_ip(&self, i: usize) -> Ipv4Addr {
        self.topo.pods[i].ip
    }
}

/// Every spec of this suite masquerades pod traffic leaving the cluster (as the README's
/// `serviceProxy` settings do): nothing here is meant to leave the cluster from a pod but
/// the masquerade checks, and every answer must come back untranslated.
const PROXY: &str =
    "serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\n  masquerade: true\n";

fn svc_yaml(name: &str, body: &str) -> String {
    format!("  - metadata: {{ name: {name}, namespace: default }}\n    spec:\n{body}")
}

/// pods 1..=3 as endpoints of `svc`, pod 3 in its own slice with port `http` = 8081.
fn three_backends(rig: &Rig, svc: &str) -> String {
    let a = slice(
        svc,
        "a",
        "[ { name: http, protocol: TCP, port: 8080 }, { name: dns, protocol: UDP, port: 5353 } ]",
        &[
            endpoint(rig.pod_ip(1), "node-1", "pod1"),
            endpoint(rig.pod_ip(2), "node-1", "pod2"),
        ],
    );
    let b = slice(
        svc,
        "b",
        "[ { name: http, protocol: TCP, port: 8081 }, { name: dns, protocol: UDP, port: 5353 } ]",
        &[endpoint(rig.pod_ip(3), "node-1", "pod3")],
    );
    a + &b
}

#[test]
fn cluster_ip_node_port_load_balancer_and_spread() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new(4);
    let web = Svc {
        yaml: svc_yaml(
            "web",
            "      type: LoadBalancer\n      clusterIP: 10.96.0.10\n      externalIPs: [203.0.113.20]\n      ports:\n        - { name: http, protocol: TCP, port: 80, targetPort: http, nodePort: 30080 }\n        - { name: dns, protocol: UDP, port: 53, targetPort: dns, nodePort: 30053 }\n    status: { loadBalancer: { ingress: [ { ip: 203.0.113.10 } ] } }\n",
        ),
        slices: three_backends(&rig, "web"),
    };
    let yaml = rig.spec(PROXY, &[web]);
    rig.start(&yaml);
    let client = rig.pod_ip(0);
    let names = ["pod1", "pod2", "pod3"];

    // ClusterIP TCP and UDP from a pod: a backend answers, it saw the pod's address.
    let (n, peer) = rig
        .pod(0)
        .run(|| tcp_once(addr("10.96.0.10", 80), 0))
        .expect("run")
        .expect("ClusterIP TCP");
    assert!(names.contains(&n.as_str()), "{n}");
    assert_eq!(host(&peer), client.to_string(), "backend saw the client");
    let (n, peer) = rig
        .pod(0)
        .run(|| udp_once(addr("10.96.0.10", 53)))
        .expect("run")
        .expect("ClusterIP UDP");
    assert!(names.contains(&n.as_str()), "{n}");
    assert_eq!(host(&peer), client.to_string());

    // 1000 new connections spread over the 3 backends within ±20% of even.
    // Source ports are the kernel's random ephemeral ones, so each count is
    // binomial (mean 333, sd 15): ±67 is 4.5 sd, odds of a false failure
    // about 2 in 100,000 runs (±15% was 3.4 sd: 1 in 400).
    let counts: HashMap<String, u32> = rig
        .pod(0)
        .run(|| {
            let mut m = HashMap::new();
            for _ in 0..1000 {
                let (n, _) = tcp_once(addr("10.96.0.10", 80), 0).expect("connection");
                *m.entry(n).or_insert(0u32) += 1;
            }
            m
        })
        .expect("run");
    eprintln!("1000 connections: {counts:?}");
    assert_eq!(counts.values().sum::<u32>(), 1000);
    for n in names {
        let c = *counts.get(n).unwrap_or(&0);
        assert!((266..=400).contains(&c), "{n} got {c} of 1000: {counts:?}");
    }

    // From outside: NodePort, load-balancer IP, external IP (TCP), NodePort UDP.
    for (what, dst) in [
        ("NodePort", addr("192.168.100.2", 30080)),
        ("LoadBalancer IP", addr("203.0.113.10", 80)),
        ("external IP", addr("203.0.113.20", 80)),
    ] {
        let (n, peer) = rig
            .topo
            .router
            .run(move || tcp_once(dst, 0))
            .expect("run")
            .unwrap_or_else(|e| panic!("{what} {dst}: {e}"));
        assert!(names.contains(&n.as_str()), "{what}: {n}");
        assert_eq!(
            host(&peer),
            "192.168.100.1",
            "{what}: local backend sees the client"
        );
    }
    let (n, _) = rig
        .topo
        .router
        .run(|| udp_once(addr("192.168.100.2", 30053)))
        .expect("run")
        .expect("NodePort UDP");
    assert!(names.contains(&n.as_str()));

    // The host's own traffic is untouched: ping the node.
    ferroplane_e2e::ping(&rig.topo.router, Topology::NODE_IP, 1).expect("ping node");

    // ferroctl views.
    let svcs = rig
        .agent()
        .ctl_json(&["show", "services"])
        .expect("services");
    let http = svcs
        .as_array()
        .expect("array")
        .iter()
        .find(|s| s["port_name"] == "http")
        .expect("http port")
        .clone();
    let backends: BTreeMap<String, u64> = http["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or("").to_string(),
                b["maglev_slots"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        backends.contains_key(&format!("{}:8081", rig.pod_ip(3))),
        "named port resolved per endpoint: {backends:?}"
    );
    assert_eq!(
        backends.values().sum::<u64>(),
        http["maglev_size"].as_u64().unwrap_or(0)
    );
    let table = rig.agent().ctl(&["show", "services"]).expect("table");
    assert!(
        table.contains("default/web") && table.contains("node-port 30080"),
        "{table}"
    );
    let sessions = rig
        .agent()
        .ctl_json(&[
            "show",
            "sessions",
            "--addr",
            &client.to_string(),
            "--proto",
            "tcp",
            "--limit",
            "5",
        ])
        .expect("sessions");
    assert!(sessions["total"].as_u64().unwrap_or(0) >= 1, "{sessions}");
    assert!(sessions["sessions"]
        .as_array()
        .is_some_and(|s| !s.is_empty() && s.len() <= 5));
    let text = rig
        .agent()
        .ctl(&["show", "sessions", "--port", "80"])
        .expect("table");
    assert!(text.contains("10.96.0.10:80"), "{text}");
}

#[test]
fn traffic_policies_snat_rejects_and_health_checks() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new(3);
    let local_and_remote = |svc: &str| {
        slice(
            svc,
            "a",
            "[ { name: http, protocol: TCP, port: 8080 } ]",
            &[
                endpoint(rig.pod_ip(1), "node-1", "pod1"),
                endpoint(REMOTE_POD, "node-2", "remote"),
            ],
        )
    };
    let only_remote = |svc: &str| {
        slice(
            svc,
            "a",
            "[ { name: http, protocol: TCP, port: 8080 } ]",
            &[endpoint(REMOTE_POD, "node-2", "remote")],
        )
    };
    let lb = |np: u16, hc: u16, ip: u8, etp: &str| {
        format!("      type: LoadBalancer\n      externalTrafficPolicy: {etp}\n{}      ports: [ {{ name: http, port: 80, targetPort: 8080, nodePort: {np} }} ]\n    status: {{ loadBalancer: {{ ingress: [ {{ ip: 203.0.113.{ip} }} ] }} }}\n",
            if hc > 0 { format!("      healthCheckNodePort: {hc}\n") } else { String::new() })
    };
    let services = [
        Svc {
            yaml: svc_yaml("local", &lb(30090, 32100, 30, "Local")),
            slices: local_and_remote("local"),
        },
        Svc {
            yaml: svc_yaml("remote-local", &lb(30091, 32101, 31, "Local")),
            slices: only_remote("remote-local"),
        },
        Svc {
            yaml: svc_yaml("cluster", &lb(30092, 0, 32, "Cluster")),
            slices: only_remote("cluster"),
        },
        Svc {
            yaml: svc_yaml(
                "itp",
                "      clusterIP: 10.96.0.20\n      internalTrafficPolicy: Local\n      ports: [ { name: http, port: 80, targetPort: 8080 } ]\n",
            ),
            slices: local_and_remote("itp"),
        },
        Svc {
            yaml: svc_yaml(
                "empty",
                "      clusterIP: 10.96.0.30\n      ports: [ { name: http, port: 80, targetPort: 8080 }, { name: dns, protocol: UDP, port: 53, targetPort: 5353 } ]\n",
            ),
            slices: String::new(),
        },
    ];
    let yaml = rig.spec(PROXY, &services);
    rig.start(&yaml);

    // eTP=Local: only the local endpoint, the client address preserved end to end.
    for _ in 0..10 {
        let (n, peer) = rig
            .topo
            .router
            .run(|| tcp_once(addr("192.168.100.2", 30090), 0))
            .expect("run")
            .expect("eTP=Local node port");
        assert_eq!(n, "pod1");
        assert_eq!(host(&peer), "192.168.100.1", "client address preserved");
    }
    let (n, peer) = rig
        .topo
        .router
        .run(|| tcp_once(addr("203.0.113.30", 80), 0))
        .expect("run")
        .expect("eTP=Local LB IP");
    assert_eq!((n.as_str(), host(&peer)), ("pod1", "192.168.100.1"));

    // eTP=Local on a node without a local endpoint: refused (dropped) and counted.
    let before = error_count(rig.agent(), "ip4-nat", "no-local-endpoints");
    let r = rig
        .topo
        .router
        .run(|| tcp_once(addr("192.168.100.2", 30091), 0))
        .expect("run");
    assert!(r.is_err(), "no local endpoint must not answer: {r:?}");
    assert!(error_count(rig.agent(), "ip4-nat", "no-local-endpoints") > before);

    // eTP=Cluster to a backend on another node: SNAT to the node address.
    let (n, peer) = rig
        .topo
        .router
        .run(|| tcp_once(addr("192.168.100.2", 30092), 0))
        .expect("run")
        .expect("eTP=Cluster to remote");
    assert_eq!(n, "remote");
    assert_eq!(
        host(&peer),
        "192.168.100.2",
        "remote backend sees the node address"
    );
    assert!(error_count(rig.agent(), "ip4-nat", "external-snat") >= 1);

    // Health check node ports: 200 with the local endpoint count, 503 without.
    let hc = |port: u16| -> String {
        rig.topo
            .router
            .run(move || {
                let mut s = TcpStream::connect_timeout(
                    &std::net::SocketAddr::V4(addr("192.168.100.2", port)),
                    IO_TIMEOUT,
                )?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
                let mut out = String::new();
                std::io::Read::read_to_string(&mut s, &mut out)?;
                Ok::<String, std::io::Error>(out)
            })
            .expect("run")
            .unwrap_or_else(|e| format!("error {e}"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ok = hc(32100);
    while !ok.starts_with("HTTP/1.1 200") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        ok = hc(32100);
    }
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("\"localEndpoints\":1"), "{ok}");
    let bad = hc(32101);
    assert!(bad.starts_with("HTTP/1.1 503"), "{bad}");

    // internalTrafficPolicy=Local: pods only reach the local endpoint.
    for _ in 0..10 {
        let (n, _) = rig
            .pod(0)
            .run(|| tcp_once(addr("10.96.0.20", 80), 0))
            .expect("run")
            .expect("iTP=Local");
        assert_eq!(n, "pod1");
    }

    // No endpoints: TCP reset, UDP port unreachable (both seen as "refused"), counted.
    let before = error_count(rig.agent(), "ip4-nat", "no-endpoints");
    let t0 = Instant::now();
    let e = rig
        .pod(0)
        .run(|| tcp_once(addr("10.96.0.30", 80), 0))
        .expect("run")
        .expect_err("no endpoints");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(1), "rejected at once");
    let e = rig
        .pod(0)
        .run(|| udp_once(addr("10.96.0.30", 53)))
        .expect("run")
        .expect_err("no endpoints");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(error_count(rig.agent(), "ip4-nat", "no-endpoints") >= before + 2);
}

#[test]
fn affinity_hairpin_and_masquerade() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new(4);
    let services = [
        Svc {
            yaml: svc_yaml(
                "sticky",
                "      clusterIP: 10.96.0.40\n      sessionAffinity: ClientIP\n      sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } }\n      ports: [ { name: http, port: 80, targetPort: http } ]\n",
            ),
            slices: three_backends(&rig, "sticky"),
        },
        Svc {
            yaml: svc_yaml(
                "self",
                "      clusterIP: 10.96.0.41\n      ports: [ { name: http, port: 80, targetPort: 8080 } ]\n",
            ),
            slices: slice(
                "self",
                "a",
                "[ { name: http, protocol: TCP, port: 8080 } ]",
                &[endpoint(rig.pod_ip(1), "node-1", "pod1")],
            ),
        },
    ];
    // PROXY masquerades.
    let yaml = rig.spec(PROXY, &services);
    rig.start(&yaml);

    // ClientIP affinity: one client, one backend.
    let seen: std::collections::BTreeSet<String> = rig
        .pod(0)
        .run(|| {
            (0..20)
                .map(|_| tcp_once(addr("10.96.0.40", 80), 0).expect("sticky").0)
                .collect()
        })
        .expect("run");
    assert_eq!(seen.len(), 1, "affinity pins: {seen:?}");

    // Hairpin: pod1 reaches its own service and is chosen.
    let (n, peer) = rig
        .pod(1)
        .run(|| tcp_once(addr("10.96.0.41", 80), 0))
        .expect("run")
        .expect("hairpin");
    assert_eq!(n, "pod1");
    assert_eq!(
        host(&peer),
        "10.96.0.41",
        "hairpin is SNATed (to the service address)"
    );

    // Masquerade: pods reaching the router leave with the node address, replies restored.
    let mut servers = Servers::new();
    servers.tcp(&rig.topo.router, "router", 7000);
    servers.udp(&rig.topo.router, "router", 7000);
    for i in [0usize, 2] {
        let (n, peer) = rig
            .pod(i)
            .run(|| tcp_once(addr("192.168.100.1", 7000), 0))
            .expect("run")
            .expect("masqueraded TCP");
        assert_eq!(n, "router");
        assert_eq!(
            host(&peer),
            "192.168.100.2",
            "masqueraded to the node address"
        );
        let port: u16 = peer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        assert!((61000..=65535).contains(&port), "SNAT port {port}");
    }
    let (_, peer) = rig
        .pod(0)
        .run(|| udp_once(addr("192.168.100.1", 7000)))
        .expect("run")
        .expect("masqueraded UDP");
    assert_eq!(host(&peer), "192.168.100.2");
    // Several flows at once get distinct ports.
    let peers: Vec<String> = rig
        .pod(3)
        .run(|| {
            let mut conns: Vec<TcpStream> = (0..20)
                .map(|_| connect(addr("192.168.100.1", 7000), 0).expect("connect"))
                .collect();
            conns.iter_mut().map(|c| ask(c).expect("ask")).collect()
        })
        .expect("run");
    let mut ports: Vec<&str> = peers
        .iter()
        .map(|p| p.rsplit(':').next().unwrap_or(""))
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 20, "distinct SNAT ports: {peers:?}");
    // Pod to pod is not masqueraded.
    let (_, peer) = rig
        .pod(0)
        .run(|| tcp_once(SocketAddrV4::new(rig.pod_ip(2), 8080), 0))
        .expect("run")
        .expect("pod to pod");
    assert_eq!(host(&peer), rig.pod_ip(0).to_string());
    assert!(error_count(rig.agent(), "ip4-nat", "masquerade-sessions") >= 23);
}

#[test]
fn backend_removed_mid_run() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new(4);
    let body = "      clusterIP: 10.96.0.50\n      ports: [ { name: http, port: 80, targetPort: http } ]\n";
    let all = Svc {
        yaml: svc_yaml("web", body),
        slices: three_backends(&rig, "web"),
    };
    let yaml = rig.spec(PROXY, &[all]);
    rig.start(&yaml);
    let vip = addr("10.96.0.50", 80);
    const PORTS: std::ops::Range<u16> = 40000..40300;
    const HELD_PORTS: u16 = 41000;

    let result = rig
        .pod(0)
        .run(|| {
            // Long-lived connections, at least one per backend, from ports outside
            // PORTS: an ephemeral port inside it would make one of the probes below
            // reuse a live 4-tuple (EADDRNOTAVAIL).
            let mut held: Vec<(String, TcpStream)> = Vec::new();
            for i in 0..30 {
                let mut s = connect(vip, HELD_PORTS + i).expect("connect");
                let (n, _) = split(&ask(&mut s).expect("ask")).expect("answer");
                held.push((n, s));
            }
            let before: HashMap<u16, String> = PORTS
                .map(|p| (p, tcp_once(vip, p).expect("before").0))
                .collect();
            (held, before)
        })
        .expect("run");
    let (mut held, before) = result;

    // Remove pod2 from the EndpointSlice; the agent re-reads the spec file.
    let without = Svc {
        yaml: svc_yaml("web", body),
        slices: slice(
            "web",
            "a",
            "[ { name: http, protocol: TCP, port: 8080 } ]",
            &[endpoint(rig.pod_ip(1), "node-1", "pod1")],
        ) + &slice(
            "web",
            "b",
            "[ { name: http, protocol: TCP, port: 8081 } ]",
            &[endpoint(rig.pod_ip(3), "node-1", "pod3")],
        ),
    };
    rig.topo
        .write_spec(&rig.spec(PROXY, &[without]))
        .expect("spec");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = rig
            .agent()
            .ctl_json(&["show", "services"])
            .expect("services");
        if v[0]["backends"].as_array().is_some_and(|b| b.len() == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "backend not removed: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let (undisturbed, after) = rig
        .pod(0)
        .run(move || {
            let mut ok = 0;
            for (n, s) in held.iter_mut().filter(|(n, _)| n != "pod2") {
                let (n2, _) =
                    split(&ask(s).expect("held connection still answers")).expect("answer");
                assert_eq!(&n2, n, "held connection moved");
                ok += 1;
            }
            let after: HashMap<u16, String> = PORTS
                .map(|p| (p, tcp_once(vip, p).expect("after").0))
                .collect();
            (ok, after)
        })
        .expect("run");
    assert!(undisturbed > 0);
    let mut moved = 0;
    let mut survivors = 0;
    for p in PORTS {
        assert_ne!(after[&p], "pod2", "removed backend still chosen");
        if before[&p] != "pod2" {
            survivors += 1;
            if before[&p] != after[&p] {
                moved += 1;
            }
        }
    }
    eprintln!("{undisturbed} held connections undisturbed; {moved} of {survivors} flows of surviving backends moved");
    assert!(
        moved * 25 <= survivors,
        "Maglev moved {moved} of {survivors} surviving flows"
    );
}

#[test]
fn conntrack_full_drops_new_flows_keeps_established() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new(4);
    let svc = Svc {
        yaml: svc_yaml(
            "web",
            "      clusterIP: 10.96.0.60\n      ports: [ { name: http, port: 80, targetPort: http } ]\n",
        ),
        slices: three_backends(&rig, "web"),
    };
    let proxy = format!("{PROXY}  conntrackMax: 16\n");
    let yaml = rig.spec(&proxy, &[svc]);
    rig.start(&yaml);
    let vip = addr("10.96.0.60", 80);
    let (answered, refused) = rig
        .pod(0)
        .run(|| {
            let mut held = Vec::new();
            for _ in 0..16 {
                held.push(connect(vip, 0).expect("within the limit"));
            }
            let refused = connect(vip, 0).is_err();
            let answered = held.iter_mut().map(ask).filter(Result::is_ok).count();
            (answered, refused)
        })
        .expect("run");
    assert!(refused, "a new flow beyond the limit must not connect");
    assert_eq!(answered, 16, "established flows keep working");
    assert!(error_count(rig.agent(), "ip4-nat", "conntrack-full") >= 1);
    assert!(rig.agent().is_running(), "no crash");
    let s = rig
        .agent()
        .ctl_json(&["show", "sessions"])
        .expect("sessions");
    assert!(s["full"].as_u64().unwrap_or(0) >= 1, "{s}");
}

/// The services of the three-node masquerade matrix: `local` (its backend on node-1, which
/// every outside client reaches) and `remote` (its backend on node-2), each with a cluster
/// IP, node ports, an external IP and a load-balancer IP, TCP 80 -> 8080 and UDP 53 -> 5353.
fn matrix_yaml() -> String {
    let mut services = String::new();
    let mut slices = String::new();
    for (name, i, backend, node) in [
        ("local", 1, "10.244.1.11", "node-1"),
        ("remote", 2, "10.244.2.11", "node-2"),
    ] {
        services.push_str(&svc_yaml(
            name,
            &format!(
                "      type: LoadBalancer\n      clusterIP: 10.96.0.6{i}\n      externalIPs: [203.0.113.6{i}]\n      ports:\n        - {{ name: tcp, protocol: TCP, port: 80, targetPort: 8080, nodePort: 3009{} }}\n        - {{ name: udp, protocol: UDP, port: 53, targetPort: 5353, nodePort: 3009{} }}\n    status: {{ loadBalancer: {{ ingress: [ {{ ip: 203.0.113.7{i} }} ] }} }}\n",
                4 + i,
                6 + i
            ),
        ));
        slices.push_str(&slice(
            name,
            "a",
            "[ { name: tcp, protocol: TCP, port: 8080 }, { name: udp, protocol: UDP, port: 5353 } ]",
            &[endpoint(backend.parse().expect("ip"), node, "pod1")],
        ));
    }
    format!("{PROXY}services:\n{services}endpointSlices:\n{slices}")
}

/// One case of the matrix: from `ns`, TCP (two questions on one connection) or UDP to
/// `dst`; Ok(the backend's name and the address it saw). Three tries (the first packets of
/// a path may wait for neighbour resolution).
fn matrix_case(ns: &Netns, dst: SocketAddrV4, udp: bool) -> Result<(String, String), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let r = ns
            .run(move || {
                if udp {
                    udp_once(dst)
                } else {
                    let mut s = connect(dst, 0)?;
                    let first = ask(&mut s)?;
                    let second = ask(&mut s)?;
                    if first != second {
                        return Err(std::io::Error::other(format!("{first:?} then {second:?}")));
                    }
                    split(&first)
                }
            })
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match r {
            Ok(a) => return Ok(a),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Every service frontend (ClusterIP from a pod, NodePort, LoadBalancer IP and external IP
/// from the router) x backend on the client's node / on another node x TCP/UDP, a router
/// with a route to the pod CIDR talking to a pod, and a host-network client on another node
/// talking to a pod, on three nodes in `mode`, with masquerade on every node. The router is
/// a namespace on the fabric (192.168.200.2), with routes to node-1's pod CIDR and to the
/// service addresses via node-1. Masquerading the pods' answers (issue 15) broke every case whose
/// client is outside the cluster CIDRs and whose backend answers it directly or through
/// another node's SNAT: router -> pod, host -> pod, and the remote-backend external cases.
fn masquerade_matrix(mode: OverlayMode) {
    let mut c = Cluster::new(3, 2, mode).expect("cluster");
    for n in &mut c.nodes {
        n.extra_yaml = matrix_yaml();
    }
    let mut servers = Servers::new();
    for n in &c.nodes[..2] {
        let name = format!("n{}-pod1", n.index);
        servers.tcp(&n.pods[1].ns, &name, 8080);
        servers.udp(&n.pods[1].ns, &name, 5353);
    }
    let router = "192.168.200.2";
    c.attach(
        Netns::new("router").expect("router ns"),
        "eth0",
        router.parse().expect("ip"),
    )
    .expect("router on the fabric");
    c.start(&bin_dir()).expect("agents");
    let node1 = c.nodes[0].address.to_string();
    let rtr = &c.extra[0];
    rtr.add_route("10.244.1.0/24", &node1)
        .expect("router: pod CIDR route");
    rtr.add_route("203.0.113.0/24", &node1)
        .expect("router: service address route");
    // node-3's kernel reaches node-1's pods directly (as with a routed fabric).
    c.nodes[2]
        .ns
        .ip(&["route", "replace", "10.244.1.0/24", "via", &node1])
        .expect("node-3: pod CIDR route");

    let pod_client = c.nodes[0].pods[0].ip.to_string();
    // (case, client namespace, destination, UDP, backend that must answer, source it must see)
    let mut cases: Vec<(String, &Netns, SocketAddrV4, bool, &str, String)> = Vec::new();
    for (udp, proto, port) in [(false, "tcp", 80u16), (true, "udp", 53)] {
        for (backend, i, seen_outside) in [("local", 1u16, router), ("remote", 2, node1.as_str())] {
            let name = if i == 1 { "n1-pod1" } else { "n2-pod1" };
            let node_port = if udp { 30096 + i } else { 30094 + i };
            cases.push((
                format!("ClusterIP {proto} backend {backend}"),
                &c.nodes[0].pods[0].ns,
                addr(&format!("10.96.0.6{i}"), port),
                udp,
                name,
                pod_client.clone(),
            ));
            for (what, dst) in [
                ("NodePort", addr(&node1, node_port)),
                ("LoadBalancer IP", addr(&format!("203.0.113.7{i}"), port)),
                ("external IP", addr(&format!("203.0.113.6{i}"), port)),
            ] {
                cases.push((
                    format!("{what} {proto} backend {backend}"),
                    rtr,
                    dst,
                    udp,
                    name,
                    seen_outside.to_string(),
                ));
            }
        }
        let target = addr("10.244.1.11", if udp { 5353 } else { 8080 });
        cases.push((
            format!("router -> pod {proto}"),
            rtr,
            target,
            udp,
            "n1-pod1",
            router.to_string(),
        ));
        cases.push((
            format!("host network of node-3 -> pod {proto}"),
            &c.nodes[2].ns,
            target,
            udp,
            "n1-pod1",
            c.nodes[2].address.to_string(),
        ));
    }
    let t0 = Instant::now();
    let mut failed = Vec::new();
    for (what, ns, dst, udp, want_backend, seen) in &cases {
        match matrix_case(ns, *dst, *udp) {
            Ok((n, peer)) if n == *want_backend && host(&peer) == seen => {
                eprintln!("ok   {what} {dst}: {n} saw {peer}")
            }
            Ok((n, peer)) => failed.push(format!(
                "{what} {dst}: answered by {n} who saw {peer} (want {want_backend}, {seen})"
            )),
            Err(e) => failed.push(format!("{what} {dst}: {e}")),
        }
    }
    eprintln!("{} cases in {:?}", cases.len(), t0.elapsed());
    if !failed.is_empty() {
        for i in 0..2 {
            let e = c.agent(i).ctl(&["show", "errors"]).unwrap_or_default();
            eprintln!("node-{} errors:\n{e}", i + 1);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed in {mode:?}:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
    // The answers were tracked, never masqueraded: no pod originated a flow out of the cluster.
    for (i, n) in c.nodes.iter().enumerate() {
        let a = c.agent(i);
        assert_eq!(
            error_count(a, "ip4-nat", "masquerade-sessions"),
            0,
            "{}: a pod's answer was masqueraded",
            n.name
        );
    }
    // node-1 tracked the router's and node-3's connections to its pod; node-2 the
    // connections node-1 SNATed to its own address for the remote backend.
    assert!(error_count(c.agent(0), "ip4-nat", "tracked-sessions") >= 4);
    assert!(error_count(c.agent(1), "ip4-nat", "tracked-sessions") >= 6);
}

#[test]
fn masquerade_matrix_three_nodes_direct() {
    if !require_root() {
        return;
    }
    masquerade_matrix(OverlayMode::Direct);
}

#[test]
fn masquerade_matrix_three_nodes_vxlan() {
    if !require_root() {
        return;
    }
    masquerade_matrix(OverlayMode::Vxlan);
}

/// The services of the host-traffic test: [`matrix_yaml`]'s `local` and `remote` plus a
/// bulk service per backend for byte-checked transfers, whose port, target port and node
/// port are one number (the transfer probe binds the port it connects to): `bulk-local`
/// 10.96.0.63:30088 on node-1's pod1, `bulk-remote` 10.96.0.64:30089 on node-2's pod1.
fn host_traffic_yaml() -> String {
    let mut y = matrix_yaml();
    let at = y.find("endpointSlices:\n").expect("slices section");
    let mut services = String::new();
    let mut slices = String::new();
    for (name, ip, port, backend, node) in [
        ("bulk-local", "10.96.0.63", 30088, "10.244.1.11", "node-1"),
        ("bulk-remote", "10.96.0.64", 30089, "10.244.2.11", "node-2"),
    ] {
        services.push_str(&svc_yaml(
            name,
            &format!("      type: NodePort\n      clusterIP: {ip}\n      ports:\n        - {{ name: tcp, protocol: TCP, port: {port}, targetPort: {port}, nodePort: {port} }}\n"),
        ));
        slices.push_str(&slice(
            name,
            "a",
            &format!("[ {{ name: tcp, protocol: TCP, port: {port} }} ]"),
            &[endpoint(backend.parse().expect("ip"), node, "pod1")],
        ));
    }
    y.insert_str(at, &services);
    y.push_str(&slices);
    y
}

/// Issue 15, item 3: processes in the node's own namespace (kubelet, hostNetwork pods)
/// reach ClusterIPs and NodePorts on the node's address, with the backend on this node and
/// on another node, TCP and UDP, in `mode`, on two nodes. Every answer comes back from the
/// service address (connected TCP and UDP sockets take nothing else), from the backend
/// that must answer, which saw the node's address; a 256 KiB byte-checked TCP transfer per
/// frontend and backend place. Without the feature every case times out (the kernel sends
/// ClusterIP traffic to its default route and a NodePort connection to its own, closed,
/// port).
fn host_traffic(mode: OverlayMode) {
    let mut c = Cluster::new(2, 2, mode).expect("cluster");
    for n in &mut c.nodes {
        n.extra_yaml = host_traffic_yaml();
    }
    let mut servers = Servers::new();
    for n in &c.nodes {
        let name = format!("n{}-pod1", n.index);
        servers.tcp(&n.pods[1].ns, &name, 8080);
        servers.udp(&n.pods[1].ns, &name, 5353);
    }
    c.start(&bin_dir()).expect("agents");
    let node1 = c.nodes[0].address.to_string();
    let host = &c.nodes[0].ns;
    let t0 = Instant::now();
    let mut failed = Vec::new();
    let mut cases = 0;
    for (udp, proto, port) in [(false, "tcp", 80u16), (true, "udp", 53)] {
        for (backend, i) in [("local", 1u16), ("remote", 2)] {
            let want = format!("n{i}-pod1");
            let node_port = if udp { 30096 + i } else { 30094 + i };
            for (what, dst) in [
                ("ClusterIP", addr(&format!("10.96.0.6{i}"), port)),
                ("NodePort", addr(&node1, node_port)),
            ] {
                cases += 1;
                match matrix_case(host, dst, udp) {
                    Ok((n, peer)) if n == want && self::host(&peer) == node1 => {
                        eprintln!("ok   node -> {what} {proto} backend {backend} {dst}: {n} saw {peer}")
                    }
                    Ok((n, peer)) => failed.push(format!(
                        "node -> {what} {proto} backend {backend} {dst}: answered by {n} who saw {peer} (want {want}, {node1})"
                    )),
                    Err(e) => failed.push(format!("node -> {what} {proto} backend {backend} {dst}: {e}")),
                }
            }
        }
    }
    for (backend, i, vip, port) in [
        ("local", 0usize, "10.96.0.63", 30088u16),
        ("remote", 1, "10.96.0.64", 30089),
    ] {
        for (what, ip) in [("ClusterIP", vip), ("NodePort", node1.as_str())] {
            cases += 1;
            let to = &c.nodes[i].pods[1].ns;
            match ferroplane_e2e::probe::tcp_transfer(
                host,
                to,
                ip.parse().expect("ip"),
                port,
                256 * 1024,
            ) {
                Ok(s) => eprintln!("ok   node -> {what} backend {backend} {ip}:{port}: {s:?}"),
                Err(e) => failed.push(format!(
                    "node -> {what} backend {backend} {ip}:{port} transfer: {e}"
                )),
            }
        }
    }
    eprintln!("{cases} cases in {:?}", t0.elapsed());
    if !failed.is_empty() {
        for i in 0..2 {
            let e = c.agent(i).ctl(&["show", "errors"]).unwrap_or_default();
            eprintln!("node-{} errors:\n{e}", i + 1);
        }
        let rules = host.ip(&["rule"]).unwrap_or_default();
        eprintln!("node-1 rules:\n{rules}");
    }
    assert!(
        failed.is_empty(),
        "{} of {cases} cases failed in {mode:?}:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // Each connection was the node's own, load-balanced and SNATed by node-1's engine.
    assert!(error_count(c.agent(0), "ip4-nat", "host-sessions") >= 12);
}

#[test]
fn host_traffic_to_services_two_nodes_direct() {
    if !require_root() {
        return;
    }
    host_traffic(OverlayMode::Direct);
}

#[test]
fn host_traffic_to_services_two_nodes_vxlan() {
    if !require_root() {
        return;
    }
    host_traffic(OverlayMode::Vxlan);
}
