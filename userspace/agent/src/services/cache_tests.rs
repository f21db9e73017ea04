//! The service cache changed in place answers as a build from scratch: random sequences of
//! Service, EndpointSlice and hostPort changes, each compared with a fresh cache.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use proptest::prelude::*;

use ferroplane_tables::ServiceTable;

use super::*;
use crate::hostports::{Binding, HostPort, Source};
use crate::spec::NodeSpec;

const BASE: &str = "node:\n  name: n1\n  uplink: up0\n  address: 192.168.100.2/24\n  podCIDR: 10.244.1.0/24\nserviceProxy:\n  serviceCIDRs: [10.96.0.0/12]\n  maglevTableSize: 251\n";

/// One Service of the model; `id` makes its name, cluster IP and node ports unique.
#[derive(Debug, Clone)]
struct Svc {
    id: u8,
    ns: u8,
    ports: u8,
    node_ports: bool,
    local: bool,
    affinity: bool,
}

/// One EndpointSlice of the model: of service `svc` (which may not exist).
#[derive(Debug, Clone)]
struct Slice {
    svc: u8,
    ns: u8,
    part: u8,
    /// (last octet, ready, terminating, on this node)
    endpoints: Vec<(u8, bool, bool, bool)>,
}

#[derive(Debug, Clone, Default)]
struct Model {
    services: Vec<Svc>,
    slices: Vec<Slice>,
    /// hostPorts: (pod octet, host port)
    bindings: Vec<(u8, u16)>,
}

#[derive(Debug, Clone)]
enum Step {
    AddService(Svc),
    RemoveService(u8),
    ChangeService(u8, Svc),
    AddSlice(Slice),
    RemoveSlice(u8),
    Endpoints(u8, Vec<(u8, bool, bool, bool)>),
    Swap(u8, u8),
    Bind(u8, u16),
    Unbind(u8),
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        0u8..10,
        0u8..2,
        1u8..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(id, ns, ports, node_ports, local, affinity)| Svc {
            id,
            ns,
            ports,
            node_ports,
            local,
            affinity,
        })
}

fn endpoints() -> impl Strategy<Value = Vec<(u8, bool, bool, bool)>> {
    proptest::collection::vec(
        (10u8..20, any::<bool>(), any::<bool>(), any::<bool>()),
        0..4,
    )
}

fn slice() -> impl Strategy<Value = Slice> {
    (0u8..10, 0u8..2, 0u8..2, endpoints()).prop_map(|(svc, ns, part, endpoints)| Slice {
        svc,
        ns,
        part,
        endpoints,
    })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        svc().prop_map(Step::AddService),
        any::<u8>().prop_map(Step::RemoveService),
        (any::<u8>(), svc()).prop_map(|(i, s)| Step::ChangeService(i, s)),
        slice().prop_map(Step::AddSlice),
        any::<u8>().prop_map(Step::RemoveSlice),
        (any::<u8>(), endpoints()).prop_map(|(i, e)| Step::Endpoints(i, e)),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Step::Swap(a, b)),
        // Host ports that sometimes take a service's node port (30000..30020).
        (10u8..14, prop_oneof![30000u16..30020, 8000u16..8004]).prop_map(|(p, h)| Step::Bind(p, h)),
        any::<u8>().prop_map(Step::Unbind),
    ]
}

