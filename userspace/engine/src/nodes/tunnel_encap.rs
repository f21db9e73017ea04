use std::net::Ipv4Addr;

use boringtun::noise::TunnResult;
use ferroplane_io::{BufIdx, FrameMemory};
use ferroplane_tables::AdjKind;
use ferroplane_wire::ethernet::{self, EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
use ferroplane_wire::tcp::{self, TcpPacket};
use ferroplane_wire::{ipv4, udp, IpProtocol, Ipv4Packet, OuterIpv4Repr, UdpPacket};
use ferroplane_wire::{VxlanPacket, VxlanRepr};

use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::TraceData;
use crate::tunnel::{flow_source_port, TunnelMode, VXLAN_HDR};
use crate::{node_errors, node_nexts};

use super::ip4_lookup::flow_hash;

node_nexts! {
    /// Next arcs of `tunnel-encap`.
    pub enum EncapNext { Drop = "error-drop", Output = "interface-output" }
}

node_errors! {
    /// Error reasons of `tunnel-encap`.
    pub enum EncapError {
        NoTunnel = (Error, "no-tunnel", "output interface is not a tunnel"),
        NoRoute = (Error, "no-route", "no route to the tunnel's remote address"),
        NeighbourMiss = (Error, "neighbour-miss", "next hop toward the remote node unresolved; resolution requested"),
        NoRoom = (Error, "no-room", "not enough headroom or tailroom for the outer headers"),
        Malformed = (Error, "malformed", "no IPv4 packet to encapsulate"),
        WgNoSession = (Info, "wg-handshake-sent", "no WireGuard session: packet queued, handshake initiation sent"),
        WgQueued = (Info, "wg-queued", "no WireGuard session yet, handshake in progress: packet queued in the state machine"),
        WgError = (Error, "wg-error", "the WireGuard state machine refused the packet"),
        MssClamped = (Info, "mss-clamped", "TCP SYN's MSS option lowered to fit the tunnel MTU"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "tunnel-encap",
    nexts: EncapNext::NAMES,
    errors: EncapError::INFO,
};

/// Bytes of the outer Ethernet header.
pub(crate) const ETH: usize = ethernet::HEADER_LEN;
/// Bytes of the outer IPv4 header (no options).
pub(crate) const IP4: usize = ipv4::HEADER_LEN;
/// Bytes of Ethernet + IPv4 + UDP outer headers.
pub(crate) const OUTER_UDP: usize = ETH + IP4 + udp::HEADER_LEN;

/// Encapsulates packets routed into a tunnel interface (IPIP, VXLAN,
/// WireGuard) and sends them toward the remote node on the uplink.
#[derive(Debug)]
pub struct TunnelEncap {
    scratch: Vec<u8>,
}

impl Default for TunnelEncap {
    fn default() -> Self {
        TunnelEncap {
            scratch: vec![0; 65536 + 64],
        }
    }
}

/// Write an outer IPv4 header (20 bytes, DF clear, TTL 64, its checksum) carrying
/// `payload_len` bytes of `proto` at `h[0..20]`.
#[inline(always)]
pub(crate) fn write_ip4(
    h: &mut [u8],
    tos: u8,
    payload_len: usize,
    proto: IpProtocol,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    let repr = OuterIpv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: proto,
        dscp_ecn: tos,
        ttl: OuterIpv4Repr::DEFAULT_TTL,
        payload_len,
    };
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut h[..IP4]));
}

/// Write a UDP header (checksum 0: none, allowed over IPv4) at `h[0..8]`.
#[inline(always)]
pub(crate) fn write_udp(h: &mut [u8], sport: u16, dport: u16, len: usize) {
    let mut u = UdpPacket::new_unchecked(&mut h[..udp::HEADER_LEN]);
    u.set_src_port(sport);
    u.set_dst_port(dport);
    u.set_len(len as u16);
    u.set_checksum(0);
}

/// Write an Ethernet header (IPv4) at `h[0..14]`.
#[inline(always)]
pub(crate) fn write_eth(h: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    let repr = EthernetRepr {
        src_addr: EthernetAddress(src),
        dst_addr: EthernetAddress(dst),
        ethertype: EtherType::IPV4,
    };
    repr.emit(&mut EthernetFrame::new_unchecked(&mut h[..ETH]));
}

/// Lower the MSS of a TCP SYN (first fragment) in the IPv4 packet `l3` to `max`;
/// whether it was lowered.
fn clamp_syn_mss(l3: &mut [u8], max: u16) -> bool {
    // The caller checked that `l3` holds 20 bytes.
    let ip = Ipv4Packet::new_unchecked(&*l3);
    let ihl = usize::from(ip.header_len());
    if ip.protocol() != IpProtocol::TCP || ihl < IP4 || ip.frag_offset() != 0 {
        return false;
    }
    let total = usize::from(ip.total_len()).min(l3.len());
    let Some(seg) = l3.get_mut(ihl..total) else {
        return false;
    };
    let Ok(mut tcp) = TcpPacket::new_checked(seg) else {
        return false;
    };
    tcp.has_flags(tcp::SYN) && tcp.clamp_mss(max).is_some()
}

