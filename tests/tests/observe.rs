//! ferroctl's packet trace and capture against a running node.

use ferroplane_e2e::probe::ping;
use ferroplane_e2e::topology::Topology;
use ferroplane_e2e::{bin_dir, require_root};

#[test]
fn trace_shows_the_path_of_a_packet_and_of_a_drop() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(2).expect("topology");
    let agent = topo.start_agent(&bin_dir()).expect("agent");
    let pod0_if = {
        let ifs = agent.ctl_json(&["show", "interfaces"]).expect("interfaces");
        ifs.as_array()
            .expect("array")
            .iter()
            .find(|i| {
                i["pod"]
                    .as_str()
                    .is_some_and(|p| p.contains(&topo.pods[0].ip.to_string()))
            })
            .expect("pod0 interface")["name"]
            .as_str()
            .expect("name")
            .to_string()
    };
    let dst = topo.pods[1].ip.to_string();
    agent
        .ctl(&[
            "trace",
            "add",
            "--iface",
            &pod0_if,
            "--count",
            "1",
            "--filter",
            &format!("dst {dst} and proto icmp"),
        ])
        .expect("trace add");
    ping(&topo.pods[0].ns, topo.pods[1].ip, 2).expect("ping");
    let v = agent.ctl_json(&["show", "trace"]).expect("show trace");
    let packets = v.as_array().expect("array");
    assert_eq!(packets.len(), 1, "exactly one packet traced: {v}");
    let nodes: Vec<&str> = packets[0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["node"].as_str().unwrap_or(""))
        .collect();
    for want in [
        "ethernet-input",
        "ip4-input",
        "ip4-lookup",
        "ip4-rewrite",
        "interface-output",
    ] {
        assert!(nodes.contains(&want), "{want} missing from {nodes:?}");
    }
    let text = agent.ctl(&["show", "trace"]).expect("table");
    assert!(
        text.contains(&format!("route {dst}/32")),
        "lookup decision shown: {text}"
    );

    // A dropped packet's trace ends at the drop with its reason.
    agent.ctl(&["trace", "clear"]).expect("clear");
    agent
        .ctl(&[
            "trace",
            "add",
            "--count",
            "1",
            "--filter",
            "dst 10.244.1.200",
        ])
        .expect("trace add");
    let _ = ping(&topo.pods[0].ns, "10.244.1.200".parse().expect("ip"), 1);
    let text = agent.ctl(&["show", "trace"]).expect("show trace");
    assert!(
        text.contains("drop: ip4-lookup: no-route"),
        "drop reason in the trace: {text}"
    );
}

#[test]
fn capture_of_100_pings_decodes_with_tshark() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(2).expect("topology");
    let agent = topo.start_agent(&bin_dir()).expect("agent");
    let ifs = agent.ctl_json(&["show", "interfaces"]).expect("interfaces");
    let pod1_if = ifs
        .as_array()
        .expect("array")
        .iter()
        .find(|i| {
            i["pod"]
                .as_str()
                .is_some_and(|p| p.contains(&topo.pods[1].ip.to_string()))
        })
        .expect("pod1 interface")["name"]
        .as_str()
        .expect("name")
        .to_string();
    let file = topo.dir().join("pings.pcap");
    let file_s = file.to_string_lossy().to_string();
    // Capture what is sent to pod1: the echo requests from pod0.
    let ctl_bin = agent.ctl_bin().to_path_buf();
    let socket = agent.socket().to_path_buf();
    let (if_c, f_c) = (pod1_if.clone(), file_s.clone());
    let capture = std::thread::spawn(move || {
        std::process::Command::new(ctl_bin)
            .arg("--socket")
            .arg(socket)
            .args([
                "capture",
                "--iface",
                &if_c,
                "--count",
                "100",
                "--filter",
                "proto icmp and dst 10.244.1.11",
                "--timeout",
                "30",
                "-w",
                &f_c,
            ])
            .output()
            .expect("ferroctl capture")
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = topo.pods[0]
        .ns
        .exec(&[
            "ping",
            "-n",
            "-q",
            "-c",
            "100",
            "-i",
            "0.01",
            "-W",
            "1",
            "10.244.1.11",
        ])
        .expect("ping");
    assert!(out.status.success(), "100 pings: {out:?}");
    let cap = capture.join().expect("capture thread");
    assert!(cap.status.success(), "capture: {cap:?}");
    let decoded = std::process::Command::new("tshark")
        .args([
            "-r",
            &file_s,
            "-Y",
            "icmp.type == 8",
            "-T",
            "fields",
            "-e",
            "ip.dst",
        ])
        .output()
        .expect("tshark");
    assert!(decoded.status.success(), "tshark: {decoded:?}");
    let text = String::from_utf8_lossy(&decoded.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 100, "100 ICMP echo requests decoded: {text}");
    assert!(lines.iter().all(|l| *l == "10.244.1.11"));
}

fn scrape(ns: &ferroplane_e2e::Netns, port: u16) -> String {
    use std::io::{Read, Write};
    ns.run(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        out
    })
    .expect("scrape in the node namespace")
}

