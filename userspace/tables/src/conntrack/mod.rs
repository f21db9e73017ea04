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
//!
//! Files: `mod.rs` (flow tuples), `state.rs` (the protocol state machines and their
//! timeouts), `table.rs` (sessions, the bounded table and its eviction list).

mod state;
mod table;
#[cfg(test)]
mod tests;

pub use state::{CtState, Timeouts, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, UDP_STREAM_AFTER_MS};
pub use table::{Conntrack, CtError, CtStats, NatKind, Session};

use std::net::Ipv4Addr;

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
