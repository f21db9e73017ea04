//! `cargo xtask bench overlay`: pod-to-pod across two nodes, per overlay mode, ferroplane
//! against what the kernel (or wireguard-go) does on the same topology in the same run.
//!
//! Topology (both halves): fabric bridge, two node namespaces, one pod namespace per node.
//! Figures: TCP throughput (iperf3, one stream) and small-packet rate (iperf3 UDP, 64-byte
//! payloads, unlimited rate; packets received per second).
//!
//! Baselines: direct → kernel IP forwarding and routes; VXLAN → kernel VXLAN (flannel layout);
//! WireGuard → wireguard-go; IPIP → kernel routing (this kernel has no IPIP module).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use ferroplane_e2e::cluster::{Cluster, OverlayMode, WgKeys};
use ferroplane_e2e::{ChildGuard, Netns};

use crate::load::build_binaries;
use crate::progress::{require_root, Progress};

/// One measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    gbps: f64,
    kpps: f64,
}

/// `cargo xtask bench overlay`.
pub fn run(secs: u64) -> Result<()> {
    require_root("bench overlay")?;
    let secs = secs.max(2);
    let mut p = Progress::new(2 + 2 * OverlayMode::ALL.len());
    p.step("system packages", crate::deps::ensure)?;
    p.step("building release binaries", build_binaries)?;
    let mut rows = Vec::new();
    for mode in OverlayMode::ALL {
        let base = p.step(
            &format!(
                "{}: kernel baseline ({})",
                mode.as_str(),
                baseline_name(mode)
            ),
            || kernel(mode, secs),
        );
        let fp = p.step(&format!("{}: ferroplane", mode.as_str()), || {
            ferroplane(mode, secs)
        });
        if let Ok(f) = &fp {
            println!("  ferroplane: {:.2} Gbit/s, {:.0} kpps", f.gbps, f.kpps);
        }
        if let Ok(b) = &base {
            println!("  baseline:   {:.2} Gbit/s, {:.0} kpps", b.gbps, b.kpps);
        }
        rows.push((
            mode,
            base.map_err(|e| format!("{e:#}")),
            fp.map_err(|e| format!("{e:#}")),
        ));
    }
    println!(
        "\n=== overlay, pod -> pod across 2 nodes, {secs} s each (iperf3 TCP 1 stream; UDP 64-byte payload) ==="
    );
    println!(
        "{:<10} {:<22} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7}",
        "mode", "baseline", "base Gb/s", "fp Gb/s", "ratio", "base kpps", "fp kpps", "ratio"
    );
    for (mode, base, fp) in &rows {
        let (b, f) = (base.as_ref().ok(), fp.as_ref().ok());
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if x > 0.0 => format!("{:.2}x", y / x),
            _ => "-".to_string(),
        };
        let v = |x: Option<f64>, prec: usize| x.map_or("-".to_string(), |x| format!("{x:.prec$}"));
        println!(
            "{:<10} {:<22} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7}",
            mode.as_str(),
            baseline_name(*mode),
            v(b.map(|b| b.gbps), 2),
            v(f.map(|f| f.gbps), 2),
            ratio(b.map(|b| b.gbps), f.map(|f| f.gbps)),
            v(b.map(|b| b.kpps), 0),
            v(f.map(|f| f.kpps), 0),
            ratio(b.map(|b| b.kpps), f.map(|f| f.kpps)),
        );
        if let Err(e) = base {
            println!("    baseline failed: {e}");
        }
        if let Err(e) = fp {
            println!("    ferroplane failed: {e}");
        }
    }
    if rows.iter().any(|(_, _, f)| f.is_err()) {
        return Err(anyhow!("a ferroplane measurement failed (see above)"));
    }
    Ok(())
}

fn baseline_name(mode: OverlayMode) -> &'static str {
    match mode {
        OverlayMode::Direct => "kernel routing",
        OverlayMode::Ipip => "kernel routing (no IPIP)",
        OverlayMode::Vxlan => "kernel VXLAN",
        OverlayMode::WireGuard => "wireguard-go",
    }
}

