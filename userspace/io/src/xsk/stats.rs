//! What an [`XskIo`] reports: where the pool's frames are, each port's counters, and the
//! kernel's `XDP_STATISTICS` of a port socket.

use super::open::xsk_err;
use super::{Owner, XskIo};
use crate::{IoError, PortId};

/// Where frames are, summed over the pool (see [`XskIo::pool_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Frames in the UMEM.
    pub total: u32,
    /// In the free pool.
    pub free: u32,
    /// Owned by the caller (received or allocated, not sent or freed yet).
    pub user: u32,
    /// Given to fill rings, or received by the kernel and not read yet.
    pub fill: u32,
    /// In TX rings or waiting for their completion.
    pub tx: u32,
}

/// Counters of one port, kept by [`XskIo`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskPortStats {
    /// Packets returned by `rx_burst`.
    pub rx_packets: u64,
    /// Bytes returned by `rx_burst`.
    pub rx_bytes: u64,
    /// Packets accepted by `tx_burst`.
    pub tx_packets: u64,
    /// Bytes accepted by `tx_burst`.
    pub tx_bytes: u64,
    /// Packets `tx_burst` refused because the TX ring was full.
    pub tx_ring_full: u64,
    /// Descriptors `tx_burst` refused as invalid (frame not owned by the
    /// caller, empty, or not inside its frame).
    pub tx_invalid: u64,
    /// `sendto` wake-ups issued for TX.
    pub tx_kicks: u64,
    /// RX or completion descriptors naming a frame this port did not own
    /// (never expected; skipped).
    pub ring_invalid: u64,
    /// Frames currently in this port's fill/RX rings.
    pub fill_frames: u32,
    /// Frames this port's fill ring is topped up to now: the configured `idle_fill`
    /// (idle) up to `fill_target` (busy), within the port's share of the pool; see
    /// [`XskConfig::fill_target`](super::XskConfig::fill_target).
    pub fill_target: u32,
    /// Times this port's fill target grew because the port was busy.
    pub fill_grown: u64,
    /// Frames currently in this port's TX ring or awaiting completion.
    pub tx_in_flight: u32,
    /// Packets `tx_burst` refused because the port held its share of the pool
    /// ([`XskIo::port_cap`]), e.g. a port whose device vanished and never completes.
    pub tx_over_cap: u64,
    /// Unexpected errors of this port's socket (e.g. an errno of its TX wake-up); each
    /// one marks the port down for a back-off, then it is retried.
    pub errors: u64,
    /// The errno of the last of those errors (0: none).
    pub last_errno: i32,
    /// The port is down after an error: it sends nothing until its retry.
    pub down: bool,
    /// Times a port came back up after an error.
    pub resets: u64,
}

/// The kernel's `XDP_STATISTICS` of one port socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskKernelStats {
    /// Packets dropped for reasons other than the two below.
    pub rx_dropped: u64,
    /// Invalid descriptors seen on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors seen on the TX ring.
    pub tx_invalid_descs: u64,
    /// Packets dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a packet arrived.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the TX ring was empty when the kernel looked.
    pub tx_ring_empty_descs: u64,
}

impl XskIo {
    /// Counters of `port`, if it exists.
    pub fn port_stats(&self, port: PortId) -> Option<XskPortStats> {
        self.port(port).map(|p| p.stats)
    }

    /// The kernel's statistics for the socket of `port`.
    pub fn kernel_stats(&self, port: PortId) -> Result<XskKernelStats, IoError> {
        let p = self
            .port(port)
            .ok_or_else(|| IoError::Config(format!("no port {port}")))?;
        let s = p
            .user
            .statistics_v2()
            .map_err(|e| xsk_err("XDP_STATISTICS", &p.ifname, e))?;
        Ok(XskKernelStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }

    /// Where all frames are (computed from the per-frame owner table).
    pub fn pool_stats(&self) -> PoolStats {
        let mut s = PoolStats {
            total: self.cfg.num_frames,
            ..PoolStats::default()
        };
        for o in &self.owner {
            match o {
                Owner::Free => s.free += 1,
                Owner::User => s.user += 1,
                Owner::Fill(_) => s.fill += 1,
                Owner::Tx(_) => s.tx += 1,
            }
        }
        s
    }
}
