//! AF_XDP backend against real veth pairs in a private network namespace
//! (root only): receive on one port, forward the same frame (no copy) out of
//! another port, check it arrives, and count every frame of the pool.
//!
//! Topology (all inside the test namespace):
//! ```text
//!   sender -> a1 ==veth== a0 [XDP -> XskIo port A]
//!                               XskIo port B -> b0 ==veth== b1 -> receiver
//! ```
//! and the reverse direction from b1 to a1.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use ferroplane_io::{
    BufIdx, Desc, FrameMemory, PacketIo, PortId, XskConfig, XskIo, MIN_FILL_TARGET,
};

const A0: &str = "02:00:00:00:0a:00";
const A1: &str = "02:00:00:00:0a:01";
const B0: &str = "02:00:00:00:0b:00";
const B1: &str = "02:00:00:00:0b:01";

/// Run `f` on a thread inside the namespace; re-raise its panic here so the
/// namespace guard of the caller cleans up.
fn in_netns<F: FnOnce() + Send + 'static>(ns: &Netns, f: F) {
    let name = ns.name().to_string();
    let result = std::thread::spawn(move || {
        enter_netns(&name);
        f()
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn two_veth_pairs(tag: &str) -> Netns {
    let ns = quiet_netns(tag);
    ns.veth("a0", A0, "a1", A1);
    ns.veth("b0", B0, "b1", B1);
    ns
}

fn small_config() -> XskConfig {
    XskConfig {
        num_frames: 4096,
        fill_size: 2048,
        comp_size: 2048,
        rx_size: 2048,
        tx_size: 2048,
        fill_target: 1024,
        // Small, so that growing with activity shows (the default is 128).
        idle_fill: 64,
        // These tests open at most four ports: no floors kept for more.
        max_ports: 4,
        ..XskConfig::default()
    }
}

/// Send `count` test frames out of `ifname` from a thread in namespace `ns`;
/// with `pace`, pause briefly every 32 frames (≈ 150 kpps).
fn spawn_sender(
    ns: String,
    ifname: &'static str,
    dst: &str,
    src: &str,
    tag: u32,
    count: u32,
    pace: bool,
) -> JoinHandle<Duration> {
    let (dst, src) = (parse_mac(dst), parse_mac(src));
    std::thread::spawn(move || {
        enter_netns(&ns);
        let sock = RawSock::bind(ifname);
        let start = Instant::now();
        for seq in 0..count {
            sock.send(&test_frame(dst, src, tag, seq));
            if pace && seq % 32 == 31 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        start.elapsed()
    })
}

#[derive(Debug, Default)]
struct Traffic {
    sent: u32,
    received: u64,
    forwarded: u64,
    arrived: u64,
    /// How long the sender took.
    elapsed: Duration,
    /// From the start until the last frame was received.
    busy: Duration,
}

/// Receive on `from`, rewrite the MACs in place, send the same frames on
/// `to`; collect what reaches `sink` (the far end of `to`).
#[allow(clippy::too_many_arguments)]
fn forward(
    io: &mut XskIo,
    from: PortId,
    to: PortId,
    sender: JoinHandle<Duration>,
    sent: u32,
    tag: u32,
    out_dst: &str,
    out_src: &str,
    sink: Option<&RawSock>,
) -> Traffic {
    let (out_dst, out_src) = (parse_mac(out_dst), parse_mac(out_src));
    let mut t = Traffic {
        sent,
        ..Traffic::default()
    };
    let mut seen = vec![false; sent as usize];
    let mut descs = [Desc::default(); 256];
    let mut rejected: Vec<BufIdx> = Vec::with_capacity(256);
    let mut buf = [0u8; 2048];
    let mut sender = Some(sender);
    let start = Instant::now();
    let mut last_activity = Instant::now();
    let mut n = 0;
    loop {
        if n == 0 {
            io.wait(Duration::from_millis(1)).unwrap();
        }
        n = io.rx_burst(from, &mut descs);
        for d in &descs[..n] {
            let off = usize::from(d.offset);
            let frame = &mut io.memory().frame_mut(d.buf)[off..off + usize::from(d.len)];
            assert_eq!(parse_test_frame(frame).map(|(tg, _)| tg), Some(tag));
            frame[0..6].copy_from_slice(&out_dst);
            frame[6..12].copy_from_slice(&out_src);
        }
        let accepted = io.tx_burst(to, &descs[..n]);
        rejected.clear();
        rejected.extend(descs[accepted..n].iter().map(|d| d.buf));
        io.free(&rejected);
        io.flush().unwrap();
        t.received += n as u64;
        t.forwarded += accepted as u64;
        if n > 0 {
            last_activity = Instant::now();
            t.busy = start.elapsed();
        }
        while let Some(len) = sink.and_then(|s| s.try_recv(&mut buf)) {
            // The sink also sees frames sent by its own interface: only
            // count what we forwarded (rewritten destination).
            if buf[0..6] != out_dst {
                continue;
            }
            let (tg, seq) = parse_test_frame(&buf[..len]).expect("test frame");
            assert_eq!(tg, tag);
            assert!(!seen[seq as usize], "frame {seq} arrived twice");
            seen[seq as usize] = true;
            t.arrived += 1;
            last_activity = Instant::now();
        }
        if sender.as_ref().is_some_and(JoinHandle::is_finished) {
            t.elapsed = sender.take().unwrap().join().unwrap();
        }
        let all_in = match sink {
            Some(_) => t.arrived == u64::from(sent),
            None => t.received == u64::from(sent),
        };
        let done =
            sender.is_none() && (all_in || last_activity.elapsed() > Duration::from_millis(500));
        if done || start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    t
}

/// Flush until every transmitted frame has completed, then check that each
/// frame of the pool is accounted for.
fn settle_and_count(io: &mut XskIo, ports: &[PortId]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while io.pool_stats().tx > 0 && Instant::now() < deadline {
        io.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let pool = io.pool_stats();
    assert_eq!(pool.tx, 0, "completions missing: {pool:?}");
    assert_eq!(pool.user, 0, "frames left with the caller: {pool:?}");
    assert_eq!(pool.free + pool.fill, pool.total, "{pool:?}");
    assert_eq!(pool.free as usize, io.free_frames());
    let in_fill: u32 = ports
        .iter()
        .map(|&p| io.port_stats(p).unwrap().fill_frames)
        .sum();
    assert_eq!(
        in_fill, pool.fill,
        "per-port counters disagree with the owner table"
    );
    for &p in ports {
        let k = io.kernel_stats(p).unwrap();
        assert_eq!((k.rx_invalid_descs, k.tx_invalid_descs), (0, 0), "{k:?}");
    }
}

fn check_direction(io: &XskIo, from: PortId, t: &Traffic) {
    let k = io.kernel_stats(from).unwrap();
    eprintln!("{t:?} kernel stats of the receiving port: {k:?}");
    // Everything the sender sent either reached the socket or was counted
    // as a drop by the kernel (normally nothing is lost at this pace).
    assert!(
        t.received + k.rx_dropped + k.rx_ring_full <= u64::from(t.sent),
        "{t:?} {k:?}"
    );
    assert!(
        t.received * 10 >= u64::from(t.sent) * 9,
        "lost too many: {t:?} {k:?}"
    );
    assert_eq!(t.forwarded, t.received, "TX ring refused frames: {t:?}");
    assert_eq!(
        t.arrived, t.forwarded,
        "forwarded frames did not arrive: {t:?}"
    );
}

#[test]
fn xsk_forwards_between_ports_sharing_one_umem() {
    if !require_root() {
        return;
    }
    let ns = two_veth_pairs("fwd");
    let ns_name = ns.name().to_string();
    in_netns(&ns, move || {
        let cfg = small_config();
        let mut io = XskIo::new(cfg.clone()).unwrap();
        assert_eq!(io.rx_offset(), 256);
        let (pa, fd_a) = io.add_port("a0", 0).unwrap();
        let (pb, fd_b) = io.add_port("b0", 0).unwrap();
        assert_eq!((pa, pb), (0, 1));
        assert_eq!(io.num_ports(), 2);
        assert_eq!(io.port_info(pb), Some(("b0", 0)));
        let pool = io.pool_stats();
        assert_eq!(
            pool.fill,
            2 * cfg.idle_fill,
            "fill rings filled at add_port, to the idle target"
        );
        assert_eq!(pool.free, cfg.num_frames - 2 * cfg.idle_fill);

        let mut xdp_a = XdpToXsk::attach("a0");
        xdp_a.set_socket(0, fd_a);
        let mut xdp_b = XdpToXsk::attach("b0");
        xdp_b.set_socket(0, fd_b);
        let sink_a1 = RawSock::bind("a1");
        let sink_b1 = RawSock::bind("b1");

        // a1 -> port A -> port B -> b1
        let n = 5000;
        let sender = spawn_sender(ns_name.clone(), "a1", A0, A1, 0xa, n, true);
        let t = forward(&mut io, pa, pb, sender, n, 0xa, B1, B0, Some(&sink_b1));
        check_direction(&io, pa, &t);
        // b1 -> port B -> port A -> a1
        let sender = spawn_sender(ns_name.clone(), "b1", B0, B1, 0xb, n, true);
        let t = forward(&mut io, pb, pa, sender, n, 0xb, A1, A0, Some(&sink_a1));
        check_direction(&io, pb, &t);
        settle_and_count(&mut io, &[pa, pb]);
        let sa = io.port_stats(pa).unwrap();
        assert!(sa.tx_kicks > 0, "copy mode needs sendto wake-ups: {sa:?}");

        // Frames a caller allocated itself can be sent too, at any offset.
        let mut bufs = [0; 4];
        assert_eq!(io.alloc(&mut bufs), 4);
        let descs: Vec<Desc> = bufs
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let off = 64 * i;
                let f = test_frame(parse_mac(B1), parse_mac(B0), 0xc, i as u32);
                io.memory().frame_mut(b)[off..off + 60].copy_from_slice(&f);
                Desc {
                    buf: b,
                    offset: off as u16,
                    len: 60,
                }
            })
            .collect();
        // Invalid descriptors are refused, and the burst stops there.
        let free_frame = Desc {
            buf: cfg.num_frames - 1,
            ..descs[0]
        };
        let outside = Desc {
            offset: 2000,
            ..descs[0]
        };
        assert_eq!(io.tx_burst(pb, &[free_frame, descs[0]]), 0);
        assert_eq!(io.tx_burst(pb, &[outside]), 0);
        assert_eq!(
            io.tx_burst(pb, &[descs[0], descs[0]]),
            1,
            "same frame twice"
        );
        assert_eq!(io.tx_burst(pb, &descs[1..]), 3);
        assert_eq!(io.port_stats(pb).unwrap().tx_invalid, 3);
        io.flush().unwrap();
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 2048];
        while got < 4 && Instant::now() < deadline {
            io.flush().unwrap();
            while let Some(len) = sink_b1.try_recv(&mut buf) {
                if parse_test_frame(&buf[..len]).is_some_and(|(tag, _)| tag == 0xc) {
                    got += 1;
                }
            }
        }
        assert_eq!(got, 4);
        settle_and_count(&mut io, &[pa, pb]);

        // Pod deletion: removing a port returns what its rings held.
        let fill_b = io.port_stats(pb).unwrap().fill_frames;
        io.remove_port(pa).unwrap();
        assert!(io.port_stats(pa).is_none());
        assert_eq!(io.rx_burst(pa, &mut [Desc::default(); 4]), 0);
        assert_eq!(io.tx_burst(pa, &[descs[0]]), 0);
        let pool = io.pool_stats();
        assert_eq!((pool.free, pool.fill), (cfg.num_frames - fill_b, fill_b));
        assert!(io.remove_port(pa).is_err());

        // ... and a new port on the same device reuses the slot and works.
        let (pa2, fd_a2) = io.add_port("a0", 0).unwrap();
        assert_eq!(pa2, pa);
        xdp_a.set_socket(0, fd_a2);
        let sender = spawn_sender(ns_name.clone(), "a1", A0, A1, 0xd, 500, true);
        let t = forward(&mut io, pa2, pb, sender, 500, 0xd, B1, B0, Some(&sink_b1));
        check_direction(&io, pa2, &t);
        settle_and_count(&mut io, &[pa2, pb]);

        // Closing on the reaper thread (what CNI DEL does): the port is gone at once,
        // but its id and the frames its rings held stay reserved until the reaper
        // reports the socket closed; a flush then returns them.
        let fill_b = io.port_stats(pb).unwrap().fill_frames;
        let fill_a = io.port_stats(pa2).unwrap().fill_frames;
        assert!(fill_a > 0);
        io.close_port(pa2).unwrap();
        assert!(io.port_stats(pa2).is_none());
        assert!(io.close_port(pa2).is_err());
        assert_eq!(io.closing_ports(), 1);
        assert_eq!(
            io.pool_stats().fill,
            fill_a + fill_b,
            "frames back too early"
        );
        let (pc, _) = io.add_port("a1", 0).unwrap();
        assert_ne!(pc, pa2, "the id of a port being closed was reused");
        let deadline = Instant::now() + Duration::from_secs(5);
        while io.closing_ports() > 0 && Instant::now() < deadline {
            io.wait(Duration::from_millis(50)).unwrap();
            io.flush().unwrap();
        }
        assert_eq!((io.closing_ports(), io.closed_ports()), (0, 1));
        let fill_c = io.port_stats(pc).unwrap().fill_frames;
        let pool = io.pool_stats();
        assert_eq!(pool.fill, fill_b + fill_c);
        assert_eq!(pool.free, cfg.num_frames - fill_b - fill_c);
        // The closed id is free again.
        let (pa3, _) = io.add_port("a0", 0).unwrap();
        assert_eq!(pa3, pa2);

        io.remove_port(pb).unwrap();
        io.remove_port(pa3).unwrap();
        io.remove_port(pc).unwrap();
        assert_eq!(io.num_ports(), 0);
        assert_eq!(io.free_frames(), cfg.num_frames as usize, "frames leaked");
        assert!(io.add_port("fp-no-such-if", 0).is_err());

        // Dropping the backend with closes still queued waits for them (the
        // sockets use the UMEM it unmaps).
        let (p1, _) = io.add_port("a0", 0).unwrap();
        let (p2, _) = io.add_port("b0", 0).unwrap();
        io.close_port(p1).unwrap();
        io.close_port(p2).unwrap();
        drop(io);
    });
}

/// Unpaced traffic for a couple of seconds; prints rough rates (2 shared
/// cores: the sender competes with the forwarder) and checks no frame leaks
/// under loss.
#[test]
fn xsk_unpaced_forwarding_rate_and_no_leaks() {
    if !require_root() {
        return;
    }
    let ns = two_veth_pairs("rate");
    let ns_name = ns.name().to_string();
    in_netns(&ns, move || {
        let cfg = small_config();
        let mut io = XskIo::new(cfg.clone()).unwrap();
        let (pa, fd_a) = io.add_port("a0", 0).unwrap();
        let (pb, _fd_b) = io.add_port("b0", 0).unwrap();
        let mut xdp_a = XdpToXsk::attach("a0");
        xdp_a.set_socket(0, fd_a);
        // Count arrivals on another thread so the forwarder only forwards.
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = {
            let (ns_name, stop) = (ns_name.clone(), stop.clone());
            std::thread::spawn(move || {
                enter_netns(&ns_name);
                let sock = RawSock::bind("b1");
                ready_tx.send(()).unwrap();
                let (mut arrived, mut idle_since) = (0u64, None::<Instant>);
                let mut buf = [0u8; 2048];
                loop {
                    match sock.try_recv(&mut buf) {
                        Some(len) => {
                            idle_since = None;
                            if buf[..6] == parse_mac(B1) && parse_test_frame(&buf[..len]).is_some()
                            {
                                arrived += 1;
                            }
                        }
                        None if stop.load(Ordering::Relaxed) => {
                            let since = *idle_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > Duration::from_millis(200) {
                                return arrived;
                            }
                        }
                        None => std::thread::sleep(Duration::from_micros(100)),
                    }
                }
            })
        };
        ready_rx.recv().unwrap();
        let n = 300_000;
        let sender = spawn_sender(ns_name, "a1", A0, A1, 0xe, n, false);
        let mut t = forward(&mut io, pa, pb, sender, n, 0xe, B1, B0, None);
        stop.store(true, Ordering::Relaxed);
        t.arrived = sink.join().unwrap();
        let secs = t.busy.as_secs_f64().max(1e-3);
        let k = io.kernel_stats(pa).unwrap();
        eprintln!(
            "unpaced: sent {} in {:.2?} ({:.2} Mpps offered); received {} forwarded {} arrived {} \
             in {secs:.2}s ({:.2} Mpps received and forwarded); kernel {k:?}",
            t.sent,
            t.elapsed,
            f64::from(t.sent) / t.elapsed.as_secs_f64().max(1e-6) / 1e6,
            t.received,
            t.forwarded,
            t.arrived,
            t.received as f64 / secs / 1e6,
        );
        assert!(t.received > 0);
        assert!(t.received + k.rx_dropped + k.rx_ring_full <= u64::from(n));
        assert!(t.arrived <= t.forwarded && t.forwarded <= t.received);
        settle_and_count(&mut io, &[pa, pb]);
        drop(xdp_a);
        io.remove_port(pa).unwrap();
        io.remove_port(pb).unwrap();
        assert_eq!(io.free_frames(), cfg.num_frames as usize, "frames leaked");
    });
}

#[test]
fn waker_ends_a_wait_early_with_and_without_ports() {
    if !require_root() {
        return;
    }
    let ns = two_veth_pairs("wake");
    in_netns(&ns, move || {
        let mut io = XskIo::new(small_config()).unwrap();
        for with_port in [false, true] {
            if with_port {
                io.add_port("a0", 0).unwrap();
            }
            let waker = io.waker();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                waker.wake();
            });
            let start = Instant::now();
            io.wait(Duration::from_secs(30)).unwrap();
            // A wait that is not woken lasts the whole 30 s.
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "wait not ended by the waker (with port: {with_port})"
            );
            t.join().unwrap();
            // The wake-up was consumed: the next wait times out normally.
            let start = Instant::now();
            io.wait(Duration::from_millis(50)).unwrap();
            assert!(start.elapsed() >= Duration::from_millis(45));
        }
    });
}

