//! Source validation (anti-spoofing): a pod's frames carry its own IP and MAC, the uplink
//! never brings a source inside the node's pod CIDR. Frames are forged with scapy; every
//! forged datagram carries its own payload, receivers (UDP sockets in the target namespace,
//! tcpdump on the router) prove what arrived, and `ferroctl show errors` counts the drops
//! as `spoofed-source`. Each case also sends the same frame with the true source first, so
//! the forging path itself is shown to deliver.
//!
//! UDP ports of this module: 47600-47649.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use ferroplane_e2e::netns::Netns;
use ferroplane_e2e::probe::scapy;
use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, require_root, ChildGuard};
use nix::sys::signal::Signal;

/// An address outside the cluster.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);

/// One forged UDP datagram: Ethernet and IP sources as given, `payload` as its marker.
#[derive(Debug, Clone)]
pub struct Forged {
    /// Ethernet source.
    pub src_mac: String,
    /// Ethernet destination.
    pub dst_mac: String,
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// UDP destination port.
    pub dport: u16,
    /// Payload (unique per datagram).
    pub payload: String,
}

/// Sends `frames` from `ifname` in `ns` with scapy (one process for all of them).
pub fn send_forged(ns: &Netns, ifname: &str, frames: &[Forged]) {
    let mut py = String::from(
        "from scapy.all import Ether, IP, UDP, sendp, conf\nconf.verb = 0\nframes = [\n",
    );
    for f in frames {
        let _ = writeln!(
            py,
            "  Ether(src='{}', dst='{}')/IP(src='{}', dst='{}', ttl=64)/UDP(sport=40000, dport={})/b'{}',",
            f.src_mac, f.dst_mac, f.src, f.dst, f.dport, f.payload
        );
    }
    let _ = writeln!(py, "]\nsendp(frames, iface='{ifname}', verbose=False)");
    scapy(ns, &py).expect("scapy send");
}

/// A UDP socket bound in `ns` on `addr:port` (the socket stays in that namespace).
pub fn udp_receiver(ns: &Netns, addr: Ipv4Addr, port: u16) -> UdpSocket {
    let s = ns
        .run(move || UdpSocket::bind((addr, port)))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("bind {addr}:{port} in {}: {e}", ns.name()));
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    s
}

/// Payloads `sock` receives until `quiet` passes without a datagram.
pub fn received(sock: &UdpSocket, quiet: Duration) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    let mut buf = [0u8; 2048];
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
            last = Instant::now();
        }
    }
    got
}

/// The engine's error counter `node: reason`.
pub fn error_count(agent: &AgentGuard, node: &str, reason: &str) -> u64 {
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

/// The MAC of the host end of `pod`'s veth (the gateway MAC the engine answers ARP with).
pub fn gateway_mac(agent: &AgentGuard, pod: &str) -> String {
    let v = agent
        .ctl_json(&["show", "interfaces"])
        .expect("show interfaces");
    let list = v
        .as_array()
        .or_else(|| v["interfaces"].as_array())
        .unwrap_or_else(|| panic!("interfaces: {v}"));
    list.iter()
        .find(|i| {
            // `default/pod0 (10.244.1.10)`
            i["pod"]
                .as_str()
                .and_then(|p| p.split(' ').next())
                .is_some_and(|p| p == format!("default/{pod}"))
        })
        .and_then(|i| i["mac"].as_str())
        .unwrap_or_else(|| panic!("no interface for {pod}: {v}"))
        .to_string()
}

/// `tcpdump` writing what matches `filter` on `ifname` in `ns` to `pcap`; started and
/// listening when this returns.
pub struct Capture {
    guard: ChildGuard,
    pcap: std::path::PathBuf,
}

impl Capture {
    /// Starts the capture.
    pub fn start(ns: &Netns, ifname: &str, filter: &str, pcap: &Path) -> Capture {
        let p = pcap.to_string_lossy();
        let mut args = vec![
            "tcpdump",
            "--immediate-mode",
            "-i",
            ifname,
            "-nn",
            "-U",
            "-w",
            &*p,
        ];
        args.extend(filter.split_whitespace());
        let log = pcap.with_extension("log");
        let guard = ns.spawn_logged(&args, &log).expect("tcpdump");
        let start = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
        {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "tcpdump did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Capture {
            guard,
            pcap: pcap.to_path_buf(),
        }
    }

    /// Stops it and returns one line per captured packet (`tcpdump -r -nn`).
    pub fn finish(self, ns: &Netns) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        self.guard.stop_with(Signal::SIGINT, Duration::from_secs(2));
        let text = ns
            .exec_ok(&["tcpdump", "-r", &self.pcap.to_string_lossy(), "-nn"])
            .expect("read capture");
        text.lines().map(str::to_string).collect()
    }
}

