//! Classifier decisions per second with 1, 100 and 10,000 rules (target: 10,000 within 0.95x
//! of 1), and the time to compile and apply 1,000 policies over 1,000 pods.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, Criterion, Throughput};
use ferroplane_policy::{Compiler, Labels, NetworkPolicy, PodInfo};
use ferroplane_tables::policy::{Acl, AclSpec, AddrSet, Direction, Entry, PortMatch, RuleRef};

/// An ingress ACL with `n` rules: rule i allows TCP port 1000+i from peer 10.1.x.y (i).
fn acl(n: u32) -> Acl {
    let peer = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i);
    Acl::new(AclSpec {
        direction: Direction::Ingress,
        rules: (0..n)
            .map(|i| RuleRef {
                namespace: "bench".into(),
                policy: format!("p{i}"),
                index: 0,
            })
            .collect(),
        entries: (0..n)
            .map(|i| Entry {
                rule: i,
                ports: PortMatch::Range {
                    proto: 6,
                    lo: (1000 + i) as u16,
                    hi: (1000 + i) as u16,
                },
                addrs: Arc::new(AddrSet {
                    blocks: vec![],
                    hosts: vec![peer(i)],
                }),
            })
            .collect(),
    })
}

/// 1,024 probes spread uniformly over the rules (3/4 allowed, 1/4 denied by the address):
/// the worst case for the caches.
fn probes(n: u32) -> Vec<(u16, Ipv4Addr)> {
    probes_with(1024, |k| (k.wrapping_mul(2_654_435_761) >> 7) % n)
}

/// 4,096 probes with a skewed (Zipf-like, log-uniform) rule popularity, as real traffic:
/// a few rules take most new flows.
fn probes_skewed(n: u32) -> Vec<(u16, Ipv4Addr)> {
    probes_with(4096, |k| {
        let u = ((k.wrapping_mul(2_654_435_761) >> 8) % 65_536) as f64 / 65_536.0;
        ((n as f64 + 1.0).powf(u) as u32).saturating_sub(1) % n
    })
}

fn probes_with(count: u32, rule: impl Fn(u32) -> u32) -> Vec<(u16, Ipv4Addr)> {
    (0..count)
        .map(|k| {
            let i = rule(k);
            let port = (1000 + i) as u16;
            let peer = Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i + (k % 4 == 0) as u32 * 50_000,
            );
            (port, peer)
        })
        .collect()
}

fn run(a: &Acl, p: &[(u16, Ipv4Addr)]) -> u32 {
    let mut allowed = 0;
    for &(port, peer) in p {
        allowed += a.check(6, port, peer).is_some() as u32;
    }
    allowed
}

fn classifier(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy-classifier");
    for n in [1u32, 100, 10_000] {
        let a = acl(n);
        let p = probes(n);
        g.throughput(Throughput::Elements(p.len() as u64));
        g.bench_function(format!("{n}-rules"), |b| {
            b.iter(|| run(black_box(&a), black_box(&p)))
        });
    }
    g.finish();
}

fn world(
    pods: usize,
    policies: usize,
) -> (BTreeMap<String, Labels>, Vec<PodInfo>, Vec<NetworkPolicy>) {
    let nss = 10;
    let ns: BTreeMap<String, Labels> = (0..nss)
        .map(|i| {
            (
                format!("ns{i}"),
                [("team".to_string(), format!("t{}", i % 3))].into(),
            )
        })
        .collect();
    let pods: Vec<PodInfo> = (0..pods)
        .map(|i| PodInfo {
            namespace: format!("ns{}", i % nss),
            name: format!("pod{i}"),
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i as u32),
            labels: [
                ("app".to_string(), format!("app{}", i % 50)),
                ("tier".to_string(), format!("t{}", i % 4)),
            ]
            .into(),
            named_ports: [("http".to_string(), (6u8, 8080u16))].into(),
            local: true,
        })
        .collect();
    let pols = (0..policies)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("np{i}"), "namespace": format!("ns{}", i % nss)},
                "spec": {"podSelector": {"matchLabels": {"app": format!("app{}", i % 50)}},
                         "policyTypes": ["Ingress", "Egress"],
                         "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 3)}},
                                                "podSelector": {"matchLabels": {"tier": format!("t{}", i % 4)}}}],
                                      "ports": [{"port": 80 + (i % 100) as i32}, {"port": "http"}]}],
                         "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}}], "ports": [{"port": 443}]}]}
            }))
            .unwrap()
        })
        .collect();
    (ns, pods, pols)
}

fn compile(c: &mut Criterion) {
    let (ns, pods, pols) = world(1000, 1000);
    let mut g = c.benchmark_group("policy-compile");
    g.sample_size(10);
    g.bench_function("1000-policies-1000-pods", |b| {
        b.iter(|| {
            let mut comp = Compiler::new();
            comp.sync(&ns, &pods, &pols).unwrap();
            comp.commit();
            black_box(comp.tables())
        })
    });
    g.finish();
}

/// Same-run ratio: decisions/s at 10,000 rules over decisions/s at 1 (best of 7 rounds of
/// 200 ms, the sizes interleaved so that load from other processes hits them alike).
fn ratio() {
    let sizes = [1u32, 100, 10_000];
    for (name, gen) in [
        ("uniform", probes as fn(u32) -> Vec<(u16, Ipv4Addr)>),
        ("skewed", probes_skewed),
    ] {
        let sets: Vec<(Acl, Vec<(u16, Ipv4Addr)>)> =
            sizes.iter().map(|&n| (acl(n), gen(n))).collect();
        let mut best = [0f64; 3];
        for _ in 0..7 {
            for (b, (a, p)) in best.iter_mut().zip(&sets) {
                let t = Instant::now();
                let mut k = 0u64;
                while t.elapsed().as_millis() < 200 {
                    black_box(run(a, p));
                    k += p.len() as u64;
                }
                *b = b.max(k as f64 / t.elapsed().as_secs_f64());
            }
        }
        let [r1, r100, r10k] = best;
        println!(
            "policy classifier ({name} probes): 1 rule {:.1} M/s, 100 rules {:.1} M/s, 10000 rules {:.1} M/s; ratio 10000/1 = {:.3} (target >= 0.95)",
            r1 / 1e6, r100 / 1e6, r10k / 1e6, r10k / r1
        );
    }
    let (ns, pods, pols) = world(1000, 1000);
    let t = Instant::now();
    let mut comp = Compiler::new();
    comp.sync(&ns, &pods, &pols).unwrap();
    let s = comp.commit();
    println!(
        "compile+apply 1000 policies over 1000 pods: {:.1} ms ({} distinct ACLs)",
        t.elapsed().as_secs_f64() * 1e3,
        s.acls
    );
    let t = Instant::now();
    let mut p = pods[7].clone();
    p.labels.insert("app".into(), "app8".into());
    comp.upsert_pod(p);
    let s = comp.commit();
    println!(
        "incremental: one pod relabelled: {:.2} ms ({} policies re-resolved, {} pods rebuilt, {} ACLs built)",
        t.elapsed().as_secs_f64() * 1e3,
        s.policies,
        s.pods,
        s.acls_built
    );
}

criterion_group!(benches, classifier, compile);

fn main() {
    ratio();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
