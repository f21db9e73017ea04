//! Ethernet devices driven by DPDK poll-mode drivers: probed from a device string,
//! configured with RX/TX queues fed by a [`DpdkPool`], stopped and removed on drop.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::sync::{Arc, Mutex};

use super::ffi;
use super::pool::DpdkPool;
use crate::IoError;

/// How to open one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// The device: a PCI address bound to vfio-pci (`0000:01:00.0`, also listed in
    /// [`super::EalConfig::pci_allow`]) or a virtual device string
    /// (`net_af_packet0,iface=eth0`, `net_af_xdp0,iface=eth0`). Its name (up to the first
    /// comma) must be unique in the process: a device is opened once (clone the
    /// [`DpdkPort`] to share it).
    pub device: String,
    /// RX and TX queues (one pair per engine worker).
    pub queues: u16,
    /// Descriptors per RX ring (the driver may adjust it).
    pub rx_desc: u16,
    /// Descriptors per TX ring (the driver may adjust it).
    pub tx_desc: u16,
}

impl PortConfig {
    /// One queue pair with 1,024-descriptor rings on `device`.
    pub fn new(device: impl Into<String>) -> Self {
        PortConfig {
            device: device.into(),
            queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
        }
    }
}

/// Counters of a port (`rte_eth_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DpdkPortStats {
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Packets the device dropped because the RX ring was full.
    pub imissed: u64,
    /// Receive errors.
    pub ierrors: u64,
    /// Transmit errors.
    pub oerrors: u64,
    /// Receive failures for want of an mbuf.
    pub rx_nombuf: u64,
}

/// The names of the devices open in this process; its lock serialises device probe,
/// start and removal (DPDK's hotplug and ethdev control calls are not thread-safe).
static OPEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

pub(crate) struct PortInner {
    pub(crate) port_id: u16,
    name: String,
    mac: [u8; 6],
    queues: u16,
    /// `claimed[q]`: queue pair `q` is polled by a [`super::DpdkIo`] (one at a time:
    /// DPDK's burst functions are not thread-safe on one queue).
    claimed: Mutex<Vec<bool>>,
    // Kept until the port is closed: its RX rings hold mbufs of this pool.
    pool: DpdkPool,
}

impl Drop for PortInner {
    fn drop(&mut self) {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&self.name);
        // SAFETY: the last handle to the port is gone, so no thread polls its queues;
        // stopping returns the RX rings' mbufs to the pool, which `pool` keeps alive
        // until after this.
        let rc = unsafe { ffi::fp_dpdk_port_close(self.port_id) };
        if rc < 0 {
            eprintln!(
                "dpdk: closing port {} ({}): {}",
                self.port_id,
                self.name,
                ffi::strerror(-rc)
            );
        }
    }
}

/// A started DPDK Ethernet port; cloning shares it (one clone per worker). Stopped and
/// its device removed when the last clone is dropped.
#[derive(Clone)]
pub struct DpdkPort {
    pub(crate) inner: Arc<PortInner>,
}

impl std::fmt::Debug for DpdkPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkPort")
            .field("port_id", &self.inner.port_id)
            .field("name", &self.inner.name)
            .field("queues", &self.inner.queues)
            .finish()
    }
}

