//! The API server's defaults for Services and EndpointSlices, applied to every object
//! the agent takes in (on the `k8s-openapi` objects themselves, before they are compiled).

use k8s_openapi::api::core::v1::{ClientIPConfig, Service, SessionAffinityConfig};
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::spec::NodeSpec;

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset
/// (`v1.DefaultClientIPServiceAffinitySeconds`).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

/// Applies the API server's defaults to a Service, so a spec entry written by hand means
/// what the same object means once stored by Kubernetes (`SetDefaults_Service` in
/// `k8s.io/kubernetes/pkg/apis/core/v1/defaults.go`, and the service registry's
/// normalisation of `clusterIPs` and IP families):
/// - `sessionAffinity`: `None`; with `None` any `sessionAffinityConfig` is dropped; with
///   `ClientIP` a missing timeout becomes [`DEFAULT_AFFINITY_SECONDS`] (10800 s);
/// - `type`: `ClusterIP`;
/// - each port: `protocol` `TCP`; `targetPort` absent, `0` or `""` becomes `port`;
/// - `externalTrafficPolicy`: `Cluster` for externally reachable services (NodePort,
///   LoadBalancer, ClusterIP with `externalIPs`);
/// - `internalTrafficPolicy`: `Cluster` for ClusterIP, NodePort and LoadBalancer;
/// - LoadBalancer: `allocateLoadBalancerNodePorts` `true`; ingress IPs' `ipMode` `VIP`;
/// - `clusterIPs` `[clusterIP]` (and `clusterIP` the first of `clusterIPs`) when only one
///   is given; `ipFamilies` from the cluster IPs; `ipFamilyPolicy` `SingleStack` when
///   they are of one family.
///
/// Idempotent. Run once on every Service the agent takes in: the standalone spec
/// ([`crate::spec::NodeSpec::from_yaml`], which also puts an object without a namespace
/// in `default`) and the Kubernetes watchers.
pub fn set_service_defaults(s: &mut Service) {
    let Some(spec) = s.spec.as_mut() else {
        return; // refused when compiled
    };
    let affinity = spec.session_affinity.get_or_insert_with(|| "None".into());
    match affinity.as_str() {
        "None" => spec.session_affinity_config = None,
        "ClientIP" => {
            let c = spec
                .session_affinity_config
                .get_or_insert_with(SessionAffinityConfig::default);
            c.client_ip
                .get_or_insert_with(ClientIPConfig::default)
                .timeout_seconds
                .get_or_insert(DEFAULT_AFFINITY_SECONDS as i32);
        }
        _ => {} // refused when compiled
    }
    let type_ = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    for p in spec.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
        let unset = match &p.target_port {
            None | Some(IntOrString::Int(0)) => true,
            Some(IntOrString::String(n)) => n.is_empty(),
            Some(IntOrString::Int(_)) => false,
        };
        if unset {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
    let has_external_ips = spec.external_ips.as_ref().is_some_and(|v| !v.is_empty());
    let externally_accessible = match type_.as_str() {
        "NodePort" | "LoadBalancer" => true,
        "ClusterIP" => has_external_ips,
        _ => false,
    };
    if externally_accessible && spec.external_traffic_policy.is_none() {
        spec.external_traffic_policy = Some("Cluster".into());
    }
    if type_ != "ExternalName" && spec.internal_traffic_policy.is_none() {
        spec.internal_traffic_policy = Some("Cluster".into());
    }
    if type_ == "LoadBalancer" {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
        for i in s
            .status
            .iter_mut()
            .flat_map(|st| st.load_balancer.iter_mut())
            .flat_map(|lb| lb.ingress.iter_mut().flatten())
        {
            if i.ip.is_some() {
                i.ip_mode.get_or_insert_with(|| "VIP".into());
            }
        }
    }
    if type_ == "ExternalName" {
        return;
    }
    let first = spec.cluster_ips.as_ref().and_then(|v| v.first()).cloned();
    match (&spec.cluster_ip, first) {
        (Some(ip), None) if !ip.is_empty() => spec.cluster_ips = Some(vec![ip.clone()]),
        (None, Some(first)) => spec.cluster_ip = Some(first),
        _ => {}
    }
    if spec.ip_families.as_ref().is_none_or(Vec::is_empty) {
        let mut families: Vec<String> = Vec::new();
        for ip in spec.cluster_ips.iter().flatten() {
            let family = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => "IPv4",
                Ok(std::net::IpAddr::V6(_)) => "IPv6",
                Err(_) => continue, // "None" (headless)
            };
            if !families.iter().any(|f| f == family) {
                families.push(family.into());
            }
        }
        if !families.is_empty() {
            spec.ip_families = Some(families);
        }
    }
    if spec.ip_family_policy.is_none() && spec.ip_families.as_ref().is_some_and(|f| f.len() == 1) {
        spec.ip_family_policy = Some("SingleStack".into());
    }
}

/// Applies the API defaults to an EndpointSlice (`SetDefaults_EndpointPort` in
/// `k8s.io/kubernetes/pkg/apis/discovery/v1/defaults.go`: port `name` `""`, `protocol`
/// `TCP`) and writes out what absent endpoint conditions mean per the API
/// reference (`discovery.k8s.io/v1` EndpointConditions): `ready` unset is `true`,
/// `serving` unset is `true`, `terminating` unset is `false`. Idempotent; run on every
/// slice taken in, like [`set_service_defaults`].
pub fn set_endpoint_slice_defaults(es: &mut EndpointSlice) {
    for p in es.ports.iter_mut().flatten() {
        p.name.get_or_insert_with(String::new);
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    for e in es.endpoints.iter_mut().flatten() {
        let c = e.conditions.get_or_insert_with(EndpointConditions::default);
        c.ready.get_or_insert(true);
        c.serving.get_or_insert(true);
        c.terminating.get_or_insert(false);
    }
}

/// [`set_service_defaults`] and [`set_endpoint_slice_defaults`] over a spec, after the
/// spec's own defaults for what the API requires: `metadata.namespace` `default`, an
/// EndpointSlice's `addressType` `IPv4`.
pub fn set_defaults(spec: &mut NodeSpec) {
    for s in &mut spec.services {
        s.0.metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        set_service_defaults(&mut s.0);
    }
    for es in &mut spec.endpoint_slices {
        es.0.metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        if es.0.address_type.is_empty() {
            es.0.address_type = "IPv4".into();
        }
        set_endpoint_slice_defaults(&mut es.0);
    }
}
