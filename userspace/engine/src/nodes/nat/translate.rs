//! Translation: rewrite a packet's addresses and ports to its session's other tuple
//! with incremental checksum updates (IPv4 header, TCP/UDP pseudo-header and ports,
//! ICMP echo id), and the TCP reset that answers a SYN to a service without endpoints.

use std::net::Ipv4Addr;

use ferroplane_tables::conntrack::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use ferroplane_tables::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use ferroplane_tables::FlowKey;
use ferroplane_wire::{checksum, Ipv4Packet};

use super::super::{be16, ip_at};

#[inline(always)]
pub(super) fn get16(b: &[u8], at: usize) -> u16 {
    be16(b, at)
}

#[inline(always)]
pub(super) fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

#[inline(always)]
pub(super) fn put_ip(b: &mut [u8], at: usize, a: Ipv4Addr) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&a.octets());
    }
}

/// Rewrite the addresses and ports of the IPv4 packet at `l3` (header length `hl`)
/// from `old` to `new`, updating the IP and L4 checksums incrementally.
/// `icmp_type`: for ICMP echo the id follows `sport` (request) or `dport` (reply).
/// `l4_csum`: whether the L4 checksum is present in the buffer (false for
/// truncated quotes inside ICMP errors).
#[inline(always)]
pub(super) fn rewrite(l3: &mut [u8], hl: usize, old: &FlowKey, new: &FlowKey, icmp_type: u8) {
    let (os, od, ns, nd) = (
        u32::from(old.src),
        u32::from(old.dst),
        u32::from(new.src),
        u32::from(new.dst),
    );
    let mut ipc = get16(l3, 10);
    if os != ns {
        ipc = checksum::update32(ipc, os, ns);
        put_ip(l3, 12, new.src);
    }
    if od != nd {
        ipc = checksum::update32(ipc, od, nd);
        put_ip(l3, 16, new.dst);
    }
    put16(l3, 10, ipc);
    match old.proto {
        PROTO_TCP | PROTO_UDP => {
            let at = if old.proto == PROTO_TCP {
                hl + 16
            } else {
                hl + 6
            };
            let present = l3.len() >= at + 2;
            let mut c = if present { get16(l3, at) } else { 0 };
            let udp_zero = old.proto == PROTO_UDP && c == 0;
            if os != ns {
                c = checksum::update32(c, os, ns);
            }
            if od != nd {
                c = checksum::update32(c, od, nd);
            }
            if old.sport != new.sport {
                c = checksum::update16(c, old.sport, new.sport);
                put16(l3, hl, new.sport);
            }
            if old.dport != new.dport {
                c = checksum::update16(c, old.dport, new.dport);
                put16(l3, hl + 2, new.dport);
            }
            if present && !udp_zero {
                // A UDP checksum that computes to 0 is sent as 0xffff (RFC 768).
                if old.proto == PROTO_UDP && c == 0 {
                    c = 0xffff;
                }
                put16(l3, at, c);
            }
        }
        PROTO_ICMP => {
            let (oid, nid) = if icmp_type == 8 {
                (old.sport, new.sport)
            } else {
                (old.dport, new.dport)
            };
            if oid != nid {
                let c = checksum::update16(get16(l3, hl + 2), oid, nid);
                put16(l3, hl + 4, nid);
                put16(l3, hl + 2, c);
            }
        }
        _ => {}
    }
}

