//! Dataplane tables read by the engine's workers.
//!
//! Tables are immutable snapshots: the control plane builds a new one with a
//! builder and publishes it (the engine swaps an `Arc`), so a worker never
//! blocks and never sees a half-applied change.

#![deny(missing_docs)]

pub mod fib;
pub mod prefix;

pub use fib::{
    AdjKind, Adjacency, Fib, FibBuilder, FibError, Mac, Path, RouteAction, RouteEntry, RouteSource,
};
pub use prefix::{Ipv4Prefix, PrefixError};
