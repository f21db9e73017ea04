//! The agent's CNI socket: what `ferroplane-cni` forwards ADD/DEL/CHECK/STATUS/GC to.
//!
//! The server owns IPAM ([`crate::ipam`]) and hands the plumbing to the agent's main loop as
//! [`PodOp`]s, which calls the same pod add/remove code the standalone YAML spec uses. A CNI
//! attachment becomes a pod spec keyed `cni/<container id>/<ifname>`
//! ([`attachment_pod`]), so its host veth name is stable and derived from the container id
//! and interface name alone (DEL needs nothing else to find it).
//!
//! Protocol: one JSON [`AgentRequest`] line, one JSON [`AgentResponse`] line
//! (see [`ferroplane_cni::proto`]). The socket is mode 0600 (root only).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferroplane_cni::netns::{check_pod_netns, host_namespaces, NetnsError};
use ferroplane_cni::proto::PROTO_VERSION;
use ferroplane_cni::types::mac_string;
use ferroplane_cni::{
    code, AgentRequest, AgentResponse, CniError, CniResult, Command, Interface, IpConfig, Route,
    CNI_VERSION,
};
use futures::TryStreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::PodSpec;
use crate::ipam::{Ipam, IpamError, Owner, Record};
use crate::listen::{AcceptErrors, ConnGuard, ConnTable};
use crate::netlink::{in_netns, PlumbError, POD_GATEWAY};

/// Kubernetes-namespace part of the pod key of CNI attachments.
pub const CNI_POD_NAMESPACE: &str = "cni";

/// Longest request line accepted (a network configuration with its `prevResult` is a few
/// kB).
const MAX_REQUEST: usize = 256 << 10;
/// How long a client may take to send its request (the plugin sends it at once).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections open at once; at the limit a new connection closes the oldest one that
/// has not sent its request yet ([`crate::listen::ConnTable`]), so held connections never
/// lock the runtime's plugin out.
const MAX_CONNECTIONS: usize = 128;

/// What the agent reports back about a plumbed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlumbedPod {
    /// Host-side veth name.
    pub host_ifname: String,
    /// Host-side veth MAC.
    pub host_mac: [u8; 6],
    /// Pod-side MAC.
    pub pod_mac: [u8; 6],
    /// Pod address.
    pub ip: Ipv4Addr,
    /// MTU.
    pub mtu: u16,
    /// Where the plumbing time went (empty when nothing was plumbed).
    pub phases: crate::timing::Phases,
}

/// Work for the agent's main loop (it owns the engine, the BPF maps and the node state).
#[derive(Debug)]
pub enum PodOp {
    /// Plumb a pod (idempotent) and report it.
    Add {
        /// The pod.
        pod: PodSpec,
        /// `namespace/name` of its Kubernetes pod (`CNI_ARGS`), if known.
        identity: Option<String>,
        /// Its hostPorts (checked and reserved with its address).
        host_ports: Vec<crate::hostports::HostPort>,
        /// The answer.
        reply: oneshot::Sender<Result<PlumbedPod, String>>,
    },
    /// Tear a pod down (veth, engine port, XDP, tables); `Ok(true)` if anything was there.
    Del {
        /// The pod (only its key, hence its veth name, matters).
        pod: PodSpec,
        /// The answer.
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// Report a plumbed pod by key.
    Get {
        /// `namespace/name`.
        key: String,
        /// The answer.
        reply: oneshot::Sender<Option<PlumbedPod>>,
    },
    /// Keys of every plumbed pod.
    Keys {
        /// The answer.
        reply: oneshot::Sender<Vec<String>>,
    },
}

/// The pod spec of a CNI attachment.
pub fn attachment_pod(container_id: &str, ifname: &str, netns: &str, ip: Ipv4Addr) -> PodSpec {
    PodSpec {
        name: format!("{container_id}/{ifname}"),
        namespace: CNI_POD_NAMESPACE.to_string(),
        netns: netns.to_string(),
        ip,
        interface: ifname.to_string(),
        labels: Default::default(),
        ports: Vec::new(),
    }
}

/// The pod spec of a reservation.
pub fn record_pod(r: &Record) -> PodSpec {
    attachment_pod(&r.container_id, &r.ifname, &r.netns, r.ip)
}

/// The Kubernetes identity (`namespace/name`, from `CNI_ARGS`) of a reservation, if both
/// parts are known.
pub fn record_identity(r: &Record) -> Option<String> {
    match (&r.pod_namespace, &r.pod_name) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
            Some(format!("{ns}/{name}"))
        }
        _ => None,
    }
}

