//! Pod plumbing and link/neighbour queries over rtnetlink.
//!
//! A [`Plumber`] talks to the kernel of the network namespace it was created in (the
//! agent's). Work inside a pod's namespace uses an rtnetlink socket opened there by one
//! long-lived thread that `setns()`s in and back ([`netns_exec`]), so the agent's other
//! threads never change namespace and no thread or runtime is started per pod.
//!
//! Pod plumbing (see CONTRACTS.md): a veth pair whose host side is named
//! [`host_ifname`]`(namespace, name)`, up, without addresses, in the agent's namespace; the
//! peer is created directly inside the pod's namespace under its final name (`eth0`), with
//! `ip/32`, the MTU, up, `lo` up, `GATEWAY dev eth0 scope link` and
//! `default via GATEWAY dev eth0`. In the agent's namespace: `ip/32 dev fpXXXX scope link`
//! and a permanent neighbour `ip -> pod MAC` on the host side.

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage,
    NeighbourState as NlNeighbourState,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::RouteScope;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::config::PodSpec;

/// The pods' default gateway: answered (ARP) by the engine with the host veth's MAC.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

const ENODEV: i32 = libc::ENODEV;
const ENOENT: i32 = libc::ENOENT;
const ESRCH: i32 = libc::ESRCH;

/// An error from the plumbing layer.
#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    /// Opening an rtnetlink socket failed.
    #[error("opening an rtnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request (or the connection broke).
    #[error("{context}: {source}")]
    Netlink {
        /// What was being done.
        context: String,
        /// The rtnetlink error (its errno via [`PlumbError::errno`]).
        #[source]
        source: rtnetlink::Error,
    },
    /// No interface of that name in the namespace asked.
    #[error("interface {0} not found")]
    LinkNotFound(String),
    /// A network namespace could not be opened or entered.
    #[error("network namespace {}: {source}", path.display())]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel state is not what it should be after a request that succeeded.
    #[error("{0}")]
    Unexpected(String),
}

impl PlumbError {
    /// The (positive) errno of a kernel refusal, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            PlumbError::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| c.get().abs()),
            _ => None,
        }
    }
}

type Result<T, E = PlumbError> = std::result::Result<T, E>;

trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, rtnetlink::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| PlumbError::Netlink {
            context: context(),
            source,
        })
    }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// What [`Plumber::link_info`] reports about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// Hardware address (zero when the link has no 6-byte address, e.g. TUN).
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// IPv4 addresses with their prefix lengths.
    pub ipv4: Vec<(Ipv4Addr, u8)>,
    /// Administratively up (IFF_UP).
    pub up: bool,
}

/// The result of [`Plumber::create_pod`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    /// Host-side veth name (`fp` + 11 hex chars).
    pub host_ifname: String,
    /// Host-side veth index (agent's namespace).
    pub host_ifindex: u32,
    /// Host-side veth MAC: what the engine answers ARP for the gateway with.
    pub host_mac: [u8; 6],
    /// Pod-side veth MAC.
    pub pod_mac: [u8; 6],
    /// Pod-side veth index (inside the pod's namespace).
    pub pod_ifindex: u32,
    /// Whether an existing, matching veth was reused rather than created.
    pub reused: bool,
    /// Where the time went (veth creation, pod side, host side).
    pub phases: crate::timing::Phases,
}

/// Name prefix of spare veth pairs (the warm pool of [`Plumber::create_spare`]).
pub const SPARE_PREFIX: &str = "fpsp";

/// Host and peer names of spare pair `seq`: `fpsp` / `fpsq` + 8 hex digits.
pub fn spare_ifnames(seq: u32) -> (String, String) {
    (format!("{SPARE_PREFIX}{seq:08x}"), format!("fpsq{seq:08x}"))
}

/// A spare veth pair, both ends down in the agent's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareLink {
    /// Host-side name (until adopted).
    pub host_ifname: String,
    /// Host-side index (kept when adopted).
    pub host_ifindex: u32,
    /// Host-side MAC.
    pub host_mac: [u8; 6],
    /// Peer index (in the agent's namespace until adopted).
    pub peer_ifindex: u32,
}

