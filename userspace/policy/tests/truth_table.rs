//! The truth table, in process: every scenario of `ferroplane_policy::scenarios` against the
//! compiler and classifier, step by step on one compiler (incremental), each step also
//! checked against a compiler fed the same inputs from scratch.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ferroplane_policy::scenarios::{self, Matrix, Scenario, N};
use ferroplane_policy::{Compiler, Labels, PodInfo};
use ferroplane_tables::policy::{PolicyTables, Verdict};

const BASE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);

fn matrix(t: &PolicyTables, pods: &[PodInfo], (proto, port): (u8, u16)) -> Matrix {
    let mut m = Matrix::all(false);
    for f in 0..N {
        for d in 0..N {
            m.0[f][d] = t.check(pods[f].ip, pods[d].ip, proto, port) == Verdict::Allow;
        }
    }
    m
}

fn run(s: &Scenario) -> Result<(), String> {
    let mut c = Compiler::new();
    let mut ns: BTreeMap<String, Labels> = scenarios::namespaces();
    let mut pods = scenarios::pods(BASE);
    for (i, st) in s.steps.iter().enumerate() {
        for (p, l) in &st.pod_labels {
            pods[*p].labels = l.clone();
        }
        for (n, l) in &st.ns_labels {
            ns.insert(n.clone(), l.clone());
        }
        let pols: Vec<_> = st.policies.iter().map(scenarios::policy).collect();
        c.sync(&ns, &pods, &pols)
            .map_err(|e| format!("{}: {e}", s.name))?;
        c.commit();
        let mut fresh = Compiler::new();
        fresh.sync(&ns, &pods, &pols).map_err(|e| e.to_string())?;
        fresh.commit();
        for (probe, want) in &st.expect {
            let got = matrix(&c.tables(), &pods, *probe);
            if got != *want {
                return Err(format!(
                    "{} step {i} probe {probe:?}: (+! allowed but expected denied, -! the reverse)\n{}",
                    s.name,
                    got.diff(want)
                ));
            }
            let scratch = matrix(&fresh.tables(), &pods, *probe);
            if scratch != got {
                return Err(format!(
                    "{} step {i}: incremental differs from scratch",
                    s.name
                ));
            }
        }
        for sc in &st.services {
            // Policy sees the backend after service DNAT.
            let v = c.tables().check(
                pods[sc.from].ip,
                pods[sc.backend].ip,
                sc.probe.0,
                sc.probe.1,
            );
            if (v == Verdict::Allow) != sc.allowed {
                return Err(format!(
                    "{} step {i}: service check {sc:?} got {v:?}",
                    s.name
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn truth_table() {
    let all = scenarios::all(BASE);
    assert!(all.len() >= 30, "{} scenarios", all.len());
    let failures: Vec<String> = all.iter().filter_map(|s| run(s).err()).collect();
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn hit_counters_and_deny_counters() {
    let mut c = Compiler::new();
    let pods = scenarios::pods(BASE);
    let s = scenarios::all(BASE);
    let sc = s
        .iter()
        .find(|s| s.name == "multiple-policies-union")
        .unwrap();
    let pols: Vec<_> = sc.steps[0].policies.iter().map(scenarios::policy).collect();
    c.sync(&scenarios::namespaces(), &pods, &pols).unwrap();
    c.commit();
    let t = c.tables();
    let (xa, xb, yc) = (
        scenarios::idx("x/a"),
        scenarios::idx("x/b"),
        scenarios::idx("y/c"),
    );
    assert_eq!(t.check(pods[xb].ip, pods[xa].ip, 6, 80), Verdict::Allow);
    assert_eq!(t.check(pods[yc].ip, pods[xa].ip, 17, 81), Verdict::Allow);
    assert_eq!(t.check(pods[yc].ip, pods[xa].ip, 6, 81), Verdict::Allow);
    assert_eq!(
        t.check(pods[xb].ip, pods[xa].ip, 6, 81),
        Verdict::DenyIngress
    );
    let v = c.pod_view("x", "a").unwrap();
    let (acl, shared) = v.ingress.unwrap();
    assert_eq!(shared, 1);
    assert_eq!(v.policies, vec!["x/p1".to_string(), "x/p2".to_string()]);
    assert_eq!(acl.hits(), vec![1, 2]);
    assert_eq!(acl.denied(), 1);
}
