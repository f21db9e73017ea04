//! `ip4-frag`: IPv4 fragments follow their first fragment (shallow virtual reassembly, the
//! idea of VPP's `ip4-sv-reass`).
//!
//! Only the first fragment of a datagram carries the L4 header, so without help `ip4-nat`
//! would translate the first fragment of a service or masqueraded flow and route the others
//! by their original destination, and `ip4-policy` would classify them without ports. This
//! node, between `ip4-input` and `ip4-nat`, sees every fragment of TCP, UDP, SCTP and ICMP
//! (`ip4-input` sends it only fragments) and keeps per-datagram state keyed by (source,
//! destination, protocol, IP ID):
//! - the first fragment records its ports (ICMP: type and echo id) and passes on;
//! - a later fragment gets them in its metadata ([`FLAG_FRAG_TAIL`], [`BufMeta::frag_ports`]),
//!   so conntrack, service DNAT/SNAT, masquerade and policy treat it like its first fragment
//!   (`ip4-nat` rewrites only its IP header and IP checksum: the L4 checksum, which covers the
//!   whole datagram, is in the first fragment and updated there);
//! - a fragment that arrives before its first fragment is held (the node keeps the buffer)
//!   and sent on right after the first fragment when it arrives, so `ip4-nat` always sees
//!   a datagram's first fragment before the others.
//!
//! Why not reassemble: a reassembled datagram of up to 64 KiB does not fit a 2 KiB UMEM
//! frame and would have to be fragmented again on the way out (the engine has no buffer
//! chains), while following the first fragment keeps every fragment in its own frame,
//! forwards in-order fragments without delay, and holds only the out-of-order ones.
//!
//! Bounds: at most [`FragLimits::max_datagrams`] datagrams tracked, [`FragLimits::max_held`]
//! buffers held in total and [`FragLimits::max_held_per_datagram`] per datagram; a datagram's
//! state lives [`FragLimits::timeout_ms`] from its first fragment seen, or until all its
//! bytes passed. A fragment that cannot be associated with its first fragment (none in
//! time, table full, too many held) is dropped and counted, never forwarded untranslated.
//! A first fragment too short to hold its L4 header, or a TCP fragment at offset 8 (RFC 1858
//! overlapping-header attacks) is dropped. Counters: `show errors` under `ip4-frag`.
//!
//! Fragments of other protocols (no ports: GRE, ESP, ...) pass untouched.

use std::time::Instant;

use ferroplane_io::{BufIdx, FrameMemory};
use ferroplane_tables::hash::FastMap;

use crate::buffer::{BufMeta, FLAG_FRAG_TAIL, FLAG_NO_CACHE};
use crate::node::{Ctx, Node, NodeInfo, CONSUMED};
use crate::{node_errors, node_nexts};

use super::{be16, ip_at};

node_nexts! {
    /// Next arcs of `ip4-frag`.
    pub enum FragNext { Drop = "error-drop", Nat = "ip4-nat" }
}

node_errors! {
    /// Error reasons of `ip4-frag`.
    pub enum FragError {
        Fragments = (Info, "fragments", "IPv4 fragments of TCP, UDP, SCTP or ICMP seen"),
        Held = (Info, "held", "fragments that arrived before their first fragment, held"),
        Released = (Info, "released", "held fragments sent on after their first fragment"),
        Timeout = (Error, "timeout", "fragment dropped: its first fragment did not arrive in time"),
        TableFull = (Error, "table-full", "fragment dropped: no room to track another datagram"),
        HoldFull = (Error, "hold-full", "fragment dropped: too many fragments held (for its datagram or in total)"),
        Tiny = (Error, "tiny-fragment", "first fragment without its whole L4 header, or TCP fragment at offset 8 (RFC 1858)"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "ip4-frag",
    nexts: FragNext::NAMES,
    errors: FragError::INFO,
};

/// Bounds of the fragment state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragLimits {
    /// Datagrams tracked at once.
    pub max_datagrams: usize,
    /// Buffers held in total (fragments waiting for their first fragment).
    pub max_held: usize,
    /// Buffers held for one datagram.
    pub max_held_per_datagram: usize,
    /// How long a datagram's state lives after its first fragment seen (ms).
    pub timeout_ms: u64,
}

impl Default for FragLimits {
    /// 4,096 datagrams, 1,024 buffers held (3% of the default 32,768-frame UMEM), 64 per
    /// datagram (a 64 KiB datagram is 45 fragments at MTU 1500), 2 s.
    fn default() -> Self {
        FragLimits {
            max_datagrams: 4096,
            max_held: 1024,
            max_held_per_datagram: 64,
            timeout_ms: 2000,
        }
    }
}

/// What the first fragment carries: ports (ICMP echo: id as source port of a request,
/// destination port of a reply) and the ICMP type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct L4 {
    ports: (u16, u16),
    icmp: u8,
}