/// A neighbour cache state (NUD_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourState {
    /// Confirmed recently.
    Reachable,
    /// Usable, not confirmed recently.
    Stale,
    /// Usable, waiting before probing.
    Delay,
    /// Usable, being probed.
    Probe,
    /// Static entry.
    Permanent,
    /// No resolution needed.
    Noarp,
    /// Any other state that came with a link-layer address (raw NUD_* value).
    Other(u16),
}

/// A resolved IPv4 neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Cache state.
    pub state: NeighbourState,
    /// Whether the entry is kernel-managed (NTF_EXT_MANAGED).
    pub managed: bool,
}

/// Host-side veth name for a pod: `fp` + the first 11 hex digits of the FNV-1a 64 hash of
/// `namespace/name` (13 chars, within IFNAMSIZ).
pub fn host_ifname(namespace: &str, name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(name.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fp{:011x}", h >> 20)
}

/// A parsed link message: the parts the plumbing uses.
#[derive(Debug, Clone)]
struct RawLink {
    index: u32,
    name: String,
    mac: [u8; 6],
    mtu: u32,
    up: bool,
    veth: bool,
    /// IFLA_LINK: the peer's ifindex for a veth.
    peer_index: Option<u32>,
    /// IFLA_LINK_NETNSID: the peer's namespace id, if the peer is in another namespace.
    peer_netnsid: Option<i32>,
}

impl RawLink {
    fn parse(msg: &LinkMessage) -> RawLink {
        let mut link = RawLink {
            index: msg.header.index,
            name: String::new(),
            mac: [0; 6],
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            veth: false,
            peer_index: None,
            peer_netnsid: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => {
                    if let Ok(mac) = <[u8; 6]>::try_from(a.as_slice()) {
                        link.mac = mac;
                    }
                }
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Link(i) => link.peer_index = Some(*i),
                LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    link.veth = infos
                        .iter()
                        .any(|i| matches!(i, NlLinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        link
    }
}

async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<RawLink>> {
    let mut stream = handle.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(RawLink::parse(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(e).ctx(|| format!("looking up interface {name}")),
    }
}

async fn link_by_index(handle: &Handle, index: u32) -> Result<Option<RawLink>> {
    let mut stream = handle.link().get().match_index(index).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(RawLink::parse(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(e).ctx(|| format!("looking up interface #{index}")),
    }
}

async fn require_link(handle: &Handle, name: &str) -> Result<RawLink> {
    link_by_name(handle, name)
        .await?
        .ok_or_else(|| PlumbError::LinkNotFound(name.to_string()))
}

fn ipv4_of(msg: &AddressMessage) -> Option<(Ipv4Addr, u8)> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => address = Some(*a),
            _ => {}
        }
    }
    local.or(address).map(|a| (a, msg.header.prefix_len))
}

async fn ipv4_addrs(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
    let msgs: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .ctx(|| format!("listing addresses of interface #{index}"))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.family == AddressFamily::Inet && m.header.index == index)
        .filter_map(ipv4_of)
        .collect())
}

/// Sends a request whose only expected answer is an ACK (or an error).
async fn request_ack(
    handle: &Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> std::result::Result<Vec<RouteNetlinkMessage>, rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = flags;
    let mut handle = handle.clone();
    let mut responses = handle.request(req)?;
    let mut out = Vec::new();
    while let Some(resp) = responses.next().await {
        match resp.payload {
            NetlinkPayload::Error(err) => return Err(rtnetlink::Error::NetlinkError(err)),
            NetlinkPayload::InnerMessage(m) => out.push(m),
            _ => {}
        }
    }
    Ok(out)
}

/// The id the namespace of `handle` gives to the namespace open as `netns`, if any.
async fn nsid_of(handle: &Handle, netns: &File) -> Result<Option<i32>> {
    let mut msg = NsidMessage::default();
    // The kernel reads the fd as a u32 attribute.
    msg.attributes = vec![NsidAttribute::Fd(netns.as_raw_fd().unsigned_abs())];
    let answers = request_ack(
        handle,
        RouteNetlinkMessage::GetNsId(msg),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .await
    .ctx(|| "RTM_GETNSID".to_string())?;
    for answer in answers {
        if let RouteNetlinkMessage::NewNsId(m) = answer {
            for attr in m.attributes {
                if let NsidAttribute::Id(id) = attr {
                    return Ok((id >= 0).then_some(id));
                }
            }
        }
    }
    Ok(None)
}

fn open_netns(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| PlumbError::Netns {
        path: path.to_path_buf(),
        source,
    })
}

/// A job for the netns thread: told whether entering the namespace worked, it runs there.
type NetnsJob = Box<dyn FnOnce(Result<()>) + Send>;

/// The netns thread's queue (`None` until first use, or after the thread died).
static NETNS_THREAD: std::sync::Mutex<Option<std::sync::mpsc::Sender<(File, NetnsJob)>>> =
    std::sync::Mutex::new(None);

/// Starts the long-lived thread that runs jobs inside other network namespaces: it
/// `setns()`s into the job's namespace, runs the job, and returns to its home namespace
/// (the agent's, inherited from the thread that started it). Should it fail to return, it
/// exits (a new one is started on the next job), so no job ever runs in a stale namespace.
fn spawn_netns_thread() -> Result<std::sync::mpsc::Sender<(File, NetnsJob)>> {
    let home = File::open("/proc/thread-self/ns/net").map_err(|source| PlumbError::Netns {
        path: PathBuf::from("/proc/thread-self/ns/net"),
        source,
    })?;
    let (tx, rx) = std::sync::mpsc::channel::<(File, NetnsJob)>();
    std::thread::Builder::new()
        .name("fp-netns".to_string())
        .spawn(move || {
            for (target, job) in rx {
                let entered = nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| PlumbError::Netns {
                        path: PathBuf::from("(pod network namespace)"),
                        source: std::io::Error::from(e),
                    });
                drop(target);
                let was_entered = entered.is_ok();
                job(entered);
                if was_entered
                    && nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET).is_err()
                {
                    tracing::error!(
                        "the netns thread cannot return to the agent's namespace; it exits"
                    );
                    return;
                }
            }
        })
        .map_err(|e| PlumbError::Unexpected(format!("spawning the netns thread: {e}")))?;
    Ok(tx)
}

