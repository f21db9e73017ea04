//! Kubernetes suite: the agent's watchers against the in-repo API server
//! ([`ferroplane_e2e::apiserver`]: real list/watch JSON, resourceVersion, bookmarks, 410 Gone).
//!
//! - In process: Node/Pod/Namespace/Service/EndpointSlice/NetworkPolicy changes followed into
//!   the desired state; a service added through the API lands in the service table built by
//!   the same code as a YAML spec's; a pod's label change flips a policy decision; relist
//!   after 410 Gone; bookmarks; Node annotations; a pod CIDR block taken from a pool.
//! - The agent binary in Kubernetes mode (root): node spec from its Node object, annotations
//!   published, readiness on the health endpoint, CNI ADD from the Node's pod CIDR.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroplane_agent::config::NodeSpec;
use ferroplane_agent::k8s::model::annotation;
use ferroplane_agent::k8s::source::{self, K8sSource};
use ferroplane_agent::k8s::DesiredState;
use ferroplane_e2e::apiserver::ApiServer;
use ferroplane_e2e::cni::{ferroplane_conf, invoke, CniEnv};
use ferroplane_e2e::topology::Topology;
use ferroplane_e2e::{bin_dir, bin_path, require_root, Netns};
use ferroplane_tables::ServiceTable;
use serde_json::{json, Value};

const PREFIX: &str = "ferroplane.io";
const WAIT: Duration = Duration::from_secs(20);

fn node(name: &str, ip: &str, cidr: Option<&str>, annotations: Value) -> Value {
    let mut n = json!({
        "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}
    });
    if let Some(c) = cidr {
        n["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    n
}

fn pod(name: &str, ip: &str, node: &str, labels: Value) -> Value {
    json!({
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn service(name: &str, vip: &str) -> Value {
    service_port(name, vip, 80)
}

fn service_port(name: &str, vip: &str, port: u16) -> Value {
    json!({
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "uid": "u1", "creationTimestamp": "2026-11-23T00:00:00Z"},
        "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip], "ipFamilies": ["IPv4"],
                 "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": "http"}],
                 "selector": {"app": name}, "sessionAffinity": "None"},
        "status": {"loadBalancer": {}}
    })
}

fn slice(service: &str, endpoints: &[(&str, bool)]) -> Value {
    json!({
        "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-abc"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": endpoints.iter().map(|(ip, ready)| json!({
            "addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "nodeName": "node-1", "targetRef": {"kind": "Pod", "namespace": "default", "name": "x"}
        })).collect::<Vec<_>>()
    })
}

fn policy() -> Value {
    json!({
        "kind": "NetworkPolicy",
        "metadata": {"name": "db-from-api", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "api"}}}],
                              "ports": [{"protocol": "TCP", "port": 5432}]}]}
    })
}

const BASE_SPEC: &str = "node:\n  name: node-1\n  uplink: up0\n  address: 192.168.100.2/24\n  podCIDR: 10.244.1.0/24\ncluster:\n  mode: direct\n  nodes: []\n";

fn client(srv: &ApiServer) -> kube::Client {
    let cfg = kube::Config::new(srv.url().parse().expect("url"));
    kube::Client::try_from(cfg).expect("client")
}

/// Waits until `f` holds on the latest desired state.
async fn until(
    src: &mut K8sSource,
    what: &str,
    f: impl Fn(&DesiredState) -> bool,
) -> Arc<DesiredState> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = src.desired.borrow().clone();
        if f(&d) {
            return d;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "timed out waiting for: {what}");
        let _ =
            tokio::time::timeout(left.min(Duration::from_millis(200)), src.desired.changed()).await;
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

/// The service table the agent would build for `d` (same code as a YAML spec).
fn table(d: &DesiredState) -> ServiceTable {
    let mut spec = NodeSpec::from_yaml(BASE_SPEC).expect("base spec");
    d.apply_to(&mut spec);
    spec.validate()
        .expect("spec with the watched services is valid");
    ServiceTable::build(
        ferroplane_agent::services::service_defs(&spec),
        vec![spec.node.address.addr()],
        ferroplane_tables::DEFAULT_TABLE_SIZE,
        None,
    )
    .expect("service table")
}

