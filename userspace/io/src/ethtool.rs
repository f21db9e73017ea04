//! Interface offload settings through the (legacy) ethtool ioctl.
//!
//! Frames that reach the engine through AF_XDP carry no checksum metadata, so
//! a sender that leaves its TCP/UDP checksum to offload (`CHECKSUM_PARTIAL`,
//! the default on veth) would deliver packets with wrong checksums once the
//! engine forwards them. The agent turns TX checksum offload off on the pod
//! side of each veth, as Calico's VPP dataplane does for its pod interfaces.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::IoError;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

fn ethtool(ifname: &str, value: &mut EthtoolValue) -> Result<(), IoError> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(IoError::Config(format!("bad interface name {ifname:?}")));
    }
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(IoError::Os {
            op: "socket for ethtool",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is a freshly created, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: (value as *mut EthtoolValue).cast(),
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCETHTOOL reads the ifreq (NUL-terminated name, pointer to an
    // ethtool_value that lives across the call) and writes only into that value.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(IoError::Os {
            op: "SIOCETHTOOL",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether TX checksum offload is on for `ifname` (in the caller's network namespace).
pub fn tx_checksum(ifname: &str) -> Result<bool, IoError> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_GTXCSUM,
        data: 0,
    };
    ethtool(ifname, &mut v)?;
    Ok(v.data != 0)
}

/// Turn TX checksum offload on or off for `ifname` (in the caller's network namespace).
pub fn set_tx_checksum(ifname: &str, enabled: bool) -> Result<(), IoError> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(enabled),
    };
    ethtool(ifname, &mut v)
}

/// Whether generic receive offload is on for `ifname` (in the caller's network namespace).
pub fn gro(ifname: &str) -> Result<bool, IoError> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_GGRO,
        data: 0,
    };
    ethtool(ifname, &mut v)?;
    Ok(v.data != 0)
}

/// Turn generic receive offload on or off for `ifname` (in the caller's network namespace).
///
/// On a veth, GRO also switches its receive path to NAPI, which is what lets an XDP program
/// on its peer redirect frames into it (`ndo_xdp_xmit`): the XDP flow cache sends to pods
/// that way while the engine is away.
pub fn set_gro(ifname: &str, enabled: bool) -> Result<(), IoError> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: u32::from(enabled),
    };
    ethtool(ifname, &mut v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_checksum_setting_reads_back() {
        // Reading is harmless on lo in the test's namespace; a bad name is an error.
        assert!(tx_checksum("lo").is_ok());
        assert!(tx_checksum("").is_err());
        assert!(tx_checksum("no-such-if-xyz").is_err());
        assert!(gro("lo").is_ok());
        assert!(gro("no-such-if-xyz").is_err());
    }
}
