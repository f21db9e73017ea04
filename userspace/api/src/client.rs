//! The blocking API client used by `ferroctl`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::{ApiError, Result};
use crate::types::{
    CountersReport, ErrorCounter, InterfaceInfo, RequestEnvelope, Response, RouteInfo, VersionInfo,
    XdpReport,
};
use crate::{Request, API_VERSION};

/// How long [`Client::connect`] lets each send and each answer take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the agent's API socket.
///
/// Requests are answered in turn on the same connection. After an error that
/// leaves the connection out of step (timeout, closed connection, garbled
/// answer) the next call connects again.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The connection can no longer be trusted to pair requests and answers.
    broken: bool,
}

impl Client {
    /// Connects to the agent at `path` with [`DEFAULT_TIMEOUT`].
    ///
    /// Fails with [`ApiError::NotRunning`] ("agent not running (no socket at
    /// PATH)") when nothing is at `path`, [`ApiError::ConnectionRefused`] for a
    /// stale socket and [`ApiError::PermissionDenied`] when the caller may not
    /// open it.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Like [`connect`](Self::connect) with `timeout` bounding each send and
    /// each wait for an answer (a zero `timeout` is taken as 1 ms).
    pub fn connect_with_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let timeout = timeout.max(Duration::from_millis(1));
        let stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ApiError::NotRunning { path: path.clone() },
            io::ErrorKind::ConnectionRefused => ApiError::ConnectionRefused { path: path.clone() },
            io::ErrorKind::PermissionDenied => ApiError::PermissionDenied { path: path.clone() },
            _ => ApiError::io(format!("connecting to {}", path.display()), e),
        })?;
        let setup = |e| {
            ApiError::io(
                format!("setting up the connection to {}", path.display()),
                e,
            )
        };
        stream.set_read_timeout(Some(timeout)).map_err(setup)?;
        stream.set_write_timeout(Some(timeout)).map_err(setup)?;
        let reader = BufReader::new(stream.try_clone().map_err(setup)?);
        Ok(Client {
            path,
            timeout,
            reader,
            writer: stream,
            broken: false,
        })
    }

    /// The socket path this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `req` and returns the response's `data` (`null` when absent).
    ///
    /// Fails with [`ApiError::VersionMismatch`] when the agent answers with
    /// another API version, [`ApiError::Agent`] when it answers `ok:false`,
    /// [`ApiError::Timeout`] / [`ApiError::Closed`] when it does not answer.
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value> {
        if self.broken {
            *self = Self::connect_with_timeout(&self.path, self.timeout)?;
        }
        let result = self.exchange(req);
        if let Err(
            ApiError::Timeout { .. }
            | ApiError::Closed
            | ApiError::InvalidResponse(_)
            | ApiError::Io { .. },
        ) = &result
        {
            self.broken = true;
        }
        result
    }

    /// One request/answer exchange on the current connection.
    fn exchange(&mut self, req: &Request) -> Result<serde_json::Value> {
        let mut line = serde_json::to_vec(&RequestEnvelope::new(req.clone()))
            .map_err(|e| ApiError::io("encoding the request", io::Error::other(e)))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .and_then(|()| self.writer.flush())
            .map_err(|e| self.map_io(e, "sending the request"))?;

        let mut answer = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut answer)
            .map_err(|e| self.map_io(e, "reading the answer"))?;
        if n == 0 {
            return Err(ApiError::Closed);
        }
        let response: Response = serde_json::from_slice(&answer).map_err(|e| {
            let text = String::from_utf8_lossy(&answer);
            ApiError::InvalidResponse(format!("{e} in {:?}", truncate(text.trim_end(), 200)))
        })?;
        if response.api_version != API_VERSION {
            return Err(ApiError::VersionMismatch {
                client: API_VERSION,
                agent: response.api_version,
            });
        }
        if !response.ok {
            return Err(ApiError::Agent(
                response
                    .error
                    .unwrap_or_else(|| "failed without a message".into()),
            ));
        }
        Ok(response.data.unwrap_or(serde_json::Value::Null))
    }

    /// Sends `req` and decodes the response's `data` as `T`.
    pub fn call_typed<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T> {
        let data = self.call(req)?;
        serde_json::from_value(data).map_err(|source| ApiError::Decode {
            request: req.kind(),
            source,
        })
    }

    /// `show_interfaces`.
    pub fn interfaces(&mut self) -> Result<Vec<InterfaceInfo>> {
        self.call_typed(&Request::ShowInterfaces)
    }

    /// `show_routes`.
    pub fn routes(&mut self) -> Result<Vec<RouteInfo>> {
        self.call_typed(&Request::ShowRoutes)
    }

    /// `show_counters`.
    pub fn counters(&mut self) -> Result<CountersReport> {
        self.call_typed(&Request::ShowCounters)
    }

    /// `show_errors` (zero counters included).
    pub fn errors(&mut self) -> Result<Vec<ErrorCounter>> {
        self.call_typed(&Request::ShowErrors)
    }

    /// `show_xdp`.
    pub fn xdp(&mut self) -> Result<XdpReport> {
        self.call_typed(&Request::ShowXdp)
    }

    /// `show_buffers`.
    pub fn buffers(&mut self) -> Result<crate::BuffersReport> {
        self.call_typed(&Request::ShowBuffers)
    }

    /// `clear_counters`.
    pub fn clear_counters(&mut self) -> Result<()> {
        self.call(&Request::ClearCounters).map(drop)
    }

    /// `version`.
    pub fn version(&mut self) -> Result<VersionInfo> {
        self.call_typed(&Request::Version)
    }

    fn map_io(&self, e: io::Error, doing: &str) -> ApiError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ApiError::Timeout {
                timeout: self.timeout,
            },
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof => ApiError::Closed,
            _ => ApiError::io(format!("{doing} on {}", self.path.display()), e),
        }
    }
}

/// At most `max` characters of `s`.
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
