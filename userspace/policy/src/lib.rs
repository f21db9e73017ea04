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
//! [`Acl`] (and its hit counters); an ACL nobody uses any more is dropped.

#![deny(missing_docs)]

pub mod scenarios;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_tables::policy::{
    Acl, AclSpec, AddrSet, Block, Direction, Entry, PodAcls, PolicyTables, PortMatch, RuleRef,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use ferroplane_tables::Ipv4Prefix;
pub use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

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

/// A compiled label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    labels: Vec<(String, String)>,
    exprs: Vec<(String, Op, Vec<String>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    fn parse(sel: &LabelSelector, field: &str) -> Result<Selector, PolicyError> {
        let labels = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut exprs = Vec::new();
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            let op = match e.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                o => {
                    return Err(err(
                        format!("{f}.operator"),
                        format!("{o:?} is not In, NotIn, Exists or DoesNotExist"),
                    ))
                }
            };
            let values = e.values.clone().unwrap_or_default();
            match op {
                Op::In | Op::NotIn if values.is_empty() => {
                    return Err(err(
                        format!("{f}.values"),
                        "must be non-empty for In and NotIn",
                    ))
                }
                Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                    return Err(err(
                        format!("{f}.values"),
                        "must be empty for Exists and DoesNotExist",
                    ))
                }
                _ => {}
            }
            exprs.push((e.key.clone(), op, values));
        }
        Ok(Selector { labels, exprs })
    }

    fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|(k, op, values)| {
                let v = labels.get(k);
                match op {
                    Op::In => v.is_some_and(|v| values.contains(v)),
                    Op::NotIn => v.is_none_or(|v| !values.contains(v)),
                    Op::Exists => v.is_some(),
                    Op::DoesNotExist => v.is_none(),
                }
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    /// Pods matching `pods` (None: all) in the namespaces matching `namespaces`
    /// (None: the policy's own namespace).
    Pods {
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    Block(Block),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortSpec {
    Match(PortMatch),
    Named { proto: u8, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// Empty: every peer.
    peers: Vec<Peer>,
    /// Empty: every port.
    ports: Vec<PortSpec>,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Policy {
    namespace: String,
    name: String,
    selector: Selector,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

fn proto_of(p: Option<&str>, field: &str) -> Result<u8, PolicyError> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(PROTO_TCP),
        "UDP" => Ok(PROTO_UDP),
        "SCTP" => Ok(PROTO_SCTP),
        o => Err(err(field, format!("{o:?} is not TCP, UDP or SCTP"))),
    }
}

fn parse_port(p: &NetworkPolicyPort, f: &str) -> Result<PortSpec, PolicyError> {
    let proto = proto_of(p.protocol.as_deref(), &format!("{f}.protocol"))?;
    let port_num = |n: i32, field: String| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| err(field, format!("{n} is not a port (1-65535)")))
    };
    match (&p.port, p.end_port) {
        (None, None) => Ok(PortSpec::Match(PortMatch::Proto { proto })),
        (None, Some(_)) => Err(err(format!("{f}.endPort"), "requires a numeric port")),
        (Some(IntOrString::Int(n)), end) => {
            let lo = port_num(*n, format!("{f}.port"))?;
            let hi = match end {
                Some(e) => port_num(e, format!("{f}.endPort"))?,
                None => lo,
            };
            if hi < lo {
                return Err(err(
                    format!("{f}.endPort"),
                    format!("{hi} is below port {lo}"),
                ));
            }
            Ok(PortSpec::Match(PortMatch::Range { proto, lo, hi }))
        }
        (Some(IntOrString::String(s)), end) => {
            if end.is_some() {
                return Err(err(format!("{f}.endPort"), "requires a numeric port"));
            }
            if let Ok(n) = s.parse::<i32>() {
                let lo = port_num(n, format!("{f}.port"))?;
                return Ok(PortSpec::Match(PortMatch::Range { proto, lo, hi: lo }));
            }
            if s.is_empty() || s.len() > 15 {
                return Err(err(
                    format!("{f}.port"),
                    format!("{s:?} is not a port name"),
                ));
            }
            Ok(PortSpec::Named {
                proto,
                name: s.clone(),
            })
        }
    }
}

fn parse_cidr(s: &str, field: &str) -> Result<Ipv4Prefix, PolicyError> {
    s.parse::<Ipv4Prefix>()
        .map_err(|e| err(field, e.to_string()))
}

fn parse_peer(p: &NetworkPolicyPeer, f: &str) -> Result<Peer, PolicyError> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(err(
                f,
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            ));
        }
        let cidr = parse_cidr(&b.cidr, &format!("{f}.ipBlock.cidr"))?;
        let mut except = Vec::new();
        for (i, e) in b.except.iter().flatten().enumerate() {
            let field = format!("{f}.ipBlock.except[{i}]");
            let e = parse_cidr(e, &field)?;
            if !(cidr.len() < e.len() && cidr.contains(e.addr())) {
                return Err(err(field, format!("{e} is not strictly inside {cidr}")));
            }
            except.push(e);
        }
        return Ok(Peer::Block(Block { cidr, except }));
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err(err(
            f,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        ));
    }
    Ok(Peer::Pods {
        pods: p
            .pod_selector
            .as_ref()
            .map(|s| Selector::parse(s, &format!("{f}.podSelector")))
            .transpose()?,
        namespaces: p
            .namespace_selector
            .as_ref()
            .map(|s| Selector::parse(s, &format!("{f}.namespaceSelector")))
            .transpose()?,
    })
}

