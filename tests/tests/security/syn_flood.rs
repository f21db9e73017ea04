//! Connection tracking under a SYN flood (issue 14, item 4).
//!
//! One node with `conntrackMax: 1000` and `net.ipv4.ip_forward=1`, a NodePort service whose
//! backend (pod0) echoes lines. From the router: one established connection to the NodePort,
//! then about two seconds of SYNs to the NodePort from random sources (a raw socket in the
//! router namespace, ~15,000 SYNs/s; the backend answers each with a SYN-ACK that nobody
//! acknowledges). Required: the established connection keeps exchanging bytes during the
//! flood, and a new connection to the NodePort succeeds within 5 s of the flood's end.
//!
//! Before the fix every flood session became "established" (6-hour timeout) as soon as the
//! backend's SYN-ACK went out, the table filled within the first 1,000 SYNs, and every new
//! connection was refused (`conntrack-full`) for hours: the second assertion fails. Now the
//! sessions stay `syn-recv` (not assured) and a full table evicts them for new flows (early
//! drop), while established connections are never evicted.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, require_root, Netns};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};

const CONNTRACK_MAX: usize = 1000;
const NODE_PORT: u16 = 30180;
const TARGET_PORT: u16 = 8080;
/// SYNs per second and for how long.
const FLOOD_RATE: f64 = 15_000.0;
const FLOOD_FOR: Duration = Duration::from_secs(2);
/// A new connection must succeed within this time after the flood's end.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);
/// Flood sources: random addresses in 100.64.0.0/10 (nothing routes them back).
const FLOOD_NET: u32 = 0x6440_0000;
const FLOOD_MASK: u32 = 0x003f_ffff;

/// An echo server (every line read is written back) on a thread inside `ns`; stops on drop.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(ns: &Netns, port: u16) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, flag) = (ns.path().to_path_buf(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                            let Ok(mut w) = s.try_clone() else {
                                return;
                            };
                            for line in BufReader::new(s).lines() {
                                let Ok(line) = line else { break };
                                if w.write_all(format!("{line}\n").as_bytes()).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("echo server ready");
        Echo {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One line out, the same line back.
fn echo(s: &mut TcpStream, r: &mut BufReader<TcpStream>, line: &str) -> std::io::Result<()> {
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut got = String::new();
    r.read_line(&mut got)?;
    if got.trim_end() != line {
        return Err(std::io::Error::other(format!("sent {line:?}, got {got:?}")));
    }
    Ok(())
}

/// Connect to `dst` (within `timeout`) and exchange one line.
fn connect_and_echo(dst: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&dst.into(), timeout)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut r = BufReader::new(s.try_clone()?);
    echo(&mut s, &mut r, "hello")?;
    Ok(s)
}

/// The 16-bit one's complement sum of `data`, folded.
fn csum(mut sum: u32, data: &[u8]) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 + TCP SYN (no options) from `src:sport` to `dst:dport`, checksums filled.
fn syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip = csum(0, &p[..20]);
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x02;
    p[34..36].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let mut sum = 0u32;
    for c in pseudo.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    let tcp = csum(sum, &p[20..40]);
    p[36..38].copy_from_slice(&tcp.to_be_bytes());
    p
}

