//! Services and EndpointSlices compiled into what the dataplane uses.
//!
//! The spec holds Services and EndpointSlices as the Kubernetes API has them (the
//! `k8s-openapi` types, whichever source they come from: the YAML spec or the watchers).
//! [`compile_service`] and [`compile_slice`] turn one object into its compiled form
//! ([`CompiledService`], [`CompiledSlice`]), as the policy crate compiles a NetworkPolicy
//! into rules: every value the service tables, the capture checks and BGP use is parsed and
//! checked once here (addresses, ports, protocols, the API's enums), and an object with a
//! value the dataplane cannot take (an IPv6 external IP, a port out of range, an unknown
//! type or protocol) is refused with the field named (`spec.ports[1].port`). The callers
//! put the object's place in front: the YAML spec refuses the whole spec with
//! `services[0].spec.ports[1].port: ...` ([`super::validate`]), the Kubernetes source leaves
//! just that object out with a warning naming the field ([`crate::k8s::model`]).
//!
//! The compiled form is not a mirror of the API: it has no serde, keeps only what the
//! dataplane reads, and reads the API's absent values as the API reference defines them
//! (an endpoint's unset `ready` is ready). Checks across objects (duplicate names, node
//! ports, frontends, captures) are [`super::validate`]'s and [`super::captures`]'.

use std::net::Ipv4Addr;

use ferroplane_tables::service::{PROTO_TCP, PROTO_UDP};
use k8s_openapi::api::core::v1::{self as core, Service};
use k8s_openapi::api::discovery::v1::{self as discovery, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{DEFAULT_AFFINITY_SECONDS, SERVICE_NAME_LABEL};

/// Why an object was refused: the field inside the object (`spec.ports[0].port`) and what
/// is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the offending field inside the object.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// `spec.type` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// Cluster IP only (the default).
    #[default]
    ClusterIP,
    /// Plus a NodePort on every node.
    NodePort,
    /// Plus load-balancer ingress IPs.
    LoadBalancer,
    /// DNS alias: no dataplane.
    ExternalName,
}

/// `spec.externalTrafficPolicy` / `spec.internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// All endpoints.
    Cluster,
    /// Endpoints on this node only.
    Local,
}

/// A service port's `targetPort`: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A port name, resolved per endpoint from its EndpointSlice.
    Name(String),
}

/// A Service, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledService {
    /// `metadata.namespace` (`default` when unset).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.type`.
    pub type_: ServiceType,
    /// The IPv4 cluster IPs, `spec.clusterIP` then `spec.clusterIPs`, without repeats
    /// (none for a headless service; IPv6 ones are left out).
    pub cluster_ips: Vec<Ipv4Addr>,
    /// `spec.ports`, in order.
    pub ports: Vec<CompiledPort>,
    /// `spec.externalIPs`, in order.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[i].ip`, one per ingress entry (`None` for a hostname
    /// entry), whatever the type; [`CompiledService::lb_ips`] has those in force.
    pub ingress_ips: Vec<Option<Ipv4Addr>>,
    /// ClientIP session affinity's timeout in seconds; `None` without affinity.
    pub affinity_secs: Option<u32>,
    /// `spec.externalTrafficPolicy` (unset: not externally reachable, or not defaulted).
    pub external_traffic_policy: Option<TrafficPolicy>,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: Option<TrafficPolicy>,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// `spec.allocateLoadBalancerNodePorts` (unset is `true`).
    pub allocate_load_balancer_node_ports: bool,
}

/// One service port, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPort {
    /// `name` (`""` when unset).
    pub name: String,
    /// `protocol`: [`PROTO_TCP`] (unset) or [`PROTO_UDP`].
    pub proto: u8,
    /// `port` (1-65535).
    pub port: u16,
    /// `targetPort` (unset, `0` or `""`: `port`).
    pub target_port: TargetPort,
    /// `nodePort`.
    pub node_port: Option<u16>,
}

/// `addressType` of an EndpointSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    /// IPv4 addresses: the only ones the dataplane serves.
    IPv4,
    /// IPv6 addresses (their endpoints are not compiled).
    IPv6,
    /// Domain names (their endpoints are not compiled).
    Fqdn,
}

/// An EndpointSlice, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledSlice {
    /// `metadata.namespace` (`default` when unset).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The service it belongs to (its `kubernetes.io/service-name` label).
    pub service: Option<String>,
    /// `addressType`.
    pub address_type: AddressType,
    /// `ports`, in order.
    pub ports: Vec<CompiledEndpointPort>,
    /// `endpoints`, in order (none unless the slice is [`AddressType::IPv4`]).
    pub endpoints: Vec<CompiledEndpoint>,
}

