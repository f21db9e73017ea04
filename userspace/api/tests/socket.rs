//! The API through a real unix socket in a temporary directory.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferroplane_api::{
    ApiError, ApiServer, Client, CountersReport, ErrorCounter, Handler, InterfaceInfo,
    InterfaceKind, NamedCount, NodeCounters, Request, Response, RouteInfo, RoutePath, RouteSource,
    Severity, VersionInfo, XdpReport, API_VERSION, MAX_LINE_LEN,
};
use serde_json::{json, Value};

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fp-api-{}-{tag}-{}",
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
            rx_packets: 10,
            rx_bytes: 1000,
            tx_packets: 20,
            tx_bytes: 2000,
            drops: 1,
            fast_rx_packets: 0,
            fast_tx_packets: 0,
            pod: None,
            state: ferroplane_api::InterfaceState::Up,
            queues: Vec::new(),
        },
        InterfaceInfo {
            name: "fp0123456789a".into(),
            sw_if_index: 2,
            kind: InterfaceKind::Pod,
            ifindex: 9,
            mac: "02:00:00:00:00:02".into(),
            ipv4: None,
            mtu: 1500,
            xdp_mode: Some("skb".into()),
            port: Some(1),
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
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
    vec![RouteInfo {
        prefix: "0.0.0.0/0".into(),
        source: RouteSource::Default,
        paths: vec![RoutePath {
            via: Some("192.168.100.1".into()),
            interface: "up0".into(),
            resolved_mac: None,
        }],
    }]
}

fn counters() -> CountersReport {
    CountersReport {
        worker_count: 2,
        nodes: vec![NodeCounters::from_totals("ip4-lookup", 2, 2, 64, 1280)],
        ..CountersReport::default()
    }
}

fn errors() -> Vec<ErrorCounter> {
    vec![ErrorCounter {
        node: "ip4-input".into(),
        reason: "ttl_expired".into(),
        description: "ip4 ttl <= 1".into(),
        count: 3,
        severity: Severity::Error,
    }]
}

fn xdp() -> XdpReport {
    XdpReport {
        verdicts: vec![NamedCount {
            name: "pass".into(),
            description: "passed to the kernel".into(),
            count: 5,
        }],
        drops: vec![],
        fast_path: false,
        flow_entries: 0,
        flow_cache: vec![],
    }
}

struct TestHandler;

impl Handler for TestHandler {
    fn handle(&self, req: &Request) -> Result<Value, String> {
        let v = match req {
            Request::ShowInterfaces => serde_json::to_value(interfaces()),
            Request::ShowRoutes => serde_json::to_value(routes()),
            Request::ShowCounters => serde_json::to_value(counters()),
            Request::ShowErrors => serde_json::to_value(errors()),
            Request::ShowXdp => serde_json::to_value(xdp()),
            Request::ClearCounters => return Ok(Value::Null),
            Request::Version => serde_json::to_value(VersionInfo::new("9.9.9")),
            other => return Err(format!("{other} is not served by this test agent")),
        };
        v.map_err(|e| e.to_string())
    }
}

fn server(dir: &TempDir) -> ApiServer {
    ApiServer::bind(dir.path().join("run/api.sock"), Arc::new(TestHandler)).unwrap()
}

/// Sends raw lines and reads one response line per sent line.
fn raw_exchange(path: &Path, lines: &[&str]) -> Vec<Response> {
    let stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    lines
        .iter()
        .map(|l| {
            writer.write_all(l.as_bytes()).unwrap();
            writer.write_all(b"\n").unwrap();
            let mut answer = String::new();
            reader.read_line(&mut answer).unwrap();
            serde_json::from_str(&answer).unwrap()
        })
        .collect()
}

