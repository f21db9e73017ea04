//! Re-reading the standalone spec file's services when it changes.

use crate::spec::{ConfigError, NodeSpec};

/// Watches the standalone spec file: a changed file is re-read and its services,
/// endpoint slices and service proxy settings applied (the rest needs a restart).
#[derive(Debug)]
pub struct SpecWatch {
    path: std::path::PathBuf,
    seen: Option<std::time::SystemTime>,
}

impl SpecWatch {
    /// Watch `path`.
    pub fn new(path: &std::path::Path) -> Self {
        let seen = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        SpecWatch {
            path: path.to_path_buf(),
            seen,
        }
    }

    /// If the file changed since the last call: the new spec (or why it was rejected).
    pub fn poll(&mut self) -> Option<Result<NodeSpec, ConfigError>> {
        let m = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if m.is_none() || m == self.seen {
            return None;
        }
        self.seen = m;
        Some(NodeSpec::load(&self.path))
    }
}

/// Copy the service parts of `from` into `into`; true when something changed.
pub fn take_services(into: &mut NodeSpec, from: NodeSpec) -> bool {
    let changed = into.services != from.services
        || into.endpoint_slices != from.endpoint_slices
        || into.service_proxy != from.service_proxy;
    into.services = from.services;
    into.endpoint_slices = from.endpoint_slices;
    into.service_proxy = from.service_proxy;
    changed
}
