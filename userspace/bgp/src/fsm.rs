//! The BGP finite state machine of one connection (RFC 4271 §8), without I/O: the
//! session driver feeds [`Event`]s and carries out the [`Action`]s returned.
//!
//! States, events and timers carry the RFC's names; [`Fsm::event`] is one exhaustive
//! `match` over (state, event). The DelayOpen and IdleHold optional attributes are not
//! implemented; collision detection (§6.8) is decided by the driver, which owns both
//! connections, and reaches the FSM as `OpenCollisionDump`.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::error::{cease, code, fsm, open, DecodeError};
use crate::msg::{Capability, Message, Notification, Open};
use crate::update::Update;

/// RFC 4271 §8.2.2 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum State {
    /// Refuses connections; waits for a start event.
    Idle,
    /// Waiting for an outgoing TCP connection to complete.
    Connect,
    /// Listening for the peer's connection.
    Active,
    /// OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for a KEEPALIVE.
    OpenConfirm,
    /// Session up: UPDATEs flow.
    Established,
}

impl State {
    /// The RFC's name.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

/// RFC 4271 §10 timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// ConnectRetryTimer.
    ConnectRetry,
    /// HoldTimer.
    Hold,
    /// KeepaliveTimer.
    Keepalive,
}

/// RFC 4271 §8.1 events (the subset this speaker generates; numbers in comments).
#[expect(
    clippy::large_enum_variant,
    reason = "one event at a time, moved straight into the FSM"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// 1 / 4: ManualStart (passive when the peer is configured passive).
    ManualStart,
    /// 2: ManualStop.
    ManualStop,
    /// 3: AutomaticStart (after an error, once the idle hold delay has passed).
    AutomaticStart,
    /// 9: ConnectRetryTimer_Expires.
    ConnectRetryTimerExpires,
    /// 10: HoldTimer_Expires.
    HoldTimerExpires,
    /// 11: KeepaliveTimer_Expires.
    KeepaliveTimerExpires,
    /// 16 / 17: Tcp_CR_Acked / TcpConnectionConfirmed.
    TcpConnectionConfirmed,
    /// 18: TcpConnectionFails (also: the peer closed the connection).
    TcpConnectionFails,
    /// 19: BGPOpen.
    BgpOpen(Open),
    /// 21 / 22 / 28: BGPHeaderErr, BGPOpenMsgErr, UpdateMsgErr.
    MsgErr(DecodeError),
    /// 23: OpenCollisionDump.
    OpenCollisionDump,
    /// 25: NotifMsg.
    NotifMsg(Notification),
    /// 26: KeepAliveMsg.
    KeepAliveMsg,
    /// 27: UpdateMsg.
    UpdateMsg(Update),
    /// ROUTE-REFRESH received (RFC 2918).
    RouteRefreshMsg(u16),
}

/// Why a session left Established (or never got there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownReason {
    /// Configured stop.
    Stopped,
    /// The TCP connection failed or was closed without NOTIFICATION.
    ConnectionLost,
    /// Our hold timer expired.
    HoldTimerExpired,
    /// We sent a NOTIFICATION.
    SentNotification(String),
    /// The peer sent a NOTIFICATION.
    ReceivedNotification(String),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start an outgoing TCP connection.
    InitiateConnect,
    /// Drop the TCP connection.
    CloseConnection,
    /// Send a message.
    Send(Message),
    /// (Re)start a timer.
    StartTimer(Timer, u32),
    /// Stop a timer.
    StopTimer(Timer),
    /// The session reached Established.
    SessionUp,
    /// The session left Established (routes go, or become stale under graceful restart).
    SessionDown(DownReason),
    /// An UPDATE to apply to the Adj-RIB-In.
    ProcessUpdate(Update),
    /// The peer asked for our routes again (AFI code).
    Refresh(u16),
    /// The attempt ended before Established; schedule AutomaticStart.
    Failed(DownReason),
}

/// Per-connection configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    /// Our AS.
    pub local_as: u32,
    /// Expected peer AS.
    pub peer_as: u32,
    /// Our BGP identifier.
    pub bgp_id: Ipv4Addr,
    /// Hold time we propose (0 or >= 3).
    pub hold_time: u16,
    /// ConnectRetryTime in seconds.
    pub connect_retry: u32,
    /// Only wait for the peer to connect.
    pub passive: bool,
    /// Capabilities we send.
    pub capabilities: Vec<Capability>,
}

