//! NetworkPolicy suite: a representative third of the truth-table scenarios of
//! `ferroplane_policy::scenarios` as real traffic through the dataplane.
//!
//! One emulated node with nine pods (namespaces x, y, z; pods a, b, c; the labels and
//! named ports of the scenario world), servers on TCP/UDP in every pod, and probes from
//! every pod to every other pod, all in parallel with short timeouts. The agent re-reads
//! the spec file when it changes, so the scenarios (and the steps of a scenario) are
//! applied to the running agent by rewriting the spec, as a policy change while traffic
//! runs would be.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, require_root};
use ferroplane_policy::scenarios::{self, Matrix, Probe, Scenario, Step, N, TCP, UDP};
use ferroplane_policy::Labels;
use serde_json::Value;

/// The /24 the scenario addresses live in (the node's pod CIDR).
const BASE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
/// Time limit of one probe attempt.
const PROBE_TIMEOUT: Duration = Duration::from_millis(600);

/// The scenarios run here (a representative third, plus the change scenarios).
const SELECTED: &[&str] = &[
    "default-deny-ingress",
    "default-deny-egress",
    "deny-all",
    "deny-then-allow-all-union",
    "allow-from-namespace-by-label",
    "pod-and-namespace-selector",
    "pod-or-namespace-selector",
    "match-expressions-notin-namespaces",
    "named-port-ingress",
    "end-port-range-81-90",
    "ip-block-with-except-ingress",
    "multiple-policies-union",
    "default-deny-egress-allow-dns-to-one-pod",
    "policy-changes-while-traffic-runs",
    "pod-label-change",
    "namespace-label-change",
];

/// The node spec for one step: the topology's pods renamed into the scenario world.
fn spec(
    topo: &Topology,
    policies: &[Value],
    pod_labels: &BTreeMap<usize, Labels>,
    ns_labels: &BTreeMap<String, Labels>,
) -> String {
    let mut y = String::from("# written by the policy suite\nnode:\n");
    let _ = writeln!(y, "  name: node-1\n  uplink: {}", Topology::UPLINK_IF);
    let _ = writeln!(
        y,
        "  address: {}/{}\n  gateway: {}\n  podCIDR: {}\n  xdpMode: auto",
        Topology::NODE_IP,
        Topology::UPLINK_PREFIX_LEN,
        Topology::ROUTER_IP,
        Topology::POD_CIDR
    );
    y.push_str("namespaces:\n");
    for (ns, labels) in scenarios::namespaces() {
        let labels = ns_labels.get(&ns).unwrap_or(&labels);
        let _ = writeln!(
            y,
            "  - metadata: {{name: {ns}, labels: {}}}",
            serde_json::to_string(labels).unwrap()
        );
    }
    y.push_str("pods:\n");
    for (i, p) in scenarios::pods(BASE).into_iter().enumerate() {
        let labels = pod_labels.get(&i).unwrap_or(&p.labels);
        let ports: Vec<String> = p
            .named_ports
            .iter()
            .map(|(n, (proto, port))| {
                let proto = if *proto == TCP { "TCP" } else { "UDP" };
                format!("{{name: {n}, containerPort: {port}, protocol: {proto}}}")
            })
            .collect();
        let _ = writeln!(
            y,
            "  - {{name: {}, namespace: {}, netns: {}, ip: {}, labels: {}, ports: [{}]}}",
            p.name,
            p.namespace,
            topo.pods[i].ns.name(),
            p.ip,
            serde_json::to_string(labels).unwrap(),
            ports.join(", ")
        );
    }
    // JSON is YAML: the scenario policies go in as they are.
    let _ = writeln!(
        y,
        "networkPolicies: {}",
        serde_json::to_string(policies).unwrap()
    );
    y
}

fn generation(agent: &AgentGuard) -> u64 {
    agent
        .ctl_json(&["show", "policies"])
        .expect("show policies")["generation"]
        .as_u64()
        .expect("generation")
}