/// A started single-node topology with `pods` pods and the node forwarding as Kubernetes
/// nodes do (`ip_forward=1`: the kernel would route whatever reached it).
pub fn node_with(
    pods: usize,
    spec: Option<&dyn Fn(&Topology) -> String>,
) -> (Topology, AgentGuard) {
    let topo = Topology::single_node(pods).expect("topology");
    topo.node
        .set_sysctl("net.ipv4.ip_forward", "1")
        .expect("ip_forward");
    if let Some(spec) = spec {
        topo.write_spec(&spec(&topo)).expect("spec");
    }
    let agent = topo.start_agent(&bin_dir()).expect("agent");
    (topo, agent)
}

fn payloads(frames: &[Forged]) -> BTreeSet<String> {
    frames.iter().map(|f| f.payload.clone()).collect()
}

#[test]
fn spoofed_pod_sources_are_dropped_and_counted() {
    if !require_root() {
        return;
    }
    let (topo, agent) = node_with(3, None);
    let (pod0, pod1, pod2) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    let gw = gateway_mac(&agent, "pod0");
    let own_mac = pod0.ns.mac(Topology::POD_IF).expect("pod0 mac");
    let pod1_mac = pod1.ns.mac(Topology::POD_IF).expect("pod1 mac");
    let (to_pod, to_node, to_router) = (47600, 47601, 47602);
    let at_pod2 = udp_receiver(&pod2.ns, Ipv4Addr::UNSPECIFIED, to_pod);
    let at_node = udp_receiver(&topo.node, Topology::NODE_IP, to_node);
    let at_router = udp_receiver(&topo.router, Topology::ROUTER_IP, to_router);
    let pcap = topo.dir().join("router.pcap");
    let cap = Capture::start(
        &topo.router,
        Topology::ROUTER_IF,
        &format!("udp and dst port {to_router}"),
        &pcap,
    );
    let frame = |mac: &str, src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &str| Forged {
        src_mac: mac.to_string(),
        dst_mac: gw.clone(),
        src,
        dst,
        dport,
        payload: payload.to_string(),
    };
    let legit = vec![
        frame(&own_mac, pod0.ip, pod2.ip, to_pod, "legit-to-pod2"),
        frame(
            &own_mac,
            pod0.ip,
            Topology::NODE_IP,
            to_node,
            "legit-to-node",
        ),
        frame(
            &own_mac,
            pod0.ip,
            Topology::ROUTER_IP,
            to_router,
            "legit-to-router",
        ),
    ];
    // Dropped by ip4-input (the pod's own MAC, another source address).
    let by_address = vec![
        frame(&own_mac, pod1.ip, pod2.ip, to_pod, "pod1-ip-to-pod2"),
        frame(
            &own_mac,
            Topology::NODE_IP,
            pod2.ip,
            to_pod,
            "node-ip-to-pod2",
        ),
        frame(&own_mac, OUTSIDE, pod2.ip, to_pod, "outside-to-pod2"),
        frame(
            &own_mac,
            Topology::NODE_IP,
            Topology::ROUTER_IP,
            to_router,
            "node-ip-out",
        ),
        frame(
            &own_mac,
            OUTSIDE,
            Topology::ROUTER_IP,
            to_router,
            "outside-out",
        ),
        frame(
            &own_mac,
            pod1.ip,
            Topology::ROUTER_IP,
            to_router,
            "pod1-ip-out",
        ),
        frame(
            &own_mac,
            Ipv4Addr::UNSPECIFIED,
            Topology::ROUTER_IP,
            to_router,
            "zero-out",
        ),
    ];
    // Dropped by ethernet-input (the pod's own address, another MAC).
    let by_mac = vec![
        frame(&pod1_mac, pod0.ip, pod2.ip, to_pod, "pod1-mac-to-pod2"),
        frame(
            "02:de:ad:be:ef:01",
            pod0.ip,
            pod2.ip,
            to_pod,
            "other-mac-to-pod2",
        ),
        frame(
            "02:de:ad:be:ef:01",
            pod0.ip,
            Topology::ROUTER_IP,
            to_router,
            "other-mac-out",
        ),
    ];
    // For the node itself (passed to its kernel by XDP, never to the engine): another
    // pod's address or an outside one is refused by the host veth's strict reverse-path
    // filter.
    let to_kernel = vec![
        frame(
            &own_mac,
            pod1.ip,
            Topology::NODE_IP,
            to_node,
            "pod1-ip-to-node",
        ),
        frame(
            &own_mac,
            OUTSIDE,
            Topology::NODE_IP,
            to_node,
            "outside-to-node",
        ),
    ];
    let ip_before = error_count(&agent, "ip4-input", "spoofed-source");
    let eth_before = error_count(&agent, "ethernet-input", "spoofed-source");
    send_forged(&pod0.ns, Topology::POD_IF, &legit);
    let quiet = Duration::from_millis(500);
    assert_eq!(
        received(&at_pod2, quiet),
        payloads(&legit[0..1]),
        "forged frame with pod0's true source to pod2"
    );
    assert_eq!(received(&at_node, quiet), payloads(&legit[1..2]));
    assert_eq!(received(&at_router, quiet), payloads(&legit[2..3]));

    let forged: Vec<Forged> = [by_address.clone(), by_mac.clone(), to_kernel]
        .into_iter()
        .flatten()
        .collect();
    send_forged(&pod0.ns, Topology::POD_IF, &forged);
    let (p, n, r) = (
        received(&at_pod2, quiet),
        received(&at_node, quiet),
        received(&at_router, quiet),
    );
    assert!(p.is_empty(), "pod2 received forged datagrams: {p:?}");
    assert!(n.is_empty(), "the node received forged datagrams: {n:?}");
    assert!(r.is_empty(), "the router received forged datagrams: {r:?}");
    // Nothing forged left the uplink: only the one legit datagram is on the router's wire.
    let wire = cap.finish(&topo.router);
    assert_eq!(wire.len(), 1, "router capture: {wire:#?}");
    assert!(
        wire[0].contains(&format!("IP {}.40000 > ", pod0.ip)),
        "router capture: {wire:#?}"
    );
    assert_eq!(
        error_count(&agent, "ip4-input", "spoofed-source") - ip_before,
        by_address.len() as u64,
        "ip4-input spoofed-source"
    );
    assert_eq!(
        error_count(&agent, "ethernet-input", "spoofed-source") - eth_before,
        by_mac.len() as u64,
        "ethernet-input spoofed-source"
    );
    // `show errors` (the table) names the reason.
    let table = agent.ctl(&["show", "errors"]).expect("show errors");
    assert!(table.contains("spoofed-source"), "{table}");
}

