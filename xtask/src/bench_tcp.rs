//! `cargo xtask bench tcp`: TCP throughput and round-trip latency, pod → pod, kernel
//! routing against ferroplane on the same namespaces in the same run (issue 17).
//!
//! Scenarios:
//! - one node (`Topology::single_node(2)`, pod0 → pod1): the kernel path wires the same pod
//!   namespaces with plain veths, /32 routes and proxy ARP (Calico's layout) and a
//!   kube-proxy-style `iptables` DNAT for the ClusterIP; ferroplane runs with
//!   `--fast-path off` and `--fast-path on` (separate rows), the ClusterIP in its spec;
//! - two nodes, direct mode (`Cluster::new(2, 1, Direct)`, pod on node 1 → pod on node 2):
//!   kernel IP forwarding and routes (`bench_overlay`'s plumbing) against ferroplane with
//!   `--fast-path off` and `--fast-path on`.
//!
//! Figures per row: iperf3 TCP with 1 and with 8 streams (Gbit/s received), and 1-byte
//! request/response round trips on one TCP connection (our own client/server, `TCP_NODELAY`,
//! [`RR_WARMUP`] unmeasured then [`RR_ROUNDS`] measured): p50/p99 in µs, pod → pod and (one
//! node) pod → ClusterIP. Ratios are against the kernel row of the same scenario (throughput:
//! ferroplane/kernel, higher is better; latency: ferroplane/kernel, lower is better).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferroplane_e2e::cluster::{Cluster, OverlayMode};
use ferroplane_e2e::{link_veth, Netns, Topology};

use crate::bench_overlay::{iperf_args, kernel_plumb, warm};
use crate::load::build_binaries;
use crate::progress::{require_root, Progress};

/// Round trips measured per connection.
const RR_ROUNDS: usize = 2_000;
/// Round trips before measuring (handshake, first packets through the engine, cache fill).
const RR_WARMUP: usize = 200;
/// The request/response server's port in the pod.
const RR_PORT: u16 = 47_300;
/// The ClusterIP of the one-node scenario's service (port [`SVC_PORT`] → pod1:[`RR_PORT`]).
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The service's port.
const SVC_PORT: u16 = 80;
/// iperf3 server ports (one-shot servers: one port per run).
const IPERF_PORT: u16 = 47_310;
/// Host-side veth names of the kernel path's one-node plumbing: `fpktcp<i>`.
const KERNEL_POD_IF: &str = "fpktcp";
/// The pods' gateway on the kernel path (answered by proxy ARP on the host veth).
const KERNEL_GW: &str = "169.254.1.1";

/// One row's figures (each may have failed on its own).
#[derive(Debug, Default)]
struct Figures {
    gbps1: Option<f64>,
    gbps8: Option<f64>,
    /// Pod → pod round trip (p50, p99), µs.
    rr: Option<(f64, f64)>,
    /// Pod → ClusterIP round trip (p50, p99), µs.
    svc: Option<(f64, f64)>,
    errors: Vec<String>,
}

/// One table row.
struct Row {
    scenario: &'static str,
    datapath: String,
    kernel: bool,
    figures: Result<Figures>,
}

