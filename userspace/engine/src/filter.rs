//! Packet filters for trace and capture: `host A`, `src A`, `dst A`,
//! `proto tcp|udp|icmp|N`, `port N`, joined by `and` (tcpdump-like, a small subset).

use std::net::Ipv4Addr;

/// A parsed filter; an empty filter matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketFilter {
    host: Option<Ipv4Addr>,
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    proto: Option<u8>,
    port: Option<u16>,
}

impl PacketFilter {
    /// Parse `expr` (empty = match all); the error names the offending word.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let mut f = PacketFilter::default();
        let words: Vec<&str> = expr.split_whitespace().collect();
        let mut i = 0;
        while i < words.len() {
            let key = words[i];
            if key == "and" {
                i += 1;
                continue;
            }
            let val = words
                .get(i + 1)
                .ok_or_else(|| format!("filter: `{key}` needs a value"))?;
            let ip = || {
                val.parse::<Ipv4Addr>()
                    .map_err(|_| format!("filter: `{key} {val}`: not an IPv4 address"))
            };
            match key {
                "host" => f.host = Some(ip()?),
                "src" => f.src = Some(ip()?),
                "dst" => f.dst = Some(ip()?),
                "proto" => {
                    f.proto = Some(match *val {
                        "icmp" => 1,
                        "tcp" => 6,
                        "udp" => 17,
                        n => n.parse().map_err(|_| {
                            format!("filter: `proto {n}`: tcp, udp, icmp or a number")
                        })?,
                    })
                }
                "port" => {
                    f.port = Some(
                        val.parse()
                            .map_err(|_| format!("filter: `port {val}`: not a port number"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "filter: unknown word `{other}` (host, src, dst, proto, port, and)"
                    ))
                }
            }
            i += 2;
        }
        Ok(f)
    }

    /// True when the filter has no condition.
    pub fn is_empty(&self) -> bool {
        *self == PacketFilter::default()
    }

    /// Whether an Ethernet frame matches (non-IPv4 frames match only an empty filter).
    pub fn matches(&self, frame: &[u8]) -> bool {
        if self.is_empty() {
            return true;
        }
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
            return false;
        }
        let ip = &frame[14..];
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let proto = ip[9];
        if self.host.is_some_and(|h| h != src && h != dst)
            || self.src.is_some_and(|s| s != src)
            || self.dst.is_some_and(|d| d != dst)
            || self.proto.is_some_and(|p| p != proto)
        {
            return false;
        }
        if let Some(port) = self.port {
            let hl = ((ip[0] & 0x0f) as usize) * 4;
            let ports = ip.get(hl..hl + 4);
            match ports {
                Some(p) if proto == 6 || proto == 17 => {
                    let sp = u16::from_be_bytes([p[0], p[1]]);
                    let dp = u16::from_be_bytes([p[2], p[3]]);
                    if sp != port && dp != port {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{host_mac, pod_ip, pod_mac, udp_frame};

    #[test]
    fn parse_and_match() {
        let f = udp_frame(host_mac(1), pod_mac(1), pod_ip(1), pod_ip(2), 64, 4);
        assert!(PacketFilter::parse("").unwrap().matches(&f));
        assert!(PacketFilter::parse("host 10.244.1.11").unwrap().matches(&f));
        assert!(
            PacketFilter::parse("src 10.244.1.11 and proto udp and port 9")
                .unwrap()
                .matches(&f)
        );
        assert!(!PacketFilter::parse("proto tcp").unwrap().matches(&f));
        assert!(!PacketFilter::parse("dst 10.244.1.11").unwrap().matches(&f));
        assert!(!PacketFilter::parse("port 53").unwrap().matches(&f));
        assert!(PacketFilter::parse("proto")
            .unwrap_err()
            .contains("needs a value"));
        assert!(PacketFilter::parse("vlan 3")
            .unwrap_err()
            .contains("unknown word"));
        assert!(PacketFilter::parse("host x")
            .unwrap_err()
            .contains("not an IPv4"));
        assert!(!PacketFilter::parse("host 1.2.3.4")
            .unwrap()
            .matches(&f[..20]));
    }
}
