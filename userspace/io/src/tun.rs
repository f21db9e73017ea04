//! A TUN device: the punt path that hands IPv4 packets to the host kernel, and the
//! host's own packets the kernel routes to it (its traffic to service addresses) to the
//! engine ([`TunReader`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::IoError;

/// A TUN interface (`IFF_TUN | IFF_NO_PI`: packets without an Ethernet
/// header or packet-info prefix) in the network namespace of the creating
/// thread. The interface exists as long as this value (it is not
/// persistent); bringing it up and addressing it is the caller's job.
#[derive(Debug)]
pub struct TunDevice {
    file: File,
    name: String,
}

impl TunDevice {
    /// Create the TUN interface `name` (at most 15 bytes; a `%d` in it is
    /// replaced by the kernel with a free number, see [`TunDevice::name`]).
    pub fn create(name: &str) -> Result<Self, IoError> {
        let mut ifr = ifreq_with_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| IoError::Os {
                op: "open /dev/net/tun",
                source,
            })?;
        // Writing a `Copy` union field is safe; IFF_TUN | IFF_NO_PI fits in i16.
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `ifr` is a
        // properly initialised, exclusively borrowed ifreq that outlives the
        // call, and the fd is an open /dev/net/tun file.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            return Err(IoError::Os {
                op: "ioctl TUNSETIFF",
                source: std::io::Error::last_os_error(),
            });
        }
        // The kernel writes back the final name, NUL-terminated.
        let name: String = ifr
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        Ok(TunDevice { file, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hand one IP packet (starting at the IP header) to the kernel.
    pub fn write(&self, packet: &[u8]) -> Result<usize, IoError> {
        (&self.file).write(packet).map_err(|source| IoError::Os {
            op: "write to TUN",
            source,
        })
    }

    /// Read one packet the kernel routed to this interface (blocks until
    /// one is available; poll [`AsRawFd::as_raw_fd`] first to avoid that).
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, IoError> {
        (&self.file).read(buf).map_err(|source| IoError::Os {
            op: "read from TUN",
            source,
        })
    }
}

/// How long the [`TunReader`] thread sleeps at most before it checks whether it must stop.
const WATCH_TICK: Duration = Duration::from_millis(100);

/// The read side of a [`TunDevice`] for a thread that must not block on it (the engine
/// worker): a small watcher thread polls the device and, when packets wait, sets
/// [`TunReader::ready`] and calls the wake function (which ends the worker's sleep); the
/// worker then reads without blocking ([`TunReader::try_read`]) until nothing is left,
/// which re-arms the watcher. No packet is copied twice and the worker makes no system
/// call while nothing waits.
#[derive(Debug)]
pub struct TunReader {
    tun: Arc<TunDevice>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TunReader {
    /// Make `tun` non-blocking and start the watcher thread; `wake` is called (from that
    /// thread) each time packets become ready.
    pub fn start(tun: Arc<TunDevice>, wake: Box<dyn Fn() + Send>) -> Result<Self, IoError> {
        set_nonblocking(tun.as_raw_fd())?;
        let ready = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st, t) = (ready.clone(), stop.clone(), tun.clone());
        let thread = std::thread::Builder::new()
            .name("fp-tun-watch".into())
            .spawn(move || watch(&t, &r, &st, wake))
            .map_err(|source| IoError::Os {
                op: "spawn the TUN watcher",
                source,
            })?;
        Ok(TunReader {
            tun,
            ready,
            stop,
            thread: Some(thread),
        })
    }

    /// Whether packets may be waiting (an atomic load: cheap enough for every round).
    #[inline]
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Read one waiting packet into `buf` (a longer packet is truncated by the kernel);
    /// `Ok(None)` when none waits, which re-arms the watcher.
    pub fn try_read(&self, buf: &mut [u8]) -> Result<Option<usize>, IoError> {
        match (&self.tun.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.ready.store(false, Ordering::Release);
                if let Some(t) = &self.thread {
                    t.thread().unpark();
                }
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
            Err(source) => Err(IoError::Os {
                op: "read from TUN",
                source,
            }),
        }
    }
}

impl Drop for TunReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The watcher: wait (poll) until the device is readable, flag it, wake the reader, then
/// sleep until the reader found it empty ([`TunReader::try_read`] unparks this thread).
fn watch(tun: &TunDevice, ready: &AtomicBool, stop: &AtomicBool, wake: Box<dyn Fn() + Send>) {
    let mut pfd = libc::pollfd {
        fd: tun.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Acquire) {
        pfd.revents = 0;
        // SAFETY: `pfd` is one live, exclusively borrowed pollfd for an fd the `Arc`ed
        // device keeps open for the whole call.
        let rc = unsafe { libc::poll(&mut pfd, 1, WATCH_TICK.as_millis() as libc::c_int) };
        if rc <= 0 || pfd.revents & libc::POLLIN == 0 {
            if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                std::thread::sleep(WATCH_TICK);
            }
            continue;
        }
        ready.store(true, Ordering::Release);
        wake();
        while ready.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
            std::thread::park_timeout(WATCH_TICK);
        }
    }
}

fn set_nonblocking(fd: RawFd) -> Result<(), IoError> {
    // SAFETY: F_GETFL/F_SETFL take and return plain integers on an open descriptor.
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        return Err(IoError::Os {
            op: "fcntl O_NONBLOCK on TUN",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl AsRawFd for TunDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for TunDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn ifreq_with_name(name: &str) -> Result<libc::ifreq, IoError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/')
    {
        return Err(IoError::Config(format!(
            "invalid interface name {name:?} (1 to {} bytes, no NUL or '/')",
            libc::IFNAMSIZ - 1
        )));
    }
    // SAFETY: `ifreq` is a C struct of integers, arrays and a union of
    // plain-data members, for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_before_any_syscall() {
        for bad in ["", "0123456789abcdef", "a/b", "a\0b"] {
            assert!(
                matches!(TunDevice::create(bad), Err(IoError::Config(_))),
                "{bad:?}"
            );
        }
        let ifr = ifreq_with_name("fp-tun0").unwrap();
        assert_eq!(ifr.ifr_name[..8], b"fp-tun0\0".map(|b| b as libc::c_char));
    }
}
