//! The worker loop: receive a vector per port, run the graph, transmit.
//!
//! # Files
//!
//! - `mod.rs`: [`Worker`] (creation, wiring to the control plane, accessors).
//! - `poll.rs`: one round (receive a burst per port, trace selection, run the graph,
//!   transmit, punt, report) and the idle wait.
//! - `control.rs`: [`WorkerControl`] (stop, trace, capture, health, fault injection) and
//!   the run loop (commands, faults, back-off after backend errors).
//! - `capture.rs`: packet capture at an interface or a graph node.
//! - `host.rs`: the punt sink and the node's own packets entering the graph.
//! - `multi.rs`: a worker's part in a group of workers (flow ownership, handoff).

mod capture;
mod control;
mod host;
mod multi;
mod poll;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroplane_io::{BufIdx, Desc, FrameMemory, PacketIo};

use crate::buffer::BufMeta;
use crate::counters::WorkerStats;
use crate::flow_export::FlowExport;
use crate::graph::{Graph, GraphError, GraphInfo};
use crate::node::Outputs;
use crate::nodes::{standard_graph, ENTRY};
use crate::snapshot::Shared;
use crate::trace::TraceBuffer;
use crate::VECTOR_SIZE;

pub use capture::{CapturePoint, CaptureSpec, CaptureState, CapturedPacket};
pub use control::{WorkerControl, WorkerFault};
pub use host::{HostSource, PuntSink};

use multi::Multi;

/// A command run on the worker's thread with its I/O backend (e.g. open a port).
pub type Command<P> = Box<dyn FnOnce(&mut P) + Send>;

/// One engine worker: owns an I/O backend and a graph.
pub struct Worker<P: PacketIo> {
    io: P,
    graph: Graph<P::Memory>,
    meta: Vec<BufMeta>,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    control: Arc<WorkerControl>,
    entry: u16,
    rx: Vec<Desc>,
    bufs: Vec<BufIdx>,
    out: Outputs,
    trace: TraceBuffer,
    next_trace_id: u32,
    commands: Option<Receiver<Command<P>>>,
    punt: Option<PuntSink>,
    host: Option<Box<dyn HostSource>>,
    misses: Option<Sender<(u16, Ipv4Addr)>>,
    flows: Option<SyncSender<FlowExport>>,
    asked: HashMap<(u16, Ipv4Addr), Instant>,
    idle_wait: Duration,
    capture_was_active: bool,
    multi: Option<Multi>,
}

impl<P: PacketIo> Worker<P>
where
    P::Memory: 'static,
{
    /// A worker over `io` running the standard graph on the tables in `shared`.
    pub fn new(
        io: P,
        shared: Arc<Shared>,
        control: Arc<WorkerControl>,
    ) -> Result<Self, GraphError> {
        let mut io = io;
        let graph = standard_graph::<P::Memory>()?;
        let stats = Arc::new(graph.new_stats());
        let entry = graph.info().node_index(ENTRY).unwrap_or(0);
        let frames = io.memory().num_frames() as usize;
        Ok(Worker {
            io,
            graph,
            meta: vec![BufMeta::default(); frames.max(1)],
            shared,
            stats,
            control,
            entry,
            rx: vec![Desc::default(); VECTOR_SIZE],
            bufs: Vec::with_capacity(VECTOR_SIZE),
            out: Outputs::default(),
            trace: TraceBuffer::default(),
            next_trace_id: 1,
            commands: None,
            punt: None,
            host: None,
            misses: None,
            flows: None,
            asked: HashMap::new(),
            idle_wait: Duration::from_millis(5),
            capture_was_active: false,
            multi: None,
        })
    }

    /// The I/O backend, taken back (e.g. to read a memory backend's output after a run).
    pub fn into_io(self) -> P {
        self.io
    }

    /// Receive commands to run on the worker thread from this channel.
    pub fn set_commands(&mut self, rx: Receiver<Command<P>>) {
        self.commands = Some(rx);
    }

    /// Where packets for the host go.
    pub fn set_punt(&mut self, sink: PuntSink) {
        self.punt = Some(sink);
    }

    /// Where the node's own packets for the engine come from (the punt TUN's read side).
    pub fn set_host_input(&mut self, source: Box<dyn HostSource>) {
        self.host = Some(source);
    }

    /// Where next hops that need resolution are reported (at most once a second each).
    pub fn set_miss_reports(&mut self, tx: Sender<(u16, Ipv4Addr)>) {
        self.misses = Some(tx);
    }

    /// Where forwarded flows for the XDP flow cache are reported ([`crate::flow_export`];
    /// only while the snapshot's `flow_export` is on). A full channel drops reports: the
    /// flow is reported again later.
    pub fn set_flow_reports(&mut self, tx: SyncSender<FlowExport>) {
        self.flows = Some(tx);
    }

    /// The worker's counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// The graph's description (node names, error table).
    pub fn graph_info(&self) -> GraphInfo {
        self.graph.info().clone()
    }

    /// The state node `name` shares with the control plane (see [`crate::Node::shared_state`]).
    pub fn shared_state(&self, name: &str) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.graph.shared_state(name)
    }

    /// The I/O backend.
    pub fn io_mut(&mut self) -> &mut P {
        &mut self.io
    }
}
