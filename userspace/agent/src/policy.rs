//! NetworkPolicy in the standalone node spec: namespaces with labels, pod labels and named
//! container ports, `networkPolicies:` (networking.k8s.io/v1 objects), compiled by
//! [`ferroplane_policy::Compiler`] into the snapshot's per-pod ACLs.
//!
//! ```yaml
//! namespaces:
//!   - metadata: {name: x, labels: {ns: x}}
//! pods:
//!   - name: a
//!     namespace: x
//!     labels: {pod: a}
//!     ports: [{name: http, containerPort: 80, protocol: TCP}]
//!     ...
//! networkPolicies:
//!   - apiVersion: networking.k8s.io/v1
//!     kind: NetworkPolicy
//!     metadata: {name: deny, namespace: x}
//!     spec: {podSelector: {}, policyTypes: [Ingress]}
//! ```
//!
//! The compiler lives as long as the agent ([`compile`] keeps it), so unchanged ACLs keep
//! their identity and hit counters across snapshot rebuilds, and changes recompile only
//! what they affect.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};

use ferroplane_policy::{Compiler, NetworkPolicy, PodInfo};
use ferroplane_tables::policy::PolicyTables;

use crate::spec::policy::proto;
pub use crate::spec::policy::{
    set_defaults, validate, ContainerPort, NamespaceMeta, NamespaceSpec, PolicyObject,
};
use crate::spec::NodeSpec;

/// The compiler input of the spec's pods (all local in standalone mode).
pub fn pods(spec: &NodeSpec) -> Vec<PodInfo> {
    spec.pods
        .iter()
        .map(|p| PodInfo {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            ip: p.ip,
            labels: p.labels.clone(),
            named_ports: p
                .ports
                .iter()
                .filter_map(|c| {
                    Some((
                        c.name.clone()?,
                        (proto(c.protocol.as_deref())?, c.container_port),
                    ))
                })
                .collect(),
            local: true,
        })
        .collect()
}

/// The agent's compiler.
pub fn compiler() -> Arc<Mutex<Compiler>> {
    static C: OnceLock<Arc<Mutex<Compiler>>> = OnceLock::new();
    C.get_or_init(|| Arc::new(Mutex::new(Compiler::new())))
        .clone()
}

/// Compile the spec's policies over the spec's pods (see [`compile_pods`]).
pub fn compile(spec: &NodeSpec) -> Arc<PolicyTables> {
    compile_pods(spec, &pods(spec))
}

/// Every pod the compiler takes on this node, each address once:
/// 1. the spec's pods (standalone YAML, labels as written);
/// 2. pods plumbed through CNI (`cni`: engine key `cni/<container>/<ifname>` and address):
///    the Kubernetes pod with that address when the watchers know it (its namespace,
///    labels and named ports), else namespace `cni`, named after the attachment, without
///    labels (a `podSelector: {}` policy of namespace `cni` selects it); local either way;
/// 3. the other pods the Kubernetes watchers see (`k8s`, `local` set for this node's):
///    policy peers on other nodes, and local pods not plumbed (yet).
pub fn node_pods<'a>(
    spec: &NodeSpec,
    cni: impl IntoIterator<Item = (&'a str, Ipv4Addr)>,
    k8s: &[PodInfo],
) -> Vec<PodInfo> {
    let mut all = pods(spec);
    let mut seen: BTreeSet<Ipv4Addr> = all.iter().map(|p| p.ip).collect();
    for (key, ip) in cni {
        if !seen.insert(ip) {
            continue;
        }
        let pod = match k8s.iter().find(|p| p.ip == ip) {
            Some(p) => PodInfo {
                local: true,
                ..p.clone()
            },
            None => {
                let (ns, name) = key.split_once('/').unwrap_or(("cni", key));
                PodInfo {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    ip,
                    labels: BTreeMap::new(),
                    named_ports: BTreeMap::new(),
                    local: true,
                }
            }
        };
        all.push(pod);
    }
    for p in k8s {
        if seen.insert(p.ip) {
            all.push(p.clone());
        }
    }
    all
}

