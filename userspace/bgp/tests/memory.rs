//! Memory per route: a scripted peer (raw TCP on loopback, no root needed) announces a
//! table of IPv4 prefixes to a [`Speaker`], one prefix per UPDATE (what GoBGP's `mrt
//! inject` sends, the worst case for attribute sharing), and a counting allocator
//! measures the heap the speaker holds per route once the table is in and the FIB
//! changes were taken (as the agent does). A withdraw of everything must give the
//! memory back (interned attribute sets included).
//!
//! One test in this file: the allocator counts every thread of the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use ferroplane_bgp::msg::{Capability, Open};
use ferroplane_bgp::update::{AsPath, AsSegment, PathAttributes, SegmentKind, Update};
use ferroplane_bgp::{Ctx, Message, PeerConfig, Speaker, SpeakerConfig};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Heap bytes currently allocated (requested sizes, not the allocator's rounding).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with layout `l`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const ROUTES: u32 = 100_000;
const PEER_AS: u32 = 65002;
const LOCAL_AS: u32 = 64512;
/// Heap per route the speaker may hold for a one-path table (Adj-RIB-In and Loc-RIB
/// together, attribute sets shared). Measured 81 bytes (hash tables at 76 % load);
/// 462 before attribute sets were interned and one-path destinations kept inline.
const BUDGET_PER_ROUTE: isize = 120;

fn prefix(i: u32) -> IpNet {
    ferroplane_bgp::prefix::v4(Ipv4Addr::from((100u32 << 24) + (i << 8)), 24).unwrap()
}

async fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_table_costs_little_and_is_given_back() {
    let port = 40000 + (std::process::id() % 10000) as u16;
    let mut c = SpeakerConfig::new(LOCAL_AS, Ipv4Addr::new(127, 0, 0, 2));
    c.listen = Some(SocketAddr::new("127.0.0.2".parse().unwrap(), port));
    c.graceful_restart = None;
    let mut pc = PeerConfig::new("127.0.0.1".parse().unwrap(), PEER_AS);
    pc.passive = true;
    pc.families = vec![ferroplane_bgp::Afi::Ipv4];
    c.peers.push(pc);
    let speaker = Speaker::start(c, Vec::new()).await.unwrap();

    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stream = sock
        .connect(SocketAddr::new("127.0.0.2".parse().unwrap(), port))
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.into_split();
    // Drain whatever the speaker sends (its OPEN, KEEPALIVEs, End-of-RIB).
    let drain = tokio::spawn(async move {
        let mut b = vec![0u8; 4096];
        while rd.read(&mut b).await.is_ok_and(|n| n > 0) {}
    });
    let ctx = Ctx {
        four_octet_as: true,
        ebgp: true,
        peer_as: LOCAL_AS,
    };
    let open = Open::new(
        PEER_AS,
        90,
        Ipv4Addr::new(1, 1, 1, 1),
        vec![
            Capability::Multiprotocol(ferroplane_bgp::Afi::Ipv4),
            Capability::FourOctetAs(PEER_AS),
        ],
    );
    wr.write_all(&Message::Open(open).to_bytes(&ctx))
        .await
        .unwrap();
    wr.write_all(&Message::Keepalive.to_bytes(&ctx))
        .await
        .unwrap();
    wait("session", 10, || {
        speaker
            .peers()
            .first()
            .is_some_and(|p| p.state == "Established")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = live();

    let attrs = PathAttributes {
        as_path: AsPath(vec![AsSegment {
            kind: SegmentKind::Sequence,
            asns: vec![PEER_AS],
        }]),
        next_hop: Some(Ipv4Addr::new(127, 0, 0, 1)),
        ..PathAttributes::default()
    };
    let mut buf = Vec::with_capacity(1 << 20);
    for i in 0..ROUTES {
        let u = Update {
            attrs: Some(attrs.clone()),
            nlri: vec![prefix(i)],
            ..Update::default()
        };
        Message::Update(u).encode(&mut buf, &ctx);
        if buf.len() > (1 << 20) - 100 || i + 1 == ROUTES {
            wr.write_all(&buf).await.unwrap();
            buf.clear();
        }
    }
    drop(buf);
    wait("the table in the Loc-RIB", 60, || {
        speaker.loc_rib_len() == ROUTES as usize
    })
    .await;
    let changes = speaker.take_fib_changes();
    assert_eq!(changes.len(), ROUTES as usize);
    assert!(changes
        .iter()
        .all(|(_, nh)| nh == &vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))]));
    drop(changes);
    let held = live() - before;
    let per_route = held / ROUTES as isize;
    println!("speaker heap for {ROUTES} routes: {held} bytes, {per_route} bytes per route");
    assert_eq!(speaker.peers()[0].received, ROUTES as usize);
    assert!(
        per_route <= BUDGET_PER_ROUTE,
        "{per_route} bytes per route (budget {BUDGET_PER_ROUTE})"
    );

    // Withdraw everything (many prefixes per UPDATE): the memory comes back.
    let mut buf = Vec::new();
    for chunk in (0..ROUTES).collect::<Vec<_>>().chunks(500) {
        let u = Update {
            withdrawn: chunk.iter().map(|&i| prefix(i)).collect(),
            ..Update::default()
        };
        Message::Update(u).encode(&mut buf, &ctx);
    }
    wr.write_all(&buf).await.unwrap();
    drop(buf);
    wait("the table withdrawn", 60, || speaker.loc_rib_len() == 0).await;
    assert_eq!(speaker.take_fib_changes().len(), ROUTES as usize);
    let left = live() - before;
    println!("speaker heap after withdrawing them: {left} bytes");
    assert!(
        left < ROUTES as isize * 8,
        "{left} bytes still held after the table was withdrawn"
    );
    speaker.shutdown(false).await;
    drop(wr);
    let _ = drain.await;
}
