//! The backend an engine worker runs on: its AF_XDP sockets ([`XskIo`]) and, in an agent
//! built with the cargo feature `dpdk`, room for a DPDK uplink next to them
//! ([`ferroplane_io::HybridIo`], attached by [`super::PortOpener::exec_backend`] when
//! `node.uplinkDriver: dpdk`; see [`crate::dpdk`]). Without the feature [`EngineIo`] is
//! [`XskIo`] itself. Commands about AF_XDP ports reach the [`XskIo`] through
//! [`EngineXsk::xsk`], whose port ids are the engine's.

use ferroplane_io::XskIo;

/// The backend type of every engine worker.
#[cfg(not(feature = "dpdk"))]
pub type EngineIo = XskIo;

/// The backend type of every engine worker: the pods' AF_XDP sockets and, once attached,
/// the DPDK uplink with its exception TAP.
#[cfg(feature = "dpdk")]
pub type EngineIo = ferroplane_io::HybridIo<XskIo, ferroplane_io::dpdk::DpdkIo>;

/// A worker's backend over its AF_XDP backend (no DPDK uplink yet).
#[cfg(not(feature = "dpdk"))]
pub(super) fn into_engine_io(io: XskIo) -> EngineIo {
    io
}

/// A worker's backend over its AF_XDP backend (no DPDK uplink yet).
#[cfg(feature = "dpdk")]
pub(super) fn into_engine_io(io: XskIo) -> EngineIo {
    ferroplane_io::HybridIo::new(io)
}

/// The AF_XDP part of a worker's backend.
pub trait EngineXsk {
    /// The worker's AF_XDP backend (its port ids are the engine's).
    fn xsk(&mut self) -> &mut XskIo;
}

#[cfg(not(feature = "dpdk"))]
impl EngineXsk for EngineIo {
    fn xsk(&mut self) -> &mut XskIo {
        self
    }
}

#[cfg(feature = "dpdk")]
impl EngineXsk for EngineIo {
    fn xsk(&mut self) -> &mut XskIo {
        self.pods_mut()
    }
}
