//! Services and EndpointSlices as the watchers receive them (`k8s-openapi` types) turned
//! into the node spec's typed entries ([`ServiceSpec`], [`EndpointSliceSpec`]), field by
//! field: the values the dataplane uses are parsed once here (addresses, ports, enums), and
//! an object with a value the spec cannot hold (an IPv6 external IP, a port out of range,
//! an unknown type) is refused with the field named, as the YAML spec refuses it.
//! Fields the dataplane ignores (annotations, uid, resourceVersion, topology hints) are not
//! carried over.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{self as core, Service};
use k8s_openapi::api::discovery::v1::{self as discovery, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta as K8sMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::Resource;

use crate::spec::services::{
    ClientIpConfig, Endpoint, EndpointConditions, EndpointPort, EndpointSliceSpec,
    LoadBalancerIngress, LoadBalancerStatus, ObjectMeta, ServicePortSpec, ServiceSpec,
    ServiceSpecBody, ServiceStatus, ServiceType, SessionAffinityConfig, TargetPort, TargetRef,
    TrafficPolicy,
};

/// Why an object was refused: the field (`spec.ports[0].port`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConvertError {
    /// Path of the offending field inside the object.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.into(),
        message: message.into(),
    }
}

fn meta(m: &K8sMeta) -> Result<ObjectMeta, ConvertError> {
    Ok(ObjectMeta {
        name: m
            .name
            .clone()
            .ok_or_else(|| err("metadata.name", "missing"))?,
        namespace: m.namespace.clone().unwrap_or_else(|| "default".into()),
        labels: m.labels.clone().unwrap_or_default(),
        annotations: Default::default(),
        uid: None,
        resource_version: None,
    })
}

/// `f` over an optional list with each element's index (an absent list is empty).
fn each<T, U>(
    v: &Option<Vec<T>>,
    f: impl Fn(usize, &T) -> Result<U, ConvertError>,
) -> Result<Vec<U>, ConvertError> {
    v.iter()
        .flatten()
        .enumerate()
        .map(|(i, x)| f(i, x))
        .collect()
}

fn ipv4(field: impl Into<String>, s: &str) -> Result<Ipv4Addr, ConvertError> {
    s.parse()
        .map_err(|_| err(field, format!("{s:?} is not an IPv4 address")))
}

fn port(field: impl Into<String>, n: i32) -> Result<u16, ConvertError> {
    u16::try_from(n).map_err(|_| err(field, format!("{n} is not a port number")))
}

fn service_type(s: Option<&str>) -> Result<ServiceType, ConvertError> {
    Ok(match s {
        None | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => return Err(err("spec.type", format!("unknown type {other:?}"))),
    })
}

fn traffic_policy(field: &str, s: Option<&str>) -> Result<Option<TrafficPolicy>, ConvertError> {
    Ok(match s {
        None => None,
        Some("Cluster") => Some(TrafficPolicy::Cluster),
        Some("Local") => Some(TrafficPolicy::Local),
        Some(other) => return Err(err(field, format!("unknown policy {other:?}"))),
    })
}

fn target_port(field: String, t: &IntOrString) -> Result<TargetPort, ConvertError> {
    Ok(match t {
        IntOrString::Int(n) => TargetPort::Number(port(field, *n)?),
        // "8080" written as a string is a number, as the YAML spec reads it.
        IntOrString::String(s) => match s.parse::<u16>() {
            Ok(n) => TargetPort::Number(n),
            Err(_) => TargetPort::Name(s.clone()),
        },
    })
}

fn service_port(i: usize, p: &core::ServicePort) -> Result<ServicePortSpec, ConvertError> {
    let at = |f: &str| format!("spec.ports[{i}].{f}");
    Ok(ServicePortSpec {
        name: p.name.clone(),
        protocol: p.protocol.clone(),
        port: port(at("port"), p.port)?,
        target_port: p
            .target_port
            .as_ref()
            .map(|t| target_port(at("targetPort"), t))
            .transpose()?,
        node_port: p.node_port.map(|n| port(at("nodePort"), n)).transpose()?,
        app_protocol: p.app_protocol.clone(),
    })
}

