//! Human (table) rendering of the API's data.

use ferroplane_api::{
    CountersReport, ErrorCounter, InterfaceInfo, NamedCount, RouteInfo, VersionInfo, XdpReport,
    API_VERSION,
};

use crate::table::{Align, Table};

/// Placeholder for an absent value.
const NONE: &str = "-";

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| NONE.to_string(), |v| v.to_string())
}

/// `show routes ADDR|PREFIX`: the route the engine's FIB uses for an address, as
/// `ip route get` answers: the longest prefix containing it. For a prefix, the longest
/// route covering all of it (the route itself when the FIB has it). `None`: no route.
pub fn lookup_route(routes: Vec<RouteInfo>, what: &str) -> anyhow::Result<Option<RouteInfo>> {
    use std::net::Ipv4Addr;
    let parse_prefix = |s: &str| -> Option<(u32, u8)> {
        let (a, l) = s.split_once('/')?;
        let a: Ipv4Addr = a.parse().ok()?;
        let l: u8 = l.parse().ok().filter(|l| *l <= 32)?;
        Some((u32::from(a), l))
    };
    let mask = |l: u8| {
        if l == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(l))
        }
    };
    let (addr, len) = match what.parse::<Ipv4Addr>() {
        Ok(a) => (u32::from(a), 32),
        Err(_) => parse_prefix(what).ok_or_else(|| {
            anyhow::anyhow!(
                "{what:?} is neither an IPv4 address (10.244.1.7) nor a prefix (10.244.1.0/24)"
            )
        })?,
    };
    Ok(routes
        .into_iter()
        .filter_map(|r| parse_prefix(&r.prefix).map(|p| (p, r)))
        .filter(|((net, l), _)| *l <= len && net & mask(*l) == addr & mask(*l))
        .max_by_key(|((_, l), _)| *l)
        .map(|(_, r)| r))
}

/// `show interfaces`.
pub fn interfaces(ifaces: &[InterfaceInfo]) -> String {
    use Align::{Left, Right};
    let mut t = Table::new(&[
        ("Name", Left),
        ("Idx", Right),
        ("Kind", Left),
        ("State", Left),
        ("Ifindex", Right),
        ("MAC", Left),
        ("IPv4", Left),
        ("MTU", Right),
        ("XDP", Left),
        ("Port", Right),
        ("Rx-pkts", Right),
        ("Rx-bytes", Right),
        ("Tx-pkts", Right),
        ("Tx-bytes", Right),
        ("Drops", Right),
        ("Fast-rx", Right),
        ("Fast-tx", Right),
        ("Pod", Left),
    ]);
    for i in ifaces {
        t.row([
            i.name.clone(),
            i.sw_if_index.to_string(),
            i.kind.to_string(),
            i.state.to_string(),
            i.ifindex.to_string(),
            i.mac.clone(),
            opt(i.ipv4.as_deref()),
            i.mtu.to_string(),
            opt(i.xdp_mode.as_deref()),
            opt(i.port),
            i.rx_packets.to_string(),
            i.rx_bytes.to_string(),
            i.tx_packets.to_string(),
            i.tx_bytes.to_string(),
            i.drops.to_string(),
            i.fast_rx_packets.to_string(),
            i.fast_tx_packets.to_string(),
            opt(i.pod.as_deref()),
        ]);
    }
    let mut out = t.render();
    let multi: Vec<&InterfaceInfo> = ifaces.iter().filter(|i| i.queues.len() > 1).collect();
    if !multi.is_empty() {
        out.push_str("\nAF_XDP sockets of multi-queue interfaces, one per RX queue:\n");
        out.push_str(&queues(&multi));
    }
    out
}

