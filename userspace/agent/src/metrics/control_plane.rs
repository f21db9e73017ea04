//! The control plane's metrics: connection tracking, services and hostPorts, network
//! policies, BGP, overlay tunnels, reconcile durations.

use prometheus_client::registry::Registry;

use super::families::{counter_family, gauge, gauge_family, l, Labels};
use super::reconcile::reconciles;
use crate::api::AgentView;

/// Sessions, services, policies, BGP, tunnels and reconcile durations.
pub(super) fn control_plane(
    reg: &mut Registry,
    view: &AgentView,
    snap: &ferroplane_engine::Snapshot,
) {
    let (mut used, mut capacity) = (0usize, 0usize);
    for t in &view.sessions {
        let ct = match t.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        used += ct.len();
        capacity += ct.limit();
    }
    gauge(
        reg,
        "sessions",
        "Connection tracking / NAT sessions in use (all workers)",
        used as i64,
    );
    gauge(
        reg,
        "sessions_capacity",
        "Connection tracking / NAT sessions the workers can hold",
        capacity as i64,
    );
    let ports = snap.services.ports();
    // hostPorts are service ports too (`hostport:<pod>`); counted apart below.
    let names: std::collections::BTreeSet<&str> = ports
        .iter()
        .map(|p| p.def.service.as_str())
        .filter(|n| !n.starts_with(crate::hostports::SERVICE_PREFIX))
        .collect();
    gauge(
        reg,
        "services",
        "Services programmed in the engine",
        names.len() as i64,
    );
    gauge(
        reg,
        "service_ports",
        "Service ports programmed in the engine",
        ports.len() as i64,
    );
    counter_family(
        reg,
        "service_steering_refused",
        "Service addresses and node ports the BPF steering maps refused (full map): left to the kernel",
        [(
            Labels::new(),
            crate::services::STEERING_REFUSED.load(std::sync::atomic::Ordering::Relaxed),
        )],
    );
    gauge(
        reg,
        "service_frontends",
        "Service frontends (cluster IP, NodePort, external and load-balancer addresses)",
        snap.services.frontends().count() as i64,
    );
    {
        let hp = match view.services.lock() {
            Ok(c) => (c.host_ports.served.len(), c.host_ports.shadowed.len()),
            Err(p) => {
                let c = p.into_inner();
                (c.host_ports.served.len(), c.host_ports.shadowed.len())
            }
        };
        gauge_family(
            reg,
            "hostports",
            "Pods' hostPorts (CNI portMappings, Pod hostPort): served by the engine, or shadowed (another owner has the port)",
            [
                (l(&[("state", "served")]), hp.0 as i64),
                (l(&[("state", "shadowed")]), hp.1 as i64),
            ],
        );
    }
    // Service entries refused in Kubernetes mode (address hijack: an externalIP or
    // load-balancer IP that is a pod, node or service address; a bad healthCheckNodePort).
    gauge_family(
        reg,
        "service_entries_ignored",
        "Service entries left out because they would capture pod, node or service addresses or ports (Kubernetes mode), by field",
        crate::services::ignored_entries()
            .into_iter()
            .map(|(field, n)| (l(&[("field", field)]), n as i64)),
    );
    {
        let c = crate::policy::compiler();
        let c = match c.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        gauge(
            reg,
            "network_policies",
            "NetworkPolicies known to the policy compiler",
            c.policy_count() as i64,
        );
        gauge(
            reg,
            "policy_acls",
            "Distinct compiled ACLs (shared by pods with the same effective policy)",
            c.acl_count() as i64,
        );
    }
    gauge(
        reg,
        "policy_isolated_pods",
        "Pods isolated by a NetworkPolicy in the engine's tables",
        snap.policy.len() as i64,
    );

    let bgp = crate::bgp::report(view.bgp.as_deref());
    let mut by_state: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for p in &bgp.peers {
        *by_state.entry(p.state.clone()).or_default() += 1;
    }
    gauge_family(
        reg,
        "bgp_peers",
        "BGP peers by session state",
        by_state.into_iter().map(|(s, n)| (l(&[("state", &s)]), n)),
    );
    gauge_family(
        reg,
        "bgp_peer_up",
        "1 when the BGP session with the peer is Established",
        bgp.peers.iter().map(|p| {
            (
                l(&[("peer", &p.address)]),
                i64::from(p.state.eq_ignore_ascii_case("established")),
            )
        }),
    );
    gauge_family(
        reg,
        "bgp_peer_prefixes",
        "Prefixes per BGP peer: received, accepted (after policy) and advertised",
        bgp.peers.iter().flat_map(|p| {
            [
                ("received", p.received),
                ("accepted", p.accepted),
                ("advertised", p.advertised),
            ]
            .into_iter()
            .map(|(d, n)| (l(&[("peer", &p.address), ("direction", d)]), n as i64))
        }),
    );
    gauge(
        reg,
        "bgp_loc_rib_prefixes",
        "Prefixes in the BGP Loc-RIB",
        bgp.loc_rib as i64,
    );

    let tunnels = {
        // A poisoned lock still holds a complete overlay.
        let overlay = match view.overlay.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        overlay.report(snap)
    };
    gauge_family(
        reg,
        "tunnel_peer_state",
        "Overlay peers: 1 for the peer's current state (up, handshaking, expired)",
        tunnels.peers.iter().map(|p| {
            (
                l(&[("peer", &p.name), ("mode", &p.mode), ("state", &p.state)]),
                1,
            )
        }),
    );
    counter_family(
        reg,
        "tunnel_rx_packets",
        "Inner packets received from the overlay peer",
        tunnels
            .peers
            .iter()
            .map(|p| (l(&[("peer", &p.name), ("mode", &p.mode)]), p.rx_packets)),
    );
    counter_family(
        reg,
        "tunnel_tx_packets",
        "Inner packets sent to the overlay peer",
        tunnels
            .peers
            .iter()
            .map(|p| (l(&[("peer", &p.name), ("mode", &p.mode)]), p.tx_packets)),
    );
    reg.register(
        "reconcile_duration_seconds",
        "Time the agent took to turn its desired state into engine tables and BPF steering",
        reconciles().clone(),
    );
}
