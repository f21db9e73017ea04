//! Test support shared by ferroplane's crates (a dev-dependency; never shipped).
//!
//! - Honest skips: [`require_root`], [`require_tool`] and [`skip`]. A test that cannot run
//!   writes `SKIPPED: <test>: <reason>` to stderr and returns; `cargo xtask test` counts it
//!   as skipped, not passed. With `CI=true` it fails instead.
//! - A time limit per test ([`watchdog`]), armed by [`require_root`]: a hung test ends its
//!   test process with `TIMEOUT: <test>: ...` instead of eating the CI budget.
//! - [`Netns`]: a network namespace guard named `fp<pid>-<n>-<role>` (the scheme every test
//!   namespace uses), deleted on drop.
//! - [`fuzz`]: runs a fuzz target's body on stable over seeds and deterministic mutations.
//!
//! ```no_run
//! # fn a_test() {
//! if !ferroplane_testkit::require_root() {
//!     return;
//! }
//! let ns = ferroplane_testkit::Netns::new("node");
//! ns.ip(&["link", "add", "d0", "type", "dummy"]);
//! # }
//! ```
#![deny(missing_docs)]

pub mod fuzz;
pub mod netns;
mod skip;
pub mod watchdog;

pub use netns::{enter_netns, Netns};
pub use skip::{
    current_test, in_ci, is_root, parse_skip_line, require_root, require_tool, skip, skip_line,
    skip_to, tool_exists, SKIP_MARKER,
};
