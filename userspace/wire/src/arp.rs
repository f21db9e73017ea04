//! ARP for Ethernet and IPv4 (RFC 826).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Hardware type (1)         |     Protocol type (0x0800)    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  HW len (6)   | Proto len (4) |           Operation           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Sender hardware address (6)                   |
//! +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                               | Sender protocol address (4)   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
//! |                               |                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
//! |                 Target hardware address (6)                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Target protocol address (4)                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use crate::ethernet::{EtherType, EthernetAddress};
use crate::{read_ipv4, read_u16, write_ipv4, write_u16, Error, Result};
use core::net::Ipv4Addr;

mod field {
    use crate::Field;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = field::TPA.end;
/// ARP request operation code.
pub const REQUEST: u16 = 1;
/// ARP reply operation code.
pub const REPLY: u16 = 2;
/// Hardware type of Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;

/// A view of an ARP packet for Ethernet and IPv4.
///
/// [`new_checked`](Self::new_checked) rejects buffers shorter than 28 bytes
/// (`Truncated`) and any other hardware or protocol type or address length
/// (`Malformed`). Trailing bytes (Ethernet padding) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl ArpPacket<&[u8]> {
    /// Length of an Ethernet/IPv4 ARP packet (28).
    pub const LEN: usize = LEN;
    /// Same as [`LEN`](Self::LEN).
    pub const HEADER_LEN: usize = LEN;
    /// Request operation code (1).
    pub const REQUEST: u16 = REQUEST;
    /// Reply operation code (2).
    pub const REPLY: u16 = REPLY;
}

