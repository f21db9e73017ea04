//! `cargo xtask dist`: the shipped binaries, stripped, with their debug info split off.
//!
//! `[profile.release]` keeps debug info (`debug = 1`): backtraces and profiles during
//! development need it, and changing the profile would rebuild everything for everyone. The
//! release `ferroplane-agent` is about 150 MB that way. `dist` copies the release binaries
//! into `target/dist/`, moves their DWARF into `<bin>.debug` (`objcopy --only-keep-debug`,
//! compressed) and strips the copies of it, keeping the symbol table so panic backtraces
//! still name functions, and links each to its debug file (`.gnu_debuglink`, found by gdb,
//! perf and addr2line next to the binary or under /usr/lib/debug).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::progress::{cargo, root, run};

/// The shipped binaries and the packages that build them.
pub const BINARIES: &[(&str, &str)] = &[
    ("ferroplane-agent", "ferroplane-agent"),
    ("ferroctl", "ferroplane-ctl"),
    ("ferroplane-cni", "ferroplane-cni"),
];

/// One shipped binary in `target/dist/`.
#[derive(Debug, Clone)]
pub struct DistBinary {
    /// Its name.
    pub name: String,
    /// The stripped binary.
    pub path: PathBuf,
    /// Its split debug info.
    pub debug: PathBuf,
    /// Size of the release binary it was made from.
    pub release_size: u64,
}

/// `target/dist/`.
pub fn dist_dir() -> PathBuf {
    root().join("target").join("dist")
}

fn objcopy(args: &[&std::ffi::OsStr]) -> Result<()> {
    let mut cmd = Command::new("objcopy");
    cmd.args(args);
    let line = ferroplane_e2e::command_line(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}` (binutils: cargo xtask deps)"))?;
    if !out.status.success() {
        bail!(
            "`{line}` exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Splits `release` into `out` (stripped of DWARF, symbols kept, linked to its debug file)
/// and `out.debug` (the DWARF, zlib-compressed). Both land in `out`'s directory.
pub fn split(release: &Path, out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .context("output path has no file name")?
        .to_string_lossy()
        .into_owned();
    let dir = out.parent().context("output path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let debug = dir.join(format!("{name}.debug"));
    for stale in [out, debug.as_path()] {
        if stale.exists() {
            std::fs::remove_file(stale).with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    objcopy(&[
        "--only-keep-debug".as_ref(),
        "--compress-debug-sections=zlib".as_ref(),
        release.as_os_str(),
        debug.as_os_str(),
    ])?;
    // --add-gnu-debuglink records the debug file's base name and CRC.
    objcopy(&[
        "--strip-debug".as_ref(),
        std::ffi::OsString::from(format!("--add-gnu-debuglink={}", debug.display())).as_os_str(),
        release.as_os_str(),
        out.as_os_str(),
    ])?;
    Ok(debug)
}

/// The section names of an ELF file (`readelf -S -W`).
pub fn section_names(path: &Path) -> Result<Vec<String>> {
    let out = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("cannot start readelf (binutils: cargo xtask deps)")?;
    if !out.status.success() {
        bail!(
            "readelf -S {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix('[')?;
            let (_, after) = rest.split_once(']')?;
            after.split_whitespace().next().map(String::from)
        })
        .filter(|n| n.starts_with('.'))
        .collect())
}

/// Checks a split: the stripped binary has no DWARF, a symbol table and a debug link; the
/// debug file has the DWARF.
pub fn check_split(stripped: &Path, debug: &Path) -> Result<()> {
    let s = section_names(stripped)?;
    // DWARF; `.debug_gdb_scripts` (loaded, gdb's pretty-printer hook) rightly stays.
    const DWARF: &[&str] = &[".debug_info", ".debug_line", ".debug_str", ".debug_abbrev"];
    if let Some(d) = s.iter().find(|n| DWARF.contains(&n.as_str())) {
        bail!("{} still has DWARF ({d})", stripped.display());
    }
    for want in [".gnu_debuglink", ".symtab", ".text"] {
        if !s.iter().any(|n| n == want) {
            bail!("{} has no {want} section", stripped.display());
        }
    }
    let d = section_names(debug)?;
    if !d.iter().any(|n| n == ".debug_info") {
        bail!("{} has no .debug_info", debug.display());
    }
    Ok(())
}

/// Makes `target/dist/` from the release binaries (built first when `build`).
pub fn make(build: bool) -> Result<Vec<DistBinary>> {
    if build {
        let mut cmd = cargo();
        cmd.args(["build", "--release"]);
        for (_, pkg) in BINARIES {
            cmd.args(["-p", pkg]);
        }
        run(&mut cmd).context("building the release binaries")?;
    }
    let release = ferroplane_e2e::bin_dir();
    let dir = dist_dir();
    let mut out = Vec::new();
    for (name, _) in BINARIES {
        let src = release.join(name);
        let release_size = std::fs::metadata(&src)
            .with_context(|| {
                format!(
                    "{} missing: `cargo build --release -p ferroplane-agent -p ferroplane-ctl -p ferroplane-cni` (or `cargo xtask dist`)",
                    src.display()
                )
            })?
            .len();
        let path = dir.join(name);
        let debug = split(&src, &path)?;
        check_split(&path, &debug)?;
        let b = DistBinary {
            name: name.to_string(),
            path,
            debug,
            release_size,
        };
        println!(
            "{:<18} {:>7.1} MB release -> {:>6.1} MB stripped + {:>6.1} MB {}",
            b.name,
            mb(b.release_size),
            mb(file_size(&b.path)?),
            mb(file_size(&b.debug)?),
            b.debug
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        out.push(b);
    }
    Ok(out)
}

fn file_size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("stat {}", p.display()))?
        .len())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

/// `cargo xtask dist [--no-build]`.
pub fn run_dist(build: bool) -> Result<()> {
    let mut p = crate::progress::Progress::new(1);
    p.step(
        "release binaries -> target/dist/ (stripped + .debug)",
        || make(build).map(|_| ()),
    )?;
    println!("in {}", dist_dir().display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny C program built with -g splits into a binary without DWARF (linked to its
    /// debug file, symbols kept) and a debug file with it, and the stripped binary runs.
    #[test]
    fn splits_debug_info_off_a_binary() {
        let tmp = ferroplane_e2e::TempDir::new("dist-split").unwrap();
        let c = tmp.path().join("hello.c");
        std::fs::write(&c, "int main(void) { return 7; }\n").unwrap();
        let bin = tmp.path().join("hello");
        let st = Command::new("cc")
            .args(["-g", "-O0", "-o"])
            .arg(&bin)
            .arg(&c)
            .status()
            .expect("cc (gcc: cargo xtask deps)");
        assert!(st.success());
        assert!(section_names(&bin)
            .unwrap()
            .contains(&".debug_info".to_string()));
        let out_dir = tmp.path().join("dist");
        let out = out_dir.join("hello");
        let debug = split(&bin, &out).unwrap();
        assert_eq!(debug, out_dir.join("hello.debug"));
        check_split(&out, &debug).unwrap();
        // The unstripped input fails the same check.
        assert!(check_split(&bin, &debug).is_err());
        let code = Command::new(&out).status().unwrap().code();
        assert_eq!(code, Some(7));
    }
}
