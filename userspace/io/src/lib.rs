//! Packet I/O backends for the ferroplane vector engine.
//!
//! Every backend owns one packet memory (a pool of fixed-size frames, e.g. an
//! AF_XDP UMEM) and a set of *ports* (one interface queue each). The engine
//! only ever sees frame indices ([`BufIdx`]) and descriptors ([`Desc`]);
//! ownership of a frame moves with its index: a frame received by
//! [`PacketIo::rx_burst`] or allocated by [`PacketIo::alloc`] belongs to the
//! caller until it is handed back through [`PacketIo::tx_burst`] (accepted
//! frames) or [`PacketIo::free`].
//!
//! Backends:
//! - [`MemIo`]: frames in a `Vec`, packets injected and collected by the
//!   caller; for engine unit tests and benchmarks (no system calls).
//! - [`XskIo`]: AF_XDP sockets sharing one UMEM across all ports (devices),
//!   so a frame received on one port can be sent on another without a copy.
//! - `dpdk::DpdkIo` (cargo feature `dpdk`): DPDK poll-mode drivers, frames are the
//!   numbered mbufs of one mempool.
//! - [`HybridIo`]: two backends as one (the pods' AF_XDP sockets and a DPDK uplink): one
//!   frame index space over both pools, a copy when a frame leaves through the other
//!   backend, and the uplink's exception path to the host ([`steer`]).
//! - [`TunDevice`] is not a [`PacketIo`]: it hands IPv4 packets to the host
//!   kernel (punt path) and, through a [`TunReader`], the host's own packets the
//!   kernel routes to it (its traffic to service addresses) to the engine.

#![deny(missing_docs)]

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod ethtool;
mod hybrid;
mod mem;
pub mod steer;
pub mod sys;
mod tun;
mod xsk;

pub use hybrid::{ExceptionPath, HybridIo, HybridStats};
pub use mem::{MemFrames, MemIo};
pub use tun::{TunDevice, TunReader};
pub use xsk::{
    OpenPort, PoolStats, Waker, XskConfig, XskIo, XskKernelStats, XskMemory, XskOpener,
    XskPortStats, MIN_FILL_TARGET, MIN_PORT_CAP,
};

use std::time::Duration;

/// Index of a frame in the backend's packet memory.
pub type BufIdx = u32;

/// Index of a port (an interface queue) served by a backend.
pub type PortId = u16;

/// A packet inside a frame: `len` bytes starting `offset` bytes into frame `buf`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Frame index.
    pub buf: BufIdx,
    /// Offset of the first packet byte from the start of the frame.
    pub offset: u16,
    /// Packet length in bytes.
    pub len: u16,
}

/// Errors of I/O backends.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A system call failed.
    #[error("{op}: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Bad configuration or argument.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The AF_XDP library reported an error.
    #[error("af_xdp: {0}")]
    Xsk(String),
}

/// The frames of a backend, addressable by index.
pub trait FrameMemory {
    /// Size of one frame in bytes.
    fn frame_size(&self) -> usize;
    /// Number of frames.
    fn num_frames(&self) -> u32;
    /// The whole frame `buf` (panics only if `buf >= num_frames()`, a caller bug).
    fn frame(&self, buf: BufIdx) -> &[u8];
    /// The whole frame `buf`, writable.
    fn frame_mut(&mut self, buf: BufIdx) -> &mut [u8];
}

/// A backend whose frames can also be read through a shared borrow (what [`HybridIo`]
/// needs to give the engine one memory over two backends).
pub trait FramesRef: PacketIo {
    /// The backend's packet memory, read-only.
    fn memory_ref(&self) -> &Self::Memory;
}

/// A packet I/O backend: a frame pool plus ports.
pub trait PacketIo {
    /// The backend's packet memory.
    type Memory: FrameMemory;

    /// Access to the frames.
    fn memory(&mut self) -> &mut Self::Memory;
    /// Number of ports; valid ports are `0..num_ports()`.
    fn num_ports(&self) -> usize;
    /// Receive up to `out.len()` packets from `port`; returns how many were written.
    fn rx_burst(&mut self, port: PortId, out: &mut [Desc]) -> usize;
    /// Queue packets for transmission on `port`. Returns how many (a prefix of
    /// `pkts`) were accepted; those frames now belong to the backend. The rest
    /// still belong to the caller (who usually frees them and counts a drop).
    fn tx_burst(&mut self, port: PortId, pkts: &[Desc]) -> usize;
    /// Allocate up to `out.len()` free frames; returns how many.
    fn alloc(&mut self, out: &mut [BufIdx]) -> usize;
    /// Return frames to the pool.
    fn free(&mut self, bufs: &[BufIdx]);
    /// Housekeeping after a round of bursts: kick transmission, reap completed
    /// frames back into the pool, refill receive (fill) rings.
    fn flush(&mut self) -> Result<(), IoError>;
    /// Block until some port may have packets to receive, or `timeout` passes.
    fn wait(&mut self, timeout: Duration) -> Result<(), IoError>;
    /// Errors of single ports so far (a port with an error is reset by the backend,
    /// which carries on with the others); 0 for backends without per-port errors.
    fn port_errors(&self) -> u64 {
        0
    }
}
