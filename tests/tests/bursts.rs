//! Bursts into and out of idle pods (issue 15 item 4): an unpaced 1,000-datagram UDP burst
//! pod -> pod, router -> pod (through the uplink) and pod -> router arrives whole, and 256
//! TCP connections opened at once into an idle pod complete without one SYN retransmission.
//!
//! Every burst starts after the ports involved were idle for more than a second. Each test
//! prints its figures (sent, received, the AF_XDP ports' kernel drop counters, the XDP
//! verdicts) so that a failure says where the packets went.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferroplane_e2e::netns::Netns;
use ferroplane_e2e::probe::ping;
use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, require_root};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};

/// Datagrams per burst.
const BURST: usize = 1000;
/// UDP payload bytes (a 106-byte frame).
const PAYLOAD: usize = 64;
/// Simultaneous TCP connections.
const CONNECTS: usize = 256;
/// How long the ports stay idle before a burst.
const IDLE: Duration = Duration::from_millis(1500);

fn setup() -> (Topology, AgentGuard) {
    let topo = Topology::single_node(2).expect("topology");
    // Every packet through the engine and its AF_XDP ports: the XDP fast path (on by
    // default) would forward the established part of a burst without them.
    let agent = topo
        .start_agent_with(&bin_dir(), &["--fast-path", "off"])
        .expect("agent start");
    // Resolve every neighbour the bursts need (pods -> 169.254.1.1, router <-> node), so
    // that no burst packet waits for ARP.
    ping(&topo.pods[0].ns, topo.pods[1].ip, 2).expect("pod0 -> pod1");
    ping(&topo.router, topo.pods[1].ip, 2).expect("router -> pod1");
    ping(&topo.pods[0].ns, Topology::ROUTER_IP, 2).expect("pod0 -> router");
    (topo, agent)
}

