//! Invoking CNI plugins the way a container runtime does: `CNI_*` in the environment, the
//! network configuration on stdin, from inside a namespace standing in for the host.
//!
//! Used by the `cni` suite (ferroplane-cni) and by `cargo xtask bench cni` (ferroplane-cni
//! against the reference `bridge` + `host-local` plugins).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Error, Netns, Result};

/// Where Debian's containernetworking-plugins install the reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// One plugin invocation's outcome.
#[derive(Debug, Clone)]
pub struct CniCall {
    /// Exit code (-1 if killed by a signal).
    pub exit: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Standard output parsed as JSON, if it is JSON.
    pub json: Option<Value>,
    /// Wall time of the plugin process.
    pub elapsed: Duration,
}

impl CniCall {
    /// The error code of a failed call (`code` of the error JSON).
    pub fn code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }

    /// True when the plugin exited 0.
    pub fn ok(&self) -> bool {
        self.exit == 0
    }

    /// The result's first IP address without its prefix (`ips[0].address`).
    pub fn ip(&self) -> Option<std::net::Ipv4Addr> {
        let a = self.json.as_ref()?["ips"][0]["address"].as_str()?;
        a.split('/').next()?.parse().ok()
    }
}

/// The `CNI_*` environment of one call.
#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    /// `CNI_COMMAND`; `None` leaves it unset.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: Option<String>,
    /// `CNI_PATH`.
    pub path: Option<String>,
}

impl CniEnv {
    /// A full environment for `command` on container `id` in `netns` (interface `eth0`,
    /// `CNI_PATH` = the reference plugin dir, `CNI_ARGS` with a pod name).
    pub fn new(command: &str, id: &str, netns: &Path) -> CniEnv {
        CniEnv {
            command: Some(command.to_string()),
            container_id: Some(id.to_string()),
            netns: Some(netns.display().to_string()),
            ifname: Some("eth0".to_string()),
            args: Some(format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{id}"
            )),
            path: Some(REFERENCE_PLUGIN_DIR.to_string()),
        }
    }

    /// Only `CNI_COMMAND` (STATUS, VERSION, GC).
    pub fn command_only(command: &str) -> CniEnv {
        CniEnv {
            command: Some(command.to_string()),
            path: Some(REFERENCE_PLUGIN_DIR.to_string()),
            ..CniEnv::default()
        }
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.env_clear();
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let pairs = [
            ("CNI_COMMAND", &self.command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
            ("CNI_PATH", &self.path),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
    }
}

/// Runs `plugin` with `env` and `stdin` from a thread inside `host` (the child inherits its
/// network namespace), killing it after `timeout`.
pub fn invoke(
    host: &Netns,
    plugin: &Path,
    env: &CniEnv,
    stdin: &str,
    timeout: Duration,
) -> Result<CniCall> {
    let plugin = plugin.to_path_buf();
    let env = env.clone();
    let stdin = stdin.to_string();
    host.run(move || invoke_here(&plugin, &env, &stdin, timeout))?
}

/// [`invoke`] in the calling thread's namespace.
pub fn invoke_here(plugin: &Path, env: &CniEnv, stdin: &str, timeout: Duration) -> Result<CniCall> {
    let mut cmd = Command::new(plugin);
    env.apply(&mut cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", plugin.display()), e))?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits before reading everything closes the pipe: not our error.
        let _ = input.write_all(stdin.as_bytes());
    }
    let pid = child.id();
    let watchdog = {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            if rx.recv_timeout(timeout).is_err() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        });
        (tx, t)
    };
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for {}", plugin.display()), e));
    let elapsed = start.elapsed();
    let _ = watchdog.0.send(());
    let _ = watchdog.1.join();
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(CniCall {
        exit: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(stdout.trim()).ok(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    })
}

/// A ferroplane network configuration (cniVersion 1.1.0) pointing at `socket`, declaring the
/// `portMappings` capability as the shipped conflist does.
pub fn ferroplane_conf(name: &str, socket: &Path) -> Value {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": name,
        "type": "ferroplane-cni",
        "agentSocket": socket.display().to_string(),
        "timeoutSeconds": 60,
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
        "capabilities": {"portMappings": true},
    })
}

/// The reference `bridge` + `host-local` configuration (cniVersion 1.0.0), with its
/// host-local state under `data_dir`.
pub fn bridge_conf(name: &str, bridge: &str, subnet: &str, data_dir: &Path) -> Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "subnet": subnet,
            "dataDir": data_dir.display().to_string(),
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    })
}

/// Path of a reference plugin, or an error saying how to install it.
pub fn reference_plugin(name: &str) -> Result<PathBuf> {
    let p = Path::new(REFERENCE_PLUGIN_DIR).join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Setup(format!(
            "{} not found: apt-get install containernetworking-plugins (cargo xtask deps)",
            p.display()
        )))
    }
}