/// One EndpointSlice port, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledEndpointPort {
    /// `name` (`""` when unset): the service port it serves.
    pub name: String,
    /// `protocol`: [`PROTO_TCP`] (unset) or [`PROTO_UDP`].
    pub proto: u8,
    /// `port` (unset: the service's numeric target port, when the slice has no ports).
    pub port: Option<u16>,
}

/// One endpoint of an IPv4 slice, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledEndpoint {
    /// `addresses` (at least one; the first is used, as kube-proxy does).
    pub addresses: Vec<Ipv4Addr>,
    /// `conditions.ready` (unset: `true`).
    pub ready: bool,
    /// `conditions.serving` (unset: `true`).
    pub serving: bool,
    /// `conditions.terminating` (unset: `false`).
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `targetRef` as `namespace/name` (the slice's namespace when unset), for display.
    pub target: Option<String>,
}

/// `metadata.namespace` of an object (`default` when unset, as the spec defaults it).
pub fn namespace_of(m: &ObjectMeta) -> &str {
    m.namespace.as_deref().unwrap_or("default")
}

/// `metadata.name` of an object (`""` when unset).
pub fn name_of(m: &ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or("")
}

fn name(m: &ObjectMeta) -> Result<String, FieldError> {
    match m.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(err("metadata.name", "must not be empty")),
    }
}

fn ipv4(field: impl Into<String>, s: &str) -> Result<Ipv4Addr, FieldError> {
    s.parse()
        .map_err(|_| err(field, format!("{s:?} is not an IPv4 address")))
}

/// A port number (0-65535; whether 0 is allowed is the caller's).
fn port_number(field: impl Into<String>, n: i32) -> Result<u16, FieldError> {
    u16::try_from(n).map_err(|_| err(field, format!("{n} is not a port number")))
}

/// A port number 1-65535.
fn port(field: impl Into<String>, n: i32) -> Result<u16, FieldError> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(err(field, format!("{n}: must be 1..=65535"))),
    }
}

/// The protocol number of a port's `protocol` (unset: TCP).
pub fn proto_of(p: Option<&str>) -> Result<u8, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(PROTO_TCP),
        "UDP" => Ok(PROTO_UDP),
        other => Err(format!("{other:?} is not supported (TCP or UDP)")),
    }
}

fn service_type(s: Option<&str>) -> Result<ServiceType, FieldError> {
    Ok(match s {
        None | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            return Err(err(
                "spec.type",
                format!(
                    "unknown type {other:?} (ClusterIP, NodePort, LoadBalancer or ExternalName)"
                ),
            ))
        }
    })
}

fn traffic_policy(field: &str, s: Option<&str>) -> Result<Option<TrafficPolicy>, FieldError> {
    Ok(match s {
        None => None,
        Some("Cluster") => Some(TrafficPolicy::Cluster),
        Some("Local") => Some(TrafficPolicy::Local),
        Some(other) => {
            return Err(err(
                field,
                format!("unknown policy {other:?} (Cluster or Local)"),
            ))
        }
    })
}

/// `f` over an optional list with each element's index (an absent list is empty).
fn each<T, U>(
    v: &Option<Vec<T>>,
    f: impl Fn(usize, &T) -> Result<U, FieldError>,
) -> Result<Vec<U>, FieldError> {
    v.iter()
        .flatten()
        .enumerate()
        .map(|(i, x)| f(i, x))
        .collect()
}

fn service_port(i: usize, p: &core::ServicePort) -> Result<CompiledPort, FieldError> {
    let at = |f: &str| format!("spec.ports[{i}].{f}");
    let number = port(at("port"), p.port)?;
    let target_port = match &p.target_port {
        None | Some(IntOrString::Int(0)) => TargetPort::Number(number),
        Some(IntOrString::Int(n)) => TargetPort::Number(port(at("targetPort"), *n)?),
        Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(number),
        // "8080" written as a string is a number.
        Some(IntOrString::String(s)) => match s.parse::<u16>() {
            Ok(0) => return Err(err(at("targetPort"), "must be 1..=65535 or a port name")),
            Ok(n) => TargetPort::Number(n),
            Err(_) => TargetPort::Name(s.clone()),
        },
    };
    Ok(CompiledPort {
        name: p.name.clone().unwrap_or_default(),
        proto: proto_of(p.protocol.as_deref()).map_err(|m| err(at("protocol"), m))?,
        port: number,
        target_port,
        node_port: p
            .node_port
            .map(|n| port_number(at("nodePort"), n))
            .transpose()?,
    })
}

