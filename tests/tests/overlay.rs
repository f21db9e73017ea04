//! Overlay suite: 3-node clusters (each node its own agent and engine) in every mode
//! (direct, IPIP, VXLAN, WireGuard), interop with a kernel VXLAN endpoint and with
//! wireguard-go, captures on the fabric, and path MTU. Every node runs with masquerade
//! on.
//!
//! TCP ports of this suite: 47100-47199.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ferroplane_e2e::cluster::{Cluster, ExternalPeer, OverlayMode, WgKeys};
use ferroplane_e2e::probe::{ping, scapy, tcp_transfer};
use ferroplane_e2e::{bin_dir, require_root, ChildGuard, Netns};
use serde_json::Value;

const MB: u64 = 1024 * 1024;

#[path = "overlay/fragments.rs"]
mod fragments;

/// Every node of this suite masquerades pod traffic leaving the cluster (the README's
/// `serviceProxy` settings): the pods here only talk to pods (inside `clusterCIDRs`), so
/// nothing may be masqueraded, and every answer must come back untranslated.
const MASQUERADE: &str =
    "serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\n  masquerade: true\n";

/// Appends [`MASQUERADE`] to every node's spec (after any section the test added).
fn masquerade(c: &mut Cluster) {
    for n in &mut c.nodes {
        n.extra_yaml.push_str(MASQUERADE);
    }
}

/// [`MASQUERADE`] and a ClusterIP service whose only backend is node-2's pod1 (port `port`).
fn service_yaml(port: u16) -> String {
    format!(
        "{MASQUERADE}services:\n  - metadata: {{ name: remote, namespace: default }}\n    spec:\n      type: ClusterIP\n      clusterIP: {SERVICE_IP}\n      ports: [ {{ name: tcp, protocol: TCP, port: {port}, targetPort: {port} }} ]\nendpointSlices:\n  - metadata: {{ name: remote-1, namespace: default, labels: {{ kubernetes.io/service-name: remote }} }}\n    addressType: IPv4\n    ports: [ {{ name: tcp, protocol: TCP, port: {port} }} ]\n    endpoints:\n      - addresses: [10.244.2.11]\n        conditions: {{ ready: true }}\n        nodeName: node-2\n"
    )
}

const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);

fn cluster_with_service(mode: OverlayMode, service_port: Option<u16>) -> Cluster {
    let mut c = Cluster::new(3, 2, mode).expect("cluster");
    match service_port {
        Some(port) => {
            for n in &mut c.nodes {
                n.extra_yaml = service_yaml(port);
            }
        }
        None => masquerade(&mut c),
    }
    c.start(&bin_dir()).expect("agents");
    c
}

fn tunnels(c: &Cluster, node: usize) -> Value {
    c.agent(node)
        .ctl_json(&["show", "tunnels"])
        .expect("show tunnels")
}

fn peer<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no peer {name} in {report}"))
}

