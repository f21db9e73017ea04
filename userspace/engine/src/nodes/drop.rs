use ferroplane_io::{BufIdx, FrameMemory};

use crate::node::{Ctx, Node, NodeInfo};

static INFO: NodeInfo = NodeInfo {
    name: "error-drop",
    nexts: &[],
    errors: &[],
};

/// Counts each packet against its error code and frees it.
#[derive(Debug, Default)]
pub struct ErrorDrop;

impl<M: FrameMemory> Node<M> for ErrorDrop {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], _nexts: &mut [u16]) {
        for &b in bufs {
            let e = cx.meta(b).error as usize;
            if let Some(c) = cx.stats.errors.get(e) {
                c.add(1);
            }
            cx.out.free.push(b);
        }
    }
}
