//! Validating, defaulting and compiling one NetworkPolicy's own text: label selectors,
//! peers (pods, namespaces, ipBlocks), ports (numbers, ranges, names), rules, and the API
//! server's defaulting of `policyTypes`.

use ferroplane_tables::policy::{Block, PortMatch, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use ferroplane_tables::Ipv4Prefix;
use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::{err, Labels, NetworkPolicy, PolicyError};

/// A compiled label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selector {
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) exprs: Vec<(String, Op, Vec<String>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
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

    pub(crate) fn matches(&self, labels: &Labels) -> bool {
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
pub(crate) enum Peer {
    /// Pods matching `pods` (None: all) in the namespaces matching `namespaces`
    /// (None: the policy's own namespace).
    Pods {
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    Block(Block),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortSpec {
    Match(PortMatch),
    Named { proto: u8, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Empty: every peer.
    pub(crate) peers: Vec<Peer>,
    /// Empty: every port.
    pub(crate) ports: Vec<PortSpec>,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) selector: Selector,
    pub(crate) ingress: Option<Vec<Rule>>,
    pub(crate) egress: Option<Vec<Rule>>,
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

pub(crate) fn parse_cidr(s: &str, field: &str) -> Result<Ipv4Prefix, PolicyError> {
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

pub(crate) fn parse_policy(np: &NetworkPolicy) -> Result<Policy, PolicyError> {
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
