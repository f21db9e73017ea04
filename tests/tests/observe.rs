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