fn read_mac(data: &[u8], field: crate::Field) -> EthernetAddress {
    let d = &data[field];
    EthernetAddress([d[0], d[1], d[2], d[3], d[4], d[5]])
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps a buffer without checking it.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> ArpPacket<T> {
        ArpPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<ArpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` below 28 bytes; `Malformed` unless the fixed header says
    /// Ethernet (1), IPv4 (0x0800), 6 and 4.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < LEN {
            return Err(Error::Truncated);
        }
        if read_u16(data, field::HTYPE) != HTYPE_ETHERNET
            || read_u16(data, field::PTYPE) != EtherType::IPV4.0
            || data[field::HLEN] != 6
            || data[field::PLEN] != 4
        {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type (1 after `new_checked`).
    #[inline]
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE)
    }

    /// Protocol type (0x0800 after `new_checked`).
    #[inline]
    pub fn protocol_type(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::PTYPE))
    }

    /// Hardware address length (6 after `new_checked`).
    #[inline]
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Protocol address length (4 after `new_checked`).
    #[inline]
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// Operation: [`REQUEST`] (1), [`REPLY`] (2) or another value.
    #[inline]
    pub fn operation(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OPER)
    }

    /// Sender hardware address.
    #[inline]
    pub fn sender_hw_addr(&self) -> EthernetAddress {
        read_mac(self.buffer.as_ref(), field::SHA)
    }

    /// Sender protocol address.
    #[inline]
    pub fn sender_proto_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SPA)
    }

    /// Target hardware address.
    #[inline]
    pub fn target_hw_addr(&self) -> EthernetAddress {
        read_mac(self.buffer.as_ref(), field::THA)
    }

    /// Target protocol address.
    #[inline]
    pub fn target_proto_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Writes hardware type 1, protocol type 0x0800, lengths 6 and 4.
    #[inline]
    pub fn set_fixed_header(&mut self) {
        let data = self.buffer.as_mut();
        write_u16(data, field::HTYPE, HTYPE_ETHERNET);
        write_u16(data, field::PTYPE, EtherType::IPV4.0);
        data[field::HLEN] = 6;
        data[field::PLEN] = 4;
    }

    /// Sets the operation.
    #[inline]
    pub fn set_operation(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::OPER, value);
    }

    /// Sets the sender hardware address.
    #[inline]
    pub fn set_sender_hw_addr(&mut self, value: EthernetAddress) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&value.0);
    }

    /// Sets the sender protocol address.
    #[inline]
    pub fn set_sender_proto_addr(&mut self, value: Ipv4Addr) {
        write_ipv4(self.buffer.as_mut(), field::SPA, value);
    }

    /// Sets the target hardware address.
    #[inline]
    pub fn set_target_hw_addr(&mut self, value: EthernetAddress) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&value.0);
    }

    /// Sets the target protocol address.
    #[inline]
    pub fn set_target_proto_addr(&mut self, value: Ipv4Addr) {
        write_ipv4(self.buffer.as_mut(), field::TPA, value);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for ArpPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The validated content of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    /// Operation ([`REQUEST`], [`REPLY`], ...).
    pub operation: u16,
    /// Sender hardware address.
    pub sender_hw: EthernetAddress,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address (zero in a request).
    pub target_hw: EthernetAddress,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Validates `packet` as in [`ArpPacket::check_len`] and summarises it.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<ArpRepr> {
        packet.check_len()?;
        Ok(ArpRepr {
            operation: packet.operation(),
            sender_hw: packet.sender_hw_addr(),
            sender_ip: packet.sender_proto_addr(),
            target_hw: packet.target_hw_addr(),
            target_ip: packet.target_proto_addr(),
        })
    }

    /// Length of the packet this emits (28).
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        LEN
    }

    /// Writes the whole packet, fixed header included; `packet` must hold 28 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_fixed_header();
        packet.set_operation(self.operation);
        packet.set_sender_hw_addr(self.sender_hw);
        packet.set_sender_proto_addr(self.sender_ip);
        packet.set_target_hw_addr(self.target_hw);
        packet.set_target_proto_addr(self.target_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::a5;
    use proptest::prelude::*;

    // who-has 10.0.0.2 tell 10.0.0.1 (from 02:00:00:00:00:01).
    static REQUEST_BYTES: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // fixed, request
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x01, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02, // target
    ];

    fn repr() -> ArpRepr {
        ArpRepr {
            operation: ArpPacket::REQUEST,
            sender_hw: EthernetAddress([2, 0, 0, 0, 0, 1]),
            sender_ip: Ipv4Addr::new(10, 0, 0, 1),
            target_hw: EthernetAddress::UNSPECIFIED,
            target_ip: Ipv4Addr::new(10, 0, 0, 2),
        }
    }

    #[test]
    fn deconstruct() {
        let p = ArpPacket::new_checked(&REQUEST_BYTES[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), EtherType::IPV4);
        assert_eq!((p.hardware_len(), p.protocol_len()), (6, 4));
        assert_eq!(p.operation(), ArpPacket::REQUEST);
        assert_eq!(p.sender_hw_addr(), EthernetAddress([2, 0, 0, 0, 0, 1]));
        assert_eq!(p.sender_proto_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.target_hw_addr(), EthernetAddress::UNSPECIFIED);
        assert_eq!(p.target_proto_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!((ArpPacket::LEN, ArpPacket::REPLY), (28, 2));
    }

    #[test]
    fn construct() {
        let mut buf = a5(LEN);
        let mut p = ArpPacket::new_unchecked(&mut buf[..]);
        p.set_fixed_header();
        p.set_operation(REQUEST);
        p.set_sender_hw_addr(EthernetAddress([2, 0, 0, 0, 0, 1]));
        p.set_sender_proto_addr(Ipv4Addr::new(10, 0, 0, 1));
        p.set_target_hw_addr(EthernetAddress::UNSPECIFIED);
        p.set_target_proto_addr(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(buf, REQUEST_BYTES);
    }

    #[test]
    fn repr_parse_emit() {
        let p = ArpPacket::new_checked(&REQUEST_BYTES[..]).unwrap();
        assert_eq!(ArpRepr::parse(&p), Ok(repr()));
        let mut buf = a5(repr().buffer_len());
        repr().emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, REQUEST_BYTES);
    }

    #[test]
    fn padded_frame_accepted() {
        let mut buf = [0u8; 46];
        buf[..28].copy_from_slice(&REQUEST_BYTES);
        assert_eq!(
            ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()),
            Ok(repr())
        );
    }

    #[test]
    fn bad_cases() {
        for (at, value) in [(1, 6u8), (0, 1), (2, 0x86), (3, 0xdd), (4, 8), (5, 16)] {
            let mut buf = REQUEST_BYTES;
            buf[at] = value;
            assert_eq!(ArpPacket::new_checked(&buf[..]), Err(Error::Malformed));
            assert_eq!(
                ArpRepr::parse(&ArpPacket::new_unchecked(&buf[..])),
                Err(Error::Malformed)
            );
        }
        for len in 0..LEN {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST_BYTES[..len]),
                Err(Error::Truncated)
            );
            assert_eq!(
                ArpRepr::parse(&ArpPacket::new_unchecked(&REQUEST_BYTES[..len])),
                Err(Error::Truncated)
            );
        }
    }

    proptest! {
        #[test]
        fn repr_roundtrip(op in any::<u16>(), sh in any::<[u8; 6]>(), si in any::<u32>(),
                          th in any::<[u8; 6]>(), ti in any::<u32>()) {
            let repr = ArpRepr {
                operation: op,
                sender_hw: EthernetAddress(sh),
                sender_ip: Ipv4Addr::from(si),
                target_hw: EthernetAddress(th),
                target_ip: Ipv4Addr::from(ti),
            };
            let mut buf = a5(repr.buffer_len());
            repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
            prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = ArpRepr::parse(&ArpPacket::new_unchecked(&data[..]));
        }
    }
}
