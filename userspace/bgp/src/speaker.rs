//! The tokio session driver: one task per peer running its [`Fsm`], a listener that
//! hands accepted connections to their peer, and the shared RIBs.
//!
//! Locking: one `std::sync::Mutex` around the RIBs, never held across an `.await`.
//! Outbound routes: a change in the Loc-RIB marks the prefix dirty for every
//! established peer and wakes its task, which builds the UPDATEs from the Loc-RIB and
//! its Adj-RIB-Out (so bursts coalesce). Writes go through a per-connection writer
//! task, so a slow peer never blocks reading.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::{cease, code};
use crate::fsm::{Action, DownReason, Event, Fsm, FsmConfig, State, Timer};
use crate::intern::Interner;
use crate::msg::{frame_len, Capability, Ctx, GracefulRestart, Message, Notification, Open};
use ipnet::IpNet;

use crate::prefix::{Afi, Nlri};
use crate::rib::{
    export, AdjRibIn, AdjRibOut, ExportPolicy, ExportTarget, InRoute, LocRib, Path, PathInfo,
    PeerId, Source, SourceInfo,
};
use crate::update::{pack_announce, pack_withdraw, PathAttributes, Update};

/// Speaker errors.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// Binding the listening socket failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid BGP configuration: {0}")]
    Config(String),
}

/// One configured neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerConfig {
    /// Neighbour address.
    pub address: IpAddr,
    /// Neighbour AS.
    #[serde(rename = "as")]
    pub remote_as: u32,
    /// TCP port to connect to.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Never connect; wait for the neighbour.
    #[serde(default)]
    pub passive: bool,
    /// Hold time to propose (default: the speaker's).
    #[serde(default)]
    pub hold_time: Option<u16>,
    /// Source address for outgoing connections.
    #[serde(default)]
    pub local_address: Option<IpAddr>,
    /// The neighbour is a route-reflector client of ours (iBGP).
    #[serde(default)]
    pub route_reflector_client: bool,
    /// Advertise ourselves as next hop for routes learnt from others.
    #[serde(default)]
    pub next_hop_self: bool,
    /// What we advertise to it (default [`ExportPolicy::Originated`]: only this node's
    /// own prefixes, so the node never becomes a transit AS; `all` for transit or route
    /// reflection).
    #[serde(default)]
    pub export: ExportPolicy,
    /// Families, spelled as `show bgp` prints them (`ipv4-unicast`, `ipv6-unicast`;
    /// default both).
    #[serde(default = "default_families")]
    pub families: Vec<Afi>,
    /// TCP-MD5 (RFC 2385) password shared with the neighbour (1 to 80 octets).
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
}

fn default_port() -> u16 {
    179
}

fn default_families() -> Vec<Afi> {
    vec![Afi::Ipv4, Afi::Ipv6]
}

impl PeerConfig {
    /// A peer with defaults for everything but address and AS.
    pub fn new(address: IpAddr, remote_as: u32) -> PeerConfig {
        PeerConfig {
            address,
            remote_as,
            port: 179,
            passive: false,
            hold_time: None,
            local_address: None,
            route_reflector_client: false,
            next_hop_self: false,
            export: ExportPolicy::default(),
            families: default_families(),
            password: None,
        }
    }
}

/// Speaker configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier (also the route-reflector cluster id).
    pub router_id: Ipv4Addr,
    /// Where to accept connections (`None`: active sessions only). `0.0.0.0:port`
    /// listens dual-stack (`[::]`) where the host has IPv6.
    pub listen: Option<SocketAddr>,
    /// Default hold time.
    pub hold_time: u16,
    /// ConnectRetryTime in seconds.
    pub connect_retry: u32,
    /// Install equal paths as ECMP.
    pub multipath: bool,
    /// Graceful restart time to announce (`None`: no graceful restart capability).
    pub graceful_restart: Option<u16>,
    /// Announce the Restart State bit: this speaker restarted and kept forwarding.
    pub restarting: bool,
    /// IPv6 next hop for originated IPv6 routes on IPv4 sessions.
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Neighbours.
    pub peers: Vec<PeerConfig>,
}

impl SpeakerConfig {
    /// Defaults: hold 90 s, connect retry 5 s, multipath on, graceful restart 120 s.
    pub fn new(local_as: u32, router_id: Ipv4Addr) -> SpeakerConfig {
        SpeakerConfig {
            local_as,
            router_id,
            listen: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 179)),
            hold_time: 90,
            connect_retry: 5,
            multipath: true,
            graceful_restart: Some(120),
            restarting: false,
            next_hop_v6: None,
            peers: Vec::new(),
        }
    }
}

/// A peer as `show bgp` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Neighbour address.
    pub address: IpAddr,
    /// Neighbour AS.
    pub remote_as: u32,
    /// eBGP or iBGP.
    pub kind: String,
    /// FSM state.
    pub state: String,
    /// Seconds in Established.
    pub uptime_secs: Option<u64>,
    /// Neighbour's BGP identifier.
    pub router_id: Option<Ipv4Addr>,
    /// Negotiated hold time.
    pub hold_time: Option<u16>,
    /// Prefixes in the Adj-RIB-In.
    pub received: usize,
    /// Of which accepted by import policy.
    pub accepted: usize,
    /// Prefixes in the Adj-RIB-Out.
    pub advertised: usize,
    /// Routes retained under graceful restart.
    pub stale: usize,
    /// UPDATEs handled with RFC 7606 treat-as-withdraw.
    pub treat_as_withdraw: u64,
    /// Attributes discarded under RFC 7606.
    pub attributes_discarded: u64,
    /// Negotiated capabilities.
    pub capabilities: Vec<String>,
    /// Last error or reason for going down.
    pub last_error: Option<String>,
    /// Times the session reached Established.
    pub established_count: u64,
}

