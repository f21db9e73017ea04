//! The ferroplane vector engine.
//!
//! Packets move through a graph of nodes in *vectors* of up to
//! [`VECTOR_SIZE`] buffer indices, VPP-style: a node receives a vector,
//! decides every packet's next arc into a `nexts` array, and the graph
//! enqueues each packet to the node behind that arc. Nodes declare their
//! name, their next arcs and their error reasons (with descriptions); the
//! graph keeps per-node counters (calls, vectors, packets, time) and
//! per-reason error counters, and records trace entries for packets flagged
//! for tracing.
//!
//! Tables ([`Snapshot`]: FIB, interfaces) are published by the control plane
//! through an [`arc_swap::ArcSwap`]; a worker loads the current snapshot once
//! per vector and never blocks.

#![deny(missing_docs)]

pub mod buffer;
pub mod counters;
pub mod filter;
pub mod flow_export;
pub mod graph;
pub mod handoff;
pub mod interfaces;
pub mod node;
pub mod nodes;
pub mod snapshot;
pub mod testutil;
pub mod testutil_services;
pub mod trace;
pub mod tunnel;
pub mod worker;

pub use buffer::BufMeta;
pub use counters::{Counter, WorkerStats};
pub use graph::Graph;
pub use interfaces::{IfKind, Interface, Interfaces, PodInfo};
pub use node::{Ctx, ErrorInfo, Node, NodeInfo, Severity};
pub use snapshot::{Shared, Snapshot};
pub use trace::{TraceData, TraceRecord};
pub use worker::{Worker, WorkerControl};

/// The largest number of packets a node processes in one call.
pub const VECTOR_SIZE: usize = 256;

/// The gateway address every pod routes through; the engine answers ARP for it.
pub const POD_GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 1);
