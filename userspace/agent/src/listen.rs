//! What every listener of the agent shares so that no client can starve it: a connection
//! table with a limit, accept loops that back off when descriptors run out, a small runtime
//! of their own for the HTTP endpoints, and an HTTP/1.1 server (hyper) with a header size
//! limit, a header read timeout and an idle timeout.
//!
//! Connection limit: when a listener is full, a new connection closes the *oldest idle* one
//! (a connection still waiting for its request, or between requests) instead of being
//! refused, as nginx reuses idle keep-alive connections when it runs out of them. Idle
//! connections held by a client therefore never lock other clients out, and the number of
//! descriptors a listener holds stays bounded. Only when every slot is busy answering a
//! request is the new connection closed at once.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;

/// Listen backlog of the agent's sockets.
pub const BACKLOG: u32 = 1024;

/// Pause of an accept loop after an error that more accepting cannot fix (out of
/// descriptors or memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Descriptors kept out of every listener's share (engine sockets, netlink, BPF maps, CNI
/// plumbing, files).
const FD_RESERVE: u64 = 512;

/// Listeners that share the descriptor budget (health, metrics, health-check node ports,
/// API socket, CNI socket) plus room for the transient descriptors of accepting.
const FD_SHARES: u64 = 6;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as systemd services and container
/// runtimes allow) and returns the soft limit in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// The connection limit for one listener: `wanted`, lowered so that every listener full at
/// once still leaves [`FD_RESERVE`] descriptors of the soft `RLIMIT_NOFILE` to the rest of
/// the agent (at least 16).
pub fn connection_limit(wanted: usize) -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(s, _)| s)
        .unwrap_or(1024);
    let share = soft.saturating_sub(FD_RESERVE) / FD_SHARES;
    wanted
        .min(usize::try_from(share).unwrap_or(usize::MAX))
        .max(16)
}

