//! A time limit per test: a hung test ends its test process with a message naming it,
//! instead of eating the CI budget.
//!
//! Why in-process and not cargo-nextest's `slow-timeout`: nextest would run every test in a
//! process of its own and kill only the hung one, but it is one more tool a fresh machine
//! must `cargo install` (minutes), it changes the output `cargo xtask test` parses, and a
//! developer running `cargo test` by hand would get no limit at all. The cost of doing it
//! here: Rust cannot stop one thread, so the watchdog ends the whole test binary; the tests
//! of that binary that had not finished are reported by `cargo xtask test` as failed, and the
//! `TIMEOUT:` line names the one that hung.
//!
//! [`arm`] is called by [`crate::require_root`] (so every root test has a limit) and may be
//! called again with a longer limit. The limit lives as long as the calling thread: libtest
//! runs each test on a thread of its own, so it ends with the test, also when it panics.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

/// Prefix of the line written when a test runs out of time: `TIMEOUT: <test>: ...`.
pub const TIMEOUT_MARKER: &str = "TIMEOUT: ";
/// Environment variable overriding the default limit, in seconds.
pub const LIMIT_ENV: &str = "FERROPLANE_TEST_TIMEOUT";
/// The default limit per test. e2e tests take under a minute; five leaves room for a
/// loaded CI machine running two suites at once.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(300);
/// Exit status of a test process ended by the watchdog (as timeout(1)).
pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// How often the watchdog thread looks at the deadlines.
const TICK: Duration = Duration::from_millis(250);

struct Armed {
    test: String,
    deadline: Instant,
    limit: Duration,
}

#[derive(Default)]
struct State {
    next_id: u64,
    armed: HashMap<u64, Armed>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static START: Once = Once::new();

fn state() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes its test's deadline when the test's thread ends.
struct Guard(u64);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(s) = state().as_mut() {
            s.armed.remove(&self.0);
        }
    }
}

thread_local! {
    static GUARD: RefCell<Option<Guard>> = const { RefCell::new(None) };
}

/// The limit from [`LIMIT_ENV`] (whole seconds, > 0), else [`DEFAULT_LIMIT`].
pub fn default_limit() -> Duration {
    std::env::var(LIMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(DEFAULT_LIMIT, Duration::from_secs)
}

/// [`arm`] with [`default_limit`].
pub fn arm_default() {
    arm(default_limit());
}

/// Gives the current test `limit` from now: if its thread still runs then, the watchdog
/// writes `TIMEOUT: <test>: ...` to stderr, kills the processes this test process started,
/// deletes its network namespaces and exits with [`TIMEOUT_EXIT_CODE`]. Calling it again
/// replaces the limit.
pub fn arm(limit: Duration) {
    START.call_once(|| {
        // Without the thread there is no limit; say so rather than fail the test.
        if let Err(e) = std::thread::Builder::new()
            .name("fp-test-watchdog".into())
            .spawn(watch)
        {
            let _ = writeln!(std::io::stderr(), "warning: no test watchdog: {e}");
        }
    });
    let id = {
        let mut guard = state();
        let s = guard.get_or_insert_with(State::default);
        s.next_id += 1;
        let id = s.next_id;
        s.armed.insert(
            id,
            Armed {
                test: crate::current_test(),
                deadline: Instant::now() + limit,
                limit,
            },
        );
        id
    };
    // Replacing an earlier guard drops it, which removes the earlier deadline.
    GUARD.with(|g| *g.borrow_mut() = Some(Guard(id)));
}

fn watch() {
    loop {
        std::thread::sleep(TICK);
        let now = Instant::now();
        let expired = state().as_ref().and_then(|s| {
            s.armed
                .values()
                .find(|a| a.deadline <= now)
                .map(|a| (a.test.clone(), a.limit))
        });
        if let Some((test, limit)) = expired {
            expire(&test, limit);
        }
    }
}

/// The line written when `test` ran out of `limit`.
pub fn timeout_line(test: &str, limit: Duration) -> String {
    format!(
        "{TIMEOUT_MARKER}{test}: still running after {}s; the watchdog ends this test process \
         (its unfinished tests fail). {LIMIT_ENV}=<seconds> changes the limit",
        limit.as_secs()
    )
}

/// Splits a line written by the watchdog into (test, rest); `None` for any other line.
pub fn parse_timeout_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start().strip_prefix(TIMEOUT_MARKER)?;
    let (test, why) = rest.split_once(": ")?;
    (!test.is_empty() && !test.contains(char::is_whitespace)).then_some((test, why))
}

fn expire(test: &str, limit: Duration) -> ! {
    let mut err = std::io::stderr();
    let _ = writeln!(err, "\n{}", timeout_line(test, limit));
    let me = std::process::id();
    let killed = kill_descendants(me);
    let namespaces = crate::netns::delete_namespaces_of(me);
    let _ = writeln!(
        err,
        "watchdog: killed {} process(es) started by this test process; deleted {} network \
         namespace(s){}{}",
        killed.len(),
        namespaces.len(),
        if namespaces.is_empty() { "" } else { ": " },
        namespaces.join(" ")
    );
    let _ = err.flush();
    std::process::exit(TIMEOUT_EXIT_CODE);
}

/// SIGKILLs every live descendant of process `root` (found through `/proc/*/stat`), returns
/// their PIDs. Only processes `root` started, directly or not, are touched.
pub fn kill_descendants(root: u32) -> Vec<u32> {
    let pids = descendants(root);
    for &pid in &pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    pids
}

/// The descendants of `root`, parents before children.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| parent_pid(&s))
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut out: Vec<u32> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == p && pid != root && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

/// The parent PID in a `/proc/PID/stat` line (`pid (comm) state ppid ...`; comm may hold
/// spaces and parentheses, so the fields are counted from the last `)`).
fn parent_pid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    fields.next()?;
    fields.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_survives_odd_command_names() {
        assert_eq!(parent_pid("42 (a (b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parent_pid("42 (sh) R 1 42"), Some(1));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn finds_a_child_and_its_child() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let d = descendants(std::process::id());
            if d.len() >= 2 || Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(found.len() >= 2, "sleep under sh not found: {found:?}");
        assert_eq!(found[0], child.id(), "parents first: {found:?}");
        let killed = kill_descendants(child.id());
        assert!(!killed.is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn timeout_line_round_trips() {
        let line = timeout_line("bgp::a_test", Duration::from_secs(300));
        let (test, why) = parse_timeout_line(&line).unwrap();
        assert_eq!(test, "bgp::a_test");
        assert!(why.contains("300s"), "{why}");
        assert_eq!(parse_timeout_line("SKIPPED: a: b"), None);
    }

    #[test]
    fn a_deadline_lives_as_long_as_its_thread() {
        std::thread::Builder::new()
            .name("fp-testkit-arm-probe".into())
            .spawn(|| {
                arm(Duration::from_secs(3600));
                arm(Duration::from_secs(3600));
                let mine = state().as_ref().map_or(0, |s| {
                    s.armed
                        .values()
                        .filter(|a| a.test == "fp-testkit-arm-probe")
                        .count()
                });
                assert_eq!(mine, 1, "re-arming replaces the deadline");
            })
            .unwrap()
            .join()
            .unwrap();
        let left = state().as_ref().map_or(0, |s| {
            s.armed
                .values()
                .filter(|a| a.test == "fp-testkit-arm-probe")
                .count()
        });
        assert_eq!(left, 0, "the thread ended: no deadline left");
    }
}
