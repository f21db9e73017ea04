//! IPv4 prefixes in the spec: [`ipnet::Ipv4Net`], the control plane's one prefix type.
//!
//! An `Ipv4Net` keeps the host bits it was written with (`node.address: 192.168.100.2/24` is an
//! interface address; [`Ipv4Net::trunc`] gives its network, [`Ipv4Net::network`] the network's
//! first address). What ipnet lacks and the agent needs is here:
//!
//! - [`parse_ipv4_net`]: the spec's parser. ipnet's `FromStr` says only "invalid IP address
//!   syntax"; this one says which part is wrong (`invalid prefix length "33" (expected
//!   0..=32)`), and refuses `/+8` or `/033`, which are typos in a spec.
//! - [`de`]: `#[serde(deserialize_with = ...)]` helpers that deserialize spec fields (plain,
//!   `Option`, `Vec`) through that parser, so YAML errors keep naming the field.
//! - [`Ipv4NetExt`]: `is_network`, `is_host_of`, `overlaps`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// An error parsing an IPv4 prefix written `ADDRESS/PREFIX`.
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

/// Parses `ADDRESS/PREFIX` (e.g. `192.168.100.2/24`; host bits kept) into an [`Ipv4Net`],
/// with an error that says which part is wrong.
pub fn parse_ipv4_net(s: &str) -> Result<Ipv4Net, CidrParseError> {
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
    Ipv4Net::new(addr, prefix_len).map_err(|_| CidrParseError::BadPrefix(prefix.to_string()))
}

/// Serde helpers for spec fields holding [`Ipv4Net`]s, used as
/// `#[serde(deserialize_with = "crate::spec::de::ipv4_net")]` (or `opt_ipv4_net`,
/// `vec_ipv4_net`): they parse with [`parse_ipv4_net`], so a YAML error names the field and
/// says what is wrong with the prefix. An `Option` field also needs `#[serde(default)]`.
pub mod de {
    use ipnet::Ipv4Net;
    use serde::{Deserialize, Deserializer};

    /// A prefix in its text form, parsed by [`super::parse_ipv4_net`].
    struct Text(Ipv4Net);

    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let s = String::deserialize(deserializer)?;
            super::parse_ipv4_net(&s)
                .map(Text)
                .map_err(serde::de::Error::custom)
        }
    }

    /// Deserializes an `Ipv4Net` field.
    pub fn ipv4_net<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Ipv4Net, D::Error> {
        Text::deserialize(deserializer).map(|t| t.0)
    }

    /// Deserializes an `Option<Ipv4Net>` field (`null` is `None`).
    pub fn opt_ipv4_net<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Ipv4Net>, D::Error> {
        Ok(Option::<Text>::deserialize(deserializer)?.map(|t| t.0))
    }

    /// Deserializes a `Vec<Ipv4Net>` field.
    pub fn vec_ipv4_net<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Ipv4Net>, D::Error> {
        Ok(Vec::<Text>::deserialize(deserializer)?
            .into_iter()
            .map(|t| t.0)
            .collect())
    }
}

/// What the agent asks of a prefix beyond what [`Ipv4Net`] offers.
pub trait Ipv4NetExt {
    /// Whether the address has no host bits set (`10.244.1.0/24`, not `10.244.1.1/24`).
    fn is_network(&self) -> bool;

    /// Whether `ip` is a usable host address of this network: inside it and, for prefixes
    /// shorter than /31, neither the network nor the broadcast address.
    fn is_host_of(&self, ip: Ipv4Addr) -> bool;

    /// Whether the two networks share at least one address.
    fn overlaps(&self, other: &Ipv4Net) -> bool;
}

impl Ipv4NetExt for Ipv4Net {
    fn is_network(&self) -> bool {
        self.addr() == self.network()
    }

    fn is_host_of(&self, ip: Ipv4Addr) -> bool {
        self.contains(&ip)
            && (self.prefix_len() >= 31 || (ip != self.network() && ip != self.broadcast()))
    }

    fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other) || other.contains(self)
    }
}
