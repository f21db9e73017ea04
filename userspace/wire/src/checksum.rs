//! Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! The one's-complement sum is kept "raw" (a `u32` that may still carry above
//! 16 bits) so that partial sums of several pieces (pseudo-header, header,
//! payload) can simply be added before a single [`fold`]. Every [`sum`] result
//! is at most `0xffff`, so adding up to 65 536 of them cannot overflow.
//!
//! A received header whose checksum field is included in the sum verifies when
//! `fold(total) == 0xffff`, i.e. when [`checksum`] over it gives `0`.

use crate::ipv4::IpProtocol;
use core::net::Ipv4Addr;

/// One's-complement sum of `data` taken as big-endian 16-bit words.
///
/// An odd final byte is padded with a zero low byte (RFC 1071). Therefore when
/// sums of several pieces are added together, only the last piece may have an
/// odd length. The result is partially folded and never exceeds `0xffff`.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    // The one's-complement sum is independent of byte order (RFC 1071 2.B), so
    // add native-endian 32-bit words into a u64 (no carry chain, vectorisable)
    // and swap the folded result to big-endian once at the end. Since
    // 2^16 ≡ 1 (mod 0xffff), 32-bit words give the same residue as 16-bit ones.
    // A u64 cannot overflow within a block of 2^30 bytes (2^28 words < 2^32).
    let mut total: u64 = 0;
    for block in data.chunks(1 << 30) {
        let mut acc: u64 = 0;
        let mut words = block.chunks_exact(4);
        for w in &mut words {
            acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
        let mut halves = words.remainder().chunks_exact(2);
        for h in &mut halves {
            acc += u64::from(u16::from_ne_bytes([h[0], h[1]]));
        }
        if let [last] = halves.remainder() {
            // Padded with a zero low-order byte in network order.
            acc += u64::from(u16::from_ne_bytes([*last, 0]));
        }
        total = fold64(total + fold64(acc));
    }
    u32::from(u16::from_be(fold64_to_16(total)))
}

/// Folds a 64-bit one's-complement accumulator to at most 32 significant bits.
#[inline(always)]
fn fold64(acc: u64) -> u64 {
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    (acc & 0xffff_ffff) + (acc >> 32)
}

/// Folds a 64-bit one's-complement accumulator to 16 bits.
#[inline(always)]
fn fold64_to_16(acc: u64) -> u16 {
    let acc = fold64(acc);
    fold((acc & 0xffff_ffff) as u32 + (acc >> 32) as u32)
}

/// Folds the carries of a raw sum into 16 bits (end-around carry). Not complemented.
///
/// A non-zero input never folds to `0`.
#[inline]
pub fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The Internet checksum of `data`: `!fold(sum(data))`.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Raw sum of the IPv4 pseudo-header used by TCP and UDP (RFC 793, RFC 768):
/// source, destination, zero + protocol, and the transport length `len`.
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, len: u16) -> u32 {
    let s = u32::from(src);
    let d = u32::from(dst);
    (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + u32::from(proto.0) + u32::from(len)
}

/// Incrementally updates checksum `csum` (host order, as stored in the header)
/// after a 16-bit word of the covered data changed from `old` to `new`.
///
/// RFC 1624 equation 3: `HC' = ~(~HC + ~m + m')`. Unlike equation 2 this has no
/// `-0` problem: if `csum` was computed from a sum that is not all zeros (true for
/// any IPv4 header, TCP and UDP with their pseudo-header), the result is exactly
/// what a full recomputation gives. For UDP the caller must skip the update when
/// `csum == 0` (no checksum) and store a `0` result as `0xffff`.
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let s = u32::from(!csum) + u32::from(!old) + u32::from(new);
    !fold(s)
}