/// The FSM of one peer's connection.
#[derive(Debug, Clone)]
pub struct Fsm {
    cfg: FsmConfig,
    state: State,
    /// ConnectRetryCounter.
    pub connect_retry_counter: u32,
    /// Negotiated hold time (seconds).
    pub hold_time: u16,
    /// The peer's OPEN once received.
    pub peer_open: Option<Open>,
}

/// Hold timer while waiting for the peer's OPEN (RFC 4271 §8.2.2: "large value", 4 min).
pub const LARGE_HOLD: u32 = 240;

impl Fsm {
    /// A machine in Idle.
    pub fn new(cfg: FsmConfig) -> Fsm {
        Fsm {
            cfg,
            state: State::Idle,
            connect_retry_counter: 0,
            hold_time: 0,
            peer_open: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &FsmConfig {
        &self.cfg
    }

    fn open(&self) -> Message {
        Message::Open(Open::new(
            self.cfg.local_as,
            self.cfg.hold_time,
            self.cfg.bgp_id,
            self.cfg.capabilities.clone(),
        ))
    }

    fn check_open(&self, o: &Open) -> Result<(), Notification> {
        if o.asn() != self.cfg.peer_as {
            return Err(Notification::new(code::OPEN, open::BAD_PEER_AS));
        }

        let ibgp = self.cfg.peer_as == self.cfg.local_as;
        if o.bgp_id.is_unspecified()
            || o.bgp_id.is_multicast()
            || (ibgp && o.bgp_id == self.cfg.bgp_id)
        {
            return Err(Notification::new(code::OPEN, open::BAD_BGP_ID));
        }
        Ok(())
    }

    fn keepalive_secs(&self) -> u32 {
        u32::from(self.hold_time / 3).max(1)
    }

    /// Leave for Idle after sending `n`.
    fn fail_with(&mut self, n: Notification, established: bool) -> Vec<Action> {
        let detail = n.to_string();
        self.fail_with_reason(n, detail, established)
    }

    /// [`Fsm::fail_with`] with a reason that says more than the NOTIFICATION's codes.
    fn fail_with_reason(
        &mut self,
        n: Notification,
        detail: String,
        established: bool,
    ) -> Vec<Action> {
        let reason = DownReason::SentNotification(detail);
        self.enter_idle(
            vec![Action::Send(Message::Notification(n))],
            reason,
            established,
        )
    }

    fn enter_idle(
        &mut self,
        mut acts: Vec<Action>,
        reason: DownReason,
        established: bool,
    ) -> Vec<Action> {
        self.state = State::Idle;
        self.connect_retry_counter += 1;
        self.peer_open = None;
        acts.extend([
            Action::CloseConnection,
            Action::StopTimer(Timer::ConnectRetry),
            Action::StopTimer(Timer::Hold),
            Action::StopTimer(Timer::Keepalive),
        ]);
        acts.push(if established {
            Action::SessionDown(reason)
        } else {
            Action::Failed(reason)
        });
        acts
    }

    fn start(&mut self) -> Vec<Action> {
        let cr = Action::StartTimer(Timer::ConnectRetry, self.cfg.connect_retry);
        if self.cfg.passive {
            self.state = State::Active;
            vec![cr]
        } else {
            self.state = State::Connect;
            vec![cr, Action::InitiateConnect]
        }
    }

    fn connected(&mut self) -> Vec<Action> {
        self.state = State::OpenSent;
        vec![
            Action::StopTimer(Timer::ConnectRetry),
            Action::Send(self.open()),
            Action::StartTimer(Timer::Hold, LARGE_HOLD),
        ]
    }

    /// Feed one event; returns the actions, in order.
    pub fn event(&mut self, ev: Event) -> Vec<Action> {
        use Event as E;
        use State as S;
        let cease_admin = || Notification::new(code::CEASE, cease::ADMIN_SHUTDOWN);
        let hold_expired = || Notification::new(code::HOLD_TIMER_EXPIRED, 0);
        let collision = || Notification::new(code::CEASE, cease::COLLISION);
        match (self.state, ev) {
            // Idle: only start events do anything (§8.2.2 "Idle state").
            (S::Idle, E::ManualStart | E::AutomaticStart) => self.start(),
            (S::Idle, _) => vec![],

            // Connect / Active.
            (S::Connect | S::Active, E::ManualStop) => {
                self.connect_retry_counter = 0;
                self.state = S::Idle;
                vec![
                    Action::CloseConnection,
                    Action::StopTimer(Timer::ConnectRetry),
                ]
            }
            (S::Connect | S::Active, E::ManualStart | E::AutomaticStart) => vec![],
            (S::Connect, E::ConnectRetryTimerExpires) => vec![
                Action::CloseConnection,
                Action::StartTimer(Timer::ConnectRetry, self.cfg.connect_retry),
                Action::InitiateConnect,
            ],
            (S::Active, E::ConnectRetryTimerExpires) => {
                let mut v = vec![Action::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry,
                )];
                if !self.cfg.passive {
                    self.state = S::Connect;
                    v.push(Action::InitiateConnect);
                }
                v
            }
            (S::Connect | S::Active, E::TcpConnectionConfirmed) => self.connected(),
            (S::Connect, E::TcpConnectionFails) => {
                self.state = S::Active;
                vec![Action::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry,
                )]
            }
            (S::Active, E::TcpConnectionFails) => vec![],
            (
                S::Connect | S::Active,
                E::HoldTimerExpires
                | E::KeepaliveTimerExpires
                | E::BgpOpen(_)
                | E::MsgErr(_)
                | E::OpenCollisionDump
                | E::NotifMsg(_)
                | E::KeepAliveMsg
                | E::UpdateMsg(_)
                | E::RouteRefreshMsg(_),
            ) => self.enter_idle(vec![], DownReason::Stopped, false),

            // OpenSent.
            (S::OpenSent, E::ManualStop) => {
                let mut v = self.fail_with(cease_admin(), false);
                self.connect_retry_counter = 0;
                v.retain(|a| !matches!(a, Action::Failed(_)));
                v
            }
            (S::OpenSent, E::HoldTimerExpires) => self.fail_with(hold_expired(), false),
            (S::OpenSent, E::TcpConnectionFails) => {
                self.state = S::Active;
                vec![
                    Action::CloseConnection,
                    Action::StopTimer(Timer::Hold),
                    Action::StartTimer(Timer::ConnectRetry, self.cfg.connect_retry),
                ]
            }
            (S::OpenSent, E::BgpOpen(o)) => match self.check_open(&o) {
                Ok(()) => {
                    self.hold_time = self.cfg.hold_time.min(o.hold_time);
                    self.peer_open = Some(o);
                    self.state = S::OpenConfirm;
                    let mut v = vec![
                        Action::StopTimer(Timer::ConnectRetry),
                        Action::Send(Message::Keepalive),
                    ];
                    if self.hold_time > 0 {
                        v.push(Action::StartTimer(Timer::Keepalive, self.keepalive_secs()));
                        v.push(Action::StartTimer(Timer::Hold, u32::from(self.hold_time)));
                    } else {
                        v.push(Action::StopTimer(Timer::Hold));
                    }
                    v
                }
                Err(n) if o.asn() != self.cfg.peer_as => {
                    // Both numbers in the reason (logged and in `show bgp`'s last error).
                    let detail = format!(
                        "{n}: the peer's OPEN says AS {}, configured AS {}",
                        o.asn(),
                        self.cfg.peer_as
                    );
                    self.fail_with_reason(n, detail, false)
                }
                Err(n) => self.fail_with(n, false),
            },
            (S::OpenSent, E::MsgErr(e)) => self.fail_with(e.notification(), false),
            (S::OpenSent, E::OpenCollisionDump) => self.fail_with(collision(), false),
            (S::OpenSent, E::NotifMsg(n)) => self.enter_idle(
                vec![],
                DownReason::ReceivedNotification(n.to_string()),
                false,
            ),
            (
                S::OpenSent,
                E::ConnectRetryTimerExpires
                | E::KeepaliveTimerExpires
                | E::TcpConnectionConfirmed
                | E::KeepAliveMsg
                | E::UpdateMsg(_)
                | E::RouteRefreshMsg(_),
            ) => self.fail_with(
                Notification::new(code::FSM, fsm::UNEXPECTED_IN_OPEN_SENT),
                false,
            ),
            (S::OpenSent, E::ManualStart | E::AutomaticStart) => vec![],

            // OpenConfirm.
            (S::OpenConfirm, E::ManualStop) => {
                let mut v = self.fail_with(cease_admin(), false);
                self.connect_retry_counter = 0;
                v.retain(|a| !matches!(a, Action::Failed(_)));
                v
            }
            (S::OpenConfirm, E::HoldTimerExpires) => self.fail_with(hold_expired(), false),
            (S::OpenConfirm, E::KeepaliveTimerExpires) => vec![
                Action::Send(Message::Keepalive),
                Action::StartTimer(Timer::Keepalive, self.keepalive_secs()),
            ],
            (S::OpenConfirm, E::TcpConnectionFails) => {
                self.enter_idle(vec![], DownReason::ConnectionLost, false)
            }
            (S::OpenConfirm, E::NotifMsg(n)) => self.enter_idle(
                vec![],
                DownReason::ReceivedNotification(n.to_string()),
                false,
            ),
            (S::OpenConfirm, E::MsgErr(e)) => self.fail_with(e.notification(), false),
            (S::OpenConfirm, E::OpenCollisionDump) => self.fail_with(collision(), false),
            (S::OpenConfirm, E::KeepAliveMsg) => {
                self.state = S::Established;
                let mut v = vec![Action::SessionUp];
                if self.hold_time > 0 {
                    v.push(Action::StartTimer(Timer::Hold, u32::from(self.hold_time)));
                }
                v
            }
            (
                S::OpenConfirm,
                E::ConnectRetryTimerExpires
                | E::TcpConnectionConfirmed
                | E::BgpOpen(_)
                | E::UpdateMsg(_)
                | E::RouteRefreshMsg(_),
            ) => self.fail_with(
                Notification::new(code::FSM, fsm::UNEXPECTED_IN_OPEN_CONFIRM),
                false,
            ),
            (S::OpenConfirm, E::ManualStart | E::AutomaticStart) => vec![],

            // Established.
            (S::Established, E::ManualStop) => {
                let v = self.fail_with(cease_admin(), true);
                self.connect_retry_counter = 0;
                v
            }
            (S::Established, E::HoldTimerExpires) => {
                let mut v = self.fail_with(hold_expired(), true);
                for a in &mut v {
                    if let Action::SessionDown(r) = a {
                        *r = DownReason::HoldTimerExpired;
                    }
                }
                v
            }
            (S::Established, E::KeepaliveTimerExpires) => vec![
                Action::Send(Message::Keepalive),
                Action::StartTimer(Timer::Keepalive, self.keepalive_secs()),
            ],
            (S::Established, E::KeepAliveMsg) => self.restart_hold(vec![]),
            (S::Established, E::UpdateMsg(u)) => self.restart_hold(vec![Action::ProcessUpdate(u)]),
            (S::Established, E::RouteRefreshMsg(afi)) => {
                self.restart_hold(vec![Action::Refresh(afi)])
            }
            (S::Established, E::TcpConnectionFails) => {
                self.enter_idle(vec![], DownReason::ConnectionLost, true)
            }
            (S::Established, E::NotifMsg(n)) => self.enter_idle(
                vec![],
                DownReason::ReceivedNotification(n.to_string()),
                true,
            ),
            (S::Established, E::MsgErr(e)) => self.fail_with(e.notification(), true),
            (S::Established, E::OpenCollisionDump) => self.fail_with(collision(), true),
            (
                S::Established,
                E::ConnectRetryTimerExpires | E::TcpConnectionConfirmed | E::BgpOpen(_),
            ) => self.fail_with(
                Notification::new(code::FSM, fsm::UNEXPECTED_IN_ESTABLISHED),
                true,
            ),
            (S::Established, E::ManualStart | E::AutomaticStart) => vec![],
        }
    }

