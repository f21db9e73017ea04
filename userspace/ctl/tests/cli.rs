//! Runs the built `ferroctl` against an in-process `ApiServer` with a fake
//! handler (a unit test of the CLI; the end-to-end suites use the real agent).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use ferroplane_api::{
    ApiServer, CountersReport, ErrorCounter, Handler, InterfaceInfo, InterfaceKind, NamedCount,
    NodeCounters, QueueInfo, Request, RouteInfo, RoutePath, RouteSource, Severity, VersionInfo,
    XdpReport,
};
use serde_json::Value;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fp-ctl-{}-{tag}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[derive(Default)]
struct Fake {
    clears: AtomicUsize,
}

impl Fake {
    fn interfaces() -> Vec<InterfaceInfo> {
        vec![
            InterfaceInfo {
                name: "up0".into(),
                sw_if_index: 1,
                kind: InterfaceKind::Uplink,
                ifindex: 4,
                mac: "02:00:00:00:00:01".into(),
                ipv4: Some("192.168.100.2/24".into()),
                mtu: 1500,
                xdp_mode: Some("native".into()),
                port: Some(0),
                rx_packets: 123456,
                rx_bytes: 9876543,
                tx_packets: 42,
                tx_bytes: 4200,
                drops: 7,
                fast_rx_packets: 0,
                fast_tx_packets: 0,
                pod: None,
                state: ferroplane_api::InterfaceState::Up,
                queues: vec![
                    QueueInfo {
                        queue: 0,
                        port: 0,
                        rx_packets: 100000,
                        tx_packets: 40,
                        ..QueueInfo::default()
                    },
                    QueueInfo {
                        queue: 1,
                        port: 1,
                        rx_packets: 23456,
                        tx_packets: 2,
                        rx_fill_ring_empty: 3,
                        rx_drops: 3,
                        fill_frames: 128,
                        fill_target: 128,
                        ..QueueInfo::default()
                    },
                ],
            },
            InterfaceInfo {
                name: "fp0123456789a".into(),
                sw_if_index: 2,
                kind: InterfaceKind::Pod,
                ifindex: 12,
                mac: "02:00:00:00:00:02".into(),
                ipv4: None,
                mtu: 1450,
                xdp_mode: Some("skb".into()),
                port: Some(1),
                rx_packets: 1,
                rx_bytes: 60,
                tx_packets: 2,
                tx_bytes: 120,
                drops: 0,
                fast_rx_packets: 0,
                fast_tx_packets: 0,
                pod: Some("default/a".into()),
                state: ferroplane_api::InterfaceState::Up,
                queues: Vec::new(),
            },
        ]
    }

    fn routes() -> Vec<RouteInfo> {
        vec![
            RouteInfo {
                prefix: "0.0.0.0/0".into(),
                source: RouteSource::Default,
                paths: vec![RoutePath {
                    via: Some("192.168.100.1".into()),
                    interface: "up0".into(),
                    resolved_mac: Some("02:00:00:00:00:fe".into()),
                }],
            },
            RouteInfo {
                prefix: "10.244.1.10/32".into(),
                source: RouteSource::Pod,
                paths: vec![RoutePath {
                    via: None,
                    interface: "fp0123456789a".into(),
                    resolved_mac: None,
                }],
            },
            RouteInfo {
                prefix: "10.244.0.0/16".into(),
                source: RouteSource::Cluster,
                paths: vec![RoutePath {
                    via: Some("192.168.100.3".into()),
                    interface: "up0".into(),
                    resolved_mac: None,
                }],
            },
        ]
    }

    fn counters() -> CountersReport {
        CountersReport {
            worker_count: 2,
            nodes: vec![
                NodeCounters::from_totals("ip4-input", 10, 10, 640, 32000),
                NodeCounters::from_totals("ip4-lookup", 10, 10, 640, 12800),
                NodeCounters::from_totals("idle-node", 0, 0, 0, 0),
            ],
            ..CountersReport::default()
        }
    }

