//! Reachability and data-path probes: ping, byte-exact TCP transfer, scapy scripts.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::netns::enter;
use crate::{Error, Netns, Result};

/// What a successful [`ping`] saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Average round trip time (zero when ping printed none).
    pub rtt_avg: Duration,
}

/// Pings `ip` from `ns` `count` times (0.2 s apart, 1 s reply timeout each). Succeeds only
/// when every request got its reply.
pub fn ping(ns: &Netns, ip: Ipv4Addr, count: u32) -> Result<PingStats> {
    let count = count.max(1);
    let count_s = count.to_string();
    let target = ip.to_string();
    let limit = Duration::from_millis(u64::from(count) * 200 + 3000);
    let out = ns.exec_timeout(
        &[
            "ping", "-n", "-q", "-c", &count_s, "-i", "0.2", "-W", "1", &target,
        ],
        limit,
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stats = parse_ping(&text).ok_or_else(|| {
        Error::Probe(format!(
            "ping {ip} from {}: no summary ({}): {}{}",
            ns.name(),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    if stats.received < count {
        return Err(Error::Probe(format!(
            "ping {ip} from {}: {}/{} replies\n{}",
            ns.name(),
            stats.received,
            stats.transmitted,
            text.trim()
        )));
    }
    Ok(stats)
}

fn parse_ping(text: &str) -> Option<PingStats> {
    let summary = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut transmitted = None;
    let mut received = None;
    for part in summary.split(',') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        match what {
            "packets" => transmitted = n.parse().ok(),
            "received" => received = n.parse().ok(),
            _ => {}
        }
    }
    // "rtt min/avg/max/mdev = 0.035/0.047/0.061/0.010 ms"
    let rtt_avg = text
        .lines()
        .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|avg| avg.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .unwrap_or_default();
    Some(PingStats {
        transmitted: transmitted?,
        received: received?,
        rtt_avg,
    })
}

/// What a successful [`tcp_transfer`] moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransferStats {
    /// Payload bytes received and verified.
    pub bytes: u64,
    /// From connect to the receiver's confirmation.
    pub elapsed: Duration,
}

impl TransferStats {
    /// Goodput in Mbit/s.
    pub fn mbit_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        self.bytes as f64 * 8.0 / secs / 1e6
    }
}

/// Deterministic byte stream (xorshift64*), so the receiver can check every byte. The
/// stream does not depend on how it is cut into `fill` calls.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Pattern {
            state: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                let mut x = self.state;
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                self.state = x;
                self.word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

const MAGIC: u32 = 0x4650_5846; // "FPXF"
const HEADER_LEN: usize = 20; // magic u32, seed u64, length u64
const CHUNK: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
static SEED: AtomicU64 = AtomicU64::new(0);

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::io(what.to_string(), e)
}

/// Sends `bytes` of a seeded pattern over TCP from namespace `from` to a listener this
/// function opens in namespace `to` on `0.0.0.0:port`, connecting to `ip:port`. The receiver
/// checks every byte and the total and confirms back; any stall longer than 5 s fails.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    ip: Ipv4Addr,
    port: u16,
    bytes: u64,
) -> Result<TransferStats> {
    let seed = (u64::from(std::process::id()) << 32)
        ^ SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        ^ u64::from(port);
    let from_file = from.open()?;
    let to_file = to.open()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    // Set when the sender gave up, so the receiver stops waiting for a connection.
    let sender_failed = AtomicBool::new(false);
    let sender_failed = &sender_failed;
    std::thread::scope(|s| {
        let server = s.spawn(move || -> Result<u64> {
            let listener = enter(&to_file, to.name()).and_then(|()| {
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                    .map_err(|e| io_err(&format!("bind 0.0.0.0:{port} in {}", to.name()), e))
            });
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::Probe(e.to_string())));
                    return Err(e);
                }
            };
            receive(&listener, seed, bytes, sender_failed)
        });
        ready_rx
            .recv()
            .map_err(|_| Error::Probe("tcp_transfer: receiver thread died".into()))??;
        let client = s.spawn(move || -> Result<TransferStats> {
            let r = enter(&from_file, from.name()).and_then(|()| send(ip, port, seed, bytes));
            if r.is_err() {
                sender_failed.store(true, Ordering::Relaxed);
            }
            r
        });
        let sent = client
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let received = server
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        match (sent, received) {
            (Ok(stats), Ok(_)) => Ok(stats),
            (Err(e), Ok(_)) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            // The receiver only gave up because the sender did: the sender's error says why.
            (Err(c), Err(_)) if sender_failed.load(Ordering::Relaxed) => Err(c),
            (Err(c), Err(r)) => Err(Error::Probe(format!("sender: {c}; receiver: {r}"))),
        }
    })
}

fn send(ip: Ipv4Addr, port: u16, seed: u64, bytes: u64) -> Result<TransferStats> {
    let addr = SocketAddr::from((ip, port));
    let start = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| io_err(&format!("connect {addr}"), e))?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| io_err("socket timeouts", e))?;
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC.to_be_bytes());
    header[4..12].copy_from_slice(&seed.to_be_bytes());
    header[12..].copy_from_slice(&bytes.to_be_bytes());
    stream
        .write_all(&header)
        .map_err(|e| io_err(&format!("send header to {addr}"), e))?;
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        pattern.fill(&mut buf[..n]);
        stream.write_all(&buf[..n]).map_err(|e| {
            io_err(
                &format!("send to {addr} after {} of {bytes} bytes", bytes - left),
                e,
            )
        })?;
        left -= n as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| io_err("shutdown", e))?;
    let mut ack = [0u8; 8];
    stream
        .read_exact(&mut ack)
        .map_err(|e| io_err(&format!("reading confirmation from {addr}"), e))?;
    let confirmed = u64::from_be_bytes(ack);
    if confirmed != bytes {
        return Err(Error::Probe(format!(
            "receiver confirmed {confirmed} bytes, sent {bytes}"
        )));
    }
    Ok(TransferStats {
        bytes,
        elapsed: start.elapsed(),
    })
}

