//! The shared UMEM: the anonymous mapping that holds every frame ([`XskMemory`]), the
//! xdpilone registration shared with openers ([`SharedUmem`]) and the anchor socket that
//! registered it ([`Anchor`]).

use std::io;
use std::ptr::NonNull;

use xdpilone::{DeviceQueue, Socket, Umem, User};

use crate::{BufIdx, FrameMemory, IoError};

/// The shared UMEM: an anonymous mapping of `num_frames * frame_size` bytes.
#[derive(Debug)]
pub struct XskMemory {
    base: NonNull<u8>,
    len: usize,
    pub(super) frame_size: usize,
    num_frames: u32,
}

impl XskMemory {
    pub(super) fn map(num_frames: u32, frame_size: u32) -> Result<Self, IoError> {
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

    pub(super) fn area(&self) -> NonNull<[u8]> {
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

/// xdpilone's [`Umem`], shared by an [`XskIo`] with its [`XskOpener`]s.
pub(super) struct SharedUmem(pub(super) Umem);

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

/// The socket that registered the UMEM, bound to the anchor device.
pub(super) struct Anchor {
    pub(super) _user: User,
    pub(super) _fcq: DeviceQueue,
    pub(super) _socket: Socket,
}
