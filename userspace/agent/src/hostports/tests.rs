use std::collections::BTreeMap;

use super::*;
use crate::config::NodeSpec;

const SPEC: &str = r#"
node:
  name: n1
  uplink: up0
  address: 192.168.100.2/24
  gateway: 192.168.100.1
  podCIDR: 10.244.1.0/24
cluster:
  mode: vxlan
  nodes: []
services:
  - metadata: {name: web, namespace: shop}
    spec:
      type: LoadBalancer
      clusterIP: 10.96.0.10
      externalTrafficPolicy: Local
      healthCheckNodePort: 30999
      ports: [{name: http, protocol: TCP, port: 80, nodePort: 30080}]
"#;

fn hp(proto: u8, host_port: u16, container_port: u16) -> HostPort {
    HostPort {
        proto,
        host_port,
        container_port,
        host_ip: None,
    }
}

fn binding(pod: &str, ip: &str, port: HostPort, source: Source) -> Binding {
    Binding {
        pod: pod.into(),
        pod_ip: ip.parse().unwrap(),
        port,
        source,
    }
}

fn pm(host_port: u16, container_port: u16, protocol: &str, host_ip: &str) -> PortMapping {
    PortMapping {
        host_port,
        container_port,
        protocol: protocol.into(),
        host_ip: host_ip.into(),
    }
}

#[test]
fn requests_become_host_ports_on_the_node_address() {
    let node: Ipv4Addr = "192.168.100.2".parse().unwrap();
    let v = from_request(
        &[
            pm(8080, 80, "tcp", ""),
            pm(5353, 53, "udp", "192.168.100.2"),
            pm(8080, 80, "TCP", "0.0.0.0"),
        ],
        node,
    )
    .unwrap();
    assert_eq!(
        v,
        vec![
            hp(PROTO_TCP, 8080, 80),
            HostPort {
                host_ip: Some(node),
                ..hp(PROTO_UDP, 5353, 53)
            }
        ]
    );
    assert_eq!(v[1].name(), "192.168.100.2:5353/udp");
    for (bad, needle) in [
        (pm(80, 80, "tcp", "10.0.0.1"), "not this node's address"),
        (pm(80, 80, "sctp", ""), "not tcp or udp"),
        (pm(0, 80, "tcp", ""), "1-65535"),
        (pm(80, 80, "tcp", "::"), "not an IPv4"),
    ] {
        let e = from_request(&[bad], node).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains(needle), "{needle:?}: {e:?}");
    }
}

#[test]
fn static_conflicts_are_refused_with_their_reason() {
    let spec = NodeSpec::from_yaml(SPEC).unwrap();
    let services = crate::services::service_defs(&spec);
    let listeners: BTreeMap<u16, String> = [(
        9100,
        "the agent's metrics endpoint (--metrics-addr)".to_string(),
    )]
    .into();
    let bound = vec![binding(
        "shop/db",
        "10.244.1.20",
        hp(PROTO_TCP, 5432, 5432),
        Source::Kubernetes,
    )];
    let r = Reserved::of(&spec, &services, &listeners, &bound);
    let refused = |p: HostPort, id: Option<&str>| {
        let e = r.check(&[p], id, Some((32768, 60999))).unwrap_err();
        assert_eq!(e.code, code::HOSTPORT_CONFLICT, "{e:?}");
        e.msg
    };
    assert!(refused(hp(PROTO_TCP, 30080, 80), None).contains("node port of service shop/web"));
    assert!(refused(hp(PROTO_TCP, 30999, 80), None).contains("health-check node port"));
    assert!(refused(hp(PROTO_TCP, 9644, 80), None).contains("health endpoint"));
    assert!(refused(hp(PROTO_UDP, 9100, 80), None).contains("metrics"));
    assert!(refused(hp(PROTO_UDP, 4789, 80), None).contains("VXLAN"));
    assert!(refused(hp(PROTO_TCP, 62000, 80), None).contains("snatPorts"));
    assert!(refused(hp(PROTO_UDP, 40000, 80), None).contains("ephemeral"));
    assert!(refused(hp(PROTO_TCP, 5432, 1), Some("shop/other")).contains("bound to pod shop/db"));
    // Another protocol of a node port, an ordinary port: free.
    r.check(
        &[hp(PROTO_UDP, 30080, 80), hp(PROTO_TCP, 8080, 80)],
        None,
        Some((32768, 60999)),
    )
    .unwrap();
    // The pod's own Kubernetes binding is not a conflict (the runtime passes the same).
    r.check(&[hp(PROTO_TCP, 5432, 5432)], Some("shop/db"), None)
        .unwrap();
    // The ephemeral range, when it differs from the SNAT range.
    let e = r
        .check(&[hp(PROTO_TCP, 20000, 80)], None, Some((15000, 25000)))
        .unwrap_err();
    assert!(e.msg.contains("ephemeral"), "{e:?}");
}