/// `cargo xtask bench tcp`.
pub fn run(secs: u64) -> Result<()> {
    require_root("bench tcp")?;
    let secs = secs.max(1);
    let mut p = Progress::new(9);
    p.step("system packages", crate::deps::ensure)?;
    p.step("building release binaries", build_binaries)?;
    let mut rows = Vec::new();
    let topo = p.step("one node: pod0, pod1 namespaces", || {
        Ok(Topology::single_node(2)?)
    })?;
    let k = p.step("one node: kernel routing + iptables DNAT", || {
        Ok(one_node_kernel(&topo, secs))
    })?;
    rows.push(row("one node", "kernel".into(), true, k));
    for fast in [false, true] {
        let name = format!("ferroplane, fast path {}", if fast { "on" } else { "off" });
        let f = p.step(&format!("one node: {name}"), || {
            Ok(one_node_ferroplane(&topo, fast, secs))
        })?;
        rows.push(row("one node", name, false, f));
    }
    drop(topo);
    let k = p.step("2 nodes, direct: kernel routing", || {
        Ok(two_nodes_kernel(secs))
    })?;
    rows.push(row("2 nodes direct", "kernel".into(), true, k));
    for fast in [false, true] {
        let name = format!("ferroplane, fast path {}", if fast { "on" } else { "off" });
        let f = p.step(&format!("2 nodes, direct: {name}"), || {
            Ok(two_nodes_ferroplane(fast, secs))
        })?;
        rows.push(row("2 nodes direct", name, false, f));
    }
    println!(
        "\n=== TCP, pod -> pod: iperf3 {secs} s (1 and 8 streams), 1-byte request/response ({RR_ROUNDS} round trips, one connection); ratio = ferroplane/kernel of the same scenario ===\n{}",
        table(&rows)
    );
    if rows.iter().any(|r| r.figures.is_err()) {
        bail!("a measurement failed (see above)");
    }
    Ok(())
}

fn row(scenario: &'static str, datapath: String, kernel: bool, figures: Result<Figures>) -> Row {
    if let Ok(f) = &figures {
        for e in &f.errors {
            println!("  failed: {e}");
        }
    }
    Row {
        scenario,
        datapath,
        kernel,
        figures,
    }
}

/// The table: per row each figure and its ratio to the same scenario's kernel row.
fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<15} {:<26} {:>16} {:>16} {:>26} {:>26}",
        "scenario",
        "datapath",
        "1 stream Gb/s",
        "8 streams Gb/s",
        "pod RR p50/p99 us",
        "ClusterIP RR p50/p99 us"
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.kernel && b.scenario == r.scenario)
            .and_then(|b| b.figures.as_ref().ok());
        let f = match &r.figures {
            Ok(f) => f,
            Err(e) => {
                let _ = writeln!(
                    s,
                    "{:<15} {:<26} failed: {}",
                    r.scenario,
                    r.datapath,
                    format!("{e:#}").replace('\n', " | ")
                );
                continue;
            }
        };
        let ratio = |x: Option<f64>, b: Option<f64>| match (x, b) {
            (Some(x), Some(b)) if !r.kernel && b > 0.0 => format!(" ({:.2}x)", x / b),
            _ => String::new(),
        };
        let gb = |x: Option<f64>, b: Option<f64>| {
            x.map_or("-".to_string(), |x| format!("{x:.2}{}", ratio(Some(x), b)))
        };
        let lat = |x: Option<(f64, f64)>, b: Option<(f64, f64)>| match x {
            None => "-".to_string(),
            Some((p50, p99)) => format!(
                "{p50:.0}{}/{p99:.0}{}",
                ratio(Some(p50), b.map(|b| b.0)),
                ratio(Some(p99), b.map(|b| b.1))
            ),
        };
        let _ = writeln!(
            s,
            "{:<15} {:<26} {:>16} {:>16} {:>26} {:>26}",
            r.scenario,
            r.datapath,
            gb(f.gbps1, base.and_then(|b| b.gbps1)),
            gb(f.gbps8, base.and_then(|b| b.gbps8)),
            lat(f.rr, base.and_then(|b| b.rr)),
            lat(f.svc, base.and_then(|b| b.svc)),
        );
    }
    s
}

/// Every figure between `client` and `server` (and the ClusterIP when `vip` is given).
fn measure(
    client: &Netns,
    server: &Netns,
    ip: Ipv4Addr,
    vip: Option<Ipv4Addr>,
    secs: u64,
) -> Result<Figures> {
    warm(client, ip)?;
    let mut f = Figures::default();
    match throughput(client, server, ip, IPERF_PORT, secs, 1) {
        Ok(g) => f.gbps1 = Some(g),
        Err(e) => f.errors.push(f_err("1 stream", e)),
    }
    match throughput(client, server, ip, IPERF_PORT + 1, secs, 8) {
        Ok(g) => f.gbps8 = Some(g),
        Err(e) => f.errors.push(f_err("8 streams", e)),
    }
    match round_trips(client, server, SocketAddr::from((ip, RR_PORT))) {
        Ok(l) => f.rr = Some(l),
        Err(e) => f.errors.push(f_err("pod RR", e)),
    }
    if let Some(vip) = vip {
        match round_trips(client, server, SocketAddr::from((vip, SVC_PORT))) {
            Ok(l) => f.svc = Some(l),
            Err(e) => f.errors.push(f_err("ClusterIP RR", e)),
        }
    }
    Ok(f)
}

