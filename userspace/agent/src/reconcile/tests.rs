//! The reconciler against the from-scratch build ([`NodeState::snapshot`]): after every
//! change, both answer every lookup alike.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::config::NodeSpec;
use crate::state::{PodState, UplinkState};

const SPEC: &str = "node:\n  name: n1\n  uplink: up0\n  address: 192.168.100.2/24\n  gateway: 192.168.100.1\n  podCIDR: 10.244.1.0/24\nroutes:\n  - { prefix: 10.50.0.0/16, via: 192.168.100.9 }\ncluster:\n  mode: vxlan\n  nodes:\n    - name: n2\n      address: 192.168.100.3\n      podCIDR: 10.244.2.0/24\n    - name: n3\n      address: 192.168.100.4\n      podCIDR: 10.244.3.0/24\n      mode: direct\nservices:\n  - metadata: { name: web, namespace: default }\n    spec: { clusterIP: 10.96.0.10, ports: [ { name: http, protocol: TCP, port: 80, targetPort: 8080 } ] }\nendpointSlices:\n  - metadata: { name: web-a, namespace: default, labels: { kubernetes.io/service-name: web } }\n    addressType: IPv4\n    ports: [ { name: http, protocol: TCP, port: 8080 } ]\n    endpoints:\n      - { addresses: [10.244.1.10], conditions: { ready: true }, nodeName: n1 }\n";

fn ip(a: &str) -> Ipv4Addr {
    a.parse().unwrap()
}

fn pod(i: u8) -> PodState {
    PodState {
        key: format!("default/p{i}"),
        ip: Ipv4Addr::new(10, 244, 1, 10 + i),
        pod_mac: [2, 0, 0, 0, 1, i],
        host_ifname: format!("fp{i}"),
        host_ifindex: 10 + u32::from(i),
        host_mac: [2, 0, 0, 0, 2, i],
        mtu: 1450,
        sw_if: 1 + u16::from(i),
        port: Some(1 + u16::from(i)),
        xdp_mode: None,
        identity: None,
        host_ports: Vec::new(),
    }
}

fn state() -> NodeState {
    let spec = NodeSpec::from_yaml(SPEC).unwrap();
    let overlay =
        Arc::new(crate::overlay::Overlay::from_spec(&spec, spec.cluster.as_ref()).unwrap());
    NodeState {
        spec,
        uplink: UplinkState {
            name: "up0".into(),
            ifindex: 2,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            port: Some(0),
            queues: 1,
            xdp_mode: None,
        },
        pods: BTreeMap::new(),
        neighbours: BTreeMap::new(),
        overlay,
        bgp_routes: BTreeMap::new(),
        services: Default::default(),
        k8s_pods: Vec::new(),
        k8s_host_ports: Vec::new(),
    }
}

/// Destinations worth asking about in `s`.
fn probes(s: &NodeState) -> Vec<Ipv4Addr> {
    let mut v = vec![
        ip("8.8.8.8"),
        ip("192.168.100.1"),
        ip("192.168.100.3"),
        ip("192.168.100.7"),
        ip("10.244.1.99"),
        ip("10.244.2.5"),
        ip("10.244.3.5"),
        ip("10.50.1.1"),
    ];
    v.extend((0..8).map(|i| Ipv4Addr::new(10, 244, 1, 10 + i)));
    v.extend(s.bgp_routes.keys().map(|p| p.addr()));
    v.extend((0..8).map(|i| Ipv4Addr::new(10, 60 + i, 0, 1)));
    v
}

