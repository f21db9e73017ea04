//! The socket: bound mode 0600, connections limited and timed out, one JSON request line
//! in, one JSON response line out ([`ferroplane_cni::proto`]).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferroplane_cni::proto::PROTO_VERSION;
use ferroplane_cni::{code, AgentRequest, AgentResponse, CniError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::warn;

use super::{handle, CniContext};
use crate::listen::{AcceptErrors, ConnGuard, ConnTable};

/// Longest request line accepted (a network configuration with its `prevResult` is a few
/// kB).
pub(super) const MAX_REQUEST: usize = 256 << 10;
/// How long a client may take to send its request (the plugin sends it at once).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections open at once; at the limit a new connection closes the oldest one that
/// has not sent its request yet ([`crate::listen::ConnTable`]), so held connections never
/// lock the runtime's plugin out.
const MAX_CONNECTIONS: usize = 128;

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

/// Serves one connection: one request line, one response line.
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
