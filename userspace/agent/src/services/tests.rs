//! Tests of the services module: spec validation and defaults, captures, tables,
//! health-check ports, reports.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ferroplane_tables::service::PROTO_TCP;
use ferroplane_tables::EndpointState;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::report::SESSION_BATCH;
use super::*;
use crate::spec::{ConfigError, NodeSpec};

const BASE: &str = r#"
node:
  name: node-1
  uplink: up0
  address: 192.168.100.2/24
  podCIDR: 10.244.1.0/24
"#;

fn spec(extra: &str) -> Result<NodeSpec, ConfigError> {
    NodeSpec::from_yaml(&format!("{BASE}{extra}"))
}

/// A spec with a pod, another node, a BGP speaker and a LoadBalancer service `web`
/// (index 1, after `other`) whose external IP, ingress IP and health-check port the
/// capture tests replace.
fn capture_spec(ext: &str, ingress: &str, hc: u16) -> String {
    format!(
        r#"
node:
  name: node-1
  uplink: up0
  address: 192.168.100.2/24
  gateway: 192.168.100.1
  podCIDR: 10.244.1.0/24
pods:
  - {{ name: pod2, netns: fp-x, ip: 10.244.1.12 }}
cluster:
  nodes:
    - {{ name: node-2, address: 192.168.100.3, podCIDR: 10.244.2.0/24 }}
serviceProxy:
  clusterCIDRs: [10.244.0.0/16]
  serviceCIDRs: [10.96.0.0/12]
services:
  - metadata: {{ name: other }}
    spec:
      type: NodePort
      clusterIP: 10.96.0.9
      ports: [ {{ name: http, port: 8080, nodePort: 30100 }} ]
  - metadata: {{ name: web }}
    spec:
      type: LoadBalancer
      clusterIP: 10.96.0.10
      externalIPs: [203.0.113.5, {ext}]
      externalTrafficPolicy: Local
      healthCheckNodePort: {hc}
      ports: [ {{ name: http, port: 80, nodePort: 30080 }} ]
    status: {{ loadBalancer: {{ ingress: [ {{ ip: {ingress} }} ] }} }}
"#
    )
}

