//! The uplink's steering decision in userspace, for an uplink whose frames never pass
//! through XDP (the DPDK uplink): which received frames the engine must see, and which
//! belong to the host and go to its exception interface (a TAP carrying the node's
//! address).
//!
//! [`SteerTables::to_engine`] is `xdp_uplink` (ebpf/xdp_uplink.c) decision for decision,
//! over copies of the same four BPF maps (`host4`, `tunnel4`, `ports4`, `steer4`):
//!
//! - non-IPv4 (ARP, IPv6, VLAN, ...), a truncated Ethernet header: host;
//! - truncated or malformed IPv4 (version, IHL, total length): host (the kernel's IPv4
//!   input drops exactly these, never forwards them);
//! - to one of the node's addresses: the engine for tunnel traffic (IPIP, UDP to a
//!   `tunnel4` port), TCP/UDP to a `ports4` port or an ICMP echo reply whose id is in
//!   `ports4` (NodePorts, returns of SNATed flows), and fragments; otherwise the host;
//! - to an address inside a `steer4` prefix (the pod CIDR, service addresses): the engine;
//! - anything else: the host.
//!
//! [`Steering`] is the handle the control plane publishes new tables through and the
//! I/O worker reads them from (one read lock per burst; the writer swaps an `Arc`).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The steering sets of one node, as `xdp_uplink` sees them in its BPF maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SteerTables {
    /// The node's own addresses (`host4`).
    host4: HashSet<Ipv4Addr>,
    /// `protocol << 16 | UDP port` (0 for IPIP) of tunnels the engine decapsulates
    /// (`tunnel4`).
    tunnel4: HashSet<u32>,
    /// `protocol << 16 | port` of NodePorts, hostPorts and SNAT ports; for ICMP the
    /// echo id (`ports4`).
    ports4: HashSet<u32>,
    /// Engine-bound prefixes (`steer4`): per prefix length, the masked network addresses.
    steer4: Vec<(u8, HashSet<u32>)>,
}

/// Where a frame received on the uplink goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steer {
    /// The engine (as `xdp_uplink`'s redirect into the AF_XDP socket).
    Engine,
    /// The host's exception interface (as `xdp_uplink`'s `XDP_PASS`).
    Host,
}

fn key(proto: u8, port: u16) -> u32 {
    (u32::from(proto) << 16) | u32::from(port)
}

fn mask(len: u8) -> u32 {
    match len {
        0 => 0,
        l => u32::MAX << (32 - u32::from(l.min(32))),
    }
}

impl SteerTables {
    /// Empty tables: everything goes to the host.
    pub fn new() -> Self {
        SteerTables::default()
    }

    /// Adds one of the node's addresses (`host4`).
    pub fn add_host4(&mut self, addr: Ipv4Addr) {
        self.host4.insert(addr);
    }

    /// Adds a tunnel the engine decapsulates: IP protocol 4 (port 0) or UDP to `port`.
    pub fn add_tunnel4(&mut self, proto: u8, port: u16) {
        self.tunnel4.insert(key(proto, port));
    }

    /// Adds a port of the node that belongs to the engine (`ports4`: NodePort, hostPort,
    /// SNAT port; for protocol 1 an ICMP echo id).
    pub fn add_port4(&mut self, proto: u8, port: u16) {
        self.ports4.insert(key(proto, port));
    }

    /// Adds an engine-bound prefix (`steer4`: the pod CIDR, a service address /32).
    pub fn add_steer4(&mut self, addr: Ipv4Addr, prefix_len: u8) {
        let len = prefix_len.min(32);
        let net = u32::from(addr) & mask(len);
        match self.steer4.iter_mut().find(|(l, _)| *l == len) {
            Some((_, set)) => {
                set.insert(net);
            }
            None => {
                self.steer4.push((len, HashSet::from([net])));
                // Longest first (only membership matters, but it keeps lookups of the
                // common /32 service addresses first).
                self.steer4.sort_by_key(|e| std::cmp::Reverse(e.0));
            }
        }
    }

    fn is_steered(&self, addr: u32) -> bool {
        self.steer4
            .iter()
            .any(|(len, set)| set.contains(&(addr & mask(*len))))
    }

