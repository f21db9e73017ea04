use ferroplane_io::{BufIdx, FrameMemory};

use crate::node::{Ctx, Node, NodeInfo};
use crate::node_errors;
use crate::trace::TraceData;

node_errors! {
    /// Reasons of `host-punt`.
    pub enum PuntError {
        Punted = (Info, "punted", "packets for the node's own addresses handed to the host stack"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "host-punt",
    nexts: &[],
    errors: PuntError::INFO,
};

/// Hands packets addressed to the node to the host stack (the worker writes
/// them to the punt TUN device). Most host traffic never reaches the engine:
/// the XDP programs pass it to the kernel directly; this node catches what
/// arrives anyway (e.g. a pod pinging its node while the XDP host map is
/// being updated).
#[derive(Debug, Default)]
pub struct HostPunt;

impl<M: FrameMemory> Node<M> for HostPunt {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], _nexts: &mut [u16]) {
        for &b in bufs {
            if cx.traced(b) {
                cx.trace(b, TraceData::Punt);
            }
            cx.out.punt.push(b);
        }
        cx.count(PuntError::Punted, bufs.len() as u64);
    }
}