fn metric(body: &str, name: &str, label: &str) -> u64 {
    body.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name}{{{label}}} in metrics:\n{body}")) as u64
}

#[test]
fn metrics_pass_promtool_and_match_ferroctl() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(2).expect("topology");
    let agent = topo
        .start_agent_with(&bin_dir(), &["--metrics-addr", "127.0.0.1:9464"])
        .expect("agent");
    ping(&topo.pods[0].ns, topo.pods[1].ip, 5).expect("traffic");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let response = scrape(&topo.node, 9464);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .expect("body");
    // promtool validates the exposition format.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(body.as_bytes()).expect("write");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Counters agree with ferroctl (no IPv4 traffic between the two reads).
    let counters = agent.ctl_json(&["show", "counters"]).expect("counters");
    let lookup = counters["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == "ip4-lookup")
        .expect("ip4-lookup")["packets"]
        .as_u64()
        .expect("packets");
    assert!(lookup >= 10, "5 pings and 5 replies crossed the engine");
    assert_eq!(
        metric(
            &body,
            "ferroplane_node_packets_total",
            "node=\"ip4-lookup\""
        ),
        lookup
    );
    let replied = metric(&body, "ferroplane_errors_total", "reason=\"replied\"");
    assert!(replied >= 1, "ARP replies counted");
    assert!(body.contains("ferroplane_xdp_verdicts_total{verdict=\"redirect\"}"));
}

/// A bpffs mounted in the host mount namespace (so pins outlive the agent's
/// private `ip netns exec` mount namespace); unmounted on drop.
struct BpffsMount(std::path::PathBuf);

