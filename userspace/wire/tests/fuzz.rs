//! The fuzz targets of `fuzz/` on stable, bounded: each body over hand-built seeds (valid
//! frames of every kind the target parses), the libFuzzer corpus when one is present
//! (`fuzz/corpus/<target>`, not checked in), then deterministic mutations and random inputs
//! (ferroplane-testkit's fuzz driver; budget from FERROPLANE_FUZZ_EXECS and
//! FERROPLANE_FUZZ_SECONDS, a quick pass by default). A panic fails the test with the input.

use std::path::{Path, PathBuf};

use ferroplane_testkit::fuzz;

#[path = "../fuzz/bodies/arp.rs"]
mod arp;
#[path = "../fuzz/bodies/ethernet.rs"]
mod ethernet;
#[path = "../fuzz/bodies/icmpv4.rs"]
mod icmpv4;
#[path = "../fuzz/bodies/ipv4.rs"]
mod ipv4;
#[path = "../fuzz/bodies/tcp.rs"]
mod tcp;
#[path = "../fuzz/bodies/udp.rs"]
mod udp;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

const SRC: [u8; 4] = [10, 244, 1, 10];
const DST: [u8; 4] = [10, 96, 0, 10];

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet: `options` (a multiple of 4 bytes) after the fixed header, a valid
/// header checksum; `frag` is the flags+offset field.
fn ip(proto: u8, ttl: u8, frag: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let hlen = 20 + options.len();
    let total = hlen + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x40 | (hlen / 4) as u8;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = ttl;
    p[9] = proto;
    p[12..16].copy_from_slice(&SRC);
    p[16..20].copy_from_slice(&DST);
    p.extend_from_slice(options);
    let c = checksum(&p[..hlen]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&40000u16.to_be_bytes());
    u[2..4].copy_from_slice(&53u16.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

/// A TCP segment with `options` (a multiple of 4 bytes).
fn tcp_seg(flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&80u16.to_be_bytes());
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[12] = (((20 + options.len()) / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(options);
    t.extend_from_slice(payload);
    t
}

/// ICMP type/code, rest-of-header word, data; valid checksum.
fn icmp(ty: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(data);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn arp_msg(op: u16) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&[2, 0, 0, 0, 0, 0x0a]);
    a.extend_from_slice(&SRC);
    a.extend_from_slice(if op == 1 {
        &[0; 6]
    } else {
        &[2, 0, 0, 0, 0, 1]
    });
    a.extend_from_slice(&DST);
    a
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0x0a];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const MSS: [u8; 4] = [2, 4, 0x05, 0xb4];
const SACK_OK_WS: [u8; 8] = [4, 2, 1, 3, 3, 7, 1, 0];
const IP_OPTS: [u8; 4] = [1, 1, 1, 0];

fn ip_packets() -> Vec<Vec<u8>> {
    let inner = ip(17, 64, 0, &[], &udp(b"abcdefgh"));
    vec![
        ip(17, 64, 0, &[], &udp(b"hello")),
        ip(6, 64, 0x4000, &[], &tcp_seg(0x02, &MSS, &[])),
        ip(
            6,
            1,
            0x4000,
            &[],
            &tcp_seg(0x18, &SACK_OK_WS, b"GET / HTTP/1.1\r\n"),
        ),
        ip(1, 64, 0, &[], &icmp(8, 0, [0, 1, 0, 7], b"ping data")),
        ip(1, 64, 0, &[], &icmp(3, 4, [0, 0, 0x05, 0xdc], &inner[..28])),
        ip(1, 64, 0, &[], &icmp(11, 0, [0; 4], &inner[..28])),
        ip(17, 64, 0, &IP_OPTS, &udp(b"with options")),
        ip(17, 64, 0x2000, &[], &udp(&[0x41; 64])),
        ip(17, 64, 0x0010, &[], &[0x42; 24]),
        ip(4, 64, 0, &[], &inner),
        ip(17, 0, 0, &[], &udp(b"")),
    ]
}

/// 8 address bytes (as the libFuzzer target's two u32) then the segment.
fn with_addrs(segment: &[u8]) -> Vec<u8> {
    let mut v = SRC.to_vec();
    v.extend_from_slice(&DST);
    v.extend_from_slice(segment);
    v
}

/// The stable driver's input for the (src, dst, bytes) targets: the first 8 bytes are the
/// addresses (zero when shorter), the rest the segment.
fn split_addrs(data: &[u8]) -> (u32, u32, &[u8]) {
    if data.len() < 8 {
        return (0, 0, data);
    }
    let src = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let dst = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    (src, dst, &data[8..])
}

#[test]
fn fuzz_ethernet() {
    let mut seeds: Vec<Vec<u8>> = ip_packets().iter().map(|p| eth(0x0800, p)).collect();
    seeds.push(eth(0x0806, &arp_msg(1)));
    seeds.push(eth(0x0806, &arp_msg(2)));
    seeds.push(eth(0x86dd, &[0x60; 40]));
    seeds.push(eth(0x0800, &[0x45]));
    let r = fuzz::run(
        "wire::ethernet",
        &seeds,
        Some(&corpus("ethernet")),
        ethernet::run,
    );
    assert!(r.execs >= seeds.len() as u64);
}

#[test]
fn fuzz_arp() {
    let seeds = vec![arp_msg(1), arp_msg(2), arp_msg(1)[..27].to_vec()];
    let r = fuzz::run("wire::arp", &seeds, Some(&corpus("arp")), arp::run);
    assert!(r.execs >= seeds.len() as u64);
}

#[test]
fn fuzz_ipv4() {
    let seeds = ip_packets();
    let r = fuzz::run("wire::ipv4", &seeds, Some(&corpus("ipv4")), ipv4::run);
    assert!(r.execs >= seeds.len() as u64);
}

#[test]
fn fuzz_icmpv4() {
    let inner = ip(6, 64, 0, &[], &tcp_seg(0x02, &[], &[]));
    let seeds = vec![
        icmp(8, 0, [0, 1, 0, 1], b"abcdefgh"),
        icmp(0, 0, [0, 1, 0, 1], b""),
        icmp(3, 4, [0, 0, 0x05, 0x78], &inner[..28]),
        icmp(3, 3, [0; 4], &inner),
        icmp(11, 0, [0; 4], &inner[..28]),
    ];
    let r = fuzz::run("wire::icmpv4", &seeds, Some(&corpus("icmpv4")), icmpv4::run);
    assert!(r.execs >= seeds.len() as u64);
}

#[test]
fn fuzz_udp() {
    let seeds = vec![
        with_addrs(&udp(b"hello")),
        with_addrs(&udp(b"")),
        with_addrs(&udp(&[0xff; 33])),
    ];
    let r = fuzz::run("wire::udp", &seeds, Some(&corpus("udp")), |d| {
        let (src, dst, data) = split_addrs(d);
        udp::run(src, dst, data)
    });
    assert!(r.execs >= seeds.len() as u64);
}

#[test]
fn fuzz_tcp() {
    let seeds = vec![
        with_addrs(&tcp_seg(0x02, &MSS, &[])),
        with_addrs(&tcp_seg(0x12, &SACK_OK_WS, &[])),
        with_addrs(&tcp_seg(0x18, &[], b"payload bytes")),
        with_addrs(&tcp_seg(0x11, &[1, 1, 1, 0], &[])),
    ];
    let r = fuzz::run("wire::tcp", &seeds, Some(&corpus("tcp")), |d| {
        let (src, dst, data) = split_addrs(d);
        tcp::run(src, dst, data)
    });
    assert!(r.execs >= seeds.len() as u64);
}

/// The seeds are what they claim: each target's checks pass on them unmutated, and the
/// parsers accept them (else the mutations would start from nothing valid).
#[test]
fn seeds_parse() {
    use ferroplane_wire::{ArpPacket, EthernetFrame, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket};
    for p in ip_packets() {
        let packet = Ipv4Packet::new_checked(&p[..]).expect("seed parses");
        assert!(packet.verify_checksum());
        let repr = Ipv4Repr::parse(&packet);
        assert!(repr.is_ok(), "{repr:?}");
        ethernet::run(&eth(0x0800, &p));
    }
    assert_eq!(
        TcpPacket::new_checked(&tcp_seg(0x02, &MSS, &[])[..])
            .unwrap()
            .mss(),
        Some(1460)
    );
    assert!(UdpPacket::new_checked(&udp(b"x")[..]).is_ok());
    assert!(ArpPacket::new_checked(&arp_msg(1)[..]).is_ok());
    assert!(EthernetFrame::new_checked(&eth(0x0806, &arp_msg(2))[..]).is_ok());
}
