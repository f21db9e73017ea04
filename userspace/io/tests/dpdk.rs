//! DPDK backend (feature `dpdk`) against a veth pair in a private network namespace (root
//! only), driven by DPDK's `net_af_packet` virtual device, with no hugepages and no NIC:
//! receive frames sent from the peer, transmit frames and see them on the peer, bounce
//! frames back out without a copy, and count every mbuf of the pool back after stop.
//!
//! ```text
//!   RawSock -> d1 ==veth== d0 [net_af_packet -> DpdkIo port 0]
//! ```
//!
//! One EAL per test process (DPDK allows one initialisation); each test makes its own
//! namespace, pool and device (unique names), so the tests run in parallel.

// The shared helpers re-export the netns entry the other suites use; this one enters
// through the guard.
#[allow(unused_imports)]
mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ferroplane_io::dpdk::{DpdkIo, DpdkPool, DpdkPort, Eal, EalConfig, PoolConfig, PortConfig};
use ferroplane_io::{Desc, FrameMemory, PacketIo};

const D0: &str = "02:00:00:00:0d:00";
const D1: &str = "02:00:00:00:0d:01";

/// EAL memory of the test process (MiB of ordinary pages, `--no-huge`).
const EAL_MB: u32 = 256;
const POOL: PoolConfig = PoolConfig {
    // More than the 2,048 mbufs net_af_xdp puts on its fill ring at start.
    num_mbufs: 4095,
    cache: 0,
    data_room: 2048 + 128,
};

/// The test process's EAL; `FP_DPDK_LOG_LEVEL` (e.g. `debug`, `pmd.net.af_xdp:debug`)
/// sets DPDK's log level for debugging.
fn eal() -> Eal {
    let start = Instant::now();
    let mut config = EalConfig::for_tests(EAL_MB);
    if let Ok(level) = std::env::var("FP_DPDK_LOG_LEVEL") {
        config.log_level = level;
    }
    let eal = Eal::init(&config).unwrap();
    eprintln!("EAL ready in {:?}", start.elapsed());
    eal
}

/// The virtual devices the tests drive d0 with.
#[derive(Clone, Copy, Debug)]
enum Vdev {
    AfPacket,
    AfXdp,
}

/// A namespace with veth d0/d1 and a pool; `f` runs inside the namespace (where the
/// virtual device must be probed) with the device string for d0.
fn with_veth<T: Send>(tag: &str, vdev: Vdev, f: impl FnOnce(DpdkPool, String) -> T + Send) -> T {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let ns = quiet_netns(tag);
    ns.veth("d0", D0, "d1", D1);
    let eal = eal();
    let pool = DpdkPool::new(&eal, POOL).unwrap();
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let device = match vdev {
        Vdev::AfPacket => format!("net_af_packet{n},iface=d0"),
        Vdev::AfXdp => format!("net_af_xdp{n},iface=d0,start_queue=0,queue_count=1"),
    };
    ns.enter(move || f(pool, device))
}

fn open(pool: &DpdkPool, device: &str) -> DpdkIo {
    let port = DpdkPort::open(pool, &PortConfig::new(device)).unwrap();
    DpdkIo::new(pool, vec![(port, 0)]).unwrap()
}

/// Receive until `want` test frames of `tag` arrived (or 5 s passed); other frames are
/// freed. Returns the (descriptor, frame bytes) of the test frames, still owned.
fn receive(io: &mut DpdkIo, tag: u32, want: usize) -> Vec<(Desc, Vec<u8>)> {
    let mut got = Vec::new();
    let mut descs = [Desc::default(); 64];
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < want && Instant::now() < deadline {
        let n = io.rx_burst(0, &mut descs);
        if n == 0 {
            io.wait(Duration::from_millis(1)).unwrap();
            continue;
        }
        for d in &descs[..n] {
            let frame = io.memory().frame(d.buf);
            let bytes = frame[usize::from(d.offset)..][..usize::from(d.len)].to_vec();
            if parse_test_frame(&bytes).is_some_and(|(t, _)| t == tag) {
                got.push((*d, bytes));
            } else {
                io.free(&[d.buf]);
            }
        }
    }
    got
}

