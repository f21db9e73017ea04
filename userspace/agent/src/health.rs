//! The agent's health endpoint for Kubernetes probes: HTTP/1.1 (hyper) on the listeners'
//! own runtime, with the limits of [`crate::listen`].
//!
//! `GET /healthz` answers 200 while the agent runs (liveness); `GET /readyz` answers 200 once
//! the agent has set [`Health::set_ready`] (dataplane up, CNI socket serving and, in
//! Kubernetes mode, the watchers synced) and 503 before. Both answer 503 while an engine
//! worker is stalled or gone ([`Health::set_engine_stalled`], fed by the watchdog,
//! [`crate::watchdog`]): a dataplane that forwards nothing is neither live nor ready.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::listen::{self, ConnTable, HttpLimits};

/// Readiness shared between the agent and the endpoint.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    engine_stalled: AtomicBool,
}

impl Health {
    /// Marks the agent ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the agent is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks an engine worker stalled or gone (or all running again).
    pub fn set_engine_stalled(&self, stalled: bool) {
        self.engine_stalled.store(stalled, Ordering::Relaxed);
    }

    /// Whether an engine worker is stalled or gone.
    pub fn engine_stalled(&self) -> bool {
        self.engine_stalled.load(Ordering::Relaxed)
    }
}

/// The status and body for a request line (`METHOD PATH VERSION`).
pub fn answer(request_line: &str, health: &Health) -> (u16, &'static str) {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    answer_request(method, path, health)
}

/// The status and body for `method` on `path`.
pub fn answer_request(method: &str, path: &str, health: &Health) -> (u16, &'static str) {
    if method != "GET" && method != "HEAD" {
        return (405, "method not allowed\n");
    }
    match path {
        "/healthz" | "/livez" | "/readyz" if health.engine_stalled() => {
            (503, "engine worker stalled\n")
        }
        "/healthz" | "/livez" => (200, "ok\n"),
        "/readyz" if health.is_ready() => (200, "ready\n"),
        "/readyz" => (503, "not ready\n"),
        _ => (404, "not found\n"),
    }
}

/// Binds `addr` and serves on the listeners' runtime ([`listen::runtime`]) with the default
/// [`HttpLimits`] until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let limits = HttpLimits {
        max_connections: listen::connection_limit(HttpLimits::default().max_connections),
        ..HttpLimits::default()
    };
    serve_with(addr, health, limits).map(|(task, _, _)| task)
}

/// [`serve`] with `limits`; also returns the bound address and the connection table.
pub fn serve_with(
    addr: SocketAddr,
    health: Arc<Health>,
    limits: HttpLimits,
) -> std::io::Result<(tokio::task::JoinHandle<()>, SocketAddr, Arc<ConnTable>)> {
    let rt = listen::runtime()?;
    let listener = listen::bind_tcp(addr, &rt)?;
    let bound = listener.local_addr()?;
    let table = ConnTable::new("health", limits.max_connections);
    let handler: listen::HttpHandler = Arc::new(move |req| {
        let (code, body) = answer_request(req.method().as_str(), req.uri().path(), &health);
        listen::response(code, "text/plain", body)
    });
    let task = rt.spawn(listen::serve_http(
        listener,
        "health",
        table.clone(),
        limits,
        handler,
    ));
    Ok((task, bound, table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::testkit;

    #[test]
    fn probes() {
        let h = Health::default();
        assert_eq!(answer("GET /healthz HTTP/1.1", &h).0, 200);
        assert_eq!(answer("GET /readyz HTTP/1.1", &h).0, 503);
        h.set_ready(true);
        assert_eq!(answer("GET /readyz HTTP/1.1", &h).0, 200);
        assert_eq!(answer("GET /x HTTP/1.1", &h).0, 404);
        assert_eq!(answer("POST /healthz HTTP/1.1", &h).0, 405);
    }

    fn start() -> (tokio::task::JoinHandle<()>, SocketAddr, Arc<ConnTable>) {
        serve_with(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Health::default()),
            testkit::limits(),
        )
        .unwrap()
    }

    /// A request line that arrives in several segments (a client writing piece by piece)
    /// is read whole, not answered from its first piece.
    #[test]
    fn request_line_in_segments() {
        let (task, addr, _) = start();
        let out = testkit::get_in_pieces(
            addr,
            &["GET ", "/healthz", " HTTP/1.1\r\n", "Host: x\r\n\r\n"],
        );
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.ends_with("ok\n"), "{out}");
        task.abort();
    }

    #[test]
    fn hardened() {
        let (task, addr, table) = start();
        testkit::check_all(addr, "/healthz", &table);
        task.abort();
    }
}
