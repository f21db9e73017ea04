//! Kubernetes objects turned into the agent's desired-state model: the same types the
//! standalone YAML spec produces ([`RemoteNodeSpec`] for `cluster.nodes`; Services,
//! EndpointSlices and NetworkPolicies as the same `k8s-openapi` objects the spec holds,
//! defaulted, and checked by the same compile step) plus the pod/namespace/policy view
//! ([`PolicyModel`]) that policy enforcement consumes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ferroplane_tables::service::{PROTO_TCP, PROTO_UDP};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceStatus};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::policy::{PodView, PolicyModel};
use crate::spec::cluster::{MacAddr, RemoteNodeSpec};
use crate::spec::services::{
    compile_service, compile_slice, EndpointSliceObject, FieldError, ServiceObject,
};
use crate::spec::{parse_ipv4_net, NodeSpec};

/// Node annotation suffixes the agent publishes and reads (prefixed `<prefix>/`).
pub mod annotation {
    /// The node's VTEP MAC (VXLAN).
    pub const VTEP_MAC: &str = "vtep-mac";
    /// The node's WireGuard public key (base64).
    pub const WIREGUARD_PUBLIC_KEY: &str = "wireguard-public-key";
    /// The node's WireGuard listen port.
    pub const WIREGUARD_PORT: &str = "wireguard-port";
    /// The address other nodes send tunnel traffic to.
    pub const TUNNEL_ADDRESS: &str = "tunnel-address";
    /// The pod CIDR the agent took from the cluster pool (when Node.spec has none).
    pub const POD_CIDR: &str = "pod-cidr";
}

/// What the watchers have seen, as plain object lists.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// NetworkPolicies.
    pub network_policies: Vec<NetworkPolicy>,
}

/// The desired state computed from [`Objects`] for one node.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    /// This node's pod CIDR from its Node object (or its pool annotation), if any.
    pub pod_cidr: Option<Ipv4Net>,
    /// The other nodes (`cluster.nodes`).
    pub remote_nodes: Vec<RemoteNodeSpec>,
    /// Services (the node spec's `services:`).
    pub services: Vec<ServiceObject>,
    /// Their endpoints (the node spec's `endpointSlices:`).
    pub endpoint_slices: Vec<EndpointSliceObject>,
    /// Pods, namespaces and policies.
    pub policy: PolicyModel,
    /// Namespaces with their labels (the node spec's `namespaces:`).
    pub namespaces: Vec<crate::spec::policy::NamespaceSpec>,
    /// NetworkPolicies (the node spec's `networkPolicies:`).
    pub network_policies: Vec<crate::spec::policy::PolicyObject>,
    /// The hostPorts of this node's pods ([`crate::hostports::from_pods`]).
    pub host_ports: Vec<crate::hostports::Binding>,
}

impl DesiredState {
    /// Every pod with an address, as the policy compiler takes them (`local`: runs on `me`).
    /// Pods on other nodes are policy peers; local ones (plumbed through CNI) get ACLs.
    pub fn policy_pods(&self, me: &str) -> Vec<ferroplane_policy::PodInfo> {
        self.policy
            .pods()
            .iter()
            .map(|p| p.info(p.node == me))
            .collect()
    }
}

/// The InternalIP (IPv4) of a Node.
pub fn node_internal_ip(node: &Node) -> Option<Ipv4Addr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    addrs
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// The IPv4 pod CIDR of a Node: `spec.podCIDRs`/`spec.podCIDR`, else the agent's
/// `<prefix>/pod-cidr` annotation.
pub fn node_pod_cidr(node: &Node, prefix: &str) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref();
    let from_spec = spec
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.and_then(|s| s.pod_cidr.clone()))
        .find_map(|c| parse_ipv4_net(&c).ok());
    from_spec.or_else(|| {
        annotation_of(node, prefix, annotation::POD_CIDR).and_then(|c| parse_ipv4_net(c).ok())
    })
}

fn annotation_of<'a>(node: &'a Node, prefix: &str, key: &str) -> Option<&'a String> {
    node.metadata
        .annotations
        .as_ref()?
        .get(&format!("{prefix}/{key}"))
}