/// One path of a prefix as `show bgp routes` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathStatus {
    /// `local` or the peer address.
    pub from: String,
    /// Next hop.
    pub next_hop: IpAddr,
    /// AS path.
    pub as_path: String,
    /// ORIGIN.
    pub origin: String,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// MED.
    pub med: Option<u32>,
    /// Communities as `asn:value`.
    pub communities: Vec<String>,
    /// The best path.
    pub best: bool,
    /// Part of the ECMP set.
    pub multipath: bool,
    /// Retained under graceful restart.
    pub stale: bool,
    /// Why it is not the best.
    pub reason: Option<String>,
}

/// A prefix in the Loc-RIB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// IpNet.
    pub prefix: IpNet,
    /// Paths, best first.
    pub paths: Vec<PathStatus>,
}

struct Session {
    router_id: Ipv4Addr,
    ebgp: bool,
    local_addr: IpAddr,
    ctx: Ctx,
    families: Vec<Afi>,
    gr: Option<GracefulRestart>,
    hold_time: u16,
    capabilities: Vec<String>,
}

struct PeerRt {
    cfg: PeerConfig,
    state: State,
    since: Option<Instant>,
    session: Option<Session>,
    last_router_id: Option<Ipv4Addr>,
    adj_in: AdjRibIn,
    adj_out: AdjRibOut,
    dirty: HashSet<IpNet>,
    need_eor: bool,
    notify: Arc<Notify>,
    stale_until: Option<Instant>,
    eor_seen: bool,
    taw: u64,
    discarded: u64,
    last_error: Option<String>,
    established_count: u64,
}

struct Core {
    cfg: SpeakerConfig,
    rib: LocRib,
    /// Learnt paths' shared data, one per (peer session, attribute set, next hop).
    infos: Interner<PathInfo>,
    /// Advertised attribute sets (Adj-RIB-Outs), one per distinct set.
    out_attrs: Interner<PathAttributes>,
    peers: Vec<PeerRt>,
    originated: BTreeSet<IpNet>,
    fib_dirty: BTreeSet<IpNet>,
    started: Instant,
}

struct Inner {
    core: Mutex<Core>,
    fib_tx: watch::Sender<u64>,
    stop_tx: watch::Sender<Option<bool>>,
}

/// A running speaker. Dropping it does not stop the tasks: call [`Speaker::shutdown`].
/// It is `Sync`: share it in an `Arc` (API handlers read it).
pub struct Speaker {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    local_port: Option<u16>,
}

fn lock(inner: &Inner) -> MutexGuard<'_, Core> {
    inner.core.lock().unwrap_or_else(|p| p.into_inner())
}

fn local_path(router_id: Ipv4Addr) -> Path {
    Path {
        source: Source::Local,
        info: Arc::new(PathInfo::local(router_id)),
        stale: false,
    }
}

impl Core {
    fn changed(&mut self, p: IpNet, wake: &mut Vec<Arc<Notify>>) {
        self.fib_dirty.insert(p);
        for peer in &mut self.peers {
            if peer.state == State::Established {
                if peer.dirty.is_empty() {
                    wake.push(peer.notify.clone());
                }
                peer.dirty.insert(p);
            }
        }
    }

    fn withdraw_from(&mut self, id: PeerId, p: &IpNet, wake: &mut Vec<Arc<Notify>>) {
        self.peers[id].adj_in.remove(p);
        if self.rib.remove(p, Source::Peer(id)) {
            self.changed(*p, wake);
        }
    }

    fn flush_stale(&mut self, id: PeerId, afi: Option<Afi>, wake: &mut Vec<Arc<Notify>>) -> usize {
        let stale: Vec<IpNet> = self.peers[id]
            .adj_in
            .iter()
            .filter(|(p, r)| r.stale && afi.is_none_or(|a| p.afi() == a))
            .map(|(p, _)| p)
            .collect();
        for p in &stale {
            self.withdraw_from(id, p, wake);
        }
        if afi.is_none() || !self.peers[id].adj_in.values().any(|r| r.stale) {
            self.peers[id].stale_until = None;
        }
        stale.len()
    }

    fn import_ok(&self, id: PeerId, a: &PathAttributes, nh: IpAddr) -> bool {
        let peer = &self.peers[id];
        let Some(s) = &peer.session else {
            return false;
        };
        if s.ebgp && a.as_path.contains(self.cfg.local_as) {
            return false; // AS loop
        }
        if a.originator_id == Some(self.cfg.router_id)
            || a.cluster_list.contains(&self.cfg.router_id)
        {
            return false; // reflected back to us
        }
        if nh == s.local_addr || nh.is_unspecified() {
            return false;
        }
        true
    }

    fn apply_update(&mut self, id: PeerId, u: Update, wake: &mut Vec<Arc<Notify>>) {
        if let Some(e) = &u.treat_as_withdraw {
            self.peers[id].taw += 1;
            warn!(peer = %self.peers[id].cfg.address, error = %e, "RFC 7606 treat-as-withdraw");
        }
        self.peers[id].discarded += u.discarded.len() as u64;
        for p in u.withdrawals() {
            self.withdraw_from(id, &p, wake);
        }
        if let Some(afi) = u.end_of_rib() {
            let n = self.flush_stale(id, Some(afi), wake);
            self.peers[id].eor_seen = true;
            debug!(peer = %self.peers[id].cfg.address, afi = afi.name(), stale_removed = n, "End-of-RIB");
            return;
        }
        let Some(attrs) = u.attrs.as_ref() else {
            return;
        };
        let (ebgp, router_id, addr) = match &self.peers[id].session {
            Some(s) => (s.ebgp, s.router_id, self.peers[id].cfg.address),
            None => return,
        };
        // One interned PathInfo per next hop of the message (IPv4 NLRI, MP_REACH).
        let mut info: Option<Arc<PathInfo>> = None;
        for (p, nh) in u.announcements() {
            let accepted = self.import_ok(id, attrs, nh);
            self.peers[id].adj_in.insert(
                p,
                InRoute {
                    accepted,
                    stale: false,
                },
            );
            let changed = if accepted {
                let shared = match &info {
                    Some(i) if i.next_hop == nh => i.clone(),
                    _ => {
                        let i = self.infos.intern(PathInfo {
                            attrs: attrs.clone(),
                            next_hop: nh,
                            ebgp,
                            router_id,
                            peer_addr: addr,
                            igp_cost: None,
                        });
                        info = Some(i.clone());
                        i
                    }
                };
                self.rib.insert(
                    p,
                    Path {
                        source: Source::Peer(id),
                        info: shared,
                        stale: false,
                    },
                )
            } else {
                self.rib.remove(&p, Source::Peer(id))
            };
            if changed {
                self.changed(p, wake);
            }
        }
    }