/// Compile the spec's policies over `pods` (incrementally against the previous call) into
/// the tables for the snapshot. Namespaces named by pods but not listed get no labels. The
/// spec is validated before it gets here ([`validate`]); should a policy still be refused,
/// the error is logged and the tables in force are kept (never fail open to "no policy").
pub fn compile_pods(spec: &NodeSpec, pods: &[PodInfo]) -> Arc<PolicyTables> {
    let c = compiler();
    let mut c = match c.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = pods
        .iter()
        .map(|p| (p.namespace.clone(), BTreeMap::new()))
        .collect();
    for ns in &spec.namespaces {
        namespaces.insert(ns.metadata.name.clone(), ns.metadata.labels.clone());
    }
    let policies: Vec<NetworkPolicy> = spec.network_policies.iter().map(|p| p.0.clone()).collect();
    if let Err(e) = c.sync(&namespaces, pods, &policies) {
        tracing::error!(error = %e, "network policies refused; keeping the tables in force");
        return c.tables();
    }
    let s = c.commit();
    tracing::debug!(?s, "network policies compiled");
    c.tables()
}

/// Copy the policy parts of `from` (a re-read spec file) into `into`: namespaces with their
/// labels, NetworkPolicies, and the labels and named ports of pods present in both (pods
/// themselves are not added or removed here). True when something changed.
pub fn take_policies(into: &mut NodeSpec, from: &NodeSpec) -> bool {
    let mut changed =
        into.namespaces != from.namespaces || into.network_policies != from.network_policies;
    into.namespaces = from.namespaces.clone();
    into.network_policies = from.network_policies.clone();
    for pod in &mut into.pods {
        if let Some(new) = from
            .pods
            .iter()
            .find(|p| p.namespace == pod.namespace && p.name == pod.name)
        {
            if pod.labels != new.labels || pod.ports != new.ports {
                pod.labels = new.labels.clone();
                pod.ports = new.ports.clone();
                changed = true;
            }
        }
    }
    changed
}

fn acl_info(acl: &ferroplane_tables::policy::Acl, shared_by: usize) -> ferroplane_api::AclInfo {
    let hits = acl.hits();
    let rules = acl
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut ports = Vec::new();
            let mut peers = Vec::new();
            for e in acl.spec.entries.iter().filter(|e| e.rule as usize == i) {
                let p = e.ports.to_string();
                if !ports.contains(&p) {
                    ports.push(p);
                }
                for b in &e.addrs.blocks {
                    let mut s = b.cidr.to_string();
                    if !b.except.is_empty() {
                        let ex: Vec<String> = b.except.iter().map(|x| x.to_string()).collect();
                        s.push_str(&format!(" except {}", ex.join(",")));
                    }
                    if !peers.contains(&s) {
                        peers.push(s);
                    }
                }
                for h in &e.addrs.hosts {
                    let s = h.to_string();
                    if !peers.contains(&s) {
                        peers.push(s);
                    }
                }
            }
            ferroplane_api::AclRuleInfo {
                policy: format!("{}/{}", r.namespace, r.policy),
                index: r.index,
                ports,
                peers,
                hits: hits.get(i).copied().unwrap_or(0),
            }
        })
        .collect();
    ferroplane_api::AclInfo {
        shared_by,
        denied: acl.denied(),
        rules,
    }
}

