//! The standalone spec file, watched through inotify.
//!
//! The directory is watched, not the file: editors and `mv`/`ln -sf` replace a file by a
//! rename, after which a watch on the old inode would see nothing. A write that ends
//! (`IN_CLOSE_WRITE`), a file moved in (`IN_MOVED_TO`, also ConfigMap volumes' `..data`
//! swap) or a symlink created (`IN_CREATE`) re-reads the file; content identical to the
//! last read is no change. Two rewrites within the same second are two changes (mtime
//! polling, what this replaced, could miss the second).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use tokio::sync::mpsc;

use crate::config::{ConfigError, NodeSpec};

/// A new version of the spec file, or why it was rejected.
pub type SpecUpdate = Result<NodeSpec, ConfigError>;

/// Watches `path` and sends every new version of it to `tx`, parsed (off the event loop),
/// until `tx`'s receiver is dropped. `initial` is the content the agent started from.
pub fn watch(
    path: &Path,
    initial: Option<Vec<u8>>,
    tx: mpsc::Sender<SpecUpdate>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let file = path.to_path_buf();
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .map(OsStr::to_os_string)
        .unwrap_or_default();
    let inotify = Inotify::init()?;
    inotify.watches().add(
        &dir,
        WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE,
    )?;
    let mut events = inotify.into_event_stream([0u8; 4096])?;
    Ok(tokio::spawn(async move {
        let mut last = initial;
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "spec file watch: {e}; no more reloads");
                    return;
                }
            };
            let ours = ev
                .name
                .as_deref()
                .is_some_and(|n| n == name || n.to_string_lossy().starts_with("..data"));
            // A regular file being created is still empty: its IN_CLOSE_WRITE follows.
            let symlink = ev.mask.contains(EventMask::CREATE)
                && std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink());
            if !ours || (ev.mask.contains(EventMask::CREATE) && !symlink) {
                continue;
            }
            let Ok(bytes) = std::fs::read(&file) else {
                continue; // moved away: the next version comes with its own event
            };
            if last.as_ref() == Some(&bytes) {
                continue;
            }
            last = Some(bytes.clone());
            let parsed = tokio::task::spawn_blocking(move || {
                let text = String::from_utf8_lossy(&bytes);
                NodeSpec::from_yaml(&text)
            })
            .await;
            let Ok(update) = parsed else { return };
            if tx.send(update).await.is_err() {
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SPEC: &str =
        "node:\n  name: n1\n  uplink: up0\n  address: 192.168.100.2/24\n  podCIDR: 10.244.1.0/24\n";

    async fn next(rx: &mut mpsc::Receiver<SpecUpdate>) -> Option<SpecUpdate> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn rewrites_within_a_second_and_renames_are_seen() {
        let dir = std::env::temp_dir().join(format!("fp-specwatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.yaml");
        std::fs::write(&file, SPEC).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let _task = watch(&file, Some(SPEC.as_bytes().to_vec()), tx).unwrap();

        // Two rewrites back to back (same second): both seen, in order.
        let a = format!("{SPEC}routes:\n  - {{ prefix: 10.9.0.0/16, via: 192.168.100.1 }}\n");
        std::fs::write(&file, &a).unwrap();
        let got = next(&mut rx).await.expect("first rewrite").unwrap();
        assert_eq!(got.routes.len(), 1);
        let b = format!("{SPEC}routes: []\n");
        std::fs::write(&file, &b).unwrap();
        let got = next(&mut rx).await.expect("second rewrite").unwrap();
        assert!(got.routes.is_empty());

        // An editor's save: write a temporary file, rename it over the spec.
        let tmp = dir.join(".node.yaml.swp");
        std::fs::write(&tmp, &a).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let got = next(&mut rx).await.expect("rename").unwrap();
        assert_eq!(got.routes.len(), 1);

        // A broken file is reported; the same content again is no change.
        std::fs::write(&file, "node: [").unwrap();
        assert!(next(&mut rx).await.expect("broken").is_err());
        std::fs::write(&file, "node: [").unwrap();
        std::fs::write(dir.join("other.yaml"), SPEC).unwrap();
        std::fs::write(&file, &b).unwrap();
        let got = next(&mut rx).await.expect("fixed").unwrap();
        assert!(
            got.routes.is_empty(),
            "unchanged rewrite and other files skipped"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