/// The per-queue lines of `show interfaces`: one per AF_XDP socket of each interface.
fn queues(ifaces: &[&InterfaceInfo]) -> String {
    use Align::{Left, Right};
    let mut t = Table::new(&[
        ("Name", Left),
        ("Queue", Right),
        ("Port", Right),
        ("Rx-pkts", Right),
        ("Rx-bytes", Right),
        ("Tx-pkts", Right),
        ("Tx-bytes", Right),
        ("Tx-drops", Right),
        ("Rx-drops", Right),
        ("Fill-empty", Right),
        ("Rx-full", Right),
        ("Fill", Right),
        ("Fill-target", Right),
    ]);
    for i in ifaces {
        for q in &i.queues {
            t.row([
                i.name.clone(),
                q.queue.to_string(),
                q.port.to_string(),
                q.rx_packets.to_string(),
                q.rx_bytes.to_string(),
                q.tx_packets.to_string(),
                q.tx_bytes.to_string(),
                q.tx_drops.to_string(),
                q.rx_drops.to_string(),
                q.rx_fill_ring_empty.to_string(),
                q.rx_ring_full.to_string(),
                q.fill_frames.to_string(),
                q.fill_target.to_string(),
            ]);
        }
    }
    t.render()
}

/// `show routes`: one line per path, prefix and source on the first.
pub fn routes(routes: &[RouteInfo]) -> String {
    use Align::Left;
    let mut t = Table::new(&[
        ("Prefix", Left),
        ("Source", Left),
        ("Via", Left),
        ("Interface", Left),
        ("MAC", Left),
    ]);
    for r in routes {
        if r.paths.is_empty() {
            t.row([r.prefix.clone(), r.source.to_string(), "drop".into()]);
        }
        for (n, p) in r.paths.iter().enumerate() {
            let (prefix, source) = if n == 0 {
                (r.prefix.clone(), r.source.to_string())
            } else {
                (String::new(), String::new())
            };
            t.row([
                prefix,
                source,
                opt(p.via.as_deref()),
                p.interface.clone(),
                opt(p.resolved_mac.as_deref()),
            ]);
        }
    }
    t.render()
}

/// A ratio with two decimals, or in scientific notation when that would
/// hide it (below 0.01) or make it very wide (1e7 and above).
fn ratio(v: f64) -> String {
    if v == 0.0 || (0.01..1e7).contains(&v.abs()) {
        format!("{v:.2}")
    } else {
        format!("{v:.2e}")
    }
}