#[test]
fn real_external_addresses_are_accepted() {
    let s = NodeSpec::from_yaml(&capture_spec("198.51.100.7", "203.0.113.10", 32000)).unwrap();
    assert!(refusals(&s, &Protected::of_spec(&s)).is_empty());
    // Addresses next to the protected ones are fine too.
    for ok in [
        "10.243.255.255",
        "10.112.0.1",
        "192.168.101.1",
        "192.168.100.4",
    ] {
        NodeSpec::from_yaml(&capture_spec(ok, "203.0.113.10", 32000))
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn external_ips_that_capture_are_refused() {
    let f = "services[1].spec.externalIPs[1]";
    for (ip, why) in [
            (
                "10.244.1.12",
                "10.244.1.12 is the address of pod default/pod2 (inside pod CIDR 10.244.1.0/24 of node node-1)",
            ),
            ("10.244.1.5", "10.244.1.5 is inside pod CIDR 10.244.1.0/24 of node node-1"),
            ("10.244.2.9", "10.244.2.9 is inside pod CIDR 10.244.2.0/24 of node node-2"),
            (
                "10.244.7.1",
                "10.244.7.1 is inside the cluster's own range 10.244.0.0/16 (serviceProxy.clusterCIDRs[0])",
            ),
            ("10.96.0.9", "10.96.0.9 is the cluster IP of service default/other"),
            (
                "10.100.0.1",
                "10.100.0.1 is inside the service range 10.96.0.0/12 (serviceProxy.serviceCIDRs[0])",
            ),
            ("192.168.100.2", "192.168.100.2 is the address of node node-1"),
            ("192.168.100.3", "192.168.100.3 is the address of node node-2"),
            ("192.168.100.1", "192.168.100.1 is the gateway of node node-1"),
            ("192.168.100.255", "broadcast address of the node's subnet 192.168.100.0/24"),
            ("0.0.0.0", "in 0.0.0.0/8"),
            ("0.1.2.3", "in 0.0.0.0/8"),
            ("127.0.0.1", "loopback"),
            ("127.1.2.3", "loopback"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.5", "multicast"),
            ("239.1.1.1", "multicast"),
            ("255.255.255.255", "the broadcast address"),
            ("240.0.0.1", "reserved"),
        ] {
            let e = NodeSpec::from_yaml(&capture_spec(ip, "203.0.113.10", 32000))
                .expect_err(ip);
            assert_eq!(e.field(), f, "{ip}: {e}");
            assert!(e.to_string().starts_with(&format!("{f}: {ip} ")), "{e}");
            assert!(e.to_string().contains(why), "{ip}: {why:?} not in {e}");
        }
    // The masquerade address is the node's too.
    let y = capture_spec("192.168.100.50", "203.0.113.10", 32000).replace(
        "  serviceCIDRs:",
        "  masqueradeAddress: 192.168.100.50\n  serviceCIDRs:",
    );
    let e = NodeSpec::from_yaml(&y).unwrap_err();
    assert!(e.to_string().contains("masquerade address"), "{e}");
}

#[test]
fn load_balancer_ips_that_capture_are_refused() {
    let e = NodeSpec::from_yaml(&capture_spec("198.51.100.7", "10.244.1.12", 32000)).unwrap_err();
    assert_eq!(e.field(), "services[1].status.loadBalancer.ingress[0].ip");
    assert!(e.to_string().contains("pod default/pod2"), "{e}");
    let e = NodeSpec::from_yaml(&capture_spec("198.51.100.7", "192.168.100.2", 32000)).unwrap_err();
    assert_eq!(
            e.to_string(),
            "services[1].status.loadBalancer.ingress[0].ip: 192.168.100.2 is the address of node node-1"
        );
}

#[test]
fn health_check_ports_that_clash_are_refused() {
    let f = "services[1].spec.healthCheckNodePort";
    for (hc, why) in [
        (22, "22 is a well-known port (below 1024)"),
        (1023, "below 1024"),
        (
            30100,
            "30100 is the nodePort of services[0].spec.ports[0] (default/other)",
        ),
        (
            30080,
            "30080 is the nodePort of services[1].spec.ports[0] (default/web)",
        ),
        (9644, "the agent's health endpoint"),
        (9464, "the agent's metrics endpoint"),
        (61000, "inside serviceProxy.snatPorts"),
    ] {
        let e =
            NodeSpec::from_yaml(&capture_spec("198.51.100.7", "203.0.113.10", hc)).expect_err(why);
        assert_eq!(e.field(), f, "{hc}: {e}");
        assert!(e.to_string().contains(why), "{why:?} not in {e}");
    }
    // Another service's health-check port, and the BGP listener.
    let mut s = NodeSpec::from_yaml(&capture_spec("198.51.100.7", "203.0.113.10", 32000)).unwrap();
    let mut twin = s.services[1].clone();
    twin.0.metadata.name = Some("twin".into());
    let ts = twin.0.spec.as_mut().unwrap();
    ts.cluster_ip = Some("10.96.0.11".into());
    ts.cluster_ips = None;
    ts.external_ips = None;
    ts.ports.as_mut().unwrap()[0].node_port = Some(30081);
    twin.0.status = None;
    s.services.push(twin);
    let r = refusals(&s, &Protected::of_spec(&s));
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].field, "services[2].spec.healthCheckNodePort");
    assert!(r[0]
        .message
        .contains("already the healthCheckNodePort of default/web"));
    let mut p = Protected::of_spec(&s);
    p.listener_ports
        .insert(1790, "the agent's BGP listener (bgp.listenPort)".into());
    s.services.pop();
    s.services[1]
        .0
        .spec
        .as_mut()
        .unwrap()
        .health_check_node_port = Some(1790);
    let r = refusals(&s, &p);
    assert!(r[0].message.contains("BGP listener"), "{r:?}");
}

#[test]
fn kubernetes_mode_drops_only_the_refused_entries() {
    let mut s = NodeSpec::from_yaml(&capture_spec("198.51.100.7", "203.0.113.10", 32000)).unwrap();
    let web = &mut s.services[1].0;
    // A pod the spec does not list (another node's, from the API) and a node address.
    let ws = web.spec.as_mut().unwrap();
    ws.external_ips = Some(vec![
        "10.250.0.4".into(),
        "198.51.100.7".into(),
        "192.168.100.3".into(),
    ]);
    ws.health_check_node_port = Some(80);
    web.status = serde_json::from_value(serde_json::json!({
        "loadBalancer": {"ingress": [{"ip": "10.96.0.9"}, {"ip": "203.0.113.10"}]}
    }))
    .unwrap();
    let p = Protected::of_spec(&s)
        .with_pods([("10.250.0.4".parse().unwrap(), "team-a/db-0".to_string())]);
    let r = refusals(&s, &p);
    let fields: Vec<&str> = r.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "services[1].spec.externalIPs[0]",
            "services[1].spec.externalIPs[2]",
            "services[1].status.loadBalancer.ingress[0].ip",
            "services[1].spec.healthCheckNodePort",
        ]
    );
    assert!(r[0].message.contains("pod team-a/db-0"), "{}", r[0].message);
    assert_eq!(drop_refused(&mut s.services, &r), 4);
    let web = s.services[1].compile().unwrap();
    assert_eq!(
        web.external_ips,
        ["198.51.100.7".parse::<Ipv4Addr>().unwrap()]
    );
    assert_eq!(web.lb_ips(), ["203.0.113.10".parse::<Ipv4Addr>().unwrap()]);
    assert_eq!(web.health_check_node_port, None);
    // The rest of the service is untouched, and the result validates.
    assert_eq!(web.ports[0].node_port, Some(30080));
    s.validate().unwrap();
    let counts: BTreeMap<_, _> = ignored_entries().into_iter().collect();
    assert_eq!(counts["externalIPs"], 2);
    assert_eq!(counts["loadBalancerIngress"], 1);
    assert_eq!(counts["healthCheckNodePort"], 1);
    // Nothing refused any more: the count goes back to 0.
    assert_eq!(drop_refused(&mut s.services, &[]), 0);
    assert!(ignored_entries().iter().all(|(_, n)| *n == 0));
}

