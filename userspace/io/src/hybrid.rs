//! [`HybridIo`]: two backends driven as one by an engine worker: the pods' backend `P`
//! (AF_XDP sockets on one UMEM) and an uplink backend `U` (a DPDK poll-mode driver and
//! its exception interface, a TAP for the host's own traffic).
//!
//! # Ids
//!
//! - **Frames**: `P`'s frames keep their indices `0..np`; `U`'s frame `i` is `np + i`. One
//!   index space, so the engine's per-frame metadata covers both pools.
//! - **Ports**: `P`'s ports keep their ids; `U`'s port `j` is `first + j`, where the caller
//!   chooses `first` among ids `P` never uses (the agent reserves them). So everything the
//!   control plane knows about `P`'s ports (XSKMAP slots, interface table) is unchanged.
//!
//! # Copies between the pools
//!
//! A frame can only leave through a port of the backend that owns its memory: an AF_XDP
//! socket transmits descriptors that are offsets into *its* UMEM, and a DPDK driver
//! transmits mbufs of a mempool it was given (a physical NIC DMAs from the mbuf's IOVA,
//! which the UMEM is not registered for). So a packet received on a pod's socket and sent
//! out of the DPDK uplink (or the reverse) is copied into a frame of the sending backend
//! (allocated there, same offset when it fits), and its first frame is freed once the copy
//! is accepted. Traffic that stays within one backend (pod to pod, uplink to the host's
//! TAP and back) is never copied. [`HybridStats`] counts the copies; the `hybrid` bench
//! measures their cost.
//!
//! # Exception path
//!
//! With an [`ExceptionPath`], the uplink port's received frames are classified as
//! `xdp_uplink` would ([`crate::steer`]): the engine's go up, the host's are sent on the
//! TAP port of the same backend without a copy. What the host sends through the TAP is
//! sent out of the uplink in [`PacketIo::flush`]; the engine never sees either (the TAP's
//! port id receives nothing and refuses transmissions).

use std::time::Duration;

use crate::steer::{Steer, Steering};
use crate::{BufIdx, Desc, FrameMemory, FramesRef, IoError, PacketIo, PortId};

/// Largest burst moved between the uplink and the TAP at once.
const HOST_BURST: usize = 256;

/// The host's exception path through the uplink backend: ports of `U` (its own ids).
#[derive(Clone, Debug)]
pub struct ExceptionPath {
    /// The uplink's port in `U`.
    pub uplink: PortId,
    /// The host's TAP in `U`.
    pub host: PortId,
    /// What the engine must see of the uplink's traffic; the rest goes to `host`.
    pub steering: Steering,
}

/// Counters of a [`HybridIo`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HybridStats {
    /// Packets copied from a pods' frame into an uplink frame to be sent.
    pub copies_to_uplink: u64,
    /// Packets copied from an uplink frame into a pods' frame to be sent.
    pub copies_to_pods: u64,
    /// Packets not sent because no frame was free in the sending backend for the copy.
    pub copy_failures: u64,
    /// Uplink frames passed to the host's TAP.
    pub to_host: u64,
    /// Host frames from the TAP sent out of the uplink.
    pub from_host: u64,
    /// Frames of the exception path dropped (TAP or uplink TX ring full).
    pub host_drops: u64,
    /// Descriptors refused: empty, past the end of their frame, on a port that takes
    /// none (the TAP), or a frame index outside both pools.
    pub invalid_tx: u64,
}

struct Uplink<U> {
    io: U,
    /// Combined id of `io`'s port 0.
    first: PortId,
    /// Combined index of `io`'s frame 0 (the pods' frame count).
    base: BufIdx,
    frames: u32,
    exception: Option<ExceptionPath>,
}

impl<U: PacketIo> Uplink<U> {
    fn local_port(&self, port: PortId) -> Option<PortId> {
        let j = port.checked_sub(self.first)?;
        (usize::from(j) < self.io.num_ports()).then_some(j)
    }
}

/// Reused buffers of the copy and exception paths.
#[derive(Default)]
struct Scratch {
    descs: Vec<Desc>,
    copied: Vec<Option<BufIdx>>,
    bufs: Vec<BufIdx>,
    host: Vec<Desc>,
    rx: Vec<Desc>,
}

/// A [`PacketIo`] over the pods' backend `P` and, once attached, an uplink backend `U`
/// (see the module docs for ids and copies). Without an uplink it is `P` itself.
pub struct HybridIo<P, U> {
    pods: P,
    uplink: Option<Uplink<U>>,
    scratch: Scratch,
    stats: HybridStats,
    uplink_poll: Duration,
}

