//! The DPDK uplink's exception path (feature `dpdk`, root only): a [`HybridIo`] whose
//! uplink backend is a DPDK `net_af_packet` port on veth `d0` and a `net_tap` port, the
//! TAP `fphost0` carrying the node's address in the kernel. The peer on `d1` reaches the
//! node's kernel through it (ARP, ping), while the engine's traffic comes up; the kernel's
//! own processing of `d0` is cut off as the agent does for a vdev uplink (no ARP, strict
//! reverse-path filter), so the node answers once. Stop removes the TAP and returns every
//! mbuf.
//!
//! ```text
//!   RawSock -> d1 ==veth== d0 [net_af_packet: port 1] --steer--> engine (rx_burst)
//!                                                     \-> [net_tap: port 2] fphost0 (kernel)
//! ```

#[allow(unused_imports)]
mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use ferroplane_io::dpdk::{DpdkIo, DpdkPool, DpdkPort, Eal, EalConfig, PoolConfig, PortConfig};
use ferroplane_io::steer::{SteerTables, Steering};
use ferroplane_io::{Desc, ExceptionPath, FrameMemory, HybridIo, MemIo, PacketIo};

const D0: &str = "02:00:00:00:0e:00";
const D1: &str = "02:00:00:00:0e:01";
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const UPLINK: u16 = 1;
const TAP: u16 = 2;

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(98);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn arp_request(src: [u8; 6]) -> Vec<u8> {
    let mut f = eth([0xff; 6], src, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&PEER.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&NODE.octets());
    f.resize(60, 0);
    f
}

/// An IPv4 frame from PEER to `dst` with `l4` (protocol `proto`).
fn ipv4(dst_mac: [u8; 6], src_mac: [u8; 6], dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, 0x0800);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&PEER.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

fn echo_request(d0: [u8; 6], d1: [u8; 6], seq: u16) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0, 0x12, 0x34];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(&[0x61; 32]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(d0, d1, NODE, 1, &icmp)
}

