//! The session (connection tracking) table of one engine worker.
//!
//! A session is a translated flow: its *original* tuple (as the client sent
//! it) and its *reply* tuple (as replies arrive: from the chosen backend, to
//! the translated source). Both tuples index the same session, so a packet
//! in either direction is one hash probe. TCP sessions follow the flags
//! (SYN, established, FIN, RST) to pick their timeout; UDP sessions have a
//! shorter timeout until a reply is seen; ICMP echo sessions use the echo id
//! as their port.
//!
//! The table is owned by one worker: no locks on the fast path (the worker
//! may wrap it in an uncontended mutex taken once per vector so the control
//! plane can show it). It is bounded: when full, new sessions are refused
//! (counted by the caller) and existing ones keep working. Expired sessions
//! are removed lazily when found expired, and by an incremental sweep (a
//! clock hand visiting a few slots per call) so the table drains when idle.

use std::net::Ipv4Addr;

use crate::hash::FastMap;
use crate::service::{FrontendKey, PROTO_TCP, PROTO_UDP};

/// A flow tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port (ICMP echo request: the id).
    pub sport: u16,
    /// Destination port (ICMP echo reply: the id).
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
}

impl FlowKey {
    /// The tuple of packets going the other way.
    #[inline(always)]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    #[inline(always)]
    fn pack(&self) -> u128 {
        ((u32::from(self.src) as u128) << 96)
            | ((u32::from(self.dst) as u128) << 64)
            | ((self.sport as u128) << 48)
            | ((self.dport as u128) << 32)
            | self.proto as u128
    }
}

/// Which tuple of a session a packet matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The original direction (client to service).
    Orig,
    /// The reply direction.
    Reply,
}

/// Protocol state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// TCP: SYN seen, no answer yet.
    SynSent,
    /// TCP: answered.
    Established,
    /// TCP: FIN seen in one direction.
    FinWait,
    /// TCP: FIN seen in both directions.
    TimeWait,
    /// TCP: RST seen.
    Closed,
    /// UDP / ICMP: no reply yet.
    Unreplied,
    /// UDP / ICMP: replied.
    Replied,
}

impl CtState {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            CtState::SynSent => "syn-sent",
            CtState::Established => "established",
            CtState::FinWait => "fin-wait",
            CtState::TimeWait => "time-wait",
            CtState::Closed => "closed",
            CtState::Unreplied => "unreplied",
            CtState::Replied => "replied",
        }
    }

    /// Whether a new connection may reuse this session's tuple (TCP closing or closed).
    pub fn is_closing(&self) -> bool {
        matches!(self, CtState::FinWait | CtState::TimeWait | CtState::Closed)
    }
}

/// Timeouts, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP, SYN sent.
    pub tcp_syn: u64,
    /// TCP, established.
    pub tcp_established: u64,
    /// TCP, FIN seen one way.
    pub tcp_fin: u64,
    /// TCP, FIN both ways or RST.
    pub tcp_close: u64,
    /// UDP, no reply yet.
    pub udp: u64,
    /// UDP, replied.
    pub udp_replied: u64,
    /// ICMP echo and other protocols.
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: 60_000,
            tcp_established: 6 * 3600 * 1000,
            tcp_fin: 60_000,
            tcp_close: 10_000,
            udp: 30_000,
            udp_replied: 120_000,
            icmp: 30_000,
        }
    }
}

impl Timeouts {
    fn of(&self, s: CtState) -> u64 {
        match s {
            CtState::SynSent => self.tcp_syn,
            CtState::Established => self.tcp_established,
            CtState::FinWait => self.tcp_fin,
            CtState::TimeWait | CtState::Closed => self.tcp_close,
            CtState::Unreplied => self.udp,
            CtState::Replied => self.udp_replied,
        }
    }
}

/// What a session translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Destination only (service to backend).
    Dnat,
    /// Source only (masquerade).
    Snat,
    /// Both (service with SNAT: hairpin, externalTrafficPolicy=Cluster to a remote backend).
    DnatSnat,
}

impl NatKind {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            NatKind::Dnat => "dnat",
            NatKind::Snat => "snat",
            NatKind::DnatSnat => "dnat+snat",
        }
    }
}

