//! The CNI result types (spec 1.1.0 "Success" result) and version handling.

use serde::{Deserialize, Serialize};

/// The spec version this plugin implements.
pub const CNI_VERSION: &str = "1.1.0";

/// Versions the plugin accepts in `cniVersion` (and can emit results for).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// Versions that know the STATUS and GC verbs.
pub const VERBS_1_1: &[&str] = &["1.1.0"];

/// Whether `v` is in [`SUPPORTED_VERSIONS`].
pub fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// An interface in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address (`aa:bb:cc:dd:ee:ff`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The sandbox (netns path) for container interfaces; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An IP configuration in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `ADDRESS/PREFIX`.
    pub address: String,
    /// Default gateway for this subnet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces` of the interface carrying the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination `ADDRESS/PREFIX`.
    pub dst: String,
    /// Next hop (absent: the default gateway of the IP config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// DNS settings in a result (passed through from the network configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A CNI ADD result (the parts ferroplane produces; unknown parts of a `prevResult` are
/// carried as JSON by the plugin, see [`crate::plugin`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// Version of the result.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Interfaces created.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes added.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS.
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// The result as JSON for `cniVersion` `version`: 0.4.0 adds `"version": "4"` to each IP
    /// and has no interface MTU; 1.0.0 has no interface MTU.
    pub fn to_json_for(&self, version: &str) -> serde_json::Value {
        let mut r = self.clone();
        r.cni_version = version.to_string();
        if version != "1.1.0" {
            for i in &mut r.interfaces {
                i.mtu = None;
            }
        }
        let mut v = serde_json::to_value(&r).unwrap_or(serde_json::Value::Null);
        if version == "0.4.0" {
            if let Some(ips) = v.get_mut("ips").and_then(|i| i.as_array_mut()) {
                for ip in ips {
                    ip["version"] = serde_json::Value::String("4".into());
                }
            }
        }
        v
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            cni_version: CNI_VERSION.into(),
            interfaces: vec![
                Interface {
                    name: "fp0123".into(),
                    mac: mac_string([2, 0, 0, 0, 0, 1]),
                    mtu: Some(1500),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: mac_string([2, 0, 0, 0, 0, 2]),
                    mtu: Some(1500),
                    sandbox: Some("/var/run/netns/x".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.10/32".into(),
                gateway: Some("169.254.1.1".into()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".into()),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn result_shapes_per_version() {
        let r = sample();
        let v = r.to_json_for("1.1.0");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mac"], "02:00:00:00:00:01");
        assert_eq!(v["interfaces"][1]["mtu"], 1500);
        assert!(v["interfaces"][0].get("sandbox").is_none());
        assert_eq!(v["ips"][0]["interface"], 1);
        assert!(v["ips"][0].get("version").is_none());
        let v = r.to_json_for("1.0.0");
        assert!(v["interfaces"][1].get("mtu").is_none());
        let v = r.to_json_for("0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        let back: CniResult = serde_json::from_value(r.to_json_for("1.1.0")).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn versions() {
        assert!(is_supported("1.1.0"));
        assert!(is_supported("0.4.0"));
        assert!(!is_supported("0.3.1"));
        assert!(!is_supported("2.0.0"));
    }
}