    fn session_up(&mut self, id: PeerId, s: Session) {
        let rt = &mut self.peers[id];
        // RFC 4724 §4.2: families the peer no longer preserves lose their stale routes.
        let keep: Vec<Afi> =
            s.gr.as_ref()
                .map(|g| {
                    g.families
                        .iter()
                        .filter(|(_, f)| *f)
                        .map(|(a, _)| *a)
                        .collect()
                })
                .unwrap_or_default();
        rt.state = State::Established;
        rt.since = Some(Instant::now());
        rt.last_router_id = Some(s.router_id);
        rt.session = Some(s);
        rt.adj_out.clear();
        rt.dirty = self.rib.prefixes().collect();
        rt.need_eor = true;
        rt.eor_seen = false;
        rt.established_count += 1;
        rt.last_error = None;
        rt.notify.notify_one();
        let mut wake = Vec::new();
        for afi in [Afi::Ipv4, Afi::Ipv6] {
            if !keep.contains(&afi) {
                self.flush_stale(id, Some(afi), &mut wake);
            }
        }
        wake_all(wake);
    }

    fn session_down(&mut self, id: PeerId, reason: &DownReason) {
        let mut wake = Vec::new();
        let rt = &mut self.peers[id];
        let gr = rt.session.as_ref().and_then(|s| s.gr.clone());
        rt.state = State::Idle;
        rt.since = None;
        rt.session = None;
        rt.adj_out.clear();
        rt.dirty.clear();
        rt.last_error = Some(format!("{reason:?}"));
        let retain = matches!(reason, DownReason::ConnectionLost)
            && gr.as_ref().is_some_and(|g| !g.families.is_empty());
        if let (true, Some(g)) = (retain, gr) {
            let fams: Vec<Afi> = g.families.iter().map(|(a, _)| *a).collect();
            let mut n = 0;
            for (p, r) in rt.adj_in.iter_mut() {
                if fams.contains(&p.afi()) {
                    r.stale = true;
                    n += 1;
                }
            }
            rt.stale_until =
                Some(Instant::now() + Duration::from_secs(u64::from(g.restart_time.max(1))));
            let stale: Vec<IpNet> = rt
                .adj_in
                .iter()
                .filter(|(_, r)| r.stale)
                .map(|(p, _)| p)
                .collect();
            for p in stale {
                if let Some(d) = self.rib.get_mut(&p) {
                    for path in d.paths_mut() {
                        if path.source == Source::Peer(id) {
                            path.stale = true;
                        }
                    }
                }
            }
            info!(peer = %self.peers[id].cfg.address, routes = n, restart_time = g.restart_time, "graceful restart: routes kept as stale");
            // Routes from families not covered go now.
            let other: Vec<IpNet> = self.peers[id]
                .adj_in
                .iter()
                .filter(|(_, r)| !r.stale)
                .map(|(p, _)| p)
                .collect();
            for p in other {
                self.withdraw_from(id, &p, &mut wake);
            }
        } else {
            let all: Vec<IpNet> = rt.adj_in.keys().collect();
            for p in all {
                self.withdraw_from(id, &p, &mut wake);
            }
        }
        wake_all(wake);
    }

    /// Build the UPDATEs that bring `id`'s Adj-RIB-Out in line with the Loc-RIB.
    fn build_updates(&mut self, id: PeerId) -> Vec<Vec<u8>> {
        let Some(s) = &self.peers[id].session else {
            return Vec::new();
        };
        let to = ExportTarget {
            id,
            ebgp: s.ebgp,
            rr_client: self.peers[id].cfg.route_reflector_client,
            local_addr: s.local_addr,
            next_hop_self: self.peers[id].cfg.next_hop_self,
            policy: self.peers[id].cfg.export,
        };
        let ctx = s.ctx;
        let families = s.families.clone();
        // Taken, not drained: a set that held a whole table gives its memory back.
        let dirty: Vec<IpNet> = std::mem::take(&mut self.peers[id].dirty)
            .into_iter()
            .collect();
        let mut announce: HashMap<(PathAttributes, IpAddr), Vec<IpNet>> = HashMap::new();
        let mut withdraw: BTreeMap<Afi, Vec<IpNet>> = BTreeMap::new();
        for p in dirty {
            let want = if !families.contains(&p.afi()) {
                None
            } else {
                self.rib.get(&p).and_then(|d| d.best()).and_then(|best| {
                    let src = match best.source {
                        Source::Local => None,
                        Source::Peer(pid) => Some(SourceInfo {
                            ebgp: best.ebgp,
                            rr_client: self.peers[pid].cfg.route_reflector_client,
                            router_id: best.router_id,
                        }),
                    };
                    let (a, mut nh) =
                        export(best, src, &to, self.cfg.local_as, self.cfg.router_id)?;
                    if p.afi() == Afi::Ipv6 && nh.is_ipv4() {
                        nh = IpAddr::V6(self.cfg.next_hop_v6?);
                    }
                    if p.afi() == Afi::Ipv4 && nh.is_ipv6() {
                        return None;
                    }
                    Some((a, nh))
                })
            };
            let out = &mut self.peers[id].adj_out;
            match want {
                Some((a, nh)) => {
                    if out.get(&p).is_some_and(|(oa, onh)| **oa == a && *onh == nh) {
                        continue;
                    }
                    out.insert(p, (self.out_attrs.intern(a.clone()), nh));
                    announce.entry((a, nh)).or_default().push(p);
                }
                None => {
                    if out.remove(&p).is_some() {
                        withdraw.entry(p.afi()).or_default().push(p);
                    }
                }
            }
        }
        let mut msgs = Vec::new();
        for (afi, ps) in withdraw {
            msgs.extend(pack_withdraw(afi, &ps));
        }
        for ((a, nh), mut ps) in announce {
            ps.sort();
            msgs.extend(pack_announce(&a, nh, &ps, &ctx));
        }
        if self.peers[id].need_eor && self.peers[id].dirty.is_empty() {
            self.peers[id].need_eor = false;
            for afi in families {
                msgs.push(Message::Update(Update::eor(afi)).to_bytes(&ctx));
            }
        }
        msgs
    }
}

