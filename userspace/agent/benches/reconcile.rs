//! Reconcile benchmark: the time to turn one change of the node's state into the engine's
//! tables, at 10,000 learnt routes and 10,000 services (3 endpoints each), 100 pods.
//!
//! Two ways, measured in the same run on the same changes:
//! - full: [`NodeState::snapshot`], every table built from scratch (how the agent published
//!   before the event-driven reconciler; every service's port definitions built again, the
//!   service table too, sharing unchanged Maglev tables);
//! - incremental: [`Reconciler::snapshot`] with the [`Changes`] the event carries (FIB
//!   delta on the previous FIB, untouched tables shared, only the changed service's ports
//!   replaced in the service table).
//!
//! Changes: one pod ADD (its /32, interface, neighbour; policy and hostPorts follow), one
//! learnt route whose next hop changes, one service whose endpoint changes. Each is timed
//! `REPS` times (median, and the minimum), and each incremental result is checked against
//! the full build (same route for sampled destinations, same service count), so the fast
//! path cannot be fast by being wrong.
//!
//! `cargo bench -p ferroplane-agent --bench reconcile` (or `cargo xtask bench reconcile`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ferroplane_agent::config::NodeSpec;
use ferroplane_agent::reconcile::{Changes, Reconciler};
use ferroplane_agent::state::{NodeState, PodState, UplinkState};
use ferroplane_engine::Snapshot;
use ferroplane_tables::Ipv4Prefix;

const ROUTES: usize = 10_000;
const SERVICES: usize = 10_000;
const PODS: usize = 100;
const REPS: usize = 15;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const OTHER_HOP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 3);

/// The bench spec: the node, and `services` ClusterIP services (port 80 → 8080) with one
/// endpoint slice each (3 ready endpoints on this node; the first service's first endpoint
/// is `10.244.1.<endpoint_octet>`). One service and one slice are parsed from YAML, the
/// others are copies with their own names and addresses (a 20,000-object YAML file is more
/// than the parser's node budget allows, rightly).
fn spec(services: usize, endpoint_octet: u8) -> NodeSpec {
    let yaml = "node:\n  name: node-1\n  uplink: up0\n  address: 192.168.100.2/24\n  gateway: 192.168.100.1\n  podCIDR: 10.244.0.0/16\nserviceProxy:\n  serviceCIDRs: [10.96.0.0/12]\nservices:\n  - metadata: { name: svc-0, namespace: default }\n    spec: { clusterIP: 10.96.0.1, ports: [ { name: p, protocol: TCP, port: 80, targetPort: 8080 } ] }\nendpointSlices:\n  - metadata: { name: svc-0-a, namespace: default, labels: { kubernetes.io/service-name: svc-0 } }\n    addressType: IPv4\n    ports: [ { name: p, protocol: TCP, port: 8080 } ]\n    endpoints:\n      - { addresses: [10.244.1.10], conditions: { ready: true }, nodeName: node-1 }\n      - { addresses: [10.244.1.11], conditions: { ready: true }, nodeName: node-1 }\n      - { addresses: [10.244.1.12], conditions: { ready: true }, nodeName: node-1 }\n";
    let mut spec = NodeSpec::from_yaml(yaml).expect("bench spec");
    let (svc, slice) = (spec.services[0].clone(), spec.endpoint_slices[0].clone());
    spec.services.clear();
    spec.endpoint_slices.clear();
    for i in 0..services {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32);
        let mut s = svc.clone();
        s.0.metadata.name = Some(format!("svc-{i}"));
        if let Some(body) = s.0.spec.as_mut() {
            body.cluster_ip = Some(vip.to_string());
            body.cluster_ips = Some(vec![vip.to_string()]);
        }
        spec.services.push(s);
        let mut e = slice.clone();
        e.0.metadata.name = Some(format!("svc-{i}-a"));
        e.0.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("kubernetes.io/service-name".into(), format!("svc-{i}"));
        if i == 0 {
            if let Some(first) = e.0.endpoints.as_mut().and_then(|v| v.first_mut()) {
                first.addresses = vec![Ipv4Addr::new(10, 244, 1, endpoint_octet).to_string()];
            }
        }
        spec.endpoint_slices.push(e);
    }
    spec
}

fn pod(i: usize) -> PodState {
    let ip = Ipv4Addr::new(10, 244, 1 + (i / 200) as u8, 10 + (i % 200) as u8);
    PodState {
        key: format!("default/pod-{i}"),
        ip,
        pod_mac: [2, 0, 0, 1, (i >> 8) as u8, i as u8],
        host_ifname: format!("fp{i}"),
        host_ifindex: 100 + i as u32,
        host_mac: [2, 0, 0, 2, (i >> 8) as u8, i as u8],
        mtu: 1500,
        sw_if: 1 + i as u16,
        port: Some(1 + i as u16),
        xdp_mode: Some("native".into()),
        identity: None,
        host_ports: Vec::new(),
    }
}

fn learnt(i: usize) -> Ipv4Prefix {
    Ipv4Prefix::new(
        Ipv4Addr::new(100 + (i / 65536) as u8, (i / 256) as u8, i as u8, 0),
        24,
    )
    .expect("a /24")
}

