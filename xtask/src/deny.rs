//! `cargo xtask deny`: cargo-deny's four checks (licenses, bans, sources, advisories) against
//! `deny.toml`, with the RustSec advisory database taken from the snapshot vendored under
//! `supply-chain/advisory-db/`.
//!
//! The machines this project runs on reach crates.io but not the git host of the advisory
//! database, so cargo-deny runs with `--offline` and its `db-path` (`target/advisory-dbs`)
//! holds a git repository that this module builds from the snapshot before every run. The
//! repository's commit carries the snapshot's date, and so does the mtime of its `HEAD`, so
//! cargo-deny's own staleness check (`maximum-db-staleness` in deny.toml) measures the
//! snapshot's real age. Every run prints that date and age.
//!
//! The snapshot keeps only the advisories of crates named in Cargo.lock, plus the list of
//! every crate the whole database has advisories for: a crate added to Cargo.lock that has
//! advisories the snapshot lacks fails the run until the snapshot is refreshed
//! (`cargo xtask deny --refresh-advisories <checkout of advisory-db>`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use crate::progress::{cargo, root, run};

/// The cargo-deny release used (installed with `cargo install --locked` when missing).
pub const CARGO_DENY_VERSION: &str = "0.20.2";

/// The vendored snapshot, relative to the workspace root.
const SNAPSHOT_DIR: &str = "supply-chain/advisory-db";

/// cargo-deny's `db-path`, relative to the workspace root; deny.toml names the same path.
const DB_ROOT: &str = "target/advisory-dbs";

/// The folder cargo-deny opens under `db-path` for its default database: `advisory-db-`
/// followed by the XxHash64 (seed 0xca80de71) of the database's lower-cased URL, as
/// cargo-deny 0.20's `url_to_db_path` names it. A wrong name fails every run (cargo-deny
/// then finds no repository), so it cannot go stale silently.
const DB_DIR_NAME: &str = "advisory-db-3157b0e258782691";

/// The snapshot's metadata file: `commit: <sha>` and `date: <RFC 3339 commit date>`.
const SNAPSHOT_FILE: &str = "SNAPSHOT";

/// Every crate name the whole database had advisories for at the snapshot's commit.
const INDEX_FILE: &str = "crates-with-advisories.txt";

/// Where the snapshot came from and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The advisory-db commit.
    pub commit: String,
    /// Its commit date (RFC 3339).
    pub date: String,
}

impl Snapshot {
    /// Parses the `SNAPSHOT` file (`key: value` lines, `#` comments).
    pub fn parse(text: &str) -> Result<Snapshot> {
        let mut commit = None;
        let mut date = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some(("commit", v)) => commit = Some(v.trim().to_string()),
                Some(("date", v)) => date = Some(v.trim().to_string()),
                _ => bail!("unexpected line in {SNAPSHOT_FILE}: {line:?}"),
            }
        }
        let commit = commit.context("SNAPSHOT has no `commit:` line")?;
        let date = date.context("SNAPSHOT has no `date:` line")?;
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("SNAPSHOT commit {commit:?} is not a 40-digit hex id");
        }
        Ok(Snapshot { commit, date })
    }

    fn render(&self) -> String {
        format!(
            "# RustSec advisory-db snapshot used by `cargo xtask deny` (CC0-1.0: LICENSE.txt).\n\
             # Refresh: cargo xtask deny --refresh-advisories <advisory-db checkout>\n\
             commit: {}\ndate: {}\n",
            self.commit, self.date
        )
    }
}

/// The crate names of a Cargo.lock (`name = "..."` lines of its `[[package]]` tables).
pub fn lock_crate_names(lock: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_package = false;
    for line in lock.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[[package]]";
            continue;
        }
        if !in_package {
            continue;
        }
        if let Some(v) = line.strip_prefix("name = ") {
            names.insert(v.trim_matches('"').to_string());
        }
    }
    names
}

