//! `cargo xtask image`: what goes into the image, and the check that it runs.
//!
//! The layer holds the stripped binaries of `cargo xtask dist` under `/usr/local/bin` (where
//! `manifests/03-daemonset.yaml` runs them from), the shared libraries they and busybox load
//! (copied from this build host: the binaries were linked against them), busybox for the
//! DaemonSet's install-cni step (`sh`, `cp`, `mv`, `chmod`), and the licence texts the
//! binary distribution must carry (LICENSING.md says which and why). Nothing is fetched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::dist::DistBinary;
use crate::image::{self, Content, Entry, ImageSpec};
use crate::progress::{cargo, is_root, root};

/// The image repository `manifests/03-daemonset.yaml` pulls.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/ferroplane/ferroplane";

/// Where the shipped binaries live in the image.
pub const BIN_DIR: &str = "usr/local/bin";

/// busybox applets the image links: the install-cni step's, and a few to look around with.
const APPLETS: &[&str] = &["sh", "cp", "mv", "chmod", "rm", "mkdir", "cat", "ls"];

/// `ghcr.io/ferroplane/ferroplane:<workspace version>`.
pub fn image_reference() -> String {
    format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// `target/dist/ferroplane-<version>.oci.tar`.
pub fn archive_path() -> PathBuf {
    crate::dist::dist_dir().join(format!("ferroplane-{}.oci.tar", env!("CARGO_PKG_VERSION")))
}

fn exe(data: Vec<u8>) -> Entry {
    Entry {
        mode: 0o755,
        content: Content::File(data),
    }
}

fn doc(data: Vec<u8>) -> Entry {
    Entry {
        mode: 0o644,
        content: Content::File(data),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The shared objects `ldd` resolves for `bin` (the loader included), as the paths the
/// binary asks for.
pub fn shared_libraries(bin: &Path) -> Result<BTreeSet<String>> {
    let out = Command::new("ldd")
        .arg(bin)
        .stdin(Stdio::null())
        .output()
        .context("cannot start ldd")?;
    ensure!(
        out.status.success(),
        "ldd {} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `ldd` output: `name => /path (addr)` and `/path (addr)` lines; the vDSO has no
/// file; an unresolved library is an error.
pub fn parse_ldd(text: &str) -> Result<BTreeSet<String>> {
    let mut libs = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let p = rest.split_whitespace().next().unwrap_or("");
                if p == "not" {
                    bail!("ldd: {} not found", name.trim());
                }
                p
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.insert(path.to_string());
        } else if !line.starts_with("linux-vdso") && !line.starts_with("statically linked") {
            bail!("unexpected ldd line: {line}");
        }
    }
    Ok(libs)
}

/// The Debian package owning `path`, its version and source package.
fn debian_package(path: &str) -> Result<(String, String, String)> {
    let out = Command::new("dpkg-query")
        .args(["-S", path])
        .stdin(Stdio::null())
        .output()
        .context("cannot start dpkg-query")?;
    ensure!(out.status.success(), "no Debian package owns {path}");
    let text = String::from_utf8_lossy(&out.stdout);
    let pkg = text
        .split(':')
        .next()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .with_context(|| format!("dpkg-query -S {path}: {text}"))?
        .to_string();
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}\t${source:Package}", &pkg])
        .stdin(Stdio::null())
        .output()
        .context("cannot start dpkg-query")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (version, source) = text
        .split_once('\t')
        .with_context(|| format!("dpkg-query -W {pkg}: {text}"))?;
    Ok((pkg, version.trim().to_string(), source.trim().to_string()))
}

/// Licence files of the crates compiled into the shipped binaries (normal dependencies of
/// their packages, from `cargo metadata`), each under
/// `usr/share/doc/ferroplane/third-party/<crate>-<version>/`, and a summary listing every
/// crate with its declared licence.
fn crate_notices(files: &mut BTreeMap<String, Entry>) -> Result<usize> {
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .stdin(Stdio::null())
        .output()
        .context("cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .context("metadata packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .context("metadata resolve")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    // Walk normal (non-dev, non-build) dependencies from the shipped binaries' packages.
    let mut todo: Vec<&str> = packages
        .iter()
        .filter(|(_, p)| {
            crate::dist::BINARIES
                .iter()
                .any(|(_, pkg)| p["name"] == *pkg && p["source"].is_null())
        })
        .map(|(id, _)| *id)
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes
            .get(id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten()
        {
            let normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|ks| ks.iter().any(|k| k["kind"].is_null()));
            if let (true, Some(d)) = (normal, dep["pkg"].as_str()) {
                todo.push(d);
            }
        }
    }
    let mut summary = String::from(
        "Crates compiled into ferroplane-agent, ferroctl and ferroplane-cni, with their\n\
         declared licences (SPDX). Each crate's own licence files, where its package has\n\
         them, are in the folder of the same name.\n\n",
    );
    let mut count = 0;
    for id in &seen {
        let p = packages[id];
        if p["source"].is_null() {
            continue; // ours: Apache-2.0, LICENSE at the top.
        }
        let name = p["name"].as_str().unwrap_or("?");
        let version = p["version"].as_str().unwrap_or("?");
        let licence = p["license"].as_str().unwrap_or("(see its licence file)");
        let dir = Path::new(p["manifest_path"].as_str().context("manifest_path")?)
            .parent()
            .context("crate dir")?
            .to_path_buf();
        let mut copied = 0;
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let fname = e.file_name().to_string_lossy().into_owned();
            let upper = fname.to_ascii_uppercase();
            if e.file_type()?.is_file()
                && ["LICENSE", "LICENCE", "COPYING", "NOTICE", "COPYRIGHT"]
                    .iter()
                    .any(|p| upper.starts_with(p))
            {
                files.insert(
                    format!("usr/share/doc/ferroplane/third-party/{name}-{version}/{fname}"),
                    doc(read(&e.path())?),
                );
                copied += 1;
            }
        }
        summary.push_str(&format!(
            "{name} {version}: {licence}{}\n",
            if copied == 0 {
                " (its package ships no licence file)"
            } else {
                ""
            }
        ));
        count += 1;
    }
    files.insert(
        "usr/share/doc/ferroplane/third-party/CRATES.txt".into(),
        doc(summary.into_bytes()),
    );
    Ok(count)
}

/// The image's files: the dist binaries, busybox and its applets, the shared libraries,
/// licence texts and Debian's copyright files for what comes from Debian.
pub fn files(dist: &[DistBinary]) -> Result<BTreeMap<String, Entry>> {
    let mut files = BTreeMap::new();
    let mut elf: Vec<PathBuf> = Vec::new();
    for b in dist {
        files.insert(format!("{BIN_DIR}/{}", b.name), exe(read(&b.path)?));
        elf.push(b.path.clone());
    }
    let busybox = Path::new("/bin/busybox");
    files.insert("bin/busybox".into(), exe(read(busybox)?));
    elf.push(busybox.to_path_buf());
    for applet in APPLETS {
        files.insert(
            format!("bin/{applet}"),
            Entry {
                mode: 0o777,
                content: Content::Symlink("busybox".into()),
            },
        );
    }
    let mut host: BTreeSet<String> = ["/bin/busybox".to_string()].into();
    for bin in &elf {
        for lib in shared_libraries(bin)? {
            files.insert(
                lib.trim_start_matches('/').to_string(),
                exe(read(Path::new(&lib))?),
            );
            host.insert(lib);
        }
    }
    // What comes from Debian: which package, version and source package, and its
    // copyright file (the GPL/LGPL of busybox, glibc and libgcc require offering the source:
    // Debian keeps it for every version it published).
    let mut debian = String::from(
        "Files in this image taken from Debian packages of the build host. Their source is\n\
         Debian's source package of the same name and version.\n\n",
    );
    let mut packages = BTreeSet::new();
    for path in &host {
        let (pkg, version, source) = debian_package(path)?;
        debian.push_str(&format!(
            "{path}: {pkg} {version} (source package {source})\n"
        ));
        packages.insert(pkg);
    }
    for pkg in packages {
        let copyright = format!("/usr/share/doc/{pkg}/copyright");
        files.insert(
            copyright.trim_start_matches('/').into(),
            doc(read(Path::new(&copyright))?),
        );
    }
    files.insert(
        "usr/share/doc/ferroplane/DEBIAN-PACKAGES.txt".into(),
        doc(debian.into_bytes()),
    );
    for (src, name) in [("LICENSE", "LICENSE"), ("LICENSING.md", "LICENSING.md")] {
        files.insert(
            format!("usr/share/doc/ferroplane/{name}"),
            doc(read(&root().join(src))?),
        );
    }
    crate_notices(&mut files)?;
    for dir in ["tmp", "etc", "run", "var/lib"] {
        files.insert(
            dir.into(),
            Entry {
                mode: if dir == "tmp" { 0o1777 } else { 0o755 },
                content: Content::Dir,
            },
        );
    }
    Ok(files)
}

/// The image of the given dist binaries.
pub fn spec(dist: &[DistBinary]) -> Result<ImageSpec> {
    Ok(ImageSpec {
        reference: image_reference(),
        entrypoint: vec![format!("/{BIN_DIR}/ferroplane-agent")],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        labels: [
            ("org.opencontainers.image.title", "ferroplane"),
            (
                "org.opencontainers.image.description",
                "ferroplane node agent, ferroctl and the ferroplane-cni plugin",
            ),
            (
                "org.opencontainers.image.version",
                env!("CARGO_PKG_VERSION"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        files: files(dist)?,
    })
}

/// The install-cni script of `manifests/03-daemonset.yaml` (the block after `- |` in the
/// `install-cni` init container).
pub fn install_cni_script(daemonset: &str) -> Result<String> {
    let start = daemonset
        .find("- name: install-cni")
        .context("no install-cni init container in the DaemonSet")?;
    let mut lines = daemonset[start..].lines();
    lines
        .by_ref()
        .find(|l| l.trim_end().ends_with("- |"))
        .context("install-cni has no `- |` script")?;
    let mut script = String::new();
    let mut indent = None;
    for line in lines {
        if line.trim().is_empty() {
            script.push('\n');
            continue;
        }
        let n = line.len() - line.trim_start().len();
        let i = *indent.get_or_insert(n);
        if n < i {
            break;
        }
        script.push_str(&line[i..]);
        script.push('\n');
    }
    ensure!(!script.trim().is_empty(), "empty install-cni script");
    Ok(script)
}

fn chroot(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
    // Found on our PATH: the child's PATH below is the image's.
    let chroot = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("chroot"))
                .find(|p| p.is_file())
        })
        .context("chroot not found on PATH (coreutils)")?;
    let mut cmd = Command::new(chroot);
    cmd.arg(dir)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let line = ferroplane_e2e::command_line(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    ensure!(
        out.status.success(),
        "`{line}` exited with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn unpack(files: &BTreeMap<String, Entry>, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (path, e) in files {
        let p = dir.join(path);
        match &e.content {
            Content::Dir => std::fs::create_dir_all(&p)?,
            Content::File(data) => {
                std::fs::write(&p, data)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode))?;
            }
            Content::Symlink(t) => std::os::unix::fs::symlink(t, &p)?,
        }
    }
    Ok(())
}

