//! The worker loop: receive a vector per port, run the graph, transmit.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroplane_io::{BufIdx, Desc, FrameMemory, IoError, PacketIo};

use crate::buffer::{BufMeta, FLAG_TRACED};
use crate::counters::WorkerStats;
use crate::filter::PacketFilter;
use crate::flow_export::FlowExport;
use crate::graph::{Graph, GraphError, GraphInfo};
use crate::handoff::{flow_id, flow_owner, FlowId, HandoffKind, HandoffLink, HANDOFF_OFFSET};
use crate::node::Outputs;
use crate::nodes::{standard_graph, ENTRY};
use crate::snapshot::Shared;
use crate::trace::{TraceBuffer, TraceData, TraceRecord};
use crate::VECTOR_SIZE;

/// A command run on the worker's thread with its I/O backend (e.g. open a port).
pub type Command<P> = Box<dyn FnOnce(&mut P) + Send>;

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

/// Where a capture copies packets from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CapturePoint {
    /// Received on and sent to this interface (`sw_if`).
    Interface(u16),
    /// Entering this graph node (index), e.g. `error-drop` to see drops.
    Node(u16),
}

/// A capture request.
#[derive(Clone, Debug)]
pub struct CaptureSpec {
    /// Where.
    pub point: CapturePoint,
    /// Which packets.
    pub filter: PacketFilter,
    /// How many more to take.
    pub remaining: u32,
    /// How many more bytes of frames to take: the capture ends when a frame would pass it.
    pub remaining_bytes: u64,
}

/// One captured packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedPacket {
    /// Wall-clock time (nanoseconds since the Unix epoch).
    pub ts_ns: u64,
    /// The frame (Ethernet header first).
    pub data: Vec<u8>,
}

/// The state of the capture.
#[derive(Clone, Debug, Default)]
pub struct CaptureState {
    /// The capture in progress (None when idle or done).
    pub spec: Option<CaptureSpec>,
    /// Packets taken so far.
    pub packets: Vec<CapturedPacket>,
}

impl CaptureState {
    fn take(&mut self, frame: &[u8]) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        if spec.remaining == 0 || !spec.filter.matches(frame) {
            return;
        }
        let len = frame.len() as u64;
        if len > spec.remaining_bytes {
            spec.remaining = 0;
            return;
        }
        spec.remaining -= 1;
        spec.remaining_bytes -= len;
        let ts_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.packets.push(CapturedPacket {
            ts_ns,
            data: frame.to_vec(),
        });
    }

    /// True when the capture took all it asked for.
    pub fn done(&self) -> bool {
        self.spec.as_ref().is_none_or(|s| s.remaining == 0)
    }
}

/// Receives punted packets (IPv4, Ethernet header stripped); returns false if not delivered.
pub type PuntSink = Box<dyn FnMut(&[u8]) -> bool>;

/// Where the node's own packets come from: what the host kernel routes to the punt TUN
/// (its traffic to service addresses, see the agent's `hostsvc`). They enter the graph as
/// received on [`crate::interfaces::PUNT_SW_IF`], behind a made-up Ethernet header.
pub trait HostSource {
    /// Whether packets may be waiting (checked every round: must be cheap).
    fn ready(&self) -> bool;
    /// Copy the next waiting packet (IPv4, no link header) into `buf`; `None` when none
    /// waits (or on an error, counted by the caller as nothing read).
    fn read(&mut self, buf: &mut [u8]) -> Option<usize>;
}

impl HostSource for ferroplane_io::TunReader {
    fn ready(&self) -> bool {
        ferroplane_io::TunReader::ready(self)
    }

    fn read(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.try_read(buf).ok().flatten()
    }
}

/// Where a host packet starts in its frame: the XDP headroom, so that encapsulation
/// toward a remote backend finds room in front of it as for received frames.
const HOST_RX_OFFSET: usize = 256;
/// Most host packets taken into the graph per round.
const HOST_BURST: usize = 64;

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