fn f_err(what: &str, e: anyhow::Error) -> String {
    format!("{what}: {e:#}").replace('\n', " | ")
}

/// iperf3 TCP with `streams` parallel streams: Gbit/s received.
fn throughput(
    client: &Netns,
    server: &Netns,
    ip: Ipv4Addr,
    port: u16,
    secs: u64,
    streams: u32,
) -> Result<f64> {
    let n = streams.to_string();
    let j = iperf_args(client, server, ip, port, secs, &["-P", &n])?;
    j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| anyhow!("no TCP result: {j}"))
}

/// 1-byte request/response on one TCP connection from `client` to `dst` (served by
/// `server` on [`RR_PORT`]): (p50, p99) in µs over [`RR_ROUNDS`] round trips.
fn round_trips(client: &Netns, server: &Netns, dst: SocketAddr) -> Result<(f64, f64)> {
    let listener = server.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, RR_PORT)))??;
    std::thread::scope(|s| {
        let srv = s.spawn(move || serve_echo(listener));
        let samples = client.run(|| rr_client(dst))?;
        let served = srv.join().map_err(|_| anyhow!("echo server panicked"))?;
        let samples = samples?;
        served?;
        Ok(percentiles(samples))
    })
}

/// Accepts one connection (10 s at most) and echoes every byte until EOF.
fn serve_echo(listener: TcpListener) -> Result<()> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    bail!("no connection within 10 s");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e).context("accept"),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [0u8; 1];
    loop {
        match conn.read(&mut b).context("server read")? {
            0 => return Ok(()),
            _ => conn.write_all(&b).context("server write")?,
        }
    }
}

