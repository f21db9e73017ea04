//! `build-ebpf` and `build-and-load`.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::progress::{cargo, require_root, root, run, Progress};

/// The agent's default API socket (contracts).
pub const DEFAULT_API_SOCKET: &str = "/run/ferroplane/api.sock";

/// Release build of the agent and ferroctl.
pub fn build_binaries() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "ferroplane-agent",
        "-p",
        "ferroplane-ctl",
        "-p",
        "ferroplane-cni",
    ]))
}

/// The newest `target/release/build/ferroplane-bpf-*/out` directory holding `.o` files.
fn ebpf_out_dir(target: &Path) -> Result<Option<PathBuf>> {
    let build = target.join("release").join("build");
    let Ok(entries) = std::fs::read_dir(&build) else {
        return Ok(None);
    };
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("ferroplane-bpf-") {
            continue;
        }
        let out = entry.path().join("out");
        let has_objects = std::fs::read_dir(&out)
            .map(|d| {
                d.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "o"))
            })
            .unwrap_or(false);
        if !has_objects {
            continue;
        }
        let mtime = std::fs::metadata(&out)
            .and_then(|m| m.modified())
            .with_context(|| format!("stat {}", out.display()))?;
        if best.as_ref().is_none_or(|(t, _)| mtime > *t) {
            best = Some((mtime, out));
        }
    }
    Ok(best.map(|(_, p)| p))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// `cargo xtask build-ebpf`.
pub fn build_ebpf() -> Result<()> {
    let mut p = Progress::new(2);
    p.step(
        "building ferroplane-bpf (clang-19 compiles ebpf/*.c)",
        || run(cargo().args(["build", "--release", "-p", "ferroplane-bpf"])),
    )?;
    p.step("listing BPF objects", || {
        let dir = ebpf_out_dir(&target_dir())?.ok_or_else(|| {
            anyhow!("no target/release/build/ferroplane-bpf-*/out/*.o after the build: does userspace/bpf/build.rs compile ebpf/*.c?")
        })?;
        println!("{}:", dir.display());
        let mut objs: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "o"))
            .collect();
        objs.sort();
        for obj in objs {
            let size = std::fs::metadata(&obj).map(|m| m.len()).unwrap_or(0);
            println!(
                "  {:<40} {:>8} bytes",
                obj.file_name().unwrap_or_default().to_string_lossy(),
                size
            );
        }
        Ok(())
    })
}

/// The first IPv4 `addr/len` of `iface` and the default gateway through it, if any.
fn iface_ipv4(iface: &str) -> Result<(String, Option<String>)> {
    let out = Command::new("ip")
        .args(["-j", "addr", "show", "dev", iface])
        .output()
        .context("running ip -j addr")?;
    if !out.status.success() {
        bail!(
            "interface {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let addr = first_ipv4(&String::from_utf8_lossy(&out.stdout))?.ok_or_else(|| {
        anyhow!("interface {iface} has no IPv4 address: configure one or pass --config")
    })?;
    let routes = Command::new("ip")
        .args(["-j", "route", "show", "default", "dev", iface])
        .output()
        .context("running ip -j route")?;
    let gateway = serde_json::from_slice::<serde_json::Value>(&routes.stdout)
        .ok()
        .and_then(|v| {
            v.get(0)
                .and_then(|r| r.get("gateway"))
                .and_then(|g| g.as_str())
                .map(str::to_string)
        });
    Ok((addr, gateway))
}

/// Parses `ip -j addr show` output: the first `inet` as `local/prefixlen`.
fn first_ipv4(json: &str) -> Result<Option<String>> {
    let v: serde_json::Value = serde_json::from_str(json).context("parsing `ip -j addr` output")?;
    let infos = v
        .get(0)
        .and_then(|l| l.get("addr_info"))
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(infos.iter().find_map(|i| {
        if i.get("family")?.as_str()? != "inet" {
            return None;
        }
        Some(format!(
            "{}/{}",
            i.get("local")?.as_str()?,
            i.get("prefixlen")?.as_u64()?
        ))
    }))
}

