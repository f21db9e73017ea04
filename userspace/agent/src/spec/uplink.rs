//! How the uplink is driven: `node.uplinkDriver` and its `node.dpdk` settings.
//!
//! ```yaml
//! node:
//!   uplinkDriver: dpdk             # af_xdp (default) | dpdk
//!   dpdk:
//!     device: 0000:01:00.0         # PCI address (bound to vfio-pci) or a vdev string,
//!                                  # e.g. "net_af_packet0,iface=up0"
//!     cores: "0"                   # EAL lcore list (optional, default "0")
//!     memoryMb: 256                # EAL memory in MiB (optional, default 256)
//!     noHuge: false                # ordinary pages instead of hugepages (vdevs, tests)
//!     mbufs: 8191                  # mbuf pool size (optional)
//! ```

use serde::Deserialize;

use super::ConfigError;

/// Which driver moves the uplink's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
pub enum UplinkDriver {
    /// AF_XDP sockets on the kernel's driver (the XDP programs stay attached).
    #[default]
    #[serde(rename = "af_xdp")]
    AfXdp,
    /// A DPDK poll-mode driver (the NIC leaves the kernel); needs an agent built with the
    /// `dpdk` cargo feature and the `node.dpdk` settings.
    #[serde(rename = "dpdk")]
    Dpdk,
}

impl UplinkDriver {
    /// The name used in the spec and in `show interfaces`.
    pub fn as_str(self) -> &'static str {
        match self {
            UplinkDriver::AfXdp => "af_xdp",
            UplinkDriver::Dpdk => "dpdk",
        }
    }
}

impl std::fmt::Display for UplinkDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_cores() -> String {
    "0".to_string()
}

fn default_memory_mb() -> u32 {
    256
}

fn default_mbufs() -> u32 {
    8191
}

/// The `node.dpdk:` section: the DPDK device and the EAL's resources.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DpdkSpec {
    /// PCI address of the NIC (bound to vfio-pci) or a virtual device string
    /// (`net_af_packet0,iface=up0`, `net_af_xdp0,iface=up0`).
    pub device: String,
    /// The EAL's lcore list (`-l`).
    #[serde(default = "default_cores")]
    pub cores: String,
    /// EAL memory in MiB (`-m`).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Ordinary pages instead of hugepages (`--no-huge`): virtual devices and tests only.
    #[serde(default)]
    pub no_huge: bool,
    /// Number of mbufs in the pool.
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
}

impl DpdkSpec {
    /// True when `device` is a PCI address (`dddd:bb:dd.f`), which the EAL must be allowed
    /// to take; otherwise it is a virtual device string.
    pub fn is_pci(&self) -> bool {
        is_pci_address(&self.device)
    }
}

fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
}

/// Checks `node.uplinkDriver` against `node.dpdk` and against what this binary can do.
pub(super) fn validate(driver: UplinkDriver, dpdk: Option<&DpdkSpec>) -> Result<(), ConfigError> {
    match (driver, dpdk) {
        (UplinkDriver::AfXdp, Some(_)) => Err(ConfigError::invalid(
            "node.dpdk",
            "only used with node.uplinkDriver: dpdk",
        )),
        (UplinkDriver::AfXdp, None) => Ok(()),
        (UplinkDriver::Dpdk, None) => Err(ConfigError::invalid(
            "node.dpdk",
            "node.uplinkDriver: dpdk needs node.dpdk.device",
        )),
        (UplinkDriver::Dpdk, Some(d)) => {
            if d.device.trim().is_empty() || d.device.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    "node.dpdk.device",
                    format!(
                        "{:?}: a PCI address or a vdev string without spaces",
                        d.device
                    ),
                ));
            }
            if d.cores.trim().is_empty() {
                return Err(ConfigError::invalid("node.dpdk.cores", "must not be empty"));
            }
            if d.memory_mb < 64 {
                return Err(ConfigError::invalid(
                    "node.dpdk.memoryMb",
                    format!("{} MiB: at least 64", d.memory_mb),
                ));
            }
            if !(1024..=1 << 20).contains(&d.mbufs) {
                return Err(ConfigError::invalid(
                    "node.dpdk.mbufs",
                    format!("{}: must be in 1024..=1048576", d.mbufs),
                ));
            }
            supported()
        }
    }
}

