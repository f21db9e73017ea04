//! `cargo xtask bench bgp`: GoBGP injects N IPv4 prefixes (default 100,000) into
//! (a) the ferroplane agent: time until all are in the speaker's Loc-RIB and in the
//! engine FIB; (b) BIRD 2 in the same place, same run: time until all are in its RIB
//! and in its kernel table. Prints both and the ratios.
//!
//! Memory is measured the same way on both sides: the growth of the daemon's RSS from
//! its established, idle session to the steady state with the whole table in its RIB,
//! its forwarding table and the node's kernel table (the agent installs them too,
//! `kernelRoutes: true`), once the RSS has not moved for 2 s. The absolute RSS and the
//! bytes per prefix are printed too.
//!
//! Topology: the single-node topology (router ns 192.168.100.1 runs gobgpd, AS 65002;
//! node ns 192.168.100.2 runs the agent or BIRD, AS 64512). The table is injected with
//! `gobgp mrt inject global` from an MRT TABLE_DUMP_V2 file (RFC 6396) this module writes.
//!
//! With `FERROPLANE_BIN_DIR` set, the binaries there are measured as they are (no build):
//! a copy of an earlier build gives the before/after figures of a change in one tree.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferroplane_e2e::{bin_dir, ChildGuard, Netns, TempDir, Topology};
use serde_json::Value;

use crate::load::build_binaries;
use crate::progress::{require_root, Progress};

const GOBGP_AS: u32 = 65002;
const NODE_AS: u32 = 64512;
const ROUTER: &str = "192.168.100.1";
const NODE: &str = "192.168.100.2";
const TIMEOUT: Duration = Duration::from_secs(120);

/// One side's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    rib_secs: f64,
    fib_secs: f64,
    /// RSS growth from the idle session to the steady state with the table.
    rss_mib: f64,
    /// RSS at that steady state.
    rss_total_mib: f64,
    prefixes: usize,
}

impl Figures {
    fn bytes_per_prefix(&self) -> f64 {
        self.rss_mib * 1048576.0 / self.prefixes.max(1) as f64
    }
}

/// `cargo xtask bench bgp`.
pub fn run(prefixes: usize) -> Result<()> {
    require_root("bench bgp")?;
    let mut p = Progress::new(5);
    p.step("system packages", crate::deps::ensure)?;
    if let Some(dir) = std::env::var_os("FERROPLANE_BIN_DIR") {
        // Binaries given (e.g. a copy of a build to compare against): not rebuilt.
        p.step("release binaries given by FERROPLANE_BIN_DIR", || {
            println!("using {}", std::path::Path::new(&dir).display());
            Ok(())
        })?;
    } else {
        p.step("building release binaries", build_binaries)?;
    }
    let dir = TempDir::new("bench-bgp")?;
    let mrt = dir.path().join("table.mrt");
    p.step(
        &format!("writing an MRT table of {prefixes} (+10 %) prefixes"),
        // GoBGP's `mrt inject` drops some records: write 10 % more, count what it took.
        || write_mrt(&mrt, prefixes + prefixes / 10),
    )?;
    let ours = p.step("ferroplane agent receiving the table", || ferroplane(&mrt))?;
    let bird = p.step("BIRD 2 receiving the same table (baseline)", || bird(&mrt))?;
    println!(
        "\nBGP: {} (ferroplane run) / {} (BIRD run) IPv4 prefixes injected by GoBGP (mrt inject), one eBGP session",
        ours.prefixes, bird.prefixes
    );
    println!(
        "{:<28} {:>8} {:>8} {:>11} {:>11} {:>9}",
        "receiver", "RIB (s)", "FIB (s)", "RSS+ (MiB)", "RSS (MiB)", "B/prefix"
    );
    for (name, f) in [
        ("ferroplane (Loc-RIB/engine)", &ours),
        ("BIRD 2 (RIB/kernel)", &bird),
    ] {
        println!(
            "{:<28} {:>8.2} {:>8.2} {:>11.1} {:>11.1} {:>9.0}",
            name,
            f.rib_secs,
            f.fib_secs,
            f.rss_mib,
            f.rss_total_mib,
            f.bytes_per_prefix()
        );
    }
    println!(
        "ratio ferroplane/BIRD: RIB {:.2}x, FIB {:.2}x, RSS {:.2}x (lower is better)",
        ours.rib_secs / bird.rib_secs.max(1e-9),
        ours.fib_secs / bird.fib_secs.max(1e-9),
        ours.rss_mib / bird.rss_mib.max(1e-9)
    );
    println!(
        "(RSS+: growth of each daemon's RSS from its idle established session to the steady state with the \
         table in its RIB, forwarding table and the kernel; the agent's UMEM and engine were there before)"
    );
    Ok(())
}

