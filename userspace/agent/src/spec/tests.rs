//! Tests of the node spec: parsing, validation, errors that name the field.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::*;

const GOOD: &str = r#"
node:
  name: node-1
  uplink: up0
  address: 192.168.100.2/24
  gateway: 192.168.100.1
  podCIDR: 10.244.1.0/24
  podMTU: 1500
  xdpMode: auto
pods:
  - name: a
    namespace: default
    netns: fp-1234-pod-a
    ip: 10.244.1.10
    interface: eth0
  - name: b
    netns: /var/run/netns/fp-1234-pod-b
    ip: 10.244.1.11
routes:
  - prefix: 10.0.0.0/8
    via: 192.168.100.1
"#;

fn err(yaml: &str) -> ConfigError {
    match NodeSpec::from_yaml(yaml) {
        Ok(spec) => panic!("expected an error, parsed {spec:?}"),
        Err(e) => e,
    }
}

/// Applies a textual substitution to GOOD (asserting that it applied) and returns the error.
fn err_with(from: &str, to: &str) -> ConfigError {
    assert!(GOOD.contains(from), "{from:?} not in GOOD");
    err(&GOOD.replacen(from, to, 1))
}

fn assert_err(e: &ConfigError, field: &str, needle: &str) {
    let s = e.to_string();
    assert_eq!(e.field(), field, "error was: {s}");
    assert!(s.starts_with(&format!("{field}: ")), "error was: {s}");
    assert!(s.contains(needle), "{needle:?} not in: {s}");
}

#[test]
fn parses_good_spec() {
    let spec = NodeSpec::from_yaml(GOOD).unwrap();
    assert_eq!(spec.node.name, "node-1");
    assert_eq!(spec.node.uplink, "up0");
    assert_eq!(spec.node.address, "192.168.100.2/24".parse().unwrap());
    assert_eq!(spec.node.gateway, Some(Ipv4Addr::new(192, 168, 100, 1)));
    assert_eq!(spec.node.pod_cidr.to_string(), "10.244.1.0/24");
    assert_eq!(spec.node.pod_mtu, Some(1500));
    assert_eq!(spec.node.xdp_mode, XdpMode::Auto);
    assert_eq!(spec.pods.len(), 2);
    assert_eq!(spec.pods[1].namespace, "default");
    assert_eq!(spec.pods[1].interface, "eth0");
    assert_eq!(spec.pods[0].key(), "default/a");
    assert_eq!(
        spec.pods[0].netns_path(),
        PathBuf::from("/var/run/netns/fp-1234-pod-a")
    );
    assert_eq!(
        spec.pods[1].netns_path(),
        PathBuf::from("/var/run/netns/fp-1234-pod-b")
    );
    assert_eq!(spec.routes[0].prefix.to_string(), "10.0.0.0/8");
    assert_eq!(spec.routes[0].via, Ipv4Addr::new(192, 168, 100, 1));
}

#[test]
fn defaults_for_optional_fields() {
    let spec = NodeSpec::from_yaml(
        "node:\n  name: n\n  uplink: up0\n  address: 192.168.1.2/24\n  podCIDR: 10.1.0.0/16\n",
    )
    .unwrap();
    assert_eq!(spec.node.gateway, None);
    assert_eq!(spec.node.pod_mtu, None);
    assert_eq!(spec.node.pod_mtu_or(1450), 1450);
    assert_eq!(spec.node.xdp_mode, XdpMode::Auto);
    assert!(spec.pods.is_empty());
    assert!(spec.routes.is_empty());
}

#[test]
fn xdp_modes() {
    for (s, m) in [("native", XdpMode::Native), ("skb", XdpMode::Skb)] {
        let spec =
            NodeSpec::from_yaml(&GOOD.replace("xdpMode: auto", &format!("xdpMode: {s}"))).unwrap();
        assert_eq!(spec.node.xdp_mode, m);
    }
}

#[test]
fn unknown_xdp_mode() {
    let e = err_with("xdpMode: auto", "xdpMode: turbo");
    assert!(matches!(e, ConfigError::Yaml { .. }));
    assert_err(&e, "node.xdpMode", "unknown variant `turbo`");
}

