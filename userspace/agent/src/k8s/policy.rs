//! NetworkPolicy (networking.k8s.io/v1) semantics over the pods and namespaces the watchers
//! see: which pods are isolated, and whether a given flow is allowed. This is the decision
//! the dataplane's policy stage enforces; [`PolicyModel::allows`] is its reference.
//!
//! Rules (as the Kubernetes documentation defines them): a pod is isolated for ingress
//! (egress) when a policy of its namespace selects it and lists `Ingress` (`Egress`) in its
//! policy types (default: `Ingress`, plus `Egress` when egress rules exist). A flow is
//! allowed when the destination is not ingress-isolated or some selecting policy has an
//! ingress rule matching the source and port, and the source is not egress-isolated or some
//! selecting policy has an egress rule matching the destination and port. An empty peer list
//! matches everything; an empty port list matches every port.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::Ipv4Cidr;

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

#[derive(Debug, Clone, PartialEq)]
enum Peer {
    /// Pods (in the policy's namespace unless `namespaces` is set).
    Pods {
        pods: Option<LabelSelector>,
        namespaces: Option<LabelSelector>,
    },
    /// An address block with exceptions.
    Block {
        cidr: Ipv4Cidr,
        except: Vec<Ipv4Cidr>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortMatch {
    Number { proto: u8, port: u16, end: u16 },
    Named { proto: u8, name: String },
    AnyPort { proto: u8 },
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Rule {
    /// Empty: every peer.
    peers: Vec<Peer>,
    /// Empty: every port.
    ports: Vec<PortMatch>,
}

#[derive(Debug, Clone, PartialEq)]
struct Compiled {
    namespace: String,
    name: String,
    selector: LabelSelector,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

/// Pods, namespaces and compiled policies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyModel {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<PodView>,
    policies: Vec<Compiled>,
}

/// A decision with the policies that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// Why (`ingress of ns/pod denied: isolated by ns/policy`, ...).
    pub reason: String,
}

/// Whether `labels` match `sel` (matchLabels and matchExpressions In/NotIn/Exists/DoesNotExist).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels {
        if ml.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let v = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => v.is_some_and(|v| values.contains(v)),
            "NotIn" => v.is_none_or(|v| !values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn proto_num(p: Option<&str>) -> u8 {
    match p.unwrap_or("TCP") {
        "UDP" => 17,
        "SCTP" => 132,
        _ => 6,
    }
}

fn compile_port(p: &NetworkPolicyPort) -> PortMatch {
    let proto = proto_num(p.protocol.as_deref());
    match &p.port {
        None => PortMatch::AnyPort { proto },
        Some(IntOrString::Int(n)) => {
            let port = u16::try_from(*n).unwrap_or(0);
            let end = p
                .end_port
                .and_then(|e| u16::try_from(e).ok())
                .unwrap_or(port);
            PortMatch::Number { proto, port, end }
        }
        Some(IntOrString::String(name)) => PortMatch::Named {
            proto,
            name: name.clone(),
        },
    }
}

fn compile_peer(p: &NetworkPolicyPeer) -> Option<Peer> {
    if let Some(b) = &p.ip_block {
        return Some(Peer::Block {
            cidr: b.cidr.parse().ok()?,
            except: b
                .except
                .iter()
                .flatten()
                .filter_map(|e| e.parse().ok())
                .collect(),
        });
    }
    Some(Peer::Pods {
        pods: p.pod_selector.clone(),
        namespaces: p.namespace_selector.clone(),
    })
}

impl PolicyModel {
    /// Builds the model.
    pub fn new(
        namespaces: BTreeMap<String, BTreeMap<String, String>>,
        pods: Vec<PodView>,
        policies: &[NetworkPolicy],
    ) -> PolicyModel {
        let policies = policies
            .iter()
            .filter_map(|np| {
                let spec = np.spec.as_ref()?;
                let types: Vec<String> = spec.policy_types.clone().unwrap_or_else(|| {
                    let mut t = vec!["Ingress".to_string()];
                    if spec.egress.is_some() {
                        t.push("Egress".to_string());
                    }
                    t
                });
                let rules =
                    |peers: Vec<Option<Vec<NetworkPolicyPeer>>>,
                     ports: Vec<Option<Vec<NetworkPolicyPort>>>| {
                        peers
                            .into_iter()
                            .zip(ports)
                            .map(|(pe, po)| Rule {
                                peers: pe.iter().flatten().filter_map(compile_peer).collect(),
                                ports: po.iter().flatten().map(compile_port).collect(),
                            })
                            .collect::<Vec<_>>()
                    };
                let ingress = types.iter().any(|t| t == "Ingress").then(|| {
                    let r = spec.ingress.clone().unwrap_or_default();
                    rules(
                        r.iter().map(|x| x.from.clone()).collect(),
                        r.iter().map(|x| x.ports.clone()).collect(),
                    )
                });
                let egress = types.iter().any(|t| t == "Egress").then(|| {
                    let r = spec.egress.clone().unwrap_or_default();
                    rules(
                        r.iter().map(|x| x.to.clone()).collect(),
                        r.iter().map(|x| x.ports.clone()).collect(),
                    )
                });
                Some(Compiled {
                    namespace: np
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    name: np.metadata.name.clone().unwrap_or_default(),
                    selector: spec.pod_selector.clone().unwrap_or_default(),
                    ingress,
                    egress,
                })
            })
            .collect();
        PolicyModel {
            namespaces,
            pods,
            policies,
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

    fn selecting<'a>(&'a self, pod: &'a PodView) -> impl Iterator<Item = &'a Compiled> + 'a {
        self.policies.iter().filter(move |c| {
            c.namespace == pod.namespace && selector_matches(&c.selector, &pod.labels)
        })
    }

    fn peer_matches(
        &self,
        peer: &Peer,
        policy_ns: &str,
        ip: Ipv4Addr,
        pod: Option<&PodView>,
    ) -> bool {
        match peer {
            Peer::Block { cidr, except } => {
                cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
            }
            Peer::Pods { pods, namespaces } => {
                let Some(pod) = pod else { return false };
                let ns_ok = match namespaces {
                    None => pod.namespace == policy_ns,
                    Some(sel) => {
                        let empty = BTreeMap::new();
                        let labels = self.namespaces.get(&pod.namespace).unwrap_or(&empty);
                        selector_matches(sel, labels)
                    }
                };
                ns_ok
                    && pods
                        .as_ref()
                        .is_none_or(|sel| selector_matches(sel, &pod.labels))
            }
        }
    }

    fn rule_matches(
        &self,
        rule: &Rule,
        policy_ns: &str,
        peer_ip: Ipv4Addr,
        peer: Option<&PodView>,
        target: &PodView,
        (proto, port): (u8, u16),
    ) -> bool {
        let peer_ok = rule.peers.is_empty()
            || rule
                .peers
                .iter()
                .any(|p| self.peer_matches(p, policy_ns, peer_ip, peer));
        let port_ok = rule.ports.is_empty()
            || rule.ports.iter().any(|m| match m {
                PortMatch::AnyPort { proto: p } => *p == proto,
                PortMatch::Number {
                    proto: p,
                    port: lo,
                    end,
                } => *p == proto && (*lo..=*end).contains(&port),
                PortMatch::Named { proto: p, name } => {
                    *p == proto && target.named_ports.get(name) == Some(&(proto, port))
                }
            });
        peer_ok && port_ok
    }

    /// Whether a flow `src -> dst` (protocol number, destination port) is allowed.
    pub fn allows(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> Decision {
        let src_pod = self.pod_by_ip(src);
        let dst_pod = self.pod_by_ip(dst);
        if let Some(d) = dst_pod {
            let isolating: Vec<&Compiled> =
                self.selecting(d).filter(|c| c.ingress.is_some()).collect();
            if !isolating.is_empty() {
                let ok = isolating.iter().any(|c| {
                    c.ingress
                        .iter()
                        .flatten()
                        .any(|r| self.rule_matches(r, &c.namespace, src, src_pod, d, (proto, port)))
                });
                if !ok {
                    return Decision {
                        allowed: false,
                        reason: format!(
                            "ingress of {}/{} denied (isolated by {})",
                            d.namespace,
                            d.name,
                            isolating
                                .iter()
                                .map(|c| format!("{}/{}", c.namespace, c.name))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                }
            }
        }
        if let Some(s) = src_pod {
            let isolating: Vec<&Compiled> =
                self.selecting(s).filter(|c| c.egress.is_some()).collect();
            if !isolating.is_empty() {
                // Egress ports are the destination's: named ports resolve on the destination pod.
                let target = dst_pod.unwrap_or(s);
                let ok = isolating.iter().any(|c| {
                    c.egress.iter().flatten().any(|r| {
                        self.rule_matches(r, &c.namespace, dst, dst_pod, target, (proto, port))
                    })
                });
                if !ok {
                    return Decision {
                        allowed: false,
                        reason: format!("egress of {}/{} denied", s.namespace, s.name),
                    };
                }
            }
        }
        Decision {
            allowed: true,
            reason: "allowed".into(),
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