fn error_count(c: &Cluster, node: usize, graph_node: &str, reason: &str) -> u64 {
    let v = c
        .agent(node)
        .ctl_json(&["show", "errors", "--all"])
        .expect("show errors");
    v.as_array()
        .expect("errors array")
        .iter()
        .find(|e| e["node"] == graph_node && e["reason"] == reason)
        .map(|e| e["count"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

/// Ping that tolerates the first packets of a flow (neighbour resolution, WireGuard handshake).
fn ping_eventually(ns: &Netns, ip: Ipv4Addr) {
    let start = Instant::now();
    loop {
        match ping(ns, ip, 1) {
            Ok(_) => return,
            Err(e) if start.elapsed() > Duration::from_secs(8) => {
                panic!("ping {ip} from {}: {e}", ns.name())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Pod↔pod across nodes (ping both ways, 10 MB TCP byte-exact) in `mode`.
fn cross_node_traffic(mode: OverlayMode, port: u16) {
    let c = cluster_with_service(mode, Some(port + 2));
    let (a, b, d) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    // Pod MTU follows the encapsulation.
    let mtu = a.pods[0]
        .ns
        .exec_ok(&["cat", "/sys/class/net/eth0/mtu"])
        .expect("pod mtu");
    assert_eq!(
        mtu.trim().parse::<u32>().unwrap(),
        Cluster::MTU - mode.overhead(),
        "pod MTU in {mode:?}"
    );
    ping_eventually(&a.pods[0].ns, b.pods[0].ip);
    ping(&a.pods[0].ns, b.pods[0].ip, 3).expect("node-1 pod -> node-2 pod");
    ping_eventually(&b.pods[1].ns, a.pods[1].ip);
    ping_eventually(&d.pods[0].ns, a.pods[0].ip);
    ping_eventually(&b.pods[0].ns, d.pods[1].ip);
    let s = tcp_transfer(&a.pods[0].ns, &d.pods[1].ns, d.pods[1].ip, port, 10 * MB)
        .expect("10 MB node-1 -> node-3");
    assert_eq!(s.bytes, 10 * MB);
    let s = tcp_transfer(
        &b.pods[1].ns,
        &a.pods[0].ns,
        a.pods[0].ip,
        port + 1,
        10 * MB,
    )
    .expect("10 MB node-2 -> node-1");
    assert_eq!(s.bytes, 10 * MB);

    // A service on node-1 whose backend runs on node-2 (DNAT, then the overlay).
    let s = tcp_transfer(&a.pods[0].ns, &b.pods[1].ns, SERVICE_IP, port + 2, MB)
        .expect("pod -> service with a remote backend");
    assert_eq!(s.bytes, MB);

    // The tunnels report what went through them.
    let r = tunnels(&c, 0);
    assert_eq!(r["default_mode"], mode.as_str());
    let p = peer(&r, "node-3");
    assert_eq!(p["mode"], mode.as_str(), "{r}");
    assert_eq!(p["address"], c.nodes[2].address.to_string());
    assert_eq!(p["pod_cidrs"][0], "10.244.3.0/24");
    assert_eq!(p["state"], "up", "{r}");
    if mode != OverlayMode::Direct {
        assert!(p["tx_bytes"].as_u64().unwrap() >= 10 * MB, "{r}");
        let p2 = peer(&r, "node-2");
        assert!(p2["rx_bytes"].as_u64().unwrap() >= 10 * MB, "{r}");
        assert_eq!(p["mtu"], Cluster::MTU - mode.overhead());
    }
    if mode == OverlayMode::WireGuard {
        assert!(p["handshake_age_secs"].as_f64().is_some(), "{r}");
        assert_eq!(
            r["public_key"], c.nodes[0].wg.public,
            "published public key"
        );
        assert_eq!(p["public_key"], c.nodes[2].wg.public);
    }
    // The remote pod CIDR is a cluster route toward node-3.
    let routes = c.agent(0).ctl_json(&["show", "routes"]).expect("routes");
    let remote = routes
        .as_array()
        .expect("route list")
        .iter()
        .find(|r| r["prefix"] == "10.244.3.0/24")
        .unwrap_or_else(|| panic!("no route to node-3's pods: {routes}"));
    assert_eq!(remote["source"], "cluster", "{remote}");
    let table = c.agent(0).ctl(&["show", "tunnels"]).expect("table");
    assert!(
        table.contains("node-3") && table.contains(mode.as_str()),
        "{table}"
    );
    // Masquerade is on, and nothing here left the cluster: nothing was masqueraded.
    for i in 0..c.nodes.len() {
        assert_eq!(error_count(&c, i, "ip4-nat", "masquerade-sessions"), 0);
    }
}

#[test]
fn direct_routing_between_three_nodes() {
    if !require_root() {
        return;
    }
    cross_node_traffic(OverlayMode::Direct, 47100);
}

#[test]
fn ipip_between_three_nodes() {
    if !require_root() {
        return;
    }
    cross_node_traffic(OverlayMode::Ipip, 47110);
}

#[test]
fn vxlan_between_three_nodes() {
    if !require_root() {
        return;
    }
    cross_node_traffic(OverlayMode::Vxlan, 47120);
}

#[test]
fn wireguard_between_three_nodes() {
    if !require_root() {
        return;
    }
    cross_node_traffic(OverlayMode::WireGuard, 47130);
}

/// Starts `tcpdump -U -w PATH` on `ifname` in `ns` and waits until it writes.
fn capture(ns: &Netns, ifname: &str, filter: &str, path: &std::path::Path) -> ChildGuard {
    let p = path.to_string_lossy();
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
    let log = path.with_extension("log");
    let g = ns.spawn_logged(&args, &log).expect("tcpdump");
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
    g
}

#[test]
fn ipip_capture_decodes_as_ipv4_in_ipv4() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new(2, 1, OverlayMode::Ipip).expect("cluster");
    masquerade(&mut c);
    c.start(&bin_dir()).expect("agents");
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    ping_eventually(&a.pods[0].ns, b.pods[0].ip);
    let pcap = c.dir().join("ipip.pcap");
    let cap = capture(&c.fabric, "f1", "ip proto 4", &pcap);
    ping(&a.pods[0].ns, b.pods[0].ip, 3).expect("ping through IPIP");
    std::thread::sleep(Duration::from_millis(300));
    cap.stop();
    let out = scapy(
        &c.fabric,
        &format!(
            r#"
from scapy.all import *
pk = rdpcap("{}")
n = 0
for p in pk:
    o = p[IP]
    i = o.payload
    assert o.proto == 4, o.summary()
    assert isinstance(i, IP), p.summary()
    if i.haslayer(ICMP):
        n += 1
        print(o.src, o.dst, i.src, i.dst, i[ICMP].type)
print("count", n, len(pk), [q.summary() for q in pk[:3]])
"#,
            pcap.display()
        ),
    )
    .expect("scapy decode");
    let (na, nb) = (a.address.to_string(), b.address.to_string());
    let (pa, pb) = (a.pods[0].ip.to_string(), b.pods[0].ip.to_string());
    let fwd = format!("{na} {nb} {pa} {pb} 8");
    let back = format!("{nb} {na} {pb} {pa} 0");
    assert!(out.lines().filter(|l| *l == fwd).count() >= 3, "{out}");
    assert!(out.lines().filter(|l| *l == back).count() >= 3, "{out}");
}

#[test]
fn vxlan_interop_with_kernel_vxlan() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new(1, 1, OverlayMode::Vxlan).expect("cluster");
    let kaddr = Ipv4Addr::new(192, 168, 200, 50);
    let kmac = "02:aa:bb:cc:dd:50";
    c.add_external_peer(ExternalPeer {
        name: "kernel-vxlan".into(),
        address: kaddr,
        pod_cidr: "10.244.9.0/24".into(),
        mode: None,
        vtep_mac: Some(kmac.into()),
        public_key: None,
    });
    c.attach(Netns::new("kvx").expect("netns"), "eth0", kaddr)
        .expect("attach");
    let (k, n1) = (&c.extra[0], &c.nodes[0]);
    // flannel's layout: vxlan device without remote, FDB entry per remote VTEP MAC,
    // route to the remote pod CIDR via its .0 address with a permanent neighbour.
    k.ip(&[
        "link",
        "add",
        "vxlan0",
        "type",
        "vxlan",
        "id",
        "42",
        "dstport",
        "4789",
        "local",
        "192.168.200.50",
        "dev",
        "eth0",
        "nolearning",
    ])
    .expect("vxlan device");
    k.ip(&[
        "link", "set", "vxlan0", "address", kmac, "mtu", "1450", "up",
    ])
    .expect("vxlan up");
    k.add_addr("vxlan0", "10.244.9.1/32").expect("addr");
    k.exec_ok(&[
        "bridge",
        "fdb",
        "append",
        &n1.vtep_mac,
        "dev",
        "vxlan0",
        "dst",
        &n1.address.to_string(),
    ])
    .expect("fdb");
    k.ip(&[
        "neigh",
        "replace",
        "10.244.1.0",
        "lladdr",
        &n1.vtep_mac,
        "dev",
        "vxlan0",
        "nud",
        "permanent",
    ])
    .expect("neigh");
    k.ip(&[
        "route",
        "add",
        "10.244.1.0/24",
        "via",
        "10.244.1.0",
        "dev",
        "vxlan0",
        "onlink",
        "src",
        "10.244.9.1",
    ])
    .expect("route");
    masquerade(&mut c);
    c.start(&bin_dir()).expect("agents");
    let (pod, k) = (&c.nodes[0].pods[0], &c.extra[0]);
    // kernel -> ferroplane pod
    ping_eventually(k, pod.ip);
    // ferroplane pod -> kernel
    ping(&pod.ns, Ipv4Addr::new(10, 244, 9, 1), 3).expect("pod -> kernel VXLAN");
    let s = tcp_transfer(k, &pod.ns, pod.ip, 47140, MB).expect("TCP kernel -> pod");
    assert_eq!(s.bytes, MB);
    let s = tcp_transfer(&pod.ns, k, Ipv4Addr::new(10, 244, 9, 1), 47141, MB)
        .expect("TCP pod -> kernel");
    assert_eq!(s.bytes, MB);
    let r = tunnels(&c, 0);
    let p = peer(&r, "kernel-vxlan");
    assert_eq!(p["vtep_mac"], kmac);
    assert!(
        p["rx_packets"].as_u64().unwrap() > 0 && p["tx_packets"].as_u64().unwrap() > 0,
        "{r}"
    );
}

/// A wireguard-go peer in its own namespace on the fabric.
struct WgGo {
    _proc: ChildGuard,
    ifname: String,
    keys: WgKeys,
    addr: Ipv4Addr,
    pod_ip: Ipv4Addr,
}

fn wg_peer_spec(name: &str, addr: Ipv4Addr, cidr: &str, keys: &WgKeys) -> ExternalPeer {
    ExternalPeer {
        name: name.into(),
        address: addr,
        pod_cidr: cidr.into(),
        mode: Some(OverlayMode::WireGuard),
        vtep_mac: None,
        public_key: Some(keys.public.clone()),
    }
}

/// Starts wireguard-go in `ns` (interface `ifname`) peering with node `n` of the cluster.
fn start_wg_go(
    c: &Cluster,
    ns: &Netns,
    ifname: &str,
    keys: WgKeys,
    addr: Ipv4Addr,
    pod_ip: Ipv4Addr,
) -> WgGo {
    let n = &c.nodes[0];
    let key_file = c.dir().join(format!("{ifname}.key"));
    std::fs::write(&key_file, format!("{}\n", keys.private)).expect("key file");
    let log = c.dir().join(format!("{ifname}.log"));
    let proc = ns
        .spawn_logged(&["wireguard-go", "-f", ifname], &log)
        .expect("wireguard-go");
    let start = Instant::now();
    while ns.ip(&["link", "show", ifname]).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "wireguard-go did not create {ifname}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ns.exec_ok(&[
        "wg",
        "set",
        ifname,
        "private-key",
        &key_file.to_string_lossy(),
        "listen-port",
        "51820",
        "peer",
        &n.wg.public,
        "allowed-ips",
        &n.pod_cidr,
        "endpoint",
        &format!("{}:51820", n.address),
    ])
    .expect("wg set");
    ns.add_addr(ifname, &format!("{pod_ip}/32")).expect("addr");
    ns.ip(&["link", "set", ifname, "up", "mtu", "1420"])
        .expect("up");
    ns.ip(&[
        "route",
        "add",
        &n.pod_cidr,
        "dev",
        ifname,
        "src",
        &pod_ip.to_string(),
    ])
    .expect("route");
    WgGo {
        _proc: proc,
        ifname: ifname.into(),
        keys,
        addr,
        pod_ip,
    }
}

/// Seconds since the epoch of wireguard-go's latest handshake with its only peer (0: none).
fn wg_latest_handshake(ns: &Netns, ifname: &str) -> u64 {
    let dump = ns
        .exec_ok(&["wg", "show", ifname, "dump"])
        .expect("wg dump");
    // Second line: peer public-key, psk, endpoint, allowed-ips, latest-handshake, rx, tx, keepalive.
    dump.lines()
        .nth(1)
        .and_then(|l| l.split('\t').nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn wireguard_interop_with_wireguard_go() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new(1, 1, OverlayMode::WireGuard).expect("cluster");
    let (ka, kb) = (WgKeys::generate().unwrap(), WgKeys::generate().unwrap());
    let (aa, ab) = (
        Ipv4Addr::new(192, 168, 200, 60),
        Ipv4Addr::new(192, 168, 200, 61),
    );
    c.add_external_peer(wg_peer_spec("wg-go-a", aa, "10.244.8.0/24", &ka));
    c.add_external_peer(wg_peer_spec("wg-go-b", ab, "10.244.7.0/24", &kb));
    c.attach(Netns::new("wga").unwrap(), "eth0", aa)
        .expect("attach a");
    c.attach(Netns::new("wgb").unwrap(), "eth0", ab)
        .expect("attach b");
    masquerade(&mut c);
    c.start(&bin_dir()).expect("agents");
    let pid = std::process::id() % 100_000;
    let a = start_wg_go(
        &c,
        &c.extra[0],
        &format!("fpwa{pid}"),
        ka,
        aa,
        Ipv4Addr::new(10, 244, 8, 1),
    );
    let b = start_wg_go(
        &c,
        &c.extra[1],
        &format!("fpwb{pid}"),
        kb,
        ab,
        Ipv4Addr::new(10, 244, 7, 1),
    );
    let pod = &c.nodes[0].pods[0];
    let sent0 = error_count(&c, 0, "tunnel-encap", "wg-handshake-sent");
    let replied0 = error_count(&c, 0, "tunnel-decap", "wg-reply");

    // (a) ferroplane initiates: the pod talks first. Capture what crosses the fabric.
    let pcap = c.dir().join("wg.pcap");
    let cap = capture(&c.fabric, "f1", &format!("ip and host {}", a.addr), &pcap);
    assert_eq!(wg_latest_handshake(&c.extra[0], &a.ifname), 0);
    let start = Instant::now();
    while c.nodes[0].pods[0]
        .ns
        .exec(&[
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "1",
            "-p",
            "deadbeef",
            &a.pod_ip.to_string(),
        ])
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "pod -> wireguard-go a"
        );
    }
    ping(&pod.ns, a.pod_ip, 3).expect("pod -> wireguard-go");
    let s = tcp_transfer(&pod.ns, &c.extra[0], a.pod_ip, 47150, MB).expect("TCP pod -> wg-go");
    assert_eq!(s.bytes, MB);
    let s = tcp_transfer(&c.extra[0], &pod.ns, pod.ip, 47151, MB).expect("TCP wg-go -> pod");
    assert_eq!(s.bytes, MB);
    std::thread::sleep(Duration::from_millis(300));
    cap.stop();
    assert!(
        wg_latest_handshake(&c.extra[0], &a.ifname) > 0,
        "wg-go a saw no handshake"
    );
    assert!(
        error_count(&c, 0, "tunnel-encap", "wg-handshake-sent") > sent0,
        "ferroplane did not initiate toward a"
    );
    // Only WireGuard UDP on the wire; the ping pattern never appears in clear.
    let dump = c
        .fabric
        .exec_ok(&["tcpdump", "-r", &pcap.to_string_lossy(), "-nn", "-x"])
        .expect("read capture");
    let headers: Vec<&str> = dump.lines().filter(|l| !l.starts_with('\t')).collect();
    assert!(headers.len() > 20, "{dump}");
    for h in &headers {
        assert!(
            h.contains(".51820 > ") && h.contains(".51820: UDP"),
            "not WireGuard: {h}"
        );
    }
    let hex: String = dump
        .lines()
        .filter(|l| l.starts_with('\t'))
        .map(|l| l.split(':').nth(1).unwrap_or("").replace(' ', ""))
        .collect();
    assert!(
        !hex.contains("deadbeefdeadbeef"),
        "cleartext ping payload on the fabric"
    );

    // (b) wireguard-go initiates: its side talks first.
    assert_eq!(wg_latest_handshake(&c.extra[1], &b.ifname), 0);
    ping_eventually(&c.extra[1], pod.ip);
    ping(&c.extra[1], pod.ip, 3).expect("wireguard-go b -> pod");
    ping(&pod.ns, b.pod_ip, 3).expect("pod -> wireguard-go b");
    assert!(wg_latest_handshake(&c.extra[1], &b.ifname) > 0);
    assert!(
        error_count(&c, 0, "tunnel-decap", "wg-reply") > replied0,
        "ferroplane did not answer b's handshake"
    );
    let r = tunnels(&c, 0);
    for name in ["wg-go-a", "wg-go-b"] {
        let p = peer(&r, name);
        assert_eq!(p["state"], "up", "{r}");
        assert!(p["handshake_age_secs"].as_f64().unwrap() < 60.0, "{r}");
    }
    assert_eq!(peer(&r, "wg-go-b")["public_key"], b.keys.public);
}

#[test]
fn oversized_df_packet_gets_fragmentation_needed() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new(2, 1, OverlayMode::Vxlan).expect("cluster");
    // The pod's own MTU is larger than the tunnel's, so it can send what the tunnel cannot carry.
    c.nodes[0].pod_mtu = Some(Cluster::MTU);
    masquerade(&mut c);
    c.start(&bin_dir()).expect("agents");
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    ping_eventually(&a.pods[0].ns, b.pods[0].ip);
    let before = error_count(&c, 0, "ip4-rewrite", "mtu-exceeded");
    // 1450 fits the tunnel (1500 - 50): passes with DF.
    a.pods[0]
        .ns
        .exec_ok(&[
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1422",
            &b.pods[0].ip.to_string(),
        ])
        .expect("1450-byte DF ping fits");
    // 1500 does not: ICMP fragmentation needed, next-hop MTU 1450.
    let out = a.pods[0]
        .ns
        .exec(&[
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1472",
            &b.pods[0].ip.to_string(),
        ])
        .expect("ping");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("mtu = 1450") || text.contains("mtu=1450"),
        "{text}"
    );
    assert!(error_count(&c, 0, "ip4-rewrite", "mtu-exceeded") > before);
    // The pod's kernel now knows the path MTU.
    let route = a.pods[0]
        .ns
        .ip(&["route", "get", &b.pods[0].ip.to_string()])
        .expect("route get");
    assert!(route.contains("mtu 1450"), "{route}");
}