#[test]
fn fill_rings_follow_activity() {
    if !require_root() {
        return;
    }
    let ns = two_veth_pairs("share");
    let ns_name = ns.name().to_string();
    in_netns(&ns, move || {
        // 4096 frames, configured target 1024: four ports at that target would take the
        // whole pool and leave nothing for frames in flight.
        let cfg = small_config();
        let mut io = XskIo::new(cfg.clone()).unwrap();
        let mut ports = Vec::new();
        for ifname in ["a0", "b0", "a1", "b1"] {
            ports.push(io.add_port(ifname, 0).unwrap());
        }
        let fill = |io: &XskIo, p: PortId| {
            let s = io.port_stats(p).unwrap();
            (s.fill_target, s.fill_frames)
        };
        let idle = cfg.idle_fill;
        for &(p, _) in &ports {
            assert_eq!(fill(&io, p), (idle, idle));
        }
        assert_eq!(io.pool_stats().free, cfg.num_frames - 4 * idle);
        // Idle ports keep their small fill rings however often they are flushed.
        for _ in 0..100 {
            io.flush().unwrap();
        }
        assert_eq!(io.pool_stats().fill, 4 * idle);

        // Traffic into port A (a1 -> a0): its fill ring grows; the others stay small.
        let (pa, fd_a) = ports[0];
        let pb = ports[1].0;
        let mut xdp_a = XdpToXsk::attach("a0");
        xdp_a.set_socket(0, fd_a);
        let n = 50_000;
        let sender = spawn_sender(ns_name.clone(), "a1", A0, A1, 0x1, n, false);
        let t = forward(&mut io, pa, pb, sender, n, 0x1, B1, B0, None);
        let sa = io.port_stats(pa).unwrap();
        eprintln!("busy port: {sa:?} after {t:?}");
        assert!(t.received > 0, "{t:?}");
        assert!(sa.fill_grown > 0 && sa.fill_target > idle, "{sa:?}");
        assert!(sa.fill_target <= cfg.fill_target, "{sa:?}");
        for &(p, _) in &ports[1..] {
            assert_eq!(fill(&io, p), (idle, idle), "port {p}");
        }
        settle_and_count(&mut io, &[pa, pb, ports[2].0, ports[3].0]);
        let grown = io.port_stats(pa).unwrap().fill_target;

        // Short of frames (the caller holds most of the pool): a port that uses its
        // fill ring lowers its target and the pool keeps a reserve.
        let mut held = vec![0; (cfg.num_frames - cfg.num_frames / 4 - grown) as usize];
        let got = io.alloc(&mut held);
        held.truncate(got);
        assert!(
            io.free_frames() <= cfg.num_frames as usize / 4,
            "{:?}",
            io.pool_stats()
        );
        let sender = spawn_sender(ns_name, "a1", A0, A1, 0x2, 2000, true);
        let t = forward(&mut io, pa, pb, sender, 2000, 0x2, B1, B0, None);
        let sa = io.port_stats(pa).unwrap();
        eprintln!("short of frames: {sa:?} after {t:?}");
        assert!(t.received > 0, "{t:?}");
        assert!(sa.fill_target < grown, "{sa:?} (was {grown})");
        io.free(&held);
        settle_and_count(&mut io, &[pa, pb, ports[2].0, ports[3].0]);
        drop(xdp_a);
        for (p, _) in ports {
            io.remove_port(p).unwrap();
        }
        assert_eq!(io.free_frames(), cfg.num_frames as usize, "frames leaked");
    });
}

