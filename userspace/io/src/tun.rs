//! A TUN device: the punt path that hands IPv4 packets to the host kernel.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::IoError;

/// A TUN interface (`IFF_TUN | IFF_NO_PI`: packets without an Ethernet
/// header or packet-info prefix) in the network namespace of the creating
/// thread. The interface exists as long as this value (it is not
/// persistent); bringing it up and addressing it is the caller's job.
#[derive(Debug)]
pub struct TunDevice {
    file: File,
    name: String,
}

impl TunDevice {
    /// Create the TUN interface `name` (at most 15 bytes; a `%d` in it is
    /// replaced by the kernel with a free number, see [`TunDevice::name`]).
    pub fn create(name: &str) -> Result<Self, IoError> {
        let mut ifr = ifreq_with_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| IoError::Os {
                op: "open /dev/net/tun",
                source,
            })?;
        // Writing a `Copy` union field is safe; IFF_TUN | IFF_NO_PI fits in i16.
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `ifr` is a
        // properly initialised, exclusively borrowed ifreq that outlives the
        // call, and the fd is an open /dev/net/tun file.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            return Err(IoError::Os {
                op: "ioctl TUNSETIFF",
                source: std::io::Error::last_os_error(),
            });
        }
        // The kernel writes back the final name, NUL-terminated.
        let name: String = ifr
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        Ok(TunDevice { file, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hand one IP packet (starting at the IP header) to the kernel.
    pub fn write(&self, packet: &[u8]) -> Result<usize, IoError> {
        (&self.file).write(packet).map_err(|source| IoError::Os {
            op: "write to TUN",
            source,
        })
    }

    /// Read one packet the kernel routed to this interface (blocks until
    /// one is available; poll [`AsRawFd::as_raw_fd`] first to avoid that).
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, IoError> {
        (&self.file).read(buf).map_err(|source| IoError::Os {
            op: "read from TUN",
            source,
        })
    }
}

impl AsRawFd for TunDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for TunDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn ifreq_with_name(name: &str) -> Result<libc::ifreq, IoError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/')
    {
        return Err(IoError::Config(format!(
            "invalid interface name {name:?} (1 to {} bytes, no NUL or '/')",
            libc::IFNAMSIZ - 1
        )));
    }
    // SAFETY: `ifreq` is a C struct of integers, arrays and a union of
    // plain-data members, for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_before_any_syscall() {
        for bad in ["", "0123456789abcdef", "a/b", "a\0b"] {
            assert!(
                matches!(TunDevice::create(bad), Err(IoError::Config(_))),
                "{bad:?}"
            );
        }
        let ifr = ifreq_with_name("fp-tun0").unwrap();
        assert_eq!(ifr.ifr_name[..8], b"fp-tun0\0".map(|b| b as libc::c_char));
    }
}