fn ferroplane(mode: OverlayMode, secs: u64) -> Result<Figures> {
    let mut c = Cluster::new(2, 1, mode)?;
    c.start(&ferroplane_e2e::bin_dir())?;
    let (a, b) = (&c.nodes[0].pods[0], &c.nodes[1].pods[0]);
    warm(&a.ns, b.ip)?;
    measure(&a.ns, &b.ns, b.ip, secs)
}

/// Plumbs pods and the chosen kernel datapath on a cluster whose agents are not started.
fn kernel(mode: OverlayMode, secs: u64) -> Result<Figures> {
    let c = Cluster::new(2, 1, mode)?;
    let wg = kernel_plumb(&c, mode)?;
    let (a, b) = (&c.nodes[0].pods[0], &c.nodes[1].pods[0]);
    warm(&a.ns, b.ip)?;
    let r = measure(&a.ns, &b.ns, b.ip, secs);
    drop(wg);
    r
}

/// Wires the first pod of each of `c`'s two nodes with the kernel's datapath for `mode`
/// (agents not started); the returned guards (wireguard-go) must live while it is used.
pub(crate) fn kernel_plumb(c: &Cluster, mode: OverlayMode) -> Result<Vec<ChildGuard>> {
    let mut wg = Vec::new();
    let keys = [WgKeys::generate()?, WgKeys::generate()?];
    let pid = std::process::id() % 100_000;
    for (i, n) in c.nodes.iter().enumerate() {
        let j = 1 - i;
        let o = &c.nodes[j];
        let idx = n.index;
        let pod = &n.pods[0];
        let mtu = Cluster::MTU
            - match mode {
                OverlayMode::Vxlan => 50,
                OverlayMode::WireGuard => 80,
                _ => 0,
            };
        n.ns.set_sysctl("net.ipv4.ip_forward", "1")?;
        // The kernel's nodes take offloaded (partial) checksums: give the fabric port its TX
        // offloads back (the harness turns them off for XDP, which cannot see them), so
        // the kernel baseline keeps GSO across the fabric.
        c.fabric
            .exec_ok(&["ethtool", "-K", &format!("f{idx}"), "tx", "on"])?;
        n.ns.ip(&[
            "link",
            "add",
            "kp0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.ns.name(),
        ])?;
        n.ns.add_addr("kp0", &format!("10.244.{idx}.1/24"))?;
        n.ns.set_up("kp0")?;
        pod.ns.add_addr("eth0", &format!("{}/24", pod.ip))?;
        pod.ns
            .ip(&["link", "set", "eth0", "mtu", &mtu.to_string(), "up"])?;
        pod.ns
            .ip(&["route", "add", "default", "via", &format!("10.244.{idx}.1")])?;
        let remote_cidr = o.pod_cidr.as_str();
        match mode {
            OverlayMode::Direct | OverlayMode::Ipip => {
                n.ns.add_route(remote_cidr, &o.address.to_string())?;
            }
            OverlayMode::Vxlan => {
                n.ns.ip(&[
                    "link",
                    "add",
                    "vx0",
                    "type",
                    "vxlan",
                    "id",
                    "42",
                    "dstport",
                    "4789",
                    "local",
                    &n.address.to_string(),
                    "dev",
                    "up0",
                    "nolearning",
                ])?;
                n.ns.ip(&[
                    "link",
                    "set",
                    "vx0",
                    "address",
                    &n.vtep_mac,
                    "mtu",
                    "1450",
                    "up",
                ])?;
                n.ns.add_addr("vx0", &format!("10.244.{idx}.0/32"))?;
                n.ns.exec_ok(&[
                    "bridge",
                    "fdb",
                    "append",
                    &o.vtep_mac,
                    "dev",
                    "vx0",
                    "dst",
                    &o.address.to_string(),
                ])?;
                let gw = format!("10.244.{}.0", o.index);
                n.ns.ip(&[
                    "neigh",
                    "replace",
                    &gw,
                    "lladdr",
                    &o.vtep_mac,
                    "dev",
                    "vx0",
                    "nud",
                    "permanent",
                ])?;
                n.ns.ip(&[
                    "route",
                    "add",
                    remote_cidr,
                    "via",
                    &gw,
                    "dev",
                    "vx0",
                    "onlink",
                ])?;
            }
            OverlayMode::WireGuard => {
                let ifname = format!("fpbw{i}{pid}");
                wg.push(start_wireguard_go(
                    c,
                    &n.ns,
                    &ifname,
                    &keys[i],
                    &keys[j].public,
                    remote_cidr,
                    o.address,
                )?);
            }
        }
    }
    Ok(wg)
}

