//! Prometheus metrics: `GET /metrics` on a local address, text exposition
//! (prometheus-client), computed from the same counters `ferroctl show` reads.
//!
//! The body is the Prometheus text format 0.0.4 (what `promtool check metrics` and
//! Prometheus' classic parser read), written by prometheus-client's encoder as it is:
//! [`encode_registry`] (no OpenMetrics `# EOF` line), and counters as `families::Total`, a
//! counter metric type whose samples carry the family's own name (`x_total`), as 0.0.4
//! wants (prometheus-client's `Counter` writes OpenMetrics' `x` family with `x_total`
//! samples).

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::registry::Registry;

use crate::api::AgentView;

mod control_plane;
mod dataplane;
mod families;
mod reconcile;
mod server;

pub use reconcile::{observe_reconcile, ReconcileTimer};
pub use server::MetricsServer;

/// The exposition text of every metric.
pub fn render(view: &AgentView) -> String {
    let mut reg = Registry::with_prefix("ferroplane");
    let ifs = view.interfaces();
    dataplane::interfaces(&mut reg, &ifs);
    dataplane::engine(&mut reg, view);
    let snap = view.shared.load();
    dataplane::tables(&mut reg, &snap);
    dataplane::health(&mut reg, view, &ifs);
    control_plane::control_plane(&mut reg, view, &snap);
    let mut out = String::new();
    if encode_registry(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}
