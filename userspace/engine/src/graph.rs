//! The node graph and its dispatcher.

use std::time::Instant;

use ferroplane_io::{BufIdx, FrameMemory};

use crate::buffer::BufMeta;
use crate::counters::WorkerStats;
use crate::node::{Ctx, ErrorInfo, Node, NodeInfo, Outputs, CONSUMED};
use crate::snapshot::Snapshot;
use crate::trace::TraceBuffer;
use crate::VECTOR_SIZE;

/// Most packets held at a tap between two drains.
const TAP_LIMIT: usize = 4096;

/// Errors building a graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A next arc names a node that is not in the graph.
    #[error("node {node}: next arc {arc} names unknown node {target}")]
    UnknownNext {
        /// The node.
        node: &'static str,
        /// Arc index.
        arc: usize,
        /// Missing node name.
        target: &'static str,
    },
    /// Arc 0 of a node with arcs is not `error-drop`.
    #[error("node {0}: next arc 0 must be error-drop")]
    NoDropArc(&'static str),
    /// Two nodes share a name.
    #[error("duplicate node name {0}")]
    Duplicate(&'static str),
}

/// Static description of a graph: nodes and the global error table.
#[derive(Clone, Debug)]
pub struct GraphInfo {
    /// Node descriptions, in graph order.
    pub nodes: Vec<&'static NodeInfo>,
    /// Global error codes: (node index, reason).
    pub errors: Vec<(u16, &'static ErrorInfo)>,
}

impl GraphInfo {
    /// "node: reason" for a global error code.
    pub fn error_name(&self, code: u16) -> String {
        match self.errors.get(code as usize) {
            Some((n, e)) => format!(
                "{}: {}",
                self.nodes.get(*n as usize).map(|i| i.name).unwrap_or("?"),
                e.name
            ),
            None => format!("error {code}"),
        }
    }

    /// Index of a node by name.
    pub fn node_index(&self, name: &str) -> Option<u16> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .map(|i| i as u16)
    }

    /// Global error code of (node name, reason name).
    pub fn error_code(&self, node: &str, reason: &str) -> Option<u16> {
        let n = self.node_index(node)?;
        self.errors
            .iter()
            .position(|(i, e)| *i == n && e.name == reason)
            .map(|c| c as u16)
    }
}

/// A graph of nodes over packet memory `M`.
pub struct Graph<M: FrameMemory> {
    nodes: Vec<Box<dyn Node<M>>>,
    info: GraphInfo,
    arcs: Vec<Vec<u16>>,
    error_base: Vec<u16>,
    pending: Vec<Vec<BufIdx>>,
    scratch: Vec<BufIdx>,
    nexts: Vec<u16>,
    tap: Option<u16>,
    tapped: Vec<Vec<u8>>,
    emitted: Vec<(BufIdx, u16)>,
}

impl<M: FrameMemory> Graph<M> {
    /// Build a graph; nodes run in the given order (put producers before consumers).
    pub fn new(nodes: Vec<Box<dyn Node<M>>>) -> Result<Self, GraphError> {
        let infos: Vec<&'static NodeInfo> = nodes.iter().map(|n| n.info()).collect();
        for (i, a) in infos.iter().enumerate() {
            if infos[..i].iter().any(|b| b.name == a.name) {
                return Err(GraphError::Duplicate(a.name));
            }
        }
        let mut arcs = Vec::with_capacity(nodes.len());
        let mut error_base = Vec::with_capacity(nodes.len());
        let mut errors = Vec::new();
        for (ni, info) in infos.iter().enumerate() {
            if let Some(first) = info.nexts.first() {
                if *first != "error-drop" {
                    return Err(GraphError::NoDropArc(info.name));
                }
            }
            let mut a = Vec::with_capacity(info.nexts.len());
            for (arc, target) in info.nexts.iter().enumerate() {
                let t = infos.iter().position(|n| n.name == *target).ok_or(
                    GraphError::UnknownNext {
                        node: info.name,
                        arc,
                        target,
                    },
                )?;
                a.push(t as u16);
            }
            arcs.push(a);
            error_base.push(errors.len() as u16);
            for e in info.errors {
                errors.push((ni as u16, e));
            }
        }
        let n = nodes.len();
        Ok(Graph {
            nodes,
            info: GraphInfo {
                nodes: infos,
                errors,
            },
            arcs,
            error_base,
            pending: (0..n)
                .map(|_| Vec::with_capacity(VECTOR_SIZE * 2))
                .collect(),
            scratch: Vec::with_capacity(VECTOR_SIZE),
            nexts: vec![0; VECTOR_SIZE],
            tap: None,
            tapped: Vec::new(),
            emitted: Vec::new(),
        })
    }

    /// The graph's description.
    pub fn info(&self) -> &GraphInfo {
        &self.info
    }

    /// The state node `name` shares with the control plane (see [`Node::shared_state`]).
    pub fn shared_state(
        &self,
        name: &str,
    ) -> Option<std::sync::Arc<dyn std::any::Any + Send + Sync>> {
        let i = self.info.node_index(name)?;
        self.nodes.get(i as usize)?.shared_state()
    }

    /// Copy every packet entering node `node` (a capture point), or stop with `None`.
    pub fn set_tap(&mut self, node: Option<u16>) {
        self.tap = node;
    }

    /// Packets copied at the tap since the last call.
    pub fn take_tapped(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.tapped)
    }

    /// Fresh counters sized for this graph.
    pub fn new_stats(&self) -> WorkerStats {
        WorkerStats::new(self.nodes.len(), self.info.errors.len())
    }

    /// Queue packets as input of node `node`.
    pub fn enqueue(&mut self, node: u16, bufs: &[BufIdx]) {
        if let Some(p) = self.pending.get_mut(node as usize) {
            p.extend_from_slice(bufs);
        }
    }

    /// Run every node until no packet is pending.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        mem: &mut M,
        meta: &mut [BufMeta],
        snap: &Snapshot,
        stats: &WorkerStats,
        trace: &mut TraceBuffer,
        out: &mut Outputs,
    ) {
        loop {
            let mut any = false;
            for ni in 0..self.nodes.len() {
                while !self.pending[ni].is_empty() {
                    any = true;
                    let take = self.pending[ni].len().min(VECTOR_SIZE);
                    self.scratch.clear();
                    self.scratch.extend(self.pending[ni].drain(..take));
                    let n = self.scratch.len();
                    if self.tap == Some(ni as u16) && self.tapped.len() < TAP_LIMIT {
                        for &b in &self.scratch {
                            let m = meta.get(b as usize).copied().unwrap_or_default();
                            let start = m.offset as usize;
                            if let Some(p) = mem.frame(b).get(start..start + m.len as usize) {
                                self.tapped.push(p.to_vec());
                            }
                        }
                    }
                    let mut cx = Ctx {
                        mem: &mut *mem,
                        meta: &mut *meta,
                        snap,
                        stats,
                        trace: &mut *trace,
                        out: &mut *out,
                        node: ni as u16,
                        error_base: self.error_base[ni],
                        emitted: &mut self.emitted,
                    };
                    let t0 = Instant::now();
                    self.nodes[ni].process(&mut cx, &self.scratch, &mut self.nexts[..n]);
                    let c = &stats.nodes[ni];
                    c.nanos.add(t0.elapsed().as_nanos() as u64);
                    c.calls.add(1);
                    c.vectors.add(1);
                    c.packets.add(n as u64);
                    let arcs = &self.arcs[ni];
                    if arcs.is_empty() {
                        continue;
                    }
                    for i in 0..n {
                        let arc = self.nexts[i];
                        if arc == CONSUMED {
                            continue;
                        }
                        let target = arcs.get(arc as usize).copied().unwrap_or(arcs[0]) as usize;
                        self.pending[target].push(self.scratch[i]);
                    }
                    self.flush_emitted(ni);
                }
            }
            if !any {
                break;
            }
        }
    }

    /// Queue what node `ni` emitted (after its vector's packets, so they keep their order).
    fn flush_emitted(&mut self, ni: usize) {
        let arcs = &self.arcs[ni];
        for (b, arc) in self.emitted.drain(..) {
            if let Some(&first) = arcs.first() {
                let target = arcs.get(arc as usize).copied().unwrap_or(first) as usize;
                self.pending[target].push(b);
            }
        }
    }

    /// Run every node's timers ([`Node::timers`]), then the packets they released.
    #[allow(clippy::too_many_arguments)]
    pub fn timers(
        &mut self,
        mem: &mut M,
        meta: &mut [BufMeta],
        snap: &Snapshot,
        stats: &WorkerStats,
        trace: &mut TraceBuffer,
        out: &mut Outputs,
    ) {
        let mut any = false;
        for ni in 0..self.nodes.len() {
            let mut cx = Ctx {
                mem: &mut *mem,
                meta: &mut *meta,
                snap,
                stats,
                trace: &mut *trace,
                out: &mut *out,
                node: ni as u16,
                error_base: self.error_base[ni],
                emitted: &mut self.emitted,
            };
            self.nodes[ni].timers(&mut cx);
            if !self.emitted.is_empty() {
                any = true;
                self.flush_emitted(ni);
            }
        }
        if any {
            self.run(mem, meta, snap, stats, trace, out);
        }
    }
}
