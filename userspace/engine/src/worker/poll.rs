//! One round of a worker: a burst from every port it owns through the graph (choosing
//! the packets to trace), then everything the graph produced: transmissions, punts,
//! freed frames, next-hop misses, flow reports, trace records. And the idle wait.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferroplane_io::{FrameMemory, IoError, PacketIo};

use super::Worker;
use crate::buffer::{BufMeta, FLAG_TRACED};
use crate::handoff::HandoffKind;
use crate::trace::{TraceBuffer, TraceData};

impl<P: PacketIo> Worker<P>
where
    P::Memory: 'static,
{
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

    /// Run the graph on `self.rx[..n]`, received on `sw_if` (trace, capture, counters when
    /// `count_rx`).
    pub(super) fn ingest(
        &mut self,
        snap: &crate::snapshot::Snapshot,
        sw_if: u16,
        n: usize,
        count_rx: bool,
    ) {
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
    pub(super) fn idle(&mut self) -> Result<(), IoError> {
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
}
