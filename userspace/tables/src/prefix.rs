//! IPv4 prefixes.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix (`10.244.1.0/24`); host bits are always zero.
///
/// The dataplane's LPM key, not the control plane's prefix type (that is `ipnet::Ipv4Net`):
/// it holds a host-order `u32` with the host bits cleared by construction, so the FIB compares
/// and masks keys with no conversion or check per lookup. Convert with `From` both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Prefix {
    addr: u32,
    len: u8,
}

/// Errors parsing or building a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The prefix length is above 32.
    #[error("prefix length {0} is longer than 32")]
    Length(u8),
    /// The text is not `a.b.c.d/len`.
    #[error("{0:?} is not an IPv4 prefix (a.b.c.d/len)")]
    Syntax(String),
    /// Bits are set past the prefix length.
    #[error("{0} has host bits set (did you mean {1}?)")]
    HostBits(String, String),
}

impl Ipv4Prefix {
    /// The default route `0.0.0.0/0`.
    pub const DEFAULT: Ipv4Prefix = Ipv4Prefix { addr: 0, len: 0 };

    /// A prefix from an address and length; host bits are cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, PrefixError> {
        if len > 32 {
            return Err(PrefixError::Length(len));
        }
        Ok(Ipv4Prefix {
            addr: u32::from(addr) & mask(len),
            len,
        })
    }

    /// A /32 host prefix.
    pub fn host(addr: Ipv4Addr) -> Self {
        Ipv4Prefix {
            addr: u32::from(addr),
            len: 32,
        }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    /// The network address as a host-order integer.
    pub fn addr_u32(&self) -> u32 {
        self.addr
    }

    /// The prefix length.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for `0.0.0.0/0`.
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.addr
    }
}

/// The netmask of a prefix length as a host-order integer.
pub fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// The network of `net` (its host bits cleared).
impl From<ipnet::Ipv4Net> for Ipv4Prefix {
    fn from(net: ipnet::Ipv4Net) -> Self {
        Ipv4Prefix {
            addr: u32::from(net.network()),
            len: net.prefix_len(),
        }
    }
}

impl From<Ipv4Prefix> for ipnet::Ipv4Net {
    fn from(p: Ipv4Prefix) -> Self {
        // `len` is at most 32: every constructor checks it, so this cannot panic.
        ipnet::Ipv4Net::new_assert(p.addr(), p.len)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| PrefixError::Syntax(s.to_string()))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| PrefixError::Syntax(s.to_string()))?;
        let len: u8 = l.parse().map_err(|_| PrefixError::Syntax(s.to_string()))?;
        let p = Ipv4Prefix::new(addr, len)?;
        if p.addr() != addr {
            return Err(PrefixError::HostBits(s.to_string(), p.to_string()));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contains() {
        let p: Ipv4Prefix = "10.244.1.0/24".parse().unwrap();
        assert_eq!(p.len(), 24);
        assert!(p.contains("10.244.1.77".parse().unwrap()));
        assert!(!p.contains("10.244.2.1".parse().unwrap()));
        assert_eq!(p.to_string(), "10.244.1.0/24");
        assert!(Ipv4Prefix::DEFAULT.contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn ipnet_conversions() {
        let net: ipnet::Ipv4Net = "10.244.1.7/24".parse().unwrap();
        let p = Ipv4Prefix::from(net);
        assert_eq!(p.to_string(), "10.244.1.0/24", "host bits cleared");
        assert_eq!(ipnet::Ipv4Net::from(p), net.trunc());
        assert_eq!(
            ipnet::Ipv4Net::from(Ipv4Prefix::DEFAULT).to_string(),
            "0.0.0.0/0"
        );
        let host = Ipv4Prefix::host(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(Ipv4Prefix::from(ipnet::Ipv4Net::from(host)), host);
    }

    #[test]
    fn parse_errors() {
        assert!(matches!(
            "10.244.1.1/24".parse::<Ipv4Prefix>(),
            Err(PrefixError::HostBits(..))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Ipv4Prefix>(),
            Err(PrefixError::Length(33))
        ));
        assert!(matches!(
            "10.0.0.0".parse::<Ipv4Prefix>(),
            Err(PrefixError::Syntax(_))
        ));
        assert!(matches!(
            "x/8".parse::<Ipv4Prefix>(),
            Err(PrefixError::Syntax(_))
        ));
    }

    #[test]
    fn masks() {
        assert_eq!(mask(0), 0);
        assert_eq!(mask(8), 0xff00_0000);
        assert_eq!(mask(32), u32::MAX);
    }
}
