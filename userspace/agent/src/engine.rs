//! The engine worker thread and the handle the control plane drives it with.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ferroplane_engine::counters::WorkerStats;
use ferroplane_engine::graph::GraphInfo;
use ferroplane_engine::worker::Command;
use ferroplane_engine::{Shared, Snapshot, Worker, WorkerControl};
use ferroplane_io::{PortId, TunDevice, XskConfig, XskIo, XskOpener};

/// Errors of the engine thread.
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
}

/// A running engine worker.
pub struct Engine {
    /// Published tables.
    pub shared: Arc<Shared>,
    /// Shared knobs (stop, trace, clear).
    pub control: Arc<WorkerControl>,
    /// The worker's counters.
    pub stats: Arc<WorkerStats>,
    /// Node and error names.
    pub info: GraphInfo,
    /// The worker's session table (`ip4-nat`).
    pub sessions: Option<Arc<std::sync::Mutex<ferroplane_tables::Conntrack>>>,
    /// Kernel index of the punt TUN, once the caller knows it: the engine's punt
    /// interface ([`crate::hostsvc::with_punt`]).
    pub punt_ifindex: Option<u32>,
    /// Queues commands for the worker and wakes it.
    opener: PortOpener,
    misses: Receiver<(u16, Ipv4Addr)>,
    flows: Option<Receiver<ferroplane_engine::flow_export::FlowExport>>,
    thread: Option<JoinHandle<Result<(), ferroplane_io::IoError>>>,
}

const ANSWER: Duration = Duration::from_secs(5);
/// Shares of the AF_XDP frame pool each uplink queue's port gets, a pod's port getting one
/// ([`XskIo::set_port_weight`]): the uplink carries every pod's traffic with the outside, so
/// its fill rings must not shrink to a pod's share as pods are added (with the default
/// 32768 frames and 50 pods, a one-queue uplink keeps a 1,564-frame fill ring).
pub const UPLINK_QUEUE_WEIGHT: u32 = 4;
/// Forwarded-flow reports buffered between two drains (the agent drains every 200 ms).
const FLOW_REPORTS: usize = 16_384;

/// Runs commands (opening and closing AF_XDP ports) on the worker from any thread (see
/// [`Engine::port_opener`]).
#[derive(Clone)]
pub struct PortOpener {
    commands: Sender<Command<XskIo>>,
    waker: ferroplane_io::Waker,
    /// Opens sockets on the worker's UMEM on the caller's thread.
    xsk: XskOpener,
}

impl std::fmt::Debug for PortOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortOpener").finish_non_exhaustive()
    }
}

impl PortOpener {
    /// Runs `f` on the worker thread with its backend (waking the worker if it sleeps)
    /// and waits for the result.
    pub fn exec<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut XskIo) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let (tx, rx) = mpsc::channel();
        self.send(move |io| {
            let _ = tx.send(f(io));
        })?;
        rx.recv_timeout(ANSWER)
            .map_err(|_| EngineError::Timeout(ANSWER))
    }

    /// Queues `f` for the worker and wakes it, without waiting.
    fn send(&self, f: impl FnOnce(&mut XskIo) + Send + 'static) -> Result<(), EngineError> {
        self.commands
            .send(Box::new(f))
            .map_err(|_| EngineError::Gone)?;
        self.waker.wake();
        Ok(())
    }

    /// [`Engine::add_port`]: the socket is created, given its rings and bound on the calling
    /// thread (the kernel takes milliseconds, proportional to the UMEM's size); the worker
    /// only installs the ready port (fills its fill ring), so it keeps forwarding meanwhile.
    pub fn add_port(&self, ifname: &str) -> Result<(PortId, RawFd), EngineError> {
        let open = self.xsk.open(ifname, 0)?;
        Ok(self.exec(move |io| io.install_port(open))??)
    }

    /// [`Engine::add_ports`]: opens and installs the sockets on the worker thread (used for
    /// the uplink at start, before it forwards anything). Each queue's port gets
    /// [`UPLINK_QUEUE_WEIGHT`] shares of the frame pool.
    pub fn add_ports(
        &self,
        ifname: &str,
        queues: u32,
    ) -> Result<Vec<(PortId, RawFd)>, EngineError> {
        let name = ifname.to_string();
        Ok(self.exec(move |io| {
            let opener = io.opener();
            let opens = (0..queues)
                .map(|q| opener.open(&name, q))
                .collect::<Result<Vec<_>, _>>()?;
            let ports = io.install_ports(opens)?;
            for &(port, _) in &ports {
                io.set_port_weight(port, UPLINK_QUEUE_WEIGHT)?;
            }
            Ok::<_, ferroplane_io::IoError>(ports)
        })??)
    }

    /// [`Engine::remove_port`] from any thread.
    pub fn remove_port(&self, port: PortId) -> Result<(), EngineError> {
        Ok(self.exec(move |io| io.remove_port(port))??)
    }

    /// [`Engine::close_port`] from any thread.
    pub fn close_port(&self, port: PortId) -> Result<(), EngineError> {
        self.send(move |io| {
            if let Err(e) = io.close_port(port) {
                tracing::warn!(port, "closing AF_XDP port: {e}");
            }
        })
    }
}