    /// Where the Ethernet frame `frame`, received on the uplink, goes: the same decision
    /// as `xdp_uplink` (see the module docs).
    pub fn to_engine(&self, frame: &[u8]) -> Steer {
        if frame.len() < ETH_HLEN || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IP {
            return Steer::Host;
        }
        let ip = &frame[ETH_HLEN..];
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
            return Steer::Host;
        }
        let hdr_len = usize::from(ip[0] & 0x0f) * 4;
        let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if hdr_len > ip.len() || tot_len < hdr_len || tot_len > ip.len() {
            return Steer::Host;
        }
        let proto = ip[9];
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
        // Layer 4 as far as the frame goes (xdp_uplink checks against the frame's end).
        let l4 = &ip[hdr_len..];
        if self.host4.contains(&Ipv4Addr::from(dst)) {
            let engine = self.is_tunnel(proto, l4)
                || self.is_service_port(proto, frag, l4)
                || frag & 0x3fff != 0;
            return if engine { Steer::Engine } else { Steer::Host };
        }
        if self.is_steered(dst) {
            Steer::Engine
        } else {
            Steer::Host
        }
    }

    /// `fp_is_tunnel4`: IPIP, or UDP to a `tunnel4` port.
    fn is_tunnel(&self, proto: u8, l4: &[u8]) -> bool {
        match proto {
            IPPROTO_IPIP => self.tunnel4.contains(&key(IPPROTO_IPIP, 0)),
            IPPROTO_UDP if l4.len() >= 8 => self
                .tunnel4
                .contains(&key(IPPROTO_UDP, u16::from_be_bytes([l4[2], l4[3]]))),
            _ => false,
        }
    }

    /// `fp_is_service_port4`: TCP/UDP to a `ports4` port, an ICMP echo reply whose id is
    /// in `ports4`; never a non-first fragment.
    fn is_service_port(&self, proto: u8, frag: u16, l4: &[u8]) -> bool {
        if frag & 0x1fff != 0 {
            return false;
        }
        let port = match proto {
            IPPROTO_TCP | IPPROTO_UDP if l4.len() >= 8 => u16::from_be_bytes([l4[2], l4[3]]),
            IPPROTO_ICMP if l4.len() >= 8 && l4[0] == 0 => u16::from_be_bytes([l4[4], l4[5]]),
            _ => return false,
        };
        self.ports4.contains(&key(proto, port))
    }
}

/// Shared, replaceable [`SteerTables`]: the control plane publishes, the uplink's poller
/// reads the current version once per burst.
#[derive(Clone, Debug, Default)]
pub struct Steering {
    current: Arc<RwLock<Arc<SteerTables>>>,
}

impl Steering {
    /// A handle starting with `tables`.
    pub fn new(tables: SteerTables) -> Self {
        Steering {
            current: Arc::new(RwLock::new(Arc::new(tables))),
        }
    }

    /// Replaces the tables (every clone of this handle sees the new ones).
    pub fn publish(&self, tables: SteerTables) {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        *cur = Arc::new(tables);
    }

    /// The tables in force now.
    pub fn current(&self) -> Arc<SteerTables> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

    /// An Ethernet + IPv4 frame with `l4` after a 20-byte header.
    fn ipv4(dst: Ipv4Addr, proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let tot = (20 + l4.len()) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[192, 168, 77, 1]);
        ip[16..20].copy_from_slice(&dst.octets());
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    fn udp(dport: u16) -> Vec<u8> {
        let mut l4 = vec![0u8; 8];
        l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4
    }

    fn tables() -> SteerTables {
        let mut t = SteerTables::new();
        t.add_host4(NODE);
        t.add_tunnel4(IPPROTO_UDP, 4789);
        t.add_port4(IPPROTO_TCP, 30080);
        t.add_port4(IPPROTO_ICMP, 7);
        t.add_steer4(Ipv4Addr::new(10, 244, 1, 0), 24);
        t.add_steer4(Ipv4Addr::new(10, 96, 0, 10), 32);
        t
    }

    #[test]
    fn non_ipv4_and_malformed_go_to_the_host() {
        let t = tables();
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(t.to_engine(&arp), Steer::Host);
        assert_eq!(t.to_engine(&[0u8; 10]), Steer::Host, "truncated Ethernet");
        let good = ipv4(Ipv4Addr::new(10, 244, 1, 5), IPPROTO_UDP, 0, &udp(53));
        assert_eq!(t.to_engine(&good), Steer::Engine);
        let mut bad_version = good.clone();
        bad_version[14] = 0x65;
        assert_eq!(t.to_engine(&bad_version), Steer::Host);
        let mut bad_ihl = good.clone();
        bad_ihl[14] = 0x44;
        assert_eq!(t.to_engine(&bad_ihl), Steer::Host);
        let mut long = good.clone();
        long[16..18].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(
            t.to_engine(&long),
            Steer::Host,
            "total length past the frame"
        );
        let mut short = good.clone();
        short[16..18].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(
            t.to_engine(&short),
            Steer::Host,
            "total length under the header"
        );
        assert_eq!(t.to_engine(&good[..30]), Steer::Host, "truncated header");
        // Ethernet padding after the datagram is allowed.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(t.to_engine(&padded), Steer::Engine);
    }

