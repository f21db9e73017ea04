//! DPDK backend (cargo feature `dpdk`): the uplink driven by a DPDK poll-mode driver.
//!
//! Layers, each in its own file:
//! - [`Eal`] ([`EalConfig`]): DPDK's environment, initialised once per process.
//! - [`DpdkPool`]: one mbuf mempool whose mbufs are numbered `0..n` (the index lives in
//!   each mbuf's private area), so an mbuf *is* an engine frame: frame `i` is mbuf `i`'s
//!   data buffer and a packet's offset in it is the mbuf's `data_off`. Received packets
//!   reach the engine without a copy, with DPDK's headroom ([`DpdkPool::headroom`], 128
//!   bytes) in front for encapsulation.
//! - [`DpdkPort`] ([`PortConfig`]): a device (PCI address or virtual device string)
//!   probed, configured with RX/TX queue pairs fed from the pool, and started.
//! - [`DpdkIo`]: a [`PacketIo`] over `(port, queue)` pairs, one per engine port; one per
//!   worker, each with its own queue of every device.
//! - `shim.c` / `ffi.rs`: the C wrappers of DPDK's inline fast-path functions.
//!
//! Frame ownership follows [`crate`]'s rule: a frame handed out by `rx_burst` or `alloc`
//! belongs to the caller until `tx_burst` accepts it or `free` returns it; a [`DpdkIo`]
//! tracks which frames it handed out, refuses to send or free any other (counted in
//! [`DpdkIoStats`]) and returns those still out to the pool when dropped, so that after
//! the ports are closed [`DpdkPool::available`] is back at [`DpdkPool::num_mbufs`].
//!
//! Tested (tests/dpdk.rs) with the `net_af_packet` and `net_af_xdp` virtual devices on
//! veths, without hugepages. `net_af_xdp` (DPDK 22.11) in its zero-copy mode uses the
//! pool's mbufs as its UMEM: it needs a pool larger than the 2,048 mbufs it puts on its
//! fill ring, hands packets over 384 bytes into the mbuf (XDP's headroom added), and does
//! not give back the fill ring's mbufs when the port is closed (lost per open and close,
//! not per packet; freed with the pool).
//!
//! Poll mode: drivers offer no file descriptor to sleep on, so [`PacketIo::wait`] sleeps
//! for [`DpdkIo::set_idle_sleep`] (at most the timeout) and the caller polls again.

mod eal;
mod ffi;
mod pool;
mod port;

pub use eal::{Eal, EalConfig};
pub use pool::{DpdkFrames, DpdkPool, PoolConfig};
pub use port::{DpdkPort, DpdkPortStats, PortConfig};

use std::time::Duration;

use ffi::RawDesc;

use crate::{BufIdx, Desc, IoError, PacketIo, PortId};

/// Largest burst passed to the shim at once.
const CHUNK: usize = 256;

/// Counters of a [`DpdkIo`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DpdkIoStats {
    /// Packets received.
    pub rx: u64,
    /// Packets the driver accepted for transmission.
    pub tx: u64,
    /// Received packets dropped because they spanned several mbufs (larger than a frame).
    pub rx_chained: u64,
    /// `tx_burst` descriptors refused: frame not owned by the caller, empty, or past the
    /// end of its frame.
    pub invalid_tx: u64,
    /// `free` of a frame the caller did not own (ignored).
    pub invalid_frees: u64,
}

/// A [`PacketIo`] over DPDK queues: engine port `i` is queue `queue` of device `port` of
/// the `i`-th pair given to [`DpdkIo::new`].
pub struct DpdkIo {
    frames: DpdkFrames,
    pool: DpdkPool,
    ports: Vec<(DpdkPort, u16)>,
    /// `owned[i]`: frame `i` was handed to the caller and not given back.
    owned: Vec<bool>,
    scratch: Vec<RawDesc>,
    scratch_idx: Vec<u32>,
    idle_sleep: Duration,
    stats: DpdkIoStats,
}

