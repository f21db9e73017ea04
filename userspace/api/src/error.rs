//! The crate's error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of the client and of binding the server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Nothing exists at the socket path.
    #[error("agent not running (no socket at {})", path.display())]
    NotRunning {
        /// The socket path tried.
        path: PathBuf,
    },
    /// The socket file exists but nobody listens on it (a stale socket).
    #[error("agent not running (connection refused at {})", path.display())]
    ConnectionRefused {
        /// The socket path tried.
        path: PathBuf,
    },
    /// The caller may not open the socket (it is mode 0600, owned by the agent's user).
    #[error("permission denied on {} (ferroctl needs the agent's user, usually root)", path.display())]
    PermissionDenied {
        /// The socket path tried.
        path: PathBuf,
    },
    /// The agent did not answer in time.
    #[error("agent did not answer within {:.1}s", timeout.as_secs_f64())]
    Timeout {
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The agent closed the connection before answering.
    #[error("agent closed the connection before answering")]
    Closed,
    /// The two sides speak different API versions.
    #[error(
        "API version mismatch: this client speaks api_version {client}, the agent speaks {agent}"
    )]
    VersionMismatch {
        /// This crate's [`API_VERSION`](crate::API_VERSION).
        client: u32,
        /// The version the agent answered with.
        agent: u32,
    },
    /// The agent answered `ok:false`.
    #[error("agent error: {0}")]
    Agent(String),
    /// The agent's answer is not a valid response line.
    #[error("invalid response from agent: {0}")]
    InvalidResponse(String),
    /// The response's `data` does not have the type the request implies.
    #[error("unexpected data for {request}: {source}")]
    Decode {
        /// The request's wire name.
        request: &'static str,
        /// Why the data did not decode.
        source: serde_json::Error,
    },
    /// Another server is already listening on the path (from [`ApiServer::bind`](crate::ApiServer::bind)).
    #[error("another agent is already listening on {}", path.display())]
    AddrInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; it is left alone (from [`ApiServer::bind`](crate::ApiServer::bind)).
    #[error("{} exists and is not a socket", path.display())]
    NotASocket {
        /// The offending path.
        path: PathBuf,
    },
    /// Any other I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl ApiError {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        ApiError::Io {
            context: context.into(),
            source,
        }
    }

    /// True for the errors meaning no agent is reachable at the path
    /// ([`NotRunning`](ApiError::NotRunning), [`ConnectionRefused`](ApiError::ConnectionRefused)).
    pub fn is_not_running(&self) -> bool {
        matches!(
            self,
            ApiError::NotRunning { .. } | ApiError::ConnectionRefused { .. }
        )
    }
}

/// Result with [`ApiError`].
pub type Result<T> = std::result::Result<T, ApiError>;
