//! Memory backend: frames in a `Vec`, packets injected and collected by the
//! caller. Used by engine unit tests and benchmarks; no system calls.

use std::collections::VecDeque;
use std::time::Duration;

use crate::{BufIdx, Desc, FrameMemory, IoError, PacketIo, PortId};

/// The frames of a [`MemIo`].
#[derive(Debug)]
pub struct MemFrames {
    data: Vec<u8>,
    frame_size: usize,
    num_frames: u32,
}

impl FrameMemory for MemFrames {
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
        let start = buf as usize * self.frame_size;
        &self.data[start..start + self.frame_size]
    }

    #[inline]
    fn frame_mut(&mut self, buf: BufIdx) -> &mut [u8] {
        let start = buf as usize * self.frame_size;
        &mut self.data[start..start + self.frame_size]
    }
}

#[derive(Debug)]
struct MemPort {
    /// Injected packets waiting for `rx_burst`.
    rx: VecDeque<Desc>,
    /// Bench fast path: every `rx_burst` slot not served from `rx` gets a
    /// fresh copy of this frame (empty = off).
    template: Vec<u8>,
    /// Transmitted packets (unless `tx_sink`).
    tx: Vec<Vec<u8>>,
    /// Count transmitted packets without storing them.
    tx_sink: bool,
    /// At most this many packets accepted per `tx_burst` (simulates a full ring).
    tx_limit: usize,
    rx_count: u64,
    tx_count: u64,
}

/// Memory [`PacketIo`] backend for tests and benchmarks.
///
/// Received packets are placed [`MemIo::RX_OFFSET`] bytes into their frame
/// (like AF_XDP's XDP headroom), so the engine can push headers in front.
/// A frame that is not in the free pool is either queued for receive or
/// owned by the caller; [`MemIo::free_frames`] lets tests check for leaks.
///
/// ```
/// use ferroplane_io::{Desc, MemIo, PacketIo};
/// let mut io = MemIo::new(64, 2048, 2);
/// assert!(io.inject(0, &[0xaa; 60]));
/// let mut descs = [Desc::default(); 32];
/// let n = io.rx_burst(0, &mut descs);
/// assert_eq!(n, 1);
/// assert_eq!(io.tx_burst(1, &descs[..n]), 1);
/// assert_eq!(io.take_tx(1), vec![vec![0xaa; 60]]);
/// assert_eq!(io.free_frames(), 64);
/// ```
#[derive(Debug)]
pub struct MemIo {
    mem: MemFrames,
    /// Free frame indices, used as a stack.
    free: Vec<BufIdx>,
    /// `true` while the frame is in `free` (catches double frees).
    in_pool: Vec<bool>,
    ports: Vec<MemPort>,
    invalid_frees: u64,
    invalid_tx: u64,
}

impl MemIo {
    /// Offset of the first packet byte in received frames (headroom).
    pub const RX_OFFSET: u16 = 256;

    /// A backend with `num_frames` frames of `frame_size` bytes and ports
    /// `0..num_ports`.
    ///
    /// # Panics
    /// If `num_frames` is 0, or `frame_size` is below 512 or above 65536
    /// (offsets and lengths are `u16`); these are programming errors.
    pub fn new(num_frames: u32, frame_size: usize, num_ports: usize) -> Self {
        assert!(num_frames > 0, "MemIo needs at least one frame");
        assert!(
            (512..=65536).contains(&frame_size),
            "MemIo frame_size must be in 512..=65536, got {frame_size}"
        );
        let ports = (0..num_ports)
            .map(|_| MemPort {
                rx: VecDeque::new(),
                template: Vec::new(),
                tx: Vec::new(),
                tx_sink: false,
                tx_limit: usize::MAX,
                rx_count: 0,
                tx_count: 0,
            })
            .collect();
        MemIo {
            mem: MemFrames {
                data: vec![0; num_frames as usize * frame_size],
                frame_size,
                num_frames,
            },
            // Reversed so that frames are handed out 0, 1, 2, ...
            free: (0..num_frames).rev().collect(),
            in_pool: vec![true; num_frames as usize],
            ports,
            invalid_frees: 0,
            invalid_tx: 0,
        }
    }

    /// Largest packet that fits in a frame at [`MemIo::RX_OFFSET`].
    pub fn max_packet_len(&self) -> usize {
        (self.mem.frame_size - usize::from(Self::RX_OFFSET)).min(usize::from(u16::MAX))
    }

