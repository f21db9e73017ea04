//! Tests that cannot run: skipped with a marker line, or failed when `CI=true`.
//!
//! libtest cannot mark a test ignored once it runs, so a skipped test returns early and
//! counts as passed in libtest's summary. [`skip`] therefore writes a marker line,
//! `SKIPPED: <test>: <reason>`, straight to the process's stderr (not through `eprintln!`,
//! which libtest captures and hides for passing tests); `cargo xtask test` reads the markers
//! and moves those tests from passed to skipped. With `CI=true` a test that cannot run is a
//! failure: [`skip`] panics instead, so the run fails loudly.

use std::io::Write;
use std::path::Path;

/// Prefix of the line [`skip`] writes to stderr: `SKIPPED: <test>: <reason>`.
pub const SKIP_MARKER: &str = "SKIPPED: ";

/// Why a root test cannot run as another user.
const NEEDS_ROOT: &str =
    "needs root (network namespaces, XDP, BPF); run it as root, e.g. `sudo -E cargo xtask test`";

/// True when the `CI` environment variable says this is a CI run (`true`, `1` or `yes`, in
/// any case): then a test that cannot run fails instead of being skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| ci_value(&v))
}

fn ci_value(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes")
}

/// True when running as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The running test's name as libtest prints it (`module::test`): libtest names each test's
/// thread after the test. `"test"` on an unnamed thread.
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("test").to_string()
}

/// The marker line for `test` skipped because of `reason` (without the newline).
pub fn skip_line(test: &str, reason: &str) -> String {
    // One line whatever the reason says, so the reader sees it whole.
    let reason = reason.replace(['\n', '\r'], " ");
    format!("{SKIP_MARKER}{test}: {reason}")
}

/// Splits a marker line written by [`skip`] into (test, reason); `None` for any other line.
pub fn parse_skip_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start().strip_prefix(SKIP_MARKER)?;
    // Test names contain `::` but never `: `.
    let (test, reason) = rest.split_once(": ")?;
    let test = test.trim();
    if test.is_empty() || test.contains(char::is_whitespace) {
        return None;
    }
    Some((test, reason.trim_end()))
}

/// The current test cannot run because of `reason`: with `CI=true` this panics (the test
/// fails with the reason); otherwise it writes the `SKIPPED: <test>: <reason>` marker to
/// stderr and returns, and the caller returns right after.
pub fn skip(reason: &str) {
    skip_to(&mut std::io::stderr(), in_ci(), &current_test(), reason);
}

/// [`skip`] with its inputs explicit: writes the marker to `out`, or panics when `ci`.
pub fn skip_to(out: &mut impl Write, ci: bool, test: &str, reason: &str) {
    if ci {
        panic!(
            "{test} cannot run: {reason}. With CI=true a test that cannot run fails; \
             without CI it is counted as skipped"
        );
    }
    // A failed write to stderr leaves nothing better to do; the test still returns.
    let _ = writeln!(out, "{}", skip_line(test, reason));
    let _ = out.flush();
}

/// The entry check of every test that needs root: `if !require_root() { return; }`.
///
/// As root it arms the test's watchdog ([`crate::watchdog::arm`], default limit) and
/// returns true. Otherwise it [`skip`]s the test (a failure when `CI=true`) and returns
/// false.
pub fn require_root() -> bool {
    if is_root() {
        crate::watchdog::arm_default();
        return true;
    }
    skip(NEEDS_ROOT);
    false
}

/// True when `tool` can be run: an absolute or relative path that is an executable file,
/// or a name found in an executable file on `PATH`. Otherwise [`skip`]s the test, naming
/// the tool and `hint` (how to get it), and returns false.
pub fn require_tool(tool: &str, hint: &str) -> bool {
    if tool_exists(tool) {
        return true;
    }
    skip(&format!("`{tool}` not found ({hint})"));
    false
}

/// True when `tool` names an executable file (a path, or a name on `PATH`).
pub fn tool_exists(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if tool.contains('/') {
        return executable(Path::new(tool));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(tool))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_stays_one_line() {
        let line = skip_line("security::spoofing::a_test", "needs root\n(XDP)");
        assert_eq!(
            line,
            "SKIPPED: security::spoofing::a_test: needs root (XDP)"
        );
        assert_eq!(
            parse_skip_line(&line),
            Some(("security::spoofing::a_test", "needs root (XDP)"))
        );
        assert_eq!(parse_skip_line("test foo ... ok"), None);
        assert_eq!(parse_skip_line("SKIPPED: no reason"), None);
        assert_eq!(parse_skip_line("SKIPPED: two words: x"), None);
    }

    #[test]
    fn skip_writes_the_marker_outside_ci() {
        let mut out = Vec::new();
        skip_to(&mut out, false, "m::t", "`ip` not found");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SKIPPED: m::t: `ip` not found\n"
        );
    }

    #[test]
    fn skip_fails_the_test_in_ci() {
        let mut out = Vec::new();
        let err = std::panic::catch_unwind(move || skip_to(&mut out, true, "m::t", "needs root"))
            .expect_err("CI=true must fail the test");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("m::t cannot run: needs root"), "{msg}");
        assert!(msg.contains("CI=true"), "{msg}");
    }

    #[test]
    fn ci_values() {
        for v in ["true", "TRUE", "1", "yes", " true "] {
            assert!(ci_value(v), "{v}");
        }
        for v in ["", "0", "false", "no"] {
            assert!(!ci_value(v), "{v}");
        }
    }

    #[test]
    fn tools_are_found_on_path_or_by_path() {
        assert!(tool_exists("sh"));
        assert!(tool_exists("/bin/sh"));
        assert!(!tool_exists("fp-no-such-tool-here"));
        assert!(!tool_exists("/nonexistent/sh"));
    }

    #[test]
    fn the_test_name_is_the_thread_name() {
        assert_eq!(
            current_test(),
            "skip::tests::the_test_name_is_the_thread_name"
        );
    }
}
