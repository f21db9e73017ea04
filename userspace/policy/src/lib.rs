//! NetworkPolicy compiler: Kubernetes `networking.k8s.io/v1` NetworkPolicies over pods and
//! namespaces, compiled to per-pod ingress and egress ACLs ([`ferroplane_tables::policy`]).
//!
//! Inputs are the Kubernetes objects themselves ([`NetworkPolicy`] from `k8s-openapi`, the
//! type the watchers and the standalone YAML both produce), plus a [`PodInfo`] per pod and
//! the labels of each namespace. Semantics (as the Kubernetes documentation defines them):
//! - a policy selects the pods of its namespace matching `podSelector` (empty: all);
//! - `policyTypes`, when absent or empty, defaults to `Ingress`, plus `Egress` when the
//!   `egress` list is non-empty (the API server's `SetDefaults_NetworkPolicy`; see
//!   [`set_defaults`]): `egress: []` alone does not isolate egress, `policyTypes: []` is the
//!   same as no `policyTypes`;
//! - a pod selected by a policy with type `Ingress` (`Egress`) is isolated in that
//!   direction: only what some selecting policy's rules allow passes (union over policies);
//!   an empty rule list therefore denies everything;
//! - a rule allows traffic matching one of its peers (none listed: every peer) on one of
//!   its ports (none listed: every port and protocol);
//! - a peer is `podSelector` (pods of the policy's namespace), `namespaceSelector` (all pods
//!   of the matching namespaces), both in one peer (pods matching the pod selector in the
//!   matching namespaces), or `ipBlock` (a CIDR minus `except`);
//! - a port is a protocol (TCP default, UDP, SCTP) with a number, a number and `endPort`
//!   (range), a name (resolved against the destination pod's container ports: the pod
//!   itself for ingress, each peer pod for egress), or no port (every port).
//!
//! The [`Compiler`] keeps its inputs and recompiles incrementally: a pod, namespace or
//! policy change marks the policies it can affect (selection or peers, before and after),
//! those mark the pods they select, and only those pods' ACLs are rebuilt. ACLs are
//! interned by content and reference-counted: pods with the same effective policy share one
//! [`Acl`](ferroplane_tables::policy::Acl) (and its hit counters); an ACL nobody uses any
//! more is dropped.
//!
//! Files: `lib.rs` (pods, labels, errors), `parse.rs` (validating and defaulting a
//! NetworkPolicy: selectors, peers, ports, rules), `compiler.rs` (the incremental
//! compiler: what a change affects, resolving peers, interning ACLs).

#![deny(missing_docs)]

mod compiler;
mod parse;
pub mod scenarios;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub use compiler::{CommitStats, Compiler, PodPolicyView};
pub use k8s_openapi::api::networking::v1::NetworkPolicy;
pub use parse::{default_policy_types, set_defaults, validate};

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// An invalid policy, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// Field path (`spec.ingress[0].from[1].ipBlock.cidr`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

/// A pod as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Labels.
    pub labels: Labels,
    /// Named container ports: name -> (protocol number, port).
    pub named_ports: BTreeMap<String, (u8, u16)>,
    /// Whether the pod runs on this node (only local pods get ACLs in the tables).
    pub local: bool,
}

/// `namespace/name`.
pub type Key = (String, String);

#[cfg(test)]
mod tests {
    use super::*;