#[test]
fn round_trip_typed_helpers() {
    let dir = TempDir::new("roundtrip");
    let srv = server(&dir);
    let mut c = Client::connect(srv.path()).unwrap();
    assert_eq!(c.interfaces().unwrap(), interfaces());
    assert_eq!(c.routes().unwrap(), routes());
    assert_eq!(c.counters().unwrap(), counters());
    assert_eq!(c.errors().unwrap(), errors());
    assert_eq!(c.xdp().unwrap(), xdp());
    c.clear_counters().unwrap();
    assert_eq!(
        c.version().unwrap(),
        VersionInfo {
            agent_version: "9.9.9".into(),
            api_version: API_VERSION
        }
    );
    assert_eq!(c.call(&Request::ClearCounters).unwrap(), Value::Null);
}

#[test]
fn socket_has_mode_0600_and_parent_is_created() {
    let dir = TempDir::new("mode");
    let srv = server(&dir);
    let meta = fs::metadata(srv.path()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // No temporary file left behind next to it.
    let names: Vec<_> = fs::read_dir(dir.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["api.sock"]);
}

#[test]
fn wrong_version_is_refused_clearly() {
    let dir = TempDir::new("version");
    let srv = server(&dir);
    let r = raw_exchange(
        srv.path(),
        &[r#"{"api_version":2,"request":{"kind":"version"}}"#],
    );
    assert!(!r[0].ok);
    assert_eq!(r[0].api_version, API_VERSION);
    assert_eq!(
        r[0].error.as_deref(),
        Some("unsupported api_version 2: this agent speaks api_version 1")
    );
}

#[test]
fn garbage_line_is_answered_and_connection_survives() {
    let dir = TempDir::new("garbage");
    let srv = server(&dir);
    let r = raw_exchange(
        srv.path(),
        &[
            "this is not json",
            r#"{"api_version":1,"request":{"kind":"show_everything"}}"#,
            r#"{"api_version":1,"request":{"kind":"version"}}"#,
        ],
    );
    assert!(!r[0].ok);
    assert!(r[0]
        .error
        .as_deref()
        .unwrap()
        .starts_with("invalid JSON request"));
    assert!(!r[1].ok);
    assert!(r[1].error.as_deref().unwrap().contains("show_everything"));
    assert!(r[2].ok);
    assert_eq!(
        r[2].data,
        Some(json!({"agent_version":"9.9.9","api_version":1}))
    );
}

#[test]
fn oversized_line_closes_connection() {
    let dir = TempDir::new("big");
    let srv = server(&dir);
    let big = "x".repeat(MAX_LINE_LEN + 10);
    let stream = UnixStream::connect(srv.path()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    // The server may close before reading everything: ignore write errors.
    let _ = w.write_all(big.as_bytes());
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let r: Response = serde_json::from_str(&line).unwrap();
    assert!(!r.ok);
    assert!(r.error.unwrap().contains("longer than"));
    line.clear();
    assert_eq!(reader.read_line(&mut line).unwrap(), 0, "connection closed");
}

#[test]
fn handler_error_reaches_client() {
    let dir = TempDir::new("handler-err");
    let handler = |_: &Request| -> Result<Value, String> { Err("engine not started".into()) };
    let srv = ApiServer::bind(dir.path().join("api.sock"), Arc::new(handler)).unwrap();
    let mut c = Client::connect(srv.path()).unwrap();
    let err = c.interfaces().unwrap_err();
    assert!(matches!(err, ApiError::Agent(ref m) if m == "engine not started"));
    assert_eq!(err.to_string(), "agent error: engine not started");
}

#[test]
fn wrong_data_shape_is_a_decode_error() {
    let dir = TempDir::new("decode");
    let handler = |_: &Request| -> Result<Value, String> { Ok(json!({"unexpected": true})) };
    let srv = ApiServer::bind(dir.path().join("api.sock"), Arc::new(handler)).unwrap();
    let err = Client::connect(srv.path()).unwrap().routes().unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Decode {
                request: "show_routes",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn agent_not_running_message() {
    let dir = TempDir::new("absent");
    let path = dir.path().join("nothing/api.sock");
    let err = Client::connect(&path).unwrap_err();
    assert!(err.is_not_running());
    assert_eq!(
        err.to_string(),
        format!("agent not running (no socket at {})", path.display())
    );
}

#[test]
fn stale_socket_is_connection_refused_then_replaced_by_bind() {
    let dir = TempDir::new("stale");
    let path = dir.path().join("api.sock");
    drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody listens
    let err = Client::connect(&path).unwrap_err();
    assert!(err.is_not_running());
    assert_eq!(
        err.to_string(),
        format!(
            "agent not running (connection refused at {})",
            path.display()
        )
    );
    let srv = ApiServer::bind(&path, Arc::new(TestHandler)).unwrap();
    assert_eq!(
        Client::connect(srv.path())
            .unwrap()
            .version()
            .unwrap()
            .agent_version,
        "9.9.9"
    );
}

#[test]
fn bind_refuses_live_socket_and_non_socket() {
    let dir = TempDir::new("inuse");
    let srv = server(&dir);
    let err = ApiServer::bind(srv.path(), Arc::new(TestHandler)).unwrap_err();
    assert!(matches!(err, ApiError::AddrInUse { .. }), "{err}");
    // The first server still works.
    Client::connect(srv.path()).unwrap().version().unwrap();

    let file = dir.path().join("plain");
    fs::write(&file, b"keep me").unwrap();
    let err = ApiServer::bind(&file, Arc::new(TestHandler)).unwrap_err();
    assert!(matches!(err, ApiError::NotASocket { .. }), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn drop_stops_server_and_removes_socket() {
    let dir = TempDir::new("drop");
    let srv = server(&dir);
    let path = srv.path().to_path_buf();
    let mut open = Client::connect(&path).unwrap();
    open.version().unwrap();
    drop(srv);
    assert!(!path.exists());
    assert!(Client::connect(&path).unwrap_err().is_not_running());
    // Open connections are shut down too.
    let err = open.version().unwrap_err();
    assert!(matches!(err, ApiError::Closed), "{err}");
}

#[test]
fn client_reconnects_after_agent_restart() {
    let dir = TempDir::new("restart");
    let path = dir.path().join("api.sock");
    let srv = ApiServer::bind(&path, Arc::new(TestHandler)).unwrap();
    let mut c = Client::connect(&path).unwrap();
    c.version().unwrap();
    drop(srv);
    let err = c.version().unwrap_err();
    assert!(matches!(err, ApiError::Closed), "{err}");
    // Still down: the reconnect attempt says so.
    assert!(c.version().unwrap_err().is_not_running());
    let _srv = ApiServer::bind(&path, Arc::new(TestHandler)).unwrap();
    assert_eq!(c.version().unwrap().agent_version, "9.9.9");
}

#[test]
fn drop_leaves_a_replaced_socket_alone() {
    let dir = TempDir::new("replaced");
    let path = dir.path().join("api.sock");
    let first = ApiServer::bind(&path, Arc::new(TestHandler)).unwrap();
    fs::remove_file(&path).unwrap();
    let second = ApiServer::bind(&path, Arc::new(TestHandler)).unwrap();
    drop(first);
    assert!(path.exists());
    Client::connect(second.path()).unwrap().version().unwrap();
}

#[test]
fn client_reports_version_mismatch_and_timeout() {
    let dir = TempDir::new("fake");
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fake = std::thread::spawn(move || {
        // First connection: answers with another version.
        let (s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let mut w = s;
        w.write_all(b"{\"api_version\":7,\"ok\":true,\"data\":null}\n")
            .unwrap();
        // Second connection: never answers until the client gave up.
        let (s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = r.read_line(&mut line);
    });
    let err = Client::connect(&path).unwrap().version().unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::VersionMismatch {
                client: 1,
                agent: 7
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("API version mismatch"));

    let mut c = Client::connect_with_timeout(&path, Duration::from_millis(200)).unwrap();
    let err = c.version().unwrap_err();
    assert!(matches!(err, ApiError::Timeout { .. }), "{err}");
    drop(c);
    fake.join().unwrap();
}

#[test]
fn many_clients_in_parallel() {
    let dir = TempDir::new("parallel");
    let srv = server(&dir);
    let path = srv.path().to_path_buf();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&path).unwrap();
                for _ in 0..20 {
                    assert_eq!(c.interfaces().unwrap().len(), 2);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
