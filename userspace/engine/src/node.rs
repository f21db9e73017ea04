//! The node abstraction.

use std::net::Ipv4Addr;

use ferroplane_io::{BufIdx, Desc, FrameMemory};

use crate::buffer::{BufMeta, FLAG_TRACED};
use crate::counters::WorkerStats;
use crate::snapshot::Snapshot;
use crate::trace::{TraceBuffer, TraceData};

/// How bad an error counter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// A packet was dropped.
    Error,
    /// Something worth counting happened (e.g. an ICMP error was sent).
    Info,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Info => "info",
        }
    }
}

/// One error reason of a node.
#[derive(Clone, Copy, Debug)]
pub struct ErrorInfo {
    /// Short name (`bad-checksum`).
    pub name: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Severity.
    pub severity: Severity,
}

/// What a node declares about itself.
#[derive(Clone, Copy, Debug)]
pub struct NodeInfo {
    /// Node name (`ip4-input`).
    pub name: &'static str,
    /// Names of the nodes behind each next arc; arc 0 is always `error-drop`.
    pub nexts: &'static [&'static str],
    /// Error reasons, indexed by the node's error enum.
    pub errors: &'static [ErrorInfo],
}

/// Declares a node's error enum with names, severities and descriptions.
#[macro_export]
macro_rules! node_errors {
    ($(#[$m:meta])* $vis:vis enum $name:ident {
        $($var:ident = ($sev:ident, $sname:literal, $desc:literal)),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u16)]
        $vis enum $name { $(#[doc = $desc] $var),* }
        impl $name {
            /// The reasons, in declaration order.
            pub const INFO: &'static [$crate::ErrorInfo] = &[$($crate::ErrorInfo {
                name: $sname,
                description: $desc,
                severity: $crate::Severity::$sev,
            }),*];
        }
        impl From<$name> for u16 {
            fn from(e: $name) -> u16 { e as u16 }
        }
    };
}

/// Declares a node's next-arc enum; the first arc must be `Drop = "error-drop"`.
#[macro_export]
macro_rules! node_nexts {
    ($(#[$m:meta])* $vis:vis enum $name:ident {
        $($var:ident = $target:literal),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u16)]
        $vis enum $name { $(#[doc = concat!("To `", $target, "`.")] $var),* }
        impl $name {
            /// Target node names, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($target),*];
        }
        impl From<$name> for u16 {
            fn from(n: $name) -> u16 { n as u16 }
        }
    };
}

/// A next value meaning "the node consumed the packet" (queued it for output).
pub const CONSUMED: u16 = u16::MAX;

/// A graph node. `M` is the packet memory of the I/O backend.
pub trait Node<M: FrameMemory> {
    /// Name, next arcs and error reasons.
    fn info(&self) -> &'static NodeInfo;
    /// Process `bufs` (at most [`crate::VECTOR_SIZE`]); write each packet's next arc into `nexts[i]`.
    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]);
    /// State the node shares with the control plane (e.g. its session table), if any.
    fn shared_state(&self) -> Option<std::sync::Arc<dyn std::any::Any + Send + Sync>> {
        None
    }
    /// Called once per worker round, also when no packet arrived, for a node that holds
    /// buffers across vectors (e.g. `ip4-frag`) to release or drop them on time with
    /// [`Ctx::emit`]. The default does nothing.
    fn timers(&mut self, _cx: &mut Ctx<'_, M>) {}
}

/// Where terminal nodes put packets: transmit queues, frames to free, punts.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Per port: packets to transmit.
    pub tx: Vec<Vec<Desc>>,
    /// Frames to return to the pool.
    pub free: Vec<BufIdx>,
    /// Packets to hand to the host stack (full frames with Ethernet header).
    pub punt: Vec<BufIdx>,
    /// Next hops whose MAC is missing: (sw_if, address).
    pub misses: Vec<(u16, Ipv4Addr)>,
    /// Forwarded flows to (re)export to the XDP flow cache.
    pub flows: Vec<crate::flow_export::FlowExport>,
    /// Reply tuples of the translated sessions created this round (`ip4-nat`): with several
    /// workers, the worker registers them so that replies reach it ([`crate::handoff`]).
    pub translated: Vec<ferroplane_tables::FlowKey>,
}