/// A `Proto:` table of `/proc/net/snmp` or `/proc/net/netstat` in `ns`, as (name, value).
fn proc_counters(ns: &Netns, file: &str, proto: &str) -> Vec<(String, i64)> {
    let text = ns.exec_ok(&["cat", file]).expect("proc counters");
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("no {proto} table in {file}: {text}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .map(|(n, v)| (n.to_string(), v.parse().expect("counter value")))
        .collect()
}

/// One counter of [`proc_counters`] (every one asked for here is a non-negative count).
fn counter(ns: &Netns, file: &str, proto: &str, name: &str) -> u64 {
    let v = proc_counters(ns, file, proto)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {proto} {name} in {file}"))
        .1;
    u64::try_from(v).expect("a count")
}

/// What the AF_XDP ports and the XDP programs counted, for the figures.
fn dataplane_figures(agent: &AgentGuard) -> String {
    let bufs = agent.ctl_json(&["show", "buffers"]).expect("show buffers");
    let mut out =
        String::from("ports (if/queue: fill target, fill-ring-empty, rx-ring-full, rx-dropped):");
    for p in bufs["ports"].as_array().expect("ports") {
        out.push_str(&format!(
            " {}/{}: {} {} {} {};",
            p["interface"].as_str().unwrap_or("?"),
            p["queue"],
            p["fill_target"],
            p["rx_fill_ring_empty"],
            p["rx_ring_full"],
            p["rx_dropped"]
        ));
    }
    let xdp = agent.ctl_json(&["show", "xdp"]).expect("show xdp");
    out.push_str(" xdp:");
    for v in ["verdicts", "drops"] {
        for x in xdp[v].as_array().expect("xdp counters") {
            if x["count"].as_u64().unwrap_or(0) > 0 {
                out.push_str(&format!(
                    " {}={}",
                    x["name"].as_str().unwrap_or("?"),
                    x["count"]
                ));
            }
        }
    }
    out
}

/// Packets the AF_XDP sockets' kernel side dropped: no fill-ring frame (`rx_dropped`, which
/// `rx_fill_ring_empty` counts too) or a full RX ring.
fn xsk_drops(agent: &AgentGuard) -> u64 {
    let bufs = agent.ctl_json(&["show", "buffers"]).expect("show buffers");
    bufs["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            ["rx_ring_full", "rx_dropped"]
                .iter()
                .map(|k| p[*k].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum()
}

/// Result of one burst.
#[derive(Debug)]
struct Burst {
    sent: usize,
    received: usize,
    /// `Udp: RcvbufErrors` of the receiving namespace during the burst.
    rcvbuf_errors: u64,
}

/// Sends `BURST` datagrams back to back from `from` to `dst:port`, received by a socket in
/// `to` (16 MiB receive buffer, so the receiving socket is not where they are lost). Both
/// sides wait `IDLE` first. Returns what was sent and received.
fn udp_burst(from: &Netns, to: &Netns, dst: Ipv4Addr, port: u16) -> Burst {
    let rcvbuf_before = counter(to, "/proc/net/snmp", "Udp", "RcvbufErrors");
    let (ready_tx, ready_rx) = mpsc::channel();
    let (sent, received) = std::thread::scope(|s| {
        let rx = s.spawn(move || {
            to.run(move || {
                let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
                    .expect("bind receiver");
                socket::setsockopt(&sock, sockopt::RcvBufForce, &(16 << 20))
                    .expect("SO_RCVBUFFORCE");
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("timeout");
                ready_tx.send(()).expect("ready");
                let mut buf = [0u8; 2048];
                let mut got = 0usize;
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut last = None::<Instant>;
                while got < BURST && Instant::now() < deadline {
                    match sock.recv(&mut buf) {
                        Ok(_) => {
                            got += 1;
                            last = Some(Instant::now());
                        }
                        Err(_) if last.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) => {
                            break
                        }
                        Err(_) => {}
                    }
                }
                got
            })
            .expect("receiver namespace")
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver ready");
        std::thread::sleep(IDLE);
        let sent = from
            .run(move || {
                let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
                    .expect("bind sender");
                socket::setsockopt(&sock, sockopt::SndBufForce, &(16 << 20))
                    .expect("SO_SNDBUFFORCE");
                let dst = SocketAddrV4::new(dst, port);
                let mut payload = [0x5au8; PAYLOAD];
                let mut sent = 0;
                for i in 0..BURST {
                    payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
                    if sock.send_to(&payload, dst).is_ok() {
                        sent += 1;
                    }
                }
                sent
            })
            .expect("sender namespace");
        (sent, rx.join().expect("receiver thread"))
    });
    Burst {
        sent,
        received,
        rcvbuf_errors: counter(to, "/proc/net/snmp", "Udp", "RcvbufErrors") - rcvbuf_before,
    }
}

fn check_burst(what: &str, agent: &AgentGuard, b: &Burst, xsk_drops_before: u64) {
    let drops = xsk_drops(agent) - xsk_drops_before;
    println!(
        "{what}: sent {} received {} lost {} (AF_XDP kernel drops {drops}, receiver RcvbufErrors {}); {}",
        b.sent,
        b.received,
        b.sent - b.received.min(b.sent),
        b.rcvbuf_errors,
        dataplane_figures(agent)
    );
    assert_eq!(
        b.sent, BURST,
        "{what}: the sender's kernel took every datagram"
    );
    assert_eq!(
        b.rcvbuf_errors, 0,
        "{what}: the receiving socket overflowed"
    );
    assert_eq!(
        b.received, BURST,
        "{what}: every datagram of the burst arrived"
    );
    assert_eq!(drops, 0, "{what}: AF_XDP sockets dropped nothing");
}

#[test]
fn udp_burst_pod_to_idle_pod_arrives_whole() {
    if !require_root() {
        return;
    }
    let (topo, agent) = setup();
    let before = xsk_drops(&agent);
    let b = udp_burst(&topo.pods[0].ns, &topo.pods[1].ns, topo.pods[1].ip, 7001);
    check_burst("pod0 -> pod1", &agent, &b, before);
}

#[test]
fn udp_burst_router_to_idle_pod_arrives_whole() {
    if !require_root() {
        return;
    }
    let (topo, agent) = setup();
    let before = xsk_drops(&agent);
    let b = udp_burst(&topo.router, &topo.pods[1].ns, topo.pods[1].ip, 7002);
    check_burst("router -> pod1 (uplink)", &agent, &b, before);
}

#[test]
fn udp_burst_out_of_idle_pod_arrives_whole() {
    if !require_root() {
        return;
    }
    let (topo, agent) = setup();
    let before = xsk_drops(&agent);
    let b = udp_burst(&topo.pods[0].ns, &topo.router, Topology::ROUTER_IP, 7003);
    check_burst("pod0 -> router", &agent, &b, before);
}

/// Opens `CONNECTS` non-blocking TCP connections to `dst` at once (every SYN sent before
/// any answer is read) and waits up to `limit` for them; returns how many connected.
fn connect_all(dst: SocketAddrV4, limit: Duration) -> usize {
    let addr = SockaddrIn::from(dst);
    let socks: Vec<OwnedFd> = (0..CONNECTS)
        .map(|_| {
            let fd = socket::socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK,
                None,
            )
            .expect("socket");
            match socket::connect(fd.as_raw_fd(), &addr) {
                Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
                Err(e) => panic!("connect {dst}: {e}"),
            }
            fd
        })
        .collect();
    let deadline = Instant::now() + limit;
    let mut pending: Vec<&OwnedFd> = socks.iter().collect();
    let mut connected = 0;
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|fd| {
            if socket::getpeername::<SockaddrIn>(fd.as_raw_fd()).is_ok() {
                connected += 1;
                return false;
            }
            let err = socket::getsockopt(&fd.as_fd(), sockopt::SocketError).unwrap_or(0);
            assert_eq!(err, 0, "connection to {dst} failed: errno {err}");
            true
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    connected
}

#[test]
fn simultaneous_connects_into_idle_pod_need_no_syn_retransmission() {
    if !require_root() {
        return;
    }
    let (topo, agent) = setup();
    let (client, server) = (&topo.pods[0].ns, &topo.pods[1].ns);
    let dst = SocketAddrV4::new(topo.pods[1].ip, 7100);
    let before = xsk_drops(&agent);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (connected, syn_retrans, retrans) = std::thread::scope(|s| {
        let srv = s.spawn(move || {
            server
                .run(move || {
                    let l = std::net::TcpListener::bind(SocketAddrV4::new(
                        Ipv4Addr::UNSPECIFIED,
                        dst.port(),
                    ))
                    .expect("listen");
                    // std listens with a backlog of 128: listen again with room for all.
                    socket::listen(&l, socket::Backlog::new(1024).expect("backlog"))
                        .expect("listen backlog");
                    ready_tx.send(()).expect("ready");
                    // Connections complete in the kernel; keep the listener until told.
                    let _ = stop_rx.recv_timeout(Duration::from_secs(20));
                })
                .expect("server namespace")
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server ready");
        std::thread::sleep(IDLE);
        let syn0 = counter(client, "/proc/net/netstat", "TcpExt", "TCPSynRetrans");
        let re0 = counter(client, "/proc/net/snmp", "Tcp", "RetransSegs");
        let connected = client
            .run(move || connect_all(dst, Duration::from_secs(5)))
            .expect("client namespace");
        let syn = counter(client, "/proc/net/netstat", "TcpExt", "TCPSynRetrans") - syn0;
        let re = counter(client, "/proc/net/snmp", "Tcp", "RetransSegs") - re0;
        let _ = stop_tx.send(());
        srv.join().expect("server thread");
        (connected, syn, re)
    });
    let drops = xsk_drops(&agent) - before;
    println!(
        "{CONNECTS} simultaneous connects pod0 -> pod1: {connected} connected, TCPSynRetrans {syn_retrans}, RetransSegs {retrans} (AF_XDP kernel drops {drops}); {}",
        dataplane_figures(&agent)
    );
    assert_eq!(connected, CONNECTS, "every connection completed");
    assert_eq!(syn_retrans, 0, "no SYN was retransmitted");
    assert_eq!(drops, 0, "AF_XDP sockets dropped nothing");
}
