//! The bounded session table: sessions indexed by both tuples, the evictable sessions on
//! an intrusive list by last activity (early drop), lazy expiry and the incremental sweep.

use super::state::{tcp_next, TcpEvent};
use super::{CtState, Dir, FlowKey, Timeouts, UDP_STREAM_AFTER_MS};
use crate::hash::FastMap;
use crate::service::{FrontendKey, PROTO_TCP, PROTO_UDP};

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
pub(super) const NIL: u32 = u32::MAX;

/// Links of a slot in the evictable list.
#[derive(Debug, Clone, Copy)]
pub(super) struct Link {
    prev: u32,
    pub(super) next: u32,
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
pub(super) const MAX_EVICT_PER_INSERT: usize = 8;

/// A bounded session table.
#[derive(Debug, Clone)]
pub struct Conntrack {
    slots: Vec<Option<Session>>,
    /// (`links` and `head` are read by the tests, which walk the evictable list.)
    pub(super) links: Vec<Link>,
    /// Evictable list: least recently active first.
    pub(super) head: u32,
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
    /// This table's part among the tables of several engine workers: (index, of).
    share: (usize, usize),
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
            share: (0, 1),
        }
    }

    /// Makes this the table of worker `index` of `of` (several engine workers, each with its
    /// own table): it holds its share of the node's session limit ([`Conntrack::share_of_limit`])
    /// and allocates SNAT ports from its own slice of a range ([`Conntrack::share_of_range`]),
    /// so that two workers never give two flows the same translated tuple.
    pub fn set_share(&mut self, index: usize, of: usize) {
        let of = of.max(1);
        self.share = (index.min(of - 1), of);
    }

    /// (index, of) set by [`Conntrack::set_share`]; (0, 1) alone.
    pub fn share(&self) -> (usize, usize) {
        self.share
    }

    /// This table's part of a node-wide session limit: `limit / of`, rounded up.
    pub fn share_of_limit(&self, limit: usize) -> usize {
        limit.div_ceil(self.share.1)
    }

    /// This table's slice of the port range `range` (inclusive): the range cut in `of`
    /// consecutive parts; the whole range when it has fewer ports than parts.
    pub fn share_of_range(&self, range: (u16, u16)) -> (u16, u16) {
        let (lo, hi) = (range.0.min(range.1), range.0.max(range.1));
        let (i, of) = (self.share.0 as u32, self.share.1 as u32);
        let size = u32::from(hi - lo) + 1;
        if of <= 1 || size < of {
            return (lo, hi);
        }
        let start = u32::from(lo) + size * i / of;
        let end = u32::from(lo) + size * (i + 1) / of - 1;
        (start as u16, end as u16)
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
