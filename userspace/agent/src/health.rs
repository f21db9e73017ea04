//! The agent's health endpoint for Kubernetes probes: a minimal HTTP/1.1 server.
//!
//! `GET /healthz` answers 200 while the agent runs (liveness); `GET /readyz` answers 200 once
//! the agent has set [`Health::set_ready`] (dataplane up, CNI socket serving and, in
//! Kubernetes mode, the watchers synced) and 503 before.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Readiness shared between the agent and the endpoint.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
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
}

/// The status line and body for a request line.
pub fn answer(request_line: &str, health: &Health) -> (u16, &'static str) {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return (405, "method not allowed\n");
    }
    match path {
        "/healthz" | "/livez" => (200, "ok\n"),
        "/readyz" if health.is_ready() => (200, "ready\n"),
        "/readyz" => (503, "not ready\n"),
        _ => (404, "not found\n"),
    }
}

/// Binds `addr` and serves on the current tokio runtime until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let health = health.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let text = String::from_utf8_lossy(&buf[..n]);
                let line = text.lines().next().unwrap_or("");
                let (code, body) = answer(line, &health);
                let reason = match code {
                    200 => "OK",
                    404 => "Not Found",
                    405 => "Method Not Allowed",
                    _ => "Service Unavailable",
                };
                let resp = format!(
                    "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
