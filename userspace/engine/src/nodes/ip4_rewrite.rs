use ferroplane_io::{BufIdx, FrameMemory};
use ferroplane_wire::Ipv4Packet;

use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::TraceData;
use crate::{node_errors, node_nexts};

use super::be16;

node_nexts! {
    /// Next arcs of `ip4-rewrite`.
    pub enum RewriteNext { Drop = "error-drop", Output = "interface-output", IcmpError = "ip4-icmp-error" }
}

node_errors! {
    /// Error reasons of `ip4-rewrite`.
    pub enum RewriteError {
        TtlExpired = (Error, "ttl-expired", "TTL expired in transit (ICMP time-exceeded sent)"),
        MtuExceeded = (Error, "mtu-exceeded", "larger than the outgoing MTU with DF set (ICMP fragmentation-needed sent)"),
        MtuNoFrag = (Error, "mtu-exceeded-no-frag", "larger than the outgoing MTU; the engine does not fragment"),
        Malformed = (Error, "malformed", "no IPv4 header where one was expected"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "ip4-rewrite",
    nexts: RewriteNext::NAMES,
    errors: RewriteError::INFO,
};

/// Decrements TTL (incremental checksum), checks the MTU and writes the next hop's Ethernet header.
#[derive(Debug, Default)]
pub struct Ip4Rewrite;

impl<M: FrameMemory> Node<M> for Ip4Rewrite {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let fib = cx.snap.fib.clone();
        for (i, &b) in bufs.iter().enumerate() {
            let adj = *fib.adj(cx.meta(b).adj);
            let pkt = cx.packet(b);
            let Some(l3) = pkt.get_mut(14..).filter(|l| l.len() >= 20) else {
                nexts[i] = cx.drop_with(b, RewriteError::Malformed);
                continue;
            };
            let ttl = l3.get(8).copied().unwrap_or(0);
            let total = be16(l3, 2);
            let df = l3.get(6).map(|f| f & 0x40 != 0).unwrap_or(false);
            if ttl <= 1 {
                let m = cx.meta_mut(b);
                m.icmp_type = 11;
                m.icmp_code = 0;
                m.icmp_mtu = 0;
                cx.count(RewriteError::TtlExpired, 1);
                nexts[i] = RewriteNext::IcmpError.into();
                continue;
            }
            if adj.mtu != 0 && total > adj.mtu {
                if df {
                    let m = cx.meta_mut(b);
                    m.icmp_type = 3;
                    m.icmp_code = 4;
                    m.icmp_mtu = adj.mtu;
                    cx.count(RewriteError::MtuExceeded, 1);
                    nexts[i] = RewriteNext::IcmpError.into();
                } else {
                    nexts[i] = cx.drop_with(b, RewriteError::MtuNoFrag);
                }
                continue;
            }
            if let Ok(mut ip) = Ipv4Packet::new_checked(&mut *l3) {
                ip.decrement_ttl();
            }
            let pkt = cx.packet(b);
            pkt[0..6].copy_from_slice(&adj.dst_mac);
            pkt[6..12].copy_from_slice(&adj.src_mac);
            let m = cx.meta_mut(b);
            m.tx_if = adj.sw_if;
            m.flags |= crate::buffer::FLAG_ROUTED;
            if cx.traced(b) {
                cx.trace(
                    b,
                    TraceData::Rewrite {
                        sw_if: adj.sw_if,
                        dst_mac: adj.dst_mac,
                        ttl: ttl - 1,
                    },
                );
            }
            nexts[i] = RewriteNext::Output.into();
        }
    }
}