impl<P, U> std::fmt::Debug for HybridIo<P, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridIo")
            .field("uplink_first", &self.uplink.as_ref().map(|u| u.first))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<P: FramesRef, U: FramesRef> HybridIo<P, U> {
    /// `pods` alone (every call goes straight to it) until [`HybridIo::attach_uplink`].
    pub fn new(pods: P) -> Self {
        HybridIo {
            pods,
            uplink: None,
            scratch: Scratch::default(),
            stats: HybridStats::default(),
            uplink_poll: Duration::from_micros(200),
        }
    }

    /// Adds the uplink backend: its port `j` becomes port `first + j`, ids the pods'
    /// backend must never use (the caller reserves them); its frames follow the pods'.
    /// With `exception`, the host's traffic on `exception.uplink` goes to
    /// `exception.host` and back (see the module docs).
    pub fn attach_uplink(
        &mut self,
        io: U,
        first: PortId,
        exception: Option<ExceptionPath>,
    ) -> Result<(), IoError> {
        if self.uplink.is_some() {
            return Err(IoError::Config(
                "an uplink backend is already attached".into(),
            ));
        }
        let n = io.num_ports();
        if n == 0 || usize::from(first) + n > usize::from(PortId::MAX) + 1 {
            return Err(IoError::Config(format!(
                "uplink backend: {n} ports from id {first}"
            )));
        }
        if let Some(e) = &exception {
            if e.uplink == e.host || usize::from(e.uplink.max(e.host)) >= n {
                return Err(IoError::Config(format!(
                    "exception path: uplink port {} and host port {} of {n}",
                    e.uplink, e.host
                )));
            }
        }
        let base = self.pods.memory_ref().num_frames();
        let frames = io.memory_ref().num_frames();
        if base.checked_add(frames).is_none() {
            return Err(IoError::Config("too many frames in both pools".into()));
        }
        self.uplink = Some(Uplink {
            io,
            first,
            base,
            frames,
            exception,
        });
        Ok(())
    }

    /// Takes the uplink backend out (frames of it the engine still holds are its to
    /// reclaim, e.g. a DPDK backend returns them to its pool when dropped).
    pub fn detach_uplink(&mut self) -> Option<U> {
        self.uplink.take().map(|u| u.io)
    }

    /// The pods' backend.
    pub fn pods(&self) -> &P {
        &self.pods
    }

    /// The pods' backend, for its own port management (its ids are the combined ids).
    pub fn pods_mut(&mut self) -> &mut P {
        &mut self.pods
    }

    /// The uplink backend, if attached.
    pub fn uplink(&self) -> Option<&U> {
        self.uplink.as_ref().map(|u| &u.io)
    }

    /// The uplink backend, if attached, for its own queries.
    pub fn uplink_mut(&mut self) -> Option<&mut U> {
        self.uplink.as_mut().map(|u| &mut u.io)
    }

    /// The combined ids of the uplink backend's ports (empty without one).
    pub fn uplink_ports(&self) -> std::ops::Range<usize> {
        self.uplink.as_ref().map_or(0..0, |u| {
            usize::from(u.first)..usize::from(u.first) + u.io.num_ports()
        })
    }

    /// The backend's counters.
    pub fn stats(&self) -> HybridStats {
        self.stats
    }

    /// The longest [`PacketIo::wait`] sleeps while an uplink is attached (poll-mode
    /// drivers have nothing to sleep on; default 200 µs, rounded up by the pods' backend).
    pub fn set_uplink_poll(&mut self, d: Duration) {
        self.uplink_poll = d;
    }

    /// Host frames from the TAP out of the uplink.
    fn drain_host(&mut self) {
        let Some(up) = self.uplink.as_mut() else {
            return;
        };
        let Some(exc) = &up.exception else { return };
        let (uplink, host) = (exc.uplink, exc.host);
        let rx = &mut self.scratch.rx;
        rx.resize(HOST_BURST, Desc::default());
        loop {
            let n = up.io.rx_burst(host, &mut rx[..]);
            if n == 0 {
                break;
            }
            let sent = up.io.tx_burst(uplink, &rx[..n]);
            self.stats.from_host += sent as u64;
            if sent < n {
                self.stats.host_drops += (n - sent) as u64;
                self.scratch.bufs.clear();
                self.scratch.bufs.extend(rx[sent..n].iter().map(|d| d.buf));
                up.io.free(&self.scratch.bufs);
            }
            if n < HOST_BURST {
                break;
            }
        }
    }
}

impl<P: FramesRef, U: FramesRef> FramesRef for HybridIo<P, U> {
    fn memory_ref(&self) -> &Self {
        self
    }
}