/// A standalone agent spec (contracts format) for one uplink and no pods.
pub fn standalone_spec(
    node: &str,
    iface: &str,
    address: &str,
    gateway: Option<&str>,
    pod_cidr: &str,
) -> String {
    let mut y = String::from("# generated by cargo xtask build-and-load\nnode:\n");
    let _ = writeln!(y, "  name: {node}");
    let _ = writeln!(y, "  uplink: {iface}");
    let _ = writeln!(y, "  address: {address}");
    if let Some(gw) = gateway {
        let _ = writeln!(y, "  gateway: {gw}");
    }
    let _ = writeln!(y, "  podCIDR: {pod_cidr}");
    let _ = writeln!(y, "  xdpMode: auto");
    y.push_str("pods: []\n");
    y
}

/// `cargo xtask build-and-load`.
pub fn build_and_load(
    iface: &str,
    config: Option<PathBuf>,
    api_socket: &Path,
    pod_cidr: &str,
) -> Result<()> {
    require_root("build-and-load")?;
    let mut p = Progress::new(4);
    p.step("system packages", crate::deps::ensure)?;
    p.step(
        "building release binaries (agent, ferroctl, BPF objects)",
        build_binaries,
    )?;
    let config = p.step("agent spec", || {
        if let Some(c) = config {
            if !c.is_file() {
                bail!("--config {}: no such file", c.display());
            }
            println!("using {}", c.display());
            return Ok(c);
        }
        let (addr, gw) = iface_ipv4(iface)?;
        let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "node-1".into());
        let yaml = standalone_spec(&node, iface, &addr, gw.as_deref(), pod_cidr);
        let dir = Path::new("/run/ferroplane");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{iface}.yaml"));
        std::fs::write(&path, &yaml).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}:\n{yaml}", path.display());
        Ok(path)
    })?;
    if let Some(dir) = api_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let agent = ferroplane_e2e::bin_path(&ferroplane_e2e::bin_dir(), "ferroplane-agent")?;
    let ctl = ferroplane_e2e::bin_dir().join("ferroctl");
    p.step(
        "starting the agent in the foreground (Ctrl-C stops it)",
        || {
            println!(
                "inspect from another shell: {} --socket {} show counters",
                ctl.display(),
                api_socket.display()
            );
            let mut cmd = Command::new(&agent);
            cmd.arg("--config")
                .arg(&config)
                .arg("--api-socket")
                .arg(api_socket);
            println!("$ {}", ferroplane_e2e::command_line(&cmd));
            let err = cmd.exec();
            Err(anyhow!("exec {}: {err}", agent.display()))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_first_ipv4() {
        let json = r#"[{"ifindex":2,"ifname":"eth0","addr_info":[
            {"family":"inet6","local":"fe80::1","prefixlen":64},
            {"family":"inet","local":"192.168.100.2","prefixlen":24},
            {"family":"inet","local":"192.168.100.3","prefixlen":24}]}]"#;
        assert_eq!(
            first_ipv4(json).unwrap().as_deref(),
            Some("192.168.100.2/24")
        );
        assert_eq!(first_ipv4(r#"[{"addr_info":[]}]"#).unwrap(), None);
        assert!(first_ipv4("not json").is_err());
    }

    #[test]
    fn spec_has_contract_fields() {
        let y = standalone_spec(
            "n1",
            "eth0",
            "192.168.1.5/24",
            Some("192.168.1.1"),
            "10.244.0.0/24",
        );
        assert_eq!(
            y,
            "# generated by cargo xtask build-and-load\nnode:\n  name: n1\n  uplink: eth0\n  \
             address: 192.168.1.5/24\n  gateway: 192.168.1.1\n  podCIDR: 10.244.0.0/24\n  \
             xdpMode: auto\npods: []\n"
        );
        assert!(!standalone_spec("n1", "eth0", "a/24", None, "c").contains("gateway"));
    }

    #[test]
    fn finds_newest_object_dir() {
        let tmp = ferroplane_e2e::TempDir::new("xtask-ebpf").unwrap();
        let t = tmp.path();
        assert_eq!(ebpf_out_dir(t).unwrap(), None);
        let old = t.join("release/build/ferroplane-bpf-aaaa/out");
        let empty = t.join("release/build/ferroplane-bpf-bbbb/out");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(old.join("xdp_uplink.o"), b"x").unwrap();
        assert_eq!(ebpf_out_dir(t).unwrap(), Some(old));
    }
}
