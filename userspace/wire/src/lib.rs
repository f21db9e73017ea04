//! Packet formats for the ferroplane dataplane.
//!
//! Every header is a typed, zero-copy view over a byte buffer, in the style of
//! smoltcp's `wire` module:
//!
//! * `X<T: AsRef<[u8]>>` wraps a buffer; `new_checked` validates lengths (and the
//!   invariants listed on each type) once, after which no getter or setter can
//!   panic. `new_unchecked` skips validation for buffers the caller has sized.
//! * Getters need `AsRef<[u8]>`, setters `AsRef<[u8]> + AsMut<[u8]>`.
//! * All numbers are host order in the API; addresses are
//!   [`Ipv4Addr`](core::net::Ipv4Addr) and [`EthernetAddress`].
//! * `Repr` types ([`EthernetRepr`], [`ArpRepr`], [`Ipv4Repr`], and for tunnels
//!   [`OuterIpv4Repr`], [`VxlanRepr`], [`WireGuardRepr`]) are validated summaries
//!   with `parse`, `buffer_len` and `emit`.
//!
//! Nothing here allocates, and nothing panics on any input reaching a view built
//! with `new_checked` (the fuzz targets in `fuzz/` exercise exactly that).
//! Associated constants such as [`Ipv4Packet::HEADER_LEN`] or
//! [`ArpPacket::REQUEST`] can be written without naming the buffer type; each
//! module also exports them as plain constants.
//!
//! ```
//! use ferroplane_wire::{EtherType, EthernetFrame, IpProtocol, Ipv4Packet, UdpPacket};
//!
//! # fn forward(frame: &mut [u8]) -> ferroplane_wire::Result<()> {
//! let mut eth = EthernetFrame::new_checked(frame)?;
//! if eth.ethertype() == EtherType::IPV4 {
//!     let mut ip = Ipv4Packet::new_checked(eth.payload_mut())?;
//!     if ip.ttl() > 1 && ip.verify_checksum() {
//!         ip.decrement_ttl();
//!     }
//!     if ip.protocol() == IpProtocol::UDP {
//!         let (src, dst) = (ip.src_addr(), ip.dst_addr());
//!         let udp = UdpPacket::new_checked(ip.payload())?;
//!         assert!(udp.verify_checksum(src, dst));
//!     }
//! }
//! # Ok(())
//! # }
//! # let mut frame = [0u8; 14 + 28];
//! # frame[12] = 0x08;
//! # frame[14..].copy_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1,
//! #     10, 0, 0, 2, 0x04, 0xd2, 0, 53, 0, 8, 0, 0]);
//! # Ipv4Packet::new_checked(&mut frame[14..]).unwrap().fill_checksum();
//! # forward(&mut frame).unwrap();
//! # assert_eq!(frame[14 + 8], 63);
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod ipip;
pub mod ipv4;
pub mod tcp;
pub mod udp;
pub mod vxlan;
pub mod wireguard;

pub use arp::{ArpPacket, ArpRepr};
pub use ethernet::{EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
pub use icmpv4::Icmpv4Packet;
pub use ipip::{IpipPacket, OuterIpv4Repr};
pub use ipv4::{IpProtocol, Ipv4Packet, Ipv4Repr};
pub use tcp::TcpPacket;
pub use udp::UdpPacket;
pub use vxlan::{VxlanPacket, VxlanRepr};
pub use wireguard::{MessageType, WireGuardPacket, WireGuardRepr};

/// Why a buffer could not be viewed or parsed as a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header or a length field says.
    #[error("truncated packet")]
    Truncated,
    /// A field holds a value the format does not allow (or we do not support).
    #[error("malformed packet")]
    Malformed,
    /// The checksum does not verify.
    #[error("bad checksum")]
    Checksum,
}

/// Result type of this crate.
pub type Result<T> = core::result::Result<T, Error>;

/// A byte range of a header field.
pub(crate) type Field = core::ops::Range<usize>;
/// The byte range from a field to the end of the buffer.
pub(crate) type Rest = core::ops::RangeFrom<usize>;

/// Reads a big-endian `u16` at `field` (two bytes). Callers guarantee the range is in bounds.
#[inline(always)]
pub(crate) fn read_u16(data: &[u8], field: Field) -> u16 {
    let b = &data[field];
    u16::from_be_bytes([b[0], b[1]])
}

/// Writes a big-endian `u16` at `field` (two bytes).
#[inline(always)]
pub(crate) fn write_u16(data: &mut [u8], field: Field, value: u16) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

/// Reads a big-endian `u32` at `field` (four bytes).
#[inline(always)]
pub(crate) fn read_u32(data: &[u8], field: Field) -> u32 {
    let b = &data[field];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Writes a big-endian `u32` at `field` (four bytes).
#[inline(always)]
pub(crate) fn write_u32(data: &mut [u8], field: Field, value: u32) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

/// Reads an IPv4 address at `field` (four bytes).
#[inline(always)]
pub(crate) fn read_ipv4(data: &[u8], field: Field) -> core::net::Ipv4Addr {
    core::net::Ipv4Addr::from(read_u32(data, field))
}

/// Writes an IPv4 address at `field` (four bytes).
#[inline(always)]
pub(crate) fn write_ipv4(data: &mut [u8], field: Field, addr: core::net::Ipv4Addr) {
    data[field].copy_from_slice(&addr.octets());
}

/// Returns `data[start..end]` clamped to the buffer, never panicking.
#[inline(always)]
pub(crate) fn clamped(data: &[u8], start: usize, end: usize) -> &[u8] {
    let end = end.min(data.len());
    let start = start.min(end);
    &data[start..end]
}

/// Mutable version of [`clamped`].
#[inline(always)]
pub(crate) fn clamped_mut(data: &mut [u8], start: usize, end: usize) -> &mut [u8] {
    let end = end.min(data.len());
    let start = start.min(end);
    &mut data[start..end]
}

#[cfg(test)]
pub(crate) mod test_util {
    /// A buffer of `len` bytes pre-filled with 0xa5, so fields a builder forgot show up.
    pub fn a5(len: usize) -> Vec<u8> {
        vec![0xa5; len]
    }
}
