//! IPv4 fragments through the overlay: UDP datagrams of 3,000 and 9,000 bytes, fragments
//! sent in reverse order both ways, through ClusterIP, NodePort, masquerade and a
//! NetworkPolicy, on one node and between two nodes (VXLAN, WireGuard).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ferroplane_e2e::cluster::{Cluster, OverlayMode};
use ferroplane_e2e::probe::scapy;
use ferroplane_e2e::{bin_dir, require_root, ChildGuard, Netns};
use serde_json::Value;

use super::error_count;

/// Masquerade on, as the README's `serviceProxy` settings.
const MASQUERADE: &str =
    "serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\n  masquerade: true\n";

/// UDP port of the fragment echo servers.
const FRAG_PORT: u16 = 7000;
/// The outside host of the fragment tests (on the fabric, outside `clusterCIDRs`).
const FRAG_EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 100);

/// Echo server: every datagram received on UDP [`FRAG_PORT`] (the kernel reassembles it) is
/// sent back whole, fragmented by scapy and the fragments sent in reverse order.
const FRAG_ECHO: &str = r#"
import random, socket
from scapy.all import IP, UDP, Raw, fragment
me = "@ME@"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.bind(("0.0.0.0", @PORT@))
while True:
    data, (ip, port) = s.recvfrom(65535)
    p = IP(src=me, dst=ip, id=random.randint(1, 65535), flags=0) / UDP(sport=@PORT@, dport=port) / Raw(data)
    for f in reversed(fragment(p, fragsize=1376)):
        raw.sendto(bytes(f), (ip, 0))
"#;

/// Client: per case (name, destination, port, payload bytes, attempts), one datagram of
/// random bytes sent as fragments in reverse order from a fresh UDP socket, and the echo
/// read back (1.5 s per attempt). Prints one JSON list: length and source of what came
/// back, and whether it is the datagram sent.
const FRAG_CLIENT: &str = r#"
import json, os, random, socket
from scapy.all import IP, UDP, Raw, fragment
me = "@ME@"
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
out = []
for name, dst, dport, size, attempts in json.loads('@CASES@'):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((me, 0))
    s.settimeout(1.5)
    payload = os.urandom(size)
    got, src, tries = None, None, 0
    for t in range(attempts):
        p = IP(src=me, dst=dst, id=random.randint(1, 65535), flags=0) / UDP(sport=s.getsockname()[1], dport=dport) / Raw(payload)
        for f in reversed(fragment(p, fragsize=1376)):
            raw.sendto(bytes(f), (dst, 0))
        try:
            got, addr = s.recvfrom(65535)
            src, tries = "%s:%d" % addr, t + 1
            break
        except socket.timeout:
            pass
    out.append({"name": name, "len": -1 if got is None else len(got), "same": got == payload, "from": src, "tries": tries})
    s.close()
print(json.dumps(out))
"#;

/// One client case: (name, destination, port, payload bytes, attempts).
type FragCase = (String, Ipv4Addr, u16, usize, u32);

/// Runs [`FRAG_CLIENT`] in `ns` (source `me`); returns its results by case name.
fn frag_client(ns: &Netns, me: Ipv4Addr, cases: &[FragCase]) -> Vec<Value> {
    let cases = serde_json::to_string(cases).unwrap();
    let script = FRAG_CLIENT
        .replace("@ME@", &me.to_string())
        .replace("@CASES@", &cases);
    let out = scapy(ns, &script).expect("fragment client");
    let v: Value = serde_json::from_str(out.trim().lines().last().unwrap_or("")).expect("json");
    v.as_array().expect("results").clone()
}

