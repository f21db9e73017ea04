//! The blocking API server run by the agent.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::{ApiError, Result};
use crate::types::{RequestEnvelope, Response};
use crate::{Request, API_VERSION};

/// Longest request line the server reads (bytes, newline included); a longer
/// one gets `ok:false` and the connection is closed.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// Most connections open at once. At the limit a new connection closes the oldest *idle*
/// one (waiting for a request line), so that idle connections held by a client never lock
/// `ferroctl` out; only when every connection is busy answering is the new one answered
/// `ok:false` and closed.
pub const MAX_CONNECTIONS: usize = 256;

/// A connection idle (no request started) for this long is closed by the server.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request line must be complete within this time of its first byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause of the accept loop after an error that more accepting cannot fix (e.g. EMFILE).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connection limits of an [`ApiServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once (see [`MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// An idle connection (no request started) is closed after this long.
    pub idle_timeout: Duration,
    /// A request line must be complete within this time of its first byte.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            idle_timeout: IDLE_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// Bound on writing one response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers requests; implemented by the agent.
///
/// Called from the server's connection threads, possibly concurrently. A
/// panic is caught and answered as `ok:false`, but a handler should return
/// `Err` instead.
pub trait Handler {
    /// Answers `req` with the JSON `data` of a successful response (its type
    /// is documented on each [`Request`] variant), or with an error message
    /// sent back as `ok:false`.
    fn handle(&self, req: &Request) -> std::result::Result<serde_json::Value, String>;
}

impl<F> Handler for F
where
    F: Fn(&Request) -> std::result::Result<serde_json::Value, String>,
{
    fn handle(&self, req: &Request) -> std::result::Result<serde_json::Value, String> {
        self(req)
    }
}

/// Shared handler as the server holds it.
type SharedHandler = Arc<dyn Handler + Send + Sync>;

/// An open connection: its stream (to shut it down) and whether it is answering.
struct Conn {
    stream: UnixStream,
    busy: Arc<AtomicBool>,
}

/// Open connections by admission order, so that dropping the server can shut them down and
/// the oldest idle one can make room.
type Connections = Arc<Mutex<BTreeMap<u64, Conn>>>;

/// The agent's API endpoint: a unix socket served by a background thread,
/// one thread per connection.
///
/// Dropping it stops accepting, shuts down open connections and removes the
/// socket file (if it is still the one this server created).
pub struct ApiServer {
    path: PathBuf,
    /// `(dev, ino)` of the socket file this server created.
    ident: (u64, u64),
    shutdown: Arc<AtomicBool>,
    connections: Connections,
    accept_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Listens on `path` and serves requests with `handler`.
    ///
    /// Creates the parent directory if needed. A stale socket at `path`
    /// (nobody accepting) is replaced; a live one is an
    /// [`ApiError::AddrInUse`] and anything that is not a socket an
    /// [`ApiError::NotASocket`]. The socket gets mode 0600 before it appears
    /// at `path` (it is bound under a temporary name, chmod-ed and renamed).
    pub fn bind(path: impl AsRef<Path>, handler: Arc<dyn Handler + Send + Sync>) -> Result<Self> {
        Self::bind_with(path, handler, Limits::default())
    }

