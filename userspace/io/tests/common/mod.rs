//! Shared helpers for the root-only tests: a test XDP program, raw AF_PACKET sockets; the
//! root check and the network namespace guard are the testkit's.
#![allow(dead_code)]

use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aya::maps::XskMap;
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;
use ferroplane_testkit::netns::run;
pub use ferroplane_testkit::{enter_netns, require_root, Netns};
use nix::sys::socket::{self, sockopt, MsgFlags};

/// EtherType the test XDP program redirects.
pub const ETH_P_TEST: u16 = 0x88b5;

/// The namespace these tests use: IPv6 off, so the links carry only the frames a test sends.
pub fn quiet_netns(tag: &str) -> Netns {
    Netns::new_ipv4_only(tag)
}

/// Compile tests/xdp/to_xsk.c once per test process.
pub fn xdp_object() -> &'static Path {
    static OBJ: OnceLock<PathBuf> = OnceLock::new();
    OBJ.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xdp/to_xsk.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fp-io-to-xsk-{}.o", std::process::id()));
        run(Command::new("clang-19")
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-I/usr/include/x86_64-linux-gnu",
                "-c",
            ])
            .arg(&src)
            .arg("-o")
            .arg(&out));
        out
    })
}

/// One instance of the test XDP program attached to an interface, with its
/// own XSKMAP. Detached on drop.
pub struct XdpToXsk {
    bpf: Ebpf,
}

impl XdpToXsk {
    pub fn attach(ifname: &str) -> XdpToXsk {
        let mut bpf = Ebpf::load_file(xdp_object()).unwrap();
        let prog: &mut Xdp = bpf.program_mut("xdp_to_xsk").unwrap().try_into().unwrap();
        prog.load().unwrap();
        prog.attach(ifname, XdpMode::Driver).unwrap();
        XdpToXsk { bpf }
    }

    /// Point XSKMAP slot `queue` at the socket `fd`.
    pub fn set_socket(&mut self, queue: u32, fd: RawFd) {
        let mut map = XskMap::try_from(self.bpf.map_mut("xsks").unwrap()).unwrap();
        map.set(queue, fd, 0).unwrap();
    }
}

/// A raw AF_PACKET socket bound to one interface and [`ETH_P_TEST`],
/// non-blocking, with a large receive buffer.
pub struct RawSock {
    fd: OwnedFd,
}

impl RawSock {
    pub fn bind(ifname: &str) -> RawSock {
        RawSock::bind_proto(ifname, ETH_P_TEST)
    }

    /// Like [`RawSock::bind`], for every EtherType (`ETH_P_ALL`).
    pub fn bind_all(ifname: &str) -> RawSock {
        RawSock::bind_proto(ifname, libc::ETH_P_ALL as u16)
    }

    fn bind_proto(ifname: &str, ethertype: u16) -> RawSock {
        let ifindex = nix::net::if_::if_nametoindex(ifname).unwrap();
        let proto = ethertype.to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a freshly created fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        socket::setsockopt(&fd, sockopt::RcvBufForce, &(16 << 20)).unwrap();
        socket::setsockopt(&fd, sockopt::SndBufForce, &(4 << 20)).unwrap();
        RawSock { fd }
    }

    /// Send one frame, retrying while the socket is busy (up to 1 s).
    pub fn send(&self, frame: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match socket::send(self.fd.as_raw_fd(), frame, MsgFlags::empty()) {
                Ok(n) => {
                    assert_eq!(n, frame.len());
                    return;
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::ENOBUFS)
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) => panic!("send on AF_PACKET: {e}"),
            }
        }
    }

    /// Receive one frame if one is queued.
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<usize> {
        match socket::recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => Some(n),
            Err(nix::errno::Errno::EAGAIN) => None,
            Err(e) => panic!("recv on AF_PACKET: {e}"),
        }
    }
}

/// A 60-byte test frame carrying `tag` and `seq`.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], tag: u32, seq: u32) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETH_P_TEST.to_be_bytes());
    f[14..18].copy_from_slice(&tag.to_be_bytes());
    f[18..22].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[22..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// (tag, seq) of a frame built by [`test_frame`].
pub fn parse_test_frame(f: &[u8]) -> Option<(u32, u32)> {
    if f.len() < 22 || f[12..14] != ETH_P_TEST.to_be_bytes() {
        return None;
    }
    let tag = u32::from_be_bytes(f[14..18].try_into().ok()?);
    let seq = u32::from_be_bytes(f[18..22].try_into().ok()?);
    Some((tag, seq))
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}
