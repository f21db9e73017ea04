//! The OCI image archive of `cargo xtask image`: an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) in one tar, plus Docker's `manifest.json` beside it (as
//! `docker save` writes since Docker 25), so `ctr -n k8s.io images import`, `podman load` and
//! `docker load` all take it. One image, one gzip'd layer, no network, no daemon.
//!
//! The archive is reproducible: entries sorted, every mtime [`MTIME`], owner root, JSON with
//! sorted keys, gzip without a timestamp. The same inputs give the same bytes, so the same
//! digest.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

/// The mtime of every entry, inner and outer (the epoch: nothing in the image depends on
/// when it was built).
pub const MTIME: u64 = 0;

/// The config's creation time: [`MTIME`] in RFC 3339.
const CREATED: &str = "1970-01-01T00:00:00Z";

const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What one path of the layer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A directory.
    Dir,
    /// A regular file.
    File(Vec<u8>),
    /// A symbolic link to the target.
    Symlink(String),
}

/// One path of the image's file system (relative: `usr/local/bin/x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Mode bits (0o755, 0o644, ...).
    pub mode: u32,
    /// What it is.
    pub content: Content,
}

/// What `cargo xtask image` puts in the archive.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// `registry/repository:tag`.
    pub reference: String,
    /// The container's entrypoint.
    pub entrypoint: Vec<String>,
    /// `NAME=value` environment.
    pub env: Vec<String>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// The layer's files by path; parents are added as directories.
    pub files: BTreeMap<String, Entry>,
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn header(mode: u32, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

/// A tar of `files` (path → entry), parents first, sorted, reproducible.
pub fn tar_of(files: &BTreeMap<String, Entry>) -> Result<Vec<u8>> {
    let mut all = files.clone();
    for path in files.keys() {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            all.entry(parent.to_string()).or_insert(Entry {
                mode: 0o755,
                content: Content::Dir,
            });
            p = parent;
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    for (path, e) in &all {
        ensure!(
            !path.is_empty() && !path.starts_with('/') && !path.split('/').any(|c| c == ".."),
            "bad path in image: {path:?}"
        );
        match &e.content {
            Content::Dir => {
                let mut h = header(e.mode, tar::EntryType::Directory, 0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
            }
            Content::File(data) => {
                let mut h = header(e.mode, tar::EntryType::Regular, data.len() as u64);
                b.append_data(&mut h, path, data.as_slice())?;
            }
            Content::Symlink(target) => {
                let mut h = header(e.mode, tar::EntryType::Symlink, 0);
                b.append_link(&mut h, path, target)?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// Reads a tar into path → (mode, content), `./` and trailing `/` removed.
pub fn untar(data: &[u8]) -> Result<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(data);
    for e in ar.entries()? {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let mode = e.header().mode()?;
        let content = match e.header().entry_type() {
            tar::EntryType::Directory => Content::Dir,
            tar::EntryType::Regular => {
                let mut v = Vec::new();
                e.read_to_end(&mut v)?;
                Content::File(v)
            }
            tar::EntryType::Symlink => Content::Symlink(
                e.link_name()?
                    .context("symlink without target")?
                    .to_string_lossy()
                    .into_owned(),
            ),
            other => bail!("unexpected tar entry type {other:?} for {path}"),
        };
        if out.insert(path.clone(), Entry { mode, content }).is_some() {
            bail!("{path} appears twice");
        }
    }
    Ok(out)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // GzEncoder writes mtime 0 and no file name: the output depends on the input only.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

fn gunzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

fn to_json(v: &Value) -> Result<Vec<u8>> {
    // serde_json's map is ordered by key: the same value gives the same bytes.
    Ok(serde_json::to_vec(v)?)
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", sha256_hex(blob)),
        "size": blob.len(),
    })
}

fn blob_path(blob: &[u8]) -> String {
    format!("blobs/sha256/{}", sha256_hex(blob))
}

fn file(data: Vec<u8>) -> Entry {
    Entry {
        mode: 0o644,
        content: Content::File(data),
    }
}

/// Builds the archive (tar bytes) for `spec`.
pub fn build(spec: &ImageSpec) -> Result<Vec<u8>> {
    let (_, tag) = spec
        .reference
        .rsplit_once(':')
        .filter(|(repo, tag)| !repo.is_empty() && !tag.is_empty() && !tag.contains('/'))
        .with_context(|| format!("image reference {:?} has no tag", spec.reference))?;
    let layer_tar = tar_of(&spec.files)?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer_tar));
    let layer = gzip(&layer_tar)?;
    // `created` is optional in the spec, but some tools (umoci 0.4 stat) fail without it:
    // the fixed epoch keeps the image reproducible.
    let config = to_json(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {
            "Entrypoint": spec.entrypoint,
            "Env": spec.env,
            "Labels": spec.labels,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": CREATED, "created_by": "cargo xtask image" }],
    }))?;
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": descriptor(MT_CONFIG, &config),
        "layers": [descriptor(MT_LAYER, &layer)],
    }))?;
    let mut manifest_desc = descriptor(MT_MANIFEST, &manifest);
    manifest_desc["annotations"] = json!({
        "io.containerd.image.name": spec.reference,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [manifest_desc],
    }))?;
    let docker = to_json(&json!([{
        "Config": blob_path(&config),
        "RepoTags": [spec.reference],
        "Layers": [blob_path(&layer)],
    }]))?;
    let mut outer = BTreeMap::new();
    outer.insert(
        "oci-layout".to_string(),
        file(to_json(&json!({ "imageLayoutVersion": "1.0.0" }))?),
    );
    outer.insert("index.json".to_string(), file(index));
    outer.insert("manifest.json".to_string(), file(docker));
    outer.insert(blob_path(&config), file(config));
    outer.insert(blob_path(&manifest), file(manifest));
    outer.insert(blob_path(&layer), file(layer));
    tar_of(&outer)
}