fn backends(t: &ServiceTable, vip: &str, port: u16) -> Vec<(Ipv4Addr, u16)> {
    match t.lookup(ip(vip), 6, port) {
        Some((i, kind)) => {
            let sp = t.port(i).expect("port");
            sp.selection(kind, false)
                .backends
                .iter()
                .map(|&b| {
                    (
                        sp.def.backends[b as usize].addr,
                        sp.def.backends[b as usize].port,
                    )
                })
                .collect()
        }
        None => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_follow_the_api() {
    let srv = ApiServer::start().expect("api server");
    srv.apply(
        json!({"kind": "Namespace", "metadata": {"name": "default", "labels": {"team": "a"}}}),
    );
    srv.apply(node(
        "node-1",
        "192.168.100.2",
        Some("10.244.1.0/24"),
        json!({}),
    ));
    srv.apply(node(
        "node-2",
        "192.168.100.3",
        Some("10.244.2.0/24"),
        json!({"ferroplane.io/vtep-mac": "02:fe:c0:a8:64:03", "ferroplane.io/tunnel-address": "192.168.100.3"}),
    ));
    srv.apply(pod("db", "10.244.1.10", "node-1", json!({"app": "db"})));
    srv.apply(pod("api", "10.244.1.11", "node-1", json!({"role": "api"})));
    srv.apply(pod("web", "10.244.2.10", "node-2", json!({"role": "web"})));
    srv.apply(policy());
    let client = client(&srv);
    let mut src = K8sSource::start(client.clone(), "node-1", PREFIX);

    // Initial lists: the other node, the pods, the policy.
    let d = until(&mut src, "initial sync", |d| {
        d.policy.pods().len() == 3 && d.policy.policy_count() == 1
    })
    .await;
    assert!(*src.synced.borrow());
    assert_eq!(
        d.pod_cidr.map(|c| c.to_string()).as_deref(),
        Some("10.244.1.0/24")
    );
    assert_eq!(d.remote_nodes.len(), 1);
    let n2 = &d.remote_nodes[0];
    assert_eq!(
        (n2.name.as_str(), n2.address),
        ("node-2", ip("192.168.100.3"))
    );
    assert_eq!(
        n2.pod_cidr.map(|c| c.to_string()).as_deref(),
        Some("10.244.2.0/24")
    );
    assert_eq!(
        n2.vtep_mac.map(|m| m.to_string()).as_deref(),
        Some("02:fe:c0:a8:64:03")
    );
    let decision = d
        .policy
        .allows(ip("10.244.2.10"), ip("10.244.1.10"), 6, 5432);
    assert!(!decision.allowed, "web -> db is not allowed: {decision:?}");
    assert!(
        d.policy
            .allows(ip("10.244.1.11"), ip("10.244.1.10"), 6, 5432)
            .allowed
    );

    // A service added through the API lands in the service table.
    assert!(backends(&table(&d), "10.96.0.10", 80).is_empty());
    srv.apply(service("web", "10.96.0.10"));
    srv.apply(slice(
        "web",
        &[
            ("10.244.1.10", true),
            ("10.244.2.10", true),
            ("10.244.1.99", false),
        ],
    ));
    let d = until(&mut src, "service and endpoints", |d| {
        d.services.len() == 1
            && d.endpoint_slices
                .first()
                .is_some_and(|s| s.0.endpoints.as_ref().map_or(0, Vec::len) == 3)
    })
    .await;
    let t = table(&d);
    let mut b = backends(&t, "10.96.0.10", 80);
    b.sort();
    assert_eq!(
        b,
        vec![(ip("10.244.1.10"), 8080), (ip("10.244.2.10"), 8080)],
        "ready endpoints only"
    );

    // A pod's label change flips the policy decision.
    srv.apply(pod("web", "10.244.2.10", "node-2", json!({"role": "api"})));
    until(&mut src, "web relabelled", |d| {
        d.policy
            .allows(ip("10.244.2.10"), ip("10.244.1.10"), 6, 5432)
            .allowed
    })
    .await;
    srv.apply(pod("web", "10.244.2.10", "node-2", json!({"role": "web"})));
    until(&mut src, "web relabelled back", |d| {
        !d.policy
            .allows(ip("10.244.2.10"), ip("10.244.1.10"), 6, 5432)
            .allowed
    })
    .await;

    // Bookmarks arrive on idle watches.
    let start = Instant::now();
    while srv.bookmarks_sent() == 0 && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(srv.bookmarks_sent() > 0, "no bookmark sent");

    // 410 Gone: the history is compacted and every watch ends; the watchers list again and
    // keep following.
    let lists_before = srv.lists("/api/v1/pods");
    srv.compact();
    srv.apply(slice(
        "web",
        &[("10.244.1.10", false), ("10.244.2.10", true)],
    ));
    srv.delete("Node", "", "node-2");
    let d = until(&mut src, "changes after 410", |d| {
        d.remote_nodes.is_empty()
            && d.endpoint_slices
                .first()
                .is_some_and(|s| s.0.endpoints.as_ref().map_or(0, Vec::len) == 2)
    })
    .await;
    assert_eq!(
        backends(&table(&d), "10.96.0.10", 80),
        vec![(ip("10.244.2.10"), 8080)]
    );
    let start = Instant::now();
    while (srv.gone_sent() == 0 || srv.lists("/api/v1/pods") <= lists_before)
        && start.elapsed() < WAIT
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        srv.gone_sent() > 0,
        "no watch resumed from a compacted version"
    );
    assert!(
        srv.lists("/api/v1/pods") > lists_before,
        "pods were not listed again after 410"
    );
    // The service goes away with its object.
    srv.delete("Service", "default", "web");
    let d = until(&mut src, "service deleted", |d| d.services.is_empty()).await;
    assert!(backends(&table(&d), "10.96.0.10", 80).is_empty());

    // Node annotations for the other nodes.
    let mut ann = BTreeMap::new();
    ann.insert(
        annotation::VTEP_MAC.to_string(),
        "02:fe:c0:a8:64:02".to_string(),
    );
    ann.insert(
        annotation::TUNNEL_ADDRESS.to_string(),
        "192.168.100.2".to_string(),
    );
    source::publish_annotations(&client, "node-1", PREFIX, &ann)
        .await
        .expect("patch");
    let n1 = srv.get("Node", "", "node-1").expect("node-1");
    assert_eq!(
        n1["metadata"]["annotations"]["ferroplane.io/vtep-mac"],
        "02:fe:c0:a8:64:02"
    );
    assert_eq!(
        n1["metadata"]["annotations"]["ferroplane.io/tunnel-address"],
        "192.168.100.2"
    );
    assert!(srv.patches() >= 1);

    // A node without spec.podCIDRs takes the first free block of the pool, once.
    srv.apply(node("node-3", "192.168.100.4", None, json!({})));
    let pool = Some("10.244.0.0/16".parse().expect("pool"));
    let (_, c) = source::pod_cidr(&client, "node-3", PREFIX, pool, 24, WAIT)
        .await
        .expect("pool block");
    assert_eq!(c.to_string(), "10.244.0.0/24");
    let (_, again) = source::pod_cidr(&client, "node-3", PREFIX, pool, 24, WAIT)
        .await
        .expect("again");
    assert_eq!(again, c);
    srv.apply(node("node-4", "192.168.100.5", None, json!({})));
    let (_, c4) = source::pod_cidr(&client, "node-4", PREFIX, pool, 24, WAIT)
        .await
        .expect("pool block");
    // node-1 has .1, node-3 took .0; node-2 (.2) was deleted above, so .2 is free again.
    assert_eq!(c4.to_string(), "10.244.2.0/24");
    let (_, kept) = source::pod_cidr(&client, "node-4", PREFIX, None, 24, WAIT)
        .await
        .expect("annotated");
    assert_eq!(kept, c4, "the annotated block is kept without a pool");
}

#[test]
fn agent_in_kubernetes_mode() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(0).expect("topology");
    let srv = ApiServer::start_in(&topo.node).expect("api server in the node namespace");
    srv.apply(json!({"kind": "Namespace", "metadata": {"name": "default"}}));
    srv.apply(node(
        "node-1",
        "192.168.100.2",
        Some("10.244.1.0/24"),
        json!({}),
    ));
    srv.apply(node(
        "node-2",
        "192.168.100.3",
        Some("10.244.2.0/24"),
        json!({}),
    ));
    let kubeconfig = topo.dir().join("kubeconfig");
    std::fs::write(&kubeconfig, srv.kubeconfig()).expect("kubeconfig");
    // The ConfigMap-mounted agent config replaces the YAML node spec.
    topo.write_spec(
        "nodeName: node-1\nuplink: up0\ngateway: 192.168.100.1\nxdpMode: auto\noverlay: direct\n",
    )
    .expect("agent config");
    let socket = topo.dir().join("cni.sock");
    let state = topo.dir().join("state");
    let health_port = 19644 + (std::process::id() % 300) as u16;
    let health = format!("127.0.0.1:{health_port}");
    let args = [
        "--k8s",
        "--kubeconfig",
        kubeconfig.to_str().expect("path"),
        "--cni-socket",
        socket.to_str().expect("path"),
        "--state-dir",
        state.to_str().expect("path"),
        "--health-addr",
        &health,
    ];
    let agent = topo
        .start_agent_with(&bin_dir(), &args)
        .expect("agent in Kubernetes mode");

    // Ready once the watchers have listed.
    let get = |path: &str| -> Option<String> {
        let path = path.to_string();
        let addr = health.clone();
        topo.node
            .run(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(&addr).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                    .ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                Some(out)
            })
            .ok()
            .flatten()
    };
    let start = Instant::now();
    loop {
        if get("/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "never ready: {:?}\n{}",
            get("/readyz"),
            agent.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // One unanswered request (a busy 2-core machine) is retried; a wrong answer is not.
    let mut live = get("/healthz");
    for _ in 0..5 {
        if live.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        live = get("/healthz");
    }
    assert!(
        live.as_deref()
            .is_some_and(|r| r.starts_with("HTTP/1.1 200")),
        "{live:?}"
    );

    // What other nodes need, published on this node's Node.
    let n1 = srv.get("Node", "", "node-1").expect("node-1");
    let ann = &n1["metadata"]["annotations"];
    assert_eq!(ann["ferroplane.io/tunnel-address"], "192.168.100.2", "{n1}");
    assert_eq!(ann["ferroplane.io/vtep-mac"], "02:fe:c0:a8:64:02", "{n1}");
    assert_eq!(ann["ferroplane.io/pod-cidr"], "10.244.1.0/24", "{n1}");

    // The other node's pod CIDR is routed toward it.
    let routes = agent.ctl(&["show", "routes"]).expect("show routes");
    assert!(routes.contains("10.244.2.0/24"), "{routes}");

    // Pods get addresses from the Node's pod CIDR through the CNI plugin.
    let plugin = bin_path(&bin_dir(), "ferroplane-cni").expect("ferroplane-cni");
    let pod_ns = Netns::new("k8spod").expect("netns");
    let conf = ferroplane_conf("ferroplane", &socket);
    let r = invoke(
        &topo.node,
        &plugin,
        &CniEnv::new("ADD", "k8s-1", pod_ns.path()),
        &conf.to_string(),
        WAIT,
    )
    .expect("plugin");
    assert!(r.ok(), "{r:?}\n{}", agent.log_tail(30));
    let a = r.ip().expect("ip");
    assert_eq!(u32::from(a) >> 8, u32::from(ip("10.244.1.0")) >> 8, "{a}");

    // A service added through the API becomes reachable: pod b -> VIP -> pod a.
    let pod_b = Netns::new("k8spodb").expect("netns");
    let r = invoke(
        &topo.node,
        &plugin,
        &CniEnv::new("ADD", "k8s-2", pod_b.path()),
        &conf.to_string(),
        WAIT,
    )
    .expect("plugin");
    assert!(r.ok(), "{r:?}");
    let vip = ip("10.96.0.77");
    let shown = agent.ctl(&["show", "services"]).expect("show services");
    assert!(!shown.contains("10.96.0.77"), "{shown}");
    srv.apply(service_port("echo", "10.96.0.77", 18080));
    srv.apply(json!({
        "kind": "EndpointSlice",
        "metadata": {"name": "echo-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 18080}],
        "endpoints": [{"addresses": [a.to_string()], "conditions": {"ready": true}, "nodeName": "node-1"}]
    }));
    let start = Instant::now();
    loop {
        let shown = agent.ctl(&["show", "services"]).expect("show services");
        if shown.contains("10.96.0.77") && shown.contains(&a.to_string()) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "service not applied: {shown}\n{}",
            agent.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ferroplane_e2e::tcp_transfer(&pod_b, &pod_ns, vip, 18080, 256 * 1024)
        .expect("pod b -> service VIP -> pod a");

    // Watch events reach the agent: a new node shows up in its log of desired states.
    srv.apply(node(
        "node-5",
        "192.168.100.6",
        Some("10.244.5.0/24"),
        json!({}),
    ));
    let start = Instant::now();
    let plain = |s: String| -> String {
        // The log is colored: drop ANSI escape sequences.
        let mut out = String::new();
        let mut esc = false;
        for c in s.chars() {
            match (esc, c) {
                (false, '\u{1b}') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => out.push(c),
            }
        }
        out
    };
    while !plain(agent.log_tail(200)).contains("remote_nodes=2") {
        assert!(
            start.elapsed() < WAIT,
            "node-5 not seen:\n{}",
            agent.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent log without ANSI colour escapes.
fn plain_log(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// A Node added after the agent started (the first node of its cluster, so it started
/// with no remote node at all) gets its pod CIDR routed: a pod plumbed through CNI reaches
/// an address on it, which it could not before (no default route on this node).
#[test]
fn node_joining_later_becomes_reachable() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(0).expect("topology");
    // The router stands in for node-2: 192.168.100.3 on the uplink segment, one of its
    // "pods" (10.244.2.10) on its loopback.
    topo.router
        .add_addr(Topology::ROUTER_IF, "192.168.100.3/24")
        .expect("node-2 address");
    topo.router
        .add_addr("lo", "10.244.2.10/32")
        .expect("node-2 pod address");
    // Nothing but the cluster routes may lead there: not the node kernel's default route
    // either (the engine hands the host what it does not route).
    topo.node
        .ip(&["route", "del", "default"])
        .expect("deleting the node's default route");
    let srv = ApiServer::start_in(&topo.node).expect("api server in the node namespace");
    srv.apply(json!({"kind": "Namespace", "metadata": {"name": "default"}}));
    srv.apply(node(
        "node-1",
        "192.168.100.2",
        Some("10.244.1.0/24"),
        json!({}),
    ));
    let kubeconfig = topo.dir().join("kubeconfig");
    std::fs::write(&kubeconfig, srv.kubeconfig()).expect("kubeconfig");
    // No gateway: only cluster routes lead off the node.
    topo.write_spec("nodeName: node-1\nuplink: up0\nxdpMode: auto\noverlay: direct\n")
        .expect("agent config");
    let socket = topo.dir().join("cni.sock");
    let state = topo.dir().join("state");
    let args = [
        "--k8s",
        "--kubeconfig",
        kubeconfig.to_str().expect("path"),
        "--cni-socket",
        socket.to_str().expect("path"),
        "--state-dir",
        state.to_str().expect("path"),
    ];
    let agent = topo
        .start_agent_with(&bin_dir(), &args)
        .expect("agent in Kubernetes mode");
    let start = Instant::now();
    while !plain_log(&agent.log_tail(200)).contains("remote_nodes=0") {
        assert!(
            start.elapsed() < WAIT,
            "watchers never listed:\n{}",
            agent.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let plugin = bin_path(&bin_dir(), "ferroplane-cni").expect("ferroplane-cni");
    let pod_ns = Netns::new("k8sjoin").expect("netns");
    let conf = ferroplane_conf("ferroplane", &socket);
    let r = invoke(
        &topo.node,
        &plugin,
        &CniEnv::new("ADD", "join-1", pod_ns.path()),
        &conf.to_string(),
        WAIT,
    )
    .expect("plugin");
    assert!(r.ok(), "{r:?}\n{}", agent.log_tail(30));
    let ping = |ns: &Netns| {
        ns.exec(&["ping", "-c", "1", "-W", "1", "10.244.2.10"])
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let routes = agent.ctl(&["show", "routes"]).expect("show routes");
    assert!(!routes.contains("10.244.2.0/24"), "{routes}");
    assert!(
        !ping(&pod_ns),
        "node-2's pod reachable before node-2 joined"
    );

    // node-2 joins.
    srv.apply(node(
        "node-2",
        "192.168.100.3",
        Some("10.244.2.0/24"),
        json!({}),
    ));
    let start = Instant::now();
    loop {
        let routes = agent.ctl(&["show", "routes"]).expect("show routes");
        if routes.contains("10.244.2.0/24") && routes.contains("192.168.100.3") {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "node-2's pod CIDR never routed: {routes}\n{}",
            agent.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = Instant::now();
    while !ping(&pod_ns) {
        assert!(
            start.elapsed() < WAIT,
            "node-2's pod unreachable after node-2 joined\n{}",
            agent.log_tail(40)
        );
    }

    // node-2 leaves: its route goes.
    srv.delete("Node", "", "node-2");
    let start = Instant::now();
    loop {
        let routes = agent.ctl(&["show", "routes"]).expect("show routes");
        if !routes.contains("10.244.2.0/24") {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "node-2's route stayed after it left: {routes}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