/// Runs `work` synchronously inside the network namespace at `netns`, on the agent's
/// long-lived netns thread (the calling threads never switch namespace), and returns what
/// it returns. Sockets `work` opens stay bound to that namespace after it returns.
pub async fn netns_exec<T, W>(netns: &Path, work: W) -> Result<T>
where
    T: Send + 'static,
    W: FnOnce() -> Result<T> + Send + 'static,
{
    let path = netns.to_path_buf();
    let file = open_netns(&path)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let err_path = path.clone();
    let job: NetnsJob = Box::new(move |entered: Result<()>| {
        let r = match entered {
            Ok(()) => work(),
            Err(PlumbError::Netns { source, .. }) => Err(PlumbError::Netns {
                path: err_path,
                source,
            }),
            Err(e) => Err(e),
        };
        // The receiver only goes away if the caller was cancelled: nothing to tell then.
        let _ = tx.send(r);
    });
    {
        let mut guard = NETNS_THREAD
            .lock()
            .map_err(|_| PlumbError::Unexpected("netns thread lock poisoned".into()))?;
        let sender = match guard.take() {
            Some(s) => s,
            None => spawn_netns_thread()?,
        };
        match sender.send((file, job)) {
            Ok(()) => *guard = Some(sender),
            Err(std::sync::mpsc::SendError((file, job))) => {
                // The thread exited: start another one.
                let sender = spawn_netns_thread()?;
                sender.send((file, job)).map_err(|_| {
                    PlumbError::Unexpected("the netns thread exited at once".into())
                })?;
                *guard = Some(sender);
            }
        }
    }
    rx.await.map_err(|_| {
        PlumbError::Unexpected(format!("the thread working in {} died", path.display()))
    })?
}