/// Crates of Cargo.lock that the whole database has advisories for but the snapshot does
/// not carry: the snapshot must be refreshed before it can vouch for them.
pub fn uncovered(
    lock: &BTreeSet<String>,
    with_advisories: &BTreeSet<String>,
    vendored: &BTreeSet<String>,
) -> Vec<String> {
    lock.iter()
        .filter(|n| with_advisories.contains(*n) && !vendored.contains(*n))
        .cloned()
        .collect()
}

fn snapshot_dir() -> PathBuf {
    root().join(SNAPSHOT_DIR)
}

fn read_lock_names() -> Result<BTreeSet<String>> {
    let path = root().join("Cargo.lock");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(lock_crate_names(&text))
}

fn read_index(dir: &Path) -> Result<BTreeSet<String>> {
    let path = dir.join(INDEX_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

fn vendored_crates(dir: &Path) -> Result<BTreeSet<String>> {
    let crates = dir.join("crates");
    let mut names = BTreeSet::new();
    for entry in
        std::fs::read_dir(&crates).with_context(|| format!("reading {}", crates.display()))?
    {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.insert(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// `git` with the variables that would redirect it elsewhere removed.
fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir);
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn git_output(cmd: &mut Command) -> Result<Vec<u8>> {
    let line = ferroplane_e2e::command_line(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn git_text(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&git_output(cmd)?)
        .trim()
        .to_string())
}

/// Rewrites the vendored snapshot from a checkout (or bare clone) of the advisory database:
/// the advisories of the crates in Cargo.lock, the index of every crate with advisories, the
/// database's licence and the commit and date it was taken at.
pub fn refresh(from: &Path) -> Result<()> {
    let commit = git_text(git(from).args(["rev-parse", "HEAD"]))?;
    let date = git_text(git(from).args(["log", "-1", "--format=%cI", "HEAD"]))?;
    let files = git_text(git(from).args(["ls-tree", "-r", "--name-only", "HEAD", "crates"]))?;
    let mut with_advisories = BTreeSet::new();
    let mut wanted: Vec<(String, String)> = Vec::new();
    let lock = read_lock_names()?;
    for path in files.lines() {
        let mut parts = path.split('/');
        let (Some("crates"), Some(name), Some(file), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !file.ends_with(".md") {
            continue;
        }
        with_advisories.insert(name.to_string());
        if lock.contains(name) {
            wanted.push((name.to_string(), path.to_string()));
        }
    }
    if with_advisories.is_empty() {
        bail!(
            "{} has no crates/<name>/*.md at HEAD: not an advisory-db checkout",
            from.display()
        );
    }
    let dir = snapshot_dir();
    let crates = dir.join("crates");
    if crates.exists() {
        std::fs::remove_dir_all(&crates)
            .with_context(|| format!("removing {}", crates.display()))?;
    }
    for (name, path) in &wanted {
        let body = git_output(git(from).args(["show", &format!("HEAD:{path}")]))?;
        let file = dir.join(path);
        std::fs::create_dir_all(crates.join(name))?;
        std::fs::write(&file, body).with_context(|| format!("writing {}", file.display()))?;
    }
    let licence = git_output(git(from).args(["show", "HEAD:LICENSE.txt"]))?;
    std::fs::write(dir.join("LICENSE.txt"), licence)?;
    let mut index = String::from(
        "# Every crate the whole advisory database has advisories for at the SNAPSHOT commit.\n",
    );
    for name in &with_advisories {
        index.push_str(name);
        index.push('\n');
    }
    std::fs::write(dir.join(INDEX_FILE), index)?;
    let snap = Snapshot { commit, date };
    std::fs::write(dir.join(SNAPSHOT_FILE), snap.render())?;
    println!(
        "advisory snapshot {} ({}): {} advisories for {} of the {} crates in Cargo.lock; \
         {} crates have advisories in the whole database",
        snap.commit,
        snap.date,
        wanted.len(),
        wanted
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        lock.len(),
        with_advisories.len()
    );
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying to {}", target.display()))?;
        }
    }
    Ok(())
}

/// Checks the snapshot covers Cargo.lock and lays it out as the git repository cargo-deny
/// opens under `db-path`, dated as the snapshot. Returns the snapshot and its age.
pub fn prepare_db() -> Result<(Snapshot, Duration)> {
    let dir = snapshot_dir();
    let snap_path = dir.join(SNAPSHOT_FILE);
    let snap = Snapshot::parse(
        &std::fs::read_to_string(&snap_path)
            .with_context(|| format!("reading {}", snap_path.display()))?,
    )?;
    let missing = uncovered(
        &read_lock_names()?,
        &read_index(&dir)?,
        &vendored_crates(&dir)?,
    );
    if !missing.is_empty() {
        bail!(
            "Cargo.lock has crates with RustSec advisories that the vendored snapshot does not \
             carry: {}. Refresh it: cargo xtask deny --refresh-advisories <advisory-db checkout>",
            missing.join(", ")
        );
    }

    let db = root().join(DB_ROOT).join(DB_DIR_NAME);
    if db.exists() {
        std::fs::remove_dir_all(&db).with_context(|| format!("removing {}", db.display()))?;
    }
    copy_tree(&dir.join("crates"), &db.join("crates"))?;
    git_output(git(&db).args(["init", "-q"]))?;
    git_output(git(&db).args(["add", "crates"]))?;
    git_output(
        git(&db)
            .args([
                "-c",
                "user.name=ferroplane xtask",
                "-c",
                "user.email=xtask@ferroplane.invalid",
                "-c",
                "commit.gpgsign=false",
                "commit",
                "-q",
                "--no-verify",
                "-m",
            ])
            .arg(format!("RustSec advisory-db snapshot {}", snap.commit))
            .env("GIT_AUTHOR_DATE", &snap.date)
            .env("GIT_COMMITTER_DATE", &snap.date),
    )?;
    // cargo-deny dates an offline database by max(HEAD's commit date, HEAD's mtime): give
    // HEAD the snapshot's date so the staleness check sees the snapshot's age, not ours.
    let secs: u64 = git_text(git(&db).args(["log", "-1", "--format=%ct", "HEAD"]))?
        .parse()
        .context("parsing the commit time")?;
    let taken = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let head = db.join(".git/HEAD");
    std::fs::File::options()
        .write(true)
        .open(&head)
        .and_then(|f| f.set_modified(taken))
        .with_context(|| format!("setting the mtime of {}", head.display()))?;
    let age = SystemTime::now()
        .duration_since(taken)
        .unwrap_or(Duration::ZERO);
    Ok((snap, age))
}

fn installed_version() -> Option<String> {
    let out = cargo()
        .args(["deny", "--version"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(String::from)
}

/// Installs cargo-deny [`CARGO_DENY_VERSION`] from crates.io when it is missing or another
/// version. Its manifest asks for fat LTO and one codegen unit, turned off for this build
/// only: measured on 2 cores (2026-12-06), 98 s on a quiet machine and 3 min 25 s while
/// other builds ran, against 4 min 40 s with the manifest's profile.
pub fn ensure_installed() -> Result<()> {
    match installed_version() {
        Some(v) if v == CARGO_DENY_VERSION => {
            println!("cargo-deny {v} present");
            return Ok(());
        }
        Some(v) => println!("cargo-deny {v} found, {CARGO_DENY_VERSION} wanted"),
        None => println!("cargo-deny not installed"),
    }
    println!("installing cargo-deny {CARGO_DENY_VERSION} from crates.io (cargo install: 2 to 4 min on 2 cores)");
    run(cargo()
        .args([
            "install",
            "--locked",
            "--force",
            "cargo-deny",
            "--version",
            &format!("={CARGO_DENY_VERSION}"),
        ])
        .env("CARGO_PROFILE_RELEASE_LTO", "off")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"))
    .context("cargo install cargo-deny")?;
    match installed_version() {
        Some(v) if v == CARGO_DENY_VERSION => Ok(()),
        other => bail!("after cargo install, `cargo deny --version` gives {other:?}"),
    }
}

/// Installs cargo-deny if needed, prepares the advisory database and runs every check.
pub fn check() -> Result<()> {
    ensure_installed()?;
    let (snap, age) = prepare_db()?;
    println!(
        "advisories: RustSec advisory-db snapshot of {} (commit {}, {} days old); \
         advisories published since then are not seen",
        snap.date,
        &snap.commit[..12],
        age.as_secs() / 86_400
    );
    // `--offline` below keeps cargo-deny from fetching the advisory database, and also makes
    // its `cargo metadata` offline: fetch every crate of Cargo.lock first (all targets; a
    // no-op when the cache has them), so a fresh machine does not fail on a missing one.
    run(cargo().args(["fetch", "--locked"])).context("cargo fetch --locked")?;
    run(cargo().args([
        "deny",
        "--offline",
        "--locked",
        "--workspace",
        "--color",
        "never",
        "check",
        "--show-stats",
        "all",
    ]))
    .context(
        "cargo deny check failed (policy: deny.toml; why: LICENSING.md; a stale snapshot: \
         cargo xtask deny --refresh-advisories <advisory-db checkout>)",
    )
}

/// `cargo xtask deny [--refresh-advisories DIR]`.
pub fn run_deny(refresh_from: Option<PathBuf>) -> Result<()> {
    let mut p = crate::progress::Progress::new(if refresh_from.is_some() { 2 } else { 1 });
    if let Some(from) = refresh_from {
        p.step("refreshing the vendored advisory snapshot", || {
            refresh(&from)
        })?;
    }
    p.step(
        "cargo deny check (licenses, bans, sources, advisories)",
        check,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_snapshot_file() {
        let s = Snapshot::parse(
            "# c\ncommit: bf5c0d245a92671908518d7e765914d437954ed6\ndate: 2026-08-21T08:28:40+02:00\n",
        )
        .unwrap();
        assert_eq!(s.date, "2026-08-21T08:28:40+02:00");
        assert_eq!(Snapshot::parse(&s.render()).unwrap(), s);
        assert!(Snapshot::parse("commit: abc\ndate: x\n").is_err());
        assert!(Snapshot::parse("date: x\n").is_err());
    }

    #[test]
    fn reads_lock_names_and_finds_uncovered_crates() {
        let lock = "version = 4\n\n[[package]]\nname = \"tokio\"\nversion = \"1\"\n\
                    dependencies = [\n \"bytes\",\n]\n\n[[package]]\nname = \"spin\"\n\
                    version = \"0.9\"\n\n[[package]]\nname = \"quiet\"\nversion = \"1\"\n";
        let names = lock_crate_names(lock);
        assert_eq!(
            names.iter().map(String::as_str).collect::<Vec<_>>(),
            ["quiet", "spin", "tokio"]
        );
        let with: BTreeSet<String> = ["tokio", "spin", "other"].map(String::from).into();
        let vendored: BTreeSet<String> = ["tokio"].map(String::from).into();
        assert_eq!(uncovered(&names, &with, &vendored), ["spin"]);
    }

    /// The committed snapshot covers the committed Cargo.lock, and deny.toml points
    /// cargo-deny at the folder [`prepare_db`] fills.
    #[test]
    fn vendored_snapshot_matches_lock_and_deny_toml() {
        let dir = snapshot_dir();
        let snap =
            Snapshot::parse(&std::fs::read_to_string(dir.join(SNAPSHOT_FILE)).unwrap()).unwrap();
        assert!(!snap.date.is_empty());
        let missing = uncovered(
            &read_lock_names().unwrap(),
            &read_index(&dir).unwrap(),
            &vendored_crates(&dir).unwrap(),
        );
        assert!(missing.is_empty(), "refresh the snapshot for {missing:?}");
        let deny = std::fs::read_to_string(root().join("deny.toml")).unwrap();
        assert!(
            deny.contains(&format!("db-path = \"{DB_ROOT}\"")),
            "deny.toml must set db-path = \"{DB_ROOT}\""
        );
    }
}
