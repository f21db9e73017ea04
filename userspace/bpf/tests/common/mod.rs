//! Helpers shared by the root-only integration tests: frame builders, a
//! minimal AF_XDP socket; the root check and namespace guard are the testkit's.
#![allow(dead_code, reason = "each test binary uses a subset")]

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[allow(unused_imports, reason = "each test binary uses a subset")]
pub use ferroplane_testkit::{require_root, Netns};

pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&POD_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

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

/// An IPv4 header (version 4, IHL `ihl`, options zero) carrying `payload_len`
/// bytes of UDP-ish payload, with a correct checksum.
pub fn ipv4_with(src: Ipv4Addr, dst: Ipv4Addr, ihl: u8, payload_len: usize) -> Vec<u8> {
    let hlen = usize::from(ihl) * 4;
    let total = hlen.max(20) + payload_len;
    let mut p = vec![0u8; total];
    p[0] = 0x40 | (ihl & 0x0f);
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..hlen.clamp(20, total)]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    for (i, b) in p[hlen.max(20)..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// Ethernet + IPv4 (IHL 5) + 8 bytes of payload.
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    eth(0x0800, &ipv4_with(src, dst, 5, 8))
}

/// Ethernet + ARP (Ethernet/IPv4), operation 1 = request, 2 = reply.
pub fn arp_frame(op: u16, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&0x0800u16.to_be_bytes());
    a.push(6);
    a.push(4);
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&POD_MAC);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(if op == 1 { &[0; 6] } else { &HOST_MAC });
    a.extend_from_slice(&target.octets());
    eth(0x0806, &a)
}

/// Ethernet + a minimal IPv6 header (next header 59, no payload).
pub fn ipv6_frame() -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[6] = 59;
    p[7] = 64;
    p[8..24].copy_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p[24..40].copy_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    eth(0x86dd, &p)
}

/// An AF_XDP socket with a UMEM, a fill ring and an rx ring: enough for the
/// kernel to accept it in an XSKMAP (it is not bound to any device).
pub struct XskSocket {
    fd: OwnedFd,
    umem: *mut libc::c_void,
    umem_len: usize,
}

impl XskSocket {
    pub fn new() -> std::io::Result<Self> {
        const FRAMES: usize = 16;
        const FRAME: usize = 4096;
        let umem_len = FRAMES * FRAME;
        // SAFETY: plain socket(2) call; the fd is owned right below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: anonymous private mapping; the result is checked below and
        // unmapped in Drop.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                umem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let sock = Self { fd, umem, umem_len };
        let reg = libc::xdp_umem_reg {
            addr: umem as u64,
            len: umem_len as u64,
            chunk_size: FRAME as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        sock.setsockopt(libc::XDP_UMEM_REG, &reg)?;
        sock.setsockopt(libc::XDP_UMEM_FILL_RING, &4u32)?;
        sock.setsockopt(libc::XDP_RX_RING, &4u32)?;
        Ok(sock)
    }

    fn setsockopt<T>(&self, opt: libc::c_int, value: &T) -> std::io::Result<()> {
        // SAFETY: `value` points to a live T of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                opt,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for XskSocket {
    fn drop(&mut self) {
        // SAFETY: `umem` was mapped with `umem_len` bytes in new() and is
        // not used after this (the socket fd is closed after, which only
        // unpins the pages).
        unsafe {
            libc::munmap(self.umem, self.umem_len);
        }
    }
}