/// One session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The tuple as the client sent it.
    pub orig: FlowKey,
    /// The tuple replies arrive with.
    pub reply: FlowKey,
    /// State.
    pub state: CtState,
    /// Translation kind.
    pub nat: NatKind,
    /// The service frontend, for service sessions.
    pub frontend: Option<FrontendKey>,
    /// Creation time (ms).
    pub created: u64,
    /// Expiry time (ms).
    pub expires: u64,
    /// Packets seen (original, reply).
    pub packets: [u64; 2],
    fins: u8,
}

impl Session {
    /// Where forward packets are sent: (source, destination) after translation.
    #[inline(always)]
    pub fn forward_rewrite(&self) -> FlowKey {
        self.reply.reversed()
    }
}

/// Why a session could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CtError {
    /// The table is at its limit.
    #[error("session table full")]
    Full,
    /// One of the tuples is already in use.
    #[error("tuple already in use")]
    Exists,
}

/// Table statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtStats {
    /// Sessions created.
    pub created: u64,
    /// Sessions removed on expiry.
    pub expired: u64,
    /// Creations refused because the table was full.
    pub full: u64,
}

/// A bounded session table.
#[derive(Debug, Clone)]
pub struct Conntrack {
    slots: Vec<Option<Session>>,
    free: Vec<u32>,
    index: FastMap<u128, u32>,
    len: usize,
    limit: usize,
    hand: usize,
    epoch: std::time::Instant,
    /// Timeouts in force.
    pub timeouts: Timeouts,
    /// Statistics.
    pub stats: CtStats,
}

impl Conntrack {
    /// A table holding at most `limit` sessions.
    pub fn new(limit: usize, timeouts: Timeouts) -> Conntrack {
        Conntrack {
            slots: Vec::new(),
            free: Vec::new(),
            index: FastMap::default(),
            len: 0,
            limit,
            hand: 0,
            epoch: std::time::Instant::now(),
            timeouts,
            stats: CtStats::default(),
        }
    }

    /// The table's clock: milliseconds since it was created (the `now` of its callers).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Number of live (possibly expired, not yet swept) sessions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Change the limit (existing sessions are kept even above it).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// The session a packet with tuple `key` belongs to, and the direction; expired sessions
    /// are removed and not returned.
    #[inline(always)]
    pub fn lookup(&mut self, key: &FlowKey, now: u64) -> Option<(u32, Dir)> {
        if self.len == 0 {
            return None;
        }
        let v = *self.index.get(&key.pack())?;
        let id = v >> 1;
        let expired = match self.slots.get(id as usize) {
            Some(Some(s)) => s.expires <= now,
            _ => return None,
        };
        if expired {
            self.remove(id);
            self.stats.expired += 1;
            return None;
        }
        Some((id, if v & 1 == 0 { Dir::Orig } else { Dir::Reply }))
    }

    /// Whether a live session uses `key` as either tuple.
    pub fn contains(&self, key: &FlowKey, now: u64) -> bool {
        match self.index.get(&key.pack()) {
            Some(v) => {
                matches!(self.slots.get((v >> 1) as usize), Some(Some(s)) if s.expires > now)
            }
            None => false,
        }
    }

    /// A session by id.
    #[inline(always)]
    pub fn get(&self, id: u32) -> Option<&Session> {
        self.slots.get(id as usize).and_then(Option::as_ref)
    }

