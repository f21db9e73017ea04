//! The worker survives its backend's errors and reports its progress: a heartbeat that
//! advances while it works, backend errors counted (not fatal), and the test hooks that
//! make it stall or exit.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroplane_engine::worker::WorkerFault;
use ferroplane_engine::{Shared, Snapshot, Worker, WorkerControl};
use ferroplane_io::{BufIdx, Desc, IoError, MemIo, PacketIo, PortId};

/// A [`MemIo`] whose `flush` fails while `failures` is above zero, and which reports
/// `port_errors` as a backend with per-port errors would.
struct FlakyIo {
    inner: MemIo,
    failures: Arc<Mutex<u32>>,
    port_errors: Arc<Mutex<u64>>,
}

impl PacketIo for FlakyIo {
    type Memory = <MemIo as PacketIo>::Memory;

    fn memory(&mut self) -> &mut Self::Memory {
        self.inner.memory()
    }
    fn num_ports(&self) -> usize {
        self.inner.num_ports()
    }
    fn rx_burst(&mut self, port: PortId, out: &mut [Desc]) -> usize {
        self.inner.rx_burst(port, out)
    }
    fn tx_burst(&mut self, port: PortId, pkts: &[Desc]) -> usize {
        self.inner.tx_burst(port, pkts)
    }
    fn alloc(&mut self, out: &mut [BufIdx]) -> usize {
        self.inner.alloc(out)
    }
    fn free(&mut self, bufs: &[BufIdx]) {
        self.inner.free(bufs)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        let mut f = self.failures.lock().unwrap();
        if *f > 0 {
            *f -= 1;
            return Err(IoError::Config("injected backend error".into()));
        }
        self.inner.flush()
    }
    fn wait(&mut self, timeout: Duration) -> Result<(), IoError> {
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
        Ok(())
    }
    fn port_errors(&self) -> u64 {
        *self.port_errors.lock().unwrap()
    }
}

struct Running {
    control: Arc<WorkerControl>,
    thread: JoinHandle<Result<(), IoError>>,
    failures: Arc<Mutex<u32>>,
    port_errors: Arc<Mutex<u64>>,
}

fn start(failures: u32) -> Running {
    let control = Arc::new(WorkerControl::default());
    let failures = Arc::new(Mutex::new(failures));
    let port_errors = Arc::new(Mutex::new(0));
    let io = FlakyIo {
        inner: MemIo::new(1024, 2048, 2),
        failures: failures.clone(),
        port_errors: port_errors.clone(),
    };
    let shared = Arc::new(Shared::new(Snapshot::default()));
    let c = control.clone();
    let thread = std::thread::spawn(move || {
        let mut w = Worker::new(io, shared, c).unwrap();
        w.run()
    });
    Running {
        control,
        thread,
        failures,
        port_errors,
    }
}

fn beat(c: &WorkerControl) -> u64 {
    c.heartbeat.load(Ordering::Relaxed)
}

/// Waits until `cond` holds (at most 5 s).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn backend_errors_are_counted_and_the_worker_goes_on() {
    let r = start(5);
    let c = r.control.clone();
    eventually("five errors counted", || {
        c.io_errors.load(Ordering::Relaxed) == 5
    });
    let last = c.last_io_error.lock().unwrap().clone();
    assert!(last.is_some_and(|e| e.contains("injected")));
    // After the errors the worker makes progress again.
    let b = beat(&c);
    eventually("heartbeat after the errors", || beat(&c) > b + 10);
    assert!(c.running.load(Ordering::Relaxed));
    // Per-port errors of the backend are published.
    *r.port_errors.lock().unwrap() = 3;
    eventually("port errors published", || {
        c.port_errors.load(Ordering::Relaxed) == 3
    });
    // No heartbeat while the backend keeps failing.
    *r.failures.lock().unwrap() = u32::MAX;
    std::thread::sleep(Duration::from_millis(50));
    let b = beat(&c);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(beat(&c), b, "heartbeat while every iteration fails");
    assert!(!r.thread.is_finished());
    c.stop.store(true, Ordering::Relaxed);
    r.thread.join().unwrap().unwrap();
    assert!(!c.running.load(Ordering::Relaxed));
}

#[test]
fn injected_stall_stops_the_heartbeat_and_clearing_it_resumes() {
    let r = start(0);
    let c = r.control.clone();
    eventually("running", || beat(&c) > 10);
    c.inject_fault(Some(WorkerFault::Stall));
    std::thread::sleep(Duration::from_millis(50));
    let b = beat(&c);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(beat(&c), b, "a stalled worker beats");
    assert!(c.running.load(Ordering::Relaxed));
    c.inject_fault(None);
    eventually("heartbeat again", || beat(&c) > b);
    // A stalled worker still honours stop.
    c.inject_fault(Some(WorkerFault::Stall));
    c.stop.store(true, Ordering::Relaxed);
    r.thread.join().unwrap().unwrap();
}

#[test]
fn injected_exit_ends_the_worker_thread() {
    let r = start(0);
    let c = r.control.clone();
    eventually("running", || c.running.load(Ordering::Relaxed));
    c.inject_fault(Some(WorkerFault::Exit));
    eventually("thread ended", || r.thread.is_finished());
    assert!(!c.running.load(Ordering::Relaxed));
    r.thread.join().unwrap().unwrap();
}
