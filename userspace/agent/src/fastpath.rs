//! The XDP fast path's control side: the flow-cache writer.
//!
//! The engine reports the established flows it forwards (and the TCP FIN/RST that close
//! them, [`ferroplane_engine::flow_export`]); this thread writes them into the `flow4` map
//! as soon as they arrive, so XDP forwards the flows' following packets itself (steady
//! state, `--fast-path on`) and while the agent restarts. It also keeps the cache honest:
//!
//! - **closes**: a FIN or RST removes the entries of both directions at once; the rest of
//!   the closing exchange goes through the engine;
//! - **liveness**: every [`SYNC`] it reads the entries' last-seen times and packet counts
//!   (XDP updates them) and refreshes the engine's sessions ([`Conntrack::refresh`]), so no
//!   session expires while XDP forwards its packets; translated entries whose session is
//!   gone (expired, closed, a new agent's empty table) and entries idle for
//!   `FP_FLOW4_IDLE_NS` are removed;
//! - **changes**: when the control plane publishes new tables, every entry is checked
//!   against them (its interfaces still there, the route of its destination still leading
//!   out of its interface to its MAC, no removed service backend on either side); one that
//!   fails is removed at once. Deleting a pod, a backend or a route so takes its flows out
//!   of the cache; the engine decides their next packets. Reports are checked the same way
//!   before they are written (a report may have been taken with the previous tables);
//! - **policy**: when the NetworkPolicy ACLs of a pod change, the entries of its
//!   untranslated flows are removed: the engine decides their next packets as it would
//!   without the cache (connections it remembers as allowed keep working and come back to
//!   the cache, the others follow the new policy); translated flows are established
//!   sessions, which policy never cuts. The engine's memory of allowed untranslated flows
//!   (`ip4-policy`, idle timeout) only sees the packets the engine forwards, so an active
//!   untranslated entry the engine has not reported for [`POLICY_REFRESH`] is removed: its
//!   next packet goes through the engine, which refreshes that memory and reports the flow
//!   again (one packet per flow and [`POLICY_REFRESH`]). A connection XDP forwards is thus
//!   remembered as long as it is active, as without the cache;
//! - **trace**: while `ferroctl trace add` has packets to trace, or a `ferroctl capture`
//!   runs, the `config` map tells XDP to send every packet to the engine, so the trace (the
//!   capture) sees every packet of the flows it matches (set within [`TICK`] of the
//!   command).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroplane_bpf::{Dataplane, FpConfig, FpFlow4, FpFlow4Key};
use ferroplane_engine::flow_export::FlowExport;
use ferroplane_engine::{IfKind, Shared, Snapshot, WorkerControl};
use ferroplane_tables::conntrack::FlowKey;
use ferroplane_tables::fib::AdjKind;
use ferroplane_tables::policy::PolicyTables;
use ferroplane_tables::Conntrack;
use tracing::{info, warn};

/// How often the writer wakes when no report arrives (trace switch, table changes).
pub const TICK: Duration = Duration::from_millis(20);
/// How often the entries' last-seen times reach the engine's sessions.
pub const SYNC: Duration = Duration::from_secs(2);
/// Entries idle for longer are removed (XDP ignores them already).
const IDLE_NS: u64 = ferroplane_bpf::FLOW4_IDLE_NS;
/// How long an active untranslated flow stays in the cache without an engine report: then
/// one of its packets goes through the engine (which refreshes its NetworkPolicy flow
/// memory, 60 s idle for UDP, 10 min for TCP). Well under the shortest of those timeouts.
pub const POLICY_REFRESH: Duration = Duration::from_secs(20);

/// What the writer did, for `show xdp` and metrics.
#[derive(Debug, Default)]
pub struct FastPathStats {
    /// Entries written from the engine's reports.
    pub written: AtomicU64,
    /// Entries removed because their connection closed (FIN/RST).
    pub closed: AtomicU64,
    /// Entries removed or refused because a pod, a route or a backend changed.
    pub invalidated: AtomicU64,
    /// Entries removed because idle, or because their session is gone from the engine.
    pub expired: AtomicU64,
    /// Engine sessions refreshed from XDP's last-seen times.
    pub refreshed: AtomicU64,
    /// Untranslated entries handed back to the engine after [`POLICY_REFRESH`].
    pub handed_back: AtomicU64,
}