    /// Create a session. `tcp_flags` of the first packet decides the initial TCP state.
    pub fn create(
        &mut self,
        orig: FlowKey,
        reply: FlowKey,
        nat: NatKind,
        frontend: Option<FrontendKey>,
        tcp_flags: u16,
        now: u64,
    ) -> Result<u32, CtError> {
        if self.len >= self.limit {
            self.sweep(now, 256);
            if self.len >= self.limit {
                self.stats.full += 1;
                return Err(CtError::Full);
            }
        }
        let (ko, kr) = (orig.pack(), reply.pack());
        if ko == kr {
            return Err(CtError::Exists);
        }
        for k in [&orig, &reply] {
            if let Some((id, _)) = self.lookup(k, now) {
                let _ = id;
                return Err(CtError::Exists);
            }
        }
        let state = match orig.proto {
            PROTO_TCP if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 => CtState::SynSent,
            PROTO_TCP => CtState::Established,
            _ => CtState::Unreplied,
        };
        let timeout = if orig.proto == PROTO_TCP || orig.proto == PROTO_UDP {
            self.timeouts.of(state)
        } else {
            self.timeouts.icmp
        };
        let s = Session {
            orig,
            reply,
            state,
            nat,
            frontend,
            created: now,
            expires: now + timeout,
            packets: [1, 0],
            fins: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(s);
                id
            }
            None => {
                self.slots.push(Some(s));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(ko, id << 1);
        self.index.insert(kr, (id << 1) | 1);
        self.len += 1;
        self.stats.created += 1;
        Ok(id)
    }

    /// Account a packet of session `id` in direction `dir` (TCP flags for TCP) and refresh
    /// its expiry.
    #[inline(always)]
    pub fn touch(&mut self, id: u32, dir: Dir, tcp_flags: u16, now: u64) {
        let t = self.timeouts;
        let Some(Some(s)) = self.slots.get_mut(id as usize) else {
            return;
        };
        let d = match dir {
            Dir::Orig => 0,
            Dir::Reply => 1,
        };
        s.packets[d] += 1;
        let proto = s.orig.proto;
        if proto == PROTO_TCP {
            if tcp_flags & TCP_RST != 0 {
                s.state = CtState::Closed;
            } else if tcp_flags & TCP_FIN != 0 {
                s.fins |= 1 << d;
                s.state = if s.fins == 3 {
                    CtState::TimeWait
                } else {
                    CtState::FinWait
                };
            } else if s.state == CtState::SynSent && dir == Dir::Reply {
                s.state = CtState::Established;
            }
            s.expires = now + t.of(s.state);
        } else if proto == PROTO_UDP {
            if dir == Dir::Reply {
                s.state = CtState::Replied;
            }
            s.expires = now + t.of(s.state);
        } else {
            if dir == Dir::Reply {
                s.state = CtState::Replied;
            }
            s.expires = now + t.icmp;
        }
    }

    /// Remove a session.
    pub fn remove(&mut self, id: u32) -> Option<Session> {
        let s = self.slots.get_mut(id as usize)?.take()?;
        self.index.remove(&s.orig.pack());
        self.index.remove(&s.reply.pack());
        self.free.push(id);
        self.len -= 1;
        Some(s)
    }

    /// Visit up to `budget` slots from the clock hand, removing expired sessions; returns
    /// the number removed.
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        if self.slots.is_empty() {
            return 0;
        }
        let mut removed = 0;
        for _ in 0..budget.min(self.slots.len()) {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let id = self.hand as u32;
            self.hand += 1;
            if matches!(&self.slots[id as usize], Some(s) if s.expires <= now) {
                self.remove(id);
                self.stats.expired += 1;
                removed += 1;
            }
        }
        removed
    }

    /// Every live session with its id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Session)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as u32, s)))
    }
}

