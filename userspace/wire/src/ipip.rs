//! IPv4-in-IPv4 (RFC 2003) and the outer IPv4 header of a tunnel packet.
//!
//! ```text
//! +---------------------------+
//! |      Outer IP header      |  protocol 4 (IPIP), or UDP for VXLAN and WireGuard;
//! +---------------------------+  TOS copied from the inner header, TTL 64, DF clear
//! |      Inner IP header      |
//! +---------------------------+
//! |          Payload          |
//! +---------------------------+
//! ```
//!
//! [`OuterIpv4Repr`] writes the outer header of every encapsulation; [`IpipPacket`]
//! views a received IPIP packet and its inner packet.

use crate::ipv4::{self, IpProtocol, Ipv4Packet};
use crate::{Error, Result};
use core::net::Ipv4Addr;

/// The outer IPv4 header a tunnel endpoint writes in front of what it encapsulates:
/// 20 bytes, no options, identification 0, no flags (DF clear, so the path may
/// fragment the outer packet), the checksum filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OuterIpv4Repr {
    /// Outer source (this tunnel endpoint).
    pub src_addr: Ipv4Addr,
    /// Outer destination (the remote endpoint).
    pub dst_addr: Ipv4Addr,
    /// [`IpProtocol::IPIP`], or [`IpProtocol::UDP`] for VXLAN and WireGuard.
    pub protocol: IpProtocol,
    /// DSCP and ECN (RFC 2003 §3.1: copied from the inner header).
    pub dscp_ecn: u8,
    /// Time to live.
    pub ttl: u8,
    /// Bytes behind the outer header; at most 65 515.
    pub payload_len: usize,
}

impl OuterIpv4Repr {
    /// TTL of outer headers (Linux tunnels use the route's default, 64).
    pub const DEFAULT_TTL: u8 = 64;

    /// Summarises an outer header (lengths as in [`Ipv4Packet::check_len`]; the
    /// checksum is not verified: the receive path did).
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<OuterIpv4Repr> {
        packet.check_len()?;
        Ok(OuterIpv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            dscp_ecn: packet.dscp_ecn(),
            ttl: packet.ttl(),
            payload_len: usize::from(packet.total_len()) - usize::from(packet.header_len()),
        })
    }

    /// Length of the header this emits (20).
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        ipv4::HEADER_LEN
    }

    /// Writes the 20-byte header with its checksum; total length `20 + payload_len`
    /// (saturating at 65 535). `packet` must hold at least 20 bytes.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        packet.set_version_and_header_len(ipv4::HEADER_LEN as u8);
        packet.set_dscp_ecn(self.dscp_ecn);
        let total = ipv4::HEADER_LEN.saturating_add(self.payload_len);
        packet.set_total_len(u16::try_from(total).unwrap_or(u16::MAX));
        packet.set_ident(0);
        packet.clear_flags();
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

/// A received IPIP packet: an outer IPv4 header of protocol 4 and the inner IPv4
/// packet behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipPacket<T: AsRef<[u8]>> {
    outer: Ipv4Packet<T>,
}

