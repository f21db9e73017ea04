//! IPv4 fragments on the memory backend (`ip4-frag`): every fragment of a datagram follows
//! its first fragment's translation and policy verdict, in order and out of order, through
//! ClusterIP DNAT and its reply, NodePort, masquerade and its reply, and NetworkPolicy
//! (allowed and denied); fragments that cannot be associated are dropped and counted;
//! state bounds and timeout.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ferroplane_engine::testutil::*;
use ferroplane_engine::testutil_services::*;
use ferroplane_engine::{Shared, Snapshot, Worker, WorkerControl};
use ferroplane_io::MemIo;
use ferroplane_tables::policy::{
    Acl, AclSpec, AddrSet, Direction, Entry, PodAcls, PolicyTables, PortMatch, RuleRef,
};
use ferroplane_tables::{NatConfig, ServicePortDef};
use ferroplane_wire::{checksum, Ipv4Packet, UdpPacket};

struct Rig {
    worker: Worker<MemIo>,
    shared: Arc<Shared>,
    info: ferroplane_engine::graph::GraphInfo,
    frames: usize,
}

fn rig(snap: Snapshot, ports: usize, frames: u32) -> Rig {
    let io = MemIo::new(frames, 2048, ports);
    let shared = Arc::new(Shared::new(snap));
    let worker = Worker::new(io, shared.clone(), Arc::new(WorkerControl::default())).unwrap();
    let info = worker.graph_info();
    let mut r = Rig {
        worker,
        shared,
        info,
        frames: 0,
    };
    r.frames = r.worker.io_mut().free_frames();
    r
}

impl Rig {
    /// Inject frames on `port` one poll each.
    fn send_each(&mut self, port: u16, frames: &[Vec<u8>]) {
        for f in frames {
            assert!(self.worker.io_mut().inject(port, f));
            self.worker.poll().unwrap();
        }
    }
    /// Inject all frames, then one poll (one vector).
    fn send_vector(&mut self, port: u16, frames: &[Vec<u8>]) {
        for f in frames {
            assert!(self.worker.io_mut().inject(port, f));
        }
        self.worker.poll().unwrap();
    }
    fn tx(&mut self, port: u16) -> Vec<Vec<u8>> {
        self.worker.io_mut().take_tx(port)
    }
    fn errors(&self, node: &str, reason: &str) -> u64 {
        let code = self
            .info
            .error_code(node, reason)
            .unwrap_or_else(|| panic!("no error {node}: {reason}"));
        self.worker.stats().errors[code as usize].get()
    }
    /// Every frame is back in the pool (nothing held or leaked).
    fn all_frames_free(&mut self) -> bool {
        self.worker.io_mut().free_frames() == self.frames
    }
}

fn nat(masquerade: bool) -> NatConfig {
    NatConfig {
        masquerade,
        ..nat_default()
    }
}

/// One datagram received whole.
#[derive(Debug, PartialEq, Eq)]
struct Whole {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: Vec<u8>,
}

/// A received fragment: offset, MF, payload, source, destination.
type Frag = (usize, bool, Vec<u8>, Ipv4Addr, Ipv4Addr);

/// Reassemble received fragments (checks IP checksums, one datagram per IP ID, contiguous
/// offsets, the same addresses on every fragment, and the UDP checksum of the whole).
fn reassemble(frames: &[Vec<u8>]) -> Vec<Whole> {
    let mut by_id: BTreeMap<u16, Vec<Frag>> = BTreeMap::new();
    for f in frames {
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum(), "ip checksum");
        let fo = u16::from_be_bytes([f[20], f[21]]);
        by_id.entry(ip.ident()).or_default().push((
            usize::from(fo & 0x1fff) * 8,
            fo & 0x2000 != 0,
            ip.payload().to_vec(),
            ip.src_addr(),
            ip.dst_addr(),
        ));
    }
    let mut out = Vec::new();
    for (_, mut frags) in by_id {
        frags.sort_by_key(|f| f.0);
        let (src, dst) = (frags[0].3, frags[0].4);
        let mut data = Vec::new();
        for (i, (off, more, p, s, d)) in frags.iter().enumerate() {
            assert_eq!(
                (*s, *d),
                (src, dst),
                "fragment {i} addressed like the first"
            );
            assert_eq!(*off, data.len(), "contiguous fragments");
            assert_eq!(*more, i + 1 < frags.len(), "MF on all but the last");
            data.extend_from_slice(p);
        }
        let u = UdpPacket::new_checked(&data[..]).unwrap();
        assert!(
            u.verify_checksum(src, dst),
            "udp checksum of the whole datagram"
        );
        out.push(Whole {
            src,
            dst,
            sport: u.src_port(),
            dport: u.dst_port(),
            payload: u.payload().to_vec(),
        });
    }
    out
}

