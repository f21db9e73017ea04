//! Network namespaces as RAII guards, processes inside them, veth and address helpers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{command_line, run_ok, run_with_timeout};
use crate::{Error, Result};

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/var/run/netns";
/// Default time limit for [`Netns::exec`] and friends.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Time limit for `ip` configuration commands.
const IP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Linux interface name limit (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

type SharedChild = Arc<Mutex<Option<Child>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ip_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// A named network namespace, created by [`Netns::new`] and deleted on drop.
///
/// The name is `fp<pid>-<n>-<role>`, unique per test process, so suites can run in parallel.
/// Drop stops every process started with [`Netns::spawn`]/[`Netns::spawn_logged`]/
/// [`Netns::spawn_command`] that is still running, kills whatever else still runs inside the
/// namespace, then deletes it. Drop never panics (failures are printed as warnings).
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    children: Mutex<Vec<SharedChild>>,
}

impl Netns {
    /// Creates namespace `fp<pid>-<n>-<role>` with `lo` up. `role` is `[a-z0-9-]+`.
    pub fn new(role: &str) -> Result<Netns> {
        if role.is_empty()
            || !role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::Setup(format!(
                "netns role {role:?} must be non-empty [a-z0-9-]"
            )));
        }
        // The project's one naming scheme (shared counter with the testkit's own guard).
        let name = ferroplane_testkit::netns::unique_name(role);
        run_ok(ip_cmd(&["netns", "add", &name]), IP_TIMEOUT)?;
        let ns = Netns {
            path: Path::new(NETNS_DIR).join(&name),
            name,
            children: Mutex::new(Vec::new()),
        };
        // From here on, drop cleans up if anything fails.
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as for `ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind-mount path (`/var/run/netns/NAME`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A `Command` running `args` inside the namespace (`ip netns exec NAME args...`, which
    /// also gives the process a `/sys` of this namespace). Add env, stdio etc. and pass it to
    /// [`Netns::spawn_command`] or [`run_with_timeout`](crate::run_with_timeout).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs `args` in the namespace to completion (60 s limit) and returns its output,
    /// whatever the exit status.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        self.exec_timeout(args, EXEC_TIMEOUT)
    }

    /// [`Netns::exec`] with an explicit time limit.
    pub fn exec_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        run_with_timeout(self.command(args), timeout)
    }

    /// Runs `args` in the namespace; a non-zero exit is an error. Returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> Result<String> {
        run_ok(self.command(args), EXEC_TIMEOUT)
    }

    /// Runs a `sh -c` script in the namespace; a non-zero exit is an error. Returns stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.exec_ok(&["sh", "-c", script])
    }

    /// Runs `ip -n NAME args...`; a non-zero exit is an error. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = ip_cmd(&["-n", &self.name]);
        cmd.args(args);
        run_ok(cmd, IP_TIMEOUT)
    }

    /// Starts `args` in the namespace in the background (stdin, stdout, stderr to /dev/null).
    pub fn spawn(&self, args: &[&str]) -> Result<ChildGuard> {
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.spawn_command(cmd)
    }

    /// Starts `args` in the namespace in the background, stdout and stderr appended to `log`.
    pub fn spawn_logged(&self, args: &[&str], log: &Path) -> Result<ChildGuard> {
        let mut cmd = self.command(args);
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| Error::io(format!("opening log {}", log.display()), e))
        };
        cmd.stdout(open()?).stderr(open()?);
        self.spawn_command(cmd)
    }

    /// Starts a command built with [`Netns::command`] (stdin is set to /dev/null), records it
    /// so that dropping the namespace stops it too, and returns once it is inside the
    /// namespace. If the command was made a process
    /// group leader (`CommandExt::process_group(0)`), stopping it signals the whole group.
    pub fn spawn_command(&self, mut cmd: Command) -> Result<ChildGuard> {
        let line = command_line(&cmd);
        cmd.stdin(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting `{line}`"), e))?;
        let pid = child.id();
        let shared = Arc::new(Mutex::new(Some(child)));
        lock(&self.children).push(Arc::clone(&shared));
        let guard = ChildGuard {
            child: shared,
            pid,
            cmd: line,
        };
        self.wait_entered(&guard);
        Ok(guard)
    }

    /// Waits (up to 2 s) until `child` has entered this namespace (`ip netns exec` does that
    /// right after it starts), so that callers see it there; returns early if it exits.
    fn wait_entered(&self, child: &ChildGuard) {
        use std::os::unix::fs::MetadataExt;
        let Ok(ns) = std::fs::metadata(&self.path) else {
            return;
        };
        let want = format!("net:[{}]", ns.ino());
        let link = format!("/proc/{}/ns/net", child.pid);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && child.is_running() {
            if std::fs::read_link(&link).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Runs `f` on a new thread that has entered this namespace (`setns`), so `f` can use
    /// `std::net` sockets directly; returns its value. A panic in `f` is resumed here.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = self.open()?;
        std::thread::scope(|s| {
            let handle = s.spawn(move || -> Result<T> {
                enter(&file, &self.name)?;
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    pub(crate) fn open(&self) -> Result<File> {
        File::open(&self.path).map_err(|e| Error::io(format!("opening {}", self.path.display()), e))
    }

    /// Sets an interface up.
    pub fn set_up(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", ifname, "up"]).map(drop)
    }

    /// Adds an address (`10.0.0.1/24`) to an interface.
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "add", cidr, "dev", ifname]).map(drop)
    }

    /// Adds a route `dst via gateway` (`dst` may be `default`).
    pub fn add_route(&self, dst: &str, via: &str) -> Result<()> {
        self.ip(&["route", "add", dst, "via", via]).map(drop)
    }

    /// Adds a link-scope route `dst dev ifname`.
    pub fn add_route_dev(&self, dst: &str, ifname: &str) -> Result<()> {
        self.ip(&["route", "add", dst, "dev", ifname, "scope", "link"])
            .map(drop)
    }

    /// Adds a permanent neighbour entry `ip lladdr mac dev ifname`.
    pub fn add_neigh(&self, ip: &str, mac: &str, ifname: &str) -> Result<()> {
        self.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            mac,
            "dev",
            ifname,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward`, `1`).
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        Ok(self.exec_ok(&["sysctl", "-n", key])?.trim().to_string())
    }

    /// IPv4 datagrams the namespace's kernel has forwarded (`Ip: ForwDatagrams` of
    /// `/proc/net/snmp`): proof that traffic crossed (or did not cross) its forwarding path.
    pub fn ip_forwarded(&self) -> Result<u64> {
        let snmp = self.exec_ok(&["cat", "/proc/net/snmp"])?;
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (ip.next(), ip.next());
        let parsed = names.zip(values).and_then(|(n, v)| {
            let at = n.split_whitespace().position(|f| f == "ForwDatagrams")?;
            v.split_whitespace().nth(at)?.parse().ok()
        });
        parsed
            .ok_or_else(|| Error::Probe(format!("no Ip: ForwDatagrams in /proc/net/snmp: {snmp}")))
    }

    fn link_json(&self, ifname: &str, stats: bool) -> Result<serde_json::Value> {
        let mut args = vec!["-j"];
        if stats {
            args.push("-s");
        }
        args.extend(["link", "show", "dev", ifname]);
        let text = self.ip(&args)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Setup(format!("bad `ip -j link` output ({e}): {text}")))?;
        value
            .get(0)
            .cloned()
            .ok_or_else(|| Error::Setup(format!("no interface {ifname} in {}", self.name)))
    }

    /// The MAC address of an interface (`aa:bb:cc:dd:ee:ff`).
    pub fn mac(&self, ifname: &str) -> Result<String> {
        let link = self.link_json(ifname, false)?;
        link.get("address")
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::Setup(format!("{ifname} in {} has no address", self.name)))
    }

    /// The interface's kernel counters (`ip -s link`).
    pub fn link_stats(&self, ifname: &str) -> Result<LinkStats> {
        let link = self.link_json(ifname, true)?;
        let get = |dir: &str, field: &str| {
            link.get("stats64")
                .and_then(|s| s.get(dir))
                .and_then(|d| d.get(field))
                .and_then(|v| v.as_u64())
                .ok_or_else(|| Error::Setup(format!("no stats64.{dir}.{field} for {ifname}")))
        };
        Ok(LinkStats {
            rx_packets: get("rx", "packets")?,
            rx_bytes: get("rx", "bytes")?,
            rx_dropped: get("rx", "dropped")?,
            tx_packets: get("tx", "packets")?,
            tx_bytes: get("tx", "bytes")?,
            tx_dropped: get("tx", "dropped")?,
        })
    }

    /// PIDs of the processes whose network namespace this is (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<i32>> {
        pids_of(&self.name)
    }
}