fn same(full: &Snapshot, inc: &Snapshot, probes: &[Ipv4Addr]) -> Result<(), TestCaseError> {
    for &d in probes {
        let r = |s: &Snapshot| {
            let lb = s.fib.lookup(d);
            (
                s.fib.route_of(lb).cloned(),
                *s.fib.adj(s.fib.resolve(d, || 0)),
            )
        };
        prop_assert_eq!(r(full), r(inc), "destination {}", d);
        let t = |s: &Snapshot| {
            s.tunnels
                .by_remote(ip("192.168.100.3"))
                .map(|t| t.allows(d))
        };
        prop_assert_eq!(t(full), t(inc), "tunnel accepts {}", d);
    }
    prop_assert_eq!(
        full.fib.routes().cloned().collect::<Vec<_>>(),
        inc.fib.routes().cloned().collect::<Vec<_>>()
    );
    let ifs = |s: &Snapshot| {
        s.ifaces
            .iter()
            .map(|i| (i.sw_if, i.name.clone(), i.mac, i.mtu))
            .collect::<Vec<_>>()
    };
    prop_assert_eq!(ifs(full), ifs(inc));
    prop_assert_eq!(full.services.len(), inc.services.len());
    prop_assert_eq!(&full.pod_cidrs, &inc.pod_cidrs);
    Ok(())
}

/// One change of the node's state, and what the agent reports for it.
#[derive(Debug, Clone)]
enum Step {
    AddPod(u8),
    RemovePod(u8),
    Neighbour(u8, bool),
    Learn(u8, u8, bool),
    Forget(u8),
    Endpoint(u8),
    Cluster(bool),
}

fn apply(s: &mut NodeState, step: &Step) -> Changes {
    match *step {
        Step::AddPod(i) => {
            let p = pod(i);
            s.pods.insert(p.key.clone(), p);
            Changes::pods()
        }
        Step::RemovePod(i) => {
            s.pods.remove(&format!("default/p{i}"));
            Changes::pods()
        }
        Step::Neighbour(i, up) => {
            let a = Ipv4Addr::new(192, 168, 100, 1 + i % 9);
            if up {
                s.neighbours.insert(a, [2, 9, 9, 9, 9, i]);
            } else {
                s.neighbours.remove(&a);
            }
            Changes::neighbours()
        }
        Step::Learn(i, hop, ecmp) => {
            // Some learnt prefixes are cluster nodes' (through their tunnel), some nest.
            let p = Ipv4Prefix::new(
                Ipv4Addr::new(10, 60 + i % 8, (i % 3) * 16, 0),
                16 + (i % 3) * 4,
            )
            .unwrap();
            let a = Ipv4Addr::new(192, 168, 100, 1 + hop % 5);
            let mut hops = vec![a];
            if ecmp {
                hops.push(ip("192.168.100.3"));
            }
            s.bgp_routes.insert(p, hops.into());
            Changes::routes([p])
        }
        Step::Forget(i) => {
            let p = Ipv4Prefix::new(
                Ipv4Addr::new(10, 60 + i % 8, (i % 3) * 16, 0),
                16 + (i % 3) * 4,
            )
            .unwrap();
            s.bgp_routes.remove(&p);
            Changes::routes([p])
        }
        Step::Endpoint(i) => {
            s.spec.endpoint_slices[0].0.endpoints.as_mut().unwrap()[0].addresses =
                vec![Ipv4Addr::new(10, 244, 1, 10 + i % 8).to_string()];
            Changes::services()
        }
        Step::Cluster(with_n3) => {
            let mut next = s.spec.clone();
            if let Some(c) = next.cluster.as_mut() {
                if !with_n3 {
                    c.nodes.retain(|n| n.name != "n3");
                } else if !c.nodes.iter().any(|n| n.name == "n3") {
                    let full = NodeSpec::from_yaml(SPEC).unwrap();
                    c.nodes = full.cluster.unwrap().nodes;
                }
            }
            s.overlay = Arc::new(
                crate::overlay::Overlay::from_spec_after(
                    &next,
                    next.cluster.as_ref(),
                    Some(&s.overlay),
                )
                .unwrap(),
            );
            s.spec = next;
            Changes::node()
        }
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..8).prop_map(Step::AddPod),
        (0u8..8).prop_map(Step::RemovePod),
        (0u8..9, any::<bool>()).prop_map(|(i, u)| Step::Neighbour(i, u)),
        (0u8..24, 0u8..5, any::<bool>()).prop_map(|(i, h, e)| Step::Learn(i, h, e)),
        (0u8..24).prop_map(Step::Forget),
        (0u8..8).prop_map(Step::Endpoint),
        any::<bool>().prop_map(Step::Cluster),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn incremental_snapshots_match_the_full_build(steps in proptest::collection::vec(step(), 1..24)) {
        let mut s = state();
        let mut rec = Reconciler::new();
        let first = rec.snapshot(&s, &Changes::all()).unwrap();
        same(&s.snapshot().unwrap(), &first, &probes(&s))?;
        // Several steps per publish too: the changes of a batch of events merged.
        for batch in steps.chunks(2) {
            let mut changes = Changes::default();
            for st in batch {
                changes.merge(apply(&mut s, st));
            }
            let inc = rec.snapshot(&s, &changes).unwrap();
            same(&s.snapshot().unwrap(), &inc, &probes(&s))?;
        }
    }
}