fn pod_macs(i: u16) -> ([u8; 6], [u8; 6]) {
    (host_mac(i), pod_mac(i))
}

const UPLINK: ([u8; 6], [u8; 6]) = (UPLINK_MAC, ROUTER_MAC);

/// The payload `datagram` writes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn udp_nodeport(
    vip: Ipv4Addr,
    node_port: u16,
    backends: Vec<ferroplane_tables::Backend>,
) -> ServicePortDef {
    ServicePortDef {
        node_port: Some(node_port),
        ..udp_service("default/big", vip, backends)
    }
}

/// Pod 1 -> ClusterIP (UDP 53) -> a backend on pods 2..=3 and back, 3,000 and 9,000 bytes,
/// in order, reversed, and reversed in one vector; then a NodePort from the uplink.
#[test]
fn service_dnat_and_reply_in_and_out_of_order() {
    let backends = (2..=3).map(|p| backend(pod_ip(p), 8080, true)).collect();
    let snap = snapshot_with(3, vec![udp_nodeport(vip(1), 30053, backends)], nat(false));
    let mut r = rig(snap, 4, 1024);
    let mut id = 100;
    for (len, order) in [
        (3000, "in"),
        (3000, "reversed"),
        (9000, "reversed-vector"),
        (9000, "in"),
    ] {
        id += 1;
        let sport = 40000 + id;
        let d = udp_datagram(pod_macs(1), pod_ip(1), vip(1), sport, 53, id, len, id as u8);
        let mut frags = ipv4_fragments(&d, 1480);
        assert!(frags.len() >= 3);
        match order {
            "in" => r.send_each(1, &frags),
            "reversed" => {
                frags.reverse();
                r.send_each(1, &frags);
            }
            _ => {
                frags.reverse();
                r.send_vector(1, &frags);
            }
        }
        let (mut port, mut got) = (0, Vec::new());
        for p in 2..=3 {
            let v = r.tx(p);
            if !v.is_empty() {
                (port, got) = (p, v);
            }
        }
        assert_eq!(
            r.tx(0).len(),
            0,
            "{len} {order}: nothing leaked to the uplink"
        );
        assert_eq!(
            got.len(),
            frags.len(),
            "{len} {order}: every fragment to one backend"
        );
        let w = reassemble(&got);
        assert_eq!(
            w,
            vec![Whole {
                src: pod_ip(1),
                dst: pod_ip(port),
                sport,
                dport: 8080,
                payload: pattern(len, id as u8),
            }],
            "{len} {order}"
        );
        // The backend's reply, reversed: restored to the VIP.
        let rd = udp_datagram(
            pod_macs(port),
            pod_ip(port),
            pod_ip(1),
            8080,
            sport,
            id,
            len,
            3,
        );
        let mut rf = ipv4_fragments(&rd, 1480);
        rf.reverse();
        r.send_each(port, &rf);
        let back = reassemble(&r.tx(1));
        assert_eq!(
            back,
            vec![Whole {
                src: vip(1),
                dst: pod_ip(1),
                sport: 53,
                dport: sport,
                payload: pattern(len, 3),
            }],
            "{len} {order}: reply"
        );
    }
    // NodePort from outside, reversed.
    let client: Ipv4Addr = "198.51.100.9".parse().unwrap();
    let d = udp_datagram(UPLINK, client, NODE_IP, 5555, 30053, 7, 9000, 9);
    let mut frags = ipv4_fragments(&d, 1480);
    frags.reverse();
    r.send_each(0, &frags);
    let mut got = Vec::new();
    for p in 2..=3 {
        got.extend(r.tx(p));
    }
    let w = reassemble(&got);
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].src, w[0].sport, w[0].dport), (client, 5555, 8080));
    assert_eq!(w[0].payload, pattern(9000, 9));
    assert!(r.errors("ip4-frag", "held") > 0);
    assert_eq!(
        r.errors("ip4-frag", "held"),
        r.errors("ip4-frag", "released")
    );
    assert_eq!(r.errors("ip4-frag", "timeout"), 0);
    assert!(r.all_frames_free());
}