const WEB: &str = r#"
serviceProxy:
  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]
  masquerade: true
services:
  - metadata: { name: web }
    spec:
      type: LoadBalancer
      clusterIP: 10.96.0.10
      ports:
        - { name: http, protocol: TCP, port: 80, targetPort: http, nodePort: 30080 }
        - { name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053 }
      externalTrafficPolicy: Local
      healthCheckNodePort: 32000
      sessionAffinity: ClientIP
    status: { loadBalancer: { ingress: [ { ip: 203.0.113.10 } ] } }
endpointSlices:
  - metadata: { name: web-a, labels: { kubernetes.io/service-name: web } }
    addressType: IPv4
    ports: [ { name: http, protocol: TCP, port: 8080 }, { name: dns, protocol: UDP, port: 5353 } ]
    endpoints:
      - addresses: [10.244.1.10]
        nodeName: node-1
      - addresses: [10.244.2.10]
        nodeName: node-2
        conditions: { ready: false, serving: true, terminating: true }
  - metadata: { name: web-b, labels: { kubernetes.io/service-name: web } }
    ports: [ { name: http, protocol: TCP, port: 9090 } ]
    endpoints:
      - addresses: [10.244.1.11]
        nodeName: node-1
"#;

/// A bare Service and EndpointSlice as a user writes them, and what the API server
/// stores for them (`SetDefaults_Service`, `SetDefaults_EndpointPort`, the API
/// reference's reading of absent endpoint conditions).
const BARE: &str = r#"
services:
  - metadata: { name: bare }
    spec:
      type: NodePort
      clusterIP: 10.96.0.20
      ports: [ { port: 80, nodePort: 30081 } ]
      sessionAffinity: ClientIP
  - metadata: { name: lb }
    spec:
      type: LoadBalancer
      clusterIPs: [10.96.0.21]
      ports: [ { port: 443, targetPort: 0, nodePort: 30443 } ]
      sessionAffinityConfig: { clientIP: { timeoutSeconds: 99999999 } }
    status: { loadBalancer: { ingress: [ { ip: 203.0.113.11 } ] } }
  - metadata: { name: internal }
    spec:
      clusterIP: 10.96.0.22
      ports: [ { port: 53, protocol: UDP, targetPort: dns } ]
  - metadata: { name: ext }
    spec:
      clusterIP: 10.96.0.23
      externalIPs: [203.0.113.12]
      ports: [ { port: 80 } ]
