//! Sessions between our own speakers over loopback addresses (127.0.0.x, no root
//! needed): establishment (active/passive and both active: collision), route exchange,
//! withdraw, ECMP from two peers, graceful restart.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferroplane_bgp::{PeerConfig, Speaker, SpeakerConfig};
use ipnet::IpNet;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn p(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// A port range unique to this process (both-active tests need fixed ports).
fn port(i: u16) -> u16 {
    30000 + (std::process::id() % 2000) as u16 * 16 + i
}

fn cfg(asn: u32, addr: &str, listen_port: u16) -> SpeakerConfig {
    let mut c = SpeakerConfig::new(asn, addr.parse().unwrap());
    c.listen = Some(SocketAddr::new(ip(addr), listen_port));
    c.hold_time = 9;
    c.connect_retry = 1;
    c.graceful_restart = Some(5);
    c
}

fn peer(addr: &str, asn: u32, port: u16, local: &str, passive: bool) -> PeerConfig {
    let mut pc = PeerConfig::new(ip(addr), asn);
    pc.port = port;
    pc.local_address = Some(ip(local));
    pc.passive = passive;
    pc
}

async fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn established(s: &Speaker, n: usize) -> bool {
    s.peers()
        .iter()
        .filter(|p| p.state == "Established")
        .count()
        == n
}

fn fib(s: &Speaker, prefix: &str) -> Vec<IpAddr> {
    s.fib_routes()
        .into_iter()
        .find(|(q, _)| *q == p(prefix))
        .map(|(_, mut v)| {
            v.sort();
            v
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "current_thread")]
async fn routes_flow_and_are_withdrawn() {
    let (pa, pb) = (port(0), port(1));
    let mut b = cfg(65002, "127.0.0.2", pb);
    b.peers
        .push(peer("127.0.0.1", 65001, pa, "127.0.0.2", true));
    let b = Speaker::start(b, vec![p("10.2.0.0/24")]).await.unwrap();
    let mut a = cfg(65001, "127.0.0.1", pa);
    a.peers
        .push(peer("127.0.0.2", 65002, pb, "127.0.0.1", false));
    let a = Speaker::start(a, vec![p("10.1.0.0/24")]).await.unwrap();
    wait("session", 10, || established(&a, 1) && established(&b, 1)).await;
    wait("routes", 5, || {
        fib(&b, "10.1.0.0/24") == vec![ip("127.0.0.1")]
            && fib(&a, "10.2.0.0/24") == vec![ip("127.0.0.2")]
    })
    .await;
    let r = b.routes(Some("10.1.0.0/24"));
    assert_eq!(r[0].paths[0].as_path, "65001");
    assert!(r[0].paths[0].best);
    let st = &b.peers()[0];
    assert_eq!((st.received, st.accepted, st.advertised), (1, 1, 1));
    assert!(
        st.capabilities.iter().any(|c| c == "4-octet-as"),
        "{:?}",
        st.capabilities
    );
    // Our own route is not re-learnt (AS loop) and not installed.
    assert!(fib(&a, "10.1.0.0/24").is_empty());

    a.withdraw_originated(p("10.1.0.0/24"));
    wait("withdraw", 5, || fib(&b, "10.1.0.0/24").is_empty()).await;
    a.originate(p("10.1.1.0/24"));
    wait("new route", 5, || !fib(&b, "10.1.1.0/24").is_empty()).await;

    // Non-graceful stop: Cease, and the peer drops the routes at once.
    a.shutdown(false).await;
    wait("routes gone", 5, || fib(&b, "10.1.1.0/24").is_empty()).await;
    assert_ne!(b.peers()[0].state, "Established");
    b.shutdown(false).await;
}

#[tokio::test(flavor = "current_thread")]
async fn both_active_collision_and_ecmp() {
    let (pa, pb, pc) = (port(2), port(3), port(4));
    let mut b = cfg(65002, "127.0.0.2", pb);
    b.peers
        .push(peer("127.0.0.1", 65001, pa, "127.0.0.2", false));
    b.peers
        .push(peer("127.0.0.3", 65003, pc, "127.0.0.2", false));
    let mut a = cfg(65001, "127.0.0.1", pa);
    a.peers
        .push(peer("127.0.0.2", 65002, pb, "127.0.0.1", false));
    let mut c = cfg(65003, "127.0.0.3", pc);
    c.peers
        .push(peer("127.0.0.2", 65002, pb, "127.0.0.3", false));
    let (a, b, c) = tokio::join!(
        Speaker::start(a, vec![p("10.9.0.0/24")]),
        Speaker::start(b, vec![]),
        Speaker::start(c, vec![p("10.9.0.0/24")])
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    wait("sessions", 15, || {
        established(&b, 2) && established(&a, 1) && established(&c, 1)
    })
    .await;
    wait("ecmp", 5, || {
        fib(&b, "10.9.0.0/24") == vec![ip("127.0.0.1"), ip("127.0.0.3")]
    })
    .await;
    let r = b.routes(Some("10.9.0.1"));
    assert_eq!(r.len(), 1);
    assert!(r[0].paths.iter().all(|p| p.multipath));
    // Both sessions went through collision resolution to exactly one connection each.
    for s in [&a, &b, &c] {
        for st in s.peers() {
            assert_eq!(st.established_count, 1, "{st:?}");
        }
    }
    // A advertises it to B; B must not send C's copy back to A? It may (eBGP), but A
    // rejects it (AS loop is not the case: path 65002 65003) and prefers its own.
    c.withdraw_originated(p("10.9.0.0/24"));
    wait("ecmp shrinks", 5, || {
        fib(&b, "10.9.0.0/24") == vec![ip("127.0.0.1")]
    })
    .await;
    for s in [a, b, c] {
        s.shutdown(false).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn graceful_restart_keeps_routes_until_end_of_rib() {
    let (pa, pb) = (port(5), port(6));
    let mut bc = cfg(65002, "127.0.0.2", pb);
    bc.peers
        .push(peer("127.0.0.1", 65001, pa, "127.0.0.2", true));
    let b = Speaker::start(bc, vec![]).await.unwrap();
    let mut ac = cfg(65001, "127.0.0.1", pa);
    ac.peers
        .push(peer("127.0.0.2", 65002, pb, "127.0.0.1", false));
    let a = Speaker::start(ac.clone(), vec![p("10.1.0.0/24"), p("10.1.1.0/24")])
        .await
        .unwrap();
    wait("routes", 10, || fib(&b, "10.1.1.0/24").len() == 1).await;

    // Graceful stop: TCP closed without NOTIFICATION; B keeps the routes as stale.
    a.shutdown(true).await;
    wait("session down", 5, || !established(&b, 1)).await;
    assert_eq!(fib(&b, "10.1.0.0/24"), vec![ip("127.0.0.1")]);
    assert_eq!(b.peers()[0].stale, 2);
    assert!(b.routes(Some("10.1.0.0/24"))[0].paths[0].stale);

    // A comes back (restarting) with only one of the two routes.
    ac.restarting = true;
    let a = Speaker::start(ac, vec![p("10.1.0.0/24")]).await.unwrap();
    wait("re-established", 10, || established(&b, 1)).await;
    wait("stale route flushed at End-of-RIB", 5, || {
        fib(&b, "10.1.1.0/24").is_empty()
    })
    .await;
    assert_eq!(fib(&b, "10.1.0.0/24"), vec![ip("127.0.0.1")]);
    assert_eq!(b.peers()[0].stale, 0);
    assert!(b.peers()[0]
        .capabilities
        .iter()
        .any(|c| c.contains("restarting")));
    a.shutdown(true).await;

    // Without a comeback, the restart time (5 s) ends the retention.
    wait("restart timer", 10, || fib(&b, "10.1.0.0/24").is_empty()).await;
    b.shutdown(false).await;
    let _ = Ipv4Addr::LOCALHOST;
}

/// b peers with a (eBGP) and c (eBGP). By default b sends c only what it originates:
/// a's route does not go on to c (a node is not a transit AS); `export: all` on the
/// session to c makes b a transit for it.
#[tokio::test(flavor = "current_thread")]
async fn no_transit_by_default() {
    for transit in [false, true] {
        let base = if transit { 10 } else { 7 };
        let (pa, pb, pc) = (port(base), port(base + 1), port(base + 2));
        let mut a = cfg(65001, "127.0.0.21", pa);
        a.peers
            .push(peer("127.0.0.22", 65002, pb, "127.0.0.21", false));
        let a = Speaker::start(a, vec![p("10.1.0.0/24")]).await.unwrap();
        let mut b = cfg(65002, "127.0.0.22", pb);
        b.peers
            .push(peer("127.0.0.21", 65001, pa, "127.0.0.22", true));
        let mut to_c = peer("127.0.0.23", 65003, pc, "127.0.0.22", true);
        if transit {
            to_c.export = ferroplane_bgp::rib::ExportPolicy::All;
        }
        b.peers.push(to_c);
        let b = Speaker::start(b, vec![p("10.2.0.0/24")]).await.unwrap();
        let mut c = cfg(65003, "127.0.0.23", pc);
        c.peers
            .push(peer("127.0.0.22", 65002, pb, "127.0.0.23", false));
        let c = Speaker::start(c, vec![]).await.unwrap();
        wait("sessions", 10, || established(&b, 2) && established(&c, 1)).await;
        wait("b learns a's route, c b's own", 5, || {
            !fib(&b, "10.1.0.0/24").is_empty() && !fib(&c, "10.2.0.0/24").is_empty()
        })
        .await;
        if transit {
            wait("a's route through b to c", 5, || {
                fib(&c, "10.1.0.0/24") == vec![ip("127.0.0.22")]
            })
            .await;
        } else {
            // b has sent c its own route; give a transit route the same time to arrive.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(fib(&c, "10.1.0.0/24").is_empty(), "b must not be a transit");
            assert_eq!(c.peers()[0].received, 1, "only b's own prefix");
        }
        for s in [a, b, c] {
            s.shutdown(false).await;
        }
    }
}

/// ConnectRetryTime 0 would reconnect in a tight loop: refused, like hold time 1-2.
#[tokio::test(flavor = "current_thread")]
async fn connect_retry_zero_and_hold_time_two_are_refused() {
    let mut c = cfg(65001, "127.0.0.31", port(13));
    c.connect_retry = 0;
    let Err(e) = Speaker::start(c, vec![]).await else {
        panic!("connect retry 0 accepted");
    };
    assert!(e.to_string().contains("connect retry"), "{e}");
    let mut c = cfg(65001, "127.0.0.31", port(13));
    c.hold_time = 2;
    let Err(e) = Speaker::start(c, vec![]).await else {
        panic!("hold time 2 accepted");
    };
    assert!(e.to_string().contains("hold time"), "{e}");
}
