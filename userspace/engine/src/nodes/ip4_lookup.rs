use ferroplane_io::{BufIdx, FrameMemory};
use ferroplane_tables::AdjKind;

use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::TraceData;
use crate::{node_errors, node_nexts};

use super::ip_at;

node_nexts! {
    /// Next arcs of `ip4-lookup`.
    pub enum LookupNext { Drop = "error-drop", Rewrite = "ip4-rewrite", Punt = "host-punt", Decap = "tunnel-decap" }
}

node_errors! {
    /// Error reasons of `ip4-lookup`.
    pub enum LookupError {
        NoRoute = (Error, "no-route", "no route to the destination"),
        NeighbourMiss = (Error, "neighbour-miss", "next hop MAC unknown; resolution requested"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "ip4-lookup",
    nexts: LookupNext::NAMES,
    errors: LookupError::INFO,
};

/// Longest-prefix match in the FIB; picks one path of an ECMP group by flow hash.
#[derive(Debug, Default)]
pub struct Ip4Lookup;

/// A symmetric-enough 5-tuple hash for ECMP (same flow, same path); fragments hash on
/// their addresses and protocol.
#[inline(always)]
pub(crate) fn flow_hash(l3: &[u8]) -> u32 {
    let word = |at: usize| -> u32 {
        l3.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
            .unwrap_or(0)
    };
    let hl = l3.first().map(|v| ((v & 0x0f) as usize) * 4).unwrap_or(20);
    let proto = l3.get(9).copied().unwrap_or(0) as u32;
    // Fragments hash on addresses only: the non-first ones carry no ports, and every
    // fragment of a datagram must take the same path.
    let fragment = l3.get(6..8).is_some_and(|f| (f[0] & 0x3f) | f[1] != 0);
    let ports = if (proto == 6 || proto == 17) && !fragment {
        word(hl)
    } else {
        0
    };
    let mut h = word(12) ^ word(16).rotate_left(13) ^ ports.rotate_left(7) ^ proto;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

impl<M: FrameMemory> Node<M> for Ip4Lookup {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let fib = cx.snap.fib.clone();
        let tunnels = cx.snap.tunnels.clone();
        for (i, &b) in bufs.iter().enumerate() {
            let pkt = cx.packet(b);
            let l3 = pkt.get(14..).unwrap_or(&[]);
            let dst = ip_at(l3, 16);
            let adj_idx = fib.resolve(dst, || flow_hash(l3));
            let adj = fib.adj(adj_idx);
            let decap = adj.kind == AdjKind::Local && tunnels.wants(l3);
            cx.meta_mut(b).adj = adj_idx;
            if cx.traced(b) {
                let lb = fib.lookup(dst);
                let prefix = fib
                    .route_of(lb)
                    .map(|r| r.prefix)
                    .unwrap_or(ferroplane_tables::Ipv4Prefix::DEFAULT);
                cx.trace(
                    b,
                    TraceData::Lookup {
                        prefix,
                        adj: adj_idx,
                        kind: adj.kind,
                        sw_if: adj.sw_if,
                    },
                );
            }
            nexts[i] = match adj.kind {
                AdjKind::Rewrite => LookupNext::Rewrite.into(),
                AdjKind::Local if decap => LookupNext::Decap.into(),
                AdjKind::Local => LookupNext::Punt.into(),
                AdjKind::Drop => cx.drop_with(b, LookupError::NoRoute),
                AdjKind::Incomplete => {
                    cx.out.misses.push((adj.sw_if, adj.next_hop.unwrap_or(dst)));
                    cx.drop_with(b, LookupError::NeighbourMiss)
                }
            };
        }
    }
}