impl Model {
    fn apply(&mut self, st: &Step) {
        let at = |i: u8, len: usize| (len > 0).then(|| i as usize % len);
        match st.clone() {
            Step::AddService(s) => {
                // One service per name.
                if !self.services.iter().any(|o| o.id == s.id && o.ns == s.ns) {
                    self.services.push(s);
                }
            }
            Step::RemoveService(i) => {
                if let Some(i) = at(i, self.services.len()) {
                    self.services.remove(i);
                }
            }
            Step::ChangeService(i, s) => {
                if let Some(i) = at(i, self.services.len()) {
                    let (id, ns) = (self.services[i].id, self.services[i].ns);
                    self.services[i] = Svc { id, ns, ..s };
                }
            }
            Step::AddSlice(s) => {
                if !self
                    .slices
                    .iter()
                    .any(|o| (o.svc, o.ns, o.part) == (s.svc, s.ns, s.part))
                {
                    self.slices.push(s);
                }
            }
            Step::RemoveSlice(i) => {
                if let Some(i) = at(i, self.slices.len()) {
                    self.slices.remove(i);
                }
            }
            Step::Endpoints(i, e) => {
                if let Some(i) = at(i, self.slices.len()) {
                    self.slices[i].endpoints = e;
                }
            }
            Step::Swap(a, b) => {
                if let (Some(a), Some(b)) = (at(a, self.slices.len()), at(b, self.slices.len())) {
                    self.slices.swap(a, b);
                }
                let n = self.services.len();
                if let (Some(a), Some(b)) = (at(b, n), at(a, n)) {
                    self.services.swap(a, b);
                }
            }
            Step::Bind(pod, port) => {
                if !self.bindings.contains(&(pod, port)) {
                    self.bindings.push((pod, port));
                }
            }
            Step::Unbind(i) => {
                if let Some(i) = at(i, self.bindings.len()) {
                    self.bindings.remove(i);
                }
            }
        }
    }

    fn spec(&self) -> NodeSpec {
        let mut y = String::from(BASE);
        y.push_str(if self.services.is_empty() {
            "services: []\n"
        } else {
            "services:\n"
        });
        for s in &self.services {
            let _ = write!(
                y,
                "  - metadata: {{ name: s{}, namespace: ns{} }}\n    spec:\n      type: {}\n      clusterIP: 10.96.{}.{}\n",
                s.id,
                s.ns,
                if s.node_ports { "NodePort" } else { "ClusterIP" },
                s.ns,
                s.id + 1
            );
            if s.local && s.node_ports {
                y.push_str("      externalTrafficPolicy: Local\n");
            }
            if s.local {
                y.push_str("      internalTrafficPolicy: Local\n");
            }
            if s.affinity {
                y.push_str("      sessionAffinity: ClientIP\n");
            }
            y.push_str("      ports:\n");
            for p in 0..s.ports {
                let _ = write!(
                    y,
                    "        - {{ name: p{p}, protocol: TCP, port: {}, targetPort: {}",
                    80 + p as u16,
                    8080 + p as u16
                );
                if s.node_ports {
                    // Unique per (namespace, service, port).
                    let np = 30000 + s.ns as u16 * 10 + s.id as u16 + p as u16 * 100;
                    let _ = write!(y, ", nodePort: {np}");
                }
                y.push_str(" }\n");
            }
        }
        // Validation refuses slices of unknown services (the Kubernetes source leaves them
        // out).
        let slices: Vec<&Slice> = self
            .slices
            .iter()
            .filter(|e| self.services.iter().any(|s| (s.id, s.ns) == (e.svc, e.ns)))
            .collect();
        y.push_str(if slices.is_empty() {
            "endpointSlices: []\n"
        } else {
            "endpointSlices:\n"
        });
        for e in slices {
            let _ = write!(
                y,
                "  - metadata: {{ name: s{}-{}, namespace: ns{}, labels: {{ kubernetes.io/service-name: s{} }} }}\n    addressType: IPv4\n    ports: [ {{ name: p0, protocol: TCP, port: 8080 }}, {{ name: p1, protocol: TCP, port: 9090 }} ]\n    endpoints:{}\n",
                e.svc,
                e.part,
                e.ns,
                e.svc,
                if e.endpoints.is_empty() { " []" } else { "" }
            );
            for (o, ready, terminating, local) in &e.endpoints {
                let _ = writeln!(
                    y,
                    "      - {{ addresses: [10.244.1.{o}], conditions: {{ ready: {ready}, serving: true, terminating: {terminating} }}, nodeName: {} }}",
                    if *local { "n1" } else { "n2" }
                );
            }
        }
        NodeSpec::from_yaml(&y).unwrap_or_else(|e| panic!("{e}\n{y}"))
    }

    fn bindings(&self) -> Vec<Binding> {
        self.bindings
            .iter()
            .map(|&(pod, port)| Binding {
                pod: format!("default/pod{pod}"),
                pod_ip: Ipv4Addr::new(10, 244, 1, pod),
                port: HostPort {
                    proto: ferroplane_tables::service::PROTO_TCP,
                    host_port: port,
                    container_port: 80,
                    host_ip: None,
                },
                source: Source::Cni,
            })
            .collect()
    }
}

