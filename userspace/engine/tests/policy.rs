//! `ip4-policy` in the graph (MemIo): ingress/egress denial with reasons, replies of
//! allowed flows, a pod to itself, established connections across a policy change, and
//! policy applied to the service backend after DNAT (replies through reverse NAT pass).

use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_engine::testutil::*;
use ferroplane_engine::testutil_services::*;
use ferroplane_engine::{Shared, Snapshot, Worker, WorkerControl};
use ferroplane_io::MemIo;
use ferroplane_tables::policy::{
    Acl, AclSpec, AddrSet, Direction, Entry, PodAcls, PolicyTables, PortMatch, RuleRef,
};
use ferroplane_tables::NatConfig;

struct Rig {
    worker: Worker<MemIo>,
    shared: Arc<Shared>,
    info: ferroplane_engine::graph::GraphInfo,
}

fn rig(snap: Snapshot, ports: usize) -> Rig {
    let io = MemIo::new(1024, 2048, ports);
    let shared = Arc::new(Shared::new(snap));
    let worker = Worker::new(io, shared.clone(), Arc::new(WorkerControl::default())).unwrap();
    let info = worker.graph_info();
    Rig {
        worker,
        shared,
        info,
    }
}

impl Rig {
    /// Send from pod `from` (port = pod index) and return what pod `to` received.
    fn send(&mut self, from: u16, to: u16, frame: &[u8]) -> usize {
        assert!(self.worker.io_mut().inject(from, frame));
        self.worker.poll().unwrap();
        self.worker.io_mut().take_tx(to).len()
    }
    fn errors(&self, reason: &str) -> u64 {
        let code = self.info.error_code("ip4-policy", reason).unwrap();
        self.worker.stats().errors[code as usize].get()
    }
    fn set_policy(&self, t: PolicyTables) {
        self.shared.update(|s| s.policy = Arc::new(t));
    }
}

fn rule() -> RuleRef {
    RuleRef {
        namespace: "default".into(),
        policy: "p".into(),
        index: 0,
    }
}

/// An ACL allowing UDP `port` from/to `peers` (no peers: deny everything).
fn acl(dir: Direction, peers: &[Ipv4Addr], port: u16) -> Arc<Acl> {
    let mut hosts = peers.to_vec();
    hosts.sort();
    let entries = if peers.is_empty() {
        vec![]
    } else {
        vec![Entry {
            rule: 0,
            ports: PortMatch::Range {
                proto: 17,
                lo: port,
                hi: port,
            },
            addrs: Arc::new(AddrSet {
                blocks: vec![],
                hosts,
            }),
        }]
    };
    Arc::new(Acl::new(AclSpec {
        direction: dir,
        rules: if peers.is_empty() {
            vec![]
        } else {
            vec![rule()]
        },
        entries,
    }))
}

fn udp(from: u16, to: u16, sport: u16, dport: u16) -> Vec<u8> {
    udp_frame_ports(
        host_mac(from),
        pod_mac(from),
        pod_ip(from),
        pod_ip(to),
        sport,
        dport,
        16,
    )
}

#[test]
fn ingress_egress_replies_self_and_policy_change() {
    let mut r = rig(node_snapshot(3, 0), 4);
    // Pod 1: ingress only from pod 2 on UDP 80; egress only to pod 3 on UDP 81.
    let ing = acl(Direction::Ingress, &[pod_ip(2)], 80);
    r.set_policy(PolicyTables::new(
        1,
        [(
            pod_ip(1),
            PodAcls {
                ingress: Some(ing.clone()),
                egress: Some(acl(Direction::Egress, &[pod_ip(3)], 81)),
            },
        )],
    ));
    assert_eq!(r.send(2, 1, &udp(2, 1, 5000, 80)), 1, "allowed ingress");
    assert_eq!(
        r.send(1, 2, &udp(1, 2, 80, 5000)),
        1,
        "its reply passes egress isolation"
    );
    assert_eq!(
        r.send(3, 1, &udp(3, 1, 5000, 80)),
        0,
        "pod 3 is not allowed in"
    );
    assert_eq!(r.errors("policy-denied-ingress"), 1);
    assert_eq!(r.send(2, 1, &udp(2, 1, 5001, 81)), 0, "wrong port");
    assert_eq!(r.errors("policy-denied-ingress"), 2);
    assert_eq!(r.send(1, 3, &udp(1, 3, 6000, 81)), 1, "allowed egress");
    assert_eq!(
        r.send(3, 1, &udp(3, 1, 81, 6000)),
        1,
        "its reply passes ingress isolation"
    );
    assert_eq!(
        r.send(1, 2, &udp(1, 2, 6000, 81)),
        0,
        "egress to pod 2 denied"
    );
    assert_eq!(r.errors("policy-denied-egress"), 1);
    // A pod to itself (frame looped back through its own port) is never blocked.
    assert_eq!(r.send(1, 1, &udp(1, 1, 7000, 7001)), 1, "self");
    assert_eq!(ing.hits(), vec![1]);
    assert_eq!(ing.denied(), 2);
    // Policy change: pod 1 now denies all ingress. The established flow 2->1 keeps
    // working (documented behaviour), a new flow from pod 2 is denied.
    r.set_policy(PolicyTables::new(
        2,
        [(
            pod_ip(1),
            PodAcls {
                ingress: Some(acl(Direction::Ingress, &[], 0)),
                egress: None,
            },
        )],
    ));
    assert_eq!(
        r.send(2, 1, &udp(2, 1, 5000, 80)),
        1,
        "established flow survives"
    );
    assert_eq!(r.send(2, 1, &udp(2, 1, 5002, 80)), 0, "new flow denied");
    assert_eq!(r.errors("policy-denied-ingress"), 3);
    // Policy removed: everything passes.
    r.set_policy(PolicyTables::default());
    assert_eq!(r.send(3, 1, &udp(3, 1, 5000, 80)), 1);
}

