//! TCP: view, every accessor, option parsing, checksum fill then verify.
//!
//! The body of fuzz target `tcp`: run by libFuzzer (`fuzz_targets/tcp.rs`, nightly)
//! and, on stable and bounded, by the crate's `tests/fuzz.rs`.

use core::net::Ipv4Addr;
use ferroplane_wire::TcpPacket;

/// Runs the target on one input; panics on a bug.
pub fn run(src: u32, dst: u32, data: &[u8]) {
    let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
    let Ok(packet) = TcpPacket::new_checked(data) else {
        return;
    };
    let _ = (
        packet.src_port(),
        packet.dst_port(),
        packet.seq_number(),
        packet.ack_number(),
        packet.header_len(),
        packet.flags(),
        packet.window_len(),
        packet.checksum(),
        packet.urgent_at(),
        packet.options(),
        packet.mss(),
        packet.payload(),
        packet.verify_checksum(src, dst),
    );
    let mut copy = data.to_vec();
    let mut p = TcpPacket::new_checked(&mut copy[..]).expect("same bytes");
    p.fill_checksum(src, dst);
    assert!(p.verify_checksum(src, dst));
}