endpointSlices:
  - metadata: { name: bare-1, labels: { kubernetes.io/service-name: bare } }
    ports: [ { port: 8080 } ]
    endpoints:
      - addresses: [10.244.1.10]
      - addresses: [10.244.1.11]
        conditions: { ready: false, terminating: true }
"#;

#[test]
fn api_server_defaults() {
    let s = spec(BARE).unwrap();
    let bare = s.services[0].0.spec.as_ref().unwrap();
    assert_eq!(
        s.services[0].0.metadata.namespace.as_deref(),
        Some("default")
    );
    assert_eq!(bare.type_.as_deref(), Some("NodePort"));
    assert_eq!(bare.session_affinity.as_deref(), Some("ClientIP"));
    assert_eq!(
        bare.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds),
        Some(10800)
    );
    let p = &bare.ports.as_ref().unwrap()[0];
    assert_eq!(p.protocol.as_deref(), Some("TCP"));
    assert_eq!(p.target_port, Some(IntOrString::Int(80)));
    assert_eq!(bare.external_traffic_policy.as_deref(), Some("Cluster"));
    assert_eq!(bare.internal_traffic_policy.as_deref(), Some("Cluster"));
    assert_eq!(bare.cluster_ips, Some(vec!["10.96.0.20".to_string()]));
    assert_eq!(bare.ip_families, Some(vec!["IPv4".to_string()]));
    assert_eq!(bare.ip_family_policy.as_deref(), Some("SingleStack"));
    assert_eq!(bare.allocate_load_balancer_node_ports, None);

    // sessionAffinity None drops the config (even an out-of-range one: the API server
    // defaults before it validates); targetPort 0 is "unset"; clusterIP from clusterIPs.
    let lb = &s.services[1].0;
    let lbs = lb.spec.as_ref().unwrap();
    assert_eq!(lbs.session_affinity.as_deref(), Some("None"));
    assert_eq!(lbs.session_affinity_config, None);
    assert_eq!(
        lbs.ports.as_ref().unwrap()[0].target_port,
        Some(IntOrString::Int(443))
    );
    assert_eq!(lbs.cluster_ip.as_deref(), Some("10.96.0.21"));
    assert_eq!(lbs.allocate_load_balancer_node_ports, Some(true));
    let ingress = lb
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .unwrap();
    assert_eq!(ingress[0].ip_mode.as_deref(), Some("VIP"));

    // ClusterIP: internal policy only; external policy only with externalIPs.
    let internal = s.services[2].0.spec.as_ref().unwrap();
    assert_eq!(internal.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(internal.external_traffic_policy, None);
    assert_eq!(internal.internal_traffic_policy.as_deref(), Some("Cluster"));
    let ip = &internal.ports.as_ref().unwrap()[0];
    assert_eq!(ip.target_port, Some(IntOrString::String("dns".into())));
    assert_eq!(ip.protocol.as_deref(), Some("UDP"));
    let ext = s.services[3].0.spec.as_ref().unwrap();
    assert_eq!(ext.external_traffic_policy.as_deref(), Some("Cluster"));

    // The compiled forms read the same.
    let c = compile_services(&s).unwrap();
    assert_eq!(c[0].type_, ServiceType::NodePort);
    assert_eq!(c[0].affinity_secs, Some(10800));
    assert_eq!(c[0].ports[0].target_port, TargetPort::Number(80));
    assert_eq!(c[0].external_traffic_policy, Some(TrafficPolicy::Cluster));
    assert_eq!(c[1].affinity_secs, None);
    assert_eq!(c[1].ports[0].target_port, TargetPort::Number(443));
    assert_eq!(c[1].cluster_ips, vec![Ipv4Addr::new(10, 96, 0, 21)]);
    assert_eq!(c[2].ports[0].target_port, TargetPort::Name("dns".into()));

    let es = &s.endpoint_slices[0].0;
    assert_eq!(es.address_type, "IPv4");
    let port = &es.ports.as_ref().unwrap()[0];
    assert_eq!(port.name.as_deref(), Some(""));
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    let conditions = |i: usize| {
        let c = es.endpoints.as_ref().unwrap()[i]
            .conditions
            .clone()
            .unwrap();
        (c.ready, c.serving, c.terminating)
    };
    assert_eq!(conditions(0), (Some(true), Some(true), Some(false)));
    // serving unset reads as true (API reference), so a terminating endpoint that did
    // not say otherwise is serving-terminating, not dropped.
    assert_eq!(conditions(1), (Some(false), Some(true), Some(true)));
    let defs = service_defs(&s);
    let bare_def = defs.iter().find(|d| d.service == "default/bare").unwrap();
    assert_eq!(bare_def.affinity_secs, Some(10800));
    let states: Vec<EndpointState> = bare_def.backends.iter().map(|b| b.state).collect();
    assert_eq!(
        states,
        vec![EndpointState::Ready, EndpointState::ServingTerminating]
    );

    // Idempotent: defaulting the defaulted spec changes nothing.
    let mut again = s.clone();
    set_defaults(&mut again);
    assert_eq!(again, s);
}

