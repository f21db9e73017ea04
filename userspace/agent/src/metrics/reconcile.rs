//! The reconcile durations: a histogram per kind of reconcile (`publish`: desired state
//! to engine tables and BPF steering), recorded by the agent as it runs and exposed with
//! the other metrics.

use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use super::families::{l, Labels};

/// Histograms by what was reconciled.
pub(super) type Durations = Family<Labels, Histogram, fn() -> Histogram>;

/// Durations of the agent's reconciles, by what was reconciled (lives as long as the agent).
pub(super) fn reconciles() -> &'static Durations {
    static R: std::sync::OnceLock<Durations> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 4.0, 10)))
    })
}

/// Record one reconcile of `what` (e.g. `publish`: desired state to engine tables and BPF
/// steering) that took `elapsed`.
pub fn observe_reconcile(what: &str, elapsed: Duration) {
    reconciles()
        .get_or_create(&l(&[("what", what)]))
        .observe(elapsed.as_secs_f64());
}

/// Times a reconcile: records its duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    what: &'static str,
    start: std::time::Instant,
}

impl ReconcileTimer {
    /// Start timing a reconcile of `what`.
    pub fn start(what: &'static str) -> ReconcileTimer {
        ReconcileTimer {
            what,
            start: std::time::Instant::now(),
        }
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        observe_reconcile(self.what, self.start.elapsed());
    }
}
