//! [`Ipv4Cidr`]: an IPv4 address with a prefix length, as written in the spec.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// An error parsing an [`Ipv4Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrParseError {
    /// No `/` separator.
    #[error("expected ADDRESS/PREFIX, got {0:?}")]
    MissingPrefix(String),
    /// The address part is not a dotted-quad IPv4 address.
    #[error("invalid IPv4 address {0:?}")]
    BadAddress(String),
    /// The prefix part is not a number in 0..=32.
    #[error("invalid prefix length {0:?} (expected 0..=32)")]
    BadPrefix(String),
}

/// An IPv4 address with a prefix length, e.g. `192.168.100.2/24`.
///
/// The address may have host bits set (an interface address); use [`Ipv4Cidr::network`]
/// for the network itself and [`Ipv4Cidr::is_network`] to check that there are none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The address (host bits possibly set).
    pub addr: Ipv4Addr,
    /// The prefix length, 0..=32.
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// Builds a CIDR; `None` if `prefix_len > 32`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= 32).then_some(Ipv4Cidr { addr, prefix_len })
    }

    /// The netmask as a host-order integer.
    pub fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }

    /// The network: the address with its host bits cleared.
    pub fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    /// The directed broadcast address of the network (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether the address has no host bits set.
    pub fn is_network(&self) -> bool {
        self.network().addr == self.addr
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// Whether `other` is entirely inside this network (equal networks included).
    pub fn contains_net(&self, other: &Ipv4Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.addr)
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains_net(other) || other.contains_net(self)
    }

    /// Whether `ip` is a usable host address of this network: inside it and, for prefixes
    /// shorter than /31, neither the network nor the broadcast address.
    pub fn is_host_of(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip)
            && (self.prefix_len >= 31 || (ip != self.network().addr && ip != self.broadcast()))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| CidrParseError::MissingPrefix(s.to_string()))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| CidrParseError::BadAddress(addr.to_string()))?;
        // u8::from_str accepts a leading '+': require plain digits.
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrParseError::BadPrefix(prefix.to_string()));
        }
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| CidrParseError::BadPrefix(prefix.to_string()))?;
        Ipv4Cidr::new(addr, prefix_len).ok_or_else(|| CidrParseError::BadPrefix(prefix.to_string()))
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