/// The flow-cache writer thread.
pub struct FastPath {
    on: bool,
    export: bool,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<FastPathStats>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("on", &self.on)
            .field("export", &self.export)
            .finish_non_exhaustive()
    }
}

impl FastPath {
    /// Starts the writer: `on` turns the steady-state fast path on (the XDP programs forward
    /// established flows themselves), `keep` keeps the cache for restarts (the programs
    /// outlive the agent). With neither, nothing is exported and no thread runs.
    pub fn start(
        bpf: Arc<Mutex<Dataplane>>,
        engine: &mut crate::engine::Engine,
        on: bool,
        keep: bool,
    ) -> FastPath {
        let stats = Arc::new(FastPathStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let export = on || keep;
        let mut writer = Writer {
            bpf,
            shared: engine.shared.clone(),
            controls: engine.controls(),
            sessions: engine.all_sessions(),
            on,
            config: None,
            version: None,
            gone_backends: HashSet::new(),
            policy: None,
            backends: HashSet::new(),
            counted: HashMap::new(),
            known: HashSet::new(),
            ours: HashSet::new(),
            reported: HashMap::new(),
            last_sync: Instant::now(),
            last_sync_ns: 0,
            stats: stats.clone(),
        };
        writer.set_config(false);
        let thread = match (export, engine.take_flow_reports()) {
            (true, Some(rx)) => {
                let s = stop.clone();
                std::thread::Builder::new()
                    .name("fp-flowcache".into())
                    .spawn(move || writer.run(&rx, &s))
                    .map_err(|e| warn!("flow cache writer thread: {e}"))
                    .ok()
            }
            _ => None,
        };
        info!(fast_path = on, keep, "XDP flow cache");
        FastPath {
            on,
            export,
            stop,
            thread,
            stats,
        }
    }

    /// Whether the engine must report forwarded flows (the snapshot's `flow_export`).
    pub fn exports(&self) -> bool {
        self.export
    }

    /// Whether the steady-state fast path is on.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// What the writer did so far.
    pub fn stats(&self) -> Arc<FastPathStats> {
        self.stats.clone()
    }

    /// Writes the reports still queued and stops the writer.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Writer {
    bpf: Arc<Mutex<Dataplane>>,
    shared: Arc<Shared>,
    /// Every engine worker's knobs (a trace or capture on any bypasses the cache).
    controls: Vec<Arc<WorkerControl>>,
    /// Every engine worker's session table.
    sessions: Vec<Arc<Mutex<Conntrack>>>,
    on: bool,
    /// The `config` flags last written.
    config: Option<u32>,
    /// Snapshot version the entries were last checked against.
    version: Option<u64>,
    /// Service backends (address, port) of the last snapshot.
    backends: HashSet<(Ipv4Addr, u16)>,
    /// Backends removed and not back since: entries touching them are refused.
    gone_backends: HashSet<(Ipv4Addr, u16)>,
    /// Policy tables of the last snapshot.
    policy: Option<Arc<PolicyTables>>,
    /// Packets of each entry already credited to the engine's session.
    counted: HashMap<FpFlow4Key, u64>,
    /// Kernel ifindexes of the pod veths and uplink seen in any snapshot.
    known: HashSet<u32>,
    /// Entries this writer wrote (a previous agent's have no session in this engine).
    ours: HashSet<FpFlow4Key>,
    /// When the engine last reported each entry this writer wrote (it forwarded a packet).
    reported: HashMap<FpFlow4Key, Instant>,
    last_sync: Instant,
    last_sync_ns: u64,
    stats: Arc<FastPathStats>,
}

fn key_of(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> FpFlow4Key {
    FpFlow4Key {
        saddr: src.octets(),
        daddr: dst.octets(),
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
        proto,
        pad: [0; 3],
    }
}

fn flow_key(k: &FpFlow4Key) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::from(k.saddr),
        dst: Ipv4Addr::from(k.daddr),
        sport: u16::from_be_bytes(k.sport),
        dport: u16::from_be_bytes(k.dport),
        proto: k.proto,
    }
}

