//! `cargo xtask bench services`: a new-connection workload to N services, N = 1, 1,000,
//! 10,000, through the node in one run, with the forwarding bench's generator and sink
//! (trafgen in the router netns with the LD_PRELOAD shim; XDP_DROP on the pods' interfaces,
//! their rx counters summed):
//! - kernel: IP forwarding with kube-proxy's iptables-mode `nat` table loaded by
//!   `iptables-restore` (iptables-nft) in the node namespace: PREROUTING/OUTPUT jump to
//!   KUBE-SERVICES, which holds per service a cluster IP rule (to KUBE-SVC-*) and an external
//!   IP rule (to KUBE-EXT-*, then KUBE-SVL-* for externalTrafficPolicy=Local); KUBE-SVC-* and
//!   KUBE-SVL-* pick one of 3 KUBE-SEP-* chains with `-m statistic --mode random
//!   --probability`, each doing the DNAT; plus KUBE-MARK-MASQ / KUBE-POSTROUTING / the
//!   KUBE-NODEPORTS tail rule, as kube-proxy writes them;
//! - ferroplane: the real agent (XDP steering of the service addresses, AF_XDP, the engine's
//!   `ip4-nat`) with the same N services in its spec (`services:` + `endpointSlices:`).
//!
//! Every service is a ClusterIP service with one external IP (198.18.0.0/15) and
//! `externalTrafficPolicy: Local`, and the same 3 endpoints on this node (pod0..pod2, UDP 9).
//! The client is the router, outside the cluster, so it sends to the external IPs (a ClusterIP
//! is only answered from inside the cluster by ferroplane, as by Kubernetes; kube-proxy's
//! iptables would DNAT it from anywhere). externalTrafficPolicy=Local keeps both paths at
//! DNAT only (kube-proxy masquerades external traffic with Cluster, ferroplane only when the
//! backend is on another node).
//!
//! Each packet is a new flow: 60-byte UDP frames whose destination cycles over the N external
//! IPs (port 80) and whose source address (172.16+r.x.y, r = the run) and source port
//! (1025..65535) are both incremented, so no 5-tuple repeats within the run or across runs.
//! Both paths therefore create one conntrack entry and one NAT binding per packet.
//!
//! Tables: the kernel's conntrack limit is `nf_conntrack_max` (262,144 here, read-only inside a
//! namespace); once full it early-drops unreplied entries to admit new ones. ferroplane's
//! session table refuses new flows when full (no eviction), so its `conntrackMax` is raised
//! above what one run can create and the agent is restarted (empty table) for every run.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferroplane_e2e::bench::{self, median, BenchTools, Endpoint, RunConfig};
use ferroplane_e2e::{link_veth, TempDir, Topology};

use crate::load::build_binaries;
use crate::progress::{require_root, Progress};

/// Services (and long flows, one per service) of the established-flow workload.
const ESTABLISHED_SERVICES: usize = 10_000;
/// Service counts measured.
const COUNTS: [usize; 3] = [1, 1_000, 10_000];
/// Endpoints per service (pod0, pod1, pod2).
const ENDPOINTS: usize = 3;
/// The services' port (UDP).
const SVC_PORT: u16 = 80;
/// The endpoints' port (UDP).
const TARGET_PORT: u16 = 9;
/// Where the cluster IPs are allocated: service `i` is this + 1 + `i`.
const VIP_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
/// Where the external IPs are allocated: service `i` is this + 1 + `i`.
const EXT_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// The external IP range the router sends through the node.
const EXT_CIDR: &str = "198.18.0.0/15";
/// The cluster's pod CIDR as kube-proxy's `--cluster-cidr` (pod traffic to external IPs).
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Host-side veth names of the kernel path's pod plumbing: `fpksvc<i>`.
const KERNEL_POD_IF: &str = "fpksvc";

/// The cluster IP of service `i`.
fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(VIP_BASE) + 1 + i as u32)
}

/// The external IP of service `i`.
fn ext_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(EXT_BASE) + 1 + i as u32)
}

