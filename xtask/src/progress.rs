//! Numbered steps with timings, and running commands with their output streamed.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

mod testrun;
pub use testrun::{run_tests, TestCounts, TestRun};

/// Prints `[n/total] title… (t+Xs)` per step and `done in Ys` after it; failures name the
/// step.
pub struct Progress {
    total: usize,
    done: usize,
    start: Instant,
}

impl Progress {
    /// A run of `total` steps.
    pub fn new(total: usize) -> Self {
        Progress {
            total,
            done: 0,
            start: Instant::now(),
        }
    }

    /// Runs one step.
    pub fn step<T>(&mut self, title: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.done += 1;
        let (n, total) = (self.done, self.total);
        println!(
            "\n[{n}/{total}] {title}… (t+{:.1}s)",
            self.start.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
        let t = Instant::now();
        match f() {
            Ok(v) => {
                println!("[{n}/{total}] done in {:.1}s", t.elapsed().as_secs_f64());
                Ok(v)
            }
            Err(e) => Err(e.context(format!(
                "step [{n}/{total}] \"{title}\" failed after {:.1}s",
                t.elapsed().as_secs_f64()
            ))),
        }
    }

    /// Seconds since the run started.
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    ferroplane_e2e::workspace_root()
}

/// `cargo` (the one that runs us) in the workspace root.
pub fn cargo() -> Command {
    let bin = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(bin);
    cmd.current_dir(root());
    cmd
}

/// Runs `cmd` with inherited stdio (output streamed), failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = ferroplane_e2e::command_line(cmd);
    println!("$ {line}");
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` exited with {status}");
    }
    Ok(())
}

/// True when running as root.
pub fn is_root() -> bool {
    ferroplane_testkit::is_root()
}

/// Fails with a clear message unless running as root.
pub fn require_root(what: &str) -> Result<()> {
    if is_root() {
        Ok(())
    } else {
        Err(anyhow!(
            "`cargo xtask {what}` needs root (network namespaces, XDP, apt-get): run it as root, e.g. `sudo -E cargo xtask {what}`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_names_failed_step() {
        let mut p = Progress::new(2);
        p.step("first", || Ok(())).unwrap();
        let err = p
            .step("second thing", || -> Result<()> { bail!("boom") })
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("[2/2]") && text.contains("second thing") && text.contains("boom"),
            "{text}"
        );
    }
}
