//! `cargo xtask bench policy`: the forwarding bench's traffic (trafgen in the router netns,
//! 60-byte UDP to pod0 port 9, source ports cycling over 1,025 flows, XDP_DROP sink) through
//! the node with N filter rules, N = 1, 1,000, 10,000, in one run:
//! - kernel: IP forwarding with N rules in the node's iptables-nft `filter FORWARD` chain
//!   (policy DROP; N-1 rules for other /32 sources, then the one accepting the router),
//!   evaluated for every packet as iptables does;
//! - ferroplane: a NetworkPolicy on pod0's namespace with N ingress rules of the same shape
//!   (ipBlock /32 + UDP 9), compiled into pod0's ACL; `ip4-policy` classifies the first packet
//!   of each flow and lets the flow's later packets through its flow table.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferroplane_e2e::bench::{self, median, BenchTools, RunConfig};
use ferroplane_e2e::{TempDir, Topology};

use crate::load::build_binaries;
use crate::progress::{require_root, Progress};

/// Rule counts measured.
const COUNTS: [usize; 3] = [1, 1_000, 10_000];
/// The flow's destination port (trafgen_config).
const DPORT: u16 = 9;

/// A non-matching /32 source for rule `i` (172.16.0.0/12, never the router).
fn other_source(i: usize) -> String {
    format!("172.{}.{}.{}/32", 16 + (i >> 16), (i >> 8) & 0xff, i & 0xff)
}

/// `iptables-restore` input: FORWARD policy DROP, `n` rules, the last one matching.
fn iptables_rules(n: usize) -> String {
    let mut s =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..n.saturating_sub(1) {
        let _ = writeln!(
            s,
            "-A FORWARD -s {} -p udp --dport {DPORT} -j ACCEPT",
            other_source(i)
        );
    }
    let _ = writeln!(
        s,
        "-A FORWARD -s {}/32 -p udp --dport {DPORT} -j ACCEPT",
        Topology::ROUTER_IP
    );
    s.push_str("COMMIT\n");
    s
}

/// The `networkPolicies:` section: one policy selecting every pod of `default` with `n`
/// ingress rules, the last one allowing the router.
fn policy_yaml(n: usize) -> String {
    let mut s = String::from(
        "networkPolicies:\n  - apiVersion: networking.k8s.io/v1\n    kind: NetworkPolicy\n    metadata: {name: bench, namespace: default}\n    spec:\n      podSelector: {}\n      policyTypes: [Ingress]\n      ingress:\n",
    );
    let rule = |s: &mut String, cidr: &str| {
        let _ = writeln!(
            s,
            "        - {{from: [{{ipBlock: {{cidr: {cidr}}}}}], ports: [{{protocol: UDP, port: {DPORT}}}]}}"
        );
    };
    for i in 0..n.saturating_sub(1) {
        rule(&mut s, &other_source(i));
    }
    rule(&mut s, &format!("{}/32", Topology::ROUTER_IP));
    s
}

/// Remove pod0's interface (and with it the host end of its veth), if any.
fn unplumb_pod0(topo: &Topology) {
    if let Some(pod) = topo.pods.first() {
        let _ = pod.ns.ip(&["link", "del", Topology::POD_IF]);
    }
}

/// One N: (kernel runs, ferroplane runs) in packets per second.
fn one(
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    n: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    unplumb_pod0(topo);
    let rules = topo.dir().join("iptables.rules");
    std::fs::write(&rules, iptables_rules(n)).context("writing the iptables rules")?;
    topo.node
        .exec_ok(&["iptables-restore", &rules.to_string_lossy()])
        .context("iptables-restore in the node namespace")?;
    let kernel = bench::kernel_forward(topo, tools, cfg);
    // Back to an empty, accepting filter table for the ferroplane half.
    let flush = topo
        .node
        .exec_ok(&["iptables", "-P", "FORWARD", "ACCEPT"])
        .and_then(|_| topo.node.exec_ok(&["iptables", "-F", "FORWARD"]));
    let kernel = kernel?;
    flush?;
    topo.write_spec(&format!("{}{}", topo.spec_yaml(), policy_yaml(n)))?;
    let ferroplane = bench::ferroplane_forward(topo, tools, cfg, &ferroplane_e2e::bin_dir());
    // The agent leaves pod0 plumbed when it stops (pods outlive agent restarts); the next
    // N's kernel half plumbs pod0 itself.
    unplumb_pod0(topo);
    Ok((kernel, ferroplane?))
}

/// `cargo xtask bench policy`.
pub fn run(runs: usize, secs: u64) -> Result<()> {
    require_root("bench policy")?;
    if runs == 0 || secs == 0 {
        bail!("--runs and --secs must be at least 1");
    }
    let cfg = RunConfig {
        runs,
        duration: Duration::from_secs(secs),
        warmup: Duration::from_secs(1),
    };
    let mut p = Progress::new(4 + COUNTS.len());
    p.step("system packages", crate::deps::ensure)?;
    p.step(
        "building release binaries (agent, ferroctl, BPF objects)",
        build_binaries,
    )?;
    let tools_dir = TempDir::new("bench-tools")?;
    let tools = p.step(
        "compiling the trafgen LD_PRELOAD shim (cc) and the XDP_DROP sink (clang-19)",
        || {
            Ok(BenchTools::build(
                &BenchTools::source_dir(),
                tools_dir.path(),
            )?)
        },
    )?;
    let topo = p.step(
        "creating router (generator), node and pod0 (sink) namespaces",
        || Ok(Topology::single_node(1)?),
    )?;
    let mut results = Vec::new();
    for n in COUNTS {
        let r = p.step(
            &format!("{n} rule(s): kernel iptables-nft FORWARD, then ferroplane NetworkPolicy, {runs} x {secs} s each"),
            || {
                let (k, f) = one(&topo, &tools, &cfg, n)?;
                println!("  kernel (Mpps): {}   ferroplane (Mpps): {}", crate::bench::fmt_rates(&k), crate::bench::fmt_rates(&f));
                Ok((median(&k), median(&f)))
            },
        )?;
        results.push((n, r.0, r.1));
    }
    println!(
        "{}",
        crate::bench::scaling_report(
            &format!("NetworkPolicy vs iptables-nft FORWARD, 60-byte UDP, 1,025 flows, medians of {runs} x {secs} s"),
            "rules",
            &results
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_end_with_the_matching_one() {
        let r = iptables_rules(3);
        assert_eq!(r.matches("-A FORWARD").count(), 3);
        assert!(r.contains("-s 172.16.0.1/32"));
        assert!(r.contains(":FORWARD DROP"));
        let last = r.lines().rev().nth(1).unwrap();
        assert!(last.contains("192.168.100.1/32"), "{last}");
        let y = policy_yaml(3);
        assert_eq!(y.matches("ipBlock").count(), 3);
        assert!(y.contains("cidr: 192.168.100.1/32"));
        assert_eq!(other_source(70_000), "172.17.17.112/32");
    }
}
