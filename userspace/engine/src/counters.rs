//! Per-worker counters.
//!
//! Each counter has a single writer (its worker), so an increment is a plain
//! load and store on an atomic (no locked instruction); readers (the API)
//! sum over workers at any time.

use std::sync::atomic::{AtomicU64, Ordering};

/// A single-writer counter readable from other threads.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n` (only the owning worker may call this).
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Raise to `v` if it is larger (only the owning worker may call this).
    #[inline]
    pub fn max(&self, v: u64) {
        if v > self.get() {
            self.0.store(v, Ordering::Relaxed);
        }
    }
    /// Reset to zero.
    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// Counters of one graph node.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Calls of the node's process function.
    pub calls: Counter,
    /// Non-empty vectors processed.
    pub vectors: Counter,
    /// Packets processed.
    pub packets: Counter,
    /// Time spent in the node, in nanoseconds.
    pub nanos: Counter,
}

/// Counters of one interface, as seen by the engine.
#[derive(Debug, Default)]
pub struct IfCounters {
    /// Packets received from the interface.
    pub rx_packets: Counter,
    /// Bytes received.
    pub rx_bytes: Counter,
    /// Packets handed to the interface for transmission.
    pub tx_packets: Counter,
    /// Bytes transmitted.
    pub tx_bytes: Counter,
    /// Packets that could not be queued for transmission (ring full).
    pub tx_drops: Counter,
}

/// One worker's totals ([`WorkerStats::totals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerTotals {
    /// Packets received from its ports (and the host), over all interfaces.
    pub rx_packets: u64,
    /// Packets its graph sent to interfaces (some transmitted by another worker).
    pub tx_packets: u64,
    /// Packets its ports could not queue for transmission.
    pub tx_drops: u64,
    /// Packets through nodes, summed over nodes (a packet counts once per node).
    pub node_packets: u64,
    /// Time in nodes, in nanoseconds.
    pub nanos: u64,
    /// Loop iterations.
    pub loops: u64,
    /// Packets handed to other workers.
    pub handoff_sent: u64,
    /// Packets other workers handed to it.
    pub handoff_received: u64,
    /// Packets dropped at handoffs.
    pub handoff_drops: u64,
}

/// Maximum number of interfaces (`sw_if_index` values) a worker counts.
pub const MAX_IFACES: usize = 1024;

/// All counters of one worker.
#[derive(Debug)]
pub struct WorkerStats {
    /// Per node, in graph order.
    pub nodes: Vec<NodeCounters>,
    /// Per global error code.
    pub errors: Vec<Counter>,
    /// Per interface.
    pub ifaces: Vec<IfCounters>,
    /// Loop iterations of the worker.
    pub loops: Counter,
    /// Control commands run on the worker (between vectors).
    pub commands: Counter,
    /// Nanoseconds spent in them.
    pub command_nanos: Counter,
    /// The longest one, in nanoseconds.
    pub command_max_nanos: Counter,
    /// Packets this worker handed to another (several workers: the flow or the output
    /// port is the other's, [`crate::handoff`]).
    pub handoff_sent: Counter,
    /// Packets other workers handed to this one.
    pub handoff_received: Counter,
    /// Packets dropped at a handoff: the receiver's queue was full, or it had no free frame.
    pub handoff_drops: Counter,
}

impl WorkerStats {
    /// Counters for `nodes` nodes and `errors` error codes.
    pub fn new(nodes: usize, errors: usize) -> Self {
        WorkerStats {
            nodes: (0..nodes).map(|_| NodeCounters::default()).collect(),
            errors: (0..errors).map(|_| Counter::default()).collect(),
            ifaces: (0..MAX_IFACES).map(|_| IfCounters::default()).collect(),
            loops: Counter::default(),
            commands: Counter::default(),
            command_nanos: Counter::default(),
            command_max_nanos: Counter::default(),
            handoff_sent: Counter::default(),
            handoff_received: Counter::default(),
            handoff_drops: Counter::default(),
        }
    }

    /// Interface counters for `sw_if` (a spare slot past the table for unknown ones).
    #[inline(always)]
    pub fn iface(&self, sw_if: u16) -> &IfCounters {
        let i = (sw_if as usize).min(MAX_IFACES - 1);
        &self.ifaces[i]
    }

    /// This worker's totals over its interfaces and nodes (one line per worker in a
    /// per-worker view, as VPP's per-thread `show runtime`).
    pub fn totals(&self) -> WorkerTotals {
        let mut t = WorkerTotals {
            loops: self.loops.get(),
            handoff_sent: self.handoff_sent.get(),
            handoff_received: self.handoff_received.get(),
            handoff_drops: self.handoff_drops.get(),
            ..WorkerTotals::default()
        };
        for i in &self.ifaces {
            t.rx_packets += i.rx_packets.get();
            t.tx_packets += i.tx_packets.get();
            t.tx_drops += i.tx_drops.get();
        }
        for n in &self.nodes {
            t.node_packets += n.packets.get();
            t.nanos += n.nanos.get();
        }
        t
    }

    /// Zero every counter.
    pub fn clear(&self) {
        for n in &self.nodes {
            n.calls.clear();
            n.vectors.clear();
            n.packets.clear();
            n.nanos.clear();
        }
        for e in &self.errors {
            e.clear();
        }
        self.commands.clear();
        self.command_nanos.clear();
        self.command_max_nanos.clear();
        self.handoff_sent.clear();
        self.handoff_received.clear();
        self.handoff_drops.clear();
        for i in &self.ifaces {
            i.rx_packets.clear();
            i.rx_bytes.clear();
            i.tx_packets.clear();
            i.tx_bytes.clear();
            i.tx_drops.clear();
        }
    }
}