    /// Copy `packet` into a free frame and queue it for receive on `port`.
    /// Returns `false` (and queues nothing) when no frame is free, `port`
    /// does not exist or the packet is longer than [`MemIo::max_packet_len`].
    pub fn inject(&mut self, port: PortId, packet: &[u8]) -> bool {
        if packet.len() > self.max_packet_len() {
            return false;
        }
        let Some(p) = self.ports.get_mut(usize::from(port)) else {
            return false;
        };
        let Some(buf) = self.free.pop() else {
            return false;
        };
        self.in_pool[buf as usize] = false;
        let off = usize::from(Self::RX_OFFSET);
        self.mem.frame_mut(buf)[off..off + packet.len()].copy_from_slice(packet);
        p.rx.push_back(Desc {
            buf,
            offset: Self::RX_OFFSET,
            // Bounded by max_packet_len above.
            len: packet.len() as u16,
        });
        true
    }

    /// Packets queued by [`MemIo::inject`] on `port` and not received yet.
    pub fn pending_rx(&self, port: PortId) -> usize {
        self.ports.get(usize::from(port)).map_or(0, |p| p.rx.len())
    }

    /// Bench fast path: from now on each `rx_burst` on `port` fills every
    /// slot that injected packets do not fill with a fresh copy of `frame`
    /// (as long as frames are free), without allocating.
    ///
    /// # Panics
    /// If `port` does not exist or `frame` is empty or longer than
    /// [`MemIo::max_packet_len`].
    pub fn set_rx_template(&mut self, port: PortId, frame: &[u8]) {
        assert!(
            !frame.is_empty() && frame.len() <= self.max_packet_len(),
            "rx template of {} bytes does not fit a frame",
            frame.len()
        );
        let p = self.port_mut(port);
        p.template.clear();
        p.template.extend_from_slice(frame);
    }

    /// Stop the template receive of [`MemIo::set_rx_template`] on `port`.
    pub fn clear_rx_template(&mut self, port: PortId) {
        if let Some(p) = self.ports.get_mut(usize::from(port)) {
            p.template.clear();
        }
    }

    /// With `sink` on, packets sent on `port` are counted (see
    /// [`MemIo::tx_count`]) and their frames freed, but not stored.
    ///
    /// # Panics
    /// If `port` does not exist.
    pub fn set_tx_sink(&mut self, port: PortId, sink: bool) {
        self.port_mut(port).tx_sink = sink;
    }

    /// Accept at most `limit` packets per `tx_burst` on `port` (`None`: no
    /// limit), to exercise the caller's "ring full" path.
    ///
    /// # Panics
    /// If `port` does not exist.
    pub fn set_tx_limit(&mut self, port: PortId, limit: Option<usize>) {
        self.port_mut(port).tx_limit = limit.unwrap_or(usize::MAX);
    }

    /// Packets accepted by `tx_burst` on `port` so far (stored or sunk).
    pub fn tx_count(&self, port: PortId) -> u64 {
        self.ports.get(usize::from(port)).map_or(0, |p| p.tx_count)
    }

    /// Packets returned by `rx_burst` on `port` so far.
    pub fn rx_count(&self, port: PortId) -> u64 {
        self.ports.get(usize::from(port)).map_or(0, |p| p.rx_count)
    }

    /// Take the packets transmitted on `port` since the last call, in order.
    pub fn take_tx(&mut self, port: PortId) -> Vec<Vec<u8>> {
        self.ports
            .get_mut(usize::from(port))
            .map(|p| std::mem::take(&mut p.tx))
            .unwrap_or_default()
    }

    /// Frames currently in the free pool (all of them when nothing leaked
    /// and nothing is queued or held).
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// `free` calls that named a frame already free or out of range
    /// (ignored, counted here).
    pub fn invalid_frees(&self) -> u64 {
        self.invalid_frees
    }

    /// `tx_burst` descriptors rejected as invalid (frame free or out of
    /// range, packet outside its frame, zero length).
    pub fn invalid_tx(&self) -> u64 {
        self.invalid_tx
    }

    fn port_mut(&mut self, port: PortId) -> &mut MemPort {
        let n = self.ports.len();
        self.ports
            .get_mut(usize::from(port))
            .unwrap_or_else(|| panic!("MemIo port {port} does not exist ({n} ports)"))
    }
}

impl crate::FramesRef for MemIo {
    fn memory_ref(&self) -> &MemFrames {
        &self.mem
    }
}

impl PacketIo for MemIo {
    type Memory = MemFrames;

    #[inline]
    fn memory(&mut self) -> &mut MemFrames {
        &mut self.mem
    }

    fn num_ports(&self) -> usize {
        self.ports.len()
    }

