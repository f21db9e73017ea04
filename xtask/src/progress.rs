//! Numbered steps with timings, and running commands with their output streamed.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

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
    nix::unistd::geteuid().is_root()
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

/// Totals from libtest's `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TestCounts {
    /// Tests passed.
    pub passed: u64,
    /// Tests failed.
    pub failed: u64,
}

impl TestCounts {
    /// Adds the counts of one `test result: ...` line; other lines are ignored.
    pub fn add_line(&mut self, line: &str) -> bool {
        let Some(rest) = line.trim_start().strip_prefix("test result:") else {
            return false;
        };
        let words: Vec<&str> = rest
            .split(|c: char| c.is_whitespace() || c == ';' || c == '.')
            .filter(|w| !w.is_empty())
            .collect();
        let mut seen = false;
        for pair in words.windows(2) {
            let Ok(n) = pair[0].parse::<u64>() else {
                continue;
            };
            match pair[1] {
                "passed" => {
                    self.passed += n;
                    seen = true;
                }
                "failed" => {
                    self.failed += n;
                    seen = true;
                }
                _ => {}
            }
        }
        seen
    }
}

/// Runs a `cargo test` command: stdout streamed line by line and its `test result:` lines
/// counted, stderr inherited. Returns the counts and whether cargo exited successfully.
pub fn run_tests(cmd: &mut Command) -> Result<(TestCounts, bool)> {
    let line = ferroplane_e2e::command_line(cmd);
    println!("$ {line}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let mut counts = TestCounts::default();
    if let Some(out) = child.stdout.take() {
        let stdout = std::io::stdout();
        for l in BufReader::new(out).lines() {
            let l = l.context("reading test output")?;
            counts.add_line(&l);
            let mut lock = stdout.lock();
            let _ = writeln!(lock, "{l}");
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    Ok((counts, status.success()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_test_result_lines() {
        let mut c = TestCounts::default();
        assert!(c.add_line(
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
        ));
        assert!(c.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.50s"
        ));
        assert!(!c.add_line("test foo ... ok"));
        assert!(!c.add_line("running 3 tests"));
        assert_eq!(
            c,
            TestCounts {
                passed: 15,
                failed: 2
            }
        );
    }

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
