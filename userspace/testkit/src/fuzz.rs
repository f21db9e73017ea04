//! Fuzz targets on stable Rust, for a bounded time, as ordinary tests.
//!
//! The libFuzzer targets (`userspace/*/fuzz`) need nightly and run unbounded. Their bodies
//! live in plain files that both the libFuzzer binary and a stable test include; the test
//! hands the body to [`run`], which feeds it the seeds (and the files of a corpus directory
//! if there is one), then deterministic mutations of them and random inputs, until the
//! execution budget or the time bound is reached. A panic in the body fails the test with
//! the input in hex. Each run ends with a line `FUZZ: <target>: <n> executions ...` on
//! stderr, which `cargo xtask test` reports.
//!
//! Budget: [`EXECS_ENV`] executions per target (default [`DEFAULT_EXECS`], a quick pass for
//! a plain `cargo test`; `cargo xtask fuzz` and the fuzz step of `cargo xtask test` ask for
//! more) and at most [`SECONDS_ENV`] seconds per target (default [`DEFAULT_SECONDS`]).
//! [`SEED_ENV`] changes the random seed (default: derived from the target's name, so a run
//! is reproducible).

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

/// Executions per target.
pub const EXECS_ENV: &str = "FERROPLANE_FUZZ_EXECS";
/// Time bound per target, in seconds.
pub const SECONDS_ENV: &str = "FERROPLANE_FUZZ_SECONDS";
/// Random seed (a number); default: a hash of the target's name.
pub const SEED_ENV: &str = "FERROPLANE_FUZZ_SEED";
/// Executions per target unless [`EXECS_ENV`] says otherwise.
pub const DEFAULT_EXECS: u64 = 20_000;
/// Seconds per target unless [`SECONDS_ENV`] says otherwise.
pub const DEFAULT_SECONDS: u64 = 20;
/// Prefix of the line [`run`] writes when a target is done.
pub const FUZZ_MARKER: &str = "FUZZ: ";

/// Longest input generated (a BGP message is at most 4096 bytes).
const MAX_LEN: usize = 4200;
/// Largest corpus file read.
const MAX_FILE: u64 = 64 * 1024;
/// Most corpus files read per target.
const MAX_FILES: usize = 2000;
/// Mutated inputs kept to be mutated further.
const POOL: usize = 256;

/// What one target did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The target's name.
    pub target: String,
    /// Inputs run, seeds included.
    pub execs: u64,
    /// Seeds and corpus files run first.
    pub seeds: usize,
    /// Time taken.
    pub elapsed: Duration,
    /// True when the time bound, not the execution budget, ended the run.
    pub time_bound: bool,
}

impl Report {
    /// The line written at the end: `FUZZ: <target>: <n> executions (<s> seeds) in <t>s`.
    pub fn line(&self) -> String {
        format!(
            "{FUZZ_MARKER}{}: {} executions ({} seeds) in {:.1}s{}",
            self.target,
            self.execs,
            self.seeds,
            self.elapsed.as_secs_f64(),
            if self.time_bound {
                " (stopped by the time bound)"
            } else {
                ""
            }
        )
    }
}