/// The answer of `show_policies`: every pod's compiled ACLs (or those of `pod`,
/// `namespace/name`), with the policies they came from and their counters.
pub fn report(pod: Option<&str>) -> Result<ferroplane_api::PoliciesReport, String> {
    let c = compiler();
    let c = match c.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let keys: Vec<(String, String)> = match pod {
        Some(p) => {
            let (ns, name) = p
                .split_once('/')
                .ok_or_else(|| format!("pod {p:?}: expected NAMESPACE/NAME"))?;
            vec![(ns.to_string(), name.to_string())]
        }
        None => c
            .pods()
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect(),
    };
    let mut pods = Vec::with_capacity(keys.len());
    for (ns, name) in keys {
        let v = c
            .pod_view(&ns, &name)
            .ok_or_else(|| format!("no pod {ns}/{name} on this node"))?;
        pods.push(ferroplane_api::PodPolicyInfo {
            namespace: v.pod.namespace.clone(),
            name: v.pod.name.clone(),
            ip: v.pod.ip.to_string(),
            policies: v.policies,
            ingress: v.ingress.as_ref().map(|(a, n)| acl_info(a, *n)),
            egress: v.egress.as_ref().map(|(a, n)| acl_info(a, *n)),
        });
    }
    Ok(ferroplane_api::PoliciesReport {
        generation: c.tables().generation,
        policies: c.policy_count(),
        acls: c.acl_count(),
        pods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
node: {name: n1, uplink: up0, address: 192.168.100.2/24, podCIDR: 10.244.1.0/24}
namespaces:
  - metadata: {name: x, labels: {ns: x}}
pods:
  - {name: a, namespace: x, netns: pa, ip: 10.244.1.10, labels: {pod: a}, ports: [{name: http, containerPort: 8080}]}
  - {name: b, namespace: x, netns: pb, ip: 10.244.1.11, labels: {pod: b}}
networkPolicies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: a-from-b, namespace: x}
    spec:
      podSelector: {matchLabels: {pod: a}}
      ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: http}]}]