/// `show counters`, like VPP's `show runtime`.
pub fn counters(report: &CountersReport) -> String {
    use Align::{Left, Right};
    let mut t = Table::new(&[
        ("Name", Left),
        ("Calls", Right),
        ("Vectors", Right),
        ("Packets", Right),
        ("Clocks/pkt", Right),
        ("Vectors/Call", Right),
    ]);
    for n in &report.nodes {
        t.row([
            n.name.clone(),
            n.calls.to_string(),
            n.vectors.to_string(),
            n.packets.to_string(),
            ratio(n.clocks_per_packet),
            ratio(n.vectors_per_call),
        ]);
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    let workers: String = report
        .workers
        .iter()
        .map(|w| {
            let last = w
                .last_io_error
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default();
            format!(
                "Worker {}: {}, heartbeat {} ({:.1} s ago), port errors {}, I/O errors {}{last}\n",
                w.worker, w.state, w.heartbeat, w.heartbeat_age_secs, w.port_errors, w.io_errors
            )
        })
        .collect();
    format!(
        "Workers: {}\n{workers}{}Control commands on the workers: {}, {:.2} ms in all, longest {:.2} ms\n{}",
        report.worker_count,
        per_worker(report),
        report.commands,
        ms(report.command_nanos),
        ms(report.command_max_nanos),
        t.render()
    )
}

/// With several workers, one line of totals per worker (as VPP's per-thread
/// `show runtime`): what it received, sent, handed to the others and took from them.
fn per_worker(report: &CountersReport) -> String {
    use Align::{Left, Right};
    if report.workers.len() < 2 {
        return String::new();
    }
    let mut t = Table::new(&[
        ("Worker", Left),
        ("Ports", Right),
        ("Rx", Right),
        ("Tx", Right),
        ("Handoff-out", Right),
        ("Handoff-in", Right),
        ("Handoff-drops", Right),
        ("Sessions", Right),
        ("Loops", Right),
        ("ns/pkt", Right),
    ]);
    for w in &report.workers {
        let per_pkt = if w.rx_packets > 0 {
            w.node_nanos as f64 / w.rx_packets as f64
        } else {
            0.0
        };
        t.row([
            w.worker.to_string(),
            w.ports.to_string(),
            w.rx_packets.to_string(),
            w.tx_packets.to_string(),
            w.handoff_sent.to_string(),
            w.handoff_received.to_string(),
            w.handoff_drops.to_string(),
            w.sessions.to_string(),
            w.loops.to_string(),
            ratio(per_pkt),
        ]);
    }
    t.render()
}

/// `show errors`, like VPP's: zero counters only with `all`.
pub fn errors(errors: &[ErrorCounter], all: bool) -> String {
    use Align::{Left, Right};
    let mut t = Table::new(&[
        ("Count", Right),
        ("Node", Left),
        ("Reason", Left),
        ("Severity", Left),
        ("Description", Left),
    ]);
    for e in errors.iter().filter(|e| all || e.count != 0) {
        t.row([
            e.count.to_string(),
            e.node.clone(),
            e.reason.clone(),
            e.severity.to_string(),
            e.description.clone(),
        ]);
    }
    t.render()
}

/// `show xdp`: the verdicts, the drop reasons (zero ones only with `all`), then the fast
/// path: on or off, flow cache entries, hits and why packets missed it.
pub fn xdp(report: &XdpReport, all: bool) -> String {
    fn table(first: &str, counts: &[NamedCount], all: bool) -> String {
        let mut t = Table::new(&[
            (first, Align::Left),
            ("Count", Align::Right),
            ("Description", Align::Left),
        ]);
        for c in counts.iter().filter(|c| all || c.count != 0) {
            t.row([c.name.clone(), c.count.to_string(), c.description.clone()]);
        }
        t.render()
    }
    format!(
        "{}\n{}\nfast path: {}, flow cache entries: {}\n{}",
        table("Verdict", &report.verdicts, true),
        table("Drop reason", &report.drops, all),
        if report.fast_path { "on" } else { "off" },
        report.flow_entries,
        table("Flow cache", &report.flow_cache, true)
    )
}

/// `show buffers`: the pool on one line, then one line per AF_XDP port.
pub fn buffers(r: &ferroplane_api::BuffersReport) -> String {
    use Align::{Left, Right};
    let mut out = format!(
        "pool: {} frames of {} bytes: free {}, in fill rings {}, in TX {}, in the engine {}; \
         busy ports grow their fill ring to {}\n\
         ports closed: {} ({} closing)\n",
        r.total,
        r.frame_size,
        r.free,
        r.fill,
        r.tx,
        r.user,
        r.max_fill_target,
        r.closed_ports,
        r.closing_ports
    );
    let mut t = Table::new(&[
        ("Port", Right),
        ("Interface", Left),
        ("Queue", Right),
        ("Rx", Right),
        ("Sent", Right),
        ("Fill-target", Right),
        ("Fill", Right),
        ("Grown", Right),
        ("Tx", Right),
        ("Fill-empty", Right),
        ("Rx-full", Right),
        ("Rx-dropped", Right),
    ]);
    for p in &r.ports {
        t.row([
            p.port.to_string(),
            p.interface.clone(),
            p.queue.to_string(),
            p.rx_packets.to_string(),
            p.tx_packets.to_string(),
            p.fill_target.to_string(),
            p.fill_frames.to_string(),
            p.fill_grown.to_string(),
            p.tx_in_flight.to_string(),
            p.rx_fill_ring_empty.to_string(),
            p.rx_ring_full.to_string(),
            p.rx_dropped.to_string(),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// First line of `ferroctl version`.
pub fn client_version() -> String {
    format!(
        "ferroctl {} (api_version {API_VERSION})\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Second line of `ferroctl version`.
pub fn agent_version(v: &VersionInfo) -> String {
    format!(
        "agent    {} (api_version {})\n",
        v.agent_version, v.api_version
    )
}

/// `show tunnels`: the node's overlay settings, then one line per remote node.
pub fn tunnels(r: &ferroplane_api::TunnelsReport) -> String {
    use Align::{Left, Right};
    let mut out = format!(
        "node {} address {} default-mode {} vni {} vxlan-port {} vtep-mac {} wireguard-port {} public-key {}\n",
        r.node,
        r.local_address,
        r.default_mode,
        r.vni,
        r.vxlan_port,
        r.vtep_mac,
        r.wireguard_port,
        opt(r.public_key.as_deref()),
    );
    let mut t = Table::new(&[
        ("Peer", Left),
        ("Address", Left),
        ("Pod-CIDRs", Left),
        ("Mode", Left),
        ("Idx", Right),
        ("MTU", Right),
        ("State", Left),
        ("Handshake", Right),
        ("Rx-pkts", Right),
        ("Rx-bytes", Right),
        ("Tx-pkts", Right),
        ("Tx-bytes", Right),
    ]);
    for p in &r.peers {
        t.row([
            p.name.clone(),
            p.address.clone(),
            p.pod_cidrs.join(","),
            p.mode.clone(),
            opt(p.sw_if_index),
            p.mtu.to_string(),
            p.state.clone(),
            opt(p.handshake_age_secs.map(|s| format!("{s:.0}s ago"))),
            p.rx_packets.to_string(),
            p.rx_bytes.to_string(),
            p.tx_packets.to_string(),
            p.tx_bytes.to_string(),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroplane_api::{NodeCounters, RoutePath, RouteSource, Severity};

    #[test]
    fn lookup_route_is_longest_prefix_match() {
        let r = |p: &str| RouteInfo {
            prefix: p.into(),
            source: RouteSource::Static,
            paths: vec![],
        };
        let fib = vec![r("10.0.0.0/8"), r("10.1.0.0/16"), r("10.1.2.0/24")];
        let get = |w: &str| lookup_route(fib.clone(), w).unwrap().map(|r| r.prefix);
        assert_eq!(get("10.1.2.3").as_deref(), Some("10.1.2.0/24"));
        assert_eq!(get("10.1.3.3").as_deref(), Some("10.1.0.0/16"));
        assert_eq!(get("10.9.9.9").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(get("10.1.0.0/15").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(get("10.1.2.128/25").as_deref(), Some("10.1.2.0/24"));
        assert_eq!(get("11.0.0.1"), None, "no default route: no match");
        assert!(lookup_route(fib.clone(), "10.1.2.3/40").is_err());
        assert!(lookup_route(fib, "fd00::1").is_err());
    }

    #[test]
    fn buffers_pool_line_then_ports() {
        let r = ferroplane_api::BuffersReport {
            total: 8192,
            frame_size: 2048,
            free: 7000,
            user: 0,
            fill: 1192,
            tx: 0,
            max_fill_target: 512,
            closing_ports: 1,
            closed_ports: 7,
            ports: vec![ferroplane_api::PortBuffers {
                port: 0,
                interface: "up0".into(),
                queue: 0,
                rx_packets: 900,
                tx_packets: 800,
                fill_target: 512,
                fill_frames: 500,
                fill_grown: 4,
                tx_in_flight: 0,
                rx_fill_ring_empty: 3,
                rx_ring_full: 0,
                rx_dropped: 0,
            }],
        };
        let text = buffers(&r);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "pool: 8192 frames of 2048 bytes: free 7000, in fill rings 1192, in TX 0, \
                 in the engine 0; busy ports grow their fill ring to 512"
            )
        );
        assert_eq!(lines.next(), Some("ports closed: 7 (1 closing)"));
        assert!(lines.next().is_some_and(|h| h.contains("Fill-target")));
        let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        assert_eq!(
            row,
            ["0", "up0", "0", "900", "800", "512", "500", "4", "0", "3", "0", "0"]
        );
    }

    #[test]
    fn routes_one_line_per_path() {
        let r = vec![
            RouteInfo {
                prefix: "10.0.0.0/8".into(),
                source: RouteSource::Static,
                paths: vec![
                    RoutePath {
                        via: Some("192.168.100.1".into()),
                        interface: "up0".into(),
                        resolved_mac: Some("02:00:00:00:00:09".into()),
                    },
                    RoutePath {
                        via: Some("192.168.100.3".into()),
                        interface: "up0".into(),
                        resolved_mac: None,
                    },
                ],
            },
            RouteInfo {
                prefix: "10.9.0.0/16".into(),
                source: RouteSource::Static,
                paths: vec![],
            },
        ];
        assert_eq!(
            routes(&r),
            "Prefix       Source  Via            Interface  MAC\n\
             10.0.0.0/8   static  192.168.100.1  up0        02:00:00:00:00:09\n\
             \x20                    192.168.100.3  up0        -\n\
             10.9.0.0/16  static  drop\n"
        );
    }

    #[test]
    fn counters_like_show_runtime() {
        let c = CountersReport {
            worker_count: 1,
            nodes: vec![NodeCounters::from_totals("ip4-lookup", 3, 3, 300, 4500)],
            commands: 2,
            command_nanos: 12_500_000,
            command_max_nanos: 12_000_000,
            workers: vec![ferroplane_api::WorkerInfo {
                worker: 0,
                state: "stalled".into(),
                heartbeat: 42,
                heartbeat_age_secs: 3.04,
                port_errors: 1,
                io_errors: 0,
                last_io_error: None,
                ..Default::default()
            }],
        };
        assert_eq!(
            counters(&c),
            "Workers: 1\n\
             Worker 0: stalled, heartbeat 42 (3.0 s ago), port errors 1, I/O errors 0\n\
             Control commands on the workers: 2, 12.50 ms in all, longest 12.00 ms\n\
             Name        Calls  Vectors  Packets  Clocks/pkt  Vectors/Call\n\
             ip4-lookup      3        3      300       15.00        100.00\n"
        );
    }

    #[test]
    fn counters_have_a_line_per_worker_with_several() {
        let w = |i: u32, rx: u64, out: u64, inn: u64| ferroplane_api::WorkerInfo {
            worker: i,
            state: "running".into(),
            rx_packets: rx,
            tx_packets: rx,
            node_packets: rx * 5,
            node_nanos: rx * 100,
            handoff_sent: out,
            handoff_received: inn,
            ports: 2,
            sessions: 3,
            loops: 10,
            ..Default::default()
        };
        let c = CountersReport {
            worker_count: 2,
            nodes: vec![],
            commands: 0,
            command_nanos: 0,
            command_max_nanos: 0,
            workers: vec![w(0, 100, 40, 7), w(1, 50, 7, 40)],
        };
        let text = counters(&c);
        assert!(
            text.contains(
                "Worker  Ports   Rx   Tx  Handoff-out  Handoff-in  Handoff-drops  Sessions  Loops  ns/pkt\n\
                 0           2  100  100           40           7              0         3     10  100.00\n\
                 1           2   50   50            7          40              0         3     10  100.00\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn ratios_stay_readable() {
        assert_eq!(ratio(0.0), "0.00");
        assert_eq!(ratio(64.0), "64.00");
        assert_eq!(ratio(0.001), "1.00e-3");
        assert_eq!(ratio(12_345_678.0), "1.23e7");
    }

    #[test]
    fn errors_skip_zero_unless_all() {
        let e = vec![
            ErrorCounter {
                node: "ip4-input".into(),
                reason: "ttl_expired".into(),
                description: "ip4 ttl <= 1".into(),
                count: 0,
                severity: Severity::Error,
            },
            ErrorCounter {
                node: "arp-input".into(),
                reason: "replies_sent".into(),
                description: "ARP replies sent".into(),
                count: 2,
                severity: Severity::Info,
            },
        ];
        assert!(!errors(&e, false).contains("ttl_expired"));
        assert!(errors(&e, false).contains("replies_sent"));
        assert!(errors(&e, true).contains("ttl_expired"));
    }
}
