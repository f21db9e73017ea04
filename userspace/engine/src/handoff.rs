//! Several engine workers: which worker owns a packet's flow, and the handoff of packets
//! between workers (VPP's frame queues, by copy).
//!
//! Each worker owns some ports (its backend's sockets: a socket's rings have one producer
//! and one consumer, so only its owner receives and transmits on it) and the session
//! state of some flows. A packet is received by the worker owning its port, which looks up
//! the flow's owner ([`flow_owner`]) and, when that is another worker, copies the packet
//! into a [`Batch`] for it; the owner runs the graph. A packet the graph sends out of a
//! port another worker owns is copied to that worker, which transmits it. Frames never
//! leave the backend of the worker that allocated them, so every frame returns to its own
//! pool.
//!
//! The owner of a flow is:
//! 1. the worker a [`FlowDirectory`] entry names for the packet's tuple (either direction):
//!    the worker that created a translated session registers its reply tuple, so the
//!    replies of a DNAT, SNAT or masquerade session reach it although their addresses
//!    hash elsewhere;
//! 2. otherwise a symmetric hash of the two addresses ([`addr_owner`]): both directions of
//!    an untranslated flow, and every fragment of a datagram, land on the same worker.
//!
//! Tunnel packets are owned through their inner packet (IPIP, VXLAN), ICMP errors through
//! the packet they quote.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use ferroplane_tables::FlowKey;

/// The most workers a group may have.
pub const MAX_WORKERS: usize = 64;

/// Batches in flight from one worker to another before the sender drops.
pub const QUEUE_BATCHES: usize = 64;

/// Batches of a worker in flight (sent, not yet given back) at which it stops receiving
/// from its ports until the others caught up ([`HandoffLink::take_congested`]).
pub const IN_FLIGHT_MAX: usize = 8;

/// Where handed-off packets start in their new frame (the XDP headroom, as received frames).
pub const HANDOFF_OFFSET: usize = 256;

/// Finalizer of 64-bit hashes (murmur3's `fmix64`).
#[inline(always)]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The worker (of `workers`) owning traffic between `a` and `b` when no directory entry
/// names one: a hash of the two addresses, the same in both directions.
#[inline(always)]
pub fn addr_owner(a: Ipv4Addr, b: Ipv4Addr, workers: usize) -> usize {
    let (a, b) = (u32::from(a), u32::from(b));
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let h = mix(((lo as u64) << 32) | hi as u64);
    ((h >> 32) as usize * workers.max(1)) >> 32
}

/// A hash of `key` equal for both directions of the tuple (the directory's key).
#[inline(always)]
pub fn tuple_hash(key: &FlowKey) -> u64 {
    let a = ((u32::from(key.src) as u64) << 16) | key.sport as u64;
    let b = ((u32::from(key.dst) as u64) << 16) | key.dport as u64;
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    mix(mix(lo ^ ((key.proto as u64) << 48)) ^ hi)
}

/// Which worker owns the translated sessions whose reply tuples hash elsewhere: a
/// fixed-size open-addressing table of 64-bit words (56 bits of [`tuple_hash`], the
/// owner), read without locks by every worker, written with compare-and-swap by the
/// owners. Probes are bounded ([`FlowDirectory::PROBES`] words, two cache lines).
#[derive(Debug)]
pub struct FlowDirectory {
    slots: Box<[AtomicU64]>,
    mask: usize,
    /// Insertions that found no free slot in their probe window (the reply of such a
    /// session may reach another worker, which then does not know it).
    pub full: AtomicU64,
}

const EMPTY: u64 = 0;
const TOMBSTONE: u64 = u64::MAX;
const TAG: u64 = !0xff;

impl FlowDirectory {
    /// Slots probed for one key.
    pub const PROBES: usize = 16;

    /// A directory with room for about `capacity` entries (rounded up to a power of two,
    /// at least 1,024).
    pub fn new(capacity: usize) -> Self {
        let n = capacity.max(1024).next_power_of_two();
        FlowDirectory {
            slots: (0..n).map(|_| AtomicU64::new(EMPTY)).collect(),
            mask: n - 1,
            full: AtomicU64::new(0),
        }
    }

    #[inline(always)]
    fn word(h: u64, owner: usize) -> u64 {
        (h & TAG) | (owner as u64 + 1)
    }

