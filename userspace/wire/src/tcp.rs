//! TCP segments (RFC 9293).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Source Port          |       Destination Port        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Sequence Number                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Acknowledgment Number                      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Data |     |N|C|E|U|A|P|R|S|F|                               |
//! | Offset| Rsv |S|W|C|R|C|S|S|Y|I|            Window             |
//! |       |     | |R|E|G|K|H|T|N|N|                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Checksum            |         Urgent Pointer        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Options                    |    Padding    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The view covers exactly the segment (the IPv4 payload): the checksum and
//! the payload run to the end of the buffer.

use crate::ipv4::IpProtocol;
use crate::{
    checksum, clamped, clamped_mut, read_u16, read_u32, write_u16, write_u32, Error, Result,
};
use core::net::Ipv4Addr;

mod field {
    use crate::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    pub const FLAGS: Field = 12..14;
    pub const WIN_SIZE: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = field::URGENT.end;

/// FIN flag.
pub const FIN: u16 = 0x001;
/// SYN flag.
pub const SYN: u16 = 0x002;
/// RST flag.
pub const RST: u16 = 0x004;
/// PSH flag.
pub const PSH: u16 = 0x008;
/// ACK flag.
pub const ACK: u16 = 0x010;
/// URG flag.
pub const URG: u16 = 0x020;
/// ECN-Echo flag.
pub const ECE: u16 = 0x040;
/// Congestion Window Reduced flag.
pub const CWR: u16 = 0x080;
/// Nonce Sum flag (historic, RFC 3540).
pub const NS: u16 = 0x100;

const FLAGS_MASK: u16 = 0x01ff;

/// Option kind: end of option list.
pub const OPT_END: u8 = 0;
/// Option kind: no operation.
pub const OPT_NOP: u8 = 1;
/// Option kind: maximum segment size.
pub const OPT_MSS: u8 = 2;

/// A view of a TCP segment.
///
/// [`new_checked`](Self::new_checked) guarantees `20 <= header_len <= len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl TcpPacket<&[u8]> {
    /// Length of a header without options (20).
    pub const HEADER_LEN: usize = HEADER_LEN;
    /// FIN flag.
    pub const FIN: u16 = FIN;
    /// SYN flag.
    pub const SYN: u16 = SYN;
    /// RST flag.
    pub const RST: u16 = RST;
    /// PSH flag.
    pub const PSH: u16 = PSH;
    /// ACK flag.
    pub const ACK: u16 = ACK;
    /// URG flag.
    pub const URG: u16 = URG;
    /// ECE flag.
    pub const ECE: u16 = ECE;
    /// CWR flag.
    pub const CWR: u16 = CWR;
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without checking it.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> TcpPacket<T> {
        TcpPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<TcpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` below 20 bytes or below the header length; `Malformed` if
    /// the data offset is below 5.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = usize::from(data[field::FLAGS.start] >> 4) * 4;
        if header_len < HEADER_LEN {
            Err(Error::Malformed)
        } else if header_len > data.len() {
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

    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    /// Acknowledgment number.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes (data offset * 4).
    #[inline]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::FLAGS.start] >> 4) * 4
    }

    /// The nine flag bits ([`FIN`] .. [`NS`]); reserved bits are masked out.
    #[inline]
    pub fn flags(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLAGS) & FLAGS_MASK
    }

    /// Whether all flags of `mask` are set.
    #[inline]
    pub fn has_flags(&self, mask: u16) -> bool {
        self.flags() & mask == mask
    }

    /// Window size.
    #[inline]
    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WIN_SIZE)
    }

    /// Checksum as stored.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Urgent pointer.
    #[inline]
    pub fn urgent_at(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// Option bytes (20 .. header length), clamped to the buffer.
    #[inline]
    pub fn options(&self) -> &[u8] {
        clamped(
            self.buffer.as_ref(),
            HEADER_LEN,
            usize::from(self.header_len()),
        )
    }

    /// The Maximum Segment Size option, if present and well formed.
    pub fn mss(&self) -> Option<u16> {
        let mut opts = self.options();
        loop {
            match opts {
                [] | [OPT_END, ..] => return None,
                [OPT_NOP, rest @ ..] => opts = rest,
                [OPT_MSS, 4, hi, lo, ..] => return Some(u16::from_be_bytes([*hi, *lo])),
                [_, len, ..] if *len >= 2 => opts = opts.get(usize::from(*len)..)?,
                _ => return None,
            }
        }
    }

    /// Payload: from the header length to the end of the buffer.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        clamped(data, usize::from(self.header_len()), data.len())
    }

    /// Whether the checksum verifies for the given IPv4 addresses (the TCP
    /// length is the buffer length).
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        checksum::fold(self.raw_sum(src, dst)) == 0xffff
    }

    #[inline]
    fn raw_sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let data = self.buffer.as_ref();
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        checksum::pseudo_header_v4(src, dst, IpProtocol::TCP, len) + checksum::sum(data)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
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

    /// Sets the sequence number.
    #[inline]
    pub fn set_seq_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM, value);
    }

    /// Sets the acknowledgment number.
    #[inline]
    pub fn set_ack_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::ACK_NUM, value);
    }

    /// Sets the header length in bytes (a multiple of 4 from 20 to 60),
    /// keeping the flags.
    #[inline]
    pub fn set_header_len(&mut self, value: u8) {
        let data = self.buffer.as_mut();
        let at = field::FLAGS.start;
        data[at] = (data[at] & 0x0f) | (((value / 4) & 0x0f) << 4);
    }

    /// Sets the nine flag bits, keeping the header length and reserved bits.
    #[inline]
    pub fn set_flags(&mut self, value: u16) {
        let raw = read_u16(self.buffer.as_ref(), field::FLAGS);
        let raw = (raw & !FLAGS_MASK) | (value & FLAGS_MASK);
        write_u16(self.buffer.as_mut(), field::FLAGS, raw);
    }

    /// Clears the flags and the reserved bits, keeping the header length.
    #[inline]
    pub fn clear_flags(&mut self) {
        let raw = read_u16(self.buffer.as_ref(), field::FLAGS);
        write_u16(self.buffer.as_mut(), field::FLAGS, raw & 0xf000);
    }

    /// Sets the window size.
    #[inline]
    pub fn set_window_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::WIN_SIZE, value);
    }

    /// Sets the checksum field as given.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Sets the urgent pointer.
    #[inline]
    pub fn set_urgent_at(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT, value);
    }

    /// Computes and stores the checksum over the whole buffer.
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let csum = !checksum::fold(self.raw_sum(src, dst));
        self.set_checksum(csum);
    }

    /// Mutable option bytes, clamped like [`options`](Self::options).
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.header_len());
        clamped_mut(self.buffer.as_mut(), HEADER_LEN, end)
    }

    /// Lower the Maximum Segment Size option to `max` if it is larger, updating the
    /// checksum incrementally (RFC 1624). Returns the MSS it had when it was lowered,
    /// `None` when there is no (well-formed) MSS option or it was already small enough.
    pub fn clamp_mss(&mut self, max: u16) -> Option<u16> {
        let mut i = 0usize;
        let at = {
            let opts = self.options();
            loop {
                match opts.get(i..)? {
                    [] | [OPT_END, ..] => return None,
                    [OPT_NOP, ..] => i += 1,
                    [OPT_MSS, 4, _, _, ..] => break i + 2,
                    [_, len, ..] if *len >= 2 => i += usize::from(*len),
                    _ => return None,
                }
            }
        };
        let off = HEADER_LEN + at;
        let old = read_u16(self.buffer.as_ref(), off..off + 2);
        if old <= max {
            return None;
        }
        self.buffer.as_mut()[off..off + 2].copy_from_slice(&max.to_be_bytes());
        // A 16-bit field at an odd offset straddles two checksum words: in the
        // one's-complement sum it counts byte-swapped.
        let (o, n) = if off.is_multiple_of(2) {
            (old, max)
        } else {
            (old.swap_bytes(), max.swap_bytes())
        };
        let c = checksum::update16(self.checksum(), o, n);
        self.set_checksum(c);
        Some(old)
    }

    /// Mutable payload, clamped like [`payload`](Self::payload).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = usize::from(self.header_len());
        let data = self.buffer.as_mut();
        let end = data.len();
        clamped_mut(data, start, end)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for TcpPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::a5;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

    // Linux-style SYN 10.244.1.10:40000 -> 10.96.0.1:443 with options
    // MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
    static SYN_BYTES: [u8; 40] = [
        0x9c, 0x40, 0x01, 0xbb, // ports
        0x11, 0x22, 0x33, 0x44, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0xa0, 0x02, 0xfa, 0xf0, // offset 10 (40 bytes), SYN, window 64240
        0x52, 0x4b, 0x00, 0x00, // checksum, urgent
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
        0x04, 0x02, // SACK permitted
        0x08, 0x0a, 0x00, 0x01, 0x02, 0x03, 0x00, 0x00, 0x00, 0x00, // timestamps
        0x01, // NOP
        0x03, 0x03, 0x07, // window scale 7
    ];

    #[test]
    fn deconstruct() {
        let bytes = SYN_BYTES;
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 443);
        assert_eq!(p.seq_number(), 0x1122_3344);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), TcpPacket::SYN);
        assert!(p.has_flags(SYN) && !p.has_flags(SYN | ACK));
        assert_eq!(p.window_len(), 64240);
        assert_eq!(p.checksum(), 0x524b);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(p.options(), &SYN_BYTES[20..]);
        assert_eq!(p.mss(), Some(1460));
        assert_eq!(p.payload(), &[] as &[u8]);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(10, 96, 0, 2)));
        assert_eq!(TcpPacket::HEADER_LEN, 20);
    }

    #[test]
    fn construct() {
        let mut buf = a5(40);
        let mut p = TcpPacket::new_unchecked(&mut buf[..]);
        p.set_src_port(40000);
        p.set_dst_port(443);
        p.set_seq_number(0x1122_3344);
        p.set_ack_number(0);
        p.set_header_len(40);
        p.clear_flags();
        p.set_flags(SYN);
        assert_eq!(p.header_len(), 40);
        p.set_window_len(64240);
        p.set_urgent_at(0);
        p.options_mut().copy_from_slice(&SYN_BYTES[20..]);
        p.fill_checksum(SRC, DST);
        assert_eq!(buf, SYN_BYTES);
    }

    #[test]
    fn flags_keep_header_len() {
        let mut bytes = SYN_BYTES;
        let mut p = TcpPacket::new_checked(&mut bytes[..]).unwrap();
        p.set_flags(SYN | ACK | ECE | CWR | NS | 0xfe00);
        assert_eq!(p.flags(), SYN | ACK | ECE | CWR | NS);
        assert_eq!(p.header_len(), 40);
        p.set_header_len(24);
        assert_eq!(p.flags(), SYN | ACK | ECE | CWR | NS);
        assert_eq!(p.options(), &SYN_BYTES[20..24]);
        assert_eq!(p.payload(), &SYN_BYTES[24..]);
    }

    #[test]
    fn mss_option_parsing() {
        let mut buf = [0u8; 60];
        buf[12] = 0xf0; // header 60
        let cases: &[(&[u8], Option<u16>)] = &[
            (&[], None),
            (&[1, 1, 2, 4, 0x05, 0xdc], Some(1500)),
            (&[0, 2, 4, 5, 0xdc], None),
            (
                &[4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 2, 4, 1, 0],
                Some(256),
            ),
            (&[2, 3, 5, 0xdc], None),
            (&[8, 0, 2, 4, 1, 1], None),
            (&[8, 1], None),
            (&[8, 200, 2, 4, 1, 1], None),
            (&[2], None),
        ];
        for (opts, expected) in cases {
            buf[20..].fill(0);
            buf[20..20 + opts.len()].copy_from_slice(opts);
            let p = TcpPacket::new_checked(&buf[..]).unwrap();
            assert_eq!(p.mss(), *expected, "{opts:?}");
        }
        // Options cut by the header length.
        buf[12] = 0x60;
        buf[20..26].copy_from_slice(&[1, 1, 2, 4, 0x05, 0xdc]);
        assert_eq!(TcpPacket::new_checked(&buf[..]).unwrap().mss(), None);
        buf[12] = 0x60;
        buf[20..26].copy_from_slice(&[1, 2, 4, 5, 0xdc, 0]);
        assert_eq!(TcpPacket::new_checked(&buf[..]).unwrap().mss(), None);
        buf[12] = 0x70;
        assert_eq!(TcpPacket::new_checked(&buf[..]).unwrap().mss(), Some(1500));
    }

    #[test]
    fn bad_cases() {
        let bytes = SYN_BYTES;
        for len in 0..bytes.len() {
            assert_eq!(
                TcpPacket::new_checked(&bytes[..len]),
                Err(Error::Truncated),
                "len {len}"
            );
        }
        for offset in 0..5u8 {
            let mut b = bytes;
            b[12] = offset << 4;
            assert_eq!(TcpPacket::new_checked(&b[..]), Err(Error::Malformed));
        }
        let mut b = bytes;
        b[12] = 0xb0;
        assert_eq!(TcpPacket::new_checked(&b[..]), Err(Error::Truncated));
        let mut b = bytes;
        b[30] ^= 0x10;
        assert!(!TcpPacket::new_checked(&b[..])
            .unwrap()
            .verify_checksum(SRC, DST));
    }

    proptest! {
        #[test]
        fn fill_then_verify(s in any::<u32>(), d in any::<u32>(), hdr in any::<[u8; 20]>(),
                            ihl in 5u8..=15, data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (src, dst) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
            let hl = usize::from(ihl) * 4;
            let mut buf = a5(hl + data.len());
            buf[..20].copy_from_slice(&hdr);
            let mut p = TcpPacket::new_unchecked(&mut buf[..]);
            p.set_header_len(hl as u8);
            p.payload_mut().copy_from_slice(&data);
            p.fill_checksum(src, dst);
            let p = TcpPacket::new_checked(&buf[..]).unwrap();
            prop_assert!(p.verify_checksum(src, dst));
            prop_assert_eq!(p.payload(), &data[..]);
            prop_assert_eq!(usize::from(p.header_len()), hl);
            let _ = p.mss();
        }

        #[test]
        fn seq_rewrite_incremental(hdr in any::<[u8; 20]>(), new in any::<u32>(), s in any::<u32>()) {
            let mut buf = hdr;
            buf[12] = 0x50;
            let src = Ipv4Addr::from(s);
            let mut p = TcpPacket::new_checked(&mut buf[..]).unwrap();
            p.fill_checksum(src, DST);
            let c = checksum::update32(p.checksum(), p.seq_number(), new);
            p.set_seq_number(new);
            p.set_checksum(c);
            prop_assert!(p.verify_checksum(src, DST));
            let incremental = p.checksum();
            p.fill_checksum(src, DST);
            prop_assert_eq!(incremental, p.checksum());
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = TcpPacket::new_checked(&data[..]) {
                let _ = (p.options(), p.payload(), p.mss(), p.flags(), p.verify_checksum(SRC, DST));
            }
            let mut data = data;
            if let Ok(mut p) = TcpPacket::new_checked(&mut data[..]) {
                let _ = p.clamp_mss(536);
            }
        }

        /// Clamping keeps the checksum exact wherever the option sits (even or odd offset).
        #[test]
        fn clamp_mss_incremental(nops in 0usize..4, mss in any::<u16>(), max in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut buf = SYN_BYTES[..20].to_vec();
            let mut opts = vec![OPT_NOP; nops];
            opts.extend_from_slice(&[OPT_MSS, 4]);
            opts.extend_from_slice(&mss.to_be_bytes());
            while opts.len() % 4 != 0 {
                opts.push(OPT_END);
            }
            buf[12] = ((20 + opts.len()) as u8 / 4) << 4 | (buf[12] & 0x0f);
            buf.extend_from_slice(&opts);
            buf.extend_from_slice(&payload);
            let mut p = TcpPacket::new_checked(&mut buf[..]).unwrap();
            p.fill_checksum(SRC, DST);
            let r = p.clamp_mss(max);
            if mss > max {
                prop_assert_eq!(r, Some(mss));
                prop_assert_eq!(p.mss(), Some(max));
            } else {
                prop_assert_eq!(r, None);
                prop_assert_eq!(p.mss(), Some(mss));
            }
            prop_assert!(p.verify_checksum(SRC, DST));
        }
    }
}