/// Runs `f` with an rtnetlink handle bound to the network namespace at `netns`: the socket
/// is opened inside that namespace by the netns thread ([`netns_exec`]); `f` runs on the
/// caller's runtime.
pub async fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    in_netns_after(netns, || Ok(()), f).await
}

/// [`in_netns`], running `setup` inside the namespace first (on the netns thread, before
/// the socket is opened).
pub async fn in_netns_after<T, S, F, Fut>(netns: &Path, setup: S, f: F) -> Result<T>
where
    S: FnOnce() -> Result<()> + Send + 'static,
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = netns_exec(netns, move || {
        setup()?;
        let s = Socket::new(NETLINK_ROUTE).map_err(PlumbError::Socket)?;
        s.set_non_blocking(true).map_err(PlumbError::Socket)?;
        Ok(s)
    })
    .await?;
    // SAFETY: the descriptor is a netlink socket this function owns (just created, handed
    // over by value); `into_raw_fd` gives up that ownership to the TokioSocket.
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    let conn_task = tokio::spawn(conn);
    let r = f(handle).await;
    conn_task.abort();
    r
}

/// The settings of a pod-side veth that are not netlink attributes (ethtool), applied to
/// `ifname` in the caller's network namespace: run inside the pod's namespace on the netns
/// thread, before the rest of the pod side is configured. The one place for such pod-side
/// interface settings (both the warm-pool and the cold path go through it).
pub fn pod_side_offloads(ifname: &str) -> Result<()> {
    // Frames reach the engine without checksum metadata: the pod must compute
    // its own TCP/UDP checksums instead of leaving them to (veth) offload.
    ferroplane_io::ethtool::set_tx_checksum(ifname, false).map_err(|e| {
        PlumbError::Unexpected(format!(
            "pod: turning TX checksum offload off on {ifname}: {e}"
        ))
    })?;
    // GRO puts the pod side's receive path in NAPI mode, which XDP redirects into the host
    // side need: the XDP flow cache forwards to pods that way while the agent restarts.
    ferroplane_io::ethtool::set_gro(ifname, true)
        .map_err(|e| PlumbError::Unexpected(format!("pod: turning GRO on on {ifname}: {e}")))
}

/// Configures the pod side inside the pod's namespace; returns (ifindex, MAC).
async fn configure_pod_side(
    handle: Handle,
    interface: String,
    ip: Ipv4Addr,
    mtu: u32,
    gateway: Ipv4Addr,
) -> Result<(u32, [u8; 6])> {
    let link = require_link(&handle, &interface).await?;
    let idx = link.index;
    handle
        .link()
        .set(LinkUnspec::new_with_index(idx).mtu(mtu).up().build())
        .execute()
        .await
        .ctx(|| format!("pod: setting {interface} mtu {mtu} up"))?;
    let lo = require_link(&handle, "lo").await?;
    if !lo.up {
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo.index).up().build())
            .execute()
            .await
            .ctx(|| "pod: setting lo up".to_string())?;
    }
    handle
        .address()
        .add(idx, IpAddr::V4(ip), 32)
        .replace()
        .execute()
        .await
        .ctx(|| format!("pod: adding {ip}/32 to {interface}"))?;
    let gw_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(gateway, 32)
        .output_interface(idx)
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(gw_route)
        .replace()
        .execute()
        .await
        .ctx(|| format!("pod: route {gateway} dev {interface} scope link"))?;
    let default_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .gateway(gateway)
        .output_interface(idx)
        .build();
    handle
        .route()
        .add(default_route)
        .replace()
        .execute()
        .await
        .ctx(|| format!("pod: route default via {gateway} dev {interface}"))?;
    // The MAC, as the kernel now reports it.
    let link = link_by_index(&handle, idx).await?.ok_or_else(|| {
        PlumbError::Unexpected(format!("pod: {interface} vanished while configuring it"))
    })?;
    Ok((idx, link.mac))
}

