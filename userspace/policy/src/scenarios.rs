//! The truth-table scenarios (the shape of the Kubernetes e2e netpol suite), shared by the
//! in-process suite (`tests/truth_table.rs`) and the real-traffic suite (`tests/tests/policy.rs`).
//!
//! World: namespaces x, y, z (label `ns=<name>`), pods a, b, c in each (label
//! `pod=<name>`), container ports `serve-80-tcp`, `serve-80-udp`, `serve-81-tcp`,
//! `serve-81-udp` (and `dns` 53/UDP). Pod `N/P` has address `base + 16*(n+1) + p + 1`
//! (x/a = .17, y/a = .33, z/a = .49), so each namespace is inside its own /28.
//!
//! Each scenario is a list of steps (policies in force plus label changes); each step has
//! its full expected reachability matrix for every probed (protocol, port). The matrices
//! are written from the Kubernetes rules by hand, never computed by the compiler.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::{Labels, NetworkPolicy, PodInfo};

/// Namespaces.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Pod names (in every namespace).
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// Number of pods.
pub const N: usize = 9;

/// TCP.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// SCTP.
pub const SCTP: u8 = 132;

/// Index of pod `ns/name` (`"x/a"` = 0 ... `"z/c"` = 8).
pub fn idx(s: &str) -> usize {
    let (ns, p) = s.split_once('/').unwrap_or((s, "a"));
    let n = NAMESPACES.iter().position(|x| *x == ns).unwrap_or(0);
    let q = PODS.iter().position(|x| *x == p).unwrap_or(0);
    n * 3 + q
}

/// `ns/name` of pod index `i`.
pub fn name(i: usize) -> String {
    format!("{}/{}", NAMESPACES[i / 3], PODS[i % 3])
}

/// Address of pod `i` under `base` (a /24).
pub fn ip(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    let o = base.octets();
    Ipv4Addr::new(o[0], o[1], o[2], (16 * (i / 3 + 1) + i % 3 + 1) as u8)
}

/// A reachability matrix: `m[from][to]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matrix(pub [[bool; N]; N]);

impl Matrix {
    /// Everything allowed (or denied), self always allowed.
    pub fn all(v: bool) -> Matrix {
        let mut m = Matrix([[v; N]; N]);
        for i in 0..N {
            m.0[i][i] = true;
        }
        m
    }
    /// Set `from -> to`.
    pub fn set(mut self, from: &str, to: &str, v: bool) -> Matrix {
        self.0[idx(from)][idx(to)] = v;
        self.fix()
    }
    /// Set everything arriving at pods matching `to` (a pod `x/a` or a namespace `x`).
    pub fn ingress(mut self, to: &str, v: bool) -> Matrix {
        for t in sel(to) {
            for f in 0..N {
                self.0[f][t] = v;
            }
        }
        self.fix()
    }
    /// Set everything leaving pods matching `from`.
    pub fn egress(mut self, from: &str, v: bool) -> Matrix {
        for f in sel(from) {
            for t in 0..N {
                self.0[f][t] = v;
            }
        }
        self.fix()
    }
    /// Set `from -> to` for every pod matching `from` and `to` (pods or namespaces).
    pub fn between(mut self, from: &str, to: &str, v: bool) -> Matrix {
        for f in sel(from) {
            for t in sel(to) {
                self.0[f][t] = v;
            }
        }
        self.fix()
    }
    fn fix(mut self) -> Matrix {
        for i in 0..N {
            self.0[i][i] = true;
        }
        self
    }
    /// Render (rows: from, columns: to) with differences against `other` marked.
    pub fn diff(&self, other: &Matrix) -> String {
        let mut s = String::from("from\\to ");
        for t in 0..N {
            s += &format!("{:>5}", name(t));
        }
        s.push('\n');
        for f in 0..N {
            s += &format!("{:>7} ", name(f));
            for t in 0..N {
                let c = match (self.0[f][t], other.0[f][t]) {
                    (true, true) => ".",
                    (false, false) => "X",
                    (true, false) => "+!",
                    (false, true) => "-!",
                };
                s += &format!("{c:>5}");
            }
            s.push('\n');
        }
        s
    }
}

