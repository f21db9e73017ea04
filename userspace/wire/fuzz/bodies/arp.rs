//! ARP: view, every accessor, Repr parse and emit round trip.
//!
//! The body of fuzz target `arp`: run by libFuzzer (`fuzz_targets/arp.rs`, nightly)
//! and, on stable and bounded, by the crate's `tests/fuzz.rs`.

use ferroplane_wire::{ArpPacket, ArpRepr};

/// Runs the target on one input; panics on a bug.
pub fn run(data: &[u8]) {
    let Ok(packet) = ArpPacket::new_checked(data) else {
        let _ = ArpRepr::parse(&ArpPacket::new_unchecked(data));
        return;
    };
    let _ = (
        packet.hardware_type(),
        packet.protocol_type(),
        packet.hardware_len(),
        packet.protocol_len(),
        packet.operation(),
        packet.sender_hw_addr(),
        packet.sender_proto_addr(),
        packet.target_hw_addr(),
        packet.target_proto_addr(),
    );
    let repr = ArpRepr::parse(&packet).expect("checked packet parses");
    let mut buf = [0u8; 28];
    repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
    assert_eq!(&buf[..], &data[..28]);
}
