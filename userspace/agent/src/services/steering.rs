//! The XDP steering entries for the service table, and keeping the BPF maps in line.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_tables::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use ferroplane_tables::{NatConfig, ServiceTable};

use super::*;

/// What XDP must steer to the engine for the services of a spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steering {
    /// /32 addresses on the uplink (external and load-balancer IPs).
    pub vips: BTreeSet<Ipv4Addr>,
    /// (protocol, port, kind) on the node's addresses: NodePorts and the SNAT range.
    pub ports: BTreeMap<(u8, u16), u32>,
}

/// `ports4` kind of a NodePort.
pub const PORT_NODEPORT: u32 = 1;
/// `ports4` kind of a SNAT port.
pub const PORT_SNAT: u32 = 2;

/// Steering entries for a service table and NAT settings.
pub fn steering(table: &ServiceTable, nat: &NatConfig) -> Steering {
    let mut s = Steering::default();
    for p in table.ports() {
        s.vips.extend(p.def.external_ips.iter().copied());
        s.vips.extend(p.def.lb_ips.iter().copied());
    }
    for (proto, port) in table.node_ports() {
        s.ports.insert((proto, port), PORT_NODEPORT);
    }
    // SNATed flows come back to these ports (masquerade, hairpin, eTP=Cluster).
    let (lo, hi) = nat.snat_ports;
    for port in lo..=hi {
        for proto in [PROTO_TCP, PROTO_UDP, PROTO_ICMP] {
            s.ports.entry((proto, port)).or_insert(PORT_SNAT);
        }
    }
    s
}

/// Bring the XDP steering maps in line with the tables in force (only the difference is
/// written).
pub fn apply_steering(
    cache: &ServiceCacheHandle,
    bpf: &mut ferroplane_bpf::Dataplane,
) -> Result<(), ferroplane_bpf::Error> {
    let mut c = match cache.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    };
    // The same tables as last time, all of it applied: nothing to compute (a publish for
    // pods or routes shares the service tables).
    let tables = (c.state.table.clone(), c.state.nat.clone());
    if c.steered
        .as_ref()
        .is_some_and(|(t, n)| Arc::ptr_eq(t, &tables.0) && Arc::ptr_eq(n, &tables.1))
    {
        return Ok(());
    }
    let want = steering(&tables.0, &tables.1);
    if want == c.applied {
        c.steered = Some(tables);
        return Ok(());
    }
    for a in c.applied.vips.difference(&want.vips) {
        bpf.remove_steer4(*a, 32)?;
    }
    for k in c.applied.ports.keys() {
        if !want.ports.contains_key(k) {
            bpf.remove_port4(k.0, k.1)?;
        }
    }
    // An entry the kernel refuses (a full map) leaves that address or port with the
    // kernel: counted, logged, retried on the next publish; the rest is still applied.
    let mut applied = want.clone();
    let mut refused: Vec<String> = Vec::new();
    for a in want.vips.difference(&c.applied.vips) {
        if let Err(e) = bpf.add_steer4(*a, 32, ferroplane_bpf::FpSteerKind::Service) {
            applied.vips.remove(a);
            refused.push(format!("{a}: {e}"));
        }
    }
    for (k, kind) in &want.ports {
        if c.applied.ports.get(k) != Some(kind) {
            if let Err(e) = bpf.add_port4(k.0, k.1, *kind) {
                applied.ports.remove(k);
                refused.push(format!(
                    "{}/{}: {e}",
                    ferroplane_tables::service::proto_name(k.0),
                    k.1
                ));
            }
        }
    }
    if !refused.is_empty() {
        STEERING_REFUSED.fetch_add(refused.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            refused = refused.len(),
            first = %refused[0],
            "BPF steering maps refused entries: those services stay unreachable from outside the node"
        );
    }
    // Refused entries are tried again on the next publish.
    c.steered = refused.is_empty().then_some(tables);
    c.applied = applied;
    Ok(())
}

/// Steering entries (service addresses, node ports) the BPF maps refused, e.g. because
/// a map was full; exported as a metric.
pub static STEERING_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
