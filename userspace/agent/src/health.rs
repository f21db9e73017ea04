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
                // The request line may come in several segments: read until its end.
                let mut buf = [0u8; 1024];
                let mut n = 0;
                let read_line = async {
                    while n < buf.len() && !buf[..n].contains(&b'\n') {
                        match stream.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_secs(5), read_line)
                    .await
                    .is_err()
                    || n == 0
                {
                    return;
                }
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

    /// A request line that arrives in several segments (a client writing piece by piece)
    /// is read whole, not answered from its first piece.
    #[tokio::test]
    async fn request_line_in_segments() {
        let h = Arc::new(Health::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let server = serve(addr, h).await.expect("serve");
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        for piece in ["GET ", "/healthz", " HTTP/1.1\r\n", "Host: x\r\n\r\n"] {
            s.write_all(piece.as_bytes()).await.expect("write");
            s.flush().await.expect("flush");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        server.abort();
    }
}