/// The hostPorts a reservation records (entries that no longer parse are logged and
/// left out).
pub fn record_host_ports(r: &Record) -> Vec<crate::hostports::HostPort> {
    r.port_mappings
        .iter()
        .filter_map(|m| match crate::hostports::HostPort::from_mapping(m) {
            Ok(hp) => Some(hp),
            Err(e) => {
                warn!(container = %r.container_id, "hostPort not restored: {}", e.msg);
                None
            }
        })
        .collect()
}

/// A CNI attachment to plumb again at start: its pod, identity and hostPorts.
pub type Restore = (PodSpec, Option<String>, Vec<crate::hostports::HostPort>);

/// Pods to plumb again when the agent starts: reservations whose network namespace still
/// exists, is a network namespace and is not the node's own (the others wait for DEL or
/// GC), with their [`record_identity`] and [`record_host_ports`].
pub fn pods_to_restore(ipam: &Ipam) -> Result<Vec<Restore>, IpamError> {
    let host = host_namespaces();
    Ok(ipam
        .records()?
        .iter()
        .filter(|r| !r.container_id.is_empty() && !r.netns.is_empty())
        .filter(|r| match check_pod_netns(&r.netns, &host) {
            Ok(_) => true,
            Err(e @ NetnsError::Missing { .. }) => {
                tracing::debug!(container = %r.container_id, "not restored: {e}");
                false
            }
            Err(e) => {
                warn!(container = %r.container_id, "not restored: {e}");
                false
            }
        })
        .map(|r| (record_pod(r), record_identity(r), record_host_ports(r)))
        .collect())
}

/// Everything a request handler needs.
#[derive(Debug, Clone)]
pub struct CniContext {
    /// The node's pool.
    pub ipam: Arc<Ipam>,
    /// The agent's main loop.
    pub ops: mpsc::Sender<PodOp>,
    /// The service tables in force: what a hostPort may not take
    /// ([`crate::hostports::Reserved`]).
    pub services: crate::services::ServiceCacheHandle,
}

/// A bound CNI socket; dropping it stops accepting and removes the socket file.
#[derive(Debug)]
pub struct CniServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

/// CNI server errors.
#[derive(Debug, thiserror::Error)]
#[error("CNI socket {}: {what}: {source}", path.display())]
pub struct CniServerError {
    path: PathBuf,
    what: &'static str,
    #[source]
    source: io::Error,
}

impl CniServer {
    /// Binds `path` (mode 0600; a stale socket is replaced) and serves on the current tokio
    /// runtime.
    pub fn bind(path: &Path, ctx: CniContext) -> Result<CniServer, CniServerError> {
        Self::bind_with(
            path,
            ctx,
            crate::listen::connection_limit(MAX_CONNECTIONS),
            READ_TIMEOUT,
        )
    }

    /// [`CniServer::bind`] with at most `max_connections` open at once and `read_timeout`
    /// for a request line.
    pub fn bind_with(
        path: &Path,
        ctx: CniContext,
        max_connections: usize,
        read_timeout: Duration,
    ) -> Result<CniServer, CniServerError> {
        let err = |what| {
            let path = path.to_path_buf();
            move |source| CniServerError { path, what, source }
        };
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(err("creating its directory"))?;
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cni.sock".into());
        // Bind under a temporary name, restrict, then move into place: the socket is never
        // reachable with looser permissions.
        let tmp = parent.join(format!(".{file}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(err("binding"))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(err("chmod 0600"))?;
        fs::rename(&tmp, path).map_err(err("moving into place"))?;
        let table = ConnTable::new("cni", max_connections);
        let task = tokio::spawn(async move {
            let mut errors = AcceptErrors::new("cni");
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let Some(guard) = table.admit() else {
                            // Every connection is busy answering: close this one at once.
                            drop(stream);
                            continue;
                        };
                        let ctx = ctx.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve(stream, ctx, &guard, read_timeout).await {
                                warn!("CNI connection: {e}");
                            }
                        });
                    }
                    Err(e) => errors.on_error(e).await,
                }
            }
        });
        Ok(CniServer {
            path: path.to_path_buf(),
            task,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CniServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = fs::remove_file(&self.path);
    }
}

