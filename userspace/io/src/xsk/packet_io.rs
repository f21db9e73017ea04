//! The [`PacketIo`] side of [`XskIo`]: RX and TX bursts with frame ownership checks,
//! frame allocation, the flush (TX wake-ups, completions, refills, port retries) and the
//! wait on every socket and the waker.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use xdpilone::xdp::XdpDesc;

use super::fill::{fit_fill_target, reap_completions, refill_port};
use super::port::Port;
use super::{Owner, XskIo, XskMemory};
use crate::{BufIdx, Desc, IoError, PacketIo, PortId};

/// Descriptors the kernel transmits per `sendto` in copy mode (`TX_BATCH_SIZE`);
/// it answers EAGAIN while more are queued.
const KERNEL_TX_BATCH: u32 = 32;

impl crate::FramesRef for XskIo {
    fn memory_ref(&self) -> &XskMemory {
        &self.mem
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
    /// [`XskPortStats`](super::XskPortStats) and marks it down until a retry (see
    /// [`XskPortStats::down`](super::XskPortStats::down)).
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
