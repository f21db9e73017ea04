//! The nodes of the foundation graph.
//!
//! ```text
//! ethernet-input ─┬─> arp-input ──────────────────────────────┐
//!                 └─> ip4-input ─> ip4-lookup ─┬─> ip4-rewrite ┼─> interface-output
//!                                    ▲         │        │      │
//!                                    │         │        v      │
//!                                    └── ip4-icmp-error <┘     │
//!                                              └─> host-punt   │
//!                         (every node) ─> error-drop <─────────┘
//! ```

mod arp;
mod drop;
mod ethernet;
mod icmp_error;
mod ip4_frag;
mod ip4_input;
mod ip4_lookup;
mod ip4_rewrite;
mod nat;
mod output;
mod policy;
mod punt;
mod tunnel_decap;
mod tunnel_encap;
#[cfg(test)]
mod tunnel_tests;

pub use arp::{ArpError, ArpInput, ArpNext};
pub use drop::ErrorDrop;
pub use ethernet::{EthError, EthNext, EthernetInput};
pub use icmp_error::{IcmpError, IcmpErrorNode, IcmpNext};
pub use ip4_frag::{FragError, FragLimits, FragNext, Ip4Frag};
pub use ip4_input::{Ip4Input, Ip4InputError, Ip4InputNext};
pub use ip4_lookup::{Ip4Lookup, LookupError, LookupNext};
pub use ip4_rewrite::{Ip4Rewrite, RewriteError, RewriteNext};
pub use nat::{Ip4Nat, NatError, NatNext, SharedSessions};
pub use output::{InterfaceOutput, OutputError};
pub use policy::{Ip4Policy, PolicyError, PolicyNext};
pub use punt::{HostPunt, PuntError};
pub use tunnel_decap::{DecapError, DecapNext, TunnelDecap};
pub use tunnel_encap::{EncapError, EncapNext, TunnelEncap};

use ferroplane_io::FrameMemory;

use crate::graph::{Graph, GraphError};
use crate::node::Node;

/// Name of the graph's entry node.
pub const ENTRY: &str = "ethernet-input";

/// The standard graph, in dispatch order.
pub fn standard_graph<M: FrameMemory + 'static>() -> Result<Graph<M>, GraphError> {
    let nodes: Vec<Box<dyn Node<M>>> = vec![
        Box::new(EthernetInput),
        Box::new(ArpInput),
        Box::new(Ip4Input),
        Box::new(Ip4Frag::default()),
        Box::new(Ip4Nat::default()),
        Box::new(Ip4Policy::default()),
        Box::new(Ip4Lookup),
        Box::new(Ip4Rewrite),
        Box::new(IcmpErrorNode),
        Box::new(HostPunt),
        Box::new(TunnelDecap::default()),
        Box::new(TunnelEncap::default()),
        Box::new(InterfaceOutput::default()),
        Box::new(ErrorDrop),
    ];
    Graph::new(nodes)
}

#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(s) => u16::from_be_bytes([s[0], s[1]]),
        None => 0,
    }
}

#[inline(always)]
pub(crate) fn ip_at(b: &[u8], at: usize) -> std::net::Ipv4Addr {
    match b.get(at..at + 4) {
        Some(s) => std::net::Ipv4Addr::new(s[0], s[1], s[2], s[3]),
        None => std::net::Ipv4Addr::UNSPECIFIED,
    }
}
