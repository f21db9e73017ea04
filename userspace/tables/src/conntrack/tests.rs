//! Tests of the session table and its state machines.

use super::table::{MAX_EVICT_PER_INSERT, NIL};
use super::*;
use crate::service::{PROTO_TCP, PROTO_UDP};

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
    let names: std::collections::BTreeSet<_> = CtState::ALL.iter().map(|s| s.as_str()).collect();
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

/// Tables of several workers: disjoint slices of a port range covering it, their share of a
/// node-wide limit; one worker (the default) keeps everything.
#[test]
fn worker_shares_of_ports_and_limit() {
    let mut ct = Conntrack::new(1000, Timeouts::default());
    assert_eq!(ct.share(), (0, 1));
    assert_eq!(ct.share_of_range((61000, 65535)), (61000, 65535));
    assert_eq!(ct.share_of_limit(1000), 1000);
    let mut next = 61000u32;
    for i in 0..3 {
        ct.set_share(i, 3);
        let (lo, hi) = ct.share_of_range((61000, 65535));
        assert_eq!(u32::from(lo), next, "slices follow each other");
        assert!(lo <= hi);
        next = u32::from(hi) + 1;
        assert_eq!(ct.share_of_limit(1000), 334);
    }
    assert_eq!(next, 65536, "the slices cover the range");
    // A range smaller than the number of workers is not cut.
    ct.set_share(1, 3);
    assert_eq!(ct.share_of_range((10, 11)), (10, 11));
}
