//! Running `cargo test` commands: libtest's output counted, the testkit's marker lines read,
//! and a time limit per command.
//!
//! libtest cannot mark a test ignored once it runs, so a test that cannot run (not root, a
//! tool missing) returns early and libtest counts it as passed. The testkit writes
//! `SKIPPED: <test>: <reason>` to stderr first; here those tests move from passed to
//! skipped (only tests libtest reported `ok`: a skip marker never hides a failure). With
//! `CI=true` the testkit fails such a test instead. `TIMEOUT: <test>: ...` comes from the
//! testkit's per-test watchdog, which ends the test binary: the tests of a binary that ends
//! without its `test result:` line and were not reported count as failed.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferroplane_testkit::fuzz::parse_fuzz_line;
use ferroplane_testkit::parse_skip_line;
use ferroplane_testkit::watchdog::parse_timeout_line;

/// Totals of test runs: the last line of `cargo xtask test` is
/// `N passed, N failed, N skipped`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TestCounts {
    /// Tests that ran and passed.
    pub passed: u64,
    /// Tests that failed, or did not finish.
    pub failed: u64,
    /// Tests that did not run: skipped through the testkit, or `#[ignore]`d.
    pub skipped: u64,
}

impl TestCounts {
    /// Adds `other` to these totals.
    pub fn add(&mut self, other: TestCounts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }

    /// `N passed, N failed, N skipped`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// One test binary's output between `running N tests` and `test result:`.
#[derive(Debug, Default)]
struct Binary {
    expected: u64,
    ok: u64,
    failed: u64,
    ignored: u64,
}

/// libtest's stdout of one `cargo test` command, line by line.
#[derive(Debug, Default)]
pub struct Tally {
    counts: TestCounts,
    binary: Option<Binary>,
    ok_names: Vec<String>,
    unfinished: u64,
}

/// `test NAME ... RESULT` → (NAME, RESULT).
fn test_line(line: &str) -> Option<(&str, &str)> {
    let (name, result) = line.strip_prefix("test ")?.rsplit_once(" ... ")?;
    Some((name, result.trim()))
}

/// The numbers before `passed`, `failed`, `ignored` in a `test result:` line.
fn result_numbers(rest: &str) -> (u64, u64, u64) {
    let words: Vec<&str> = rest
        .split(|c: char| c.is_whitespace() || c == ';' || c == '.')
        .filter(|w| !w.is_empty())
        .collect();
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    for pair in words.windows(2) {
        let Ok(n) = pair[0].parse::<u64>() else {
            continue;
        };
        match pair[1] {
            "passed" => passed += n,
            "failed" => failed += n,
            "ignored" => ignored += n,
            _ => {}
        }
    }
    (passed, failed, ignored)
}

impl Tally {
    /// Reads one line of libtest's stdout.
    pub fn line(&mut self, line: &str) {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("running ") {
            if let Some(n) = rest
                .strip_suffix(" tests")
                .or_else(|| rest.strip_suffix(" test"))
                .and_then(|n| n.trim().parse().ok())
            {
                self.end_binary();
                self.binary = Some(Binary {
                    expected: n,
                    ..Binary::default()
                });
            }
        } else if let Some(rest) = line.trim_start().strip_prefix("test result:") {
            let (passed, failed, ignored) = result_numbers(rest);
            self.counts.add(TestCounts {
                passed,
                failed,
                skipped: ignored,
            });
            self.binary = None;
        } else if let Some((name, result)) = test_line(line) {
            let Some(b) = self.binary.as_mut() else {
                return;
            };
            if result == "ok" {
                b.ok += 1;
                self.ok_names.push(name.to_string());
            } else if result.starts_with("FAILED") {
                b.failed += 1;
            } else if result.starts_with("ignored") {
                b.ignored += 1;
            }
        }
    }