/// A worker's part in a group of workers ([`Worker::set_handoff`]).
struct Multi {
    link: HandoffLink,
    /// This worker's session table (`ip4-nat`), to see which registered tuples are gone.
    sessions: Option<Arc<Mutex<ferroplane_tables::Conntrack>>>,
    /// Reply tuples this worker registered in the flow directory.
    registered: Vec<ferroplane_tables::FlowKey>,
    /// Next entry of `registered` to check.
    cursor: usize,
    /// Non-first fragments follow their first fragment: (src, dst, proto, id) -> owner,
    /// for first fragments whose owner is not the address hash's.
    frags: HashMap<(Ipv4Addr, Ipv4Addr, u8, u16), usize>,
    /// Frames handed off this round (freed once copied).
    frames: Vec<BufIdx>,
    /// This round left the ports alone (the others' queues are full): do not sleep.
    congested: bool,
}

/// Packets handed over by other workers taken per round (from whole batches).
const HANDOFF_BUDGET: usize = 4 * VECTOR_SIZE;
/// Registered tuples checked per round.
const SWEEP_BUDGET: usize = 32;
/// Fragment owners remembered at most.
const FRAG_OWNERS_MAX: usize = 4096;

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

    /// Make this worker one of a group ([`crate::handoff`]): it receives only on the ports
    /// the group's [`crate::handoff::PortOwners`] give it, hands packets of flows other
    /// workers own to them, and transmits on other workers' ports through them.
    pub fn set_handoff(&mut self, link: HandoffLink) {
        let sessions = self
            .graph
            .shared_state("ip4-nat")
            .and_then(|s| s.downcast::<Mutex<ferroplane_tables::Conntrack>>().ok());
        self.multi = Some(Multi {
            link,
            sessions,
            registered: Vec::new(),
            cursor: 0,
            frags: HashMap::new(),
            frames: Vec::new(),
            congested: false,
        });
    }

    /// The worker's index in its group (0 alone).
    pub fn index(&self) -> usize {
        self.multi.as_ref().map_or(0, |m| m.link.index())
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

    /// One round: a burst from every port through the graph, then transmit.
    /// Returns the number of packets received.
    pub fn poll(&mut self) -> Result<usize, IoError> {
        let snap = self.shared.load();
        let mut total = 0;
        let ports = self.io.num_ports();
        // A peer's handoff queue was full: leave this round's packets in the rings.
        let congested = self.multi.as_mut().is_some_and(|m| m.link.take_congested());
        let ports = if congested { 0 } else { ports };
        if let Some(m) = self.multi.as_mut() {
            m.congested = congested;
        }
        for port in 0..ports {
            let port = port as u16;
            if self.multi.as_ref().is_some_and(|m| !m.link.owns(port)) {
                continue;
            }
            let n = self.io.rx_burst(port, &mut self.rx[..]);
            if n == 0 {
                continue;
            }
            total += n;
            let sw_if = snap.ifaces.sw_if_of_port(port);
            let n = if self.multi.is_some() {
                self.dispatch(&snap, sw_if, n)
            } else {
                n
            };
            if n == 0 {
                continue;
            }
            self.ingest(&snap, sw_if, n, self.multi.is_none());
        }
        if self.multi.is_some() {
            total += self.receive_handoff(&snap);
        }
        total += self.poll_host(&snap);
        self.graph.timers(
            self.io.memory(),
            &mut self.meta,
            &snap,
            &self.stats,
            &mut self.trace,
            &mut self.out,
        );
        self.drain_outputs(&snap);
        if self.multi.is_some() {
            self.finish_handoff();
        }
        self.io.flush()?;
        Ok(total)
    }

    /// Keep in `self.rx[..]` the packets of `self.rx[..n]` this worker owns, hand the
    /// others to their owners (counting all as received on `sw_if`); returns how many are
    /// kept.
    fn dispatch(&mut self, snap: &crate::snapshot::Snapshot, sw_if: u16, n: usize) -> usize {
        let Some(m) = self.multi.as_mut() else {
            return n;
        };
        let me = m.link.index();
        let workers = m.link.workers();
        let vxlan_port = snap.tunnels.vxlan_port;
        let mut keep = 0;
        let mut bytes = 0u64;
        m.frames.clear();
        let mem = self.io.memory();
        for i in 0..n {
            let d = self.rx[i];
            bytes += d.len as u64;
            let start = d.offset as usize;
            let frame = mem.frame(d.buf);
            let pkt = frame.get(start..start + d.len as usize).unwrap_or(&[]);
            let owner = match pkt
                .get(12..14)
                .filter(|t| t == &[0x08, 0x00])
                .and_then(|_| flow_id(&pkt[14..], vxlan_port))
            {
                Some(FlowId::Tuple(key)) => {
                    let w = flow_owner(&key, m.link.directory(), workers);
                    // A first fragment whose owner is not the addresses': its followers
                    // (no ports) must find it.
                    let l3 = &pkt[14..];
                    if l3.get(6).is_some_and(|f| f & 0x20 != 0)
                        && w != crate::handoff::addr_owner(key.src, key.dst, workers)
                    {
                        if m.frags.len() >= FRAG_OWNERS_MAX {
                            m.frags.clear();
                        }
                        let id = u16::from_be_bytes([l3[4], l3[5]]);
                        m.frags.insert((key.src, key.dst, key.proto, id), w);
                    }
                    w
                }
                Some(FlowId::Fragment { key, id, more }) => {
                    let k = (key.src, key.dst, key.proto, id);
                    let w = if m.frags.is_empty() {
                        None
                    } else if more {
                        m.frags.get(&k).copied()
                    } else {
                        m.frags.remove(&k)
                    };
                    w.unwrap_or_else(|| crate::handoff::addr_owner(key.src, key.dst, workers))
                }
                None => me,
            };
            if owner == me {
                self.rx[keep] = d;
                keep += 1;
            } else {
                m.link.push(owner, HandoffKind::Rx(sw_if), pkt);
                m.frames.push(d.buf);
            }
        }
        let c = self.stats.iface(sw_if);
        c.rx_packets.add(n as u64);
        c.rx_bytes.add(bytes);
        if !m.frames.is_empty() {
            self.stats.handoff_sent.add(m.frames.len() as u64);
            self.io.free(&m.frames);
        }
        keep
    }

    /// Run the packets other workers handed to this one: received packets through the
    /// graph, packets to transmit onto this worker's ports. Returns how many.
    fn receive_handoff(&mut self, snap: &crate::snapshot::Snapshot) -> usize {
        let mut total = 0;
        // A bounded number of packets per round (as from its own ports), so the worker's
        // ports are not starved and its frames are freed before the pool runs dry.
        while total < HANDOFF_BUDGET {
            let Some(batch) = self.multi.as_mut().and_then(|m| m.link.recv()) else {
                break;
            };
            total += batch.pkts.len();
            self.stats.handoff_received.add(batch.pkts.len() as u64);
            let mut i = 0;
            while i < batch.pkts.len() {
                // A run of packets of the same kind, at most a vector.
                let kind = batch.pkts[i].kind;
                let mut end = i + 1;
                while end < batch.pkts.len()
                    && batch.pkts[end].kind == kind
                    && end - i < VECTOR_SIZE
                {
                    end += 1;
                }
                let mut frames = [0 as BufIdx; VECTOR_SIZE];
                let want = end - i;
                let got = self.io.alloc(&mut frames[..want]);
                if got < want {
                    self.stats.handoff_drops.add((want - got) as u64);
                }
                let mem = self.io.memory();
                let mut n = 0;
                for (p, &f) in batch.pkts[i..i + got].iter().zip(&frames[..got]) {
                    let bytes = batch.bytes(p);
                    let frame = mem.frame_mut(f);
                    match frame.get_mut(HANDOFF_OFFSET..HANDOFF_OFFSET + bytes.len()) {
                        Some(dst) => {
                            dst.copy_from_slice(bytes);
                            self.rx[n] = ferroplane_io::Desc {
                                buf: f,
                                offset: HANDOFF_OFFSET as u16,
                                len: bytes.len() as u16,
                            };
                            n += 1;
                        }
                        None => {
                            self.stats.handoff_drops.add(1);
                            self.out.free.push(f);
                        }
                    }
                }
                match kind {
                    HandoffKind::Rx(sw_if) => {
                        if n > 0 {
                            self.ingest(snap, sw_if, n, false);
                        }
                    }
                    HandoffKind::Tx(port) => {
                        for d in &self.rx[..n] {
                            self.out.tx(port, *d);
                        }
                    }
                }
                i = end;
            }
            if let Some(m) = self.multi.as_mut() {
                m.link.give_back(batch);
            }
        }
        total
    }

    /// Register this round's translated sessions in the flow directory (before their
    /// packets leave, so that no reply can overtake the entry); alone, forget them.
    fn register_translated(&mut self) {
        let Some(m) = self.multi.as_mut() else {
            self.out.translated.clear();
            return;
        };
        let me = m.link.index();
        let workers = m.link.workers();
        let dir = m.link.directory().clone();
        for key in self.out.translated.drain(..) {
            if flow_owner(&key, &dir, workers) != me
                && dir.insert(crate::handoff::tuple_hash(&key), me)
            {
                m.registered.push(key);
            }
        }
    }

    /// End of a round with several workers: forget a few gone sessions' directory entries,
    /// send the batches filled this round.
    fn finish_handoff(&mut self) {
        let Some(m) = self.multi.as_mut() else {
            return;
        };
        let me = m.link.index();
        let dir = m.link.directory().clone();
        if !m.registered.is_empty() {
            if let Some(sessions) = &m.sessions {
                let ct = match sessions.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                let now = ct.now_ms();
                for _ in 0..SWEEP_BUDGET.min(m.registered.len()) {
                    if m.cursor >= m.registered.len() {
                        m.cursor = 0;
                    }
                    let key = m.registered[m.cursor];
                    if ct.contains(&key, now) {
                        m.cursor += 1;
                    } else {
                        dir.remove(crate::handoff::tuple_hash(&key), me);
                        m.registered.swap_remove(m.cursor);
                    }
                }
            }
        }
        let dropped = m.link.send_all();
        if dropped > 0 {
            self.stats.handoff_drops.add(dropped);
        }
    }

    /// Run the graph on `self.rx[..n]`, received on `sw_if` (trace, capture, counters when
    /// `count_rx`).
    fn ingest(&mut self, snap: &crate::snapshot::Snapshot, sw_if: u16, n: usize, count_rx: bool) {
        {
            let mut tracing = self.control.trace_remaining.load(Ordering::Relaxed);
            let mut trace_filter = None;
            if tracing > 0 {
                let (iface, filter) = self
                    .control
                    .trace_filter
                    .lock()
                    .ok()
                    .and_then(|f| f.clone())
                    .unwrap_or_default();
                if iface.is_some_and(|i| i != sw_if) {
                    tracing = 0; // tracing another interface
                } else if !filter.is_empty() {
                    trace_filter = Some(filter);
                }
            }
            let tracing_before = tracing;
            if self.control.capture_active.load(Ordering::Relaxed) {
                self.capture_rx(sw_if, n);
            }
            self.bufs.clear();
            let mut bytes = 0u64;
            for d in &self.rx[..n] {
                let mut m = BufMeta {
                    offset: d.offset,
                    len: d.len,
                    rx_if: sw_if,
                    tx_if: u16::MAX,
                    ..BufMeta::default()
                };
                let wanted = tracing > 0
                    && trace_filter.as_ref().is_none_or(|f| {
                        let frame = self.io.memory().frame(d.buf);
                        let start = d.offset as usize;
                        frame
                            .get(start..start + d.len as usize)
                            .is_some_and(|p| f.matches(p))
                    });
                if wanted {
                    tracing -= 1;
                    m.flags |= FLAG_TRACED;
                    m.trace_id = self.next_trace_id;
                    self.next_trace_id = self.next_trace_id.wrapping_add(1);
                    self.trace
                        .push(m.trace_id, self.entry, TraceData::Rx { sw_if, len: d.len });
                }
                bytes += d.len as u64;
                if let Some(slot) = self.meta.get_mut(d.buf as usize) {
                    *slot = m;
                    self.bufs.push(d.buf);
                }
            }
            if tracing != tracing_before {
                let taken = tracing_before - tracing;
                let _ = self.control.trace_remaining.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |r| Some(r.saturating_sub(taken)),
                );
            }
            if count_rx {
                let c = self.stats.iface(sw_if);
                c.rx_packets.add(n as u64);
                c.rx_bytes.add(bytes);
            }
            self.graph.enqueue(self.entry, &self.bufs);
            self.graph.run(
                self.io.memory(),
                &mut self.meta,
                snap,
                &self.stats,
                &mut self.trace,
                &mut self.out,
            );
        }
    }

    /// Take up to [`HOST_BURST`] of the host's packets into the graph (when its source says
    /// some wait): each is read into a free frame behind an Ethernet header addressed to
    /// the punt interface, as if received on it. Returns how many.
    fn poll_host(&mut self, snap: &crate::snapshot::Snapshot) -> usize {
        let Some(host) = self.host.as_mut() else {
            return 0;
        };
        if !host.ready() {
            return 0;
        }
        let mut frames = [0 as BufIdx; HOST_BURST];
        let n = self.io.alloc(&mut frames);
        let mac = snap
            .ifaces
            .get(crate::interfaces::PUNT_SW_IF)
            .map(|i| i.mac)
            .unwrap_or_default();
        let mem = self.io.memory();
        let mut taken = 0;
        let mut bytes = 0u64;
        self.bufs.clear();
        let mut reads = 0;
        while taken < n && reads < 2 * HOST_BURST {
            reads += 1;
            let f = frames[taken];
            let frame = mem.frame_mut(f);
            let Some(room) = frame.get_mut(HOST_RX_OFFSET + 14..) else {
                break;
            };
            let Some(len) = host.read(room) else {
                break;
            };
            // IPv4 only (the agent turns IPv6 off on the TUN); the frame is reused.
            if len < 20 || room[0] >> 4 != 4 || 14 + len > u16::MAX as usize {
                continue;
            }
            let eth = &mut frame[HOST_RX_OFFSET..HOST_RX_OFFSET + 14];
            eth[0..6].copy_from_slice(&mac);
            eth[6..12].copy_from_slice(&mac);
            eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            // `meta` covers every frame; were it not, the frame is reused for the next read.
            let Some(slot) = self.meta.get_mut(f as usize) else {
                continue;
            };
            *slot = BufMeta {
                offset: HOST_RX_OFFSET as u16,
                len: (14 + len) as u16,
                rx_if: crate::interfaces::PUNT_SW_IF,
                tx_if: u16::MAX,
                ..BufMeta::default()
            };
            self.bufs.push(f);
            bytes += (14 + len) as u64;
            taken += 1;
        }
        // Frames left unfilled (nothing more to read) go back to the pool.
        if taken < n {
            self.io.free(&frames[taken..n]);
        }
        let got = self.bufs.len();
        if got == 0 {
            return 0;
        }
        let c = self.stats.iface(crate::interfaces::PUNT_SW_IF);
        c.rx_packets.add(got as u64);
        c.rx_bytes.add(bytes);
        self.graph.enqueue(self.entry, &self.bufs);
        self.graph.run(
            self.io.memory(),
            &mut self.meta,
            snap,
            &self.stats,
            &mut self.trace,
            &mut self.out,
        );
        got
    }

    /// Copy received packets into the capture when it watches `sw_if`.
    fn capture_rx(&mut self, sw_if: u16, n: usize) {
        let Ok(mut cap) = self.control.capture.lock() else {
            return;
        };
        if cap.spec.as_ref().map(|s| &s.point) != Some(&CapturePoint::Interface(sw_if)) {
            return;
        }
        for d in &self.rx[..n] {
            let frame = self.io.memory().frame(d.buf);
            let start = d.offset as usize;
            if let Some(p) = frame.get(start..start + d.len as usize) {
                cap.take(p);
            }
        }
        if cap.done() {
            self.control.capture_active.store(false, Ordering::Relaxed);
        }
    }

    /// Capture bookkeeping once per round: transmitted packets, the node tap.
    fn capture_out(&mut self, snap: &crate::snapshot::Snapshot) {
        let active = self.control.capture_active.load(Ordering::Relaxed);
        let Ok(mut cap) = self.control.capture.lock() else {
            return;
        };
        let point = cap
            .spec
            .as_ref()
            .map(|s| s.point.clone())
            .filter(|_| active);
        self.graph.set_tap(match point {
            Some(CapturePoint::Node(n)) => Some(n),
            _ => None,
        });
        for p in self.graph.take_tapped() {
            cap.take(&p);
        }
        if let Some(CapturePoint::Interface(sw_if)) = point {
            for (port, list) in self.out.tx.iter().enumerate() {
                if snap.ifaces.sw_if_of_port(port as u16) != sw_if {
                    continue;
                }
                for d in list {
                    let frame = self.io.memory().frame(d.buf);
                    let start = d.offset as usize;
                    if let Some(p) = frame.get(start..start + d.len as usize) {
                        cap.take(p);
                    }
                }
            }
        }
        if active && cap.done() {
            self.control.capture_active.store(false, Ordering::Relaxed);
            self.graph.set_tap(None);
        }
    }

    fn drain_outputs(&mut self, snap: &crate::snapshot::Snapshot) {
        if self.control.capture_active.load(Ordering::Relaxed) || self.capture_was_active {
            self.capture_was_active = self.control.capture_active.load(Ordering::Relaxed);
            self.capture_out(snap);
        }
        self.register_translated();
        for port in 0..self.out.tx.len() {
            if self.out.tx[port].is_empty() {
                continue;
            }
            if let Some(m) = self.multi.as_mut() {
                if let Some(peer) = m.link.tx_peer(port as u16) {
                    // Another worker's port: it transmits a copy; the frame stays here.
                    let mem = self.io.memory();
                    let list = &self.out.tx[port];
                    for d in list {
                        let start = d.offset as usize;
                        let frame = mem.frame(d.buf);
                        let pkt = frame.get(start..start + d.len as usize).unwrap_or(&[]);
                        m.link.push(peer, HandoffKind::Tx(port as u16), pkt);
                        self.out.free.push(d.buf);
                    }
                    self.stats.handoff_sent.add(list.len() as u64);
                    self.out.tx[port].clear();
                    continue;
                }
            }
            let list = std::mem::take(&mut self.out.tx[port]);
            let sent = self.io.tx_burst(port as u16, &list);
            if sent < list.len() {
                let sw_if = snap.ifaces.sw_if_of_port(port as u16);
                self.stats
                    .iface(sw_if)
                    .tx_drops
                    .add((list.len() - sent) as u64);
                for d in &list[sent..] {
                    self.out.free.push(d.buf);
                }
            }
            let mut list = list;
            list.clear();
            self.out.tx[port] = list;
        }
        if !self.out.punt.is_empty() {
            let punts = std::mem::take(&mut self.out.punt);
            for &b in &punts {
                let m = self.meta.get(b as usize).copied().unwrap_or_default();
                let start = m.offset as usize + 14;
                let end = m.offset as usize + m.len as usize;
                let frame = self.io.memory().frame(b);
                if let (Some(sink), Some(ip)) = (self.punt.as_mut(), frame.get(start..end)) {
                    sink(ip);
                }
                self.out.free.push(b);
            }
            let mut punts = punts;
            punts.clear();
            self.out.punt = punts;
        }
        if !self.out.free.is_empty() {
            self.io.free(&self.out.free);
            self.out.free.clear();
        }
        if !self.out.misses.is_empty() {
            let now = Instant::now();
            for key in self.out.misses.drain(..) {
                let fresh = match self.asked.get(&key) {
                    Some(t) => now.duration_since(*t) >= Duration::from_secs(1),
                    None => true,
                };
                if fresh {
                    self.asked.insert(key, now);
                    if let Some(tx) = &self.misses {
                        let _ = tx.send(key);
                    }
                }
            }
            if self.asked.len() > 4096 {
                self.asked
                    .retain(|_, t| now.duration_since(*t) < Duration::from_secs(1));
            }
        }
        if !self.out.flows.is_empty() {
            for f in self.out.flows.drain(..) {
                if let Some(tx) = &self.flows {
                    if tx.try_send(f).is_err() {
                        break;
                    }
                }
            }
            self.out.flows.clear();
        }
        if !self.trace.records.is_empty() {
            if let Ok(mut t) = self.control.traces.lock() {
                if t.len() < TraceBuffer::CAPACITY {
                    t.append(&mut self.trace.records);
                }
            }
            self.trace.records.clear();
        }
    }

    /// Sleep in the backend's wait, unless another worker handed packets over meanwhile
    /// (it wakes a worker it sees sleeping, [`crate::handoff::HandoffLink::set_waker`]).
    fn idle(&mut self) -> Result<(), IoError> {
        match self.multi.as_mut() {
            None => self.io.wait(self.idle_wait),
            Some(m) => {
                if m.congested {
                    // Packets wait in the ports' rings; the others are catching up.
                    std::thread::yield_now();
                    return Ok(());
                }
                if !m.link.may_sleep() {
                    return Ok(());
                }
                let r = self.io.wait(self.idle_wait);
                if let Some(m) = self.multi.as_ref() {
                    m.link.awake();
                }
                r
            }
        }
    }

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
