//! AF_XDP backend: one UMEM shared by every port (interface queue).
//!
//! # Shared UMEM layout
//!
//! The UMEM is registered on an *anchor* socket that is bound (copy mode,
//! need-wakeup) to queue 0 of a device that never receives redirected
//! traffic (`lo` by default). Every port is its own AF_XDP socket, bound
//! with `XDP_SHARED_UMEM` to the anchor; because each port is a different
//! (device, queue) pair, the kernel gives each one its own fill and
//! completion rings (kernel >= 5.10). The anchor exists so that ports can
//! be removed in any order: the socket that registered a UMEM cannot be
//! closed while others share it, and no socket can ever be unbound.
//! Shared sockets inherit the anchor's bind mode, so all ports run in copy
//! mode (veth has no zero-copy anyway).
//!
//! # Frame ownership
//!
//! Every frame has one owner at any time: the free pool, the caller (the
//! engine), the fill/RX rings of one port, or the TX/completion rings of
//! one port. Frames received on port A come from A's fill ring; frames sent
//! on port B come back on B's completion ring, whatever port they were
//! received on, so forwarding between ports never copies. Removing a port
//! closes its socket and returns everything that port's rings held.
//!
//! # Closing ports off the owner's thread
//!
//! Closing an AF_XDP socket waits for an RCU grace period in the kernel
//! (`synchronize_net`, about 12 ms here), and the thread that owns the
//! [`XskIo`] is the engine's worker, which forwards nothing meanwhile.
//! [`XskIo::close_port`] therefore hands the port to a reaper thread that
//! closes it; until the reaper reports back, the port's id and every frame
//! its rings held stay reserved (the kernel may still write into them), and
//! then they return to the pool (in [`PacketIo::flush`], or
//! [`XskIo::reap_closed`]). [`XskIo::remove_port`] closes in place.

use std::ffi::CString;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::{mpsc, Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

use crate::{BufIdx, Desc, FrameMemory, IoError, PacketIo, PortId};

/// Headroom the kernel reserves in front of received packets (`XDP_PACKET_HEADROOM`).
const XDP_PACKET_HEADROOM: u32 = 256;
/// Descriptors the kernel transmits per `sendto` in copy mode (`TX_BATCH_SIZE`);
/// it answers EAGAIN while more are queued.
const KERNEL_TX_BATCH: u32 = 32;
/// How long `add_port` retries while the kernel still holds a removed
/// socket's queue (EBUSY).
const BIND_BUSY_RETRY: Duration = Duration::from_secs(2);
/// Completion descriptors read per pass.
const COMP_BATCH: u32 = 256;

/// Sizes of an [`XskIo`]. Ring sizes must be powers of two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Frames in the shared UMEM (the whole pool, all ports together).
    pub num_frames: u32,
    /// Bytes per frame: 2048 or 4096 (aligned chunk mode).
    pub frame_size: u32,
    /// Extra headroom before the kernel's 256 bytes of XDP headroom;
    /// received packets start at `headroom + 256` (see [`XskIo::rx_offset`]).
    pub headroom: u32,
    /// Fill ring entries per port.
    pub fill_size: u32,
    /// Completion ring entries per port.
    pub comp_size: u32,
    /// RX ring entries per port.
    pub rx_size: u32,
    /// TX ring entries per port.
    pub tx_size: u32,
    /// The most frames a busy port's fill ring is kept topped up to (at most
    /// `fill_size`). A new or idle port's fill ring holds `idle_fill`; a port that drains
    /// at least half of its fill ring since its last refill jumps to this target and is
    /// refilled at once (in [`PacketIo::rx_burst`], before its packets are processed),
    /// while more than a quarter of the pool (beyond the floors kept for ports not open
    /// yet, [`XskIo::floor_reserve`]) is free; a port refilled while less is free halves
    /// its target again, down to `idle_fill` (see [`XskPortStats::fill_target`]). Both
    /// stay within the port's share of the pool ([`XskIo::port_cap_of`]).
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
/// ports; see [`XskIo::port_cap`].
pub const MIN_PORT_CAP: u32 = 4 * MIN_FILL_TARGET;

/// Frames of a port's cap kept for TX beyond its fill target (a full vector), when its
/// cap is at least twice that; a smaller cap keeps half for TX.
pub const TX_ROOM: u32 = 256;

/// First back-off of a port after an error; it doubles per failed retry up to
/// [`PORT_RETRY_MAX`].
const PORT_RETRY_MIN: Duration = Duration::from_millis(10);
/// Longest back-off of a failing port.
const PORT_RETRY_MAX: Duration = Duration::from_secs(1);

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
    /// [`XskConfig::fill_target`].
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

/// The shared UMEM: an anonymous mapping of `num_frames * frame_size` bytes.
#[derive(Debug)]
pub struct XskMemory {
    base: NonNull<u8>,
    len: usize,
    frame_size: usize,
    num_frames: u32,
}

impl XskMemory {
    fn map(num_frames: u32, frame_size: u32) -> Result<Self, IoError> {
        let len = (num_frames as usize)
            .checked_mul(frame_size as usize)
            .ok_or_else(|| IoError::Config("UMEM size overflows".into()))?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // affected. The result is checked against MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(IoError::Os {
                op: "mmap UMEM",
                source: io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| IoError::Os {
            op: "mmap UMEM",
            source: io::Error::other("null mapping"),
        })?;
        Ok(XskMemory {
            base,
            len,
            frame_size: frame_size as usize,
            num_frames,
        })
    }

    fn area(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.base, self.len)
    }
}

impl Drop for XskMemory {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping created in `map`,
        // unmapped only here. No slice into it outlives `self` (they borrow
        // it), and the kernel keeps its own page references while a socket
        // still uses the UMEM (XskIo drops all sockets before this).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl FrameMemory for XskMemory {
    #[inline]
    fn frame_size(&self) -> usize {
        self.frame_size
    }

    #[inline]
    fn num_frames(&self) -> u32 {
        self.num_frames
    }

    #[inline]
    fn frame(&self, buf: BufIdx) -> &[u8] {
        assert!(buf < self.num_frames, "frame {buf} out of range");
        // SAFETY: `buf < num_frames`, so the range lies inside the live
        // mapping owned by `self`, and the shared borrow of `self` keeps
        // `frame_mut` from aliasing it. The kernel writes only into frames
        // it owns (fill ring); by the `PacketIo` ownership contract the
        // caller reads only frames it owns, which the kernel does not touch.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(buf as usize * self.frame_size),
                self.frame_size,
            )
        }
    }

    #[inline]
    fn frame_mut(&mut self, buf: BufIdx) -> &mut [u8] {
        assert!(buf < self.num_frames, "frame {buf} out of range");
        // SAFETY: in bounds as in `frame`; the exclusive borrow of `self`
        // makes this the only slice into the mapping. The kernel reads or
        // writes only frames it owns (fill/TX rings), not the caller's.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.as_ptr().add(buf as usize * self.frame_size),
                self.frame_size,
            )
        }
    }
}

