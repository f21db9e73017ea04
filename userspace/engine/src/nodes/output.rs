use ferroplane_io::{BufIdx, Desc, FrameMemory};

use crate::node::{Ctx, Node, NodeInfo, CONSUMED};
use crate::node_errors;
use crate::trace::TraceData;

node_errors! {
    /// Error reasons of `interface-output`.
    pub enum OutputError {
        NoPort = (Error, "no-port", "output interface has no I/O port (yet)"),
    }
}

static INFO: NodeInfo = NodeInfo {
    name: "interface-output",
    nexts: &["error-drop", "tunnel-encap"],
    errors: OutputError::INFO,
};

/// Queues packets on their output interface's transmit ring.
#[derive(Debug, Default)]
pub struct InterfaceOutput;

impl<M: FrameMemory> Node<M> for InterfaceOutput {
    fn info(&self) -> &'static NodeInfo {
        &INFO
    }

    fn process(&mut self, cx: &mut Ctx<'_, M>, bufs: &[BufIdx], nexts: &mut [u16]) {
        let ifaces = cx.snap.ifaces.clone();
        for (i, &b) in bufs.iter().enumerate() {
            let m = cx.meta(b);
            if ifaces.get(m.tx_if).map(|f| f.kind) == Some(crate::IfKind::Tunnel) {
                nexts[i] = 1; // tunnel-encap: it comes back here on the uplink
                continue;
            }
            let Some(port) = ifaces.get(m.tx_if).and_then(|f| f.port) else {
                nexts[i] = cx.drop_with(b, OutputError::NoPort);
                continue;
            };
            let c = cx.stats.iface(m.tx_if);
            c.tx_packets.add(1);
            c.tx_bytes.add(m.len as u64);
            if cx.traced(b) {
                cx.trace(
                    b,
                    TraceData::Tx {
                        sw_if: m.tx_if,
                        port,
                    },
                );
            }
            cx.out.tx(
                port,
                Desc {
                    buf: b,
                    offset: m.offset,
                    len: m.len,
                },
            );
            nexts[i] = CONSUMED;
        }
    }
}
