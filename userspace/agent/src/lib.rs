//! ferroplane node agent library: configuration, pod plumbing, the engine
//! thread, the tables computed from the node's state, and the local API.
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod engine;
pub mod netlink;
pub mod state;
