//! The protocol between `ferroplane-cni` and the agent's CNI socket: one JSON request line,
//! one JSON response line, then the connection closes.

use serde::{Deserialize, Serialize};

use crate::error::CniError;
use crate::types::{CniResult, Dns};

/// Version of this protocol (bumped on incompatible changes).
pub const PROTO_VERSION: u32 = 1;

/// Default path of the agent's CNI socket.
pub const DEFAULT_CNI_SOCKET: &str = "/run/ferroplane/cni.sock";

/// The CNI verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Is the plugin ready to service ADD.
    Status,
    /// Report supported versions (never forwarded).
    Version,
    /// Remove what is not in the valid list.
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    /// The spec's name.
    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
            Command::Gc => "GC",
        }
    }
}

/// One attachment: (container id, interface name), as in `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name in the container.
    pub ifname: String,
}

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRequest {
    /// [`PROTO_VERSION`].
    pub proto: u32,
    /// The verb.
    pub command: Command,
    /// Network name (`name` of the configuration).
    pub network: String,
    /// `CNI_CONTAINERID` (empty for STATUS and GC).
    #[serde(default)]
    pub container_id: String,
    /// `CNI_IFNAME`.
    #[serde(default)]
    pub ifname: String,
    /// `CNI_NETNS` (may be empty on DEL).
    #[serde(default)]
    pub netns: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`, if given.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`, if given.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// DNS from the network configuration, echoed in the result.
    #[serde(default)]
    pub dns: Dns,
    /// CHECK: the address `prevResult` says the interface has.
    #[serde(default)]
    pub expect_ip: Option<String>,
    /// GC: the attachments to keep.
    #[serde(default)]
    pub valid_attachments: Vec<Attachment>,
    /// ADD: the runtime's `runtimeConfig.portMappings` (hostPorts), validated by the plugin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
}

/// One entry of `runtimeConfig.portMappings` (the `portMappings` capability of the CNI
/// conventions): traffic to `hostPort` on the node (on `hostIP` when set) goes to
/// `containerPort` of the pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the node.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// `tcp` or `udp` (lower case once validated).
    pub protocol: String,
    /// Node address the mapping is bound to; empty for every address of the node.
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum AgentResponse {
    /// Success; ADD carries its result.
    Ok {
        /// ADD's result (absent for the other verbs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<CniResult>,
    },
    /// Failure, as the CNI error to print.
    Error(CniError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = AgentRequest {
            proto: PROTO_VERSION,
            command: Command::Gc,
            network: "fp".into(),
            container_id: String::new(),
            ifname: String::new(),
            netns: String::new(),
            pod_namespace: None,
            pod_name: None,
            dns: Dns::default(),
            expect_ip: None,
            valid_attachments: vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            }],
            port_mappings: Vec::new(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"command\":\"GC\""), "{s}");
        assert!(s.contains("\"containerID\":\"c1\""), "{s}");
        assert_eq!(serde_json::from_str::<AgentRequest>(&s).unwrap(), r);
        assert!(!s.contains("portMappings"), "{s}");
        let mut r = r;
        r.port_mappings.push(PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        });
        let s = serde_json::to_string(&r).unwrap();
        assert!(
            s.contains(r#""portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]"#),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<AgentRequest>(&s).unwrap(), r);
        let e = AgentResponse::Error(CniError::new(100, "full"));
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<AgentResponse>(&s).unwrap(), e);
        for c in ["ADD", "DEL", "CHECK", "STATUS", "VERSION", "GC"] {
            assert_eq!(Command::parse(c).unwrap().name(), c);
        }
        assert!(Command::parse("add").is_none());
    }
}