/// A raw rule: its peers (`from` / `to`) and ports.
type RawRule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

fn parse_rules(
    rules: &[RawRule<'_>],
    field: &str,
    peer_field: &str,
) -> Result<Vec<Rule>, PolicyError> {
    rules
        .iter()
        .enumerate()
        .map(|(i, (peers, ports))| {
            let f = format!("{field}[{i}]");
            Ok(Rule {
                peers: peers
                    .iter()
                    .flat_map(|v| v.iter())
                    .enumerate()
                    .map(|(j, p)| parse_peer(p, &format!("{f}.{peer_field}[{j}]")))
                    .collect::<Result<_, _>>()?,
                ports: ports
                    .iter()
                    .flat_map(|v| v.iter())
                    .enumerate()
                    .map(|(j, p)| parse_port(p, &format!("{f}.ports[{j}]")))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

/// The `policyTypes` the API server gives a policy (`SetDefaults_NetworkPolicy` in
/// `k8s.io/kubernetes/pkg/apis/networking/v1/defaults.go`): the listed ones when the list is
/// non-empty, else `Ingress`, plus `Egress` when the `egress` list is non-empty.
pub fn default_policy_types(
    spec: &k8s_openapi::api::networking::v1::NetworkPolicySpec,
) -> Vec<String> {
    match &spec.policy_types {
        Some(t) if !t.is_empty() => t.clone(),
        _ => {
            let mut t = vec!["Ingress".to_string()];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                t.push("Egress".to_string());
            }
            t
        }
    }
}

/// Applies the API server's defaults to a NetworkPolicy, as a `kubectl apply` would find
/// it stored: `spec.policyTypes` ([`default_policy_types`]) and every port's `protocol`
/// (`TCP`, `SetDefaults_NetworkPolicyPort`). Idempotent. The standalone spec and the
/// Kubernetes watchers both run it on every policy they take in; the compiler applies the
/// same rules itself, so an undefaulted policy is compiled the same way.
pub fn set_defaults(np: &mut NetworkPolicy) {
    let Some(spec) = np.spec.as_mut() else {
        return;
    };
    spec.policy_types = Some(default_policy_types(spec));
    let ports = spec
        .ingress
        .iter_mut()
        .flatten()
        .flat_map(|r| r.ports.iter_mut().flatten())
        .chain(
            spec.egress
                .iter_mut()
                .flatten()
                .flat_map(|r| r.ports.iter_mut().flatten()),
        );
    for p in ports {
        p.protocol.get_or_insert_with(|| "TCP".to_string());
    }
}

/// Check a policy; the error names the offending field (`spec.ingress[0].ports[1].endPort`).
pub fn validate(np: &NetworkPolicy) -> Result<(), PolicyError> {
    parse_policy(np).map(|_| ())
}

fn parse_policy(np: &NetworkPolicy) -> Result<Policy, PolicyError> {
    let name = np
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("metadata.name", "required"))?;
    let namespace = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = np.spec.as_ref().ok_or_else(|| err("spec", "required"))?;
    let selector = Selector::parse(
        &spec.pod_selector.clone().unwrap_or_default(),
        "spec.podSelector",
    )?;
    let mut ingress_t = false;
    let mut egress_t = false;
    for (i, t) in default_policy_types(spec).iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress_t = true,
            "Egress" => egress_t = true,
            o => {
                return Err(err(
                    format!("spec.policyTypes[{i}]"),
                    format!("{o:?} is not Ingress or Egress"),
                ))
            }
        }
    }
    let ing: Vec<_> = spec
        .ingress
        .iter()
        .flatten()
        .map(|r| (r.from.as_ref(), r.ports.as_ref()))
        .collect();
    let eg: Vec<_> = spec
        .egress
        .iter()
        .flatten()
        .map(|r| (r.to.as_ref(), r.ports.as_ref()))
        .collect();
    let ingress = parse_rules(&ing, "spec.ingress", "from")?;
    let egress = parse_rules(&eg, "spec.egress", "to")?;
    Ok(Policy {
        namespace,
        name,
        selector,
        ingress: ingress_t.then_some(ingress),
        egress: egress_t.then_some(egress),
    })
}

/// Peers of a rule resolved against the current pods and namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResolvedRule {
    /// Every peer (no peers listed).
    all: bool,
    blocks: Vec<Block>,
    /// Peer pods, sorted by address.
    pods: Vec<(Ipv4Addr, Key)>,
    ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, Default)]
