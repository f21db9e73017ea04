//! What `ferroplane-cni` does with one invocation: validate `CNI_*` and the network
//! configuration, forward to the agent, and turn the answer into the spec's output.
//!
//! [`run`] takes the environment and stdin as values so it is testable without a process.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{code, CniError};
use crate::netns::{check_pod_netns, host_namespaces, HostNs, NetnsError};
use crate::proto::{AgentRequest, AgentResponse, Attachment, Command, PortMapping, PROTO_VERSION};
use crate::types::{is_supported, CniResult, Dns, CNI_VERSION, SUPPORTED_VERSIONS, VERBS_1_1};

/// Default time the plugin waits for the agent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest `timeoutSeconds` accepted.
pub const MAX_TIMEOUT_SECS: u64 = 600;

/// Keys of the network configuration the plugin understands. Anything else is an
/// "unsupported field" (code 2).
pub const KNOWN_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "disableCheck",
    "disableGC",
    "args",
    "runtimeConfig",
    "capabilities",
    "prevResult",
    "ipMasq",
    "ipam",
    "dns",
    "agentSocket",
    "timeoutSeconds",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];

/// The validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: String,
    /// `name`.
    pub name: String,
    /// DNS to report.
    pub dns: Dns,
    /// `prevResult`, as given.
    pub prev_result: Option<Map<String, Value>>,
    /// The agent's CNI socket.
    pub agent_socket: PathBuf,
    /// How long to wait for the agent.
    pub timeout: Duration,
    /// GC: attachments to keep.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// `runtimeConfig.portMappings` as given (parsed by [`parse_port_mappings`] on ADD
    /// only: a DEL must clean up whatever its configuration says).
    pub port_mappings: Option<Value>,
}

/// What the process should print and exit with.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// JSON for stdout (none for a silent success).
    pub stdout: Option<Value>,
    /// Process exit code.
    pub exit_code: i32,
}

impl Outcome {
    fn ok(v: Option<Value>) -> Self {
        Outcome {
            stdout: v,
            exit_code: 0,
        }
    }

    fn err(e: &CniError, version: &str) -> Self {
        Outcome {
            stdout: Some(e.to_json(version)),
            exit_code: 1,
        }
    }
}

fn env_err(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_ENV, msg)
}

fn conf_err(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_NETWORK_CONFIG, msg)
}

/// Whether `s` is a valid container id / network name: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn valid_id(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Whether `s` is a valid interface name (spec: at most 15 bytes, not `.`/`..`, no `/`, `:`
/// or whitespace).
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

/// Parses and validates the network configuration from stdin bytes.
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            "the network configuration on stdin is not valid JSON",
        )
        .with_details(e.to_string())
    })?;
    let Value::Object(obj) = v else {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "the network configuration on stdin is not a JSON object",
        ));
    };
    let version = match obj.get("cniVersion") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(conf_err(format!(
                "cniVersion: expected a string, got {other}"
            )))
        }
        None => return Err(conf_err("cniVersion: missing")),
    };
    if !is_supported(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {version:?} is not supported"),
        )
        .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))));
    }
    for (k, v) in &obj {
        if !KNOWN_KEYS.contains(&k.as_str()) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("unsupported field {k:?} = {v}"),
            ));
        }
    }
    let name = match obj.get("name") {
        Some(Value::String(s)) if valid_id(s) => s.clone(),
        Some(other) => {
            return Err(conf_err(format!(
                "name: {other} is not a valid network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
            )))
        }
        None => return Err(conf_err("name: missing")),
    };
    match obj.get("type") {
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(other) => {
            return Err(conf_err(format!(
                "type: expected a plugin name, got {other}"
            )))
        }
        None => return Err(conf_err("type: missing")),
    }
    if let Some(ipam) = obj.get("ipam") {
        if ipam.as_object().is_none_or(|m| !m.is_empty()) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("unsupported field \"ipam\" = {ipam}"),
            )
            .with_details("ferroplane allocates pod addresses itself (node pod CIDR); omit ipam"));
        }
    }
    for key in ["disableCheck", "disableGC", "ipMasq"] {
        if let Some(v) = obj.get(key) {
            if !v.is_boolean() {
                return Err(conf_err(format!("{key}: expected true or false, got {v}")));
            }
        }
    }
    let dns = match obj.get("dns") {
        Some(v) => {
            serde_json::from_value::<Dns>(v.clone()).map_err(|e| conf_err(format!("dns: {e}")))?
        }
        None => Dns::default(),
    };
    let prev_result = match obj.get("prevResult") {
        Some(Value::Object(m)) => Some(m.clone()),
        Some(Value::Null) | None => None,
        Some(other) => {
            return Err(conf_err(format!(
                "prevResult: expected an object, got {other}"
            )))
        }
    };
    let agent_socket = match obj.get("agentSocket") {
        Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
        Some(other) => {
            return Err(conf_err(format!(
                "agentSocket: expected an absolute path, got {other}"
            )))
        }
        None => PathBuf::from(crate::proto::DEFAULT_CNI_SOCKET),
    };
    let timeout = match obj.get("timeoutSeconds") {
        Some(v) => match v.as_u64() {
            Some(s) if (1..=MAX_TIMEOUT_SECS).contains(&s) => Duration::from_secs(s),
            _ => {
                return Err(conf_err(format!(
                    "timeoutSeconds: expected 1..={MAX_TIMEOUT_SECS}, got {v}"
                )))
            }
        },
        None => DEFAULT_TIMEOUT,
    };
    if let Some(c) = obj.get("capabilities") {
        if !c.is_object() {
            return Err(conf_err(format!(
                "capabilities: expected an object, got {c}"
            )));
        }
    }
    // Only the capabilities the plugin declares are passed in runtimeConfig; others (a
    // runtime may add its own) are ignored.
    let port_mappings = match obj.get("runtimeConfig") {
        Some(Value::Object(rc)) => rc.get("portMappings").filter(|v| !v.is_null()).cloned(),
        Some(Value::Null) | None => None,
        Some(other) => {
            return Err(conf_err(format!(
                "runtimeConfig: expected an object, got {other}"
            )))
        }
    };
    let valid_attachments = match obj.get("cni.dev/valid-attachments") {
        Some(v) => Some(
            serde_json::from_value::<Vec<Attachment>>(v.clone())
                .map_err(|e| conf_err(format!("cni.dev/valid-attachments: {e}")))?,
        ),
        None => None,
    };
    Ok(NetConf {
        cni_version: version,
        name,
        dns,
        prev_result,
        agent_socket,
        timeout,
        valid_attachments,
        port_mappings,
    })
}