fn nud_to_state(state: NlNeighbourState) -> Option<NeighbourState> {
    Some(match state {
        NlNeighbourState::Reachable => NeighbourState::Reachable,
        NlNeighbourState::Stale => NeighbourState::Stale,
        NlNeighbourState::Delay => NeighbourState::Delay,
        NlNeighbourState::Probe => NeighbourState::Probe,
        NlNeighbourState::Permanent => NeighbourState::Permanent,
        NlNeighbourState::Noarp => NeighbourState::Noarp,
        NlNeighbourState::Incomplete | NlNeighbourState::Failed | NlNeighbourState::None => {
            return None
        }
        other => NeighbourState::Other(u16::from(other)),
    })
}

/// Parses an IPv4 neighbour entry: (ip, lladdr if 6 bytes, managed flag).
fn parse_neighbour(msg: &NeighbourMessage) -> Option<(Ipv4Addr, Option<[u8; 6]>, bool)> {
    let mut ip = None;
    let mut mac = None;
    let mut managed = false;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            NeighbourAttribute::ExtFlags(f) => managed = f.contains(NeighbourExtFlags::Managed),
            _ => {}
        }
    }
    ip.map(|ip| (ip, mac, managed))
}

/// Plumbs pods and answers link/neighbour questions for the agent's network namespace.
#[derive(Clone)]
pub struct Plumber {
    handle: Handle,
}

impl std::fmt::Debug for Plumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plumber").finish_non_exhaustive()
    }
}