/// One datagram's state.
#[derive(Debug)]
struct Entry {
    /// From the first fragment, once seen.
    l4: Option<L4>,
    /// Fragments waiting for the first one, in arrival order.
    held: Vec<BufIdx>,
    /// When the state is dropped (ms).
    expires: u64,
    /// Payload bytes seen.
    seen: u32,
    /// End of the datagram's payload (from the fragment without MF), 0 while unknown.
    end: u32,
}

/// The fragment tracking node.
#[derive(Debug)]
pub struct Ip4Frag {
    limits: FragLimits,
    table: FastMap<u128, Entry>,
    held: usize,
    start: Instant,
    next_sweep: u64,
}

impl Default for Ip4Frag {
    fn default() -> Self {
        Ip4Frag::new(FragLimits::default())
    }
}

/// How often expired state is swept (ms).
const SWEEP_MS: u64 = 100;

#[inline(always)]
fn key(src: u32, dst: u32, proto: u8, id: u16) -> u128 {
    ((src as u128) << 64) | ((dst as u128) << 32) | ((id as u128) << 8) | proto as u128
}

/// The L4 fields of a first fragment, `None` when its L4 header is not all there.
#[inline(always)]
fn first_l4(l3: &[u8], hl: usize, proto: u8) -> Option<L4> {
    let need = match proto {
        6 => 20,
        17 | 1 => 8,
        _ => 12, // SCTP common header
    };
    if l3.len() < hl + need {
        return None;
    }
    let (a, b) = (be16(l3, hl), be16(l3, hl + 2));
    Some(match proto {
        1 => {
            let t = l3[hl];
            let id = be16(l3, hl + 4);
            let ports = match t {
                8 => (id, 0),
                0 => (0, id),
                _ => (0, 0),
            };
            L4 { ports, icmp: t }
        }
        _ => L4 {
            ports: (a, b),
            icmp: 0,
        },
    })
}

#[inline(always)]
fn tag(m: &mut BufMeta, l4: L4) {
    m.flags |= FLAG_FRAG_TAIL;
    m.frag_ports = l4.ports;
    m.frag_icmp = l4.icmp;
}

/// Counts of one call.
type Counts = [u64; FragError::INFO.len()];

impl Ip4Frag {
    /// A node with these bounds.
    pub fn new(limits: FragLimits) -> Self {
        Ip4Frag {
            limits,
            table: FastMap::default(),
            held: 0,
            start: Instant::now(),
            next_sweep: 0,
        }
    }