    fn errors() -> Vec<ErrorCounter> {
        vec![
            ErrorCounter {
                node: "ip4-input".into(),
                reason: "ttl_expired".into(),
                description: "ip4 ttl <= 1".into(),
                count: 3,
                severity: Severity::Error,
            },
            ErrorCounter {
                node: "ip4-input".into(),
                reason: "bad_checksum".into(),
                description: "ip4 header checksum".into(),
                count: 0,
                severity: Severity::Error,
            },
            ErrorCounter {
                node: "arp-input".into(),
                reason: "replies_sent".into(),
                description: "ARP replies sent".into(),
                count: 12,
                severity: Severity::Info,
            },
        ]
    }

    fn xdp() -> XdpReport {
        let nc = |name: &str, description: &str, count| NamedCount {
            name: name.into(),
            description: description.into(),
            count,
        };
        XdpReport {
            verdicts: vec![
                nc("pass", "passed to the kernel", 100),
                nc("redirect", "redirected to AF_XDP", 50),
                nc("drop", "dropped", 0),
            ],
            drops: vec![
                nc("truncated_eth", "frame shorter than Ethernet", 2),
                nc("truncated_ip", "packet shorter than IPv4", 0),
            ],
            fast_path: false,
            flow_entries: 0,
            flow_cache: vec![],
        }
    }
}

impl Fake {
    fn hostports() -> Vec<ferroplane_api::HostPortInfo> {
        let h = |port: u16, proto: &str, pod: &str, ip: &str, served: bool, reason: &str| {
            ferroplane_api::HostPortInfo {
                pod: pod.into(),
                protocol: proto.into(),
                host_ip: String::new(),
                host_port: port,
                pod_ip: ip.into(),
                container_port: 8080,
                source: "cni".into(),
                served,
                reason: reason.into(),
            }
        };
        vec![
            h(8080, "tcp", "shop/web", "10.244.1.10", true, ""),
            h(
                30080,
                "tcp",
                "shop/late",
                "10.244.1.11",
                false,
                "the node port of service shop/web",
            ),
        ]
    }
}

impl Handler for Fake {
    fn handle(&self, req: &Request) -> Result<Value, String> {
        let v = match req {
            Request::ShowInterfaces => serde_json::to_value(Self::interfaces()),
            Request::ShowRoutes => serde_json::to_value(Self::routes()),
            Request::ShowCounters => serde_json::to_value(Self::counters()),
            Request::ShowErrors => serde_json::to_value(Self::errors()),
            Request::ShowXdp => serde_json::to_value(Self::xdp()),
            Request::ClearCounters => {
                self.clears.fetch_add(1, Ordering::SeqCst);
                return Ok(Value::Null);
            }
            Request::Version => serde_json::to_value(VersionInfo::new("1.2.3")),
            Request::ShowHostPorts => serde_json::to_value(Self::hostports()),
            other => return Err(format!("{other} is not faked")),
        };
        v.map_err(|e| e.to_string())
    }
}

struct Agent {
    _dir: TempDir,
    server: ApiServer,
    fake: Arc<Fake>,
}

