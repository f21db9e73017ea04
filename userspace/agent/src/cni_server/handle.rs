//! Answering a request: the dispatch by command (with its log line), the agent's check of
//! `CNI_NETNS`, and what the command handlers share (errors, IPAM off the runtime, the
//! round trip to the main loop).

use ferroplane_cni::netns::host_namespaces;
use ferroplane_cni::{code, AgentRequest, AgentResponse, CniError, Command};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::add::add;
use super::check::{check, status};
use super::del::{del, gc};
use super::{CniContext, PodOp};
use crate::ipam::IpamError;

/// An error of the agent itself ([`code::AGENT_FAILURE`]).
pub(super) fn agent_err(msg: impl Into<String>) -> CniError {
    CniError::new(code::AGENT_FAILURE, msg)
}

/// An IPAM error as the CNI error the runtime sees.
pub(super) fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted { .. } => CniError::new(code::IPAM_EXHAUSTED, e.to_string()),
        IpamError::HostPortConflict { .. } => CniError::new(code::HOSTPORT_CONFLICT, e.to_string()),
        other => CniError::new(code::IO_FAILURE, other.to_string()),
    }
}

/// Runs an IPAM call (file I/O, locks) off the runtime.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IpamError> + Send + 'static,
) -> Result<T, CniError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| agent_err(format!("IPAM task failed: {e}")))?
        .map_err(ipam_err)
}

/// Sends a [`PodOp`] to the agent's main loop and waits for its answer.
pub(super) async fn op<T>(
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