    /// The worker registered for tuple hash `h`.
    #[inline(always)]
    pub fn lookup(&self, h: u64) -> Option<usize> {
        let start = h as usize;
        for i in 0..Self::PROBES {
            let v = self.slots[(start + i) & self.mask].load(Ordering::Acquire);
            if v == EMPTY {
                return None;
            }
            if v != TOMBSTONE && (v & TAG) == (h & TAG) {
                return Some((v & 0xff) as usize - 1);
            }
        }
        None
    }

    /// Register `owner` for `h` (replacing another owner's entry). False when the probe
    /// window is full (counted in [`FlowDirectory::full`]).
    pub fn insert(&self, h: u64, owner: usize) -> bool {
        let start = h as usize;
        let word = Self::word(h, owner);
        let mut free = None;
        for i in 0..Self::PROBES {
            let slot = &self.slots[(start + i) & self.mask];
            let v = slot.load(Ordering::Acquire);
            if v != EMPTY && v != TOMBSTONE && (v & TAG) == (h & TAG) {
                if v == word
                    || slot
                        .compare_exchange(v, word, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    return true;
                }
                continue;
            }
            if free.is_none() && (v == EMPTY || v == TOMBSTONE) {
                free = Some((slot, v));
            }
            if v == EMPTY {
                break;
            }
        }
        if let Some((slot, v)) = free {
            if slot
                .compare_exchange(v, word, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return true;
            }
            // Lost a race for the slot: try once more from the start.
            return self.insert_retry(h, word);
        }
        self.full.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn insert_retry(&self, h: u64, word: u64) -> bool {
        let start = h as usize;
        for i in 0..Self::PROBES {
            let slot = &self.slots[(start + i) & self.mask];
            let v = slot.load(Ordering::Acquire);
            if (v == EMPTY || v == TOMBSTONE)
                && slot
                    .compare_exchange(v, word, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return true;
            }
        }
        self.full.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Remove the entry for `h` if `owner` still holds it.
    pub fn remove(&self, h: u64, owner: usize) {
        let start = h as usize;
        let word = Self::word(h, owner);
        for i in 0..Self::PROBES {
            let slot = &self.slots[(start + i) & self.mask];
            let v = slot.load(Ordering::Acquire);
            if v == EMPTY {
                return;
            }
            if v == word {
                let _ = slot.compare_exchange(v, TOMBSTONE, Ordering::AcqRel, Ordering::Acquire);
                return;
            }
        }
    }

    /// Live entries (a scan: for display and tests).
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !matches!(s.load(Ordering::Relaxed), EMPTY | TOMBSTONE))
            .count()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(s) => u16::from_be_bytes([s[0], s[1]]),
        None => 0,
    }
}

#[inline(always)]
fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    match b.get(at..at + 4) {
        Some(s) => Ipv4Addr::new(s[0], s[1], s[2], s[3]),
        None => Ipv4Addr::UNSPECIFIED,
    }
}

/// What decides a packet's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowId {
    /// A full tuple (the key `ip4-nat` uses: ICMP echo ids as ports).
    Tuple(FlowKey),
    /// A non-first fragment: addresses, protocol and IP id only.
    Fragment {
        /// The tuple's addresses and protocol (ports 0).
        key: FlowKey,
        /// IP identification.
        id: u16,
        /// More fragments follow.
        more: bool,
    },
}

/// The tuple that decides who owns the IPv4 packet `l3` (tunnelled packets: their inner
/// packet; ICMP errors: the quoted packet). `None` when it is not IPv4 or too short.
pub fn flow_id(l3: &[u8], vxlan_port: u16) -> Option<FlowId> {
    flow_id_at(l3, vxlan_port, 0)
}