#[test]
fn receives_frames_sent_from_the_peer() {
    receives(Vdev::AfPacket);
}

#[test]
fn receives_frames_sent_from_the_peer_af_xdp() {
    receives(Vdev::AfXdp);
}

fn receives(vdev: Vdev) {
    if !require_root() {
        return;
    }
    with_veth("dpdk-rx", vdev, |pool, device| {
        let mut io = open(&pool, &device);
        let sock = RawSock::bind("d1");
        let (dst, src) = (parse_mac(D0), parse_mac(D1));
        const N: u32 = 200;
        for seq in 0..N {
            sock.send(&test_frame(dst, src, 7, seq));
        }
        let got = receive(&mut io, 7, N as usize);
        assert_eq!(got.len(), N as usize, "frames received");
        let headroom = pool.headroom();
        for (i, (d, bytes)) in got.iter().enumerate() {
            assert_eq!(
                bytes[..],
                test_frame(dst, src, 7, i as u32)[..],
                "frame {i}"
            );
            // In place in the mbuf, with at least DPDK's headroom in front for
            // encapsulation (net_af_xdp adds XDP's 256 bytes).
            assert!(d.offset >= headroom, "offset {} < {headroom}", d.offset);
            assert!(usize::from(d.offset) + usize::from(d.len) <= io.memory().frame_size());
        }
        assert_eq!(io.frames_out(), N as usize);
        let bufs: Vec<_> = got.iter().map(|(d, _)| d.buf).collect();
        io.free(&bufs);
        assert_eq!(io.frames_out(), 0);
        // A second free of the same frames is refused, not a double free.
        io.free(&bufs[..3]);
        assert_eq!(io.stats().invalid_frees, 3);
        let stats = io.port(0).unwrap().0.stats().unwrap();
        assert!(stats.ipackets >= u64::from(N), "{stats:?}");
    });
}