/// The Kubernetes path defaults with the same functions: a Service and EndpointSlice
/// as the watchers receive them (no API-server defaults, e.g. from a minimal API
/// server; metadata the dataplane does not read) become exactly what the same objects in
/// the YAML spec become.
#[test]
fn watcher_and_spec_paths_agree() {
    let s = spec(BARE).unwrap();
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bare", "namespace": "default", "resourceVersion": "7",
                     "uid": "u1", "annotations": {"a": "b"}},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.20",
                 "ports": [{"port": 80, "nodePort": 30081}], "sessionAffinity": "ClientIP"}
    }))
    .unwrap();
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bare-1", "namespace": "default", "resourceVersion": "9",
                         "labels": {"kubernetes.io/service-name": "bare"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["10.244.1.10"]},
                          {"addresses": ["10.244.1.11"],
                           "conditions": {"ready": false, "terminating": true}}]
        }))
        .unwrap();
    let mut bad = svc.clone();
    bad.metadata.name = Some("bad".into());
    bad.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 70000;
    let objects = crate::k8s::model::Objects {
        services: vec![svc, bad],
        endpoint_slices: vec![slice],
        ..Default::default()
    };
    // The Service that does not compile is left out; the other is the YAML spec's.
    let from_k8s = crate::k8s::model::services(&objects);
    assert_eq!(from_k8s.len(), 1);
    assert_eq!(from_k8s[0], s.services[0]);
    let slices = crate::k8s::model::endpoint_slices(&objects);
    assert_eq!(slices[0], s.endpoint_slices[0]);
}