fn flow_id_at(l3: &[u8], vxlan_port: u16, depth: u8) -> Option<FlowId> {
    if l3.len() < 20 || l3[0] >> 4 != 4 {
        return None;
    }
    let hl = ((l3[0] & 0x0f) as usize) * 4;
    let frag = be16(l3, 6);
    let offset = frag & 0x1fff;
    let proto = l3[9];
    let mut key = FlowKey {
        src: ip_at(l3, 12),
        dst: ip_at(l3, 16),
        sport: 0,
        dport: 0,
        proto,
    };
    if offset != 0 {
        return Some(FlowId::Fragment {
            key,
            id: be16(l3, 4),
            more: frag & 0x2000 != 0,
        });
    }
    let l4 = l3.get(hl..)?;
    let first_fragment = frag & 0x2000 != 0;
    match proto {
        4 if depth == 0 && !first_fragment => {
            if let Some(inner) = flow_id_at(l4, vxlan_port, 1) {
                return Some(inner);
            }
        }
        6 | 17 if l4.len() >= 4 => {
            key.sport = be16(l4, 0);
            key.dport = be16(l4, 2);
            // VXLAN: the inner frame (8-byte UDP header, 8-byte VXLAN header, Ethernet).
            if proto == 17 && depth == 0 && !first_fragment && key.dport == vxlan_port {
                if let Some(inner) = l4
                    .get(30..)
                    .filter(|_| be16(l4, 28) == 0x0800)
                    .and_then(|i| flow_id_at(i, vxlan_port, 1))
                {
                    return Some(inner);
                }
            }
        }
        1 if l4.len() >= 8 => match l4[0] {
            8 => key.sport = be16(l4, 4),
            0 => key.dport = be16(l4, 4),
            3 | 4 | 5 | 11 | 12 if depth < 2 => {
                // The quoted packet's flow (its reverse is the same flow).
                if let Some(FlowId::Tuple(q)) = quoted(&l4[8..]) {
                    return Some(FlowId::Tuple(q));
                }
            }
            _ => {}
        },
        _ => {}
    }
    Some(FlowId::Tuple(key))
}

/// The tuple of a packet quoted by an ICMP error (its header and 8 bytes of payload).
fn quoted(q: &[u8]) -> Option<FlowId> {
    if q.len() < 28 || q[0] >> 4 != 4 {
        return None;
    }
    let hl = ((q[0] & 0x0f) as usize) * 4;
    let proto = q[9];
    let mut key = FlowKey {
        src: ip_at(q, 12),
        dst: ip_at(q, 16),
        sport: 0,
        dport: 0,
        proto,
    };
    let l4 = q.get(hl..hl + 8)?;
    match proto {
        6 | 17 => {
            key.sport = be16(l4, 0);
            key.dport = be16(l4, 2);
        }
        1 => match l4[0] {
            8 => key.sport = be16(l4, 4),
            0 => key.dport = be16(l4, 4),
            _ => {}
        },
        _ => {}
    }
    Some(FlowId::Tuple(key))
}

/// Which worker owns the tuple `key`: its directory entry, or [`addr_owner`].
#[inline(always)]
pub fn flow_owner(key: &FlowKey, dir: &FlowDirectory, workers: usize) -> usize {
    match dir.lookup(tuple_hash(key)) {
        Some(w) if w < workers => w,
        _ => addr_owner(key.src, key.dst, workers),
    }
}

/// The worker of each port (ports are numbered alike in every worker's backend; a port
/// belongs to one worker, which alone receives and transmits on it).
#[derive(Debug)]
pub struct PortOwners {
    owners: Box<[AtomicU8]>,
}

impl Default for PortOwners {
    fn default() -> Self {
        PortOwners {
            owners: (0..=u16::MAX as usize).map(|_| AtomicU8::new(0)).collect(),
        }
    }
}

impl PortOwners {
    /// Give `port` to `worker` (`None`: to nobody; its packets are sent by whoever
    /// routes them, as with one worker).
    pub fn set(&self, port: u16, worker: Option<usize>) {
        let v = worker.map_or(0, |w| (w.min(MAX_WORKERS - 1) + 1) as u8);
        self.owners[port as usize].store(v, Ordering::Relaxed);
    }

    /// The worker owning `port`.
    #[inline(always)]
    pub fn get(&self, port: u16) -> Option<usize> {
        match self.owners[port as usize].load(Ordering::Relaxed) {
            0 => None,
            v => Some(v as usize - 1),
        }
    }
}

/// What a handed-off packet is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffKind {
    /// Received on interface `sw_if` (counted there); run the graph on it.
    Rx(u16),
    /// Transmit on port (the receiver owns it).
    Tx(u16),
}

/// One packet in a [`Batch`]: `len` bytes at `start` of the batch's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandoffPacket {
    /// What to do with it.
    pub kind: HandoffKind,
    /// Start in [`Batch::data`].
    pub start: u32,
    /// Length.
    pub len: u16,
}

/// Packets one worker hands to another in one round (copied: frames stay in their pool).
/// Batches go back to their sender empty and are reused.
#[derive(Debug, Default)]
pub struct Batch {
    /// The worker that filled it (and gets it back).
    pub from: usize,
    /// The packets.
    pub pkts: Vec<HandoffPacket>,
    /// Their bytes.
    pub data: Vec<u8>,
}

