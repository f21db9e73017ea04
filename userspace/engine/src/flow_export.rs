//! Export of forwarded flows to the XDP flow cache.
//!
//! While the agent restarts, the engine is away: its AF_XDP sockets are closed and the XDP
//! programs cannot hand it anything. So that established flows keep forwarding meanwhile,
//! `interface-output` reports each flow it forwards the way the XDP programs can replay
//! by themselves (routed: TTL - 1, the next hop's MACs, out of a pod veth or the uplink;
//! TCP/UDP translations with the tuple written) and the agent writes it into the pinned
//! `flow4` map. XDP uses an entry only
//! when the engine's socket is missing, so the engine stays the one that decides while it
//! runs; new flows during a restart find no entry and fail closed.
//!
//! Cost on the fast path: one flag test per packet when the export is off; when on, the
//! flow tuple and one probe of a direct-mapped table that remembers which flows were
//! reported in the last [`REFRESH_SECS`] (a lost entry only means an extra report).
//! Reports leave the worker once per vector through a bounded channel that never blocks.

use std::net::Ipv4Addr;

/// Seconds after which a flow still forwarded is reported again (its `flow4` entry's
/// freshness; XDP ignores entries idle for longer than `FP_FLOW4_IDLE_NS`).
pub const REFRESH_SECS: u32 = 10;
/// Slots of the per-worker table of reported flows (a power of two).
pub const SEEN_SLOTS: usize = 1 << 14;

/// One forwarded flow: the tuple as it arrived and how it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowExport {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port (ICMP echo request: the id; reply: 0).
    pub sport: u16,
    /// Destination port (ICMP echo reply: the id; request: 0).
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// The tuple written when the engine translated the flow (source, destination, source
    /// port, destination port); `None` when it left as it arrived.
    pub nat: Option<(Ipv4Addr, Ipv4Addr, u16, u16)>,
    /// Kernel index of the output interface.
    pub ifindex: u32,
    /// Kernel index of the interface the flow arrived on (XDP replays it only from there).
    pub in_ifindex: u32,
    /// Destination MAC written.
    pub dst_mac: [u8; 6],
    /// Source MAC written.
    pub src_mac: [u8; 6],
}

/// The tuple of an IPv4 packet the XDP flow cache can match, the way `flow.h` computes it:
/// TCP, UDP, SCTP ports; ICMP echo request (id, 0) and reply (0, id). `None` for fragments,
/// other ICMP, other protocols and short packets.
pub fn cacheable_tuple(l3: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u16, u16, u8)> {
    let b = |i: usize| l3.get(i).copied();
    let hl = usize::from(b(0)? & 0x0f) * 4;
    if b(0)? >> 4 != 4 || hl < 20 || l3.len() < hl + 8 {
        return None;
    }
    if u16::from_be_bytes([b(6)?, b(7)?]) & 0x3fff != 0 {
        return None; // MF or an offset: a fragment
    }
    let src = Ipv4Addr::new(b(12)?, b(13)?, b(14)?, b(15)?);
    let dst = Ipv4Addr::new(b(16)?, b(17)?, b(18)?, b(19)?);
    let be = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([b(i)?, b(i + 1)?])) };
    let proto = b(9)?;
    let (sport, dport) = match proto {
        6 | 17 | 132 => (be(hl)?, be(hl + 2)?),
        1 => match b(hl)? {
            8 => (be(hl + 4)?, 0),
            0 => (0, be(hl + 4)?),
            _ => return None,
        },
        _ => return None,
    };
    Some((src, dst, sport, dport, proto))
}

/// Remembers which flows a worker reported recently (lossy: a direct-mapped table of tags).
#[derive(Debug, Default)]
pub struct Seen {
    slots: Vec<u64>,
}