fn wake_all(w: Vec<Arc<Notify>>) {
    for n in w {
        n.notify_one();
    }
}

impl Speaker {
    /// Start the listener and one task per peer. Must run inside a tokio runtime.
    pub async fn start(cfg: SpeakerConfig, originate: Vec<IpNet>) -> Result<Speaker, SpeakerError> {
        if cfg.connect_retry == 0 {
            return Err(SpeakerError::Config(
                "connect retry time must be at least 1 s (0 would reconnect in a tight loop)"
                    .into(),
            ));
        }
        if cfg.hold_time == 1 || cfg.hold_time == 2 {
            return Err(SpeakerError::Config("hold time must be 0 or >= 3".into()));
        }
        let mut seen = HashSet::new();
        for p in &cfg.peers {
            if !seen.insert(p.address) {
                return Err(SpeakerError::Config(format!(
                    "peer {} listed twice",
                    p.address
                )));
            }
            if p.hold_time.is_some_and(|h| h == 1 || h == 2) {
                return Err(SpeakerError::Config(format!(
                    "peer {}: hold time must be 0 or >= 3",
                    p.address
                )));
            }
            if let Some(pw) = &p.password {
                crate::md5::validate(pw)
                    .map_err(|e| SpeakerError::Config(format!("peer {}: {e}", p.address)))?;
            }
        }
        let originate: Vec<IpNet> = originate.iter().map(IpNet::trunc).collect();
        let mut rib = LocRib::new(cfg.local_as, cfg.multipath);
        for p in &originate {
            rib.insert(*p, local_path(cfg.router_id));
        }
        let peers = cfg
            .peers
            .iter()
            .map(|p| PeerRt {
                cfg: p.clone(),
                state: State::Idle,
                since: None,
                session: None,
                last_router_id: None,
                adj_in: AdjRibIn::new(),
                adj_out: HashMap::new(),
                dirty: HashSet::new(),
                need_eor: false,
                notify: Arc::new(Notify::new()),
                stale_until: None,
                eor_seen: false,
                taw: 0,
                discarded: 0,
                last_error: None,
                established_count: 0,
            })
            .collect();
        let (fib_tx, _) = watch::channel(0u64);
        let (stop_tx, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            core: Mutex::new(Core {
                cfg: cfg.clone(),
                rib,
                infos: Interner::new(),
                out_attrs: Interner::new(),
                peers,
                originated: originate.into_iter().collect(),
                fib_dirty: BTreeSet::new(),
                started: Instant::now(),
            }),
            fib_tx,
            stop_tx,
        });
        let mut tasks = Vec::new();
        let mut senders = HashMap::new();
        for (id, p) in cfg.peers.iter().enumerate() {
            let (tx, rx) = mpsc::channel(4);
            senders.insert(p.address, tx);
            tasks.push(tokio::spawn(run_peer(inner.clone(), id, rx)));
        }
        let mut local_port = None;
        if let Some(addr) = cfg.listen {
            let bind = |addr: SocketAddr| {
                let sock = if addr.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                };
                sock.and_then(|s| {
                    s.set_reuseaddr(true)?;
                    s.bind(addr)?;
                    s.listen(64)
                })
            };
            // 0.0.0.0 means every address: a dual-stack [::] socket accepts IPv6 peers
            // too (IPv4 ones arrive as mapped addresses); IPv4 only where IPv6 is off.
            let dual = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), addr.port());
            let listener = match addr.ip() {
                IpAddr::V4(a) if a.is_unspecified() => bind(dual).or_else(|_| bind(addr)),
                _ => bind(addr),
            }
            .map_err(|source| SpeakerError::Listen { addr, source })?;
            let v6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
            for p in &cfg.peers {
                if let Some(pw) = &p.password {
                    crate::md5::set_key(&listener, v6, p.address, Some(pw))
                        .map_err(|source| SpeakerError::Listen { addr, source })?;
                }
            }
            local_port = listener.local_addr().ok().map(|a| a.port());
            tasks.push(tokio::spawn(accept_loop(
                listener,
                senders,
                inner.stop_tx.subscribe(),
            )));
        }
        info!(asn = cfg.local_as, router_id = %cfg.router_id, peers = cfg.peers.len(), "BGP speaker started");
        Ok(Speaker {
            inner,
            tasks: Mutex::new(tasks),
            local_port,
        })
    }

    /// The port the listener is bound to.
    pub fn local_port(&self) -> Option<u16> {
        self.local_port
    }

    /// Stop every session. `graceful`: close the TCP connections without NOTIFICATION so
    /// peers that negotiated graceful restart keep our routes while we restart;
    /// otherwise send Cease / Administrative Shutdown.
    pub async fn shutdown(&self, graceful: bool) {
        let _ = self.inner.stop_tx.send(Some(graceful));
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }

    /// Originate a prefix (advertised to peers with ourselves as next hop; host bits
    /// cleared).
    pub fn originate(&self, p: IpNet) {
        let p = p.trunc();
        let mut wake = Vec::new();
        let mut c = lock(&self.inner);
        let rid = c.cfg.router_id;
        c.originated.insert(p);
        if c.rib.insert(p, local_path(rid)) {
            c.changed(p, &mut wake);
        }
        drop(c);
        wake_all(wake);
        self.inner.fib_tx.send_modify(|g| *g += 1);
    }

    /// Stop originating a prefix.
    pub fn withdraw_originated(&self, p: IpNet) {
        let p = p.trunc();
        let mut wake = Vec::new();
        let mut c = lock(&self.inner);
        c.originated.remove(&p);
        if c.rib.remove(&p, Source::Local) {
            c.changed(p, &mut wake);
        }
        drop(c);
        wake_all(wake);
        self.inner.fib_tx.send_modify(|g| *g += 1);
    }

    /// Make the originated set exactly `set`.
    pub fn set_originated(&self, set: &BTreeSet<IpNet>) {
        let cur = lock(&self.inner).originated.clone();
        for p in cur.difference(set) {
            self.withdraw_originated(*p);
        }
        for p in set.difference(&cur) {
            self.originate(*p);
        }
    }

    /// Prefixes originated.
    pub fn originated(&self) -> BTreeSet<IpNet> {
        lock(&self.inner).originated.clone()
    }

    /// Changes to forward: a receiver whose value bumps when [`Speaker::take_fib_changes`]
    /// has something.
    pub fn fib_watch(&self) -> watch::Receiver<u64> {
        self.inner.fib_tx.subscribe()
    }

    /// Learnt prefixes whose forwarding changed since the last call, with their ECMP next
    /// hops (empty: remove). Prefixes whose best path is local are reported empty.
    pub fn take_fib_changes(&self) -> Vec<(IpNet, Vec<IpAddr>)> {
        let mut c = lock(&self.inner);
        let dirty = std::mem::take(&mut c.fib_dirty);
        let mp = c.rib.multipath;
        dirty
            .into_iter()
            .map(|p| {
                let nh = match c.rib.get(&p) {
                    Some(d) if d.best().is_some_and(|b| b.source != Source::Local) => {
                        d.next_hops(mp)
                    }
                    _ => Vec::new(),
                };
                (p, nh)
            })
            .collect()
    }

    /// Every learnt prefix with its ECMP next hops.
    pub fn fib_routes(&self) -> Vec<(IpNet, Vec<IpAddr>)> {
        let c = lock(&self.inner);
        let mp = c.rib.multipath;
        c.rib
            .iter()
            .filter(|(_, d)| d.best().is_some_and(|b| b.source != Source::Local))
            .map(|(p, d)| (p, d.next_hops(mp)))
            .collect()
    }

    /// Our AS and BGP identifier.
    pub fn identity(&self) -> (u32, Ipv4Addr) {
        let c = lock(&self.inner);
        (c.cfg.local_as, c.cfg.router_id)
    }

    /// Prefixes in the Loc-RIB.
    pub fn loc_rib_len(&self) -> usize {
        lock(&self.inner).rib.len()
    }

    /// True once the initial exchange is over: every graceful-restart peer sent
    /// End-of-RIB, or the restart time passed since start (RFC 4724 §4.1 deferral).
    pub fn converged(&self) -> bool {
        let c = lock(&self.inner);
        let limit = Duration::from_secs(u64::from(c.cfg.graceful_restart.unwrap_or(0)));
        if c.started.elapsed() >= limit {
            return true;
        }
        c.peers.iter().all(|p| p.eor_seen)
    }

    /// Peer table for `show bgp`.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let c = lock(&self.inner);
        c.peers
            .iter()
            .map(|p| PeerStatus {
                address: p.cfg.address,
                remote_as: p.cfg.remote_as,
                kind: if p.cfg.remote_as == c.cfg.local_as {
                    "ibgp"
                } else {
                    "ebgp"
                }
                .to_string(),
                state: p.state.name().to_string(),
                uptime_secs: p.since.map(|s| s.elapsed().as_secs()),
                router_id: p.session.as_ref().map(|s| s.router_id),
                hold_time: p.session.as_ref().map(|s| s.hold_time),
                received: p.adj_in.len(),
                accepted: p.adj_in.values().filter(|r| r.accepted).count(),
                advertised: p.adj_out.len(),
                stale: p.adj_in.values().filter(|r| r.stale).count(),
                treat_as_withdraw: p.taw,
                attributes_discarded: p.discarded,
                capabilities: p
                    .session
                    .as_ref()
                    .map(|s| s.capabilities.clone())
                    .unwrap_or_default(),
                last_error: p.last_error.clone(),
                established_count: p.established_count,
            })
            .collect()
    }

    /// Loc-RIB entries (all, one exact prefix, or the longest match for an address).
    pub fn routes(&self, filter: Option<&str>) -> Vec<RouteStatus> {
        let c = lock(&self.inner);
        let render = |p: &IpNet| -> Option<RouteStatus> {
            let d = c.rib.get(p)?;
            let sel = d.selection(c.rib.local_as);
            let mut paths: Vec<(bool, PathStatus)> = d
                .paths()
                .iter()
                .enumerate()
                .map(|(i, path)| {
                    let best = d.best_index() == Some(i);
                    let a = &path.attrs;
                    (
                        best,
                        PathStatus {
                            from: match path.source {
                                Source::Local => "local".to_string(),
                                Source::Peer(id) => c.peers[id].cfg.address.to_string(),
                            },
                            next_hop: path.next_hop,
                            as_path: a.as_path.to_string(),
                            origin: format!("{:?}", a.origin).to_lowercase(),
                            local_pref: a.local_pref,
                            med: a.med,
                            communities: a
                                .communities
                                .iter()
                                .map(|v| format!("{}:{}", v >> 16, v & 0xffff))
                                .collect(),
                            best,
                            multipath: d.is_multipath(i) && c.rib.multipath,
                            stale: path.stale,
                            reason: sel
                                .reasons
                                .get(i)
                                .copied()
                                .flatten()
                                .map(|r| r.text().to_string()),
                        },
                    )
                })
                .collect();
            paths.sort_by_key(|(b, p)| (!*b, !p.multipath));
            Some(RouteStatus {
                prefix: *p,
                paths: paths.into_iter().map(|(_, p)| p).collect(),
            })
        };
        match filter {
            None => {
                let mut all: Vec<IpNet> = c.rib.prefixes().collect();
                all.sort_unstable();
                all.iter().filter_map(render).collect()
            }
            Some(f) => {
                if let Ok(p) = f.parse::<IpNet>() {
                    render(&p.trunc()).into_iter().collect()
                } else if let Ok(ip) = f.parse::<IpAddr>() {
                    c.rib
                        .prefixes()
                        .filter(|p| p.contains(&ip))
                        .max_by_key(|p| p.prefix_len())
                        .and_then(|p| render(&p))
                        .into_iter()
                        .collect()
                } else {
                    Vec::new()
                }
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    peers: HashMap<IpAddr, mpsc::Sender<TcpStream>>,
    mut stop: watch::Receiver<Option<bool>>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok((s, from)) => {
                    let ip = match from.ip() {
                        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
                        v4 => v4,
                    };
                    match peers.get(&ip) {
                        Some(tx) => {
                            let _ = tx.try_send(s);
                        }
                        None => debug!(%from, "connection from an unconfigured address refused"),
                    }
                }
                Err(e) => {
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

struct Conn {
    reader: OwnedReadHalf,
    buf: Vec<u8>,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    ctx: Ctx,
    local_addr: IpAddr,
    outgoing: bool,
}

impl Conn {
    fn new(s: TcpStream, outgoing: bool, ctx: Ctx) -> Conn {
        let _ = s.set_nodelay(true);
        let local_addr = s
            .local_addr()
            .map(|a| match a.ip() {
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(v6)),
                v4 => v4,
            })
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let (reader, mut w) = s.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if w.write_all(&m).await.is_err() {
                    return;
                }
            }
            let _ = w.shutdown().await;
        });
        Conn {
            reader,
            buf: Vec::with_capacity(65536),
            writer: tx,
            ctx,
            local_addr,
            outgoing,
        }
    }
}

