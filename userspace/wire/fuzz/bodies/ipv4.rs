//! IPv4: view, every accessor, checksum, Repr parse/emit, in-place TTL
//! decrement (incremental checksum must match a full recompute).
//!
//! The body of fuzz target `ipv4`: run by libFuzzer (`fuzz_targets/ipv4.rs`, nightly)
//! and, on stable and bounded, by the crate's `tests/fuzz.rs`.

use ferroplane_wire::{Ipv4Packet, Ipv4Repr};

/// Runs the target on one input; panics on a bug.
pub fn run(data: &[u8]) {
    let Ok(packet) = Ipv4Packet::new_checked(data) else {
        let _ = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(data));
        return;
    };
    let _ = (
        packet.version(),
        packet.header_len(),
        packet.dscp_ecn(),
        packet.total_len(),
        packet.ident(),
        packet.dont_frag(),
        packet.more_frags(),
        packet.frag_offset(),
        packet.is_fragment(),
        packet.ttl(),
        packet.protocol(),
        packet.checksum(),
        packet.src_addr(),
        packet.dst_addr(),
        packet.header(),
        packet.options(),
        packet.payload(),
    );
    let valid = packet.verify_checksum();
    match Ipv4Repr::parse(&packet) {
        Ok(repr) => {
            assert!(valid);
            let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
            let mut out = Ipv4Packet::new_unchecked(&mut buf[..]);
            repr.emit(&mut out);
            let out = Ipv4Packet::new_checked(&buf[..]).expect("emitted header is valid");
            assert_eq!(Ipv4Repr::parse(&out), Ok(repr));
        }
        Err(_) => assert!(!valid),
    }
    if valid && packet.ttl() > 0 {
        let mut copy = data.to_vec();
        let mut p = Ipv4Packet::new_checked(&mut copy[..]).expect("same bytes");
        p.decrement_ttl();
        assert!(p.verify_checksum());
        let incremental = p.checksum();
        p.fill_checksum();
        assert_eq!(incremental, p.checksum());
    }
}