fn receive(
    listener: &TcpListener,
    seed: u64,
    bytes: u64,
    sender_failed: &AtomicBool,
) -> Result<u64> {
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("listener nonblocking", e))?;
    let deadline = Instant::now() + IO_TIMEOUT * 2;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sender_failed.load(Ordering::Relaxed) {
                    return Err(Error::Probe("receiver: sender gave up".into()));
                }
                if Instant::now() >= deadline {
                    return Err(Error::Probe(format!(
                        "receiver: no connection within {:?}",
                        IO_TIMEOUT * 2
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("accept", e)),
        }
    };
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| io_err("socket options", e))?;
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .map_err(|e| io_err("receiver: reading header", e))?;
    let field = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[8 - r.len()..].copy_from_slice(&header[r]);
        u64::from_be_bytes(b)
    };
    if field(0..4) != u64::from(MAGIC) || field(4..12) != seed || field(12..20) != bytes {
        return Err(Error::Probe(format!(
            "receiver: unexpected header {header:02x?} (a stray connection?)"
        )));
    }
    let mut pattern = Pattern::new(seed);
    let mut got = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match stream.read(&mut got) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(&format!("receiver: read after {total} bytes"), e)),
        };
        if total + n as u64 > bytes {
            return Err(Error::Probe(format!(
                "receiver: more than the {bytes} bytes announced"
            )));
        }
        pattern.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
            return Err(Error::Probe(format!(
                "receiver: byte {} is {:#04x}, expected {:#04x}",
                total + i as u64,
                got[i],
                want[i]
            )));
        }
        total += n as u64;
    }
    if total != bytes {
        return Err(Error::Probe(format!(
            "receiver: got {total} of {bytes} bytes"
        )));
    }
    stream
        .write_all(&total.to_be_bytes())
        .map_err(|e| io_err("receiver: confirming", e))?;
    Ok(total)
}

/// Runs a scapy script with Debian's `/usr/bin/python3` in `ns` (60 s limit); the script
/// should `from scapy.all import *` itself. Returns stdout; a non-zero exit is an error.
pub fn scapy(ns: &Netns, script: &str) -> Result<String> {
    let out = ns.exec_timeout(&["/usr/bin/python3", "-c", script], Duration::from_secs(60))?;
    crate::cmd::check(
        format!("/usr/bin/python3 -c <script> in {}", ns.name()),
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summary() {
        let text =
            "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\n--- 10.0.0.2 ping statistics ---\n\
                    3 packets transmitted, 2 received, 33.3333% packet loss, time 401ms\n\
                    rtt min/avg/max/mdev = 0.035/0.047/0.061/0.010 ms\n";
        let s = parse_ping(text).unwrap();
        assert_eq!((s.transmitted, s.received), (3, 2));
        assert_eq!(s.rtt_avg, Duration::from_micros(47));
        let lost = "1 packets transmitted, 0 received, 100% packet loss, time 0ms\n";
        let s = parse_ping(lost).unwrap();
        assert_eq!(
            (s.transmitted, s.received, s.rtt_avg),
            (1, 0, Duration::ZERO)
        );
        assert!(parse_ping("ping: connect: Network is unreachable").is_none());
    }

    #[test]
    fn pattern_is_seeded_and_chunking_independent() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(7).fill(&mut whole);
        let mut parts = vec![0u8; 1000];
        let mut p = Pattern::new(7);
        // Odd cuts, like TCP reads.
        for c in parts.chunks_mut(13) {
            p.fill(c);
        }
        assert_eq!(whole, parts);
        let mut other = vec![0u8; 1000];
        Pattern::new(8).fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn transfer_stats_rate() {
        let s = TransferStats {
            bytes: 1_000_000,
            elapsed: Duration::from_secs(1),
        };
        assert!((s.mbit_per_s() - 8.0).abs() < 1e-9);
    }
}

/// Seconds since the Unix epoch (the clock `ping -D` prints).
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A `ping -D -i 0.1` running in the background from a namespace: one ICMP flow (one echo
/// id) for as long as it runs, e.g. across an agent restart. [`ContinuousPing::finish`]
/// stops it (SIGINT) and returns when each reply arrived.
#[derive(Debug)]
pub struct ContinuousPing {
    child: crate::ChildGuard,
    log: std::path::PathBuf,
}

impl ContinuousPing {
    /// Starts pinging `ip` from `ns` every 100 ms (for at most 120 s); output goes to `log`.
    pub fn start(ns: &Netns, ip: Ipv4Addr, log: &std::path::Path) -> Result<ContinuousPing> {
        let ip = ip.to_string();
        let child = ns.spawn_logged(&["ping", "-D", "-n", "-i", "0.1", "-w", "120", &ip], log)?;
        Ok(ContinuousPing {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Stops the ping; the times (seconds since the epoch) its replies arrived.
    pub fn finish(&self) -> Vec<f64> {
        self.child
            .stop_with(nix::sys::signal::Signal::SIGINT, Duration::from_secs(2));
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect()
    }

    /// The ping's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
