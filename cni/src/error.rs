//! The CNI error: one type whose [`CniError::to_json`] is the spec's error JSON.

use serde::{Deserialize, Serialize};

/// Well-known CNI error codes (spec 1.1.0, "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available (cannot service ADD requests).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin is not available due to limited IPAM (no free address).
    pub const LIMITED_IPAM: u32 = 51;
    /// ferroplane: the node's pod CIDR has no free address (plugin-specific, >= 100).
    pub const IPAM_EXHAUSTED: u32 = 100;
    /// ferroplane: CHECK found the attachment not as ADD left it (plugin-specific).
    pub const CHECK_FAILED: u32 = 101;
    /// ferroplane: the agent failed to plumb or tear down the attachment (plugin-specific).
    pub const AGENT_FAILURE: u32 = 102;
    /// ferroplane: a `portMappings` hostPort is taken (another pod's hostPort, a service's
    /// node port, a port of the agent or of the node's own connections; plugin-specific).
    pub const HOSTPORT_CONFLICT: u32 = 103;
}

/// A CNI error: `code`, `msg` and `details` as the spec's error JSON has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    /// Error code (see [`code`]).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with a code and message.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The spec's error JSON for a given `cniVersion`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = serde_json::Value::String(self.details.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_shape() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "agent down").with_details("connect: ENOENT");
        let v = e.to_json("1.1.0");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 11);
        assert_eq!(v["msg"], "agent down");
        assert_eq!(v["details"], "connect: ENOENT");
        let v = CniError::new(7, "x").to_json("1.0.0");
        assert!(v.get("details").is_none());
        assert_eq!(e.to_string(), "CNI error 11: agent down (connect: ENOENT)");
    }
}