/// MRT TABLE_DUMP_V2 (RFC 6396 §4.3): one PEER_INDEX_TABLE then one RIB_IPV4_UNICAST
/// record per prefix, path attributes ORIGIN IGP, AS_PATH 65002, NEXT_HOP router.
fn write_mrt(path: &Path, n: usize) -> Result<()> {
    let mut out = Vec::with_capacity(n * 48);
    let rec = |out: &mut Vec<u8>, subtype: u16, body: &[u8]| {
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&13u16.to_be_bytes());
        out.extend_from_slice(&subtype.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    };
    let router: [u8; 4] = [192, 168, 100, 1];
    let mut pit = Vec::new();
    pit.extend_from_slice(&router);
    pit.extend_from_slice(&0u16.to_be_bytes());
    pit.extend_from_slice(&1u16.to_be_bytes());
    pit.push(0b10); // IPv4 peer, 4-octet AS
    pit.extend_from_slice(&router);
    pit.extend_from_slice(&router);
    pit.extend_from_slice(&GOBGP_AS.to_be_bytes());
    rec(&mut out, 1, &pit);
    let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 6, 2, 1];
    attrs.extend_from_slice(&GOBGP_AS.to_be_bytes());
    attrs.extend_from_slice(&[0x40, 3, 4]);
    attrs.extend_from_slice(&router);
    for i in 0..n {
        // 100.0.0.0/24, 100.0.1.0/24, ... (n <= 2^16 * 64 keeps it inside 100.0.0.0/2).
        let a = (100u32 << 24) + ((i as u32) << 8);
        let mut b = Vec::with_capacity(40);
        b.extend_from_slice(&(i as u32).to_be_bytes());
        b.push(24);
        b.extend_from_slice(&a.to_be_bytes()[..3]);
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        b.extend_from_slice(&attrs);
        rec(&mut out, 2, &b);
    }
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&out).context("writing the MRT file")?;
    Ok(())
}

fn gobgpd(topo: &Topology, api: u16) -> Result<ChildGuard> {
    let toml = format!(
        "[global.config]\n  as = {GOBGP_AS}\n  router-id = \"{ROUTER}\"\n  local-address-list = [\"{ROUTER}\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{NODE}\"\n    peer-as = {NODE_AS}\n\
         [neighbors.timers.config]\n    hold-time = 90\n    connect-retry = 1\n\
         [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"ipv4-unicast\"\n"
    );
    let path = topo.dir().join("gobgp.toml");
    std::fs::write(&path, toml)?;
    let p = path.display().to_string();
    let hosts = format!("127.0.0.1:{api}");
    Ok(topo.router.spawn_logged(
        &[
            "gobgpd",
            "-f",
            &p,
            "-p",
            "--api-hosts",
            &hosts,
            "--pprof-disable",
        ],
        &topo.dir().join("gobgpd.log"),
    )?)
}