fn name_of(m: &ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

fn ns_of(m: &ObjectMeta) -> String {
    m.namespace.clone().unwrap_or_else(|| "default".into())
}

impl DesiredState {
    /// Computes the desired state of node `me`.
    pub fn compute(objects: &Objects, me: &str, prefix: &str) -> DesiredState {
        let pod_cidr = objects
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(me))
            .and_then(|n| node_pod_cidr(n, prefix));
        let mut remote_nodes: Vec<RemoteNodeSpec> = objects
            .nodes
            .iter()
            .filter(|n| n.metadata.name.as_deref() != Some(me))
            .filter_map(|n| remote_node(n, prefix))
            .collect();
        remote_nodes.sort_by(|a, b| a.name.cmp(&b.name));
        DesiredState {
            pod_cidr,
            remote_nodes,
            endpoint_slices: {
                // A slice may outlive its Service (or come first): only slices of known
                // services are part of the desired state.
                let svcs = services(objects);
                let known: std::collections::BTreeSet<(&str, &str)> =
                    svcs.iter().map(|s| (s.namespace(), s.name())).collect();
                endpoint_slices(objects)
                    .into_iter()
                    .filter(|e| {
                        e.service_name()
                            .is_some_and(|n| known.contains(&(e.namespace(), n)))
                    })
                    .collect()
            },
            services: services(objects),
            host_ports: crate::hostports::from_pods(&objects.pods, me),
            policy: policy_model(objects),
            namespaces: {
                let mut v: Vec<_> = objects
                    .namespaces
                    .iter()
                    .map(|n| crate::spec::policy::NamespaceSpec {
                        api_version: Some("v1".into()),
                        kind: Some("Namespace".into()),
                        metadata: crate::spec::policy::NamespaceMeta {
                            name: name_of(&n.metadata),
                            labels: n.metadata.labels.clone().unwrap_or_default(),
                        },
                    })
                    .collect();
                v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
                v
            },
            network_policies: {
                let mut v: Vec<_> = objects
                    .network_policies
                    .iter()
                    .map(|p| {
                        let mut p = p.clone();
                        ferroplane_policy::set_defaults(&mut p);
                        crate::spec::policy::PolicyObject(p)
                    })
                    .collect();
                v.sort_by(|a, b| {
                    (&a.0.metadata.namespace, &a.0.metadata.name)
                        .cmp(&(&b.0.metadata.namespace, &b.0.metadata.name))
                });
                v
            },
        }
    }
}

impl DesiredState {
    /// Writes what the watchers decide into a node spec: services, endpoint slices and the
    /// other nodes (`cluster.nodes`, keeping the cluster settings). The caller validates
    /// the result and feeds it to the same reconciler as a YAML spec.
    pub fn apply_to(&self, spec: &mut NodeSpec) {
        spec.services = self.services.clone();
        spec.endpoint_slices = self.endpoint_slices.clone();
        spec.namespaces = self.namespaces.clone();
        spec.network_policies = self.network_policies.clone();
        if let Some(c) = spec.cluster.as_mut() {
            // A WireGuard node is usable once it has published its public key.
            c.nodes = self
                .remote_nodes
                .iter()
                .filter(|n| {
                    c.mode_of(n) != crate::spec::cluster::Mode::Wireguard || n.public_key.is_some()
                })
                .cloned()
                .collect();
        }
        self.drop_captures(spec);
    }

    /// Leaves out of `spec.services` the entries that would capture traffic that is not
    /// theirs (see [`crate::spec::services::refusals`]: external and load-balancer IPs that are
    /// a pod's, a node's or the cluster's own addresses, health-check ports that clash),
    /// judged against the spec and every pod of the cluster (also the Nodes with no
    /// published pod CIDR yet: their pods' addresses). The rest of each service keeps
    /// working; each entry is logged once and counted
    /// ([`crate::spec::services::ignored_entries`]). The remote nodes must already be in `spec`.
    pub fn drop_captures(&self, spec: &mut NodeSpec) -> usize {
        let protected = crate::spec::services::Protected::of_spec(spec).with_pods(
            self.policy
                .pods()
                .iter()
                .map(|p| (p.ip, format!("{}/{}", p.namespace, p.name))),
        );
        let refused = crate::spec::services::refusals(spec, &protected);
        crate::spec::services::drop_refused(&mut spec.services, &refused)
    }
}