#[test]
fn transmits_frames_the_peer_receives() {
    if !require_root() {
        return;
    }
    with_veth("dpdk-tx", Vdev::AfPacket, |pool, device| {
        let mut io = open(&pool, &device);
        let sock = RawSock::bind("d1");
        let (dst, src) = (parse_mac(D1), parse_mac(D0));
        const N: usize = 300;
        let mut bufs = vec![0; N];
        assert_eq!(io.alloc(&mut bufs), N);
        // Packets anywhere in the frame: here 256 bytes in, as the engine puts host packets.
        let offset = 256u16;
        let descs: Vec<Desc> = bufs
            .iter()
            .enumerate()
            .map(|(seq, &buf)| {
                let f = test_frame(dst, src, 9, seq as u32);
                io.memory().frame_mut(buf)[usize::from(offset)..][..f.len()].copy_from_slice(&f);
                Desc {
                    buf,
                    offset,
                    len: f.len() as u16,
                }
            })
            .collect();
        // A frame the caller does not own is refused and ends the accepted prefix.
        let not_owned = Desc {
            buf: (0..pool.num_mbufs()).find(|b| !bufs.contains(b)).unwrap(),
            offset,
            len: 60,
        };
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while sent < N && Instant::now() < deadline {
            sent += io.tx_burst(0, &descs[sent..]);
        }
        assert_eq!(sent, N);
        assert_eq!(io.tx_burst(0, &[not_owned]), 0);
        assert_eq!(io.stats().invalid_tx, 1);
        assert_eq!(io.frames_out(), 0);

        let mut seen = vec![false; N];
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.iter().any(|s| !s) && Instant::now() < deadline {
            match sock.try_recv(&mut buf) {
                Some(n) => {
                    if let Some((9, seq)) = parse_test_frame(&buf[..n]) {
                        assert_eq!(buf[..n], test_frame(dst, src, 9, seq)[..]);
                        seen[seq as usize] = true;
                    }
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        let missing = seen.iter().filter(|s| !**s).count();
        assert_eq!(missing, 0, "frames not seen on the peer");
    });
}

#[test]
fn no_mbuf_leaks_after_traffic_and_stop() {
    no_leaks(Vdev::AfPacket);
}

// No leak test on net_af_xdp: DPDK 22.11's driver, in its zero-copy mode (mbufs as the
// UMEM), does not give back the ~2,048 mbufs on its fill ring when the port is closed
// (measured: 2,074 of 4,095 missing after close). They are lost per open and close, not
// per packet, and freed with the pool.

fn no_leaks(vdev: Vdev) {
    if !require_root() {
        return;
    }
    with_veth("dpdk-leak", vdev, |pool, device| {
        let total = pool.num_mbufs();
        assert_eq!(pool.available(), total, "a fresh pool is full");
        let mut io = open(&pool, &device);
        let sock = RawSock::bind("d1");
        let (d0, d1) = (parse_mac(D0), parse_mac(D1));
        const N: u32 = 500;
        for seq in 0..N {
            sock.send(&test_frame(d0, d1, 5, seq));
        }
        let got = receive(&mut io, 5, N as usize);
        assert_eq!(got.len(), N as usize);
        assert!(
            pool.available() <= total - N,
            "received frames are out of the pool"
        );
        // Bounce the first half back to the peer in place (MACs swapped, no copy), keep
        // the rest: dropping the backend must return those.
        let half = N as usize / 2;
        let mut out = Vec::new();
        for (d, _) in &got[..half] {
            let f = &mut io.memory().frame_mut(d.buf)[usize::from(d.offset)..];
            f[..6].copy_from_slice(&d1);
            f[6..12].copy_from_slice(&d0);
            out.push(*d);
        }
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while sent < half && Instant::now() < deadline {
            sent += io.tx_burst(0, &out[sent..]);
        }
        assert_eq!(sent, half);
        let mut buf = [0u8; 2048];
        let mut back = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while back < half && Instant::now() < deadline {
            match sock.try_recv(&mut buf) {
                Some(n) if buf[..6] == d1 && parse_test_frame(&buf[..n]).is_some() => back += 1,
                Some(_) => {}
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert_eq!(back, half, "bounced frames seen on the peer");
        // Some allocated, never sent.
        let mut extra = [0; 16];
        assert_eq!(io.alloc(&mut extra), 16);
        assert_eq!(io.frames_out(), N as usize - half + 16);
        // Stop: the backend returns what it still holds, closing the port its rings.
        drop(io);
        assert_eq!(
            pool.available(),
            total,
            "every mbuf back in the pool after stop"
        );
    });
}

#[test]
fn a_queue_has_one_poller() {
    fn assert_send<T: Send>() {}
    // Workers own their backend on their own thread.
    assert_send::<DpdkIo>();
    if !require_root() {
        return;
    }
    with_veth("dpdk-claim", Vdev::AfPacket, |pool, device| {
        let port = DpdkPort::open(&pool, &PortConfig::new(device.as_str())).unwrap();
        // A device is opened once; a second open fails without harming the first.
        let err = DpdkPort::open(&pool, &PortConfig::new(device.as_str())).unwrap_err();
        assert!(err.to_string().contains("already open"), "{err}");
        let io = DpdkIo::new(&pool, vec![(port.clone(), 0)]).unwrap();
        let err = DpdkIo::new(&pool, vec![(port.clone(), 0)]).unwrap_err();
        assert!(err.to_string().contains("already polled"), "{err}");
        assert!(
            DpdkIo::new(&pool, vec![(port.clone(), 1)]).is_err(),
            "no queue 1"
        );
        drop(io);
        let mut io = DpdkIo::new(&pool, vec![(port.clone(), 0)]).unwrap();
        assert_eq!(io.num_ports(), 1);
        // The port still works.
        let sock = RawSock::bind("d1");
        sock.send(&test_frame(parse_mac(D0), parse_mac(D1), 3, 0));
        let got = receive(&mut io, 3, 1);
        assert_eq!(got.len(), 1);
        drop(io);
        drop(port);
        // Closed: the device can be opened again.
        DpdkPort::open(&pool, &PortConfig::new(device.as_str())).unwrap();
    });
}