/// Whether this agent can drive the uplink with DPDK.
fn supported() -> Result<(), ConfigError> {
    if !cfg!(feature = "dpdk") {
        return Err(ConfigError::invalid(
            "node.uplinkDriver",
            "dpdk: this agent was built without DPDK support (rebuild with \
             `--features dpdk`, which needs libdpdk-dev: `cargo xtask deps --dpdk`)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dpdk(device: &str) -> DpdkSpec {
        DpdkSpec {
            device: device.into(),
            cores: default_cores(),
            memory_mb: default_memory_mb(),
            no_huge: false,
            mbufs: default_mbufs(),
        }
    }

    const NODE: &str = "node:\n  name: n\n  uplink: up0\n  address: 192.168.1.2/24\n  \
                        podCIDR: 10.1.0.0/16\n";

    #[test]
    fn the_yaml_fields() {
        let spec = super::super::NodeSpec::from_yaml(NODE).unwrap();
        assert_eq!(spec.node.uplink_driver, UplinkDriver::AfXdp);
        assert_eq!(spec.node.dpdk, None);
        let spec = super::super::NodeSpec::from_yaml(&format!("{NODE}  uplinkDriver: af_xdp\n"));
        assert_eq!(spec.unwrap().node.uplink_driver.to_string(), "af_xdp");
        let e =
            super::super::NodeSpec::from_yaml(&format!("{NODE}  uplinkDriver: vpp\n")).unwrap_err();
        assert_eq!(e.field(), "node.uplinkDriver", "{e}");
        let r = super::super::NodeSpec::from_yaml(&format!(
            "{NODE}  uplinkDriver: dpdk\n  dpdk:\n    device: net_af_packet0,iface=up0\n    \
             noHuge: true\n    memoryMb: 128\n"
        ));
        let with_dpdk = cfg!(feature = "dpdk");
        match r {
            Ok(spec) => {
                assert!(with_dpdk, "accepted without the dpdk feature");
                let d = spec.node.dpdk.unwrap();
                assert!(d.no_huge && d.memory_mb == 128 && d.mbufs == default_mbufs());
            }
            Err(e) => {
                assert!(!with_dpdk, "{e}");
                assert_eq!(e.field(), "node.uplinkDriver", "{e}");
            }
        }
        let e = super::super::NodeSpec::from_yaml(&format!(
            "{NODE}  uplinkDriver: dpdk\n  dpdk:\n    device: x\n    hugepages: 1\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("hugepages"), "{e}");
    }

    #[test]
    fn pci_addresses_and_vdevs() {
        assert!(dpdk("0000:01:00.0").is_pci());
        assert!(dpdk("0000:af:1f.7").is_pci());
        assert!(!dpdk("net_af_packet0,iface=up0").is_pci());
        assert!(!dpdk("0000:01:00.8").is_pci());
        assert!(!dpdk("01:00.0").is_pci());
    }

    #[test]
    fn af_xdp_takes_no_dpdk_section() {
        assert!(validate(UplinkDriver::AfXdp, None).is_ok());
        let e = validate(UplinkDriver::AfXdp, Some(&dpdk("0000:01:00.0"))).unwrap_err();
        assert_eq!(e.field(), "node.dpdk");
    }

    #[test]
    fn dpdk_needs_a_device_and_sane_sizes() {
        let e = validate(UplinkDriver::Dpdk, None).unwrap_err();
        assert_eq!(e.field(), "node.dpdk");
        let e = validate(UplinkDriver::Dpdk, Some(&dpdk(" "))).unwrap_err();
        assert_eq!(e.field(), "node.dpdk.device");
        let mut d = dpdk("net_af_packet0,iface=up0");
        d.memory_mb = 16;
        let e = validate(UplinkDriver::Dpdk, Some(&d)).unwrap_err();
        assert_eq!(e.field(), "node.dpdk.memoryMb");
        let mut d = dpdk("net_af_packet0,iface=up0");
        d.mbufs = 10;
        let e = validate(UplinkDriver::Dpdk, Some(&d)).unwrap_err();
        assert_eq!(e.field(), "node.dpdk.mbufs");
    }

    #[test]
    fn a_valid_dpdk_uplink_needs_an_agent_built_with_dpdk() {
        let r = validate(UplinkDriver::Dpdk, Some(&dpdk("net_af_packet0,iface=up0")));
        if cfg!(feature = "dpdk") {
            assert!(r.is_ok(), "{r:?}");
        } else {
            let e = r.unwrap_err();
            assert_eq!(e.field(), "node.uplinkDriver");
            assert!(e.to_string().contains("built without DPDK support"), "{e}");
        }
    }
}
