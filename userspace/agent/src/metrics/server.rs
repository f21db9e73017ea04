//! The `/metrics` endpoint: routing of a request, and the listener (on the listeners'
//! runtime, with their connection limits).

use std::net::SocketAddr;
use std::sync::Arc;

use super::render;
use crate::api::AgentView;
use crate::listen::{self, AbortOnDrop, ConnTable, HttpLimits};

/// Status, content type and body for `method` on `path` (with its query, if any).
fn answer(
    method: &str,
    path: &str,
    render: impl FnOnce() -> String,
) -> (u16, &'static str, String) {
    let get = method == "GET" || method == "HEAD";
    if get && (path == "/metrics" || path.starts_with("/metrics?")) {
        (200, "text/plain; version=0.0.4; charset=utf-8", render())
    } else if get && path == "/healthz" {
        (200, "text/plain", "ok\n".to_string())
    } else {
        (404, "text/plain", "try /metrics\n".to_string())
    }
}

/// A running metrics endpoint (on the listeners' runtime, [`listen::runtime`]); dropping
/// it stops the listener.
pub struct MetricsServer {
    addr: SocketAddr,
    table: Arc<ConnTable>,
    _task: AbortOnDrop,
}

impl MetricsServer {
    /// Listen on `addr` and answer `/metrics` (and `/healthz`) from `view`, with the
    /// default [`HttpLimits`].
    pub fn start(addr: SocketAddr, view: Arc<AgentView>) -> std::io::Result<MetricsServer> {
        let limits = HttpLimits {
            max_connections: listen::connection_limit(HttpLimits::default().max_connections),
            ..HttpLimits::default()
        };
        Self::start_with(addr, view, limits)
    }

    /// [`MetricsServer::start`] with `limits`.
    pub fn start_with(
        addr: SocketAddr,
        view: Arc<AgentView>,
        limits: HttpLimits,
    ) -> std::io::Result<MetricsServer> {
        let handler: listen::HttpHandler = Arc::new(move |req| {
            let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
            let (code, ctype, body) = answer(req.method().as_str(), path, || render(&view));
            listen::response(code, ctype, body)
        });
        Self::start_handler(addr, handler, limits)
    }

    fn start_handler(
        addr: SocketAddr,
        handler: listen::HttpHandler,
        limits: HttpLimits,
    ) -> std::io::Result<MetricsServer> {
        let rt = listen::runtime()?;
        let listener = listen::bind_tcp(addr, &rt)?;
        let addr = listener.local_addr()?;
        let table = ConnTable::new("metrics", limits.max_connections);
        let task = rt.spawn(listen::serve_http(
            listener,
            "metrics",
            table.clone(),
            limits,
            handler,
        ));
        Ok(MetricsServer {
            addr,
            table,
            _task: AbortOnDrop(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its connections.
    pub fn connections(&self) -> &Arc<ConnTable> {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode_registry;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    use super::super::families::{counter_family, gauge, l, Labels, Total};
    use super::*;
    use crate::listen::testkit;

    /// The endpoint with [`answer`]'s routing over a small registry (the agent's view needs
    /// a live dataplane).
    fn start() -> MetricsServer {
        let handler: listen::HttpHandler = Arc::new(|req| {
            let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
            let (code, ctype, body) = answer(req.method().as_str(), path, || {
                let mut reg = Registry::with_prefix("ferroplane");
                counter_family(
                    &mut reg,
                    "errors",
                    "Packets dropped",
                    [(l(&[("node", "ip4-input")]), 3)],
                );
                gauge(&mut reg, "workers", "Engine workers", 1);
                let seconds = Family::<Labels, Total<f64>>::default();
                seconds
                    .get_or_create(&l(&[("node", "ip4-input")]))
                    .add(0.25);
                reg.register("node_seconds_total", "Time spent", seconds);
                let mut out = String::new();
                encode_registry(&mut out, &reg).unwrap();
                out
            });
            listen::response(code, ctype, body)
        });
        MetricsServer::start_handler("127.0.0.1:0".parse().unwrap(), handler, testkit::limits())
            .unwrap()
    }

    #[test]
    fn serves_prometheus_text() {
        let m = start();
        let out = testkit::get(m.addr(), "/metrics");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            out.contains("content-type: text/plain; version=0.0.4"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE ferroplane_errors_total counter"),
            "{out}"
        );
        assert!(
            out.contains("ferroplane_errors_total{node=\"ip4-input\"} 3"),
            "{out}"
        );
        assert!(
            out.contains("# HELP ferroplane_errors_total Packets dropped."),
            "{out}"
        );
        assert!(
            out.contains("ferroplane_node_seconds_total{node=\"ip4-input\"} 0.25"),
            "{out}"
        );
        assert!(!out.contains("_total_total"), "{out}");
        assert!(!out.contains("# EOF"), "{out}");
        assert!(testkit::get(m.addr(), "/x").starts_with("HTTP/1.1 404"));
        assert!(testkit::get(m.addr(), "/healthz").starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn hardened() {
        let m = start();
        testkit::check_all(m.addr(), "/metrics", m.connections());
    }
}