fn sel(s: &str) -> Vec<usize> {
    if s.contains('/') {
        vec![idx(s)]
    } else {
        let n = NAMESPACES.iter().position(|x| *x == s).unwrap_or(0);
        (n * 3..n * 3 + 3).collect()
    }
}

/// A probe: protocol and destination port.
pub type Probe = (u8, u16);

/// The default probes: TCP and UDP, ports 80 and 81.
pub const PROBES: [Probe; 4] = [(TCP, 80), (TCP, 81), (UDP, 80), (UDP, 81)];

/// Expected result of a probe through a service (ClusterIP) to one backend.
#[derive(Debug, Clone)]
pub struct ServiceCheck {
    /// Client pod.
    pub from: usize,
    /// Backend pod the service load-balances to (a one-backend service).
    pub backend: usize,
    /// Probe.
    pub probe: Probe,
    /// Expected.
    pub allowed: bool,
}

/// One step of a scenario.
pub struct Step {
    /// Policies in force.
    pub policies: Vec<Value>,
    /// Pod label overrides (pod index, labels) applied from this step on.
    pub pod_labels: Vec<(usize, Labels)>,
    /// Namespace label overrides applied from this step on.
    pub ns_labels: Vec<(String, Labels)>,
    /// Probes and the expected matrix of each.
    pub expect: Vec<(Probe, Matrix)>,
    /// Service probes.
    pub services: Vec<ServiceCheck>,
}

/// A scenario.
pub struct Scenario {
    /// Name.
    pub name: &'static str,
    /// Steps, run in order against the same compiler (incremental changes).
    pub steps: Vec<Step>,
}

/// Labels from pairs.
pub fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The world's namespaces and their labels.
pub fn namespaces() -> BTreeMap<String, Labels> {
    NAMESPACES
        .iter()
        .map(|n| (n.to_string(), labels(&[("ns", n)])))
        .collect()
}

/// The world's pods.
pub fn pods(base: Ipv4Addr) -> Vec<PodInfo> {
    (0..N)
        .map(|i| PodInfo {
            namespace: NAMESPACES[i / 3].into(),
            name: PODS[i % 3].into(),
            ip: ip(base, i),
            labels: labels(&[("pod", PODS[i % 3])]),
            named_ports: [
                ("serve-80-tcp", (TCP, 80)),
                ("serve-80-udp", (UDP, 80)),
                ("serve-81-tcp", (TCP, 81)),
                ("serve-81-udp", (UDP, 81)),
                ("dns", (UDP, 53)),
            ]
            .into_iter()
            .map(|(n, p)| (n.to_string(), p))
            .collect(),
            local: true,
        })
        .collect()
}