fn pids_of(name: &str) -> Result<Vec<i32>> {
    let out = run_ok(ip_cmd(&["netns", "pids", name]), IP_TIMEOUT)?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Enters the namespace behind `file` on the current thread.
pub(crate) fn enter(file: &File, name: &str) -> Result<()> {
    nix::sched::setns(file, CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io(format!("setns into {name}"), e.into()))
}

/// Kills every process in namespace `name` and deletes it; warns (never panics) on failure.
fn destroy(name: &str) {
    for round in 0..50 {
        match pids_of(name) {
            Ok(pids) if pids.is_empty() => break,
            Ok(pids) => {
                for pid in pids {
                    if pid as u32 != std::process::id() {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                if round == 0 {
                    eprintln!("warning: listing processes in netns {name}: {e}");
                }
                break;
            }
        }
    }
    if let Err(e) = run_ok(ip_cmd(&["netns", "delete", name]), IP_TIMEOUT) {
        eprintln!("warning: deleting netns {name}: {e}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let children = std::mem::take(&mut *lock(&self.children));
        for child in children {
            if let Some(mut c) = lock(&child).take() {
                stop_child(&mut c, Signal::SIGTERM, STOP_GRACE);
            }
        }
        destroy(&self.name);
    }
}

/// Deletes namespaces left by harness processes that no longer exist (named `fp<pid>-<n>-...`
/// with no process `<pid>`), e.g. after a SIGKILLed test run. Returns the names deleted.
pub fn cleanup_stale_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut deleted = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = ferroplane_testkit::netns::owner_pid(&name) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            destroy(&name);
            deleted.push(name);
        }
    }
    deleted
}

/// Creates a veth pair `if_a` (in `a`) <-> `if_b` (in `b`) and sets both ends up.
/// The pair is created directly inside the namespaces: no names are taken in the caller's.
pub fn link_veth(a: &Netns, if_a: &str, b: &Netns, if_b: &str) -> Result<()> {
    for ifname in [if_a, if_b] {
        if ifname.is_empty() || ifname.len() > IFNAME_MAX {
            return Err(Error::Setup(format!(
                "interface name {ifname:?} must be 1..={IFNAME_MAX} bytes"
            )));
        }
    }
    a.ip(&[
        "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", &b.name,
    ])?;
    a.set_up(if_a)?;
    b.set_up(if_b)
}

/// Kernel interface counters, from `ip -s -j link show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets dropped on send.
    pub tx_dropped: u64,
}

