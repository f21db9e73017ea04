//! Starting one engine worker thread over its own AF_XDP backend, and how many to start.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ferroplane_engine::counters::WorkerStats;
use ferroplane_engine::flow_export::FlowExport;
use ferroplane_engine::graph::GraphInfo;
use ferroplane_engine::handoff::HandoffLink;
use ferroplane_engine::worker::Command;
use ferroplane_engine::{Shared, Worker, WorkerControl};
use ferroplane_io::{TunDevice, Waker, XskConfig, XskIo, XskOpener};
use ferroplane_tables::Conntrack;

use super::EngineError;

/// The most workers the default picks (`--workers` may ask for more, up to
/// [`ferroplane_engine::handoff::MAX_WORKERS`]).
pub const DEFAULT_WORKERS_CAP: usize = 8;

/// The default number of workers: one per CPU the agent may run on (its affinity mask and
/// cgroup quota, [`std::thread::available_parallelism`]), at most one per RX queue of the
/// uplink (`uplink_queues`) and at most [`DEFAULT_WORKERS_CAP`]; at least one.
pub fn default_workers(uplink_queues: u32) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    pick_workers(cpus, uplink_queues)
}

fn pick_workers(cpus: usize, uplink_queues: u32) -> usize {
    cpus.min(uplink_queues.max(1) as usize)
        .clamp(1, DEFAULT_WORKERS_CAP)
}

/// The name of the device whose queue 0 anchors worker `index`'s UMEM: `lo` for worker 0;
/// a TUN of the agent's own for the others (the kernel registers one UMEM per device
/// queue, so two backends cannot anchor on the same one).
pub fn anchor_name(index: usize) -> String {
    if index == 0 {
        "lo".to_string()
    } else {
        format!("fpxsk{index}")
    }
}

/// What one worker is given.
pub(super) struct WorkerSetup {
    pub index: usize,
    pub cfg: XskConfig,
    /// Keeps the anchor device of a worker other than 0 (dropped after the backend).
    pub anchor: Option<TunDevice>,
    pub shared: Arc<Shared>,
    pub control: Arc<WorkerControl>,
    pub commands: Receiver<Command<super::EngineIo>>,
    pub misses: Sender<(u16, Ipv4Addr)>,
    pub flows: SyncSender<FlowExport>,
    /// Where punted packets go (every worker writes to the punt TUN).
    pub punt: Option<Arc<TunDevice>>,
    /// Whether this worker reads the host's own traffic from the punt TUN (one does).
    pub host_input: bool,
    /// Its end of the handoff queues (several workers).
    pub link: Option<HandoffLink>,
    pub priority: u8,
}

/// What a started worker hands back.
pub(super) struct Started {
    pub stats: Arc<WorkerStats>,
    pub info: GraphInfo,
    pub sessions: Option<Arc<Mutex<Conntrack>>>,
    pub waker: Waker,
    pub xsk: XskOpener,
    pub thread: JoinHandle<Result<(), ferroplane_io::IoError>>,
}

type Ready = (
    Arc<WorkerStats>,
    GraphInfo,
    Option<Arc<Mutex<Conntrack>>>,
    Waker,
    XskOpener,
);

/// Starts the thread `fp-worker-<index>`: creates its AF_XDP backend (UMEM) and graph on the
/// thread, and returns once it runs (or why it could not start).
pub(super) fn start_worker(setup: WorkerSetup) -> Result<Started, EngineError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready, EngineError>>();
    let index = setup.index;
    let thread = std::thread::Builder::new()
        .name(format!("fp-worker-{index}"))
        .spawn(move || run_worker(setup, ready_tx))
        .map_err(|e| {
            EngineError::Io(ferroplane_io::IoError::Os {
                op: "spawn worker",
                source: e,
            })
        })?;
    let (stats, info, sessions, waker, xsk) = ready_rx
        .recv_timeout(super::ports::ANSWER)
        .map_err(|_| EngineError::Timeout(super::ports::ANSWER))??;
    Ok(Started {
        stats,
        info,
        sessions,
        waker,
        xsk,
        thread,
    })
}

fn run_worker(
    setup: WorkerSetup,
    ready: Sender<Result<Ready, EngineError>>,
) -> Result<(), ferroplane_io::IoError> {
    let WorkerSetup {
        index,
        cfg,
        anchor,
        shared,
        control,
        commands,
        misses,
        flows,
        punt,
        host_input,
        link,
        priority,
    } = setup;
    if priority > 0 {
        super::set_realtime(priority);
    }
    let io = match XskIo::new(cfg) {
        Ok(io) => io,
        Err(e) => {
            let _ = ready.send(Err(EngineError::Io(e)));
            return Ok(());
        }
    };
    let waker = io.waker();
    let xsk = io.opener();
    let stop = control.clone();
    let mut worker = match Worker::new(super::backend::into_engine_io(io), shared, control) {
        Ok(w) => w,
        Err(e) => {
            let _ = ready.send(Err(EngineError::Graph(e.to_string())));
            return Ok(());
        }
    };
    if let Some(link) = link {
        let w = waker.clone();
        link.set_waker(Box::new(move || w.wake()));
        worker.set_handoff(link);
    }
    worker.set_commands(commands);
    worker.set_miss_reports(misses);
    worker.set_flow_reports(flows);
    if let Some(tun) = punt {
        if host_input {
            // The TUN also brings the node's own traffic to services (hostsvc).
            let w = waker.clone();
            match ferroplane_io::TunReader::start(tun.clone(), Box::new(move || w.wake())) {
                Ok(r) => worker.set_host_input(Box::new(r)),
                Err(e) => tracing::warn!(
                    "the node's own service traffic is not read from the punt TUN: {e}"
                ),
            }
        }
        worker.set_punt(Box::new(move |pkt: &[u8]| tun.write(pkt).is_ok()));
    }
    let sessions = worker
        .shared_state("ip4-nat")
        .and_then(|s| s.downcast::<Mutex<Conntrack>>().ok());
    let _ = ready.send(Ok((
        worker.stats(),
        worker.graph_info(),
        sessions,
        waker,
        xsk,
    )));
    let r = worker.run();
    if let Err(e) = &r {
        tracing::error!(worker = index, "engine worker stopped: {e:?}");
    } else if !stop.stop.load(Ordering::Relaxed) {
        tracing::error!(
            worker = index,
            "engine worker thread ended without being asked to"
        );
    }
    // The backend (its sockets and UMEM) goes before the anchor device.
    drop(worker);
    drop(anchor);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_cpus_bounded_by_queues_and_cap() {
        // This VM: 2 CPUs, a 1-queue uplink: one worker (the suites' default).
        assert_eq!(pick_workers(2, 1), 1);
        assert_eq!(pick_workers(2, 4), 2);
        assert_eq!(pick_workers(16, 4), 4);
        assert_eq!(pick_workers(64, 64), DEFAULT_WORKERS_CAP);
        assert_eq!(pick_workers(1, 0), 1);
        assert_eq!(pick_workers(0, 8), 1);
    }

    #[test]
    fn anchors_are_distinct_per_worker() {
        assert_eq!(anchor_name(0), "lo");
        let names: std::collections::HashSet<_> = (0..8).map(anchor_name).collect();
        assert_eq!(names.len(), 8);
    }
}