/// Parses `runtimeConfig.portMappings` (the CNI conventions' `portMappings` capability):
/// a list of `{hostPort, containerPort, protocol, hostIP}`. Ports must be 1-65535;
/// `protocol` is `tcp` or `udp` in any case (absent or empty: `tcp`, the Kubernetes
/// default); `hostIP` is empty, `0.0.0.0` (both: every node address) or an IPv4 address
/// (the agent checks it is the node's). Exact duplicates are merged (a runtime may repeat
/// a mapping); two mappings of one host port, protocol and address to different container
/// ports conflict. Errors: code 7 (invalid network configuration) for a malformed or
/// unsupported entry, [`code::HOSTPORT_CONFLICT`] for a conflict.
pub fn parse_port_mappings(v: &Value) -> Result<Vec<PortMapping>, CniError> {
    let bad = |i: usize, msg: String| conf_err(format!("runtimeConfig.portMappings[{i}]: {msg}"));
    let Value::Array(list) = v else {
        return Err(conf_err(format!(
            "runtimeConfig.portMappings: expected a list, got {v}"
        )));
    };
    let mut out: Vec<PortMapping> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(bad(i, format!("expected an object, got {m}")));
        };
        let port = |key: &str| -> Result<u16, CniError> {
            match m.get(key) {
                Some(p) => match p.as_u64() {
                    Some(n) if (1..=65535).contains(&n) => Ok(n as u16),
                    _ => Err(bad(i, format!("{key} {p} is not a port (1-65535)"))),
                },
                None => Err(bad(i, format!("{key} is missing"))),
            }
        };
        let host_port = port("hostPort")?;
        let container_port = port("containerPort")?;
        let protocol = match m.get("protocol") {
            None | Some(Value::Null) => "tcp".to_string(),
            Some(Value::String(p)) if p.is_empty() => "tcp".to_string(),
            Some(Value::String(p)) if p.eq_ignore_ascii_case("tcp") => "tcp".to_string(),
            Some(Value::String(p)) if p.eq_ignore_ascii_case("udp") => "udp".to_string(),
            Some(p) => {
                return Err(bad(
                    i,
                    format!("protocol {p} is not supported (tcp or udp; SCTP is not served)"),
                ))
            }
        };
        let host_ip = match m.get("hostIP") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(a)) if a.is_empty() || a == "0.0.0.0" => String::new(),
            Some(Value::String(a)) => match a.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) => ip.to_string(),
                Ok(std::net::IpAddr::V6(_)) => {
                    return Err(bad(
                        i,
                        format!("hostIP {a:?} is IPv6: ferroplane serves IPv4 hostPorts only"),
                    ))
                }
                Err(_) => return Err(bad(i, format!("hostIP {a:?} is not an IP address"))),
            },
            Some(other) => return Err(bad(i, format!("hostIP {other} is not a string"))),
        };
        for key in m.keys() {
            if !["hostPort", "containerPort", "protocol", "hostIP"].contains(&key.as_str()) {
                return Err(bad(i, format!("unknown key {key:?}")));
            }
        }
        let new = PortMapping {
            host_port,
            container_port,
            protocol,
            host_ip,
        };
        if out.contains(&new) {
            continue;
        }
        if let Some(other) = out.iter().find(|o| mappings_overlap(o, &new)) {
            return Err(CniError::new(
                code::HOSTPORT_CONFLICT,
                format!(
                    "runtimeConfig.portMappings[{i}]: hostPort {}/{} is mapped twice (to container ports {} and {})",
                    new.host_port, new.protocol, other.container_port, new.container_port
                ),
            ));
        }
        out.push(new);
    }
    Ok(out)
}

