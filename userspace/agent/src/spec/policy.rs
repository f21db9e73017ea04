//! The policy part of the spec: namespaces with labels, pods' named container ports,
//! `networkPolicies:` (networking.k8s.io/v1 objects, as `k8s-openapi` types), their API
//! defaults and validation. Compiled into ACLs by [`crate::policy`].

use std::collections::BTreeMap;

use ferroplane_policy::NetworkPolicy;
use serde::Deserialize;

use crate::spec::{ConfigError, NodeSpec};

/// A named container port (`pods[].ports[]`, the shape of a Kubernetes ContainerPort).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerPort {
    /// Name (what policies' named ports refer to).
    #[serde(default)]
    pub name: Option<String>,
    /// Port number.
    pub container_port: u16,
    /// TCP (default), UDP or SCTP.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// Object metadata of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceMeta {
    /// Name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A namespace (`namespaces:`), in Kubernetes object shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSpec {
    /// `v1` (optional).
    #[serde(default)]
    pub api_version: Option<String>,
    /// `Namespace` (optional).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name and labels.
    pub metadata: NamespaceMeta,
}

/// A NetworkPolicy object of the node spec.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct PolicyObject(pub NetworkPolicy);

// NetworkPolicy has no NaN-like values: equality is total.
impl Eq for PolicyObject {}

pub(crate) fn proto(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        _ => None,
    }
}

fn cfg_err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Validate the policy parts of the spec (field-named errors).
pub fn validate(spec: &NodeSpec) -> Result<(), ConfigError> {
    for (i, ns) in spec.namespaces.iter().enumerate() {
        if ns.metadata.name.is_empty() {
            return Err(cfg_err(
                format!("namespaces[{i}].metadata.name"),
                "must not be empty",
            ));
        }
    }
    for (i, pod) in spec.pods.iter().enumerate() {
        for (j, p) in pod.ports.iter().enumerate() {
            if proto(p.protocol.as_deref()).is_none() {
                return Err(cfg_err(
                    format!("pods[{i}].ports[{j}].protocol"),
                    "must be TCP, UDP or SCTP",
                ));
            }
            if p.container_port == 0 {
                return Err(cfg_err(
                    format!("pods[{i}].ports[{j}].containerPort"),
                    "must be 1-65535",
                ));
            }
        }
    }
    for (i, np) in spec.network_policies.iter().enumerate() {
        ferroplane_policy::validate(&np.0)
            .map_err(|e| cfg_err(format!("networkPolicies[{i}].{}", e.field), e.message))?;
    }
    Ok(())
}

/// Applies the API server's defaults to every NetworkPolicy of the spec
/// ([`ferroplane_policy::set_defaults`]: `policyTypes`, port protocols), as the standalone
/// spec and the Kubernetes watchers both do when they take policies in.
pub fn set_defaults(spec: &mut NodeSpec) {
    for np in &mut spec.network_policies {
        ferroplane_policy::set_defaults(&mut np.0);
    }
}