impl BpffsMount {
    fn new() -> BpffsMount {
        let dir =
            std::path::PathBuf::from(format!("/run/ferroplane-e2e-bpf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let st = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(st.success(), "mount bpffs");
        BpffsMount(dir)
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn pinned_maps_and_programs_are_listed_even_with_the_agent_down() {
    if !require_root() {
        return;
    }
    let bpffs = BpffsMount::new();
    let pin_dir = bpffs.0.join("node1");
    let pin_s = pin_dir.to_string_lossy().to_string();
    let topo = Topology::single_node(1).expect("topology");
    let agent = topo
        .start_agent_with(&bin_dir(), &["--pin-dir", &pin_s])
        .expect("agent");
    ping(&topo.pods[0].ns, Topology::ROUTER_IP, 2).expect("traffic");
    let progs = agent.ctl_json(&["prog", "list"]).expect("prog list");
    let names: Vec<&str> = progs
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("xdp_uplink")), "{progs}");
    assert!(names.iter().any(|n| n.starts_with("xdp_pod")), "{progs}");
    drop(agent);

    // The agent is gone: the pins are still there and readable.
    let ctl = bin_dir().join("ferroctl");
    let out = std::process::Command::new(&ctl)
        .args(["map", "list", "--pin-dir", &pin_s, "-o", "json"])
        .output()
        .expect("ferroctl map list");
    assert!(out.status.success(), "{out:?}");
    let maps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let map_names: Vec<&str> = maps
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for want in ["xsks", "ifaces", "steer4", "host4", "verdicts", "drops"] {
        assert!(
            map_names.contains(&want),
            "{want} not pinned: {map_names:?}"
        );
    }
    let out = std::process::Command::new(&ctl)
        .args(["map", "dump", "host4", "--pin-dir", &pin_s, "-o", "json"])
        .output()
        .expect("ferroctl map dump");
    assert!(out.status.success(), "{out:?}");
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // 192.168.100.2 = c0a86402, the node's address in host4.
    assert!(
        dump["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["key"] == "c0a86402"),
        "{dump}"
    );
    let out = std::process::Command::new(&ctl)
        .args(["map", "dump", "verdicts", "--pin-dir", &pin_s])
        .output()
        .expect("ferroctl map dump verdicts");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdicts (PerCpuArray"));
    let _ = std::fs::remove_dir_all(&pin_dir);
}

/// The node spec of the decision-trace test: pod0 (client), pod1 and pod2 (backends of
/// ClusterIP services `web` and `db`); pod1 admits TCP 8080 from the client only, pod2
/// admits nothing (deny-all ingress).
fn decision_spec(topo: &Topology) -> String {
    use std::fmt::Write as _;
    let mut y = String::from("# written by the observe suite\nnode:\n");
    let _ = writeln!(y, "  name: node-1\n  uplink: {}", Topology::UPLINK_IF);
    let _ = writeln!(
        y,
        "  address: {}/{}\n  gateway: {}\n  podCIDR: {}\n  xdpMode: auto",
        Topology::NODE_IP,
        Topology::UPLINK_PREFIX_LEN,
        Topology::ROUTER_IP,
        Topology::POD_CIDR
    );
    y.push_str("serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\n");
    y.push_str("namespaces:\n  - metadata: {name: default, labels: {ns: default}}\n");
    y.push_str("pods:\n");
    for (p, app) in topo.pods.iter().zip(["client", "web", "db"]) {
        let _ = writeln!(
            y,
            "  - {{name: {}, namespace: default, netns: {}, ip: {}, interface: {}, labels: {{app: {app}}}}}",
            p.name,
            p.ns.name(),
            p.ip,
            Topology::POD_IF
        );
    }
    y.push_str("services:\n");
    for (name, vip) in [("web", "10.96.0.10"), ("db", "10.96.0.20")] {
        let _ = writeln!(
            y,
            "  - metadata: {{ name: {name}, namespace: default }}\n    spec:\n      clusterIP: {vip}\n      ports:\n        - {{ name: http, protocol: TCP, port: 80, targetPort: 8080 }}"
        );
    }
    y.push_str("endpointSlices:\n");
    for (name, pod) in [("web", &topo.pods[1]), ("db", &topo.pods[2])] {
        let _ = writeln!(
            y,
            "  - metadata: {{ name: {name}-a, namespace: default, labels: {{ kubernetes.io/service-name: {name} }} }}\n    addressType: IPv4\n    ports: [ {{ name: http, protocol: TCP, port: 8080 }} ]\n    endpoints:\n      - addresses: [{}]\n        conditions: {{ ready: true, serving: true, terminating: false }}\n        nodeName: node-1\n        targetRef: {{ kind: Pod, namespace: default, name: {} }}",
            pod.ip, pod.name
        );
    }
    let policies = serde_json::json!([
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "web-from-client", "namespace": "default"},
         "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                               "ports": [{"protocol": "TCP", "port": 8080}]}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "db-deny-all", "namespace": "default"},
         "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}}
    ]);
    let _ = writeln!(y, "networkPolicies: {policies}");
    y
}

/// One TCP connection attempt from `ns` to `to` (refused, reset or timed out: all fine,
/// the first SYN is what the trace follows).
fn syn(ns: &ferroplane_e2e::Netns, to: std::net::SocketAddrV4) {
    let _ = ns.run(move || {
        std::net::TcpStream::connect_timeout(&to.into(), std::time::Duration::from_millis(300))
    });
}

/// The steps of the only traced packet: (node, text, fields).
fn traced_steps(agent: &ferroplane_e2e::topology::AgentGuard) -> Vec<serde_json::Value> {
    let v = agent.ctl_json(&["show", "trace"]).expect("show trace");
    let packets = v.as_array().expect("array");
    assert_eq!(packets.len(), 1, "exactly one packet traced: {v}");
    packets[0]["steps"].as_array().expect("steps").clone()
}

/// Index of the first step at `node` whose `fields.decision` is `decision`.
fn step_at(steps: &[serde_json::Value], node: &str, decision: &str) -> usize {
    steps
        .iter()
        .position(|s| s["node"] == node && s["fields"]["decision"] == decision)
        .unwrap_or_else(|| {
            panic!(
                "no {decision} step at {node}: {}",
                serde_json::to_string_pretty(steps).unwrap_or_default()
            )
        })
}

#[test]
fn trace_of_a_cluster_ip_packet_shows_service_policy_and_route_decisions() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(3).expect("topology");
    topo.write_spec(&decision_spec(&topo)).expect("spec");
    let agent = topo.start_agent(&bin_dir()).expect("agent");
    let (web, db) = (topo.pods[1].ip, topo.pods[2].ip);

    // Allowed: client -> web's ClusterIP.
    agent
        .ctl(&[
            "trace",
            "add",
            "--count",
            "1",
            "--filter",
            "dst 10.96.0.10 and proto tcp",
        ])
        .expect("trace add");
    syn(&topo.pods[0].ns, "10.96.0.10:80".parse().expect("addr"));
    let steps = traced_steps(&agent);
    let eth = step_at(&steps, "ethernet-input", "ethernet");
    let nat = step_at(&steps, "ip4-nat", "service-dnat");
    let pol = step_at(&steps, "ip4-policy", "policy");
    let route = step_at(&steps, "ip4-lookup", "route");
    let tx = step_at(&steps, "interface-output", "tx");
    assert!(eth < nat && nat < pol && pol < route && route < tx, "order: {steps:?}");
    let f = &steps[nat]["fields"];
    assert_eq!(f["service"], "default/web:http", "{f}");
    assert_eq!(f["frontend"], "10.96.0.10:80/tcp", "{f}");
    assert_eq!(f["frontend_kind"], "cluster-ip", "{f}");
    assert_eq!(f["backend"], format!("{web}:8080"), "{f}");
    let f = &steps[pol]["fields"];
    assert_eq!(f["verdict"], "allow", "{f}");
    assert_eq!(f["step"], "classified", "{f}");
    assert_eq!(f["dst"], web.to_string(), "policy sees the backend, not the VIP: {f}");
    assert_eq!(f["ingress"], "allow", "{f}");
    assert_eq!(f["egress"], "not-isolated", "{f}");
    assert_eq!(f["rules"], "default/web-from-client ingress rule 0", "{f}");
    assert_eq!(steps[route]["fields"]["prefix"], format!("{web}/32"));
    // The table shows the same decisions.
    let text = agent.ctl(&["show", "trace"]).expect("show trace");
    for want in [
        format!("service-dnat default/web:http cluster-ip 10.96.0.10:80/tcp -> backend {web}:8080"),
        "allowed by default/web-from-client ingress rule 0".to_string(),
        format!("route {web}/32"),
    ] {
        assert!(text.contains(&want), "{want:?} missing from:\n{text}");
    }

    // Denied: client -> db's ClusterIP; the trace ends at the policy drop.
    agent.ctl(&["trace", "clear"]).expect("clear");
    agent
        .ctl(&[
            "trace",
            "add",
            "--count",
            "1",
            "--filter",
            "dst 10.96.0.20 and proto tcp",
        ])
        .expect("trace add");
    syn(&topo.pods[0].ns, "10.96.0.20:80".parse().expect("addr"));
    let steps = traced_steps(&agent);
    let nat = step_at(&steps, "ip4-nat", "service-dnat");
    assert_eq!(steps[nat]["fields"]["backend"], format!("{db}:8080"));
    let pol = step_at(&steps, "ip4-policy", "policy");
    let f = &steps[pol]["fields"];
    assert_eq!(f["verdict"], "deny", "{f}");
    assert_eq!(f["denied_by"], "ingress", "{f}");
    assert_eq!(f["policies"], "default/db-deny-all", "{f}");
    let last = steps.last().expect("steps");
    assert_eq!(last["node"], "ip4-policy", "ends at the policy: {steps:?}");
    assert_eq!(last["fields"]["decision"], "drop");
    assert_eq!(last["fields"]["reason"], "ip4-policy: policy-denied-ingress");
    let text = agent.ctl(&["show", "trace"]).expect("show trace");
    assert!(
        text.contains("default deny (isolated by default/db-deny-all)")
            && text.trim_end().ends_with("drop: ip4-policy: policy-denied-ingress"),
        "{text}"
    );
}
