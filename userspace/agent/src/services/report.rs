//! `show services` and `show sessions` for the local API.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ferroplane_tables::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use super::*;

/// `show_services`: every service port with its frontends, backends and Maglev fill.
pub fn services_report(cache: &ServiceCacheHandle) -> Vec<ferroplane_api::ServiceInfo> {
    let table = match cache.lock() {
        Ok(c) => c.state.table.clone(),
        Err(p) => p.into_inner().state.table.clone(),
    };
    let policy = |local: bool| if local { "Local" } else { "Cluster" }.to_string();
    table
        .ports()
        .iter()
        .map(|p| {
            let d = &p.def;
            let mut frontends = Vec::new();
            for a in &d.cluster_ips {
                frontends.push(format!("cluster-ip {a}:{}", d.port));
            }
            for a in &d.external_ips {
                frontends.push(format!("external-ip {a}:{}", d.port));
            }
            for a in &d.lb_ips {
                frontends.push(format!("load-balancer {a}:{}", d.port));
            }
            if let Some(np) = d.node_port {
                frontends.push(format!("node-port {np}"));
            }
            let fill_i = p.internal.maglev.fill();
            let fill_e = p.external.maglev.fill();
            let slots = |sel: &ferroplane_tables::service::Selection, fill: &[u32], i: usize| {
                sel.backends
                    .iter()
                    .position(|&b| b as usize == i)
                    .and_then(|k| fill.get(k).copied())
                    .unwrap_or(0)
            };
            ferroplane_api::ServiceInfo {
                name: d.service.clone(),
                port_name: d.port_name.clone(),
                protocol: ferroplane_tables::service::proto_name(d.proto),
                port: d.port,
                frontends,
                external_policy: policy(d.external_local),
                internal_policy: policy(d.internal_local),
                affinity_secs: d.affinity_secs,
                health_check_node_port: d.health_check_node_port,
                maglev_size: p.internal.maglev.size(),
                maglev_size_external: p.external.maglev.size(),
                backends: d
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| ferroplane_api::BackendInfo {
                        address: format!("{}:{}", b.addr, b.port),
                        state: b.state.as_str().to_string(),
                        local: b.local,
                        node: b.node.clone(),
                        target: b.target.clone(),
                        weight: b.weight,
                        maglev_slots: slots(&p.internal, &fill_i, i),
                        maglev_slots_external: slots(&p.external, &fill_e, i),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Session slots `show sessions` copies per hold of a worker's session-table lock.
pub(super) const SESSION_BATCH: usize = 1024;

/// Locks a worker's session table (a poisoned lock still gives the table).
fn lock_sessions(
    t: &Mutex<ferroplane_tables::Conntrack>,
) -> std::sync::MutexGuard<'_, ferroplane_tables::Conntrack> {
    match t.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    }
}

/// `show_sessions`: the sessions of every worker matching `filter`, at most its limit
/// (default 1000); the walk stops there. The table is read in batches of
/// [`SESSION_BATCH`] slots, each copied under one short hold of the lock the worker
/// takes per vector, and filtered after releasing it.
pub fn sessions_report(
    tables: &[Arc<Mutex<ferroplane_tables::Conntrack>>],
    filter: &ferroplane_api::SessionFilter,
) -> Result<ferroplane_api::SessionsReport, String> {
    use ferroplane_tables::FlowKey;
    let addr: Option<Ipv4Addr> = match &filter.addr {
        Some(a) => Some(
            a.parse()
                .map_err(|_| format!("addr: {a:?} is not an IPv4 address"))?,
        ),
        None => None,
    };
    let proto: Option<u8> = match filter.proto.as_deref() {
        None => None,
        Some("tcp") => Some(PROTO_TCP),
        Some("udp") => Some(PROTO_UDP),
        Some("icmp") => Some(PROTO_ICMP),
        Some(p) => return Err(format!("proto: {p:?} is not tcp, udp or icmp")),
    };
    let limit = filter.limit.unwrap_or(1000);
    let tuple = |k: &FlowKey| format!("{}:{} -> {}:{}", k.src, k.sport, k.dst, k.dport);
    let mut r = ferroplane_api::SessionsReport::default();
    // The worker takes this lock once per vector: hold it for a bounded batch of slots at
    // a time (copies), match outside it, and stop at the output limit.
    let mut batch: Vec<ferroplane_tables::Session> = Vec::with_capacity(SESSION_BATCH);
    for t in tables {
        let now = {
            let ct = lock_sessions(t);
            r.total += ct.len();
            r.limit += ct.limit();
            r.created += ct.stats.created;
            r.full += ct.stats.full;
            r.early_drops += ct.stats.early_drops;
            ct.now_ms()
        };
        let mut next = 0u32;
        loop {
            batch.clear();
            let more = {
                let ct = lock_sessions(t);
                let mut last = None;
                for (id, s) in ct.iter_from(next).take(SESSION_BATCH) {
                    batch.push(*s);
                    last = Some(id);
                }
                match last {
                    Some(id) if batch.len() == SESSION_BATCH => {
                        next = id + 1;
                        true
                    }
                    _ => false,
                }
            };
            for s in &batch {
                if s.expires <= now {
                    continue;
                }
                let keys = [s.orig, s.reply];
                if let Some(a) = addr {
                    if !keys.iter().any(|k| k.src == a || k.dst == a) {
                        continue;
                    }
                }
                if let Some(p) = filter.port {
                    if !keys.iter().any(|k| k.sport == p || k.dport == p) {
                        continue;
                    }
                }
                if proto.is_some_and(|p| p != s.orig.proto) {
                    continue;
                }
                if r.sessions.len() >= limit {
                    break;
                }
                r.sessions.push(ferroplane_api::SessionInfo {
                    protocol: ferroplane_tables::service::proto_name(s.orig.proto),
                    original: tuple(&s.orig),
                    reply: tuple(&s.reply),
                    nat: s.nat.as_str().to_string(),
                    state: s.state.as_str().to_string(),
                    service: s.frontend.map(|f| format!("{}:{}", f.addr, f.port)),
                    expires_in_secs: (s.expires - now) as f64 / 1000.0,
                    packets_orig: s.packets[0],
                    packets_reply: s.packets[1],
                });
            }
            if !more || r.sessions.len() >= limit {
                break;
            }
        }
    }
    Ok(r)
}