fn start_wireguard_go(
    c: &Cluster,
    ns: &Netns,
    ifname: &str,
    keys: &WgKeys,
    peer_public: &str,
    remote_cidr: &str,
    remote: Ipv4Addr,
) -> Result<ChildGuard> {
    let key = c.dir().join(format!("{ifname}.key"));
    std::fs::write(&key, format!("{}\n", keys.private)).context("key file")?;
    let g = ns.spawn_logged(
        &["wireguard-go", "-f", ifname],
        &c.dir().join(format!("{ifname}.log")),
    )?;
    for _ in 0..100 {
        if ns.ip(&["link", "show", ifname]).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ns.exec_ok(&[
        "wg",
        "set",
        ifname,
        "private-key",
        &key.to_string_lossy(),
        "listen-port",
        "51820",
        "peer",
        peer_public,
        "allowed-ips",
        remote_cidr,
        "endpoint",
        &format!("{remote}:51820"),
    ])?;
    ns.ip(&["link", "set", ifname, "mtu", "1420", "up"])?;
    ns.ip(&["route", "add", remote_cidr, "dev", ifname])?;
    Ok(g)
}

/// Pings until the path works (neighbours, handshakes).
pub(crate) fn warm(ns: &Netns, ip: Ipv4Addr) -> Result<()> {
    for _ in 0..40 {
        if ferroplane_e2e::ping(ns, ip, 1).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(anyhow!("{ip} unreachable from {}", ns.name()))
}

fn iperf(
    client: &Netns,
    server: &Netns,
    ip: Ipv4Addr,
    port: u16,
    secs: u64,
    udp: bool,
) -> Result<serde_json::Value> {
    let udp_args: &[&str] = if udp {
        &["-u", "-l", "64", "-b", "0"]
    } else {
        &[]
    };
    iperf_args(client, server, ip, port, secs, udp_args)
}

/// One iperf3 run (`-J`) from `client` to a one-shot server in `server` on `port`, with
/// `extra` client arguments (`-P 8`, `-u ...`); the JSON report.
pub(crate) fn iperf_args(
    client: &Netns,
    server: &Netns,
    ip: Ipv4Addr,
    port: u16,
    secs: u64,
    extra: &[&str],
) -> Result<serde_json::Value> {
    let port_s = port.to_string();
    let _srv = server.spawn(&["iperf3", "-s", "-1", "-p", &port_s])?;
    std::thread::sleep(Duration::from_millis(300));
    let t = secs.to_string();
    let ip_s = ip.to_string();
    let mut args = vec!["iperf3", "-c", &ip_s, "-p", &port_s, "-t", &t, "-J"];
    args.extend(extra);
    let out = client.exec_timeout(&args, Duration::from_secs(secs + 20))?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 output: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn measure(client: &Netns, server: &Netns, ip: Ipv4Addr, secs: u64) -> Result<Figures> {
    let tcp = iperf(client, server, ip, 47190, secs, false)?;
    let gbps = tcp["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("no TCP result: {tcp}"))?
        / 1e9;
    let udp = iperf(client, server, ip, 47191, secs, true)?;
    let sum = &udp["end"]["sum"];
    let packets = sum["packets"].as_f64().unwrap_or(0.0);
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let seconds = sum["seconds"].as_f64().unwrap_or(secs as f64).max(0.001);
    Ok(Figures {
        gbps,
        kpps: (packets - lost) / seconds / 1e3,
    })
}