impl<M: FrameMemory> Node<M> for TunnelEncap {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let tunnels = cx.snap.tunnels.clone();
        let fib = cx.snap.fib.clone();
        for (i, &b) in bufs.iter().enumerate() {
            let m = cx.meta(b);
            let Some(t) = tunnels.get(m.tx_if) else {
                nexts[i] = cx.drop_with(b, EncapError::NoTunnel);
                continue;
            };
            let pkt = cx.packet(b);
            let Some(l3) = pkt.get(ETH..).filter(|l| l.len() >= IP4) else {
                nexts[i] = cx.drop_with(b, EncapError::Malformed);
                continue;
            };
            let hash = flow_hash(l3);
            let tos = Ipv4Packet::new_unchecked(l3).dscp_ecn();
            let inner_len = l3.len();
            let adj = *fib.adj(fib.resolve(t.remote, || hash));
            match adj.kind {
                AdjKind::Rewrite if tunnels.get(adj.sw_if).is_none() => {}
                AdjKind::Incomplete => {
                    cx.out
                        .misses
                        .push((adj.sw_if, adj.next_hop.unwrap_or(t.remote)));
                    nexts[i] = cx.drop_with(b, EncapError::NeighbourMiss);
                    continue;
                }
                _ => {
                    nexts[i] = cx.drop_with(b, EncapError::NoRoute);
                    continue;
                }
            }
            if tunnels.mss_clamp && adj.mtu > t.mode.overhead() + 40 {
                let max = adj.mtu - t.mode.overhead() - 40;
                if clamp_syn_mss(&mut cx.packet(b)[ETH..], max) {
                    cx.count(EncapError::MssClamped, 1);
                }
            }
            let off = m.offset as usize;
            let end = off + m.len as usize;
            // (new offset, new length) of the outer frame.
            let placed = match t.mode {
                TunnelMode::Ipip => {
                    // [eth][outer ip] in front of the inner IPv4 header (at off + ETH).
                    let Some(start) = (off + ETH).checked_sub(ETH + IP4) else {
                        nexts[i] = cx.drop_with(b, EncapError::NoRoom);
                        continue;
                    };
                    let frame = cx.frame(b);
                    write_ip4(
                        &mut frame[start + ETH..],
                        tos,
                        inner_len,
                        IpProtocol::IPIP,
                        t.local,
                        t.remote,
                    );
                    Some((start, end - start))
                }
                TunnelMode::Vxlan => {
                    // [eth][ip][udp][vxlan] in front of the inner Ethernet frame (at off).
                    let Some(start) = off.checked_sub(OUTER_UDP + VXLAN_HDR) else {
                        nexts[i] = cx.drop_with(b, EncapError::NoRoom);
                        continue;
                    };
                    let frame = cx.frame(b);
                    let inner_frame = m.len as usize;
                    let udp_len = udp::HEADER_LEN + VXLAN_HDR + inner_frame;
                    write_ip4(
                        &mut frame[start + ETH..],
                        tos,
                        udp_len,
                        IpProtocol::UDP,
                        t.local,
                        t.remote,
                    );
                    write_udp(
                        &mut frame[start + ETH + IP4..],
                        flow_source_port(hash),
                        tunnels.vxlan_port,
                        udp_len,
                    );
                    let vxlan = &mut frame[start + OUTER_UDP..start + OUTER_UDP + VXLAN_HDR];
                    VxlanRepr { vni: tunnels.vni }.emit(&mut VxlanPacket::new_unchecked(vxlan));
                    Some((start, end - start))
                }
                TunnelMode::WireGuard => {
                    let Some(wg) = t.wg.as_ref() else {
                        nexts[i] = cx.drop_with(b, EncapError::WgError);
                        continue;
                    };
                    let Some(start) = (off + ETH).checked_sub(OUTER_UDP) else {
                        nexts[i] = cx.drop_with(b, EncapError::NoRoom);
                        continue;
                    };
                    let (no_session, n) = {
                        let src = &cx.packet(b)[ETH..];
                        let mut tunn = wg.lock();
                        let had = tunn.time_since_last_handshake().is_some();
                        match tunn.encapsulate(src, &mut self.scratch) {
                            TunnResult::WriteToNetwork(p) => (!had, Ok(p.len())),
                            TunnResult::Done => (true, Err(EncapError::WgQueued)),
                            _ => (false, Err(EncapError::WgError)),
                        }
                    };
                    let n = match n {
                        Ok(n) => n,
                        Err(e) => {
                            nexts[i] = cx.drop_with(b, e);
                            continue;
                        }
                    };
                    let frame = cx.frame(b);
                    if start + OUTER_UDP + n > frame.len() {
                        nexts[i] = cx.drop_with(b, EncapError::NoRoom);
                        continue;
                    }
                    frame[start + OUTER_UDP..start + OUTER_UDP + n]
                        .copy_from_slice(&self.scratch[..n]);
                    write_ip4(
                        &mut frame[start + ETH..],
                        0,
                        udp::HEADER_LEN + n,
                        IpProtocol::UDP,
                        t.local,
                        t.remote,
                    );
                    write_udp(
                        &mut frame[start + ETH + IP4..],
                        tunnels.wg_port,
                        wg.port,
                        udp::HEADER_LEN + n,
                    );
                    if no_session {
                        // The packet is queued inside the state machine; this frame carries the handshake.
                        cx.count(EncapError::WgNoSession, 1);
                    }
                    Some((start, OUTER_UDP + n))
                }
                TunnelMode::Direct => None,
            };
            let Some((start, len)) = placed else {
                nexts[i] = cx.drop_with(b, EncapError::NoTunnel);
                continue;
            };
            write_eth(&mut cx.frame(b)[start..], adj.dst_mac, adj.src_mac);
            t.counters.tx(inner_len);
            let mm = cx.meta_mut(b);
            mm.offset = start as u16;
            mm.len = len as u16;
            mm.tx_if = adj.sw_if;
            mm.flags |= crate::buffer::FLAG_NO_CACHE;
            if cx.traced(b) {
                let data = TraceData::Encap {
                    tunnel: m.tx_if,
                    mode: t.mode,
                    local: t.local,
                    remote: t.remote,
                    len: len as u16,
                };
                cx.trace(b, data);
            }
            nexts[i] = EncapNext::Output.into();
        }
    }
}
