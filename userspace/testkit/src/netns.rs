//! A network namespace guard for crate-level tests, and the naming scheme every test
//! namespace of the project uses.
//!
//! Names are `fp<pid>-<n>-<role>`: unique per process (tests run in parallel), and the PID
//! tells whether the process that made it is gone, so leftovers of a killed run can be
//! found ([`owner_pid`]; the e2e harness's `cleanup_stale_namespaces`) and the watchdog can
//! delete its own ([`delete_namespaces_of`]). The e2e harness (`ferroplane-e2e`) has a
//! richer `Netns` that returns errors with evidence and tracks the processes it starts; it
//! takes its names from [`unique_name`]. This one panics on failure, which is what a test
//! wants.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh name `fp<pid>-<n>-<role>`. Panics unless `role` is non-empty `[a-z0-9-]`.
pub fn unique_name(role: &str) -> String {
    assert!(
        !role.is_empty()
            && role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "netns role {role:?} must be non-empty [a-z0-9-]"
    );
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("fp{}-{n}-{role}", std::process::id())
}

/// The PID in a name made by [`unique_name`]; `None` for other names.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("fp")?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    let _n: u32 = parts.next()?.parse().ok()?;
    parts.next().filter(|r| !r.is_empty())?;
    Some(pid)
}

/// Deletes the namespaces whose name says process `pid` made them; returns their names.
pub fn delete_namespaces_of(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut deleted = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_pid(&name) == Some(pid)
            && Command::new("ip")
                .args(["netns", "del", &name])
                .output()
                .is_ok_and(|o| o.status.success())
        {
            deleted.push(name);
        }
    }
    deleted
}

/// Runs `cmd`, panicking with its stderr if it cannot start or fails; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Moves the calling thread into the network namespace `name`. Panics on failure.
pub fn enter_netns(name: &str) {
    let path = Path::new(NETNS_DIR).join(name);
    let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
}

/// A network namespace named by [`unique_name`] with `lo` up, deleted on drop (also while
/// a test unwinds; drop never panics).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `fp<pid>-<n>-<role>` and sets `lo` up. Panics on failure.
    pub fn new(role: &str) -> Netns {
        let name = unique_name(role);
        // A leftover of a dead process that had the same PID would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// [`Netns::new`] with IPv6 disabled (no autoconfiguration or neighbour discovery
    /// frames on its links: for tests that count every frame).
    pub fn new_ipv4_only(role: &str) -> Netns {
        let ns = Netns::new(role);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns
    }

    /// The name, as for `ip netns exec NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mount path, `/var/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// `ip -n NAME args...`, panicking on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip netns exec NAME args...`, panicking on failure; returns stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// A veth pair `a`/`b` inside this namespace with the given MACs, one queue each (so
    /// every frame arrives on queue 0), both up.
    pub fn veth(&self, a: &str, mac_a: &str, b: &str, mac_b: &str) {
        self.ip(&[
            "link",
            "add",
            a,
            "address",
            mac_a,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
            "type",
            "veth",
            "peer",
            "name",
            b,
            "address",
            mac_b,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
        ]);
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["link", "set", b, "up"]);
    }

    /// Runs `f` on a thread that has entered the namespace and returns its value; a panic
    /// in `f` is resumed here.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                enter_netns(&self.name);
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_pid() {
        let a = unique_name("node-1");
        let b = unique_name("node-1");
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a), Some(std::process::id()));
        assert_eq!(owner_pid("fp12-3-pod"), Some(12));
        for other in [
            "fp12-x-pod",
            "fp12-3-",
            "fp-bpf-x-1",
            "cni-1234",
            "fpabc-1-x",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    #[should_panic(expected = "must be non-empty [a-z0-9-]")]
    fn bad_roles_are_refused() {
        unique_name("Node_1");
    }

    #[test]
    fn a_namespace_is_made_entered_and_deleted() {
        if !crate::require_root() {
            return;
        }
        let ns = Netns::new_ipv4_only("testkit");
        let path = ns.path();
        assert!(path.exists());
        ns.veth("t0", "02:00:00:00:00:01", "t1", "02:00:00:00:00:02");
        let shown = ns.ip(&["-br", "link"]);
        assert!(
            shown.contains("t0@t1") && shown.contains("t1@t0"),
            "{shown}"
        );
        let v6 = ns.exec(&["sysctl", "-n", "net.ipv6.conf.all.disable_ipv6"]);
        assert_eq!(v6.trim(), "1");
        let inside = ns.enter(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap());
        let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(inside, outside);
        drop(ns);
        assert!(!path.exists());
    }
}
