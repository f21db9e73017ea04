use std::net::{IpAddr, Ipv4Addr};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::TunnResult;
use ferroplane_io::{BufIdx, FrameMemory};

use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::TraceData;
use crate::tunnel::{Tunnel, VXLAN_HDR};
use crate::{node_errors, node_nexts};

use super::tunnel_encap::{write_ip4, write_udp, OUTER_UDP};
use super::{be16, ip_at};

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
            let l3 = cx.packet(b).get(14..).unwrap_or(&[]);
            if l3.len() < 20 {
                nexts[i] = cx.drop_with(b, DecapError::Truncated);
                continue;
            }
            let hl = ((l3[0] & 0x0f) as usize) * 4;
            let total = be16(l3, 2) as usize;
            let proto = l3[9];
            let src = ip_at(l3, 12);
            let dst = ip_at(l3, 16);
            let Some(t) = tunnels.by_remote(src).cloned() else {
                nexts[i] = cx.drop_with(b, DecapError::UnknownPeer);
                continue;
            };
            let verdict = if proto == 4 {
                ipip(cx.frame(b), off, hl, total, &t)
            } else {
                let sport = be16(l3, hl);
                let dport = be16(l3, hl + 2);
                if dport == tunnels.vxlan_port {
                    vxlan(cx.frame(b), off, hl, total, tunnels.vni, &t)
                } else {
                    self.wireguard(cx.frame(b), off, hl, total, &t, (src, sport), (dst, dport))
                }
            };
            nexts[i] = match verdict {
                Verdict::Inner(o, l, sw_if) => {
                    t.counters.rx(l - 14);
                    let mm = cx.meta_mut(b);
                    mm.offset = o as u16;
                    mm.len = l as u16;
                    mm.rx_if = sw_if;
                    if cx.traced(b) {
                        let data = TraceData::Decap {
                            tunnel: sw_if,
                            mode: t.mode,
                            remote: src,
                            len: (l - 14) as u16,
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

/// Write a synthetic Ethernet header (IPv4) at `frame[at..at + 14]`.
#[inline(always)]
fn eth_ip4(frame: &mut [u8], at: usize) {
    frame[at..at + 12].copy_from_slice(&[0; 12]);
    frame[at + 12..at + 14].copy_from_slice(&[0x08, 0x00]);
}

/// Checks the inner IPv4 header at `frame[at..]` (length `len`): its source must belong to
/// the peer that sent it (identified by the outer source address, and for WireGuard by the
/// session that authenticated it): one of its pod CIDRs ([`Tunnel::allows`]), or the peer
/// node's own address (its host-network traffic, and service traffic it masqueraded), as
/// Cilium puts a node's pod CIDRs and node IPs in its WireGuard allowed IPs.
#[inline(always)]
fn inner_ok(frame: &[u8], at: usize, len: usize, t: &Tunnel) -> Result<(), DecapError> {
    let inner = frame.get(at..at + len).unwrap_or(&[]);
    if inner.len() < 20 || inner[0] >> 4 != 4 {
        return Err(DecapError::NotIp4);
    }
    let src = ip_at(inner, 12);
    if src != t.remote && !t.allows(src) {
        return Err(DecapError::SpoofedSource);
    }
    Ok(())
}

fn ipip(frame: &mut [u8], off: usize, hl: usize, total: usize, t: &Tunnel) -> Verdict {
    if total < hl + 20 {
        return Verdict::Drop(DecapError::Truncated);
    }
    let inner_at = off + 14 + hl;
    let len = total - hl;
    if let Err(e) = inner_ok(frame, inner_at, len, t) {
        return Verdict::Drop(e);
    }
    eth_ip4(frame, inner_at - 14);
    Verdict::Inner(inner_at - 14, len + 14, t.sw_if)
}

fn vxlan(frame: &mut [u8], off: usize, hl: usize, total: usize, vni: u32, t: &Tunnel) -> Verdict {
    if total < hl + 8 + VXLAN_HDR + 14 + 20 {
        return Verdict::Drop(DecapError::Truncated);
    }
    let v = off + 14 + hl + 8;
    let hdr = &frame[v..v + VXLAN_HDR];
    let got = u32::from_be_bytes([0, hdr[4], hdr[5], hdr[6]]);
    if hdr[0] & 0x08 == 0 || got != vni {
        return Verdict::Drop(DecapError::BadVxlan);
    }
    let inner_frame = v + VXLAN_HDR;
    if be16(frame, inner_frame + 12) != 0x0800 {
        return Verdict::Drop(DecapError::NotIp4);
    }
    let len = total - hl - 8 - VXLAN_HDR;
    if let Err(e) = inner_ok(frame, inner_frame + 14, len - 14, t) {
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
        if total < hl + 8 {
            return Verdict::Drop(DecapError::Truncated);
        }
        let payload = &frame[off + 14 + hl + 8..off + 14 + total];
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
                if off + 14 + n > frame.len() {
                    return Verdict::Drop(DecapError::Truncated);
                }
                frame[off + 14..off + 14 + n].copy_from_slice(&self.scratch[..n]);
                if let Err(e) = inner_ok(frame, off + 14, n, t) {
                    return Verdict::Drop(e);
                }
                eth_ip4(frame, off);
                Verdict::Inner(off, n + 14, t.sw_if)
            }
            Ok((false, n)) => {
                // Handshake response / cookie: back to where the message came from.
                if off + OUTER_UDP + n > frame.len() {
                    return Verdict::Drop(DecapError::Truncated);
                }
                frame[off + OUTER_UDP..off + OUTER_UDP + n].copy_from_slice(&self.scratch[..n]);
                write_ip4(
                    &mut frame[off + 14..off + 34],
                    0,
                    (28 + n) as u16,
                    17,
                    to.0,
                    from.0,
                );
                write_udp(&mut frame[off + 34..off + 42], to.1, from.1, (8 + n) as u16);
                eth_ip4(frame, off);
                Verdict::Reply(off, OUTER_UDP + n)
            }
        }
    }
}
