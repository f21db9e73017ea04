//! Classifier decisions per second with 1, 100 and 10,000 rules (target: 10,000 within 0.95x
//! of 1), and the time to compile and apply 1,000 policies over 1,000 pods.
//!
//! Decisions go through the batched APIs the engine's `ip4-policy` node uses, in vectors of
//! 256 packets (the engine's vector size): [`Acl::check_batch`] (the classifier of one ACL)
//! and [`PolicyTables::check_batch`] (pod lookups, then the ACL), counting hits as in
//! production. Nothing is cached between vectors or rounds: every decision is a lookup.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use ferroplane_policy::{Compiler, Labels, NetworkPolicy, PodInfo};
use ferroplane_tables::policy::{
    Acl, AclSpec, AddrSet, Direction, Entry, FlowQuery, PodAcls, PolicyTables, PortMatch, RuleRef,
    Verdict,
};

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

/// A packet to classify: protocol, destination port, peer.
type Packet = (u8, u16, Ipv4Addr);

/// The engine's vector size.
const VECTOR: usize = 256;

/// Decide every probe through [`Acl::check_batch`], a vector at a time.
fn run(a: &Acl, p: &[Packet]) -> u32 {
    let mut allowed = 0;
    let mut out = [None; VECTOR];
    for v in p.chunks(VECTOR) {
        let out = &mut out[..v.len()];
        a.check_batch(v, out);
        allowed += out.iter().filter(|o| o.is_some()).count() as u32;
    }
    allowed
}

/// Decide every probe through [`Acl::check`], one at a time (for comparison).
fn run_scalar(a: &Acl, p: &[Packet]) -> u32 {
    let mut allowed = 0;
    for &(proto, port, peer) in p {
        allowed += a.check(proto, port, peer).is_some() as u32;
    }
    allowed
}

/// Decide every probe through [`PolicyTables::check_batch`], a vector at a time.
fn run_tables(t: &PolicyTables, p: &[FlowQuery]) -> u32 {
    let mut allowed = 0;
    let mut out = [Verdict::Allow; VECTOR];
    for v in p.chunks(VECTOR) {
        let out = &mut out[..v.len()];
        t.check_batch(v, out);
        allowed += out.iter().filter(|o| **o == Verdict::Allow).count() as u32;
    }
    allowed
}

/// The isolated pod of the tables benchmark.
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

/// Tables where one pod ([`POD`]) has the ingress ACL [`acl`]`(n)`.
fn tables(n: u32) -> PolicyTables {
    PolicyTables::new(
        1,
        [(
            POD,
            PodAcls {
                ingress: Some(Arc::new(acl(n))),
                egress: None,
            },
        )],
    )
}

/// The probes as packets `(proto, port, peer)` for an ACL.
fn packets(p: &[(u16, Ipv4Addr)]) -> Vec<Packet> {
    p.iter().map(|&(port, peer)| (6, port, peer)).collect()
}

/// The probes as new flows from the peer to [`POD`].
fn flows(p: &[(u16, Ipv4Addr)]) -> Vec<FlowQuery> {
    p.iter()
        .map(|&(dport, src)| FlowQuery {
            src,
            dst: POD,
            proto: 6,
            dport,
        })
        .collect()
}

fn classifier(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy-classifier");
    for n in [1u32, 100, 10_000] {
        let a = acl(n);
        let p = packets(&probes(n));
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

/// Rounds of [`ratio`] (the median is reported).
const ROUNDS: usize = 9;

/// CPU time of the calling thread (excludes the time other processes had the core: the
/// machines this runs on are shared, often with a compiler).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Decisions per second of this thread's CPU time of `f` (which decides `per_call`
/// probes), over 200 ms of wall time.
fn rate(per_call: usize, mut f: impl FnMut() -> u32) -> f64 {
    let t = Instant::now();
    let c = thread_cpu();
    let mut k = 0u64;
    while t.elapsed().as_millis() < 200 {
        black_box(f());
        k += per_call as u64;
    }
    k as f64 / (thread_cpu() - c).as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Same-run ratio: decisions/s at 100 and 10,000 rules over decisions/s at 1 (median of
/// [`ROUNDS`] rounds of 200 ms per size and API, all interleaved so that load from other
/// processes hits them alike; the ratio is also given per round, median and minimum).
/// Rates are per second of the benchmark thread's CPU time.
fn ratio() {
    let sizes = [1u32, 100, 10_000];
    for (name, gen) in [
        ("uniform", probes as fn(u32) -> Vec<(u16, Ipv4Addr)>),
        ("skewed", probes_skewed),
    ] {
        let acls: Vec<(Acl, Vec<Packet>)> =
            sizes.iter().map(|&n| (acl(n), packets(&gen(n)))).collect();
        let tabs: Vec<(PolicyTables, Vec<FlowQuery>)> =
            sizes.iter().map(|&n| (tables(n), flows(&gen(n)))).collect();
        let apis = [
            "Acl::check_batch",
            "PolicyTables::check_batch",
            "Acl::check (scalar, for comparison)",
        ];
        // rates[api][size][round]
        let mut rates = vec![vec![Vec::new(); sizes.len()]; apis.len()];
        for _ in 0..ROUNDS {
            for (api, ra) in rates.iter_mut().enumerate() {
                for (i, r) in ra.iter_mut().enumerate() {
                    let (a, p) = &acls[i];
                    let (t, f) = &tabs[i];
                    r.push(match api {
                        0 => rate(p.len(), || run(a, p)),
                        1 => rate(f.len(), || run_tables(t, f)),
                        _ => rate(p.len(), || run_scalar(a, p)),
                    });
                }
            }
        }
        for (api, ra) in apis.iter().zip(&rates) {
            let per_round: Vec<f64> = ra[2].iter().zip(&ra[0]).map(|(a, b)| a / b).collect();
            let worst = per_round.iter().copied().fold(f64::INFINITY, f64::min);
            let [r1, r100, r10k] = [0, 1, 2].map(|i| median(ra[i].clone()));
            println!(
                "policy classifier, {api} ({name} probes): 1 rule {:.1} M/s, 100 rules {:.1} M/s, 10000 rules {:.1} M/s; ratio 10000/1 = {:.3} (target >= 0.95; per round: median {:.3}, worst {:.3}), 100/1 = {:.3}",
                r1 / 1e6,
                r100 / 1e6,
                r10k / 1e6,
                r10k / r1,
                median(per_round),
                worst,
                r100 / r1
            );
        }
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
