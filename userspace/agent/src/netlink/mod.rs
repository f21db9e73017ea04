//! Pod plumbing and link/neighbour queries over rtnetlink.
//!
//! A [`Plumber`] talks to the kernel of the network namespace it was created in (the
//! agent's). Work inside a pod's namespace uses an rtnetlink socket opened there by one
//! long-lived thread that `setns()`s in and back ([`netns_exec`]), so the agent's other
//! threads never change namespace and no thread or runtime is started per pod.
//!
//! Pod plumbing (see CONTRACTS.md): a veth pair whose host side is named
//! [`host_ifname`]`(namespace, name)`, up, without addresses, in the agent's namespace; the
//! peer is created directly inside the pod's namespace under its final name (`eth0`), with
//! `ip/32`, the MTU, up, `lo` up, `GATEWAY dev eth0 scope link` and
//! `default via GATEWAY dev eth0`. In the agent's namespace: `ip/32 dev fpXXXX scope link`
//! and a permanent neighbour `ip -> pod MAC` on the host side.

mod error;
mod links;
mod neigh;
mod netns;
mod pod;
mod spare;
mod types;

pub use error::*;
pub use netns::*;
pub use pod::*;
pub use types::*;

// Helpers the submodules share (each sees them through `use super::*`).
use error::{errno_of, Context, Result};
use links::{ipv4_addrs, link_by_index, link_by_name, nsid_of, require_link, RawLink};
use netns::open_netns;

use std::net::Ipv4Addr;

/// The pods' default gateway: answered (ARP) by the engine with the host veth's MAC.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

const ENODEV: i32 = libc::ENODEV;
const ENOENT: i32 = libc::ENOENT;
const ESRCH: i32 = libc::ESRCH;
