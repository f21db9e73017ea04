//! Foundation suite: one emulated node (router netns —uplink veth— node netns
//! with three pod namespaces), the real agent, real XDP and AF_XDP.
//!
//! Every test builds its own topology (unique namespace names), so the tests
//! run in parallel.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ferroplane_e2e::probe::{epoch_now, ping, scapy, tcp_transfer, ContinuousPing};
use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, require_root};
use serde_json::Value;

const MB: u64 = 1024 * 1024;

fn setup(pods: usize) -> (Topology, AgentGuard) {
    let topo = Topology::single_node(pods).expect("topology");
    let agent = topo.start_agent(&bin_dir()).expect("agent start");
    (topo, agent)
}

fn pod_ip(topo: &Topology, i: usize) -> Ipv4Addr {
    topo.pods[i].ip
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

fn node_packets(agent: &AgentGuard, node: &str) -> u64 {
    let v = agent
        .ctl_json(&["show", "counters"])
        .expect("show counters");
    v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("no node {node} in {v}"))["packets"]
        .as_u64()
        .expect("packets")
}

fn xdp_attached(ns: &ferroplane_e2e::netns::Netns) -> Vec<String> {
    let out = ns.ip(&["-j", "link", "show"]).expect("ip link");
    let links: Value = serde_json::from_str(&out).expect("ip -j link");
    links
        .as_array()
        .expect("links")
        .iter()
        .filter(|l| l.get("xdp").is_some())
        .map(|l| l["ifname"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Pod traffic (pod <-> pod, pod <-> outside) is forwarded by ferroplane's dataplane, never
/// by the node's kernel (which runs with ip_forward=1): the engine decides every flow (its
/// first packets cross `ip4-lookup`), and each packet is forwarded either by the engine or,
/// once the engine installed its flow, by the XDP fast path (`--fast-path on`, the default).
#[test]
fn pod_traffic_crosses_the_dataplane() {
    if !require_root() {
        return;
    }
    let (topo, agent) = setup(3);
    assert_eq!(
        topo.node.sysctl("net.ipv4.ip_forward").expect("sysctl"),
        "1",
        "the node runs with kernel forwarding on, as Kubernetes nodes do"
    );
    let before = node_packets(&agent, "ip4-lookup");
    let fast_before = xdp_verdict(&agent, "fast_path");
    let kernel_before = topo.node.ip_forwarded().expect("ForwDatagrams");

    // pod <-> pod
    ping(&topo.pods[0].ns, pod_ip(&topo, 1), 3).expect("pod0 -> pod1");
    ping(&topo.pods[2].ns, pod_ip(&topo, 0), 3).expect("pod2 -> pod0");
    let t = tcp_transfer(
        &topo.pods[0].ns,
        &topo.pods[1].ns,
        pod_ip(&topo, 1),
        5201,
        10 * MB,
    )
    .expect("10 MB pod0 -> pod1");
    assert_eq!(t.bytes, 10 * MB);
    eprintln!("pod->pod 10 MB: {:.0} Mbit/s", t.mbit_per_s());

    // pod -> outside the node and back
    ping(&topo.pods[1].ns, Topology::ROUTER_IP, 3).expect("pod1 -> router");
    ping(&topo.router, pod_ip(&topo, 2), 3).expect("router -> pod2");
    let t = tcp_transfer(
        &topo.pods[2].ns,
        &topo.router,
        Topology::ROUTER_IP,
        5202,
        2 * MB,
    )
    .expect("2 MB pod2 -> router");
    assert_eq!(t.bytes, 2 * MB);
    let t = tcp_transfer(
        &topo.router,
        &topo.pods[0].ns,
        pod_ip(&topo, 0),
        5203,
        2 * MB,
    )
    .expect("2 MB router -> pod0");
    assert_eq!(t.bytes, 2 * MB);

    // Every flow above was decided by the engine; every packet was forwarded by it or by
    // the fast path (an XDP program forwarding what the engine installed), one or the other.
    let engine = node_packets(&agent, "ip4-lookup") - before;
    let fast = xdp_verdict(&agent, "fast_path") - fast_before;
    eprintln!("forwarded by the engine: {engine} packets, by the XDP fast path: {fast}");
    // At least: each of the 4 ping flows' first request and first reply, each of the 3
    // connections' SYN, SYN-ACK and a FIN each way (TCP control always goes to the engine).
    assert!(
        engine >= 4 * 2 + 3 * 4,
        "the engine forwarded only {engine} packets: it did not decide every flow"
    );
    assert!(
        engine + fast > 10 * MB / 1500,
        "engine {engine} + fast path {fast} packets: the 14 MB of pod traffic did not cross the dataplane"
    );
    // ip_forward=1, yet the node's kernel forwarded none of it: XDP hands it only the node's
    // own traffic.
    let kernel_after = topo.node.ip_forwarded().expect("ForwDatagrams");
    assert_eq!(
        kernel_after, kernel_before,
        "the node's kernel forwarded pod traffic (bypassing the engine)"
    );
    let ifs = agent.ctl_json(&["show", "interfaces"]).expect("interfaces");
    // The punt TUN (kind "punt") carries only the node's own traffic to services: none here.
    for i in ifs
        .as_array()
        .expect("array")
        .iter()
        .filter(|i| i["kind"] != "punt")
    {
        // rx_packets: the engine's (AF_XDP) and the fast path's (fast_rx_packets of them).
        assert!(
            i["rx_packets"].as_u64().unwrap_or(0) > i["fast_rx_packets"].as_u64().unwrap_or(0),
            "interface {} received nothing through AF_XDP (the engine): {i}",
            i["name"]
        );
        assert!(i["xdp_mode"].is_string(), "attach mode reported: {i}");
    }
    let table = agent.ctl(&["show", "counters"]).expect("table");
    assert!(table.contains("ip4-rewrite"), "{table}");
}

#[test]
fn host_traffic_stays_in_the_kernel() {
    if !require_root() {
        return;
    }
    let (topo, agent) = setup(1);
    let pass_before = xdp_verdict(&agent, "pass");
    ping(&topo.router, Topology::NODE_IP, 3).expect("router -> node address");
    let t = tcp_transfer(&topo.router, &topo.node, Topology::NODE_IP, 5301, MB)
        .expect("TCP router -> node");
    assert_eq!(t.bytes, MB);
    let t = tcp_transfer(&topo.node, &topo.router, Topology::ROUTER_IP, 5302, MB)
        .expect("TCP node -> router");
    assert_eq!(t.bytes, MB);
    let pass_after = xdp_verdict(&agent, "pass");
    assert!(
        pass_after >= pass_before + 3,
        "host traffic must be passed to the kernel by xdp_uplink ({pass_before} -> {pass_after})"
    );
}

fn xdp_verdict(agent: &AgentGuard, name: &str) -> u64 {
    let v = agent.ctl_json(&["show", "xdp"]).expect("show xdp");
    v["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no verdict {name} in {v}"))["count"]
        .as_u64()
        .expect("count")
}

#[test]
fn node_and_pods_reach_each_other() {
    if !require_root() {
        return;
    }
    let (topo, _agent) = setup(3);
    for (i, pod) in topo.pods.iter().enumerate() {
        // The kubelet's probes: node -> pod.
        ping(&topo.node, pod.ip, 2).unwrap_or_else(|e| panic!("node -> pod{i}: {e}"));
        let t = tcp_transfer(&topo.node, &pod.ns, pod.ip, 5400 + i as u16, MB)
            .unwrap_or_else(|e| panic!("TCP node -> pod{i}: {e}"));
        assert_eq!(t.bytes, MB);
        // Pod -> node.
        ping(&pod.ns, Topology::NODE_IP, 2).unwrap_or_else(|e| panic!("pod{i} -> node: {e}"));
        let t = tcp_transfer(&pod.ns, &topo.node, Topology::NODE_IP, 5410 + i as u16, MB)
            .unwrap_or_else(|e| panic!("TCP pod{i} -> node: {e}"));
        assert_eq!(t.bytes, MB);
    }
}

#[test]
fn malformed_frames_are_counted_and_ttl_expiry_answered() {
    if !require_root() {
        return;
    }
    let (topo, agent) = setup(2);
    // Resolve the gateway first so scapy can address the engine's MAC.
    ping(&topo.pods[0].ns, pod_ip(&topo, 1), 1).expect("warm-up ping");
    let dst = pod_ip(&topo, 1);
    let src = pod_ip(&topo, 0);
    let script = format!(
        r#"
from scapy.all import *
conf.verb = 0
gw = getmacbyip("169.254.1.1")
me = get_if_hwaddr("eth0")
assert gw, "no gateway MAC"
e = Ether(dst=gw, src=me, type=0x0800)
good = IP(src="{src}", dst="{dst}")/UDP(sport=4000, dport=9)/Raw(b"x"*20)
raw = bytes(good)
frames = [
    e/raw[:10],                                   # truncated IP header
    e/Raw(bytes([0x43]) + raw[1:]),               # IHL 3
    e/Raw(bytes([0x65]) + raw[1:]),               # version 6 in an IPv4 ethertype
    e/IP(src="{src}", dst="{dst}", chksum=0x1234)/UDP(sport=4000, dport=9),  # bad checksum
    e/Raw(raw[:2] + (2000).to_bytes(2, "big") + raw[4:]),  # total length past the frame
    Ether(dst=gw, src=me, type=0x0800)/Raw(b""),  # Ethernet header only
]
for f in frames:
    sendp(f, iface="eth0")
# TTL 1 to a pod: expect ICMP time exceeded from the node
ans = srp1(e/IP(src="{src}", dst="{dst}", ttl=1)/UDP(sport=4001, dport=9), iface="eth0", timeout=3)
assert ans is not None and ICMP in ans, "no ICMP answer to TTL 1"
print("icmp", ans[ICMP].type, ans[ICMP].code, ans[IP].src)
"#
    );
    let out = scapy(&topo.pods[0].ns, &script).expect("scapy");
    assert!(
        out.contains(&format!("icmp 11 0 {}", Topology::NODE_IP)),
        "expected time-exceeded from the node: {out}"
    );
    let want = [
        ("ip4-input", "truncated", 2),
        ("ip4-input", "bad-header-length", 1),
        ("ip4-input", "bad-version", 1),
        ("ip4-input", "bad-checksum", 1),
        ("ip4-rewrite", "ttl-expired", 1),
        ("ip4-icmp-error", "sent", 1),
    ];
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let missing: Vec<String> = want
            .iter()
            .filter(|(n, r, c)| error_count(&agent, n, r) < *c)
            .map(|(n, r, c)| format!("{n}: {r} < {c}"))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters not reached: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.is_running(), "agent survived malformed input");
    ping(&topo.pods[0].ns, dst, 1).expect("still forwarding");
}

#[test]
fn agent_restart_detaches_and_recovers() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(2).expect("topology");
    let agent = topo.start_agent(&bin_dir()).expect("agent start");
    ping(&topo.pods[0].ns, pod_ip(&topo, 1), 2).expect("before restart");
    let status = agent.stop();
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "agent exits cleanly on SIGTERM: {status:?}\n{}",
        agent.log_tail(20)
    );
    drop(agent);
    assert!(
        xdp_attached(&topo.node).is_empty(),
        "no XDP program left attached after stop: {:?}",
        xdp_attached(&topo.node)
    );
    // A clean `--on-exit detach` stop is an uninstall: the node's kernel takes the pods'
    // traffic back (with ip_forward=1 it forwards it itself, without policy). A crash or
    // `--on-exit keep` leaves the programs attached and fails closed (security suite).
    // Host networking is untouched while the agent is down.
    ping(&topo.router, Topology::NODE_IP, 1).expect("node address while agent is down");

    let agent = topo.start_agent(&bin_dir()).expect("agent restart");
    ping(&topo.pods[0].ns, pod_ip(&topo, 1), 2).expect("pods regain connectivity");
    ping(&topo.router, pod_ip(&topo, 0), 2).expect("router reaches pod again");
    assert_eq!(xdp_attached(&topo.node).len(), 3, "uplink + 2 pod veths");
    drop(agent);
}