/// An idle port's fill ring takes an unpaced 1,000-frame burst whole while nothing reads
/// the socket (the worker asleep or busy elsewhere): the kernel counts no drop. With the
/// old 32-frame idle fill ring, 968 of the 1,000 frames were dropped ("fill ring empty").
/// A port with a larger weight gets a larger cap, the others a smaller one.
#[test]
fn an_idle_port_takes_a_burst_while_nobody_reads() {
    if !require_root() {
        return;
    }
    let ns = two_veth_pairs("idle");
    let ns_name = ns.name().to_string();
    in_netns(&ns, move || {
        // Nobody reads during this burst: the idle fill alone must take it (the agent's
        // real-time worker refills during a burst and needs less: the e2e suite `bursts`).
        let cfg = XskConfig {
            num_frames: 8192,
            idle_fill: 1024,
            max_ports: 2,
            ..XskConfig::default()
        };
        let mut io = XskIo::new(cfg.clone()).unwrap();
        let (pa, fd_a) = io.add_port("a0", 0).unwrap();
        let (pb, _) = io.add_port("b0", 0).unwrap();
        let s = io.port_stats(pa).unwrap();
        assert_eq!((s.fill_target, s.fill_frames), (1024, 1024), "{s:?}");
        let mut xdp_a = XdpToXsk::attach("a0");
        xdp_a.set_socket(0, fd_a);
        let n = 1000;
        let sender = spawn_sender(ns_name.clone(), "a1", A0, A1, 0x1d, n, false);
        let took = sender.join().unwrap();
        let mut descs = [Desc::default(); 256];
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while got < n as usize && Instant::now() < deadline {
            let k = io.rx_burst(pa, &mut descs);
            let bufs: Vec<BufIdx> = descs[..k].iter().map(|d| d.buf).collect();
            io.free(&bufs);
            got += k;
            if k == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let k = io.kernel_stats(pa).unwrap();
        eprintln!("{n} frames sent in {took:?}, {got} received; {k:?}");
        assert_eq!((k.rx_dropped, k.rx_ring_full), (0, 0), "{k:?}");
        assert_eq!(got, n as usize);
        io.flush().unwrap();
        let s = io.port_stats(pa).unwrap();
        // Refilled at once, past the idle fill (the target doubled: the ring was drained).
        assert!(s.fill_frames >= cfg.idle_fill, "{s:?}");
        assert_eq!(s.fill_target, cfg.fill_target, "{s:?}");

        // Weights: port B gets 3 shares of the pool, port A one.
        let even = io.port_cap_of(pa).unwrap();
        assert_eq!(even, (cfg.num_frames - cfg.num_frames / 4) / 2);
        io.set_port_weight(pb, 3).unwrap();
        let share = (cfg.num_frames - cfg.num_frames / 4) / 4;
        assert_eq!(io.port_cap(), share);
        assert_eq!(io.port_cap_of(pa), Some(share));
        assert_eq!(io.port_cap_of(pb), Some(3 * share));
        assert!(io.set_port_weight(99, 2).is_err());
        io.flush().unwrap();
        settle_and_count(&mut io, &[pa, pb]);
        drop(xdp_a);
        io.remove_port(pa).unwrap();
        io.remove_port(pb).unwrap();
        assert_eq!(io.free_frames(), cfg.num_frames as usize, "frames leaked");
    });
}

/// `ip -n <ns> link del <ifname>`, asserting success.
fn del_link(ns: &str, ifname: &str) {
    let st = std::process::Command::new("ip")
        .args(["-n", ns, "link", "del", ifname])
        .status()
        .unwrap();
    assert!(st.success(), "ip link del {ifname}");
}

/// Push valid frames at `port` until it takes no more (or `max` were offered); returns
/// how many it accepted.
fn push_until_refused(io: &mut XskIo, port: PortId, max: usize) -> usize {
    let mut accepted = 0;
    let mut offered = 0;
    while offered < max {
        let mut bufs = [0; 64];
        let want = (max - offered).min(bufs.len());
        let n = io.alloc(&mut bufs[..want]);
        assert!(n > 0, "pool empty: {:?}", io.pool_stats());
        let descs: Vec<Desc> = bufs[..n]
            .iter()
            .map(|&b| {
                let f = test_frame(parse_mac(B1), parse_mac(B0), 0xd, b);
                io.memory().frame_mut(b)[256..316].copy_from_slice(&f);
                Desc {
                    buf: b,
                    offset: 256,
                    len: 60,
                }
            })
            .collect();
        let sent = io.tx_burst(port, &descs);
        let refused: Vec<BufIdx> = descs[sent..].iter().map(|d| d.buf).collect();
        io.free(&refused);
        io.flush().unwrap();
        accepted += sent;
        offered += n;
        if sent == 0 {
            break;
        }
    }
    accepted
}

/// Ports whose devices vanished (a pod's namespace deleted without CNI DEL) complete
/// nothing: what is sent to them stays in their rings. Each holds at most its share of
/// the pool (`port_cap`), so three of them (each with a 2048-entry TX ring, which would
/// take 6144 of the 4096 frames) leave the pool enough for the live ports, which keep
/// forwarding; closing them returns every frame.
#[test]
fn vanished_devices_cannot_starve_the_pool() {
    if !require_root() {
        return;
    }
    let ns = two_veth_pairs("dead");
    ns.veth("c0", "02:00:00:00:0c:00", "c1", "02:00:00:00:0c:01");
    ns.veth("d0", "02:00:00:00:0d:00", "d1", "02:00:00:00:0d:01");
    ns.veth("e0", "02:00:00:00:0e:00", "e1", "02:00:00:00:0e:01");
    let ns_name = ns.name().to_string();
    in_netns(&ns, move || {
        let cfg = small_config();
        let mut io = XskIo::new(cfg.clone()).unwrap();
        let (pa, fd_a) = io.add_port("a0", 0).unwrap();
        let (pb, _) = io.add_port("b0", 0).unwrap();
        let dead: Vec<PortId> = ["c0", "d0", "e0"]
            .iter()
            .map(|i| io.add_port(i, 0).unwrap().0)
            .collect();
        let cap = io.port_cap();
        assert_eq!(cap, (cfg.num_frames - cfg.num_frames / 4) / 5);
        for i in ["c0", "d0", "e0"] {
            del_link(&ns_name, i);
        }
        for &p in &dead {
            let accepted = push_until_refused(&mut io, p, 4 * cfg.tx_size as usize);
            let s = io.port_stats(p).unwrap();
            eprintln!("dead port {p}: accepted {accepted}, {s:?}");
            assert!(s.fill_frames + s.tx_in_flight <= cap, "{s:?} cap {cap}");
            assert!(s.tx_over_cap > 0, "{s:?}");
        }
        let pool = io.pool_stats();
        eprintln!("with three dead ports: {pool:?}");
        assert!(pool.free >= cfg.num_frames / 4, "{pool:?}");

        // The live ports still forward.
        let mut xdp_a = XdpToXsk::attach("a0");
        xdp_a.set_socket(0, fd_a);
        let sink_b1 = RawSock::bind("b1");
        let n = 3000;
        let sender = spawn_sender(ns_name.clone(), "a1", A0, A1, 0xe, n, true);
        let t = forward(&mut io, pa, pb, sender, n, 0xe, B1, B0, Some(&sink_b1));
        check_direction(&io, pa, &t);

        // Closing the dead ports returns what they held.
        for &p in &dead {
            io.close_port(p).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while io.closing_ports() > 0 && Instant::now() < deadline {
            io.wait(Duration::from_millis(10)).unwrap();
            io.flush().unwrap();
        }
        assert_eq!(io.closing_ports(), 0);
        settle_and_count(&mut io, &[pa, pb]);
        drop(xdp_a);
        io.remove_port(pa).unwrap();
        io.remove_port(pb).unwrap();
        assert_eq!(io.free_frames(), cfg.num_frames as usize, "frames leaked");
    });
}

/// An unexpected error of one port's socket (injected: its TX wake-up fails with EFAULT)
/// is counted on that port, which goes down for a back-off and is retried; `flush` does
/// not fail, and the port forwards again afterwards.
#[test]
fn a_port_error_marks_the_port_down_not_the_backend() {
    if !require_root() {
        return;
    }
    let ns = two_veth_pairs("perr");
    let ns_name = ns.name().to_string();
    in_netns(&ns, move || {
        let cfg = small_config();
        let mut io = XskIo::new(cfg.clone()).unwrap();
        let (pa, fd_a) = io.add_port("a0", 0).unwrap();
        let (pb, _) = io.add_port("b0", 0).unwrap();
        let mut xdp_a = XdpToXsk::attach("a0");
        xdp_a.set_socket(0, fd_a);
        let sink_b1 = RawSock::bind("b1");
        io.inject_port_error(pb, libc::EFAULT).unwrap();
        assert!(io.inject_port_error(99, libc::EFAULT).is_err());
        // A first frame: its wake-up fails, the port goes down, flush still succeeds.
        assert_eq!(push_until_refused(&mut io, pb, 1), 1);
        let s = io.port_stats(pb).unwrap();
        assert_eq!(
            (s.errors, s.last_errno, s.down),
            (1, libc::EFAULT, true),
            "{s:?}"
        );
        // After the back-off the port is retried: the queued frame goes out.
        std::thread::sleep(Duration::from_millis(20));
        io.flush().unwrap();
        let s = io.port_stats(pb).unwrap();
        assert_eq!((s.errors, s.down, s.resets), (1, false, 1), "{s:?}");
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(2);
        while sink_b1
            .try_recv(&mut buf)
            .is_none_or(|_| buf[0..6] != parse_mac(B1))
        {
            assert!(Instant::now() < deadline, "the queued frame did not go out");
        }
        // And it forwards traffic again.
        let n = 2000;
        let sender = spawn_sender(ns_name.clone(), "a1", A0, A1, 0xf, n, true);
        let t = forward(&mut io, pa, pb, sender, n, 0xf, B1, B0, Some(&sink_b1));
        let s = io.port_stats(pb).unwrap();
        eprintln!("{t:?} {s:?}");
        assert_eq!((s.errors, s.down, s.resets), (1, false, 1), "{s:?}");
        // The port is back: it forwards the bulk of an unpaced burst (the loss bound is
        // loose because the test binary's other AF_XDP tests share the CPUs and this
        // port's fill ring starts at small_config's 64 frames; a port still down would
        // forward none).
        assert!(t.arrived * 2 >= u64::from(n), "{t:?}");
        settle_and_count(&mut io, &[pa, pb]);
        drop(xdp_a);
    });
}

/// The kernel cannot hand back what an idle port's fill ring holds, so ports opened early
/// must not take the frames of ports opened late: with a pool far too small for every
/// port's idle fill, the first ports get theirs and every later port (up to `max_ports`)
/// still gets its floor, `MIN_FILL_TARGET`.
#[test]
fn ports_opened_late_keep_a_fill_floor() {
    if !require_root() {
        return;
    }
    const PORTS: usize = 40;
    let ns = quiet_netns("floor");
    for i in 0..PORTS {
        ns.veth(
            &format!("f{i}a"),
            &format!("02:00:00:00:1a:{i:02x}"),
            &format!("f{i}b"),
            &format!("02:00:00:00:1b:{i:02x}"),
        );
    }
    in_netns(&ns, move || {
        // 40 ports x 256 frames would need 10,240 frames; the pool has 4,096.
        let cfg = XskConfig {
            num_frames: 4096,
            fill_size: 1024,
            comp_size: 1024,
            rx_size: 1024,
            tx_size: 1024,
            fill_target: 512,
            idle_fill: 256,
            max_ports: PORTS as u32,
            ..XskConfig::default()
        };
        let mut io = XskIo::new(cfg.clone()).unwrap();
        assert_eq!(io.floor_reserve(), PORTS * MIN_FILL_TARGET as usize);
        let ports: Vec<PortId> = (0..PORTS)
            .map(|i| io.add_port(&format!("f{i}a"), 0).unwrap().0)
            .collect();
        assert_eq!(io.floor_reserve(), 0);
        let fills: Vec<u32> = ports
            .iter()
            .map(|&p| io.port_stats(p).unwrap().fill_frames)
            .collect();
        eprintln!("fill frames per port, in opening order: {fills:?}");
        assert_eq!(
            fills[0], cfg.idle_fill,
            "the first port gets its whole idle fill"
        );
        for (i, &f) in fills.iter().enumerate() {
            assert!(f >= MIN_FILL_TARGET, "port {i} got {f} frames: {fills:?}");
        }
        // Flushes (refills) change nothing: idle ports keep what they have.
        io.flush().unwrap();
        let pool = io.pool_stats();
        assert_eq!(pool.fill, fills.iter().sum::<u32>(), "{pool:?}");
        for p in ports {
            io.remove_port(p).unwrap();
        }
        assert_eq!(io.free_frames(), cfg.num_frames as usize, "frames leaked");
    });
}
