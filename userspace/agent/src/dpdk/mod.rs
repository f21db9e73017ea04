//! The DPDK uplink (cargo feature `dpdk`, `node.uplinkDriver: dpdk`): the uplink driven by a
//! DPDK poll-mode driver next to the pods' AF_XDP sockets, and the host's exception path.
//!
//! - [`DpdkUplink::open`] initialises DPDK's EAL from `node.dpdk`, creates the mbuf pool,
//!   opens the device (a PCI NIC bound to vfio-pci, or a virtual device) and a `net_tap`
//!   port whose kernel side is the TAP [`HOST_IF`]; [`DpdkUplink::backend`] gives the
//!   engine worker its [`DpdkIo`] (port 0 the uplink, port 1 the TAP) and the
//!   [`ExceptionPath`] its `HybridIo` classifies the uplink's frames with.
//! - [`host`]: the node's addresses and routes move from the uplink's kernel interface to
//!   the TAP (as Calico VPP's host interface), and back at stop; a virtual device's kernel
//!   interface stops answering.
//! - [`steering`]: the engine's copy of the steering maps `xdp_uplink` would read.
//!
//! The NIC leaves the kernel, so without the agent the node has no network on it (the
//! trade-off of DPDK against the AF_XDP uplink, whose XDP programs keep the host's traffic
//! in the kernel).

pub mod host;
pub mod steering;

use ferroplane_io::dpdk::{DpdkIo, DpdkPool, DpdkPort, Eal, EalConfig, PoolConfig, PortConfig};
use ferroplane_io::steer::Steering;
use ferroplane_io::{ExceptionPath, IoError};

use crate::spec::uplink::DpdkSpec;

/// The kernel name of the host's exception TAP.
pub const HOST_IF: &str = "fp-host0";
/// The DPDK device name of the TAP (`net_tap` prefix: the driver).
const TAP_DEVICE: &str = "net_tap_fp0";

/// Errors of the DPDK uplink.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    /// DPDK refused (EAL, pool, device).
    #[error(transparent)]
    Io(#[from] IoError),
    /// The kernel refused a netlink request.
    #[error("netlink: {0}")]
    Netlink(String),
    /// Anything else.
    #[error("{0}")]
    Config(String),
}

/// The open DPDK uplink: its pool, device and TAP.
pub struct DpdkUplink {
    pool: DpdkPool,
    uplink: DpdkPort,
    tap: DpdkPort,
    steering: Steering,
    device: String,
}

impl std::fmt::Debug for DpdkUplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkUplink")
            .field("device", &self.device)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// The EAL configuration of `spec` for this process.
pub fn eal_config(spec: &DpdkSpec) -> EalConfig {
    EalConfig {
        cores: spec.cores.clone(),
        memory_mb: spec.memory_mb,
        no_huge: spec.no_huge,
        // Unique per agent process (several agents share a host in the e2e suites).
        file_prefix: format!("ferroplane{}", std::process::id()),
        pci_allow: if spec.is_pci() {
            vec![spec.device.clone()]
        } else {
            Vec::new()
        },
        log_level: "warning".into(),
        extra_args: Vec::new(),
    }
}

impl DpdkUplink {
    /// Initialises the EAL, creates the pool and opens the device and the TAP (created in
    /// the calling thread's network namespace).
    pub fn open(spec: &DpdkSpec) -> Result<DpdkUplink, DpdkError> {
        let eal = Eal::init(&eal_config(spec))?;
        let pool = DpdkPool::new(
            &eal,
            PoolConfig {
                num_mbufs: spec.mbufs,
                cache: 0,
                data_room: 2048 + 128,
            },
        )?;
        let uplink = DpdkPort::open(&pool, &PortConfig::new(spec.device.as_str()))?;
        let tap = DpdkPort::open(
            &pool,
            &PortConfig::new(format!("{TAP_DEVICE},iface={HOST_IF}")),
        )?;
        Ok(DpdkUplink {
            pool,
            uplink,
            tap,
            steering: Steering::default(),
            device: spec.device.clone(),
        })
    }

    /// The engine worker's backend: port 0 the uplink, port 1 the TAP, and the exception
    /// path between them.
    pub fn backend(&self) -> Result<(DpdkIo, ExceptionPath), DpdkError> {
        let io = DpdkIo::new(
            &self.pool,
            vec![(self.uplink.clone(), 0), (self.tap.clone(), 0)],
        )?;
        Ok((
            io,
            ExceptionPath {
                uplink: 0,
                host: 1,
                steering: self.steering.clone(),
            },
        ))
    }

    /// The steering tables the exception path reads ([`steering::SteerSync`] keeps them).
    pub fn steering(&self) -> &Steering {
        &self.steering
    }

    /// The uplink's MAC address (the TAP gets it too).
    pub fn mac(&self) -> [u8; 6] {
        self.uplink.mac()
    }

    /// The device string.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The pool (mbufs available / total: the leak check at stop).
    pub fn pool(&self) -> &DpdkPool {
        &self.pool
    }

    /// The uplink port's counters.
    pub fn stats(&self) -> Option<ferroplane_io::dpdk::DpdkPortStats> {
        self.uplink.stats().ok()
    }

    /// The kernel interface a virtual device is bound to (`iface=` of `net_af_packet`,
    /// `net_af_xdp`), none for a PCI device.
    pub fn kernel_iface(&self) -> Option<&str> {
        vdev_iface(&self.device)
    }
}

/// `iface=` of a virtual device string.
pub fn vdev_iface(device: &str) -> Option<&str> {
    device
        .split(',')
        .skip(1)
        .find_map(|kv| kv.strip_prefix("iface="))
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_interface_of_a_vdev() {
        assert_eq!(vdev_iface("net_af_packet0,iface=eth0"), Some("eth0"));
        assert_eq!(
            vdev_iface("net_af_xdp0,iface=up0,start_queue=0,queue_count=1"),
            Some("up0")
        );
        assert_eq!(vdev_iface("0000:01:00.0"), None);
        assert_eq!(vdev_iface("net_af_packet0,iface="), None);
    }

    #[test]
    fn eal_arguments_of_the_spec() {
        let spec = DpdkSpec {
            device: "0000:01:00.0".into(),
            cores: "1".into(),
            memory_mb: 512,
            no_huge: false,
            mbufs: 8191,
        };
        let args = eal_config(&spec).args();
        assert!(args.windows(2).any(|w| w == ["-a", "0000:01:00.0"]));
        assert!(!args.contains(&"--no-huge".to_string()));
        let vdev = DpdkSpec {
            device: "net_af_packet0,iface=eth0".into(),
            no_huge: true,
            ..spec
        };
        let args = eal_config(&vdev).args();
        assert!(args.contains(&"--no-pci".to_string()));
        assert!(args.contains(&"--no-huge".to_string()));
    }
}