impl Batch {
    /// Add a packet.
    #[inline]
    pub fn push(&mut self, kind: HandoffKind, bytes: &[u8]) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        self.pkts.push(HandoffPacket {
            kind,
            start,
            len: bytes.len() as u16,
        });
    }

    /// The bytes of `p`.
    #[inline]
    pub fn bytes(&self, p: &HandoffPacket) -> &[u8] {
        let s = p.start as usize;
        self.data.get(s..s + p.len as usize).unwrap_or(&[])
    }

    fn clear(&mut self) {
        self.pkts.clear();
        self.data.clear();
    }
}

/// Wakes a worker sleeping in its backend's wait (e.g. an eventfd write).
pub type WakeFn = Box<dyn Fn() + Send + Sync>;

/// What the workers of a group share.
struct Group {
    workers: usize,
    owners: Arc<PortOwners>,
    dir: Arc<FlowDirectory>,
    sleeping: Vec<AtomicBool>,
    wakers: Vec<OnceLock<WakeFn>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// One worker's end of the handoff queues of a group ([`links`]); give it to the worker
/// with [`crate::Worker::set_handoff`].
#[derive(Debug)]
pub struct HandoffLink {
    index: usize,
    group: Arc<Group>,
    /// To each worker (None for itself).
    to: Vec<Option<SyncSender<Batch>>>,
    /// Batches for this worker.
    inbound: Receiver<Batch>,
    /// A batch taken while deciding whether to sleep.
    stashed: Option<Batch>,
    /// Empty batches back to their senders.
    back: Vec<Sender<Batch>>,
    /// This worker's empty batches coming back.
    spare_rx: Receiver<Batch>,
    spares: Vec<Batch>,
    /// The batch being filled for each worker this round.
    filling: Vec<Option<Batch>>,
    /// A receiver's queue was full at the last send.
    congested: bool,
    /// Batches sent and not given back yet.
    in_flight: usize,
}

/// Links for a group of `workers` workers sharing port ownership and a flow directory.
pub fn links(workers: usize, owners: Arc<PortOwners>, dir: Arc<FlowDirectory>) -> Vec<HandoffLink> {
    let workers = workers.clamp(1, MAX_WORKERS);
    let group = Arc::new(Group {
        workers,
        owners,
        dir,
        sleeping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
        wakers: (0..workers).map(|_| OnceLock::new()).collect(),
    });
    let (in_tx, in_rx): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| mpsc::sync_channel::<Batch>(QUEUE_BATCHES))
        .unzip();
    let (back_tx, back_rx): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| mpsc::channel::<Batch>()).unzip();
    in_rx
        .into_iter()
        .zip(back_rx)
        .enumerate()
        .map(|(i, (inbound, spare_rx))| HandoffLink {
            index: i,
            group: group.clone(),
            to: (0..workers)
                .map(|w| (w != i).then(|| in_tx[w].clone()))
                .collect(),
            inbound,
            stashed: None,
            back: back_tx.clone(),
            spare_rx,
            spares: Vec::new(),
            filling: (0..workers).map(|_| None).collect(),
            congested: false,
            in_flight: 0,
        })
        .collect()
}

impl HandoffLink {
    /// This worker's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Workers in the group.
    pub fn workers(&self) -> usize {
        self.group.workers
    }

    /// The group's port owners.
    pub fn owners(&self) -> &Arc<PortOwners> {
        &self.group.owners
    }

    /// The group's flow directory.
    pub fn directory(&self) -> &Arc<FlowDirectory> {
        &self.group.dir
    }

    /// How to wake this worker when another hands it packets while it sleeps (set once).
    pub fn set_waker(&self, wake: WakeFn) {
        let _ = self.group.wakers[self.index].set(wake);
    }

    /// Whether this worker receives and transmits on `port` (ports without an owner are
    /// worker 0's to receive).
    #[inline(always)]
    pub fn owns(&self, port: u16) -> bool {
        self.group.owners.get(port).unwrap_or(0) == self.index
    }

    /// The worker to transmit on `port`, when it is another one.
    #[inline(always)]
    pub fn tx_peer(&self, port: u16) -> Option<usize> {
        self.group.owners.get(port).filter(|&w| w != self.index)
    }