fn state() -> NodeState {
    let spec = spec(SERVICES, 10);
    let mut s = NodeState {
        spec,
        uplink: UplinkState {
            name: "up0".into(),
            ifindex: 2,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            port: Some(0),
            queues: 1,
            xdp_mode: Some("native".into()),
        },
        pods: BTreeMap::new(),
        neighbours: BTreeMap::from([
            (GATEWAY, [2, 9, 9, 9, 9, 1]),
            (OTHER_HOP, [2, 9, 9, 9, 9, 3]),
        ]),
        overlay: Default::default(),
        bgp_routes: (0..ROUTES).map(|i| (learnt(i), [GATEWAY].into())).collect(),
        services: Default::default(),
        k8s_pods: Vec::new(),
        k8s_host_ports: Vec::new(),
    };
    for i in 0..PODS {
        let p = pod(i);
        s.pods.insert(p.key.clone(), p);
    }
    s
}

/// The incremental snapshot answers like the full one.
fn check(full: &Snapshot, inc: &Snapshot, probes: &[Ipv4Addr]) {
    for &d in probes {
        let route = |s: &Snapshot| {
            let lb = s.fib.lookup(d);
            (
                s.fib.route_of(lb).cloned(),
                *s.fib.adj(s.fib.resolve(d, || 0)),
            )
        };
        assert_eq!(route(full), route(inc), "route for {d}");
    }
    assert_eq!(full.fib.routes().count(), inc.fib.routes().count());
    assert!(
        full.services.equivalent(&inc.services),
        "the service tables answer alike"
    );
    assert_eq!(full.ifaces.len(), inc.ifaces.len());
}

/// Applies change number `rep` to a state: what changed, destinations to compare.
type Change<'a> = &'a mut dyn FnMut(&mut NodeState, usize) -> (Changes, Vec<Ipv4Addr>);

struct Timing {
    full: Vec<Duration>,
    inc: Vec<Duration>,
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let t0 = Instant::now();
    let mut inc_state = state();
    // Its own service cache: each way rebuilds what it must.
    let mut full_state = NodeState {
        services: Default::default(),
        ..inc_state.clone()
    };
    let mut rec = Reconciler::new();
    let first = rec
        .snapshot(&inc_state, &Changes::all())
        .expect("first snapshot");
    let full = full_state.snapshot().expect("full snapshot");
    check(
        &full,
        &first,
        &[Ipv4Addr::new(100, 0, 7, 1), Ipv4Addr::new(10, 244, 1, 10)],
    );
    println!(
        "reconcile bench: {} routes in the FIB, {} service ports, {} pods (setup {:.1} s)",
        full.fib.routes().count(),
        full.services.len(),
        PODS,
        t0.elapsed().as_secs_f64()
    );

    let moved = spec(SERVICES, 50);
    let slices = [
        inc_state.spec.endpoint_slices.clone(),
        moved.endpoint_slices,
    ];
    let mut results: Vec<(&str, Timing)> = Vec::new();
    // `rebuild_services`: the full way builds every service again (as the agent did
    // before the service tables were changed in place), sharing unchanged Maglev tables.
    let mut time = |name: &'static str, rebuild_services: bool, change: Change| {
        let mut t = Timing {
            full: Vec::new(),
            inc: Vec::new(),
        };
        for rep in 0..REPS {
            let (changes, probes) = change(&mut inc_state, rep);
            change(&mut full_state, rep);
            if rebuild_services {
                if let Ok(mut c) = full_state.services.lock() {
                    c.forget_inputs();
                }
            }
            let s = Instant::now();
            let f = full_state.snapshot().expect("full snapshot");
            t.full.push(s.elapsed());
            let s = Instant::now();
            let i = rec
                .snapshot(&inc_state, &changes)
                .expect("incremental snapshot");
            t.inc.push(s.elapsed());
            check(&f, &i, &probes);
        }
        results.push((name, t));
    };

    time("pod ADD", false, &mut |s, rep| {
        // Every rep adds a new pod.
        let p = pod(PODS + rep);
        let ip = p.ip;
        s.pods.insert(p.key.clone(), p);
        (Changes::pods(), vec![ip, Ipv4Addr::new(10, 244, 1, 10)])
    });
    time("route change", false, &mut |s, rep| {
        let p = learnt(rep * 611 % ROUTES);
        let hop = if rep % 2 == 0 { OTHER_HOP } else { GATEWAY };
        s.bgp_routes.insert(p, [hop].into());
        (
            Changes::routes([p]),
            vec![p.addr(), Ipv4Addr::new(100, 0, 0, 1)],
        )
    });
    time("service change", true, &mut |s, rep| {
        // The first service's first endpoint moves to another pod address and back.
        s.spec.endpoint_slices = slices[(rep + 1) % 2].clone();
        (Changes::services(), vec![])
    });

    println!();
    println!("| change (10,000 routes, 10,000 services) | full rebuild (median / min) | incremental (median / min) | speed-up |");
    println!("|---|---|---|---|");
    for (name, mut t) in results {
        let (fm, fmin) = (median(&mut t.full), t.full[0]);
        let (im, imin) = (median(&mut t.inc), t.inc[0]);
        println!(
            "| {name} | {:.3} ms / {:.3} ms | {:.3} ms / {:.3} ms | {:.1}x |",
            fm.as_secs_f64() * 1e3,
            fmin.as_secs_f64() * 1e3,
            im.as_secs_f64() * 1e3,
            imin.as_secs_f64() * 1e3,
            fm.as_secs_f64() / im.as_secs_f64().max(1e-9)
        );
    }
}
