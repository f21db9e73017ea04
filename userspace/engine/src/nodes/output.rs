use std::net::Ipv4Addr;
use std::time::Instant;

use ferroplane_io::{BufIdx, Desc, FrameMemory};

use crate::buffer::{FLAG_NAT, FLAG_NO_CACHE, FLAG_ROUTED};
use crate::flow_export::{cacheable_tuple, FlowExport, Seen};
use crate::{IfKind, Interface};

use crate::node::{Ctx, Node, NodeInfo, CONSUMED};
use crate::node_errors;
use crate::trace::TraceData;

node_errors! {
    /// Error reasons of `interface-output`.
    pub enum OutputError {
        NoPort = (Error, "no-port", "output interface has no I/O port (yet)"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "interface-output",
    nexts: &["error-drop", "tunnel-encap"],
    errors: OutputError::INFO,
};

/// Queues packets on their output interface's transmit ring, and reports the flows the
/// XDP flow cache can replay ([`crate::flow_export`]) when the export is on.
#[derive(Debug, Default)]
pub struct InterfaceOutput {
    seen: Seen,
    epoch: Option<Instant>,
}

impl InterfaceOutput {
    /// Reports the flow of the routed packet `b` leaving on `out` (a pod veth or the uplink)
    /// if it came in through XDP (a pod veth or the uplink), with the tuple it arrived with
    /// when `ip4-nat` translated it: an established flow for the cache, or a TCP FIN/RST as a
    /// close ([`crate::flow_export`]).
    fn export<M: FrameMemory>(
        &mut self,
        cx: &mut Ctx<'_, M>,
        b: BufIdx,
        out: &Interface,
        now_s: u32,
    ) {
        let m = cx.meta(b);
        if m.flags & FLAG_ROUTED == 0 || !matches!(out.kind, IfKind::Pod | IfKind::Uplink) {
            return;
        }
        let Some(rx) = cx
            .snap
            .ifaces
            .get(m.rx_if)
            .filter(|f| matches!(f.kind, IfKind::Pod | IfKind::Uplink))
        else {
            return;
        };
        let in_ifindex = rx.ifindex;
        let (start, end) = (m.offset as usize, m.offset as usize + m.len as usize);
        let Some(pkt) = cx.mem.frame(b).get(start..end) else {
            return;
        };
        let Some((src, dst, sport, dport, proto)) = pkt.get(14..).and_then(cacheable_tuple) else {
            return;
        };
        // TCP flags (FIN 1, SYN 2, RST 4, ACK 16): cacheable_tuple checked the header length.
        let tcp_flags = if proto == 6 {
            let hl = usize::from(pkt[14] & 0x0f) * 4;
            pkt.get(14 + hl + 13).copied().unwrap_or(0)
        } else {
            0
        };
        let mut dst_mac = [0u8; 6];
        let mut src_mac = [0u8; 6];
        dst_mac.copy_from_slice(&pkt[0..6]);
        src_mac.copy_from_slice(&pkt[6..12]);
        let (key, nat) = if m.flags & FLAG_NAT != 0 {
            let (s, d, sp, dp) = m.pre_nat;
            (
                (Ipv4Addr::from(s), Ipv4Addr::from(d), sp, dp),
                Some((src, dst, sport, dport)),
            )
        } else {
            ((src, dst, sport, dport), None)
        };
        let mut flow = FlowExport {
            src: key.0,
            dst: key.1,
            sport: key.2,
            dport: key.3,
            proto,
            nat,
            ifindex: out.ifindex,
            in_ifindex,
            dst_mac,
            src_mac,
            mtu: out.mtu,
            close: false,
        };
        if tcp_flags & 0x05 != 0 {
            // FIN or RST, whatever the session's state: both directions leave the cache.
            flow.close = true;
            self.seen.closed(&flow, now_s);
            cx.out.flows.push(flow);
            return;
        }
        if m.flags & FLAG_NO_CACHE != 0 {
            return;
        }
        if tcp_flags & 0x12 == 0x02 {
            self.seen.reopened(&flow); // a new connection's SYN
        } else if self.seen.is_closed(&flow, now_s) {
            return;
        }
        if self.seen.should_report(&flow, now_s) {
            cx.out.flows.push(flow);
        }
    }
}

impl<M: FrameMemory> Node<M> for InterfaceOutput {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let ifaces = cx.snap.ifaces.clone();
        let now_s = if cx.snap.flow_export {
            let epoch = *self.epoch.get_or_insert_with(Instant::now);
            Some(epoch.elapsed().as_secs() as u32)
        } else {
            None
        };
        for (i, &b) in bufs.iter().enumerate() {
            let m = cx.meta(b);
            if ifaces.get(m.tx_if).map(|f| f.kind) == Some(crate::IfKind::Tunnel) {
                nexts[i] = 1; // tunnel-encap: it comes back here on the uplink
                continue;
            }
            let Some(port) = ifaces.get(m.tx_if).and_then(|f| f.port) else {
                nexts[i] = cx.drop_with(b, OutputError::NoPort);
                continue;
            };
            if let (Some(now_s), Some(out)) = (now_s, ifaces.get(m.tx_if)) {
                self.export(cx, b, out, now_s);
            }
            let c = cx.stats.iface(m.tx_if);
            c.tx_packets.add(1);
            c.tx_bytes.add(m.len as u64);
            if cx.traced(b) {
                cx.trace(
                    b,
                    TraceData::Tx {
                        sw_if: m.tx_if,
                        port,
                    },
                );
            }
            cx.out.tx(
                port,
                Desc {
                    buf: b,
                    offset: m.offset,
                    len: m.len,
                },
            );
            nexts[i] = CONSUMED;
        }
    }
}