    #[test]
    fn node_traffic_goes_to_the_host_except_tunnels_node_ports_and_fragments() {
        let t = tables();
        let to_node = |proto, frag, l4: &[u8]| t.to_engine(&ipv4(NODE, proto, frag, l4));
        assert_eq!(to_node(IPPROTO_TCP, 0, &udp(22)), Steer::Host, "ssh");
        assert_eq!(to_node(IPPROTO_TCP, 0, &udp(179)), Steer::Host, "bgp");
        assert_eq!(
            to_node(IPPROTO_TCP, 0, &udp(30080)),
            Steer::Engine,
            "node port"
        );
        assert_eq!(
            to_node(IPPROTO_UDP, 0, &udp(30080)),
            Steer::Host,
            "udp is another key"
        );
        assert_eq!(to_node(IPPROTO_UDP, 0, &udp(4789)), Steer::Engine, "vxlan");
        assert_eq!(
            to_node(IPPROTO_IPIP, 0, &[0; 20]),
            Steer::Host,
            "no ipip tunnel"
        );
        let mut with_ipip = tables();
        with_ipip.add_tunnel4(IPPROTO_IPIP, 0);
        assert_eq!(
            with_ipip.to_engine(&ipv4(NODE, IPPROTO_IPIP, 0, &[0; 20])),
            Steer::Engine
        );
        let echo_reply = [0u8, 0, 0, 0, 0, 7, 0, 1];
        let echo_request = [8u8, 0, 0, 0, 0, 7, 0, 1];
        assert_eq!(
            to_node(IPPROTO_ICMP, 0, &echo_reply),
            Steer::Engine,
            "snat echo"
        );
        assert_eq!(to_node(IPPROTO_ICMP, 0, &echo_request), Steer::Host, "ping");
        // Fragments: the first one by its ports or as a fragment, the rest as fragments.
        assert_eq!(to_node(IPPROTO_TCP, 0x2000, &udp(22)), Steer::Engine);
        assert_eq!(to_node(IPPROTO_TCP, 0x0010, &udp(30080)), Steer::Engine);
        assert_eq!(
            to_node(IPPROTO_TCP, 0x4000, &udp(22)),
            Steer::Host,
            "DF only"
        );
        assert_eq!(
            to_node(IPPROTO_TCP, 0, &[0; 4]),
            Steer::Host,
            "ports past the end"
        );
    }

    #[test]
    fn pod_and_service_prefixes_go_to_the_engine_the_rest_to_the_host() {
        let t = tables();
        let to = |dst| t.to_engine(&ipv4(dst, IPPROTO_TCP, 0, &udp(80)));
        assert_eq!(to(Ipv4Addr::new(10, 244, 1, 200)), Steer::Engine);
        assert_eq!(
            to(Ipv4Addr::new(10, 244, 2, 1)),
            Steer::Host,
            "another node's pods"
        );
        assert_eq!(to(Ipv4Addr::new(10, 96, 0, 10)), Steer::Engine);
        assert_eq!(to(Ipv4Addr::new(10, 96, 0, 11)), Steer::Host);
        assert_eq!(to(Ipv4Addr::new(8, 8, 8, 8)), Steer::Host);
        let mut all = SteerTables::new();
        all.add_steer4(Ipv4Addr::new(1, 2, 3, 4), 0);
        assert_eq!(
            all.to_engine(&ipv4(Ipv4Addr::new(8, 8, 8, 8), 6, 0, &udp(80))),
            Steer::Engine
        );
    }

    #[test]
    fn published_tables_replace_the_current_ones() {
        let s = Steering::default();
        let f = ipv4(Ipv4Addr::new(10, 244, 1, 5), IPPROTO_UDP, 0, &udp(53));
        assert_eq!(s.current().to_engine(&f), Steer::Host);
        let reader = s.clone();
        s.publish(tables());
        assert_eq!(reader.current().to_engine(&f), Steer::Engine);
    }
}