#[test]
fn unknown_field_names_its_place() {
    let e = err_with(
        "    interface: eth0",
        "    interface: eth0\n    colour: blue",
    );
    assert_err(
        &e,
        "pods[0].colour",
        "unknown field `colour`, expected one of",
    );
    let e = err_with("  podMTU: 1500", "  podMtu: 1500");
    assert_err(&e, "node.podMtu", "unknown field `podMtu`");
    let e = err(&format!("{GOOD}extra: 1\n"));
    assert_err(&e, "extra", "unknown field `extra`");
    // serde_yaml's own coarse path prefix is dropped.
    assert!(!e.to_string().contains("extra: extra"), "{e}");
    let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 10.244.1.0/33");
    assert!(
        e.to_string().starts_with("node.podCIDR: invalid prefix"),
        "{e}"
    );
}

#[test]
fn missing_field() {
    let e = err_with("  uplink: up0\n", "");
    assert_err(&e, "node", "missing field `uplink`");
}

#[test]
fn bad_ip_syntax_names_field() {
    let e = err_with("ip: 10.244.1.11", "ip: 10.244.1.300");
    assert!(matches!(e, ConfigError::Yaml { .. }));
    assert_err(&e, "pods[1].ip", "invalid IPv4 address");
}

#[test]
fn bad_cidr_syntax_names_field() {
    let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 10.244.1.0/33");
    assert_err(&e, "node.podCIDR", "invalid prefix length \"33\"");
    let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 10.244.1.0");
    assert_err(&e, "node.podCIDR", "expected ADDRESS/PREFIX");
    let e = err_with("prefix: 10.0.0.0/8", "prefix: 10.0.0/8");
    assert_err(&e, "routes[0].prefix", "invalid IPv4 address");
}

#[test]
fn address_prefix_must_be_1_to_32() {
    let e = err_with("address: 192.168.100.2/24", "address: 192.168.100.2/0");
    assert_err(&e, "node.address", "prefix length must be 1..32");
    // /32 is fine (a gateway is then impossible, so drop it and the route).
    let yaml = GOOD
        .replace("address: 192.168.100.2/24", "address: 192.168.100.2/32")
        .replace("  gateway: 192.168.100.1\n", "")
        .replace(
            "routes:\n  - prefix: 10.0.0.0/8\n    via: 192.168.100.1\n",
            "",
        );
    NodeSpec::from_yaml(&yaml).unwrap();
}

#[test]
fn address_must_be_a_host_address() {
    let e = err_with("address: 192.168.100.2/24", "address: 192.168.100.0/24");
    assert_err(&e, "node.address", "network or broadcast");
    let e = err_with("address: 192.168.100.2/24", "address: 224.0.0.1/24");
    assert_err(&e, "node.address", "not a unicast address");
}

#[test]
fn gateway_must_be_in_uplink_subnet() {
    let e = err_with("gateway: 192.168.100.1", "gateway: 192.168.101.1");
    assert_err(
        &e,
        "node.gateway",
        "192.168.101.1 is not a host of the uplink subnet 192.168.100.0/24",
    );
    let e = err_with("gateway: 192.168.100.1", "gateway: 192.168.100.2");
    assert_err(&e, "node.gateway", "node's own address");
    let e = err_with("gateway: 192.168.100.1", "gateway: 192.168.100.255");
    assert_err(&e, "node.gateway", "not a host of the uplink subnet");
}

#[test]
fn pod_cidr_checks() {
    let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 10.244.1.5/24");
    assert_err(
        &e,
        "node.podCIDR",
        "has host bits set (the network is 10.244.1.0/24)",
    );
    let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 192.168.0.0/16");
    assert_err(
        &e,
        "node.podCIDR",
        "overlaps the uplink subnet 192.168.100.0/24",
    );
    let e = err_with("podCIDR: 10.244.1.0/24", "podCIDR: 0.0.0.0/0");
    assert_err(&e, "node.podCIDR", "prefix length must be 1..31");
}

#[test]
fn pod_mtu_range() {
    let e = err_with("podMTU: 1500", "podMTU: 575");
    assert_err(&e, "node.podMTU", "575 is outside 576..=9000");
    let e = err_with("podMTU: 1500", "podMTU: 9001");
    assert_err(&e, "node.podMTU", "9001 is outside 576..=9000");
    for ok in [576, 9000] {
        NodeSpec::from_yaml(&GOOD.replace("podMTU: 1500", &format!("podMTU: {ok}"))).unwrap();
    }
    let e = err_with("podMTU: 1500", "podMTU: -1");
    assert!(matches!(e, ConfigError::Yaml { .. }));
    assert_eq!(e.field(), "node.podMTU");
}

