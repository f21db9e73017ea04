//! `cargo xtask test`: what CI runs.

use anyhow::Result;

use crate::progress::{cargo, is_root, run as run_cmd, run_tests, Progress, TestCounts};

/// Threads for the e2e suites: every namespace has a unique name, so suites may overlap.
const E2E_THREADS: &str = "2";

/// `cargo xtask test`: deps, fmt, clippy, release build, unit tests (default members), root
/// e2e suites. Its last line is always `N passed, N failed`; exits 1 if anything failed.
pub fn run() -> Result<()> {
    let mut p = Progress::new(6);
    let mut failed_steps: Vec<String> = Vec::new();
    let mut counts = TestCounts::default();

    if let Err(e) = p.step("system packages", crate::deps::ensure) {
        abort(e, counts);
    }

    // fmt and clippy failures are recorded, and the tests still run.
    if let Err(e) = p.step("cargo fmt --check", || {
        run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))
    }) {
        eprintln!("{e:#}");
        failed_steps.push("fmt".into());
    }
    if let Err(e) = p.step("clippy (release, all targets, -D warnings)", || {
        run_cmd(cargo().args([
            "clippy",
            "--release",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    }) {
        eprintln!("{e:#}");
        failed_steps.push("clippy".into());
    }

    // Without a build there is nothing to test.
    let built = p.step("building the workspace (release, all targets)", || {
        run_cmd(cargo().args(["build", "--release", "--workspace", "--all-targets"]))
    });
    if let Err(e) = built {
        abort(e, counts);
    }

    let unit = p
        .step("unit tests (default members)", || {
            run_tests(cargo().args(["test", "--release", "--no-fail-fast"]))
        })
        .unwrap_or_else(|e| abort(e, counts));
    counts.passed += unit.0.passed;
    counts.failed += unit.0.failed;
    if !unit.1 {
        failed_steps.push("unit tests".into());
    }

    let e2e = p
        .step("e2e suites (root, network namespaces)", || {
            if is_root() {
                let stale = ferroplane_e2e::cleanup_stale_namespaces();
                if !stale.is_empty() {
                    println!("removed stale namespaces of dead runs: {}", stale.join(" "));
                }
            } else {
                println!("WARNING: not root: every e2e suite will skip itself");
            }
            run_tests(cargo().args([
                "test",
                "--release",
                "--no-fail-fast",
                "-p",
                "ferroplane-e2e",
                "--",
                "--test-threads",
                E2E_THREADS,
            ]))
        })
        .unwrap_or_else(|e| abort(e, counts));
    counts.passed += e2e.0.passed;
    counts.failed += e2e.0.failed;
    if !e2e.1 {
        failed_steps.push("e2e suites".into());
    }

    if failed_steps.is_empty() && counts.failed == 0 {
        println!("\nall steps passed in {:.0}s", p.elapsed_s());
        println!("{} passed, {} failed", counts.passed, counts.failed);
        return Ok(());
    }
    println!(
        "\nFAILED after {:.0}s: {} test(s) failed; failed steps: {}",
        p.elapsed_s(),
        counts.failed,
        if failed_steps.is_empty() {
            "none".to_string()
        } else {
            failed_steps.join(", ")
        }
    );
    println!("{} passed, {} failed", counts.passed, counts.failed);
    std::process::exit(1);
}

/// A step that makes going on pointless failed: say why, print the summary line, exit 1.
fn abort(e: anyhow::Error, counts: TestCounts) -> ! {
    eprintln!("\nxtask failed: {e:#}");
    println!("\n{} passed, {} failed", counts.passed, counts.failed);
    std::process::exit(1);
}
