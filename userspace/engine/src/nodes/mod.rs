//! The nodes of the standard graph ([`standard_graph`]), and its arcs.
//!
//! ```text
//!   AF_XDP RX rings (uplink queues, pod veths), punt TUN read side (the node's own
//!   traffic to services, behind a synthetic Ethernet header)
//!      │
//!      v
//!   ethernet-input ──────> arp-input ─────────────────────────────────────┐
//!      │                                                                  │
//!      v                                                                  │
//!   ip4-input ─────────> ip4-frag                                         │
//!      ╎    │               │                                             │
//!      ╎    v               │                                             │
//!      ╎   ip4-nat <────────┘                                             │
//!      ╎    │    └────────────────────────> ip4-icmp-error                │
//!      ╎    v                                 │      ^                    │
//!      ╎   ip4-policy                         │      │                    │
//!      ╎    │                                 │      │                    │
//!      v    v                                 │      │                    │
//!   ip4-lookup <──────────────────────────────┘      │                    │
//!      │    │    │                                   │                    │
//!      │    │    └──> tunnel-decap ──> ip4-input (the inner packet)       │
//!      │    │                     └──> ip4-lookup (a WireGuard handshake  │
//!      │    │                          response or cookie, to the peer)   │
//!      │    └──> host-punt ──> punt TUN write side                        │
//!      v                                             │                    │
//!   ip4-rewrite ─────────────────────────────────────┘                    │
//!      │          (TTL exceeded, fragmentation needed)                    │
//!      v                                                                  │
//!   interface-output <────────────────────────────────────────────────────┘
//!      │    ^    └──> AF_XDP TX rings
//!      v    │
//!   tunnel-encap   (output on a tunnel interface; the outer packet leaves on the uplink)
//!
//!   ╎ declared, not taken today (ip4-input sends every packet to ip4-nat or ip4-frag)
//!   every node except host-punt and error-drop ──> error-drop (the frame goes back to
//!   the pool, counted under the node's reason)
//! ```
//!
//! Arcs, as each node declares them (arc 0 is always `error-drop`):
//!
//! | node | next arcs |
//! |---|---|
//! | `ethernet-input` | `arp-input`, `ip4-input` |
//! | `arp-input` | `interface-output` (replies) |
//! | `ip4-input` | `ip4-lookup` (not taken today), `ip4-nat`, `ip4-frag` (fragments) |
//! | `ip4-frag` | `ip4-nat` (fragments with their first fragment's ports) |
//! | `ip4-nat` | `ip4-policy`, `ip4-icmp-error` (port unreachable for a service without endpoints) |
//! | `ip4-policy` | `ip4-lookup` |
//! | `ip4-lookup` | `ip4-rewrite`, `host-punt`, `tunnel-decap` |
//! | `ip4-rewrite` | `interface-output`, `ip4-icmp-error` |
//! | `ip4-icmp-error` | `ip4-lookup` (the error is routed back to the sender) |
//! | `tunnel-decap` | `ip4-input` (the inner packet), `ip4-lookup` (a WireGuard handshake response or cookie) |
//! | `tunnel-encap` | `interface-output` (the outer packet, on the uplink) |
//! | `interface-output` | `tunnel-encap` (output on a tunnel interface); otherwise the TX rings |
//! | `host-punt` | none: the punt TUN |
//! | `error-drop` | none: the frame goes back to the pool |
//!
//! A test checks this table against the nodes' declarations (names between backquotes).

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

#[cfg(test)]
mod graph_doc_tests {
    use ferroplane_io::MemFrames;

    /// The arcs table of this module's documentation, as (node, next arcs).
    fn documented() -> Vec<(String, Vec<String>)> {
        let quoted = |s: &str| -> Vec<String> {
            s.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        include_str!("mod.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `"))
            .filter_map(|row| {
                let mut cols = row.split(" | ");
                let node = cols.next()?.trim_end_matches('`').to_string();
                Some((node, quoted(cols.next()?)))
            })
            .collect()
    }

    #[test]
    fn the_documented_arcs_are_the_declared_ones() {
        let graph = super::standard_graph::<MemFrames>().unwrap();
        let info = graph.info();
        let doc = documented();
        let names: Vec<&str> = info.nodes.iter().map(|n| n.name).collect();
        let mut doc_names: Vec<&str> = doc.iter().map(|(n, _)| n.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        doc_names.sort_unstable();
        assert_eq!(doc_names, sorted, "every node of the graph has a row");
        for (node, arcs) in &doc {
            let declared = info.nodes.iter().find(|n| n.name == node).unwrap().nexts;
            let declared: Vec<&str> = declared.iter().skip(1).copied().collect();
            assert_eq!(arcs, &declared, "{node}: arcs after error-drop");
        }
    }
}