/// A UDP ClusterIP service (10.96.0.53:53) in front of pod1 (10.244.1.11:5353).
const SERVICE_YAML: &str = "services:
  - metadata: {name: echo, namespace: default}
    spec:
      clusterIP: 10.96.0.53
      ports: [{name: echo, protocol: UDP, port: 53, targetPort: 5353}]
endpointSlices:
  - metadata: {name: echo-1, namespace: default, labels: {kubernetes.io/service-name: echo}}
    addressType: IPv4
    ports: [{name: echo, protocol: UDP, port: 5353}]
    endpoints:
      - {addresses: [10.244.1.11], conditions: {ready: true}, nodeName: node-1}
";

/// UDP echo server on port 5353.
const UDP_ECHO: &str = "import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 5353))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d, a)
";

/// One UDP flow to the service (source port 41000) every 100 ms; prints `reply <epoch>`.
const UDP_CLIENT: &str = "import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 41000))
s.settimeout(0.09)
while True:
    s.sendto(b'x', ('10.96.0.53', 53))
    try:
        s.recvfrom(64)
        print('reply', time.time(), flush=True)
        time.sleep(0.1)
    except socket.timeout:
        pass
";

/// `--on-exit keep`: while the agent restarts, established flows (pod to pod, router to pod,
/// pod to router, pod to a UDP service: translated) keep forwarding from the XDP flow cache; a new flow does not (fail
/// closed); the next agent adopts the programs in place and takes over.
#[test]
fn agent_restart_with_keep_forwards_established_flows() {
    if !require_root() {
        return;
    }
    let bpffs = ferroplane_e2e::BpffsMount::new().expect("bpffs");
    let pin = bpffs.path().join("node").to_string_lossy().to_string();
    let args = ["--pin-dir", pin.as_str(), "--on-exit", "keep"];
    let topo = Topology::single_node(2).expect("topology");
    // A UDP ClusterIP service in front of pod1 (a translated flow for the cache to replay).
    topo.write_spec(&format!("{}{SERVICE_YAML}", topo.spec_yaml()))
        .expect("spec");
    let agent = topo
        .start_agent_with(&bin_dir(), &args)
        .expect("agent start");
    ping(&topo.pods[0].ns, pod_ip(&topo, 1), 1).expect("before restart");
    let echo_log = topo.dir().join("udp-echo.log");
    let _echo = topo.pods[1]
        .ns
        .spawn_logged(&["python3", "-u", "-c", UDP_ECHO], &echo_log)
        .expect("udp echo server");
    let client_log = topo.dir().join("udp-client.log");
    let client = topo.pods[0]
        .ns
        .spawn_logged(&["python3", "-u", "-c", UDP_CLIENT], &client_log)
        .expect("udp client");

    // Three long-running pings: one ICMP flow each way per pair.
    let flows = [
        ("pod0-pod1", &topo.pods[0].ns, pod_ip(&topo, 1)),
        ("router-pod0", &topo.router, pod_ip(&topo, 0)),
        ("pod1-router", &topo.pods[1].ns, Topology::ROUTER_IP),
    ];
    let pings: Vec<_> = flows
        .into_iter()
        .map(|(name, ns, dst)| {
            let log = topo.dir().join(format!("{name}.log"));
            (name, ContinuousPing::start(ns, dst, &log).expect("ping"))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));

    let status = agent.stop();
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "{}",
        agent.log_tail(20)
    );
    drop(agent);
    let down_from = epoch_now();
    assert_eq!(
        xdp_attached(&topo.node).len(),
        3,
        "programs stay attached with --on-exit keep"
    );
    // A new flow (a new ping, a new ICMP id) is not in the cache: fail closed.
    assert!(
        ping(&topo.pods[0].ns, pod_ip(&topo, 1), 1).is_err(),
        "a new flow while the engine is away must not pass"
    );
    std::thread::sleep(Duration::from_secs(2));
    let down_until = epoch_now();
    // What XDP did meanwhile (for the failure message).
    let ctl = bin_dir().join("ferroctl");
    let dump = |map: &str| {
        std::process::Command::new(&ctl)
            .args(["map", "dump", map, "--pin-dir", &pin])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    let seen = format!("verdicts:\n{}\nflow4:\n{}", dump("verdicts"), dump("flow4"));

    let agent = topo
        .start_agent_with(&bin_dir(), &args)
        .expect("agent restart");
    std::thread::sleep(Duration::from_millis(1500));
    ping(&topo.pods[0].ns, pod_ip(&topo, 1), 1).expect("new flows after the restart");
    for (name, p) in &pings {
        let times = p.finish();
        let during = times
            .iter()
            .filter(|t| **t > down_from && **t < down_until)
            .count();
        let after = times.iter().filter(|t| **t > down_until + 1.0).count();
        // 2 s at 10 per second while the agent was down.
        assert!(
            during >= 10,
            "{name}: {during} replies while the agent was down (of {} in all)\n{}\n{seen}",
            times.len(),
            p.output()
        );
        assert!(after >= 5, "{name}: {after} replies after the restart");
    }
    // The service flow (pod0:41000 -> 10.96.0.53:53 -> pod1:5353 and back, translated).
    client.stop();
    let replies: Vec<f64> = std::fs::read_to_string(&client_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("reply ")?.parse().ok())
        .collect();
    let during = replies
        .iter()
        .filter(|t| **t > down_from && **t < down_until)
        .count();
    assert!(
        during >= 10,
        "service flow: {during} replies while the agent was down (of {})\n{seen}",
        replies.len()
    );
    assert_eq!(xdp_attached(&topo.node).len(), 3, "adopted, still attached");
    drop(agent);
}

