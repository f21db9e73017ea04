//! Fail closed whatever the node's sysctls (issue 14, item 1).
//!
//! The node runs with `net.ipv4.ip_forward=1`, as Kubernetes nodes do. The agent runs as the
//! DaemonSet runs it (`--on-exit keep`, pinned maps and links) and is killed with SIGKILL.
//! While it is dead the XDP programs stay attached, and a frame they cannot hand to the
//! engine or replay from the flow cache is dropped: before the fix it was passed to the
//! kernel, which forwarded a connection NetworkPolicy denies straight to the pod.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferroplane_e2e::netns::Netns;
use ferroplane_e2e::probe::{epoch_now, ping, ContinuousPing};
use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, require_root, BpffsMount};
use serde_json::Value;

/// The server pod's port.
const PORT: u16 = 8080;
/// Index of `engine_away` in the `verdicts` map (`FP_VERDICT_ENGINE_AWAY`).
const ENGINE_AWAY: u32 = 5;

/// pod0 is `app: client`, pod1 `app: server`, pod2 `app: other`; the server admits ingress
/// from the client only (any port, any protocol).
fn spec(topo: &Topology) -> String {
    use std::fmt::Write as _;
    let mut y = String::from("# written by the security suite\nnode:\n");
    let _ = writeln!(y, "  name: node-1\n  uplink: {}", Topology::UPLINK_IF);
    let _ = writeln!(
        y,
        "  address: {}/{}\n  gateway: {}\n  podCIDR: {}\n  xdpMode: auto",
        Topology::NODE_IP,
        Topology::UPLINK_PREFIX_LEN,
        Topology::ROUTER_IP,
        Topology::POD_CIDR
    );
    y.push_str("namespaces:\n  - metadata: {name: default, labels: {ns: default}}\n");
    y.push_str("pods:\n");
    for (p, app) in topo.pods.iter().zip(["client", "server", "other"]) {
        let _ = writeln!(
            y,
            "  - {{name: {}, namespace: default, netns: {}, ip: {}, interface: {}, labels: {{app: {app}}}}}",
            p.name,
            p.ns.name(),
            p.ip,
            Topology::POD_IF
        );
    }
    let policies = serde_json::json!([
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "server-from-client", "namespace": "default"},
         "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}}
    ]);
    let _ = writeln!(y, "networkPolicies: {policies}");
    y
}

/// Whether a new TCP connection from `ns` to `to` is accepted within 1 s.
fn connects(ns: &Netns, to: SocketAddr) -> bool {
    ns.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok())
        .expect("netns thread")
}

/// One 4-byte echo round trip on a held connection.
fn echo(c: &mut TcpStream) -> bool {
    let mut b = [0u8; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut b).is_ok() && &b == b"ping"
}

