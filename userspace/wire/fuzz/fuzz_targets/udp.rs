//! UDP: view, every accessor, checksum fill then verify.
#![no_main]

use core::net::Ipv4Addr;
use ferroplane_wire::UdpPacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u32, u32, &[u8])| {
    let (src, dst, data) = input;
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
});