/// What [`verify`] found in a sound archive.
#[derive(Debug, Clone)]
pub struct Verified {
    /// `io.containerd.image.name` of the one manifest.
    pub reference: String,
    /// The config's entrypoint.
    pub entrypoint: Vec<String>,
    /// The layer's files.
    pub files: BTreeMap<String, Entry>,
    /// The manifest's digest (`sha256:…`): the image id runtimes show.
    pub manifest_digest: String,
    /// Compressed layer size.
    pub layer_size: u64,
}

fn blob<'a>(
    outer: &'a BTreeMap<String, Entry>,
    desc: &Value,
    media_type: &str,
) -> Result<&'a [u8]> {
    ensure!(
        desc["mediaType"] == media_type,
        "descriptor {desc} is not a {media_type}"
    );
    let digest = desc["digest"]
        .as_str()
        .context("descriptor without digest")?;
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("{digest} is not sha256"))?;
    let path = format!("blobs/sha256/{hex}");
    let Some(Entry {
        content: Content::File(data),
        ..
    }) = outer.get(&path)
    else {
        bail!("{path} is missing");
    };
    ensure!(
        sha256_hex(data) == hex,
        "{path}: content hashes to sha256:{}",
        sha256_hex(data)
    );
    ensure!(
        desc["size"].as_u64() == Some(data.len() as u64),
        "{path}: descriptor size {} but {} bytes",
        desc["size"],
        data.len()
    );
    Ok(data)
}

fn json_file(outer: &BTreeMap<String, Entry>, path: &str) -> Result<Value> {
    match outer.get(path) {
        Some(Entry {
            content: Content::File(data),
            ..
        }) => serde_json::from_slice(data).with_context(|| format!("{path} is not JSON")),
        _ => bail!("{path} is missing"),
    }
}

