//! Packet capture: copies of the packets received on and sent to one interface, or
//! entering one graph node, filtered and bounded in packets and bytes.

use std::sync::atomic::Ordering;

use ferroplane_io::{FrameMemory, PacketIo};

use super::Worker;
use crate::filter::PacketFilter;

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

impl<P: PacketIo> Worker<P>
where
    P::Memory: 'static,
{
    /// Copy received packets into the capture when it watches `sw_if`.
    pub(super) fn capture_rx(&mut self, sw_if: u16, n: usize) {
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
    pub(super) fn capture_out(&mut self, snap: &crate::snapshot::Snapshot) {
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
}
