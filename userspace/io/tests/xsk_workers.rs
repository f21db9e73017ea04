//! Two AF_XDP backends in one network namespace, as the agent's engine workers have (root
//! only): each its own UMEM, anchored on its own device (the kernel registers one UMEM per
//! device queue, so a second backend cannot anchor on `lo` too), ports placed at ids the
//! caller chose (one numbering over both backends), both receiving.
//!
//! ```text
//!   a1 ==veth== a0 [XDP -> backend 0, port 3]     (backend 0 anchored on lo)
//!   b1 ==veth== b0 [XDP -> backend 1, port 5]     (backend 1 anchored on TUN fpxsk1)
//! ```

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferroplane_io::{Desc, FrameMemory, PacketIo, PortId, TunDevice, XskConfig, XskIo};

fn config(anchor: &str) -> XskConfig {
    XskConfig {
        num_frames: 1024,
        fill_size: 512,
        comp_size: 512,
        rx_size: 512,
        tx_size: 512,
        fill_target: 256,
        idle_fill: 64,
        max_ports: 2,
        anchor_ifname: anchor.to_string(),
        ..XskConfig::default()
    }
}

/// Receive on `port` of `io` until `want` test frames of `tag` arrived (or 5 s).
fn receive(io: &mut XskIo, port: PortId, tag: u32, want: usize) -> usize {
    let mut descs = [Desc::default(); 64];
    let mut got = 0;
    let start = Instant::now();
    while got < want && start.elapsed() < Duration::from_secs(5) {
        io.wait(Duration::from_millis(10)).unwrap();
        let n = io.rx_burst(port, &mut descs);
        for d in &descs[..n] {
            let off = usize::from(d.offset);
            let frame = &io.memory().frame(d.buf)[off..off + usize::from(d.len)];
            if parse_test_frame(frame).map(|(t, _)| t) == Some(tag) {
                got += 1;
            }
        }
        let bufs: Vec<_> = descs[..n].iter().map(|d| d.buf).collect();
        io.free(&bufs);
        io.flush().unwrap();
    }
    got
}

#[test]
fn two_backends_with_their_own_anchors_and_placed_ports() {
    if !require_root() {
        return;
    }
    let ns = quiet_netns("xskw");
    ns.veth("a0", "02:00:00:00:0a:00", "a1", "02:00:00:00:0a:01");
    ns.veth("b0", "02:00:00:00:0b:00", "b1", "02:00:00:00:0b:01");
    let name = ns.name().to_string();
    std::thread::spawn(move || {
        enter_netns(&name);
        let mut io0 = XskIo::new(config("lo")).unwrap();
        // The reason for the anchors: lo's queue 0 has io0's UMEM.
        assert!(
            XskIo::new(config("lo")).is_err(),
            "a second UMEM anchored on lo queue 0"
        );
        let tun = TunDevice::create("fpxsk1").unwrap();
        let mut io1 = XskIo::new(config("fpxsk1")).unwrap();

        let a = io0.opener().open("a0", 0).unwrap();
        let b = io1.opener().open("b0", 0).unwrap();
        let pa = io0.install_ports_at(3, vec![a]).unwrap();
        assert_eq!(pa[0].0, 3);
        assert!(!io0.port_free(3));
        assert!(io0.port_free(2) && io0.port_free(5));
        // Id 3 is taken in backend 0: placing another socket there fails, installing none.
        let again = io0.opener().open("b1", 0).unwrap();
        assert!(io0.install_ports_at(3, vec![again]).is_err());
        let pb = io1.install_ports_at(5, vec![b]).unwrap();
        assert_eq!(pb[0].0, 5);
        // Ids below the placed ones are holes: no port, nothing received.
        assert!(io1.num_ports() >= 6);
        let mut d = [Desc::default(); 4];
        assert_eq!(io1.rx_burst(0, &mut d), 0);

        let mut xa = XdpToXsk::attach("a0");
        xa.set_socket(0, pa[0].1);
        let mut xb = XdpToXsk::attach("b0");
        xb.set_socket(0, pb[0].1);
        let (sa, sb) = (RawSock::bind("a1"), RawSock::bind("b1"));
        for seq in 0..20 {
            sa.send(&test_frame(
                parse_mac("02:00:00:00:0a:00"),
                parse_mac("02:00:00:00:0a:01"),
                0xa,
                seq,
            ));
            sb.send(&test_frame(
                parse_mac("02:00:00:00:0b:00"),
                parse_mac("02:00:00:00:0b:01"),
                0xb,
                seq,
            ));
        }
        assert_eq!(receive(&mut io0, 3, 0xa, 20), 20);
        assert_eq!(receive(&mut io1, 5, 0xb, 20), 20);
        drop((xa, xb));
        drop(io1);
        drop(tun);
        drop(io0);
    })
    .join()
    .unwrap();
}
