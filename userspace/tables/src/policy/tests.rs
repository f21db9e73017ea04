//! Tests of the policy tables and their classifier.

use std::collections::BTreeSet;

use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn pfx(s: &str) -> Ipv4Prefix {
    s.parse().unwrap()
}

fn rr(i: u32) -> RuleRef {
    RuleRef {
        namespace: "ns".into(),
        policy: "p".into(),
        index: i,
    }
}

#[test]
fn except_and_host_union() {
    // Rule 0: 10.0.0.0/8 except 10.1.0.0/16 on tcp/80; rule 1: host 10.1.2.3 on any port.
    let spec = AclSpec {
        direction: Direction::Ingress,
        rules: vec![rr(0), rr(1)],
        entries: vec![
            Entry {
                rule: 0,
                ports: PortMatch::Range {
                    proto: PROTO_TCP,
                    lo: 80,
                    hi: 80,
                },
                addrs: Arc::new(AddrSet {
                    blocks: vec![Block {
                        cidr: pfx("10.0.0.0/8"),
                        except: vec![pfx("10.1.0.0/16")],
                    }],
                    hosts: vec![],
                }),
            },
            Entry {
                rule: 1,
                ports: PortMatch::All,
                addrs: Arc::new(AddrSet {
                    blocks: vec![],
                    hosts: vec![ip("10.1.2.3")],
                }),
            },
        ],
    };
    let c = Classifier::build(&spec);
    assert_eq!(c.classify(PROTO_TCP, 80, ip("10.2.0.1")), Some(0));
    assert_eq!(c.classify(PROTO_TCP, 80, ip("10.1.0.1")), None);
    assert_eq!(c.classify(PROTO_TCP, 80, ip("10.1.2.3")), Some(1));
    assert_eq!(c.classify(PROTO_TCP, 81, ip("10.2.0.1")), None);
    assert_eq!(c.classify(PROTO_UDP, 80, ip("10.1.2.3")), Some(1));
    assert_eq!(c.classify(1, 0, ip("10.1.2.3")), Some(1));
    assert_eq!(c.classify(1, 0, ip("10.2.0.1")), None);
    assert_eq!(c.classify(PROTO_TCP, 80, ip("11.0.0.1")), None);
}

#[test]
fn ranges_and_empty_acl() {
    let deny = AclSpec {
        direction: Direction::Egress,
        rules: vec![],
        entries: vec![],
    };
    let c = Classifier::build(&deny);
    assert_eq!(c.classify(PROTO_TCP, 80, ip("1.2.3.4")), None);
    let spec = AclSpec {
        direction: Direction::Egress,
        rules: vec![rr(0), rr(1)],
        entries: vec![
            Entry {
                rule: 0,
                ports: PortMatch::Range {
                    proto: PROTO_UDP,
                    lo: 1000,
                    hi: 2000,
                },
                addrs: Arc::new(AddrSet::all()),
            },
            Entry {
                rule: 1,
                ports: PortMatch::Proto { proto: PROTO_SCTP },
                addrs: Arc::new(AddrSet::all()),
            },
        ],
    };
    let c = Classifier::build(&spec);
    for (p, port, want) in [
        (PROTO_UDP, 999, None),
        (PROTO_UDP, 1000, Some(0)),
        (PROTO_UDP, 1500, Some(0)),
        (PROTO_UDP, 2000, Some(0)),
        (PROTO_UDP, 2001, None),
        (PROTO_TCP, 1500, None),
        (PROTO_SCTP, 7, Some(1)),
    ] {
        assert_eq!(c.classify(p, port, ip("8.8.8.8")), want, "{p} {port}");
        assert_eq!(spec.reference_match(p, port, ip("8.8.8.8")), want);
    }
}