impl<P: FramesRef, U: FramesRef> FrameMemory for HybridIo<P, U> {
    fn frame_size(&self) -> usize {
        let p = self.pods.memory_ref().frame_size();
        match &self.uplink {
            Some(u) => p.min(u.io.memory_ref().frame_size()),
            None => p,
        }
    }

    fn num_frames(&self) -> u32 {
        let p = self.pods.memory_ref().num_frames();
        p + self.uplink.as_ref().map_or(0, |u| u.frames)
    }

    #[inline]
    fn frame(&self, buf: BufIdx) -> &[u8] {
        match &self.uplink {
            Some(u) if buf >= u.base => u.io.memory_ref().frame(buf - u.base),
            _ => self.pods.memory_ref().frame(buf),
        }
    }

    #[inline]
    fn frame_mut(&mut self, buf: BufIdx) -> &mut [u8] {
        match &mut self.uplink {
            Some(u) if buf >= u.base => u.io.memory().frame_mut(buf - u.base),
            _ => self.pods.memory().frame_mut(buf),
        }
    }
}

/// Sends `pkts` (combined frame ids) on `port` of `dst`, whose frame `i` is combined id
/// `dst_base + i`; a packet in a frame of `src` (combined `src_base + i`) is first copied
/// into a frame of `dst`. Returns how many (a prefix) were accepted; a copied packet's
/// original frame is freed once its copy is accepted, and copies not accepted are freed.
#[allow(clippy::too_many_arguments)]
fn send_mixed<D: PacketIo, S: PacketIo>(
    dst: &mut D,
    dst_base: BufIdx,
    src: &mut S,
    src_base: BufIdx,
    is_dst: impl Fn(BufIdx) -> bool,
    port: PortId,
    pkts: &[Desc],
    scratch: &mut Scratch,
    stats: &mut HybridStats,
    copies: impl Fn(&mut HybridStats) -> &mut u64,
) -> usize {
    let need = pkts.iter().filter(|d| !is_dst(d.buf)).count();
    scratch.bufs.clear();
    scratch.bufs.resize(need, 0);
    let got = dst.alloc(&mut scratch.bufs);
    let mut fresh = scratch.bufs[..got].iter().copied();
    scratch.descs.clear();
    scratch.copied.clear();
    for d in pkts {
        if is_dst(d.buf) {
            scratch.descs.push(Desc {
                buf: d.buf - dst_base,
                ..*d
            });
            scratch.copied.push(None);
            continue;
        }
        let Some(buf) = fresh.next() else {
            stats.copy_failures += 1;
            break;
        };
        let (off, len) = (usize::from(d.offset), usize::from(d.len));
        let src_frame = src.memory().frame(d.buf - src_base);
        let dst_fs = dst.memory().frame_size();
        let to = if off + len <= dst_fs { off } else { 0 };
        if len == 0 || off + len > src_frame.len() || to + len > dst_fs {
            stats.invalid_tx += 1;
            dst.free(&[buf]);
            break;
        }
        dst.memory().frame_mut(buf)[to..to + len].copy_from_slice(&src_frame[off..off + len]);
        scratch.descs.push(Desc {
            buf,
            // `to` is `off` (a u16) or 0.
            offset: to as u16,
            len: d.len,
        });
        scratch.copied.push(Some(d.buf - src_base));
    }
    // Frames allocated for copies never made (the batch stopped early).
    let unused: Vec<BufIdx> = fresh.collect();
    if !unused.is_empty() {
        dst.free(&unused);
    }
    let sent = dst.tx_burst(port, &scratch.descs);
    let mut originals = Vec::new();
    let mut refused = Vec::new();
    for (i, (d, c)) in scratch.descs.iter().zip(&scratch.copied).enumerate() {
        match (c, i < sent) {
            (Some(orig), true) => {
                originals.push(*orig);
                *copies(stats) += 1;
            }
            (Some(_), false) => refused.push(d.buf),
            (None, _) => {}
        }
    }
    if !originals.is_empty() {
        src.free(&originals);
    }
    if !refused.is_empty() {
        dst.free(&refused);
    }
    sent
}

impl<P: FramesRef, U: FramesRef> PacketIo for HybridIo<P, U> {
    type Memory = Self;

    fn memory(&mut self) -> &mut Self {
        self
    }

    fn num_ports(&self) -> usize {
        let p = self.pods.num_ports();
        match &self.uplink {
            Some(u) => p.max(usize::from(u.first) + u.io.num_ports()),
            None => p,
        }
    }

