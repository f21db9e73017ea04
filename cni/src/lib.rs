//! ferroplane's CNI plugin (spec 1.1.0) as a library: the result and error types, the
//! protocol spoken with the agent's CNI socket, and [`plugin::run`], which is what the
//! `ferroplane-cni` binary does with one invocation.
//!
//! The plugin is thin: it validates `CNI_*` and the network configuration, forwards the
//! request to the agent over a unix socket with a timeout, and prints the agent's answer as
//! the spec's result or error JSON. When the agent is not reachable it answers code 11
//! (try again later), or 50 for STATUS.
#![deny(missing_docs)]

pub mod error;
pub mod netns;
pub mod plugin;
pub mod proto;
pub mod types;

pub use error::{code, CniError};
pub use proto::{
    AgentRequest, AgentResponse, Attachment, Command, PortMapping, DEFAULT_CNI_SOCKET,
};
pub use types::{CniResult, Dns, Interface, IpConfig, Route, CNI_VERSION, SUPPORTED_VERSIONS};