/// The IPv4 cluster IPs of a Service spec; anything but an IPv4 or IPv6 address, `None`
/// or `""` is refused.
fn cluster_ips(s: &core::ServiceSpec) -> Result<Vec<Ipv4Addr>, FieldError> {
    let fields = s
        .cluster_ip
        .iter()
        .map(|ip| ("spec.clusterIP".to_string(), ip))
        .chain(
            s.cluster_ips
                .iter()
                .flatten()
                .enumerate()
                .map(|(k, ip)| (format!("spec.clusterIPs[{k}]"), ip)),
        );
    let mut v = Vec::new();
    for (field, ip) in fields {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => {
                if !v.contains(&a) {
                    v.push(a);
                }
            }
            Ok(std::net::IpAddr::V6(_)) => {}
            Err(_) => return Err(err(field, format!("{ip:?} is not an IP address or None"))),
        }
    }
    Ok(v)
}

fn affinity(s: &core::ServiceSpec) -> Result<Option<u32>, FieldError> {
    match s.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let t = s
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match t {
                None => Ok(Some(DEFAULT_AFFINITY_SECONDS)),
                Some(t) if (1..=86400).contains(&t) => Ok(Some(t as u32)),
                Some(t) => Err(err(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is outside 1..=86400"),
                )),
            }
        }
        Some(other) => Err(err(
            "spec.sessionAffinity",
            format!("{other:?}: expected None or ClientIP"),
        )),
    }
}

/// Compiles a Service. Unset values read as the API server would default them; an
/// object the API server defaulted compiles to the same.
pub fn compile_service(s: &Service) -> Result<CompiledService, FieldError> {
    let name = name(&s.metadata)?;
    let spec = s.spec.as_ref().ok_or_else(|| err("spec", "missing"))?;
    let ingress = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    Ok(CompiledService {
        namespace: namespace_of(&s.metadata).to_string(),
        name,
        type_: service_type(spec.type_.as_deref())?,
        cluster_ips: cluster_ips(spec)?,
        ports: each(&spec.ports, service_port)?,
        external_ips: each(&spec.external_ips, |i, a| {
            ipv4(format!("spec.externalIPs[{i}]"), a)
        })?,
        ingress_ips: ingress
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, ing)| {
                ing.ip
                    .as_deref()
                    .map(|a| ipv4(format!("status.loadBalancer.ingress[{i}].ip"), a))
                    .transpose()
            })
            .collect::<Result<_, _>>()?,
        affinity_secs: affinity(spec)?,
        external_traffic_policy: traffic_policy(
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?,
        internal_traffic_policy: traffic_policy(
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        )?,
        health_check_node_port: spec
            .health_check_node_port
            .map(|n| port_number("spec.healthCheckNodePort", n))
            .transpose()?,
        allocate_load_balancer_node_ports: spec.allocate_load_balancer_node_ports != Some(false),
    })
}

impl CompiledService {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The load-balancer ingress IPs in force (LoadBalancer services only).
    pub fn lb_ips(&self) -> Vec<Ipv4Addr> {
        if self.type_ != ServiceType::LoadBalancer {
            return Vec::new();
        }
        self.ingress_ips.iter().flatten().copied().collect()
    }

    /// Whether the service has node ports (NodePort, and LoadBalancer unless
    /// `allocateLoadBalancerNodePorts: false`).
    pub fn has_node_ports(&self) -> bool {
        match self.type_ {
            ServiceType::NodePort => true,
            ServiceType::LoadBalancer => self.allocate_load_balancer_node_ports,
            _ => false,
        }
    }

    /// Whether `externalTrafficPolicy: Local` applies (the service is reachable from
    /// outside: node ports, external IPs or load-balancer IPs).
    pub fn external_local(&self) -> bool {
        self.external_traffic_policy == Some(TrafficPolicy::Local)
            && (self.has_node_ports()
                || !self.external_ips.is_empty()
                || self.type_ == ServiceType::LoadBalancer)
    }

    /// Whether `internalTrafficPolicy: Local` applies.
    pub fn internal_local(&self) -> bool {
        self.internal_traffic_policy == Some(TrafficPolicy::Local)
    }