fn wait(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let t = Instant::now();
    while !f()? {
        if t.elapsed() > TIMEOUT {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn gobgp_established(router: &Netns, api: u16) -> bool {
    router
        .exec(&["gobgp", "-p", &api.to_string(), "neighbor", NODE, "-j"])
        .ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .is_some_and(|v| v["state"]["session_state"] == 6)
}

/// GoBGP's IPv4 destination count.
fn gobgp_count(router: &Netns, api: u16) -> usize {
    router
        .exec(&["gobgp", "-p", &api.to_string(), "global", "rib", "summary"])
        .ok()
        .and_then(|o| {
            let t = String::from_utf8_lossy(&o.stdout).into_owned();
            let i = t.find("Destination: ")? + "Destination: ".len();
            t[i..].split(',').next()?.trim().parse().ok()
        })
        .unwrap_or(0)
}

/// What GoBGP ends up holding after `mrt inject` (it does not always take every
/// record of the file): poll until the count is stable for 2 s.
fn injected(router: &Netns, api: u16, before: usize) -> Result<usize> {
    let (mut last, mut since) = (usize::MAX, Instant::now());
    let t = Instant::now();
    loop {
        let c = gobgp_count(router, api);
        if c != last {
            (last, since) = (c, Instant::now());
        } else if since.elapsed() > Duration::from_secs(2) && c > before {
            return Ok(c - before);
        }
        if t.elapsed() > TIMEOUT {
            bail!("GoBGP's table never settled (last count {last})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn inject(router: &Netns, api: u16, mrt: &Path) -> Result<Instant> {
    let t = Instant::now();
    router.exec_ok(&[
        "gobgp",
        "-p",
        &api.to_string(),
        "mrt",
        "inject",
        "global",
        &mrt.display().to_string(),
    ])?;
    Ok(t)
}

/// The RSS once it has settled: sampled every 250 ms until it moved less than 0.25 MiB
/// over 2 s (at most 20 s).
fn settled_rss_mib(pid: u32) -> f64 {
    let t = Instant::now();
    let mut window: Vec<f64> = Vec::new();
    loop {
        window.push(rss_mib(pid));
        if window.len() > 8 {
            window.remove(0);
        }
        let (lo, hi) = window
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        if (window.len() == 8 && hi - lo < 0.25) || t.elapsed() > Duration::from_secs(20) {
            return *window.last().unwrap_or(&0.0);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Routes of protocol `proto` in the node namespace's main table.
fn kernel_routes(node: &Netns, proto: &str) -> Result<usize> {
    let o = node.exec(&["ip", "-4", "route", "show", "proto", proto])?;
    Ok(o.stdout.iter().filter(|b| **b == b'\n').count())
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn ferroplane(mrt: &Path) -> Result<Figures> {
    let topo = Topology::single_node(0)?;
    topo.router.ip(&["route", "del", Topology::POD_CIDR])?;
    let yaml = topo.spec_yaml()
        + &format!("bgp:\n  localAS: {NODE_AS}\n  connectRetry: 1\n  kernelRoutes: true\n  peers:\n    - address: {ROUTER}\n      as: {GOBGP_AS}\n");
    topo.write_spec(&yaml)?;
    let api = 51000 + (std::process::id() % 1000) as u16;
    let _g = gobgpd(&topo, api)?;
    let agent = topo.start_agent(&bin_dir())?;
    wait("GoBGP session with the agent", || {
        Ok(gobgp_established(&topo.router, api))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = settled_rss_mib(agent.pid());
    // GoBGP's table holds our pod CIDR too: count only what the injection adds.
    wait("our route at GoBGP", || {
        Ok(gobgp_count(&topo.router, api) >= 1)
    })?;
    let before = gobgp_count(&topo.router, api);
    let t0 = inject(&topo.router, api, mrt)?;
    let n = injected(&topo.router, api, before)?;
    let loc_rib = wait("Loc-RIB", || {
        Ok(agent.ctl_json(&["show", "bgp"])?["loc_rib"]
            .as_u64()
            .unwrap_or(0) as usize
            > n)
    });
    if let Err(e) = loc_rib {
        let show = agent.ctl(&["show", "bgp"]).unwrap_or_default();
        let gob = topo
            .router
            .exec(&["gobgp", "-p", &api.to_string(), "global", "rib", "summary"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        bail!(
            "{e}\n{show}\nGoBGP: {gob}\nagent log:\n{}",
            agent.log_tail(30)
        );
    }
    let rib = t0.elapsed().as_secs_f64();
    // Polled through `show bgp` (a count) rather than `show routes` (a dump of the whole
    // FIB, 100k routes as JSON every 100 ms would weigh on the agent's CPU and memory).
    wait("engine FIB", || {
        Ok(agent.ctl_json(&["show", "bgp"])?["fib_routes"]
            .as_u64()
            .unwrap_or(0) as usize
            >= n)
    })?;
    let fib = t0.elapsed().as_secs_f64();
    // Memory at the same point as BIRD's: the kernel table complete too.
    wait("agent's kernel routes", || {
        Ok(kernel_routes(&topo.node, "157")? >= n)
    })?;
    let rss = settled_rss_mib(agent.pid());
    Ok(Figures {
        rib_secs: rib,
        fib_secs: fib,
        rss_mib: rss - rss0,
        rss_total_mib: rss,
        prefixes: n,
    })
}

fn bird(mrt: &Path) -> Result<Figures> {
    let topo = Topology::single_node(0)?;
    let api = 52000 + (std::process::id() % 1000) as u16;
    let conf = format!(
        "router id {NODE};\nprotocol device {{ }}\nprotocol kernel k4 {{ ipv4 {{ import none; export all; }}; learn no; }}\n\
         protocol bgp gobgp {{ local {NODE} as {NODE_AS}; neighbor {ROUTER} as {GOBGP_AS}; connect retry time 1; connect delay time 0;\n  ipv4 {{ import all; export none; }}; }}\n"
    );
    let cfg = topo.dir().join("bird.conf");
    std::fs::write(&cfg, conf)?;
    let ctl = topo.dir().join("bird.ctl");
    let (c, s) = (cfg.display().to_string(), ctl.display().to_string());
    let pidf = topo.dir().join("bird.pid").display().to_string();
    let bird = topo.node.spawn_logged(
        &["bird", "-f", "-c", &c, "-s", &s, "-P", &pidf],
        &topo.dir().join("bird.log"),
    )?;
    let _g = gobgpd(&topo, api)?;
    wait("GoBGP session with BIRD", || {
        Ok(gobgp_established(&topo.router, api))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = settled_rss_mib(bird.pid());
    let count = || -> Result<usize> {
        let o = std::process::Command::new("birdc")
            .args(["-s", &s, "show", "route", "count"])
            .output()?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        Ok(text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .find(|w| w[1] == "of")
            .and_then(|w| w[0].parse().ok())
            .unwrap_or(0))
    };
    let t0 = inject(&topo.router, api, mrt)?;
    let n = injected(&topo.router, api, 0)?;
    wait("BIRD RIB", || Ok(count()? >= n))?;
    let rib = t0.elapsed().as_secs_f64();
    wait("BIRD kernel table", || {
        Ok(kernel_routes(&topo.node, "bird")? >= n)
    })?;
    let fib = t0.elapsed().as_secs_f64();
    let rss = settled_rss_mib(bird.pid());
    Ok(Figures {
        rib_secs: rib,
        fib_secs: fib,
        rss_mib: rss - rss0,
        rss_total_mib: rss,
        prefixes: n,
    })
}