/// The cache's tables and what follows from them, as `fresh` (built from scratch) has them.
fn same(cache: &ServiceCacheHandle, fresh: &ServiceCacheHandle) -> Result<(), TestCaseError> {
    let (a, b) = (cache.lock().unwrap(), fresh.lock().unwrap());
    prop_assert!(
        a.state.table.equivalent(&b.state.table),
        "service tables differ:\nincremental {:#?}\nfull {:#?}",
        a.state.table.ports(),
        b.state.table.ports()
    );
    prop_assert_eq!(&a.state.nat, &b.state.nat);
    prop_assert_eq!(&a.host_ports.served, &b.host_ports.served);
    prop_assert_eq!(&a.host_ports.shadowed, &b.host_ports.shadowed);
    prop_assert_eq!(&a.host_ports.reserved, &b.host_ports.reserved);
    prop_assert_eq!(&*a.health.lock().unwrap(), &*b.health.lock().unwrap());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn tables_changed_in_place_match_a_full_build(
        first in proptest::collection::vec(step(), 0..12),
        steps in proptest::collection::vec(step(), 1..24),
    ) {
        let mut m = Model::default();
        for st in &first {
            m.apply(st);
        }
        let cache = ServiceCacheHandle::default();
        tables_with_host_ports(&cache, &m.spec(), &m.bindings(), Vec::new());
        for st in &steps {
            m.apply(st);
            let (spec, bindings) = (m.spec(), m.bindings());
            tables_with_host_ports(&cache, &spec, &bindings, Vec::new());
            let fresh = ServiceCacheHandle::default();
            tables_with_host_ports(&fresh, &spec, &bindings, Vec::new());
            same(&cache, &fresh)?;
        }
    }
}

#[test]
fn an_unchanged_spec_keeps_the_table_and_a_change_shares_the_rest() {
    let mut m = Model::default();
    for id in 0..4 {
        m.apply(&Step::AddService(Svc {
            id,
            ns: 0,
            ports: 1,
            node_ports: id == 0,
            local: false,
            affinity: false,
        }));
        m.apply(&Step::AddSlice(Slice {
            svc: id,
            ns: 0,
            part: 0,
            endpoints: vec![(10 + id, true, false, true)],
        }));
    }
    let cache = ServiceCacheHandle::default();
    let (a, _) = tables(&cache, &m.spec());
    let (b, _) = tables(&cache, &m.spec());
    assert!(Arc::ptr_eq(&a, &b), "same inputs: the same table");
    m.apply(&Step::Endpoints(2, vec![(19, true, false, true)]));
    let (c, _) = tables(&cache, &m.spec());
    let port = |t: &ServiceTable, svc: &str| {
        t.ports()
            .iter()
            .find(|p| p.def.service == svc)
            .cloned()
            .unwrap()
    };
    assert!(Arc::ptr_eq(&port(&b, "ns0/s0"), &port(&c, "ns0/s0")));
    assert!(!Arc::ptr_eq(&port(&b, "ns0/s2"), &port(&c, "ns0/s2")));
    assert_eq!(
        port(&c, "ns0/s2").def.backends[0].addr,
        Ipv4Addr::new(10, 244, 1, 19)
    );
}

#[test]
fn a_failed_build_keeps_the_table_until_the_inputs_change() {
    let cache = ServiceCacheHandle::default();
    let mut m = Model::default();
    m.apply(&Step::AddService(Svc {
        id: 1,
        ns: 0,
        ports: 1,
        node_ports: false,
        local: false,
        affinity: false,
    }));
    let good = m.spec();
    let (a, _) = tables(&cache, &good);
    // Two services on one cluster IP (what validation refuses): not built.
    let mut bad = good.clone();
    let mut twin = bad.services[0].clone();
    twin.0.metadata.name = Some("twin".into());
    bad.services.push(twin);
    let (b, _) = tables(&cache, &bad);
    assert!(Arc::ptr_eq(&a, &b), "the table in force stays");
    let (b, _) = tables(&cache, &bad);
    assert!(
        Arc::ptr_eq(&a, &b),
        "and is not built again from the same inputs"
    );
    let (c, _) = tables(&cache, &good);
    assert!(c.equivalent(&a));
}