    /// [`bind`](Self::bind) with connection `limits`.
    pub fn bind_with(
        path: impl AsRef<Path>,
        handler: Arc<dyn Handler + Send + Sync>,
        limits: Limits,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| {
                ApiError::io(
                    format!("socket path {}", path.display()),
                    io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
                )
            })?
            .to_string_lossy()
            .into_owned();
        fs::create_dir_all(&parent)
            .map_err(|e| ApiError::io(format!("creating {}", parent.display()), e))?;
        check_existing(&path)?;

        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = parent.join(format!(
            ".{file_name}.{}.{}.tmp",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp)
            .map_err(|e| ApiError::io(format!("binding {}", tmp.display()), e))?;
        let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .map_err(|e| ApiError::io(format!("chmod 0600 {}", tmp.display()), e))
            .and_then(|()| {
                fs::rename(&tmp, &path).map_err(|e| {
                    ApiError::io(
                        format!("renaming {} to {}", tmp.display(), path.display()),
                        e,
                    )
                })
            });
        if let Err(e) = placed {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| ApiError::io(format!("stat {}", path.display()), e))?;
        let ident = (meta.dev(), meta.ino());

        let shutdown = Arc::new(AtomicBool::new(false));
        let connections: Connections = Arc::default();
        let accept_thread = {
            let shutdown = Arc::clone(&shutdown);
            let connections = Arc::clone(&connections);
            thread::Builder::new()
                .name("api-accept".into())
                .spawn(move || accept_loop(listener, handler, shutdown, connections, limits))
        };
        let accept_thread = match accept_thread {
            Ok(t) => t,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(ApiError::io("spawning the API accept thread", e));
            }
        };
        Ok(ApiServer {
            path,
            ident,
            shutdown,
            connections,
            accept_thread: Some(accept_thread),
        })
    }

    /// The socket path the server listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True while the socket file at [`path`](Self::path) is the one this
    /// server created.
    fn owns_socket_file(&self) -> bool {
        fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.ident)
            .unwrap_or(false)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let ours = self.owns_socket_file();
        // Wake the blocked accept() with a connection of our own; only when
        // the socket file is still ours can we be sure it reaches our listener.
        let woken = ours && UnixStream::connect(&self.path).is_ok();
        if ours {
            let _ = fs::remove_file(&self.path);
        }
        if let Some(t) = self.accept_thread.take() {
            if woken {
                let _ = t.join();
            }
            // Otherwise the thread stays blocked in accept() and exits on the
            // next connection; detaching it is the best we can do.
        }
        // After the join no connection can be added any more.
        for (_, conn) in std::mem::take(&mut *lock(&self.connections)) {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Locks ignoring poisoning (the map stays consistent whatever panicked).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Refuses a live socket or a non-socket at `path`; removes a stale socket.
fn check_existing(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ApiError::io(format!("stat {}", path.display()), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiError::AddrInUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path)
            .map_err(|e| ApiError::io(format!("removing stale socket {}", path.display()), e)),
        Err(e) => Err(ApiError::io(format!("probing {}", path.display()), e)),
    }
}