    /// A binary that ended without its `test result:` line (killed by the watchdog or the
    /// command's time limit, or crashed): what it reported counts, the rest failed.
    fn end_binary(&mut self) {
        let Some(b) = self.binary.take() else {
            return;
        };
        let seen = b.ok + b.failed + b.ignored;
        let missing = b.expected.saturating_sub(seen);
        self.unfinished += missing;
        self.counts.add(TestCounts {
            passed: b.ok,
            failed: b.failed + missing,
            skipped: b.ignored,
        });
    }

    /// The totals, once the command is over, with the markers its stderr carried.
    pub fn finish(mut self, markers: Markers) -> Outcome {
        self.end_binary();
        let mut counts = self.counts;
        let mut skipped = Vec::new();
        let mut unmatched = Vec::new();
        for (test, reason) in markers.skips {
            match self.ok_names.iter().position(|n| *n == test) {
                Some(i) if counts.passed > 0 => {
                    self.ok_names.swap_remove(i);
                    counts.passed -= 1;
                    counts.skipped += 1;
                    skipped.push((test, reason));
                }
                _ => unmatched.push(test),
            }
        }
        Outcome {
            counts,
            skipped,
            unmatched_skips: unmatched,
            timeouts: markers.timeouts,
            unfinished: self.unfinished,
            fuzz: markers.fuzz,
        }
    }
}

/// The testkit's marker lines on stderr.
#[derive(Debug, Default)]
pub struct Markers {
    skips: Vec<(String, String)>,
    timeouts: Vec<String>,
    fuzz: Vec<(String, u64)>,
}

impl Markers {
    /// Reads one line of stderr.
    pub fn line(&mut self, line: &str) {
        if let Some((test, reason)) = parse_skip_line(line) {
            self.skips.push((test.to_string(), reason.to_string()));
        } else if let Some((test, _)) = parse_timeout_line(line) {
            self.timeouts.push(test.to_string());
        } else if let Some((target, n)) = parse_fuzz_line(line) {
            self.fuzz.push((target.to_string(), n));
        }
    }
}

/// What one `cargo test` command did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Its totals, skips moved out of passed.
    pub counts: TestCounts,
    /// Tests skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Tests that wrote a skip marker but were not reported `ok` (they failed or did not
    /// finish, and count as such).
    pub unmatched_skips: Vec<String>,
    /// Tests the watchdog ended.
    pub timeouts: Vec<String>,
    /// Tests of binaries that ended early, counted as failed.
    pub unfinished: u64,
    /// Fuzz targets run, with their executions.
    pub fuzz: Vec<(String, u64)>,
}

/// A command's outcome, whether it exited successfully and whether its time limit ended it.
#[derive(Debug)]
pub struct TestRun {
    /// The counts and markers.
    pub outcome: Outcome,
    /// `cargo test` exited with status 0.
    pub success: bool,
    /// The time limit killed it.
    pub timed_out: bool,
}

