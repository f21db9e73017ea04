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
//! then they return to the pool (in [`PacketIo::flush`](crate::PacketIo::flush), or
//! [`XskIo::reap_closed`]). [`XskIo::remove_port`] closes in place.
//!
//! # Files
//!
//! - `config.rs`: [`XskConfig`] and the pool's sizing constants.
//! - `umem.rs`: the UMEM mapping ([`XskMemory`]) and its registration.
//! - `port.rs`: one port's socket and rings, its error back-off, TX wake-ups.
//! - `open.rs`: opening port sockets off the owner's thread ([`XskOpener`]).
//! - `lifecycle.rs`: installing and removing ports, the reaper thread.
//! - `fill.rs`: fill targets, floors and shares of the pool; fill and completion rings.
//! - `packet_io.rs`: the [`PacketIo`](crate::PacketIo) implementation (bursts, flush, wait).
//! - `stats.rs`: pool, port and kernel statistics.
//! - `waker.rs`: [`Waker`], the eventfd that ends a `wait` early.

mod config;
mod fill;
mod lifecycle;
mod open;
mod packet_io;
mod port;
mod stats;
mod umem;
mod waker;

use std::num::NonZeroU32;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use xdpilone::{Socket, SocketConfig, Umem, UmemConfig};

use crate::{BufIdx, IoError, PortId};

pub use config::{XskConfig, MIN_FILL_TARGET, MIN_PORT_CAP, TX_ROOM};
pub use open::{OpenPort, XskOpener};
pub use stats::{PoolStats, XskKernelStats, XskPortStats};
pub use umem::XskMemory;
pub use waker::Waker;

use fill::floor_reserve;
use lifecycle::Reaper;
use open::{if_info, ring_size, xsk_err};
use port::Port;
use umem::{Anchor, SharedUmem};
use waker::new_eventfd;

/// Headroom the kernel reserves in front of received packets (`XDP_PACKET_HEADROOM`).
const XDP_PACKET_HEADROOM: u32 = 256;

/// Who holds a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Free,
    User,
    Fill(PortId),
    Tx(PortId),
}

/// AF_XDP [`PacketIo`](crate::PacketIo) backend: ports added at run time share one frame pool.
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
    /// An eventfd in the poll set: [`Waker::wake`] ends a [`PacketIo::wait`](crate::PacketIo::wait)
    /// early.
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
    /// Errors of single ports since the start
    /// ([`PacketIo::port_errors`](crate::PacketIo::port_errors)).
    port_errors: u64,
    mem: XskMemory,
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

impl XskIo {
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
