//! Packet trace records: small plain values taken on the fast path and
//! formatted only when shown.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ferroplane_tables::{AdjKind, Ipv4Prefix};

/// What a node recorded about a traced packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceData {
    /// Received on an interface.
    Rx {
        /// Interface.
        sw_if: u16,
        /// Frame length.
        len: u16,
    },
    /// Ethernet header.
    Ethernet {
        /// Source MAC.
        src: [u8; 6],
        /// Destination MAC.
        dst: [u8; 6],
        /// Ethertype.
        ethertype: u16,
    },
    /// ARP.
    Arp {
        /// Operation (1 request, 2 reply).
        op: u16,
        /// Sender protocol address.
        sender: Ipv4Addr,
        /// Target protocol address.
        target: Ipv4Addr,
        /// Whether the engine answered.
        replied: bool,
    },
    /// IPv4 header.
    Ip4 {
        /// Source.
        src: Ipv4Addr,
        /// Destination.
        dst: Ipv4Addr,
        /// Protocol number.
        proto: u8,
        /// TTL.
        ttl: u8,
        /// Total length.
        len: u16,
    },
    /// FIB decision.
    Lookup {
        /// Matched route.
        prefix: Ipv4Prefix,
        /// Adjacency index.
        adj: u32,
        /// Adjacency kind.
        kind: AdjKind,
        /// Outgoing interface.
        sw_if: u16,
    },
    /// Header rewrite.
    Rewrite {
        /// Outgoing interface.
        sw_if: u16,
        /// New destination MAC.
        dst_mac: [u8; 6],
        /// TTL after decrement.
        ttl: u8,
    },
    /// ICMP error generated in place of the packet.
    IcmpError {
        /// ICMP type.
        icmp_type: u8,
        /// ICMP code.
        code: u8,
    },
    /// Queued for transmission.
    Tx {
        /// Interface.
        sw_if: u16,
        /// I/O port.
        port: u16,
    },
    /// Handed to the host stack.
    Punt,
    /// Dropped with a global error code.
    Drop {
        /// Global error code (see the graph's error table).
        error: u16,
    },
}

/// One trace record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// Packet trace id (records of one packet share it).
    pub id: u32,
    /// Node index in the graph.
    pub node: u16,
    /// What was recorded.
    pub data: TraceData,
}

/// A worker's trace records, bounded.
#[derive(Debug, Default)]
pub struct TraceBuffer {
    /// Records taken since the last drain.
    pub records: Vec<TraceRecord>,
}

impl TraceBuffer {
    /// Most records kept between drains.
    pub const CAPACITY: usize = 65536;

    /// Record.
    pub fn push(&mut self, id: u32, node: u16, data: TraceData) {
        if self.records.len() < Self::CAPACITY {
            self.records.push(TraceRecord { id, node, data });
        }
    }
}

fn mac(m: &[u8; 6]) -> String {
    let mut s = String::with_capacity(17);
    for (i, b) in m.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl TraceData {
    /// Human text; `error_name` maps a global error code to "node: reason".
    pub fn describe(&self, error_name: &dyn Fn(u16) -> String) -> String {
        match self {
            TraceData::Rx { sw_if, len } => format!("rx sw_if {sw_if} len {len}"),
            TraceData::Ethernet {
                src,
                dst,
                ethertype,
            } => format!("{} -> {} type 0x{ethertype:04x}", mac(src), mac(dst)),
            TraceData::Arp {
                op,
                sender,
                target,
                replied,
            } => format!(
                "arp {} who-has {target} tell {sender}{}",
                if *op == 1 { "request" } else { "reply" },
                if *replied { ": replied" } else { "" }
            ),
            TraceData::Ip4 {
                src,
                dst,
                proto,
                ttl,
                len,
            } => format!("{src} -> {dst} proto {proto} ttl {ttl} len {len}"),
            TraceData::Lookup {
                prefix,
                adj,
                kind,
                sw_if,
            } => format!("route {prefix} adj {adj} {kind:?} sw_if {sw_if}"),
            TraceData::Rewrite {
                sw_if,
                dst_mac,
                ttl,
            } => format!("rewrite to {} on sw_if {sw_if} ttl {ttl}", mac(dst_mac)),
            TraceData::IcmpError { icmp_type, code } => {
                format!("icmp error type {icmp_type} code {code}")
            }
            TraceData::Tx { sw_if, port } => format!("tx sw_if {sw_if} port {port}"),
            TraceData::Punt => "punt to host".to_string(),
            TraceData::Drop { error } => format!("drop: {}", error_name(*error)),
        }
    }
}
