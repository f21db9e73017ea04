//! The host side of a worker: where punted packets go ([`PuntSink`]) and where the node's
//! own packets come from ([`HostSource`], the punt TUN's read side) to enter the graph.

use ferroplane_io::{BufIdx, FrameMemory, PacketIo};

use super::Worker;
use crate::buffer::BufMeta;

/// Receives punted packets (IPv4, Ethernet header stripped); returns false if not delivered.
pub type PuntSink = Box<dyn FnMut(&[u8]) -> bool>;

/// Where the node's own packets come from: what the host kernel routes to the punt TUN
/// (its traffic to service addresses, see the agent's `hostsvc`). They enter the graph as
/// received on [`crate::interfaces::PUNT_SW_IF`], behind a made-up Ethernet header.
pub trait HostSource {
    /// Whether packets may be waiting (checked every round: must be cheap).
    fn ready(&self) -> bool;
    /// Copy the next waiting packet (IPv4, no link header) into `buf`; `None` when none
    /// waits (or on an error, counted by the caller as nothing read).
    fn read(&mut self, buf: &mut [u8]) -> Option<usize>;
}

impl HostSource for ferroplane_io::TunReader {
    fn ready(&self) -> bool {
        ferroplane_io::TunReader::ready(self)
    }

    fn read(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.try_read(buf).ok().flatten()
    }
}

/// Where a host packet starts in its frame: the XDP headroom, so that encapsulation
/// toward a remote backend finds room in front of it as for received frames.
const HOST_RX_OFFSET: usize = 256;
/// Most host packets taken into the graph per round.
const HOST_BURST: usize = 64;

impl<P: PacketIo> Worker<P>
where
    P::Memory: 'static,
{
    /// Take up to [`HOST_BURST`] of the host's packets into the graph (when its source says
    /// some wait): each is read into a free frame behind an Ethernet header addressed to
    /// the punt interface, as if received on it. Returns how many.
    pub(super) fn poll_host(&mut self, snap: &crate::snapshot::Snapshot) -> usize {
        let Some(host) = self.host.as_mut() else {
            return 0;
        };
        if !host.ready() {
            return 0;
        }
        let mut frames = [0 as BufIdx; HOST_BURST];
        let n = self.io.alloc(&mut frames);
        let mac = snap
            .ifaces
            .get(crate::interfaces::PUNT_SW_IF)
            .map(|i| i.mac)
            .unwrap_or_default();
        let mem = self.io.memory();
        let mut taken = 0;
        let mut bytes = 0u64;
        self.bufs.clear();
        let mut reads = 0;
        while taken < n && reads < 2 * HOST_BURST {
            reads += 1;
            let f = frames[taken];
            let frame = mem.frame_mut(f);
            let Some(room) = frame.get_mut(HOST_RX_OFFSET + 14..) else {
                break;
            };
            let Some(len) = host.read(room) else {
                break;
            };
            // IPv4 only (the agent turns IPv6 off on the TUN); the frame is reused.
            if len < 20 || room[0] >> 4 != 4 || 14 + len > u16::MAX as usize {
                continue;
            }
            let eth = &mut frame[HOST_RX_OFFSET..HOST_RX_OFFSET + 14];
            eth[0..6].copy_from_slice(&mac);
            eth[6..12].copy_from_slice(&mac);
            eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            // `meta` covers every frame; were it not, the frame is reused for the next read.
            let Some(slot) = self.meta.get_mut(f as usize) else {
                continue;
            };
            *slot = BufMeta {
                offset: HOST_RX_OFFSET as u16,
                len: (14 + len) as u16,
                rx_if: crate::interfaces::PUNT_SW_IF,
                tx_if: u16::MAX,
                ..BufMeta::default()
            };
            self.bufs.push(f);
            bytes += (14 + len) as u64;
            taken += 1;
        }
        // Frames left unfilled (nothing more to read) go back to the pool.
        if taken < n {
            self.io.free(&frames[taken..n]);
        }
        let got = self.bufs.len();
        if got == 0 {
            return 0;
        }
        let c = self.stats.iface(crate::interfaces::PUNT_SW_IF);
        c.rx_packets.add(got as u64);
        c.rx_bytes.add(bytes);
        self.graph.enqueue(self.entry, &self.bufs);
        self.graph.run(
            self.io.memory(),
            &mut self.meta,
            snap,
            &self.stats,
            &mut self.trace,
            &mut self.out,
        );
        got
    }
}
