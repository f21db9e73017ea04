//! The engine workers and the handle the control plane drives them with.
//!
//! One worker (`--workers 1`) runs as it always did: one thread over one AF_XDP backend.
//! With several, each worker has its own backend (UMEM and frame pool; worker `i > 0`
//! anchors it on a TUN of its own, [`workers::anchor_name`]), the ports are spread over the
//! workers ([`ports`]), and the workers hand each other the packets of flows they do not
//! own ([`ferroplane_engine::handoff`]: a shared flow directory and a symmetric address
//! hash). Tables reach every worker through the one published snapshot.

pub mod backend;
pub mod ports;
pub mod workers;

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ferroplane_engine::counters::WorkerStats;
use ferroplane_engine::graph::GraphInfo;
use ferroplane_engine::handoff::{self, FlowDirectory, PortOwners};
use ferroplane_engine::worker::Command;
use ferroplane_engine::{Shared, Snapshot, WorkerControl};
use ferroplane_io::{PortId, TunDevice, XskConfig, XskIo};
use ferroplane_tables::Conntrack;

pub use backend::{EngineIo, EngineXsk};
pub use ports::{PortOpener, UPLINK_QUEUE_WEIGHT};
pub use workers::{default_workers, DEFAULT_WORKERS_CAP};

/// Errors of the engine threads.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The AF_XDP backend failed.
    #[error("{0}")]
    Io(#[from] ferroplane_io::IoError),
    /// The graph could not be built.
    #[error("graph: {0}")]
    Graph(String),
    /// The worker thread is gone.
    #[error("engine worker thread is not running")]
    Gone,
    /// The worker did not answer in time.
    #[error("engine worker did not answer within {0:?}")]
    Timeout(Duration),
    /// A bad `--workers`.
    #[error("{0}")]
    Config(String),
}

/// One running worker, as the control plane sees it.
#[derive(Clone)]
pub struct WorkerHandle {
    /// Its knobs (stop, trace, capture, heartbeat).
    pub control: Arc<WorkerControl>,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
    /// Its session table (`ip4-nat`).
    pub sessions: Option<Arc<Mutex<Conntrack>>>,
}

/// The running engine workers.
pub struct Engine {
    /// Published tables (every worker reads them).
    pub shared: Arc<Shared>,
    /// Worker 0's knobs (stop, trace, clear); [`Engine::controls`] has every worker's.
    pub control: Arc<WorkerControl>,
    /// Worker 0's counters; [`Engine::all_stats`] has every worker's.
    pub stats: Arc<WorkerStats>,
    /// Node and error names.
    pub info: GraphInfo,
    /// Worker 0's session table (`ip4-nat`); [`Engine::all_sessions`] has every worker's.
    pub sessions: Option<Arc<Mutex<Conntrack>>>,
    /// Kernel index of the punt TUN, once the caller knows it: the engine's punt
    /// interface ([`crate::hostsvc::with_punt`]).
    pub punt_ifindex: Option<u32>,
    workers: Vec<WorkerHandle>,
    /// Queues commands for the workers and wakes them.
    opener: PortOpener,
    directory: Option<Arc<FlowDirectory>>,
    misses: Receiver<(u16, Ipv4Addr)>,
    flows: Option<Receiver<ferroplane_engine::flow_export::FlowExport>>,
    threads: Vec<JoinHandle<Result<(), ferroplane_io::IoError>>>,
}

/// Forwarded-flow reports buffered between two drains (the agent drains every 200 ms).
const FLOW_REPORTS: usize = 16_384;
/// Entries of the shared flow directory (translated sessions whose replies hash to another
/// worker) with several workers.
const DIRECTORY_ENTRIES: usize = 1 << 20;

