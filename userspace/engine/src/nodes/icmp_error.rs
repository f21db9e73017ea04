use std::net::Ipv4Addr;

use ferroplane_io::{BufIdx, FrameMemory};
use ferroplane_wire::{checksum, Ipv4Packet};

use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::TraceData;
use crate::{node_errors, node_nexts};

use super::{be16, ip_at};

node_nexts! {
    /// Next arcs of `ip4-icmp-error`.
    pub enum IcmpNext { Drop = "error-drop", Lookup = "ip4-lookup" }
}

node_errors! {
    /// Error reasons of `ip4-icmp-error`.
    pub enum IcmpError {
        Sent = (Info, "sent", "ICMP errors generated"),
        Suppressed = (Error, "suppressed", "no ICMP error about an ICMP error, a non-first fragment or a non-unicast source"),
        NoSource = (Error, "no-source-address", "no address to send the ICMP error from"),
        NoRoom = (Error, "no-room", "frame too small to build the ICMP error"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "ip4-icmp-error",
    nexts: IcmpNext::NAMES,
    errors: IcmpError::INFO,
};

/// Turns a packet into the ICMP error about it (type/code/MTU from its metadata),
/// quoting its IP header and first 8 payload bytes (RFC 792), and routes it back to the source.
#[derive(Debug, Default)]
pub struct IcmpErrorNode;

const IP_HDR: usize = 20;
const ICMP_HDR: usize = 8;

impl<M: FrameMemory> Node<M> for IcmpErrorNode {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let ifaces = cx.snap.ifaces.clone();
        let node_ip = cx.snap.node_ip;
        for (i, &b) in bufs.iter().enumerate() {
            let m = cx.meta(b);
            let source = ifaces
                .get(m.rx_if)
                .and_then(|f| f.ip4.map(|(a, _)| a))
                .or(node_ip);
            let Some(source) = source else {
                nexts[i] = cx.drop_with(b, IcmpError::NoSource);
                continue;
            };
            let pkt = cx.packet(b);
            let l3 = pkt.get(14..).unwrap_or(&[]);
            if l3.len() < 20 {
                nexts[i] = cx.drop_with(b, IcmpError::Suppressed);
                continue;
            }
            let hl = ((l3[0] & 0x0f) as usize) * 4;
            let total = be16(l3, 2) as usize;
            let frag_off = be16(l3, 6) & 0x1fff;
            let proto = l3[9];
            let orig_src = ip_at(l3, 12);
            let inner_type = l3.get(hl).copied().unwrap_or(0);
            let is_icmp_error = proto == 1 && matches!(inner_type, 3 | 4 | 5 | 11 | 12);
            if is_icmp_error
                || frag_off != 0
                || orig_src.is_multicast()
                || orig_src.is_broadcast()
                || orig_src.is_unspecified()
            {
                nexts[i] = cx.drop_with(b, IcmpError::Suppressed);
                continue;
            }
            let quote = (hl + 8).min(total).min(l3.len());
            let off = m.offset as usize;
            let new_len = 14 + IP_HDR + ICMP_HDR + quote;
            let frame = cx.frame(b);
            if off + new_len > frame.len() {
                nexts[i] = cx.drop_with(b, IcmpError::NoRoom);
                continue;
            }
            let l3_start = off + 14;
            let quote_at = l3_start + IP_HDR + ICMP_HDR;
            frame.copy_within(l3_start..l3_start + quote, quote_at);
            build(
                &mut frame[l3_start..off + new_len],
                source,
                orig_src,
                m.icmp_type,
                m.icmp_code,
                m.icmp_mtu,
            );
            let mm = cx.meta_mut(b);
            mm.len = new_len as u16;
            if cx.traced(b) {
                cx.trace(
                    b,
                    TraceData::IcmpError {
                        icmp_type: m.icmp_type,
                        code: m.icmp_code,
                    },
                );
            }
            cx.count(IcmpError::Sent, 1);
            nexts[i] = IcmpNext::Lookup.into();
        }
    }
}

/// Write the IPv4 + ICMP headers in front of the quote already in place.
fn build(l3: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, code: u8, mtu: u16) {
    let total = l3.len() as u16;
    {
        let h = &mut l3[..IP_HDR];
        h[0] = 0x45;
        h[1] = 0;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&[0, 0]);
        h[6..8].copy_from_slice(&[0, 0]);
        h[8] = 64;
        h[9] = 1;
        h[10..12].copy_from_slice(&[0, 0]);
        h[12..16].copy_from_slice(&src.octets());
        h[16..20].copy_from_slice(&dst.octets());
    }
    if let Ok(mut ip) = Ipv4Packet::new_checked(&mut l3[..]) {
        ip.fill_checksum();
    }
    let icmp = &mut l3[IP_HDR..];
    icmp[0] = icmp_type;
    icmp[1] = code;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..6].copy_from_slice(&[0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
}
