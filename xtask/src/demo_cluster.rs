//! The multi-node part of `cargo xtask demo`: a small cluster (default 3 nodes, 2 pods each)
//! on a fabric bridge, one agent per node, pods reaching pods on other nodes in the chosen
//! overlay mode (default VXLAN: it works on any fabric, routed or not, and is what flannel
//! users run; `--mode direct` needs the nodes on one L2 segment, as here).
//!
//! The nodes' specs list each other without `podCIDR`: every node learns the others' pod
//! CIDRs over an iBGP full mesh (issue 6), next hops resolved to the overlay's tunnels.
//! The first check waits for every session to be Established and every pod CIDR to be
//! in every engine FIB with source `bgp`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ferroplane_e2e::cluster::{Cluster, ClusterBgp, OverlayMode};
use ferroplane_e2e::{ping, tcp_transfer};

/// How long the BGP check waits for the full mesh to converge.
const BGP_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until every node has an Established session with every other node and the
/// other nodes' pod CIDRs in its engine FIB with source `bgp`.
fn bgp_converged(c: &Cluster) -> Result<String> {
    let t = Instant::now();
    let n = c.nodes.len();
    loop {
        let mut missing = Vec::new();
        let (mut sessions, mut learnt) = (0, 0);
        for (i, node) in c.nodes.iter().enumerate() {
            let r = c.agent(i).ctl_json(&["show", "bgp"])?;
            let peers = r["peers"].as_array().cloned().unwrap_or_default();
            let up = peers.iter().filter(|p| p["state"] == "Established").count();
            sessions += up;
            if up < n - 1 {
                missing.push(format!(
                    "{}: {up}/{} sessions Established",
                    node.name,
                    n - 1
                ));
            }
            let routes = c.agent(i).ctl_json(&["show", "routes"])?;
            for o in c.nodes.iter().filter(|o| o.index != node.index) {
                let ok = routes.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|r| r["prefix"] == o.pod_cidr.as_str() && r["source"] == "bgp")
                });
                if ok {
                    learnt += 1;
                } else {
                    missing.push(format!("{}: no bgp route to {}", node.name, o.pod_cidr));
                }
            }
        }
        if missing.is_empty() {
            return Ok(format!(
                "{sessions} sessions Established, {learnt} pod CIDRs learnt (source bgp), converged in {:.1} s",
                t.elapsed().as_secs_f64()
            ));
        }
        if t.elapsed() > BGP_TIMEOUT {
            bail!(
                "not converged after {BGP_TIMEOUT:?}: {}",
                missing.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Bytes of the byte-checked transfer across nodes.
const TRANSFER_BYTES: u64 = 10 * 1024 * 1024;

/// Builds and starts the cluster, runs the cross-node checks, prints a summary.
/// Returns the cluster (kept up by the caller for `--keep`) and the number of failed checks.
pub fn run(nodes: u8, mode: OverlayMode) -> Result<(Cluster, usize)> {
    println!(
        "\n=== cluster demo: {nodes} nodes, mode {} ===",
        mode.as_str()
    );
    let mut c = Cluster::new(nodes, 2, mode)?;
    // Remote pod CIDRs come from BGP only (the specs list the other nodes without them).
    c.bgp = Some(ClusterBgp::default());
    c.start(&ferroplane_e2e::bin_dir())?;
    let mut out = String::new();
    let mut failed = 0;
    let mut record = |name: String, r: Result<String>, t: Instant| {
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        match r {
            Ok(d) => {
                let _ = writeln!(out, "  PASS {name} ({ms:.1} ms) {d}");
            }
            Err(e) => {
                failed += 1;
                let _ = writeln!(out, "  FAIL {name} ({ms:.1} ms) {e:#}");
            }
        }
    };
    let n = c.nodes.len();
    if n >= 2 {
        let t = Instant::now();
        record(
            format!("bgp full mesh of {n} nodes (no pod CIDR in the specs)"),
            bgp_converged(&c),
            t,
        );
    }
    for i in 0..n {
        let (a, b) = (&c.nodes[i], &c.nodes[(i + 1) % n]);
        if std::ptr::eq(a, b) {
            continue;
        }
        let t = Instant::now();
        // The first packet may wait for neighbour resolution or a WireGuard handshake.
        let _ = ping(&a.pods[0].ns, b.pods[0].ip, 1);
        let r = ping(&a.pods[0].ns, b.pods[0].ip, 3)
            .map(|s| format!("{}/{} replies", s.received, s.transmitted))
            .map_err(Into::into);
        record(
            format!("ping {}/pod0 -> {}/pod0 ({})", a.name, b.name, b.pods[0].ip),
            r,
            t,
        );
    }
    if n >= 2 {
        let (a, b) = (&c.nodes[0], &c.nodes[n - 1]);
        let t = Instant::now();
        let r = tcp_transfer(
            &a.pods[1].ns,
            &b.pods[1].ns,
            b.pods[1].ip,
            5301,
            TRANSFER_BYTES,
        )
        .map(|s| {
            format!(
                "{} bytes byte-checked, {:.0} Mbit/s",
                s.bytes,
                s.mbit_per_s()
            )
        })
        .map_err(Into::into);
        record(
            format!("tcp {}/pod1 -> {}/pod1, 10 MB", a.name, b.name),
            r,
            t,
        );
    }
    print!("{out}");
    println!("\nferroctl show tunnels on {}:", c.nodes[0].name);
    match c.agent(0).ctl(&["show", "tunnels"]) {
        Ok(t) => {
            for l in t.lines() {
                println!("  {l}");
            }
        }
        Err(e) => println!("  (ferroctl failed: {e})"),
    }
    println!("\nferroctl show bgp on {}:", c.nodes[0].name);
    match c.agent(0).ctl(&["show", "bgp"]) {
        Ok(t) => {
            for l in t.lines() {
                println!("  {l}");
            }
        }
        Err(e) => println!("  (ferroctl failed: {e})"),
    }
    println!("\nwhere to look:");
    for node in &c.nodes {
        println!(
            "  {} --socket {} show tunnels|bgp|routes   # {} (netns {})",
            c.agent(0).ctl_bin().display(),
            node.api_socket.display(),
            node.name,
            node.ns.name()
        );
    }
    Ok((c, failed))
}