/// The MACs the engine's `ethernet-input` accepts on interface `ifindex` of `snap`, as the
/// `flow4` fields (`in_dmac`, `in_smac`, flags): the interface's own as destination and,
/// on a pod interface, the pod's own as source ([`FpFlow4::SRC_MAC`]). `None` when the
/// interface is not a pod veth or uplink of `snap`, or a pod interface without its pod
/// (the engine takes nothing there).
fn arrival_macs(snap: &Snapshot, ifindex: u32) -> Option<([u8; 6], [u8; 6], u32)> {
    let iface = snap.ifaces.iter().find(|i| i.ifindex == ifindex)?;
    match iface.kind {
        IfKind::Uplink => Some((iface.mac, [0; 6], 0)),
        IfKind::Pod => Some((iface.mac, iface.pod.as_ref()?.mac, FpFlow4::SRC_MAC)),
        _ => None,
    }
}

/// The `flow4` entry of a report, stamped `now_ns`, with the MACs its frames arrive with
/// on its ingress interface in `snap` ([`arrival_macs`]); `None` if that interface is not
/// one the fast path serves.
pub fn entry_of(f: &FlowExport, snap: &Snapshot, now_ns: u64) -> Option<(FpFlow4Key, FpFlow4)> {
    let (in_dmac, in_smac, mac_flags) = arrival_macs(snap, f.in_ifindex)?;
    let key = key_of(f.src, f.dst, f.sport, f.dport, f.proto);
    let (src, dst, sport, dport) = f.out_tuple();
    let value = FpFlow4 {
        ifindex: f.ifindex,
        dmac: f.dst_mac,
        smac: f.src_mac,
        saddr: src.octets(),
        daddr: dst.octets(),
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
        flags: if f.nat.is_some() { FpFlow4::NAT } else { 0 } | mac_flags,
        in_ifindex: f.in_ifindex,
        mtu: u32::from(f.mtu),
        in_dmac,
        in_smac,
        pad: 0,
        seen_ns: now_ns,
        packets: 0,
        bytes: 0,
    };
    Some((key, value))
}

/// Whether the NetworkPolicy ACLs of pod `ip` differ between `old` and `new` (ACLs are
/// interned by content: an unchanged policy keeps its `Arc`).
fn acls_changed(old: &PolicyTables, new: &PolicyTables, ip: Ipv4Addr) -> bool {
    let same = |a: &Option<Arc<_>>, b: &Option<Arc<_>>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    match (old.pod(ip), new.pod(ip)) {
        (None, None) => false,
        (Some(o), Some(n)) => !(same(&o.ingress, &n.ingress) && same(&o.egress, &n.egress)),
        _ => true,
    }
}

/// Service backends (address, target port) of a snapshot.
fn backends_of(snap: &Snapshot) -> HashSet<(Ipv4Addr, u16)> {
    snap.services
        .ports()
        .iter()
        .flat_map(|p| p.def.backends.iter().map(|b| (b.addr, b.port)))
        .collect()
}

