//! The engine workers' watchdog: each worker bumps its heartbeat
//! ([`WorkerControl::heartbeat`]) at every loop iteration that worked; a thread samples
//! them, marks a worker *stalled* when its heartbeat stood still for
//! [`STALL_AFTER`] (or *exited* when its loop ended), logs the change, and turns the
//! agent's liveness and readiness probes red ([`Health::set_engine_stalled`]) until every
//! worker runs again. `show counters` and the metrics show each worker's state.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroplane_engine::WorkerControl;

use crate::health::Health;

/// A worker whose heartbeat stands still this long is stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(3);
/// How often the watchdog thread samples the heartbeats.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// What a worker is doing, as the watchdog sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Its heartbeat advances.
    Running,
    /// Its heartbeat stood still for [`STALL_AFTER`] or more.
    Stalled,
    /// Its loop ended (the thread is gone or going).
    Exited,
}

impl WorkerState {
    /// `running`, `stalled` or `exited`.
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkerState::Running => "running",
            WorkerState::Stalled => "stalled",
            WorkerState::Exited => "exited",
        }
    }
}

/// One worker's health.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerHealth {
    /// Its state.
    pub state: WorkerState,
    /// Its heartbeat counter.
    pub heartbeat: u64,
    /// Time since its heartbeat last moved.
    pub since_beat: Duration,
    /// Errors of single ports (each port reset, the worker carried on).
    pub port_errors: u64,
    /// Errors of the backend as a whole (retried after a back-off).
    pub io_errors: u64,
    /// The last of those.
    pub last_io_error: Option<String>,
}

struct Watch {
    control: Arc<WorkerControl>,
    beat: u64,
    moved: Instant,
    state: WorkerState,
}

/// Watches the engine workers (see the module documentation).
pub struct Watchdog {
    watches: Mutex<Vec<Watch>>,
    stall_after: Duration,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("stall_after", &self.stall_after)
            .finish_non_exhaustive()
    }
}

impl Watchdog {
    /// A watchdog over `workers`, calling a worker stalled after `stall_after` without a
    /// heartbeat.
    pub fn new(workers: Vec<Arc<WorkerControl>>, stall_after: Duration) -> Arc<Watchdog> {
        let now = Instant::now();
        let watches = workers
            .into_iter()
            .map(|control| Watch {
                beat: control.heartbeat.load(Ordering::Relaxed),
                control,
                moved: now,
                state: WorkerState::Running,
            })
            .collect();
        Arc::new(Watchdog {
            watches: Mutex::new(watches),
            stall_after,
        })
    }

    /// Samples the heartbeats at `now`; returns the workers whose state changed (index,
    /// new state). A worker counts as exited once its loop ended, as stalled once its
    /// heartbeat stood still for the stall time, and as running again when it moves.
    pub fn check(&self, now: Instant) -> Vec<(usize, WorkerState)> {
        let mut watches = match self.watches.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        let mut changed = Vec::new();
        for (i, w) in watches.iter_mut().enumerate() {
            let beat = w.control.heartbeat.load(Ordering::Relaxed);
            if beat != w.beat {
                w.beat = beat;
                w.moved = now;
            }
            let state = if !w.control.running.load(Ordering::Relaxed) {
                WorkerState::Exited
            } else if now.saturating_duration_since(w.moved) >= self.stall_after {
                WorkerState::Stalled
            } else {
                WorkerState::Running
            };
            if state != w.state {
                w.state = state;
                changed.push((i, state));
            }
        }
        changed
    }

    /// Whether every worker runs (as of the last [`Watchdog::check`]).
    pub fn all_running(&self) -> bool {
        self.workers()
            .iter()
            .all(|w| w.state == WorkerState::Running)
    }