/// A process started in a namespace. Drop stops it: SIGTERM, then SIGKILL after a short
/// grace. The process is reaped exactly once, so its PID is never signalled after reuse.
#[derive(Debug)]
pub struct ChildGuard {
    child: SharedChild,
    pid: u32,
    cmd: String,
}

impl ChildGuard {
    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.cmd
    }

    /// `Some(status)` once it has exited (already stopped counts as exited).
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        match lock(&self.child).as_mut() {
            Some(c) => c
                .try_wait()
                .map_err(|e| Error::io(format!("waiting for `{}`", self.cmd), e)),
            None => Ok(Some(exited_marker())),
        }
    }

    /// True while the process runs.
    pub fn is_running(&self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig`, waits up to `grace`, then SIGKILLs. Returns the exit status (None if it
    /// was already stopped through this guard or its namespace).
    pub fn stop_with(&self, sig: Signal, grace: Duration) -> Option<ExitStatus> {
        let mut slot = lock(&self.child);
        let status = slot.as_mut().map(|c| stop_child(c, sig, grace));
        *slot = None;
        status.flatten()
    }

    /// [`ChildGuard::stop_with`] SIGTERM and a 2 s grace.
    pub fn stop(&self) -> Option<ExitStatus> {
        self.stop_with(Signal::SIGTERM, STOP_GRACE)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Status reported for a process already stopped through another handle.
fn exited_marker() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(0)
}

/// Stops `child` (and, if it leads its own process group, the whole group: e.g. trafgen's
/// worker processes): `sig`, up to `grace` to exit, then SIGKILL. Reaps it.
fn stop_child(child: &mut Child, sig: Signal, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // Not reaped yet, so the PID still names our child (a zombie at worst).
    let Ok(raw) = i32::try_from(child.id()) else {
        let _ = child.kill();
        return child.wait().ok();
    };
    let pid = Pid::from_raw(raw);
    let group_leader = nix::unistd::getpgid(Some(pid)).is_ok_and(|g| g == pid);
    let target = if group_leader {
        Pid::from_raw(-raw)
    } else {
        pid
    };
    let _ = kill(target, sig);
    let deadline = Instant::now() + grace;
    let mut status = None;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(s)) => {
                status = Some(s);
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    if group_leader {
        // Whatever is left of the group (the leader may be gone already, the group not).
        let _ = kill(target, Signal::SIGKILL);
    }
    match status {
        Some(s) => Some(s),
        None => {
            let _ = child.kill();
            child.wait().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use ferroplane_testkit::netns::owner_pid as harness_pid;

    #[test]
    fn parses_harness_names() {
        assert_eq!(harness_pid("fp1234-0-node"), Some(1234));
        assert_eq!(harness_pid("fp1234-17-pod-a"), Some(1234));
        assert_eq!(harness_pid("fp-1234-pod-a"), None);
        assert_eq!(harness_pid("fp1234-x-node"), None);
        assert_eq!(harness_pid("fp1234-0-"), None);
        assert_eq!(harness_pid("other"), None);
    }
}