    fn rx_burst(&mut self, port: PortId, out: &mut [Desc]) -> usize {
        let Some(up) = self.uplink.as_mut() else {
            return self.pods.rx_burst(port, out);
        };
        let Some(j) = up.local_port(port) else {
            return self.pods.rx_burst(port, out);
        };
        let exc = up.exception.as_ref().map(|e| (e.uplink, e.host));
        if exc.is_some_and(|(_, host)| host == j) {
            // The TAP is drained into the uplink in flush; the engine never reads it.
            return 0;
        }
        let mut n = up.io.rx_burst(j, out);
        if let (Some((uplink, host)), Some(e)) = (exc, up.exception.as_ref()) {
            if uplink == j && n > 0 {
                let tables = e.steering.current();
                let host_pkts = &mut self.scratch.host;
                host_pkts.clear();
                let mem = up.io.memory();
                let mut keep = 0;
                for i in 0..n {
                    let d = out[i];
                    let off = usize::from(d.offset);
                    let frame = mem.frame(d.buf);
                    let pkt = frame.get(off..off + usize::from(d.len)).unwrap_or(&[]);
                    match tables.to_engine(pkt) {
                        Steer::Engine => {
                            out[keep] = d;
                            keep += 1;
                        }
                        Steer::Host => host_pkts.push(d),
                    }
                }
                n = keep;
                if !host_pkts.is_empty() {
                    let sent = up.io.tx_burst(host, host_pkts);
                    self.stats.to_host += sent as u64;
                    if sent < host_pkts.len() {
                        self.stats.host_drops += (host_pkts.len() - sent) as u64;
                        self.scratch.bufs.clear();
                        self.scratch
                            .bufs
                            .extend(host_pkts[sent..].iter().map(|d| d.buf));
                        up.io.free(&self.scratch.bufs);
                    }
                }
            }
        }
        for d in &mut out[..n] {
            d.buf += up.base;
        }
        n
    }

    fn tx_burst(&mut self, port: PortId, pkts: &[Desc]) -> usize {
        let Some(up) = self.uplink.as_mut() else {
            return self.pods.tx_burst(port, pkts);
        };
        let total = up.base + up.frames;
        if let Some(bad) = pkts.iter().position(|d| d.buf >= total) {
            self.stats.invalid_tx += 1;
            if bad == 0 {
                return 0;
            }
            return self.tx_burst(port, &pkts[..bad]);
        }
        let (base, frames) = (up.base, up.frames);
        match up.local_port(port) {
            Some(j) => {
                if up.exception.as_ref().is_some_and(|e| e.host == j) {
                    self.stats.invalid_tx += pkts.len().min(1) as u64;
                    return 0;
                }
                send_mixed(
                    &mut up.io,
                    base,
                    &mut self.pods,
                    0,
                    |b| b >= base && b - base < frames,
                    j,
                    pkts,
                    &mut self.scratch,
                    &mut self.stats,
                    |s| &mut s.copies_to_uplink,
                )
            }
            None if pkts.iter().all(|d| d.buf < base) => self.pods.tx_burst(port, pkts),
            None => send_mixed(
                &mut self.pods,
                0,
                &mut up.io,
                base,
                |b| b < base,
                port,
                pkts,
                &mut self.scratch,
                &mut self.stats,
                |s| &mut s.copies_to_pods,
            ),
        }
    }

    fn alloc(&mut self, out: &mut [BufIdx]) -> usize {
        let got = self.pods.alloc(out);
        match self.uplink.as_mut() {
            Some(up) if got < out.len() => {
                let more = up.io.alloc(&mut out[got..]);
                for b in &mut out[got..got + more] {
                    *b += up.base;
                }
                got + more
            }
            _ => got,
        }
    }

    fn free(&mut self, bufs: &[BufIdx]) {
        let Some(up) = self.uplink.as_mut() else {
            return self.pods.free(bufs);
        };
        if bufs.iter().all(|&b| b < up.base) {
            return self.pods.free(bufs);
        }
        let (theirs, ours): (Vec<BufIdx>, Vec<BufIdx>) = bufs.iter().partition(|&&b| b >= up.base);
        self.pods.free(&ours);
        // Indices past the uplink's pool are passed on too: its backend counts them.
        let local: Vec<BufIdx> = theirs.into_iter().map(|b| b - up.base).collect();
        up.io.free(&local);
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.drain_host();
        self.pods.flush()?;
        if let Some(up) = self.uplink.as_mut() {
            up.io.flush()?;
        }
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), IoError> {
        match self.uplink {
            Some(_) => self.pods.wait(timeout.min(self.uplink_poll)),
            None => self.pods.wait(timeout),
        }
    }

    fn port_errors(&self) -> u64 {
        self.pods.port_errors() + self.uplink.as_ref().map_or(0, |u| u.io.port_errors())
    }
}