impl DpdkPort {
    /// Probes `config.device`, configures its queues with RX buffers from `pool` and
    /// starts it (promiscuous where the driver has the mode).
    ///
    /// Virtual devices bound to a kernel interface (`net_af_packet`, `net_af_xdp`) open
    /// their sockets in the network namespace of the calling thread.
    pub fn open(pool: &DpdkPool, config: &PortConfig) -> Result<DpdkPort, IoError> {
        let name = config
            .device
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if name.is_empty() || config.queues == 0 {
            return Err(IoError::Config(format!(
                "dpdk: device {:?} with {} queues",
                config.device, config.queues
            )));
        }
        let bad = |_| IoError::Config(format!("dpdk: device {:?} contains NUL", config.device));
        let devargs = CString::new(config.device.as_str()).map_err(bad)?;
        let cname = CString::new(name.as_str()).map_err(bad)?;
        let mut port_id = 0u16;
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        if open.contains(&name) {
            return Err(IoError::Config(format!(
                "dpdk: device {name} is already open in this process"
            )));
        }
        // SAFETY: both strings are NUL-terminated and outlive the call; `port_id` is a
        // valid out-pointer. Probing needs the EAL, which the pool proves.
        let rc = unsafe { ffi::fp_dpdk_probe(devargs.as_ptr(), cname.as_ptr(), &mut port_id) };
        if rc < 0 {
            return Err(IoError::Config(format!(
                "dpdk: cannot open device {:?}: {}",
                config.device,
                ffi::strerror(-rc)
            )));
        }
        let mut mac = [0u8; 6];
        // SAFETY: `port_id` was just found; the pool outlives the port (kept in
        // PortInner); `mac` has the 6 bytes the shim writes.
        let rc = unsafe {
            ffi::fp_dpdk_port_start(
                port_id,
                config.queues,
                config.rx_desc,
                config.tx_desc,
                pool.inner.mp,
                mac.as_mut_ptr(),
            )
        };
        if rc < 0 {
            // SAFETY: the port exists and nothing polls it; removing it lets the same
            // device be probed again.
            unsafe { ffi::fp_dpdk_port_close(port_id) };
            return Err(IoError::Config(format!(
                "dpdk: cannot start device {:?} with {} queues: {}",
                config.device,
                config.queues,
                ffi::strerror(-rc)
            )));
        }
        open.insert(name.clone());
        Ok(DpdkPort {
            inner: Arc::new(PortInner {
                port_id,
                name,
                mac,
                queues: config.queues,
                claimed: Mutex::new(vec![false; usize::from(config.queues)]),
                pool: pool.clone(),
            }),
        })
    }

    /// DPDK's port number.
    pub fn port_id(&self) -> u16 {
        self.inner.port_id
    }

    /// The device name (the device string up to its first comma).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The port's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.inner.mac
    }

    /// Number of RX/TX queue pairs.
    pub fn queues(&self) -> u16 {
        self.inner.queues
    }

    /// Reserves queue pair `queue` for one poller; false if it does not exist or is
    /// taken.
    pub(crate) fn claim(&self, queue: u16) -> bool {
        let mut claimed = self.inner.claimed.lock().unwrap_or_else(|e| e.into_inner());
        match claimed.get_mut(usize::from(queue)) {
            Some(c) if !*c => {
                *c = true;
                true
            }
            _ => false,
        }
    }

    /// Gives back a queue pair reserved by [`DpdkPort::claim`].
    pub(crate) fn release(&self, queue: u16) {
        let mut claimed = self.inner.claimed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = claimed.get_mut(usize::from(queue)) {
            *c = false;
        }
    }

    pub(crate) fn inner_pool(&self) -> &DpdkPool {
        &self.inner.pool
    }

    /// The port's counters.
    pub fn stats(&self) -> Result<DpdkPortStats, IoError> {
        let mut s = [0u64; ffi::PORT_STATS];
        // SAFETY: the port is open (self keeps it); `s` has the PORT_STATS slots the
        // shim writes.
        let rc = unsafe { ffi::fp_dpdk_port_stats(self.inner.port_id, s.as_mut_ptr()) };
        if rc < 0 {
            return Err(IoError::Config(format!(
                "dpdk: stats of port {}: {}",
                self.inner.name,
                ffi::strerror(-rc)
            )));
        }
        Ok(DpdkPortStats {
            ipackets: s[0],
            opackets: s[1],
            ibytes: s[2],
            obytes: s[3],
            imissed: s[4],
            ierrors: s[5],
            oerrors: s[6],
            rx_nombuf: s[7],
        })
    }
}