    #[inline]
    fn rx_burst(&mut self, port: PortId, out: &mut [Desc]) -> usize {
        let Some(p) = self.ports.get_mut(usize::from(port)) else {
            return 0;
        };
        let mut n = 0;
        while n < out.len() {
            let Some(d) = p.rx.pop_front() else { break };
            out[n] = d;
            n += 1;
        }
        if !p.template.is_empty() {
            let off = usize::from(Self::RX_OFFSET);
            let len = p.template.len();
            let fs = self.mem.frame_size;
            while n < out.len() {
                let Some(buf) = self.free.pop() else { break };
                self.in_pool[buf as usize] = false;
                let start = buf as usize * fs + off;
                self.mem.data[start..start + len].copy_from_slice(&p.template);
                out[n] = Desc {
                    buf,
                    offset: Self::RX_OFFSET,
                    // Checked against max_packet_len in set_rx_template.
                    len: len as u16,
                };
                n += 1;
            }
        }
        p.rx_count += n as u64;
        n
    }

    #[inline]
    fn tx_burst(&mut self, port: PortId, pkts: &[Desc]) -> usize {
        let Some(p) = self.ports.get_mut(usize::from(port)) else {
            return 0;
        };
        let fs = self.mem.frame_size;
        let limit = pkts.len().min(p.tx_limit);
        let mut n = 0;
        for d in &pkts[..limit] {
            let end = usize::from(d.offset) + usize::from(d.len);
            let owned = self.in_pool.get(d.buf as usize) == Some(&false);
            if !owned || d.len == 0 || end > fs {
                self.invalid_tx += 1;
                break;
            }
            if !p.tx_sink {
                let start = d.buf as usize * fs;
                p.tx.push(self.mem.data[start + usize::from(d.offset)..start + end].to_vec());
            }
            self.in_pool[d.buf as usize] = true;
            self.free.push(d.buf);
            n += 1;
        }
        p.tx_count += n as u64;
        n
    }

