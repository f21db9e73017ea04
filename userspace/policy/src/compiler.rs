//! The incremental compiler: it keeps pods, namespaces and policies, marks what a change
//! can affect, resolves each affected policy's peers against the current pods, builds the
//! ACL of every affected pod and direction, and interns ACLs by content.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_tables::policy::{
    Acl, AclSpec, AddrSet, Block, Direction, Entry, PodAcls, PolicyTables, PortMatch, RuleRef,
};

use crate::parse::{parse_policy, Peer, Policy, PortSpec, Rule};
use crate::{Key, Labels, NetworkPolicy, PodInfo, PolicyError};

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