/// Reads `input` line by line (lossy UTF-8), echoing each line to `echo` and handing it to
/// `f`.
fn pump(input: impl Read, mut echo: impl Write, mut f: impl FnMut(&str)) {
    let mut reader = BufReader::new(input);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let _ = echo.write_all(line.as_bytes());
                if !line.ends_with('\n') {
                    let _ = echo.write_all(b"\n");
                }
                let _ = echo.flush();
                f(line.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

/// SIGKILLs `pid` and its descendants; returns how many processes were signalled.
fn kill_tree(pid: u32) -> usize {
    let mut n = ferroplane_testkit::watchdog::kill_descendants(pid).len();
    if let Ok(raw) = i32::try_from(pid) {
        if nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
        {
            n += 1;
        }
    }
    n
}

/// Kills what `cargo xtask` started and is still running: its descendants (the command's
/// whole tree, and the orphans it adopted as a child subreaper). Returns how many.
///
/// Not a process group of the command's own: then Ctrl-C in a terminal would no longer
/// reach the tests. xtask runs one command at a time, so its descendants are that command's.
fn kill_leftovers() -> usize {
    ferroplane_testkit::watchdog::kill_descendants(std::process::id()).len()
}

/// Reaps adopted orphans that have exited (after the command's own child was waited for).
fn reap_orphans() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Runs a `cargo test` command labelled `label`, its stdout and stderr streamed and read
/// (libtest's lines counted, the testkit's markers collected). After `limit` its whole tree
/// is killed and the run is reported as timed out; whatever the command left running when
/// it ended is killed too.
pub fn run_tests(label: &str, cmd: &mut Command, limit: Duration) -> Result<TestRun> {
    // Orphans of the tests (daemons that detach) become our children, so the kill below
    // finds them. Failing to become a subreaper only weakens the cleanup.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    run_tests_with(label, cmd, limit, true)
}

/// [`run_tests`]; `owner` says this process runs nothing else: it echoes the output and
/// kills every descendant it has once the command is over. Otherwise (unit tests of this
/// file, running in parallel with others) nothing is echoed and only the command's own
/// tree is killed, on time-out.
fn run_tests_with(label: &str, cmd: &mut Command, limit: Duration, owner: bool) -> Result<TestRun> {
    let line = ferroplane_e2e::command_line(cmd);
    println!("$ {line}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let (tx_out, rx_out) = mpsc::channel();
    let (tx_err, rx_err) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut tally = Tally::default();
            let echo: Box<dyn Write> = if owner {
                Box::new(std::io::stdout())
            } else {
                Box::new(std::io::sink())
            };
            pump(out, echo, |l| tally.line(l));
            let _ = tx_out.send(tally);
        });
    }
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut markers = Markers::default();
            let echo: Box<dyn Write> = if owner {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::sink())
            };
            pump(err, echo, |l| markers.line(l));
            let _ = tx_err.send(markers);
        });
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{line}`"))?
        {
            break status;
        }
        if Instant::now() >= deadline && !timed_out.swap(true, Ordering::Relaxed) {
            println!(
                "\nTIMEOUT: {label}: still running after {}s; killing it and everything it \
                 started",
                limit.as_secs()
            );
            let mut n = kill_tree(child.id());
            if owner {
                n += kill_leftovers();
            }
            println!("killed {n} process(es) of {label}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if owner {
        let leftovers = kill_leftovers();
        if leftovers > 0 {
            println!("{label}: killed {leftovers} process(es) it left running");
        }
        reap_orphans();
    }
    // The pipes close once every writer is gone; a process that escaped the kill may hold
    // one open: do not wait for it forever.
    let grace = Duration::from_secs(10);
    let tally = rx_out.recv_timeout(grace).unwrap_or_else(|_| {
        println!("{label}: its stdout is still held open; counting what was read");
        Tally::default()
    });
    let markers = rx_err.recv_timeout(grace).unwrap_or_default();
    let outcome = tally.finish(markers);
    Ok(TestRun {
        outcome,
        success: status.success(),
        timed_out: timed_out.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stdout: &str, stderr: &str) -> Outcome {
        let mut t = Tally::default();
        for l in stdout.lines() {
            t.line(l);
        }
        let mut m = Markers::default();
        for l in stderr.lines() {
            m.line(l);
        }
        t.finish(m)
    }

    #[test]
    fn counts_result_lines_and_ignored_as_skipped() {
        let o = feed(
            "running 13 tests\n\
             test a ... ok\n\
             test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
             running 5 tests\n\
             test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.50s\n",
            "",
        );
        assert_eq!(
            o.counts,
            TestCounts {
                passed: 15,
                failed: 2,
                skipped: 1
            }
        );
        assert_eq!(o.unfinished, 0);
    }

    #[test]
    fn skip_markers_move_passed_tests_to_skipped() {
        // Parallel output: the markers come on stderr, in any order.
        let o = feed(
            "running 3 tests\n\
             test bgp::one ... ok\n\
             test two ... ok\n\
             test three ... FAILED\n\
             test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s\n",
            "SKIPPED: two: needs root (XDP)\n\
             some other stderr line\n\
             SKIPPED: bgp::one: `bird` not found (apt-get install bird2)\n\
             SKIPPED: three: needs root\n",
        );
        assert_eq!(
            o.counts,
            TestCounts {
                passed: 0,
                failed: 1,
                skipped: 2
            }
        );
        assert_eq!(o.skipped.len(), 2);
        assert_eq!(o.skipped[0], ("two".into(), "needs root (XDP)".into()));
        assert_eq!(o.unmatched_skips, ["three"], "a skip never hides a failure");
    }

    #[test]
    fn single_threaded_output_is_read_too() {
        // --test-threads 1: the result is written after the test ran, on the same line; the
        // marker went to stderr in between.
        let o = feed(
            "running 1 test\n\
             test services::clusterip ... ok\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
            "SKIPPED: services::clusterip: needs root\n",
        );
        assert_eq!(o.counts.summary(), "0 passed, 0 failed, 1 skipped");
    }

    #[test]
    fn a_binary_ended_by_the_watchdog_fails_its_unfinished_tests() {
        let o = feed(
            "running 4 tests\n\
             test a ... ok\n\
             test b ... FAILED\n\
             running 2 tests\n\
             test c ... ok\n\
             test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
             running 3 tests\n\
             test d ... ok\n",
            "TIMEOUT: hung: still running after 300s; the watchdog ends this test process\n",
        );
        // First binary: a ok, b failed, 2 never reported. Last: d ok, 2 never reported.
        assert_eq!(
            o.counts,
            TestCounts {
                passed: 4,
                failed: 5,
                skipped: 0
            }
        );
        assert_eq!(o.unfinished, 4);
        assert_eq!(o.timeouts, ["hung"]);
    }

    #[test]
    fn fuzz_lines_are_collected() {
        let o = feed(
            "",
            "FUZZ: wire::ipv4: 300000 executions (14 seeds) in 0.9s\n",
        );
        assert_eq!(o.fuzz, [("wire::ipv4".to_string(), 300_000)]);
    }

    #[test]
    fn a_test_that_cannot_run_fails_in_ci_and_is_skipped_otherwise() {
        // End to end: a child process (this test binary, running only `skip_probe`) skips a
        // test with CI=true (it fails) and without (marker, counted as skipped).
        let out = |ci: &str| {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.env("CI", ci).env("FP_XTASK_SKIP_PROBE", "1").args([
                "--exact",
                "progress::testrun::tests::skip_probe",
                "--test-threads",
                "1",
            ]);
            run_tests_with("probe", &mut cmd, Duration::from_secs(60), false).unwrap()
        };
        let ci = out("true");
        assert!(!ci.success);
        assert_eq!(ci.outcome.counts.summary(), "0 passed, 1 failed, 0 skipped");
        let local = out("");
        assert!(local.success);
        assert_eq!(
            local.outcome.counts.summary(),
            "0 passed, 0 failed, 1 skipped"
        );
        assert_eq!(
            local.outcome.skipped[0].0,
            "progress::testrun::tests::skip_probe"
        );
    }

    /// The child of the test above: skips itself (or fails, with CI=true). Run directly it
    /// checks that the skip marker is written.
    #[test]
    fn skip_probe() {
        if std::env::var_os("FP_XTASK_SKIP_PROBE").is_some() {
            ferroplane_testkit::skip("probe: cannot run here");
            return;
        }
        let mut out = Vec::new();
        ferroplane_testkit::skip_to(&mut out, false, "x", "probe");
        assert_eq!(out, b"SKIPPED: x: probe\n");
    }

    #[test]
    fn a_command_past_its_limit_is_killed() {
        let t = Instant::now();
        let run = run_tests_with(
            "sleeper",
            Command::new("sh").args(["-c", "echo 'running 1 test'; sleep 30 & wait"]),
            Duration::from_millis(300),
            false,
        )
        .unwrap();
        assert!(run.timed_out);
        assert!(!run.success);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(
            run.outcome.counts.summary(),
            "0 passed, 1 failed, 0 skipped"
        );
        assert_eq!(run.outcome.unfinished, 1);
    }
}