/// Echo server on `listener` until `stop`: one thread per connection.
fn serve(listener: TcpListener, stop: &AtomicBool) {
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::scope(|s| {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut c, _)) => {
                    s.spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut b = [0u8; 64];
                        while !stop.load(Ordering::Relaxed) {
                            match c.read(&mut b) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if c.write_all(&b[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
}

/// Packets counted under `engine_away` in the pinned `verdicts` map (summed over CPUs).
fn engine_away_packets(pin: &str) -> u64 {
    let out = std::process::Command::new(bin_dir().join("ferroctl"))
        .args(["map", "dump", "verdicts", "--pin-dir", pin, "-o", "json"])
        .output()
        .expect("ferroctl map dump verdicts");
    assert!(out.status.success(), "{out:?}");
    let dump: Value = serde_json::from_slice(&out.stdout).expect("json");
    let key = hex(&ENGINE_AWAY.to_ne_bytes());
    let entry = dump["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["key"] == key.as_str())
        .unwrap_or_else(|| panic!("no engine_away slot {key} in {dump}"));
    let value = entry["value"].as_str().expect("value hex");
    unhex(value)
        .chunks(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8-byte per-CPU slot")))
        .sum()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn xdp_attached(ns: &Netns) -> usize {
    let out = ns.ip(&["-j", "link", "show"]).expect("ip link");
    let links: Value = serde_json::from_str(&out).expect("ip -j link");
    links
        .as_array()
        .expect("links")
        .iter()
        .filter(|l| l.get("xdp").is_some())
        .count()
}

fn kill9(agent: &AgentGuard) {
    let pid = nix::unistd::Pid::from_raw(agent.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL the agent");
    for _ in 0..50 {
        if !agent.is_running() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("agent still running after SIGKILL");
}

/// ip_forward=1, a deny policy, pods that talked before, the agent killed with SIGKILL:
/// denied pairs stay denied for new connections (pod → pod and outside → pod), allowed
/// established flows continue from the flow cache, the node keeps answering (pods and the
/// router reach its address, it reaches its pods), and the drops are counted as
/// `engine_away`. The next agent adopts the programs and the policy holds again.
#[test]
fn sigkilled_agent_fails_closed_with_ip_forward() {
    if !require_root() {
        return;
    }
    let bpffs = BpffsMount::new().expect("bpffs");
    let pin = bpffs.path().join("node").to_string_lossy().to_string();
    // What the DaemonSet runs (manifests/03-daemonset.yaml: --on-exit=keep), with its pins
    // on a bpffs that outlives the agent's mount namespace, as /sys/fs/bpf on a node.
    let args = ["--pin-dir", pin.as_str(), "--on-exit", "keep"];
    let topo = Topology::single_node(3).expect("topology");
    assert_eq!(
        topo.node.sysctl("net.ipv4.ip_forward").expect("sysctl"),
        "1",
        "the node must forward, as a Kubernetes node does"
    );
    topo.write_spec(&spec(&topo)).expect("spec");
    let agent = topo.start_agent_with(&bin_dir(), &args).expect("agent");
    let (client, server, other) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    let to = SocketAddr::from((server.ip, PORT));
    let listener = server
        .ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))
        .expect("netns thread")
        .expect("listen");
    let stop = AtomicBool::new(false);

    std::thread::scope(|s| {
        s.spawn(|| serve(listener, &stop));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Everyone talks first (warm neighbour caches: the denied pod's gateway entry is
            // what let the kernel forward its connection before the fix).
            ping(&other.ns, Topology::ROUTER_IP, 1).expect("other -> router");
            ping(&client.ns, server.ip, 1).expect("client -> server");
            ping(&topo.router, client.ip, 1).expect("router -> client");
            let mut held = client
                .ns
                .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))
                .expect("netns thread")
                .expect("client -> server:8080 allowed");
            held.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            assert!(echo(&mut held), "held connection echoes");
            assert!(!connects(&other.ns, to), "policy: other -> server denied");
            assert!(
                !connects(&topo.router, to),
                "policy: router -> server denied"
            );
            let log = topo.dir().join("client-server.ping");
            let pinger = ContinuousPing::start(&client.ns, server.ip, &log).expect("ping");
            // Keep the held connection busy so its flow is reported to the cache both ways.
            for _ in 0..10 {
                assert!(echo(&mut held));
                std::thread::sleep(Duration::from_millis(100));
            }
            let before = engine_away_packets(&pin);

            kill9(&agent);
            let down_from = epoch_now();
            assert_eq!(
                xdp_attached(&topo.node),
                4,
                "uplink + 3 pod veths keep their programs after SIGKILL"
            );

            // Denied pairs stay denied for new connections (the kernel would forward them).
            assert!(
                !connects(&other.ns, to),
                "other -> server:8080 must stay denied with the agent dead"
            );
            assert!(
                !connects(&topo.router, to),
                "router -> server:8080 must stay denied with the agent dead"
            );
            assert!(
                ping(&topo.router, server.ip, 1).is_err(),
                "router -> server ping must stay denied"
            );
            // The established, allowed connection keeps working from the flow cache.
            for i in 0..10 {
                assert!(
                    echo(&mut held),
                    "held client -> server connection, round trip {i}, with the agent dead"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            // The node keeps answering: its address from a pod and from the router, and
            // its own traffic to a pod (what kubelet probes do).
            ping(&other.ns, Topology::NODE_IP, 1).expect("pod -> node address");
            ping(&topo.router, Topology::NODE_IP, 1).expect("router -> node address");
            assert!(
                connects(&topo.node, to),
                "node -> server:8080 (a kubelet probe) with the agent dead"
            );
            let down_until = epoch_now();
            let dropped = engine_away_packets(&pin) - before;
            assert!(
                dropped >= 3,
                "engine_away counted {dropped} drops while the agent was dead"
            );
            let replies = pinger
                .finish()
                .into_iter()
                .filter(|t| *t > down_from && *t < down_until)
                .count();
            let secs = down_until - down_from;
            assert!(
                replies as f64 >= secs * 10.0 * 0.7,
                "client -> server ping: {replies} replies in the {secs:.1} s the agent was dead\n{}",
                pinger.output()
            );

            // The next agent adopts the programs; the policy holds, allowed flows work.
            let agent = topo.start_agent_with(&bin_dir(), &args).expect("restart");
            assert_eq!(xdp_attached(&topo.node), 4, "adopted in place");
            assert!(
                connects(&client.ns, to),
                "client -> server after the restart"
            );
            assert!(
                !connects(&other.ns, to),
                "other -> server after the restart"
            );
            let xdp = agent.ctl_json(&["show", "xdp"]).expect("show xdp");
            let away = xdp["verdicts"]
                .as_array()
                .expect("verdicts")
                .iter()
                .find(|v| v["name"] == "engine_away")
                .unwrap_or_else(|| panic!("no engine_away verdict in {xdp}"))
                .clone();
            assert!(away["count"].as_u64().unwrap_or(0) >= dropped, "{away}");
            assert!(
                away["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("fail closed")),
                "{away}"
            );
            drop(agent);
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
}

/// `--on-exit detach` (the agent's default) applies to a clean stop only: an agent that dies
/// (SIGKILL) leaves its programs attached through their pinned links, so the node still
/// fails closed with `ip_forward=1`; the next agent adopts them, and its clean stop detaches.
#[test]
fn sigkilled_agent_in_detach_mode_keeps_programs_attached() {
    if !require_root() {
        return;
    }
    let bpffs = BpffsMount::new().expect("bpffs");
    let pin = bpffs.path().join("node").to_string_lossy().to_string();
    let args = ["--pin-dir", pin.as_str()];
    let topo = Topology::single_node(3).expect("topology");
    topo.write_spec(&spec(&topo)).expect("spec");
    let agent = topo.start_agent_with(&bin_dir(), &args).expect("agent");
    let (client, server, other) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    let to = SocketAddr::from((server.ip, PORT));
    // The kernel completes handshakes into the backlog: no need to accept.
    let _listener = server
        .ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))
        .expect("netns thread")
        .expect("listen");
    ping(&other.ns, Topology::ROUTER_IP, 1).expect("other -> router");
    ping(&client.ns, server.ip, 1).expect("client -> server");
    assert!(!connects(&other.ns, to), "policy: other -> server denied");

    kill9(&agent);
    assert_eq!(
        xdp_attached(&topo.node),
        4,
        "programs stay attached when an --on-exit detach agent dies"
    );
    assert!(
        !connects(&other.ns, to),
        "other -> server:8080 must stay denied with the agent dead"
    );
    assert!(
        !connects(&topo.router, to),
        "router -> server:8080 must stay denied with the agent dead"
    );
    ping(&topo.router, Topology::NODE_IP, 1).expect("router -> node address");
    drop(agent);

    let agent = topo.start_agent_with(&bin_dir(), &args).expect("restart");
    assert_eq!(xdp_attached(&topo.node), 4, "adopted in place");
    assert!(
        connects(&client.ns, to),
        "client -> server after the restart"
    );
    assert!(
        !connects(&other.ns, to),
        "other -> server after the restart"
    );
    let status = agent.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "clean stop: {status:?}\n{}",
        agent.log_tail(20)
    );
    assert_eq!(
        xdp_attached(&topo.node),
        0,
        "a clean --on-exit detach stop removes the programs"
    );
    let links = std::fs::read_dir(std::path::Path::new(&pin).join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(links, 0, "and their pinned links");
}