/// (target, executions) from a line written by [`run`]; `None` for any other line.
pub fn parse_fuzz_line(line: &str) -> Option<(&str, u64)> {
    let rest = line.trim_start().strip_prefix(FUZZ_MARKER)?;
    let (target, rest) = rest.split_once(": ")?;
    let n = rest.split_whitespace().next()?.parse().ok()?;
    Some((target, n))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Runs `body` over `seeds`, the files under `corpus` (if it exists), then mutations and
/// random inputs within the budget (see the module docs). Panics, with the input, when the
/// body panics. Writes and returns the [`Report`].
pub fn run(target: &str, seeds: &[Vec<u8>], corpus: Option<&Path>, body: impl Fn(&[u8])) -> Report {
    let execs = env_u64(EXECS_ENV).unwrap_or(DEFAULT_EXECS);
    let time = Duration::from_secs(env_u64(SECONDS_ENV).unwrap_or(DEFAULT_SECONDS));
    let seed = env_u64(SEED_ENV).unwrap_or_else(|| fnv1a(target.as_bytes()));
    let report = run_with(target, seeds, corpus, execs, time, seed, body);
    let mut err = std::io::stderr();
    let _ = writeln!(err, "{}", report.line());
    report
}

/// [`run`] with its budget explicit, writing nothing.
pub fn run_with(
    target: &str,
    seeds: &[Vec<u8>],
    corpus: Option<&Path>,
    execs: u64,
    time: Duration,
    seed: u64,
    body: impl Fn(&[u8]),
) -> Report {
    let start = Instant::now();
    let mut inputs: Vec<Vec<u8>> = seeds.to_vec();
    if let Some(dir) = corpus {
        inputs.extend(read_corpus(dir));
    }
    if inputs.is_empty() {
        inputs.push(Vec::new());
    }
    let n_seeds = inputs.len();
    let mut rng = Rng::new(seed);
    let mut done: u64 = 0;
    let exec = |input: &[u8], done: u64| {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(input))) {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            panic!(
                "fuzz target {target} panicked on execution {done} (seed {seed}, {} bytes): \
                 {what}\ninput: {}",
                input.len(),
                hex(input)
            );
        }
    };
    for input in &inputs {
        exec(input, done);
        done += 1;
    }
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut time_bound = false;
    while done < execs {
        if done.is_multiple_of(512) && start.elapsed() >= time {
            time_bound = true;
            break;
        }
        let input = if rng.below(16) == 0 {
            let len = rng.below(256) as usize;
            (0..len).map(|_| rng.byte()).collect()
        } else {
            let base = if !pool.is_empty() && rng.below(4) == 0 {
                &pool[rng.below(pool.len() as u64) as usize]
            } else {
                &inputs[rng.below(n_seeds as u64) as usize]
            };
            let mut data = base.clone();
            for _ in 0..=rng.below(4) {
                mutate(&mut data, &inputs, &mut rng);
            }
            data
        };
        exec(&input, done);
        done += 1;
        if done.is_multiple_of(64) {
            if pool.len() < POOL {
                pool.push(input);
            } else {
                let i = rng.below(POOL as u64) as usize;
                pool[i] = input;
            }
        }
    }
    Report {
        target: target.to_string(),
        execs: done,
        seeds: n_seeds,
        elapsed: start.elapsed(),
        time_bound,
    }
}

/// The regular files under `dir` (not recursive), sorted by name, at most [`MAX_FILES`]
/// of at most [`MAX_FILE`] bytes each.
fn read_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.len() <= MAX_FILE)
        })
        .collect();
    paths.sort();
    paths.truncate(MAX_FILES);
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// One random edit of `data`, in the manner of libFuzzer's mutators.
fn mutate(data: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut Rng) {
    const INTERESTING: [u8; 8] = [0, 1, 2, 0x7f, 0x80, 0xfe, 0xff, 0x40];
    let len = data.len();
    match rng.below(10) {
        0 if len > 0 => {
            let i = rng.below(len as u64) as usize;
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len as u64) as usize;
            data[i] = rng.byte();
        }
        2 if len > 0 => {
            let i = rng.below(len as u64) as usize;
            data[i] = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
        }
        3 if len > 1 => {
            // A 16-bit field (lengths, ports, ...) set to an edge value.
            let i = rng.below(len as u64 - 1) as usize;
            let v: u16 = match rng.below(4) {
                0 => 0,
                1 => 0xffff,
                2 => len as u16,
                _ => (len as u16)
                    .wrapping_add(rng.below(16) as u16)
                    .wrapping_sub(8),
            };
            data[i..i + 2].copy_from_slice(&v.to_be_bytes());
        }
        4 => {
            data.truncate(rng.below(len as u64 + 1) as usize);
        }
        5 if len > 0 => {
            let a = rng.below(len as u64) as usize;
            let b = a + rng.below((len - a) as u64 + 1) as usize;
            data.drain(a..b);
        }
        6 if len < MAX_LEN => {
            let i = rng.below(len as u64 + 1) as usize;
            let n = 1 + rng.below(16) as usize;
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            data.splice(i..i, bytes);
        }
        7 if len > 0 && len < MAX_LEN => {
            // Repeat a slice of itself (options, path attributes, stacked messages).
            let a = rng.below(len as u64) as usize;
            let b = a + rng.below((len - a).min(64) as u64 + 1) as usize;
            let chunk = data[a..b].to_vec();
            let at = rng.below(len as u64 + 1) as usize;
            data.splice(at..at, chunk);
        }
        8 if !seeds.is_empty() => {
            // Splice: our head, another seed's tail.
            let other = &seeds[rng.below(seeds.len() as u64) as usize];
            let cut = rng.below(len as u64 + 1) as usize;
            let from = rng.below(other.len() as u64 + 1) as usize;
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ => {
            data.push(rng.byte());
        }
    }
    data.truncate(MAX_LEN);
}