#[test]
fn bindings_become_node_ports_and_service_node_ports_win() {
    let spec = NodeSpec::from_yaml(SPEC).unwrap();
    let services = crate::services::service_defs(&spec);
    let bindings = vec![
        binding("ns/a", "10.244.1.10", hp(PROTO_TCP, 8080, 80), Source::Cni),
        binding("ns/a", "10.244.1.10", hp(PROTO_UDP, 8080, 53), Source::Cni),
        binding(
            "ns/b",
            "10.244.1.11",
            hp(PROTO_TCP, 30080, 80),
            Source::Kubernetes,
        ),
        binding(
            "ns/c",
            "10.244.1.12",
            HostPort {
                host_ip: Some("10.9.9.9".parse().unwrap()),
                ..hp(PROTO_TCP, 81, 80)
            },
            Source::Kubernetes,
        ),
    ];
    let (d, shadowed) = defs(&services, &bindings, &spec);
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].node_port, Some(8080));
    assert_eq!(d[0].service, "hostport:ns/a");
    assert_eq!(
        d[0].backends[0].addr,
        "10.244.1.10".parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(d[0].backends[0].port, 80);
    assert!(d[0].backends[0].local && d[0].external_local);
    assert_eq!((d[1].proto, d[1].backends[0].port), (PROTO_UDP, 53));
    assert_eq!(shadowed.len(), 2);
    assert!(shadowed[0].reason.contains("node port of service shop/web"));
    assert!(shadowed[1].reason.contains("not the node's address"));
    // The table builds with the service and the hostPorts together, and looks them up.
    let mut all = services.clone();
    all.extend(d);
    let t = ferroplane_tables::ServiceTable::build(all, vec![spec.node.address.addr()], 251, None)
        .unwrap();
    let (i, kind) = t.lookup(spec.node.address.addr(), PROTO_TCP, 8080).unwrap();
    assert_eq!(kind, ferroplane_tables::service::FrontendKind::NodePort);
    assert_eq!(t.port(i).unwrap().def.service, "hostport:ns/a");
    assert!(t
        .lookup(spec.node.address.addr(), PROTO_TCP, 8081)
        .is_none());
}

#[test]
fn cni_and_kubernetes_bindings_merge() {
    let local: std::collections::BTreeSet<Ipv4Addr> = [
        "10.244.1.10".parse().unwrap(),
        "10.244.1.11".parse().unwrap(),
    ]
    .into();
    let cni = vec![binding(
        "cni/c1/eth0",
        "10.244.1.10",
        hp(PROTO_TCP, 8080, 80),
        Source::Cni,
    )];
    let k8s = vec![
        // The same, from the pod's spec: one binding, both sources.
        binding(
            "ns/a",
            "10.244.1.10",
            hp(PROTO_TCP, 8080, 80),
            Source::Kubernetes,
        ),
        // Only in the spec (the runtime passed nothing for it): served.
        binding(
            "ns/a",
            "10.244.1.10",
            hp(PROTO_UDP, 5353, 53),
            Source::Kubernetes,
        ),
        // Another pod on the same port: shadowed.
        binding(
            "ns/b",
            "10.244.1.11",
            hp(PROTO_TCP, 8080, 80),
            Source::Kubernetes,
        ),
        // A pod not plumbed here: ignored.
        binding(
            "ns/z",
            "10.244.1.99",
            hp(PROTO_TCP, 9090, 80),
            Source::Kubernetes,
        ),
    ];
    let (b, shadowed) = merge(cni, &k8s, &local);
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].source, Source::Both);
    assert_eq!(b[1].port, hp(PROTO_UDP, 5353, 53));
    assert_eq!(shadowed.len(), 1);
    assert_eq!(shadowed[0].binding.pod, "ns/b");
    assert!(
        shadowed[0].reason.contains("cni/c1/eth0"),
        "{:?}",
        shadowed[0]
    );
}

#[test]
fn pods_on_this_node_with_host_ports() {
    let pod = |name: &str, node: &str, host_network: bool| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [{"name": "c", "ports": [
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "192.168.100.2"},
                {"containerPort": 9000},
                {"containerPort": 7, "hostPort": 7, "protocol": "SCTP"}
            ]}]},
            "status": {"podIP": "10.244.1.10", "podIPs": [{"ip": "10.244.1.10"}]}
        }))
        .unwrap()
    };
    let v = from_pods(
        &[
            pod("a", "n1", false),
            pod("b", "n2", false),
            pod("c", "n1", true),
        ],
        "n1",
    );
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v
        .iter()
        .all(|b| b.pod == "ns/a" && b.source == Source::Kubernetes));
    assert!(v.contains(&binding(
        "ns/a",
        "10.244.1.10",
        hp(PROTO_TCP, 8080, 80),
        Source::Kubernetes
    )));
    assert!(v
        .iter()
        .any(|b| b.port.proto == PROTO_UDP
            && b.port.host_ip == Some("192.168.100.2".parse().unwrap())));
}
