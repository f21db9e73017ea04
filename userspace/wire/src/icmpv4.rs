//! ICMP for IPv4 (RFC 792, RFC 1191 for the next-hop MTU).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Type      |     Code      |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Identifier (echo) / unused  | Sequence (echo) / next-hop MTU|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Data: echo payload, or the offending IP header + 8 bytes  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The view covers the whole ICMP message (the IPv4 payload): the checksum
//! covers every byte of the buffer.

use crate::{checksum, read_u16, read_u32, write_u16, write_u32, Error, Result};

mod field {
    use crate::{Field, Rest};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const SEQ_NO: Field = 6..8;
    pub const UNUSED: Field = 4..8;
    pub const MTU: Field = 6..8;
    pub const DATA: Rest = 8..;
}

/// Length of the ICMP header (type, code, checksum and 4 type-specific bytes).
pub const HEADER_LEN: usize = field::DATA.start;

/// Echo reply message type.
pub const ECHO_REPLY: u8 = 0;
/// Destination unreachable message type.
pub const DEST_UNREACHABLE: u8 = 3;
/// Echo request message type.
pub const ECHO_REQUEST: u8 = 8;
/// Time exceeded message type.
pub const TIME_EXCEEDED: u8 = 11;

/// Destination unreachable code: net unreachable.
pub const CODE_NET_UNREACHABLE: u8 = 0;
/// Destination unreachable code: host unreachable.
pub const CODE_HOST_UNREACHABLE: u8 = 1;
/// Destination unreachable code: protocol unreachable.
pub const CODE_PROTO_UNREACHABLE: u8 = 2;
/// Destination unreachable code: port unreachable.
pub const CODE_PORT_UNREACHABLE: u8 = 3;
/// Destination unreachable code: fragmentation needed and DF set (carries the next-hop MTU).
pub const CODE_FRAG_NEEDED: u8 = 4;
/// Time exceeded code: TTL exceeded in transit.
pub const CODE_TTL_EXCEEDED: u8 = 0;

