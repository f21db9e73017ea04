use std::net::{IpAddr, Ipv4Addr};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::TunnResult;
use ferroplane_io::{BufIdx, FrameMemory};
use ferroplane_wire::ethernet::{EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
use ferroplane_wire::{udp, IpProtocol, IpipPacket, Ipv4Packet, UdpPacket};
use ferroplane_wire::{VxlanPacket, VxlanRepr, WireGuardPacket};

use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::TraceData;
use crate::tunnel::{Tunnel, VXLAN_HDR};
use crate::{node_errors, node_nexts};

use super::tunnel_encap::{write_ip4, write_udp, ETH, IP4, OUTER_UDP};

node_nexts! {
    /// Next arcs of `tunnel-decap`.
    pub enum DecapNext { Drop = "error-drop", Ip4 = "ip4-input", Lookup = "ip4-lookup" }
}

node_errors! {
    /// Error reasons of `tunnel-decap`.
    pub enum DecapError {
        UnknownPeer = (Error, "unknown-peer", "tunnel packet from an address that is not a configured remote node"),
        Truncated = (Error, "truncated", "outer headers or inner packet shorter than they claim"),
        BadVxlan = (Error, "bad-vxlan", "VXLAN header without the I flag or with another VNI"),
        NotIp4 = (Error, "inner-not-ipv4", "inner frame is not IPv4 (ARP, IPv6, ...)"),
        SpoofedSource = (Error, "spoofed-source", "inner source neither in the sending peer's pod CIDRs nor the peer node's address"),
        NoWireGuard = (Error, "wg-no-peer", "WireGuard packet from a remote node without a WireGuard tunnel"),
        WgReplay = (Error, "wg-replay", "WireGuard data packet outside or already seen in the replay window"),
        WgDecrypt = (Error, "wg-decrypt", "WireGuard packet failed authentication or parsing"),
        WgNoSession = (Error, "wg-no-session", "WireGuard data packet for an unknown or expired session"),
        WgControl = (Info, "wg-control", "WireGuard handshake, cookie or keepalive consumed"),
        WgReply = (Info, "wg-reply", "WireGuard handshake response or cookie sent back"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "tunnel-decap",
    nexts: DecapNext::NAMES,
    errors: DecapError::INFO,
};

/// Decapsulates IPIP, VXLAN and WireGuard packets addressed to the node; the
/// inner IPv4 packet (behind a synthetic Ethernet header) goes through
/// `ip4-input` again.
#[derive(Debug)]
pub struct TunnelDecap {
    scratch: Vec<u8>,
}

impl Default for TunnelDecap {
    fn default() -> Self {
        TunnelDecap {
            scratch: vec![0; 65536 + 64],
        }
    }
}

enum Verdict {
    /// Inner packet now at (offset, len) with an Ethernet header; from this tunnel.
    Inner(usize, usize, u16),
    /// A reply (outer IPv4 from its header on) now at (offset, len), to route.
    Reply(usize, usize),
    Drop(DecapError),
}

impl<M: FrameMemory> Node<M> for TunnelDecap {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let tunnels = cx.snap.tunnels.clone();
        for (i, &b) in bufs.iter().enumerate() {
            let m = cx.meta(b);
            let off = m.offset as usize;
            let l3 = cx.packet(b).get(ETH..).unwrap_or(&[]);
            if l3.len() < IP4 {
                nexts[i] = cx.drop_with(b, DecapError::Truncated);
                continue;
            }
            // ip4-input checked the outer header's lengths and checksum.
            let ip = Ipv4Packet::new_unchecked(l3);
            let hl = usize::from(ip.header_len());
            let total = usize::from(ip.total_len());
            let proto = ip.protocol();
            let src = ip.src_addr();
            let dst = ip.dst_addr();
            let Some(t) = tunnels.by_remote(src).cloned() else {
                nexts[i] = cx.drop_with(b, DecapError::UnknownPeer);
                continue;
            };
            let verdict = if proto == IpProtocol::IPIP {
                ipip(cx.frame(b), off, total, &t)
            } else {
                // The ports (0 when the datagram is too short to hold them: the WireGuard
                // path then refuses it as truncated).
                let ports = l3.get(hl..).unwrap_or(&[]);
                let sport = ports
                    .get(..2)
                    .map_or(0, |_| UdpPacket::new_unchecked(ports).src_port());
                let dport = ports
                    .get(..4)
                    .map_or(0, |_| UdpPacket::new_unchecked(ports).dst_port());
                if dport == tunnels.vxlan_port {
                    vxlan(cx.frame(b), off, hl, total, tunnels.vni, &t)
                } else {
                    self.wireguard(cx.frame(b), off, hl, total, &t, (src, sport), (dst, dport))
                }
            };
            nexts[i] = match verdict {
                Verdict::Inner(o, l, sw_if) => {
                    t.counters.rx(l - ETH);
                    let mm = cx.meta_mut(b);
                    mm.offset = o as u16;
                    mm.len = l as u16;
                    mm.rx_if = sw_if;
                    if cx.traced(b) {
                        let data = TraceData::Decap {
                            tunnel: sw_if,
                            mode: t.mode,
                            remote: src,
                            len: (l - ETH) as u16,
                        };
                        cx.trace(b, data);
                    }
                    DecapNext::Ip4.into()
                }
                Verdict::Reply(o, l) => {
                    let mm = cx.meta_mut(b);
                    mm.offset = o as u16;
                    mm.len = l as u16;
                    cx.count(DecapError::WgReply, 1);
                    DecapNext::Lookup.into()
                }
                Verdict::Drop(e) => cx.drop_with(b, e),
            };
        }
    }
}

/// Write a synthetic Ethernet header (IPv4, zero addresses) at `frame[at..at + 14]`.
#[inline(always)]
fn eth_ip4(frame: &mut [u8], at: usize) {
    let repr = EthernetRepr {
        src_addr: EthernetAddress::UNSPECIFIED,
        dst_addr: EthernetAddress::UNSPECIFIED,
        ethertype: EtherType::IPV4,
    };
    repr.emit(&mut EthernetFrame::new_unchecked(&mut frame[at..at + ETH]));
}

/// Checks the inner IPv4 header at `frame[at..]` (length `len`): its source must belong to
/// the peer that sent it (identified by the outer source address, and for WireGuard by the
/// session that authenticated it): one of its pod CIDRs ([`Tunnel::allows`]), or the peer
/// node's own address (its host-network traffic, and service traffic it masqueraded), as
/// Cilium puts a node's pod CIDRs and node IPs in its WireGuard allowed IPs.
#[inline(always)]
fn inner_ok(frame: &[u8], at: usize, len: usize, t: &Tunnel) -> Result<(), DecapError> {
    let inner = frame.get(at..at + len).unwrap_or(&[]);
    if inner.len() < IP4 {
        return Err(DecapError::NotIp4);
    }
    let ip = Ipv4Packet::new_unchecked(inner);
    if ip.version() != 4 {
        return Err(DecapError::NotIp4);
    }
    let src = ip.src_addr();
    if src != t.remote && !t.allows(src) {
        return Err(DecapError::SpoofedSource);
    }
    Ok(())
}

fn ipip(frame: &mut [u8], off: usize, total: usize, t: &Tunnel) -> Verdict {
    let outer = frame.get(off + ETH..off + ETH + total).unwrap_or(&[]);
    // The outer header was checked by ip4-input and its protocol is IPIP: what can fail
    // here is an inner packet shorter than an IPv4 header.
    let Ok(p) = IpipPacket::new_checked(outer) else {
        return Verdict::Drop(DecapError::Truncated);
    };
    let inner_at = off + ETH + p.inner_offset();
    let len = p.inner().len();
    if let Err(e) = inner_ok(frame, inner_at, len, t) {
        return Verdict::Drop(e);
    }
    eth_ip4(frame, inner_at - ETH);
    Verdict::Inner(inner_at - ETH, len + ETH, t.sw_if)
}

fn vxlan(frame: &mut [u8], off: usize, hl: usize, total: usize, vni: u32, t: &Tunnel) -> Verdict {
    if total < hl + udp::HEADER_LEN + VXLAN_HDR + ETH + IP4 {
        return Verdict::Drop(DecapError::Truncated);
    }
    let v = off + ETH + hl + udp::HEADER_LEN;
    let end = off + ETH + total;
    let Some(Ok(packet)) = frame.get(v..end).map(VxlanPacket::new_checked) else {
        return Verdict::Drop(DecapError::Truncated);
    };
    if VxlanRepr::parse(&packet) != Ok(VxlanRepr { vni }) {
        return Verdict::Drop(DecapError::BadVxlan);
    }
    // The length check above leaves room for the inner Ethernet and IPv4 headers.
    if EthernetFrame::new_unchecked(packet.payload()).ethertype() != EtherType::IPV4 {
        return Verdict::Drop(DecapError::NotIp4);
    }
    let inner_frame = v + VXLAN_HDR;
    let len = end - inner_frame;
    if let Err(e) = inner_ok(frame, inner_frame + ETH, len - ETH, t) {
        return Verdict::Drop(e);
    }
    Verdict::Inner(inner_frame, len, t.sw_if)
}

impl TunnelDecap {
    #[allow(clippy::too_many_arguments)]
    fn wireguard(
        &mut self,
        frame: &mut [u8],
        off: usize,
        hl: usize,
        total: usize,
        t: &Tunnel,
        from: (Ipv4Addr, u16),
        to: (Ipv4Addr, u16),
    ) -> Verdict {
        let Some(wg) = t.wg.as_ref() else {
            return Verdict::Drop(DecapError::NoWireGuard);
        };
        if total < hl + udp::HEADER_LEN {
            return Verdict::Drop(DecapError::Truncated);
        }
        let payload = &frame[off + ETH + hl + udp::HEADER_LEN..off + ETH + total];
        // A message no WireGuard receiver accepts (unknown type, reserved bytes set, wrong
        // length) is refused before taking the peer's lock, as boringtun would refuse it
        // (InvalidPacket: wg-decrypt). An empty datagram still goes to boringtun, which
        // reads it as "send what you queued".
        if !payload.is_empty() && WireGuardPacket::new_checked(payload).is_err() {
            return Verdict::Drop(DecapError::WgDecrypt);
        }
        let r = {
            let mut tunn = wg.lock();
            match tunn.decapsulate(Some(IpAddr::V4(from.0)), payload, &mut self.scratch) {
                TunnResult::WriteToTunnelV4(p, _) => Ok((true, p.len())),
                TunnResult::WriteToNetwork(p) => Ok((false, p.len())),
                TunnResult::Done => Err(DecapError::WgControl),
                TunnResult::WriteToTunnelV6(..) => Err(DecapError::NotIp4),
                TunnResult::Err(WireGuardError::DuplicateCounter)
                | TunnResult::Err(WireGuardError::InvalidCounter) => Err(DecapError::WgReplay),
                TunnResult::Err(WireGuardError::NoCurrentSession)
                | TunnResult::Err(WireGuardError::WrongIndex)
                | TunnResult::Err(WireGuardError::ConnectionExpired) => {
                    Err(DecapError::WgNoSession)
                }
                TunnResult::Err(_) => Err(DecapError::WgDecrypt),
            }
        };
        match r {
            Err(e) => Verdict::Drop(e),
            Ok((true, n)) => {
                // Decrypted packets are shorter than their ciphertext: they fit where the frame was.
                if off + ETH + n > frame.len() {
                    return Verdict::Drop(DecapError::Truncated);
                }
                frame[off + ETH..off + ETH + n].copy_from_slice(&self.scratch[..n]);
                if let Err(e) = inner_ok(frame, off + ETH, n, t) {
                    return Verdict::Drop(e);
                }
                eth_ip4(frame, off);
                Verdict::Inner(off, n + ETH, t.sw_if)
            }
            Ok((false, n)) => {
                // Handshake response / cookie: back to where the message came from.
                if off + OUTER_UDP + n > frame.len() {
                    return Verdict::Drop(DecapError::Truncated);
                }
                frame[off + OUTER_UDP..off + OUTER_UDP + n].copy_from_slice(&self.scratch[..n]);
                write_ip4(
                    &mut frame[off + ETH..],
                    0,
                    udp::HEADER_LEN + n,
                    IpProtocol::UDP,
                    to.0,
                    from.0,
                );
                write_udp(
                    &mut frame[off + ETH + IP4..],
                    to.1,
                    from.1,
                    udp::HEADER_LEN + n,
                );
                eth_ip4(frame, off);
                Verdict::Reply(off, OUTER_UDP + n)
            }
        }
    }
}