async fn serve(
    stream: UnixStream,
    ctx: CniContext,
    guard: &ConnGuard,
    read_timeout: Duration,
) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(MAX_REQUEST as u64);
    // Until its request line is in, the connection is idle: closed to make room for a new
    // one when the socket is full.
    let read = tokio::time::timeout(read_timeout, rd.read_line(&mut line));
    let n = tokio::select! {
        r = read => r
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request line in time"))??,
        _ = guard.evicted() => return Ok(()),
    };
    if n == 0 {
        return Ok(());
    }
    guard.set_busy(true);
    let response = match serde_json::from_str::<AgentRequest>(&line) {
        Ok(req) if req.proto != PROTO_VERSION => AgentResponse::Error(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "ferroplane-cni speaks protocol {} but the agent speaks {PROTO_VERSION}: install the matching plugin binary",
                req.proto
            ),
        )),
        Ok(req) => handle(&ctx, req).await,
        Err(e) => AgentResponse::Error(
            CniError::new(code::DECODING_FAILURE, "bad request on the agent's CNI socket")
                .with_details(e.to_string()),
        ),
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    wr.shutdown().await
}

fn agent_err(msg: impl Into<String>) -> CniError {
    CniError::new(code::AGENT_FAILURE, msg)
}

fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted { .. } => CniError::new(code::IPAM_EXHAUSTED, e.to_string()),
        IpamError::HostPortConflict { .. } => CniError::new(code::HOSTPORT_CONFLICT, e.to_string()),
        other => CniError::new(code::IO_FAILURE, other.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IpamError> + Send + 'static,
) -> Result<T, CniError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| agent_err(format!("IPAM task failed: {e}")))?
        .map_err(ipam_err)
}

