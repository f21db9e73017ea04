//! ICMPv4: view, every accessor, checksum fill then verify.
//!
//! The body of fuzz target `icmpv4`: run by libFuzzer (`fuzz_targets/icmpv4.rs`, nightly)
//! and, on stable and bounded, by the crate's `tests/fuzz.rs`.

use ferroplane_wire::Icmpv4Packet;

/// Runs the target on one input; panics on a bug.
pub fn run(data: &[u8]) {
    let Ok(packet) = Icmpv4Packet::new_checked(data) else {
        return;
    };
    let _ = (
        packet.msg_type(),
        packet.code(),
        packet.checksum(),
        packet.ident(),
        packet.seq_no(),
        packet.unused(),
        packet.next_hop_mtu(),
        packet.data(),
        packet.verify_checksum(),
    );
    let mut copy = data.to_vec();
    let mut p = Icmpv4Packet::new_checked(&mut copy[..]).expect("same bytes");
    p.fill_checksum();
    assert!(p.verify_checksum());
}