impl Plumber {
    /// Opens an rtnetlink socket in the calling thread's network namespace and spawns its
    /// connection task on the current tokio runtime (must be called inside one).
    pub fn new() -> Result<Plumber> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            PlumbError::Unexpected(format!("Plumber::new outside a tokio runtime: {e}"))
        })?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(PlumbError::Socket)?;
        runtime.spawn(conn);
        Ok(Plumber { handle })
    }

    /// The underlying rtnetlink handle, for requests this module does not wrap.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Index, MAC, MTU, IPv4 addresses and admin state of an interface.
    pub async fn link_info(&self, name: &str) -> Result<LinkInfo> {
        let link = require_link(&self.handle, name).await?;
        let ipv4 = ipv4_addrs(&self.handle, link.index).await?;
        Ok(LinkInfo {
            name: link.name,
            ifindex: link.index,
            mac: link.mac,
            mtu: link.mtu,
            ipv4,
            up: link.up,
        })
    }

    /// Whether `host` (a link in our namespace) is a veth whose peer is `pod.interface` in the
    /// pod's namespace, carrying `pod.ip/32`.
    async fn reusable(&self, host: &RawLink, netns: &File, pod: &PodSpec) -> Result<bool> {
        let (true, Some(peer_index), Some(peer_nsid)) =
            (host.veth, host.peer_index, host.peer_netnsid)
        else {
            return Ok(false);
        };
        if nsid_of(&self.handle, netns).await? != Some(peer_nsid) {
            return Ok(false);
        }
        let interface = pod.interface.clone();
        let ip = pod.ip;
        let host_index = host.index;
        in_netns(&pod.netns_path(), move |h| async move {
            let Some(peer) = link_by_index(&h, peer_index).await? else {
                return Ok(false);
            };
            if peer.name != interface || !peer.veth || peer.peer_index != Some(host_index) {
                return Ok(false);
            }
            Ok(ipv4_addrs(&h, peer_index).await?.contains(&(ip, 32)))
        })
        .await
    }

    /// Plumbs a pod (idempotently): see the module documentation for the resulting state.
    ///
    /// If the host veth already exists (agent restart) it is reused when its peer is the
    /// pod's interface in the pod's namespace with the pod's address; the whole configuration
    /// is then re-applied (replace semantics). Otherwise it is deleted and recreated.
    /// `gateway` is normally [`POD_GATEWAY`].
    pub async fn create_pod(&self, pod: &PodSpec, mtu: u32, gateway: Ipv4Addr) -> Result<PodLink> {
        let mut phases = crate::timing::Phases::new();
        let host_name = host_ifname(&pod.namespace, &pod.name);
        let netns_path = pod.netns_path();
        let netns = open_netns(&netns_path)?;
        let key = pod.key();

        let mut reused = false;
        if let Some(existing) = link_by_name(&self.handle, &host_name).await? {
            if self.reusable(&existing, &netns, pod).await? {
                reused = true;
            } else {
                self.delete_link(existing.index, &host_name).await?;
            }
        }
        phases.mark("lookup");

        if !reused {
            let peer = LinkUnspec::new_with_name(&pod.interface)
                .mtu(mtu)
                .setns_by_fd(netns.as_raw_fd())
                .build();
            let veth = LinkVeth::new(&host_name, &pod.interface)
                .mtu(mtu)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            self.handle.link().add(veth).execute().await.ctx(|| {
                format!(
                    "{key}: creating veth {host_name} <-> {} in {}",
                    pod.interface,
                    netns_path.display()
                )
            })?;
        }
        drop(netns);

        let host = require_link(&self.handle, &host_name).await?;
        phases.mark("veth");

        self.finish_pod(
            pod,
            &netns_path,
            (host.index, &host_name, host.mac),
            mtu,
            gateway,
            reused,
            phases,
        )
        .await
    }

    /// The rest of plumbing a pod once its veth pair exists (pod side in `netns_path`,
    /// host side `host` = (index, name, MAC) here): the pod side configured inside its
    /// namespace, then the host side; timed into `phases`.
    #[allow(clippy::too_many_arguments)]
    async fn finish_pod(
        &self,
        pod: &PodSpec,
        netns_path: &Path,
        host: (u32, &str, [u8; 6]),
        mtu: u32,
        gateway: Ipv4Addr,
        reused: bool,
        mut phases: crate::timing::Phases,
    ) -> Result<PodLink> {
        let (host_ifindex, host_name, host_mac) = host;
        let key = pod.key();
        let (interface, ip) = (pod.interface.clone(), pod.ip);
        let t_pod = std::time::Instant::now();
        let offload_if = interface.clone();
        let (pod_ifindex, pod_mac, inside) = in_netns_after(
            netns_path,
            move || pod_side_offloads(&offload_if),
            move |h| async move {
                let t = std::time::Instant::now();
                let (idx, mac) = configure_pod_side(h, interface, ip, mtu, gateway).await?;
                Ok((idx, mac, t.elapsed()))
            },
        )
        .await
        .map_err(|e| match e {
            PlumbError::Netlink { context, source } => PlumbError::Netlink {
                context: format!("{key}: {context}"),
                source,
            },
            other => other,
        })?;
        // Entering the namespace (thread, runtime, netlink socket) vs the work inside.
        let whole = t_pod.elapsed();
        phases.push("netns_enter", whole.saturating_sub(inside));
        phases.push("pod_side", inside);
        phases.skip();
        self.host_side(pod, host_ifindex, host_name, mtu, pod_mac)
            .await?;
        phases.mark("host_side");
        Ok(PodLink {
            host_ifname: host_name.to_string(),
            host_ifindex,
            host_mac,
            pod_mac,
            pod_ifindex,
            reused,
            phases,
        })
    }

    /// The agent-namespace half of a plumbed pod: host veth MTU and up, `ip/32` route, a
    /// permanent neighbour entry for the pod's MAC, and strict reverse-path filtering on the
    /// host veth (as Calico sets on its `cali*` interfaces): what `xdp_pod` passes to the
    /// node's kernel (traffic for the node's own addresses) is accepted only from the source
    /// routed through that veth, the pod's own address; the engine checks everything else.
    async fn host_side(
        &self,
        pod: &PodSpec,
        index: u32,
        host_name: &str,
        mtu: u32,
        pod_mac: [u8; 6],
    ) -> Result<()> {
        let key = pod.key();
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .ctx(|| format!("{key}: setting {host_name} mtu {mtu} up"))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(pod.ip, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .ctx(|| format!("{key}: route {}/32 dev {host_name}", pod.ip))?;
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(pod.ip))
            .link_layer_address(&pod_mac)
            .state(NlNeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .ctx(|| format!("{key}: neighbour {} on {host_name}", pod.ip))?;
        let rp_filter = format!("/proc/sys/net/ipv4/conf/{host_name}/rp_filter");
        if let Err(e) = std::fs::write(&rp_filter, "1") {
            tracing::warn!(pod = %key, "{rp_filter}: {e}: the node's kernel accepts any source from this pod");
        }
        Ok(())
    }

    /// Whether an interface of that name exists in the agent's namespace.
    pub async fn link_exists(&self, name: &str) -> Result<bool> {
        Ok(link_by_name(&self.handle, name).await?.is_some())
    }

    /// Creates a spare veth pair for the warm pool: both ends in the agent's namespace,
    /// down, named [`spare_ifnames`]`(seq)`, with `mtu`. A stale pair of that name is
    /// replaced.
    pub async fn create_spare(&self, seq: u32, mtu: u32) -> Result<SpareLink> {
        let (host, peer) = spare_ifnames(seq);
        if let Some(old) = link_by_name(&self.handle, &host).await? {
            self.delete_link(old.index, &host).await?;
        }
        let veth = LinkVeth::new(&host, &peer).mtu(mtu).build();
        self.handle
            .link()
            .add(veth)
            .execute()
            .await
            .ctx(|| format!("creating spare veth {host} <-> {peer}"))?;
        let h = require_link(&self.handle, &host).await?;
        let p = require_link(&self.handle, &peer).await?;
        Ok(SpareLink {
            host_ifname: host,
            host_ifindex: h.index,
            host_mac: h.mac,
            peer_ifindex: p.index,
        })
    }

    /// Deletes every spare veth pair (`fpsp*`) in the agent's namespace, e.g. left by an
    /// agent that was killed; returns how many.
    pub async fn delete_spares(&self) -> Result<usize> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .ctx(|| "listing interfaces".to_string())?;
        let mut n = 0;
        for l in links.iter().map(RawLink::parse) {
            if l.name.starts_with(SPARE_PREFIX) {
                self.delete_link(l.index, &l.name).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Plumbs `pod` with a spare pair from [`Plumber::create_spare`] (its AF_XDP socket and
    /// XDP program already set up on the host side): the peer moves into the pod's
    /// namespace under its final name, the host side takes the pod's stable name, then
    /// both sides are configured as [`Plumber::create_pod`] does. The caller makes sure no
    /// interface has the pod's host name yet. On error the spare is unusable: delete it.
    pub async fn adopt_spare(
        &self,
        spare: &SpareLink,
        pod: &PodSpec,
        mtu: u32,
        gateway: Ipv4Addr,
    ) -> Result<PodLink> {
        let mut phases = crate::timing::Phases::new();
        let host_name = host_ifname(&pod.namespace, &pod.name);
        let netns_path = pod.netns_path();
        let netns = open_netns(&netns_path)?;
        let key = pod.key();
        // Move and rename in one request (`ip link set P netns N name eth0`): the peer is
        // down, so the rename is allowed.
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(spare.peer_ifindex)
                    .setns_by_fd(netns.as_raw_fd())
                    .name(pod.interface.clone())
                    .build(),
            )
            .execute()
            .await
            .ctx(|| {
                format!(
                    "{key}: moving spare peer #{} into {} as {}",
                    spare.peer_ifindex,
                    netns_path.display(),
                    pod.interface
                )
            })?;
        drop(netns);
        // The host side is down too (spares are never brought up).
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(spare.host_ifindex)
                    .name(host_name.clone())
                    .build(),
            )
            .execute()
            .await
            .ctx(|| format!("{key}: renaming {} to {host_name}", spare.host_ifname))?;
        phases.mark("spare_move");
        self.finish_pod(
            pod,
            &netns_path,
            (spare.host_ifindex, &host_name, spare.host_mac),
            mtu,
            gateway,
            false,
            phases,
        )
        .await
    }

    /// Deletes a spare pair by index (its peer goes with it).
    pub async fn delete_spare(&self, spare: &SpareLink) -> Result<()> {
        self.delete_link(spare.host_ifindex, &spare.host_ifname)
            .await
    }

    async fn delete_link(&self, index: u32, name: &str) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(()),
            r => r.ctx(|| format!("deleting {name}")),
        }
    }

    /// Removes a pod's veth pair (the route and neighbour go with it). Returns whether there
    /// was one.
    pub async fn delete_pod(&self, pod: &PodSpec) -> Result<bool> {
        let host_name = host_ifname(&pod.namespace, &pod.name);
        match link_by_name(&self.handle, &host_name).await? {
            Some(link) => {
                self.delete_link(link.index, &host_name).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn neighbour_messages(&self) -> Result<Vec<NeighbourMessage>> {
        self.handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .ctx(|| "listing IPv4 neighbours".to_string())
    }

    /// The resolved IPv4 neighbours on an interface: entries that have a 6-byte link-layer
    /// address and a usable state (incomplete and failed entries are left out).
    pub async fn neighbours(&self, ifindex: u32) -> Result<Vec<Neighbour>> {
        let msgs = self.neighbour_messages().await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == ifindex)
            .filter_map(|m| {
                let state = nud_to_state(m.header.state)?;
                let (ip, mac, managed) = parse_neighbour(m)?;
                Some(Neighbour {
                    ip,
                    mac: mac?,
                    state,
                    managed,
                })
            })
            .collect())
    }

    /// Asks the kernel to resolve `ip` on `ifindex` and keep it resolved without traffic:
    /// a "managed" neighbour entry (NTF_EXT_MANAGED in NDA_FLAGS_EXT, Linux >= 5.16), the
    /// same request as `ip neigh replace IP dev IF managed`. Poll [`Plumber::neighbours`] for
    /// the result.
    ///
    /// Idempotent and cheap to repeat: an entry that is already managed is not touched; an
    /// existing resolved entry keeps its MAC (it becomes managed and stale, so the kernel
    /// re-confirms it); an admin's permanent or noarp entry is left alone.
    pub async fn ensure_managed_neighbour(&self, ip: Ipv4Addr, ifindex: u32) -> Result<()> {
        let existing = self.neighbour_messages().await?;
        let current = existing.iter().find_map(|m| {
            let (addr, mac, managed) = parse_neighbour(m)?;
            (m.header.ifindex == ifindex && addr == ip).then_some((m.header.state, mac, managed))
        });
        let mut req = self.handle.neighbours().add(ifindex, IpAddr::V4(ip));
        match current {
            Some((_, _, true)) => return Ok(()),
            Some((NlNeighbourState::Permanent | NlNeighbourState::Noarp, _, _)) => return Ok(()),
            Some((state, Some(mac), false)) if nud_to_state(state).is_some() => {
                req = req.link_layer_address(&mac).state(NlNeighbourState::Stale);
            }
            _ => req = req.state(NlNeighbourState::None),
        }
        let mut req = req.replace();
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        req.execute()
            .await
            .ctx(|| format!("managed neighbour {ip} on interface #{ifindex}"))
    }

    /// Removes the neighbour entry for `ip` on `ifindex`, if any.
    pub async fn delete_neighbour(&self, ip: Ipv4Addr, ifindex: u32) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = ifindex;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(msg).execute().await {
            Err(e) if matches!(errno_of(&e), Some(ENOENT | ESRCH)) => Ok(()),
            r => r.ctx(|| format!("deleting neighbour {ip} on interface #{ifindex}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_and_short() {
        let a = host_ifname("default", "a");
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("fp"));
        assert!(a[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, host_ifname("default", "a"));
        assert_ne!(a, host_ifname("default", "b"));
        assert_ne!(a, host_ifname("other", "a"));
        // FNV-1a 64 of "default/a", top 44 bits.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in b"default/a" {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        assert_eq!(a, format!("fp{:011x}", h >> 20));
    }
}