impl std::fmt::Debug for DpdkIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkIo")
            .field("pool", &self.pool)
            .field("ports", &self.ports)
            .field("stats", &self.stats)
            .finish()
    }
}

impl DpdkIo {
    /// A backend whose port `i` is queue `ports[i].1` of device `ports[i].0`; every port
    /// must take its RX buffers from `pool`.
    pub fn new(pool: &DpdkPool, ports: Vec<(DpdkPort, u16)>) -> Result<DpdkIo, IoError> {
        if ports.len() > usize::from(PortId::MAX) {
            return Err(IoError::Config(format!("dpdk: {} ports", ports.len())));
        }
        for (port, _) in &ports {
            if !std::sync::Arc::ptr_eq(&port.inner_pool().inner, &pool.inner) {
                return Err(IoError::Config(format!(
                    "dpdk: device {} takes its buffers from another pool",
                    port.name()
                )));
            }
        }
        // One poller per queue: claim them all or none.
        for (i, (port, queue)) in ports.iter().enumerate() {
            if !port.claim(*queue) {
                for (p, q) in &ports[..i] {
                    p.release(*q);
                }
                return Err(IoError::Config(format!(
                    "dpdk: queue {queue} of device {} does not exist (it has {}) or is \
                     already polled by another backend",
                    port.name(),
                    port.queues()
                )));
            }
        }
        Ok(DpdkIo {
            frames: pool.frames(),
            pool: pool.clone(),
            ports,
            owned: vec![false; pool.num_mbufs() as usize],
            scratch: vec![RawDesc::default(); CHUNK],
            scratch_idx: Vec::with_capacity(CHUNK),
            idle_sleep: Duration::from_micros(200),
            stats: DpdkIoStats::default(),
        })
    }

    /// How long [`PacketIo::wait`] sleeps when asked to wait (poll mode; default 200 µs).
    pub fn set_idle_sleep(&mut self, d: Duration) {
        self.idle_sleep = d;
    }

    /// The backend's counters.
    pub fn stats(&self) -> DpdkIoStats {
        self.stats
    }

    /// The device and queue behind engine port `port`.
    pub fn port(&self, port: PortId) -> Option<(&DpdkPort, u16)> {
        self.ports.get(usize::from(port)).map(|(p, q)| (p, *q))
    }

    /// The pool the frames come from.
    pub fn pool(&self) -> &DpdkPool {
        &self.pool
    }

    /// Frames currently handed out to the caller.
    pub fn frames_out(&self) -> usize {
        self.owned.iter().filter(|o| **o).count()
    }

    fn free_indices(&mut self, idx: &[u32]) {
        for chunk in idx.chunks(CHUNK) {
            // SAFETY: every index is < num_mbufs (checked by the callers) and was owned
            // by this backend's caller, so the mbuf is not in the pool or a ring; the
            // table lives as long as the pool, which `self.pool` keeps.
            unsafe {
                ffi::fp_dpdk_free(
                    self.pool.inner.table.as_ptr(),
                    chunk.as_ptr(),
                    chunk.len() as u32,
                )
            };
        }
    }
}

impl Drop for DpdkIo {
    fn drop(&mut self) {
        let out: Vec<u32> = (0u32..)
            .zip(&self.owned)
            .filter(|(_, o)| **o)
            .map(|(i, _)| i)
            .collect();
        self.free_indices(&out);
        for (port, queue) in &self.ports {
            port.release(*queue);
        }
    }
}

impl crate::FramesRef for DpdkIo {
    fn memory_ref(&self) -> &DpdkFrames {
        &self.frames
    }
}

impl PacketIo for DpdkIo {
    type Memory = DpdkFrames;

    fn memory(&mut self) -> &mut DpdkFrames {
        &mut self.frames
    }

    fn num_ports(&self) -> usize {
        self.ports.len()
    }