/// A kube-proxy style chain suffix: 16 base32 characters of a hash of `key` (kube-proxy hashes
/// the service port name with SHA-256; any stable hash gives the same rule layout).
fn chain_suffix(key: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |salt: u8| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes().chain(std::iter::once(salt)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let (a, b) = (fnv(0), fnv(1));
    // 80 bits: all of `a`, the low 16 of `b`.
    let bits = (u128::from(a) << 16) | u128::from(b & 0xffff);
    (0..16)
        .map(|i| char::from(ALPHABET[((bits >> (75 - 5 * i)) & 0x1f) as usize]))
        .collect()
}

/// `iptables-restore` input for the `nat` table: `n` services (UDP 80, a cluster IP and an
/// external IP, externalTrafficPolicy=Local) with the endpoints `pods` (UDP 9, all local),
/// laid out the way kube-proxy's iptables mode writes them.
fn iptables_rules(n: usize, pods: &[Ipv4Addr]) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    // One service's endpoint-choice chain (KUBE-SVC-* or KUBE-SVL-*): statistic jumps.
    let pick = |rules: &mut String, chain: &str, svc: &str, seps: &[(String, String)]| {
        for (k, (sep, ep)) in seps.iter().enumerate() {
            let left = seps.len() - k;
            if left > 1 {
                let _ = writeln!(
                    rules,
                    "-A {chain} -m comment --comment \"{svc} -> {ep}\" -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / left as f64
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {chain} -m comment --comment \"{svc} -> {ep}\" -j {sep}"
                );
            }
        }
    };
    for i in 0..n {
        let svc = format!("default/svc-{i}:p");
        let id = |kind: &str, extra: &str| {
            format!("KUBE-{kind}-{}", chain_suffix(&format!("{svc}/udp{extra}")))
        };
        let (svc_chain, ext_chain, svl_chain) = (id("SVC", ""), id("EXT", ""), id("SVL", ""));
        for c in [&svc_chain, &ext_chain, &svl_chain] {
            let _ = writeln!(chains, ":{c} - [0:0]");
        }
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p udp -m comment --comment \"{svc} cluster IP\" -m udp --dport {SVC_PORT} -j {svc_chain}",
            vip(i)
        );
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p udp -m comment --comment \"{svc} external IP\" -m udp --dport {SVC_PORT} -j {ext_chain}",
            ext_ip(i)
        );
        let _ = writeln!(
            rules,
            "-A {ext_chain} -s {CLUSTER_CIDR} -m comment --comment \"pod traffic for {svc} external destinations\" -j {svc_chain}\n\
             -A {ext_chain} -m comment --comment \"masquerade LOCAL traffic for {svc} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ\n\
             -A {ext_chain} -m comment --comment \"route LOCAL traffic for {svc} external destinations\" -m addrtype --src-type LOCAL -j {svc_chain}\n\
             -A {ext_chain} -j {svl_chain}"
        );
        let seps: Vec<(String, String)> = pods
            .iter()
            .map(|pod| {
                let ep = format!("{pod}:{TARGET_PORT}");
                (id("SEP", &format!("/{ep}")), ep)
            })
            .collect();
        pick(&mut rules, &svc_chain, &svc, &seps);
        pick(&mut rules, &svl_chain, &svc, &seps);
        for (sep, ep) in &seps {
            let pod = ep.split(':').next().unwrap_or_default();
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let _ = writeln!(
                rules,
                "-A {sep} -s {pod}/32 -m comment --comment \"{svc}\" -j KUBE-MARK-MASQ\n\
                 -A {sep} -p udp -m comment --comment \"{svc}\" -m udp -j DNAT --to-destination {ep}"
            );
        }
    }
    let mut s = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n",
    );
    s.push_str(&chains);
    s.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    s.push_str(&rules);
    s.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         COMMIT\n",
    );
    s
}

