//! Listeners that cannot be starved: 2,000 idle connections held on each of the agent's
//! listeners (health, metrics, a health-check node port reached from outside, the API
//! socket, the CNI socket) lock nobody out: `ferroctl`, `GET /healthz`, `GET /metrics`, the
//! health-check node port and a CNI ADD each answer within 1 s, the agent's RSS stays under
//! 100 MB and its descriptors bounded; an endless request header (300 MB) is cut off
//! without growing the agent's memory.
//!
//! Before the fix: 64 idle API connections locked `ferroctl` out (2 minutes), the metrics
//! endpoint answered one connection at a time (each held one blocked it for its 2 s read
//! timeout) and read header lines of any length, and the health-check node port accepted
//! without limit on the main thread (out of descriptors, CNI ADD failed, 100% CPU).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferroplane_e2e::cni::{ferroplane_conf, invoke, CniEnv};
use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, bin_path, require_root, Netns};

/// Connections held on each listener.
const HELD: usize = 2000;
/// What every check must answer within.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// The agent's resident memory must stay under this.
const RSS_LIMIT_KB: u64 = 100 * 1024;
const HEALTH_PORT: u16 = 9470;
const METRICS_PORT: u16 = 9471;
const HC_PORT: u16 = 32210;

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("agent status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; the limit in force.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    hard.max(soft)
}

/// `HELD` TCP connections to `addr` from inside `ns`, sending nothing.
fn hold_tcp(ns: &Netns, addr: SocketAddr) -> Vec<TcpStream> {
    ns.run(move || {
        (0..HELD)
            .map(|i| {
                TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}"))
            })
            .collect::<Vec<_>>()
    })
    .expect("run in namespace")
}

/// `HELD` connections to the unix socket at `path`, sending nothing.
fn hold_unix(path: &Path) -> Vec<UnixStream> {
    (0..HELD)
        .map(|i| {
            UnixStream::connect(path)
                .unwrap_or_else(|e| panic!("connection {i} to {}: {e}", path.display()))
        })
        .collect()
}

/// `GET path` from inside `ns`: the answer and how long it took.
fn get(ns: &Netns, addr: SocketAddr, path: &str) -> (String, Duration) {
    let path = path.to_string();
    ns.run(move || {
        let t0 = Instant::now();
        let answer = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })()
        .unwrap_or_else(|e| format!("error: {e}"));
        (answer, t0.elapsed())
    })
    .expect("run in namespace")
}

/// Streams an endless header (up to 300 MB) at `addr` from inside `ns`; returns the bytes
/// sent before the agent cut the connection, and whether it did.
fn endless_header(ns: &Netns, addr: SocketAddr) -> (usize, bool) {
    ns.run(move || {
        const TOTAL: usize = 300 << 20;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX-Endless: ");
        let chunk = vec![b'a'; 256 << 10];
        let mut sent = 0;
        while sent < TOTAL {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => return (sent, true),
            }
        }
        (sent, false)
    })
    .expect("run in namespace")
}

struct Rig {
    topo: Topology,
    agent: AgentGuard,
    cni_socket: PathBuf,
    plugin: PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let topo = Topology::single_node(1).expect("topology");
        // An externalTrafficPolicy=Local service with its health-check node port, pod0 its
        // local endpoint.
        let mut y = topo.spec_yaml();
        y.push_str("serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\n");
        y.push_str(&format!(
            "services:\n  - metadata: {{ name: web, namespace: default }}\n    spec:\n      type: LoadBalancer\n      externalTrafficPolicy: Local\n      healthCheckNodePort: {HC_PORT}\n      ports: [ {{ name: http, port: 80, targetPort: 8080, nodePort: 30210 }} ]\n    status: {{ loadBalancer: {{ ingress: [ {{ ip: 203.0.113.40 }} ] }} }}\n"
        ));
        y.push_str(&format!(
            "endpointSlices:\n  - metadata: {{ name: web-a, namespace: default, labels: {{ kubernetes.io/service-name: web }} }}\n    addressType: IPv4\n    ports: [ {{ name: http, protocol: TCP, port: 8080 }} ]\n    endpoints:\n      - addresses: [{}]\n        conditions: {{ ready: true, serving: true, terminating: false }}\n        nodeName: node-1\n        targetRef: {{ kind: Pod, namespace: default, name: pod0 }}\n",
            topo.pods[0].ip
        ));
        topo.write_spec(&y).expect("spec");
        let cni_socket = topo.dir().join("cni.sock");
        let state = topo.dir().join("state");
        let health = format!("127.0.0.1:{HEALTH_PORT}");
        let metrics = format!("127.0.0.1:{METRICS_PORT}");
        let (sock_s, state_s) = (
            cni_socket.display().to_string(),
            state.display().to_string(),
        );
        let agent = topo
            .start_agent_with(
                &bin_dir(),
                &[
                    "--cni-socket",
                    &sock_s,
                    "--state-dir",
                    &state_s,
                    "--health-addr",
                    &health,
                    "--metrics-addr",
                    &metrics,
                ],
            )
            .expect("agent start");
        let plugin = bin_path(&bin_dir(), "ferroplane-cni").expect("ferroplane-cni built");
        Rig {
            topo,
            agent,
            cni_socket,
            plugin,
        }
    }

    fn hc_addr() -> SocketAddr {
        SocketAddr::from((Topology::NODE_IP, HC_PORT))
    }

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Waits until every HTTP listener answers (the health-check port follows the service
    /// table, re-read every second).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = get(&self.topo.node, Self::local(HEALTH_PORT), "/healthz")
                .0
                .starts_with("HTTP/1.1 200")
                && get(&self.topo.node, Self::local(METRICS_PORT), "/metrics")
                    .0
                    .starts_with("HTTP/1.1 200")
                && get(&self.topo.router, Self::hc_addr(), "/healthz")
                    .0
                    .starts_with("HTTP/1.1 200");
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "listeners not ready\n{}",
                self.agent.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A CNI ADD (then DEL) of a fresh namespace, as a runtime does it: the ADD's outcome
    /// and time.
    fn cni_add(&self, pod: &Netns, id: &str) -> (bool, String, Duration) {
        let conf = ferroplane_conf("ferroplane", &self.cni_socket).to_string();
        let add = invoke(
            &self.topo.node,
            &self.plugin,
            &CniEnv::new("ADD", id, pod.path()),
            &conf,
            Duration::from_secs(10),
        )
        .expect("plugin ran");
        let del = invoke(
            &self.topo.node,
            &self.plugin,
            &CniEnv::new("DEL", id, pod.path()),
            &conf,
            Duration::from_secs(10),
        )
        .expect("plugin ran");
        assert!(del.ok(), "DEL: {del:?}");
        (add.ok(), format!("{add:?}"), add.elapsed)
    }
}