#[test]
fn untouched_tables_are_shared() {
    let mut s = state();
    let mut rec = Reconciler::new();
    let a = rec.snapshot(&s, &Changes::all()).unwrap();
    let p = pod(1);
    s.pods.insert(p.key.clone(), p);
    let b = rec.snapshot(&s, &Changes::pods()).unwrap();
    assert!(
        Arc::ptr_eq(&a.services, &b.services),
        "no hostPort: same service table"
    );
    assert!(Arc::ptr_eq(&a.tunnels, &b.tunnels));
    assert!(!Arc::ptr_eq(&a.ifaces, &b.ifaces));
    s.bgp_routes.insert(
        "10.70.0.0/16".parse().unwrap(),
        [ip("192.168.100.1")].into(),
    );
    let c = rec
        .snapshot(&s, &Changes::routes(["10.70.0.0/16".parse().unwrap()]))
        .unwrap();
    assert!(Arc::ptr_eq(&b.ifaces, &c.ifaces));
    assert!(Arc::ptr_eq(&b.policy, &c.policy));
    assert_eq!(
        c.fib
            .route_of(c.fib.lookup(ip("10.70.1.1")))
            .map(|r| r.source),
        Some(RouteSource::Bgp)
    );
}

#[test]
fn fifty_pods_added_and_removed_one_at_a_time() {
    let mut s = state();
    s.neighbours.insert(ip("192.168.100.1"), [2, 9, 9, 9, 9, 1]);
    let mut rec = Reconciler::new();
    rec.snapshot(&s, &Changes::all()).unwrap();
    let check = |s: &NodeState, inc: &Snapshot| {
        same(&s.snapshot().unwrap(), inc, &probes(s)).unwrap();
        for p in s.pods.values() {
            let a = inc.fib.adj(inc.fib.resolve(p.ip, || 0));
            assert_eq!(
                (a.kind, a.sw_if, a.dst_mac),
                (ferroplane_tables::AdjKind::Rewrite, p.sw_if, p.pod_mac),
                "pod {}",
                p.key
            );
        }
    };
    for i in 0..50 {
        let p = pod(i);
        s.pods.insert(p.key.clone(), p);
        let inc = rec.snapshot(&s, &Changes::pods()).unwrap();
        check(&s, &inc);
    }
    for i in (0..50).step_by(3) {
        s.pods.remove(&format!("default/p{i}"));
        let inc = rec.snapshot(&s, &Changes::pods()).unwrap();
        check(&s, &inc);
    }
    // New pods take the freed engine interfaces (and load balances, adjacencies).
    for i in (0..50).step_by(3) {
        let mut p = pod(i);
        p.pod_mac[0] = 6;
        s.pods.insert(p.key.clone(), p);
        let inc = rec.snapshot(&s, &Changes::pods()).unwrap();
        check(&s, &inc);
    }
}
