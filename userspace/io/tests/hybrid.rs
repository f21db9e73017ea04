//! [`HybridIo`] over two memory backends (no root, no DPDK): ids of both backends in one
//! space, copies when a frame leaves through the other backend (and nothing leaked when a
//! transmission is refused), the exception path (the host's frames to the TAP and back,
//! the engine's up), frame allocation across the pools.

use std::net::Ipv4Addr;

use ferroplane_io::steer::{SteerTables, Steering};
use ferroplane_io::{Desc, ExceptionPath, FrameMemory, HybridIo, MemIo, PacketIo};

/// Pods' backend: 32 frames of 2048 bytes, ports 0..3. Uplink backend: 16 frames of
/// 2176 bytes (a DPDK mbuf's room), port 0 the uplink, port 1 the TAP.
const POD_FRAMES: u32 = 32;
const UP_FRAMES: u32 = 16;
/// Combined id of the uplink backend's port 0.
const FIRST: u16 = 8;
const UPLINK: u16 = FIRST;
const TAP: u16 = FIRST + 1;
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

fn frame(dst: Ipv4Addr, len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&[0, 0]);
    ip[9] = 17;
    ip[16..20].copy_from_slice(&dst.octets());
    f
}

fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 42];
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f
}

fn hybrid(exception: bool) -> HybridIo<MemIo, MemIo> {
    let mut io = HybridIo::new(MemIo::new(POD_FRAMES, 2048, 3));
    let mut t = SteerTables::new();
    t.add_host4(NODE);
    t.add_steer4(Ipv4Addr::new(10, 244, 1, 0), 24);
    let exc = exception.then(|| ExceptionPath {
        uplink: 0,
        host: 1,
        steering: Steering::new(t),
    });
    io.attach_uplink(MemIo::new(UP_FRAMES, 2176, 2), FIRST, exc)
        .unwrap();
    io
}

fn up(io: &mut HybridIo<MemIo, MemIo>) -> &mut MemIo {
    io.uplink_mut().unwrap()
}

fn no_leaks(io: &mut HybridIo<MemIo, MemIo>) {
    assert_eq!(io.pods().free_frames(), POD_FRAMES as usize);
    assert_eq!(io.uplink().unwrap().free_frames(), UP_FRAMES as usize);
    assert_eq!(io.pods().invalid_frees(), 0);
    assert_eq!(io.uplink().unwrap().invalid_frees(), 0);
}

#[test]
fn without_an_uplink_it_is_the_pods_backend() {
    let mut io: HybridIo<MemIo, MemIo> = HybridIo::new(MemIo::new(8, 2048, 2));
    assert_eq!(io.num_ports(), 2);
    assert_eq!(io.memory().num_frames(), 8);
    assert!(io.uplink_ports().is_empty());
    let pkt = frame(NODE, 60, 1);
    assert!(io.pods_mut().inject(0, &pkt));
    let mut d = [Desc::default(); 4];
    assert_eq!(io.rx_burst(0, &mut d), 1);
    assert_eq!(io.tx_burst(1, &d[..1]), 1);
    assert_eq!(io.pods_mut().take_tx(1), vec![pkt]);
    assert_eq!(io.pods().free_frames(), 8);
}

#[test]
fn ports_and_frames_of_both_backends_share_one_space() {
    let mut io = hybrid(false);
    assert_eq!(io.num_ports(), usize::from(FIRST) + 2);
    assert_eq!(io.uplink_ports(), 8..10);
    assert_eq!(io.memory().num_frames(), POD_FRAMES + UP_FRAMES);
    assert_eq!(io.memory().frame_size(), 2048);
    // A pods' port keeps its id; the uplink's frames come after the pods'.
    let a = frame(Ipv4Addr::new(10, 244, 1, 5), 100, 1);
    let b = frame(Ipv4Addr::new(10, 244, 1, 6), 100, 2);
    assert!(io.pods_mut().inject(2, &a));
    assert!(up(&mut io).inject(0, &b));
    let mut d = [Desc::default(); 4];
    assert_eq!(io.rx_burst(2, &mut d), 1);
    assert!(d[0].buf < POD_FRAMES);
    let mut e = [Desc::default(); 4];
    assert_eq!(io.rx_burst(UPLINK, &mut e), 1);
    assert!(e[0].buf >= POD_FRAMES);
    let off = usize::from(e[0].offset);
    assert_eq!(&io.memory().frame(e[0].buf)[off..off + 100], &b[..]);
    // Writable through the combined memory.
    io.memory().frame_mut(e[0].buf)[off] = 0xee;
    assert_eq!(io.uplink().unwrap().pending_rx(0), 0);
    // Ids between the pods' ports and the uplink's receive nothing.
    assert_eq!(io.rx_burst(5, &mut d), 0);
    io.free(&[d[0].buf, e[0].buf]);
    no_leaks(&mut io);
}