#[test]
fn kubernetes_shapes_become_service_ports() {
    let s = spec(WEB).unwrap();
    let defs = service_defs(&s);
    assert_eq!(defs.len(), 2);
    let http = &defs[0];
    assert_eq!(http.port_name, "http");
    assert_eq!(http.node_port, Some(30080));
    assert_eq!(
        http.lb_ips,
        vec!["203.0.113.10".parse::<Ipv4Addr>().unwrap()]
    );
    assert!(http.external_local && !http.internal_local);
    assert_eq!(http.affinity_secs, Some(10800));
    assert_eq!(http.health_check_node_port, Some(32000));
    // Named target port resolved per slice: 8080 in web-a, 9090 in web-b.
    let ports: Vec<(String, u16, bool)> = http
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.port, b.local))
        .collect();
    assert_eq!(
        ports,
        vec![
            ("10.244.1.10".into(), 8080, true),
            ("10.244.1.11".into(), 9090, true),
            ("10.244.2.10".into(), 8080, false),
        ]
    );
    assert_eq!(http.backends[2].state, EndpointState::ServingTerminating);
    let dns = &defs[1];
    assert_eq!(dns.backends.len(), 2, "web-b has no dns port");
    let mut st = ServiceState::default();
    st.rebuild(&s).unwrap();
    let steer = steering(&st.table, &st.nat);
    assert!(steer.vips.contains(&"203.0.113.10".parse().unwrap()));
    assert_eq!(steer.ports.get(&(PROTO_TCP, 30080)), Some(&PORT_NODEPORT));
    assert_eq!(steer.ports.get(&(PROTO_TCP, 61000)), Some(&PORT_SNAT));
    assert_eq!(
        health_checks(&st.table).get(&32000),
        Some(&("default/web".into(), 2))
    );
    assert!(st.nat.masquerade);
    assert!(st.nat.in_cluster("10.96.5.5".parse().unwrap()));
}

#[test]
fn errors_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
            (
                "services:\n  - metadata: {name: a}\n    spec: {ports: [{port: 80, protocol: SCTP}]}\n",
                "services[0].spec.ports[0].protocol",
                "SCTP",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {type: NodePort, ports: [{port: 80, nodePort: 80}]}\n",
                "services[0].spec.ports[0].nodePort",
                "outside",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {type: NodePort, ports: [{port: 80}]}\n",
                "services[0].spec.ports[0].nodePort",
                "required",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n  - metadata: {name: b}\n    spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n",
                "services[1].spec.ports[0].port",
                "default/a",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {ports: [{port: 80}], sessionAffinity: Sticky}\n",
                "services[0].spec.sessionAffinity",
                "Sticky",
            ),
            (
                "endpointSlices:\n  - metadata: {name: a, labels: {kubernetes.io/service-name: nope}}\n",
                "endpointSlices[0].metadata.labels.kubernetes.io/service-name",
                "no service default/nope",
            ),
            (
                "serviceProxy: {snatPorts: 5-1}\n",
                "serviceProxy.snatPorts",
                "LO <= HI",
            ),
            (
                "serviceProxy: {maglevTableSize: 65536}\n",
                "serviceProxy.maglevTableSize",
                "prime",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {ports: [{port: 80}], bogus: 1}\n",
                "services[0].spec.bogus",
                "unknown field",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {ports: [{port: 80}, {name: b, port: 70000}]}\n",
                "services[0].spec.ports[1].port",
                "1..=65535",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {ports: [{port: http}]}\n",
                "services[0].spec.ports[0].port",
                "invalid i32",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {externalIPs: [2001:db8::1], ports: [{port: 80}]}\n",
                "services[0].spec.externalIPs[0]",
                "not an IPv4 address",
            ),
            (
                "services:\n  - apiVersion: v2\n    metadata: {name: a}\n    spec: {ports: [{port: 80}]}\n",
                "services[0]",
                "expected v1",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {ports: [{port: 80}]}\nendpointSlices:\n  - metadata: {name: a, labels: {kubernetes.io/service-name: a}}\n    endpoints: [{addresses: [10.244.1.300]}]\n",
                "endpointSlices[0].endpoints[0].addresses[0]",
                "not an IPv4 address",
            ),
            (
                "services:\n  - metadata: {name: a}\n    spec: {ports: [{port: 80}]}\nendpointSlices:\n  - metadata: {name: a, labels: {kubernetes.io/service-name: a}}\n    endpoints: [{addresses: [10.244.1.3], zone: z, bogus: 1}]\n",
                "endpointSlices[0].endpoints[0].bogus",
                "unknown field",
            ),
        ];
    for (yaml, field, needle) in cases {
        let e = spec(yaml).unwrap_err();
        assert_eq!(e.field(), *field, "{yaml}: {e}");
        assert!(e.to_string().contains(needle), "{yaml}: {e}");
    }
}

