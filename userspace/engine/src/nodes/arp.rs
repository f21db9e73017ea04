use ferroplane_io::{BufIdx, FrameMemory};
use ferroplane_wire::{ArpPacket, EthernetAddress};

use crate::interfaces::IfKind;
use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::TraceData;
use crate::{node_errors, node_nexts};

node_nexts! {
    /// Next arcs of `arp-input`.
    pub enum ArpNext { Drop = "error-drop", Output = "interface-output" }
}

node_errors! {
    /// Error reasons of `arp-input`.
    pub enum ArpError {
        Malformed = (Error, "malformed", "truncated ARP or not Ethernet/IPv4 ARP"),
        NotRequest = (Error, "not-request", "ARP other than a request reached the engine"),
        NotPod = (Error, "not-pod-interface", "ARP request on a non-pod interface (the kernel answers there)"),
        OwnAddress = (Error, "own-address", "request for the pod's own address (duplicate address detection)"),
        SpoofedSource = (Error, "spoofed-source", "ARP from a pod whose sender MAC or address is not the pod's own"),
        Replied = (Info, "replied", "ARP requests answered with the gateway MAC"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "arp-input",
    nexts: ArpNext::NAMES,
    errors: ArpError::INFO,
};

/// Answers a pod's ARP requests (for its gateway, or any other address: proxy ARP) with the
/// host veth's MAC, when they come from the pod's own MAC and address.
#[derive(Debug, Default)]
pub struct ArpInput;

impl<M: FrameMemory> Node<M> for ArpInput {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let ifaces = cx.snap.ifaces.clone();
        let mut replied = 0;
        for (i, &b) in bufs.iter().enumerate() {
            let rx_if = cx.meta(b).rx_if;
            let traced = cx.traced(b);
            let pkt = cx.packet(b);
            let Some(body) = pkt.get_mut(14..) else {
                nexts[i] = cx.drop_with(b, ArpError::Malformed);
                continue;
            };
            let Ok(mut arp) = ArpPacket::new_checked(body) else {
                nexts[i] = cx.drop_with(b, ArpError::Malformed);
                continue;
            };
            let op = arp.operation();
            let sender = arp.sender_proto_addr();
            let target = arp.target_proto_addr();
            let sender_hw = arp.sender_hw_addr();
            let iface = ifaces.get(rx_if).filter(|f| f.kind == IfKind::Pod);
            let verdict = if op != ferroplane_wire::arp::REQUEST {
                Err(ArpError::NotRequest)
            } else if let Some(iface) = iface {
                match &iface.pod {
                    // Sender: the pod's own MAC and address; 0.0.0.0 only in a probe for
                    // its own address (RFC 5227 duplicate address detection).
                    Some(pod)
                        if sender_hw.0 != pod.mac
                            || !(sender == pod.ip
                                || (sender.is_unspecified() && target == pod.ip)) =>
                    {
                        Err(ArpError::SpoofedSource)
                    }
                    None => Err(ArpError::SpoofedSource),
                    Some(pod) if pod.ip == target => Err(ArpError::OwnAddress),
                    Some(_) => {
                        arp.set_operation(ferroplane_wire::arp::REPLY);
                        arp.set_target_hw_addr(sender_hw);
                        arp.set_target_proto_addr(sender);
                        arp.set_sender_hw_addr(EthernetAddress(iface.mac));
                        arp.set_sender_proto_addr(target);
                        let pkt = cx.packet(b);
                        pkt[0..6].copy_from_slice(&sender_hw.0);
                        pkt[6..12].copy_from_slice(&iface.mac);
                        cx.meta_mut(b).tx_if = rx_if;
                        Ok(())
                    }
                }
            } else {
                Err(ArpError::NotPod)
            };
            if traced {
                cx.trace(
                    b,
                    TraceData::Arp {
                        op,
                        sender,
                        target,
                        replied: verdict.is_ok(),
                    },
                );
            }
            nexts[i] = match verdict {
                Ok(()) => {
                    replied += 1;
                    ArpNext::Output.into()
                }
                Err(e) => cx.drop_with(b, e),
            };
        }
        if replied > 0 {
            cx.count(ArpError::Replied, replied);
        }
    }
}