    /// Queue `bytes` for worker `to` (sent by [`HandoffLink::send_all`]).
    #[inline]
    pub fn push(&mut self, to: usize, kind: HandoffKind, bytes: &[u8]) {
        if self.filling.get(to).is_some_and(Option::is_none) {
            self.reclaim();
            let mut b = self.spares.pop().unwrap_or_default();
            b.from = self.index;
            self.filling[to] = Some(b);
        }
        if let Some(Some(b)) = self.filling.get_mut(to) {
            b.push(kind, bytes);
        }
    }

    /// Send the batches filled this round; returns the packets dropped because a
    /// receiver's queue was full (or it is gone).
    pub fn send_all(&mut self) -> u64 {
        let mut dropped = 0;
        for w in 0..self.filling.len() {
            let Some(b) = self.filling[w].take() else {
                continue;
            };
            let Some(Some(tx)) = self.to.get(w) else {
                dropped += b.pkts.len() as u64;
                continue;
            };
            match tx.try_send(b) {
                Ok(()) => {
                    self.in_flight += 1;
                    if self.group.sleeping[w].load(Ordering::SeqCst) {
                        if let Some(wake) = self.group.wakers[w].get() {
                            wake();
                        }
                    }
                }
                Err(TrySendError::Full(mut b)) | Err(TrySendError::Disconnected(mut b)) => {
                    self.congested = true;
                    dropped += b.pkts.len() as u64;
                    b.clear();
                    self.spares.push(b);
                }
            }
        }
        dropped
    }

    /// Whether a receiver's queue was full at the last [`HandoffLink::send_all`] (cleared
    /// by the call), or [`IN_FLIGHT_MAX`] of this worker's batches wait to be run: the
    /// worker then skips receiving from its ports for a round, leaving
    /// packets in their rings (where the kernel drops what does not fit) instead of
    /// receiving packets it would have to drop at the handoff.
    pub fn take_congested(&mut self) -> bool {
        self.reclaim();
        std::mem::take(&mut self.congested) || self.in_flight >= IN_FLIGHT_MAX
    }

    /// Take back the batches the others are done with.
    fn reclaim(&mut self) {
        while let Ok(b) = self.spare_rx.try_recv() {
            self.in_flight = self.in_flight.saturating_sub(1);
            self.spares.push(b);
        }
    }

    /// The next batch handed to this worker.
    #[inline]
    pub fn recv(&mut self) -> Option<Batch> {
        self.stashed.take().or_else(|| self.inbound.try_recv().ok())
    }

    /// Give an emptied batch back to its sender.
    pub fn give_back(&mut self, mut b: Batch) {
        b.clear();
        if b.from == self.index {
            self.spares.push(b);
        } else if let Some(tx) = self.back.get(b.from) {
            let _ = tx.send(b);
        }
    }

    /// Mark this worker as about to sleep: returns false (and stays awake) when a batch
    /// arrived meanwhile. Call [`HandoffLink::awake`] after the sleep.
    pub fn may_sleep(&mut self) -> bool {
        self.group.sleeping[self.index].store(true, Ordering::SeqCst);
        if self.stashed.is_none() {
            self.stashed = self.inbound.try_recv().ok();
        }
        if self.stashed.is_some() {
            self.awake();
            return false;
        }
        true
    }