/// Pod -> outside, masqueraded to the node, reversed; the reply to the node's port,
/// reversed, restored to the pod.
#[test]
fn masquerade_and_reply_out_of_order() {
    let mut r = rig(snapshot_with(2, vec![], nat(true)), 3, 1024);
    let ext: Ipv4Addr = "8.8.8.8".parse().unwrap();
    let d = udp_datagram(pod_macs(1), pod_ip(1), ext, 6000, 9999, 55, 9000, 1);
    let mut frags = ipv4_fragments(&d, 1480);
    frags.reverse();
    r.send_each(1, &frags);
    let out = reassemble(&r.tx(0));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].src, out[0].dst, out[0].dport), (NODE_IP, ext, 9999));
    assert_eq!(out[0].payload, pattern(9000, 1));
    let port = out[0].sport;
    let rd = udp_datagram(UPLINK, ext, NODE_IP, 9999, port, 56, 3000, 2);
    let mut rf = ipv4_fragments(&rd, 1480);
    rf.reverse();
    r.send_each(0, &rf);
    let back = reassemble(&r.tx(1));
    assert_eq!(
        back,
        vec![Whole {
            src: ext,
            dst: pod_ip(1),
            sport: 9999,
            dport: 6000,
            payload: pattern(3000, 2),
        }]
    );
    assert!(r.all_frames_free());
}

fn ingress_only_from(peer: Ipv4Addr, port: u16) -> Arc<Acl> {
    Arc::new(Acl::new(AclSpec {
        direction: Direction::Ingress,
        rules: vec![RuleRef {
            namespace: "default".into(),
            policy: "p".into(),
            index: 0,
        }],
        entries: vec![Entry {
            rule: 0,
            ports: PortMatch::Range {
                proto: 17,
                lo: port,
                hi: port,
            },
            addrs: Arc::new(AddrSet {
                blocks: vec![],
                hosts: vec![peer],
            }),
        }],
    }))
}

/// Pod 3 admits UDP 7777 from pod 1 only: pod 1's fragments all pass (both orders) and so
/// do pod 3's replies; pod 2's are all denied, none delivered.
#[test]
fn policy_allows_or_denies_every_fragment() {
    let mut r = rig(node_snapshot(3, 0), 4, 1024);
    r.shared.update(|s| {
        s.policy = Arc::new(PolicyTables::new(
            1,
            [(
                pod_ip(3),
                PodAcls {
                    ingress: Some(ingress_only_from(pod_ip(1), 7777)),
                    egress: None,
                },
            )],
        ))
    });
    for (id, reversed) in [(1u16, false), (2, true)] {
        let d = udp_datagram(
            pod_macs(1),
            pod_ip(1),
            pod_ip(3),
            5000 + id,
            7777,
            id,
            3000,
            4,
        );
        let mut frags = ipv4_fragments(&d, 1480);
        if reversed {
            frags.reverse();
        }
        r.send_each(1, &frags);
        let got = reassemble(&r.tx(3));
        assert_eq!(got.len(), 1, "allowed datagram {id} whole");
        assert_eq!(got[0].payload, pattern(3000, 4));
        let rd = udp_datagram(
            pod_macs(3),
            pod_ip(3),
            pod_ip(1),
            7777,
            5000 + id,
            id,
            9000,
            5,
        );
        let mut rf = ipv4_fragments(&rd, 1480);
        rf.reverse();
        r.send_each(3, &rf);
        assert_eq!(reassemble(&r.tx(1)).len(), 1, "reply {id} whole");
    }
    let denied_before = r.errors("ip4-policy", "policy-denied-ingress");
    for reversed in [false, true] {
        let d = udp_datagram(pod_macs(2), pod_ip(2), pod_ip(3), 5000, 7777, 9, 9000, 6);
        let mut frags = ipv4_fragments(&d, 1480);
        if reversed {
            frags.reverse();
        }
        r.send_each(2, &frags);
        assert_eq!(r.tx(3).len(), 0, "denied: no fragment delivered");
    }
    assert_eq!(
        r.errors("ip4-policy", "policy-denied-ingress") - denied_before,
        2 * 7,
        "each of the 7 fragments of both datagrams denied"
    );
    assert!(r.all_frames_free());
}