impl Seen {
    /// Whether `flow` should be reported at `now_s` (seconds on any monotonic clock); records
    /// it as reported when it should.
    pub fn should_report(&mut self, flow: &FlowExport, now_s: u32) -> bool {
        if self.slots.is_empty() {
            self.slots = vec![0; SEEN_SLOTS];
        }
        let h = hash(flow);
        let slot = (h as usize) & (SEEN_SLOTS - 1);
        // Tag: the hash's high half and the report time; the output (ifindex and MACs) is in
        // the hash, so a flow that changes its way is reported again at once.
        let tag = (h & 0xffff_ffff_0000_0000) | u64::from(now_s);
        let old = self.slots[slot];
        let fresh = old & 0xffff_ffff_0000_0000 == h & 0xffff_ffff_0000_0000
            && now_s.wrapping_sub(old as u32) < REFRESH_SECS;
        if fresh {
            return false;
        }
        self.slots[slot] = tag;
        true
    }
}

fn hash(f: &FlowExport) -> u64 {
    let a = (u64::from(u32::from(f.src)) << 32) | u64::from(u32::from(f.dst));
    let mut mac = [0u8; 8];
    mac[..6].copy_from_slice(&f.dst_mac);
    let b = (u64::from(f.sport) << 48)
        | (u64::from(f.dport) << 32)
        | (u64::from(f.proto) << 24)
        | u64::from(f.ifindex & 0x00ff_ffff);
    let mut c =
        u64::from_le_bytes(mac) ^ (u64::from(f.src_mac[5]) << 56) ^ (u64::from(f.in_ifindex) << 32);
    if let Some((s, d, sp, dp)) = f.nat {
        c ^= (u64::from(u32::from(s)) << 32 | u64::from(u32::from(d))).rotate_left(17)
            ^ (u64::from(sp) << 16 | u64::from(dp));
    }
    let mut x = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b;
    x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ c;
    x ^ (x >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(frag: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&1234u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p
    }

    #[test]
    fn tuples_match_what_xdp_computes() {
        let t = cacheable_tuple(&udp(0)).unwrap();
        assert_eq!(
            t,
            (
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2),
                1234,
                80,
                17
            )
        );
        // DF is fine; MF or an offset is a fragment.
        assert!(cacheable_tuple(&udp(0x4000)).is_some());
        assert!(cacheable_tuple(&udp(0x2000)).is_none());
        assert!(cacheable_tuple(&udp(0x0001)).is_none());
        let mut icmp = udp(0);
        icmp[9] = 1;
        icmp[20] = 8;
        icmp[24..26].copy_from_slice(&77u16.to_be_bytes());
        let t = cacheable_tuple(&icmp).unwrap();
        assert_eq!((t.2, t.3), (77, 0));
        icmp[20] = 0;
        assert_eq!(cacheable_tuple(&icmp).unwrap().3, 77);
        icmp[20] = 3; // an error: never cached
        assert!(cacheable_tuple(&icmp).is_none());
        let mut gre = udp(0);
        gre[9] = 47;
        assert!(cacheable_tuple(&gre).is_none());
        assert!(cacheable_tuple(&udp(0)[..27]).is_none());
        assert!(cacheable_tuple(&[]).is_none());
    }

    #[test]
    fn a_flow_is_reported_once_per_refresh_period_and_when_its_way_changes() {
        let mut seen = Seen::default();
        let f = FlowExport {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            sport: 1,
            dport: 2,
            proto: 6,
            nat: None,
            ifindex: 7,
            in_ifindex: 5,
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
        };
        assert!(seen.should_report(&f, 100));
        assert!(!seen.should_report(&f, 100));
        assert!(!seen.should_report(&f, 100 + REFRESH_SECS - 1));
        assert!(seen.should_report(&f, 100 + REFRESH_SECS));
        let moved = FlowExport { ifindex: 8, ..f };
        assert!(seen.should_report(&moved, 100 + REFRESH_SECS));
        let arrives_elsewhere = FlowExport { in_ifindex: 6, ..f };
        assert!(seen.should_report(&arrives_elsewhere, 100 + REFRESH_SECS));
        let other = FlowExport { sport: 9, ..f };
        assert!(seen.should_report(&other, 100 + REFRESH_SECS));
        let natted = FlowExport {
            nat: Some((f.src, Ipv4Addr::new(10, 0, 0, 9), 1, 2)),
            ..f
        };
        assert!(seen.should_report(&natted, 100 + REFRESH_SECS));
    }
}
