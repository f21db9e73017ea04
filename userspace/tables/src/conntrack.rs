//! The session (connection tracking) table of one engine worker.
//!
//! A session is a translated flow: its *original* tuple (as the client sent
//! it) and its *reply* tuple (as replies arrive: from the chosen backend, to
//! the translated source). Both tuples index the same session, so a packet
//! in either direction is one hash probe.
//!
//! **States** follow the kernel's `nf_conntrack` (`nf_conntrack_proto_tcp.c`,
//! `_udp.c`, `_icmp.c`), without its TCP window checks:
//!
//! - TCP: the originator's SYN opens `SYN_SENT`; the reply's SYN-ACK moves it to
//!   `SYN_RECV`; only the originator's ACK that completes the three-way handshake makes it
//!   `ESTABLISHED` (and *assured*). A reply SYN in `SYN_SENT` is a simultaneous open
//!   (`SYN_SENT2`, then `SYN_RECV` on a SYN-ACK either way). FINs go `FIN_WAIT` (one side
//!   closed), `CLOSE_WAIT` (that FIN acknowledged), `LAST_ACK` (both sides closed),
//!   `TIME_WAIT` (the last FIN acknowledged); a RST closes at once (`CLOSE`). A first packet
//!   that is not a SYN (a connection picked up mid-stream, e.g. after an agent restart) is
//!   `ESTABLISHED` but not assured until the other side answers, and keeps the `SYN_RECV`
//!   timeout meanwhile. Packets that do not fit the state (an ACK in `SYN_SENT`, a SYN in
//!   `ESTABLISHED`, ...) are forwarded but change nothing and do not refresh the timeout.
//! - UDP: `UNREPLIED` until a reply; `REPLIED` (same short timeout: a request and its
//!   answer, as DNS) until traffic still flows 2 s after the first packet: then `STREAM`
//!   (longer timeout, assured).
//! - ICMP echo (the id as the port) and other protocols: `UNREPLIED` / `REPLIED`, never
//!   assured.
//!
//! Each state has its timeout ([`Timeouts`], defaults those of `nf_conntrack`, but
//! `ESTABLISHED` is 24 hours as kube-proxy sets it); a session expires when it has seen no
//! packet for its state's timeout.
//!
//! **Bounded, with early drop**: the table holds at most `limit` sessions. A session that
//! is not assured (handshake incomplete, UDP not a stream, ICMP) or that is closing (FIN or
//! RST seen) is *evictable*, and evictable sessions sit on an intrusive list ordered by last
//! activity. Creating a session in a full table evicts the head of that list (the least
//! recently active evictable session), as `nf_conntrack`'s `early_drop` evicts unassured
//! entries: O(1) per insert, counted in [`CtStats::early_drops`]. Assured, open connections
//! are never evicted: when every session is one, the new flow is refused
//! ([`CtError::Full`], counted in [`CtStats::full`]) and the existing ones keep working. A
//! SYN flood therefore churns through the evictable part of the table while established
//! connections live on and new handshakes complete.
//!
//! The table is owned by one worker: no locks on the fast path (the worker
//! may wrap it in an uncontended mutex taken once per vector so the control
//! plane can show it). Expired sessions are removed lazily when found expired,
//! and by an incremental sweep (a clock hand visiting a few slots per call) so
//! the table drains when idle.

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

impl Dir {
    #[inline(always)]
    fn bit(self) -> u8 {
        match self {
            Dir::Orig => 1,
            Dir::Reply => 2,
        }
    }
}

/// Protocol state of a session (the names of `nf_conntrack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtState {
    /// TCP: the originator's SYN seen, no answer yet.
    SynSent,
    /// TCP: simultaneous open (a SYN seen both ways).
    SynSent2,
    /// TCP: the reply's SYN-ACK seen; waiting for the originator's ACK.
    SynRecv,
    /// TCP: three-way handshake complete (or picked up mid-stream).
    Established,
    /// TCP: FIN seen from one side.
    FinWait,
    /// TCP: that FIN acknowledged by the other side.
    CloseWait,
    /// TCP: FIN seen from both sides.
    LastAck,
    /// TCP: the last FIN acknowledged.
    TimeWait,
    /// TCP: RST seen.
    Close,
    /// UDP / ICMP: no reply yet.
    Unreplied,
    /// UDP / ICMP: a reply seen.
    Replied,
    /// UDP: still active 2 s after a reply (assured).
    Stream,
}

impl CtState {
    /// Every state, in the order of the TCP life cycle then UDP/ICMP.
    pub const ALL: [CtState; 12] = [
        CtState::SynSent,
        CtState::SynSent2,
        CtState::SynRecv,
        CtState::Established,
        CtState::FinWait,
        CtState::CloseWait,
        CtState::LastAck,
        CtState::TimeWait,
        CtState::Close,
        CtState::Unreplied,
        CtState::Replied,
        CtState::Stream,
    ];

    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            CtState::SynSent => "syn-sent",
            CtState::SynSent2 => "syn-sent2",
            CtState::SynRecv => "syn-recv",
            CtState::Established => "established",
            CtState::FinWait => "fin-wait",
            CtState::CloseWait => "close-wait",
            CtState::LastAck => "last-ack",
            CtState::TimeWait => "time-wait",
            CtState::Close => "close",
            CtState::Unreplied => "unreplied",
            CtState::Replied => "replied",
            CtState::Stream => "stream",
        }
    }

    /// Whether a new connection may reuse this session's tuple (TCP closing or closed).
    pub fn is_closing(&self) -> bool {
        matches!(
            self,
            CtState::FinWait
                | CtState::CloseWait
                | CtState::LastAck
                | CtState::TimeWait
                | CtState::Close
        )
    }
}

