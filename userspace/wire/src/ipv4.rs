//! IPv4 headers (RFC 791).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version|  IHL  |   DSCP/ECN    |          Total Length         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Identification        |Flags|      Fragment Offset    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Time to Live |    Protocol   |         Header Checksum       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       Source Address                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Destination Address                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Options                    |    Padding    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use crate::{
    checksum, clamped, clamped_mut, read_ipv4, read_u16, write_ipv4, write_u16, Error, Result,
};
use core::fmt;
use core::net::Ipv4Addr;

/// The protocol field of an IPv4 header (next header).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    /// Internet Control Message Protocol.
    pub const ICMP: IpProtocol = IpProtocol(1);
    /// IPv4 in IPv4 encapsulation.
    pub const IPIP: IpProtocol = IpProtocol(4);
    /// Transmission Control Protocol.
    pub const TCP: IpProtocol = IpProtocol(6);
    /// User Datagram Protocol.
    pub const UDP: IpProtocol = IpProtocol(17);
}

impl From<u8> for IpProtocol {
    #[inline]
    fn from(v: u8) -> Self {
        IpProtocol(v)
    }
}

impl From<IpProtocol> for u8 {
    #[inline]
    fn from(v: IpProtocol) -> Self {
        v.0
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IpProtocol::ICMP => f.write_str("ICMP"),
            IpProtocol::IPIP => f.write_str("IPIP"),
            IpProtocol::TCP => f.write_str("TCP"),
            IpProtocol::UDP => f.write_str("UDP"),
            IpProtocol(other) => write!(f, "{other}"),
        }
    }
}

mod field {
    use crate::Field;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
///
/// [`new_checked`](Self::new_checked) guarantees `len >= 20`, version 4,
/// `20 <= header_len <= total_len <= len` (the buffer may carry trailing
/// padding, e.g. from a minimum-size Ethernet frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl Ipv4Packet<&[u8]> {
    /// Length of a header without options (20).
    pub const HEADER_LEN: usize = HEADER_LEN;
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it; getters may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Ipv4Packet<T> {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validates the buffer: `Truncated` if shorter than 20 bytes, the header
    /// length or the total length; `Malformed` if the version is not 4, the IHL
    /// is below 5 or the total length is below the header length.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        let len = data.len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if data[field::VER_IHL] >> 4 != 4 {
            return Err(Error::Malformed);
        }
        let header_len = usize::from(data[field::VER_IHL] & 0x0f) * 4;
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if header_len > len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(read_u16(data, field::LENGTH));
        if total_len < header_len {
            return Err(Error::Malformed);
        }
        if total_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (4 after `new_checked`).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4).
    #[inline]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// DSCP and ECN byte (formerly type of service).
    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Total length (header and payload) in bytes.
    #[inline]
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// Don't Fragment flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    /// More Fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field's 8-byte units times 8).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLG_OFF) & FRAG_OFFSET_MASK) << 3
    }

    /// Whether this is a fragment (MF set or a non-zero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    #[inline]
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// Header checksum as stored.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SRC_ADDR)
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::DST_ADDR)
    }

    /// The header bytes (including options), clamped to the buffer.
    #[inline]
    pub fn header(&self) -> &[u8] {
        clamped(self.buffer.as_ref(), 0, usize::from(self.header_len()))
    }

    /// Options bytes (between byte 20 and the header length).
    #[inline]
    pub fn options(&self) -> &[u8] {
        clamped(
            self.buffer.as_ref(),
            HEADER_LEN,
            usize::from(self.header_len()),
        )
    }

    /// Whether the header checksum verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.header())) == 0xffff
    }

    /// The payload: bytes from the header length up to the total length
    /// (trailing padding excluded). Never panics, even after setters changed
    /// the lengths: it is clamped to the buffer.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        clamped(
            self.buffer.as_ref(),
            usize::from(self.header_len()),
            usize::from(self.total_len()),
        )
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the version to 4 and the header length in bytes (a multiple of 4
    /// from 20 to 60; other values are rounded down and taken modulo 64).
    #[inline]
    pub fn set_version_and_header_len(&mut self, header_len: u8) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) & 0x0f);
    }

    /// Sets the DSCP and ECN byte.
    #[inline]
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    /// Sets the total length.
    #[inline]
    pub fn set_total_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, value);
    }

    /// Sets the identification.
    #[inline]
    pub fn set_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, value);
    }

    #[inline]
    fn set_flg_off(&mut self, mask: u16, bits: u16) {
        let old = read_u16(self.buffer.as_ref(), field::FLG_OFF);
        write_u16(self.buffer.as_mut(), field::FLG_OFF, (old & !mask) | bits);
    }

    /// Sets the Don't Fragment flag.
    #[inline]
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flg_off(FLAG_DF, if value { FLAG_DF } else { 0 });
    }

    /// Sets the More Fragments flag.
    #[inline]
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flg_off(FLAG_MF, if value { FLAG_MF } else { 0 });
    }

    /// Sets the fragment offset in bytes (must be a multiple of 8; the low bits are dropped).
    #[inline]
    pub fn set_frag_offset(&mut self, value: u16) {
        self.set_flg_off(FRAG_OFFSET_MASK, value >> 3);
    }

    /// Clears the reserved bit, DF, MF and the fragment offset.
    #[inline]
    pub fn clear_flags(&mut self) {
        write_u16(self.buffer.as_mut(), field::FLG_OFF, 0);
    }

    /// Sets the time to live (checksum not updated; see [`decrement_ttl`](Self::decrement_ttl)).
    #[inline]
    pub fn set_ttl(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    /// Sets the protocol.
    #[inline]
    pub fn set_protocol(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = value.0;
    }

    /// Sets the checksum field as given.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        write_ipv4(self.buffer.as_mut(), field::SRC_ADDR, value);
    }

    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        write_ipv4(self.buffer.as_mut(), field::DST_ADDR, value);
    }

    /// Computes and stores the header checksum over the header length.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = checksum::checksum(self.header());
        self.set_checksum(csum);
    }

    /// Decrements the TTL by one and updates the checksum incrementally
    /// (RFC 1624), as a forwarder does. A TTL of 0 is left unchanged: callers
    /// check `ttl() <= 1` (and send Time Exceeded) before forwarding.
    #[inline]
    pub fn decrement_ttl(&mut self) {
        let data = self.buffer.as_ref();
        let ttl = data[field::TTL];
        if ttl == 0 {
            return;
        }
        let proto = data[field::PROTOCOL];
        let old = u16::from_be_bytes([ttl, proto]);
        let new = u16::from_be_bytes([ttl - 1, proto]);
        let csum = checksum::update16(self.checksum(), old, new);
        self.set_ttl(ttl - 1);
        self.set_checksum(csum);
    }

    /// Mutable payload, clamped like [`payload`](Self::payload).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = usize::from(self.header_len());
        let end = usize::from(self.total_len());
        clamped_mut(self.buffer.as_mut(), start, end)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Ipv4Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The validated summary of an IPv4 header. Options are skipped by