/// Like [`update16`] for a 32-bit aligned value (an IPv4 address, a TCP sequence
/// number): both of its 16-bit halves changed from `old` to `new`.
#[inline]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(!csum)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    !fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Straightforward RFC 1071 reference: 16 bits at a time into a u64.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        let mut i = 0;
        while i + 1 < data.len() {
            acc += u64::from(u16::from_be_bytes([data[i], data[i + 1]]));
            i += 2;
        }
        if i < data.len() {
            acc += u64::from(data[i]) << 8;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn empty_and_odd() {
        assert_eq!(sum(&[]), 0);
        assert_eq!(checksum(&[]), 0xffff);
        assert_eq!(fold(sum(&[0xab])), 0xab00);
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    #[test]
    fn all_ones_folds_to_ffff_not_zero() {
        let data = [0xffu8; 64];
        assert_eq!(fold(sum(&data)), 0xffff);
        assert_eq!(checksum(&data), 0);
        // Non-zero sums never fold to 0.
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(0), 0);
    }

    #[test]
    fn known_ipv4_header() {
        // Wikipedia's example header, checksum b861.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0xb861);
        let mut with = hdr;
        with[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&with), 0);
    }

    #[test]
    fn pseudo_header() {
        let s = pseudo_header_v4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            IpProtocol::UDP,
            12,
        );
        assert_eq!(s, 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 12);
        let max = pseudo_header_v4(
            Ipv4Addr::BROADCAST,
            Ipv4Addr::BROADCAST,
            IpProtocol(0xff),
            0xffff,
        );
        assert_eq!(max, 6 * 0xffff - 0xff00);
    }

    #[test]
    fn update_corner_cases() {
        // Header whose sum folds to 0xffff (checksum 0x0000), then a change that keeps it.
        let mut data = [0xffu8, 0xff, 0x00, 0x00, 0x00, 0x00];
        let csum = checksum(&data);
        assert_eq!(csum, 0);
        data[4..6].copy_from_slice(&[0x00, 0x00]);
        assert_eq!(update16(csum, 0, 0), checksum(&data));
        // Change to a word that makes the sum 0x0000 + ... stay consistent.
        data[0..2].copy_from_slice(&[0x00, 0x01]);
        assert_eq!(update16(csum, 0xffff, 0x0001), checksum(&data));
        // Identity update never flips 0x0000 <-> 0xffff for a valid header checksum.
        for csum in [0x0000u16, 0x0001, 0x7fff, 0xfffe] {
            for w in [0x0000u16, 0x0001, 0xfffe, 0xffff] {
                assert_eq!(update16(csum, w, w), csum, "csum {csum:#x} w {w:#x}");
            }
        }
    }

    fn even_vec() -> impl Strategy<Value = Vec<u8>> {
        (1usize..64).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 2))
    }

    proptest! {
        #[test]
        fn sum_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(fold(sum(&data)), reference_sum(&data));
            prop_assert!(sum(&data) <= 0xffff);
        }

        #[test]
        fn sums_of_pieces_add(a in even_vec(), b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut whole = a.clone();
            whole.extend_from_slice(&b);
            prop_assert_eq!(fold(sum(&a) + sum(&b)), fold(sum(&whole)));
        }

        #[test]
        fn filled_checksum_verifies(mut data in even_vec(), pos in 0usize..64) {
            let pos = (pos * 2) % data.len();
            data[pos] = 0;
            data[pos + 1] = 0;
            let c = checksum(&data);
            data[pos..pos + 2].copy_from_slice(&c.to_be_bytes());
            prop_assert_eq!(checksum(&data), 0);
        }

        #[test]
        fn update16_equals_full(mut data in even_vec(), pos in 0usize..64, new in any::<u16>()) {
            // Word 0 is the checksum field; keep the rest non-zero like real headers.
            // Word 1 stays non-zero like the version field of a real header (an all-zero
            // sum is the one case where eqn 3 and a full sum disagree on -0).
            if data.len() < 6 { data.resize(6, 0); }
            data[2] |= 0x40;
            data[0] = 0;
            data[1] = 0;
            let c = checksum(&data);
            data[0..2].copy_from_slice(&c.to_be_bytes());
            let pos = 4 + (pos * 2) % (data.len() - 4);
            let old = u16::from_be_bytes([data[pos], data[pos + 1]]);
            data[pos..pos + 2].copy_from_slice(&new.to_be_bytes());
            data[0] = 0;
            data[1] = 0;
            let full = checksum(&data);
            prop_assert_eq!(update16(c, old, new), full);
        }

        #[test]
        fn update32_equals_full(mut data in even_vec(), pos in 0usize..64, new in any::<u32>()) {
            if data.len() < 8 { data.resize(8, 0); }
            data[2] |= 0x40;
            data[0] = 0;
            data[1] = 0;
            let c = checksum(&data);
            let words = (data.len() - 4) / 2;
            let pos = 4 + (pos % words) * 2;
            let pos = pos.min(data.len() - 4);
            let old = u32::from_be_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
            data[pos..pos + 4].copy_from_slice(&new.to_be_bytes());
            let full = checksum(&data);
            prop_assert_eq!(update32(c, old, new), full);
        }
    }
}