fn affinity_config(c: &core::SessionAffinityConfig) -> Result<SessionAffinityConfig, ConvertError> {
    let timeout = |t: i32| {
        u32::try_from(t).map_err(|_| {
            err(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!("{t} is negative"),
            )
        })
    };
    let client_ip = c
        .client_ip
        .as_ref()
        .map(|ip| {
            Ok(ClientIpConfig {
                timeout_seconds: ip.timeout_seconds.map(timeout).transpose()?,
            })
        })
        .transpose()?;
    Ok(SessionAffinityConfig { client_ip })
}

fn service_body(s: &core::ServiceSpec) -> Result<ServiceSpecBody, ConvertError> {
    Ok(ServiceSpecBody {
        type_: service_type(s.type_.as_deref())?,
        cluster_ip: s.cluster_ip.clone(),
        cluster_ips: s.cluster_ips.clone().unwrap_or_default(),
        ports: each(&s.ports, service_port)?,
        external_ips: each(&s.external_ips, |i, a| {
            ipv4(format!("spec.externalIPs[{i}]"), a)
        })?,
        session_affinity: s.session_affinity.clone(),
        session_affinity_config: s
            .session_affinity_config
            .as_ref()
            .map(affinity_config)
            .transpose()?,
        external_traffic_policy: traffic_policy(
            "spec.externalTrafficPolicy",
            s.external_traffic_policy.as_deref(),
        )?,
        internal_traffic_policy: traffic_policy(
            "spec.internalTrafficPolicy",
            s.internal_traffic_policy.as_deref(),
        )?,
        health_check_node_port: s
            .health_check_node_port
            .map(|n| port("spec.healthCheckNodePort", n))
            .transpose()?,
        selector: s.selector.clone().unwrap_or_default(),
        ip_families: s.ip_families.clone().unwrap_or_default(),
        ip_family_policy: s.ip_family_policy.clone(),
        allocate_load_balancer_node_ports: s.allocate_load_balancer_node_ports,
    })
}

fn lb_ingress(
    i: usize,
    ing: &core::LoadBalancerIngress,
) -> Result<LoadBalancerIngress, ConvertError> {
    Ok(LoadBalancerIngress {
        ip: ing
            .ip
            .as_deref()
            .map(|a| ipv4(format!("status.loadBalancer.ingress[{i}].ip"), a))
            .transpose()?,
        hostname: ing.hostname.clone(),
        ip_mode: ing.ip_mode.clone(),
    })
}

fn service_status(s: &core::ServiceStatus) -> Result<ServiceStatus, ConvertError> {
    let load_balancer = s
        .load_balancer
        .as_ref()
        .map(|lb| {
            Ok(LoadBalancerStatus {
                ingress: each(&lb.ingress, lb_ingress)?,
            })
        })
        .transpose()?;
    Ok(ServiceStatus { load_balancer })
}

/// A Service as the spec's `services:` entry (before the API defaults).
pub fn service(s: &Service) -> Result<ServiceSpec, ConvertError> {
    let body = s.spec.as_ref().ok_or_else(|| err("spec", "missing"))?;
    Ok(ServiceSpec {
        api_version: Some(Service::API_VERSION.into()),
        kind: Some(Service::KIND.into()),
        metadata: meta(&s.metadata)?,
        spec: service_body(body)?,
        status: s.status.as_ref().map(service_status).transpose()?,
    })
}

fn endpoint(i: usize, e: &discovery::Endpoint) -> Result<Endpoint, ConvertError> {
    let c = e.conditions.clone().unwrap_or_default();
    Ok(Endpoint {
        addresses: e
            .addresses
            .iter()
            .enumerate()
            .map(|(j, a)| ipv4(format!("endpoints[{i}].addresses[{j}]"), a))
            .collect::<Result<_, _>>()?,
        conditions: EndpointConditions {
            ready: c.ready,
            serving: c.serving,
            terminating: c.terminating,
        },
        node_name: e.node_name.clone(),
        hostname: e.hostname.clone(),
        zone: e.zone.clone(),
        target_ref: e.target_ref.as_ref().map(|r| TargetRef {
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        }),
    })
}

