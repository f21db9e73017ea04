//! A worker's part in a group of workers ([`Worker::set_handoff`]): receiving only on
//! the ports it owns, handing packets of flows other workers own to them (and taking
//! theirs), registering translated sessions in the shared flow directory and forgetting
//! them when they are gone. The mechanism is in [`crate::handoff`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ferroplane_io::{BufIdx, FrameMemory, PacketIo};

use super::Worker;
use crate::handoff::{flow_id, flow_owner, FlowId, HandoffKind, HandoffLink, HANDOFF_OFFSET};
use crate::VECTOR_SIZE;

/// A worker's part in a group of workers ([`Worker::set_handoff`]).
pub(super) struct Multi {
    pub(super) link: HandoffLink,
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
    pub(super) congested: bool,
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
    /// Make this worker one of a group ([`crate::handoff`]): it receives only on the ports
    /// the group's [`crate::handoff::PortOwners`] give it, hands packets of flows other
    /// workers own to them, and transmits on other workers' ports through them.
    pub fn set_handoff(&mut self, link: HandoffLink) {
        let sessions = self
            .graph
            .shared_state("ip4-nat")
            .and_then(|s| s.downcast::<Mutex<ferroplane_tables::Conntrack>>().ok());
        if let Some(s) = &sessions {
            let mut ct = match s.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            ct.set_share(link.index(), link.workers());
        }
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

    /// Keep in `self.rx[..]` the packets of `self.rx[..n]` this worker owns, hand the
    /// others to their owners (counting all as received on `sw_if`); returns how many are
    /// kept.
    pub(super) fn dispatch(
        &mut self,
        snap: &crate::snapshot::Snapshot,
        sw_if: u16,
        n: usize,
    ) -> usize {
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
    pub(super) fn receive_handoff(&mut self, snap: &crate::snapshot::Snapshot) -> usize {
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
    pub(super) fn register_translated(&mut self) {
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
    pub(super) fn finish_handoff(&mut self) {
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
}