#[test]
fn uplink_sources_inside_the_pod_cidr_are_dropped() {
    if !require_root() {
        return;
    }
    let (topo, agent) = node_with(2, None);
    let pod0 = &topo.pods[0];
    let port = 47610;
    let at_pod0 = udp_receiver(&pod0.ns, Ipv4Addr::UNSPECIFIED, port);
    let up_mac = topo.node.mac(Topology::UPLINK_IF).expect("uplink mac");
    let rtr_mac = topo.router.mac(Topology::ROUTER_IF).expect("router mac");
    let frame = |src: Ipv4Addr, payload: &str| Forged {
        src_mac: rtr_mac.clone(),
        dst_mac: up_mac.clone(),
        src,
        dst: pod0.ip,
        dport: port,
        payload: payload.to_string(),
    };
    let quiet = Duration::from_millis(500);
    let legit = [
        frame(Topology::ROUTER_IP, "router"),
        frame(OUTSIDE, "outside"),
    ];
    send_forged(&topo.router, Topology::ROUTER_IF, &legit);
    assert_eq!(received(&at_pod0, quiet), payloads(&legit));

    let before = error_count(&agent, "ip4-input", "spoofed-source");
    let forged = [
        frame(topo.pods[1].ip, "as-pod1"),
        frame(pod0.ip, "as-pod0-itself"),
        frame(Ipv4Addr::new(10, 244, 1, 200), "as-unused-pod-address"),
    ];
    send_forged(&topo.router, Topology::ROUTER_IF, &forged);
    let got = received(&at_pod0, quiet);
    assert!(got.is_empty(), "pod0 received: {got:?}");
    assert_eq!(
        error_count(&agent, "ip4-input", "spoofed-source") - before,
        forged.len() as u64
    );
}