/// Whether `snap` still forwards the flow of entry (`k`, `v`) the way it says: neither
/// side is a removed backend; its input and output interfaces are there (an interface in
/// `known`, seen earlier, that is missing went away); and when both are, its arrival MACs
/// are still the input interface's ([`arrival_macs`]: a pod's MAC, the interface's own) and
/// the route of its (translated) destination leads out of `v.ifindex` to `v.dmac`. An entry whose interfaces
/// this agent has not seen (yet) is a previous agent's, left for the restart story (XDP
/// replays it until the pods are plumbed again, then it is checked like any other).
fn still_valid(
    snap: &Snapshot,
    known: &HashSet<u32>,
    gone: &HashSet<(Ipv4Addr, u16)>,
    k: &FpFlow4Key,
    v: &FpFlow4,
) -> bool {
    let touches =
        |a: [u8; 4], p: [u8; 2]| gone.contains(&(Ipv4Addr::from(a), u16::from_be_bytes(p)));
    if touches(k.saddr, k.sport)
        || touches(k.daddr, k.dport)
        || touches(v.saddr, v.sport)
        || touches(v.daddr, v.dport)
    {
        return false;
    }
    let present = |ifindex: u32| {
        snap.ifaces
            .iter()
            .any(|i| i.ifindex == ifindex && matches!(i.kind, IfKind::Pod | IfKind::Uplink))
    };
    let (input, output) = (present(v.in_ifindex), present(v.ifindex));
    if !input && known.contains(&v.in_ifindex) || !output && known.contains(&v.ifindex) {
        return false;
    }
    let macs = (v.in_dmac, v.in_smac, v.flags & FpFlow4::SRC_MAC);
    if input && arrival_macs(snap, v.in_ifindex) != Some(macs) {
        return false;
    }
    if !(input && output) {
        return true;
    }
    let lb = snap.fib.lookup(Ipv4Addr::from(v.daddr));
    snap.fib.route_adjs(lb).iter().any(|a| {
        a.kind == AdjKind::Rewrite
            && snap.ifaces.get(a.sw_if).map(|i| i.ifindex) == Some(v.ifindex)
            && (a.dst_mac == v.dmac || a.next_hop.is_none())
    })
}

/// Whether the untranslated entry `v` this writer wrote, last reported by the engine at
/// `reported`, goes back to the engine for one packet at `now`: XDP forwarded it since
/// `since_ns` (it is active) and the engine has not seen it for [`POLICY_REFRESH`] (its
/// NetworkPolicy flow memory ages only with the packets the engine forwards).
fn hand_back(v: &FpFlow4, reported: Option<Instant>, now: Instant, since_ns: u64) -> bool {
    v.flags & FpFlow4::NAT == 0
        && v.seen_ns > since_ns
        && reported.is_some_and(|t| now.saturating_duration_since(t) >= POLICY_REFRESH)
}