/// Rewrites the spec and waits until the agent has compiled it (a new generation).
fn apply(topo: &Topology, agent: &AgentGuard, yaml: &str) {
    let before = generation(agent);
    topo.write_spec(yaml).expect("write spec");
    let deadline = Instant::now() + Duration::from_secs(10);
    while generation(agent) == before {
        assert!(
            Instant::now() < deadline,
            "the agent did not apply the new spec\n{}",
            agent.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Servers in every pod: TCP echo and UDP echo on `ports`, until `stop`.
fn serve(ns: &ferroplane_e2e::netns::Netns, ports: &BTreeSet<Probe>, stop: &AtomicBool) {
    ns.run(|| {
        std::thread::scope(|s| {
            for &(proto, port) in ports {
                s.spawn(move || {
                    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
                    if proto == TCP {
                        let l = TcpListener::bind(addr).expect("tcp bind");
                        l.set_nonblocking(true).unwrap();
                        while !stop.load(Ordering::Relaxed) {
                            match l.accept() {
                                Ok((mut c, _)) => {
                                    c.set_nonblocking(false).unwrap();
                                    std::thread::spawn(move || {
                                        let mut b = [0u8; 64];
                                        let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                                        while let Ok(n) = c.read(&mut b) {
                                            if n == 0 || c.write_all(&b[..n]).is_err() {
                                                break;
                                            }
                                        }
                                    });
                                }
                                Err(_) => std::thread::sleep(Duration::from_millis(2)),
                            }
                        }
                    } else {
                        let u = UdpSocket::bind(addr).expect("udp bind");
                        u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                        let mut b = [0u8; 64];
                        while !stop.load(Ordering::Relaxed) {
                            if let Ok((n, from)) = u.recv_from(&mut b) {
                                let _ = u.send_to(&b[..n], from);
                            }
                        }
                    }
                });
            }
        })
    })
    .expect("pod servers");
}

/// Source port of the next UDP probe: every probe gets its own, so no probe can ride on the
/// flow entry an earlier, allowed probe left in the engine (UDP flows idle out after 60 s).
static UDP_SOURCE: AtomicU16 = AtomicU16::new(20_000);

/// One probe attempt from the current netns.
fn probe_once((proto, port): Probe, to: Ipv4Addr) -> bool {
    let addr = SocketAddr::from((to, port));
    if proto == TCP {
        let Ok(mut c) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(PROBE_TIMEOUT));
        let mut b = [0u8; 1];
        c.write_all(b"p").is_ok() && c.read_exact(&mut b).is_ok()
    } else {
        let sport = UDP_SOURCE.fetch_add(1, Ordering::Relaxed);
        assert!(sport >= 20_000, "out of unique UDP source ports");
        let Ok(u) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, sport)) else {
            return false;
        };
        let _ = u.set_read_timeout(Some(PROBE_TIMEOUT));
        let mut b = [0u8; 8];
        u.send_to(b"p", addr).is_ok() && u.recv_from(&mut b).is_ok()
    }
}

/// Every pod to every other pod for `probe`, in parallel (one retry for a lost packet).
fn measure(topo: &Topology, probe: Probe) -> Matrix {
    let mut m = Matrix::all(true);
    std::thread::scope(|s| {
        let rows: Vec<_> = (0..N)
            .map(|f| {
                s.spawn(move || {
                    topo.pods[f]
                        .ns
                        .run(move || {
                            std::thread::scope(|s| {
                                let cells: Vec<_> = (0..N)
                                    .map(|t| {
                                        s.spawn(move || {
                                            t == f || {
                                                let to = scenarios::ip(BASE, t);
                                                probe_once(probe, to) || probe_once(probe, to)
                                            }
                                        })
                                    })
                                    .collect();
                                cells
                                    .into_iter()
                                    .map(|c| c.join().unwrap())
                                    .collect::<Vec<bool>>()
                            })
                        })
                        .expect("probe netns")
                })
            })
            .collect();
        for (f, r) in rows.into_iter().enumerate() {
            for (t, v) in r.join().unwrap().into_iter().enumerate() {
                m.0[f][t] = v;
            }
        }
    });
    m
}

fn proto_name(p: u8) -> &'static str {
    if p == TCP {
        "tcp"
    } else {
        "udp"
    }
}

/// Runs `steps` of scenario `name`, returning the mismatches.
fn run_scenario(
    topo: &Topology,
    agent: &AgentGuard,
    sc: &Scenario,
    prev: &mut String,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut pod_labels = BTreeMap::new();
    let mut ns_labels = BTreeMap::new();
    for (k, step) in sc.steps.iter().enumerate() {
        let Step {
            policies,
            expect,
            pod_labels: pl,
            ns_labels: nl,
            ..
        } = step;
        pod_labels.extend(pl.iter().cloned());
        ns_labels.extend(nl.iter().cloned());
        let yaml = spec(topo, policies, &pod_labels, &ns_labels);
        if yaml != *prev {
            apply(topo, agent, &yaml);
            *prev = yaml;
        }
        for (probe, want) in expect.iter().filter(|(p, _)| p.0 == TCP || p.0 == UDP) {
            let got = measure(topo, *probe);
            if got != *want {
                failures.push(format!(
                    "{} step {k} {}/{}: (+! allowed but expected denied, -! the reverse)\n{}",
                    sc.name,
                    proto_name(probe.0),
                    probe.1,
                    got.diff(want)
                ));
            }
        }
    }
    failures
}

