//! Export of forwarded flows to the XDP flow cache (the fast path).
//!
//! `interface-output` reports each established flow it forwards the way the XDP programs
//! can replay by themselves (routed: TTL - 1, the next hop's MACs, out of a pod veth or the
//! uplink; TCP/UDP translations with the tuple written) and the agent writes it into the
//! `flow4` map. XDP then forwards the flow's following packets itself, in steady state
//! (the fast path, `--fast-path on`) and while the agent restarts (engine away), except TCP
//! SYN/FIN/RST, fragments, ICMP errors and packets longer than the output MTU, which keep
//! coming here. What is exported is decided by the engine: `ip4-nat` marks packets of
//! tracked sessions that are not established (handshake, closing) with `FLAG_NO_CACHE`,
//! as it does tunnelled, fragmented and generated packets.
//!
//! A TCP FIN or RST forwarded here is reported as a *close* ([`FlowExport::close`]): the
//! agent removes both directions' entries at once, so the rest of the closing exchange is
//! seen by the engine (its session state stays exact). Flows without a session (pod to
//! pod, untranslated) are then remembered as closed for [`CLOSED_SECS`] and not exported
//! again, until a new connection's SYN reuses the tuple.
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
/// Seconds a closed flow (FIN or RST seen) is not exported again, unless a SYN opens a new
/// connection on its tuple (the longest TCP closing state: TIME_WAIT, 120 s).
pub const CLOSED_SECS: u32 = 120;

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
    /// IP MTU of the output interface (XDP hands longer packets to the engine).
    pub mtu: u16,
    /// A TCP FIN or RST of the flow was forwarded: the agent removes the entries of both
    /// directions (this tuple, and the reverse of the tuple it left with) instead of
    /// writing one.
    pub close: bool,
}

impl FlowExport {
    /// The tuple the flow left with: (source, destination, source port, destination port).
    pub fn out_tuple(&self) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
        self.nat
            .unwrap_or((self.src, self.dst, self.sport, self.dport))
    }

    /// The arriving tuple of the other direction of the connection (its replies).
    pub fn reverse_tuple(&self) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
        let (s, d, sp, dp) = self.out_tuple();
        (d, s, dp, sp)
    }
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

/// Remembers which flows a worker reported recently, and which closed (lossy: direct-mapped
/// tables of tags).
#[derive(Debug, Default)]
pub struct Seen {
    slots: Vec<u64>,
    closed: Vec<u64>,
}

impl Seen {
    /// Records that `flow` closed at `now_s` (both directions) and forgets that it was
    /// reported, so a new connection on the tuple is reported at once.
    pub fn closed(&mut self, flow: &FlowExport, now_s: u32) {
        if self.closed.is_empty() {
            self.closed = vec![0; SEEN_SLOTS];
        }
        if let Some(slot) = self.slots.get_mut((hash(flow) as usize) & (SEEN_SLOTS - 1)) {
            *slot = 0;
        }
        let (s, d, sp, dp) = flow.reverse_tuple();
        for h in [
            tuple_hash(flow.src, flow.dst, flow.sport, flow.dport, flow.proto),
            tuple_hash(s, d, sp, dp, flow.proto),
        ] {
            self.closed[(h as usize) & (SEEN_SLOTS - 1)] =
                (h & 0xffff_ffff_0000_0000) | u64::from(now_s);
        }
    }

    /// A new connection (SYN) on `flow`'s tuple: it is no longer closed (both directions).
    pub fn reopened(&mut self, flow: &FlowExport) {
        if self.closed.is_empty() {
            return;
        }
        let (s, d, sp, dp) = flow.reverse_tuple();
        for h in [
            tuple_hash(flow.src, flow.dst, flow.sport, flow.dport, flow.proto),
            tuple_hash(s, d, sp, dp, flow.proto),
        ] {
            let slot = &mut self.closed[(h as usize) & (SEEN_SLOTS - 1)];
            if *slot & 0xffff_ffff_0000_0000 == h & 0xffff_ffff_0000_0000 {
                *slot = 0;
            }
        }
    }

    /// Whether `flow`'s tuple closed less than [`CLOSED_SECS`] before `now_s`.
    pub fn is_closed(&self, flow: &FlowExport, now_s: u32) -> bool {
        let h = tuple_hash(flow.src, flow.dst, flow.sport, flow.dport, flow.proto);
        self.closed
            .get((h as usize) & (SEEN_SLOTS - 1))
            .is_some_and(|&t| {
                t != 0
                    && t & 0xffff_ffff_0000_0000 == h & 0xffff_ffff_0000_0000
                    && now_s.wrapping_sub(t as u32) < CLOSED_SECS
            })
    }

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

fn tuple_hash(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> u64 {
    let a = (u64::from(u32::from(src)) << 32) | u64::from(u32::from(dst));
    let b = (u64::from(sport) << 48) | (u64::from(dport) << 32) | u64::from(proto);
    let mut x = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b;
    x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 32)
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
            mtu: 1500,
            close: false,
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

    #[test]
    fn a_closed_flow_stays_closed_both_ways_until_a_new_connection() {
        let mut seen = Seen::default();
        let f = FlowExport {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 96, 0, 10),
            sport: 40000,
            dport: 80,
            proto: 6,
            nat: Some((
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 1, 7),
                40000,
                8080,
            )),
            ifindex: 7,
            in_ifindex: 5,
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            mtu: 1500,
            close: false,
        };
        // The reply direction arrives with the reverse of the translated tuple.
        let (s, d, sp, dp) = f.reverse_tuple();
        assert_eq!(
            (s, d, sp, dp),
            (
                Ipv4Addr::new(10, 0, 1, 7),
                Ipv4Addr::new(10, 0, 0, 1),
                8080,
                40000
            )
        );
        let reply = FlowExport {
            src: s,
            dst: d,
            sport: sp,
            dport: dp,
            nat: Some((f.dst, f.src, f.dport, f.sport)),
            ..f
        };
        assert!(seen.should_report(&f, 10));
        assert!(!seen.is_closed(&f, 10));
        seen.closed(&f, 10);
        assert!(seen.is_closed(&f, 11));
        assert!(seen.is_closed(&reply, 11), "the other direction too");
        assert!(seen.should_report(&f, 11), "forgotten as reported");
        assert!(!seen.is_closed(&f, 10 + CLOSED_SECS), "not forever");
        let other = FlowExport { sport: 40001, ..f };
        assert!(!seen.is_closed(&other, 11));
        seen.reopened(&f);
        assert!(!seen.is_closed(&f, 12));
        assert!(!seen.is_closed(&reply, 12));
    }
}