/// Checks an archive as a runtime would read it: the layout marker, every descriptor's
/// digest and size against its blob, the config's diff_ids against the uncompressed
/// layers, Docker's manifest.json against the same blobs, an entrypoint, no stray blob.
pub fn verify(archive: &[u8]) -> Result<Verified> {
    let outer = untar(archive)?;
    ensure!(
        json_file(&outer, "oci-layout")? == json!({ "imageLayoutVersion": "1.0.0" }),
        "oci-layout is not version 1.0.0"
    );
    let index = json_file(&outer, "index.json")?;
    ensure!(index["schemaVersion"] == 2, "index.json schemaVersion");
    let manifests = index["manifests"]
        .as_array()
        .context("index.json has no manifests")?;
    ensure!(
        manifests.len() == 1,
        "index.json has {} manifests",
        manifests.len()
    );
    let desc = &manifests[0];
    let reference = desc["annotations"]["io.containerd.image.name"]
        .as_str()
        .context("the manifest has no io.containerd.image.name annotation")?
        .to_string();
    let tag = desc["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .context("the manifest has no org.opencontainers.image.ref.name annotation")?;
    ensure!(
        reference.ends_with(&format!(":{tag}")),
        "ref.name {tag} is not the tag of {reference}"
    );
    let mut used = vec![];
    let manifest_bytes = blob(&outer, desc, MT_MANIFEST)?;
    used.push(blob_path(manifest_bytes));
    let manifest: Value = serde_json::from_slice(manifest_bytes)?;
    ensure!(manifest["schemaVersion"] == 2, "manifest schemaVersion");
    let config_bytes = blob(&outer, &manifest["config"], MT_CONFIG)?;
    used.push(blob_path(config_bytes));
    let config: Value = serde_json::from_slice(config_bytes)?;
    ensure!(
        config["os"] == "linux" && config["architecture"] == "amd64",
        "config is not linux/amd64"
    );
    let layers = manifest["layers"]
        .as_array()
        .context("manifest has no layers")?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .context("config has no rootfs.diff_ids")?;
    ensure!(config["rootfs"]["type"] == "layers", "rootfs.type");
    ensure!(
        layers.len() == 1 && diff_ids.len() == 1,
        "{} layers, {} diff_ids: one of each expected",
        layers.len(),
        diff_ids.len()
    );
    let layer = blob(&outer, &layers[0], MT_LAYER)?;
    used.push(blob_path(layer));
    let layer_tar = gunzip(layer).context("the layer is not gzip")?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer_tar));
    ensure!(
        diff_ids[0] == diff_id.as_str(),
        "diff_id {} but the uncompressed layer is {diff_id}",
        diff_ids[0]
    );
    let entrypoint: Vec<String> = config["config"]["Entrypoint"]
        .as_array()
        .context("config has no Entrypoint")?
        .iter()
        .map(|v| v.as_str().map(String::from).context("Entrypoint item"))
        .collect::<Result<_>>()?;
    ensure!(!entrypoint.is_empty(), "empty Entrypoint");
    let files = untar(&layer_tar)?;
    let entry_path = entrypoint[0].trim_start_matches('/');
    match files.get(entry_path) {
        Some(Entry {
            mode,
            content: Content::File(_),
        }) if mode & 0o111 != 0 => {}
        _ => bail!(
            "the entrypoint {} is not an executable file in the layer",
            entrypoint[0]
        ),
    }
    let docker = json_file(&outer, "manifest.json")?;
    ensure!(
        docker
            == json!([{
                "Config": blob_path(config_bytes),
                "RepoTags": [reference],
                "Layers": [blob_path(layer)],
            }]),
        "manifest.json does not name the same config, layer and tag: {docker}"
    );
    for path in outer.keys().filter(|p| p.starts_with("blobs/sha256/")) {
        ensure!(used.contains(path), "stray blob {path}");
    }
    Ok(Verified {
        reference,
        entrypoint,
        files,
        manifest_digest: desc["digest"].as_str().unwrap_or_default().to_string(),
        layer_size: layer.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(data: &str) -> Entry {
        Entry {
            mode: 0o755,
            content: Content::File(data.as_bytes().to_vec()),
        }
    }

    fn spec() -> ImageSpec {
        let mut files = BTreeMap::new();
        files.insert("usr/local/bin/ferroplane-agent".into(), exe("agent"));
        files.insert("usr/local/bin/ferroctl".into(), exe("ctl"));
        files.insert("usr/local/bin/ferroplane-cni".into(), exe("cni"));
        files.insert("bin/busybox".into(), exe("bb"));
        files.insert(
            "bin/sh".into(),
            Entry {
                mode: 0o777,
                content: Content::Symlink("busybox".into()),
            },
        );
        ImageSpec {
            reference: "example.test/ferroplane/ferroplane:1.2.3".into(),
            entrypoint: vec!["/usr/local/bin/ferroplane-agent".into()],
            env: vec!["PATH=/usr/local/bin:/bin".into()],
            labels: [("org.opencontainers.image.version".into(), "1.2.3".into())].into(),
            files,
        }
    }

    /// Replaces blob `old` by `new` in the outer tar's files and returns new's descriptor
    /// digest.
    fn swap_blob(outer: &mut BTreeMap<String, Entry>, old: &str, new: Vec<u8>) -> String {
        outer.remove(old).unwrap();
        let digest = format!("sha256:{}", sha256_hex(&new));
        outer.insert(blob_path(&new), file(new));
        digest
    }

    fn content(outer: &BTreeMap<String, Entry>, path: &str) -> Vec<u8> {
        match &outer[path].content {
            Content::File(d) => d.clone(),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn layout_digests_and_files() {
        let ar = build(&spec()).unwrap();
        let v = verify(&ar).unwrap();
        assert_eq!(v.reference, "example.test/ferroplane/ferroplane:1.2.3");
        assert_eq!(v.entrypoint, ["/usr/local/bin/ferroplane-agent"]);
        // Parents are there, as directories, before their children; modes kept.
        let paths: Vec<&str> = v.files.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "usr",
                "usr/local",
                "usr/local/bin",
                "usr/local/bin/ferroctl",
                "usr/local/bin/ferroplane-agent",
                "usr/local/bin/ferroplane-cni",
            ]
        );
        assert_eq!(v.files["usr/local"].content, Content::Dir);
        assert_eq!(v.files["usr/local/bin/ferroctl"], exe("ctl"));
        assert_eq!(
            v.files["bin/sh"].content,
            Content::Symlink("busybox".into())
        );
        // The outer layout.
        let outer = untar(&ar).unwrap();
        let names: Vec<&str> = outer
            .keys()
            .map(String::as_str)
            .filter(|p| !p.starts_with("blobs/sha256/"))
            .collect();
        assert_eq!(
            names,
            [
                "blobs",
                "blobs/sha256",
                "index.json",
                "manifest.json",
                "oci-layout"
            ]
        );
        assert_eq!(
            outer
                .keys()
                .filter(|p| p.starts_with("blobs/sha256/"))
                .count(),
            3
        );
        // Every entry, inner and outer, has the fixed mtime.
        for data in [
            ar.clone(),
            gunzip(&content(&outer, &blob_path_of_layer(&outer))).unwrap(),
        ] {
            let mut a = tar::Archive::new(data.as_slice());
            for e in a.entries().unwrap() {
                assert_eq!(e.unwrap().header().mtime().unwrap(), MTIME);
            }
        }
    }

    fn blob_path_of_layer(outer: &BTreeMap<String, Entry>) -> String {
        let index: Value = serde_json::from_slice(&content(outer, "index.json")).unwrap();
        let m = index["manifests"][0]["digest"].as_str().unwrap();
        let manifest: Value =
            serde_json::from_slice(&content(outer, &format!("blobs/sha256/{}", &m[7..]))).unwrap();
        let l = manifest["layers"][0]["digest"].as_str().unwrap();
        format!("blobs/sha256/{}", &l[7..])
    }

    #[test]
    fn same_inputs_same_bytes() {
        let a = build(&spec()).unwrap();
        let b = build(&spec()).unwrap();
        assert_eq!(sha256_hex(&a), sha256_hex(&b));
        let mut other = spec();
        other
            .files
            .insert("usr/local/bin/ferroctl".into(), exe("ctl2"));
        assert_ne!(sha256_hex(&a), sha256_hex(&build(&other).unwrap()));
    }

    #[test]
    fn verify_rejects_corruption() {
        let ar = build(&spec()).unwrap();
        let outer = untar(&ar).unwrap();
        let layer_path = blob_path_of_layer(&outer);

        // A flipped byte in the layer blob: its digest no longer matches.
        let mut bad = outer.clone();
        let mut layer = content(&bad, &layer_path);
        let n = layer.len() / 2;
        layer[n] ^= 0xff;
        bad.insert(layer_path.clone(), file(layer));
        let err = format!("{:#}", verify(&tar_of(&bad).unwrap()).unwrap_err());
        assert!(err.contains("hashes to"), "{err}");

        // A config whose diff_id is not the uncompressed layer's, with every digest above it
        // recomputed: only the diff_id check can catch it.
        let mut bad = outer.clone();
        let index: Value = serde_json::from_slice(&content(&bad, "index.json")).unwrap();
        let mpath = format!(
            "blobs/sha256/{}",
            &index["manifests"][0]["digest"].as_str().unwrap()[7..]
        );
        let mut manifest: Value = serde_json::from_slice(&content(&bad, &mpath)).unwrap();
        let cpath = format!(
            "blobs/sha256/{}",
            &manifest["config"]["digest"].as_str().unwrap()[7..]
        );
        let mut config: Value = serde_json::from_slice(&content(&bad, &cpath)).unwrap();
        config["rootfs"]["diff_ids"][0] = json!(format!("sha256:{}", sha256_hex(b"other")));
        let cbytes = serde_json::to_vec(&config).unwrap();
        manifest["config"]["size"] = json!(cbytes.len());
        manifest["config"]["digest"] = json!(swap_blob(&mut bad, &cpath, cbytes.clone()));
        let mbytes = serde_json::to_vec(&manifest).unwrap();
        let mut index = index;
        index["manifests"][0]["size"] = json!(mbytes.len());
        index["manifests"][0]["digest"] = json!(swap_blob(&mut bad, &mpath, mbytes));
        bad.insert(
            "index.json".into(),
            file(serde_json::to_vec(&index).unwrap()),
        );
        let mut docker: Value = serde_json::from_slice(&content(&bad, "manifest.json")).unwrap();
        docker[0]["Config"] = json!(blob_path(&cbytes));
        bad.insert(
            "manifest.json".into(),
            file(serde_json::to_vec(&docker).unwrap()),
        );
        let err = format!("{:#}", verify(&tar_of(&bad).unwrap()).unwrap_err());
        assert!(err.contains("diff_id"), "{err}");

        // A stray blob.
        let mut bad = outer.clone();
        bad.insert(blob_path(b"stray"), file(b"stray".to_vec()));
        let err = format!("{:#}", verify(&tar_of(&bad).unwrap()).unwrap_err());
        assert!(err.contains("stray"), "{err}");

        // An entrypoint that is not in the layer.
        let mut s = spec();
        s.entrypoint = vec!["/usr/local/bin/nothing".into()];
        let err = format!("{:#}", verify(&build(&s).unwrap()).unwrap_err());
        assert!(err.contains("entrypoint"), "{err}");
    }
}