/// The agent spec's `serviceProxy:`, `services:` and `endpointSlices:` for the same `n`
/// services.
fn services_yaml(n: usize, pods: &[Ipv4Addr], conntrack_max: usize) -> String {
    let mut s = format!("serviceProxy:\n  conntrackMax: {conntrack_max}\nservices:\n");
    for i in 0..n {
        let _ = writeln!(
            s,
            "  - metadata: {{ name: svc-{i}, namespace: default }}\n    spec: {{ clusterIP: {}, externalIPs: [{}], externalTrafficPolicy: Local, ports: [ {{ name: p, protocol: UDP, port: {SVC_PORT}, targetPort: {TARGET_PORT} }} ] }}",
            vip(i),
            ext_ip(i)
        );
    }
    s.push_str("endpointSlices:\n");
    for i in 0..n {
        let _ = writeln!(
            s,
            "  - metadata: {{ name: svc-{i}-a, namespace: default, labels: {{ kubernetes.io/service-name: svc-{i} }} }}\n    addressType: IPv4\n    ports: [ {{ name: p, protocol: UDP, port: {TARGET_PORT} }} ]\n    endpoints:"
        );
        for (k, pod) in pods.iter().enumerate() {
            let _ = writeln!(
                s,
                "      - {{ addresses: [{pod}], conditions: {{ ready: true, serving: true, terminating: false }}, nodeName: node-1, targetRef: {{ kind: Pod, namespace: default, name: pod{k} }} }}"
            );
        }
    }
    s
}

/// trafgen's packet for run `run` against `n` services: every packet a new flow (source
/// address and port incremented, destination cycling over the external IPs).
#[cfg(test)]
fn trafgen_conf(dst_mac: &str, src_mac: &str, n: usize, run: usize) -> String {
    trafgen_conf_for(Workload::NewFlows, dst_mac, src_mac, n, run)
}

/// What the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// Every packet a new flow (see the module docs).
    NewFlows,
    /// One long flow per service: from 172.31.0.1, source port 1025 + i to external IP i, both
    /// incremented per packet with the same period N, so the same N 5-tuples repeat for the
    /// whole run and every packet after the warm-up belongs to an established flow (a
    /// conntrack / session hit, no new NAT decision). Distinct source ports keep the N flows
    /// distinct after DNAT to the same 3 endpoints (one source port for all would make their
    /// translated tuples clash and force source-port rewriting).
    Established,
}

/// trafgen's packet for `workload`.
fn trafgen_conf_for(
    workload: Workload,
    dst_mac: &str,
    src_mac: &str,
    n: usize,
    run: usize,
) -> String {
    // trafgen refuses dinc(min, max) with min == max: one service is a fixed address.
    let daddr = if n > 1 {
        format!("daddr={EXT_BASE}, daddr[2:2]=dinc(1, {n})")
    } else {
        format!("daddr={}", ext_ip(0))
    };
    match workload {
        Workload::NewFlows => format!(
            "{{ eth(da={dst_mac}, sa={src_mac}), ipv4(saddr=172.{}.0.0, saddr[2:2]=dinc(0, 65535), {daddr}, ttl=64), udp(sp=dinc(1025, 65535), dp={SVC_PORT}), fill(0x41,18) }}\n",
            16 + (run % 16)
        ),
        Workload::Established => format!(
            "{{ eth(da={dst_mac}, sa={src_mac}), ipv4(saddr=172.31.0.1, {daddr}, ttl=64), udp(sp={}, dp={SVC_PORT}), fill(0x41,18) }}\n",
            if n > 1 {
                format!("dinc(1025, {})", 1024 + n.min(64_511))
            } else {
                "1025".to_string()
            }
        ),
    }
}

/// The session-table limit that one run cannot fill: the generator's ceiling (≈ 1.1 Mpps,
/// RECIPES.md) with margin, times the run's length.
fn conntrack_max(cfg: &RunConfig) -> usize {
    let secs = (cfg.warmup + cfg.duration).as_secs_f64() + 1.0;
    ((secs * 1.5e6) as usize).next_power_of_two()
}

/// The sinks: each pod's interface.
fn sinks(topo: &Topology) -> Vec<Endpoint<'_>> {
    topo.pods
        .iter()
        .map(|p| Endpoint {
            ns: &p.ns,
            ifname: Topology::POD_IF,
        })
        .collect()
}

fn gen(topo: &Topology) -> Endpoint<'_> {
    Endpoint {
        ns: &topo.router,
        ifname: Topology::ROUTER_IF,
    }
}

/// The kernel path's plumbing (pods on veths with /32 routes and permanent neighbours, the
/// nat table, forwarding on); undone on drop.
struct KernelPath<'a> {
    topo: &'a Topology,
    links: Vec<String>,
}