#[test]
fn truth_table_scenarios_as_real_traffic() {
    if !require_root() {
        return;
    }
    let all = scenarios::all(BASE);
    let selected: Vec<&Scenario> = SELECTED
        .iter()
        .map(|n| {
            all.iter()
                .find(|s| s.name == *n)
                .unwrap_or_else(|| panic!("no scenario {n}"))
        })
        .collect();
    assert!(selected.len() * 3 >= all.len(), "a third of the scenarios");
    let ports: BTreeSet<Probe> = selected
        .iter()
        .flat_map(|s| s.steps.iter())
        .flat_map(|st| st.expect.iter().map(|(p, _)| *p))
        .filter(|p| p.0 == TCP || p.0 == UDP)
        .collect();

    let topo = Topology::single_node(N).expect("topology");
    let mut prev = spec(&topo, &[], &BTreeMap::new(), &BTreeMap::new());
    topo.write_spec(&prev).expect("spec");
    let agent = topo.start_agent(&bin_dir()).expect("agent start");
    let stop = AtomicBool::new(false);
    let failures = std::thread::scope(|s| {
        for p in &topo.pods {
            let (ports, stop) = (&ports, &stop);
            s.spawn(move || serve(&p.ns, ports, stop));
        }
        // Servers up; the open world first (everything reachable).
        std::thread::sleep(Duration::from_millis(200));
        let mut failures = Vec::new();
        let open = measure(&topo, (TCP, 80));
        if open != Matrix::all(true) {
            failures.push(format!(
                "no policy, tcp/80:\n{}",
                open.diff(&Matrix::all(true))
            ));
        }
        for sc in &selected {
            failures.extend(run_scenario(&topo, &agent, sc, &mut prev));
        }
        stop.store(true, Ordering::Relaxed);
        failures
    });
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}\nagent log:\n{}",
        failures.len(),
        failures.join("\n"),
        agent.log_tail(20)
    );
    // Denials were counted with their reason.
    let errors = agent.ctl_json(&["show", "errors"]).expect("show errors");
    for reason in ["policy-denied-ingress", "policy-denied-egress"] {
        assert!(
            errors
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["reason"].as_str().is_some_and(|r| r.contains(reason))
                    && e["count"].as_u64().unwrap_or(0) > 0),
            "no {reason} drops counted: {errors}"
        );
    }
}

/// A connection allowed before a policy change keeps working after the change (conntrack),
/// while new connections follow the new policy; `show policies` shows the ACL, its source
/// policy and its hits.
#[test]
fn established_connection_survives_policy_change() {
    if !require_root() {
        return;
    }
    let (xa, ya) = (scenarios::idx("x/a"), scenarios::idx("y/a"));
    let topo = Topology::single_node(N).expect("topology");
    let allow_y = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "from-y", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                 "ports": [{"port": "serve-81-tcp"}]}]}});
    let deny = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-ingress", "namespace": "x"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    let none = BTreeMap::new();
    topo.write_spec(&spec(
        &topo,
        &[deny.clone(), allow_y],
        &none,
        &BTreeMap::new(),
    ))
    .expect("spec");
    let agent = topo.start_agent(&bin_dir()).expect("agent start");
    let ports: BTreeSet<Probe> = [(TCP, 81)].into();
    let stop = AtomicBool::new(false);
    let to = SocketAddr::from((scenarios::ip(BASE, xa), 81));
    std::thread::scope(|s| {
        s.spawn(|| serve(&topo.pods[xa].ns, &ports, &stop));
        std::thread::sleep(Duration::from_millis(200));
        topo.pods[ya]
            .ns
            .run(|| {
                // Allowed: y -> x on the named port.
                let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(1))
                    .expect("y/a -> x/a:81 allowed");
                c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let echo = |c: &mut TcpStream| {
                    let mut b = [0u8; 4];
                    c.write_all(b"ping").is_ok() && c.read_exact(&mut b).is_ok()
                };
                assert!(echo(&mut c));
                // Now deny-all ingress for x while the connection is open.
                apply(
                    &topo,
                    &agent,
                    &spec(&topo, std::slice::from_ref(&deny), &none, &BTreeMap::new()),
                );
                for _ in 0..10 {
                    assert!(
                        echo(&mut c),
                        "established connection cut by the policy change"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                assert!(
                    !probe_once((TCP, 81), to.ip().to_string().parse().unwrap()),
                    "a new connection after the change must be refused"
                );
            })
            .expect("client netns");
        stop.store(true, Ordering::Relaxed);
    });
    // show policies: x/a's ingress ACL comes from x/deny-ingress, has no rule, counts drops.
    let v = agent
        .ctl_json(&["show", "policies", "--pod", "x/a"])
        .expect("show policies --pod");
    let pod = &v["pods"][0];
    assert_eq!(
        pod["policies"],
        serde_json::json!(["x/deny-ingress"]),
        "{v}"
    );
    assert_eq!(pod["ingress"]["shared_by"], 3, "{v}");
    assert_eq!(pod["ingress"]["rules"], serde_json::json!([]), "{v}");
    assert!(pod["ingress"]["denied"].as_u64().unwrap() >= 1, "{v}");
    assert!(pod.get("egress").is_none(), "{v}");
    let text = agent.ctl(&["show", "policies"]).expect("show policies");
    assert!(
        text.contains("x/a (") && text.contains("no rule: everything denied"),
        "{text}"
    );
    assert!(agent.ctl(&["show", "policies", "--pod", "q/zz"]).is_err());
}

