//! The mbuf pool: one DPDK mempool whose mbufs are numbered, so that the engine's frame
//! indices map to mbufs and back without a lookup structure on the fast path.

use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::eal::Eal;
use super::ffi::{self, RteMbuf, RteMempool};
use crate::{BufIdx, FrameMemory, IoError};

/// Sizes of a [`DpdkPool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Number of mbufs (frames). DPDK sizes rings best at 2^k - 1.
    pub num_mbufs: u32,
    /// Per-lcore cache of the mempool (0: none). Only EAL lcore threads use it.
    pub cache: u32,
    /// Bytes of each mbuf's data buffer, headroom included (the engine's frame size).
    pub data_room: u16,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            num_mbufs: 8191,
            cache: 0,
            // RTE_MBUF_DEFAULT_BUF_SIZE: 2048 bytes of data after 128 of headroom.
            data_room: 2048 + 128,
        }
    }
}

pub(crate) struct PoolInner {
    pub(crate) mp: *mut RteMempool,
    /// `table[i]`: mbuf `i`.
    pub(crate) table: Vec<*mut RteMbuf>,
    /// `buf_addrs[i]`: the data buffer of mbuf `i` (`data_room` bytes).
    buf_addrs: Vec<*mut u8>,
    frame_size: usize,
    name: String,
}

// SAFETY: the mempool is DPDK's multi-producer/multi-consumer ring mempool (safe to use
// from any thread); `table` and `buf_addrs` are written once at creation and only read
// afterwards; who may touch the memory of one mbuf is decided by frame ownership (see the
// module docs of `dpdk`), as for the AF_XDP UMEM.
unsafe impl Send for PoolInner {}
// SAFETY: as for Send: shared access only reads the immutable tables and calls
// thread-safe mempool functions.
unsafe impl Sync for PoolInner {}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // SAFETY: the last reference is gone: every port using the pool (each holds an
        // Arc) is closed and every DpdkIo (which frees its frames on drop) is dropped, so
        // no mbuf of the pool is in use.
        unsafe { ffi::fp_dpdk_pool_free(self.mp) };
    }
}

/// A pool of numbered mbufs shared by the ports and backends built on it.
#[derive(Clone)]
pub struct DpdkPool {
    pub(crate) inner: Arc<PoolInner>,
}

impl std::fmt::Debug for DpdkPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkPool")
            .field("name", &self.inner.name)
            .field("mbufs", &self.inner.table.len())
            .field("frame_size", &self.inner.frame_size)
            .finish()
    }
}

static POOL_SEQ: AtomicU32 = AtomicU32::new(0);

impl DpdkPool {
    /// Creates a pool in the EAL's memory.
    pub fn new(_eal: &Eal, config: PoolConfig) -> Result<DpdkPool, IoError> {
        // SAFETY: returns a compile-time constant.
        let headroom = unsafe { ffi::fp_dpdk_headroom() };
        if config.num_mbufs == 0 || config.data_room < headroom.saturating_add(512) {
            return Err(IoError::Config(format!(
                "dpdk pool: {} mbufs of {} bytes (at least 1 mbuf of {} bytes: headroom {} + 512)",
                config.num_mbufs,
                config.data_room,
                u32::from(headroom) + 512,
                headroom
            )));
        }
        // Unique in the process: mempool names are global to the EAL.
        let name = format!("fp_pool{}", POOL_SEQ.fetch_add(1, Ordering::Relaxed));
        let cname = CString::new(name.clone())
            .map_err(|_| IoError::Config("dpdk pool name contains NUL".into()))?;
        let n = config.num_mbufs as usize;
        let mut table: Vec<*mut RteMbuf> = vec![std::ptr::null_mut(); n];
        let mut buf_addrs: Vec<*mut c_void> = vec![std::ptr::null_mut(); n];
        // SAFETY: `cname` is NUL-terminated; `table` and `buf_addrs` hold `num_mbufs`
        // entries each, the most the shim writes. The EAL is initialised (`_eal`).
        let mp = unsafe {
            ffi::fp_dpdk_pool_create(
                cname.as_ptr(),
                config.num_mbufs,
                config.cache,
                config.data_room,
                table.as_mut_ptr(),
                buf_addrs.as_mut_ptr(),
            )
        };
        if mp.is_null() {
            let err = ffi::errno();
            return Err(IoError::Config(format!(
                "dpdk: creating a pool of {} mbufs of {} bytes: {} (is the EAL memory, -m, \
                 large enough?)",
                config.num_mbufs,
                config.data_room,
                ffi::strerror(err)
            )));
        }
        Ok(DpdkPool {
            inner: Arc::new(PoolInner {
                mp,
                table,
                buf_addrs: buf_addrs.into_iter().map(|p| p.cast::<u8>()).collect(),
                frame_size: usize::from(config.data_room),
                name,
            }),
        })
    }

    /// Number of mbufs.
    pub fn num_mbufs(&self) -> u32 {
        // The table was built from a u32 count.
        self.inner.table.len() as u32
    }

    /// Mbufs in the pool now (free ones, in the ring and in lcore caches); equal to
    /// [`DpdkPool::num_mbufs`] when nothing holds any, the leak check.
    pub fn available(&self) -> u32 {
        // SAFETY: `mp` is a live mempool (freed only when the last Arc goes).
        unsafe { ffi::fp_dpdk_pool_avail(self.inner.mp) }
    }

    /// Bytes in front of the packet in a received mbuf (DPDK's RTE_PKTMBUF_HEADROOM),
    /// the room for encapsulation headers without a copy.
    pub fn headroom(&self) -> u16 {
        // SAFETY: returns a compile-time constant.
        unsafe { ffi::fp_dpdk_headroom() }
    }

    pub(crate) fn inner_frame_size(&self) -> usize {
        self.inner.frame_size
    }

    /// The pool's frames as the engine sees them.
    pub fn frames(&self) -> DpdkFrames {
        DpdkFrames {
            pool: self.inner.clone(),
        }
    }
}

/// The data buffers of a [`DpdkPool`]'s mbufs as [`FrameMemory`]: frame `i` is the whole
/// data buffer of mbuf `i`, and a packet's offset in it is the mbuf's `data_off`.
pub struct DpdkFrames {
    pool: Arc<PoolInner>,
}

impl std::fmt::Debug for DpdkFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkFrames")
            .field("pool", &self.pool.name)
            .finish()
    }
}

impl FrameMemory for DpdkFrames {
    #[inline]
    fn frame_size(&self) -> usize {
        self.pool.frame_size
    }

    #[inline]
    fn num_frames(&self) -> u32 {
        self.pool.table.len() as u32
    }

    #[inline]
    fn frame(&self, buf: BufIdx) -> &[u8] {
        let p = self.pool.buf_addrs[buf as usize];
        // SAFETY: `p` is the start of mbuf `buf`'s data buffer of `frame_size` bytes,
        // alive as long as the pool (kept by `self.pool`). Only the frame's owner reads
        // or writes it (the frame-ownership rule of the module docs).
        unsafe { std::slice::from_raw_parts(p, self.pool.frame_size) }
    }

    #[inline]
    fn frame_mut(&mut self, buf: BufIdx) -> &mut [u8] {
        let p = self.pool.buf_addrs[buf as usize];
        // SAFETY: as in `frame`; `&mut self` keeps this backend's frames from being
        // borrowed twice, and frames owned elsewhere are not touched by contract.
        unsafe { std::slice::from_raw_parts_mut(p, self.pool.frame_size) }
    }
}
