//! The pods, namespaces and NetworkPolicies the Kubernetes watchers see, and the decision
//! the dataplane's policy stage makes for a flow between them.
//!
//! There is one implementation of the NetworkPolicy semantics: the compiler of
//! `ferroplane-policy`, the same one the standalone YAML spec goes through
//! ([`crate::policy::compile`]). [`PolicyModel::allows`] compiles the model with it (every
//! pod taken as local, so every pod gets its ACLs) and classifies the flow with the
//! compiled tables, exactly as `ip4-policy` does for a new flow.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ferroplane_policy::{Compiler, PodInfo};
use ferroplane_tables::policy::Verdict;
use k8s_openapi::api::networking::v1::NetworkPolicy;

/// A pod as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Node it runs on.
    pub node: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Named container ports: name -> (protocol, port).
    pub named_ports: BTreeMap<String, (u8, u16)>,
}

impl PodView {
    /// The compiler's view of the pod (`local`: it gets ACLs in the tables).
    pub fn info(&self, local: bool) -> PodInfo {
        PodInfo {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            ip: self.ip,
            labels: self.labels.clone(),
            named_ports: self.named_ports.clone(),
            local,
        }
    }
}

/// Pods, namespaces (with their labels) and NetworkPolicies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyModel {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<PodView>,
    policies: Vec<NetworkPolicy>,
}

/// A decision with the policies that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// Why (`ingress of ns/pod denied (isolated by ns/policy)`, ...).
    pub reason: String,
}

impl PolicyModel {
    /// Builds the model.
    pub fn new(
        namespaces: BTreeMap<String, BTreeMap<String, String>>,
        pods: Vec<PodView>,
        policies: &[NetworkPolicy],
    ) -> PolicyModel {
        PolicyModel {
            namespaces,
            pods,
            policies: policies.to_vec(),
        }
    }

    /// The pods.
    pub fn pods(&self) -> &[PodView] {
        &self.pods
    }

    /// Number of policies.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// The pod with address `ip`.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodView> {
        self.pods.iter().find(|p| p.ip == ip)
    }

    /// Whether a new flow `src -> dst` (protocol number, destination port) is allowed: the
    /// model compiled by `ferroplane-policy`, the flow classified by the compiled tables.
    /// A policy the compiler refuses denies (the agent never fails open).
    pub fn allows(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> Decision {
        let mut c = Compiler::new();
        let mut namespaces = self.namespaces.clone();
        for p in &self.pods {
            namespaces.entry(p.namespace.clone()).or_default();
        }
        let pods: Vec<PodInfo> = self.pods.iter().map(|p| p.info(true)).collect();
        if let Err(e) = c.sync(&namespaces, &pods, &self.policies) {
            return Decision {
                allowed: false,
                reason: format!("policy refused: {e}"),
            };
        }
        c.commit();
        let selected_by = |ip: Ipv4Addr| {
            self.pod_by_ip(ip)
                .map(|p| {
                    let by = c
                        .pod_view(&p.namespace, &p.name)
                        .map(|v| v.policies.join(", "))
                        .unwrap_or_default();
                    format!("{}/{} (isolated by {by})", p.namespace, p.name)
                })
                .unwrap_or_else(|| ip.to_string())
        };
        match c.tables().check(src, dst, proto, port) {
            Verdict::Allow => Decision {
                allowed: true,
                reason: "allowed".into(),
            },
            Verdict::DenyIngress => Decision {
                allowed: false,
                reason: format!("ingress of {} denied", selected_by(dst)),
            },
            Verdict::DenyEgress => Decision {
                allowed: false,
                reason: format!("egress of {} denied", selected_by(src)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)]) -> PodView {
        PodView {
            namespace: ns.into(),
            name: name.into(),
            ip: ip.parse().unwrap(),
            node: "n1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            named_ports: [("http".to_string(), (6u8, 8080u16))].into(),
        }
    }

    fn np(json: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn ingress_isolation_and_label_selection() {
        let pol = np(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "api"}}}],
                                  "ports": [{"port": "http"}, {"port": 5432}]}]}
        }));
        let ns = [("default".to_string(), BTreeMap::new())].into();
        let mut pods = vec![
            pod("default", "db", "10.0.0.1", &[("app", "db")]),
            pod("default", "api", "10.0.0.2", &[("role", "api")]),
            pod("default", "web", "10.0.0.3", &[("role", "web")]),
        ];
        let m = PolicyModel::new(ns, pods.clone(), std::slice::from_ref(&pol));
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(m.allows(ip("10.0.0.2"), ip("10.0.0.1"), 6, 5432).allowed);
        assert!(
            m.allows(ip("10.0.0.2"), ip("10.0.0.1"), 6, 8080).allowed,
            "named port"
        );
        assert!(!m.allows(ip("10.0.0.2"), ip("10.0.0.1"), 6, 22).allowed);
        let d = m.allows(ip("10.0.0.3"), ip("10.0.0.1"), 6, 5432);
        assert!(!d.allowed);
        assert!(d.reason.contains("default/db"), "{}", d.reason);
        // Non-isolated destinations accept everything.
        assert!(m.allows(ip("10.0.0.1"), ip("10.0.0.3"), 17, 53).allowed);
        // A label change flips the decision.
        pods[2].labels.insert("role".into(), "api".into());
        let ns = [("default".to_string(), BTreeMap::new())].into();
        let m = PolicyModel::new(ns, pods, &[pol]);
        assert!(m.allows(ip("10.0.0.3"), ip("10.0.0.1"), 6, 5432).allowed);
    }

    #[test]
    fn egress_namespaces_and_blocks() {
        let pol = np(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "out", "namespace": "a"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["x"]}]}},
                                        {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}]}
        }));
        let ns: BTreeMap<String, BTreeMap<String, String>> = [
            ("a".to_string(), BTreeMap::new()),
            (
                "b".to_string(),
                [("team".to_string(), "x".to_string())].into(),
            ),
            ("c".to_string(), BTreeMap::new()),
        ]
        .into();
        let pods = vec![
            pod("a", "p", "10.0.0.1", &[]),
            pod("b", "q", "10.0.0.2", &[]),
            pod("c", "r", "10.0.0.3", &[]),
        ];
        let m = PolicyModel::new(ns, pods, &[pol]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(m.allows(ip("10.0.0.1"), ip("10.0.0.2"), 6, 80).allowed);
        assert!(!m.allows(ip("10.0.0.1"), ip("10.0.0.3"), 6, 80).allowed);
        assert!(m.allows(ip("10.0.0.1"), ip("192.168.2.1"), 6, 80).allowed);
        assert!(!m.allows(ip("10.0.0.1"), ip("192.168.1.1"), 6, 80).allowed);
        // Ingress is not isolated by an egress-only policy.
        assert!(m.allows(ip("10.0.0.3"), ip("10.0.0.1"), 6, 80).allowed);
    }
}