#[test]
fn held_connections_starve_no_listener() {
    if !require_root() {
        return;
    }
    let nofile = raise_nofile();
    if nofile < (5 * HELD + 1000) as u64 {
        ferroplane_e2e::skip(&format!(
            "RLIMIT_NOFILE hard limit {nofile} is too low for 5 x {HELD} connections"
        ));
        return;
    }
    let rig = Rig::new();
    rig.wait_ready();
    let pid = rig.agent.pid();
    let rss_start = rss_kb(pid);
    let pod = Netns::new("cnipod").expect("pod namespace");
    // The same ADD without load, for comparison.
    let (ok, what, idle_add) = rig.cni_add(&pod, "warm");
    assert!(ok, "ADD without load: {what}");

    let t0 = Instant::now();
    let held_health = hold_tcp(&rig.topo.node, Rig::local(HEALTH_PORT));
    let held_metrics = hold_tcp(&rig.topo.node, Rig::local(METRICS_PORT));
    let held_hc = hold_tcp(&rig.topo.router, Rig::hc_addr());
    let held_api = hold_unix(rig.agent.socket());
    let held_cni = hold_unix(&rig.cni_socket);
    let opened = t0.elapsed();
    let fds = open_fds(pid);
    eprintln!(
        "held {HELD} connections on each of 5 listeners in {opened:?}; agent: {fds} descriptors"
    );

    // Everyone still gets an answer, at once.
    let t = Instant::now();
    let version = rig.agent.ctl(&["version"]);
    let ctl_took = t.elapsed();
    assert!(version.is_ok(), "ferroctl locked out: {version:?}");
    let (healthz, healthz_took) = get(&rig.topo.node, Rig::local(HEALTH_PORT), "/healthz");
    assert!(healthz.starts_with("HTTP/1.1 200"), "/healthz: {healthz}");
    let (metrics, metrics_took) = get(&rig.topo.node, Rig::local(METRICS_PORT), "/metrics");
    assert!(
        metrics.starts_with("HTTP/1.1 200"),
        "/metrics: {metrics:.200}"
    );
    assert!(metrics.contains("ferroplane_interfaces"), "{metrics:.400}");
    let (hc, hc_took) = get(&rig.topo.router, Rig::hc_addr(), "/healthz");
    assert!(
        hc.starts_with("HTTP/1.1 200"),
        "health-check node port: {hc}"
    );
    let (ok, what, add_took) = rig.cni_add(&pod, "loaded");
    assert!(ok, "CNI ADD under load: {what}");
    eprintln!(
        "answers under load: ferroctl version {ctl_took:?}, /healthz {healthz_took:?}, \
         /metrics {metrics_took:?}, health-check node port {hc_took:?}, \
         CNI ADD {add_took:?} (without load {idle_add:?})"
    );
    for (what, took) in [
        ("ferroctl version", ctl_took),
        ("GET /healthz", healthz_took),
        ("GET /metrics", metrics_took),
        ("health-check node port", hc_took),
        ("CNI ADD", add_took),
    ] {
        assert!(
            took < ANSWER_WITHIN,
            "{what} took {took:?} with held connections"
        );
    }
    let rss_held = rss_kb(pid);
    let fds = open_fds(pid);
    assert!(
        fds < 3000,
        "the agent holds {fds} descriptors: listener limits not kept"
    );

    // An endless header, from outside and on the metrics endpoint: cut off, no memory.
    let (hc_sent, hc_cut) = endless_header(&rig.topo.router, Rig::hc_addr());
    let (m_sent, m_cut) = endless_header(&rig.topo.node, Rig::local(METRICS_PORT));
    let rss_end = rss_kb(pid);
    eprintln!(
        "endless header: cut off after {} kB (health-check port), {} kB (metrics); \
         agent RSS {} MB at start, {} MB with held connections, {} MB after; {fds} descriptors",
        hc_sent >> 10,
        m_sent >> 10,
        rss_start >> 10,
        rss_held >> 10,
        rss_end >> 10
    );
    assert!(hc_cut && m_cut, "an endless header was read to its end");
    assert!(
        rss_held < RSS_LIMIT_KB && rss_end < RSS_LIMIT_KB,
        "agent RSS {rss_held} kB / {rss_end} kB"
    );
    // And the endpoints still answer.
    assert!(get(&rig.topo.node, Rig::local(METRICS_PORT), "/metrics")
        .0
        .starts_with("HTTP/1.1 200"));
    assert!(rig.agent.is_running());
    drop((held_health, held_metrics, held_hc, held_api, held_cni));
}
