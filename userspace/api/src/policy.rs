//! Data of `show_policies`: the compiled NetworkPolicy ACLs of the node's pods.

use serde::{Deserialize, Serialize};

/// Answer of `show_policies`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PoliciesReport {
    /// Generation of the policy tables in force.
    pub generation: u64,
    /// NetworkPolicies known to the compiler.
    pub policies: usize,
    /// Distinct compiled ACLs (shared between pods with the same effective policy).
    pub acls: usize,
    /// Pods (all, or the one asked for), sorted by namespace and name.
    pub pods: Vec<PodPolicyInfo>,
}

/// One pod's compiled policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PodPolicyInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Address.
    pub ip: String,
    /// Policies selecting the pod (`namespace/name`).
    pub policies: Vec<String>,
    /// Ingress ACL; absent when the pod is not isolated for ingress (everything allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<AclInfo>,
    /// Egress ACL; absent when the pod is not isolated for egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<AclInfo>,
}

/// A compiled ACL.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AclInfo {
    /// Pods sharing this ACL.
    pub shared_by: usize,
    /// Packets no rule allowed (on every pod sharing the ACL).
    pub denied: u64,
    /// Rules, in order; none means deny everything.
    pub rules: Vec<AclRuleInfo>,
}

/// One rule of a compiled ACL.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AclRuleInfo {
    /// Source policy (`namespace/name`).
    pub policy: String,
    /// Index of the rule in the policy's `ingress` / `egress` list.
    pub index: u32,
    /// Ports allowed (`tcp/80`, `udp/1000-2000`, `tcp/any`, `any`).
    pub ports: Vec<String>,
    /// Peers allowed (`10.0.0.0/8 except 10.1.0.0/16`, pod addresses).
    pub peers: Vec<String>,
    /// Packets this rule allowed (on every pod sharing the ACL).
    pub hits: u64,
}