async fn read_some(c: Option<&mut Conn>) -> io::Result<usize> {
    match c {
        Some(c) => {
            if c.buf.capacity() - c.buf.len() < 4096 {
                c.buf.reserve(65536);
            }
            c.reader.read_buf(&mut c.buf).await
        }
        None => std::future::pending().await,
    }
}

async fn connect(
    addr: SocketAddr,
    local: Option<IpAddr>,
    password: Option<String>,
    limit: Duration,
) -> io::Result<TcpStream> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(pw) = &password {
        crate::md5::set_key(&s, addr.is_ipv6(), addr.ip(), Some(pw))?;
    }
    if let Some(l) = local {
        s.bind(SocketAddr::new(l, 0))?;
    }
    tokio::time::timeout(limit, s.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Read the first message of a fresh connection, expecting an OPEN.
async fn read_open(s: &mut TcpStream, limit: Duration) -> Option<(Open, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let fut = async {
        loop {
            if let Ok(Some(n)) = frame_len(&buf) {
                if buf.len() >= n {
                    let m = Message::decode(&buf[..n], &Ctx::default()).ok()?;
                    let rest = buf[n..].to_vec();
                    return match m {
                        Message::Open(o) => Some((o, rest)),
                        _ => None,
                    };
                }
            }
            if s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
    };
    tokio::time::timeout(limit, fut).await.ok().flatten()
}

fn reject(mut s: TcpStream, n: Notification) {
    tokio::spawn(async move {
        let _ = s
            .write_all(&Message::Notification(n).to_bytes(&Ctx::default()))
            .await;
        let _ = s.shutdown().await;
    });
}

struct Driver {
    inner: Arc<Inner>,
    id: PeerId,
    cfg: PeerConfig,
    fsm: Fsm,
    conn: Option<Conn>,
    connecting: Option<JoinHandle<io::Result<TcpStream>>>,
    timers: HashMap<Timer, Instant>,
    restart_at: Option<Instant>,
    notify: Arc<Notify>,
    gr_time: Option<u16>,
    connect_retry: u32,
    local_as: u32,
}

enum Wake {
    Stop(bool),
    Incoming(TcpStream),
    Connected(io::Result<TcpStream>),
    Read(io::Result<usize>),
    Timer,
    Flush,
}

async fn run_peer(inner: Arc<Inner>, id: PeerId, mut incoming: mpsc::Receiver<TcpStream>) {
    let (cfg, scfg, notify) = {
        let c = lock(&inner);
        (
            c.peers[id].cfg.clone(),
            c.cfg.clone(),
            c.peers[id].notify.clone(),
        )
    };
    let mut caps = Vec::new();
    for f in &cfg.families {
        caps.push(Capability::Multiprotocol(*f));
    }
    caps.push(Capability::RouteRefresh);
    if let Some(t) = scfg.graceful_restart {
        caps.push(Capability::GracefulRestart(GracefulRestart {
            restarting: scfg.restarting,
            restart_time: t,
            families: cfg.families.iter().map(|f| (*f, scfg.restarting)).collect(),
        }));
    }
    caps.push(Capability::FourOctetAs(scfg.local_as));
    let fsm = Fsm::new(FsmConfig {
        local_as: scfg.local_as,
        peer_as: cfg.remote_as,
        bgp_id: scfg.router_id,
        hold_time: cfg.hold_time.unwrap_or(scfg.hold_time),
        connect_retry: scfg.connect_retry,
        passive: cfg.passive,
        capabilities: caps,
    });
    let mut stop = inner.stop_tx.subscribe();
    let mut d = Driver {
        inner,
        id,
        cfg,
        fsm,
        conn: None,
        connecting: None,
        timers: HashMap::new(),
        restart_at: None,
        notify,
        gr_time: scfg.graceful_restart,
        connect_retry: scfg.connect_retry,
        local_as: scfg.local_as,
    };
    d.event(Event::ManualStart);
    loop {
        let next = d.next_deadline();
        let established = d.fsm.state() == State::Established;
        let w = tokio::select! {
            r = stop.changed() => Wake::Stop(r.is_err() || stop.borrow().unwrap_or(false)),
            Some(s) = incoming.recv() => Wake::Incoming(s),
            r = async {
                match d.connecting.as_mut() {
                    Some(h) => h.await.unwrap_or_else(|e| Err(io::Error::other(e.to_string()))),
                    None => std::future::pending().await,
                }
            } => Wake::Connected(r),
            r = read_some(d.conn.as_mut()) => Wake::Read(r),
            _ = tokio::time::sleep_until(next.into()) => Wake::Timer,
            _ = d.notify.notified(), if established => Wake::Flush,
        };
        match w {
            Wake::Stop(graceful) => {
                if graceful && d.gr_time.is_some() {
                    // Close without NOTIFICATION: peers keep our routes (RFC 4724).
                    d.conn = None;
                } else {
                    d.event(Event::ManualStop);
                }
                if let Some(h) = d.connecting.take() {
                    h.abort();
                }
                // Give the writer a moment to flush a NOTIFICATION.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            Wake::Incoming(s) => d.incoming(s).await,
            Wake::Connected(r) => {
                d.connecting = None;
                match r {
                    Ok(s) => {
                        let ctx = d.ctx();
                        d.conn = Some(Conn::new(s, true, ctx));
                        d.event(Event::TcpConnectionConfirmed);
                    }
                    Err(e) => {
                        debug!(peer = %d.cfg.address, "connect: {e}");
                        d.set_error(format!("connect: {e}"));
                        d.event(Event::TcpConnectionFails);
                    }
                }
            }
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) => d.event(Event::TcpConnectionFails),
            Wake::Read(Ok(_)) => d.process_input(),
            Wake::Timer => d.fire_timers(),
            Wake::Flush => d.flush(),
        }
    }
}

impl Driver {
    fn ctx(&self) -> Ctx {
        Ctx {
            four_octet_as: false,
            ebgp: self.cfg.remote_as != self.local_as,
            peer_as: self.cfg.remote_as,
        }
    }

    fn set_error(&self, e: String) {
        lock(&self.inner).peers[self.id].last_error = Some(e);
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let stale = lock(&self.inner).peers[self.id].stale_until;
        self.timers
            .values()
            .copied()
            .chain(self.restart_at)
            .chain(stale)
            .min()
            .unwrap_or(far)
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| *k)
            .collect();
        for t in due {
            self.timers.remove(&t);
            self.event(match t {
                Timer::ConnectRetry => Event::ConnectRetryTimerExpires,
                Timer::Hold => Event::HoldTimerExpires,
                Timer::Keepalive => Event::KeepaliveTimerExpires,
            });
        }
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            self.event(Event::AutomaticStart);
        }
        let mut wake = Vec::new();
        {
            let mut c = lock(&self.inner);
            if c.peers[self.id].stale_until.is_some_and(|t| t <= now) {
                let n = c.flush_stale(self.id, None, &mut wake);
                info!(peer = %self.cfg.address, removed = n, "graceful restart timer expired: stale routes removed");
                c.peers[self.id].stale_until = None;
            }
        }
        if !wake.is_empty() {
            wake_all(wake);
            self.inner.fib_tx.send_modify(|g| *g += 1);
        }
    }

    fn process_input(&mut self) {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let n = match frame_len(&conn.buf) {
                Ok(Some(n)) if conn.buf.len() >= n => n,
                Ok(_) => return,
                Err(e) => {
                    conn.buf.clear();
                    self.event(Event::MsgErr(e));
                    return;
                }
            };
            let ctx = conn.ctx;
            let m = Message::decode(&conn.buf[..n], &ctx);
            conn.buf.drain(..n);
            let ev = match m {
                Ok(Message::Open(o)) => Event::BgpOpen(o),
                Ok(Message::Update(u)) => Event::UpdateMsg(u),
                Ok(Message::Notification(n)) => {
                    warn!(peer = %self.cfg.address, notification = %n, "NOTIFICATION received");
                    Event::NotifMsg(n)
                }
                Ok(Message::Keepalive) => Event::KeepAliveMsg,
                Ok(Message::RouteRefresh(r)) => Event::RouteRefreshMsg(r.afi),
                Err(e) => {
                    warn!(peer = %self.cfg.address, error = %e, "malformed message: session reset");
                    Event::MsgErr(e)
                }
            };
            self.event(ev);
        }
    }

    /// RFC 4271 §6.8 connection collision detection.
    async fn incoming(&mut self, mut s: TcpStream) {
        let state = self.fsm.state();
        let local_id = self.fsm.config().bgp_id;
        match state {
            State::Idle | State::Connect | State::Active => {
                if state == State::Idle {
                    self.restart_at = None;
                    self.event(Event::AutomaticStart);
                }
                if let Some(h) = self.connecting.take() {
                    h.abort();
                }
                let ctx = self.ctx();
                self.conn = Some(Conn::new(s, false, ctx));
                self.event(Event::TcpConnectionConfirmed);
            }
            State::OpenSent | State::OpenConfirm | State::Established => {
                let known = self.fsm.peer_open.as_ref().map(|o| o.bgp_id);
                let (open, rest) = match read_open(&mut s, Duration::from_secs(3)).await {
                    Some(x) => x,
                    None => return,
                };
                let remote_id = known.unwrap_or(open.bgp_id);
                let gr_reconnect = state == State::Established
                    && lock(&self.inner).peers[self.id]
                        .session
                        .as_ref()
                        .is_some_and(|x| x.gr.is_some());
                let current_outgoing = self.conn.as_ref().is_some_and(|c| c.outgoing);
                // Keep the connection opened by the speaker with the higher identifier.
                let keep_new = if state == State::Established {
                    gr_reconnect
                } else {
                    current_outgoing && u32::from(local_id) < u32::from(remote_id)
                };
                if !keep_new {
                    debug!(peer = %self.cfg.address, "collision: new connection closed");
                    reject(s, Notification::new(code::CEASE, cease::COLLISION));
                    return;
                }
                if gr_reconnect {
                    // RFC 4724 §4.2: a new OPEN while Established means the peer restarted.
                    self.event(Event::TcpConnectionFails);
                } else {
                    self.event(Event::OpenCollisionDump);
                }
                self.restart_at = None;
                self.event(Event::AutomaticStart);
                if let Some(h) = self.connecting.take() {
                    h.abort();
                }
                let ctx = self.ctx();
                let mut c = Conn::new(s, false, ctx);
                c.buf.extend_from_slice(&rest);
                self.conn = Some(c);
                self.event(Event::TcpConnectionConfirmed);
                self.event(Event::BgpOpen(open));
                self.process_input();
            }
        }
    }

    fn event(&mut self, ev: Event) {
        let acts = self.fsm.event(ev);
        let state = self.fsm.state();
        {
            let mut c = lock(&self.inner);
            if c.peers[self.id].state != State::Established || state == State::Established {
                c.peers[self.id].state = state;
            }
        }
        for a in acts {
            self.exec(a);
        }
    }

    fn exec(&mut self, a: Action) {
        match a {
            Action::InitiateConnect => {
                if let Some(h) = self.connecting.take() {
                    h.abort();
                }
                let addr = SocketAddr::new(self.cfg.address, self.cfg.port);
                let limit = Duration::from_secs(u64::from(self.connect_retry.max(1)));
                self.connecting = Some(tokio::spawn(connect(
                    addr,
                    self.cfg.local_address,
                    self.cfg.password.clone(),
                    limit,
                )));
            }
            Action::CloseConnection => {
                self.conn = None;
                if let Some(h) = self.connecting.take() {
                    h.abort();
                }
            }
            Action::Send(m) => {
                if let Some(c) = &self.conn {
                    if let Message::Notification(n) = &m {
                        warn!(peer = %self.cfg.address, notification = %n, "sending NOTIFICATION");
                        self.set_error(format!("sent {n}"));
                    }
                    let _ = c.writer.send(m.to_bytes(&c.ctx));
                }
            }
            Action::StartTimer(t, secs) => {
                self.timers
                    .insert(t, Instant::now() + Duration::from_secs(u64::from(secs)));
            }
            Action::StopTimer(t) => {
                self.timers.remove(&t);
            }
            Action::SessionUp => self.session_up(),
            Action::SessionDown(r) => {
                info!(peer = %self.cfg.address, reason = ?r, "session down");
                lock(&self.inner).session_down(self.id, &r);
                self.inner.fib_tx.send_modify(|g| *g += 1);
                self.restart_at = Some(Instant::now() + Duration::from_secs(1));
            }
            Action::Failed(r) => {
                if matches!(r, DownReason::SentNotification(_)) {
                    // A refused OPEN (bad peer AS, bad identifier, hold time): say why.
                    warn!(peer = %self.cfg.address, reason = ?r, "session attempt refused");
                } else {
                    debug!(peer = %self.cfg.address, reason = ?r, "attempt failed");
                }
                let mut c = lock(&self.inner);
                let p = &mut c.peers[self.id];
                if p.last_error.is_none() || !matches!(r, DownReason::Stopped) {
                    p.last_error = Some(format!("{r:?}"));
                }
                drop(c);
                self.restart_at = Some(Instant::now() + Duration::from_secs(1));
            }
            Action::ProcessUpdate(u) => {
                let mut wake = Vec::new();
                lock(&self.inner).apply_update(self.id, u, &mut wake);
                wake_all(wake);
                self.inner.fib_tx.send_modify(|g| *g += 1);
            }
            Action::Refresh(afi) => {
                let mut c = lock(&self.inner);
                let c = &mut *c;
                let p = &mut c.peers[self.id];
                p.adj_out.retain(|k, _| k.afi().code() != afi);
                p.dirty
                    .extend(c.rib.prefixes().filter(|k| k.afi().code() == afi));
                self.notify.notify_one();
            }
        }
    }

    fn session_up(&mut self) {
        let Some(open) = self.fsm.peer_open.clone() else {
            return;
        };
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let four = open.four_octet_as();
        conn.ctx.four_octet_as = four;
        let theirs = open.families();
        let families: Vec<Afi> = self
            .cfg
            .families
            .iter()
            .copied()
            .filter(|f| theirs.contains(f))
            .collect();
        let mut capabilities: Vec<String> = families.iter().map(|f| f.name().to_string()).collect();
        if four {
            capabilities.push("4-octet-as".into());
        }
        if open.route_refresh() {
            capabilities.push("route-refresh".into());
        }
        let gr = open
            .graceful_restart()
            .cloned()
            .filter(|_| self.gr_time.is_some());
        if let Some(g) = &gr {
            capabilities.push(format!(
                "graceful-restart(time {}{})",
                g.restart_time,
                if g.restarting { ", restarting" } else { "" }
            ));
        }
        info!(peer = %self.cfg.address, router_id = %open.bgp_id, ?families, "session Established");
        let s = Session {
            router_id: open.bgp_id,
            ebgp: conn.ctx.ebgp,
            local_addr: conn.local_addr,
            ctx: conn.ctx,
            families,
            gr,
            hold_time: self.fsm.hold_time,
            capabilities,
        };
        lock(&self.inner).session_up(self.id, s);
        self.inner.fib_tx.send_modify(|g| *g += 1);
    }

    fn flush(&mut self) {
        let msgs = lock(&self.inner).build_updates(self.id);
        if let Some(c) = &self.conn {
            for m in msgs {
                let _ = c.writer.send(m);
            }
        }
    }
}