impl Engine {
    /// Start the worker thread with an AF_XDP backend; punted packets go to `punt`. With
    /// `worker_priority` above 0 the worker runs `SCHED_FIFO` at that priority (see
    /// [`set_realtime`]); 0 leaves it under the normal scheduler.
    pub fn start(
        cfg: XskConfig,
        punt: Option<TunDevice>,
        worker_priority: u8,
    ) -> Result<Engine, EngineError> {
        let shared = Arc::new(Shared::new(Snapshot::default()));
        let control = Arc::new(WorkerControl::default());
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command<XskIo>>();
        let (miss_tx, miss_rx) = mpsc::channel();
        let (flow_tx, flow_rx) = mpsc::sync_channel(FLOW_REPORTS);
        let (ready_tx, ready_rx) = mpsc::channel();
        let (s, c) = (shared.clone(), control.clone());
        let worker_control = control.clone();
        let thread = std::thread::Builder::new()
            .name("fp-worker-0".into())
            .spawn(move || {
                if worker_priority > 0 {
                    set_realtime(worker_priority);
                }
                let io = match XskIo::new(cfg) {
                    Ok(io) => io,
                    Err(e) => {
                        let _ = ready_tx.send(Err(EngineError::Io(e)));
                        return Ok(());
                    }
                };
                let waker = io.waker();
                let xsk = io.opener();
                let mut worker = match Worker::new(io, s, c) {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = ready_tx.send(Err(EngineError::Graph(e.to_string())));
                        return Ok(());
                    }
                };
                worker.set_commands(cmd_rx);
                worker.set_miss_reports(miss_tx);
                worker.set_flow_reports(flow_tx);
                if let Some(tun) = punt {
                    // The TUN also brings the node's own traffic to services (hostsvc).
                    let tun = Arc::new(tun);
                    let w = waker.clone();
                    match ferroplane_io::TunReader::start(tun.clone(), Box::new(move || w.wake())) {
                        Ok(r) => worker.set_host_input(Box::new(r)),
                        Err(e) => tracing::warn!(
                            "the node's own service traffic is not read from the punt TUN: {e}"
                        ),
                    }
                    worker.set_punt(Box::new(move |pkt: &[u8]| tun.write(pkt).is_ok()));
                }
                let sessions = worker.shared_state("ip4-nat").and_then(|s| {
                    s.downcast::<std::sync::Mutex<ferroplane_tables::Conntrack>>()
                        .ok()
                });
                let _ = ready_tx.send(Ok((
                    worker.stats(),
                    worker.graph_info(),
                    sessions,
                    waker,
                    xsk,
                )));
                let r = worker.run();
                if let Err(e) = &r {
                    tracing::error!("engine worker stopped: {e:?}");
                } else if !worker_control.stop.load(Ordering::Relaxed) {
                    tracing::error!("engine worker thread ended without being asked to");
                }
                r
            })
            .map_err(|e| {
                EngineError::Io(ferroplane_io::IoError::Os {
                    op: "spawn worker",
                    source: e,
                })
            })?;
        let (stats, info, sessions, waker, xsk) = ready_rx
            .recv_timeout(ANSWER)
            .map_err(|_| EngineError::Timeout(ANSWER))??;
        Ok(Engine {
            sessions,
            punt_ifindex: None,
            shared,
            control,
            stats,
            info,
            opener: PortOpener {
                commands: cmd_tx,
                waker,
                xsk,
            },
            misses: miss_rx,
            flows: Some(flow_rx),
            thread: Some(thread),
        })
    }

    /// Run `f` on the worker thread with its backend and wait for the result.
    pub fn exec<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut XskIo) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        self.opener.exec(f)
    }

    /// Open an AF_XDP socket on `ifname` queue 0; returns its port and fd (for the XSKMAP).
    pub fn add_port(&self, ifname: &str) -> Result<(PortId, RawFd), EngineError> {
        self.opener.add_port(ifname)
    }

    /// Open one AF_XDP socket per RX queue `0..queues` of `ifname`; returns their ports, with
    /// consecutive ids (queue `q` is port `first + q`, as the XDP programs' `xsk_slot +
    /// rx_queue_index` expects), and fds.
    pub fn add_ports(
        &self,
        ifname: &str,
        queues: u32,
    ) -> Result<Vec<(PortId, RawFd)>, EngineError> {
        self.opener.add_ports(ifname, queues)
    }

    /// A handle that opens ports from another thread (the warm pod pool), so the caller's
    /// thread is not the one waiting for the kernel.
    pub fn port_opener(&self) -> PortOpener {
        self.opener.clone()
    }

    /// Close a port and wait until it is closed.
    pub fn remove_port(&self, port: PortId) -> Result<(), EngineError> {
        self.opener.remove_port(port)
    }

    /// Close a port without waiting, and without stalling forwarding: the worker hands
    /// the socket to its reaper thread ([`XskIo::close_port`]), because closing a bound
    /// AF_XDP socket waits for an RCU grace period (~12 ms here). The port's id and
    /// frames come back when the reaper is done; a failure is logged. Unlink the port
    /// from the XSKMAP first.
    pub fn close_port(&self, port: PortId) -> Result<(), EngineError> {
        self.opener.close_port(port)
    }

    /// Next hops the engine asked to resolve since the last call.
    pub fn take_misses(&self) -> Vec<(u16, Ipv4Addr)> {
        self.misses.try_iter().collect()
    }

    /// Flows the engine forwarded (for the XDP flow cache) since the last call (none once
    /// [`Engine::take_flow_reports`] took the channel).
    pub fn take_flows(&self) -> Vec<ferroplane_engine::flow_export::FlowExport> {
        self.flows
            .as_ref()
            .map(|r| r.try_iter().collect())
            .unwrap_or_default()
    }

    /// The channel of forwarded-flow reports, for a reader of its own (the flow-cache
    /// writer, [`crate::fastpath`]); `None` after the first call.
    pub fn take_flow_reports(
        &mut self,
    ) -> Option<Receiver<ferroplane_engine::flow_export::FlowExport>> {
        self.flows.take()
    }

    /// Stop the worker and wait for it.
    pub fn stop(&mut self) {
        self.control.stop.store(true, Ordering::Relaxed);
        self.opener.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Puts the calling thread (the engine worker) under `SCHED_FIFO` at `priority` (1..=99),
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
