//! The `cluster:` part of the spec moved to [`crate::spec::cluster`] (remote nodes, overlay
//! modes, WireGuard keys and the state directory). Re-exported so the paths in use keep
//! working.

pub use crate::spec::cluster::*;