    fn np(v: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (
                serde_json::json!({"metadata": {"name": "p"}, "spec": {"ingress": [{"ports": [{"port": 80, "endPort": 70}]}]}}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                serde_json::json!({"metadata": {"name": "p"}, "spec": {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}}),
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                serde_json::json!({"metadata": {"name": "p"}, "spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}}}),
                "spec.podSelector.matchExpressions[0].operator",
            ),
            (
                serde_json::json!({"metadata": {"name": "p"}, "spec": {"ingress": [{"ports": [{"protocol": "ICMP"}]}]}}),
                "spec.ingress[0].ports[0].protocol",
            ),
            (
                serde_json::json!({"metadata": {"name": "p"}, "spec": {"policyTypes": ["Both"]}}),
                "spec.policyTypes[0]",
            ),
            (
                serde_json::json!({"metadata": {"name": "p"}, "spec": {"ingress": [{"from": [{}]}]}}),
                "spec.ingress[0].from[0]",
            ),
            (
                serde_json::json!({"metadata": {"name": "p"}, "spec": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]}}),
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
        ];
        for (v, field) in cases {
            let e = validate(&np(v)).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    fn pod(ns: &str, name: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            ip: Ipv4Addr::from(ip),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            named_ports: BTreeMap::new(),
            local: true,
        }
    }

    /// The API server's `SetDefaults_NetworkPolicy` and `SetDefaults_NetworkPolicyPort`:
    /// (spec as written, policyTypes stored).
    #[test]
    fn defaults_are_the_api_servers() {
        let cases = [
            (serde_json::json!({}), vec!["Ingress"]),
            (serde_json::json!({"policyTypes": []}), vec!["Ingress"]),
            (serde_json::json!({"egress": []}), vec!["Ingress"]),
            (
                serde_json::json!({"egress": [{}]}),
                vec!["Ingress", "Egress"],
            ),
            (
                serde_json::json!({"ingress": [], "egress": [{"to": []}]}),
                vec!["Ingress", "Egress"],
            ),
            (
                serde_json::json!({"policyTypes": ["Egress"]}),
                vec!["Egress"],
            ),
            (
                serde_json::json!({"policyTypes": ["Egress"], "egress": [], "ingress": [{}]}),
                vec!["Egress"],
            ),
        ];
        for (spec, want) in cases {
            let mut p = np(serde_json::json!({"metadata": {"name": "p"}, "spec": spec}));
            set_defaults(&mut p);
            let got = p.spec.as_ref().unwrap().policy_types.clone().unwrap();
            assert_eq!(got, want, "{spec}");
            let again = p.clone();
            set_defaults(&mut p);
            assert_eq!(p, again, "idempotent");
        }
        let mut p = np(serde_json::json!({"metadata": {"name": "p"}, "spec": {
            "ingress": [{"ports": [{"port": 80}, {"protocol": "UDP", "port": 53}]}],
            "egress": [{"ports": [{}]}]}}));
        set_defaults(&mut p);
        let s = p.spec.unwrap();
        let ing = s.ingress.unwrap()[0].ports.clone().unwrap();
        assert_eq!(ing[0].protocol.as_deref(), Some("TCP"));
        assert_eq!(ing[1].protocol.as_deref(), Some("UDP"));
        let eg = s.egress.unwrap()[0].ports.clone().unwrap();
        assert_eq!(eg[0].protocol.as_deref(), Some("TCP"));
    }

    /// What the defaults mean for a pod: `egress: []` without policyTypes leaves egress
    /// open; `policyTypes: []` isolates ingress (as no policyTypes does).
    #[test]
    fn empty_lists_isolate_as_the_api_server_defaults_say() {
        let compile = |spec: serde_json::Value| {
            let mut c = Compiler::new();
            c.set_namespace("x", Labels::new());
            c.upsert_pod(pod("x", "a", [10, 0, 0, 1], &[]));
            c.upsert_policy(&np(
                serde_json::json!({"metadata": {"name": "p", "namespace": "x"}, "spec": spec}),
            ))
            .unwrap();
            c.commit();
            let v = c.pod_view("x", "a").unwrap();
            (v.ingress.is_some(), v.egress.is_some())
        };
        assert_eq!(
            compile(serde_json::json!({"podSelector": {}, "egress": []})),
            (true, false),
            "egress: [] alone must not isolate egress"
        );
        assert_eq!(
            compile(serde_json::json!({"podSelector": {}, "policyTypes": []})),
            (true, false),
            "policyTypes: [] is the default: Ingress"
        );
        assert_eq!(
            compile(serde_json::json!({"podSelector": {}, "egress": [{}]})),
            (true, true)
        );
        assert_eq!(
            compile(
                serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": []})
            ),
            (false, true)
        );
    }

    #[test]
    fn identical_acls_are_shared_and_released() {
        let mut c = Compiler::new();
        c.set_namespace("x", Labels::new());
        for i in 0..10u8 {
            c.upsert_pod(pod(
                "x",
                &format!("p{i}"),
                [10, 0, 0, i + 1],
                &[("app", "web")],
            ));
        }
        c.upsert_policy(&np(serde_json::json!({"metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}})))
            .unwrap();
        let s = c.commit();
        assert_eq!(s.acls, 1, "{s:?}");
        assert_eq!(s.acls_built, 1);
        let v = c.pod_view("x", "p3").unwrap();
        assert_eq!(v.ingress.as_ref().unwrap().1, 10);
        assert!(v.egress.is_none());
        // A label change touching nothing the policy uses keeps the ACL; nothing is rebuilt.
        c.upsert_pod(pod("x", "p3", [10, 0, 0, 4], &[("app", "db")]));
        let s = c.commit();
        assert_eq!(s.acls_built, 0, "{s:?}");
        c.remove_policy("x", "deny");
        let s = c.commit();
        assert_eq!(s.acls, 0, "{s:?}");
        assert!(c.tables().is_empty());
    }
}