/// Whether two mappings claim the same host port: same protocol and port, and the same
/// `hostIP` or either one on every address.
pub fn mappings_overlap(a: &PortMapping, b: &PortMapping) -> bool {
    a.protocol == b.protocol
        && a.host_port == b.host_port
        && (a.host_ip.is_empty() || b.host_ip.is_empty() || a.host_ip == b.host_ip)
}

/// `CNI_ARGS` (`K=V;K=V`) as pairs. Empty segments are skipped; a segment without `=`,
/// with an empty key or with a second `=` is an error (code 4), as in libcni.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| env_err(format!("CNI_ARGS: {part:?} is not KEY=VALUE")))?;
        if k.is_empty() {
            return Err(env_err(format!("CNI_ARGS: {part:?} has an empty key")));
        }
        if v.contains('=') {
            return Err(env_err(format!(
                "CNI_ARGS: {part:?} is not KEY=VALUE (a second '=')"
            )));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The `CNI_ARGS` keys ferroplane understands (the ones container runtimes pass for
/// Kubernetes pods, plus the `IgnoreUnknown` convention).
pub const KNOWN_ARGS: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

/// What `CNI_ARGS` says about the pod being attached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAMESPACE`: the pod's Kubernetes namespace (a DNS-1123 label).
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`: the pod's name (a DNS-1123 subdomain).
    pub pod_name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`: the sandbox (pause) container's id.
    pub infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    pub pod_uid: Option<String>,
}

/// Whether `s` is a DNS-1123 label (Kubernetes namespace names).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is a DNS-1123 subdomain (Kubernetes object names).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Parses `CNI_ARGS` by the CNI conventions: keys other than [`KNOWN_ARGS`] are an error
/// (code 4, "invalid environment variables") unless `IgnoreUnknown` is true (`1`/`true`),
/// in which case they are ignored; `IgnoreUnknown` itself must be a boolean. The pod's
/// namespace and name must be valid Kubernetes names (they become its policy identity).
pub fn parse_k8s_args(s: &str) -> Result<CniArgs, CniError> {
    let pairs = parse_cni_args(s)?;
    let mut ignore_unknown = false;
    let mut unknown = Vec::new();
    let mut args = CniArgs::default();
    for (k, v) in pairs {
        match k.as_str() {
            "IgnoreUnknown" => {
                ignore_unknown = match v.as_str() {
                    "1" | "true" | "True" | "TRUE" => true,
                    "0" | "false" | "False" | "FALSE" => false,
                    _ => {
                        return Err(env_err(format!(
                            "CNI_ARGS: IgnoreUnknown={v:?} is not a boolean (1, true, 0, false)"
                        )))
                    }
                }
            }
            "K8S_POD_NAMESPACE" => {
                if !is_dns_label(&v) {
                    return Err(env_err(format!(
                        "CNI_ARGS: K8S_POD_NAMESPACE={v:?} is not a valid namespace name"
                    )));
                }
                args.pod_namespace = Some(v);
            }
            "K8S_POD_NAME" => {
                if !is_dns_subdomain(&v) {
                    return Err(env_err(format!(
                        "CNI_ARGS: K8S_POD_NAME={v:?} is not a valid pod name"
                    )));
                }
                args.pod_name = Some(v);
            }
            "K8S_POD_INFRA_CONTAINER_ID" => {
                if !valid_id(&v) {
                    return Err(env_err(format!(
                        "CNI_ARGS: K8S_POD_INFRA_CONTAINER_ID={v:?} is not a valid container id"
                    )));
                }
                args.infra_container_id = Some(v);
            }
            "K8S_POD_UID" => args.pod_uid = Some(v),
            _ => unknown.push(k),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(env_err(format!(
            "CNI_ARGS: unknown args {unknown:?} (set IgnoreUnknown=1 to ignore them)"
        )));
    }
    Ok(args)
}

/// The plugin's own check of `CNI_NETNS` (the agent repeats it with its view of the node):
/// ADD and CHECK need a network namespace that is not the node's own; DEL refuses only the
/// node's own namespace (a path that is gone, or no longer a namespace, is a namespace that
/// was deleted: DEL still cleans up the host side, which never enters it). The node's own
/// namespace, or something that is not a network namespace, is an invalid `CNI_NETNS`:
/// code 4 ("invalid necessary environment variables"), not 7, which is about the network
/// configuration on stdin.
pub fn check_netns(cmd: Command, netns: &str, host: &[HostNs]) -> Result<(), CniError> {
    match check_pod_netns(netns, host) {
        Ok(_) => Ok(()),
        Err(e @ NetnsError::Host { .. }) => Err(env_err(e.to_string())),
        Err(_) if cmd == Command::Del => Ok(()),
        Err(e @ NetnsError::Missing { .. }) => {
            Err(CniError::new(code::UNKNOWN_CONTAINER, e.to_string()))
        }
        Err(e @ NetnsError::NotNetns { .. }) => Err(env_err(e.to_string())),
        Err(e @ NetnsError::Io { .. }) => Err(CniError::new(code::IO_FAILURE, e.to_string())),
    }
}

fn required<'a>(
    env: &'a HashMap<String, String>,
    key: &str,
    cmd: Command,
) -> Result<&'a str, CniError> {
    match env.get(key).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(env_err(format!("{key} is required for {}", cmd.name()))),
    }
}