#[test]
fn frames_crossing_to_the_other_backend_are_copied_and_freed() {
    let mut io = hybrid(false);
    let to_pod = frame(Ipv4Addr::new(10, 244, 1, 5), 1500, 3);
    let from_pod = frame(Ipv4Addr::new(192, 168, 77, 1), 64, 4);
    assert!(up(&mut io).inject(0, &to_pod));
    assert!(io.pods_mut().inject(0, &from_pod));
    let mut d = [Desc::default(); 2];
    assert_eq!(io.rx_burst(UPLINK, &mut d[..1]), 1);
    assert_eq!(io.rx_burst(0, &mut d[1..]), 1);
    // Uplink frame out of a pod's port, pod frame out of the uplink.
    assert_eq!(io.tx_burst(1, &d[..1]), 1);
    assert_eq!(io.tx_burst(UPLINK, &d[1..]), 1);
    assert_eq!(io.pods_mut().take_tx(1), vec![to_pod]);
    assert_eq!(up(&mut io).take_tx(0), vec![from_pod]);
    let s = io.stats();
    assert_eq!((s.copies_to_pods, s.copies_to_uplink), (1, 1));
    no_leaks(&mut io);
    // Within one backend: no copy.
    assert!(io.pods_mut().inject(0, &[0x11; 60]));
    assert_eq!(io.rx_burst(0, &mut d[..1]), 1);
    assert_eq!(io.tx_burst(2, &d[..1]), 1);
    assert_eq!(io.stats().copies_to_pods, 1);
    assert_eq!(io.pods_mut().take_tx(2).len(), 1);
    no_leaks(&mut io);
}

#[test]
fn a_refused_transmission_leaves_the_originals_with_the_caller() {
    let mut io = hybrid(false);
    let mut d = [Desc::default(); 4];
    assert!(up(&mut io).inject(0, &frame(NODE, 60, 9)));
    assert_eq!(io.rx_burst(UPLINK, &mut d[..1]), 1);
    for i in 0..3 {
        assert!(io.pods_mut().inject(0, &frame(NODE, 60, i)));
    }
    assert_eq!(io.rx_burst(0, &mut d[1..]), 3);
    // A mixed burst (an uplink frame, then pods' frames to copy); 2 accepted of 3.
    up(&mut io).set_tx_limit(0, Some(2));
    assert_eq!(io.tx_burst(UPLINK, &d[..3]), 2);
    assert_eq!(io.stats().copies_to_uplink, 1);
    assert_eq!(io.uplink().unwrap().free_frames(), UP_FRAMES as usize);
    // d[2] is still the caller's (its refused copy went back to the uplink's pool).
    assert_eq!(io.pods().free_frames(), POD_FRAMES as usize - 2);
    up(&mut io).set_tx_limit(0, None);
    assert_eq!(io.tx_burst(UPLINK, &d[2..4]), 2);
    assert_eq!(up(&mut io).take_tx(0).len(), 4);
    no_leaks(&mut io);
}

#[test]
fn copies_stop_when_the_sending_pool_is_empty() {
    let mut io = hybrid(false);
    // Take every uplink frame.
    let mut all = vec![0u32; (POD_FRAMES + UP_FRAMES) as usize];
    assert_eq!(
        io.alloc(&mut all),
        all.len(),
        "alloc spills into the uplink's pool"
    );
    assert!(all[..POD_FRAMES as usize].iter().all(|&b| b < POD_FRAMES));
    assert!(all[POD_FRAMES as usize..].iter().all(|&b| b >= POD_FRAMES));
    let mut none = [0u32; 1];
    assert_eq!(io.alloc(&mut none), 0);
    // Give back the pods' frames but one, and build a packet in it.
    let pod = all[0];
    io.free(&all[1..POD_FRAMES as usize]);
    io.memory().frame_mut(pod)[..60].copy_from_slice(&[0x22; 60]);
    let d = Desc {
        buf: pod,
        offset: 0,
        len: 60,
    };
    assert_eq!(io.tx_burst(UPLINK, &[d]), 0);
    assert_eq!(io.stats().copy_failures, 1);
    io.free(&all[POD_FRAMES as usize..]);
    assert_eq!(io.tx_burst(UPLINK, &[d]), 1);
    assert_eq!(up(&mut io).take_tx(0), vec![vec![0x22; 60]]);
    no_leaks(&mut io);
}