    fn restart_hold(&self, mut v: Vec<Action>) -> Vec<Action> {
        if self.hold_time > 0 {
            v.push(Action::StartTimer(Timer::Hold, u32::from(self.hold_time)));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(passive: bool) -> FsmConfig {
        FsmConfig {
            local_as: 65001,
            peer_as: 65002,
            bgp_id: Ipv4Addr::new(1, 1, 1, 1),
            hold_time: 9,
            connect_retry: 1,
            passive,
            capabilities: vec![Capability::FourOctetAs(65001)],
        }
    }

    fn peer_open(asn: u32, hold: u16) -> Open {
        Open::new(
            asn,
            hold,
            Ipv4Addr::new(2, 2, 2, 2),
            vec![Capability::FourOctetAs(asn)],
        )
    }

    #[test]
    fn active_open_reaches_established() {
        let mut f = Fsm::new(cfg(false));
        let a = f.event(Event::ManualStart);
        assert_eq!(f.state(), State::Connect);
        assert!(a.contains(&Action::InitiateConnect));
        let a = f.event(Event::TcpConnectionConfirmed);
        assert_eq!(f.state(), State::OpenSent);
        assert!(a
            .iter()
            .any(|a| matches!(a, Action::Send(Message::Open(_)))));
        let a = f.event(Event::BgpOpen(peer_open(65002, 30)));
        assert_eq!(f.state(), State::OpenConfirm);
        assert_eq!(f.hold_time, 9, "the smaller hold time wins");
        assert!(a.contains(&Action::Send(Message::Keepalive)));
        assert!(a.contains(&Action::StartTimer(Timer::Keepalive, 3)));
        let a = f.event(Event::KeepAliveMsg);
        assert_eq!(f.state(), State::Established);
        assert!(a.contains(&Action::SessionUp));
        let a = f.event(Event::UpdateMsg(Update::default()));
        assert!(matches!(a[0], Action::ProcessUpdate(_)));
        let a = f.event(Event::HoldTimerExpires);
        assert_eq!(f.state(), State::Idle);
        assert!(
            a.contains(&Action::Send(Message::Notification(Notification::new(
                4, 0
            ))))
        );
        assert!(a.contains(&Action::SessionDown(DownReason::HoldTimerExpired)));
    }

    #[test]
    fn passive_waits_and_bad_peer_as_is_refused() {
        let mut f = Fsm::new(cfg(true));
        let a = f.event(Event::ManualStart);
        assert_eq!(f.state(), State::Active);
        assert!(!a.contains(&Action::InitiateConnect));
        let a = f.event(Event::ConnectRetryTimerExpires);
        assert_eq!(f.state(), State::Active, "passive peers never connect");
        assert!(!a.contains(&Action::InitiateConnect));
        f.event(Event::TcpConnectionConfirmed);
        let a = f.event(Event::BgpOpen(peer_open(65099, 9)));
        assert_eq!(f.state(), State::Idle);
        assert!(
            a.contains(&Action::Send(Message::Notification(Notification::new(
                2, 2
            ))))
        );
        let reason = a.iter().find_map(|a| match a {
            Action::Failed(DownReason::SentNotification(r)) => Some(r.clone()),
            _ => None,
        });
        let reason = reason.expect("failed with the NOTIFICATION sent");
        assert!(
            reason.contains("AS 65099") && reason.contains("configured AS 65002"),
            "both AS numbers: {reason}"
        );
    }

    #[test]
    fn unexpected_messages_are_fsm_errors() {
        let mut f = Fsm::new(cfg(false));
        f.event(Event::ManualStart);
        f.event(Event::TcpConnectionConfirmed);
        let a = f.event(Event::KeepAliveMsg);
        assert!(
            a.contains(&Action::Send(Message::Notification(Notification::new(
                5, 1
            ))))
        );
        assert_eq!(f.state(), State::Idle);
        assert!(
            f.event(Event::KeepAliveMsg).is_empty(),
            "Idle ignores messages"
        );
        f.event(Event::AutomaticStart);
        assert_eq!(f.state(), State::Connect);
        f.event(Event::TcpConnectionFails);
        assert_eq!(f.state(), State::Active);
        let a = f.event(Event::ConnectRetryTimerExpires);
        assert_eq!(f.state(), State::Connect);
        assert!(a.contains(&Action::InitiateConnect));
    }

    #[test]
    fn collision_dump_sends_cease_7() {
        let mut f = Fsm::new(cfg(false));
        f.event(Event::ManualStart);
        f.event(Event::TcpConnectionConfirmed);
        f.event(Event::BgpOpen(peer_open(65002, 9)));
        let a = f.event(Event::OpenCollisionDump);
        assert!(
            a.contains(&Action::Send(Message::Notification(Notification::new(
                6, 7
            ))))
        );
        assert_eq!(f.state(), State::Idle);
    }
}