    #[inline]
    fn alloc(&mut self, out: &mut [BufIdx]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(buf) = self.free.pop() else { break };
            self.in_pool[buf as usize] = false;
            out[n] = buf;
            n += 1;
        }
        n
    }

    #[inline]
    fn free(&mut self, bufs: &[BufIdx]) {
        for &buf in bufs {
            match self.in_pool.get_mut(buf as usize) {
                Some(in_pool) if !*in_pool => {
                    *in_pool = true;
                    self.free.push(buf);
                }
                _ => self.invalid_frees += 1,
            }
        }
    }

    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }

    /// Nothing can arrive while the caller is blocked here (injecting needs
    /// `&mut self`), so this returns at once when packets are pending and
    /// otherwise sleeps at most 1 ms, so idle engine loops neither spin nor
    /// stall tests.
    fn wait(&mut self, timeout: Duration) -> Result<(), IoError> {
        let pending = self
            .ports
            .iter()
            .any(|p| !p.rx.is_empty() || (!p.template.is_empty() && !self.free.is_empty()));
        if !pending {
            std::thread::sleep(timeout.min(Duration::from_millis(1)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn inject_receive_transmit_roundtrip() {
        let mut io = MemIo::new(8, 2048, 2);
        assert!(io.inject(0, &frame(1, 60)));
        assert!(io.inject(0, &frame(2, 1500)));
        assert_eq!(io.pending_rx(0), 2);
        let mut d = [Desc::default(); 4];
        assert_eq!(io.rx_burst(1, &mut d), 0);
        assert_eq!(io.rx_burst(0, &mut d), 2);
        assert_eq!(d[0].offset, MemIo::RX_OFFSET);
        assert_eq!((d[0].len, d[1].len), (60, 1500));
        let off = usize::from(d[1].offset);
        assert_eq!(
            &io.memory().frame(d[1].buf)[off..off + 1500],
            &frame(2, 1500)[..]
        );
        // Edit in place, then send out of the other port.
        io.memory().frame_mut(d[0].buf)[off] = 0xff;
        assert_eq!(io.tx_burst(1, &d[..2]), 2);
        let tx = io.take_tx(1);
        assert_eq!(tx.len(), 2);
        assert_eq!(tx[0][0], 0xff);
        assert_eq!(tx[0][1..], frame(1, 60)[1..]);
        assert_eq!(tx[1], frame(2, 1500));
        assert!(io.take_tx(1).is_empty());
        assert_eq!((io.rx_count(0), io.tx_count(1)), (2, 2));
        assert_eq!(io.free_frames(), 8);
    }

    #[test]
    fn inject_fails_without_frames_or_when_too_long() {
        let mut io = MemIo::new(2, 512, 1);
        assert!(!io.inject(0, &[0; 257]), "512 - 256 headroom = 256 max");
        assert!(!io.inject(1, &[0; 10]), "no such port");
        assert!(io.inject(0, &[0; 256]));
        assert!(io.inject(0, &[0; 10]));
        assert!(!io.inject(0, &[0; 10]), "pool exhausted");
        assert_eq!(io.free_frames(), 0);
    }

    #[test]
    fn alloc_and_free_track_the_pool() {
        let mut io = MemIo::new(4, 2048, 1);
        let mut b = [0; 8];
        assert_eq!(io.alloc(&mut b), 4);
        assert_eq!(&b[..4], &[0, 1, 2, 3]);
        assert_eq!(io.alloc(&mut b[4..]), 0);
        io.free(&b[..2]);
        assert_eq!(io.free_frames(), 2);
        io.free(&[0, 7, 99]);
        assert_eq!(
            io.invalid_frees(),
            3,
            "double free and out of range are ignored"
        );
        assert_eq!(io.free_frames(), 2);
        io.free(&b[2..4]);
        assert_eq!(io.free_frames(), 4);
    }

    #[test]
    fn tx_rejects_invalid_descriptors_and_stops_there() {
        let mut io = MemIo::new(4, 1024, 1);
        let mut b = [0; 3];
        assert_eq!(io.alloc(&mut b), 3);
        let good = Desc {
            buf: b[0],
            offset: 0,
            len: 1024,
        };
        let too_long = Desc {
            buf: b[1],
            offset: 1,
            len: 1024,
        };
        let last = Desc {
            buf: b[2],
            offset: 0,
            len: 1,
        };
        assert_eq!(io.tx_burst(0, &[good, too_long, last]), 1);
        assert_eq!(io.invalid_tx(), 1);
        // The rejected frames still belong to the caller.
        assert_eq!(io.free_frames(), 2);
        let free_frame = Desc {
            buf: b[0],
            offset: 0,
            len: 1,
        };
        assert_eq!(io.tx_burst(0, &[free_frame]), 0, "frame already given back");
        let empty = Desc {
            buf: b[1],
            offset: 0,
            len: 0,
        };
        assert_eq!(io.tx_burst(0, &[empty]), 0);
        assert_eq!(io.tx_burst(0, &[last]), 1);
        io.free(&[b[1]]);
        assert_eq!(io.free_frames(), 4);
        assert_eq!(io.tx_burst(3, &[last]), 0, "no such port");
    }

    #[test]
    fn template_rx_and_sink_tx_recycle_frames() {
        let mut io = MemIo::new(512, 2048, 2);
        let tpl = frame(7, 64);
        io.set_rx_template(0, &tpl);
        io.set_tx_sink(1, true);
        let mut d = [Desc::default(); 256];
        for _ in 0..100 {
            assert_eq!(io.rx_burst(0, &mut d), 256);
            let off = usize::from(d[255].offset);
            assert_eq!(&io.memory().frame(d[255].buf)[off..off + 64], &tpl[..]);
            assert_eq!(io.tx_burst(1, &d), 256);
        }
        assert_eq!(io.tx_count(1), 25_600);
        assert!(io.take_tx(1).is_empty(), "sink stores nothing");
        assert_eq!(io.free_frames(), 512);
        // Injected packets come first; the template fills the rest, within the pool.
        assert!(io.inject(0, &[1; 60]));
        let mut big = vec![Desc::default(); 600];
        assert_eq!(io.rx_burst(0, &mut big), 512);
        assert_eq!(big[0].len, 60);
        assert_eq!(big[1].len, 64);
        io.free(&big.iter().take(512).map(|d| d.buf).collect::<Vec<_>>());
        io.clear_rx_template(0);
        assert_eq!(io.rx_burst(0, &mut d), 0);
        assert_eq!(io.free_frames(), 512);
    }

    #[test]
    fn tx_limit_simulates_a_full_ring() {
        let mut io = MemIo::new(8, 2048, 1);
        for i in 0..5 {
            assert!(io.inject(0, &[i; 20]));
        }
        let mut d = [Desc::default(); 8];
        let n = io.rx_burst(0, &mut d);
        io.set_tx_limit(0, Some(3));
        assert_eq!(io.tx_burst(0, &d[..n]), 3);
        io.set_tx_limit(0, None);
        assert_eq!(io.tx_burst(0, &d[3..n]), 2);
        let tx = io.take_tx(0);
        assert_eq!(tx.iter().map(|p| p[0]).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn wait_returns_promptly() {
        let mut io = MemIo::new(8, 2048, 1);
        let t = std::time::Instant::now();
        io.wait(Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(io.inject(0, &[0; 20]));
        io.wait(Duration::from_secs(5)).unwrap();
        io.flush().unwrap();
        assert_eq!(io.num_ports(), 1);
    }

    #[test]
    #[should_panic(expected = "does not exist")]
    fn setting_up_a_missing_port_panics() {
        MemIo::new(8, 2048, 1).set_tx_sink(1, true);
    }
}