/// The `services:`, `endpointSlices:` and `serviceProxy:` sections for one-backend ClusterIP
/// services: (name, cluster IP, port, backend pod index).
fn services_yaml(services: &[(&str, &str, u16, usize)]) -> String {
    let mut y =
        String::from("serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\nservices:\n");
    for (name, vip, port, _) in services {
        let _ = writeln!(
            y,
            "  - metadata: {{ name: {name}, namespace: default }}\n    spec:\n      clusterIP: {vip}\n      ports: [ {{ name: p, protocol: TCP, port: {port}, targetPort: {port} }} ]"
        );
    }
    y.push_str("endpointSlices:\n");
    for (name, _, port, backend) in services {
        let ip = scenarios::ip(BASE, *backend);
        let _ = writeln!(
            y,
            "  - metadata: {{ name: {name}-a, namespace: default, labels: {{ kubernetes.io/service-name: {name} }} }}\n    addressType: IPv4\n    ports: [ {{ name: p, protocol: TCP, port: {port} }} ]\n    endpoints:\n      - addresses: [{ip}]\n        conditions: {{ ready: true, serving: true, terminating: false }}\n        nodeName: node-1"
        );
    }
    y
}

/// Policy applies to the backend after service DNAT (the scenario
/// `egress-to-cluster-ip-backend-allowed-or-denied` through the dataplane), and a pod's own
/// traffic to itself through its service (hairpin, SNATed to the service address) is not
/// blocked by its ingress isolation, while other pods' traffic through that service is.
#[test]
fn cluster_ip_backends_and_hairpin_under_policy() {
    if !require_root() {
        return;
    }
    let (xa, xb, ya, yb, yc) = (
        scenarios::idx("x/a"),
        scenarios::idx("x/b"),
        scenarios::idx("y/a"),
        scenarios::idx("y/b"),
        scenarios::idx("y/c"),
    );
    let topo = Topology::single_node(N).expect("topology");
    let to_yb = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "to-yb", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}],
                             "ports": [{"port": 80}]}]}});
    let deny_x = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-ingress", "namespace": "x"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    let yaml = spec(&topo, &[to_yb, deny_x], &BTreeMap::new(), &BTreeMap::new())
        + &services_yaml(&[
            ("to-yb", "10.96.0.50", 80, yb),
            ("to-yc", "10.96.0.51", 80, yc),
            ("to-xa", "10.96.0.52", 81, xa),
        ]);
    topo.write_spec(&yaml).expect("spec");
    let agent = topo.start_agent(&bin_dir()).expect("agent start");
    let stop = AtomicBool::new(false);
    let p80: BTreeSet<Probe> = [(TCP, 80)].into();
    let p81: BTreeSet<Probe> = [(TCP, 81)].into();
    let vip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let from = |i: usize, port: u16, to: &str| {
        topo.pods[i]
            .ns
            .run(|| probe_once((TCP, port), vip(to)) || probe_once((TCP, port), vip(to)))
            .expect("probe netns")
    };
    std::thread::scope(|s| {
        s.spawn(|| serve(&topo.pods[yb].ns, &p80, &stop));
        s.spawn(|| serve(&topo.pods[yc].ns, &p80, &stop));
        s.spawn(|| serve(&topo.pods[xa].ns, &p81, &stop));
        std::thread::sleep(Duration::from_millis(300));
        let got = [
            from(xa, 80, "10.96.0.50"),
            from(xa, 80, "10.96.0.51"),
            from(xb, 80, "10.96.0.51"),
            from(xa, 81, "10.96.0.52"),
            from(ya, 81, "10.96.0.52"),
        ];
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            got,
            [true, false, true, true, false],
            "x/a->svc(y/b) allowed, x/a->svc(y/c) denied by egress, x/b->svc(y/c) allowed, \
             x/a->svc(x/a) hairpin allowed, y/a->svc(x/a) denied by ingress\n{}",
            agent.log_tail(20)
        );
    });
}