/// Parse a scenario policy.
pub fn policy(v: &Value) -> NetworkPolicy {
    // The scenarios are static JSON in NetworkPolicy shape; a mistake is a bug in this file.
    serde_json::from_value(v.clone()).unwrap_or_default()
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn step(policies: Vec<Value>, expect: impl Fn(Probe) -> Matrix) -> Step {
    step_with(policies, &PROBES, expect)
}

fn step_with(policies: Vec<Value>, probes: &[Probe], expect: impl Fn(Probe) -> Matrix) -> Step {
    Step {
        policies,
        pod_labels: Vec::new(),
        ns_labels: Vec::new(),
        expect: probes.iter().map(|p| (*p, expect(*p))).collect(),
        services: Vec::new(),
    }
}

fn one(name: &'static str, s: Step) -> Scenario {
    Scenario {
        name,
        steps: vec![s],
    }
}

fn deny_ingress(ns: &str) -> Value {
    np(
        ns,
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )
}

fn sel_pod(p: &str) -> Value {
    json!({"matchLabels": {"pod": p}})
}

fn sel_ns(n: &str) -> Value {
    json!({"matchLabels": {"ns": n}})
}

/// Every scenario (`base`: the /24 the pods live in).
pub fn all(base: Ipv4Addr) -> Vec<Scenario> {
    let o = base.octets();
    let cidr = |last: u8, len: u8| format!("{}.{}.{}.{last}/{len}", o[0], o[1], o[2]);
    let host = |i: usize| format!("{}/32", ip(base, i));
    let open = Matrix::all(true);
    vec![
        one("no-policy", step(vec![], |_| open)),
        one(
            "default-deny-ingress",
            step(vec![deny_ingress("x")], |_| open.ingress("x", false)),
        ),
        one(
            "default-deny-egress",
            step(
                vec![np(
                    "x",
                    "deny-egress",
                    json!({"podSelector": {}, "policyTypes": ["Egress"]}),
                )],
                |_| open.egress("x", false),
            ),
        ),
        one(
            "deny-all",
            step(
                vec![np(
                    "x",
                    "deny-all",
                    json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
                )],
                |_| open.ingress("x", false).egress("x", false),
            ),
        ),
        one(
            "allow-all-ingress",
            step(
                vec![np(
                    "x",
                    "allow-all",
                    json!({"podSelector": {}, "ingress": [{}]}),
                )],
                |_| open,
            ),
        ),
        one(
            "deny-then-allow-all-union",
            step(
                vec![
                    deny_ingress("x"),
                    np(
                        "x",
                        "allow-all",
                        json!({"podSelector": {}, "ingress": [{}]}),
                    ),
                ],
                |_| open,
            ),
        ),
        one(
            "allow-from-same-namespace",
            step(
                vec![np(
                    "x",
                    "same-ns",
                    json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
                )],
                |_| open.ingress("x", false).between("x", "x", true),
            ),
        ),
        one(
            "allow-from-namespace-by-label",
            step(
                vec![np(
                    "x",
                    "from-y",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"from": [{"namespaceSelector": sel_ns("y")}]}]}),
                )],
                |_| open.ingress("x/a", false).between("y", "x/a", true),
            ),
        ),
        one(
            "pod-and-namespace-selector",
            step(
                vec![np(
                    "x",
                    "and",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"from": [{"namespaceSelector": sel_ns("y"), "podSelector": sel_pod("b")}]}]}),
                )],
                |_| open.ingress("x/a", false).set("y/b", "x/a", true),
            ),
        ),
        one(
            "pod-or-namespace-selector",
            step(
                vec![np(
                    "x",
                    "or",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"from": [{"namespaceSelector": sel_ns("y")}, {"podSelector": sel_pod("b")}]}]}),
                )],
                |_| {
                    open.ingress("x/a", false)
                        .between("y", "x/a", true)
                        .set("x/b", "x/a", true)
                },
            ),
        ),
        one(
            "pod-selector-in-all-namespaces",
            step(
                vec![np(
                    "x",
                    "b-anywhere",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": sel_pod("b")}]}]}),
                )],
                |_| {
                    open.ingress("x/a", false)
                        .set("x/b", "x/a", true)
                        .set("y/b", "x/a", true)
                        .set("z/b", "x/a", true)
                },
            ),
        ),
        one(
            "match-expressions-in-target",
            step(
                vec![np(
                    "x",
                    "in",
                    json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
                    "policyTypes": ["Ingress"]}),
                )],
                |_| open.ingress("x/a", false).ingress("x/b", false),
            ),
        ),
        one(
            "match-expressions-notin-namespaces",
            step(
                vec![np(
                    "x",
                    "notin",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["y"]}]}}]}]}),
                )],
                |_| {
                    open.ingress("x/a", false)
                        .between("x", "x/a", true)
                        .between("z", "x/a", true)
                },
            ),
        ),
        one(
            "match-expressions-exists-doesnotexist",
            step(
                vec![np(
                    "x",
                    "exists",
                    json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}]},
                    "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "DoesNotExist"}]}},
                                          {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}, {"key": "pod", "operator": "NotIn", "values": ["c"]}]}}]}]}),
                )],
                |_| {
                    open.ingress("x", false)
                        .set("x/a", "x/b", true)
                        .set("x/a", "x/c", true)
                        .set("x/b", "x/a", true)
                        .set("x/b", "x/c", true)
                },
            ),
        ),
        one(
            "port-tcp-80-only",
            step(
                vec![np(
                    "x",
                    "tcp80",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}),
                )],
                |p| {
                    if p == (TCP, 80) {
                        open
                    } else {
                        open.ingress("x/a", false)
                    }
                },
            ),
        ),
        one(
            "port-udp-81-only",
            step(
                vec![np(
                    "x",
                    "udp81",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 81, "protocol": "UDP"}]}]}),
                )],
                |p| {
                    if p == (UDP, 81) {
                        open
                    } else {
                        open.ingress("x/a", false)
                    }
                },
            ),
        ),
        one(
            "named-port-ingress",
            step(
                vec![np(
                    "x",
                    "named",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}),
                )],
                |p| {
                    if p == (UDP, 81) {
                        open
                    } else {
                        open.ingress("x/a", false)
                    }
                },
            ),
        ),
        one(
            "named-port-wrong-protocol-matches-nothing",
            step(
                vec![np(
                    "x",
                    "named-wrong",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"ports": [{"port": "serve-80-tcp", "protocol": "UDP"}]}]}),
                )],
                |_| open.ingress("x/a", false),
            ),
        ),
        one(
            "named-port-egress",
            step(
                vec![np(
                    "x",
                    "named-egress",
                    json!({"podSelector": sel_pod("a"), "policyTypes": ["Egress"],
                    "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "serve-80-tcp"}]}]}),
                )],
                |p| {
                    if p == (TCP, 80) {
                        open
                    } else {
                        open.egress("x/a", false)
                    }
                },
            ),
        ),
        one(
            "end-port-range-80-81",
            step(
                vec![np(
                    "x",
                    "range",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}]}]}),
                )],
                |p| {
                    if p.0 == TCP {
                        open
                    } else {
                        open.ingress("x/a", false)
                    }
                },
            ),
        ),
        one(
            "end-port-range-81-90",
            step(
                vec![np(
                    "x",
                    "range",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"ports": [{"port": 81, "endPort": 90, "protocol": "TCP"}, {"port": 81, "endPort": 90, "protocol": "UDP"}]}]}),
                )],
                |p| {
                    if p.1 == 81 {
                        open
                    } else {
                        open.ingress("x/a", false)
                    }
                },
            ),
        ),
        one(
            "ip-block-with-except-ingress",
            step(
                vec![np(
                    "x",
                    "block",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"from": [{"ipBlock": {"cidr": cidr(32, 27), "except": [host(idx("y/b"))]}}]}]}),
                )],
                |_| {
                    open.ingress("x/a", false)
                        .between("y", "x/a", true)
                        .between("z", "x/a", true)
                        .set("y/b", "x/a", false)
                },
            ),
        ),
        one(
            "ip-block-with-except-egress",
            step(
                vec![np(
                    "x",
                    "block-egress",
                    json!({"podSelector": sel_pod("a"), "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": cidr(32, 27), "except": [cidr(48, 28)]}}]}]}),
                )],
                |_| open.egress("x/a", false).between("x/a", "y", true),
            ),
        ),
        one(
            "ip-block-union-with-pod-in-except",
            step(
                vec![np(
                    "x",
                    "block-union",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"from": [{"ipBlock": {"cidr": cidr(32, 28), "except": [host(idx("y/b"))]}},
                                          {"namespaceSelector": sel_ns("y"), "podSelector": sel_pod("b")}]}]}),
                )],
                |_| open.ingress("x/a", false).between("y", "x/a", true),
            ),
        ),
        one(
            "multiple-policies-union",
            step(
                vec![
                    np(
                        "x",
                        "p1",
                        json!({"podSelector": sel_pod("a"), "ingress": [{"from": [{"podSelector": sel_pod("b")}], "ports": [{"port": 80}]}]}),
                    ),
                    np(
                        "x",
                        "p2",
                        json!({"podSelector": sel_pod("a"), "ingress": [{"from": [{"namespaceSelector": sel_ns("y"), "podSelector": sel_pod("c")}]}]}),
                    ),
                ],
                |p| {
                    let m = open.ingress("x/a", false).set("y/c", "x/a", true);
                    if p == (TCP, 80) {
                        m.set("x/b", "x/a", true)
                    } else {
                        m
                    }
                },
            ),
        ),
        one(
            "default-deny-egress-allow-dns-to-one-pod",
            step_with(
                vec![
                    np(
                        "x",
                        "deny-egress",
                        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
                    ),
                    np(
                        "x",
                        "allow-dns",
                        json!({"podSelector": {}, "policyTypes": ["Egress"],
                        "egress": [{"to": [{"namespaceSelector": sel_ns("z"), "podSelector": sel_pod("c")}], "ports": [{"port": 53, "protocol": "UDP"}]}]}),
                    ),
                ],
                &[(TCP, 80), (UDP, 53)],
                |p| {
                    let m = open.egress("x", false);
                    if p == (UDP, 53) {
                        m.between("x", "z/c", true)
                    } else {
                        m
                    }
                },
            ),
        ),
        one(
            "ingress-and-egress-together",
            step(
                vec![
                    np(
                        "x",
                        "a-to-y",
                        json!({"podSelector": sel_pod("a"), "policyTypes": ["Egress"],
                        "egress": [{"to": [{"namespaceSelector": sel_ns("y")}]}]}),
                    ),
                    np(
                        "y",
                        "b-from-xa",
                        json!({"podSelector": sel_pod("b"),
                        "ingress": [{"from": [{"namespaceSelector": sel_ns("x"), "podSelector": sel_pod("a")}]}]}),
                    ),
                ],
                |_| {
                    open.egress("x/a", false)
                        .between("x/a", "y", true)
                        .ingress("y/b", false)
                        .set("x/a", "y/b", true)
                },
            ),
        ),
        one(
            "egress-ports-without-peers",
            step(
                vec![np(
                    "x",
                    "egress-80",
                    json!({"podSelector": {}, "policyTypes": ["Egress"],
                    "egress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}),
                )],
                |p| {
                    if p == (TCP, 80) {
                        open
                    } else {
                        open.egress("x", false)
                    }
                },
            ),
        ),
        one(
            "protocol-without-port",
            step(
                vec![np(
                    "x",
                    "all-udp",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
                )],
                |p| {
                    if p.0 == UDP {
                        open
                    } else {
                        open.ingress("x/a", false)
                    }
                },
            ),
        ),
        one(
            "sctp-only",
            step_with(
                vec![np(
                    "x",
                    "sctp",
                    json!({"podSelector": sel_pod("a"),
                    "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}),
                )],
                &[(TCP, 80), (UDP, 80), (SCTP, 80), (SCTP, 81)],
                |p| {
                    if p == (SCTP, 80) {
                        open
                    } else {
                        open.ingress("x/a", false)
                    }
                },
            ),
        ),
        one(
            "policy-types-egress-ignores-ingress-rules",
            step(
                vec![np(
                    "x",
                    "egress-only",
                    json!({"podSelector": sel_pod("a"), "policyTypes": ["Egress"],
                    "ingress": [{"from": [{"podSelector": sel_pod("b")}]}]}),
                )],
                |_| open.egress("x/a", false),
            ),
        ),
        one(
            "policy-types-default-with-egress",
            step(
                vec![np(
                    "x",
                    "both",
                    json!({"podSelector": sel_pod("a"), "egress": [{}]}),
                )],
                |_| open.ingress("x/a", false),
            ),
        ),
        one(
            "policy-in-other-namespace",
            step(
                vec![np(
                    "y",
                    "y-from-xa",
                    json!({"podSelector": {},
                    "ingress": [{"from": [{"namespaceSelector": sel_ns("x"), "podSelector": sel_pod("a")}]}]}),
                )],
                |_| open.ingress("y", false).between("x/a", "y", true),
            ),
        ),
        Scenario {
            name: "policy-changes-while-traffic-runs",
            steps: vec![
                step(vec![deny_ingress("x")], |_| open.ingress("x", false)),
                step(
                    vec![
                        deny_ingress("x"),
                        np(
                            "x",
                            "from-y",
                            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": sel_ns("y")}]}]}),
                        ),
                    ],
                    |_| open.ingress("x", false).between("y", "x", true),
                ),
                step(vec![], |_| open),
            ],
        },
        Scenario {
            name: "pod-label-change",
            steps: vec![
                step(
                    vec![np(
                        "x",
                        "from-b",
                        json!({"podSelector": sel_pod("a"), "ingress": [{"from": [{"podSelector": sel_pod("b")}]}]}),
                    )],
                    |_| open.ingress("x/a", false).set("x/b", "x/a", true),
                ),
                Step {
                    pod_labels: vec![(idx("x/c"), labels(&[("pod", "b")]))],
                    ..step(
                        vec![np(
                            "x",
                            "from-b",
                            json!({"podSelector": sel_pod("a"), "ingress": [{"from": [{"podSelector": sel_pod("b")}]}]}),
                        )],
                        |_| {
                            open.ingress("x/a", false)
                                .set("x/b", "x/a", true)
                                .set("x/c", "x/a", true)
                        },
                    )
                },
            ],
        },
        Scenario {
            name: "namespace-label-change",
            steps: vec![
                step(
                    vec![np(
                        "x",
                        "from-y",
                        json!({"podSelector": sel_pod("a"), "ingress": [{"from": [{"namespaceSelector": sel_ns("y")}]}]}),
                    )],
                    |_| open.ingress("x/a", false).between("y", "x/a", true),
                ),
                Step {
                    ns_labels: vec![("z".into(), labels(&[("ns", "y")]))],
                    ..step(
                        vec![np(
                            "x",
                            "from-y",
                            json!({"podSelector": sel_pod("a"), "ingress": [{"from": [{"namespaceSelector": sel_ns("y")}]}]}),
                        )],
                        |_| {
                            open.ingress("x/a", false)
                                .between("y", "x/a", true)
                                .between("z", "x/a", true)
                        },
                    )
                },
            ],
        },
        one("egress-to-cluster-ip-backend-allowed-or-denied", {
            let mut s = step(
                vec![np(
                    "x",
                    "to-yb",
                    json!({"podSelector": sel_pod("a"), "policyTypes": ["Egress"],
                    "egress": [{"to": [{"namespaceSelector": sel_ns("y"), "podSelector": sel_pod("b")}], "ports": [{"port": 80}]}]}),
                )],
                |p| {
                    let m = open.egress("x/a", false);
                    if p == (TCP, 80) {
                        m.set("x/a", "y/b", true)
                    } else {
                        m
                    }
                },
            );
            s.services = vec![
                ServiceCheck {
                    from: idx("x/a"),
                    backend: idx("y/b"),
                    probe: (TCP, 80),
                    allowed: true,
                },
                ServiceCheck {
                    from: idx("x/a"),
                    backend: idx("y/c"),
                    probe: (TCP, 80),
                    allowed: false,
                },
                ServiceCheck {
                    from: idx("x/b"),
                    backend: idx("y/c"),
                    probe: (TCP, 80),
                    allowed: true,
                },
            ];
            s
        }),
    ]
}