// SAFETY: `XskMemory` exclusively owns its mapping (like a `Box<[u8]>`);
// access goes through `&self`/`&mut self` borrows, so moving it to, or
// sharing it with, another thread is as safe as for a boxed slice.
unsafe impl Send for XskMemory {}
// SAFETY: see `Send`; `&XskMemory` only hands out shared slices.
unsafe impl Sync for XskMemory {}

/// Who holds a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Free,
    User,
    Fill(PortId),
    Tx(PortId),
}

/// One AF_XDP socket bound to (device, queue).
struct Port {
    rx: RingRx,
    tx: RingTx,
    /// This (device, queue)'s own fill and completion rings.
    fcq: DeviceQueue,
    user: User,
    _socket: Socket,
    fd: RawFd,
    ifname: String,
    queue_id: u32,
    stats: XskPortStats,
    health: PortHealth,
    /// Shares of the pool this port is entitled to (1 unless [`XskIo::set_port_weight`]).
    weight: u32,
    /// The most frames it may hold now ([`XskIo::port_cap_of`]).
    cap: u32,
    /// Test hook ([`XskIo::inject_port_error`]): the next TX wake-up fails with this errno.
    inject_errno: Option<i32>,
}

/// Error state of one port: an unexpected error marks it down for a back-off (doubling
/// from [`PORT_RETRY_MIN`] to [`PORT_RETRY_MAX`]), then it is retried; the worker that
/// owns the [`XskIo`] carries on with the other ports meanwhile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PortHealth {
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl PortHealth {
    /// An error (`errno`) at `now`: counted, and the port is down until its back-off ends.
    fn failed(&mut self, s: &mut XskPortStats, errno: i32, now: Instant) {
        s.errors += 1;
        s.last_errno = errno;
        s.down = true;
        self.backoff = if self.backoff.is_zero() {
            PORT_RETRY_MIN
        } else {
            (self.backoff * 2).min(PORT_RETRY_MAX)
        };
        self.retry_at = Some(now + self.backoff);
    }

    /// Whether the port may be used at `now`: it is up, or down and due for its retry.
    fn usable(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// The port worked (a retry succeeded): up again.
    fn succeeded(&mut self, s: &mut XskPortStats) {
        if s.down {
            s.down = false;
            s.resets += 1;
        }
        self.retry_at = None;
        self.backoff = Duration::ZERO;
    }
}

/// The socket that registered the UMEM, bound to the anchor device.
struct Anchor {
    _user: User,
    _fcq: DeviceQueue,
    _socket: Socket,
}

/// AF_XDP [`PacketIo`] backend: ports added at run time share one frame pool.
///
/// The XDP program that redirects into the sockets is not loaded here: put
/// the fd returned by [`XskIo::add_port`] into the XSKMAP.
pub struct XskIo {
    // Field order is drop order: sockets and their rings first, the UMEM
    // registration next, the memory last.
    ports: Vec<Option<Port>>,
    _anchor: Anchor,
    umem: Arc<SharedUmem>,
    owner: Vec<Owner>,
    /// Free frames, used as a stack (capacity `num_frames`: never reallocates).
    free: Vec<BufIdx>,
    /// `wake` first, then every port's socket.
    pollfds: Vec<libc::pollfd>,
    pollfds_stale: bool,
    /// An eventfd in the poll set: [`Waker::wake`] ends a [`PacketIo::wait`] early.
    wake: Arc<OwnedFd>,
    cfg: XskConfig,
    rx_offset: u16,
    /// Ports handed to the reaper and not closed yet: their ids and frames stay reserved.
    closing: Vec<PortId>,
    /// Ports closed by the reaper since the start.
    closed: u64,
    /// Started by the first [`XskIo::close_port`]; joined on drop, before the UMEM goes.
    reaper: Option<Reaper>,
    /// The most frames a port of weight 1 may hold now ([`XskIo::port_cap`]).
    port_cap: u32,
    /// Free frames kept for the fill-ring floors of ports not open yet
    /// ([`XskIo::floor_reserve`]).
    floor_reserve: usize,
    /// Errors of single ports since the start ([`PacketIo::port_errors`]).
    port_errors: u64,
    mem: XskMemory,
}

/// The thread that closes ports' sockets for [`XskIo::close_port`].
struct Reaper {
    jobs: Option<mpsc::Sender<(PortId, Port)>>,
    done: mpsc::Receiver<PortId>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    fn start(waker: Waker) -> Result<Reaper, IoError> {
        let (jobs, rx) = mpsc::channel::<(PortId, Port)>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fp-xsk-reaper".into())
            .spawn(move || {
                for (id, port) in rx {
                    // Unbinds the socket: returns after the kernel's grace period, when
                    // nothing writes into the port's frames any more.
                    drop(port);
                    if done_tx.send(id).is_err() {
                        break;
                    }
                    waker.wake();
                }
            })
            .map_err(|source| IoError::Os {
                op: "spawn the AF_XDP reaper thread",
                source,
            })?;
        Ok(Reaper {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Close what is queued and wait for the thread.
    fn finish(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for XskIo {
    fn drop(&mut self) {
        // Sockets being closed use the UMEM: they must be gone before it is.
        if let Some(r) = &mut self.reaper {
            r.finish();
        }
    }
}

// SAFETY: `XskIo` exclusively owns everything its raw pointers reach: the
// UMEM mapping (`XskMemory`), and, through xdpilone's `Umem`, `User`,
// `DeviceQueue` and ring values, the ring mappings and socket fds of its own
// sockets. Nothing is shared with other values or tied to a thread (no
// thread-locals; xdpilone's internal `Arc`s are only shared among the values
// stored here), and every use needs `&mut self`, so moving it to another
// thread (e.g. an engine worker) is sound. It is deliberately not `Sync`.
unsafe impl Send for XskIo {}

fn xsk_err(op: &str, what: &str, err: xdpilone::Errno) -> IoError {
    // Debug shows the errno number as well as its text.
    IoError::Xsk(format!("{op} {what}: {err:?}"))
}

/// A failed port setup; `busy` when the kernel answered EBUSY.
struct OpenError {
    error: IoError,
    busy: bool,
}

impl OpenError {
    fn new(op: &str, what: &str, err: xdpilone::Errno) -> Self {
        OpenError {
            busy: err.get_raw() == libc::EBUSY,
            error: xsk_err(op, what, err),
        }
    }
}

fn ring_size(name: &str, n: u32) -> Result<NonZeroU32, IoError> {
    match NonZeroU32::new(n) {
        Some(v) if n.is_power_of_two() => Ok(v),
        _ => Err(IoError::Config(format!(
            "{name} must be a power of two, got {n}"
        ))),
    }
}

fn if_info(ifname: &str, queue_id: u32) -> Result<IfInfo, IoError> {
    let cname = CString::new(ifname)
        .map_err(|_| IoError::Config(format!("interface name {ifname:?} contains NUL")))?;
    let mut info = IfInfo::invalid();
    info.from_name(&cname)
        .map_err(|e| xsk_err("interface", ifname, e))?;
    info.set_queue(queue_id);
    Ok(info)
}

/// xdpilone's [`Umem`], shared by an [`XskIo`] with its [`XskOpener`]s.
struct SharedUmem(Umem);

// SAFETY: `Umem` is not `Send`/`Sync` only because it keeps a raw pointer to the UMEM
// area, which xdpilone reads when registering the area (in `Umem::new`, before the value
// is shared) and in `Umem::frame` (never called here). The methods used through a shared
// `&SharedUmem` (`fq_cq`, `rx_tx`, `bind`) read the config and the registration socket's
// fd (behind an `Arc`) and update xdpilone's set of taken (device, queue) pairs, which is
// behind a lock (`ControlSet: Send + Sync`). So using it from several threads is sound.
// The area itself is owned by `XskMemory` and only reached through `XskIo`.
unsafe impl Send for SharedUmem {}
// SAFETY: see `Send`.
unsafe impl Sync for SharedUmem {}

/// Opens AF_XDP sockets on an [`XskIo`]'s UMEM from any thread (see [`XskIo::opener`]).
#[derive(Clone)]
pub struct XskOpener {
    /// Weak: an opener does not keep a dropped backend's UMEM registered.
    umem: Weak<SharedUmem>,
    cfg: XskConfig,
}

impl std::fmt::Debug for XskOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskOpener").finish_non_exhaustive()
    }
}

/// A socket opened, given its rings and bound by [`XskOpener::open`], that serves nothing
/// yet: hand it to [`XskIo::install_port`] (dropping it closes the socket).
pub struct OpenPort {
    port: Port,
    /// The UMEM it shares (address of the backend's `SharedUmem`).
    umem: usize,
}

impl std::fmt::Debug for OpenPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenPort")
            .field("ifname", &self.port.ifname)
            .field("queue_id", &self.port.queue_id)
            .field("fd", &self.port.fd)
            .finish_non_exhaustive()
    }
}

impl XskOpener {
    /// Create an AF_XDP socket on `ifname` queue `queue_id`, map its fill, completion,
    /// RX and TX rings and bind it to the shared UMEM. Nothing is received before the
    /// port is installed: its fill ring stays empty, and nothing redirects to it until its
    /// fd is in an XSKMAP. The fill and completion rings are this socket's own (one pair
    /// per device queue); the [`XskIo`] that installs it is their only user afterwards.
    /// Retries while the kernel still holds a removed socket's queue (EBUSY).
    pub fn open(&self, ifname: &str, queue_id: u32) -> Result<OpenPort, IoError> {
        let umem = self
            .umem
            .upgrade()
            .ok_or_else(|| IoError::Config("the AF_XDP backend is gone".into()))?;
        let info = if_info(ifname, queue_id)?;
        // The kernel releases a closed socket's hold on its (device, queue)
        // from a work queue, so re-adding a queue right after `remove_port`
        // can briefly see EBUSY: retry for a while.
        let deadline = Instant::now() + BIND_BUSY_RETRY;
        let port = loop {
            match self.open_port(&umem.0, &info, ifname, queue_id) {
                Err(OpenError { busy: true, .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.error),
                Ok(port) => break port,
            }
        };
        Ok(OpenPort {
            port,
            umem: Arc::as_ptr(&umem) as usize,
        })
    }

    /// Create, map and bind one port socket sharing `umem`.
    fn open_port(
        &self,
        umem: &Umem,
        info: &IfInfo,
        ifname: &str,
        queue_id: u32,
    ) -> Result<Port, OpenError> {
        let what = format!("{ifname} queue {queue_id}");
        let socket = Socket::new(info).map_err(|e| OpenError::new("socket", &what, e))?;
        let fcq = umem
            .fq_cq(&socket)
            .map_err(|e| OpenError::new("fill/completion rings", &what, e))?;
        let sizes = SocketConfig {
            rx_size: NonZeroU32::new(self.cfg.rx_size),
            tx_size: NonZeroU32::new(self.cfg.tx_size),
            // A socket sharing a UMEM takes its mode from the anchor; the
            // kernel refuses flags here (xdpilone adds XDP_SHARED_UMEM).
            bind_flags: 0,
        };
        let user = umem
            .rx_tx(&socket, &sizes)
            .map_err(|e| OpenError::new("rx/tx rings", &what, e))?;
        let rx = user
            .map_rx()
            .map_err(|e| OpenError::new("map rx ring", &what, e))?;
        let tx = user
            .map_tx()
            .map_err(|e| OpenError::new("map tx ring", &what, e))?;
        umem.bind(&user)
            .map_err(|e| OpenError::new("bind (shared UMEM)", &what, e))?;
        let fd = user.as_raw_fd();
        Ok(Port {
            rx,
            tx,
            fcq,
            user,
            _socket: socket,
            fd,
            ifname: ifname.to_string(),
            queue_id,
            // The fill target is set when the port is installed, from its share.
            stats: XskPortStats::default(),
            health: PortHealth::default(),
            weight: 1,
            cap: MIN_PORT_CAP,
            inject_errno: None,
        })
    }
}

/// Wakes an [`XskIo`] sleeping in [`PacketIo::wait`] from another thread, e.g. after
/// queueing work for the thread that owns it (see [`XskIo::waker`]).
#[derive(Clone, Debug)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    /// Ends the current (or the next) `wait` of the backend at once.
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // An eventfd write fails only when the counter would overflow, i.e. the backend
        // has a wake-up pending anyway.
        // SAFETY: writes 8 bytes from a live local array to our own eventfd.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

fn new_eventfd() -> Result<OwnedFd, IoError> {
    // SAFETY: eventfd(2) takes no pointers; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(IoError::Os {
            op: "eventfd",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl XskIo {
    /// A handle that ends this backend's `wait` from another thread.
    pub fn waker(&self) -> Waker {
        Waker {
            fd: self.wake.clone(),
        }
    }

    /// Map the UMEM and register it on the anchor socket.
    pub fn new(cfg: XskConfig) -> Result<Self, IoError> {
        if !(cfg.frame_size == 2048 || cfg.frame_size == 4096) {
            return Err(IoError::Config(format!(
                "frame_size must be 2048 or 4096, got {}",
                cfg.frame_size
            )));
        }
        let rx_offset = cfg.headroom.saturating_add(XDP_PACKET_HEADROOM);
        if rx_offset.saturating_add(1500) > cfg.frame_size {
            return Err(IoError::Config(format!(
                "headroom {} leaves less than 1500 bytes of a {}-byte frame",
                cfg.headroom, cfg.frame_size
            )));
        }
        if cfg.num_frames == 0 {
            return Err(IoError::Config("num_frames must not be 0".into()));
        }
        ring_size("fill_size", cfg.fill_size)?;
        ring_size("comp_size", cfg.comp_size)?;
        ring_size("rx_size", cfg.rx_size)?;
        ring_size("tx_size", cfg.tx_size)?;
        if cfg.fill_target > cfg.fill_size {
            return Err(IoError::Config(format!(
                "fill_target {} exceeds fill_size {}",
                cfg.fill_target, cfg.fill_size
            )));
        }
        if cfg.idle_fill > cfg.fill_target {
            return Err(IoError::Config(format!(
                "idle_fill {} exceeds fill_target {}",
                cfg.idle_fill, cfg.fill_target
            )));
        }

        let mem = XskMemory::map(cfg.num_frames, cfg.frame_size)?;
        let umem_cfg = UmemConfig {
            fill_size: cfg.fill_size,
            complete_size: cfg.comp_size,
            frame_size: cfg.frame_size,
            headroom: cfg.headroom,
            flags: 0,
        };
        // SAFETY: the area is a page-aligned private mapping of exactly this
        // length, owned by `mem`, which is declared last in `XskIo` and so
        // outlives the `Umem` and every socket using it.
        let umem = unsafe { Umem::new(umem_cfg, mem.area()) }
            .map_err(|e| xsk_err("register UMEM", "", e))?;

        let anchor_info = if_info(&cfg.anchor_ifname, 0)?;
        let what = format!("anchor {}", cfg.anchor_ifname);
        let socket =
            Socket::with_shared(&anchor_info, &umem).map_err(|e| xsk_err("socket", &what, e))?;
        let fcq = umem
            .fq_cq(&socket)
            .map_err(|e| xsk_err("fill/completion rings", &what, e))?;
        let user = umem
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: None,
                    tx_size: NonZeroU32::new(64),
                    bind_flags: SocketConfig::XDP_BIND_COPY | SocketConfig::XDP_BIND_NEED_WAKEUP,
                },
            )
            .map_err(|e| xsk_err("tx ring", &what, e))?;
        umem.bind(&user).map_err(|e| xsk_err("bind", &what, e))?;

        let mut free = Vec::with_capacity(cfg.num_frames as usize);
        free.extend((0..cfg.num_frames).rev());
        Ok(XskIo {
            ports: Vec::new(),
            _anchor: Anchor {
                _user: user,
                _fcq: fcq,
                _socket: socket,
            },
            owner: vec![Owner::Free; cfg.num_frames as usize],
            free,
            pollfds: Vec::new(),
            pollfds_stale: true,
            wake: Arc::new(new_eventfd()?),
            // Checked above: fits in the frame, hence in u16.
            rx_offset: rx_offset as u16,
            closing: Vec::new(),
            closed: 0,
            reaper: None,
            port_cap: (cfg.num_frames - cfg.num_frames / 4).max(MIN_PORT_CAP),
            floor_reserve: floor_reserve(&cfg, 0),
            port_errors: 0,
            umem: Arc::new(SharedUmem(umem)),
            cfg,
            mem,
        })
    }

    /// Open an AF_XDP socket on `ifname` queue `queue_id`, sharing the UMEM,
    /// and fill its fill ring. Returns the port and the socket fd to put
    /// into the XSKMAP (the fd stays owned by this `XskIo`; it is closed by
    /// [`XskIo::remove_port`] or on drop, which also removes it from any
    /// XSKMAP). A removed port's id may be reused. The same as
    /// [`XskOpener::open`] followed by [`XskIo::install_port`], on this thread.
    pub fn add_port(&mut self, ifname: &str, queue_id: u32) -> Result<(PortId, RawFd), IoError> {
        let open = self.opener().open(ifname, queue_id)?;
        self.install_port(open)
    }

    /// A handle that opens ports' sockets on this UMEM from another thread: creating a
    /// socket, its rings and binding it takes the kernel milliseconds (it allocates
    /// per-frame state for the whole UMEM), which the thread that owns the `XskIo` (the
    /// engine's worker) should not wait for. The ready socket is handed to
    /// [`XskIo::install_port`].
    pub fn opener(&self) -> XskOpener {
        XskOpener {
            umem: Arc::downgrade(&self.umem),
            cfg: self.cfg.clone(),
        }
    }

    /// Make a socket opened by [`XskOpener::open`] a port: it gets an id and its fill
    /// ring is filled. Cheap (no system call but the fill ring's wake-up); returns the port
    /// and its fd as [`XskIo::add_port`] does.
    pub fn install_port(&mut self, open: OpenPort) -> Result<(PortId, RawFd), IoError> {
        self.install_ports(vec![open])?
            .into_iter()
            .next()
            .ok_or_else(|| IoError::Config("no port installed".into()))
    }

    /// [`XskIo::install_port`] for the sockets of several RX queues of one interface: they
    /// get consecutive ids (the first free run long enough), in the order given, so that
    /// an XSKMAP laid out as `first id + rx queue` reaches each queue's socket. All or
    /// nothing: on error none is installed (and the sockets are closed).
    pub fn install_ports(&mut self, opens: Vec<OpenPort>) -> Result<Vec<(PortId, RawFd)>, IoError> {
        for open in &opens {
            if open.umem != Arc::as_ptr(&self.umem) as usize {
                return Err(IoError::Config(format!(
                    "{} queue {} was opened on another UMEM",
                    open.port.ifname, open.port.queue_id
                )));
            }
        }
        let free = |i: usize| {
            self.ports.get(i).is_none_or(|p| p.is_none()) && !self.closing.contains(&(i as PortId))
        };
        let n = opens.len();
        let first = (0..=self.ports.len())
            .find(|&i| (i..i + n).all(free))
            .unwrap_or(self.ports.len());
        if first + n > usize::from(PortId::MAX) + 1 {
            return Err(IoError::Config(format!("too many ports ({})", first + n)));
        }
        let mut out = Vec::with_capacity(n);
        for (slot, open) in (first..).zip(opens) {
            let id = slot as PortId;
            out.push((id, open.port.fd));
            if slot >= self.ports.len() {
                self.ports.resize_with(slot + 1, || None);
            }
            self.ports[slot] = Some(open.port);
        }
        self.update_port_cap();
        let fs = self.mem.frame_size as u64;
        let reserve = self.floor_reserve;
        for &(id, _) in &out {
            if let Some(Some(p)) = self.ports.get_mut(usize::from(id)) {
                p.stats.fill_target = idle_fill(&self.cfg, p.cap);
                refill_port(id, p, &mut self.owner, &mut self.free, fs, reserve);
            }
        }
        self.pollfds_stale = true;
        Ok(out)
    }

    /// Close the socket of `port` (for pod deletion). Every frame its rings
    /// held (fill, RX, TX, completion) returns to the pool; frames the
    /// caller received from it stay the caller's. Its fd is invalid after
    /// this and was removed from XSKMAPs by the kernel.
    pub fn remove_port(&mut self, port: PortId) -> Result<(), IoError> {
        let p = self.take_port(port)?;
        // Closing the last reference to the socket unbinds it synchronously
        // (the kernel waits for in-flight receive paths), so nothing writes
        // into its frames afterwards.
        drop(p);
        self.release(port);
        Ok(())
    }

    /// Like [`XskIo::remove_port`], but the socket is closed on a reaper thread, so
    /// this returns at once instead of after the kernel's grace period. Until the
    /// close is done, the port's id is not reused and the frames its rings held stay
    /// out of the pool; they come back at a later [`PacketIo::flush`] (or
    /// [`XskIo::reap_closed`]), after the reaper has woken [`PacketIo::wait`].
    /// The first call starts the reaper; if it cannot start, the port is closed here.
    pub fn close_port(&mut self, port: PortId) -> Result<(), IoError> {
        let p = self.take_port(port)?;
        if self.reaper.is_none() {
            match Reaper::start(self.waker()) {
                Ok(r) => self.reaper = Some(r),
                Err(_) => {
                    drop(p);
                    self.release(port);
                    return Ok(());
                }
            }
        }
        let sent = match self.reaper.as_ref().and_then(|r| r.jobs.as_ref()) {
            Some(jobs) => jobs.send((port, p)).map_err(|mpsc::SendError(job)| job),
            None => Err((port, p)),
        };
        match sent {
            Ok(()) => self.closing.push(port),
            // The reaper is gone (it only stops when its channel closes): close here.
            Err((_, p)) => {
                drop(p);
                self.release(port);
            }
        }
        Ok(())
    }

    /// Return the frames and ids of ports the reaper has closed since the last call;
    /// returns how many there were. [`PacketIo::flush`] calls this.
    pub fn reap_closed(&mut self) -> usize {
        let mut n = 0;
        while let Some(id) = self.reaper.as_ref().and_then(|r| r.done.try_recv().ok()) {
            self.closing.retain(|&c| c != id);
            self.closed += 1;
            self.release(id);
            n += 1;
        }
        n
    }

    /// Ports whose sockets the reaper is still closing.
    pub fn closing_ports(&self) -> usize {
        self.closing.len()
    }

    /// Ports the reaper has closed since this backend was created.
    pub fn closed_ports(&self) -> u64 {
        self.closed
    }

    fn take_port(&mut self, port: PortId) -> Result<Port, IoError> {
        let p = self
            .ports
            .get_mut(usize::from(port))
            .and_then(Option::take)
            .ok_or_else(|| IoError::Config(format!("no port {port}")))?;
        self.pollfds_stale = true;
        self.update_port_cap();
        Ok(p)
    }

    /// Every frame the closed port `port`'s rings held goes back to the pool, and
    /// trailing unused ids are dropped.
    fn release(&mut self, port: PortId) {
        for (buf, owner) in self.owner.iter_mut().enumerate() {
            if matches!(*owner, Owner::Fill(q) | Owner::Tx(q) if q == port) {
                *owner = Owner::Free;
                self.free.push(buf as BufIdx);
            }
        }
        while self.ports.last().is_some_and(Option::is_none)
            && !self.closing.contains(&((self.ports.len() - 1) as PortId))
        {
            self.ports.pop();
        }
    }

    /// Test hook (fault injection, not for production use): the next TX wake-up of
    /// `port` fails with `errno`, as an unexpected error of the kernel would. The port is
    /// then counted and marked down until its retry (see [`XskPortStats::errors`]).
    #[doc(hidden)]
    pub fn inject_port_error(&mut self, port: PortId, errno: i32) -> Result<(), IoError> {
        let p = self
            .ports
            .get_mut(usize::from(port))
            .and_then(Option::as_mut)
            .ok_or_else(|| IoError::Config(format!("no port {port}")))?;
        p.inject_errno = Some(errno);
        Ok(())
    }

    /// The socket fd of `port` (for the XSKMAP), if the port exists.
    pub fn port_fd(&self, port: PortId) -> Option<RawFd> {
        self.port(port).map(|p| p.fd)
    }

    /// Interface name and queue of `port`, if it exists.
    pub fn port_info(&self, port: PortId) -> Option<(&str, u32)> {
        self.port(port).map(|p| (p.ifname.as_str(), p.queue_id))
    }

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

    /// Frames in the free pool.
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// Offset of the first byte of received packets in their frame
    /// (`headroom + 256`); the engine may prepend up to this many bytes.
    pub fn rx_offset(&self) -> u16 {
        self.rx_offset
    }

    /// The configuration this backend was created with.
    pub fn config(&self) -> &XskConfig {
        &self.cfg
    }

    fn port(&self, port: PortId) -> Option<&Port> {
        self.ports.get(usize::from(port)).and_then(Option::as_ref)
    }

    /// The most frames a port of weight 1 (a pod's) may hold in its rings (fill/RX plus
    /// TX/completion): three quarters of the pool shared among the open ports in
    /// proportion to their weights ([`XskIo::set_port_weight`]), at least
    /// [`MIN_PORT_CAP`]. A port's fill target stays within its cap less [`TX_ROOM`] (half
    /// of it when the cap is small), so TX keeps room. So ports whose devices vanished
    /// (they never receive nor complete) cannot take the pool: while every port gets at
    /// least [`MIN_PORT_CAP`], all of them together hold at most three quarters of it.
    /// Every port's fill ring holds [`XskConfig::idle_fill`] frames while its cap allows
    /// (with the defaults, 32768 frames: a cap of 1280 or more, i.e. up to 19 shares,
    /// e.g. an uplink of weight 4 and 15 pods); beyond that the idle fill shrinks with the
    /// share: size the UMEM to the number of ports.
    pub fn port_cap(&self) -> u32 {
        self.port_cap
    }

    /// Free frames kept now for the fill-ring floors ([`MIN_FILL_TARGET`] each) of the
    /// ports not open yet, up to [`XskConfig::max_ports`]: fill rings take frames above
    /// their floor only while this many stay free.
    pub fn floor_reserve(&self) -> usize {
        self.floor_reserve
    }

    /// The most frames `port` may hold now (its weight times [`XskIo::port_cap`]).
    pub fn port_cap_of(&self, port: PortId) -> Option<u32> {
        self.port(port).map(|p| p.cap)
    }

    /// Give `port` `weight` shares of the pool instead of one (for an uplink queue, which
    /// carries the traffic of every pod): its cap, fill target and idle fill grow with it,
    /// and every other port's share shrinks accordingly. `weight` is at least 1.
    pub fn set_port_weight(&mut self, port: PortId, weight: u32) -> Result<(), IoError> {
        let p = self
            .ports
            .get_mut(usize::from(port))
            .and_then(Option::as_mut)
            .ok_or_else(|| IoError::Config(format!("no port {port}")))?;
        p.weight = weight.max(1);
        self.update_port_cap();
        let fs = self.mem.frame_size as u64;
        let reserve = self.floor_reserve;
        if let Some(Some(p)) = self.ports.get_mut(usize::from(port)) {
            p.stats.fill_target = p.stats.fill_target.max(idle_fill(&self.cfg, p.cap));
            refill_port(port, p, &mut self.owner, &mut self.free, fs, reserve);
        }
        Ok(())
    }

    /// Recomputes every port's cap ([`XskIo::port_cap`]) after ports came or went or a
    /// weight changed. Fill targets follow at the next flush ([`fit_fill_target`]).
    fn update_port_cap(&mut self) {
        let open = self.ports.iter().flatten().count() + self.closing.len();
        self.floor_reserve = floor_reserve(&self.cfg, open);
        let weights: u32 = self.ports.iter().flatten().map(|p| p.weight).sum();
        let share = share_of_pool(self.cfg.num_frames, weights);
        self.port_cap = share.max(MIN_PORT_CAP);
        for p in self.ports.iter_mut().flatten() {
            p.cap = share.saturating_mul(p.weight).max(MIN_PORT_CAP);
        }
    }
}

/// Frames kept free for the fill-ring floors of the ports not open yet when `open` are
/// (see [`XskConfig::max_ports`]).
fn floor_reserve(cfg: &XskConfig, open: usize) -> usize {
    let floor = MIN_FILL_TARGET.min(cfg.idle_fill) as usize;
    (cfg.max_ports as usize).saturating_sub(open) * floor
}

/// One share of three quarters of a pool of `num_frames`, split into `weights` shares.
fn share_of_pool(num_frames: u32, weights: u32) -> u32 {
    (num_frames - num_frames / 4) / weights.max(1)
}

/// The most a port with cap `cap` keeps in its fill ring: `fill_target`, leaving
/// [`TX_ROOM`] of the cap for TX (half of it when the cap is below twice that), and at
/// least [`MIN_FILL_TARGET`].
fn most_fill(cfg: &XskConfig, cap: u32) -> u32 {
    let room = if cap >= 2 * TX_ROOM {
        cap - TX_ROOM
    } else {
        cap / 2
    };
    cfg.fill_target
        .min(room)
        .max(MIN_FILL_TARGET.min(cfg.fill_target))
}

/// The fill target of a new or idle port with cap `cap`: `idle_fill`, within [`most_fill`].
fn idle_fill(cfg: &XskConfig, cap: u32) -> u32 {
    cfg.idle_fill.min(most_fill(cfg, cap))
}

/// Fit a port's fill target to its activity since its last refill, with `free` frames
/// in the pool (see [`XskConfig::fill_target`]), `cap` the most the port may hold
/// (see [`most_fill`]) and `floors` frames kept for ports not open yet
/// ([`XskIo::floor_reserve`]).
fn fit_fill_target(s: &mut XskPortStats, free: usize, cfg: &XskConfig, cap: u32, floors: usize) {
    let most = most_fill(cfg, cap);
    let floor = idle_fill(cfg, cap);
    if s.fill_target > most {
        s.fill_target = most;
        return;
    }
    if s.fill_target < floor {
        // The cap grew (ports went away): the port gets its full idle fill back.
        s.fill_target = floor;
        return;
    }
    // A quarter of the pool stays free for frames in flight (vectors, TX rings), beyond
    // the floors kept for ports not open yet.
    let reserve = (cfg.num_frames / 4) as usize + floors;
    if free <= reserve {
        // Short of frames: a port using its fill ring gives some back as it receives.
        if s.fill_frames < s.fill_target {
            s.fill_target = (s.fill_target / 2).max(floor);
        }
    } else if s.fill_frames <= s.fill_target / 2 && s.fill_target < most {
        // Busy: half of the ring (or more) was used since the last refill. Straight to the
        // busy target: the rest of a burst into an idle port is on its way.
        s.fill_target = most;
        s.fill_grown += 1;
    }
}

/// Top the fill ring of port `id` up to its fill target from the free pool, holding at
/// most its cap in all its rings, and leaving `reserve` frames in the pool beyond the
/// port's [`MIN_FILL_TARGET`] (see [`XskConfig::max_ports`]).
fn refill_port(
    id: PortId,
    p: &mut Port,
    owner: &mut [Owner],
    free: &mut Vec<BufIdx>,
    frame_size: u64,
    reserve: usize,
) {
    let cap = p.cap;
    let held = p.stats.fill_frames + p.stats.tx_in_flight;
    let want = p
        .stats
        .fill_target
        .saturating_sub(p.stats.fill_frames)
        .min(cap.saturating_sub(held));
    // Up to its floor from anywhere in the pool; above it, only what the floors of the
    // ports still to come leave.
    let floor = MIN_FILL_TARGET.saturating_sub(p.stats.fill_frames) as usize;
    let spare = free.len().saturating_sub(reserve).max(floor);
    let n = (want as usize).min(spare).min(free.len());
    if n == 0 {
        return;
    }
    let mut writer = p.fcq.fill(n as u32);
    // Take from the top of the stack so the inserted frames are its last `k`.
    let k = writer.insert(
        free.iter()
            .rev()
            .take(n)
            .map(|&b| u64::from(b) * frame_size),
    ) as usize;
    writer.commit();
    drop(writer);
    for &b in &free[free.len() - k..] {
        owner[b as usize] = Owner::Fill(id);
    }
    free.truncate(free.len() - k);
    p.stats.fill_frames += k as u32;
    if k > 0 && p.fcq.needs_wakeup() {
        p.fcq.wake();
    }
}

/// Move completed TX frames of port `id` back to the free pool.
fn reap_completions(
    id: PortId,
    p: &mut Port,
    owner: &mut [Owner],
    free: &mut Vec<BufIdx>,
    fs: u64,
) {
    loop {
        let mut reader = p.fcq.complete(COMP_BATCH);
        let mut k = 0;
        while let Some(addr) = reader.read() {
            k += 1;
            let buf = addr / fs;
            match owner.get_mut(buf as usize) {
                Some(o) if *o == Owner::Tx(id) => {
                    *o = Owner::Free;
                    free.push(buf as BufIdx);
                    p.stats.tx_in_flight -= 1;
                }
                _ => p.stats.ring_invalid += 1,
            }
        }
        reader.release();
        if k == 0 {
            break;
        }
    }
}

impl Port {
    /// Wake the kernel to transmit what is queued in the TX ring. In copy
    /// mode it sends at most 32 descriptors per call (EAGAIN: more left).
    /// An unexpected failure gives its errno.
    fn kick_tx(&mut self, budget: u32) -> Result<(), i32> {
        let mut budget = budget;
        while budget > 0 && self.tx.pending() > 0 && self.tx.needs_wakeup() {
            budget -= 1;
            self.stats.tx_kicks += 1;
            if let Some(errno) = self.inject_errno.take() {
                return Err(errno);
            }
            // SAFETY: `fd` is this port's open AF_XDP socket (owned by
            // `self`); a zero-length sendto with null buffer and address is
            // the documented TX wake-up and reads no user memory.
            let rc = unsafe {
                libc::sendto(
                    self.fd,
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc >= 0 {
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // Batch limit hit with more queued, or completion ring full
                // (the caller reaps between kicks), or a signal.
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                // Device queue busy or full, or the device is down: try again
                // at the next flush; descriptors stay queued.
                Some(libc::EBUSY) | Some(libc::ENOBUFS) | Some(libc::ENETDOWN)
                | Some(libc::ENXIO) => break,
                other => return Err(other.unwrap_or(libc::EIO)),
            }
        }
        Ok(())
    }
}

impl PacketIo for XskIo {
    type Memory = XskMemory;

    #[inline]
    fn memory(&mut self) -> &mut XskMemory {
        &mut self.mem
    }

    fn num_ports(&self) -> usize {
        self.ports.len()
    }

    #[inline]
    fn rx_burst(&mut self, port: PortId, out: &mut [Desc]) -> usize {
        let Some(Some(p)) = self.ports.get_mut(usize::from(port)) else {
            return 0;
        };
        let fs = self.mem.frame_size as u64;
        let reserve = self.floor_reserve;
        let want = u32::try_from(out.len()).unwrap_or(u32::MAX);
        if want == 0 {
            return 0;
        }
        let mut reader = p.rx.receive(want);
        let mut n = 0;
        while let Some(XdpDesc { addr, len, .. }) = reader.read() {
            let buf = addr / fs;
            let offset = addr % fs;
            let owned = self.owner.get_mut(buf as usize);
            match owned {
                Some(o) if *o == Owner::Fill(port) && offset + u64::from(len) <= fs => {
                    *o = Owner::User;
                    p.stats.fill_frames -= 1;
                    // offset < frame size <= 4096 and len <= frame size.
                    out[n] = Desc {
                        buf: buf as BufIdx,
                        offset: offset as u16,
                        len: len as u16,
                    };
                    n += 1;
                    p.stats.rx_bytes += u64::from(len);
                }
                _ => p.stats.ring_invalid += 1,
            }
        }
        reader.release();
        drop(reader);
        p.stats.rx_packets += n as u64;
        if n > 0 && p.stats.fill_frames <= p.stats.fill_target / 2 {
            // Half of the fill ring went since the last refill: the port is busy (a burst
            // may be arriving while the engine was asleep). Jump to the busy target and
            // refill now, before the vector is processed, not at the next flush.
            fit_fill_target(&mut p.stats, self.free.len(), &self.cfg, p.cap, reserve);
            refill_port(port, p, &mut self.owner, &mut self.free, fs, reserve);
        }
        n
    }

    #[inline]
    fn tx_burst(&mut self, port: PortId, pkts: &[Desc]) -> usize {
        let Some(Some(p)) = self.ports.get_mut(usize::from(port)) else {
            return 0;
        };
        let fs = self.mem.frame_size;
        if p.stats.down && !p.health.usable(Instant::now()) {
            // Down after an error, not due for its retry yet: the caller drops.
            return 0;
        }
        // A port holds at most its share of the pool: one whose device vanished
        // completes nothing and would otherwise keep what is sent to it.
        let held = |p: &Port| p.stats.fill_frames + p.stats.tx_in_flight;
        if held(p) as usize + pkts.len() > p.cap as usize {
            reap_completions(port, p, &mut self.owner, &mut self.free, fs as u64);
        }
        let room = p.cap.saturating_sub(held(p)) as usize;
        if room < pkts.len() {
            p.stats.tx_over_cap += (pkts.len() - room) as u64;
        }
        let pkts = &pkts[..pkts.len().min(room)];
        // Validate and claim the prefix of valid descriptors. Claiming right
        // away also rejects the same frame appearing twice.
        let mut valid = 0;
        for d in pkts {
            let ok = d.len > 0 && usize::from(d.offset) + usize::from(d.len) <= fs;
            match self.owner.get_mut(d.buf as usize) {
                Some(o) if ok && *o == Owner::User => *o = Owner::Tx(port),
                _ => {
                    p.stats.tx_invalid += 1;
                    break;
                }
            }
            valid += 1;
        }
        let to_desc = |d: &Desc| XdpDesc {
            addr: u64::from(d.buf) * fs as u64 + u64::from(d.offset),
            len: u32::from(d.len),
            options: 0,
        };
        let mut sent = 0;
        for attempt in 0..2 {
            if sent == valid {
                break;
            }
            let mut writer = p.tx.transmit((valid - sent) as u32);
            sent += writer.insert(pkts[sent..valid].iter().map(to_desc)) as usize;
            writer.commit();
            drop(writer);
            if sent == valid || attempt == 1 {
                break;
            }
            // Ring full: reap what completed and let the kernel drain some.
            reap_completions(port, p, &mut self.owner, &mut self.free, fs as u64);
            if let Err(errno) = p.kick_tx(self.cfg.tx_size / KERNEL_TX_BATCH + 1) {
                p.health.failed(&mut p.stats, errno, Instant::now());
                self.port_errors += 1;
                break;
            }
        }
        for d in &pkts[sent..valid] {
            self.owner[d.buf as usize] = Owner::User;
        }
        p.stats.tx_ring_full += (valid - sent) as u64;
        p.stats.tx_packets += sent as u64;
        p.stats.tx_bytes += pkts[..sent].iter().map(|d| u64::from(d.len)).sum::<u64>();
        p.stats.tx_in_flight += sent as u32;
        sent
    }

    #[inline]
    fn alloc(&mut self, out: &mut [BufIdx]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(buf) = self.free.pop() else { break };
            self.owner[buf as usize] = Owner::User;
            out[n] = buf;
            n += 1;
        }
        n
    }

    #[inline]
    fn free(&mut self, bufs: &[BufIdx]) {
        for &buf in bufs {
            // Frames the caller does not own (double free, bad index) are
            // ignored rather than corrupting the pool.
            if let Some(o) = self.owner.get_mut(buf as usize) {
                if *o == Owner::User {
                    *o = Owner::Free;
                    self.free.push(buf);
                }
            }
        }
    }

    /// Never fails for one port's sake: a port's unexpected error is counted in its
    /// [`XskPortStats`] and marks it down until a retry (see [`XskPortStats::down`]).
    fn flush(&mut self) -> Result<(), IoError> {
        if !self.closing.is_empty() {
            self.reap_closed();
        }
        let fs = self.mem.frame_size as u64;
        let kick_budget = self.cfg.tx_size / KERNEL_TX_BATCH + 1;
        let reserve = self.floor_reserve;
        let mut now = None;
        for (i, slot) in self.ports.iter_mut().enumerate() {
            let Some(p) = slot else { continue };
            // Ports are at most u16::MAX + 1 (checked in add_port).
            let id = i as PortId;
            reap_completions(id, p, &mut self.owner, &mut self.free, fs);
            let due = !p.stats.down || p.health.usable(*now.get_or_insert_with(Instant::now));
            if due {
                match p.kick_tx(kick_budget) {
                    Ok(()) if p.stats.down => p.health.succeeded(&mut p.stats),
                    Ok(()) => {}
                    Err(errno) => {
                        let t = *now.get_or_insert_with(Instant::now);
                        p.health.failed(&mut p.stats, errno, t);
                        self.port_errors += 1;
                    }
                }
            }
            reap_completions(id, p, &mut self.owner, &mut self.free, fs);
            fit_fill_target(&mut p.stats, self.free.len(), &self.cfg, p.cap, reserve);
            refill_port(id, p, &mut self.owner, &mut self.free, fs, reserve);
        }
        Ok(())
    }

    fn port_errors(&self) -> u64 {
        self.port_errors
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), IoError> {
        if self.pollfds_stale {
            self.pollfds.clear();
            self.pollfds.push(libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            self.pollfds
                .extend(self.ports.iter().flatten().map(|p| libc::pollfd {
                    fd: p.fd,
                    events: libc::POLLIN,
                    revents: 0,
                }));
            self.pollfds_stale = false;
        }
        // Round up so that a sub-millisecond timeout still blocks briefly.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `pollfds` is a live, exclusively borrowed array of
        // `pollfds.len()` initialised pollfd structs; the fds belong to our
        // eventfd and open sockets.
        let rc = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                ms,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(IoError::Os {
                    op: "poll AF_XDP sockets",
                    source: err,
                });
            }
        }
        if self.pollfds[0].revents & libc::POLLIN != 0 {
            // Reset the eventfd counter (non-blocking: a concurrent drain is harmless).
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live local array from our own eventfd.
            let _ =
                unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        }
        Ok(())
    }
}

impl std::fmt::Debug for XskIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports: Vec<_> = self
            .ports
            .iter()
            .map(|p| p.as_ref().map(|p| (p.ifname.as_str(), p.queue_id, p.fd)))
            .collect();
        f.debug_struct("XskIo")
            .field("config", &self.cfg)
            .field("ports", &ports)
            .field("pool", &self.pool_stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_errors_back_off_then_retry() {
        let t0 = Instant::now();
        let mut s = XskPortStats::default();
        let mut h = PortHealth::default();
        assert!(h.usable(t0));
        h.failed(&mut s, libc::EFAULT, t0);
        assert_eq!((s.errors, s.last_errno, s.down), (1, libc::EFAULT, true));
        assert!(!h.usable(t0));
        assert!(!h.usable(t0 + PORT_RETRY_MIN / 2));
        assert!(h.usable(t0 + PORT_RETRY_MIN));
        // Failing again doubles the back-off, up to the maximum.
        h.failed(&mut s, libc::EINVAL, t0);
        assert!(!h.usable(t0 + PORT_RETRY_MIN));
        assert!(h.usable(t0 + 2 * PORT_RETRY_MIN));
        for _ in 0..20 {
            h.failed(&mut s, libc::EINVAL, t0);
        }
        assert!(!h.usable(t0 + PORT_RETRY_MAX - Duration::from_millis(1)));
        assert!(h.usable(t0 + PORT_RETRY_MAX));
        assert_eq!((s.errors, s.last_errno, s.resets), (22, libc::EINVAL, 0));
        // A retry that works brings the port up and resets the back-off.
        h.succeeded(&mut s);
        assert_eq!((s.down, s.resets), (false, 1));
        assert!(h.usable(t0));
        h.failed(&mut s, libc::EFAULT, t0);
        assert!(h.usable(t0 + PORT_RETRY_MIN));
        // Success while up counts no reset.
        h.succeeded(&mut s);
        h.succeeded(&mut s);
        assert_eq!(s.resets, 2);
    }

    #[test]
    fn fill_target_stays_within_the_port_cap() {
        let cfg = XskConfig {
            num_frames: 8192,
            fill_target: 512,
            idle_fill: 64,
            ..XskConfig::default()
        };
        let mut s = XskPortStats {
            fill_target: 512,
            fill_frames: 512,
            ..XskPortStats::default()
        };
        // Many ports: the cap shrinks the target of a busy port at once; a small cap
        // keeps half for TX.
        fit_fill_target(&mut s, 8000, &cfg, MIN_PORT_CAP, 0);
        assert_eq!(s.fill_target, MIN_PORT_CAP / 2);
        // Busy again: it grows no further than half the cap.
        s.fill_frames = 0;
        fit_fill_target(&mut s, 8000, &cfg, MIN_PORT_CAP, 0);
        assert_eq!(s.fill_target, MIN_PORT_CAP / 2);
        // A larger cap keeps TX_ROOM for TX.
        for _ in 0..10 {
            s.fill_frames = 0;
            fit_fill_target(&mut s, 8000, &cfg, 600, 0);
        }
        assert_eq!(s.fill_target, 600 - TX_ROOM);
        // Fewer ports: busy, it jumps to the configured target at once.
        s.fill_frames = 0;
        fit_fill_target(&mut s, 8000, &cfg, 4096, 0);
        assert_eq!(s.fill_target, 512);
        // Not while the pool is down to a quarter plus the floors of ports to come.
        let mut t = XskPortStats {
            fill_target: 64,
            ..XskPortStats::default()
        };
        fit_fill_target(&mut t, 2048 + 1000, &cfg, 4096, 1000);
        assert_eq!(t.fill_target, 64);
        fit_fill_target(&mut t, 2048 + 1001, &cfg, 4096, 1000);
        assert_eq!(t.fill_target, 512);
    }

    #[test]
    fn idle_ports_keep_their_idle_fill_and_come_back_to_it() {
        let cfg = XskConfig::default();
        let mut s = XskPortStats {
            fill_target: 2048,
            fill_frames: 0,
            ..XskPortStats::default()
        };
        // Short of frames: a busy port halves down to the idle fill, never below.
        for _ in 0..10 {
            fit_fill_target(&mut s, 0, &cfg, 8192, 0);
        }
        assert_eq!(s.fill_target, cfg.idle_fill);
        // A port squeezed by a small share gets its idle fill back when the share grows.
        s.fill_frames = s.fill_target;
        fit_fill_target(&mut s, 30_000, &cfg, 200, 0);
        assert_eq!(s.fill_target, 100);
        s.fill_frames = s.fill_target;
        fit_fill_target(&mut s, 30_000, &cfg, 4096, 0);
        assert_eq!(s.fill_target, cfg.idle_fill);
    }

    /// With the default pool (16384 frames), 50 pods (weight 1) and a 4-queue uplink of
    /// weight 4 per queue: every queue of the uplink keeps a full idle fill ring and room
    /// to grow, and the ports together hold at most three quarters of the pool.
    #[test]
    fn the_uplink_keeps_its_fill_with_many_pods() {
        let cfg = XskConfig::default();
        for queues in [1u32, 4] {
            let weights = 50 + 4 * queues;
            let share = share_of_pool(cfg.num_frames, weights).max(MIN_PORT_CAP);
            let uplink = share * 4;
            assert!(idle_fill(&cfg, uplink) >= cfg.idle_fill, "{queues} queues");
            assert!(most_fill(&cfg, uplink) > cfg.idle_fill, "{queues} queues");
            assert!(50 * share + queues * uplink <= cfg.num_frames * 3 / 4);
            // A pod still keeps a fill ring of more than half a vector.
            assert!(idle_fill(&cfg, share) >= 64, "{queues} queues: {share}");
        }
        // A dozen pods with a one-queue uplink: every port has its full idle fill.
        let share = share_of_pool(cfg.num_frames, 12 + 4);
        assert_eq!(idle_fill(&cfg, share), cfg.idle_fill);
    }

    /// The floors kept for ports to come: all of `max_ports` at the start, none once that
    /// many are open, and never above a quarter of the default pool.
    #[test]
    fn floors_are_kept_for_the_ports_to_come() {
        let cfg = XskConfig::default();
        assert_eq!(
            floor_reserve(&cfg, 0),
            (cfg.max_ports * MIN_FILL_TARGET) as usize
        );
        assert_eq!(floor_reserve(&cfg, 100), 28 * MIN_FILL_TARGET as usize);
        assert_eq!(floor_reserve(&cfg, 200), 0);
        assert!(floor_reserve(&cfg, 0) <= cfg.num_frames as usize / 4);
        // A smaller idle fill is the floor.
        let small = XskConfig {
            idle_fill: 8,
            ..XskConfig::default()
        };
        assert_eq!(floor_reserve(&small, 0), (small.max_ports * 8) as usize);
    }
}