/// Starts [`FRAG_ECHO`] in `ns` for address `me` and waits until it listens.
fn frag_echo(ns: &Netns, me: Ipv4Addr) -> ChildGuard {
    let script = FRAG_ECHO
        .replace("@ME@", &me.to_string())
        .replace("@PORT@", &FRAG_PORT.to_string());
    let child = ns
        .spawn(&["/usr/bin/python3", "-c", &script])
        .expect("echo server");
    let filter = format!("sport = :{FRAG_PORT}");
    let start = Instant::now();
    while ns
        .exec_ok(&["ss", "-Hlun", &filter])
        .map(|s| s.trim().is_empty())
        .unwrap_or(true)
    {
        assert!(child.is_running(), "echo server in {} exited", ns.name());
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "echo server not listening"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// [`MASQUERADE`], two UDP NodePort services (port [`FRAG_PORT`]: `frag-local` on node-1's
/// pod2, `frag-remote` on node-2's pod0) and a policy admitting UDP [`FRAG_PORT`] to every
/// pod from anywhere but node-1's pod1.
fn frag_yaml() -> String {
    let svc = |name: &str, ip: &str, node_port: u16, backend: &str, node: &str| {
        (
            format!("  - metadata: {{ name: {name}, namespace: default }}\n    spec:\n      type: NodePort\n      clusterIP: {ip}\n      ports: [ {{ name: udp, protocol: UDP, port: {FRAG_PORT}, targetPort: {FRAG_PORT}, nodePort: {node_port} }} ]\n"),
            format!("  - metadata: {{ name: {name}-1, namespace: default, labels: {{ kubernetes.io/service-name: {name} }} }}\n    addressType: IPv4\n    ports: [ {{ name: udp, protocol: UDP, port: {FRAG_PORT} }} ]\n    endpoints:\n      - addresses: [{backend}]\n        conditions: {{ ready: true }}\n        nodeName: {node}\n"),
        )
    };
    let (s1, e1) = svc("frag-local", "10.96.0.60", 30760, "10.244.1.12", "node-1");
    let (s2, e2) = svc("frag-remote", "10.96.0.61", 30761, "10.244.2.10", "node-2");
    format!(
        "{MASQUERADE}services:\n{s1}{s2}endpointSlices:\n{e1}{e2}networkPolicies:\n  - metadata: {{ name: frag, namespace: default }}\n    spec:\n      podSelector: {{}}\n      policyTypes: [Ingress]\n      ingress:\n        - from: [ {{ ipBlock: {{ cidr: 0.0.0.0/0, except: [10.244.1.11/32] }} }} ]\n          ports: [ {{ protocol: UDP, port: {FRAG_PORT} }} ]\n"
    )
}

/// 3,000 and 9,000-byte UDP datagrams, fragments in reverse order both ways, on two nodes
/// in `mode`: through a ClusterIP to a local and a remote backend, pod to remote pod, a
/// NodePort from outside to a local and a remote backend, masquerade to an outside host,
/// all through a NetworkPolicy that admits them; each echo arrives whole (length and
/// content) from the expected address. From the one pod the policy does not admit, no
/// fragment arrives.
fn fragments_both_ways(mode: OverlayMode) {
    let mut c = Cluster::new(2, 3, mode).expect("cluster");
    for n in &mut c.nodes {
        n.extra_yaml = frag_yaml();
    }
    let ext = Netns::new("ext").expect("ext ns");
    c.attach(ext, "eth0", FRAG_EXT).expect("attach ext");
    c.start(&bin_dir()).expect("agents");
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let ext = &c.extra[0];
    let _echo = [
        frag_echo(&n1.pods[2].ns, n1.pods[2].ip),
        frag_echo(&n2.pods[0].ns, n2.pods[0].ip),
        frag_echo(ext, FRAG_EXT),
    ];
    let vip_local = Ipv4Addr::new(10, 96, 0, 60);
    let vip_remote = Ipv4Addr::new(10, 96, 0, 61);
    let case = |name: &str, dst: Ipv4Addr, port: u16, size: usize, attempts: u32| -> FragCase {
        (format!("{name} {size}"), dst, port, size, attempts)
    };
    let mut pod_cases = Vec::new();
    let mut ext_cases = Vec::new();
    let mut expect = std::collections::BTreeMap::new();
    for size in [3000, 9000] {
        for (name, dst, from) in [
            ("clusterip-local", vip_local, vip_local),
            ("clusterip-remote", vip_remote, vip_remote),
            ("pod-remote", n2.pods[0].ip, n2.pods[0].ip),
            ("masquerade", FRAG_EXT, FRAG_EXT),
        ] {
            pod_cases.push(case(name, dst, FRAG_PORT, size, 5));
            expect.insert(
                format!("{name} {size}"),
                (size, format!("{from}:{FRAG_PORT}")),
            );
        }
        for (name, port) in [("nodeport-local", 30760), ("nodeport-remote", 30761)] {
            ext_cases.push(case(name, n1.address, port, size, 5));
            expect.insert(
                format!("{name} {size}"),
                (size, format!("{}:{port}", n1.address)),
            );
        }
    }
    let mut results = frag_client(&n1.pods[0].ns, n1.pods[0].ip, &pod_cases);
    results.extend(frag_client(ext, FRAG_EXT, &ext_cases));
    for r in &results {
        let name = r["name"].as_str().unwrap_or_default();
        let (size, from) = &expect[name];
        assert_eq!(
            r["len"].as_i64(),
            Some(*size as i64),
            "{mode:?} {name}: {r}"
        );
        assert_eq!(r["same"], true, "{mode:?} {name}: content: {r}");
        assert_eq!(
            r["from"].as_str(),
            Some(from.as_str()),
            "{mode:?} {name}: {r}"
        );
    }
    assert_eq!(results.len(), expect.len());
    for n in 0..2 {
        assert_eq!(error_count(&c, n, "ip4-frag", "timeout"), 0, "node {n}");
        assert_eq!(
            error_count(&c, n, "ip4-nat", "fragment-no-session"),
            0,
            "node {n}"
        );
    }
    let held: u64 = (0..2).map(|n| error_count(&c, n, "ip4-frag", "held")).sum();
    assert!(held > 0, "fragments arrived out of order and were held");
    // Node-1's pod1 is not admitted: nothing comes back, every fragment is denied.
    let denied = |n: usize| error_count(&c, n, "ip4-policy", "policy-denied-ingress");
    let before = (denied(0), denied(1));
    let denied_cases = [
        case("denied-local", n1.pods[2].ip, FRAG_PORT, 3000, 2),
        case("denied-clusterip-remote", vip_remote, FRAG_PORT, 9000, 2),
    ];
    for r in frag_client(&n1.pods[1].ns, n1.pods[1].ip, &denied_cases) {
        assert_eq!(r["len"].as_i64(), Some(-1), "{mode:?}: {r}");
    }
    // 3,000 bytes: 3 fragments, 9,000: 7; two attempts each.
    assert_eq!(denied(0) - before.0, 2 * 3, "{mode:?}: node-1 denials");
    assert_eq!(denied(1) - before.1, 2 * 7, "{mode:?}: node-2 denials");
    eprintln!(
        "{mode:?}: {} echoes whole; fragments held out of order: {held}",
        results.len()
    );
}

#[test]
fn fragments_over_vxlan() {
    if !require_root() {
        return;
    }
    fragments_both_ways(OverlayMode::Vxlan);
}

#[test]
fn fragments_over_wireguard() {
    if !require_root() {
        return;
    }
    fragments_both_ways(OverlayMode::WireGuard);
}