/// TCP flag bits (host order, as in the header's low byte).
pub const TCP_FIN: u16 = 0x01;
/// SYN.
pub const TCP_SYN: u16 = 0x02;
/// RST.
pub const TCP_RST: u16 = 0x04;
/// ACK.
pub const TCP_ACK: u16 = 0x10;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str, sp: u16, d: &str, dp: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
            sport: sp,
            dport: dp,
            proto,
        }
    }

    fn dnat(ct: &mut Conntrack, sport: u16, now: u64) -> Result<u32, CtError> {
        let orig = key("10.244.1.10", sport, "10.96.0.10", 80, PROTO_TCP);
        let reply = key("10.244.1.11", 8080, "10.244.1.10", sport, PROTO_TCP);
        ct.create(orig, reply, NatKind::Dnat, None, TCP_SYN, now)
    }

    #[test]
    fn both_directions_find_the_session() {
        let mut ct = Conntrack::new(16, Timeouts::default());
        let id = dnat(&mut ct, 1000, 0).unwrap();
        let orig = key("10.244.1.10", 1000, "10.96.0.10", 80, PROTO_TCP);
        let reply = key("10.244.1.11", 8080, "10.244.1.10", 1000, PROTO_TCP);
        assert_eq!(ct.lookup(&orig, 1), Some((id, Dir::Orig)));
        assert_eq!(ct.lookup(&reply, 1), Some((id, Dir::Reply)));
        assert_eq!(ct.lookup(&orig.reversed(), 1), None);
        let s = ct.get(id).unwrap();
        assert_eq!(
            s.forward_rewrite().dst,
            "10.244.1.11".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(s.forward_rewrite().dport, 8080);
        assert_eq!(dnat(&mut ct, 1000, 2), Err(CtError::Exists));
    }

    #[test]
    fn tcp_states_and_timeouts() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(16, t);
        let id = dnat(&mut ct, 1000, 0).unwrap();
        assert_eq!(ct.get(id).unwrap().state, CtState::SynSent);
        assert_eq!(ct.get(id).unwrap().expires, t.tcp_syn);
        ct.touch(id, Dir::Reply, TCP_SYN | TCP_ACK, 10);
        assert_eq!(ct.get(id).unwrap().state, CtState::Established);
        assert_eq!(ct.get(id).unwrap().expires, 10 + t.tcp_established);
        ct.touch(id, Dir::Orig, TCP_FIN | TCP_ACK, 20);
        assert_eq!(ct.get(id).unwrap().state, CtState::FinWait);
        ct.touch(id, Dir::Reply, TCP_FIN | TCP_ACK, 30);
        assert_eq!(ct.get(id).unwrap().state, CtState::TimeWait);
        assert_eq!(ct.get(id).unwrap().expires, 30 + t.tcp_close);
        let orig = key("10.244.1.10", 1000, "10.96.0.10", 80, PROTO_TCP);
        assert!(ct.lookup(&orig, 30 + t.tcp_close).is_none(), "expired");
        assert!(ct.is_empty());
        let id = dnat(&mut ct, 1001, 0).unwrap();
        ct.touch(id, Dir::Orig, TCP_RST, 5);
        assert_eq!(ct.get(id).unwrap().state, CtState::Closed);
    }

    #[test]
    fn udp_timeouts() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(16, t);
        let orig = key("10.244.1.10", 5000, "10.96.0.10", 53, PROTO_UDP);
        let reply = key("10.244.1.11", 53, "10.244.1.10", 5000, PROTO_UDP);
        let id = ct.create(orig, reply, NatKind::Dnat, None, 0, 0).unwrap();
        assert_eq!(ct.get(id).unwrap().expires, t.udp);
        ct.touch(id, Dir::Reply, 0, 100);
        assert_eq!(ct.get(id).unwrap().state, CtState::Replied);
        assert_eq!(ct.get(id).unwrap().expires, 100 + t.udp_replied);
    }

    #[test]
    fn full_table_refuses_and_recovers() {
        let mut ct = Conntrack::new(4, Timeouts::default());
        for p in 0..4 {
            dnat(&mut ct, 2000 + p, 0).unwrap();
        }
        assert_eq!(dnat(&mut ct, 3000, 1), Err(CtError::Full));
        assert_eq!(ct.stats.full, 1);
        // Established sessions still found.
        let orig = key("10.244.1.10", 2000, "10.96.0.10", 80, PROTO_TCP);
        assert!(ct.lookup(&orig, 1).is_some());
        // Once they expire, room comes back (the insert path sweeps).
        let later = Timeouts::default().tcp_syn + 1;
        assert!(dnat(&mut ct, 3000, later).is_ok());
        assert!(ct.len() <= 4);
    }

    #[test]
    fn sweep_drains_expired() {
        let mut ct = Conntrack::new(1000, Timeouts::default());
        for p in 0..100 {
            dnat(&mut ct, 2000 + p, 0).unwrap();
        }
        assert_eq!(ct.sweep(1, 1000), 0);
        let later = Timeouts::default().tcp_syn;
        let mut n = 0;
        for _ in 0..10 {
            n += ct.sweep(later, 16);
        }
        assert_eq!(n, 100);
        assert!(ct.is_empty());
        assert_eq!(ct.stats.expired, 100);
        // slots are reused
        dnat(&mut ct, 9, later).unwrap();
        assert_eq!(ct.iter().count(), 1);
    }
}