/// Turn a TCP segment into the RST answering it (addresses and ports swapped), in place.
/// Returns the new IP length, or None when no RST must be sent (the segment is a RST).
pub(super) fn build_rst(l3: &mut [u8], hl: usize) -> Option<usize> {
    if l3.len() < hl + 20 {
        return None;
    }
    let total = be16(l3, 2) as usize;
    let flags = l3[hl + 13] as u16;
    if flags & TCP_RST != 0 {
        return None;
    }
    let (src, dst) = (ip_at(l3, 12), ip_at(l3, 16));
    let (sport, dport) = (be16(l3, hl), be16(l3, hl + 2));
    let seq = u32::from_be_bytes([l3[hl + 4], l3[hl + 5], l3[hl + 6], l3[hl + 7]]);
    let ack = u32::from_be_bytes([l3[hl + 8], l3[hl + 9], l3[hl + 10], l3[hl + 11]]);
    let tcp_hl = ((l3[hl + 12] >> 4) as usize) * 4;
    let payload = total.saturating_sub(hl + tcp_hl) as u32;
    let (rseq, rack, rflags) = if flags & TCP_ACK != 0 {
        (ack, 0u32, TCP_RST)
    } else {
        let mut a = seq.wrapping_add(payload);
        if flags & TCP_SYN != 0 {
            a = a.wrapping_add(1);
        }
        if flags & TCP_FIN != 0 {
            a = a.wrapping_add(1);
        }
        (0, a, TCP_RST | TCP_ACK)
    };
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&dport.to_be_bytes());
    tcp[2..4].copy_from_slice(&sport.to_be_bytes());
    tcp[4..8].copy_from_slice(&rseq.to_be_bytes());
    tcp[8..12].copy_from_slice(&rack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = rflags as u8;
    let ip = &mut l3[..40];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&dst.octets());
    ip[16..20].copy_from_slice(&src.octets());
    ip[20..40].copy_from_slice(&tcp);
    let c = checksum::fold(
        checksum::pseudo_header_v4(dst, src, ferroplane_wire::IpProtocol::TCP, 20)
            + checksum::sum(&ip[20..40]),
    );
    ip[36..38].copy_from_slice(&(!c).to_be_bytes());
    if let Ok(mut p) = Ipv4Packet::new_checked(&mut ip[..]) {
        p.fill_checksum();
    }
    Some(40)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = crate::testutil::udp_frame([0; 6], [0; 6], src, dst, 64, 12);
        let l3 = &mut f[14..];
        l3[20..22].copy_from_slice(&sport.to_be_bytes());
        l3[22..24].copy_from_slice(&dport.to_be_bytes());
        l3[26..28].copy_from_slice(&[0, 0]);
        let c = checksum::fold(
            checksum::pseudo_header_v4(src, dst, ferroplane_wire::IpProtocol::UDP, 20)
                + checksum::sum(&l3[20..40]),
        );
        l3[26..28].copy_from_slice(&(!c).to_be_bytes());
        f
    }

    fn valid(l3: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(l3).unwrap();
        let udp = ferroplane_wire::UdpPacket::new_checked(ip.payload()).unwrap();
        ip.verify_checksum() && udp.verify_checksum(ip.src_addr(), ip.dst_addr())
    }

    #[test]
    fn rewrite_keeps_checksums_valid() {
        let a: Ipv4Addr = "10.244.1.10".parse().unwrap();
        let v: Ipv4Addr = "10.96.0.10".parse().unwrap();
        let mut f = udp_packet(a, v, 5555, 53);
        assert!(valid(&f[14..]));
        let old = FlowKey {
            src: a,
            dst: v,
            sport: 5555,
            dport: 53,
            proto: PROTO_UDP,
        };
        let new = FlowKey {
            src: "192.168.100.2".parse().unwrap(),
            dst: "10.244.2.7".parse().unwrap(),
            sport: 61001,
            dport: 5353,
            proto: PROTO_UDP,
        };
        rewrite(&mut f[14..], 20, &old, &new, 0);
        assert!(valid(&f[14..]));
        assert_eq!(ip_at(&f[14..], 16), new.dst);
        assert_eq!(be16(&f[14..], 20), 61001);
    }

    #[test]
    fn rst_answers_a_syn() {
        let mut l3 = vec![0u8; 60];
        l3[0] = 0x45;
        l3[2..4].copy_from_slice(&40u16.to_be_bytes());
        l3[8] = 64;
        l3[9] = PROTO_TCP;
        l3[12..16].copy_from_slice(&[10, 244, 1, 10]);
        l3[16..20].copy_from_slice(&[10, 96, 0, 10]);
        l3[20..22].copy_from_slice(&4000u16.to_be_bytes());
        l3[22..24].copy_from_slice(&80u16.to_be_bytes());
        l3[24..28].copy_from_slice(&1000u32.to_be_bytes());
        l3[32] = 5 << 4;
        l3[33] = TCP_SYN as u8;
        assert_eq!(build_rst(&mut l3, 20), Some(40));
        let ip = Ipv4Packet::new_checked(&l3[..40]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), "10.96.0.10".parse::<Ipv4Addr>().unwrap());
        let tcp = ferroplane_wire::TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(ip.src_addr(), ip.dst_addr()));
        assert_eq!(tcp.src_port(), 80);
        assert_eq!(tcp.dst_port(), 4000);
        assert_eq!(tcp.ack_number(), 1001);
        assert_eq!(tcp.flags() & 0x3f, (TCP_RST | TCP_ACK));
    }
}
