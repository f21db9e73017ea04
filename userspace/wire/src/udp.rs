//! UDP datagrams (RFC 768).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Source Port          |       Destination Port        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |            Length             |           Checksum            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          Payload ...                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! A checksum of `0` means "none" over IPv4; a computed `0` is sent as `0xffff`.

use crate::ipv4::IpProtocol;
use crate::{checksum, clamped, clamped_mut, read_u16, write_u16, Error, Result};
use core::net::Ipv4Addr;

mod field {
    use crate::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view of a UDP datagram.
///
/// [`new_checked`](Self::new_checked) guarantees `8 <= len field <= buffer
/// length`; bytes beyond the length field (padding) are not part of the
/// payload nor of the checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl UdpPacket<&[u8]> {
    /// Length of the header (8).
    pub const HEADER_LEN: usize = HEADER_LEN;
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer without checking it.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> UdpPacket<T> {
        UdpPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<UdpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer is shorter than 8 bytes or than the length
    /// field; `Malformed` if the length field is below 8.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(read_u16(data, field::LENGTH));
        if len < HEADER_LEN {
            Err(Error::Malformed)
        } else if len > data.len() {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Returns the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Length field (header and payload).
    #[inline]
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Whether the length field says there is no payload.
    #[inline]
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// Checksum as stored (0 = none).
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Payload: bytes 8 up to the length field, clamped to the buffer.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        clamped(self.buffer.as_ref(), HEADER_LEN, usize::from(self.len()))
    }

    /// Raw sum of the pseudo-header and the datagram (up to the length field).
    #[inline]
    fn raw_sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let len = self.len();
        let data = clamped(self.buffer.as_ref(), 0, usize::from(len));
        checksum::pseudo_header_v4(src, dst, IpProtocol::UDP, len) + checksum::sum(data)
    }

    /// Whether the checksum verifies for the given IPv4 addresses; a zero
    /// checksum (none) is accepted.
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || checksum::fold(self.raw_sum(src, dst)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port.
    #[inline]
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, value);
    }

    /// Sets the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, value);
    }

    /// Sets the length field.
    #[inline]
    pub fn set_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, value);
    }

    /// Sets the checksum field as given.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Computes and stores the checksum (a computed 0 is stored as 0xffff).
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let csum = !checksum::fold(self.raw_sum(src, dst));
        self.set_checksum(if csum == 0 { 0xffff } else { csum });
    }

    /// Mutable payload, clamped like [`payload`](Self::payload).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.len());
        clamped_mut(self.buffer.as_mut(), HEADER_LEN, len)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for UdpPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::a5;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    // 10.0.0.1:1234 -> 10.0.0.2:53, payload "ping".
    static DATAGRAM: [u8; 12] = [
        0x04, 0xd2, 0x00, 0x35, 0x00, 0x0c, 0x07, 0xfc, b'p', b'i', b'n', b'g',
    ];

    #[test]
    fn deconstruct() {
        let p = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(p.src_port(), 1234);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 12);
        assert!(!p.is_empty());
        assert_eq!(p.checksum(), 0x07fc);
        assert_eq!(p.payload(), b"ping");
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(DST, Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(UdpPacket::HEADER_LEN, 8);
    }

    #[test]
    fn construct() {
        let mut buf = a5(DATAGRAM.len());
        let mut p = UdpPacket::new_unchecked(&mut buf[..]);
        p.set_src_port(1234);
        p.set_dst_port(53);
        p.set_len(12);
        p.payload_mut().copy_from_slice(b"ping");
        p.fill_checksum(SRC, DST);
        assert_eq!(buf, DATAGRAM);
    }

    #[test]
    fn zero_checksum_means_none() {
        let mut buf = DATAGRAM;
        buf[6..8].copy_from_slice(&[0, 0]);
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST));
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Find a source port that makes the checksum compute to 0.
        let mut buf = DATAGRAM;
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_src_port(0);
        p.set_checksum(0);
        let needed = checksum::fold(p.raw_sum(SRC, DST));
        // Adding !needed to the sum makes it 0xffff, so the checksum computes to 0.
        p.set_src_port(!needed);
        p.fill_checksum(SRC, DST);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(SRC, DST));
    }

    #[test]
    fn bad_cases() {
        for len in 0..DATAGRAM.len() {
            assert_eq!(
                UdpPacket::new_checked(&DATAGRAM[..len]),
                Err(Error::Truncated)
            );
        }
        for l in 0..8u16 {
            let mut buf = DATAGRAM;
            buf[4..6].copy_from_slice(&l.to_be_bytes());
            assert_eq!(UdpPacket::new_checked(&buf[..]), Err(Error::Malformed));
        }
        let mut buf = DATAGRAM;
        buf[4..6].copy_from_slice(&13u16.to_be_bytes());
        assert_eq!(UdpPacket::new_checked(&buf[..]), Err(Error::Truncated));
        let mut bad = DATAGRAM;
        bad[11] ^= 1;
        assert!(!UdpPacket::new_checked(&bad[..])
            .unwrap()
            .verify_checksum(SRC, DST));
    }

    #[test]
    fn padding_excluded() {
        let mut buf = [0u8; 18];
        buf[..12].copy_from_slice(&DATAGRAM);
        buf[12..].fill(0x77);
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload(), b"ping");
        assert!(p.verify_checksum(SRC, DST));
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_len(0xffff);
        assert_eq!(p.payload().len(), 10);
        assert_eq!(p.payload_mut().len(), 10);
        let _ = p.verify_checksum(SRC, DST);
        p.set_len(2);
        assert_eq!(p.payload(), &[] as &[u8]);
        assert!(p.is_empty());
    }

    proptest! {
        #[test]
        fn fill_then_verify(s in any::<u32>(), d in any::<u32>(), sp in any::<u16>(), dp in any::<u16>(),
                            data in proptest::collection::vec(any::<u8>(), 0..64), pad in 0usize..8) {
            let (src, dst) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
            let mut buf = a5(HEADER_LEN + data.len() + pad);
            let mut p = UdpPacket::new_unchecked(&mut buf[..]);
            p.set_src_port(sp);
            p.set_dst_port(dp);
            p.set_len((HEADER_LEN + data.len()) as u16);
            p.payload_mut().copy_from_slice(&data);
            p.fill_checksum(src, dst);
            let p = UdpPacket::new_checked(&buf[..]).unwrap();
            prop_assert_ne!(p.checksum(), 0);
            prop_assert!(p.verify_checksum(src, dst));
            prop_assert_eq!((p.src_port(), p.dst_port()), (sp, dp));
            prop_assert_eq!(p.payload(), &data[..]);
        }

        #[test]
        fn port_rewrite_incremental(sp in any::<u16>(), new in any::<u16>(),
                                    data in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut buf = a5(HEADER_LEN + data.len());
            let mut p = UdpPacket::new_unchecked(&mut buf[..]);
            p.set_src_port(sp);
            p.set_dst_port(53);
            p.set_len((HEADER_LEN + data.len()) as u16);
            p.payload_mut().copy_from_slice(&data);
            p.fill_checksum(SRC, DST);
            let c = checksum::update16(p.checksum(), sp, new);
            p.set_src_port(new);
            p.set_checksum(c);
            prop_assert!(p.verify_checksum(SRC, DST));
        }
    }
}
