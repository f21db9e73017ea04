//! One port: an AF_XDP socket bound to (device, queue) with its four rings, its error
//! state (down for a back-off after an unexpected error, then retried) and the TX
//! wake-up.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use xdpilone::{DeviceQueue, RingRx, RingTx, Socket, User};

use super::XskPortStats;

/// First back-off of a port after an error; it doubles per failed retry up to
/// [`PORT_RETRY_MAX`].
const PORT_RETRY_MIN: Duration = Duration::from_millis(10);
/// Longest back-off of a failing port.
const PORT_RETRY_MAX: Duration = Duration::from_secs(1);

/// One AF_XDP socket bound to (device, queue).
pub(super) struct Port {
    pub(super) rx: RingRx,
    pub(super) tx: RingTx,
    /// This (device, queue)'s own fill and completion rings.
    pub(super) fcq: DeviceQueue,
    pub(super) user: User,
    pub(super) _socket: Socket,
    pub(super) fd: RawFd,
    pub(super) ifname: String,
    pub(super) queue_id: u32,
    pub(super) stats: XskPortStats,
    pub(super) health: PortHealth,
    /// Shares of the pool this port is entitled to (1 unless [`XskIo::set_port_weight`]).
    pub(super) weight: u32,
    /// The most frames it may hold now ([`XskIo::port_cap_of`]).
    pub(super) cap: u32,
    /// Test hook ([`XskIo::inject_port_error`]): the next TX wake-up fails with this errno.
    pub(super) inject_errno: Option<i32>,
}

/// Error state of one port: an unexpected error marks it down for a back-off (doubling
/// from [`PORT_RETRY_MIN`] to [`PORT_RETRY_MAX`]), then it is retried; the worker that
/// owns the [`XskIo`] carries on with the other ports meanwhile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PortHealth {
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl PortHealth {
    /// An error (`errno`) at `now`: counted, and the port is down until its back-off ends.
    pub(super) fn failed(&mut self, s: &mut XskPortStats, errno: i32, now: Instant) {
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
    pub(super) fn usable(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// The port worked (a retry succeeded): up again.
    pub(super) fn succeeded(&mut self, s: &mut XskPortStats) {
        if s.down {
            s.down = false;
            s.resets += 1;
        }
        self.retry_at = None;
        self.backoff = Duration::ZERO;
    }
}

impl Port {
    /// Wake the kernel to transmit what is queued in the TX ring. In copy
    /// mode it sends at most 32 descriptors per call (EAGAIN: more left).
    /// An unexpected failure gives its errno.
    pub(super) fn kick_tx(&mut self, budget: u32) -> Result<(), i32> {
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
}