async fn op<T>(
    ctx: &CniContext,
    make: impl FnOnce(oneshot::Sender<T>) -> PodOp,
) -> Result<T, CniError> {
    let (tx, rx) = oneshot::channel();
    let gone = || {
        CniError::new(
            code::TRY_AGAIN_LATER,
            "the agent is shutting down; try again later",
        )
    };
    ctx.ops.send(make(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

/// Answers one request.
pub async fn handle(ctx: &CniContext, req: AgentRequest) -> AgentResponse {
    let started = std::time::Instant::now();
    let cmd = req.command;
    let cid = req.container_id.clone();
    let r = match cmd {
        Command::Add => add(ctx, req).await.map(Some),
        Command::Del => del(ctx, req).await.map(|()| None),
        Command::Check => check(ctx, req).await.map(|()| None),
        Command::Status => status(ctx).await.map(|()| None),
        Command::Gc => gc(ctx, req).await.map(|()| None),
        Command::Version => Ok(None),
    };
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match r {
        Ok(result) => {
            info!(command = cmd.name(), container = %cid, ms, "CNI request done");
            AgentResponse::Ok { result }
        }
        Err(e) => {
            warn!(command = cmd.name(), container = %cid, ms, code = e.code, "CNI request failed: {}", e.msg);
            AgentResponse::Error(e)
        }
    }
}

/// The agent's own, authoritative check of a request's `CNI_NETNS`, before anything is
/// reserved or plumbed: ADD and CHECK need a network namespace that is not the node's
/// (the agent's own or PID 1's); DEL refuses only the node's own namespace (see
/// [`ferroplane_cni::plugin::check_netns`]). The plugin makes the same check from the
/// runtime's namespace, which need not be the agent's.
pub fn check_request_netns(cmd: Command, netns: &str) -> Result<(), CniError> {
    if netns.is_empty() && cmd == Command::Del {
        return Ok(());
    }
    ferroplane_cni::plugin::check_netns(cmd, netns, &host_namespaces())
}

/// The hostPorts of an ADD, checked against what the node has taken
/// ([`crate::hostports::Reserved::check`]); the other attachments' are checked when the
/// address is reserved.
fn add_host_ports(
    ctx: &CniContext,
    req: &AgentRequest,
) -> Result<Vec<crate::hostports::HostPort>, CniError> {
    if req.port_mappings.is_empty() {
        return Ok(Vec::new());
    }
    let reserved = match ctx.services.lock() {
        Ok(c) => c.host_ports.reserved.clone(),
        Err(p) => p.into_inner().host_ports.reserved.clone(),
    };
    let node = reserved.node_addr.ok_or_else(|| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            "the agent has not built its service table yet; try again later",
        )
    })?;
    let ports = crate::hostports::from_request(&req.port_mappings, node)?;
    let identity = match (&req.pod_namespace, &req.pod_name) {
        (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
        _ => None,
    };
    reserved.check(
        &ports,
        identity.as_deref(),
        crate::hostports::ephemeral_range(),
    )?;
    Ok(ports)
}

async fn add(ctx: &CniContext, req: AgentRequest) -> Result<CniResult, CniError> {
    check_request_netns(Command::Add, &req.netns)?;
    let host_ports = add_host_ports(ctx, &req)?;
    let owner = Owner {
        network: req.network.clone(),
        netns: req.netns.clone(),
        pod_namespace: req.pod_namespace.clone(),
        pod_name: req.pod_name.clone(),
        port_mappings: host_ports.iter().map(|h| h.to_mapping()).collect(),
    };
    let mappings = owner.port_mappings.clone();
    let mut phases = crate::timing::Phases::new();
    let ipam = ctx.ipam.clone();
    let (cid, ifname) = (req.container_id.clone(), req.ifname.clone());
    let (record, fresh) = blocking(move || ipam.reserve_unsynced(&cid, &ifname, &owner)).await?;
    phases.mark("ipam");
    if !fresh && record.netns != req.netns {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "container {} interface {} is already attached in {}, not {}",
                req.container_id, req.ifname, record.netns, req.netns
            ),
        ));
    }
    if !fresh && record.port_mappings != mappings {
        return Err(CniError::new(
            code::HOSTPORT_CONFLICT,
            format!(
                "container {} interface {} is already attached with other port mappings ({}); DEL it first",
                req.container_id,
                req.ifname,
                record
                    .port_mappings
                    .iter()
                    .map(crate::hostports::mapping_name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let pod = record_pod(&record);
    let identity = record_identity(&record);
    let host_ports = record_host_ports(&record);
    // The reservation goes to disk while the main loop plumbs the pod; the answer waits
    // for both.
    let ipam = ctx.ipam.clone();
    let ip = record.ip;
    let sync = async move {
        if fresh {
            blocking(move || ipam.sync(ip)).await?;
        }
        Ok::<_, CniError>(())
    };
    let plumb = async {
        let r = op(ctx, |reply| PodOp::Add {
            pod,
            identity,
            host_ports,
            reply,
        })
        .await;
        (r, phases.since_mark())
    };
    let ((plumbed, round_trip), synced) = tokio::join!(plumb, sync);
    let plumbed = plumbed?.map_err(|e| agent_err(format!("plumbing {}: {e}", req.container_id)))?;
    synced?;
    // Time in the main loop's queue: the round trip minus the plumbing itself.
    phases.push("queue", round_trip.saturating_sub(plumbed.phases.total()));
    phases.extend(&plumbed.phases);
    // Waiting for the disk after the plumbing was done (0 when the flush was quicker).
    let waited = phases.since_mark().saturating_sub(round_trip);
    phases.push("ipam_sync", waited);
    phases.skip();
    info!(container = %req.container_id, phases = %phases, "CNI ADD phases (ms)");
    Ok(CniResult {
        cni_version: CNI_VERSION.to_string(),
        interfaces: vec![
            Interface {
                name: plumbed.host_ifname,
                mac: mac_string(plumbed.host_mac),
                mtu: Some(u32::from(plumbed.mtu)),
                sandbox: None,
            },
            Interface {
                name: req.ifname.clone(),
                mac: mac_string(plumbed.pod_mac),
                mtu: Some(u32::from(plumbed.mtu)),
                sandbox: Some(req.netns.clone()),
            },
        ],
        ips: vec![IpConfig {
            address: format!("{}/32", record.ip),
            gateway: Some(POD_GATEWAY.to_string()),
            interface: Some(1),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(POD_GATEWAY.to_string()),
        }],
        dns: req.dns,
    })
}

async fn del(ctx: &CniContext, req: AgentRequest) -> Result<(), CniError> {
    check_request_netns(Command::Del, &req.netns)?;
    let ipam = ctx.ipam.clone();
    let (cid, ifname) = (req.container_id.clone(), req.ifname.clone());
    let record = blocking(move || ipam.get(&cid, &ifname)).await?;
    let ip = record.as_ref().map_or(Ipv4Addr::UNSPECIFIED, |r| r.ip);
    // Tear down first, release after: the address is never reused while still configured.
    let pod = attachment_pod(&req.container_id, &req.ifname, &req.netns, ip);
    op(ctx, |reply| PodOp::Del { pod, reply })
        .await?
        .map_err(|e| agent_err(format!("tearing down {}: {e}", req.container_id)))?;
    let ipam = ctx.ipam.clone();
    let (cid, ifname) = (req.container_id.clone(), req.ifname.clone());
    blocking(move || ipam.release(&cid, &ifname)).await?;
    Ok(())
}

async fn status(ctx: &CniContext) -> Result<(), CniError> {
    let ipam = ctx.ipam.clone();
    if blocking(move || ipam.free()).await? == 0 {
        return Err(CniError::new(
            code::LIMITED_IPAM,
            format!("no free address in pod CIDR {}", ctx.ipam.pool()),
        ));
    }
    Ok(())
}

async fn gc(ctx: &CniContext, req: AgentRequest) -> Result<(), CniError> {
    let keep: BTreeSet<(String, String)> = req
        .valid_attachments
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    // Pods plumbed for this network but not valid any more (with or without a reservation).
    let ipam = ctx.ipam.clone();
    let records = blocking(move || ipam.records()).await?;
    let keys = op(ctx, |reply| PodOp::Keys { reply }).await?;
    let mut doomed: Vec<PodSpec> = records
        .iter()
        .filter(|r| {
            (r.container_id.is_empty() || r.network == req.network)
                && !keep.contains(&(r.container_id.clone(), r.ifname.clone()))
        })
        .filter(|r| !r.container_id.is_empty())
        .map(record_pod)
        .collect();
    let prefix = format!("{CNI_POD_NAMESPACE}/");
    for key in keys {
        let Some((cid, ifname)) = key.strip_prefix(&prefix).and_then(|k| k.split_once('/')) else {
            continue;
        };
        let owned_elsewhere = records
            .iter()
            .any(|r| r.key() == (cid, ifname) && r.network != req.network);
        if !owned_elsewhere
            && !keep.contains(&(cid.to_string(), ifname.to_string()))
            && !doomed.iter().any(|p| p.key() == key)
        {
            doomed.push(attachment_pod(cid, ifname, "", Ipv4Addr::UNSPECIFIED));
        }
    }
    for pod in doomed {
        let key = pod.key();
        if let Err(e) = op(ctx, |reply| PodOp::Del { pod, reply }).await? {
            return Err(agent_err(format!("GC: tearing down {key}: {e}")));
        }
    }
    let ipam = ctx.ipam.clone();
    let network = req.network.clone();
    let gone = blocking(move || ipam.gc(&network, &keep)).await?;
    if !gone.is_empty() {
        info!(network = %req.network, released = gone.len(), "CNI GC released addresses");
    }
    Ok(())
}

async fn check(ctx: &CniContext, req: AgentRequest) -> Result<(), CniError> {
    check_request_netns(Command::Check, &req.netns)?;
    let failed = |msg: String| CniError::new(code::CHECK_FAILED, msg);
    let ipam = ctx.ipam.clone();
    let (cid, ifname) = (req.container_id.clone(), req.ifname.clone());
    let record = blocking(move || ipam.get(&cid, &ifname))
        .await?
        .ok_or_else(|| {
            failed(format!(
                "no address is reserved for container {} interface {}",
                req.container_id, req.ifname
            ))
        })?;
    if req.expect_ip.as_deref() != Some(record.ip.to_string().as_str()) {
        return Err(failed(format!(
            "prevResult says {} but the reservation is {}",
            req.expect_ip.as_deref().unwrap_or("nothing"),
            record.ip
        )));
    }
    if record.netns != req.netns {
        return Err(failed(format!(
            "attached in {}, not {}",
            record.netns, req.netns
        )));
    }
    let key = record_pod(&record).key();
    let plumbed = op(ctx, |reply| PodOp::Get {
        key: key.clone(),
        reply,
    })
    .await?
    .ok_or_else(|| failed(format!("{key} is not plumbed in the dataplane")))?;
    let (ifname, ip, mtu) = (req.ifname.clone(), record.ip, plumbed.mtu);
    let seen = in_netns(Path::new(&req.netns), move |h| async move {
        inspect_pod_side(h, ifname, ip, mtu).await
    })
    .await
    .map_err(|e| failed(format!("inspecting {}: {e}", req.netns)))?;
    if let Some(problem) = seen {
        return Err(failed(problem));
    }
    Ok(())
}

/// `None` when the pod side is as ADD left it, else what differs.
async fn inspect_pod_side(
    h: rtnetlink::Handle,
    ifname: String,
    ip: Ipv4Addr,
    mtu: u16,
) -> Result<Option<String>, PlumbError> {
    use netlink_packet_route::address::AddressAttribute;
    use netlink_packet_route::link::{LinkAttribute, LinkFlags};
    use netlink_packet_route::route::{RouteAddress, RouteAttribute};
    let nl = |context: &str| {
        let context = context.to_string();
        move |source| PlumbError::Netlink { context, source }
    };
    let links: Vec<_> = match h
        .link()
        .get()
        .match_name(ifname.clone())
        .execute()
        .try_collect()
        .await
    {
        Ok(l) => l,
        Err(_) => return Ok(Some(format!("interface {ifname} is missing"))),
    };
    let Some(link) = links.first() else {
        return Ok(Some(format!("interface {ifname} is missing")));
    };
    if !link.header.flags.contains(LinkFlags::Up) {
        return Ok(Some(format!("interface {ifname} is down")));
    }
    let link_mtu = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    });
    if link_mtu != Some(u32::from(mtu)) {
        return Ok(Some(format!(
            "interface {ifname} has MTU {link_mtu:?}, expected {mtu}"
        )));
    }
    let index = link.header.index;
    let addrs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing addresses"))?;
    let has_ip = addrs.iter().any(|m| {
        m.header.prefix_len == 32
            && m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(std::net::IpAddr::V4(x)) if *x == ip))
    });
    if !has_ip {
        return Ok(Some(format!("interface {ifname} does not carry {ip}/32")));
    }
    let routes: Vec<_> = h
        .route()
        .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing routes"))?;
    let default_ok = routes.iter().any(|r| {
        r.header.destination_prefix_length == 0
            && r.attributes.iter().any(|a| {
                matches!(a, RouteAttribute::Gateway(RouteAddress::Inet(g)) if *g == POD_GATEWAY)
            })
            && r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
    });
    if !default_ok {
        return Ok(Some(format!(
            "no default route via {POD_GATEWAY} dev {ifname}"
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ipv4Cidr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in for the agent's main loop: DEL finds nothing, keys are empty, ADD fails
    /// (no dataplane); every operation it receives is counted in `seen`.
    fn stand_in_main_loop(seen: Arc<AtomicUsize>) -> mpsc::Sender<PodOp> {
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                seen.fetch_add(1, Ordering::SeqCst);
                match op {
                    PodOp::Del { reply, .. } => {
                        let _ = reply.send(Ok(false));
                    }
                    PodOp::Keys { reply } => {
                        let _ = reply.send(Vec::new());
                    }
                    PodOp::Get { reply, .. } => {
                        let _ = reply.send(None);
                    }
                    PodOp::Add { reply, .. } => {
                        let _ = reply.send(Err("no dataplane in this test".into()));
                    }
                }
            }
        });
        tx
    }

    #[test]
    fn attachment_keys_are_stable() {
        let ip: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let a = attachment_pod("abc123", "eth0", "/var/run/netns/x", ip);
        assert_eq!(a.key(), "cni/abc123/eth0");
        let b = attachment_pod("abc123", "eth0", "", Ipv4Addr::UNSPECIFIED);
        // DEL without netns or address finds the same veth.
        assert_eq!(
            crate::netlink::host_ifname(&a.namespace, &a.name),
            crate::netlink::host_ifname(&b.namespace, &b.name)
        );
        assert_ne!(
            crate::netlink::host_ifname(&a.namespace, &a.name),
            crate::netlink::host_ifname("cni", "abc123/eth1")
        );
    }

    /// The socket under held, slow and oversized clients: a STATUS still answers at once,
    /// at most `max` connections stay open, idle ones are closed after the read timeout.
    #[tokio::test]
    async fn socket_survives_held_slow_and_oversized_clients() {
        use tokio::io::AsyncWriteExt;
        let dir = std::env::temp_dir().join(format!("fp-cni-held-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pool: Ipv4Cidr = "10.3.0.0/29".parse().unwrap();
        let ipam = Arc::new(Ipam::open(dir.join("ipam"), pool).unwrap());
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                if let PodOp::Keys { reply } = op {
                    let _ = reply.send(Vec::new());
                }
            }
        });
        let sock = dir.join("cni.sock");
        let server = CniServer::bind_with(
            &sock,
            CniContext {
                ipam,
                ops: tx,
                services: Default::default(),
            },
            8,
            Duration::from_millis(500),
        )
        .unwrap();
        let status = |sock: PathBuf| async move {
            let t0 = std::time::Instant::now();
            let mut s = UnixStream::connect(&sock).await.unwrap();
            let req = serde_json::to_string(&AgentRequest {
                proto: PROTO_VERSION,
                command: Command::Status,
                network: "fp".into(),
                container_id: String::new(),
                ifname: String::new(),
                netns: String::new(),
                pod_namespace: None,
                pod_name: None,
                dns: Default::default(),
                expect_ip: None,
                valid_attachments: Vec::new(),
                port_mappings: Vec::new(),
            })
            .unwrap();
            s.write_all(format!("{req}\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
                .await
                .unwrap()
                .unwrap();
            (out, t0.elapsed())
        };
        // 40 held connections (5 times the limit) and one that sent half a request.
        let mut held = Vec::new();
        for _ in 0..40 {
            held.push(UnixStream::connect(&sock).await.unwrap());
        }
        let mut slow = UnixStream::connect(&sock).await.unwrap();
        slow.write_all(b"{\"proto\":").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (out, took) = status(sock.clone()).await;
        assert!(out.contains("\"status\":\"ok\""), "{out}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        // The oldest held connections were closed to make room.
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(1), held[0].read(&mut buf))
            .await
            .expect("closed at once")
            .unwrap();
        assert_eq!(n, 0);
        // An oversized request is answered with a decoding error, not read whole.
        let mut big = UnixStream::connect(&sock).await.unwrap();
        let chunk = vec![b'a'; 64 << 10];
        let mut sent = 0;
        while sent < 4 * MAX_REQUEST {
            match tokio::time::timeout(Duration::from_secs(1), big.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), big.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("bad request"), "{out}");
        // An idle connection is closed after the read timeout.
        let t0 = std::time::Instant::now();
        let mut idle = UnixStream::connect(&sock).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf))
            .await
            .expect("closed after the read timeout")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(
            t0.elapsed() >= Duration::from_millis(450),
            "{:?}",
            t0.elapsed()
        );
        drop(server);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn status_and_del_without_plumbing() {
        let dir = std::env::temp_dir().join(format!("fp-cni-srv-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pool: Ipv4Cidr = "10.3.0.0/30".parse().unwrap();
        let ipam = Arc::new(Ipam::open(&dir, pool).unwrap());
        let tx = stand_in_main_loop(Arc::new(AtomicUsize::new(0)));
        let ctx = CniContext {
            ipam: ipam.clone(),
            ops: tx,
            services: Default::default(),
        };
        let req = |command, cid: &str| AgentRequest {
            proto: PROTO_VERSION,
            command,
            network: "fp".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: String::new(),
            pod_namespace: None,
            pod_name: None,
            dns: Default::default(),
            expect_ip: None,
            valid_attachments: Vec::new(),
            port_mappings: Vec::new(),
        };
        assert_eq!(
            handle(&ctx, req(Command::Status, "")).await,
            AgentResponse::Ok { result: None }
        );
        // DEL of an unknown container succeeds.
        assert_eq!(
            handle(&ctx, req(Command::Del, "nope")).await,
            AgentResponse::Ok { result: None }
        );
        // ADD into a namespace that does not exist: code 3.
        let mut add = req(Command::Add, "c1");
        add.netns = "/nonexistent/netns".into();
        match handle(&ctx, add).await {
            AgentResponse::Error(e) => assert_eq!(e.code, code::UNKNOWN_CONTAINER),
            other => panic!("{other:?}"),
        }
        let owner = Owner {
            network: "fp".into(),
            ..Owner::default()
        };
        ipam.reserve("a", "eth0", &owner).unwrap();
        ipam.reserve("b", "eth0", &owner).unwrap();
        match handle(&ctx, req(Command::Status, "")).await {
            AgentResponse::Error(e) => assert_eq!(e.code, code::LIMITED_IPAM),
            other => panic!("{other:?}"),
        }
        // GC with only "a" valid frees "b".
        let mut g = req(Command::Gc, "");
        g.valid_attachments = vec![ferroplane_cni::Attachment {
            container_id: "a".into(),
            ifname: "eth0".into(),
        }];
        assert_eq!(handle(&ctx, g).await, AgentResponse::Ok { result: None });
        assert_eq!(ipam.free().unwrap(), 1);
        assert!(ipam.get("a", "eth0").unwrap().is_some());
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn bad_netns_refused_before_anything_is_reserved() {
        let dir = std::env::temp_dir().join(format!("fp-cni-netns-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pool: Ipv4Cidr = "10.3.0.0/29".parse().unwrap();
        let ipam = Arc::new(Ipam::open(dir.join("ipam"), pool).unwrap());
        let free = ipam.free().unwrap();
        let regular = dir.join("regular-file");
        fs::write(&regular, b"").unwrap();
        // Every operation that reaches the main loop is counted: none may.
        let ops = Arc::new(AtomicUsize::new(0));
        let tx = stand_in_main_loop(ops.clone());
        let ctx = CniContext {
            ipam: ipam.clone(),
            ops: tx,
            services: Default::default(),
        };
        let req = |command, netns: &str| AgentRequest {
            proto: PROTO_VERSION,
            command,
            network: "fp".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: netns.into(),
            pod_namespace: None,
            pod_name: None,
            dns: Default::default(),
            expect_ip: Some("10.3.0.1".into()),
            valid_attachments: Vec::new(),
            port_mappings: Vec::new(),
        };
        let refused = |r: AgentResponse, needle: &str| match r {
            AgentResponse::Error(e) => {
                assert_eq!(e.code, code::INVALID_ENV, "{e:?}");
                assert!(e.msg.contains(needle), "{needle:?} not in {e:?}");
            }
            other => panic!("{other:?}"),
        };
        // The agent's own namespace (the node's), under two paths.
        let own = format!("/proc/{}/ns/net", std::process::id());
        for netns in ["/proc/self/ns/net", own.as_str()] {
            for cmd in [Command::Add, Command::Check, Command::Del] {
                refused(handle(&ctx, req(cmd, netns)).await, "own network namespace");
            }
        }
        // Not a network namespace: ADD and CHECK refused.
        let regular = regular.display().to_string();
        for netns in [regular.as_str(), "/proc/self/ns/mnt"] {
            for cmd in [Command::Add, Command::Check] {
                refused(
                    handle(&ctx, req(cmd, netns)).await,
                    "not a network namespace",
                );
            }
        }
        assert_eq!(ipam.free().unwrap(), free, "an address was reserved");
        assert!(ipam.records().unwrap().is_empty());
        assert_eq!(ops.load(Ordering::SeqCst), 0, "the main loop was asked");
        // DEL of a namespace that is no longer one cleans up the host side as usual.
        assert_eq!(
            handle(&ctx, req(Command::Del, &regular)).await,
            AgentResponse::Ok { result: None }
        );
        assert_eq!(ops.load(Ordering::SeqCst), 1);
        let _ = fs::remove_dir_all(&dir);
    }
}