    /// The health check node port in force (LoadBalancer + externalTrafficPolicy Local).
    pub fn health_check_node_port(&self) -> Option<u16> {
        if self.type_ == ServiceType::LoadBalancer && self.external_local() {
            self.health_check_node_port
        } else {
            None
        }
    }
}

fn endpoint(
    i: usize,
    e: &discovery::Endpoint,
    namespace: &str,
) -> Result<CompiledEndpoint, FieldError> {
    if e.addresses.is_empty() {
        return Err(err(
            format!("endpoints[{i}].addresses"),
            "must list at least one address",
        ));
    }
    let c = e.conditions.as_ref();
    Ok(CompiledEndpoint {
        addresses: e
            .addresses
            .iter()
            .enumerate()
            .map(|(j, a)| ipv4(format!("endpoints[{i}].addresses[{j}]"), a))
            .collect::<Result<_, _>>()?,
        ready: c.and_then(|c| c.ready).unwrap_or(true),
        serving: c.and_then(|c| c.serving).unwrap_or(true),
        terminating: c.and_then(|c| c.terminating).unwrap_or(false),
        node_name: e.node_name.clone(),
        target: e.target_ref.as_ref().map(|t| {
            format!(
                "{}/{}",
                t.namespace.as_deref().unwrap_or(namespace),
                t.name.as_deref().unwrap_or("")
            )
        }),
    })
}

/// Compiles an EndpointSlice. The endpoints of IPv6 and FQDN slices are not compiled
/// (the dataplane serves IPv4).
pub fn compile_slice(s: &EndpointSlice) -> Result<CompiledSlice, FieldError> {
    let name = name(&s.metadata)?;
    let namespace = namespace_of(&s.metadata).to_string();
    let address_type = match s.address_type.as_str() {
        "IPv4" => AddressType::IPv4,
        "IPv6" => AddressType::IPv6,
        "FQDN" => AddressType::Fqdn,
        other => {
            return Err(err(
                "addressType",
                format!("{other:?}: expected IPv4, IPv6 or FQDN"),
            ))
        }
    };
    let ports = each(&s.ports, |i, p| {
        Ok(CompiledEndpointPort {
            name: p.name.clone().unwrap_or_default(),
            proto: proto_of(p.protocol.as_deref())
                .map_err(|m| err(format!("ports[{i}].protocol"), m))?,
            port: p
                .port
                .map(|n| port(format!("ports[{i}].port"), n))
                .transpose()?,
        })
    })?;
    let endpoints = if address_type == AddressType::IPv4 {
        each(&s.endpoints, |i, e| endpoint(i, e, &namespace))?
    } else {
        Vec::new()
    };
    Ok(CompiledSlice {
        service: s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned(),
        namespace,
        name,
        address_type,
        ports,
        endpoints,
    })
}

