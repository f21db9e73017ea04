//! [`Waker`]: ends an [`XskIo`]'s [`PacketIo::wait`](crate::PacketIo::wait) from
//! another thread through an eventfd in its poll set.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use super::XskIo;
use crate::IoError;

/// Wakes an [`XskIo`] sleeping in [`PacketIo::wait`](crate::PacketIo::wait) from another thread,
/// e.g. after queueing work for the thread that owns it (see [`XskIo::waker`]).
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

pub(super) fn new_eventfd() -> Result<OwnedFd, IoError> {
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
}