/// The sequence number of an ICMP echo reply from NODE to PEER.
fn echo_reply_seq(f: &[u8]) -> Option<u16> {
    let ip = f.get(14..34)?;
    let icmp = f.get(34..42)?;
    (f[12..14] == [8, 0] && ip[9] == 1 && ip[12..16] == NODE.octets() && icmp[0] == 0)
        .then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

fn is_arp_reply_from_node(f: &[u8], mac: [u8; 6]) -> bool {
    f.len() >= 42
        && f[12..14] == [8, 6]
        && f[20..22] == [0, 2]
        && f[22..28] == mac
        && f[28..32] == NODE.octets()
}

/// Polls the backend like an engine worker (engine-bound packets collected, the rest
/// moved by the backend) and the peer's socket, until `done` says so or 5 s pass.
fn poll_until(
    io: &mut HybridIo<MemIo, DpdkIo>,
    sock: &RawSock,
    engine: &mut Vec<Vec<u8>>,
    peer: &mut Vec<Vec<u8>>,
    mut done: impl FnMut(&[Vec<u8>], &[Vec<u8>]) -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut d = [Desc::default(); 32];
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let n = io.rx_burst(UPLINK, &mut d);
        for x in &d[..n] {
            let off = usize::from(x.offset);
            engine.push(io.memory().frame(x.buf)[off..off + usize::from(x.len)].to_vec());
        }
        let bufs: Vec<u32> = d[..n].iter().map(|x| x.buf).collect();
        io.free(&bufs);
        assert_eq!(
            io.rx_burst(TAP, &mut d),
            0,
            "the engine never reads the TAP"
        );
        io.flush().unwrap();
        while let Some(len) = sock.try_recv(&mut buf) {
            peer.push(buf[..len].to_vec());
        }
        if done(engine, peer) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn the_hosts_traffic_crosses_the_tap_and_the_engines_comes_up() {
    if !require_root() {
        return;
    }
    let ns = quiet_netns("dpdk-exc");
    ns.veth("d0", D0, "d1", D1);
    // What the agent does to a vdev uplink's kernel side: the kernel must not answer on it.
    ns.ip(&["link", "set", "d0", "arp", "off"]);
    ns.exec(&["sysctl", "-qw", "net.ipv4.conf.d0.rp_filter=1"]);
    let (d0, d1) = (parse_mac(D0), parse_mac(D1));
    ns.enter(|| {
        let mut config = EalConfig::for_tests(256);
        if let Ok(level) = std::env::var("FP_DPDK_LOG_LEVEL") {
            config.log_level = level;
        }
        let eal = Eal::init(&config).unwrap();
        let pool = DpdkPool::new(
            &eal,
            PoolConfig {
                num_mbufs: 4095,
                cache: 0,
                data_room: 2048 + 128,
            },
        )
        .unwrap();
        let total = pool.num_mbufs();
        let uplink = DpdkPort::open(&pool, &PortConfig::new("net_af_packet7,iface=d0")).unwrap();
        let tap = DpdkPort::open(&pool, &PortConfig::new("net_tap7,iface=fphost0")).unwrap();
        ns.ip(&["link", "set", "fphost0", "address", D0, "up"]);
        ns.ip(&["addr", "add", "192.168.77.2/24", "dev", "fphost0"]);
        let dpdk = DpdkIo::new(&pool, vec![(uplink, 0), (tap, 0)]).unwrap();
        let mut tables = SteerTables::new();
        tables.add_host4(NODE);
        tables.add_steer4(Ipv4Addr::new(10, 244, 1, 0), 24);
        let mut io: HybridIo<MemIo, DpdkIo> = HybridIo::new(MemIo::new(64, 2048, 1));
        io.attach_uplink(
            dpdk,
            UPLINK,
            Some(ExceptionPath {
                uplink: 0,
                host: 1,
                steering: Steering::new(tables),
            }),
        )
        .unwrap();
        let sock = RawSock::bind_all("d1");
        let (mut engine, mut peer) = (Vec::new(), Vec::new());

        // ARP for the node's address: the kernel answers through the TAP, once.
        sock.send(&arp_request(d1));
        assert!(
            poll_until(&mut io, &sock, &mut engine, &mut peer, |_, p| p
                .iter()
                .any(|f| is_arp_reply_from_node(f, d0))),
            "no ARP reply from the node; the peer saw {peer:02x?}"
        );
        // Ping: one reply per request (the kernel does not also answer on d0).
        for seq in 1..=3 {
            sock.send(&echo_request(d0, d1, seq));
        }
        let replies = |p: &[Vec<u8>]| p.iter().filter_map(|f| echo_reply_seq(f)).count();
        assert!(
            poll_until(&mut io, &sock, &mut engine, &mut peer, |_, p| replies(p)
                >= 3),
            "echo replies: {}",
            replies(&peer)
        );
        std::thread::sleep(Duration::from_millis(200));
        poll_until(&mut io, &sock, &mut engine, &mut peer, |_, _| true);
        let mut seqs: Vec<u16> = peer.iter().filter_map(|f| echo_reply_seq(f)).collect();
        seqs.sort();
        assert_eq!(seqs, [1, 2, 3], "exactly one reply per request");
        assert!(
            engine.is_empty(),
            "the host's traffic never reaches the engine"
        );

        // A packet for a pod comes up to the engine, untouched.
        let to_pod = ipv4(
            d0,
            d1,
            POD,
            17,
            &[0x9c, 0x40, 0, 53, 0, 16, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
        );
        sock.send(&to_pod);
        assert!(
            poll_until(&mut io, &sock, &mut engine, &mut peer, |e, _| !e.is_empty()),
            "the pod's packet did not reach the engine"
        );
        assert_eq!(engine, vec![to_pod]);
        let s = io.stats();
        assert!(s.to_host >= 4 && s.from_host >= 4, "{s:?}");
        assert_eq!(s.host_drops, 0);

        // Stop: the TAP goes away with its port, every mbuf comes back.
        drop(io);
        let links = ns.ip(&["-br", "link"]);
        assert!(!links.contains("fphost0"), "TAP still there: {links}");
        assert_eq!(pool.available(), total, "mbufs back in the pool after stop");
    });
}
