use ferroplane_io::{BufIdx, FrameMemory};
use ferroplane_wire::Ipv4Packet;

use crate::interfaces::IfKind;
use crate::node::{Ctx, Node, NodeInfo};
use crate::trace::TraceData;
use crate::{node_errors, node_nexts};

use super::{be16, ip_at};

node_nexts! {
    /// Next arcs of `ip4-input`.
    pub enum Ip4InputNext { Drop = "error-drop", Lookup = "ip4-lookup", Nat = "ip4-nat", Frag = "ip4-frag" }
}

node_errors! {
    /// Error reasons of `ip4-input`.
    pub enum Ip4InputError {
        Truncated = (Error, "truncated", "shorter than its IPv4 header or its total length"),
        BadVersion = (Error, "bad-version", "IP version is not 4"),
        BadHeaderLength = (Error, "bad-header-length", "IHL below 5 (20 bytes)"),
        BadLength = (Error, "bad-length", "total length below the header length"),
        BadChecksum = (Error, "bad-checksum", "IPv4 header checksum is wrong"),
        BadSource = (Error, "bad-source", "source address is multicast, broadcast, in 0.0.0.0/8 or loopback"),
        SpoofedSource = (Error, "spoofed-source", "source is not the sending pod's address, or from the uplink inside this node's pod CIDRs"),
        MartianDestination = (Error, "martian-destination", "destination is broadcast, multicast, in 0.0.0.0/8 or loopback"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "ip4-input",
    nexts: Ip4InputNext::NAMES,
    errors: Ip4InputError::INFO,
};

/// Validates IPv4 headers (version, lengths, checksum), sources and destinations, and trims
/// Ethernet padding. Fragments are valid packets: they go to `ip4-frag`, the others to
/// `ip4-nat`.
///
/// Sources: a pod sends with its own address only; the uplink never brings a source inside
/// this node's pod CIDRs ([`crate::Snapshot::pod_cidrs`]), nor does the node itself (the
/// punt TUN); a tunnel's inner sources were
/// checked against the sending peer by `tunnel-decap`. Destinations that no router forwards
/// (RFC 1122 3.2.1.3, RFC 5735): limited broadcast, multicast (224.0.0.0/4: the engine has
/// no multicast routing), 0.0.0.0/8 and loopback are dropped as `martian-destination`.
/// 240.0.0.0/4 is forwarded: some clusters use it as unicast pod space.
#[derive(Debug, Default)]
pub struct Ip4Input;

impl<M: FrameMemory> Node<M> for Ip4Input {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let snap = cx.snap;
        for (i, &b) in bufs.iter().enumerate() {
            let rx = snap.ifaces.get(cx.meta(b).rx_if);
            let pkt = cx.packet(b);
            let l3 = pkt.get(14..).unwrap_or(&[]);
            let verdict = check(l3);
            let (total, src, dst, proto, ttl, frag) = match verdict {
                Ok(total) => (
                    total,
                    ip_at(l3, 12),
                    ip_at(l3, 16),
                    l3[9],
                    l3[8],
                    be16(l3, 6) & 0x3fff != 0,
                ),
                Err(e) => {
                    nexts[i] = cx.drop_with(b, e);
                    continue;
                }
            };
            let spoofed = match rx.map(|r| (r.kind, r.pod.as_ref())) {
                Some((IfKind::Pod, pod)) => pod.is_none_or(|p| p.ip != src),
                // The node's own packets (punt TUN) never claim a pod's address either.
                Some((IfKind::Uplink | IfKind::Punt, _)) => {
                    snap.pod_cidrs.iter().any(|p| p.contains(src))
                }
                _ => false,
            };
            if spoofed {
                nexts[i] = cx.drop_with(b, Ip4InputError::SpoofedSource);
                continue;
            }
            if src.is_multicast() || src.is_broadcast() || src.octets()[0] == 0 || src.is_loopback()
            {
                nexts[i] = cx.drop_with(b, Ip4InputError::BadSource);
                continue;
            }
            if martian_destination(dst) {
                nexts[i] = cx.drop_with(b, Ip4InputError::MartianDestination);
                continue;
            }
            let m = cx.meta_mut(b);
            m.len = 14 + total;
            m.flags &= !crate::buffer::FLAG_FRAG_TAIL;
            if cx.traced(b) {
                cx.trace(
                    b,
                    TraceData::Ip4 {
                        src,
                        dst,
                        proto,
                        ttl,
                        len: total,
                    },
                );
            }
            // Fragments (MF or an offset) follow their first fragment: ip4-frag.
            nexts[i] = if frag {
                Ip4InputNext::Frag.into()
            } else {
                Ip4InputNext::Nat.into()
            };
        }
    }
}

/// Whether no router forwards to `dst`: limited broadcast, multicast, 0.0.0.0/8, loopback.
#[inline(always)]
fn martian_destination(dst: std::net::Ipv4Addr) -> bool {
    let first = dst.octets()[0];
    dst.is_broadcast() || dst.is_multicast() || first == 0 || first == 127
}

/// Returns the total length of a valid header, or the reason it is not.
#[inline(always)]
fn check(l3: &[u8]) -> Result<u16, Ip4InputError> {
    if l3.len() < 20 {
        return Err(Ip4InputError::Truncated);
    }
    if l3[0] >> 4 != 4 {
        return Err(Ip4InputError::BadVersion);
    }
    let hl = ((l3[0] & 0x0f) as usize) * 4;
    if hl < 20 {
        return Err(Ip4InputError::BadHeaderLength);
    }
    if hl > l3.len() {
        return Err(Ip4InputError::Truncated);
    }
    let total = be16(l3, 2);
    if (total as usize) < hl {
        return Err(Ip4InputError::BadLength);
    }
    if total as usize > l3.len() {
        return Err(Ip4InputError::Truncated);
    }
    match Ipv4Packet::new_checked(l3) {
        Ok(p) if p.verify_checksum() => Ok(total),
        Ok(_) => Err(Ip4InputError::BadChecksum),
        Err(_) => Err(Ip4InputError::Truncated),
    }
}
