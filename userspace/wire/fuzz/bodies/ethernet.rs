//! Ethernet frames: view, every accessor, Repr round trip, then the payload as
//! IPv4 or ARP according to the EtherType.
//!
//! The body of fuzz target `ethernet`: run by libFuzzer (`fuzz_targets/ethernet.rs`, nightly)
//! and, on stable and bounded, by the crate's `tests/fuzz.rs`.

use ferroplane_wire::{
    ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, Ipv4Packet, Ipv4Repr,
};

/// Runs the target on one input; panics on a bug.
pub fn run(data: &[u8]) {
    let Ok(frame) = EthernetFrame::new_checked(data) else {
        return;
    };
    let _ = (frame.dst_addr(), frame.src_addr(), frame.ethertype());
    let _ = (
        frame.dst_addr().is_multicast(),
        frame.src_addr().to_string(),
    );
    let repr = EthernetRepr::parse(&frame).expect("checked frame parses");
    let mut buf = [0u8; 14];
    repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    assert_eq!(&buf[..], &data[..14]);
    match frame.ethertype() {
        EtherType::IPV4 => {
            if let Ok(ip) = Ipv4Packet::new_checked(frame.payload()) {
                let _ = Ipv4Repr::parse(&ip);
            }
        }
        EtherType::ARP => {
            if let Ok(arp) = ArpPacket::new_checked(frame.payload()) {
                let _ = ArpRepr::parse(&arp);
            }
        }
        _ => {}
    }
}