struct Resolved {
    selected: BTreeSet<Key>,
    ingress: Option<Vec<ResolvedRule>>,
    egress: Option<Vec<ResolvedRule>>,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Policies re-resolved.
    pub policies: usize,
    /// Pods whose ACLs were rebuilt.
    pub pods: usize,
    /// ACLs compiled (new content).
    pub acls_built: usize,
    /// Distinct ACLs in use.
    pub acls: usize,
}

struct Interned {
    acl: Arc<Acl>,
    refs: usize,
}

/// A pod's compiled state, for display.
#[derive(Debug, Clone)]
pub struct PodPolicyView {
    /// The pod.
    pub pod: PodInfo,
    /// Policies selecting it (`namespace/name`).
    pub policies: Vec<String>,
    /// Ingress ACL (None: not isolated) and the number of pods sharing it.
    pub ingress: Option<(Arc<Acl>, usize)>,
    /// Egress ACL and the number of pods sharing it.
    pub egress: Option<(Arc<Acl>, usize)>,
}

/// The incremental compiler.
#[derive(Default)]
pub struct Compiler {
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<Key, PodInfo>,
    policies: BTreeMap<Key, Policy>,
    resolved: BTreeMap<Key, Resolved>,
    pod_acls: BTreeMap<Key, PodAcls>,
    acls: HashMap<AclSpec, Interned>,
    dirty_policies: BTreeSet<Key>,
    dirty_pods: BTreeSet<Key>,
    generation: u64,
    tables: Arc<PolicyTables>,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler")
            .field("namespaces", &self.namespaces.len())
            .field("pods", &self.pods.len())
            .field("policies", &self.policies.len())
            .field("acls", &self.acls.len())
            .field("generation", &self.generation)
            .finish()
    }
}

impl Compiler {
    /// An empty compiler.
    pub fn new() -> Compiler {
        Compiler::default()
    }

    fn ns_labels(&self, ns: &str) -> Labels {
        self.namespaces.get(ns).cloned().unwrap_or_default()
    }

    /// Whether `policy` selects `pod` or has a peer matching it.
    fn touches(&self, policy: &Policy, pod: &PodInfo, ns_labels: &Labels) -> bool {
        if policy.namespace == pod.namespace && policy.selector.matches(&pod.labels) {
            return true;
        }
        policy
            .ingress
            .iter()
            .chain(policy.egress.iter())
            .flatten()
            .any(|r| {
                // An ipBlock does not depend on pods, except to resolve named ports.
                let named = r.ports.iter().any(|p| matches!(p, PortSpec::Named { .. }));
                r.peers.iter().any(|p| match p {
                    Peer::Pods { .. } => peer_matches(p, &policy.namespace, pod, ns_labels),
                    Peer::Block(b) => named && b.cidr.contains(pod.ip),
                })
            })
    }

    fn mark_for_pod(&mut self, pod: &PodInfo) {
        let labels = self.ns_labels(&pod.namespace);
        let hit: Vec<Key> = self
            .policies
            .iter()
            .filter(|(_, p)| self.touches(p, pod, &labels))
            .map(|(k, _)| k.clone())
            .collect();
        self.dirty_policies.extend(hit);
    }