impl CompiledSlice {
    /// The `namespace/name` of its service, if it names one.
    pub fn service_key(&self) -> Option<String> {
        Some(format!("{}/{}", self.namespace, self.service.as_deref()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn values_are_parsed_once() {
        let s = compile_service(&svc(serde_json::json!({
            "metadata": {"name": "web", "annotations": {"a": "b"}, "uid": "u1"},
            "spec": {"type": "LoadBalancer", "externalIPs": ["203.0.113.5"],
                     "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                     "sessionAffinity": "ClientIP",
                     "ports": [{"port": 80, "targetPort": "8080", "nodePort": 30080},
                               {"name": "b", "port": 81, "targetPort": "http", "protocol": "UDP"}],
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
            "status": {"loadBalancer": {"ingress": [{"hostname": "lb.example"},
                                                    {"ip": "203.0.113.10"}]}}
        })))
        .unwrap();
        assert_eq!(s.key(), "default/web");
        assert_eq!(s.type_, ServiceType::LoadBalancer);
        assert_eq!(s.cluster_ips, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(s.external_ips, vec![Ipv4Addr::new(203, 0, 113, 5)]);
        assert_eq!(s.external_traffic_policy, Some(TrafficPolicy::Local));
        assert_eq!(s.ports[0].target_port, TargetPort::Number(8080));
        assert_eq!(s.ports[0].proto, PROTO_TCP);
        assert_eq!(s.ports[1].target_port, TargetPort::Name("http".into()));
        assert_eq!(s.ports[1].proto, PROTO_UDP);
        assert_eq!(s.ports[0].node_port, Some(30080));
        assert_eq!(s.health_check_node_port(), Some(32000));
        assert_eq!(
            s.ingress_ips,
            vec![None, Some(Ipv4Addr::new(203, 0, 113, 10))]
        );
        assert_eq!(s.lb_ips(), vec![Ipv4Addr::new(203, 0, 113, 10)]);
        assert_eq!(s.affinity_secs, Some(60));
        assert!(s.has_node_ports() && s.external_local());
    }

    #[test]
    fn refusals_name_the_field() {
        let base =
            serde_json::json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
        let cases = [
            (
                "/spec/externalIPs",
                serde_json::json!(["2001:db8::1"]),
                "spec.externalIPs[0]",
            ),
            ("/spec/type", serde_json::json!("Bogus"), "spec.type"),
            (
                "/spec/ports/0/port",
                serde_json::json!(70000),
                "spec.ports[0].port",
            ),
            (
                "/spec/ports/0/port",
                serde_json::json!(0),
                "spec.ports[0].port",
            ),
            (
                "/spec/ports/0/protocol",
                serde_json::json!("SCTP"),
                "spec.ports[0].protocol",
            ),
            (
                "/spec/clusterIPs",
                serde_json::json!(["10.96.0.1", "bogus"]),
                "spec.clusterIPs[1]",
            ),
            (
                "/spec/externalTrafficPolicy",
                serde_json::json!("Nearby"),
                "spec.externalTrafficPolicy",
            ),
            (
                "/spec/sessionAffinity",
                serde_json::json!("Sticky"),
                "spec.sessionAffinity",
            ),
            (
                "/status",
                serde_json::json!({"loadBalancer": {"ingress": [{"ip": "2001:db8::2"}]}}),
                "status.loadBalancer.ingress[0].ip",
            ),
        ];
        for (ptr, value, field) in cases {
            let mut v = base.clone();
            let (parent, key) = ptr.rsplit_once('/').unwrap();
            match v.pointer_mut(parent).unwrap() {
                serde_json::Value::Object(o) => {
                    o.insert(key.to_string(), value);
                }
                serde_json::Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
                other => panic!("{other}"),
            }
            let e = compile_service(&svc(v)).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let no_spec = svc(serde_json::json!({"metadata": {"name": "web"}}));
        assert_eq!(compile_service(&no_spec).unwrap_err().field, "spec");
        let no_name = svc(serde_json::json!({"metadata": {}, "spec": {}}));
        assert_eq!(
            compile_service(&no_name).unwrap_err().field,
            "metadata.name"
        );
    }

    #[test]
    fn slices() {
        let s: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.244.1.10"], "nodeName": "n1",
                           "targetRef": {"kind": "Pod", "name": "a", "resourceVersion": "7"}},
                          {"addresses": ["10.244.1.11"], "conditions": {"ready": false}}]
        }))
        .unwrap();
        let e = compile_slice(&s).unwrap();
        assert_eq!(e.service_key().as_deref(), Some("ns/web"));
        assert_eq!(e.ports[0].port, Some(8080));
        assert_eq!(e.ports[0].proto, PROTO_TCP);
        assert_eq!(
            e.endpoints[0].addresses,
            vec![Ipv4Addr::new(10, 244, 1, 10)]
        );
        assert_eq!(e.endpoints[0].target.as_deref(), Some("ns/a"));
        let (ready, serving, terminating) = (
            e.endpoints[1].ready,
            e.endpoints[1].serving,
            e.endpoints[1].terminating,
        );
        assert_eq!((ready, serving, terminating), (false, true, false));
        let mut bad = s.clone();
        bad.endpoints.as_mut().unwrap()[1].addresses = vec!["10.244.1.300".into()];
        assert_eq!(
            compile_slice(&bad).unwrap_err().field,
            "endpoints[1].addresses[0]"
        );
        bad.endpoints.as_mut().unwrap()[1].addresses = vec![];
        assert_eq!(
            compile_slice(&bad).unwrap_err().field,
            "endpoints[1].addresses"
        );
        let mut v6 = s.clone();
        v6.address_type = "IPv6".into();
        v6.endpoints.as_mut().unwrap()[0].addresses = vec!["fd00::1".into()];
        let c = compile_slice(&v6).unwrap();
        assert_eq!((c.address_type, c.endpoints.len()), (AddressType::IPv6, 0));
        v6.address_type = "IPX".into();
        assert_eq!(compile_slice(&v6).unwrap_err().field, "addressType");
    }
}
