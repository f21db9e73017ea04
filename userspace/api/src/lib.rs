//! ferroplane-api: the versioned local API between the ferroplane agent and
//! `ferroctl`.
//!
//! # Protocol
//!
//! A unix stream socket (default [`DEFAULT_SOCKET`], mode 0600) carrying
//! line-delimited JSON. The client writes one [`RequestEnvelope`] per line and
//! reads one [`Response`] per line; a connection may carry any number of
//! request/response pairs, strictly in turn.
//!
//! ```text
//! -> {"api_version":1,"request":{"kind":"show_interfaces"}}
//! <- {"api_version":1,"ok":true,"data":[{"name":"up0", ...}]}
//! -> {"api_version":2,"request":{"kind":"version"}}
//! <- {"api_version":1,"ok":false,"error":"unsupported api_version 2: this agent speaks api_version 1"}
//! ```
//!
//! Field names are snake_case and stable within an [`API_VERSION`]; any change
//! that an older peer could misread bumps the version. The payload of `data`
//! depends on the request kind (see [`Request`]).
//!
//! # Parts
//!
//! - [`Request`], [`RequestEnvelope`], [`Response`]: the envelope.
//! - [`InterfaceInfo`], [`RouteInfo`], [`CountersReport`], [`ErrorCounter`],
//!   [`XdpReport`], [`VersionInfo`]: the data types.
//! - [`ApiServer`] + [`Handler`]: the blocking server the agent runs.
//! - [`Client`]: the blocking client `ferroctl` uses.

#![deny(missing_docs)]

mod bgp;
mod buffers;
mod client;
mod error;
mod hostports;
mod neighbors;
mod overlay;
mod policy;
mod server;
mod services;
mod types;

pub use bgp::{BgpPath, BgpPeer, BgpReport, BgpRoute};
pub use buffers::{BuffersReport, PortBuffers};
pub use client::{Client, DEFAULT_TIMEOUT};
pub use error::{ApiError, Result};
pub use hostports::HostPortInfo;
pub use neighbors::NeighborInfo;
pub use overlay::{TunnelPeer, TunnelsReport};
pub use policy::{AclInfo, AclRuleInfo, PodPolicyInfo, PoliciesReport};
pub use server::{ApiServer, Handler, Limits, MAX_CONNECTIONS, MAX_LINE_LEN};
pub use services::{BackendInfo, ServiceInfo, SessionFilter, SessionInfo, SessionsReport};
pub use types::{CaptureReport, CapturedPacket, TracePacket, TraceStep};
pub use types::{
    CountersReport, ErrorCounter, InterfaceInfo, InterfaceKind, InterfaceState, NamedCount,
    NodeCounters, QueueInfo, Request, RequestEnvelope, Response, RouteInfo, RoutePath, RouteSource,
    Severity, VersionInfo, WorkerInfo, XdpReport,
};

/// Version of the wire protocol spoken by this crate.
///
/// Both sides put it in every message; the agent refuses requests carrying
/// another value and the client refuses responses carrying another value.
pub const API_VERSION: u32 = 1;

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ferroplane/api.sock";