impl Engine {
    /// Start `workers` worker threads, each with its own AF_XDP backend sized by `cfg`;
    /// punted packets go to `punt` (whose reads, the node's own traffic to services, worker 0
    /// takes). With `worker_priority` above 0 the workers run `SCHED_FIFO` at that priority
    /// (see [`set_realtime`]); 0 leaves them under the normal scheduler.
    pub fn start(
        cfg: XskConfig,
        punt: Option<TunDevice>,
        worker_priority: u8,
        workers: usize,
    ) -> Result<Engine, EngineError> {
        if workers == 0 || workers > handoff::MAX_WORKERS {
            return Err(EngineError::Config(format!(
                "--workers {workers}: between 1 and {}",
                handoff::MAX_WORKERS
            )));
        }
        let shared = Arc::new(Shared::new(Snapshot::default()));
        let (miss_tx, miss_rx) = mpsc::channel();
        let (flow_tx, flow_rx) = mpsc::sync_channel(FLOW_REPORTS);
        let punt = punt.map(Arc::new);
        let owners = Arc::new(PortOwners::default());
        let directory = (workers > 1).then(|| Arc::new(FlowDirectory::new(DIRECTORY_ENTRIES)));
        let mut links: Vec<Option<handoff::HandoffLink>> = match &directory {
            Some(dir) => handoff::links(workers, owners.clone(), dir.clone())
                .into_iter()
                .map(Some)
                .collect(),
            None => vec![None],
        };
        let mut handles = Vec::with_capacity(workers);
        let mut lines = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        let mut info = None;
        let stop_started = |handles: &[WorkerHandle], lines: &[ports::WorkerLine]| {
            for h in handles {
                h.control.stop.store(true, Ordering::Relaxed);
            }
            for l in lines {
                l.waker.wake();
            }
        };
        for index in 0..workers {
            let anchor = if index == 0 {
                None
            } else {
                match TunDevice::create(&workers::anchor_name(index)) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        stop_started(&handles, &lines);
                        return Err(EngineError::Io(e));
                    }
                }
            };
            let control = Arc::new(WorkerControl::default());
            let (cmd_tx, cmd_rx) = mpsc::channel::<Command<EngineIo>>();
            let setup = workers::WorkerSetup {
                index,
                cfg: XskConfig {
                    anchor_ifname: workers::anchor_name(index),
                    ..cfg.clone()
                },
                anchor,
                shared: shared.clone(),
                control: control.clone(),
                commands: cmd_rx,
                misses: miss_tx.clone(),
                flows: flow_tx.clone(),
                punt: punt.clone(),
                host_input: index == 0,
                link: links.get_mut(index).and_then(Option::take),
                priority: worker_priority,
            };
            let started = match workers::start_worker(setup) {
                Ok(s) => s,
                Err(e) => {
                    stop_started(&handles, &lines);
                    return Err(e);
                }
            };
            info.get_or_insert(started.info);
            handles.push(WorkerHandle {
                control,
                stats: started.stats,
                sessions: started.sessions,
            });
            lines.push(ports::WorkerLine {
                commands: cmd_tx,
                waker: started.waker,
                xsk: started.xsk,
            });
            threads.push(started.thread);
        }
        let first = handles[0].clone();
        let info = info.ok_or_else(|| EngineError::Graph("no worker started".into()))?;
        if workers > 1 {
            tracing::info!(workers, "engine workers started");
        }
        Ok(Engine {
            control: first.control,
            stats: first.stats,
            sessions: first.sessions,
            punt_ifindex: None,
            shared,
            info,
            workers: handles,
            opener: PortOpener::new(lines, owners),
            directory,
            misses: miss_rx,
            flows: Some(flow_rx),
            threads,
        })
    }

    /// The workers (index order).
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// Every worker's knobs (index order).
    pub fn controls(&self) -> Vec<Arc<WorkerControl>> {
        self.workers.iter().map(|w| w.control.clone()).collect()
    }

    /// Every worker's counters (index order).
    pub fn all_stats(&self) -> Vec<Arc<WorkerStats>> {
        self.workers.iter().map(|w| w.stats.clone()).collect()
    }

    /// Every worker's session table (index order).
    pub fn all_sessions(&self) -> Vec<Arc<Mutex<Conntrack>>> {
        self.workers
            .iter()
            .filter_map(|w| w.sessions.clone())
            .collect()
    }

    /// The flow directory the workers share (several workers only).
    pub fn directory(&self) -> Option<Arc<FlowDirectory>> {
        self.directory.clone()
    }

    /// Run `f` on worker 0 with its backend and wait for the result.
    pub fn exec<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut XskIo) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        self.opener.exec(f)
    }

    /// Open an AF_XDP socket on `ifname` queue 0 (on the worker owning the fewest ports);
    /// returns its port and fd (for the XSKMAP slot of the same number).
    pub fn add_port(&self, ifname: &str) -> Result<(PortId, RawFd), EngineError> {
        self.opener.add_port(ifname)
    }

    /// Open one AF_XDP socket per RX queue `0..queues` of `ifname` (queue `q` on worker
    /// `q mod N`); returns their ports, with consecutive ids (queue `q` is port `first + q`,
    /// as the XDP programs' `xsk_slot + rx_queue_index` expects), and fds.
    pub fn add_ports(
        &self,
        ifname: &str,
        queues: u32,
    ) -> Result<Vec<(PortId, RawFd)>, EngineError> {
        self.opener.add_ports(ifname, queues)
    }

    /// A handle that opens ports and runs commands from another thread (the warm pod pool,
    /// the API), so the caller's thread is not the one waiting for the kernel.
    pub fn port_opener(&self) -> PortOpener {
        self.opener.clone()
    }

    /// Close a port and wait until it is closed.
    pub fn remove_port(&self, port: PortId) -> Result<(), EngineError> {
        self.opener.remove_port(port)
    }

    /// Close a port without waiting, and without stalling forwarding: its worker hands
    /// the socket to its reaper thread ([`XskIo::close_port`]), because closing a bound
    /// AF_XDP socket waits for an RCU grace period (~12 ms here). The port's id and
    /// frames come back when the reaper is done; a failure is logged. Unlink the port
    /// from the XSKMAP first.
    pub fn close_port(&self, port: PortId) -> Result<(), EngineError> {
        self.opener.close_port(port)
    }

    /// Next hops the workers asked to resolve since the last call.
    pub fn take_misses(&self) -> Vec<(u16, Ipv4Addr)> {
        self.misses.try_iter().collect()
    }

    /// Flows the workers forwarded (for the XDP flow cache) since the last call (none once
    /// [`Engine::take_flow_reports`] took the channel).
    pub fn take_flows(&self) -> Vec<ferroplane_engine::flow_export::FlowExport> {
        self.flows
            .as_ref()
            .map(|r| r.try_iter().collect())
            .unwrap_or_default()
    }

    /// The channel of forwarded-flow reports (every worker's), for a reader of its own (the
    /// flow-cache writer, [`crate::fastpath`]); `None` after the first call.
    pub fn take_flow_reports(
        &mut self,
    ) -> Option<Receiver<ferroplane_engine::flow_export::FlowExport>> {
        self.flows.take()
    }

    /// Stop the workers and wait for them.
    pub fn stop(&mut self) {
        for w in &self.workers {
            w.control.stop.store(true, Ordering::Relaxed);
        }
        self.opener.wake_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Puts the calling thread (an engine worker) under `SCHED_FIFO` at `priority` (1..=99),
/// or logs why not (no `CAP_SYS_NICE`, or a cgroup without real-time budget) and leaves it
/// as it was.
///
/// Why: the kernel drops what arrives on an AF_XDP socket whose fill ring is empty, and a
/// veth's XDP path runs in the sender's context. The socket wakes the sleeping worker, but
/// the scheduler's wake-affine placement queues it on the sender's CPU, where a normal
/// (CFS) worker waits for the sender's time slice to end: an unpaced burst from a pod then
/// lands on a fill ring nobody refills (measured, idle fill 32: 968 of 1,000 datagrams pod
/// -> router lost; the worker read exactly the 32 that fit). A real-time worker preempts
/// the sender as soon as it is woken and refills at once (same burst: none lost). It sleeps
/// in `poll` whenever it has nothing to do; under sustained load the kernel's real-time
/// throttling (`sched_rt_runtime_us`, 95% by default) still leaves time to the other
/// tasks of its CPU.
pub fn set_realtime(priority: u8) {
    match ferroplane_io::sys::set_realtime(priority) {
        Ok(()) => tracing::info!(priority, "engine worker runs SCHED_FIFO"),
        Err(e) => tracing::warn!(
            priority,
            "engine worker stays under the normal scheduler (SCHED_FIFO refused: {e}); \
             bursts into or out of idle pods may lose packets"
        ),
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}
