//! Several engine workers in the agent (issue 17 point 2): `--workers 2` on a node whose
//! uplink has two RX queues, each queue's socket owned by a different worker, the pods'
//! ports spread over both. Byte-checked TCP transfers pod -> router (masqueraded to the node
//! address) and router -> NodePort -> pod (DNAT and SNAT) succeed while their packets cross
//! between the workers (handoffs counted in `show counters`); the fast path is off so that
//! every packet goes through the workers.

use ferroplane_e2e::probe::tcp_transfer;
use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, require_root};
use serde_json::Value;

const MB: u64 = 1024 * 1024;
const NODE_PORT: u16 = 30080;

/// The topology's spec with pod traffic leaving the cluster masqueraded and a NodePort
/// service `web` (:30080 on the node) whose one backend is pod1:30080.
fn spec(topo: &Topology) -> String {
    let mut y = topo.spec_yaml();
    y += "serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\n  masquerade: true\n";
    y += "services:\n  - metadata: { name: web, namespace: default }\n    spec:\n";
    y += "      type: NodePort\n      clusterIP: 10.96.0.50\n";
    y += &format!(
        "      ports: [ {{ name: http, protocol: TCP, port: 80, targetPort: {NODE_PORT}, nodePort: {NODE_PORT} }} ]\n"
    );
    y += "endpointSlices:\n  - metadata: { name: web-a, namespace: default, labels: { kubernetes.io/service-name: web } }\n";
    y += &format!("    addressType: IPv4\n    ports: [ {{ name: http, protocol: TCP, port: {NODE_PORT} }} ]\n");
    y += &format!(
        "    endpoints:\n      - addresses: [{}]\n        conditions: {{ ready: true, serving: true, terminating: false }}\n        nodeName: node-1\n        targetRef: {{ kind: Pod, namespace: default, name: pod1 }}\n",
        topo.pods[1].ip
    );
    y
}

fn counters(agent: &AgentGuard) -> Value {
    agent
        .ctl_json(&["show", "counters"])
        .expect("show counters")
}

/// Per worker: (ports, rx packets, handoffs sent, handoffs received, handoff drops).
fn worker_lines(c: &Value) -> Vec<(u64, u64, u64, u64, u64)> {
    let n = |w: &Value, k: &str| w[k].as_u64().unwrap_or(0);
    c["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| {
            (
                n(w, "ports"),
                n(w, "rx_packets"),
                n(w, "handoff_sent"),
                n(w, "handoff_received"),
                n(w, "handoff_drops"),
            )
        })
        .collect()
}

/// The uplink's packets received per RX queue (`show interfaces`).
fn uplink_queue_rx(agent: &AgentGuard) -> Vec<u64> {
    let v = agent
        .ctl_json(&["show", "interfaces"])
        .expect("show interfaces");
    let up = v
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == Topology::UPLINK_IF))
        .unwrap_or_else(|| panic!("no uplink in {v}"));
    up["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| q["rx_packets"].as_u64().unwrap_or(0))
        .collect()
}

#[test]
fn two_workers_own_a_queue_each_and_hand_packets_over() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(2).expect("topology");
    topo.set_uplink_queues(2).expect("2-queue uplink");
    topo.write_spec(&spec(&topo)).expect("spec");
    let agent = topo
        .start_agent_with(&bin_dir(), &["--workers", "2", "--fast-path", "off"])
        .expect("agent start");

    let c = counters(&agent);
    assert_eq!(c["worker_count"], 2, "{c}");
    let lines = worker_lines(&c);
    assert_eq!(lines.len(), 2, "a line per worker: {c}");
    // Uplink queue q on worker q, pod0 and pod1 one each: two ports per worker.
    assert_eq!(
        lines.iter().map(|l| l.0).collect::<Vec<_>>(),
        [2, 2],
        "ports spread over the workers: {c}"
    );
    let bufs = agent.ctl_json(&["show", "buffers"]).expect("show buffers");
    let uplink_ports: Vec<u64> = bufs["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter(|p| p["interface"] == Topology::UPLINK_IF)
        .map(|p| p["queue"].as_u64().expect("queue"))
        .collect();
    assert_eq!(uplink_ports, [0, 1], "a socket per queue: {bufs}");

    // Masqueraded transfers pod0 -> router: the replies come back on whichever queue the
    // router's flow hash picks, so on either worker.
    for i in 0..8u16 {
        let s = tcp_transfer(
            &topo.pods[0].ns,
            &topo.router,
            Topology::ROUTER_IP,
            7001 + i,
            MB,
        )
        .unwrap_or_else(|e| panic!("pod0 -> router #{i}: {e}\n{}", agent.log_tail(30)));
        assert_eq!(s.bytes, MB);
    }
    // NodePort transfers router -> node:30080 -> pod1.
    for i in 0..8 {
        let s = tcp_transfer(
            &topo.router,
            &topo.pods[1].ns,
            Topology::NODE_IP,
            NODE_PORT,
            MB,
        )
        .unwrap_or_else(|e| panic!("router -> NodePort #{i}: {e}\n{}", agent.log_tail(30)));
        assert_eq!(s.bytes, MB);
    }

    let queues = uplink_queue_rx(&agent);
    let c = counters(&agent);
    let lines = worker_lines(&c);
    println!(
        "uplink rx per queue {queues:?}; per worker (ports, rx, handoff out, in, drops) {lines:?}"
    );
    assert_eq!(queues.len(), 2);
    assert!(
        queues.iter().all(|&q| q > 0),
        "both queues carried traffic: {queues:?}"
    );
    for (w, l) in lines.iter().enumerate() {
        assert!(l.1 > 0, "worker {w} received nothing: {c}");
    }
    let sent: u64 = lines.iter().map(|l| l.2).sum();
    let received: u64 = lines.iter().map(|l| l.3).sum();
    let drops: u64 = lines.iter().map(|l| l.4).sum();
    assert!(sent > 0, "packets crossed between the workers: {c}");
    // A packet handed off is taken by its receiver or counted dropped (by the sender when
    // the receiver's queue was full, by the receiver when it had no free frame).
    assert!(
        received <= sent && sent <= received + drops,
        "every handed-off packet was taken or counted dropped: {c}"
    );
    let nat = agent.ctl_json(&["show", "errors"]).expect("show errors");
    let masq = nat
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| e["node"] == "ip4-nat" && e["reason"] == "masquerade-sessions")
        })
        .and_then(|e| e["count"].as_u64())
        .unwrap_or(0);
    assert!(masq >= 8, "the pod's transfers were masqueraded: {nat}");
    let text = agent.ctl(&["show", "counters"]).expect("show counters");
    assert!(
        text.contains("Handoff-out") && text.contains("Workers: 2"),
        "{text}"
    );
}
