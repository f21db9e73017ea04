//! Address families and the NLRI encoding of prefixes (RFC 4271 §4.3, RFC 4760 §5). The
//! prefix type itself is [`ipnet::IpNet`], the control plane's one prefix type; its wire
//! coding is the [`Nlri`] trait and [`decode_nlri`] / [`decode_all`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Address family identifier (IANA AFI), with unicast SAFI the only one used. In
/// configuration and output it is spelled as `show bgp` prints it: `ipv4-unicast`,
/// `ipv6-unicast` ([`Afi::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Afi {
    /// IPv4 (1).
    #[serde(rename = "ipv4-unicast")]
    Ipv4,
    /// IPv6 (2).
    #[serde(rename = "ipv6-unicast")]
    Ipv6,
}

impl Afi {
    /// IANA number.
    pub fn code(self) -> u16 {
        match self {
            Afi::Ipv4 => 1,
            Afi::Ipv6 => 2,
        }
    }

    /// From the IANA number.
    pub fn from_code(c: u16) -> Option<Afi> {
        match c {
            1 => Some(Afi::Ipv4),
            2 => Some(Afi::Ipv6),
            _ => None,
        }
    }

    /// Maximum prefix length.
    pub fn max_len(self) -> u8 {
        match self {
            Afi::Ipv4 => 32,
            Afi::Ipv6 => 128,
        }
    }

    /// Lower-case name as used in logs and the API.
    pub fn name(self) -> &'static str {
        match self {
            Afi::Ipv4 => "ipv4-unicast",
            Afi::Ipv6 => "ipv6-unicast",
        }
    }
}

/// SAFI for unicast, the only one this speaker carries.
pub const SAFI_UNICAST: u8 = 1;

/// NLRI coding of the control plane's prefix type, [`IpNet`] (RFC 4271 §4.3: the length
/// in bits, then the minimum octets of the address).
pub trait Nlri {
    /// The address family.
    fn afi(&self) -> Afi;
    /// Bytes of the NLRI encoding: one length octet + the significant address octets.
    fn nlri_len(&self) -> usize;
    /// Append the NLRI encoding.
    fn encode_nlri(&self, out: &mut Vec<u8>);
}

impl Nlri for IpNet {
    fn afi(&self) -> Afi {
        match self {
            IpNet::V4(_) => Afi::Ipv4,
            IpNet::V6(_) => Afi::Ipv6,
        }
    }

    fn nlri_len(&self) -> usize {
        1 + usize::from(self.prefix_len()).div_ceil(8)
    }

    fn encode_nlri(&self, out: &mut Vec<u8>) {
        let len = self.prefix_len();
        out.push(len);
        let n = usize::from(len).div_ceil(8);
        // The network address: host bits never go on the wire.
        match self.network() {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..n]),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..n]),
        }
    }
}

/// The prefix `addr/len` with its host bits cleared; `None` when `len` is too long for
/// the family.
pub fn prefix(addr: IpAddr, len: u8) -> Option<IpNet> {
    IpNet::new(addr, len).ok().map(|p| p.trunc())
}

/// The IPv4 prefix `addr/len` with its host bits cleared; `None` when `len` > 32.
pub fn v4(addr: Ipv4Addr, len: u8) -> Option<IpNet> {
    Ipv4Net::new(addr, len).ok().map(|p| IpNet::V4(p.trunc()))
}

/// Decode one NLRI entry at the start of `buf`; returns it (host bits cleared) and the
/// octets used. `None` when the length exceeds the family's maximum or overruns `buf`.
pub fn decode_nlri(buf: &[u8], afi: Afi) -> Option<(IpNet, usize)> {
    let (&len, rest) = buf.split_first()?;
    if len > afi.max_len() {
        return None;
    }
    let n = usize::from(len).div_ceil(8);
    let bytes = rest.get(..n)?;
    let p = match afi {
        Afi::Ipv4 => {
            let mut o = [0u8; 4];
            o[..n].copy_from_slice(bytes);
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(o), len).ok()?.trunc())
        }
        Afi::Ipv6 => {
            let mut o = [0u8; 16];
            o[..n].copy_from_slice(bytes);
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(o), len).ok()?.trunc())
        }
    };
    Some((p, 1 + n))
}

/// Decode a whole NLRI field; `None` if any entry is malformed.
pub fn decode_all(mut buf: &[u8], afi: Afi) -> Option<Vec<IpNet>> {
    let mut v = Vec::new();
    while !buf.is_empty() {
        let (p, n) = decode_nlri(buf, afi)?;
        v.push(p);
        buf = &buf[n..];
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nlri_round_trip() {
        for s in [
            "10.244.1.0/24",
            "0.0.0.0/0",
            "10.1.2.3/32",
            "10.128.0.0/9",
            "2001:db8::/32",
            "::/0",
        ] {
            let p: IpNet = s.parse().unwrap();
            let mut b = Vec::new();
            p.encode_nlri(&mut b);
            assert_eq!(b.len(), p.nlri_len());
            assert_eq!(decode_nlri(&b, p.afi()), Some((p, b.len())), "{s}");
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            decode_nlri(&[24, 10, 244, 1], Afi::Ipv4)
                .unwrap()
                .0
                .to_string(),
            "10.244.1.0/24"
        );
    }

    #[test]
    fn host_bits_cleared_and_bad_lengths_rejected() {
        assert_eq!(
            v4(Ipv4Addr::new(10, 1, 2, 3), 8).unwrap().to_string(),
            "10.0.0.0/8"
        );
        // Host bits in the last octet on the wire are cleared, not kept.
        assert_eq!(
            decode_nlri(&[9, 10, 0xff], Afi::Ipv4)
                .unwrap()
                .0
                .to_string(),
            "10.128.0.0/9"
        );
        // and never sent.
        let mut b = Vec::new();
        "10.255.0.0/9".parse::<IpNet>().unwrap().encode_nlri(&mut b);
        assert_eq!(b, [9, 10, 0x80]);
        assert!(decode_nlri(&[33, 1, 2, 3, 4, 5], Afi::Ipv4).is_none());
        assert!(decode_nlri(&[129], Afi::Ipv6).is_none());
        assert!(decode_nlri(&[24, 10, 244], Afi::Ipv4).is_none());
        assert!(decode_nlri(&[], Afi::Ipv4).is_none());
        assert!(v4(Ipv4Addr::new(10, 0, 0, 0), 33).is_none());
        assert!(prefix("2001:db8::1".parse().unwrap(), 129).is_none());
        assert_eq!(
            prefix("2001:db8::1".parse().unwrap(), 32)
                .unwrap()
                .to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            decode_all(&[8, 10, 16, 172, 16], Afi::Ipv4).unwrap().len(),
            2
        );
        assert!(decode_all(&[8, 10, 16, 172], Afi::Ipv4).is_none());
    }
}