#[test]
fn pod_ip_outside_pod_cidr() {
    let e = err_with("ip: 10.244.1.11", "ip: 10.9.0.1");
    assert_eq!(
        e.to_string(),
        "pods[1].ip: 10.9.0.1 is outside node.podCIDR 10.244.1.0/24"
    );
}

#[test]
fn pod_ip_network_or_broadcast() {
    let e = err_with("ip: 10.244.1.11", "ip: 10.244.1.255");
    assert_err(&e, "pods[1].ip", "broadcast address of node.podCIDR");
    let e = err_with("ip: 10.244.1.10", "ip: 10.244.1.0");
    assert_err(&e, "pods[0].ip", "network or broadcast");
}

#[test]
fn duplicate_pod_ip() {
    let e = err_with("ip: 10.244.1.11", "ip: 10.244.1.10");
    assert_eq!(
        e.to_string(),
        "pods[1].ip: 10.244.1.10 is already used by pods[0] (default/a)"
    );
}

#[test]
fn duplicate_pod_name() {
    let e = err_with("  - name: b", "  - name: a");
    assert_eq!(
        e.to_string(),
        "pods[1].name: default/a is already used by pods[0]"
    );
    // Same name in another namespace is fine.
    NodeSpec::from_yaml(&GOOD.replace("  - name: b\n", "  - name: a\n    namespace: other\n"))
        .unwrap();
}

#[test]
fn duplicate_interface_in_same_netns() {
    // pods[1] uses the same netns as pods[0] (once by name, once by path) and eth0.
    let e = err_with(
        "netns: /var/run/netns/fp-1234-pod-b",
        "netns: /var/run/netns/fp-1234-pod-a",
    );
    assert_err(
        &e,
        "pods[1].interface",
        "eth0 in netns /var/run/netns/fp-1234-pod-a is already used by pods[0]",
    );
}

#[test]
fn bad_names() {
    let e = err_with("name: a\n", "name: A_1\n");
    assert_err(&e, "pods[0].name", "not a valid name");
    let e = err_with("namespace: default", "namespace: \"\"");
    assert_err(&e, "pods[0].namespace", "not a valid name");
    let e = err_with("interface: eth0", "interface: eth0-way-too-long-name");
    assert_err(&e, "pods[0].interface", "1..=15 bytes");
    let e = err_with("interface: eth0", "interface: lo");
    assert_err(&e, "pods[0].interface", "must not be lo");
    let e = err_with("uplink: up0", "uplink: \"up 0\"");
    assert_err(&e, "node.uplink", "not a valid interface name");
    let e = err_with("netns: fp-1234-pod-a", "netns: ../etc");
    assert_err(
        &e,
        "pods[0].netns",
        "name under /var/run/netns or an absolute path",
    );
    let e = err_with("name: node-1", "name: \"\"");
    assert_err(&e, "node.name", "must not be empty");
}

#[test]
fn route_checks() {
    let e = err_with("prefix: 10.0.0.0/8", "prefix: 10.0.0.1/8");
    assert_err(
        &e,
        "routes[0].prefix",
        "host bits set (the network is 10.0.0.0/8)",
    );
    let e = err_with("via: 192.168.100.1\n", "via: 172.16.0.1\n");
    assert_err(
        &e,
        "routes[0].via",
        "not a neighbour on the uplink subnet 192.168.100.0/24",
    );
    let e = err_with("prefix: 10.0.0.0/8", "prefix: 10.244.1.128/25");
    assert_err(&e, "routes[0].prefix", "inside node.podCIDR");
    let e = err(&format!(
        "{GOOD}  - prefix: 10.0.0.0/8\n    via: 192.168.100.3\n"
    ));
    assert_err(&e, "routes[1].prefix", "already routed by routes[0]");
    // A default route covers the pod CIDR but is not inside it: fine.
    NodeSpec::from_yaml(&GOOD.replace("prefix: 10.0.0.0/8", "prefix: 0.0.0.0/0")).unwrap();
}

#[test]
fn empty_document() {
    let e = err("");
    assert_err(&e, ".", "missing field `node`");
}