fn accept_loop(
    listener: UnixListener,
    handler: SharedHandler,
    shutdown: Arc<AtomicBool>,
    connections: Connections,
    limits: Limits,
) {
    let max = limits.max_connections.max(1);
    let mut next_id: u64 = 0;
    for conn in listener.incoming() {
        if shutdown.load(Ordering::SeqCst) {
            break;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            Err(_) => {
                // E.g. EMFILE: back off instead of spinning.
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        let id = next_id;
        next_id = next_id.wrapping_add(1);
        let busy = Arc::new(AtomicBool::new(false));
        {
            let mut conns = lock(&connections);
            if conns.len() >= max && !evict_oldest_idle(&mut conns) {
                drop(conns);
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                let _ = write_response(
                    &mut stream,
                    &Response::failure(format!(
                        "too many API connections (at most {max}, all busy)"
                    )),
                );
                continue;
            }
            match stream.try_clone() {
                Ok(clone) => {
                    conns.insert(
                        id,
                        Conn {
                            stream: clone,
                            busy: Arc::clone(&busy),
                        },
                    );
                }
                Err(_) => continue,
            }
        }
        let handler = Arc::clone(&handler);
        let conns = Arc::clone(&connections);
        let spawned = thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                serve_connection(stream, handler.as_ref(), &busy, limits);
                lock(&conns).remove(&id);
            });
        if spawned.is_err() {
            if let Some(c) = lock(&connections).remove(&id) {
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Shuts down the oldest connection that is not answering a request (its thread sees EOF
/// and ends); false when every connection is busy.
fn evict_oldest_idle(conns: &mut BTreeMap<u64, Conn>) -> bool {
    let oldest = conns
        .iter()
        .find(|(_, c)| !c.busy.load(Ordering::SeqCst))
        .map(|(id, _)| *id);
    match oldest.and_then(|id| conns.remove(&id)) {
        Some(c) => {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            true
        }
        None => false,
    }
}

/// How reading a request line ended.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// A whole line (newline included) is in the buffer.
    Line,
    /// The peer closed (or nothing came within the idle timeout), or an I/O error.
    Closed,
    /// More than [`MAX_LINE_LEN`] bytes without a newline.
    TooLong,
    /// A started line was not finished within the request timeout.
    TooSlow,
}

/// Reads one request line into `line`: up to the idle timeout for its first byte, then the
/// request timeout for the whole line, never more than [`MAX_LINE_LEN`] bytes.
fn read_line(reader: &mut BufReader<UnixStream>, line: &mut Vec<u8>, limits: Limits) -> LineRead {
    let mut deadline: Option<Instant> = None;
    loop {
        let timeout = match deadline {
            None => limits.idle_timeout,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left,
                _ => return LineRead::TooSlow,
            },
        };
        if reader.get_ref().set_read_timeout(Some(timeout)).is_err() {
            return LineRead::Closed;
        }
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if deadline.is_some()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                return LineRead::TooSlow
            }
            Err(_) => return LineRead::Closed,
        };
        if buf.is_empty() {
            return LineRead::Closed;
        }
        deadline.get_or_insert_with(|| Instant::now() + limits.request_timeout);
        let room = MAX_LINE_LEN + 1 - line.len();
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) if i < room => (i + 1, true),
            _ => (buf.len().min(room), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done {
            return LineRead::Line;
        }
        if line.len() > MAX_LINE_LEN {
            return LineRead::TooLong;
        }
    }
}

/// Serves one connection until EOF, an I/O error, a timeout or an oversized line; `busy`
/// is set while a request is being answered.
fn serve_connection(
    stream: UnixStream,
    handler: &(dyn Handler + Send + Sync),
    busy: &AtomicBool,
    limits: Limits,
) {
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut reader, &mut line, limits) {
            LineRead::Line => {}
            LineRead::Closed => return,
            LineRead::TooLong => {
                let _ = write_response(
                    &mut writer,
                    &Response::failure(format!(
                        "request line longer than {MAX_LINE_LEN} bytes; closing the connection"
                    )),
                );
                return;
            }
            LineRead::TooSlow => {
                let _ = write_response(
                    &mut writer,
                    &Response::failure(format!(
                        "request line not complete within {} ms; closing the connection",
                        limits.request_timeout.as_millis()
                    )),
                );
                return;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        busy.store(true, Ordering::SeqCst);
        let response = answer_line(&line, handler);
        let written = write_response(&mut writer, &response);
        busy.store(false, Ordering::SeqCst);
        if written.is_err() {
            return;
        }
    }
}

/// Turns one request line into its response; never panics.
fn answer_line(line: &[u8], handler: &(dyn Handler + Send + Sync)) -> Response {
    let value: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return Response::failure(format!("invalid JSON request: {e}")),
    };
    let Some(obj) = value.as_object() else {
        return Response::failure(format!(
            "invalid request: expected an object like \
             {{\"api_version\":{API_VERSION},\"request\":{{\"kind\":\"version\"}}}}"
        ));
    };
    match obj.get("api_version") {
        None => {
            return Response::failure(format!(
                "missing api_version: this agent speaks api_version {API_VERSION}"
            ))
        }
        Some(v) if v.as_u64() != Some(u64::from(API_VERSION)) => {
            return Response::failure(format!(
                "unsupported api_version {v}: this agent speaks api_version {API_VERSION}"
            ))
        }
        Some(_) => {}
    }
    let envelope: RequestEnvelope = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return Response::failure(format!("invalid request: {e}")),
    };
    let request = envelope.request;
    match panic::catch_unwind(AssertUnwindSafe(|| handler.handle(&request))) {
        Ok(Ok(data)) => Response::success(data),
        Ok(Err(message)) => Response::failure(message),
        Err(_) => Response::failure(format!("internal agent error while handling {request}")),
    }
}

