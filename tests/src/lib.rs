//! End-to-end harness for ferroplane: emulated nodes and pods in network namespaces.
//!
//! Everything here needs root (namespaces, veth, XDP). Suites call [`require_root`] first
//! and return when it says no: the test is then counted as skipped by `cargo xtask test`
//! (a failure when `CI=true`). It also gives the test a time limit (the testkit's watchdog).
//!
//! Building blocks:
//! - [`Netns`]: a uniquely named network namespace (`fp<pid>-<n>-<role>`), deleted on drop
//!   (also on panic), with [`Netns::exec`], [`Netns::spawn`] (a [`ChildGuard`] killed on
//!   drop) and [`Netns::run`] (a closure on a thread inside the namespace, so tests can use
//!   `std::net` sockets directly).
//! - [`link_veth`] and address/route/sysctl helpers on [`Netns`].
//! - Probes: [`ping`], [`tcp_transfer`] (byte-exact, seeded pattern), [`scapy`].
//! - [`Topology::single_node`]: router + node + pods, the agent's YAML spec, and
//!   [`Topology::start_agent`] returning an [`AgentGuard`] with [`AgentGuard::ctl`].
//! - [`bench`]: the forwarding benchmark pieces used by `cargo xtask bench forward`.
//!
//! ```no_run
//! use ferroplane_e2e::{link_veth, ping, require_root, Netns};
//! if !require_root() {
//!     return;
//! }
//! let a = Netns::new("a").unwrap();
//! let b = Netns::new("b").unwrap();
//! link_veth(&a, "veth0", &b, "veth0").unwrap();
//! a.add_addr("veth0", "10.0.0.1/24").unwrap();
//! b.add_addr("veth0", "10.0.0.2/24").unwrap();
//! ping(&a, "10.0.0.2".parse().unwrap(), 1).unwrap();
//! ```
#![deny(missing_docs)]

pub mod apiserver;
pub mod bench;
pub mod cluster;
mod cmd;
pub mod cni;
pub mod netns;
pub mod probe;
pub mod topology;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use cluster::{Cluster, ClusterNode, ExternalPeer, OverlayMode, WgKeys};
pub use cmd::{command_line, run_with_timeout};
pub use netns::{cleanup_stale_namespaces, link_veth, ChildGuard, LinkStats, Netns};
pub use nix::sys::signal::Signal;
pub use probe::{epoch_now, ping, scapy, tcp_transfer, ContinuousPing, PingStats, TransferStats};
pub use topology::{AgentGuard, BpffsMount, Pod, Topology};

/// Harness errors. Every variant says what was being done and carries the evidence
/// (command line, exit status, captured stderr, agent log) needed to debug a failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An OS-level operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("`{cmd}` failed ({status}):\n{stderr}{stdout}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status, as text.
        status: String,
        /// Captured standard output.
        stdout: String,
        /// Captured standard error.
        stderr: String,
    },
    /// A command did not finish in time and was killed.
    #[error("`{cmd}` timed out after {timeout:?}:\n{stderr}{stdout}")]
    Timeout {
        /// The command line.
        cmd: String,
        /// The time it was given.
        timeout: Duration,
        /// Output captured until then.
        stdout: String,
        /// Error output captured until then.
        stderr: String,
    },
    /// A probe (ping, transfer, ...) ran but its check did not pass.
    #[error("{0}")]
    Probe(String),
    /// The agent did not come up.
    #[error("agent did not start: {reason}\n--- agent log {log_path} ---\n{log}")]
    AgentStart {
        /// Why it is considered failed.
        reason: String,
        /// Where the full log is.
        log_path: String,
        /// The end of the log.
        log: String,
    },
    /// Something expected on this machine is missing or malformed.
    #[error("{0}")]
    Setup(String),
}

/// Result alias for the harness.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// The entry check of every suite test: `if !require_root() { return; }`. As root it arms
/// the test's watchdog (a time limit) and returns true; otherwise the test is skipped with a
/// `SKIPPED:` marker, or fails when `CI=true` (see [`ferroplane_testkit`]).
pub use ferroplane_testkit::require_root;
/// Skips the running test (fails it when `CI=true`); see [`ferroplane_testkit::skip`].
pub use ferroplane_testkit::{require_tool, skip};

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where the ferroplane binaries are looked up: `$FERROPLANE_BIN_DIR` if set, else
/// `$CARGO_TARGET_DIR/release`, else `<workspace>/target/release`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERROPLANE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("release");
    }
    workspace_root().join("target").join("release")
}

/// Agent arguments every e2e agent gets from the environment: `FERRO_FAST_PATH=on|off` adds
/// `--fast-path on|off` (to run any suite with the XDP fast path forced on or off), and
/// `FERRO_WORKERS=N` adds `--workers N` (to run any suite with N engine workers), unless the
/// test passes its own flag in `extra`.
pub fn agent_env_args(extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for (var, flag) in [
        ("FERRO_FAST_PATH", "--fast-path"),
        ("FERRO_WORKERS", "--workers"),
    ] {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() && !extra.contains(&flag) => {
                args.push(flag.to_string());
                args.push(v);
            }
            _ => {}
        }
    }
    args
}

/// Engine workers the e2e agents run with: `FERRO_WORKERS` (1 when unset).
pub fn env_workers() -> usize {
    std::env::var("FERRO_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Path of binary `name` in `dir`, or an error telling how to build it.
pub fn bin_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Setup(format!(
            "{} not found: build it first (`cargo build --release --workspace`) or set FERROPLANE_BIN_DIR",
            path.display()
        )))
    }
}

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A private temporary directory removed on drop (kept when `FERROPLANE_KEEP_TMP` is set).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `$TMPDIR/ferroplane-<pid>-<n>-<label>` (mode 0700).
    pub fn new(label: &str) -> Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ferroplane-{}-{}-{}", std::process::id(), n, label));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(TempDir {
            path,
            keep: std::env::var_os("FERROPLANE_KEEP_TMP").is_some(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after drop (e.g. to look at logs).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The last `lines` lines of a text file (lossy), or a note saying why it could not be read.
pub fn tail_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