#[test]
fn syntax_error() {
    let e = err("node: [unclosed");
    assert!(matches!(e, ConfigError::Yaml { .. }));
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn load_missing_file() {
    let e = NodeSpec::load("/nonexistent/ferroplane.yaml").unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e
        .to_string()
        .starts_with("reading /nonexistent/ferroplane.yaml: "));
}

#[test]
fn load_file() {
    let path = std::env::temp_dir().join(format!("fp-config-test-{}.yaml", std::process::id()));
    std::fs::write(&path, GOOD).unwrap();
    let r = NodeSpec::load(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(r.unwrap().pods.len(), 2);
}

#[test]
fn cidr_basics() {
    let c = parse_ipv4_net("192.168.100.2/24").unwrap();
    assert_eq!(c.to_string(), "192.168.100.2/24", "host bits kept");
    assert_eq!(c.trunc().to_string(), "192.168.100.0/24");
    assert_eq!(c.broadcast(), Ipv4Addr::new(192, 168, 100, 255));
    assert!(!c.is_network());
    assert!(c.trunc().is_network());
    assert!(c.contains(&Ipv4Addr::new(192, 168, 100, 200)));
    assert!(!c.contains(&Ipv4Addr::new(192, 168, 101, 1)));
    assert!(c.is_host_of(Ipv4Addr::new(192, 168, 100, 1)));
    assert!(
        !c.is_host_of(Ipv4Addr::new(192, 168, 100, 0)),
        "network address"
    );
    assert!(
        !c.is_host_of(Ipv4Addr::new(192, 168, 100, 255)),
        "broadcast"
    );
    let all = parse_ipv4_net("0.0.0.0/0").unwrap();
    assert!(all.contains(&Ipv4Addr::new(1, 2, 3, 4)));
    assert!(all.contains(&c));
    assert!(!c.contains(&all));
    assert!(c.overlaps(&all) && all.overlaps(&c));
    let other = parse_ipv4_net("192.168.101.0/24").unwrap();
    assert!(!c.overlaps(&other) && !other.overlaps(&c));
    let host = parse_ipv4_net("10.0.0.1/32").unwrap();
    assert!(host.is_host_of(Ipv4Addr::new(10, 0, 0, 1)));
    let p2p = parse_ipv4_net("10.0.0.0/31").unwrap();
    assert!(p2p.is_host_of(Ipv4Addr::new(10, 0, 0, 0)));
    assert!(p2p.is_host_of(Ipv4Addr::new(10, 0, 0, 1)));
    for (bad, want) in [
        ("10.0.0.0", CidrParseError::MissingPrefix("10.0.0.0".into())),
        ("10.0.0.0/", CidrParseError::BadPrefix("".into())),
        ("10.0.0.0/+8", CidrParseError::BadPrefix("+8".into())),
        ("10.0.0.0/033", CidrParseError::BadPrefix("033".into())),
        ("10.0.0.0/33", CidrParseError::BadPrefix("33".into())),
        ("x/8", CidrParseError::BadAddress("x".into())),
        ("10.0.0.0/8/8", CidrParseError::BadPrefix("8/8".into())),
    ] {
        assert_eq!(parse_ipv4_net(bad), Err(want), "{bad}");
    }
}

/// The serde helpers for `Option` and `Vec` fields keep the parser's message and the path.
#[test]
fn cidr_errors_in_option_and_vec_fields_name_the_field() {
    let spec = format!("{GOOD}serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/40]\n");
    let e = err(&spec);
    assert_err(
        &e,
        "serviceProxy.clusterCIDRs[1]",
        "invalid prefix length \"40\" (expected 0..=32)",
    );
    let spec = format!("{GOOD}serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\n");
    let parsed = NodeSpec::from_yaml(&spec).unwrap();
    assert_eq!(
        parsed.service_proxy.cluster_cidrs,
        vec![
            parse_ipv4_net("10.244.0.0/16").unwrap(),
            parse_ipv4_net("10.96.0.0/12").unwrap()
        ]
    );
    let cluster =
        "cluster:\n  nodes:\n    - {name: node-2, address: 192.168.100.3, podCIDR: 10.244.2.0}\n";
    let e = err(&format!("{GOOD}{cluster}"));
    assert_err(
        &e,
        "cluster.nodes[0].podCIDR",
        "expected ADDRESS/PREFIX, got \"10.244.2.0\"",
    );
}