impl Outputs {
    /// Queue a packet for transmission on `port`.
    #[inline(always)]
    pub fn tx(&mut self, port: u16, d: Desc) {
        let p = port as usize;
        if self.tx.len() <= p {
            self.tx.resize_with(p + 1, Vec::new);
        }
        self.tx[p].push(d);
    }
}

/// What a node sees while processing a vector.
pub struct Ctx<'a, M: FrameMemory> {
    /// Packet memory.
    pub mem: &'a mut M,
    /// Buffer metadata, indexed by frame.
    pub meta: &'a mut [BufMeta],
    /// The tables in force for this vector.
    pub snap: &'a Snapshot,
    /// This worker's counters.
    pub stats: &'a WorkerStats,
    /// Trace records.
    pub trace: &'a mut TraceBuffer,
    /// Outputs of terminal nodes.
    pub out: &'a mut Outputs,
    pub(crate) node: u16,
    pub(crate) error_base: u16,
    /// Buffers the node sends on besides its vector (see [`Ctx::emit`]): (buffer, arc).
    pub(crate) emitted: &'a mut Vec<(BufIdx, u16)>,
}

impl<M: FrameMemory> Ctx<'_, M> {
    /// Metadata of a buffer.
    #[inline(always)]
    pub fn meta(&self, b: BufIdx) -> BufMeta {
        self.meta.get(b as usize).copied().unwrap_or_default()
    }

    /// Mutable metadata of a buffer (a scratch entry for an out-of-range index).
    #[inline(always)]
    pub fn meta_mut(&mut self, b: BufIdx) -> &mut BufMeta {
        let last = self.meta.len() - 1;
        &mut self.meta[(b as usize).min(last)]
    }

    /// The packet bytes of a buffer (`offset..offset+len` of its frame; empty if inconsistent).
    #[inline(always)]
    pub fn packet(&mut self, b: BufIdx) -> &mut [u8] {
        let m = self.meta(b);
        let start = m.offset as usize;
        let end = start + m.len as usize;
        self.mem.frame_mut(b).get_mut(start..end).unwrap_or(&mut [])
    }

    /// The whole frame of a buffer (for headers that grow the packet).
    #[inline(always)]
    pub fn frame(&mut self, b: BufIdx) -> &mut [u8] {
        self.mem.frame_mut(b)
    }

    /// Mark `b` as dropped for reason `code` of the current node; returns arc 0 (`error-drop`).
    #[inline(always)]
    pub fn drop_with(&mut self, b: BufIdx, code: impl Into<u16>) -> u16 {
        let e = self.error_base + code.into();
        self.meta_mut(b).error = e;
        if self.traced(b) {
            self.trace(b, TraceData::Drop { error: e });
        }
        0
    }

    /// Count `n` occurrences of reason `code` of the current node without dropping.
    #[inline(always)]
    pub fn count(&self, code: impl Into<u16>, n: u64) {
        if let Some(c) = self
            .stats
            .errors
            .get((self.error_base + code.into()) as usize)
        {
            c.add(n);
        }
    }

    /// Whether `b` is traced.
    #[inline(always)]
    pub fn traced(&self, b: BufIdx) -> bool {
        self.meta(b).flags & FLAG_TRACED != 0
    }

    /// Send `b`, a buffer this node held from an earlier vector (it answered [`CONSUMED`] for
    /// it then), on next arc `arc`, after the packets of the current vector. Arc 0 drops it
    /// (set its reason with [`Ctx::drop_with`] first).
    #[inline(always)]
    pub fn emit(&mut self, b: BufIdx, arc: u16) {
        self.emitted.push((b, arc));
    }

    /// Add a trace record for `b` at the current node.
    pub fn trace(&mut self, b: BufIdx, data: TraceData) {
        let id = self.meta(b).trace_id;
        self.trace.push(id, self.node, data);
    }
}
