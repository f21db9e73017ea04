//! UDP: view, every accessor, checksum fill then verify.
//!
//! The body of fuzz target `udp`: run by libFuzzer (`fuzz_targets/udp.rs`, nightly)
//! and, on stable and bounded, by the crate's `tests/fuzz.rs`.

use core::net::Ipv4Addr;
use ferroplane_wire::UdpPacket;

/// Runs the target on one input; panics on a bug.
pub fn run(src: u32, dst: u32, data: &[u8]) {
    let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
    let Ok(packet) = UdpPacket::new_checked(data) else {
        return;
    };
    let _ = (
        packet.src_port(),
        packet.dst_port(),
        packet.len(),
        packet.is_empty(),
        packet.checksum(),
        packet.payload(),
        packet.verify_checksum(src, dst),
    );
    let mut copy = data.to_vec();
    let mut p = UdpPacket::new_checked(&mut copy[..]).expect("same bytes");
    p.fill_checksum(src, dst);
    assert_ne!(p.checksum(), 0);
    assert!(p.verify_checksum(src, dst));
}
