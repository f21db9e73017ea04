//! VXLAN headers (RFC 7348 §5), as Linux and flannel send them over UDP port 4789.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|                   Reserved                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          VXLAN Network Identifier (VNI)       |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  Inner Ethernet frame ...                     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The I flag says the VNI is valid; receivers ignore the reserved bits (RFC 7348),
//! senders write them as zero.

use crate::{Error, Result};

mod field {
    use crate::{Field, Rest};
    pub const FLAGS: usize = 0;
    pub const RESERVED0: Field = 1..4;
    pub const VNI: Field = 4..7;
    pub const RESERVED1: usize = 7;
    pub const PAYLOAD: Rest = 8..;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;
/// The I flag: the VNI field is valid.
pub const FLAG_VNI: u8 = 0x08;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// The IANA UDP port of VXLAN.
pub const PORT: u16 = 4789;

/// A VXLAN header and the inner Ethernet frame behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl VxlanPacket<&[u8]> {
    /// Length of the VXLAN header.
    pub const HEADER_LEN: usize = HEADER_LEN;
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps a buffer without checking it; getters may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> VxlanPacket<T> {
        VxlanPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<VxlanPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer is shorter than the 8-byte header.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag is set (the VNI is valid).
    #[inline]
    pub fn has_vni(&self) -> bool {
        self.flags() & FLAG_VNI != 0
    }

    /// The VXLAN network identifier (24 bits).
    #[inline]
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the VNI (its low 24 bits).
    #[inline]
    pub fn set_vni(&mut self, value: u32) {
        let b = value.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..4]);
    }

    /// Zeroes both reserved fields.
    #[inline]
    pub fn clear_reserved(&mut self) {
        let data = self.buffer.as_mut();
        data[field::RESERVED0].fill(0);
        data[field::RESERVED1] = 0;
    }

    /// The inner Ethernet frame, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for VxlanPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The validated summary of a VXLAN header: its VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanRepr {
    /// VXLAN network identifier (at most [`MAX_VNI`]).
    pub vni: u32,
}

impl VxlanRepr {
    /// Summarises `packet`: `Malformed` without the I flag (reserved bits are
    /// ignored, as RFC 7348 asks of receivers).
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<VxlanRepr> {
        packet.check_len()?;
        if !packet.has_vni() {
            return Err(Error::Malformed);
        }
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// Length of the header this emits (8).
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 8-byte header: the I flag, the VNI (low 24 bits), reserved fields
    /// zero. `packet` must hold at least 8 bytes.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(FLAG_VNI);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::a5;
    use proptest::prelude::*;

    // VNI 42, then the first bytes of an inner Ethernet frame.
    static PACKET: [u8; 12] = [0x08, 0, 0, 0, 0, 0, 42, 0, 0xde, 0xad, 0xbe, 0xef];

    #[test]
    fn deconstruct() {
        let p = VxlanPacket::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.flags(), 0x08);
        assert!(p.has_vni());
        assert_eq!(p.vni(), 42);
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(VxlanPacket::HEADER_LEN, 8);
        assert_eq!(VxlanRepr::parse(&p), Ok(VxlanRepr { vni: 42 }));
    }

    #[test]
    fn construct() {
        let mut buf = a5(PACKET.len());
        let mut p = VxlanPacket::new_unchecked(&mut buf[..]);
        VxlanRepr { vni: 42 }.emit(&mut p);
        p.payload_mut().copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(buf, PACKET);
    }

    #[test]
    fn emit_keeps_24_bits() {
        let mut buf = a5(8);
        let repr = VxlanRepr { vni: 0xab12_3456 };
        repr.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(repr.buffer_len(), 8);
    }

    #[test]
    fn bad_cases() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                VxlanPacket::new_checked(&PACKET[..len]),
                Err(Error::Truncated)
            );
        }
        // Header only: valid, empty payload.
        let p = VxlanPacket::new_checked(&PACKET[..8]).unwrap();
        assert_eq!(p.payload(), &[] as &[u8]);
        // No I flag.
        let mut buf = PACKET;
        buf[0] = 0;
        let p = VxlanPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), Err(Error::Malformed));
        // Reserved bits are ignored on receive.
        let mut buf = PACKET;
        buf[0] = 0xff;
        buf[1..4].fill(0xff);
        buf[7] = 0xff;
        let p = VxlanPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), Ok(VxlanRepr { vni: 42 }));
    }

    proptest! {
        #[test]
        fn round_trip(vni in 0u32..=MAX_VNI, payload in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut buf = a5(HEADER_LEN + payload.len());
            let mut p = VxlanPacket::new_unchecked(&mut buf[..]);
            VxlanRepr { vni }.emit(&mut p);
            p.payload_mut().copy_from_slice(&payload);
            let p = VxlanPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(VxlanRepr::parse(&p), Ok(VxlanRepr { vni }));
            prop_assert_eq!(p.payload(), &payload[..]);
        }

        #[test]
        fn any_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(p) = VxlanPacket::new_checked(&data[..]) {
                let _ = (p.flags(), p.has_vni(), p.vni(), p.payload(), VxlanRepr::parse(&p));
            } else {
                prop_assert!(data.len() < HEADER_LEN);
            }
        }
    }
}