impl<T: AsRef<[u8]>> IpipPacket<T> {
    /// Wraps an outer IPv4 packet after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<IpipPacket<T>> {
        let packet = IpipPacket {
            outer: Ipv4Packet::new_checked(buffer)?,
        };
        packet.check_len()?;
        Ok(packet)
    }

    /// The outer header's checks ([`Ipv4Packet::check_len`]), then `Malformed` if its
    /// protocol is not IPIP and `Truncated` if what it carries is shorter than an IPv4
    /// header. The inner header itself is the inner packet's business.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        self.outer.check_len()?;
        if self.outer.protocol() != IpProtocol::IPIP {
            return Err(Error::Malformed);
        }
        if self.outer.payload().len() < ipv4::HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The outer header.
    #[inline]
    pub fn outer(&self) -> &Ipv4Packet<T> {
        &self.outer
    }

    /// Offset of the inner packet from the start of the buffer (the outer header length).
    #[inline]
    pub fn inner_offset(&self) -> usize {
        usize::from(self.outer.header_len())
    }

    /// The inner packet (up to the outer total length).
    #[inline]
    pub fn inner(&self) -> &[u8] {
        self.outer.payload()
    }

    /// Returns the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.outer.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::a5;
    use proptest::prelude::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

    /// 192.168.77.1 -> 192.168.77.2, IPIP, TOS 0x10, carrying a 20-byte inner header.
    static PACKET: [u8; 40] = [
        0x45, 0x10, 0x00, 0x28, // ver/ihl, tos, total 40
        0x00, 0x00, 0x00, 0x00, // ident, flags
        0x40, 0x04, 0x5f, 0x6e, // ttl 64, IPIP, checksum
        192, 168, 77, 1, 192, 168, 77, 2, // outer addresses
        0x45, 0x10, 0x00, 0x14, 0, 0, 0, 0, 0x3f, 0xff, 0, 0, // inner header ...
        10, 244, 1, 5, 10, 244, 2, 7,
    ];

    fn repr() -> OuterIpv4Repr {
        OuterIpv4Repr {
            src_addr: A,
            dst_addr: B,
            protocol: IpProtocol::IPIP,
            dscp_ecn: 0x10,
            ttl: OuterIpv4Repr::DEFAULT_TTL,
            payload_len: 20,
        }
    }

    #[test]
    fn construct() {
        let mut buf = a5(PACKET.len());
        buf[20..].copy_from_slice(&PACKET[20..]);
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        repr().emit(&mut p);
        assert_eq!(buf, PACKET);
        assert!(Ipv4Packet::new_checked(&buf[..]).unwrap().verify_checksum());
        assert_eq!(repr().buffer_len(), 20);
    }

    #[test]
    fn deconstruct() {
        let p = IpipPacket::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.inner_offset(), 20);
        assert_eq!(p.inner(), &PACKET[20..]);
        assert_eq!(p.outer().src_addr(), A);
        assert_eq!(OuterIpv4Repr::parse(p.outer()), Ok(repr()));
        assert_eq!(p.into_inner().len(), 40);
    }

    #[test]
    fn bad_cases() {
        for len in 0..PACKET.len() {
            assert_eq!(
                IpipPacket::new_checked(&PACKET[..len]),
                Err(Error::Truncated),
                "len {len}"
            );
        }
        // An outer packet whose total length leaves less than an inner header.
        let mut buf = PACKET;
        buf[2..4].copy_from_slice(&39u16.to_be_bytes());
        assert_eq!(IpipPacket::new_checked(&buf[..]), Err(Error::Truncated));
        // Not protocol 4.
        let mut buf = PACKET;
        buf[9] = 17;
        assert_eq!(IpipPacket::new_checked(&buf[..]), Err(Error::Malformed));
        // Not IPv4.
        let mut buf = PACKET;
        buf[0] = 0x65;
        assert_eq!(IpipPacket::new_checked(&buf[..]), Err(Error::Malformed));
    }

    #[test]
    fn emit_saturates_the_total_length() {
        let mut buf = a5(20);
        let r = OuterIpv4Repr {
            payload_len: 70_000,
            ..repr()
        };
        r.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[2..4], &[0xff, 0xff]);
    }

    proptest! {
        #[test]
        fn round_trip(s in any::<u32>(), d in any::<u32>(), tos in any::<u8>(), ttl in any::<u8>(),
                      udp in any::<bool>(), inner in proptest::collection::vec(any::<u8>(), 20..64)) {
            let r = OuterIpv4Repr {
                src_addr: Ipv4Addr::from(s),
                dst_addr: Ipv4Addr::from(d),
                protocol: if udp { IpProtocol::UDP } else { IpProtocol::IPIP },
                dscp_ecn: tos,
                ttl,
                payload_len: inner.len(),
            };
            let mut buf = a5(20 + inner.len());
            buf[20..].copy_from_slice(&inner);
            r.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
            let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(p.verify_checksum());
            prop_assert_eq!(OuterIpv4Repr::parse(&p), Ok(r));
            let ipip = IpipPacket::new_checked(&buf[..]);
            if udp {
                prop_assert_eq!(ipip, Err(Error::Malformed));
            } else {
                let ipip = ipip.unwrap();
                prop_assert_eq!(ipip.inner(), &inner[..]);
            }
        }

        #[test]
        fn any_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = IpipPacket::new_checked(&data[..]) {
                let _ = (p.inner(), p.inner_offset(), OuterIpv4Repr::parse(p.outer()));
            }
        }
    }
}
