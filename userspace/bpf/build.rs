//! Compiles the XDP programs in `ebpf/` with clang into `OUT_DIR/<name>.o`;
//! `src/lib.rs` embeds the objects with `aya::include_bytes_aligned!`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every program in `ebpf/`: `ebpf/<name>.c` becomes `OUT_DIR/<name>.o`.
/// The build fails if `ebpf/` holds a `.c` file missing from this list.
const PROGRAMS: &[&str] = &["xdp_uplink", "xdp_pod"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest.join("../../ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CLANG");
    build_programs(&ebpf_dir, &out_dir);
}

/// Sorted paths of the files in `dir` whose name ends with `ext`.
fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

/// The one function that knows the list of programs: checks it against
/// `ebpf/*.c`, registers the rerun triggers and compiles each program.
fn build_programs(ebpf_dir: &Path, out_dir: &Path) {
    let include_dir = ebpf_dir.join("include");
    // New files in either directory re-run this script.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-changed={}", include_dir.display());
    for header in files_with_ext(&include_dir, "h") {
        println!("cargo:rerun-if-changed={}", header.display());
    }

    let sources = files_with_ext(ebpf_dir, "c");
    let mut found: Vec<String> = sources
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    found.sort();
    let mut listed: Vec<String> = PROGRAMS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        found, listed,
        "ebpf/*.c and PROGRAMS in userspace/bpf/build.rs differ: add new programs to the list"
    );

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang-19".to_string());
    let (multiarch, target_arch) = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => ("aarch64-linux-gnu", "arm64"),
        _ => ("x86_64-linux-gnu", "x86"),
    };
    for name in PROGRAMS {
        let src = ebpf_dir.join(format!("{name}.c"));
        let obj = out_dir.join(format!("{name}.o"));
        println!("cargo:rerun-if-changed={}", src.display());
        let output = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-target", "bpf"])
            .arg(format!("-D__TARGET_ARCH_{target_arch}"))
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg("-I")
            .arg(&include_dir)
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .output()
            .unwrap_or_else(|e| panic!("running `{clang}` (set CLANG to override): {e}"));
        assert!(
            output.status.success(),
            "`{clang}` failed on {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