/// [`parse`](Self::parse) and never emitted; fragmentation fields are not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: IpProtocol,
    /// Payload length in bytes (total length minus header length); at most 65 515.
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
}

impl Ipv4Repr {
    /// Largest payload an IPv4 header without options can describe.
    pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize - HEADER_LEN;

    /// Validates `packet` (lengths as in [`Ipv4Packet::check_len`], then the
    /// checksum: `Err(Checksum)`) and summarises it.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Ipv4Repr> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - usize::from(packet.header_len()),
            ttl: packet.ttl(),
        })
    }

    /// Length of the header this emits (20).
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header: version 4, IHL 5, DSCP/ECN 0, total length
    /// `20 + payload_len` (saturating at 65 535), ident 0, no flags (DF=0), no
    /// fragment offset, then the checksum. A caller that wants another ident or
    /// DF sets them afterwards and calls [`Ipv4Packet::fill_checksum`] again.
    /// `packet` must hold at least 20 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        packet.set_version_and_header_len(HEADER_LEN as u8);
        packet.set_dscp_ecn(0);
        let total = HEADER_LEN.saturating_add(self.payload_len);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::a5;
    use proptest::prelude::*;

    // UDP datagram 10.0.0.1:1234 -> 10.0.0.2:53 with payload "ping", DF set, ttl 64.
    static PACKET: [u8; 32] = [
        0x45, 0x00, 0x00, 0x20, // ver/ihl, dscp, total len 32
        0x12, 0x34, 0x40, 0x00, // ident, DF
        0x40, 0x11, 0x14, 0x97, // ttl 64, UDP, checksum
        0x0a, 0x00, 0x00, 0x01, // src
        0x0a, 0x00, 0x00, 0x02, // dst
        0x04, 0xd2, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, // UDP header (no checksum)
        b'p', b'i', b'n', b'g',
    ];

    fn repr() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 1),
            dst_addr: Ipv4Addr::new(10, 0, 0, 2),
            protocol: IpProtocol::UDP,
            payload_len: 12,
            ttl: 64,
        }
    }

    #[test]
    fn deconstruct() {
        let p = Ipv4Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp_ecn(), 0);
        assert_eq!(p.total_len(), 32);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), IpProtocol::UDP);
        assert_eq!(p.checksum(), 0x1497);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &PACKET[20..]);
        assert_eq!(p.options(), &[] as &[u8]);
        assert_eq!(Ipv4Packet::HEADER_LEN, 20);
    }

    #[test]
    fn construct() {
        let mut buf = a5(PACKET.len());
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_header_len(20);
        p.set_dscp_ecn(0);
        p.set_total_len(32);
        p.set_ident(0x1234);
        p.clear_flags();
        p.set_dont_frag(true);
        p.set_more_frags(false);
        p.set_frag_offset(0);
        p.set_ttl(64);
        p.set_protocol(IpProtocol::UDP);
        p.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        p.fill_checksum();
        p.payload_mut().copy_from_slice(&PACKET[20..]);
        assert_eq!(buf, PACKET);
    }

    #[test]
    fn fragment_fields() {
        let mut buf = PACKET;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_more_frags(true);
        p.set_frag_offset(1480);
        assert!(p.dont_frag() && p.more_frags() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        p.set_dont_frag(false);
        p.set_more_frags(false);
        assert!(!p.dont_frag() && !p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.is_fragment());
    }

    #[test]
    fn repr_parse_emit() {
        let p = Ipv4Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p), Ok(repr()));
        let mut buf = a5(PACKET.len());
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        repr().emit(&mut p);
        p.payload_mut().copy_from_slice(&PACKET[20..]);
        // Same as PACKET except ident 0 and no DF, so a different checksum.
        let mut expected = PACKET;
        expected[4..8].copy_from_slice(&[0, 0, 0, 0]);
        expected[10..12].copy_from_slice(&0x66cbu16.to_be_bytes());
        assert_eq!(buf, expected);
        assert_eq!(repr().buffer_len(), 20);
    }

    #[test]
    fn options_and_padding() {
        // IHL 6 with a 4-byte NOP/EOL option, 2 bytes of payload, 4 bytes of padding.
        let mut buf = [0u8; 30];
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_header_len(24);
        p.set_total_len(26);
        p.set_ttl(1);
        p.set_protocol(IpProtocol(253));
        p.set_src_addr(Ipv4Addr::new(192, 0, 2, 1));
        p.set_dst_addr(Ipv4Addr::new(192, 0, 2, 2));
        buf[20..24].copy_from_slice(&[1, 1, 1, 0]);
        buf[24..26].copy_from_slice(&[0xbe, 0xef]);
        buf[26..30].copy_from_slice(&[0xee; 4]);
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), &[0xbe, 0xef]);
        let repr = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(repr.payload_len, 2);
        p.decrement_ttl();
        assert_eq!(p.ttl(), 0);
        assert!(p.verify_checksum());
        p.decrement_ttl();
        assert_eq!(p.ttl(), 0);
        assert!(p.verify_checksum());
    }

    #[test]
    fn bad_cases() {
        let check = |f: &dyn Fn(&mut [u8]), err| {
            let mut buf = PACKET;
            f(&mut buf);
            assert_eq!(Ipv4Packet::new_checked(&buf[..]), Err(err));
            assert_eq!(
                Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&buf[..])),
                Err(err)
            );
        };
        check(&|b| b[0] = 0x65, Error::Malformed); // version 6
        check(&|b| b[0] = 0x05, Error::Malformed); // version 0
        check(&|b| b[0] = 0x44, Error::Malformed); // IHL 4
        check(&|b| b[0] = 0x40, Error::Malformed); // IHL 0
        check(&|b| b[0] = 0x49, Error::Truncated); // IHL 9 = 36 bytes > 32
        check(&|b| b[0] = 0x4f, Error::Truncated); // IHL 15
        check(
            &|b| b[2..4].copy_from_slice(&33u16.to_be_bytes()),
            Error::Truncated,
        );
        check(
            &|b| b[2..4].copy_from_slice(&0xffffu16.to_be_bytes()),
            Error::Truncated,
        );
        check(
            &|b| b[2..4].copy_from_slice(&19u16.to_be_bytes()),
            Error::Malformed,
        );
        check(
            &|b| b[2..4].copy_from_slice(&0u16.to_be_bytes()),
            Error::Malformed,
        );
    }

    #[test]
    fn bad_checksum_and_ihl7() {
        let mut buf = PACKET;
        buf[0] = 0x47;
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.payload().len(), 4);
        assert_eq!(Ipv4Repr::parse(&p), Err(Error::Checksum));
        let mut buf = PACKET;
        buf[15] ^= 1;
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert!(!p.verify_checksum());
        assert_eq!(Ipv4Repr::parse(&p), Err(Error::Checksum));
    }

    #[test]
    fn trailing_padding_allowed() {
        let mut buf = [0u8; 46];
        buf[..32].copy_from_slice(&PACKET);
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload(), &PACKET[20..]);
        assert_eq!(Ipv4Repr::parse(&p), Ok(repr()));
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..PACKET.len() {
            let r = Ipv4Packet::new_checked(&PACKET[..len]);
            assert_eq!(r, Err(Error::Truncated), "len {len}");
            assert_eq!(
                Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&PACKET[..len])),
                Err(Error::Truncated)
            );
        }
    }

    #[test]
    fn payload_clamped_after_setters() {
        let mut buf = PACKET;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_total_len(0xffff);
        assert_eq!(p.payload().len(), 12);
        p.set_version_and_header_len(60);
        assert_eq!(p.payload(), &[] as &[u8]);
        assert_eq!(p.payload_mut().len(), 0);
        assert_eq!(p.header().len(), 32);
        p.set_total_len(10);
        assert_eq!(p.payload(), &[] as &[u8]);
        let _ = p.verify_checksum();
    }

    #[test]
    fn protocol_display() {
        assert_eq!(IpProtocol::TCP.to_string(), "TCP");
        assert_eq!(IpProtocol(99).to_string(), "99");
        assert_eq!(u8::from(IpProtocol::UDP), 17);
    }

    fn arb_header() -> impl Strategy<Value = [u8; 20]> {
        any::<[u8; 20]>().prop_map(|mut h| {
            h[0] = 0x45;
            h
        })
    }

    fn arb_repr() -> impl Strategy<Value = Ipv4Repr> {
        (
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            0usize..=Ipv4Repr::MAX_PAYLOAD_LEN,
            any::<u8>(),
        )
            .prop_map(|(s, d, p, len, ttl)| Ipv4Repr {
                src_addr: Ipv4Addr::from(s),
                dst_addr: Ipv4Addr::from(d),
                protocol: IpProtocol(p),
                payload_len: len,
                ttl,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn decrement_ttl_matches_full_recompute(h in arb_header(), opts in any::<[u8; 40]>(), ihl in 5u8..=15) {
            let hl = usize::from(ihl) * 4;
            let mut buf = [0u8; 60];
            buf[..20].copy_from_slice(&h);
            buf[20..].copy_from_slice(&opts);
            buf[0] = 0x40 | ihl;
            buf[2..4].copy_from_slice(&(hl as u16).to_be_bytes());
            let mut p = Ipv4Packet::new_checked(&mut buf[..hl]).unwrap();
            p.fill_checksum();
            let ttl = p.ttl();
            p.decrement_ttl();
            prop_assert_eq!(p.ttl(), ttl.saturating_sub(1));
            let incremental = p.checksum();
            p.fill_checksum();
            prop_assert_eq!(incremental, p.checksum());
            prop_assert!(p.verify_checksum());
        }

        #[test]
        fn decrement_ttl_keeps_arbitrary_stored_checksum_consistent(h in arb_header()) {
            // Even when the stored checksum is wrong the update is exact: it keeps
            // the header's sum, so a bad header stays bad and a good one good.
            let mut buf = h;
            buf[2..4].copy_from_slice(&20u16.to_be_bytes());
            let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
            let before = p.verify_checksum();
            let sum_before = checksum::fold(checksum::sum(p.header()));
            p.decrement_ttl();
            prop_assert_eq!(p.verify_checksum(), before);
            prop_assert_eq!(checksum::fold(checksum::sum(p.header())), sum_before);
        }

        #[test]
        fn repr_roundtrip(repr in arb_repr()) {
            let mut buf = a5(repr.buffer_len() + 8);
            buf[..2].copy_from_slice(&[0, 0]);
            let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
            repr.emit(&mut p);
            prop_assert!(p.verify_checksum());
            prop_assert!(!p.dont_frag());
            prop_assert_eq!(p.ident(), 0);
            // The buffer is shorter than total_len for most lengths, so parse the
            // header through a buffer of the full size only when it fits.
            let total = usize::from(p.total_len());
            let mut big = vec![0u8; total];
            big[..20].copy_from_slice(&buf[..20]);
            let parsed = Ipv4Repr::parse(&Ipv4Packet::new_checked(&big[..]).unwrap()).unwrap();
            prop_assert_eq!(parsed, repr);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Ipv4Packet::new_checked(&data[..]) {
                let _ = (p.version(), p.header_len(), p.total_len(), p.payload(), p.options());
                prop_assert!(usize::from(p.header_len()) <= usize::from(p.total_len()));
                prop_assert!(usize::from(p.total_len()) <= data.len());
                let _ = Ipv4Repr::parse(&p);
            }
        }
    }
}