/// `ip netns del`s a namespace this test added by name, on drop.
struct NamedNetns(String);

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

/// A standalone spec naming a pod whose network namespace does not exist: the agent
/// starts anyway (it used to refuse), serves the other pod, reports the pod as missing
/// (`show interfaces`, log), and plumbs it once the namespace appears.
#[test]
fn agent_starts_with_a_missing_pod_namespace() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(2).expect("topology");
    let late = format!("{}-late", topo.pods[1].ns.name());
    let spec = topo.spec_yaml().replace(
        &format!("netns: {}\n", topo.pods[1].ns.name()),
        &format!("netns: {late}\n"),
    );
    assert!(spec.contains(&late), "{spec}");
    topo.write_spec(&spec).expect("spec");
    let agent = topo
        .start_agent(&bin_dir())
        .expect("agent starts despite a missing netns");
    ping(&topo.router, pod_ip(&topo, 0), 2).expect("router -> pod0");
    let state_of = |agent: &AgentGuard| -> Option<String> {
        let ifs = agent
            .ctl_json(&["show", "interfaces"])
            .expect("show interfaces");
        ifs.as_array()
            .expect("interfaces")
            .iter()
            .find(|i| {
                i["pod"]
                    .as_str()
                    .is_some_and(|p| p.contains(&pod_ip(&topo, 1).to_string()))
            })
            .map(|i| i["state"].as_str().unwrap_or("?").to_string())
    };
    assert_eq!(state_of(&agent).as_deref(), Some("missing"));
    assert!(
        agent
            .log_tail(200)
            .contains("pod network namespace missing"),
        "{}",
        agent.log_tail(30)
    );
    let text = agent.ctl(&["show", "interfaces"]).expect("show interfaces");
    assert!(text.contains("missing"), "{text}");

    // The namespace appears: the agent plumbs the pod (it retries every 5 s).
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &late])
        .status()
        .expect("ip netns add");
    assert!(st.success());
    let _late_ns = NamedNetns(late.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    while state_of(&agent).as_deref() != Some("up") {
        assert!(
            Instant::now() < deadline,
            "pod not plumbed after its namespace appeared: {:?}\n{}",
            state_of(&agent),
            agent.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = std::process::Command::new("ip")
        .args(["-n", &late, "-j", "addr", "show", Topology::POD_IF])
        .output()
        .expect("ip addr");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&pod_ip(&topo, 1).to_string()),
        "{out:?}"
    );
    drop(agent);
}
/// Datagrams a namespace's UDP stack took in (delivered or to a closed port).
fn udp_received(ns: &ferroplane_e2e::netns::Netns) -> u64 {
    let snmp = ns.exec_ok(&["cat", "/proc/net/snmp"]).expect("snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        udp.next().expect("Udp header"),
        udp.next().expect("Udp values"),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(n, _)| *n == "InDatagrams" || *n == "NoPorts")
        .map(|(_, v)| v.parse::<u64>().expect("counter"))
        .sum()
}