/// A view of an ICMPv4 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl Icmpv4Packet<&[u8]> {
    /// Length of the header (8).
    pub const HEADER_LEN: usize = HEADER_LEN;
    /// Echo reply type (0).
    pub const ECHO_REPLY: u8 = ECHO_REPLY;
    /// Destination unreachable type (3).
    pub const DEST_UNREACHABLE: u8 = DEST_UNREACHABLE;
    /// Echo request type (8).
    pub const ECHO_REQUEST: u8 = ECHO_REQUEST;
    /// Time exceeded type (11).
    pub const TIME_EXCEEDED: u8 = TIME_EXCEEDED;
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps a buffer without checking it.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Icmpv4Packet<T> {
        Icmpv4Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Icmpv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Err(Truncated)` below 8 bytes.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
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

    /// Message type.
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Message code.
    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum as stored.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier (bytes 4..6).
    #[inline]
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// Echo sequence number (bytes 6..8).
    #[inline]
    pub fn seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SEQ_NO)
    }

    /// The 4 type-specific bytes (4..8) as one number; unused (zero) in most errors.
    #[inline]
    pub fn unused(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::UNUSED)
    }

    /// Next-hop MTU of a "fragmentation needed" message (bytes 6..8).
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::MTU)
    }

    /// Everything after the 8-byte header.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// Same as [`data`](Self::data).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.data()
    }

    /// Whether the checksum over the whole buffer verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    /// Sets the message type.
    #[inline]
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    /// Sets the message code.
    #[inline]
    pub fn set_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    /// Sets the checksum field as given.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Sets the echo identifier.
    #[inline]
    pub fn set_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, value);
    }

    /// Sets the echo sequence number.
    #[inline]
    pub fn set_seq_no(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SEQ_NO, value);
    }

    /// Sets the 4 type-specific bytes.
    #[inline]
    pub fn set_unused(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::UNUSED, value);
    }

    /// For "fragmentation needed": zeroes bytes 4..6 and stores the next-hop MTU in 6..8.
    #[inline]
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        write_u32(self.buffer.as_mut(), field::UNUSED, u32::from(mtu));
    }

    /// Computes and stores the checksum over the whole buffer.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(csum);
    }

    /// Mutable data after the header.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Same as [`data_mut`](Self::data_mut).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.data_mut()
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Icmpv4Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::a5;
    use proptest::prelude::*;

    // Echo request id 0x1234 seq 1 with 8 bytes of data (as `ping -s 8`).
    static ECHO: [u8; 16] = [
        0x08, 0x00, 0x54, 0x35, 0x12, 0x34, 0x00, 0x01, // header
        0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, // "abcdefgh"
    ];

    #[test]
    fn deconstruct() {
        let p = Icmpv4Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!(p.msg_type(), Icmpv4Packet::ECHO_REQUEST);
        assert_eq!(p.code(), 0);
        assert_eq!(p.checksum(), 0x5435);
        assert_eq!(p.ident(), 0x1234);
        assert_eq!(p.seq_no(), 1);
        assert_eq!(p.unused(), 0x1234_0001);
        assert_eq!(p.data(), b"abcdefgh");
        assert_eq!(p.payload(), b"abcdefgh");
        assert!(p.verify_checksum());
        assert_eq!(Icmpv4Packet::HEADER_LEN, 8);
    }

    #[test]
    fn construct() {
        let mut buf = a5(ECHO.len());
        let mut p = Icmpv4Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(ECHO_REQUEST);
        p.set_code(0);
        p.set_ident(0x1234);
        p.set_seq_no(1);
        p.data_mut().copy_from_slice(b"abcdefgh");
        p.fill_checksum();
        assert_eq!(buf, ECHO);
    }

    #[test]
    fn echo_reply_in_place() {
        let mut buf = ECHO;
        let mut p = Icmpv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_msg_type(ECHO_REPLY);
        let csum = checksum::update16(p.checksum(), 0x0800, 0x0000);
        p.set_checksum(csum);
        assert!(p.verify_checksum());
        let incremental = p.checksum();
        p.fill_checksum();
        assert_eq!(p.checksum(), incremental);
    }

    #[test]
    fn frag_needed() {
        let mut buf = a5(8 + 28);
        let mut p = Icmpv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_msg_type(DEST_UNREACHABLE);
        p.set_code(CODE_FRAG_NEEDED);
        p.set_next_hop_mtu(1400);
        p.payload_mut().fill(0);
        p.fill_checksum();
        assert_eq!(buf[..2], [3, 4]);
        assert_eq!(buf[4..8], [0, 0, 0x05, 0x78]);
        let p = Icmpv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.next_hop_mtu(), 1400);
        assert_eq!(p.unused(), 1400);
        assert!(p.verify_checksum());
        let mut q = Icmpv4Packet::new_checked(buf).unwrap();
        q.set_unused(0xdead_beef);
        assert_eq!(q.ident(), 0xdead);
        assert_eq!(q.into_inner()[4..8], [0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn truncated_and_bad_checksum() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Icmpv4Packet::new_checked(&ECHO[..len]),
                Err(Error::Truncated)
            );
        }
        for len in HEADER_LEN..ECHO.len() {
            let p = Icmpv4Packet::new_checked(&ECHO[..len]).unwrap();
            assert_eq!(p.data().len(), len - HEADER_LEN);
            // Cutting the message changes its sum (all data bytes are non-zero).
            assert!(!p.verify_checksum());
        }
        let mut bad = ECHO;
        bad[9] ^= 0x40;
        assert!(!Icmpv4Packet::new_checked(&bad[..])
            .unwrap()
            .verify_checksum());
    }

    proptest! {
        #[test]
        fn fill_then_verify(ty in any::<u8>(), code in any::<u8>(), rest in any::<u32>(),
                            data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = a5(HEADER_LEN + data.len());
            let mut p = Icmpv4Packet::new_checked(&mut buf[..]).unwrap();
            p.set_msg_type(ty);
            p.set_code(code);
            p.set_unused(rest);
            p.data_mut().copy_from_slice(&data);
            p.fill_checksum();
            prop_assert!(p.verify_checksum());
            prop_assert_eq!((p.msg_type(), p.code(), p.unused()), (ty, code, rest));
            prop_assert_eq!(p.data(), &data[..]);
        }
    }
}
