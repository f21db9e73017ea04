//! What the control plane shares with a worker ([`WorkerControl`]: stop, trace and
//! capture requests, heartbeat and error counts, fault injection for tests) and the run
//! loop that honours it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferroplane_io::{IoError, PacketIo};

use super::{CaptureState, Worker};
use crate::filter::PacketFilter;
use crate::trace::TraceRecord;

/// Knobs and mailboxes shared between a worker and the control plane.
#[derive(Debug, Default)]
pub struct WorkerControl {
    /// Ask the worker to return from [`Worker::run`].
    pub stop: AtomicBool,
    /// Number of packets still to trace.
    pub trace_remaining: AtomicU32,
    /// Trace records taken so far (bounded).
    pub traces: Mutex<Vec<TraceRecord>>,
    /// Ask the worker to zero its counters.
    pub clear: AtomicBool,
    /// Which packets to trace: (interface, filter); `None` traces any.
    pub trace_filter: Mutex<Option<(Option<u16>, PacketFilter)>>,
    /// Set while a capture runs (checked once per vector).
    pub capture_active: AtomicBool,
    /// The capture in progress and what it took.
    pub capture: Mutex<CaptureState>,
    /// Bumped by the worker at the end of every loop iteration that worked (polled and
    /// flushed its ports, or waited for traffic): a watchdog that sees it stand still
    /// for seconds knows the worker stopped making progress.
    pub heartbeat: AtomicU64,
    /// Set while [`Worker::run`] runs (cleared when it returns or panics).
    pub running: AtomicBool,
    /// Errors of the backend as a whole (`poll`/`flush`/`wait` failed): the iteration is
    /// retried after a short back-off, without a heartbeat.
    pub io_errors: AtomicU64,
    /// The last of those errors.
    pub last_io_error: Mutex<Option<String>>,
    /// Errors of single ports, as the backend counts them ([`PacketIo::port_errors`]):
    /// such a port is reset by the backend, the worker carries on.
    pub port_errors: AtomicU64,
    /// Test hook ([`WorkerControl::inject_fault`]); 0: none.
    fault: AtomicU8,
}

/// A fault a test makes a worker have (see [`WorkerControl::inject_fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerFault {
    /// The worker stops making progress (no heartbeat, no forwarding, no commands) until
    /// it is stopped or the fault cleared.
    Stall = 1,
    /// [`Worker::run`] returns: the worker thread ends.
    Exit = 2,
}

impl WorkerControl {
    /// Test hook (fault injection, not for production use): make the worker stall or
    /// exit at its next loop iteration; `None` clears a stall.
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Option<WorkerFault>) {
        self.fault
            .store(fault.map_or(0, |f| f as u8), Ordering::Relaxed);
    }
}

/// Clears [`WorkerControl::running`] when [`Worker::run`] ends, also by a panic.
struct RunningGuard<'a>(&'a AtomicBool);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Longest back-off after a backend error.
const IO_ERROR_BACKOFF_MAX: Duration = Duration::from_millis(100);

impl<P: PacketIo> Worker<P>
where
    P::Memory: 'static,
{
    /// Run until [`WorkerControl::stop`] is set: poll, run commands, sleep in
    /// the backend's `wait` when idle. A backend error does not end it: it is counted
    /// ([`WorkerControl::io_errors`]) and the loop goes on after a back-off (1 ms doubling
    /// to 100 ms) without a heartbeat; errors of single ports are the backend's to handle
    /// (an AF_XDP port is marked down and retried). Returns `Ok` when stopped (or ended
    /// by [`WorkerFault::Exit`]).
    pub fn run(&mut self) -> Result<(), IoError> {
        let control = self.control.clone();
        control.running.store(true, Ordering::Relaxed);
        let _running = RunningGuard(&control.running);
        let mut backoff = Duration::ZERO;
        while !self.control.stop.load(Ordering::Relaxed) {
            match self.control.fault.load(Ordering::Relaxed) {
                f if f == WorkerFault::Stall as u8 => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                f if f == WorkerFault::Exit as u8 => return Ok(()),
                _ => {}
            }
            if let Some(rx) = &self.commands {
                while let Ok(cmd) = rx.try_recv() {
                    let start = Instant::now();
                    cmd(&mut self.io);
                    let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    self.stats.commands.add(1);
                    self.stats.command_nanos.add(ns);
                    self.stats.command_max_nanos.max(ns);
                }
            }
            if self.control.clear.swap(false, Ordering::Relaxed) {
                self.stats.clear();
            }
            self.stats.loops.add(1);
            let done = match self.poll() {
                Ok(0) => self.idle(),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            self.control
                .port_errors
                .store(self.io.port_errors(), Ordering::Relaxed);
            match done {
                Ok(()) => {
                    self.control.heartbeat.fetch_add(1, Ordering::Relaxed);
                    backoff = Duration::ZERO;
                }
                Err(e) => {
                    self.control.io_errors.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut last) = self.control.last_io_error.lock() {
                        *last = Some(e.to_string());
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(1), IO_ERROR_BACKOFF_MAX);
                    std::thread::sleep(backoff);
                }
            }
        }
        Ok(())
    }
}
