//! Build script of the I/O crate: with the `dpdk` feature, compiles the C shim of the
//! DPDK backend (`src/dpdk/shim.c`) against DPDK found through pkg-config, and links
//! DPDK. Without the feature it does nothing, so the default build never needs DPDK.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "dpdk")]
    dpdk::build();
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::process::Command;

    /// The DPDK release the shim is written against (Debian 12's `libdpdk-dev`).
    const MIN_VERSION: &str = "22.11";
    const SHIM: &str = "src/dpdk/shim.c";

    pub fn build() {
        println!("cargo:rerun-if-changed={SHIM}");
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        // Link flags: the pkg-config crate turns `--libs` into cargo directives.
        let lib = match pkg_config::Config::new()
            .atleast_version(MIN_VERSION)
            .probe("libdpdk")
        {
            Ok(lib) => lib,
            Err(e) => panic!(
                "the `dpdk` feature needs DPDK >= {MIN_VERSION} (Debian: `apt-get install \
                 libdpdk-dev pkg-config`, or `cargo xtask deps --dpdk`): {e}"
            ),
        };
        // Compile flags: DPDK's `--cflags` carry `-include rte_config.h` and a `-march`
        // its inline headers need (SSE4.2 intrinsics), which the crate's parsed
        // include paths lose; take them verbatim.
        let cflags = Command::new("pkg-config")
            .args(["--cflags", "libdpdk"])
            .output()
            .unwrap_or_else(|e| panic!("running pkg-config --cflags libdpdk: {e}"));
        assert!(
            cflags.status.success(),
            "pkg-config --cflags libdpdk failed: {}",
            String::from_utf8_lossy(&cflags.stderr)
        );
        let cflags = String::from_utf8_lossy(&cflags.stdout).into_owned();
        let mut build = cc::Build::new();
        build.file(SHIM).warnings(true).extra_warnings(true);
        // `-include rte_config.h` is two words; keep them together.
        let mut words = cflags.split_whitespace();
        while let Some(w) = words.next() {
            if w == "-include" {
                if let Some(file) = words.next() {
                    build.flag("-include").flag(file);
                }
            } else {
                build.flag(w);
            }
        }
        for path in &lib.include_paths {
            build.include(path);
        }
        build.compile("fp_dpdk_shim");
    }
}