    /// Set (add or change) a namespace's labels.
    pub fn set_namespace(&mut self, name: &str, labels: Labels) {
        let old = self.namespaces.insert(name.to_string(), labels.clone());
        if old.as_ref() == Some(&labels) {
            return;
        }
        let old = old.unwrap_or_default();
        // Policies with a namespace selector matching the old or the new labels.
        let hit: Vec<Key> = self
            .policies
            .iter()
            .filter(|(_, p)| {
                p.ingress
                    .iter()
                    .chain(p.egress.iter())
                    .flatten()
                    .flat_map(|r| r.peers.iter())
                    .any(|peer| match peer {
                        Peer::Pods {
                            namespaces: Some(s),
                            ..
                        } => s.matches(&old) || s.matches(&labels),
                        _ => false,
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        self.dirty_policies.extend(hit);
    }

    /// Remove a namespace (its labels; pods and policies are removed separately).
    pub fn remove_namespace(&mut self, name: &str) {
        if self.namespaces.contains_key(name) {
            self.set_namespace(name, Labels::new());
            self.namespaces.remove(name);
        }
    }

    /// Add or change a pod.
    pub fn upsert_pod(&mut self, pod: PodInfo) {
        let key = (pod.namespace.clone(), pod.name.clone());
        if let Some(old) = self.pods.get(&key) {
            if *old == pod {
                return;
            }
            let old = old.clone();
            self.mark_for_pod(&old);
        }
        self.mark_for_pod(&pod);
        self.dirty_pods.insert(key.clone());
        self.pods.insert(key, pod);
    }

    /// Remove a pod.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if let Some(old) = self.pods.remove(&key) {
            self.mark_for_pod(&old);
            self.dirty_pods.insert(key);
        }
    }

    /// Add or change a policy (validated first; an invalid policy changes nothing).
    pub fn upsert_policy(&mut self, np: &NetworkPolicy) -> Result<(), PolicyError> {
        let p = parse_policy(np)?;
        let key = (p.namespace.clone(), p.name.clone());
        if self.policies.get(&key) == Some(&p) {
            return Ok(());
        }
        self.policies.insert(key.clone(), p);
        self.dirty_policies.insert(key);
        Ok(())
    }

    /// Remove a policy.
    pub fn remove_policy(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if self.policies.remove(&key).is_some() {
            self.dirty_policies.insert(key);
        }
    }

    /// Replace every input at once (changes are still applied incrementally).
    pub fn sync(
        &mut self,
        namespaces: &BTreeMap<String, Labels>,
        pods: &[PodInfo],
        policies: &[NetworkPolicy],
    ) -> Result<(), PolicyError> {
        let parsed: Vec<Policy> = policies
            .iter()
            .map(parse_policy)
            .collect::<Result<_, _>>()?;
        for (n, l) in namespaces {
            self.set_namespace(n, l.clone());
        }
        let gone: Vec<String> = self
            .namespaces
            .keys()
            .filter(|n| !namespaces.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            self.remove_namespace(&n);
        }
        let want: BTreeSet<Key> = pods
            .iter()
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect();
        let gone: Vec<Key> = self
            .pods
            .keys()
            .filter(|k| !want.contains(*k))
            .cloned()
            .collect();
        for (ns, n) in gone {
            self.remove_pod(&ns, &n);
        }
        for p in pods {
            self.upsert_pod(p.clone());
        }
        let want: BTreeSet<Key> = parsed
            .iter()
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect();
        let gone: Vec<Key> = self
            .policies
            .keys()
            .filter(|k| !want.contains(*k))
            .cloned()
            .collect();
        for (ns, n) in gone {
            self.remove_policy(&ns, &n);
        }
        for p in parsed {
            let key = (p.namespace.clone(), p.name.clone());
            if self.policies.get(&key) != Some(&p) {
                self.policies.insert(key.clone(), p);
                self.dirty_policies.insert(key);
            }
        }
        Ok(())
    }

    fn resolve_rule(&self, r: &Rule, policy_ns: &str) -> ResolvedRule {
        let mut out = ResolvedRule {
            all: r.peers.is_empty(),
            blocks: Vec::new(),
            pods: Vec::new(),
            ports: r.ports.clone(),
        };
        let empty = Labels::new();
        for peer in &r.peers {
            match peer {
                Peer::Block(b) => out.blocks.push(b.clone()),
                Peer::Pods { .. } => {
                    for (k, pod) in &self.pods {
                        let nsl = self.namespaces.get(&pod.namespace).unwrap_or(&empty);
                        if peer_matches(peer, policy_ns, pod, nsl) {
                            out.pods.push((pod.ip, k.clone()));
                        }
                    }
                }
            }
        }
        out.pods.sort();
        out.pods.dedup();
        out.blocks.sort();
        out.blocks.dedup();
        out
    }

    fn resolve(&self, p: &Policy) -> Resolved {
        Resolved {
            selected: self
                .pods
                .iter()
                .filter(|(_, pod)| pod.namespace == p.namespace && p.selector.matches(&pod.labels))
                .map(|(k, _)| k.clone())
                .collect(),
            ingress: p.ingress.as_ref().map(|rs| {
                rs.iter()
                    .map(|r| self.resolve_rule(r, &p.namespace))
                    .collect()
            }),
            egress: p.egress.as_ref().map(|rs| {
                rs.iter()
                    .map(|r| self.resolve_rule(r, &p.namespace))
                    .collect()
            }),
        }
    }

    /// The ACL spec of `pod` in direction `dir` (None: not isolated).
    fn spec_for(&self, key: &Key, pod: &PodInfo, dir: Direction) -> Option<AclSpec> {
        let mut isolated = false;
        let mut rules = Vec::new();
        let mut entries = Vec::new();
        for ((pns, pname), res) in &self.resolved {
            if pns != &pod.namespace || !res.selected.contains(key) {
                continue;
            }
            let list = match dir {
                Direction::Ingress => &res.ingress,
                Direction::Egress => &res.egress,
            };
            let Some(list) = list else { continue };
            isolated = true;
            for (i, r) in list.iter().enumerate() {
                let rule = rules.len() as u32;
                rules.push(RuleRef {
                    namespace: pns.clone(),
                    policy: pname.clone(),
                    index: i as u32,
                });
                self.rule_entries(r, rule, pod, dir, &mut entries);
            }
        }
        if !isolated {
            return None;
        }
        entries.sort();
        entries.dedup();
        Some(AclSpec {
            direction: dir,
            rules,
            entries,
        })
    }

    fn rule_entries(
        &self,
        r: &ResolvedRule,
        rule: u32,
        target: &PodInfo,
        dir: Direction,
        out: &mut Vec<Entry>,
    ) {
        let addrs = if r.all {
            AddrSet::all()
        } else {
            AddrSet {
                blocks: r.blocks.clone(),
                hosts: {
                    let mut h: Vec<Ipv4Addr> = r.pods.iter().map(|(ip, _)| *ip).collect();
                    h.dedup();
                    h
                },
            }
        };
        if addrs.is_empty() {
            return;
        }
        let addrs = Arc::new(addrs);
        let mut push = |ports: PortMatch, addrs: Arc<AddrSet>| {
            out.push(Entry { rule, ports, addrs });
        };
        if r.ports.is_empty() {
            push(PortMatch::All, addrs);
            return;
        }
        for p in &r.ports {
            match p {
                PortSpec::Match(m) => push(*m, addrs.clone()),
                PortSpec::Named { proto, name } => match dir {
                    // Ingress: the destination is the pod itself.
                    Direction::Ingress => {
                        if let Some((pp, port)) = target.named_ports.get(name) {
                            if pp == proto {
                                push(
                                    PortMatch::Range {
                                        proto: *proto,
                                        lo: *port,
                                        hi: *port,
                                    },
                                    addrs.clone(),
                                );
                            }
                        }
                    }
                    // Egress: each destination pod resolves the name itself; addresses
                    // that are not pods (every peer, ipBlocks) use the pods they contain.
                    Direction::Egress => {
                        for pod in self.pods.values() {
                            if !addrs.contains(pod.ip) {
                                continue;
                            }
                            if let Some((pp, port)) = pod.named_ports.get(name) {
                                if pp == proto {
                                    push(
                                        PortMatch::Range {
                                            proto: *proto,
                                            lo: *port,
                                            hi: *port,
                                        },
                                        Arc::new(AddrSet {
                                            blocks: Vec::new(),
                                            hosts: vec![pod.ip],
                                        }),
                                    );
                                }
                            }
                        }
                    }
                },
            }
        }
    }

    fn intern(&mut self, spec: AclSpec, built: &mut usize) -> Arc<Acl> {
        if let Some(i) = self.acls.get_mut(&spec) {
            i.refs += 1;
            return i.acl.clone();
        }
        *built += 1;
        let acl = Arc::new(Acl::new(spec.clone()));
        self.acls.insert(
            spec,
            Interned {
                acl: acl.clone(),
                refs: 1,
            },
        );
        acl
    }

    fn release(&mut self, acl: Option<Arc<Acl>>) {
        if let Some(a) = acl {
            if let Some(i) = self.acls.get_mut(&a.spec) {
                i.refs -= 1;
                if i.refs == 0 {
                    self.acls.remove(&a.spec);
                }
            }
        }
    }

    /// Apply pending changes: re-resolve the affected policies, rebuild the ACLs of the
    /// affected pods, and publish new [`PolicyTables`] when anything changed.
    pub fn commit(&mut self) -> CommitStats {
        let mut stats = CommitStats::default();
        let dirty: Vec<Key> = std::mem::take(&mut self.dirty_policies)
            .into_iter()
            .collect();
        stats.policies = dirty.len();
        for k in dirty {
            let old = self.resolved.remove(&k).unwrap_or_default();
            self.dirty_pods.extend(old.selected.iter().cloned());
            if let Some(p) = self.policies.get(&k) {
                let r = self.resolve(p);
                self.dirty_pods.extend(r.selected.iter().cloned());
                self.resolved.insert(k, r);
            }
        }
        let pods: Vec<Key> = std::mem::take(&mut self.dirty_pods).into_iter().collect();
        stats.pods = pods.len();
        let changed = !pods.is_empty() || stats.policies > 0;
        for k in pods {
            let old = self.pod_acls.remove(&k).unwrap_or_default();
            let new = match self.pods.get(&k).cloned() {
                Some(pod) => {
                    let ing = self.spec_for(&k, &pod, Direction::Ingress);
                    let eg = self.spec_for(&k, &pod, Direction::Egress);
                    PodAcls {
                        ingress: ing.map(|s| self.intern(s, &mut stats.acls_built)),
                        egress: eg.map(|s| self.intern(s, &mut stats.acls_built)),
                    }
                }
                None => PodAcls::default(),
            };
            self.release(old.ingress);
            self.release(old.egress);
            if new.ingress.is_some() || new.egress.is_some() {
                self.pod_acls.insert(k, new);
            }
        }
        stats.acls = self.acls.len();
        if changed {
            self.generation += 1;
            let tables = self.pod_acls.iter().filter_map(|(k, a)| {
                let pod = self.pods.get(k)?;
                pod.local.then(|| (pod.ip, a.clone()))
            });
            self.tables = Arc::new(PolicyTables::new(self.generation, tables));
        }
        stats
    }

    /// The tables in force (after the last [`Compiler::commit`]).
    pub fn tables(&self) -> Arc<PolicyTables> {
        self.tables.clone()
    }

    /// Number of distinct ACLs in use.
    pub fn acl_count(&self) -> usize {
        self.acls.len()
    }

    /// Number of policies.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// The pods, sorted by namespace and name.
    pub fn pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values()
    }

    /// A pod's compiled state.
    pub fn pod_view(&self, namespace: &str, name: &str) -> Option<PodPolicyView> {
        let key = (namespace.to_string(), name.to_string());
        let pod = self.pods.get(&key)?.clone();
        let policies = self
            .resolved
            .iter()
            .filter(|(_, r)| r.selected.contains(&key))
            .map(|((ns, n), _)| format!("{ns}/{n}"))
            .collect();
        let acls = self.pod_acls.get(&key).cloned().unwrap_or_default();
        let refs = |a: Option<Arc<Acl>>| {
            a.map(|a| {
                let n = self.acls.get(&a.spec).map_or(0, |i| i.refs);
                (a, n)
            })
        };
        Some(PodPolicyView {
            pod,
            policies,
            ingress: refs(acls.ingress),
            egress: refs(acls.egress),
        })
    }
}

fn peer_matches(peer: &Peer, policy_ns: &str, pod: &PodInfo, ns_labels: &Labels) -> bool {
    match peer {
        Peer::Block(b) => b.cidr.contains(pod.ip) && !b.except.iter().any(|e| e.contains(pod.ip)),
        Peer::Pods { pods, namespaces } => {
            let ns_ok = match namespaces {
                None => pod.namespace == policy_ns,
                Some(s) => s.matches(ns_labels),
            };
            ns_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
        }
    }
}

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