/// A large ACL (buckets overflow into their neighbours) and the tables' batched path
/// against the scalar ones and the reference.
#[test]
fn large_acl_and_tables_batch() {
    let hosts: Vec<Ipv4Addr> = (0..3000u32)
        .map(|i| Ipv4Addr::from(0x0a01_0000 + i * 7))
        .collect();
    let spec = AclSpec {
        direction: Direction::Ingress,
        rules: (0..4).map(rr).collect(),
        entries: vec![
            Entry {
                rule: 0,
                ports: PortMatch::Range {
                    proto: PROTO_TCP,
                    lo: 80,
                    hi: 90,
                },
                addrs: Arc::new(AddrSet {
                    blocks: vec![],
                    hosts: hosts.clone(),
                }),
            },
            Entry {
                rule: 1,
                ports: PortMatch::Proto { proto: PROTO_UDP },
                addrs: Arc::new(AddrSet {
                    blocks: vec![Block {
                        cidr: pfx("10.1.0.0/16"),
                        except: vec![pfx("10.1.0.0/20"), pfx("10.1.128.0/24")],
                    }],
                    hosts: hosts[..100].to_vec(),
                }),
            },
            Entry {
                rule: 2,
                ports: PortMatch::Range {
                    proto: PROTO_TCP,
                    lo: 85,
                    hi: 2000,
                },
                addrs: Arc::new(AddrSet {
                    blocks: vec![Block::new(pfx("10.1.64.0/18"))],
                    hosts: vec![],
                }),
            },
            Entry {
                rule: 3,
                ports: PortMatch::All,
                addrs: Arc::new(AddrSet {
                    blocks: vec![],
                    hosts: vec![ip("10.1.0.1")],
                }),
            },
        ],
    };
    let acl = Acl::new(spec.clone());
    assert!(acl.classifier.buckets.iter().any(|b| b.overflow != 0));
    let packets: Vec<(u8, u16, Ipv4Addr)> = (0..20_000u32)
        .map(|k| {
            let proto = [PROTO_TCP, PROTO_UDP, 1][(k % 3) as usize];
            let port = 75 + (k * 13 % 40) as u16;
            (proto, port, Ipv4Addr::from(0x0a01_0000 + k * 3))
        })
        .collect();
    let mut out = vec![None; packets.len()];
    acl.check_batch(&packets, &mut out);
    for (&(proto, port, peer), o) in packets.iter().zip(&out) {
        assert_eq!(
            spec.reference_match(proto, port, peer),
            *o,
            "{proto} {port} {peer}"
        );
    }
    let allowed = out.iter().filter(|o| o.is_some()).count() as u64;
    assert_eq!(acl.hits().iter().sum::<u64>(), allowed);
    assert_eq!(acl.denied(), packets.len() as u64 - allowed);

    // Tables: pod a (egress and ingress), pod b (ingress only), pod c (not isolated).
    let tables = |acl: &Arc<Acl>| {
        PolicyTables::new(
            1,
            [
                (
                    ip("10.1.0.1"),
                    PodAcls {
                        ingress: Some(acl.clone()),
                        egress: Some(acl.clone()),
                    },
                ),
                (
                    ip("10.1.0.7"),
                    PodAcls {
                        ingress: Some(acl.clone()),
                        egress: None,
                    },
                ),
            ],
        )
    };
    let (one, batch) = (Arc::new(Acl::new(spec.clone())), Arc::new(Acl::new(spec)));
    let (t1, tb) = (tables(&one), tables(&batch));
    let pods = [
        ip("10.1.0.1"),
        ip("10.1.0.7"),
        ip("10.1.0.9"),
        ip("10.1.64.5"),
    ];
    let flows: Vec<FlowQuery> = (0..5000usize)
        .map(|k| FlowQuery {
            src: pods[k % 4],
            dst: pods[k / 4 % 4],
            proto: [PROTO_TCP, PROTO_UDP, 1][k % 3],
            dport: 78 + (k * 7 % 20) as u16,
        })
        .collect();
    let mut verdicts = vec![Verdict::Allow; flows.len()];
    tb.check_batch(&flows, &mut verdicts);
    let mut seen = BTreeSet::new();
    for (f, v) in flows.iter().zip(&verdicts) {
        assert_eq!(t1.check(f.src, f.dst, f.proto, f.dport), *v, "{f:?}");
        seen.insert(format!("{v:?}"));
    }
    assert_eq!(seen.len(), 3, "every verdict occurs: {seen:?}");
    assert_eq!(one.hits(), batch.hits());
    assert_eq!(one.denied(), batch.denied());
}

proptest::proptest! {
    #[test]
    fn classifier_matches_reference(
        rules in proptest::collection::vec(
            (0u8..4, 0u16..40, 0u16..8, 0u8..3, proptest::collection::vec(0u8..16, 0..3)), 0..8),
        probes in proptest::collection::vec((0u8..4, 0u16..50, 0u8..16), 1..64),
    ) {
        let protos = [PROTO_TCP, PROTO_UDP, PROTO_SCTP, 1];
        let mut entries = Vec::new();
        for (i, (pk, lo, w, ak, hosts)) in rules.iter().enumerate() {
            let ports = match pk {
                0 => PortMatch::All,
                1 => PortMatch::Proto { proto: protos[(*lo % 3) as usize] },
                _ => PortMatch::Range { proto: protos[(*lo % 3) as usize], lo: *lo, hi: lo + w },
            };
            let addrs = match ak {
                0 => AddrSet::all(),
                1 => AddrSet { blocks: vec![Block { cidr: pfx("10.0.0.0/28"), except: vec![pfx("10.0.0.4/30")] }], hosts: vec![] },
                _ => {
                    let mut h: Vec<Ipv4Addr> = hosts.iter().map(|x| Ipv4Addr::new(10, 0, 0, *x)).collect();
                    h.sort(); h.dedup();
                    AddrSet { blocks: vec![], hosts: h }
                }
            };
            entries.push(Entry { rule: i as u32, ports, addrs: Arc::new(addrs) });
        }
        let spec = AclSpec { direction: Direction::Ingress, rules: (0..entries.len() as u32).map(rr).collect(), entries };
        let c = Classifier::build(&spec);
        let packets: Vec<(u8, u16, Ipv4Addr)> = probes
            .iter()
            .map(|&(p, port, h)| (protos[p as usize], port, Ipv4Addr::new(10, 0, 0, h)))
            .collect();
        for &(proto, port, peer) in &packets {
            proptest::prop_assert_eq!(c.classify(proto, port, peer), spec.reference_match(proto, port, peer));
        }
        // The batched path decides and counts exactly as the scalar one.
        let (one, batch) = (Acl::new(spec.clone()), Acl::new(spec.clone()));
        let mut out = vec![Some(u32::MAX); packets.len()];
        batch.check_batch(&packets, &mut out);
        for (&(proto, port, peer), o) in packets.iter().zip(&out) {
            proptest::prop_assert_eq!(one.check(proto, port, peer), *o);
            proptest::prop_assert_eq!(spec.reference_match(proto, port, peer), *o);
        }
        proptest::prop_assert_eq!(one.hits(), batch.hits());
        proptest::prop_assert_eq!(one.denied(), batch.denied());
        let allowed = out.iter().filter(|o| o.is_some()).count() as u64;
        proptest::prop_assert_eq!(batch.hits().iter().sum::<u64>(), allowed);
        proptest::prop_assert_eq!(batch.denied(), packets.len() as u64 - allowed);
    }
}