/// A 4-queue uplink (veth pair with 4 RX/TX queues: the router's TX queue, picked by flow
/// hash, is the node's RX queue): the agent opens a socket per queue at consecutive
/// XSKMAP slots; 64 UDP flows from the router reach pod0 on every queue, none lost, none
/// steered into another port's socket (before: queue 1 landed in pod0's own slot, queues 2
/// and 3 in no socket), and each queue's port counts packets.
#[test]
fn multi_queue_uplink_uses_every_queue() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(1).expect("topology");
    topo.set_uplink_queues(4).expect("4-queue uplink");
    let u = Topology::UPLINK_IF;
    let agent = topo.start_agent(&bin_dir()).expect("agent start");
    ping(&topo.router, pod_ip(&topo, 0), 3).expect("router -> pod0");

    let pod = &topo.pods[0].ns;
    let before = udp_received(pod);
    let (flows, per_flow) = (64, 20);
    let script = format!(
        "import socket, time\n\
         socks = []\n\
         for i in range({flows}):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   s.bind(('0.0.0.0', 40000 + i))\n\
         \x20   socks.append(s)\n\
         for n in range({per_flow}):\n\
         \x20   for s in socks:\n\
         \x20       s.sendto(b'x' * 64, ('{}', 9))\n\
         \x20   time.sleep(0.005)\n",
        pod_ip(&topo, 0)
    );
    topo.router
        .exec_ok(&["python3", "-c", &script])
        .expect("sender");
    let sent = (flows * per_flow) as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = udp_received(pod) - before;
    while got < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        got = udp_received(pod) - before;
    }

    let bufs = agent.ctl_json(&["show", "buffers"]).expect("show buffers");
    let ports: Vec<&Value> = bufs["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter(|p| p["interface"] == u)
        .collect();
    let rx: Vec<(u64, u64, u64)> = ports
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().expect("port"),
                p["queue"].as_u64().expect("queue"),
                p["rx_packets"].as_u64().expect("rx_packets"),
            )
        })
        .collect();
    println!("uplink ports (port, queue, rx packets): {rx:?}; pod0 received {got} of {sent}");
    assert_eq!(
        rx.iter().map(|&(_, q, _)| q).collect::<Vec<_>>(),
        [0, 1, 2, 3],
        "one socket per rx queue: {bufs}"
    );
    let first = rx[0].0;
    for (i, &(port, queue, packets)) in rx.iter().enumerate() {
        assert_eq!(port, first + i as u64, "consecutive slots");
        assert!(packets > 0, "queue {queue} received nothing: {rx:?}");
    }
    assert_eq!(got, sent, "every datagram reached pod0");
    // `show interfaces`: the uplink has one entry per RX queue, each of which carried
    // traffic and dropped nothing, and the table prints a line per queue.
    let ifaces = agent
        .ctl_json(&["show", "interfaces"])
        .expect("show interfaces");
    let uplink = ifaces
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == u))
        .unwrap_or_else(|| panic!("no {u} in {ifaces}"));
    let queues = uplink["queues"].as_array().expect("queues");
    let per_queue: Vec<(u64, u64, u64)> = queues
        .iter()
        .map(|q| {
            (
                q["queue"].as_u64().expect("queue"),
                q["rx_packets"].as_u64().expect("rx_packets"),
                q["rx_drops"].as_u64().expect("rx_drops"),
            )
        })
        .collect();
    println!("show interfaces, {u} per queue (queue, rx packets, rx drops): {per_queue:?}");
    assert_eq!(
        per_queue.iter().map(|&(q, _, _)| q).collect::<Vec<_>>(),
        [0, 1, 2, 3],
        "one entry per rx queue: {uplink}"
    );
    for &(q, rx, drops) in &per_queue {
        assert!(rx > 0, "queue {q} carried no traffic: {uplink}");
        assert_eq!(drops, 0, "queue {q} dropped: {uplink}");
    }
    let table = agent.ctl(&["show", "interfaces"]).expect("show interfaces");
    let (_, queue_lines) = table
        .split_once("one per RX queue:")
        .unwrap_or_else(|| panic!("no per-queue section: {table}"));
    assert_eq!(
        queue_lines
            .lines()
            .filter(|l| l.starts_with(&format!("{u} ")))
            .count(),
        4,
        "{table}"
    );
    let drops = agent.ctl_json(&["show", "xdp"]).expect("show xdp");
    for reason in ["xsk_queue_range", "no_xsk", "xsk_slot_range"] {
        let n = drops["drops"]
            .as_array()
            .expect("drops")
            .iter()
            .find(|x| x["name"] == reason)
            .map_or(0, |x| x["count"].as_u64().unwrap_or(0));
        assert_eq!(n, 0, "{reason}: {drops}");
    }
    assert_eq!(xdp_verdict(&agent, "engine_away"), 0);
    for node in ["ethernet-input", "ip4-input"] {
        assert_eq!(
            error_count(&agent, node, "spoofed-source"),
            0,
            "{node}: nothing from the uplink arrived as pod0's"
        );
    }
    // Replies leave on queue 0's port: pod0 -> router still works.
    ping(pod, Topology::ROUTER_IP, 2).expect("pod0 -> router");
}