/// An EndpointSlice as the spec's `endpointSlices:` entry (before the API defaults).
pub fn endpoint_slice(s: &EndpointSlice) -> Result<EndpointSliceSpec, ConvertError> {
    Ok(EndpointSliceSpec {
        api_version: Some(EndpointSlice::API_VERSION.into()),
        kind: Some(EndpointSlice::KIND.into()),
        metadata: meta(&s.metadata)?,
        address_type: s.address_type.clone(),
        ports: each(&s.ports, |i, p| {
            Ok(EndpointPort {
                name: p.name.clone(),
                protocol: p.protocol.clone(),
                port: p
                    .port
                    .map(|n| port(format!("ports[{i}].port"), n))
                    .transpose()?,
                app_protocol: p.app_protocol.clone(),
            })
        })?,
        endpoints: each(&s.endpoints, endpoint)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn values_are_parsed_once() {
        let s = service(&svc(serde_json::json!({
            "metadata": {"name": "web", "annotations": {"a": "b"}, "uid": "u1"},
            "spec": {"type": "LoadBalancer", "externalIPs": ["203.0.113.5"],
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                     "ports": [{"port": 80, "targetPort": "8080", "nodePort": 30080},
                               {"name": "b", "port": 81, "targetPort": "http"}],
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
        })))
        .unwrap();
        assert_eq!(s.metadata.namespace, "default");
        assert!(s.metadata.annotations.is_empty() && s.metadata.uid.is_none());
        assert_eq!(s.spec.type_, ServiceType::LoadBalancer);
        assert_eq!(s.spec.external_ips, vec![Ipv4Addr::new(203, 0, 113, 5)]);
        assert_eq!(s.spec.external_traffic_policy, Some(TrafficPolicy::Local));
        assert_eq!(s.spec.ports[0].target_port, Some(TargetPort::Number(8080)));
        assert_eq!(
            s.spec.ports[1].target_port,
            Some(TargetPort::Name("http".into()))
        );
        assert_eq!(s.spec.ports[0].node_port, Some(30080));
        assert_eq!(s.health_check_node_port(), Some(32000));
        assert_eq!(s.lb_ips(), vec![Ipv4Addr::new(203, 0, 113, 10)]);
        assert_eq!(
            s.spec
                .session_affinity_config
                .unwrap()
                .client_ip
                .unwrap()
                .timeout_seconds,
            Some(60)
        );
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
                "/spec/externalTrafficPolicy",
                serde_json::json!("Nearby"),
                "spec.externalTrafficPolicy",
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
            let e = service(&svc(v)).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let no_spec = svc(serde_json::json!({"metadata": {"name": "web"}}));
        assert_eq!(service(&no_spec).unwrap_err().field, "spec");
    }

    #[test]
    fn slices() {
        let s: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "ns"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.244.1.10"], "nodeName": "n1",
                           "targetRef": {"kind": "Pod", "name": "a", "resourceVersion": "7"}},
                          {"addresses": ["10.244.1.11"], "conditions": {"ready": false}}]
        }))
        .unwrap();
        let e = endpoint_slice(&s).unwrap();
        assert_eq!(e.ports[0].port, Some(8080));
        assert_eq!(
            e.endpoints[0].addresses,
            vec![Ipv4Addr::new(10, 244, 1, 10)]
        );
        assert_eq!(
            e.endpoints[0].target_ref.as_ref().unwrap().name.as_deref(),
            Some("a")
        );
        assert_eq!(e.endpoints[1].conditions.ready, Some(false));
        assert_eq!(e.endpoints[1].conditions.serving, None);
        let mut bad = s.clone();
        bad.endpoints.as_mut().unwrap()[1].addresses = vec!["10.244.1.300".into()];
        assert_eq!(
            endpoint_slice(&bad).unwrap_err().field,
            "endpoints[1].addresses[0]"
        );
    }
}