#[test]
fn service_policy_sees_the_backend_and_replies_pass() {
    // Service VIP udp/53 -> pod 1:53. Pod 1 ingress: only from pod 2 on UDP 53.
    let defs = vec![udp_service(
        "dns",
        vip(0),
        vec![backend(pod_ip(1), 53, true)],
    )];
    let mut r = rig(snapshot_with(3, defs, NatConfig::default()), 4);
    r.set_policy(PolicyTables::new(
        1,
        [
            (
                pod_ip(1),
                PodAcls {
                    ingress: Some(acl(Direction::Ingress, &[pod_ip(2)], 53)),
                    egress: None,
                },
            ),
            (
                // Pod 2 is ingress-isolated (deny all): the reply, whose source is the VIP
                // after reverse NAT, must still reach it.
                pod_ip(2),
                PodAcls {
                    ingress: Some(acl(Direction::Ingress, &[], 0)),
                    egress: None,
                },
            ),
        ],
    ));
    let to_vip = |from: u16, sport: u16| {
        udp_frame_ports(
            host_mac(from),
            pod_mac(from),
            pod_ip(from),
            vip(0),
            sport,
            53,
            16,
        )
    };
    assert_eq!(
        r.send(2, 1, &to_vip(2, 4000)),
        1,
        "pod 2 -> VIP -> pod 1 allowed"
    );
    let reply = udp_frame_ports(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 53, 4000, 16);
    assert_eq!(
        r.send(1, 2, &reply),
        1,
        "reply (from the VIP after reverse NAT) passes"
    );
    assert_eq!(
        r.send(3, 1, &to_vip(3, 4001)),
        0,
        "pod 3 -> VIP -> pod 1 denied"
    );
    assert_eq!(r.errors("policy-denied-ingress"), 1);
    assert_eq!(
        r.send(3, 1, &to_vip(3, 4001)),
        0,
        "retransmission denied too"
    );
}

/// A flow nothing restricts (pod 1 is isolated for ingress only, it talks to pod 2) must have
/// its replies pass pod 1's ingress policy; likewise a flow into a pod isolated for egress
/// only. Found by the e2e truth table (default-deny-ingress: x -> y replies were dropped).
#[test]
fn replies_of_unrestricted_flows_pass_the_other_pods_isolation() {
    let mut r = rig(node_snapshot(3, 0), 4);
    r.set_policy(PolicyTables::new(
        1,
        [
            (
                pod_ip(1),
                PodAcls {
                    ingress: Some(acl(Direction::Ingress, &[], 0)),
                    egress: None,
                },
            ),
            (
                pod_ip(3),
                PodAcls {
                    ingress: None,
                    egress: Some(acl(Direction::Egress, &[], 0)),
                },
            ),
        ],
    ));
    assert_eq!(r.send(1, 2, &udp(1, 2, 4000, 80)), 1, "pod 1 -> pod 2 open");
    assert_eq!(r.send(2, 1, &udp(2, 1, 80, 4000)), 1, "its reply passes");
    assert_eq!(
        r.send(2, 1, &udp(2, 1, 4001, 80)),
        0,
        "a new flow into pod 1 is denied"
    );
    assert_eq!(r.send(2, 3, &udp(2, 3, 4002, 80)), 1, "pod 2 -> pod 3 open");
    assert_eq!(r.send(3, 2, &udp(3, 2, 80, 4002)), 1, "its reply passes");
    assert_eq!(
        r.send(3, 2, &udp(3, 2, 4003, 80)),
        0,
        "a new flow out of pod 3 is denied"
    );
    assert_eq!(r.errors("policy-denied-ingress"), 1);
    assert_eq!(r.errors("policy-denied-egress"), 1);
}

#[test]
fn one_vector_decides_as_packet_by_packet() {
    // Several new flows in one vector (one poll): decided together, with the result and
    // counts of deciding them one by one in order (the second packet of an allowed flow
    // is known, that of a denied flow is classified again).
    let mut r = rig(node_snapshot(3, 0), 4);
    let ing = acl(Direction::Ingress, &[pod_ip(2)], 80);
    r.set_policy(PolicyTables::new(
        1,
        [(
            pod_ip(1),
            PodAcls {
                ingress: Some(ing.clone()),
                egress: None,
            },
        )],
    ));
    let frames = [
        udp(2, 1, 5000, 80), // new, allowed
        udp(2, 1, 5000, 80), // same flow: known once the first is allowed
        udp(2, 1, 5001, 81), // wrong port: denied
        udp(2, 1, 5002, 80), // new, allowed
        udp(2, 1, 5001, 81), // the denied flow again: classified again, denied
        udp(2, 1, 5003, 80), // new, allowed
    ];
    for f in &frames {
        assert!(r.worker.io_mut().inject(2, f));
    }
    r.worker.poll().unwrap();
    assert_eq!(r.worker.io_mut().take_tx(1).len(), 4);
    assert_eq!(r.errors("policy-allowed"), 3);
    assert_eq!(r.errors("policy-denied-ingress"), 2);
    assert_eq!(ing.hits(), vec![3]);
    assert_eq!(ing.denied(), 2);
    // Later packets of the allowed flows are known; the denied one stays denied.
    assert_eq!(r.send(2, 1, &udp(2, 1, 5002, 80)), 1);
    assert_eq!(r.send(2, 1, &udp(2, 1, 5001, 81)), 0);
    assert_eq!(ing.hits(), vec![3]);
    assert_eq!(ing.denied(), 3);
}