/// Runs the unpacked layer (root: chroot): each binary starts with only the image's
/// libraries, and the DaemonSet's install-cni script installs the plugin and the conflist.
pub fn smoke(files: &BTreeMap<String, Entry>) -> Result<()> {
    let tmp = ferroplane_e2e::TempDir::new("image-smoke")?;
    let dir = tmp.path().join("rootfs");
    unpack(files, &dir)?;
    let out = chroot(&dir, &["/usr/local/bin/ferroplane-agent", "--version"], &[])?;
    println!("chroot: {}", String::from_utf8_lossy(&out.stdout).trim());
    let out = chroot(&dir, &["/usr/local/bin/ferroctl", "--version"], &[])?;
    println!("chroot: {}", String::from_utf8_lossy(&out.stdout).trim());
    let out = chroot(
        &dir,
        &["/usr/local/bin/ferroplane-cni"],
        &[("CNI_COMMAND", "VERSION")],
    )?;
    let v: Value = serde_json::from_slice(&out.stdout).context("CNI VERSION reply")?;
    ensure!(
        v["supportedVersions"].is_array(),
        "CNI VERSION reply without supportedVersions: {v}"
    );
    println!(
        "chroot: ferroplane-cni VERSION -> cniVersion {}",
        v["cniVersion"]
    );

    let ds = std::fs::read_to_string(root().join("manifests/03-daemonset.yaml"))?;
    let script = install_cni_script(&ds)?;
    for d in ["host/opt/cni/bin", "host/etc/cni/net.d", "config"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let conflist = b"{\"cniVersion\":\"1.1.0\",\"name\":\"smoke\",\"plugins\":[]}\n";
    std::fs::write(dir.join("config/10-ferroplane.conflist"), conflist)?;
    chroot(&dir, &["/bin/sh", "-c", &script], &[])?;
    let installed = dir.join("host/opt/cni/bin/ferroplane-cni");
    let meta = std::fs::metadata(&installed)
        .context("install-cni did not install /host/opt/cni/bin/ferroplane-cni")?;
    use std::os::unix::fs::PermissionsExt;
    ensure!(
        meta.permissions().mode() & 0o777 == 0o755,
        "installed plugin mode {:o}",
        meta.permissions().mode()
    );
    ensure!(
        Some(&Content::File(read(&installed)?))
            == files
                .get("usr/local/bin/ferroplane-cni")
                .map(|e| &e.content),
        "the installed plugin differs from the image's"
    );
    ensure!(
        read(&dir.join("host/etc/cni/net.d/10-ferroplane.conflist"))? == conflist,
        "install-cni did not install the conflist"
    );
    println!("chroot: the DaemonSet's install-cni script installed the plugin and the conflist");
    Ok(())
}

/// Builds `target/dist/` and the image archive from it, verifies the archive and, as root,
/// runs its binaries and the install-cni script in a chroot of its layer. `build`: build the
/// release binaries first.
pub fn make(build: bool) -> Result<PathBuf> {
    let dist = crate::dist::make(build)?;
    let spec = spec(&dist)?;
    let archive = image::build(&spec)?;
    let path = archive_path();
    std::fs::write(&path, &archive).with_context(|| format!("writing {}", path.display()))?;
    let v = image::verify(&std::fs::read(&path)?)?;
    ensure!(
        v.reference == image_reference(),
        "reference {}",
        v.reference
    );
    println!(
        "{}: {} ({:.1} MB, layer {:.1} MB gzip, {} paths, entrypoint {}), manifest {}",
        path.display(),
        v.reference,
        archive.len() as f64 / 1e6,
        v.layer_size as f64 / 1e6,
        v.files.len(),
        v.entrypoint.join(" "),
        v.manifest_digest
    );
    if is_root() {
        smoke(&v.files)?;
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!("the image's chroot check needs root, and CI=true: failing rather than skipping");
    } else {
        println!("SKIPPED: the chroot check of the image needs root (run as root to check it)");
    }
    println!(
        "load it: ctr -n k8s.io images import {p}   |   podman load -i {p}   |   docker load -i {p}",
        p = path.display()
    );
    Ok(path)
}

/// `cargo xtask image [--no-build]`.
pub fn run_image(build: bool) -> Result<()> {
    let mut p = crate::progress::Progress::new(1);
    p.step("OCI image archive from the release binaries", || {
        make(build).map(|_| ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007eff5201f000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007eff51fed000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007eff5081e000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007eff52021000)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs.into_iter().collect::<Vec<_>>(),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    /// The DaemonSet runs the image this xtask builds, and its install-cni script is found.
    #[test]
    fn daemonset_names_this_image() {
        let ds = std::fs::read_to_string(root().join("manifests/03-daemonset.yaml")).unwrap();
        let images: Vec<&str> = ds
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image:"))
            .map(str::trim)
            .collect();
        assert_eq!(images.len(), 2, "{images:?}");
        for i in images {
            assert_eq!(i, image_reference());
        }
        let script = install_cni_script(&ds).unwrap();
        assert!(script.contains("/usr/local/bin/ferroplane-cni"), "{script}");
        for line in script.lines() {
            // Only commands the image has (busybox applets) or shell builtins.
            if let Some(cmd) = line.split_whitespace().next() {
                assert!(
                    ["set"].contains(&cmd) || APPLETS.contains(&cmd),
                    "install-cni uses {cmd}, which the image lacks"
                );
            }
        }
    }

    #[test]
    fn extracts_the_install_script() {
        let ds = "      initContainers:\n        - name: install-cni\n          command:\n            - /bin/sh\n            - -c\n            - |\n              set -eu\n              cp a b\n\n              mv b c\n          securityContext:\n";
        assert_eq!(
            install_cni_script(ds).unwrap(),
            "set -eu\ncp a b\n\nmv b c\n"
        );
    }
}