/// The small runtime (one thread, `fp-listeners`) that serves the HTTP endpoints (health,
/// metrics, health-check node ports), away from the agent's main loop: however busy they
/// are, the main loop, the engine and the CNI socket keep their thread.
pub fn runtime() -> io::Result<tokio::runtime::Handle> {
    static RT: OnceLock<Mutex<Option<tokio::runtime::Handle>>> = OnceLock::new();
    let slot = RT.get_or_init(|| Mutex::new(None));
    let mut slot = lock(slot);
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("fp-listeners".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    *slot = Some(handle.clone());
    Ok(handle)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds a TCP listener (`SO_REUSEADDR`, backlog [`BACKLOG`]) registered with `rt`.
pub fn bind_tcp(addr: SocketAddr, rt: &tokio::runtime::Handle) -> io::Result<TcpListener> {
    let _enter = rt.enter();
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accept errors of one listener: logged once, and a pause when more accepting cannot help
/// (no descriptors, no memory), so that an accept loop never spins.
#[derive(Debug)]
pub struct AcceptErrors {
    name: &'static str,
    logged: bool,
}

impl AcceptErrors {
    /// For the listener called `name` (in logs).
    pub fn new(name: &'static str) -> AcceptErrors {
        AcceptErrors {
            name,
            logged: false,
        }
    }

    /// Handles one accept error: returns after a pause for resource errors, at once for
    /// errors of the one connection (reset before it was accepted).
    pub async fn on_error(&mut self, e: io::Error) {
        let resource = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if !resource
            && matches!(
                e.kind(),
                io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::Interrupted
            )
        {
            return;
        }
        if !self.logged {
            self.logged = true;
            tracing::warn!(
                listener = self.name,
                "accept failed: {e}; pausing {} ms between attempts (logged once)",
                ACCEPT_BACKOFF.as_millis()
            );
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// The open connections of a listener (or of a group of listeners), at most `max`.
#[derive(Debug)]
pub struct ConnTable {
    name: &'static str,
    max: usize,
    inner: Mutex<Inner>,
    evicted: AtomicU64,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// By admission order: the first idle entry is the oldest idle connection.
    conns: BTreeMap<u64, Slot>,
}

#[derive(Debug)]
struct Slot {
    busy: Arc<AtomicBool>,
    kill: Arc<Notify>,
}

impl ConnTable {
    /// A table called `name` (in logs) holding at most `max` connections (at least 1).
    pub fn new(name: &'static str, max: usize) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            name,
            max: max.max(1),
            inner: Mutex::default(),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Admits a new connection. At the limit, the oldest idle connection is told to close
    /// (it closes when its task next runs) and the new one takes its place; `None` when
    /// every connection is busy (close the new one at once).
    pub fn admit(self: &Arc<Self>) -> Option<ConnGuard> {
        let mut inner = lock(&self.inner);
        if inner.conns.len() >= self.max {
            let oldest_idle = inner
                .conns
                .iter()
                .find(|(_, s)| !s.busy.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            match oldest_idle.and_then(|id| inner.conns.remove(&id)) {
                Some(slot) => {
                    slot.kill.notify_one();
                    if self.evicted.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(
                            listener = self.name,
                            max = self.max,
                            "connection limit reached: closing the oldest idle connections \
                             for new ones (logged once)"
                        );
                    }
                }
                None => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        let id = inner.next;
        inner.next += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let kill = Arc::new(Notify::new());
        inner.conns.insert(
            id,
            Slot {
                busy: busy.clone(),
                kill: kill.clone(),
            },
        );
        Some(ConnGuard {
            table: self.clone(),
            id,
            busy,
            kill,
        })
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        lock(&self.inner).conns.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Idle connections closed to make room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// New connections closed at once because every slot was busy.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One admitted connection; dropping it frees its slot.
#[derive(Debug)]
pub struct ConnGuard {
    table: Arc<ConnTable>,
    id: u64,
    busy: Arc<AtomicBool>,
    kill: Arc<Notify>,
}

impl ConnGuard {
    /// Marks the connection busy (answering a request: not closed to make room) or idle.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// The busy flag, for a handler that outlives a borrow of the guard.
    pub fn busy_flag(&self) -> Arc<AtomicBool> {
        self.busy.clone()
    }

    /// Completes when the table closed this connection to make room for a new one.
    pub async fn evicted(&self) {
        self.kill.notified().await;
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        lock(&self.table.inner).conns.remove(&self.id);
    }
}

/// Limits of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Most connections open at once (see [`ConnTable`]).
    pub max_connections: usize,
    /// A request head (request line and headers) must arrive within this time of the
    /// connection's start.
    pub header_read_timeout: Duration,
    /// A connection that neither reads nor writes a byte for this long is closed (a client
    /// that stops reading its response).
    pub idle_timeout: Duration,
    /// Largest request head read (hyper's read buffer; at least 8192): larger gets 431.
    pub max_head_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            max_head_bytes: 8192,
        }
    }
}

/// Answers a request from its head (method, path, headers); bodies are not read.
pub type HttpHandler = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// A plain-text (or any `content_type`) response that closes the connection.
pub fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    r
}

/// Serves HTTP/1.1 on `listener` until the task is aborted: one task per connection (a
/// slow client delays nobody else), connections counted in `table`, one request per
/// connection (`Connection: close`, as probes and scrapers expect).
pub async fn serve_http(
    listener: TcpListener,
    name: &'static str,
    table: Arc<ConnTable>,
    limits: HttpLimits,
    handler: HttpHandler,
) {
    let mut errors = AcceptErrors::new(name);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                errors.on_error(e).await;
                continue;
            }
        };
        let Some(guard) = table.admit() else {
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(serve_http_connection(stream, guard, limits, handler));
    }
}

async fn serve_http_connection(
    stream: tokio::net::TcpStream,
    guard: ConnGuard,
    limits: HttpLimits,
    handler: HttpHandler,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let busy = guard.busy_flag();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        // From the request head on, the connection is answering: not closed to make room.
        busy.store(true, Ordering::Relaxed);
        let resp = handler(&req);
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_headers(64)
        .keep_alive(false);
    let conn = builder.serve_connection(io, service);
    tokio::select! {
        _ = conn => {}
        _ = guard.evicted() => {}
        _ = activity.idle_for(limits.idle_timeout) => {}
    }
}

/// When a connection last moved a byte.
#[derive(Debug)]
pub struct Activity {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Starts counting now.
    pub fn new() -> Activity {
        Activity {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Records progress now.
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis();
        self.last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Completes once no progress was recorded for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

/// A stream that records its progress in an [`Activity`].
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Tracked<S> {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks shared by the tests of every HTTP listener.
#[cfg(test)]
pub(crate) mod testkit {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    use super::{ConnTable, HttpLimits};

    /// Small limits so that the tests are quick.
    pub fn limits() -> HttpLimits {
        HttpLimits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(1),
            max_head_bytes: 8192,
        }
    }

    /// Sends `pieces` with pauses between them; returns the whole answer.
    pub fn get_in_pieces(addr: SocketAddr, pieces: &[&str]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        for p in pieces {
            s.write_all(p.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// `GET path`; the whole answer.
    pub fn get(addr: SocketAddr, path: &str) -> String {
        get_in_pieces(addr, &[&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")])
    }

    /// Resident memory of this process (kB).
    pub fn rss_kb() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Every check below, in turn.
    pub fn check_all(addr: SocketAddr, path: &str, table: &ConnTable) {
        slow_client_does_not_block(addr, path);
        header_too_large_refused(addr, path);
        idle_connection_closed(addr);
        limit_respected(addr, path, table);
    }

    /// A client that sent half a request does not delay another one.
    pub fn slow_client_does_not_block(addr: SocketAddr, path: &str) {
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(format!("GET {path} HTTP/1.1\r\nHo").as_bytes())
            .unwrap();
        let t0 = Instant::now();
        let out = get(addr, path);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            t0.elapsed() < Duration::from_millis(400),
            "answered in {:?} behind a slow client",
            t0.elapsed()
        );
        drop(slow);
    }

    /// An endless header is cut off (431 or a closed connection) and costs no memory.
    pub fn header_too_large_refused(addr: SocketAddr, path: &str) {
        const TOTAL: usize = 64 << 20;
        let rss0 = rss_kb();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nX-Long: ").as_bytes())
            .unwrap();
        let chunk = vec![b'a'; 64 << 10];
        let mut sent = 0;
        while sent < TOTAL {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        assert!(sent < TOTAL, "the server read a {TOTAL}-byte header");
        let mut out = Vec::new();
        match s.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "connection left open after an oversized header: {e}"
            ),
        }
        let text = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");
        let grown = rss_kb().saturating_sub(rss0);
        assert!(grown < 16 << 10, "RSS grew by {grown} kB");
    }

    /// A connection that sends nothing is closed after the header read timeout.
    pub fn idle_connection_closed(addr: SocketAddr) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
        let t0 = Instant::now();
        let mut out = Vec::new();
        let r = s.read_to_end(&mut out);
        if let Err(e) = r {
            assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "idle connection still open after {:?}",
                t0.elapsed()
            );
        }
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "idle connection closed after {took:?}"
        );
    }

    /// Idle connections beyond the limit do not hold descriptors, and do not lock a new
    /// client out.
    pub fn limit_respected(addr: SocketAddr, path: &str, table: &ConnTable) {
        let evicted0 = table.evicted();
        let held: Vec<TcpStream> = (0..3 * table.max())
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        while table.evicted() - evicted0 < (2 * table.max()) as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            table.len() <= table.max(),
            "{} > {}",
            table.len(),
            table.max()
        );
        assert!(table.evicted() - evicted0 >= (2 * table.max()) as u64);
        let t0 = Instant::now();
        let out = get(addr, path);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(t0.elapsed() < Duration::from_millis(400));
        assert!(table.len() <= table.max());
        drop(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_evicts_oldest_idle_and_refuses_when_all_busy() {
        let t = ConnTable::new("t", 2);
        let a = t.admit().unwrap();
        let b = t.admit().unwrap();
        a.set_busy(true);
        // b is the oldest idle one: it makes room.
        let c = t.admit().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.evicted(), 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), b.evicted())
                .await
                .expect("b told to close");
        });
        drop(b);
        assert_eq!(t.len(), 2, "dropping an evicted guard frees nothing twice");
        c.set_busy(true);
        assert!(t.admit().is_none(), "every slot busy: refused");
        assert_eq!(t.refused(), 1);
        drop(a);
        assert!(t.admit().is_some());
    }

    #[test]
    fn connection_limit_leaves_a_reserve() {
        let n = connection_limit(1 << 30);
        assert!(n >= 16);
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap()
            .0;
        assert!((n as u64) * FD_SHARES + FD_RESERVE <= soft.max(16 * FD_SHARES + FD_RESERVE));
        assert_eq!(connection_limit(20), 20);
    }
}