/// A remote Node as `cluster.nodes` has it; `None` without an InternalIP or a pod CIDR.
pub fn remote_node(node: &Node, prefix: &str) -> Option<RemoteNodeSpec> {
    let address = node_internal_ip(node)?;
    let pod_cidr = node_pod_cidr(node, prefix)?;
    Some(RemoteNodeSpec {
        name: name_of(&node.metadata),
        address: annotation_of(node, prefix, annotation::TUNNEL_ADDRESS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(address),
        pod_cidr: Some(pod_cidr),
        mode: None,
        vtep_mac: annotation_of(node, prefix, annotation::VTEP_MAC)
            .and_then(|m| m.parse::<MacAddr>().ok()),
        public_key: annotation_of(node, prefix, annotation::WIREGUARD_PUBLIC_KEY).cloned(),
        wireguard_port: annotation_of(node, prefix, annotation::WIREGUARD_PORT)
            .and_then(|p| p.parse().ok()),
    })
}

fn proto_of(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        _ => None,
    }
}

/// Logs an object the spec cannot take (it is left out of the desired state).
fn left_out<T>(what: &str, meta: &ObjectMeta, r: Result<T, FieldError>) -> Option<T> {
    r.map_err(|e| tracing::warn!("{what} {}/{} left out: {e}", ns_of(meta), name_of(meta)))
        .ok()
}

/// The metadata the dataplane reads (name, namespace, labels), so that what else changes
/// on an object (resourceVersion, managed fields, annotations) is no change of the
/// desired state.
fn trimmed(m: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        namespace: Some(ns_of(m)),
        labels: m.labels.clone(),
        ..ObjectMeta::default()
    }
}

/// Services as the spec's `services:` holds them: ExternalName services left out,
/// metadata and status trimmed to what the dataplane reads, the API defaults applied
/// ([`crate::spec::services::set_service_defaults`]); a Service that does not compile
/// ([`compile_service`]) is left out with a warning naming the field.
pub fn services(objects: &Objects) -> Vec<ServiceObject> {
    let mut v: Vec<ServiceObject> = objects
        .services
        .iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("ExternalName"))
        .filter_map(|s| {
            let mut s = Service {
                metadata: trimmed(&s.metadata),
                spec: s.spec.clone(),
                status: s.status.as_ref().map(|st| ServiceStatus {
                    load_balancer: st.load_balancer.clone(),
                    conditions: None,
                }),
            };
            crate::spec::services::set_service_defaults(&mut s);
            left_out("Service", &s.metadata, compile_service(&s))?;
            Some(ServiceObject(s))
        })
        .collect();
    v.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    v
}

/// IPv4 EndpointSlices as the spec's `endpointSlices:` holds them: metadata trimmed, the
/// API defaults applied ([`crate::spec::services::set_endpoint_slice_defaults`]); a slice
/// that does not compile ([`compile_slice`]) is left out with a warning naming the field.
pub fn endpoint_slices(objects: &Objects) -> Vec<EndpointSliceObject> {
    let mut v: Vec<EndpointSliceObject> = objects
        .endpoint_slices
        .iter()
        .filter(|s| s.address_type == "IPv4")
        .filter_map(|s| {
            let mut s = EndpointSlice {
                metadata: trimmed(&s.metadata),
                ..s.clone()
            };
            crate::spec::services::set_endpoint_slice_defaults(&mut s);
            left_out("EndpointSlice", &s.metadata, compile_slice(&s))?;
            Some(EndpointSliceObject(s))
        })
        .collect();
    v.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    v
}

fn policy_model(objects: &Objects) -> PolicyModel {
    let namespaces: BTreeMap<String, BTreeMap<String, String>> = objects
        .namespaces
        .iter()
        .map(|n| {
            (
                name_of(&n.metadata),
                n.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .collect();
    let pods = objects
        .pods
        .iter()
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ip: Ipv4Addr = status
                .pod_ips
                .iter()
                .flatten()
                .map(|i| i.ip.as_str())
                .chain(status.pod_ip.as_deref())
                .find_map(|a| a.parse().ok())?;
            if p.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
                return None;
            }
            let ports = p
                .spec
                .as_ref()
                .map(|s| {
                    s.containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .filter_map(|cp| {
                            Some((
                                cp.name.clone()?,
                                (
                                    proto_of(cp.protocol.as_deref())?,
                                    u16::try_from(cp.container_port).ok()?,
                                ),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(PodView {
                namespace: ns_of(&p.metadata),
                name: name_of(&p.metadata),
                ip,
                node: p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                labels: p.metadata.labels.clone().unwrap_or_default(),
                named_ports: ports,
            })
        })
        .collect();
    PolicyModel::new(namespaces, pods, &objects.network_policies)
}
