//! Session states per protocol, as `nf_conntrack` names them: the TCP state machine
//! (without window checks), what a segment's flags mean to it, and the timeout of every
//! state (see the module docs of `conntrack`).

use super::Dir;
use crate::service::{PROTO_TCP, PROTO_UDP};

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
pub(super) enum TcpEvent {
    Syn,
    SynAck,
    Fin,
    Ack,
    Rst,
    Other,
}

impl TcpEvent {
    #[inline(always)]
    pub(super) fn of(flags: u16) -> TcpEvent {
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
pub(super) fn tcp_next(s: CtState, dir: Dir, ev: TcpEvent, fins: &mut u8) -> Option<CtState> {
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
    /// [`Session::assured`](super::Session::assured)).
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

/// TCP flag bits (host order, as in the header's low byte).
pub const TCP_FIN: u16 = 0x01;
/// SYN.
pub const TCP_SYN: u16 = 0x02;
/// RST.
pub const TCP_RST: u16 = 0x04;
/// ACK.
pub const TCP_ACK: u16 = 0x10;