    /// The sleep is over.
    pub fn awake(&self) {
        self.group.sleeping[self.index].store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: [u8; 4], sp: u16, b: [u8; 4], dp: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: a.into(),
            dst: b.into(),
            sport: sp,
            dport: dp,
            proto,
        }
    }

    #[test]
    fn hashes_are_symmetric_and_spread() {
        let k = key([10, 0, 0, 1], 1234, [10, 0, 0, 2], 80, 6);
        assert_eq!(tuple_hash(&k), tuple_hash(&k.reversed()));
        assert_ne!(
            tuple_hash(&k),
            tuple_hash(&key([10, 0, 0, 1], 1235, [10, 0, 0, 2], 80, 6))
        );
        assert_eq!(addr_owner(k.src, k.dst, 4), addr_owner(k.dst, k.src, 4));
        let mut per = [0usize; 4];
        for i in 0..4096u32 {
            per[addr_owner(
                Ipv4Addr::from(0x0af4_0000 + i),
                Ipv4Addr::new(10, 96, 0, 1),
                4,
            )] += 1;
        }
        for n in per {
            assert!((800..1250).contains(&n), "uneven spread: {per:?}");
        }
    }

    #[test]
    fn directory_insert_lookup_replace_remove() {
        let d = FlowDirectory::new(1024);
        let k = key([10, 0, 0, 1], 1234, [10, 0, 0, 2], 80, 6);
        let h = tuple_hash(&k);
        assert_eq!(d.lookup(h), None);
        assert!(d.insert(h, 3));
        assert_eq!(d.lookup(h), Some(3));
        assert_eq!(d.lookup(tuple_hash(&k.reversed())), Some(3));
        // Another owner takes the tuple over; the first one's removal then does nothing.
        assert!(d.insert(h, 1));
        assert_eq!(d.lookup(h), Some(1));
        d.remove(h, 3);
        assert_eq!(d.lookup(h), Some(1));
        d.remove(h, 1);
        assert_eq!(d.lookup(h), None);
        assert!(d.is_empty());
    }

    #[test]
    fn directory_probe_window_is_bounded() {
        let d = FlowDirectory::new(1024);
        // Keys landing on the same slot: only PROBES of them fit.
        let base = 0x1234_5600_0000_0000u64;
        let mut ok = 0;
        for i in 0..(FlowDirectory::PROBES as u64 + 4) {
            // Same low bits (the slot), different tags.
            if d.insert(base + (i << 40), 0) {
                ok += 1;
            }
        }
        assert_eq!(ok, FlowDirectory::PROBES);
        assert_eq!(d.full.load(Ordering::Relaxed), 4);
        // Removing one frees a slot (a tombstone) for the next.
        d.remove(base, 0);
        assert!(d.insert(base + (99 << 40), 0));
    }

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        let len = (20 + l4.len()) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p.extend_from_slice(l4);
        p
    }

    #[test]
    fn flow_ids_of_tunnels_icmp_errors_and_fragments() {
        let udp = [0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0];
        let inner = ipv4(17, [10, 244, 2, 5], [10, 244, 1, 7], 0, &udp);
        let want = FlowId::Tuple(key([10, 244, 2, 5], 12345, [10, 244, 1, 7], 53, 17));
        assert_eq!(flow_id(&inner, 4789), Some(want));
        // IPIP.
        let ipip = ipv4(4, [192, 168, 1, 2], [192, 168, 1, 3], 0, &inner);
        assert_eq!(flow_id(&ipip, 4789), Some(want));
        // VXLAN: UDP to 4789, VXLAN header, inner Ethernet.
        let mut vx = vec![0xc0, 0x00, 0x12, 0xb5, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 1, 0];
        vx.extend_from_slice(&[0; 12]);
        vx.extend_from_slice(&[0x08, 0x00]);
        vx.extend_from_slice(&inner);
        let outer = ipv4(17, [192, 168, 1, 2], [192, 168, 1, 3], 0, &vx);
        assert_eq!(flow_id(&outer, 4789), Some(want));
        // An ICMP error quoting the flow's packet.
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&inner[..28]);
        let err = ipv4(1, [192, 168, 1, 9], [10, 244, 2, 5], 0, &icmp);
        assert_eq!(flow_id(&err, 4789), Some(want));
        // Non-first fragment: addresses and id.
        let tail = ipv4(17, [10, 244, 2, 5], [10, 244, 1, 7], 185, &[0; 16]);
        match flow_id(&tail, 4789) {
            Some(FlowId::Fragment { key, id, more }) => {
                assert_eq!(
                    (key.src, key.dst, id, more),
                    (
                        Ipv4Addr::new(10, 244, 2, 5),
                        Ipv4Addr::new(10, 244, 1, 7),
                        0x4242,
                        false
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        // ICMP echo: request and reply are the two directions of one key.
        let req = ipv4(
            1,
            [10, 244, 1, 7],
            [8, 8, 8, 8],
            0,
            &[8, 0, 0, 0, 0x12, 0x34, 0, 1],
        );
        let rep = ipv4(
            1,
            [8, 8, 8, 8],
            [10, 244, 1, 7],
            0,
            &[0, 0, 0, 0, 0x12, 0x34, 0, 1],
        );
        match (flow_id(&req, 4789), flow_id(&rep, 4789)) {
            (Some(FlowId::Tuple(a)), Some(FlowId::Tuple(b))) => assert_eq!(a.reversed(), b),
            other => panic!("{other:?}"),
        }
        assert_eq!(flow_id(&[0x60; 40], 4789), None);
    }
}