#[test]
fn mss_clamping_fits_tcp_segments_into_the_tunnel() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new(2, 1, OverlayMode::Vxlan).expect("cluster");
    for n in &mut c.nodes {
        // Both pods believe they have the uplink's full MTU: without clamping their
        // SYNs announce MSS 1460 and full-size segments would not fit the tunnel.
        n.pod_mtu = Some(Cluster::MTU);
        n.extra_yaml = "  mssClamp: true\n".into();
    }
    masquerade(&mut c);
    c.start(&bin_dir()).expect("agents");
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    ping_eventually(&a.pods[0].ns, b.pods[0].ip);
    // The traces show the encapsulation on node-1 and the decapsulation on node-2.
    let trace = |n: usize, filter: &str| {
        c.agent(n)
            .ctl(&["trace", "add", "--count", "1", "--filter", filter])
            .expect("trace add");
    };
    trace(0, &format!("dst {} and proto icmp", b.pods[0].ip));
    trace(1, "proto udp");
    ping(&a.pods[0].ns, b.pods[0].ip, 1).expect("traced ping");
    let step = |n: usize, node: &str| -> Value {
        let v = c.agent(n).ctl_json(&["show", "trace"]).expect("show trace");
        v.as_array()
            .and_then(|p| p.first())
            .and_then(|p| p["steps"].as_array())
            .and_then(|s| s.iter().find(|s| s["node"] == node).cloned())
            .unwrap_or_else(|| panic!("no {node} step in the trace of node {n}: {v}"))
    };
    let encap = step(0, "tunnel-encap");
    assert_eq!(encap["fields"]["decision"], "encap", "{encap}");
    assert_eq!(encap["fields"]["mode"], "vxlan", "{encap}");
    assert_eq!(encap["fields"]["peer"], b.address.to_string(), "{encap}");
    let decap = step(1, "tunnel-decap");
    assert_eq!(decap["fields"]["decision"], "decap", "{decap}");
    assert_eq!(decap["fields"]["peer"], a.address.to_string(), "{decap}");
    let too_big = |n| error_count(&c, n, "ip4-rewrite", "mtu-exceeded");
    let before = (too_big(0), too_big(1));
    let s = tcp_transfer(&a.pods[0].ns, &b.pods[0].ns, b.pods[0].ip, 47160, 2 * MB)
        .expect("2 MB node-1 -> node-2");
    assert_eq!(s.bytes, 2 * MB);
    // The SYN was clamped on node-1, the SYN-ACK on node-2 ...
    assert!(error_count(&c, 0, "tunnel-encap", "mss-clamped") >= 1);
    assert!(error_count(&c, 1, "tunnel-encap", "mss-clamped") >= 1);
    // ... so no segment needed a fragmentation-needed error on the way.
    assert_eq!((too_big(0), too_big(1)), before);
}
