//! The DPDK uplink's steering tables, kept equal to the BPF maps `xdp_uplink` would read
//! (`host4`, `tunnel4`, `ports4`, `steer4`): the maps stay the one place the agent writes
//! steering to (the pods' `xdp_pod` reads them too), and a thread copies them into the
//! engine's [`Steering`] at start and every [`PERIOD`] after.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ferroplane_bpf::Dataplane;
use ferroplane_io::steer::{SteerTables, Steering};

use super::DpdkError;

/// How often the maps are read. A service or NodePort added since the last read goes to
/// the host's TAP for at most this long; the TAP never forwards (`forwarding=0`), so such a
/// packet is dropped there, never routed around the engine.
pub const PERIOD: Duration = Duration::from_millis(100);

/// Reads the four steering maps into [`SteerTables`].
pub fn read_tables(bpf: &Dataplane) -> Result<SteerTables, DpdkError> {
    let map = |e: ferroplane_bpf::Error| DpdkError::Config(format!("reading steering maps: {e}"));
    let mut t = SteerTables::new();
    for a in bpf.host4().map_err(map)? {
        t.add_host4(a);
    }
    for (proto, port) in bpf.tunnel4().map_err(map)? {
        t.add_tunnel4(proto, port);
    }
    for (proto, port, _) in bpf.ports4().map_err(map)? {
        t.add_port4(proto, port);
    }
    for e in bpf.steer4().map_err(map)? {
        t.add_steer4(e.addr, e.prefixlen);
    }
    Ok(t)
}

fn lock(bpf: &Mutex<Dataplane>) -> std::sync::MutexGuard<'_, Dataplane> {
    match bpf.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The thread copying the maps into the uplink's [`Steering`]; stopped on drop.
pub struct SteerSync {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SteerSync {
    /// Publishes the maps' contents now (so the uplink never starts with empty tables),
    /// then every [`PERIOD`] when they changed.
    pub fn start(bpf: Arc<Mutex<Dataplane>>, steering: Steering) -> Result<SteerSync, DpdkError> {
        let first = read_tables(&lock(&bpf))?;
        steering.publish(first.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fp-dpdk-steer".into())
            .spawn(move || {
                let mut last = first;
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(PERIOD);
                    match read_tables(&lock(&bpf)) {
                        Ok(t) if t != last => {
                            steering.publish(t.clone());
                            last = t;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("DPDK uplink steering: {e}"),
                    }
                }
            })
            .map_err(|e| DpdkError::Config(format!("starting the steering thread: {e}")))?;
        Ok(SteerSync {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SteerSync {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