/// The topology's spec with `app: <pod name>` labels and a NetworkPolicy that admits only
/// pod1 to pod2.
fn spec_only_pod1_to_pod2(topo: &Topology) -> String {
    let mut y = topo.spec_yaml();
    for pod in &topo.pods {
        let line = format!("    netns: {}\n", pod.ns.name());
        y = y.replace(&line, &format!("{line}    labels: {{app: {}}}\n", pod.name));
    }
    y.push_str(
        "networkPolicies:\n  - metadata: {name: only-pod1, namespace: default}\n    spec:\n      podSelector: {matchLabels: {app: pod2}}\n      policyTypes: [Ingress]\n      ingress:\n        - from: [{podSelector: {matchLabels: {app: pod1}}}]\n",
    );
    y
}

#[test]
fn a_forged_source_does_not_pass_a_policy_admitting_the_real_pod() {
    if !require_root() {
        return;
    }
    let (topo, agent) = node_with(3, Some(&spec_only_pod1_to_pod2));
    let (pod0, pod1, pod2) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    let port = 47620;
    let at_pod2 = udp_receiver(&pod2.ns, Ipv4Addr::UNSPECIFIED, port);
    let quiet = Duration::from_millis(500);
    // The policy works: pod1 gets through, pod0 (its true address) does not.
    let gw0 = gateway_mac(&agent, "pod0");
    let gw1 = gateway_mac(&agent, "pod1");
    let mac0 = pod0.ns.mac(Topology::POD_IF).expect("pod0 mac");
    let mac1 = pod1.ns.mac(Topology::POD_IF).expect("pod1 mac");
    let frame = |mac: &str, gw: &str, src: Ipv4Addr, payload: &str| Forged {
        src_mac: mac.to_string(),
        dst_mac: gw.to_string(),
        src,
        dst: pod2.ip,
        dport: port,
        payload: payload.to_string(),
    };
    send_forged(
        &pod1.ns,
        Topology::POD_IF,
        &[frame(&mac1, &gw1, pod1.ip, "pod1")],
    );
    send_forged(
        &pod0.ns,
        Topology::POD_IF,
        &[frame(&mac0, &gw0, pod0.ip, "pod0")],
    );
    assert_eq!(
        received(&at_pod2, quiet),
        BTreeSet::from(["pod1".to_string()]),
        "the policy admits pod1 only"
    );
    let denied_before = error_count(&agent, "ip4-policy", "policy-denied-ingress");
    assert!(denied_before >= 1, "pod0 was denied by the policy");
    // pod0 claiming pod1's address (with its own MAC, and with pod1's MAC too).
    let before_ip = error_count(&agent, "ip4-input", "spoofed-source");
    let before_eth = error_count(&agent, "ethernet-input", "spoofed-source");
    send_forged(
        &pod0.ns,
        Topology::POD_IF,
        &[
            frame(&mac0, &gw0, pod1.ip, "pod0-as-pod1"),
            frame(&mac1, &gw0, pod1.ip, "pod0-as-pod1-with-its-mac"),
        ],
    );
    let got = received(&at_pod2, quiet);
    assert!(got.is_empty(), "pod2 received: {got:?}");
    assert_eq!(
        error_count(&agent, "ip4-input", "spoofed-source") - before_ip,
        1
    );
    assert_eq!(
        error_count(&agent, "ethernet-input", "spoofed-source") - before_eth,
        1
    );
    // Dropped before policy ever judged them.
    assert_eq!(
        error_count(&agent, "ip4-policy", "policy-denied-ingress"),
        denied_before
    );
}