/// What a TCP segment's flags mean to the state machine (`get_conntrack_index` in the
/// kernel: RST first, then SYN, FIN, ACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpEvent {
    Syn,
    SynAck,
    Fin,
    Ack,
    Rst,
    Other,
}

impl TcpEvent {
    #[inline(always)]
    fn of(flags: u16) -> TcpEvent {
        if flags & TCP_RST != 0 {
            TcpEvent::Rst
        } else if flags & TCP_SYN != 0 {
            if flags & TCP_ACK != 0 {
                TcpEvent::SynAck
            } else {
                TcpEvent::Syn
            }
        } else if flags & TCP_FIN != 0 {
            TcpEvent::Fin
        } else if flags & TCP_ACK != 0 {
            TcpEvent::Ack
        } else {
            TcpEvent::Other
        }
    }
}

/// The TCP state after a segment, or `None` when the segment does not fit the state (it
/// is forwarded, changes nothing and does not refresh the timeout). `fins`: the directions
/// whose FIN was seen (bit 1 original, bit 2 reply), updated.
#[inline]
fn tcp_next(s: CtState, dir: Dir, ev: TcpEvent, fins: &mut u8) -> Option<CtState> {
    use CtState::*;
    let d = dir.bit();
    let next = match ev {
        TcpEvent::Rst => Close,
        TcpEvent::Other => return None,
        TcpEvent::Syn => match (dir, s) {
            // A retransmitted SYN, or a new connection on a closed tuple.
            (Dir::Orig, SynSent | TimeWait | Close) => {
                *fins = 0;
                SynSent
            }
            (Dir::Orig, SynSent2) => SynSent2,
            // Simultaneous open: the other side sent its own SYN.
            (Dir::Reply, SynSent | SynSent2) => SynSent2,
            _ => return None,
        },
        TcpEvent::SynAck => match (dir, s) {
            (Dir::Reply, SynSent | SynSent2 | SynRecv) => SynRecv,
            (Dir::Orig, SynSent2 | SynRecv) => SynRecv,
            _ => return None,
        },
        TcpEvent::Fin => match s {
            SynRecv | Established => {
                *fins |= d;
                FinWait
            }
            // A retransmitted FIN keeps the state; the other side's FIN closes both.
            FinWait | CloseWait if *fins & d != 0 => s,
            FinWait | CloseWait => {
                *fins |= d;
                LastAck
            }
            LastAck | TimeWait | Close => s,
            _ => return None,
        },
        TcpEvent::Ack => match (dir, s) {
            // The originator's ACK completes the three-way handshake.
            (Dir::Orig, SynRecv) => Established,
            (Dir::Reply, SynRecv) => SynRecv,
            (_, Established) => Established,
            // The side that did not send the FIN acknowledges it.
            (_, FinWait) if *fins & d == 0 => CloseWait,
            (_, FinWait) => FinWait,
            (_, CloseWait) => CloseWait,
            (_, LastAck | TimeWait) => TimeWait,
            (_, Close) => Close,
            _ => return None,
        },
    };
    Some(next)
}

/// Timeouts per state, in milliseconds (see the README's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP `SYN_SENT` and `SYN_SENT2`.
    pub tcp_syn_sent: u64,
    /// TCP `SYN_RECV`, and connections picked up mid-stream until answered.
    pub tcp_syn_recv: u64,
    /// TCP `ESTABLISHED` (assured).
    pub tcp_established: u64,
    /// TCP `FIN_WAIT`.
    pub tcp_fin_wait: u64,
    /// TCP `CLOSE_WAIT`.
    pub tcp_close_wait: u64,
    /// TCP `LAST_ACK`.
    pub tcp_last_ack: u64,
    /// TCP `TIME_WAIT`.
    pub tcp_time_wait: u64,
    /// TCP `CLOSE` (RST seen).
    pub tcp_close: u64,
    /// UDP, not (yet) a stream: unreplied or one exchange.
    pub udp: u64,
    /// UDP stream (replied and still active 2 s after its first packet).
    pub udp_stream: u64,
    /// ICMP echo and other protocols.
    pub icmp: u64,
}

impl Default for Timeouts {
    /// `nf_conntrack`'s defaults, but `ESTABLISHED` 24 hours (kube-proxy's
    /// `conntrack.tcpEstablishedTimeout`) instead of 5 days.
    fn default() -> Self {
        const S: u64 = 1000;
        Timeouts {
            tcp_syn_sent: 120 * S,
            tcp_syn_recv: 60 * S,
            tcp_established: 24 * 3600 * S,
            tcp_fin_wait: 120 * S,
            tcp_close_wait: 60 * S,
            tcp_last_ack: 30 * S,
            tcp_time_wait: 120 * S,
            tcp_close: 10 * S,
            udp: 30 * S,
            udp_stream: 120 * S,
            icmp: 30 * S,
        }
    }
}

impl Timeouts {
    /// The timeout of a session of protocol `proto` in state `s` (`assured`: see
    /// [`Session::assured`]).
    pub fn of(&self, proto: u8, s: CtState, assured: bool) -> u64 {
        match (proto, s) {
            (PROTO_TCP, CtState::SynSent | CtState::SynSent2) => self.tcp_syn_sent,
            (PROTO_TCP, CtState::SynRecv) => self.tcp_syn_recv,
            (PROTO_TCP, CtState::Established) if assured => self.tcp_established,
            (PROTO_TCP, CtState::Established) => self.tcp_syn_recv,
            (PROTO_TCP, CtState::FinWait) => self.tcp_fin_wait,
            (PROTO_TCP, CtState::CloseWait) => self.tcp_close_wait,
            (PROTO_TCP, CtState::LastAck) => self.tcp_last_ack,
            (PROTO_TCP, CtState::TimeWait) => self.tcp_time_wait,
            (PROTO_TCP, _) => self.tcp_close,
            (PROTO_UDP, CtState::Stream) => self.udp_stream,
            (PROTO_UDP, _) => self.udp,
            _ => self.icmp,
        }
    }
}

