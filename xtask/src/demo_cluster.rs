//! The multi-node part of `cargo xtask demo`: a small cluster (default 3 nodes, 2 pods each)
//! on a fabric bridge, one agent per node, pods reaching pods on other nodes in the chosen
//! overlay mode (default VXLAN: it works on any fabric, routed or not, and is what flannel
//! users run; `--mode direct` needs the nodes on one L2 segment, as here).

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;
use ferroplane_e2e::cluster::{Cluster, OverlayMode};
use ferroplane_e2e::{ping, tcp_transfer};

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
    println!("\nwhere to look:");
    for node in &c.nodes {
        println!(
            "  {} --socket {} show tunnels   # {} (netns {})",
            c.agent(0).ctl_bin().display(),
            node.api_socket.display(),
            node.name,
            node.ns.name()
        );
    }
    Ok((c, failed))
}
