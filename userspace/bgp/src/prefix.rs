//! IP prefixes and their NLRI encoding (RFC 4271 §4.3, RFC 4760 §5).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

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

/// Errors building a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The length is larger than the family allows.
    #[error("prefix length {0} too long")]
    Length(u8),
    /// Not `address/length`.
    #[error("not a prefix: {0:?}")]
    Syntax(String),
}

/// An IPv4 or IPv6 prefix; host bits are always zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix; host bits are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        match addr {
            IpAddr::V4(a) => {
                if len > 32 {
                    return Err(PrefixError::Length(len));
                }
                let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Ok(Prefix {
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & m)),
                    len,
                })
            }
            IpAddr::V6(a) => {
                if len > 128 {
                    return Err(PrefixError::Length(len));
                }
                let m = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                Ok(Prefix {
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & m)),
                    len,
                })
            }
        }
    }

    /// An IPv4 prefix.
    pub fn v4(addr: Ipv4Addr, len: u8) -> Result<Prefix, PrefixError> {
        Prefix::new(IpAddr::V4(addr), len)
    }

    /// Network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length.
    #[expect(
        clippy::len_without_is_empty,
        reason = "a prefix length, not a container"
    )]
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for a default route (`/0`).
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    /// The address family.
    pub fn afi(&self) -> Afi {
        match self.addr {
            IpAddr::V4(_) => Afi::Ipv4,
            IpAddr::V6(_) => Afi::Ipv6,
        }
    }

    /// True when `ip` is inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Prefix::new(ip, self.len).is_ok_and(|p| p == *self)
    }

    /// Bytes of the NLRI encoding: one length octet + the significant address octets.
    pub fn nlri_len(&self) -> usize {
        1 + usize::from(self.len).div_ceil(8)
    }

    /// Append the NLRI encoding (RFC 4271 §4.3: length in bits, then the minimum octets).
    pub fn encode_nlri(&self, out: &mut Vec<u8>) {
        out.push(self.len);
        let n = usize::from(self.len).div_ceil(8);
        match self.addr {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..n]),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..n]),
        }
    }

    /// Decode one NLRI entry at the start of `buf`; returns it and the octets used.
    /// `None` when the length exceeds the family's maximum or overruns `buf`.
    pub fn decode_nlri(buf: &[u8], afi: Afi) -> Option<(Prefix, usize)> {
        let (&len, rest) = buf.split_first()?;
        if len > afi.max_len() {
            return None;
        }
        let n = usize::from(len).div_ceil(8);
        let bytes = rest.get(..n)?;
        let addr = match afi {
            Afi::Ipv4 => {
                let mut o = [0u8; 4];
                o[..n].copy_from_slice(bytes);
                IpAddr::V4(Ipv4Addr::from(o))
            }
            Afi::Ipv6 => {
                let mut o = [0u8; 16];
                o[..n].copy_from_slice(bytes);
                IpAddr::V6(Ipv6Addr::from(o))
            }
        };
        Prefix::new(addr, len).ok().map(|p| (p, 1 + n))
    }

    /// Decode a whole NLRI field; `None` if any entry is malformed.
    pub fn decode_all(mut buf: &[u8], afi: Afi) -> Option<Vec<Prefix>> {
        let mut v = Vec::new();
        while !buf.is_empty() {
            let (p, n) = Prefix::decode_nlri(buf, afi)?;
            v.push(p);
            buf = &buf[n..];
        }
        Some(v)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| PrefixError::Syntax(s.to_string()))?;
        let addr: IpAddr = a.parse().map_err(|_| PrefixError::Syntax(s.to_string()))?;
        let len: u8 = l.parse().map_err(|_| PrefixError::Syntax(s.to_string()))?;
        Prefix::new(addr, len)
    }
}

impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
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
            let p: Prefix = s.parse().unwrap();
            let mut b = Vec::new();
            p.encode_nlri(&mut b);
            assert_eq!(b.len(), p.nlri_len());
            assert_eq!(Prefix::decode_nlri(&b, p.afi()), Some((p, b.len())), "{s}");
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            Prefix::decode_nlri(&[24, 10, 244, 1], Afi::Ipv4)
                .unwrap()
                .0
                .to_string(),
            "10.244.1.0/24"
        );
    }

    #[test]
    fn host_bits_cleared_and_bad_lengths_rejected() {
        assert_eq!(
            "10.1.2.3/8".parse::<Prefix>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(Prefix::decode_nlri(&[33, 1, 2, 3, 4, 5], Afi::Ipv4).is_none());
        assert!(Prefix::decode_nlri(&[24, 10, 244], Afi::Ipv4).is_none());
        assert!(Prefix::decode_nlri(&[], Afi::Ipv4).is_none());
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!(Prefix::v4(Ipv4Addr::new(10, 0, 0, 0), 8)
            .unwrap()
            .contains("10.9.9.9".parse().unwrap()));
    }
}