/// Milliseconds a UDP flow must still be active after its first packet, with a reply seen,
/// to be a stream (`nf_conntrack`'s `stream_ts`).
pub const UDP_STREAM_AFTER_MS: u64 = 2000;

/// What a session translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Destination only (service to backend).
    Dnat,
    /// Source only (masquerade).
    Snat,
    /// Both (service with SNAT: hairpin, externalTrafficPolicy=Cluster to a remote backend).
    DnatSnat,
    /// Nothing: an untranslated connection tracked only for its direction (a connection
    /// from outside the cluster to a local pod while masquerade is on: its replies are the
    /// reverse direction of this session and are never masqueraded).
    Untranslated,
}

impl NatKind {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            NatKind::Dnat => "dnat",
            NatKind::Snat => "snat",
            NatKind::DnatSnat => "dnat+snat",
            NatKind::Untranslated => "none",
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
    /// Confirmed by both sides (`IPS_ASSURED`): a completed TCP handshake (or a reply to a
    /// connection picked up mid-stream), a UDP stream. Only sessions that are assured and not
    /// closing are safe from early drop.
    pub assured: bool,
    /// Translation kind.
    pub nat: NatKind,
    /// The service frontend, for service sessions.
    pub frontend: Option<FrontendKey>,
    /// Creation time (ms).
    pub created: u64,
    /// Time of the last packet (ms).
    pub last_seen: u64,
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

    /// Whether early drop may evict this session: not assured, or closing.
    #[inline(always)]
    pub fn evictable(&self) -> bool {
        !self.assured || self.state.is_closing()
    }

    /// Whether the connection is established: TCP `ESTABLISHED` and assured (handshake
    /// complete), UDP or ICMP with a reply seen.
    #[inline(always)]
    pub fn is_established(&self) -> bool {
        match self.state {
            CtState::Established => self.assured,
            CtState::Replied | CtState::Stream => true,
            _ => false,
        }
    }
}

/// Why a session could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CtError {
    /// The table is at its limit and every session in it is an established connection.
    #[error("session table full of established connections")]
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
    /// Creations refused because the table was full of established connections.
    pub full: u64,
    /// Unestablished or closing sessions evicted to make room for a new one.
    pub early_drops: u64,
}

/// No slot (end of the evictable list).
const NIL: u32 = u32::MAX;

/// Links of a slot in the evictable list.
#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    linked: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            prev: NIL,
            next: NIL,
            linked: false,
        }
    }
}

/// At most this many sessions are evicted by one insert (the limit may have been lowered
/// below the table's size).
const MAX_EVICT_PER_INSERT: usize = 8;

/// A bounded session table.
#[derive(Debug, Clone)]
pub struct Conntrack {
    slots: Vec<Option<Session>>,
    links: Vec<Link>,
    /// Evictable list: least recently active first.
    head: u32,
    tail: u32,
    evictable: usize,
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
            links: Vec::new(),
            head: NIL,
            tail: NIL,
            evictable: 0,
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