impl<'a> KernelPath<'a> {
    fn new(topo: &'a Topology, tools: &BenchTools, n: usize) -> Result<KernelPath<'a>> {
        let mut path = KernelPath {
            topo,
            links: Vec::new(),
        };
        for (i, pod) in topo.pods.iter().enumerate() {
            // The agent's pod interface may outlive the agent: the kernel plumbs its own.
            let _ = pod.ns.ip(&["link", "del", Topology::POD_IF]);
            let host_if = format!("{KERNEL_POD_IF}{i}");
            link_veth(&topo.node, &host_if, &pod.ns, Topology::POD_IF)?;
            path.links.push(host_if.clone());
            let ip = pod.ip.to_string();
            pod.ns
                .add_addr(Topology::POD_IF, &format!("{ip}/32"))
                .context("pod address")?;
            topo.node.add_route_dev(&format!("{ip}/32"), &host_if)?;
            let mac = pod.ns.mac(Topology::POD_IF)?;
            topo.node.add_neigh(&ip, &mac, &host_if)?;
            bench::attach_xdp_drop(&pod.ns, Topology::POD_IF, &tools.xdp_drop)?;
        }
        let pods: Vec<Ipv4Addr> = topo.pods.iter().map(|p| p.ip).collect();
        let rules = topo.dir().join("kube-proxy.rules");
        std::fs::write(&rules, iptables_rules(n, &pods)).context("writing the nat rules")?;
        topo.node
            .exec_timeout(
                &["iptables-restore", &rules.to_string_lossy()],
                Duration::from_secs(300),
            )
            .map_err(anyhow::Error::from)
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(anyhow!(
                        "iptables-restore failed: {}",
                        String::from_utf8_lossy(&o.stderr)
                    ))
                }
            })?;
        topo.node.set_sysctl("net.ipv4.ip_forward", "1")?;
        Ok(path)
    }
}

impl Drop for KernelPath<'_> {
    fn drop(&mut self) {
        let node = &self.topo.node;
        for l in self.links.drain(..) {
            let _ = node.ip(&["link", "del", &l]);
        }
        let _ = node.exec(&["iptables", "-t", "nat", "-F"]);
        let _ = node.exec(&["iptables", "-t", "nat", "-X"]);
        // The node keeps ip_forward=1, as every emulated (and Kubernetes) node.
    }
}

/// Kernel path with `n` services: `cfg.runs` windows, packets per second each.
fn kernel(
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    n: usize,
    run_no: &mut usize,
) -> Result<Vec<f64>> {
    kernel_for(Workload::NewFlows, topo, tools, cfg, n, run_no)
}

