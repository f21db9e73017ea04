use ferroplane_io::{BufIdx, FrameMemory};

use crate::interfaces::IfKind;
use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::TraceData;
use crate::{node_errors, node_nexts};

use super::be16;

node_nexts! {
    /// Next arcs of `ethernet-input`.
    pub enum EthNext { Drop = "error-drop", Arp = "arp-input", Ip4 = "ip4-input" }
}

node_errors! {
    /// Error reasons of `ethernet-input`.
    pub enum EthError {
        Truncated = (Error, "truncated", "frame shorter than an Ethernet header"),
        UnknownType = (Error, "unknown-ethertype", "ethertype the engine does not handle (IPv6, VLAN, ...)"),
        NotForUs = (Error, "not-for-us", "unicast destination MAC is not the receiving interface's"),
        UnknownInterface = (Error, "unknown-interface", "received on a port with no interface in the table"),
        L2Multicast = (Error, "l2-multicast", "IPv4 sent to a broadcast or multicast MAC"),
        SpoofedSource = (Error, "spoofed-source", "frame from a pod whose source MAC is not the pod's own"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "ethernet-input",
    nexts: EthNext::NAMES,
    errors: EthError::INFO,
};

/// Classifies frames by ethertype after checking the destination MAC and, on pod ports,
/// the source MAC (a pod's frames carry its interface's MAC, nothing else).
#[derive(Debug, Default)]
pub struct EthernetInput;

impl<M: FrameMemory> Node<M> for EthernetInput {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let ifaces = cx.snap.ifaces.clone();
        for (i, &b) in bufs.iter().enumerate() {
            let rx_if = cx.meta(b).rx_if;
            let Some(iface) = ifaces.get(rx_if) else {
                nexts[i] = cx.drop_with(b, EthError::UnknownInterface);
                continue;
            };
            let pkt = cx.packet(b);
            if pkt.len() < 14 {
                nexts[i] = cx.drop_with(b, EthError::Truncated);
                continue;
            }
            let mut dst = [0u8; 6];
            dst.copy_from_slice(&pkt[0..6]);
            let mut src = [0u8; 6];
            src.copy_from_slice(&pkt[6..12]);
            let ethertype = be16(pkt, 12);
            let group = dst[0] & 1 != 0;
            if cx.traced(b) {
                cx.trace(
                    b,
                    TraceData::Ethernet {
                        src,
                        dst,
                        ethertype,
                    },
                );
            }
            if !group && dst != iface.mac {
                nexts[i] = cx.drop_with(b, EthError::NotForUs);
                continue;
            }
            // A pod sends with its own MAC only (a pod interface without a pod: nothing passes).
            if iface.kind == IfKind::Pod && iface.pod.as_ref().is_none_or(|p| p.mac != src) {
                nexts[i] = cx.drop_with(b, EthError::SpoofedSource);
                continue;
            }
            nexts[i] = match ethertype {
                0x0800 if group => cx.drop_with(b, EthError::L2Multicast),
                0x0800 => EthNext::Ip4.into(),
                0x0806 => EthNext::Arp.into(),
                _ => cx.drop_with(b, EthError::UnknownType),
            };
        }
    }
}