"#;

    /// The spec's policies are stored defaulted (API server rules), and an `egress: []`
    /// policy without policyTypes leaves the pod's egress open, as in a cluster.
    #[test]
    fn spec_policies_get_the_api_server_defaults() {
        let y = SPEC.replace(
            "      ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: http}]}]\n",
            "      ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: http}]}]\n      egress: []\n",
        );
        assert_ne!(y, SPEC);
        let spec = NodeSpec::from_yaml(&y).unwrap();
        let np = &spec.network_policies[0].0;
        let s = np.spec.as_ref().unwrap();
        assert_eq!(s.policy_types, Some(vec!["Ingress".to_string()]));
        let port = &s.ingress.as_ref().unwrap()[0].ports.as_ref().unwrap()[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        let mut c = Compiler::new();
        c.sync(
            &spec
                .namespaces
                .iter()
                .map(|n| (n.metadata.name.clone(), n.metadata.labels.clone()))
                .collect(),
            &pods(&spec),
            std::slice::from_ref(np),
        )
        .unwrap();
        c.commit();
        let v = c.pod_view("x", "a").unwrap();
        assert!(v.ingress.is_some() && v.egress.is_none(), "{v:?}");
    }

    #[test]
    fn cni_pods_take_their_kubernetes_identity() {
        let spec = NodeSpec::from_yaml(SPEC).unwrap();
        let k8s_pod = |name: &str, ip: &str, local: bool| PodInfo {
            namespace: "x".into(),
            name: name.into(),
            ip: ip.parse().unwrap(),
            labels: [("pod".to_string(), "a".to_string())].into(),
            named_ports: BTreeMap::new(),
            local,
        };
        let k8s = [
            k8s_pod("c", "10.244.1.20", false),
            k8s_pod("r", "10.244.2.5", false),
            // The spec's pod a, as the API server has it: the spec wins.
            k8s_pod("a", "10.244.1.10", true),
        ];
        let cni = [
            ("cni/c1/eth0", "10.244.1.20".parse().unwrap()),
            ("cni/c2/eth0", "10.244.1.21".parse().unwrap()),
            ("x/a", "10.244.1.10".parse().unwrap()),
        ];
        let all = node_pods(&spec, cni, &k8s);
        let by_ip = |ip: &str| {
            let ip: Ipv4Addr = ip.parse().unwrap();
            let v: Vec<&PodInfo> = all.iter().filter(|p| p.ip == ip).collect();
            assert_eq!(v.len(), 1, "{ip} once: {all:?}");
            v[0].clone()
        };
        let c = by_ip("10.244.1.20");
        assert_eq!(
            (c.namespace.as_str(), c.name.as_str(), c.local),
            ("x", "c", true)
        );
        assert_eq!(c.labels.get("pod").map(String::as_str), Some("a"));
        let c2 = by_ip("10.244.1.21");
        assert_eq!(
            (c2.namespace.as_str(), c2.name.as_str()),
            ("cni", "c2/eth0")
        );
        assert!(c2.local && c2.labels.is_empty());
        assert!(!by_ip("10.244.2.5").local, "remote pods are peers only");
        assert_eq!(
            by_ip("10.244.1.10").labels.get("pod").map(String::as_str),
            Some("a")
        );
        assert_eq!(all.len(), 5);
        // A CNI pod selected by a policy (x/a-from-b selects pod=a) gets its ACL; a remote
        // pod does not.
        let t = compile_pods(&spec, &all);
        let acl = |ip: &str| {
            t.pod(ip.parse().unwrap())
                .is_some_and(|p| p.ingress.is_some())
        };
        assert!(acl("10.244.1.20") && acl("10.244.1.10"));
        assert!(!acl("10.244.2.5") && !acl("10.244.1.21"));
    }

    #[test]
    fn spec_compiles_to_tables() {
        let spec = NodeSpec::from_yaml(SPEC).unwrap();
        let pods = pods(&spec);
        assert_eq!(pods[0].named_ports.get("http"), Some(&(6, 8080)));
        let t = compile(&spec);
        let (a, b) = (pods[0].ip, pods[1].ip);
        use ferroplane_tables::policy::Verdict;
        assert_eq!(t.check(b, a, 6, 8080), Verdict::Allow);
        assert_eq!(t.check(b, a, 6, 80), Verdict::DenyIngress);
        assert_eq!(t.check(a, b, 6, 80), Verdict::Allow);
    }

    #[test]
    fn take_policies_copies_policy_parts_only() {
        let mut cur = NodeSpec::from_yaml(SPEC).unwrap();
        let same = cur.clone();
        assert!(!take_policies(&mut cur, &same));
        let mut next = NodeSpec::from_yaml(&SPEC.replace("{pod: b}}", "{pod: bb}}")).unwrap();
        next.network_policies.clear();
        next.pods[0].ip = "10.244.1.99".parse().unwrap();
        assert!(take_policies(&mut cur, &next));
        assert!(cur.network_policies.is_empty());
        assert_eq!(
            cur.pods[1].labels.get("pod").map(String::as_str),
            Some("bb")
        );
        assert_eq!(cur.pods[0].ip.to_string(), "10.244.1.10");
    }

    #[test]
    fn report_shows_rules_and_hits() {
        let spec = NodeSpec::from_yaml(SPEC).unwrap();
        let t = compile(&spec);
        let ps = pods(&spec);
        t.check(ps[1].ip, ps[0].ip, 6, 8080);
        t.check(ps[1].ip, ps[0].ip, 6, 81);
        let r = report(Some("x/a")).unwrap();
        assert_eq!(r.pods.len(), 1);
        let p = &r.pods[0];
        assert_eq!(p.policies, vec!["x/a-from-b".to_string()]);
        assert!(p.egress.is_none());
        let ing = p.ingress.as_ref().unwrap();
        assert_eq!(ing.rules.len(), 1);
        assert_eq!(ing.rules[0].ports, vec!["tcp/8080".to_string()]);
        assert_eq!(ing.rules[0].peers, vec!["10.244.1.11".to_string()]);
        assert!(ing.rules[0].hits >= 1);
        assert!(ing.denied >= 1);
        assert!(report(Some("x/zz")).is_err());
        assert!(report(Some("nope")).is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let bad = SPEC.replace("ports: [{port: http}]", "ports: [{port: 90, endPort: 80}]");
        let e = NodeSpec::from_yaml(&bad).unwrap_err();
        assert_eq!(
            e.field(),
            "networkPolicies[0].spec.ingress[0].ports[0].endPort",
            "{e}"
        );
        let bad = SPEC.replace(
            "containerPort: 8080}",
            "containerPort: 8080, protocol: ICMP}",
        );
        let e = NodeSpec::from_yaml(&bad).unwrap_err();
        assert_eq!(e.field(), "pods[0].ports[0].protocol", "{e}");
    }
}
