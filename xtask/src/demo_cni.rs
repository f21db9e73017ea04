//! The CNI part of `cargo xtask demo`: a second node whose agent serves the CNI socket, and
//! one pod added through `ferroplane-cni` exactly as a container runtime does it (`CNI_*`
//! environment, network configuration on stdin, from the node namespace), then reached,
//! checked and deleted.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferroplane_e2e::cni::{ferroplane_conf, invoke, CniEnv};
use ferroplane_e2e::{bin_dir, bin_path, ping, Netns, Topology};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the CNI demo; returns the number of failed checks.
pub fn run() -> Result<usize> {
    println!("\n=== the CNI path: a pod added by ferroplane-cni ===");
    let plugin = bin_path(&bin_dir(), "ferroplane-cni")?;
    let topo = Topology::single_node(0)?;
    let socket = topo.dir().join("cni.sock");
    let state = topo.dir().join("state");
    let agent = topo.start_agent_with(
        &bin_dir(),
        &[
            "--cni-socket",
            socket.to_str().context("socket path")?,
            "--state-dir",
            state.to_str().context("state path")?,
        ],
    )?;
    let conf = ferroplane_conf("ferroplane", &socket);
    let start = std::time::Instant::now();
    while !invoke(
        &topo.node,
        &plugin,
        &CniEnv::command_only("STATUS"),
        &conf.to_string(),
        TIMEOUT,
    )?
    .ok()
    {
        if start.elapsed() > TIMEOUT {
            bail!("CNI socket not ready:\n{}", agent.log_tail(20));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pod = Netns::new("cnidemo")?;
    println!(
        "  $ ip netns exec {} env CNI_COMMAND=ADD CNI_CONTAINERID=demo1 CNI_NETNS={} CNI_IFNAME=eth0 {} < conf.json",
        topo.node.name(),
        pod.path().display(),
        plugin.display()
    );
    let add = invoke(
        &topo.node,
        &plugin,
        &CniEnv::new("ADD", "demo1", pod.path()),
        &conf.to_string(),
        TIMEOUT,
    )?;
    let mut failed = 0;
    let mut report = |name: &str, ok: bool, detail: String| {
        println!("  {} {name}: {detail}", if ok { "PASS" } else { "FAIL" });
        if !ok {
            failed += 1;
        }
    };
    report(
        "CNI ADD",
        add.ok(),
        format!(
            "{:.1} ms, result {}",
            add.elapsed.as_secs_f64() * 1e3,
            add.stdout.trim()
        ),
    );
    if let Some(ip) = add.ip() {
        match ping(&topo.router, ip, 2) {
            Ok(s) => report(
                &format!("ping router -> CNI pod ({ip})"),
                true,
                format!("{}/{} replies", s.received, s.transmitted),
            ),
            Err(e) => report(
                &format!("ping router -> CNI pod ({ip})"),
                false,
                e.to_string(),
            ),
        }
        let mut check_conf = conf.clone();
        check_conf["prevResult"] = add.json.clone().unwrap_or_default();
        let check = invoke(
            &topo.node,
            &plugin,
            &CniEnv::new("CHECK", "demo1", pod.path()),
            &check_conf.to_string(),
            TIMEOUT,
        )?;
        report(
            "CNI CHECK",
            check.ok(),
            format!("exit {} {}", check.exit, check.stdout.trim()),
        );
    }
    let del = invoke(
        &topo.node,
        &plugin,
        &CniEnv::new("DEL", "demo1", pod.path()),
        &conf.to_string(),
        TIMEOUT,
    )?;
    report(
        "CNI DEL",
        del.ok(),
        format!("exit {}, veth and address released", del.exit),
    );
    Ok(failed)
}
