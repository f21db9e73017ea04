//! The hostPorts as the service cache last built them (served, shadowed, reserved), and
//! their report (`ferroctl show hostports`).

use std::collections::BTreeMap;

use ferroplane_tables::service::proto_name;

use super::{Binding, Reserved, Shadowed};

/// The hostPorts as the service cache last built them: what is served, what is shadowed,
/// and what a new one may not take.
#[derive(Debug, Clone, Default)]
pub struct HostPortTable {
    /// The bindings the table was built from (after [`merge`]).
    pub input: Vec<Binding>,
    /// Served.
    pub served: Vec<Binding>,
    /// Not served, with the reason.
    pub shadowed: Vec<Shadowed>,
    /// What a new hostPort may not take.
    pub reserved: Reserved,
    /// The agent's own listener ports (set once at start: `--health-addr`, `--metrics-addr`).
    pub listeners: BTreeMap<u16, String>,
}

/// `show_hostports` from the service cache in force.
pub fn report_of(cache: &crate::services::ServiceCacheHandle) -> Vec<ferroplane_api::HostPortInfo> {
    match cache.lock() {
        Ok(c) => report(&c.host_ports),
        Err(p) => report(&p.into_inner().host_ports),
    }
}

/// `show_hostports`: every binding, served or shadowed.
pub fn report(t: &HostPortTable) -> Vec<ferroplane_api::HostPortInfo> {
    let info = |b: &Binding, served: bool, reason: &str| ferroplane_api::HostPortInfo {
        pod: b.pod.clone(),
        protocol: proto_name(b.port.proto),
        host_ip: b.port.host_ip.map(|a| a.to_string()).unwrap_or_default(),
        host_port: b.port.host_port,
        pod_ip: b.pod_ip.to_string(),
        container_port: b.port.container_port,
        source: b.source.as_str().to_string(),
        served,
        reason: reason.to_string(),
    };
    let mut v: Vec<_> = t
        .served
        .iter()
        .map(|b| info(b, true, ""))
        .chain(
            t.shadowed
                .iter()
                .map(|s| info(&s.binding, false, &s.reason)),
        )
        .collect();
    v.sort_by(|a, b| (a.host_port, &a.protocol, &a.pod).cmp(&(b.host_port, &b.protocol, &b.pod)));
    v
}
