//! Data of `show_buffers`: the AF_XDP frame pool (UMEM) and each port's share of it,
//! like VPP's `show buffers`.

use serde::{Deserialize, Serialize};

/// Where the frames of the engine's UMEM are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuffersReport {
    /// Frames in the UMEM.
    pub total: u32,
    /// Bytes per frame.
    pub frame_size: u32,
    /// Frames in the free pool.
    pub free: u32,
    /// Frames the engine holds (packets being processed).
    pub user: u32,
    /// Frames in fill rings (or received by the kernel and not read yet).
    pub fill: u32,
    /// Frames in TX rings or waiting for their completion.
    pub tx: u32,
    /// The fill target a busy port grows to; idle ports keep a small one.
    pub max_fill_target: u32,
    /// Ports of deleted pods whose sockets are still being closed (off the engine's
    /// thread); their frames are counted in `fill` and `tx` until then.
    #[serde(default)]
    pub closing_ports: u32,
    /// Ports closed that way since the agent started.
    #[serde(default)]
    pub closed_ports: u64,
    /// One entry per AF_XDP port.
    pub ports: Vec<PortBuffers>,
}

/// One AF_XDP port's frames and the kernel's drop counters for its socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBuffers {
    /// The engine's port id.
    pub port: u16,
    /// Kernel interface name.
    pub interface: String,
    /// Device queue.
    pub queue: u32,
    /// Packets the engine received on this port (this queue of the interface).
    #[serde(default)]
    pub rx_packets: u64,
    /// Packets the engine sent on this port.
    #[serde(default)]
    pub tx_packets: u64,
    /// Frames the fill ring is topped up to now (grows with traffic).
    pub fill_target: u32,
    /// Frames in the fill and RX rings.
    pub fill_frames: u32,
    /// Times the fill target grew because the port was busy.
    pub fill_grown: u64,
    /// Frames in the TX ring or awaiting completion.
    pub tx_in_flight: u32,
    /// Kernel: packets that found the fill ring empty (dropped).
    pub rx_fill_ring_empty: u64,
    /// Kernel: packets dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Kernel: packets dropped for other reasons.
    pub rx_dropped: u64,
}
