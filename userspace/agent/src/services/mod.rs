//! What the spec's services become at run time: the engine's service table and NAT
//! settings (changed only where their inputs change), the XDP steering entries, the
//! health-check node ports, and the API's `show services` and
//! `show sessions`. The Service and EndpointSlice shapes, their defaults, validation and
//! captures are the spec's ([`crate::spec::services`], re-exported here).

mod cache;
#[cfg(test)]
mod cache_tests;
mod health;
mod report;
mod steering;
mod tables;
#[cfg(test)]
mod tests;

pub use cache::*;
pub use health::*;
pub use report::*;
pub use steering::*;
pub use tables::*;

pub use crate::spec::services::*;
