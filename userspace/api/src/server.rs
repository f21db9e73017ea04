//! The blocking API server run by the agent.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::error::{ApiError, Result};
use crate::types::{RequestEnvelope, Response};
use crate::{Request, API_VERSION};

/// Longest request line the server reads (bytes, newline included); a longer
/// one gets `ok:false` and the connection is closed.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// Most connections served at once; further ones get `ok:false` and are closed.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection idle for this long is closed by the server.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

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

/// Open connections, so that dropping the server can shut them down.
type Connections = Arc<Mutex<HashMap<u64, UnixStream>>>;

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
                .spawn(move || accept_loop(listener, handler, shutdown, connections))
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
        for (_, conn) in lock(&self.connections).drain() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
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
) {
    let mut next_id: u64 = 0;
    for conn in listener.incoming() {
        if shutdown.load(Ordering::SeqCst) {
            break;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // E.g. EMFILE: back off instead of spinning.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let id = next_id;
        next_id = next_id.wrapping_add(1);
        {
            let mut conns = lock(&connections);
            if conns.len() >= MAX_CONNECTIONS {
                drop(conns);
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                let _ = write_response(
                    &mut stream,
                    &Response::failure(format!(
                        "too many API connections (at most {MAX_CONNECTIONS})"
                    )),
                );
                continue;
            }
            match stream.try_clone() {
                Ok(clone) => {
                    conns.insert(id, clone);
                }
                Err(_) => continue,
            }
        }
        let handler = Arc::clone(&handler);
        let conns = Arc::clone(&connections);
        let spawned = thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                serve_connection(stream, handler.as_ref());
                lock(&conns).remove(&id);
            });
        if spawned.is_err() {
            lock(&connections).remove(&id);
        }
    }
}

/// Serves one connection until EOF, an I/O error or an oversized line.
fn serve_connection(stream: UnixStream, handler: &(dyn Handler + Send + Sync)) {
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
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
        let limit = MAX_LINE_LEN as u64 + 1;
        let n = match (&mut reader).take(limit).read_until(b'\n', &mut line) {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if line.len() > MAX_LINE_LEN {
            let _ = write_response(
                &mut writer,
                &Response::failure(format!(
                    "request line longer than {MAX_LINE_LEN} bytes; closing the connection"
                )),
            );
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let response = answer_line(&line, handler);
        if write_response(&mut writer, &response).is_err() {
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
