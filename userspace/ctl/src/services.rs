//! `show services` and `show sessions`.

use ferroplane_api::{HostPortInfo, ServiceInfo, SessionsReport};

use crate::table::{Align, Table};

/// `show services`: one line per backend under each service port.
pub fn services(list: &[ServiceInfo]) -> String {
    use Align::{Left, Right};
    let mut out = String::new();
    for s in list {
        out.push_str(&format!(
            "{} {}/{} port {}  [{}]  eTP={} iTP={}{}{}  maglev {}/{}\n",
            s.name,
            if s.port_name.is_empty() {
                "-"
            } else {
                &s.port_name
            },
            s.protocol,
            s.port,
            s.frontends.join(", "),
            s.external_policy,
            s.internal_policy,
            s.affinity_secs
                .map(|t| format!(" affinity=ClientIP({t}s)"))
                .unwrap_or_default(),
            s.health_check_node_port
                .map(|p| format!(" healthCheckNodePort={p}"))
                .unwrap_or_default(),
            s.maglev_size,
            s.maglev_size_external,
        ));
        let mut t = Table::new(&[
            ("  Backend", Left),
            ("State", Left),
            ("Local", Left),
            ("Node", Left),
            ("Target", Left),
            ("Weight", Right),
            ("Slots", Right),
            ("Slots-ext", Right),
        ]);
        for b in &s.backends {
            t.row([
                format!("  {}", b.address),
                b.state.clone(),
                if b.local { "yes" } else { "no" }.to_string(),
                b.node.clone(),
                b.target.clone(),
                b.weight.to_string(),
                b.maglev_slots.to_string(),
                b.maglev_slots_external.to_string(),
            ]);
        }
        if s.backends.is_empty() {
            out.push_str("  (no endpoints: clients are rejected)\n");
        } else {
            out.push_str(&t.render());
        }
    }
    if list.is_empty() {
        out.push_str("no services\n");
    }
    out
}

/// `show sessions`.
pub fn sessions(r: &SessionsReport) -> String {
    use Align::{Left, Right};
    let mut out = format!(
        "sessions {} (limit {} per worker), created {}, refused (full) {}, early drops {}\n",
        r.total, r.limit, r.created, r.full, r.early_drops
    );
    let mut t = Table::new(&[
        ("Proto", Left),
        ("Original", Left),
        ("Reply", Left),
        ("NAT", Left),
        ("State", Left),
        ("Service", Left),
        ("Expires", Right),
        ("Pkts-orig", Right),
        ("Pkts-reply", Right),
    ]);
    for s in &r.sessions {
        t.row([
            s.protocol.clone(),
            s.original.clone(),
            s.reply.clone(),
            s.nat.clone(),
            s.state.clone(),
            s.service.clone().unwrap_or_else(|| "-".into()),
            format!("{:.0}s", s.expires_in_secs),
            s.packets_orig.to_string(),
            s.packets_reply.to_string(),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// `show hostports`: one line per hostPort (a node port translated to one pod), served or
/// not (with why).
pub fn hostports(list: &[HostPortInfo]) -> String {
    use Align::Left;
    if list.is_empty() {
        return "no hostPorts\n".to_string();
    }
    let mut t = Table::new(&[
        ("Host", Left),
        ("Proto", Left),
        ("Pod", Left),
        ("Backend", Left),
        ("Source", Left),
        ("State", Left),
    ]);
    for h in list {
        let host = if h.host_ip.is_empty() {
            format!("*:{}", h.host_port)
        } else {
            format!("{}:{}", h.host_ip, h.host_port)
        };
        t.row([
            host,
            h.protocol.clone(),
            h.pod.clone(),
            format!("{}:{}", h.pod_ip, h.container_port),
            h.source.clone(),
            if h.served {
                "served".to_string()
            } else {
                format!("shadowed: {}", h.reason)
            },
        ]);
    }
    t.render()
}