impl Agent {
    fn start(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let fake = Arc::new(Fake::default());
        let server = ApiServer::bind(dir.path().join("api.sock"), fake.clone()).unwrap();
        Agent {
            _dir: dir,
            server,
            fake,
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        ferroctl(self.server.path(), args)
    }
}

fn ferroctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferroctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("FERROPLANE_SOCKET")
        .output()
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr_failed(out: &Output) -> String {
    assert!(!out.status.success(), "unexpected success");
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Byte offset of each header word in `header`, to check the rows line up.
fn column_start(header: &str, word: &str) -> usize {
    header.find(word).unwrap()
}

#[test]
fn show_interfaces_table() {
    let agent = Agent::start("ifaces");
    let text = stdout_ok(&agent.ctl(&["show", "interfaces"]));
    let (main, queues) = text
        .split_once("\nAF_XDP sockets of multi-queue interfaces, one per RX queue:\n")
        .expect("a per-queue section for the two-queue uplink");
    let lines: Vec<&str> = main.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    // One line per RX queue of the uplink (the pod's one socket is not repeated).
    let q: Vec<&str> = queues.lines().collect();
    assert_eq!(q.len(), 3, "{queues}");
    for col in [
        "Queue",
        "Port",
        "Rx-pkts",
        "Tx-drops",
        "Fill-empty",
        "Fill-target",
    ] {
        assert!(q[0].contains(col), "missing {col} in {}", q[0]);
    }
    let qrx_end = column_start(q[0], "Rx-pkts") + "Rx-pkts".len();
    assert!(
        q[1].starts_with("up0 ") && q[1][..qrx_end].ends_with(" 100000"),
        "{}",
        q[1]
    );
    assert!(
        q[2].starts_with("up0 ") && q[2][..qrx_end].ends_with(" 23456"),
        "{}",
        q[2]
    );
    let empty_end = column_start(q[0], "Fill-empty") + "Fill-empty".len();
    assert!(q[2][..empty_end].ends_with(" 3"), "{}", q[2]);
    assert!(q[2].ends_with(" 128"), "{}", q[2]);
    let header = lines[0];
    assert!(header.starts_with("Name "), "{header}");
    for col in [
        "Idx", "Kind", "MAC", "IPv4", "MTU", "XDP", "Port", "Rx-pkts", "Drops", "Pod",
    ] {
        assert!(header.contains(col), "missing {col} in {header}");
    }
    assert!(lines[1].starts_with("up0 "));
    assert!(lines[2].starts_with("fp0123456789a "));
    // Left-aligned text columns start where their header starts.
    let mac = column_start(header, "MAC");
    assert_eq!(&lines[1][mac..mac + 17], "02:00:00:00:00:01");
    assert_eq!(&lines[2][mac..mac + 17], "02:00:00:00:00:02");
    // Right-aligned numbers end where their header ends.
    let rx_end = column_start(header, "Rx-pkts") + "Rx-pkts".len();
    assert!(lines[1][..rx_end].ends_with(" 123456"), "{}", lines[1]);
    assert!(lines[2][..rx_end].ends_with(" 1"), "{}", lines[2]);
    assert!(lines[1].contains("192.168.100.2/24"));
    assert!(lines[2].contains("default/a"));
    assert!(lines[2].ends_with("default/a"));
    assert!(lines[1].ends_with(" -"), "no pod shown as -: {}", lines[1]);
}

#[test]
fn show_interfaces_json_is_the_data() {
    let agent = Agent::start("ifaces-json");
    let text = stdout_ok(&agent.ctl(&["-o", "json", "show", "interfaces"]));
    let parsed: Vec<InterfaceInfo> = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed, Fake::interfaces());
    assert!(text.contains("\n  {"), "pretty printed: {text}");
    // The option is global: it may follow the subcommand too.
    let after = stdout_ok(&agent.ctl(&["show", "interfaces", "--output", "json"]));
    assert_eq!(after, text);
}

#[test]
fn show_routes_table_and_json() {
    let agent = Agent::start("routes");
    let text = stdout_ok(&agent.ctl(&["show", "routes"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["Prefix", "Source", "Via", "Interface", "MAC"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "0.0.0.0/0",
            "default",
            "192.168.100.1",
            "up0",
            "02:00:00:00:00:fe"
        ]
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["10.244.1.10/32", "pod", "-", "fp0123456789a", "-"]
    );
    let json: Vec<RouteInfo> =
        serde_json::from_str(&stdout_ok(&agent.ctl(&["show", "routes", "-o", "json"]))).unwrap();
    assert_eq!(json, Fake::routes());
}

/// `show routes ADDR|PREFIX`: the route used for it, longest prefix match (`ip route get`).
#[test]
fn show_routes_longest_prefix_match() {
    let agent = Agent::start("routes-lpm");
    let picked = |what: &str| -> String {
        let v: Vec<RouteInfo> = serde_json::from_str(&stdout_ok(
            &agent.ctl(&["show", "routes", what, "-o", "json"]),
        ))
        .unwrap();
        assert_eq!(v.len(), 1, "{what}: {v:?}");
        v[0].prefix.clone()
    };
    assert_eq!(picked("10.244.1.10"), "10.244.1.10/32");
    assert_eq!(picked("10.244.1.11"), "10.244.0.0/16");
    assert_eq!(picked("10.244.1.10/32"), "10.244.1.10/32");
    assert_eq!(picked("10.244.1.0/24"), "10.244.0.0/16", "covering route");
    assert_eq!(picked("10.244.0.0/16"), "10.244.0.0/16");
    assert_eq!(picked("10.0.0.0/8"), "0.0.0.0/0");
    assert_eq!(picked("8.8.8.8"), "0.0.0.0/0");
    let text = stdout_ok(&agent.ctl(&["show", "routes", "10.244.7.1"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["10.244.0.0/16", "cluster", "192.168.100.3", "up0", "-"]
    );
    let err = stderr_failed(&agent.ctl(&["show", "routes", "not-an-address"]));
    assert!(err.contains("neither an IPv4 address"), "{err}");
    let err = stderr_failed(&agent.ctl(&["show", "routes", "10.0.0.0/33"]));
    assert!(err.contains("neither"), "{err}");
}

#[test]
fn show_counters_like_show_runtime() {
    let agent = Agent::start("counters");
    let text = stdout_ok(&agent.ctl(&["show", "counters"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Workers: 2");
    assert_eq!(
        lines[1],
        "Control commands on the workers: 0, 0.00 ms in all, longest 0.00 ms"
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        [
            "Name",
            "Calls",
            "Vectors",
            "Packets",
            "Clocks/pkt",
            "Vectors/Call"
        ]
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["ip4-input", "10", "10", "640", "50.00", "64.00"]
    );
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        ["ip4-lookup", "10", "10", "640", "20.00", "64.00"]
    );
    assert_eq!(
        lines[5].split_whitespace().collect::<Vec<_>>(),
        ["idle-node", "0", "0", "0", "0.00", "0.00"]
    );
    // Every line is as long as the header (all columns right-aligned after Name).
    assert!(
        lines[3..].iter().all(|l| l.len() == lines[2].len()),
        "{text}"
    );

    let json: CountersReport =
        serde_json::from_str(&stdout_ok(&agent.ctl(&["-o", "json", "show", "counters"]))).unwrap();
    assert_eq!(json, Fake::counters());
}

#[test]
fn show_errors_omits_zero_unless_all() {
    let agent = Agent::start("errors");
    let text = stdout_ok(&agent.ctl(&["show", "errors"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["Count", "Node", "Reason", "Severity", "Description"]
    );
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[1].starts_with("    3  ip4-input  ttl_expired"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("   12  arp-input  replies_sent  info"),
        "{text}"
    );
    assert!(!text.contains("bad_checksum"));

    let all = stdout_ok(&agent.ctl(&["show", "errors", "--all"]));
    assert_eq!(all.lines().count(), 4, "{all}");
    assert!(all.contains("bad_checksum"));

    // JSON carries every counter, zero ones included.
    let json: Vec<ErrorCounter> =
        serde_json::from_str(&stdout_ok(&agent.ctl(&["show", "errors", "-o", "json"]))).unwrap();
    assert_eq!(json, Fake::errors());
}

#[test]
fn show_xdp_tables() {
    let agent = Agent::start("xdp");
    let text = stdout_ok(&agent.ctl(&["show", "xdp"]));
    let blocks: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(blocks.len(), 3, "{text}");
    assert!(blocks[0].starts_with("Verdict "));
    assert_eq!(blocks[0].lines().count(), 4, "all verdicts shown: {text}");
    assert!(blocks[1].starts_with("Drop reason "));
    assert!(blocks[1].contains("truncated_eth"));
    assert!(!blocks[1].contains("truncated_ip"));
    assert!(
        blocks[2].starts_with("fast path: off, flow cache entries: 0\nFlow cache "),
        "{text}"
    );
    let all = stdout_ok(&agent.ctl(&["show", "xdp", "--all"]));
    assert!(all.contains("truncated_ip"));
    let json: XdpReport =
        serde_json::from_str(&stdout_ok(&agent.ctl(&["-o", "json", "show", "xdp"]))).unwrap();
    assert_eq!(json, Fake::xdp());
}

#[test]
fn clear_counters_reaches_agent() {
    let agent = Agent::start("clear");
    assert_eq!(
        stdout_ok(&agent.ctl(&["clear", "counters"])),
        "counters cleared\n"
    );
    assert_eq!(agent.fake.clears.load(Ordering::SeqCst), 1);
    assert_eq!(
        stdout_ok(&agent.ctl(&["-o", "json", "clear", "counters"])),
        "null\n"
    );
    assert_eq!(agent.fake.clears.load(Ordering::SeqCst), 2);
}

#[test]
fn version_shows_both_sides() {
    let agent = Agent::start("version");
    let text = stdout_ok(&agent.ctl(&["version"]));
    assert_eq!(
        text,
        format!(
            "ferroctl {} (api_version 1)\nagent    1.2.3 (api_version 1)\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    let json: VersionInfo =
        serde_json::from_str(&stdout_ok(&agent.ctl(&["version", "-o", "json"]))).unwrap();
    assert_eq!(json, VersionInfo::new("1.2.3"));
}

#[test]
fn agent_not_running_fails_clearly() {
    let dir = TempDir::new("absent");
    let socket = dir.path().join("api.sock");
    let out = ferroctl(&socket, &["show", "interfaces"]);
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr_failed(&out),
        format!(
            "ferroctl: agent not running (no socket at {})\n",
            socket.display()
        )
    );

    // A socket file nobody listens on.
    drop(UnixListener::bind(&socket).unwrap());
    let err = stderr_failed(&ferroctl(&socket, &["show", "routes"]));
    assert!(
        err.contains("agent not running (connection refused at"),
        "{err}"
    );
}

#[test]
fn socket_from_environment() {
    let agent = Agent::start("env");
    let out = Command::new(env!("CARGO_BIN_EXE_ferroctl"))
        .args(["-o", "json", "version"])
        .env("FERROPLANE_SOCKET", agent.server.path())
        .output()
        .unwrap();
    let json: VersionInfo = serde_json::from_str(&stdout_ok(&out)).unwrap();
    assert_eq!(json.agent_version, "1.2.3");
}

#[test]
fn version_mismatch_fails_clearly() {
    let dir = TempDir::new("mismatch");
    let socket = dir.path().join("api.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // An "agent" from the future: answers every request with api_version 2.
    let fake = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut w = s;
        w.write_all(b"{\"api_version\":2,\"ok\":false,\"error\":\"unsupported api_version 1\"}\n")
            .unwrap();
        line
    });
    let err = stderr_failed(&ferroctl(&socket, &["show", "interfaces"]));
    assert_eq!(
        err,
        "ferroctl: API version mismatch: this client speaks api_version 1, the agent speaks 2\n"
    );
    let sent: Value = serde_json::from_str(&fake.join().unwrap()).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"api_version": 1, "request": {"kind": "show_interfaces"}})
    );
}

#[test]
fn agent_error_fails_with_its_message() {
    let dir = TempDir::new("agent-err");
    let handler = |_: &Request| -> Result<Value, String> { Err("engine is not running".into()) };
    let server = ApiServer::bind(dir.path().join("api.sock"), Arc::new(handler)).unwrap();
    let err = stderr_failed(&ferroctl(server.path(), &["show", "counters"]));
    assert_eq!(err, "ferroctl: agent error: engine is not running\n");
}

#[test]
fn unexpected_data_fails_in_table_mode() {
    let dir = TempDir::new("bad-data");
    let handler = |_: &Request| -> Result<Value, String> { Ok(serde_json::json!({"x": 1})) };
    let server = ApiServer::bind(dir.path().join("api.sock"), Arc::new(handler)).unwrap();
    let err = stderr_failed(&ferroctl(server.path(), &["show", "routes"]));
    assert!(
        err.starts_with("ferroctl: unexpected data from the agent for show_routes: "),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroctl"))
        .args(["show", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn show_hostports_table_and_json() {
    let agent = Agent::start("hostports");
    let out = stdout_ok(&agent.ctl(&["show", "hostports"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let header = lines[0];
    for word in ["Host", "Proto", "Pod", "Backend", "Source", "State"] {
        assert!(header.contains(word), "{header}");
    }
    assert!(lines[1].starts_with("*:8080"), "{out}");
    assert!(lines[1].contains("shop/web") && lines[1].contains("10.244.1.10:8080"));
    assert!(lines[1].contains("served"), "{out}");
    assert!(
        lines[2].contains("shadowed: the node port of service shop/web"),
        "{out}"
    );
    let backend = column_start(header, "Backend");
    assert_eq!(lines[1].find("10.244.1.10").unwrap(), backend, "{out}");
    let json = stdout_ok(&agent.ctl(&["-o", "json", "show", "hostports"]));
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v, serde_json::to_value(Fake::hostports()).unwrap());
    assert_eq!(v[0]["host_port"], 8080);
    assert_eq!(v[1]["served"], false);
}