/// Checks a CNI 1.x ADD result's shape: `cniVersion`, `interfaces` (name, mac, sandbox on
/// the container side), `ips` (address `A/P`, gateway, valid interface index), `routes`,
/// `dns`. Returns a description of the first problem.
pub fn check_add_result(
    v: &Value,
    version: &str,
    netns: &str,
    ifname: &str,
) -> std::result::Result<(), String> {
    let obj = v.as_object().ok_or("result is not an object")?;
    if obj.get("cniVersion").and_then(Value::as_str) != Some(version) {
        return Err(format!(
            "cniVersion is {:?}, expected {version}",
            obj.get("cniVersion")
        ));
    }
    let allowed = ["cniVersion", "interfaces", "ips", "routes", "dns"];
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unexpected key {k:?}"));
    }
    let ifaces = obj
        .get("interfaces")
        .and_then(Value::as_array)
        .ok_or("interfaces missing")?;
    let mac_ok = |m: &Value| {
        m.as_str().is_some_and(|s| {
            s.len() == 17
                && s.split(':')
                    .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok())
        })
    };
    for (i, iface) in ifaces.iter().enumerate() {
        if iface
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(format!("interfaces[{i}].name missing"));
        }
        if iface.get("mac").is_some_and(|m| !mac_ok(m)) {
            return Err(format!("interfaces[{i}].mac malformed: {}", iface["mac"]));
        }
    }
    let ips = obj
        .get("ips")
        .and_then(Value::as_array)
        .ok_or("ips missing")?;
    if ips.is_empty() {
        return Err("ips is empty".into());
    }
    for (i, ip) in ips.iter().enumerate() {
        let a = ip
            .get("address")
            .and_then(Value::as_str)
            .ok_or(format!("ips[{i}].address missing"))?;
        let (addr, plen) = a
            .split_once('/')
            .ok_or(format!("ips[{i}].address {a} has no prefix"))?;
        addr.parse::<std::net::Ipv4Addr>()
            .map_err(|_| format!("ips[{i}].address {a}"))?;
        plen.parse::<u8>()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or(format!("ips[{i}].address {a}: prefix"))?;
        if let Some(g) = ip.get("gateway") {
            g.as_str()
                .and_then(|g| g.parse::<std::net::Ipv4Addr>().ok())
                .ok_or(format!("ips[{i}].gateway {g}"))?;
        }
        let idx = ip
            .get("interface")
            .and_then(Value::as_u64)
            .ok_or(format!("ips[{i}].interface missing"))? as usize;
        let iface = ifaces
            .get(idx)
            .ok_or(format!("ips[{i}].interface {idx} out of range"))?;
        if iface.get("name").and_then(Value::as_str) != Some(ifname) {
            return Err(format!(
                "ips[{i}] is on {}, expected {ifname}",
                iface["name"]
            ));
        }
        if iface.get("sandbox").and_then(Value::as_str) != Some(netns) {
            return Err(format!(
                "interfaces[{idx}].sandbox is {}, expected {netns}",
                iface["sandbox"]
            ));
        }
    }
    if let Some(routes) = obj.get("routes") {
        for (i, r) in routes
            .as_array()
            .ok_or("routes is not a list")?
            .iter()
            .enumerate()
        {
            if r.get("dst")
                .and_then(Value::as_str)
                .is_none_or(|d| !d.contains('/'))
            {
                return Err(format!("routes[{i}].dst malformed"));
            }
        }
    }
    if let Some(dns) = obj.get("dns") {
        dns.as_object().ok_or("dns is not an object")?;
    }
    Ok(())
}

/// Percentile (0..=100, nearest rank) of durations in milliseconds.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&s, 50.0), 50.0);
        assert_eq!(percentile_ms(&s, 99.0), 99.0);
        assert_eq!(percentile_ms(&s[..1], 99.0), 1.0);
        assert!(percentile_ms(&[], 50.0).is_nan());
    }

    #[test]
    fn result_shape_checker() {
        let good = serde_json::json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "fpx", "mac": "02:00:00:00:00:01"},
                           {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/n"}],
            "ips": [{"address": "10.0.0.2/32", "gateway": "169.254.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {}
        });
        check_add_result(&good, "1.1.0", "/n", "eth0").unwrap();
        assert!(check_add_result(&good, "1.0.0", "/n", "eth0").is_err());
        assert!(check_add_result(&good, "1.1.0", "/m", "eth0").is_err());
        let mut bad = good.clone();
        bad["ips"][0]["interface"] = 5.into();
        assert!(check_add_result(&bad, "1.1.0", "/n", "eth0").is_err());
        let mut bad = good.clone();
        bad["interfaces"][0]["mac"] = "zz".into();
        assert!(check_add_result(&bad, "1.1.0", "/n", "eth0").is_err());
        let mut bad = good;
        bad["extra"] = 1.into();
        assert!(check_add_result(&bad, "1.1.0", "/n", "eth0").is_err());
    }
}