#[test]
fn bad_descriptors_are_refused() {
    let mut io = hybrid(true);
    let mut b = [0u32; 1];
    assert_eq!(io.alloc(&mut b), 1);
    let out_of_range = Desc {
        buf: POD_FRAMES + UP_FRAMES,
        offset: 0,
        len: 60,
    };
    assert_eq!(io.tx_burst(UPLINK, &[out_of_range]), 0);
    let empty = Desc {
        buf: b[0],
        offset: 0,
        len: 0,
    };
    assert_eq!(io.tx_burst(UPLINK, &[empty]), 0);
    let good = Desc {
        buf: b[0],
        offset: 0,
        len: 60,
    };
    // Nothing is sent to the TAP by the engine.
    assert_eq!(io.tx_burst(TAP, &[good]), 0);
    assert!(io.stats().invalid_tx >= 3);
    io.free(&b);
    no_leaks(&mut io);
}

#[test]
fn the_exception_path_passes_the_hosts_frames_and_keeps_the_engines() {
    let mut io = hybrid(true);
    let for_pod = frame(Ipv4Addr::new(10, 244, 1, 5), 80, 5);
    let for_node = frame(NODE, 80, 6);
    let elsewhere = frame(Ipv4Addr::new(8, 8, 8, 8), 80, 7);
    for f in [&for_pod, &arp(), &for_node, &elsewhere] {
        assert!(up(&mut io).inject(0, f));
    }
    let mut d = [Desc::default(); 8];
    assert_eq!(io.rx_burst(UPLINK, &mut d), 1);
    let off = usize::from(d[0].offset);
    assert_eq!(&io.memory().frame(d[0].buf)[off..off + 80], &for_pod[..]);
    assert_eq!(
        up(&mut io).take_tx(1),
        vec![arp(), for_node.clone(), elsewhere.clone()]
    );
    assert_eq!(io.stats().to_host, 3);
    // The host's frames out of the uplink, at the flush; the TAP's id reads nothing.
    assert!(up(&mut io).inject(1, &arp()));
    assert!(up(&mut io).inject(1, &elsewhere));
    assert_eq!(io.rx_burst(TAP, &mut d[1..]), 0);
    io.flush().unwrap();
    assert_eq!(up(&mut io).take_tx(0), vec![arp(), elsewhere]);
    assert_eq!(io.stats().from_host, 2);
    // A full TAP drops (and frees) what does not fit.
    up(&mut io).set_tx_limit(1, Some(0));
    assert!(up(&mut io).inject(0, &for_node));
    assert_eq!(io.rx_burst(UPLINK, &mut d[1..]), 0);
    assert_eq!(io.stats().host_drops, 1);
    io.free(&[d[0].buf]);
    no_leaks(&mut io);
}

#[test]
fn a_second_uplink_or_bad_exception_ports_are_refused() {
    let mut io: HybridIo<MemIo, MemIo> = HybridIo::new(MemIo::new(8, 2048, 1));
    let exc = |uplink, host| ExceptionPath {
        uplink,
        host,
        steering: Steering::default(),
    };
    assert!(io
        .attach_uplink(MemIo::new(8, 2048, 2), 1, Some(exc(0, 0)))
        .is_err());
    assert!(io
        .attach_uplink(MemIo::new(8, 2048, 2), 1, Some(exc(0, 2)))
        .is_err());
    assert!(io.attach_uplink(MemIo::new(8, 2048, 0), 1, None).is_err());
    assert!(io
        .attach_uplink(MemIo::new(8, 2048, 2), u16::MAX, None)
        .is_err());
    io.attach_uplink(MemIo::new(8, 2048, 2), 1, Some(exc(0, 1)))
        .unwrap();
    assert!(io.attach_uplink(MemIo::new(8, 2048, 1), 4, None).is_err());
    let back = io.detach_uplink().unwrap();
    assert_eq!(back.free_frames(), 8);
    assert_eq!(io.num_ports(), 1);
}
