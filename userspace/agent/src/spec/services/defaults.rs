//! The API server's defaults for Services and EndpointSlices, applied to every object
//! the agent takes in.

use super::*;
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
/// - `type`: `ClusterIP` (done by the deserializer);
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
/// ([`crate::spec::NodeSpec::from_yaml`]) and the Kubernetes watchers.
pub fn set_service_defaults(s: &mut ServiceSpec) {
    let spec = &mut s.spec;
    let affinity = spec.session_affinity.get_or_insert_with(|| "None".into());
    match affinity.as_str() {
        "None" => spec.session_affinity_config = None,
        "ClientIP" => {
            let c = spec
                .session_affinity_config
                .get_or_insert(SessionAffinityConfig { client_ip: None });
            c.client_ip
                .get_or_insert(ClientIpConfig {
                    timeout_seconds: None,
                })
                .timeout_seconds
                .get_or_insert(DEFAULT_AFFINITY_SECONDS);
        }
        _ => {} // refused by validation
    }
    for p in &mut spec.ports {
        p.protocol.get_or_insert_with(|| "TCP".into());
        match &p.target_port {
            None | Some(TargetPort::Number(0)) => p.target_port = Some(TargetPort::Number(p.port)),
            Some(TargetPort::Name(n)) if n.is_empty() => {
                p.target_port = Some(TargetPort::Number(p.port))
            }
            Some(_) => {}
        }
    }
    let externally_accessible = match spec.type_ {
        ServiceType::NodePort | ServiceType::LoadBalancer => true,
        ServiceType::ClusterIP => !spec.external_ips.is_empty(),
        ServiceType::ExternalName => false,
    };
    if externally_accessible && spec.external_traffic_policy.is_none() {
        spec.external_traffic_policy = Some(TrafficPolicy::Cluster);
    }
    if spec.type_ != ServiceType::ExternalName && spec.internal_traffic_policy.is_none() {
        spec.internal_traffic_policy = Some(TrafficPolicy::Cluster);
    }
    if spec.type_ == ServiceType::LoadBalancer {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
        for i in s
            .status
            .iter_mut()
            .flat_map(|st| st.load_balancer.iter_mut())
            .flat_map(|lb| lb.ingress.iter_mut())
        {
            if i.ip.is_some() {
                i.ip_mode.get_or_insert_with(|| "VIP".into());
            }
        }
    }
    if spec.type_ == ServiceType::ExternalName {
        return;
    }
    match (&spec.cluster_ip, spec.cluster_ips.first()) {
        (Some(ip), None) if !ip.is_empty() => spec.cluster_ips = vec![ip.clone()],
        (None, Some(first)) => spec.cluster_ip = Some(first.clone()),
        _ => {}
    }
    if spec.ip_families.is_empty() {
        for ip in &spec.cluster_ips {
            let family = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => "IPv4",
                Ok(std::net::IpAddr::V6(_)) => "IPv6",
                Err(_) => continue, // "None" (headless)
            };
            if !spec.ip_families.iter().any(|f| f == family) {
                spec.ip_families.push(family.into());
            }
        }
    }
    if spec.ip_family_policy.is_none() && spec.ip_families.len() == 1 {
        spec.ip_family_policy = Some("SingleStack".into());
    }
}

/// Applies the API defaults to an EndpointSlice (`SetDefaults_EndpointPort` in
/// `k8s.io/kubernetes/pkg/apis/discovery/v1/defaults.go`: port `name` `""`, `protocol`
/// `TCP`) and writes out what absent endpoint conditions mean per the API
/// reference (`discovery.k8s.io/v1` EndpointConditions): `ready` unset is `true`,
/// `serving` unset is `true`, `terminating` unset is `false`. Idempotent; run on every
/// slice taken in, like [`set_service_defaults`].
pub fn set_endpoint_slice_defaults(es: &mut EndpointSliceSpec) {
    for p in &mut es.ports {
        p.name.get_or_insert_with(String::new);
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    for e in &mut es.endpoints {
        let c = &mut e.conditions;
        c.ready.get_or_insert(true);
        c.serving.get_or_insert(true);
        c.terminating.get_or_insert(false);
    }
}

/// [`set_service_defaults`] and [`set_endpoint_slice_defaults`] over a spec.
pub fn set_defaults(spec: &mut NodeSpec) {
    spec.services.iter_mut().for_each(set_service_defaults);
    spec.endpoint_slices
        .iter_mut()
        .for_each(set_endpoint_slice_defaults);
}