    fn rx_burst(&mut self, port: PortId, out: &mut [Desc]) -> usize {
        let Some((dev, queue)) = self.ports.get(usize::from(port)) else {
            return 0;
        };
        let (port_id, queue) = (dev.port_id(), *queue);
        let mut done = 0;
        while done < out.len() {
            let want = (out.len() - done).min(CHUNK);
            let mut chained = 0u64;
            // SAFETY: the port is started and this backend is the only poller of its
            // queue (claimed in `new`, `&mut self`); `scratch` has CHUNK >= want slots.
            let got = unsafe {
                ffi::fp_dpdk_rx(
                    port_id,
                    queue,
                    self.scratch.as_mut_ptr(),
                    want as u16,
                    &mut chained,
                )
            };
            self.stats.rx_chained += chained;
            let got = usize::from(got);
            for (o, r) in out[done..].iter_mut().zip(&self.scratch[..got]) {
                // Indices come from the pool's numbering, so they are < num_mbufs.
                self.owned[r.buf as usize] = true;
                *o = Desc {
                    buf: r.buf,
                    offset: r.offset,
                    len: r.len,
                };
            }
            done += got;
            if got < want {
                break;
            }
        }
        self.stats.rx += done as u64;
        done
    }

    fn tx_burst(&mut self, port: PortId, pkts: &[Desc]) -> usize {
        let Some((dev, queue)) = self.ports.get(usize::from(port)) else {
            return 0;
        };
        let (port_id, queue) = (dev.port_id(), *queue);
        let frame_size = self.pool.inner_frame_size();
        let mut done = 0;
        while done < pkts.len() {
            let want = (pkts.len() - done).min(CHUNK);
            let mut valid = 0;
            for (s, d) in self.scratch.iter_mut().zip(&pkts[done..done + want]) {
                let end = usize::from(d.offset) + usize::from(d.len);
                if self.owned.get(d.buf as usize) != Some(&true) || d.len == 0 || end > frame_size {
                    self.stats.invalid_tx += 1;
                    break;
                }
                *s = RawDesc {
                    buf: d.buf,
                    offset: d.offset,
                    len: d.len,
                };
                valid += 1;
            }
            if valid == 0 {
                break;
            }
            // SAFETY: `scratch[..valid]` holds frames the caller owns (so not in a ring
            // or the pool), each packet inside its frame; the table outlives the call;
            // this backend is the only sender on the queue (claimed in `new`).
            let sent = unsafe {
                ffi::fp_dpdk_tx(
                    port_id,
                    queue,
                    self.scratch.as_ptr(),
                    valid as u16,
                    self.pool.inner.table.as_ptr(),
                )
            };
            let sent = usize::from(sent);
            for d in &self.scratch[..sent] {
                self.owned[d.buf as usize] = false;
            }
            done += sent;
            if sent < want {
                break;
            }
        }
        self.stats.tx += done as u64;
        done
    }

    fn alloc(&mut self, out: &mut [BufIdx]) -> usize {
        let n = u32::try_from(out.len()).unwrap_or(u32::MAX);
        // SAFETY: `out` has room for `n` indices; the pool is alive.
        let got = unsafe { ffi::fp_dpdk_alloc(self.pool.inner.mp, out.as_mut_ptr(), n) } as usize;
        for &b in &out[..got] {
            self.owned[b as usize] = true;
        }
        got
    }

    fn free(&mut self, bufs: &[BufIdx]) {
        let mut idx = std::mem::take(&mut self.scratch_idx);
        for chunk in bufs.chunks(CHUNK) {
            idx.clear();
            for &b in chunk {
                match self.owned.get_mut(b as usize) {
                    Some(o) if *o => {
                        *o = false;
                        idx.push(b);
                    }
                    _ => self.stats.invalid_frees += 1,
                }
            }
            self.free_indices(&idx);
        }
        self.scratch_idx = idx;
    }

    fn flush(&mut self) -> Result<(), IoError> {
        // Drivers send in tx_burst and reclaim sent mbufs on later bursts; nothing to kick.
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), IoError> {
        std::thread::sleep(timeout.min(self.idle_sleep));
        Ok(())
    }
}