/// A service without endpoints rejects the first fragment; the others are dropped, never
/// routed to the VIP (the default route) untranslated. Fragments whose first fragment never
/// comes are held, then dropped on the timeout, counted.
#[test]
fn unassociated_fragments_dropped_and_counted() {
    let snap = snapshot_with(
        2,
        vec![udp_service("default/none", vip(2), vec![])],
        nat(false),
    );
    let mut r = rig(snap, 3, 1024);
    let d = udp_datagram(pod_macs(1), pod_ip(1), vip(2), 4444, 53, 77, 3000, 0);
    let frags = ipv4_fragments(&d, 1480);
    r.send_each(1, &frags);
    assert_eq!(r.tx(0).len(), 0, "nothing to the uplink");
    assert_eq!(r.tx(1).len(), 1, "port unreachable for the first fragment");
    assert_eq!(
        r.errors("ip4-nat", "fragment-no-session"),
        frags.len() as u64 - 1
    );
    // The same VIP, first fragment lost: the tails wait, then are dropped.
    let d = udp_datagram(pod_macs(1), pod_ip(1), vip(2), 4445, 53, 78, 9000, 0);
    let frags = ipv4_fragments(&d, 1480);
    r.send_each(1, &frags[1..]);
    assert_eq!(r.tx(0).len() + r.tx(1).len(), 0, "held, not forwarded");
    assert_eq!(r.errors("ip4-frag", "held"), frags.len() as u64 - 1);
    assert!(!r.all_frames_free(), "the tails are held");
    std::thread::sleep(Duration::from_millis(2200));
    r.worker.poll().unwrap(); // an idle round runs the timers
    assert_eq!(r.errors("ip4-frag", "timeout"), frags.len() as u64 - 1);
    assert_eq!(r.tx(0).len() + r.tx(1).len(), 0);
    assert!(r.all_frames_free(), "held frames returned to the pool");
    // A tiny first fragment (UDP header cut) is refused.
    let mut tiny = ipv4_fragments(
        &udp_datagram(pod_macs(1), pod_ip(1), vip(2), 1, 53, 79, 100, 0),
        8,
    )
    .remove(0);
    tiny.truncate(14 + 24);
    tiny[16..18].copy_from_slice(&24u16.to_be_bytes());
    tiny[24..26].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&tiny[14..34]);
    tiny[24..26].copy_from_slice(&c.to_be_bytes());
    r.send_each(1, &[tiny]);
    assert_eq!(r.errors("ip4-frag", "tiny-fragment"), 1);
    assert!(r.all_frames_free());
}

/// Held fragments are bounded per datagram (64) and in total (1,024); tracked datagrams
/// (4,096) too; all counted, and everything held is freed on the timeout.
#[test]
fn bounds_and_timeout() {
    let mut r = rig(node_snapshot(2, 0), 3, 4096);
    // One datagram, 70 tails before its first fragment: 64 held, 6 refused.
    let mk = |id: u16, off: usize| {
        let d = udp_datagram(pod_macs(1), pod_ip(1), pod_ip(2), 1000, 2000, id, 200, 0);
        let mut f = ipv4_fragments(&d, 8)[1].clone();
        f[20..22].copy_from_slice(&(0x2000u16 | (off as u16)).to_be_bytes());
        f[24..26].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f
    };
    let tails: Vec<Vec<u8>> = (0..70).map(|k| mk(1, 2 + k)).collect();
    r.send_vector(1, &tails[..60]);
    r.send_vector(1, &tails[60..]);
    assert_eq!(r.errors("ip4-frag", "held"), 64);
    assert_eq!(r.errors("ip4-frag", "hold-full"), 6);
    // 20 more datagrams of 64 tails: the total stops at 1,024.
    for id in 2..22u16 {
        let tails: Vec<Vec<u8>> = (0..64).map(|k| mk(id, 2 + k)).collect();
        r.send_vector(1, &tails);
    }
    assert_eq!(r.errors("ip4-frag", "held"), 1024);
    assert_eq!(r.errors("ip4-frag", "hold-full"), 6 + 20 * 64 - (1024 - 64));
    assert_eq!(r.tx(2).len(), 0);
    // Datagram 1's first fragment releases its 64 in order behind it.
    let first = ipv4_fragments(
        &udp_datagram(pod_macs(1), pod_ip(1), pod_ip(2), 1000, 2000, 1, 200, 0),
        8,
    )
    .remove(0);
    r.send_each(1, &[first]);
    assert_eq!(r.tx(2).len(), 65);
    assert_eq!(r.errors("ip4-frag", "released"), 64);
    std::thread::sleep(Duration::from_millis(2200));
    r.worker.poll().unwrap();
    assert_eq!(r.errors("ip4-frag", "timeout"), 1024 - 64);
    assert!(r.all_frames_free());
    // 4,096 datagrams tracked (first fragments, their tails never come); the next refused.
    for id in 0..4097u16 {
        let d = udp_datagram(pod_macs(1), pod_ip(1), pod_ip(2), 1000, 2000, id, 200, 0);
        r.send_vector(1, &ipv4_fragments(&d, 104)[..1]);
    }
    assert_eq!(r.tx(2).len(), 4096);
    assert_eq!(r.errors("ip4-frag", "table-full"), 1);
    assert!(r.all_frames_free());
}