impl Writer {
    fn run(&mut self, rx: &Receiver<FlowExport>, stop: &AtomicBool) {
        let mut batch = Vec::new();
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            match rx.recv_timeout(if stopping { Duration::ZERO } else { TICK }) {
                Ok(f) => {
                    batch.push(f);
                    batch.extend(rx.try_iter());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if stopping {
                        return;
                    }
                    std::thread::sleep(TICK);
                }
            }
            let snap = self.shared.load();
            if self.version != Some(snap.version) {
                self.revalidate(&snap);
            }
            if !batch.is_empty() {
                self.write(&snap, &mut batch);
            }
            if stopping {
                return;
            }
            // A trace or a packet capture sees every packet: the cache is bypassed meanwhile.
            let tracing = self.controls.iter().any(|c| {
                c.trace_remaining.load(Ordering::Relaxed) > 0
                    || c.capture_active.load(Ordering::Relaxed)
            });
            self.set_config(tracing);
            if self.last_sync.elapsed() >= SYNC {
                self.sync();
            }
        }
    }

    /// Writes `config`: the fast path on (unless off), bypassed while a trace runs.
    fn set_config(&mut self, tracing: bool) {
        let mut flags = 0;
        if self.on {
            flags |= FpConfig::FAST_PATH;
        }
        if tracing {
            flags |= FpConfig::TRACE;
        }
        if self.config == Some(flags) {
            return;
        }
        let written = match self.bpf.lock() {
            Ok(mut bpf) => bpf.set_config(FpConfig { flags, pad: 0 }),
            Err(_) => return,
        };
        match written {
            Ok(()) => self.config = Some(flags),
            Err(e) => warn!("flow cache: writing config: {e}"),
        }
    }

    fn write(&mut self, snap: &Snapshot, batch: &mut Vec<FlowExport>) {
        let Some(mut bpf) = self.bpf.lock().ok() else {
            batch.clear();
            return;
        };
        let now = ferroplane_bpf::monotonic_ns();
        for f in batch.drain(..) {
            if f.close {
                let key = key_of(f.src, f.dst, f.sport, f.dport, f.proto);
                let (s, d, sp, dp) = f.reverse_tuple();
                for k in [key, key_of(s, d, sp, dp, f.proto)] {
                    self.counted.remove(&k);
                    self.ours.remove(&k);
                    self.reported.remove(&k);
                    match bpf.remove_flow4(&k) {
                        Ok(true) => {
                            self.stats.closed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) => warn!("flow cache: {e}"),
                    }
                }
                continue;
            }
            let Some((key, value)) = entry_of(&f, snap, now)
                .filter(|(k, v)| still_valid(snap, &self.known, &self.gone_backends, k, v))
            else {
                self.stats.invalidated.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            self.counted.remove(&key);
            self.ours.insert(key);
            self.reported.insert(key, Instant::now());
            if let Err(e) = bpf.set_flow4(key, value) {
                warn!("flow cache: {e}");
                continue;
            }
            self.stats.written.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Checks every entry against the tables just published; removes those they no longer
    /// forward the same way.
    fn revalidate(&mut self, snap: &Snapshot) {
        let backends = backends_of(snap);
        self.gone_backends
            .extend(self.backends.difference(&backends).copied());
        self.gone_backends.retain(|b| !backends.contains(b));
        self.backends = backends;
        self.version = Some(snap.version);
        self.known.extend(
            snap.ifaces
                .iter()
                .filter(|i| matches!(i.kind, IfKind::Pod | IfKind::Uplink))
                .map(|i| i.ifindex),
        );
        let Some(mut bpf) = self.bpf.lock().ok() else {
            return;
        };
        let entries = match bpf.flow4() {
            Ok(e) => e,
            Err(e) => {
                warn!("flow cache: {e}");
                return;
            }
        };
        // Untranslated flows of pods whose policy changed go back to the engine, which
        // decides them as it would without the cache (its flow memory keeps the connections
        // it allowed; see ip4-policy); translated flows are established sessions, which
        // policy lets through whatever it says.
        let old_policy = self.policy.replace(snap.policy.clone());
        let policy_changed = |k: &FpFlow4Key, v: &FpFlow4| {
            v.flags & FpFlow4::NAT == 0
                && old_policy.as_ref().is_some_and(|old| {
                    acls_changed(old, &snap.policy, Ipv4Addr::from(k.saddr))
                        || acls_changed(old, &snap.policy, Ipv4Addr::from(k.daddr))
                })
        };
        for (k, v) in entries {
            if !still_valid(snap, &self.known, &self.gone_backends, &k, &v)
                || policy_changed(&k, &v)
            {
                self.counted.remove(&k);
                self.ours.remove(&k);
                self.reported.remove(&k);
                if let Ok(true) = bpf.remove_flow4(&k) {
                    self.stats.invalidated.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Brings XDP's activity to the engine's sessions; removes idle entries and translated
    /// entries whose session is gone.
    fn sync(&mut self) {
        self.last_sync = Instant::now();
        let now_ns = ferroplane_bpf::monotonic_ns();
        let since = std::mem::replace(&mut self.last_sync_ns, now_ns);
        let Some(mut bpf) = self.bpf.lock().ok() else {
            return;
        };
        let entries = match bpf.flow4() {
            Ok(e) => e,
            Err(e) => {
                warn!("flow cache: {e}");
                return;
            }
        };
        // Each worker's session table in turn (one locked at a time, so no sync stalls every
        // worker at once): XDP's activity credited to the flow's session, wherever it lives,
        // and which of this engine's translated entries still have a session.
        let mut with_session = HashSet::new();
        let mut checked = !self.sessions.is_empty();
        for table in &self.sessions {
            let Ok(mut ct) = table.lock() else {
                checked = false;
                continue;
            };
            let now_ms = ct.now_ms();
            for (k, v) in &entries {
                let idle = now_ns.saturating_sub(v.seen_ns) > IDLE_NS;
                let fk = flow_key(k);
                if !idle && v.seen_ns > since {
                    let age_ms = now_ns.saturating_sub(v.seen_ns) / 1_000_000;
                    let counted = self.counted.get(k).copied().unwrap_or(0);
                    let delta = v.packets.saturating_sub(counted);
                    if ct.refresh(&fk, now_ms.saturating_sub(age_ms), delta, now_ms) {
                        self.counted.insert(*k, v.packets);
                        self.stats.refreshed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if v.flags & FpFlow4::NAT != 0 && self.ours.contains(k) && ct.contains(&fk, now_ms)
                {
                    with_session.insert(*k);
                }
            }
        }
        let mut live = HashSet::with_capacity(entries.len());
        for (k, v) in entries {
            let idle = now_ns.saturating_sub(v.seen_ns) > IDLE_NS;
            // A translated flow of this engine whose session expired or closed.
            let gone = idle
                || (checked
                    && v.flags & FpFlow4::NAT != 0
                    && self.ours.contains(&k)
                    && !with_session.contains(&k));
            if gone {
                self.counted.remove(&k);
                self.ours.remove(&k);
                self.reported.remove(&k);
                if let Ok(true) = bpf.remove_flow4(&k) {
                    self.stats.expired.fetch_add(1, Ordering::Relaxed);
                }
            } else if hand_back(&v, self.reported.get(&k).copied(), Instant::now(), since) {
                // The next packet refreshes the engine's policy memory; the engine reports
                // the flow again and it comes back here (counted as XDP's until now).
                self.counted.remove(&k);
                self.ours.remove(&k);
                self.reported.remove(&k);
                if let Ok(true) = bpf.remove_flow4(&k) {
                    self.stats.handed_back.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                live.insert(k);
            }
        }
        self.counted.retain(|k, _| live.contains(k));
        self.ours.retain(|k| live.contains(k));
        self.reported.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(flags: u32, seen_ns: u64) -> FpFlow4 {
        FpFlow4 {
            ifindex: 2,
            dmac: [0; 6],
            smac: [0; 6],
            saddr: [10, 244, 1, 10],
            daddr: [10, 244, 1, 11],
            sport: [0, 1],
            dport: [0, 2],
            flags,
            in_ifindex: 3,
            mtu: 1500,
            in_dmac: [0; 6],
            in_smac: [0; 6],
            pad: 0,
            seen_ns,
            packets: 10,
            bytes: 1000,
        }
    }

    const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    /// A snapshot with a pod veth (ifindex 3, the pod's MAC `pod_mac`), the uplink
    /// (ifindex 2) and a pod veth whose pod is not known (ifindex 4).
    fn snapshot(pod_mac: [u8; 6]) -> Snapshot {
        use ferroplane_engine::interfaces::{Interface, Interfaces, PodInfo};
        let iface = |sw_if, ifindex, kind, mac, pod| Interface {
            sw_if,
            name: format!("if{ifindex}"),
            kind,
            ifindex,
            mac,
            ip4: None,
            mtu: 1500,
            port: None,
            xdp_mode: None,
            pod,
        };
        let mut ifaces = Interfaces::new();
        ifaces.insert(iface(0, 2, IfKind::Uplink, UPLINK_MAC, None));
        let pod = PodInfo {
            name: "default/pod0".into(),
            ip: Ipv4Addr::new(10, 244, 1, 10),
            mac: pod_mac,
        };
        ifaces.insert(iface(1, 3, IfKind::Pod, GW_MAC, Some(pod)));
        ifaces.insert(iface(2, 4, IfKind::Pod, GW_MAC, None));
        Snapshot {
            ifaces: Arc::new(ifaces),
            ..Snapshot::default()
        }
    }

    fn report(in_ifindex: u32) -> FlowExport {
        FlowExport {
            src: Ipv4Addr::new(10, 244, 1, 10),
            dst: Ipv4Addr::new(192, 168, 100, 1),
            sport: 40000,
            dport: 53,
            proto: 17,
            nat: None,
            ifindex: 2,
            in_ifindex,
            dst_mac: [0x02, 0, 0, 0, 0, 0x99],
            src_mac: UPLINK_MAC,
            mtu: 1500,
            close: false,
        }
    }

    /// An entry checks the MACs `ethernet-input` accepts where the flow arrives: from a
    /// pod, its own source MAC (SRC_MAC) and the veth's MAC; from the uplink, the uplink's
    /// MAC only; nothing is written for an interface the fast path does not serve.
    #[test]
    fn entries_carry_the_arrival_macs_of_their_interface() {
        let snap = snapshot(POD_MAC);
        let (_, pod) = entry_of(&report(3), &snap, 1).expect("pod entry");
        assert_eq!((pod.in_dmac, pod.in_smac), (GW_MAC, POD_MAC));
        assert_eq!(pod.flags, FpFlow4::SRC_MAC);
        assert_eq!(pod.in_ifindex, 3);
        let (_, up) = entry_of(&report(2), &snap, 1).expect("uplink entry");
        assert_eq!((up.in_dmac, up.in_smac, up.flags), (UPLINK_MAC, [0; 6], 0));
        let nat = FlowExport {
            nat: Some((Ipv4Addr::new(192, 168, 100, 2), report(3).dst, 61000, 53)),
            ..report(3)
        };
        let (_, nat) = entry_of(&nat, &snap, 1).expect("translated entry");
        assert_eq!(nat.flags, FpFlow4::NAT | FpFlow4::SRC_MAC);
        assert!(
            entry_of(&report(9), &snap, 1).is_none(),
            "unknown interface"
        );
        assert!(
            entry_of(&report(4), &snap, 1).is_none(),
            "a veth without its pod"
        );
    }

    /// An entry whose pod MAC is no longer the pod's (or whose pod is gone from its veth)
    /// is invalid; the same entry with the pod's MAC is not refused for its MACs.
    #[test]
    fn entries_of_a_pod_whose_mac_changed_are_invalid() {
        let (k, v) = entry_of(&report(3), &snapshot(POD_MAC), 1).expect("entry");
        let (none, gone) = (HashSet::new(), HashSet::new());
        // The output interface (2) exists in no snapshot here, so only the MACs decide.
        let only_input = |mac| {
            let mut s = snapshot(mac);
            let mut ifaces = (*s.ifaces).clone();
            ifaces.remove(0);
            s.ifaces = Arc::new(ifaces);
            s
        };
        assert!(still_valid(&only_input(POD_MAC), &none, &gone, &k, &v));
        assert!(!still_valid(
            &only_input([0x02, 0, 0, 0, 0, 0x0b]),
            &none,
            &gone,
            &k,
            &v
        ));
        let forged = FpFlow4 {
            in_smac: [0x02, 0xde, 0xad, 0, 0, 1],
            ..v
        };
        assert!(!still_valid(
            &only_input(POD_MAC),
            &none,
            &gone,
            &k,
            &forged
        ));
        let unchecked = FpFlow4 { flags: 0, ..v };
        assert!(!still_valid(
            &only_input(POD_MAC),
            &none,
            &gone,
            &k,
            &unchecked
        ));
    }

    #[test]
    fn active_untranslated_entries_go_back_to_the_engine_after_policy_refresh() {
        let now = Instant::now();
        let old = now
            .checked_sub(POLICY_REFRESH)
            .expect("monotonic clock past 20 s");
        let fresh = now.checked_sub(POLICY_REFRESH / 2).expect("clock");
        // Active since the last sync, reported 20 s ago: back to the engine.
        assert!(hand_back(&entry(0, 200), Some(old), now, 100));
        // Reported recently: stays.
        assert!(!hand_back(&entry(0, 200), Some(fresh), now, 100));
        // Idle since the last sync: its memory ages as without the cache.
        assert!(!hand_back(&entry(0, 50), Some(old), now, 100));
        // Translated: the session is refreshed from XDP's counters instead.
        assert!(!hand_back(&entry(FpFlow4::NAT, 200), Some(old), now, 100));
        // Not written by this writer (a previous agent's): left alone.
        assert!(!hand_back(&entry(0, 200), None, now, 100));
    }
}
