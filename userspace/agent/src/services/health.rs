//! Health-check node ports (kube-proxy's `healthCheckNodePort` server).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ferroplane_tables::ServiceTable;

/// Local endpoint counts per health-check node port, read by the health-check server.
pub type HealthChecks = Arc<Mutex<BTreeMap<u16, (String, usize)>>>;

/// The health-check node ports of a table: port → (service, local endpoints).
pub fn health_checks(table: &ServiceTable) -> BTreeMap<u16, (String, usize)> {
    let mut m: BTreeMap<u16, (String, usize)> = BTreeMap::new();
    for p in table.ports() {
        if let Some(hc) = p.def.health_check_node_port {
            let e = m.entry(hc).or_insert_with(|| (p.def.service.clone(), 0));
            e.1 = e.1.max(p.local_endpoints);
        }
    }
    m
}

/// The HTTP status and JSON body of a health-check node port (as kube-proxy: 200 with local
/// endpoints, 503 without).
pub fn health_response(service: &str, local: usize) -> (u16, String) {
    let (ns, name) = service.split_once('/').unwrap_or(("default", service));
    let body = format!(
        "{{\"service\":{{\"namespace\":\"{ns}\",\"name\":\"{name}\"}},\"localEndpoints\":{local},\"serviceProxyHealthy\":true}}\n"
    );
    (if local > 0 { 200 } else { 503 }, body)
}

/// Serve health-check node ports on `addr`: keeps one listener per port in `checks`
/// (re-read every second), answering with [`health_response`]. They run on the listeners'
/// runtime ([`crate::listen::runtime`]) and share one connection table and the default
/// [`crate::listen::HttpLimits`]: they face the outside, and however many connections are
/// held on them, the agent's main loop and descriptors are not theirs.
pub async fn serve_health_checks(addr: Ipv4Addr, checks: HealthChecks) {
    use crate::listen::{self, AbortOnDrop, ConnTable, HttpLimits};
    let limits = HttpLimits {
        max_connections: listen::connection_limit(HttpLimits::default().max_connections),
        ..HttpLimits::default()
    };
    let rt = match listen::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!("health check node ports not served: {e}");
            return;
        }
    };
    let table = ConnTable::new("health-check node ports", limits.max_connections);
    let mut task = AbortOnDrop(rt.spawn(health_check_ports(addr, checks, table, limits)));
    let _ = (&mut task.0).await;
}

/// The loop of [`serve_health_checks`] on the current runtime, with its connection table
/// and limits.
pub async fn health_check_ports(
    addr: Ipv4Addr,
    checks: HealthChecks,
    table: Arc<crate::listen::ConnTable>,
    limits: crate::listen::HttpLimits,
) {
    use crate::listen;
    let rt = tokio::runtime::Handle::current();
    let mut running: BTreeMap<u16, tokio::task::JoinHandle<()>> = BTreeMap::new();
    loop {
        let want: BTreeSet<u16> = match checks.lock() {
            Ok(m) => m.keys().copied().collect(),
            Err(_) => BTreeSet::new(),
        };
        running.retain(|port, h| {
            let keep = want.contains(port) && !h.is_finished();
            if !keep {
                h.abort();
            }
            keep
        });
        for port in want {
            if running.contains_key(&port) {
                continue;
            }
            let listener = match listen::bind_tcp((addr, port).into(), &rt) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%addr, port, "health check node port: {e}");
                    continue;
                }
            };
            let checks = checks.clone();
            let handler: listen::HttpHandler = Arc::new(move |_req| {
                let (svc, n) = checks
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&port).cloned())
                    .unwrap_or_default();
                let (code, body) = health_response(&svc, n);
                let mut r = listen::response(code, "application/json", body);
                r.headers_mut().insert(
                    "x-content-type-options",
                    hyper::header::HeaderValue::from_static("nosniff"),
                );
                r
            });
            running.insert(
                port,
                tokio::spawn(listen::serve_http(
                    listener,
                    "health-check node port",
                    table.clone(),
                    limits,
                    handler,
                )),
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