/// Sends `req` to the agent at `socket` and reads its answer.
pub fn call_agent(
    socket: &std::path::Path,
    timeout: Duration,
    req: &AgentRequest,
) -> Result<AgentResponse, CniError> {
    let down = |what: &str, e: &dyn std::fmt::Display| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            "the ferroplane agent is not available; try again later",
        )
        .with_details(format!("{what} {}: {e}", socket.display()))
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| down("connecting to", &e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| down("setting timeouts on", &e))?;
    let mut line = serde_json::to_vec(req).map_err(|e| {
        CniError::new(code::IO_FAILURE, "encoding the agent request").with_details(e.to_string())
    })?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .and_then(|()| stream.flush())
        .map_err(|e| down("writing to", &e))?;
    let mut answer = String::new();
    let n = BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => down(
                &format!("no answer within {}s from", timeout.as_secs()),
                &"timed out",
            ),
            _ => down("reading from", &e),
        })?;
    if n == 0 {
        return Err(down("reading from", &"connection closed before an answer"));
    }
    serde_json::from_str(&answer).map_err(|e| {
        CniError::new(code::IO_FAILURE, "the agent's answer is not valid")
            .with_details(format!("{e}: {answer}"))
    })
}

/// Appends ferroplane's result to a `prevResult` (chaining): interfaces and IPs appended with
/// shifted interface indices, routes appended, DNS kept unless empty.
pub fn merge_prev(prev: &Map<String, Value>, ours: &CniResult, version: &str) -> Value {
    let ours = ours.to_json_for(version);
    let mut out = prev.clone();
    let arr = |m: &Map<String, Value>, k: &str| -> Vec<Value> {
        m.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut ifaces = arr(prev, "interfaces");
    let offset = ifaces.len() as u64;
    ifaces.extend(ours["interfaces"].as_array().cloned().unwrap_or_default());
    let mut ips = arr(prev, "ips");
    for mut ip in ours["ips"].as_array().cloned().unwrap_or_default() {
        if let Some(i) = ip.get("interface").and_then(Value::as_u64) {
            ip["interface"] = Value::from(i + offset);
        }
        ips.push(ip);
    }
    let mut routes = arr(prev, "routes");
    routes.extend(ours["routes"].as_array().cloned().unwrap_or_default());
    out.insert("cniVersion".into(), Value::String(version.into()));
    out.insert("interfaces".into(), Value::Array(ifaces));
    out.insert("ips".into(), Value::Array(ips));
    out.insert("routes".into(), Value::Array(routes));
    let prev_dns_empty = prev
        .get("dns")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty);
    if prev_dns_empty {
        out.insert("dns".into(), ours["dns"].clone());
    }
    Value::Object(out)
}

/// The address (without prefix) `prevResult` gives the interface `ifname` in `netns`.
pub fn prev_ip_of(prev: &Map<String, Value>, ifname: &str, netns: &str) -> Option<String> {
    let ifaces = prev.get("interfaces")?.as_array()?;
    prev.get("ips")?.as_array()?.iter().find_map(|ip| {
        let idx = usize::try_from(ip.get("interface")?.as_u64()?).ok()?;
        let iface = ifaces.get(idx)?;
        let sandbox_ok = iface
            .get("sandbox")
            .and_then(Value::as_str)
            .is_none_or(|s| s == netns);
        (iface.get("name")?.as_str()? == ifname && sandbox_ok).then(|| {
            let a = ip.get("address")?.as_str()?;
            Some(a.split('/').next().unwrap_or(a).to_string())
        })?
    })
}