/// Send SYNs to `dst:port` from random sources at `rate` per second for `dur`, from the
/// calling thread's namespace (raw socket, `IPPROTO_RAW`). Returns the number sent.
fn flood(dst: Ipv4Addr, port: u16, rate: f64, dur: Duration) -> u64 {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Raw,
    )
    .expect("raw socket");
    let to = socket::SockaddrIn::from(SocketAddrV4::new(dst, 0));
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id());
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= dur {
            return sent;
        }
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while sent < due {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let src = Ipv4Addr::from(FLOOD_NET | (x as u32 & FLOOD_MASK));
            let sport = 1024 + ((x >> 32) as u16 % 60000);
            let p = syn(src, dst, sport, port, (x >> 16) as u32);
            match socket::sendto(fd.as_raw_fd(), &p, &to, MsgFlags::empty()) {
                Ok(_) => sent += 1,
                // A full socket buffer: let the stack drain it.
                Err(_) => {
                    std::thread::sleep(Duration::from_micros(200));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn error_count(agent: &AgentGuard, node: &str, reason: &str) -> u64 {
    let v = agent
        .ctl_json(&["show", "errors", "--all"])
        .expect("show errors");
    v.as_array()
        .expect("errors array")
        .iter()
        .find(|e| e["node"] == node && e["reason"] == reason)
        .unwrap_or_else(|| panic!("no error counter {node}: {reason} in {v}"))["count"]
        .as_u64()
        .expect("count")
}

fn spec(topo: &Topology) -> String {
    let backend = topo.pods[0].ip;
    let mut y = topo.spec_yaml();
    y.push_str(&format!(
        "serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\n  conntrackMax: {CONNTRACK_MAX}\n\
services:\n  - metadata: {{ name: web, namespace: default }}\n    spec:\n      type: NodePort\n      clusterIP: 10.96.0.80\n      ports: [ {{ name: http, protocol: TCP, port: 80, targetPort: {TARGET_PORT}, nodePort: {NODE_PORT} }} ]\n\
endpointSlices:\n  - metadata: {{ name: web-a, namespace: default, labels: {{ kubernetes.io/service-name: web }} }}\n    addressType: IPv4\n    ports: [ {{ name: http, protocol: TCP, port: {TARGET_PORT} }} ]\n    endpoints:\n      - addresses: [{backend}]\n        conditions: {{ ready: true, serving: true, terminating: false }}\n        nodeName: node-1\n        targetRef: {{ kind: Pod, namespace: default, name: pod0 }}\n"
    ));
    y
}

#[test]
fn syn_flood_keeps_established_and_recovers() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(1).expect("topology");
    topo.node
        .set_sysctl("net.ipv4.ip_forward", "1")
        .expect("ip_forward");
    topo.write_spec(&spec(&topo)).expect("spec");
    let agent = topo.start_agent(&bin_dir()).expect("agent start");
    let _echo = Echo::start(&topo.pods[0].ns, TARGET_PORT);
    let np = SocketAddrV4::new(Topology::NODE_IP, NODE_PORT);

    // The established connection (the pod's interface may take a moment to be plumbed).
    let held = topo
        .router
        .run(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match connect_and_echo(np, Duration::from_secs(1)) {
                    Ok(s) => return s,
                    Err(e) if Instant::now() >= deadline => panic!("NodePort: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
        .expect("run");

    // It talks every 50 ms during the flood (and a little around it).
    let stop = Arc::new(AtomicBool::new(false));
    let talker = {
        let stop = stop.clone();
        let mut s = held.try_clone().expect("clone");
        let mut r = BufReader::new(held.try_clone().expect("clone"));
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut worst) = (0u32, Vec::new(), Duration::ZERO);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = Instant::now();
                match echo(&mut s, &mut r, &format!("ping {n}")) {
                    Ok(()) => {
                        ok += 1;
                        worst = worst.max(t.elapsed());
                    }
                    Err(e) => {
                        failed.push(format!("ping {n}: {e}"));
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, failed, worst)
        })
    };
    // New connections tried during the flood (one at a time, informational).
    let during = {
        let stop = stop.clone();
        let router = topo.router.path().to_path_buf();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&router).expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let (mut tried, mut ok) = (0u32, 0u32);
            std::thread::sleep(Duration::from_millis(500));
            while !stop.load(Ordering::Relaxed) {
                tried += 1;
                if connect_and_echo(np, Duration::from_secs(1)).is_ok() {
                    ok += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (tried, ok)
        })
    };

    let flood_start = Instant::now();
    let sent = topo
        .router
        .run(|| flood(Topology::NODE_IP, NODE_PORT, FLOOD_RATE, FLOOD_FOR))
        .expect("flood");
    let flood_end = Instant::now();
    let flood_secs = (flood_end - flood_start).as_secs_f64();
    let table = agent.ctl_json(&["show", "sessions"]).expect("sessions");

    // A new connection after the flood: time until the first one succeeds.
    let recovered = topo
        .router
        .run(move || {
            while flood_end.elapsed() < Duration::from_secs(15) {
                if connect_and_echo(np, Duration::from_secs(2)).is_ok() {
                    return Some(flood_end.elapsed());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            None
        })
        .expect("run");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (pings, ping_failures, worst) = talker.join().expect("talker");
    let (tried, connected) = during.join().expect("during");
    let early = error_count(&agent, "ip4-nat", "conntrack-early-drop");
    let full = error_count(&agent, "ip4-nat", "conntrack-full");
    let total = table["total"].as_u64().unwrap_or(0);
    let states = {
        let mut m = std::collections::BTreeMap::<String, u32>::new();
        for s in table["sessions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            *m.entry(s["state"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        m
    };

    println!(
        "SYN flood figures: {sent} SYNs in {flood_secs:.2} s ({:.0}/s) from random sources to NodePort {NODE_PORT}, conntrackMax {CONNTRACK_MAX}",
        sent as f64 / flood_secs
    );
    println!(
        "  sessions in the table at the flood's end: {total} (by state {states:?}); early drops {early}; refused (conntrack-full) {full}"
    );
    println!(
        "  established connection: {pings} echoes during the run, {} failed, slowest {:.1} ms",
        ping_failures.len(),
        worst.as_secs_f64() * 1e3
    );
    println!("  new connections during the flood: {connected} of {tried} succeeded");
    println!(
        "  first new connection after the flood's end: {}",
        recovered.map_or("none within 15 s".to_string(), |d| format!(
            "{:.0} ms",
            d.as_secs_f64() * 1e3
        ))
    );

    assert!(
        sent >= 15_000,
        "the flood must be tens of thousands of SYNs ({sent})"
    );
    assert!(
        ping_failures.is_empty() && pings >= 20,
        "the established connection must keep working: {pings} echoes, failures {ping_failures:?}"
    );
    let recovered = recovered.expect("no new connection within 15 s of the flood's end");
    assert!(
        recovered <= RECOVERY_BOUND,
        "new connection only after {recovered:?}"
    );
    assert!(
        total as usize <= CONNTRACK_MAX,
        "table above its limit: {table}"
    );
    assert!(
        early > 0,
        "the table filled: it must have made room by early drop"
    );
    assert!(agent.is_running(), "agent survived");
    drop(held);
}
