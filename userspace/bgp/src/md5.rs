//! TCP MD5 signatures (RFC 2385) for BGP sessions: a key per peer address on a socket
//! (`setsockopt(IPPROTO_TCP, TCP_MD5SIG)`). On a listening socket the keys apply to the
//! connections it accepts; on a connecting socket to the connection it opens. The kernel
//! signs every segment to and checks every segment from that address; a segment that is
//! unsigned or wrongly signed is dropped, so a peer with the wrong password never gets
//! past the TCP handshake.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// Longest key the kernel takes (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` from `<linux/tcp.h>`.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MAX_KEY_LEN],
}

/// Check a password before any socket sees it.
pub fn validate(password: &str) -> Result<(), String> {
    if password.is_empty() {
        return Err("password must not be empty".into());
    }
    if password.len() > MAX_KEY_LEN {
        return Err(format!("password longer than {MAX_KEY_LEN} octets"));
    }
    Ok(())
}

/// Install (`Some`) or remove (`None`) the MD5 key for `peer` on `sock`. `v6_socket`:
/// `sock` is an AF_INET6 socket (IPv4 peers are then keyed by their mapped address).
pub fn set_key(
    sock: &impl AsRawFd,
    v6_socket: bool,
    peer: IpAddr,
    password: Option<&str>,
) -> io::Result<()> {
    let key = password.unwrap_or("").as_bytes();
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP-MD5 password longer than 80 octets",
        ));
    }
    // SAFETY: an all-zero `tcp_md5sig` (plain integers and byte arrays) is valid.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let storage = &mut sig.addr as *mut libc::sockaddr_storage;
    match (peer, v6_socket) {
        (IpAddr::V4(a), false) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is large and aligned enough for any sockaddr;
            // `storage` points at `sig.addr`, which lives for this whole function.
            unsafe { std::ptr::write(storage.cast::<libc::sockaddr_in>(), sin) };
        }
        (ip, _) => {
            let v6 = match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for `sockaddr_in6`.
            unsafe { std::ptr::write(storage.cast::<libc::sockaddr_in6>(), sin6) };
        }
    }
    sig.keylen = key.len() as u16; // <= 80, checked above
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: `sig` is a valid, initialised `struct tcp_md5sig` and the length passed is
    // its size; the kernel only reads it. The fd is open for the duration (borrowed).
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&sig as *const TcpMd5Sig).cast::<libc::c_void>(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<TcpMd5Sig>(), 216);
    }

    #[test]
    fn keys_on_v4_and_v6_sockets() {
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let l4 = TcpListener::bind("127.0.0.1:0").expect("bind v4");
        set_key(&l4, false, peer, Some("s3cret")).expect("add v4 key");
        set_key(&l4, false, peer, None).expect("remove v4 key");
        if let Ok(l6) = TcpListener::bind("[::1]:0") {
            set_key(&l6, true, peer, Some("s3cret")).expect("mapped key on a v6 socket");
            set_key(&l6, true, "2001:db8::1".parse().expect("ip"), Some("x")).expect("v6 key");
        }
        assert!(validate("").is_err());
        assert!(validate(&"x".repeat(81)).is_err());
        assert!(validate("ok").is_ok());
    }
}
