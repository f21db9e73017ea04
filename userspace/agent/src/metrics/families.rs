//! Registering metric families on a prometheus-client [`Registry`]: counters as [`Total`]
//! (the Prometheus text format 0.0.4's counter naming), gauges, and their label sets.

use prometheus_client::encoding::{EncodeGaugeValue, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A series' labels, in order.
pub(super) type Labels = Vec<(String, String)>;

/// A counter read from the engine's or the agent's own counters when scraped (its value is
/// set, not counted here), exposed in the Prometheus text format 0.0.4: registered under
/// its full name (`errors_total`), its samples carry that name. prometheus-client's text
/// encoder writes OpenMetrics, whose counter family `errors` has samples `errors_total`;
/// 0.0.4 names the family like its samples. The crate's extension point for metric types
/// ([`EncodeMetric`]) gives that without touching the encoder's output.
#[derive(Debug, Default)]
pub(super) struct Total<V = u64>(std::sync::Mutex<V>);

impl<V: Copy + Default + std::ops::AddAssign> Total<V> {
    /// Adds `v` (a label set listed twice is summed).
    pub(super) fn add(&self, v: V) {
        match self.0.lock() {
            Ok(mut g) => *g += v,
            Err(p) => *p.into_inner() += v,
        }
    }

    fn get(&self) -> V {
        match self.0.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
}

impl<V> TypedMetric for Total<V> {
    const TYPE: MetricType = MetricType::Counter;
}

impl<V: Copy + Default + std::ops::AddAssign + EncodeGaugeValue + std::fmt::Debug> EncodeMetric
    for Total<V>
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The sample line `name{labels} value`, without OpenMetrics' `_total` suffix.
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Registers the counter family `{name}_total`.
pub(super) fn counter_family(
    reg: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, u64)>,
) {
    let fam = Family::<Labels, Total>::default();
    for (labels, v) in values {
        fam.get_or_create(&labels).add(v);
    }
    reg.register(format!("{name}_total"), help, fam);
}

/// Registers the gauge `name` with value `v`.
pub(super) fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

/// Registers the gauge family `name`.
pub(super) fn gauge_family(
    reg: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, i64)>,
) {
    let fam = Family::<Labels, Gauge>::default();
    for (labels, v) in values {
        fam.get_or_create(&labels).inc_by(v);
    }
    reg.register(name, help, fam);
}

/// Labels from `(name, value)` pairs.
pub(super) fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