#[test]
fn health_response_codes() {
    assert_eq!(health_response("default/web", 2).0, 200);
    assert!(health_response("default/web", 2)
        .1
        .contains("\"localEndpoints\":2"));
    assert_eq!(health_response("default/web", 0).0, 503);
}

/// The health-check node ports served with the listeners' limits: answers, slow
/// clients, oversized headers, idle connections and the shared connection limit.
#[test]
fn health_check_ports_hardened() {
    use crate::listen::{self, testkit, ConnTable};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let checks: HealthChecks = Arc::default();
    checks
        .lock()
        .unwrap()
        .insert(port, ("default/web".into(), 1));
    let limits = testkit::limits();
    let table = ConnTable::new("hc", limits.max_connections);
    let rt = listen::runtime().unwrap();
    let task = rt.spawn(health_check_ports(
        Ipv4Addr::LOCALHOST,
        checks.clone(),
        table.clone(),
        limits,
    ));
    let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::net::TcpStream::connect(addr).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = testkit::get(addr, "/healthz");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-content-type-options: nosniff"), "{out}");
    assert!(out.contains("\"localEndpoints\":1"), "{out}");
    testkit::check_all(addr, "/healthz", &table);
    checks
        .lock()
        .unwrap()
        .insert(port, ("default/web".into(), 0));
    assert!(testkit::get(addr, "/").starts_with("HTTP/1.1 503"));
    task.abort();
}

/// `show sessions` stops at its limit, reads a table larger than one batch whole when
/// asked for everything, and filters.
#[test]
fn sessions_report_is_bounded_and_batched() {
    use ferroplane_tables::{Conntrack, FlowKey, NatKind, Timeouts};
    let mut ct = Conntrack::new(10_000, Timeouts::default());
    let now = ct.now_ms();
    let n = 2 * SESSION_BATCH as u16 + 100;
    for i in 0..n {
        let orig = FlowKey {
            src: Ipv4Addr::new(10, 244, 1, 10),
            dst: Ipv4Addr::new(10, 244, 1, 20),
            sport: 10_000 + i,
            dport: if i % 2 == 0 { 80 } else { 443 },
            proto: 6,
        };
        ct.create(orig, orig.reversed(), NatKind::Dnat, None, 0x02, now)
            .unwrap();
    }
    let tables = vec![Arc::new(Mutex::new(ct))];
    let filter = |limit: Option<usize>, port: Option<u16>| ferroplane_api::SessionFilter {
        addr: None,
        port,
        proto: None,
        limit,
    };
    let r = sessions_report(&tables, &filter(Some(10), None)).unwrap();
    assert_eq!((r.total, r.sessions.len()), (n as usize, 10));
    let r = sessions_report(&tables, &filter(Some(usize::MAX), None)).unwrap();
    assert_eq!(r.sessions.len(), n as usize);
    let r = sessions_report(&tables, &filter(Some(usize::MAX), Some(443))).unwrap();
    assert_eq!(r.sessions.len(), n as usize / 2);
    assert!(r.sessions.iter().all(|s| s.original.ends_with(":443")));
    // The default limit.
    let r = sessions_report(&tables, &filter(None, None)).unwrap();
    assert_eq!(r.sessions.len(), 1000);
}