    /// Number of sessions early drop may evict (unestablished or closing).
    pub fn evictable_len(&self) -> usize {
        self.evictable
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

    /// Create a session. `tcp_flags` of the first packet decides the initial TCP state: a
    /// SYN opens `SYN_SENT`, a RST is `CLOSE`, anything else is a connection picked up
    /// mid-stream (`ESTABLISHED`, not assured). A full table evicts its least recently
    /// active unestablished or closing session (early drop); when it holds none, the
    /// creation is refused with [`CtError::Full`].
    pub fn create(
        &mut self,
        orig: FlowKey,
        reply: FlowKey,
        nat: NatKind,
        frontend: Option<FrontendKey>,
        tcp_flags: u16,
        now: u64,
    ) -> Result<u32, CtError> {
        let (ko, kr) = (orig.pack(), reply.pack());
        if ko == kr {
            return Err(CtError::Exists);
        }
        for k in [&orig, &reply] {
            if self.lookup(k, now).is_some() {
                return Err(CtError::Exists);
            }
        }
        if self.len >= self.limit && !self.make_room(now) {
            self.stats.full += 1;
            return Err(CtError::Full);
        }
        let state = match orig.proto {
            PROTO_TCP => match TcpEvent::of(tcp_flags) {
                TcpEvent::Syn => CtState::SynSent,
                TcpEvent::Rst => CtState::Close,
                _ => CtState::Established,
            },
            _ => CtState::Unreplied,
        };
        let s = Session {
            orig,
            reply,
            state,
            assured: false,
            nat,
            frontend,
            created: now,
            last_seen: now,
            expires: now + self.timeouts.of(orig.proto, state, false),
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
                self.links.push(Link::default());
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(ko, id << 1);
        self.index.insert(kr, (id << 1) | 1);
        self.len += 1;
        self.stats.created += 1;
        self.push_back(id);
        Ok(id)
    }

    /// Early drop: evict the least recently active evictable sessions until there is room
    /// for one more (at most [`MAX_EVICT_PER_INSERT`]); false when there is still none.
    fn make_room(&mut self, now: u64) -> bool {
        for _ in 0..MAX_EVICT_PER_INSERT {
            if self.len < self.limit {
                return true;
            }
            let victim = self.head;
            let expired = match self.get(victim) {
                Some(s) => s.expires <= now,
                None => return false,
            };
            self.remove(victim);
            if expired {
                self.stats.expired += 1;
            } else {
                self.stats.early_drops += 1;
            }
        }
        self.len < self.limit
    }

    /// Account a packet of session `id` in direction `dir` (TCP flags for TCP): advance its
    /// state and refresh its expiry (a TCP segment that does not fit the state does
    /// neither).
    #[inline(always)]
    pub fn touch(&mut self, id: u32, dir: Dir, tcp_flags: u16, now: u64) {
        let t = self.timeouts;
        let Some(Some(s)) = self.slots.get_mut(id as usize) else {
            return;
        };
        s.packets[(dir.bit() - 1) as usize] += 1;
        let proto = s.orig.proto;
        if proto == PROTO_TCP {
            let old = s.state;
            let Some(new) = tcp_next(old, dir, TcpEvent::of(tcp_flags), &mut s.fins) else {
                return;
            };
            if old == CtState::SynRecv && new == CtState::Established
                || old == CtState::Established && new == CtState::Established && dir == Dir::Reply
            {
                s.assured = true;
            }
            if new == CtState::SynSent && old != CtState::SynSent {
                // A new connection on a closed tuple starts over.
                s.assured = false;
            }
            s.state = new;
        } else if proto == PROTO_UDP {
            if dir == Dir::Reply || s.state != CtState::Unreplied {
                s.state = if now >= s.created + UDP_STREAM_AFTER_MS && s.packets[1] > 0 {
                    s.assured = true;
                    CtState::Stream
                } else if s.state == CtState::Stream {
                    CtState::Stream
                } else {
                    CtState::Replied
                };
            }
        } else if dir == Dir::Reply {
            s.state = CtState::Replied;
        }
        s.last_seen = now;
        s.expires = now + t.of(proto, s.state, s.assured);
        let evictable = s.evictable();
        if evictable {
            // Most recently active: last to be evicted.
            self.unlink(id);
            self.push_back(id);
        } else {
            self.unlink(id);
        }
    }

    /// Account packets the XDP fast path forwarded for the session `key` belongs to (either
    /// direction): `packets` more in that direction, last seen at `seen` (this table's clock,
    /// [`Conntrack::now_ms`]), expiry pushed back as a packet would. The state does not
    /// change (TCP SYN/FIN/RST never take the fast path); a session that is not established
    /// (or closing) is left alone. Returns whether the key matched an established session.
    pub fn refresh(&mut self, key: &FlowKey, seen: u64, packets: u64, now: u64) -> bool {
        let Some((id, dir)) = self.lookup(key, now) else {
            return false;
        };
        let t = self.timeouts;
        let Some(Some(s)) = self.slots.get_mut(id as usize) else {
            return false;
        };
        if !s.is_established() {
            return false;
        }
        s.packets[(dir.bit() - 1) as usize] += packets;
        if seen > s.last_seen {
            s.last_seen = seen;
            s.expires = s.expires.max(seen + t.of(s.orig.proto, s.state, s.assured));
        }
        true
    }

    /// Remove a session.
    pub fn remove(&mut self, id: u32) -> Option<Session> {
        let s = self.slots.get_mut(id as usize)?.take()?;
        self.unlink(id);
        self.index.remove(&s.orig.pack());
        self.index.remove(&s.reply.pack());
        self.free.push(id);
        self.len -= 1;
        Some(s)
    }

    fn push_back(&mut self, id: u32) {
        let tail = self.tail;
        let Some(l) = self.links.get_mut(id as usize) else {
            return;
        };
        if l.linked {
            return;
        }
        *l = Link {
            prev: tail,
            next: NIL,
            linked: true,
        };
        match self.links.get_mut(tail as usize) {
            Some(t) => t.next = id,
            None => self.head = id,
        }
        self.tail = id;
        self.evictable += 1;
    }

    fn unlink(&mut self, id: u32) {
        let Some(l) = self.links.get_mut(id as usize) else {
            return;
        };
        if !l.linked {
            return;
        }
        let (prev, next) = (l.prev, l.next);
        *l = Link::default();
        match self.links.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.links.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
        self.evictable -= 1;
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

    /// The live sessions with an id of `start` or more, by id (a reader that takes a
    /// bounded batch per lock hold resumes after the last id it saw).
    pub fn iter_from(&self, start: u32) -> impl Iterator<Item = (u32, &Session)> {
        self.slots
            .iter()
            .enumerate()
            .skip(start as usize)
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

    fn orig(sport: u16) -> FlowKey {
        key("10.244.1.10", sport, "10.96.0.10", 80, PROTO_TCP)
    }

    fn dnat(ct: &mut Conntrack, sport: u16, now: u64) -> Result<u32, CtError> {
        dnat_flags(ct, sport, TCP_SYN, now)
    }

    fn dnat_flags(ct: &mut Conntrack, sport: u16, flags: u16, now: u64) -> Result<u32, CtError> {
        let reply = key("10.244.1.11", 8080, "10.244.1.10", sport, PROTO_TCP);
        ct.create(orig(sport), reply, NatKind::Dnat, None, flags, now)
    }

    fn state(ct: &Conntrack, id: u32) -> CtState {
        ct.get(id).unwrap().state
    }

    /// SYN, SYN-ACK, ACK: the session of `sport`, established at `now`.
    fn handshake(ct: &mut Conntrack, sport: u16, now: u64) -> u32 {
        let id = dnat(ct, sport, now).unwrap();
        ct.touch(id, Dir::Reply, TCP_SYN | TCP_ACK, now);
        ct.touch(id, Dir::Orig, TCP_ACK, now);
        assert_eq!(state(ct, id), CtState::Established);
        id
    }

    const SA: u16 = TCP_SYN | TCP_ACK;
    const FA: u16 = TCP_FIN | TCP_ACK;

    #[test]
    fn both_directions_find_the_session() {
        let mut ct = Conntrack::new(16, Timeouts::default());
        let id = dnat(&mut ct, 1000, 0).unwrap();
        let reply = key("10.244.1.11", 8080, "10.244.1.10", 1000, PROTO_TCP);
        assert_eq!(ct.lookup(&orig(1000), 1), Some((id, Dir::Orig)));
        assert_eq!(ct.lookup(&reply, 1), Some((id, Dir::Reply)));
        assert_eq!(ct.lookup(&orig(1000).reversed(), 1), None);
        let s = ct.get(id).unwrap();
        assert_eq!(
            s.forward_rewrite().dst,
            "10.244.1.11".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(s.forward_rewrite().dport, 8080);
        assert_eq!(dnat(&mut ct, 1000, 2), Err(CtError::Exists));
    }

    #[test]
    fn three_way_handshake_establishes_and_assures() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(16, t);
        let id = dnat(&mut ct, 1000, 0).unwrap();
        let s = *ct.get(id).unwrap();
        assert_eq!(
            (s.state, s.assured, s.expires),
            (CtState::SynSent, false, t.tcp_syn_sent)
        );
        // An ACK from the client before any answer does not fit: nothing changes.
        ct.touch(id, Dir::Orig, TCP_ACK, 5);
        assert_eq!(state(&ct, id), CtState::SynSent);
        assert_eq!(ct.get(id).unwrap().expires, t.tcp_syn_sent, "not refreshed");
        // The SYN is retransmitted: refreshed.
        ct.touch(id, Dir::Orig, TCP_SYN, 7);
        assert_eq!(ct.get(id).unwrap().expires, 7 + t.tcp_syn_sent);
        ct.touch(id, Dir::Reply, SA, 10);
        let s = *ct.get(id).unwrap();
        assert_eq!(
            (s.state, s.assured, s.expires),
            (CtState::SynRecv, false, 10 + t.tcp_syn_recv)
        );
        assert!(!s.is_established() && s.evictable());
        ct.touch(id, Dir::Orig, TCP_ACK, 20);
        let s = *ct.get(id).unwrap();
        assert_eq!((s.state, s.assured), (CtState::Established, true));
        assert_eq!(s.expires, 20 + t.tcp_established);
        assert!(s.is_established() && !s.evictable());
        assert_eq!(ct.evictable_len(), 0);
        // Data both ways keeps it established and refreshes it.
        ct.touch(id, Dir::Reply, TCP_ACK, 30);
        assert_eq!(ct.get(id).unwrap().expires, 30 + t.tcp_established);
        // A SYN inside an established connection changes nothing.
        ct.touch(id, Dir::Orig, TCP_SYN, 40);
        assert_eq!(state(&ct, id), CtState::Established);
        assert_eq!(ct.get(id).unwrap().expires, 30 + t.tcp_established);
        assert_eq!(t.tcp_established, 24 * 3600 * 1000);
    }

    #[test]
    fn syn_ack_alone_never_establishes() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(16, t);
        let id = dnat(&mut ct, 1000, 0).unwrap();
        // The backend answers and retransmits its SYN-ACK; the (spoofed) client never ACKs.
        for now in [1, 1000, 3000, 7000] {
            ct.touch(id, Dir::Reply, SA, now);
            let s = *ct.get(id).unwrap();
            assert_eq!((s.state, s.assured), (CtState::SynRecv, false));
        }
        // An ACK from the backend's side does not complete the client's handshake.
        ct.touch(id, Dir::Reply, TCP_ACK, 7500);
        assert_eq!(state(&ct, id), CtState::SynRecv);
        assert!(
            ct.lookup(&orig(1000), 7500 + t.tcp_syn_recv).is_none(),
            "expired"
        );
        assert_eq!(ct.stats.expired, 1);
        // Nor does a SYN-ACK sent by the originator in SYN_SENT.
        let id = dnat(&mut ct, 1001, 0).unwrap();
        ct.touch(id, Dir::Orig, SA, 1);
        assert_eq!(state(&ct, id), CtState::SynSent);
    }

    #[test]
    fn simultaneous_open() {
        let mut ct = Conntrack::new(16, Timeouts::default());
        let id = dnat(&mut ct, 1000, 0).unwrap();
        ct.touch(id, Dir::Reply, TCP_SYN, 1);
        assert_eq!(state(&ct, id), CtState::SynSent2);
        ct.touch(id, Dir::Orig, SA, 2);
        assert_eq!(state(&ct, id), CtState::SynRecv);
        ct.touch(id, Dir::Reply, SA, 3);
        assert_eq!(state(&ct, id), CtState::SynRecv);
        ct.touch(id, Dir::Orig, TCP_ACK, 4);
        assert_eq!(state(&ct, id), CtState::Established);
        assert!(ct.get(id).unwrap().assured);
    }

    #[test]
    fn fin_sequence_client_closes_first() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(16, t);
        let id = handshake(&mut ct, 1000, 0);
        let step = |ct: &mut Conntrack, dir, flags, now, want: CtState, timeout: u64| {
            ct.touch(id, dir, flags, now);
            let s = *ct.get(id).unwrap();
            assert_eq!(s.state, want, "{dir:?} {flags:#x}");
            assert_eq!(s.expires, now + timeout, "{want:?}");
        };
        step(&mut ct, Dir::Orig, FA, 10, CtState::FinWait, t.tcp_fin_wait);
        assert!(
            ct.get(id).unwrap().evictable(),
            "closing sessions may be evicted"
        );
        // A retransmitted FIN, and the closer's own ACKs, keep FIN_WAIT.
        step(&mut ct, Dir::Orig, FA, 11, CtState::FinWait, t.tcp_fin_wait);
        step(
            &mut ct,
            Dir::Orig,
            TCP_ACK,
            12,
            CtState::FinWait,
            t.tcp_fin_wait,
        );
        // The server acknowledges the FIN, sends its last data, then its own FIN.
        step(
            &mut ct,
            Dir::Reply,
            TCP_ACK,
            20,
            CtState::CloseWait,
            t.tcp_close_wait,
        );
        step(
            &mut ct,
            Dir::Reply,
            TCP_ACK,
            25,
            CtState::CloseWait,
            t.tcp_close_wait,
        );
        step(
            &mut ct,
            Dir::Reply,
            FA,
            30,
            CtState::LastAck,
            t.tcp_last_ack,
        );
        step(
            &mut ct,
            Dir::Orig,
            TCP_ACK,
            40,
            CtState::TimeWait,
            t.tcp_time_wait,
        );
        assert!(ct.lookup(&orig(1000), 40 + t.tcp_time_wait).is_none());
        assert!(ct.is_empty());
    }

    #[test]
    fn fin_both_ways_at_once() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(16, t);
        let id = handshake(&mut ct, 1000, 0);
        ct.touch(id, Dir::Reply, FA, 10);
        assert_eq!(state(&ct, id), CtState::FinWait);
        ct.touch(id, Dir::Orig, FA, 11);
        assert_eq!(state(&ct, id), CtState::LastAck);
        ct.touch(id, Dir::Reply, TCP_ACK, 12);
        assert_eq!(state(&ct, id), CtState::TimeWait);
        assert_eq!(ct.get(id).unwrap().expires, 12 + t.tcp_time_wait);
    }

    #[test]
    fn rst_closes_at_once_from_any_state() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(16, t);
        let id = handshake(&mut ct, 1000, 0);
        ct.touch(id, Dir::Reply, TCP_RST | TCP_ACK, 50);
        let s = *ct.get(id).unwrap();
        assert_eq!((s.state, s.expires), (CtState::Close, 50 + t.tcp_close));
        assert!(s.evictable());
        // A refused connection (RST answering the SYN).
        let id = dnat(&mut ct, 1001, 0).unwrap();
        ct.touch(id, Dir::Reply, TCP_RST | TCP_ACK, 1);
        assert_eq!(state(&ct, id), CtState::Close);
        // A new SYN on a closed tuple starts over.
        ct.touch(id, Dir::Orig, TCP_SYN, 2);
        assert_eq!(state(&ct, id), CtState::SynSent);
        ct.touch(id, Dir::Orig, TCP_RST, 3);
        assert!(ct.lookup(&orig(1001), 3 + t.tcp_close).is_none());
    }