    /// Datagrams tracked and buffers held.
    pub fn usage(&self) -> (usize, usize) {
        (self.table.len(), self.held)
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Drop the held buffers of an expired entry.
    fn expire<M: FrameMemory>(held: &mut usize, e: &mut Entry, cx: &mut Ctx<'_, M>) {
        for b in e.held.drain(..) {
            *held -= 1;
            // Counted by error-drop.
            let arc = cx.drop_with(b, FragError::Timeout);
            cx.emit(b, arc);
        }
    }

    /// Remove expired datagrams (their held fragments are dropped).
    fn sweep<M: FrameMemory>(&mut self, cx: &mut Ctx<'_, M>, now: u64) {
        self.next_sweep = now + SWEEP_MS;
        if self.table.is_empty() {
            return;
        }
        let held = &mut self.held;
        self.table.retain(|_, e| {
            if e.expires > now {
                return true;
            }
            Self::expire(held, e, cx);
            false
        });
    }

    /// The state of datagram `k`, created if needed; `None` when the table is full.
    fn entry<M: FrameMemory>(
        &mut self,
        cx: &mut Ctx<'_, M>,
        k: u128,
        now: u64,
    ) -> Option<&mut Entry> {
        if let Some(e) = self.table.get_mut(&k) {
            if e.expires <= now {
                Self::expire(&mut self.held, e, cx);
                *e = Entry {
                    l4: None,
                    held: std::mem::take(&mut e.held),
                    expires: now + self.limits.timeout_ms,
                    seen: 0,
                    end: 0,
                };
            }
        } else {
            if self.table.len() >= self.limits.max_datagrams && now >= self.next_sweep {
                self.sweep(cx, now);
            }
            if self.table.len() >= self.limits.max_datagrams {
                return None;
            }
            self.table.insert(
                k,
                Entry {
                    l4: None,
                    held: Vec::new(),
                    expires: now + self.limits.timeout_ms,
                    seen: 0,
                    end: 0,
                },
            );
        }
        self.table.get_mut(&k)
    }

    fn count<M: FrameMemory>(cx: &Ctx<'_, M>, n: &Counts) {
        for (code, &v) in n.iter().enumerate() {
            if v > 0 {
                cx.count(code as u16, v);
            }
        }
    }
}

impl<M: FrameMemory> Node<M> for Ip4Frag {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let now = self.now();
        let mut n: Counts = [0; FragError::INFO.len()];
        if now >= self.next_sweep {
            self.sweep(cx, now);
        }
        for (i, &b) in bufs.iter().enumerate() {
            nexts[i] = FragNext::Nat.into();
            // ip4-input validated the header and trimmed the packet to its total length.
            let pkt = cx.packet(b);
            let Some(l3) = pkt.get(14..).filter(|l| l.len() >= 20) else {
                continue;
            };
            let hl = usize::from(l3[0] & 0x0f) * 4;
            let fo = be16(l3, 6);
            let offset = u32::from(fo & 0x1fff) * 8;
            let more = fo & 0x2000 != 0;
            let proto = l3[9];
            if !matches!(proto, 1 | 6 | 17 | 132) || (offset == 0 && !more) {
                continue;
            }
            let payload = u32::from(be16(l3, 2)).saturating_sub(hl as u32);
            let k = key(
                u32::from(ip_at(l3, 12)),
                u32::from(ip_at(l3, 16)),
                proto,
                be16(l3, 4),
            );
            let first = if offset == 0 {
                match first_l4(l3, hl, proto) {
                    Some(l4) => Some(l4),
                    None => {
                        n[FragError::Fragments as usize] += 1;
                        nexts[i] = cx.drop_with(b, FragError::Tiny);
                        continue;
                    }
                }
            } else {
                None
            };
            n[FragError::Fragments as usize] += 1;
            cx.meta_mut(b).flags |= FLAG_NO_CACHE;
            if proto == 6 && offset == 8 {
                nexts[i] = cx.drop_with(b, FragError::Tiny);
                continue;
            }
            let limits = self.limits;
            let total_held = self.held;
            let Some(e) = self.entry(cx, k, now) else {
                nexts[i] = cx.drop_with(b, FragError::TableFull);
                continue;
            };
            e.seen = e.seen.saturating_add(payload);
            if !more {
                e.end = offset + payload;
            }
            let mut released = 0usize;
            let mut hold = false;
            if let Some(l4) = first {
                e.l4 = Some(l4);
                for h in e.held.drain(..) {
                    tag(cx.meta_mut(h), l4);
                    cx.emit(h, FragNext::Nat.into());
                    released += 1;
                }
            } else if let Some(l4) = e.l4 {
                tag(cx.meta_mut(b), l4);
            } else if e.held.len() >= limits.max_held_per_datagram || total_held >= limits.max_held
            {
                nexts[i] = cx.drop_with(b, FragError::HoldFull);
                continue;
            } else {
                e.held.push(b);
                hold = true;
            }
            // Every byte passed: the state is no longer needed.
            let done = e.l4.is_some() && e.end != 0 && e.seen >= e.end;
            if hold {
                nexts[i] = CONSUMED;
                self.held += 1;
                n[FragError::Held as usize] += 1;
                continue;
            }
            self.held -= released;
            n[FragError::Released as usize] += released as u64;
            if done {
                self.table.remove(&k);
            }
        }
        Self::count(cx, &n);
    }

    fn timers(&mut self, cx: &mut Ctx<'_, M>) {
        if self.table.is_empty() {
            return;
        }
        let now = self.now();
        if now < self.next_sweep {
            return;
        }
        self.sweep(cx, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fragment_fields() {
        let mut l3 = [0u8; 40];
        l3[0] = 0x45;
        l3[20..22].copy_from_slice(&1234u16.to_be_bytes());
        l3[22..24].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(first_l4(&l3, 20, 17).unwrap().ports, (1234, 53));
        assert_eq!(first_l4(&l3, 20, 6).unwrap().ports, (1234, 53));
        assert_eq!(first_l4(&l3[..27], 20, 17), None);
        assert_eq!(first_l4(&l3[..39], 20, 6), None);
        l3[20] = 8;
        l3[24..26].copy_from_slice(&77u16.to_be_bytes());
        assert_eq!(
            first_l4(&l3, 20, 1),
            Some(L4 {
                ports: (77, 0),
                icmp: 8
            })
        );
        l3[20] = 0;
        assert_eq!(first_l4(&l3, 20, 1).unwrap().ports, (0, 77));
    }

    #[test]
    fn keys_differ_by_every_field() {
        let k = key(1, 2, 17, 3);
        assert_ne!(k, key(2, 1, 17, 3));
        assert_ne!(k, key(1, 2, 6, 3));
        assert_ne!(k, key(1, 2, 17, 4));
    }
}