/// Kernel path with `n` services under `workload`.
fn kernel_for(
    workload: Workload,
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    n: usize,
    run_no: &mut usize,
) -> Result<Vec<f64>> {
    let t0 = Instant::now();
    let _path = KernelPath::new(topo, tools, n)?;
    println!(
        "  kernel: {n} service(s) loaded with iptables-restore in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let dst_mac = topo.node.mac(Topology::UPLINK_IF)?;
    let src_mac = topo.router.mac(Topology::ROUTER_IF)?;
    let sinks = sinks(topo);
    let mut rates = Vec::with_capacity(cfg.runs);
    for _ in 0..cfg.runs {
        let conf = trafgen_conf_for(workload, &dst_mac, &src_mac, n, *run_no);
        *run_no += 1;
        rates.push(bench::measure_pps_conf(
            tools,
            topo.dir(),
            gen(topo),
            &conf,
            &sinks,
            cfg,
        )?);
    }
    Ok(rates)
}

/// ferroplane with `n` services: per run, a fresh agent (empty session table), its service
/// table checked, XDP_DROP on the pods it plumbed, one window.
fn ferroplane(
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    n: usize,
    run_no: &mut usize,
) -> Result<Vec<f64>> {
    ferroplane_for(Workload::NewFlows, &[], topo, tools, cfg, n, run_no)
}

/// ferroplane with `n` services under `workload`, the agent started with `agent_args`.
fn ferroplane_for(
    workload: Workload,
    agent_args: &[&str],
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    n: usize,
    run_no: &mut usize,
) -> Result<Vec<f64>> {
    let pods: Vec<Ipv4Addr> = topo.pods.iter().map(|p| p.ip).collect();
    topo.write_spec(&format!(
        "{}{}",
        topo.spec_yaml(),
        services_yaml(n, &pods, conntrack_max(cfg))
    ))?;
    // As on a Kubernetes node: the kernel may forward; XDP hands it none of this traffic.
    topo.node.set_sysctl("net.ipv4.ip_forward", "1")?;
    let dst_mac = topo.node.mac(Topology::UPLINK_IF)?;
    let src_mac = topo.router.mac(Topology::ROUTER_IF)?;
    let mut rates = Vec::with_capacity(cfg.runs);
    for _ in 0..cfg.runs {
        let t0 = Instant::now();
        let agent = topo.start_agent_with(&ferroplane_e2e::bin_dir(), agent_args)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let shown = agent
                .ctl_json(&["show", "services"])
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(0);
            if shown == n {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent shows {shown} of {n} services after 60 s:\n{}",
                    agent.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if rates.is_empty() {
            println!(
                "  ferroplane: agent started with {n} service(s) serving in {:.2} s",
                t0.elapsed().as_secs_f64()
            );
        }
        for pod in &topo.pods {
            // A restarted agent reuses the pod interface, with the previous run's sink on it.
            let _ = pod
                .ns
                .ip(&["link", "set", "dev", Topology::POD_IF, "xdpdrv", "off"]);
            bench::attach_xdp_drop(&pod.ns, Topology::POD_IF, &tools.xdp_drop)?;
        }
        let conf = trafgen_conf_for(workload, &dst_mac, &src_mac, n, *run_no);
        *run_no += 1;
        let r = bench::measure_pps_conf(tools, topo.dir(), gen(topo), &conf, &sinks(topo), cfg);
        let full = agent
            .ctl_json(&["show", "sessions", "--limit", "1"])
            .ok()
            .and_then(|v| v["full"].as_u64())
            .unwrap_or(0);
        if r.is_err() {
            eprintln!("agent log (last 30 lines):\n{}", agent.log_tail(30));
        }
        println!("  engine errors: {}", engine_errors(&agent));
        if workload == Workload::Established {
            println!("  {}", xdp_verdicts(&agent));
        }
        agent.stop();
        let r = r?;
        if full > 0 {
            println!("  warning: {full} new flows refused by a full session table");
        }
        rates.push(r);
    }
    Ok(rates)
}

/// `show xdp`'s verdicts: packets redirected to the engine and forwarded by the fast path.
fn xdp_verdicts(agent: &ferroplane_e2e::AgentGuard) -> String {
    let Ok(x) = agent.ctl_json(&["show", "xdp"]) else {
        return "(ferroctl show xdp failed)".into();
    };
    let count = |name: &str| {
        x["verdicts"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .and_then(|c| c["count"].as_u64())
            .unwrap_or(0)
    };
    format!(
        "XDP verdicts: redirect (to the engine) {}, fast_path {}",
        count("redirect"),
        count("fast_path")
    )
}

/// The engine's non-zero error counters (`node: reason count`), largest first.
fn engine_errors(agent: &ferroplane_e2e::AgentGuard) -> String {
    let Ok(v) = agent.ctl_json(&["show", "errors"]) else {
        return "(ferroctl show errors failed)".into();
    };
    let mut rows: Vec<(u64, String)> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let count = e["count"].as_u64().filter(|c| *c > 0)?;
                    Some((
                        count,
                        format!(
                            "{}: {} {count}",
                            e["node"].as_str().unwrap_or("?"),
                            e["reason"].as_str().unwrap_or("?")
                        ),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    rows.into_iter()
        .take(6)
        .map(|r| r.1)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `cargo xtask bench services`.
pub fn run(runs: usize, secs: u64) -> Result<()> {
    require_root("bench services")?;
    if runs == 0 || secs == 0 {
        bail!("--runs and --secs must be at least 1");
    }
    let cfg = RunConfig {
        runs,
        duration: Duration::from_secs(secs),
        warmup: Duration::from_secs(1),
    };
    let mut p = Progress::new(5 + COUNTS.len());
    p.step("system packages", crate::deps::ensure)?;
    if let Some(dir) = std::env::var_os("FERROPLANE_BIN_DIR") {
        // Prebuilt binaries (e.g. a tree mid-edit elsewhere): ferroplane_e2e::bin_dir() uses them.
        p.step(
            &format!(
                "using the prebuilt agent and ferroctl in {} (FERROPLANE_BIN_DIR)",
                std::path::Path::new(&dir).display()
            ),
            || Ok(()),
        )?;
    } else {
        p.step(
            "building release binaries (agent, ferroctl, BPF objects)",
            build_binaries,
        )?;
    }
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
        "creating router (generator), node and pod0..pod2 (endpoints, sinks) namespaces",
        || {
            let topo = Topology::single_node(ENDPOINTS)?;
            topo.router
                .add_route(EXT_CIDR, &Topology::NODE_IP.to_string())?;
            Ok(topo)
        },
    )?;
    let mut run_no = 0usize;
    let mut results = Vec::new();
    for n in COUNTS {
        let r = p.step(
            &format!(
                "{n} service(s) x {ENDPOINTS} endpoints: kernel iptables-nft (kube-proxy layout), then ferroplane, {runs} x {secs} s each"
            ),
            || {
                let k = kernel(&topo, &tools, &cfg, n, &mut run_no)?;
                println!("  kernel (Mpps): {}", crate::bench::fmt_rates(&k));
                let f = ferroplane(&topo, &tools, &cfg, n, &mut run_no)?;
                println!("  ferroplane (Mpps): {}", crate::bench::fmt_rates(&f));
                Ok((median(&k), median(&f)))
            },
        )?;
        results.push((n, r.0, r.1));
    }
    let n = ESTABLISHED_SERVICES;
    let est = p.step(
        &format!(
            "established flows ({n} long flows, one per service): kernel iptables-nft, ferroplane fast path off, on; {runs} x {secs} s each"
        ),
        || {
            let k = kernel_for(Workload::Established, &topo, &tools, &cfg, n, &mut run_no)?;
            println!("  kernel (Mpps): {}", crate::bench::fmt_rates(&k));
            let mut rows = vec![("kernel iptables-nft".to_string(), median(&k))];
            for fast in ["off", "on"] {
                let f = ferroplane_for(
                    Workload::Established,
                    &["--fast-path", fast],
                    &topo,
                    &tools,
                    &cfg,
                    n,
                    &mut run_no,
                )?;
                println!(
                    "  ferroplane, fast path {fast} (Mpps): {}",
                    crate::bench::fmt_rates(&f)
                );
                rows.push((format!("ferroplane, fast path {fast}"), median(&f)));
            }
            Ok(rows)
        },
    )?;
    println!(
        "{}",
        crate::bench::scaling_report(
            &format!("services (external IP, eTP=Local), new connection per packet (UDP, {ENDPOINTS} endpoints each), medians of {runs} x {secs} s"),
            "services",
            &results
        )
    );
    println!(
        "{}",
        established_report(
            &format!("services (external IP, eTP=Local), established flows: {n} long UDP flows, one per service ({ENDPOINTS} endpoints each), medians of {runs} x {secs} s"),
            &est
        )
    );
    Ok(())
}

/// The established-flow table: Mpps per path and its ratio to the first (the kernel) row.
fn established_report(title: &str, rows: &[(String, f64)]) -> String {
    let mut s = format!("\n=== {title} ===\n");
    let _ = writeln!(s, "{:<26} {:>8} {:>10}", "path", "Mpps", "vs kernel");
    let k = rows.first().map_or(0.0, |r| r.1);
    for (label, pps) in rows {
        let ratio = if k > 0.0 { pps / k } else { f64::NAN };
        let _ = writeln!(s, "{label:<26} {:>8.3} {ratio:>9.2}x", pps / 1e6);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<Ipv4Addr> {
        (10..13).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect()
    }

    #[test]
    fn rules_follow_the_kube_proxy_layout() {
        let r = iptables_rules(2, &pods());
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"), "{r}");
        assert_eq!(r.matches("-A KUBE-SERVICES -d ").count(), 4);
        assert_eq!(r.matches(":KUBE-SVC-").count(), 2);
        assert_eq!(r.matches(":KUBE-EXT-").count(), 2);
        assert_eq!(r.matches(":KUBE-SVL-").count(), 2);
        assert_eq!(r.matches(":KUBE-SEP-").count(), 6);
        assert_eq!(r.matches("-j DNAT --to-destination").count(), 6);
        assert!(r.contains("-d 10.96.0.1/32 -p udp"), "{r}");
        assert!(r.contains("-d 198.18.0.2/32 -p udp"), "{r}");
        assert_eq!(r.matches("--probability 0.3333333333 ").count(), 4, "{r}");
        assert_eq!(r.matches("--probability 0.5000000000 ").count(), 4, "{r}");
        assert!(r.contains("DNAT --to-destination 10.244.1.12:9"), "{r}");
        // The external IP goes to the local-endpoints chain, the cluster IP to all endpoints.
        let ext_line = r
            .lines()
            .find(|l| l.contains("-d 198.18.0.1/32"))
            .unwrap_or("");
        let ext = ext_line.rsplit(' ').next().unwrap_or("");
        assert!(ext.starts_with("KUBE-EXT-"), "{ext_line}");
        let last_ext_rule = r
            .lines()
            .rfind(|l| l.starts_with(&format!("-A {ext} ")))
            .unwrap_or("");
        assert!(last_ext_rule.contains("-j KUBE-SVL-"), "{last_ext_rule}");
        // The NodePorts jump is the last rule of KUBE-SERVICES.
        let last = r.lines().rev().nth(1).unwrap_or("");
        assert!(last.contains("-j KUBE-NODEPORTS"), "{last}");
        // Every chain jumped to is declared once, names fit iptables' 28 characters.
        let declared: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with(':'))
            .map(|l| l[1..].split(' ').next().unwrap_or(""))
            .collect();
        let mut unique = declared.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), declared.len(), "a chain declared twice");
        assert!(declared.iter().all(|n| n.len() <= 28));
        for line in r.lines().filter(|l| l.starts_with("-A ")) {
            if let Some(target) = line.split(" -j ").nth(1) {
                let t = target.split(' ').next().unwrap_or("");
                if t.starts_with("KUBE-") {
                    assert!(declared.contains(&t), "{t} undeclared");
                }
            }
        }
    }

    #[test]
    fn chain_names_are_distinct() {
        let mut names: Vec<String> = (0..10_000)
            .map(|i| chain_suffix(&format!("default/svc-{i}:p/udp")))
            .collect();
        assert!(names.iter().all(|n| n.len() == 16));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn spec_and_generator_agree_on_the_vips() {
        let y = services_yaml(3, &pods(), 1 << 22);
        assert!(y.contains("conntrackMax: 4194304"));
        assert_eq!(y.matches("clusterIP: ").count(), 3);
        assert!(y.contains("clusterIP: 10.96.0.3,"), "{y}");
        assert!(
            y.contains("externalIPs: [198.18.0.3], externalTrafficPolicy: Local"),
            "{y}"
        );
        assert_eq!(y.matches("addresses: [").count(), 9);
        assert!(y.contains("kubernetes.io/service-name: svc-2 "), "{y}");
        let c = trafgen_conf("02:00:00:00:00:02", "02:00:00:00:00:01", 3, 1);
        assert!(c.contains("daddr=198.18.0.0, daddr[2:2]=dinc(1, 3)"), "{c}");
        assert!(c.contains("saddr=172.17.0.0"), "{c}");
        let one = trafgen_conf("02:00:00:00:00:02", "02:00:00:00:00:01", 1, 0);
        assert!(one.contains("daddr=198.18.0.1, ttl"), "{one}");
        assert_eq!(vip(9_999), Ipv4Addr::new(10, 96, 39, 16));
        assert_eq!(ext_ip(9_999), Ipv4Addr::new(198, 18, 39, 16));
    }

    #[test]
    fn established_workload_repeats_one_flow_per_service() {
        let c = trafgen_conf_for(
            Workload::Established,
            "02:00:00:00:00:02",
            "02:00:00:00:00:01",
            10_000,
            3,
        );
        assert!(c.contains("saddr=172.31.0.1,"), "{c}");
        assert!(c.contains("daddr[2:2]=dinc(1, 10000)"), "{c}");
        assert!(c.contains("udp(sp=dinc(1025, 11024), dp=80)"), "{c}");
        let t = established_report(
            "t",
            &[("kernel".into(), 0.5e6), ("ferroplane".into(), 0.8e6)],
        );
        assert!(t.contains("1.60x"), "{t}");
        assert!(t.contains("1.00x"), "{t}");
    }

    #[test]
    fn conntrack_limit_covers_a_run() {
        let cfg = RunConfig {
            runs: 1,
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
        };
        assert!(conntrack_max(&cfg) >= 5 * 1_100_000);
    }
}