/// One plugin invocation: `env` holds the `CNI_*` variables, `stdin` the configuration.
pub fn run(env: &HashMap<String, String>, stdin: &[u8]) -> Outcome {
    let cmd = match env.get("CNI_COMMAND").map(String::as_str) {
        Some(c) => match Command::parse(c) {
            Some(c) => c,
            None => {
                return Outcome::err(
                    &env_err(format!(
                        "CNI_COMMAND {c:?} is not one of ADD, DEL, CHECK, STATUS, VERSION, GC"
                    )),
                    CNI_VERSION,
                )
            }
        },
        None => return Outcome::err(&env_err("CNI_COMMAND is not set"), CNI_VERSION),
    };
    if cmd == Command::Version {
        return Outcome::ok(Some(serde_json::json!({
            "cniVersion": CNI_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = match parse_conf(stdin) {
        Ok(c) => c,
        Err(e) => return Outcome::err(&e, CNI_VERSION),
    };
    let version = conf.cni_version.clone();
    match run_conf(cmd, env, &conf) {
        Ok(v) => Outcome::ok(v),
        Err(e) => Outcome::err(&e, &version),
    }
}

fn run_conf(
    cmd: Command,
    env: &HashMap<String, String>,
    conf: &NetConf,
) -> Result<Option<Value>, CniError> {
    if matches!(cmd, Command::Status | Command::Gc)
        && !VERBS_1_1.contains(&conf.cni_version.as_str())
    {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{} needs cniVersion 1.1.0, the configuration says {}",
                cmd.name(),
                conf.cni_version
            ),
        ));
    }
    let mut req = AgentRequest {
        proto: PROTO_VERSION,
        command: cmd,
        network: conf.name.clone(),
        container_id: String::new(),
        ifname: String::new(),
        netns: String::new(),
        pod_namespace: None,
        pod_name: None,
        dns: conf.dns.clone(),
        expect_ip: None,
        valid_attachments: Vec::new(),
        port_mappings: Vec::new(),
    };
    // The network configuration first: a bad mapping is refused before anything else.
    if cmd == Command::Add {
        if let Some(pm) = &conf.port_mappings {
            req.port_mappings = parse_port_mappings(pm)?;
        }
    }
    if matches!(cmd, Command::Add | Command::Del | Command::Check) {
        let cid = required(env, "CNI_CONTAINERID", cmd)?;
        if !valid_id(cid) {
            return Err(env_err(format!(
                "CNI_CONTAINERID {cid:?} is not a valid container id ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
            )));
        }
        let ifname = required(env, "CNI_IFNAME", cmd)?;
        if !valid_ifname(ifname) {
            return Err(env_err(format!(
                "CNI_IFNAME {ifname:?} is not a valid interface name"
            )));
        }
        let netns = if cmd == Command::Del {
            env.get("CNI_NETNS").cloned().unwrap_or_default()
        } else {
            required(env, "CNI_NETNS", cmd)?.to_string()
        };
        if !netns.is_empty() && !netns.starts_with('/') {
            return Err(env_err(format!(
                "CNI_NETNS {netns:?} is not an absolute path"
            )));
        }
        let args = parse_k8s_args(env.get("CNI_ARGS").map_or("", String::as_str))?;
        req.pod_namespace = args.pod_namespace;
        req.pod_name = args.pod_name;
        req.container_id = cid.to_string();
        req.ifname = ifname.to_string();
        // Last of the environment checks, before the agent is asked for anything.
        if !netns.is_empty() {
            check_netns(cmd, &netns, &host_namespaces())?;
        }
        req.netns = netns;
    }
    match cmd {
        Command::Check => {
            let prev = conf.prev_result.as_ref().ok_or_else(|| {
                conf_err("prevResult: CHECK needs the result of the ADD (prevResult)")
            })?;
            let ip = prev_ip_of(prev, &req.ifname, &req.netns).ok_or_else(|| {
                CniError::new(
                    code::CHECK_FAILED,
                    format!("prevResult has no address for interface {}", req.ifname),
                )
            })?;
            req.expect_ip = Some(ip);
        }
        Command::Gc => {
            req.valid_attachments = conf.valid_attachments.clone().ok_or_else(|| {
                conf_err("cni.dev/valid-attachments: GC needs the list of attachments to keep")
            })?;
        }
        _ => {}
    }
    let answer = call_agent(&conf.agent_socket, conf.timeout, &req).map_err(|e| {
        if cmd == Command::Status {
            CniError {
                code: code::PLUGIN_NOT_AVAILABLE,
                ..e
            }
        } else {
            e
        }
    })?;
    match answer {
        AgentResponse::Error(e) => Err(e),
        AgentResponse::Ok { result } => match (cmd, result) {
            (Command::Add, Some(r)) => Ok(Some(match &conf.prev_result {
                Some(prev) => merge_prev(prev, &r, &conf.cni_version),
                None => r.to_json_for(&conf.cni_version),
            })),
            (Command::Add, None) => Err(CniError::new(
                code::IO_FAILURE,
                "the agent answered ADD without a result",
            )),
            _ => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Interface, IpConfig, Route};

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CONF: &str = r#"{"cniVersion":"1.1.0","name":"fp","type":"ferroplane-cni","agentSocket":"/nonexistent/cni.sock"}"#;

    fn code_of(o: &Outcome) -> u64 {
        assert_eq!(o.exit_code, 1, "{o:?}");
        o.stdout.as_ref().unwrap()["code"].as_u64().unwrap()
    }

    #[test]
    fn version_needs_nothing() {
        let o = run(&env(&[("CNI_COMMAND", "VERSION")]), b"");
        assert_eq!(o.exit_code, 0);
        let v = o.stdout.unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn env_errors() {
        assert_eq!(code_of(&run(&env(&[]), CONF.as_bytes())), 4);
        assert_eq!(
            code_of(&run(&env(&[("CNI_COMMAND", "FOO")]), CONF.as_bytes())),
            4
        );
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ];
        let o = run(&env(&add), CONF.as_bytes());
        assert_eq!(code_of(&o), 4);
        assert!(o.stdout.unwrap()["msg"]
            .as_str()
            .unwrap()
            .contains("CNI_NETNS"));
        let mut bad = add.to_vec();
        bad.push(("CNI_NETNS", "/var/run/netns/x"));
        bad[1] = ("CNI_CONTAINERID", "-bad id");
        assert_eq!(code_of(&run(&env(&bad), CONF.as_bytes())), 4);
        bad[1] = ("CNI_CONTAINERID", "c1");
        bad[2] = ("CNI_IFNAME", "a/b");
        assert_eq!(code_of(&run(&env(&bad), CONF.as_bytes())), 4);
        bad[2] = ("CNI_IFNAME", "eth0");
        bad.push(("CNI_ARGS", "K8S_POD_NAME"));
        assert_eq!(code_of(&run(&env(&bad), CONF.as_bytes())), 4);
    }

    #[test]
    fn config_errors() {
        let e = env(&[("CNI_COMMAND", "STATUS")]);
        assert_eq!(code_of(&run(&e, b"{not json")), 6);
        assert_eq!(code_of(&run(&e, b"[1]")), 6);
        assert_eq!(
            code_of(&run(
                &e,
                br#"{"cniVersion":"9.9.9","name":"fp","type":"x"}"#
            )),
            1
        );
        let o = run(
            &e,
            br#"{"cniVersion":"1.1.0","name":"fp","type":"x","bogus":42}"#,
        );
        assert_eq!(code_of(&o), 2);
        assert!(o.stdout.unwrap()["msg"].as_str().unwrap().contains("bogus"));
        assert_eq!(
            code_of(&run(&e, br#"{"cniVersion":"1.1.0","type":"x"}"#)),
            7
        );
        assert_eq!(
            code_of(&run(&e, br#"{"cniVersion":"1.1.0","name":"fp"}"#)),
            7
        );
        assert_eq!(
            code_of(&run(
                &e,
                br#"{"cniVersion":"1.1.0","name":"fp","type":"x","timeoutSeconds":0}"#
            )),
            7
        );
        assert_eq!(
            code_of(&run(
                &e,
                br#"{"cniVersion":"1.1.0","name":"fp","type":"x","ipam":{"type":"host-local"}}"#
            )),
            2
        );
        // STATUS and GC are 1.1.0 verbs.
        assert_eq!(
            code_of(&run(
                &e,
                br#"{"cniVersion":"1.0.0","name":"fp","type":"x"}"#
            )),
            1
        );
    }

    #[test]
    fn agent_down() {
        let o = run(&env(&[("CNI_COMMAND", "STATUS")]), CONF.as_bytes());
        assert_eq!(code_of(&o), 50);
        let o = run(
            &env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
            ]),
            CONF.as_bytes(),
        );
        assert_eq!(code_of(&o), 11);
        assert!(o.stdout.unwrap()["details"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/cni.sock"));
    }

    #[test]
    fn netns_refused_before_the_agent_is_asked() {
        let dir = std::env::temp_dir().join(format!("fp-cni-plugin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("regular");
        std::fs::write(&file, b"").unwrap();
        let file = file.display().to_string();
        let run_with = |cmd: &str, netns: &str| {
            run(
                &env(&[
                    ("CNI_COMMAND", cmd),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", netns),
                ]),
                CONF.as_bytes(),
            )
        };
        // The plugin's own namespace (the runtime's, standing for the node's): code 4, and
        // the agent is never asked (it would answer 11 here: there is no agent).
        for cmd in ["ADD", "CHECK", "DEL"] {
            let o = run_with(cmd, "/proc/self/ns/net");
            assert_eq!(code_of(&o), 4, "{cmd}: {o:?}");
            let v = o.stdout.unwrap();
            assert!(
                v["msg"].as_str().unwrap().contains("own network namespace"),
                "{v}"
            );
            assert_eq!(v["cniVersion"], "1.1.0");
        }
        // Not a network namespace: ADD and CHECK refused with 4; DEL goes on to the agent
        // (a namespace that is gone still gets its host side cleaned up): 11 here.
        for (netns, what) in [
            (file.as_str(), "a regular file"),
            ("/proc/self/ns/mnt", "a mnt namespace"),
            (dir.to_str().unwrap(), "a directory"),
        ] {
            for cmd in ["ADD", "CHECK"] {
                let o = run_with(cmd, netns);
                assert_eq!(code_of(&o), 4, "{cmd} {netns}: {o:?}");
                let msg = o.stdout.unwrap()["msg"].as_str().unwrap().to_string();
                assert!(
                    msg.contains("not a network namespace") && msg.contains(what),
                    "{msg}"
                );
            }
            assert_eq!(code_of(&run_with("DEL", netns)), 11, "DEL {netns}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn chaining_and_prev_ip() {
        let ours = CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface {
                    name: "fpx".into(),
                    mac: "02:00:00:00:00:01".into(),
                    mtu: None,
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:02".into(),
                    mtu: None,
                    sandbox: Some("/n".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.0.0.5/32".into(),
                gateway: Some("169.254.1.1".into()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".into()),
            }],
            dns: Dns::default(),
        };
        let prev: Map<String, Value> = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","interfaces":[{"name":"lo","sandbox":"/n"}],"ips":[],"dns":{"nameservers":["10.96.0.10"]},"custom":1}"#,
        )
        .unwrap();
        let m = merge_prev(&prev, &ours, "1.1.0");
        assert_eq!(m["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(m["ips"][0]["interface"], 2);
        assert_eq!(m["dns"]["nameservers"][0], "10.96.0.10");
        assert_eq!(m["custom"], 1);
        let m = m.as_object().unwrap().clone();
        assert_eq!(prev_ip_of(&m, "eth0", "/n").as_deref(), Some("10.0.0.5"));
        assert_eq!(prev_ip_of(&m, "eth0", "/other"), None);
        assert_eq!(prev_ip_of(&m, "eth1", "/n"), None);
    }

    #[test]
    fn port_mappings_parsed_and_validated() {
        let conf = |rc: &str| {
            parse_conf(
                format!(
                    r#"{{"cniVersion":"1.1.0","name":"fp","type":"ferroplane-cni","capabilities":{{"portMappings":true}},"runtimeConfig":{rc}}}"#
                )
                .as_bytes(),
            )
        };
        // What containerd and CRI-O pass: lower-case protocols, hostIP empty or set.
        let c = conf(
            r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""},{"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"192.168.100.2"},{"hostPort":9000,"containerPort":9000}],"bandwidth":{"ingressRate":1}}"#,
        )
        .unwrap();
        let m = parse_port_mappings(c.port_mappings.as_ref().unwrap()).unwrap();
        assert_eq!(
            m,
            vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                    host_ip: String::new()
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: "udp".into(),
                    host_ip: "192.168.100.2".into()
                },
                PortMapping {
                    host_port: 9000,
                    container_port: 9000,
                    protocol: "tcp".into(),
                    host_ip: String::new()
                },
            ]
        );
        // No runtimeConfig, or one without portMappings: nothing.
        assert_eq!(conf("{}").unwrap().port_mappings, None);
        assert_eq!(conf("null").unwrap().port_mappings, None);
        assert_eq!(code_of_err(conf("[1]")), 7);
        // 0.0.0.0 is every address; exact duplicates merge.
        let m = parse_port_mappings(&serde_json::json!([
            {"hostPort": 80, "containerPort": 8080, "protocol": "TCP", "hostIP": "0.0.0.0"},
            {"hostPort": 80, "containerPort": 8080, "protocol": "tcp"},
        ]))
        .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].host_ip, "");
        // Invalid entries: code 7, naming the entry and the field.
        for (bad, needle) in [
            (serde_json::json!({"hostPort": 80}), "expected a list"),
            (serde_json::json!([1]), "expected an object"),
            (
                serde_json::json!([{"hostPort": 0, "containerPort": 80}]),
                "hostPort 0",
            ),
            (
                serde_json::json!([{"hostPort": 65536, "containerPort": 80}]),
                "hostPort 65536",
            ),
            (
                serde_json::json!([{"hostPort": 80, "containerPort": -1}]),
                "containerPort -1",
            ),
            (
                serde_json::json!([{"containerPort": 80}]),
                "hostPort is missing",
            ),
            (
                serde_json::json!([{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]),
                "sctp",
            ),
            (
                serde_json::json!([{"hostPort": 80, "containerPort": 80, "protocol": 6}]),
                "protocol 6",
            ),
            (
                serde_json::json!([{"hostPort": 80, "containerPort": 80, "hostIP": "::1"}]),
                "IPv6",
            ),
            (
                serde_json::json!([{"hostPort": 80, "containerPort": 80, "hostIP": "node"}]),
                "not an IP",
            ),
            (
                serde_json::json!([{"hostPort": 80, "containerPort": 80, "name": "x"}]),
                "unknown key",
            ),
        ] {
            let e = parse_port_mappings(&bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_NETWORK_CONFIG, "{bad}: {e:?}");
            assert!(e.msg.contains(needle), "{needle:?} not in {e:?}");
            assert!(e.msg.starts_with("runtimeConfig.portMappings"), "{e:?}");
        }
        // One host port to two container ports: a conflict (103), also across 0.0.0.0 and
        // a specific address; another protocol or address is not.
        for bad in [
            serde_json::json!([{"hostPort": 80, "containerPort": 1}, {"hostPort": 80, "containerPort": 2}]),
            serde_json::json!([{"hostPort": 80, "containerPort": 1, "hostIP": "10.0.0.1"}, {"hostPort": 80, "containerPort": 2}]),
        ] {
            let e = parse_port_mappings(&bad).unwrap_err();
            assert_eq!(e.code, code::HOSTPORT_CONFLICT, "{bad}: {e:?}");
            assert!(e.msg.contains("mapped twice"), "{e:?}");
        }
        assert_eq!(
            parse_port_mappings(&serde_json::json!([
                {"hostPort": 80, "containerPort": 1},
                {"hostPort": 80, "containerPort": 2, "protocol": "udp"},
            ]))
            .unwrap()
            .len(),
            2
        );
        assert_eq!(
            parse_port_mappings(&serde_json::json!([
                {"hostPort": 80, "containerPort": 1, "hostIP": "10.0.0.1"},
                {"hostPort": 80, "containerPort": 2, "hostIP": "10.0.0.2"},
            ]))
            .unwrap()
            .len(),
            2
        );
        // Through `run`: a bad mapping fails ADD with 7 before the agent is asked (it would
        // answer 11: there is no agent); DEL with the same configuration goes on.
        let stdin = br#"{"cniVersion":"1.1.0","name":"fp","type":"x","agentSocket":"/nonexistent/cni.sock","runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80,"protocol":"tcp"}]}}"#;
        let env_for = |cmd: &str| {
            env(&[
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
            ])
        };
        let o = run(&env_for("DEL"), stdin);
        assert_eq!(code_of(&o), 11, "{o:?}");
        let mut e = env_for("ADD");
        e.insert("CNI_NETNS".into(), "/var/run/netns/x".into());
        let o = run(&e, stdin);
        assert_eq!(code_of(&o), 7, "{o:?}");
        assert!(o.stdout.unwrap()["msg"]
            .as_str()
            .unwrap()
            .contains("hostPort 0"));
    }

    fn code_of_err<T: std::fmt::Debug>(r: Result<T, CniError>) -> u32 {
        r.unwrap_err().code
    }

    #[test]
    fn ids() {
        assert!(valid_id("abc-1.2_3"));
        assert!(!valid_id("-a"));
        assert!(!valid_id(""));
        assert!(valid_ifname("eth0"));
        assert!(!valid_ifname("0123456789abcdef"));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("a b"));
        assert_eq!(
            parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=a;").unwrap(),
            vec![
                ("IgnoreUnknown".to_string(), "1".to_string()),
                ("K8S_POD_NAME".to_string(), "a".to_string())
            ]
        );
    }

    #[test]
    fn k8s_args() {
        let a = parse_k8s_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0.x;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1;FOO=bar",
        )
        .unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("team-a"));
        assert_eq!(a.pod_name.as_deref(), Some("web-0.x"));
        assert_eq!(a.infra_container_id.as_deref(), Some("abc123"));
        assert_eq!(a.pod_uid.as_deref(), Some("u-1"));
        assert_eq!(parse_k8s_args("").unwrap(), CniArgs::default());
        // Known keys need no IgnoreUnknown.
        assert_eq!(
            parse_k8s_args("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p")
                .unwrap()
                .pod_name
                .as_deref(),
            Some("p")
        );
        // Unknown keys without IgnoreUnknown (or with it false) are an error, code 4.
        for bad in [
            "FOO=bar",
            "IgnoreUnknown=0;FOO=bar",
            "IgnoreUnknown=false;K8S_POD_NAME=p;X=1",
            "IgnoreUnknown=maybe",
            "K8S_POD_NAMESPACE=Bad_NS",
            "K8S_POD_NAMESPACE=a/b",
            "K8S_POD_NAME=-x",
            "K8S_POD_NAME=",
            "K8S_POD_INFRA_CONTAINER_ID=-x",
            "K8S_POD_NAME",
            "=x",
            "A=b=c",
        ] {
            let e = parse_k8s_args(bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV, "{bad}: {e:?}");
        }
        assert!(parse_k8s_args("FOO=bar")
            .unwrap_err()
            .msg
            .contains("unknown args"));
        // Through `run`: a malformed CNI_ARGS fails ADD before the agent is asked.
        let mut e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_ARGS", "K8S_POD_NAME=p;SOMETHING=else"),
        ]);
        let o = run(&e, CONF.as_bytes());
        assert_eq!(code_of(&o), 4);
        assert!(o.stdout.unwrap()["msg"]
            .as_str()
            .unwrap()
            .contains("SOMETHING"));
        // With IgnoreUnknown the request goes on, to the namespace check (code 3: there is
        // no /var/run/netns/x).
        e.insert(
            "CNI_ARGS".into(),
            "IgnoreUnknown=1;K8S_POD_NAME=p;SOMETHING=else".into(),
        );
        let o = run(&e, CONF.as_bytes());
        assert_eq!(code_of(&o), 3);
        assert!(o.stdout.unwrap()["msg"]
            .as_str()
            .unwrap()
            .contains("does not exist"));
        assert!(is_dns_label("a-1") && !is_dns_label("A") && !is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("a.b-c") && !is_dns_subdomain("a..b"));
    }
}