    /// Each worker's health as of the last [`Watchdog::check`] (the time since the last
    /// heartbeat is measured now).
    pub fn workers(&self) -> Vec<WorkerHealth> {
        let watches = match self.watches.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        watches
            .iter()
            .map(|w| WorkerHealth {
                state: w.state,
                heartbeat: w.beat,
                since_beat: now.saturating_duration_since(w.moved),
                port_errors: w.control.port_errors.load(Ordering::Relaxed),
                io_errors: w.control.io_errors.load(Ordering::Relaxed),
                last_io_error: w.control.last_io_error.lock().ok().and_then(|e| e.clone()),
            })
            .collect()
    }

    /// Starts the thread that checks every `every` and feeds `health`; it ends when the
    /// watchdog is dropped.
    pub fn start(
        self: &Arc<Self>,
        health: Arc<Health>,
        every: Duration,
    ) -> std::io::Result<JoinHandle<()>> {
        let weak: Weak<Watchdog> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("fp-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(dog) = weak.upgrade() else { return };
                for (worker, state) in dog.check(Instant::now()) {
                    match state {
                        WorkerState::Running => {
                            tracing::info!(worker, "engine worker makes progress again")
                        }
                        WorkerState::Stalled => tracing::error!(
                            worker,
                            stall_secs = dog.stall_after.as_secs_f64(),
                            "engine worker stalled: no heartbeat; liveness and readiness fail"
                        ),
                        WorkerState::Exited => tracing::error!(
                            worker,
                            "engine worker exited; liveness and readiness fail"
                        ),
                    }
                }
                health.set_engine_stalled(!dog.all_running());
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_that_stands_still_is_a_stall() {
        let c = Arc::new(WorkerControl::default());
        c.running.store(true, Ordering::Relaxed);
        let dog = Watchdog::new(vec![c.clone()], Duration::from_secs(3));
        let t0 = Instant::now();
        assert!(dog.check(t0).is_empty());
        assert!(dog.all_running());
        // Beating: running, however long.
        for s in 1..10 {
            c.heartbeat.fetch_add(1, Ordering::Relaxed);
            assert!(dog.check(t0 + Duration::from_secs(s)).is_empty());
        }
        // Standing still: stalled after the stall time, not before.
        assert!(dog.check(t0 + Duration::from_millis(11_900)).is_empty());
        assert_eq!(
            dog.check(t0 + Duration::from_secs(12)),
            vec![(0, WorkerState::Stalled)]
        );
        assert!(!dog.all_running());
        assert!(dog.check(t0 + Duration::from_secs(13)).is_empty());
        // Moving again: running.
        c.heartbeat.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            dog.check(t0 + Duration::from_secs(14)),
            vec![(0, WorkerState::Running)]
        );
        // Its loop ended: exited at once.
        c.running.store(false, Ordering::Relaxed);
        assert_eq!(
            dog.check(t0 + Duration::from_secs(14)),
            vec![(0, WorkerState::Exited)]
        );
        let w = &dog.workers()[0];
        assert_eq!((w.state, w.heartbeat), (WorkerState::Exited, 10));
    }

    #[test]
    fn the_thread_turns_the_probes_red_and_green() {
        let c = Arc::new(WorkerControl::default());
        c.running.store(true, Ordering::Relaxed);
        let health = Arc::new(Health::default());
        health.set_ready(true);
        let dog = Watchdog::new(vec![c.clone()], Duration::from_millis(100));
        let _t = dog
            .start(health.clone(), Duration::from_millis(10))
            .unwrap();
        let until = |want: bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while health.engine_stalled() != want {
                assert!(Instant::now() < deadline, "engine_stalled never {want}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        until(true);
        assert_eq!(
            crate::health::answer("GET /healthz HTTP/1.1", &health).0,
            503
        );
        assert_eq!(
            crate::health::answer("GET /readyz HTTP/1.1", &health).0,
            503
        );
        // Beating again.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let beater = {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    c.heartbeat.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        until(false);
        assert_eq!(
            crate::health::answer("GET /healthz HTTP/1.1", &health).0,
            200
        );
        assert_eq!(
            crate::health::answer("GET /readyz HTTP/1.1", &health).0,
            200
        );
        stop.store(true, Ordering::Relaxed);
        beater.join().unwrap();
    }
}