fn hex(data: &[u8]) -> String {
    const SHOWN: usize = 512;
    let mut s: String = data
        .iter()
        .take(SHOWN)
        .map(|b| format!("{b:02x}"))
        .collect();
    if data.len() > SHOWN {
        s.push_str(&format!("... ({} more bytes)", data.len() - SHOWN));
    }
    s
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// xorshift64*: small, fast, deterministic; plenty for choosing mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `0..n` (`0` when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    #[test]
    fn runs_seeds_first_then_the_budget() {
        let seen = RefCell::new(Vec::new());
        let r = run_with(
            "t",
            &[vec![1, 2, 3], vec![4]],
            None,
            1000,
            Duration::from_secs(60),
            7,
            |d| seen.borrow_mut().push(d.to_vec()),
        );
        let seen = seen.into_inner();
        assert_eq!(r.execs, 1000);
        assert_eq!(r.seeds, 2);
        assert!(!r.time_bound);
        assert_eq!(seen.len(), 1000);
        assert_eq!(seen[0], [1, 2, 3]);
        assert_eq!(seen[1], [4]);
        let distinct: std::collections::HashSet<_> = seen.iter().collect();
        assert!(distinct.len() > 500, "mutations repeat: {}", distinct.len());
        assert!(seen.iter().all(|d| d.len() <= MAX_LEN));
    }

    #[test]
    fn a_run_is_reproducible() {
        let collect = |seed| {
            let v = RefCell::new(Vec::new());
            run_with(
                "t",
                &[vec![0; 40]],
                None,
                300,
                Duration::from_secs(60),
                seed,
                |d| v.borrow_mut().push(d.to_vec()),
            );
            v.into_inner()
        };
        assert_eq!(collect(1), collect(1));
        assert_ne!(collect(1), collect(2));
    }

    #[test]
    fn a_panicking_body_fails_with_its_input() {
        let err = catch_unwind(|| {
            run_with(
                "boom",
                &[b"ok".to_vec()],
                None,
                100_000,
                Duration::from_secs(60),
                3,
                |d| {
                    assert!(!d.contains(&0xff), "found 0xff");
                },
            )
        })
        .expect_err("the body panics on some input");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("fuzz target boom panicked"), "{msg}");
        assert!(
            msg.contains("found 0xff") && msg.contains("input: "),
            "{msg}"
        );
    }

    #[test]
    fn the_time_bound_stops_a_run() {
        let n = Cell::new(0u64);
        let r = run_with(
            "slow",
            &[vec![0]],
            None,
            u64::MAX,
            Duration::ZERO,
            1,
            |_| n.set(n.get() + 1),
        );
        assert!(r.time_bound);
        assert_eq!(r.execs, n.get());
    }

    #[test]
    fn report_line_round_trips() {
        let r = Report {
            target: "wire::ipv4".into(),
            execs: 300_000,
            seeds: 12,
            elapsed: Duration::from_millis(1500),
            time_bound: false,
        };
        assert_eq!(
            r.line(),
            "FUZZ: wire::ipv4: 300000 executions (12 seeds) in 1.5s"
        );
        assert_eq!(parse_fuzz_line(&r.line()), Some(("wire::ipv4", 300_000)));
        assert_eq!(parse_fuzz_line("SKIPPED: a: b"), None);
    }

    #[test]
    fn corpus_files_are_seeds() {
        let dir = std::env::temp_dir().join(format!("fp-testkit-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), b"abc").unwrap();
        std::fs::write(dir.join("b"), b"de").unwrap();
        let first = RefCell::new(Vec::new());
        let r = run_with("c", &[], Some(&dir), 2, Duration::from_secs(60), 1, |d| {
            first.borrow_mut().push(d.to_vec())
        });
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(r.seeds, 2);
        assert_eq!(first.into_inner(), vec![b"abc".to_vec(), b"de".to_vec()]);
    }
}