    #[test]
    fn picked_up_mid_stream_is_assured_by_an_answer() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(16, t);
        let id = dnat_flags(&mut ct, 1000, TCP_ACK, 0).unwrap();
        let s = *ct.get(id).unwrap();
        assert_eq!((s.state, s.assured), (CtState::Established, false));
        assert_eq!(s.expires, t.tcp_syn_recv, "short until answered");
        assert!(!s.is_established() && s.evictable());
        ct.touch(id, Dir::Orig, TCP_ACK, 5);
        assert!(!ct.get(id).unwrap().assured);
        ct.touch(id, Dir::Reply, TCP_ACK, 10);
        let s = *ct.get(id).unwrap();
        assert!(s.assured && s.is_established() && !s.evictable());
        assert_eq!(s.expires, 10 + t.tcp_established);
        // A first packet that is a RST is only closing.
        let id = dnat_flags(&mut ct, 1001, TCP_RST, 0).unwrap();
        assert_eq!(state(&ct, id), CtState::Close);
    }

    #[test]
    fn udp_unreplied_replied_stream() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(16, t);
        let o = key("10.244.1.10", 5000, "10.96.0.10", 53, PROTO_UDP);
        let r = key("10.244.1.11", 53, "10.244.1.10", 5000, PROTO_UDP);
        let id = ct.create(o, r, NatKind::Dnat, None, 0, 0).unwrap();
        assert_eq!(ct.get(id).unwrap().expires, t.udp);
        ct.touch(id, Dir::Orig, 0, 50);
        assert_eq!(state(&ct, id), CtState::Unreplied);
        // One exchange (DNS): replied, short timeout, evictable.
        ct.touch(id, Dir::Reply, 0, 100);
        let s = *ct.get(id).unwrap();
        assert_eq!(
            (s.state, s.assured, s.expires),
            (CtState::Replied, false, 100 + t.udp)
        );
        assert!(s.is_established() && s.evictable());
        // Still talking 2 s after the first packet: a stream.
        ct.touch(id, Dir::Orig, 0, UDP_STREAM_AFTER_MS);
        let s = *ct.get(id).unwrap();
        assert_eq!((s.state, s.assured), (CtState::Stream, true));
        assert_eq!(s.expires, UDP_STREAM_AFTER_MS + t.udp_stream);
        assert!(!s.evictable());
        // An unanswered flow never becomes one.
        let o2 = key("10.244.1.10", 5001, "10.96.0.10", 53, PROTO_UDP);
        let r2 = key("10.244.1.11", 53, "10.244.1.10", 5001, PROTO_UDP);
        let id = ct.create(o2, r2, NatKind::Dnat, None, 0, 0).unwrap();
        ct.touch(id, Dir::Orig, 0, 10_000);
        assert_eq!(state(&ct, id), CtState::Unreplied);
        assert_eq!(ct.get(id).unwrap().expires, 10_000 + t.udp);
    }

    #[test]
    fn icmp_uses_its_timeout_and_is_never_assured() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(16, t);
        let o = key("10.244.1.10", 7, "8.8.8.8", 0, 1);
        let r = key("8.8.8.8", 0, "192.168.100.2", 7, 1);
        let id = ct.create(o, r, NatKind::Snat, None, 0, 0).unwrap();
        assert_eq!(ct.get(id).unwrap().expires, t.icmp);
        ct.touch(id, Dir::Reply, 0, 5000);
        let s = *ct.get(id).unwrap();
        assert_eq!(
            (s.state, s.assured, s.expires),
            (CtState::Replied, false, 5000 + t.icmp)
        );
    }

    #[test]
    fn timeouts_of_every_state() {
        let t = Timeouts::default();
        let want = [
            (CtState::SynSent, 120),
            (CtState::SynSent2, 120),
            (CtState::SynRecv, 60),
            (CtState::FinWait, 120),
            (CtState::CloseWait, 60),
            (CtState::LastAck, 30),
            (CtState::TimeWait, 120),
            (CtState::Close, 10),
        ];
        for (s, secs) in want {
            assert_eq!(t.of(PROTO_TCP, s, true), secs * 1000, "{s:?}");
        }
        assert_eq!(t.of(PROTO_TCP, CtState::Established, true), 86_400_000);
        assert_eq!(t.of(PROTO_TCP, CtState::Established, false), 60_000);
        assert_eq!(t.of(PROTO_UDP, CtState::Unreplied, false), 30_000);
        assert_eq!(t.of(PROTO_UDP, CtState::Replied, false), 30_000);
        assert_eq!(t.of(PROTO_UDP, CtState::Stream, true), 120_000);
        assert_eq!(t.of(1, CtState::Replied, false), 30_000);
        let names: std::collections::BTreeSet<_> =
            CtState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), CtState::ALL.len());
    }

    #[test]
    fn full_table_evicts_unestablished_first() {
        let mut ct = Conntrack::new(4, Timeouts::default());
        let est = handshake(&mut ct, 1, 0);
        let half_a = dnat(&mut ct, 2, 10).unwrap();
        let half_b = dnat(&mut ct, 3, 20).unwrap();
        ct.touch(half_b, Dir::Reply, SA, 30);
        let est2 = handshake(&mut ct, 4, 40);
        assert_eq!(ct.evictable_len(), 2);
        // Full: the least recently active unestablished session goes (half_a, idle since 10).
        let n1 = dnat(&mut ct, 100, 50).unwrap();
        assert!(ct.get(half_a).is_none() || ct.get(half_a).unwrap().orig != orig(2));
        assert!(ct.lookup(&orig(2), 50).is_none());
        assert_eq!(ct.stats.early_drops, 1);
        // half_b was touched at 30, n1 created at 50: half_b goes next.
        dnat(&mut ct, 101, 60).unwrap();
        assert!(ct.lookup(&orig(3), 60).is_none());
        assert_eq!(ct.stats.early_drops, 2);
        // n1 is now the oldest evictable one.
        dnat(&mut ct, 102, 70).unwrap();
        assert!(ct.lookup(&orig(100), 70).is_none());
        // The established ones were never touched by it.
        assert_eq!(ct.lookup(&orig(1), 70), Some((est, Dir::Orig)));
        assert_eq!(ct.lookup(&orig(4), 70), Some((est2, Dir::Orig)));
        assert_eq!(ct.len(), 4);
        assert_eq!(ct.stats.full, 0);
        let _ = n1;
    }

    #[test]
    fn full_of_established_refuses_and_keeps_them() {
        let mut ct = Conntrack::new(4, Timeouts::default());
        for p in 0..4 {
            handshake(&mut ct, 2000 + p, 0);
        }
        assert_eq!(dnat(&mut ct, 3000, 1), Err(CtError::Full));
        assert_eq!(ct.stats.full, 1);
        assert_eq!(ct.stats.early_drops, 0);
        assert!((0..4).all(|p| ct.lookup(&orig(2000 + p), 1).is_some()));
        // One of them closes: it may now be evicted for a new connection.
        let (id, _) = ct.lookup(&orig(2002), 2).unwrap();
        ct.touch(id, Dir::Orig, FA, 2);
        assert!(dnat(&mut ct, 3000, 3).is_ok());
        assert!(ct.lookup(&orig(2002), 3).is_none());
        assert_eq!(ct.stats.early_drops, 1);
        assert_eq!(ct.len(), 4);
    }

    #[test]
    fn syn_flood_churns_while_handshakes_complete() {
        // A flood of SYNs (answered by the backend, never acknowledged) through a table of
        // 100: every insert is O(1), established connections survive, a new handshake
        // in the middle of the flood completes.
        let mut ct = Conntrack::new(100, Timeouts::default());
        let est: Vec<u32> = (0..10).map(|p| handshake(&mut ct, 60000 + p, 0)).collect();
        let mut now = 1;
        for i in 0..100_000u32 {
            let src = Ipv4Addr::from(0x6440_0000 + i);
            let o = FlowKey {
                src,
                dst: "192.168.100.2".parse().unwrap(),
                sport: 1024,
                dport: 30080,
                proto: PROTO_TCP,
            };
            let r = FlowKey {
                src: "10.244.1.11".parse().unwrap(),
                dst: src,
                sport: 8080,
                dport: 1024,
                proto: PROTO_TCP,
            };
            let id = ct.create(o, r, NatKind::Dnat, None, TCP_SYN, now).unwrap();
            ct.touch(id, Dir::Reply, SA, now);
            if i == 50_000 {
                handshake(&mut ct, 55555, now);
            }
            if i % 1000 == 0 {
                now += 1;
            }
        }
        assert_eq!(ct.len(), 100);
        assert_eq!(ct.stats.full, 0);
        assert_eq!(ct.stats.early_drops, 100_000 + 10 + 1 - 100);
        for (p, id) in est.iter().enumerate() {
            assert_eq!(
                ct.lookup(&orig(60000 + p as u16), now),
                Some((*id, Dir::Orig))
            );
        }
        assert!(
            ct.lookup(&orig(55555), now).is_some(),
            "completed during the flood"
        );
        assert_eq!(ct.evictable_len(), 100 - 11);
    }

    #[test]
    fn eviction_work_is_bounded_after_the_limit_drops() {
        let mut ct = Conntrack::new(100, Timeouts::default());
        for p in 0..100 {
            dnat(&mut ct, p, 0).unwrap();
        }
        ct.set_limit(10);
        // One insert evicts at most MAX_EVICT_PER_INSERT sessions, then refuses.
        assert_eq!(dnat(&mut ct, 1000, 1), Err(CtError::Full));
        assert_eq!(ct.len(), 100 - MAX_EVICT_PER_INSERT);
        assert_eq!(ct.stats.early_drops, MAX_EVICT_PER_INSERT as u64);
    }

    #[test]
    fn evictable_list_stays_consistent() {
        // Random operations against a model of the list's invariants.
        let mut ct = Conntrack::new(64, Timeouts::default());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for now in 0..20_000u64 {
            let r = next();
            let sport = (r % 200) as u16;
            match (r >> 8) % 4 {
                0 => {
                    let _ = dnat(&mut ct, sport, now);
                }
                1 | 2 => {
                    if let Some((id, dir)) = ct.lookup(&orig(sport), now) {
                        let flags = [TCP_SYN, SA, TCP_ACK, FA, TCP_RST][(r >> 16) as usize % 5];
                        let dir = if (r >> 24) & 1 == 0 { dir } else { Dir::Reply };
                        ct.touch(id, dir, flags, now);
                    }
                }
                _ => {
                    if let Some((id, _)) = ct.lookup(&orig(sport), now) {
                        ct.remove(id);
                    }
                }
            }
            // The list holds exactly the evictable sessions, in last-seen order.
            let mut walked = 0;
            let mut at = ct.head;
            let mut last = 0;
            while at != NIL {
                let s = ct.get(at).unwrap();
                assert!(s.evictable());
                assert!(s.last_seen >= last);
                last = s.last_seen;
                walked += 1;
                at = ct.links[at as usize].next;
            }
            let want = ct.iter().filter(|(_, s)| s.evictable()).count();
            assert_eq!((walked, ct.evictable_len()), (want, want));
            assert!(ct.len() <= 64);
        }
    }

    #[test]
    fn sweep_drains_expired() {
        let mut ct = Conntrack::new(1000, Timeouts::default());
        for p in 0..100 {
            dnat(&mut ct, 2000 + p, 0).unwrap();
        }
        assert_eq!(ct.sweep(1, 1000), 0);
        let later = Timeouts::default().tcp_syn_sent;
        let mut n = 0;
        for _ in 0..10 {
            n += ct.sweep(later, 16);
        }
        assert_eq!(n, 100);
        assert!(ct.is_empty());
        assert_eq!(ct.evictable_len(), 0);
        assert_eq!(ct.stats.expired, 100);
        // slots are reused
        dnat(&mut ct, 9, later).unwrap();
        assert_eq!(ct.iter().count(), 1);
    }

    #[test]
    fn fast_path_refresh_keeps_an_established_session_alive() {
        let mut ct = Conntrack::new(16, Timeouts::default());
        let id = handshake(&mut ct, 40000, 0);
        let s = *ct.get(id).unwrap();
        assert!(s.is_established());
        let before = s.expires;
        // XDP forwarded 10 reply packets, the last one at 5 s.
        assert!(ct.refresh(&s.reply, 5_000, 10, 6_000));
        let r = *ct.get(id).unwrap();
        assert_eq!(r.last_seen, 5_000);
        assert_eq!(r.packets[1], s.packets[1] + 10);
        assert!(r.expires >= before + 5_000 - s.last_seen);
        assert_eq!(r.state, s.state, "no state change");
        // An older time never moves it back.
        assert!(ct.refresh(&s.orig, 1_000, 1, 6_000));
        assert_eq!(ct.get(id).unwrap().last_seen, 5_000);
        // Unknown tuples and sessions that are not established are not refreshed.
        assert!(!ct.refresh(&orig(1), 5_000, 1, 6_000));
        let half = dnat_flags(&mut ct, 40001, TCP_SYN, 0).unwrap();
        let h = *ct.get(half).unwrap();
        assert!(!ct.refresh(&h.orig, 5_000, 1, 6_000));
        assert_eq!(ct.get(half).unwrap().last_seen, h.last_seen);
    }
}
