//! Dataplane tables read by the engine's workers.
//!
//! Tables are immutable snapshots: the control plane builds a new one with a
//! builder and publishes it (the engine swaps an `Arc`), so a worker never
//! blocks and never sees a half-applied change.

#![deny(missing_docs)]

pub mod conntrack;
pub mod fib;
mod fib_update;
pub mod hash;
pub mod maglev;
pub mod nat;
pub mod policy;
pub mod prefix;
pub mod service;

pub use conntrack::{Conntrack, CtError, CtState, Dir, FlowKey, NatKind, Session, Timeouts};
pub use fib::{
    AdjKind, Adjacency, Fib, FibBuilder, FibError, Mac, Path, RouteAction, RouteEntry, RouteSource,
};
pub use maglev::{Maglev, MaglevBackend, MaglevError, DEFAULT_TABLE_SIZE};
pub use nat::NatConfig;
pub use prefix::{Ipv4Prefix, PrefixError};
pub use service::{
    Backend, EndpointState, FrontendKey, FrontendKind, ServiceError, ServicePort, ServicePortDef,
    ServiceTable,
};
