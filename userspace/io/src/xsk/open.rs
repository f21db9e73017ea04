//! Opening port sockets on the shared UMEM, from any thread ([`XskOpener`]): creating a
//! socket, mapping its rings and binding it takes the kernel milliseconds, which the
//! engine's worker should not wait for. Also the helpers that turn xdpilone's errors and
//! names into [`IoError`]s.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use xdpilone::{IfInfo, Socket, SocketConfig, Umem};

use super::port::{Port, PortHealth};
use super::umem::SharedUmem;
use super::{XskConfig, XskIo, XskPortStats, MIN_PORT_CAP};
use crate::IoError;

/// How long `add_port` retries while the kernel still holds a removed
/// socket's queue (EBUSY).
const BIND_BUSY_RETRY: Duration = Duration::from_secs(2);

pub(super) fn xsk_err(op: &str, what: &str, err: xdpilone::Errno) -> IoError {
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

pub(super) fn ring_size(name: &str, n: u32) -> Result<NonZeroU32, IoError> {
    match NonZeroU32::new(n) {
        Some(v) if n.is_power_of_two() => Ok(v),
        _ => Err(IoError::Config(format!(
            "{name} must be a power of two, got {n}"
        ))),
    }
}

pub(super) fn if_info(ifname: &str, queue_id: u32) -> Result<IfInfo, IoError> {
    let cname = CString::new(ifname)
        .map_err(|_| IoError::Config(format!("interface name {ifname:?} contains NUL")))?;
    let mut info = IfInfo::invalid();
    info.from_name(&cname)
        .map_err(|e| xsk_err("interface", ifname, e))?;
    info.set_queue(queue_id);
    Ok(info)
}

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
    pub(super) port: Port,
    /// The UMEM it shares (address of the backend's `SharedUmem`).
    pub(super) umem: usize,
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

impl XskIo {
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
}