/// The client: connect, warm up, then time each round trip (ns).
fn rr_client(dst: SocketAddr) -> Result<Vec<u64>> {
    let mut conn = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
        .with_context(|| format!("connecting to {dst}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut samples = Vec::with_capacity(RR_ROUNDS);
    let mut b = [0u8; 1];
    for i in 0..RR_WARMUP + RR_ROUNDS {
        let t = Instant::now();
        conn.write_all(&[(i % 251) as u8]).context("client write")?;
        conn.read_exact(&mut b).context("client read")?;
        if b[0] != (i % 251) as u8 {
            bail!("round trip {i}: echoed {} instead of {}", b[0], i % 251);
        }
        if i >= RR_WARMUP {
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(samples)
}

/// (p50, p99) in µs of samples in ns.
fn percentiles(mut ns: Vec<u64>) -> (f64, f64) {
    ns.sort_unstable();
    let at = |q: usize| {
        let i = (ns.len() * q / 100).min(ns.len().saturating_sub(1));
        ns.get(i).copied().unwrap_or(0) as f64 / 1e3
    };
    (at(50), at(99))
}

/// One node, kernel: the pods on plain veths with /32 routes, proxy ARP on the host side,
/// and kube-proxy's DNAT for the ClusterIP; undone before returning.
fn one_node_kernel(topo: &Topology, secs: u64) -> Result<Figures> {
    let node = &topo.node;
    let mut links = Vec::new();
    let r = (|| {
        for (i, pod) in topo.pods.iter().enumerate() {
            let _ = pod.ns.ip(&["link", "del", Topology::POD_IF]);
            let host_if = format!("{KERNEL_POD_IF}{i}");
            link_veth(node, &host_if, &pod.ns, Topology::POD_IF)?;
            links.push(host_if.clone());
            let ip = pod.ip.to_string();
            pod.ns.add_addr(Topology::POD_IF, &format!("{ip}/32"))?;
            pod.ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                KERNEL_GW,
                "dev",
                Topology::POD_IF,
                "onlink",
            ])?;
            node.set_sysctl(&format!("net.ipv4.conf.{host_if}.proxy_arp"), "1")?;
            node.add_route_dev(&format!("{ip}/32"), &host_if)?;
        }
        let (a, b) = (&topo.pods[0], &topo.pods[1]);
        node.exec_ok(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            &VIP.to_string(),
            "-p",
            "tcp",
            "--dport",
            &SVC_PORT.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{}:{RR_PORT}", b.ip),
        ])?;
        measure(&a.ns, &b.ns, b.ip, Some(VIP), secs)
    })();
    for l in links {
        let _ = node.ip(&["link", "del", &l]);
    }
    let _ = node.exec(&["iptables", "-t", "nat", "-F"]);
    r
}

/// One node, ferroplane with the fast path `fast`, the ClusterIP in its spec.
fn one_node_ferroplane(topo: &Topology, fast: bool, secs: u64) -> Result<Figures> {
    let b = &topo.pods[1];
    let svc = format!(
        "services:\n  - metadata: {{ name: rr, namespace: default }}\n    spec: {{ clusterIP: {VIP}, ports: [ {{ name: p, protocol: TCP, port: {SVC_PORT}, targetPort: {RR_PORT} }} ] }}\nendpointSlices:\n  - metadata: {{ name: rr-a, namespace: default, labels: {{ kubernetes.io/service-name: rr }} }}\n    addressType: IPv4\n    ports: [ {{ name: p, protocol: TCP, port: {RR_PORT} }} ]\n    endpoints:\n      - {{ addresses: [{}], conditions: {{ ready: true, serving: true, terminating: false }}, nodeName: node-1, targetRef: {{ kind: Pod, namespace: default, name: {} }} }}\n",
        b.ip, b.name
    );
    topo.write_spec(&format!("{}{svc}", topo.spec_yaml()))?;
    let agent = topo.start_agent_with(
        &ferroplane_e2e::bin_dir(),
        &["--fast-path", if fast { "on" } else { "off" }],
    )?;
    let r = measure(&topo.pods[0].ns, &b.ns, b.ip, Some(VIP), secs);
    if r.is_err() {
        println!("  agent log:\n{}", agent.log_tail(20));
    }
    agent.stop();
    r
}

/// Two nodes, direct: kernel forwarding and routes.
fn two_nodes_kernel(secs: u64) -> Result<Figures> {
    let c = Cluster::new(2, 1, OverlayMode::Direct)?;
    let _guards = kernel_plumb(&c, OverlayMode::Direct)?;
    let (a, b) = (&c.nodes[0].pods[0], &c.nodes[1].pods[0]);
    measure(&a.ns, &b.ns, b.ip, None, secs)
}

/// Two nodes, direct: ferroplane with the fast path `fast`.
fn two_nodes_ferroplane(fast: bool, secs: u64) -> Result<Figures> {
    let mut c = Cluster::new(2, 1, OverlayMode::Direct)?;
    c.set_agent_args(&["--fast-path", if fast { "on" } else { "off" }]);
    c.start(&ferroplane_e2e::bin_dir())?;
    let (a, b) = (&c.nodes[0].pods[0], &c.nodes[1].pods[0]);
    measure(&a.ns, &b.ns, b.ip, None, secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_samples() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentiles(v), (51.0, 100.0));
    }

    #[test]
    fn table_ratios_against_the_scenario_kernel() {
        let fig = |g: f64, l: f64| Figures {
            gbps1: Some(g),
            gbps8: Some(3.0 * g),
            rr: Some((l, 2.0 * l)),
            svc: None,
            errors: Vec::new(),
        };
        let rows = vec![
            row("one node", "kernel".into(), true, Ok(fig(10.0, 20.0))),
            row("one node", "ferroplane".into(), false, Ok(fig(5.0, 30.0))),
        ];
        let t = table(&rows);
        assert!(t.contains("5.00 (0.50x)"), "{t}");
        assert!(t.contains("15.00 (0.50x)"), "{t}");
        assert!(t.contains("30 (1.50x)/60 (1.50x)"), "{t}");
        assert!(!t.contains("10.00 ("), "{t}");
    }
}
