//! TUN punt path (root only): a packet written to the TUN reaches the
//! namespace's kernel, which answers through the same TUN.

mod common;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;
use ferroplane_io::{IoError, TunDevice};
use nix::fcntl::{fcntl, FcntlArg, OFlag};

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

/// IPv4 ICMP echo request `src -> dst` with id/seq.
fn echo_request(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + 16];
    let total = p.len() as u16;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 8;
    p[24..26].copy_from_slice(&id.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
fn tun_punts_packets_to_the_kernel() {
    if !require_root() {
        return;
    }
    let ns = quiet_netns("tun");
    let ns_name = ns.name().to_string();
    let tun = std::thread::spawn(move || {
        enter_netns(&ns_name);
        TunDevice::create("fpt%d").unwrap()
    })
    .join()
    .unwrap();
    // The kernel picked the number; the device lives in the namespace.
    assert!(tun.name().starts_with("fpt") && !tun.name().contains('%'));
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", tun.name()]);
    ns.ip(&["link", "set", tun.name(), "up"]);

    let flags = fcntl(tun.as_raw_fd(), FcntlArg::F_GETFL).unwrap();
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(tun.as_raw_fd(), FcntlArg::F_SETFL(flags)).unwrap();

    let req = echo_request([10, 99, 0, 2], [10, 99, 0, 1], 0x4242, 7);
    assert_eq!(tun.write(&req).unwrap(), req.len());
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(3);
    let reply = loop {
        match tun.read(&mut buf) {
            Ok(n) => {
                let p = &buf[..n];
                // Only the echo reply matters; skip anything else.
                if n >= 28 && p[0] >> 4 == 4 && p[9] == 1 && p[20] == 0 {
                    break p.to_vec();
                }
            }
            Err(IoError::Os { source, .. }) if source.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no echo reply from the kernel");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(&reply[12..16], &[10, 99, 0, 1]);
    assert_eq!(&reply[16..20], &[10, 99, 0, 2]);
    assert_eq!(&reply[24..28], &req[24..28], "id and sequence echoed");
    assert_eq!(&reply[28..], &req[28..], "payload echoed");

    // A second device with the same name is refused.
    let name = tun.name().to_string();
    let ns_name = ns.name().to_string();
    let dup = std::thread::spawn(move || {
        enter_netns(&ns_name);
        TunDevice::create(&name).map(|_| ())
    })
    .join()
    .unwrap();
    assert!(dup.is_err());
    drop(tun);
}