fn write_response(w: &mut UnixStream, response: &Response) -> io::Result<()> {
    let mut buf = serde_json::to_vec(response).unwrap_or_else(|e| {
        serde_json::to_vec(&Response::failure(format!(
            "internal agent error: cannot encode the response: {e}"
        )))
        .unwrap_or_default()
    });
    buf.push(b'\n');
    w.write_all(&buf)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn echo(req: &Request) -> std::result::Result<serde_json::Value, String> {
        match req {
            Request::ClearCounters => Err("nope".into()),
            Request::ShowXdp => panic!("handler bug"),
            other => Ok(json!(other.kind())),
        }
    }

    fn answer(line: &str) -> Response {
        answer_line(line.as_bytes(), &echo)
    }

    /// A server with small limits on a fresh socket (removed on drop).
    fn small_server(tag: &str, limits: Limits) -> ApiServer {
        let path = std::env::temp_dir().join(format!(
            "fp-api-{tag}-{}-{:?}.sock",
            std::process::id(),
            std::thread::current().id()
        ));
        ApiServer::bind_with(&path, Arc::new(echo), limits).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 8,
            idle_timeout: Duration::from_millis(400),
            request_timeout: Duration::from_millis(400),
        }
    }

    /// One request on a new connection, timed.
    fn ask(path: &Path) -> (Response, Duration) {
        let t0 = Instant::now();
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"{\"api_version\":1,\"request\":{\"kind\":\"show_routes\"}}\n")
            .unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        (serde_json::from_str(&line).unwrap(), t0.elapsed())
    }

    #[test]
    fn held_idle_connections_do_not_lock_out() {
        let server = small_server(
            "held",
            Limits {
                idle_timeout: Duration::from_secs(30),
                ..limits()
            },
        );
        let held: Vec<UnixStream> = (0..40)
            .map(|_| UnixStream::connect(server.path()).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        assert!(lock(&server.connections).len() <= 8);
        let (r, took) = ask(server.path());
        assert_eq!(r, Response::success(json!("show_routes")));
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(lock(&server.connections).len() <= 8);
        // The oldest held connections were closed to make room.
        let mut first = &held[0];
        first
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut first, &mut buf).unwrap(), 0);
    }

    #[test]
    fn slow_client_does_not_block_another() {
        let server = small_server(
            "slow",
            Limits {
                request_timeout: Duration::from_secs(30),
                ..limits()
            },
        );
        let mut slow = UnixStream::connect(server.path()).unwrap();
        slow.write_all(b"{\"api_version\":1,").unwrap();
        let (r, took) = ask(server.path());
        assert!(r.ok);
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn idle_connection_closed_after_timeout() {
        let server = small_server("idle", limits());
        let mut s = UnixStream::connect(server.path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let t0 = Instant::now();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut out).unwrap();
        assert!(out.is_empty());
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn dripped_request_line_cut_off() {
        let server = small_server("drip", limits());
        let mut s = UnixStream::connect(server.path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let t0 = Instant::now();
        // One byte every 100 ms never finishes a line: refused after the request timeout.
        let mut sent = 0;
        while t0.elapsed() < Duration::from_secs(2) && s.write_all(b" ").is_ok() {
            sent += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(sent < 19, "still reading after {sent} bytes");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let r: Response = serde_json::from_str(&line).unwrap();
        assert!(r.error.unwrap().contains("not complete within 400 ms"));
    }

    #[test]
    fn answers_good_request() {
        let r = answer(r#"{"api_version":1,"request":{"kind":"show_routes"}}"#);
        assert_eq!(r, Response::success(json!("show_routes")));
    }

    #[test]
    fn rejects_bad_lines() {
        let cases = [
            ("garbage", "invalid JSON request"),
            ("[1,2]", "invalid request: expected an object"),
            (r#"{"request":{"kind":"version"}}"#, "missing api_version"),
            (
                r#"{"api_version":2,"request":{"kind":"version"}}"#,
                "unsupported api_version 2: this agent speaks api_version 1",
            ),
            (
                r#"{"api_version":"1","request":{"kind":"version"}}"#,
                "unsupported api_version \"1\"",
            ),
            (
                r#"{"api_version":1,"request":{"kind":"reboot"}}"#,
                "unknown variant `reboot`",
            ),
            (r#"{"api_version":1}"#, "missing field `request`"),
        ];
        for (line, want) in cases {
            let r = answer(line);
            assert!(!r.ok, "{line}");
            assert_eq!(r.api_version, API_VERSION);
            assert!(r.data.is_none());
            let err = r.error.unwrap();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn handler_error_and_panic_become_failures() {
        let r = answer(r#"{"api_version":1,"request":{"kind":"clear_counters"}}"#);
        assert_eq!(r, Response::failure("nope"));
        let r = answer(r#"{"api_version":1,"request":{"kind":"show_xdp"}}"#);
        assert_eq!(
            r,
            Response::failure("internal agent error while handling show_xdp")
        );
    }
}
