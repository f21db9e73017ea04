//! The sizes of an [`XskIo`](super::XskIo): frames, rings, fill targets, ports to
//! expect, and the constants that bound a port's share of the pool.

/// Sizes of an [`XskIo`](super::XskIo). Ring sizes must be powers of two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Frames in the shared UMEM (the whole pool, all ports together).
    pub num_frames: u32,
    /// Bytes per frame: 2048 or 4096 (aligned chunk mode).
    pub frame_size: u32,
    /// Extra headroom before the kernel's 256 bytes of XDP headroom; received packets start at
    /// `headroom + 256` (see [`XskIo::rx_offset`](super::XskIo::rx_offset)).
    pub headroom: u32,
    /// Fill ring entries per port.
    pub fill_size: u32,
    /// Completion ring entries per port.
    pub comp_size: u32,
    /// RX ring entries per port.
    pub rx_size: u32,
    /// TX ring entries per port.
    pub tx_size: u32,
    /// The most frames a busy port's fill ring is kept topped up to (at most `fill_size`). A new or
    /// idle port's fill ring holds `idle_fill`; a port that drains at least half of its fill ring
    /// since its last refill jumps to this target and is refilled at once (in
    /// [`PacketIo::rx_burst`](crate::PacketIo::rx_burst), before its packets are processed), while
    /// more than a quarter of the pool (beyond the floors kept for ports not open yet,
    /// [`XskIo::floor_reserve`](super::XskIo::floor_reserve)) is free; a port refilled while less
    /// is free halves its target again, down to `idle_fill` (see
    /// [`XskPortStats::fill_target`](super::XskPortStats::fill_target)). Both stay within the
    /// port's share of the pool ([`XskIo::port_cap_of`](super::XskIo::port_cap_of)).
    pub fill_target: u32,
    /// Frames in the fill ring of a new or idle port (at most `fill_target`): what the
    /// kernel can receive for it before the worker, asleep or busy elsewhere, reads and
    /// refills (then the port jumps to `fill_target`). The kernel drops what arrives on an
    /// empty fill ring, and a veth's XDP path runs in the sender's context: an unpaced
    /// burst from a pod lands while the worker wakes. With a real-time worker (the agent's
    /// default), which preempts the sender once woken, the default, 128, takes a
    /// 1,000-packet burst whole (a worker under the normal scheduler waits for the
    /// sender's time slice and needs about the whole burst, 1024). It costs frames: every
    /// port holds that many while its share of the pool and the floors of the ports still
    /// to come ([`XskConfig::max_ports`]) allow.
    pub idle_fill: u32,
    /// The most ports (sockets: pod veths, uplink queues) this backend is expected to
    /// serve at once. Every port not open yet, up to this many, has [`MIN_FILL_TARGET`]
    /// frames of the free pool kept for its fill ring: frames above that floor go to fill
    /// rings (idle fills, busy growth) only while the pool keeps those floors, so ports
    /// opened late are never left without frames by ports opened early (the kernel cannot
    /// hand back what a fill ring holds). More ports may open; they share what is left.
    pub max_ports: u32,
    /// Device whose queue 0 anchors the UMEM (it receives nothing).
    pub anchor_ifname: String,
}

/// The least fill target of a port, however small its share of the pool (or
/// `fill_target`, if that is smaller).
pub const MIN_FILL_TARGET: u32 = 32;

/// The least a port may hold (fill/RX plus TX/completion rings) whatever the number of
/// ports; see [`XskIo::port_cap`](super::XskIo::port_cap).
pub const MIN_PORT_CAP: u32 = 4 * MIN_FILL_TARGET;

/// Frames of a port's cap kept for TX beyond its fill target (a full vector), when its
/// cap is at least twice that; a smaller cap keeps half for TX.
pub const TX_ROOM: u32 = 256;

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            // 32 MiB. Each socket on the UMEM costs the kernel 128 bytes per frame (see
            // `XskIo::opener`), so the pool is kept small: with a real-time worker a
            // 128-frame idle fill takes a 1,000-packet burst (see `idle_fill`).
            num_frames: 16384,
            frame_size: 2048,
            headroom: 0,
            // Twice the largest fill target: the kernel publishes how far it has read
            // the fill ring lazily, so a port drained by a burst is refilled in full at once.
            fill_size: 4096,
            comp_size: 2048,
            rx_size: 2048,
            tx_size: 2048,
            fill_target: 2048,
            idle_fill: 128,
            // kubelet's default maxPods (110), up to 16 uplink queues, and the spare.
            max_ports: 128,
            anchor_ifname: "lo".to_string(),
        }
    }
}
