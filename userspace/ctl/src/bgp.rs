//! `ferroctl show bgp` and `show bgp routes [PREFIX]`.

use std::net::IpAddr;

use anyhow::{Context, Result};
use ferroplane_api::{BgpReport, BgpRoute};

use crate::table::{Align, Table};

/// `show bgp ...` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BgpShow {
    /// The Loc-RIB: every path with the best one first and why the others lost.
    Routes {
        /// A prefix (exact) or an address (longest match).
        prefix: Option<String>,
    },
}

fn uptime(s: Option<u64>) -> String {
    match s {
        None => "-".into(),
        Some(s) => format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60),
    }
}

/// The speaker and its peers.
pub fn peers(r: &BgpReport) -> String {
    use Align::{Left, Right};
    if !r.enabled {
        return "BGP is not configured (no bgp: section)\n".into();
    }
    let mut out = format!(
        "local AS {} router id {} loc-rib {} prefixes ({} in the engine FIB), originated: {}\n",
        r.local_as,
        r.router_id,
        r.loc_rib,
        r.fib_routes,
        if r.originated.is_empty() {
            "-".to_string()
        } else {
            r.originated.join(", ")
        }
    );
    let mut t = Table::new(&[
        ("Peer", Left),
        ("AS", Right),
        ("Type", Left),
        ("State", Left),
        ("Uptime", Right),
        ("Received", Right),
        ("Accepted", Right),
        ("Advertised", Right),
        ("Stale", Right),
        ("7606-withdraw", Right),
        ("Last-error", Left),
    ]);
    for p in &r.peers {
        t.row([
            p.address.clone(),
            p.remote_as.to_string(),
            p.kind.clone(),
            p.state.clone(),
            uptime(p.uptime_secs),
            p.received.to_string(),
            p.accepted.to_string(),
            p.advertised.to_string(),
            p.stale.to_string(),
            p.treat_as_withdraw.to_string(),
            p.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// Loc-RIB entries with every path; `*` best, `=` ECMP member, reason for the others.
pub fn routes(routes: &[BgpRoute]) -> String {
    use Align::{Left, Right};
    let mut t = Table::new(&[
        ("", Left),
        ("Prefix", Left),
        ("From", Left),
        ("Next-hop", Left),
        ("AS-path", Left),
        ("Origin", Left),
        ("LocPref", Right),
        ("MED", Right),
        ("Communities", Left),
        ("Why not best", Left),
    ]);
    for r in routes {
        for (i, p) in r.paths.iter().enumerate() {
            let flag = match (p.best, p.multipath, p.stale) {
                (true, _, false) => "*>",
                (true, _, true) => "*S",
                (false, true, _) => "*=",
                (false, false, _) => "",
            };
            t.row([
                flag.to_string(),
                if i == 0 {
                    r.prefix.clone()
                } else {
                    String::new()
                },
                p.from.clone(),
                p.next_hop.clone(),
                if p.as_path.is_empty() {
                    "-".into()
                } else {
                    p.as_path.clone()
                },
                p.origin.clone(),
                p.local_pref
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                p.med.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                if p.communities.is_empty() {
                    "-".into()
                } else {
                    p.communities.join(" ")
                },
                p.reason.clone().unwrap_or_default(),
            ]);
        }
    }
    let mut out = t.render();
    out.push_str("*> best, *= ECMP member, *S best but stale (graceful restart)\n");
    if routes.iter().any(|r| r.installed == "kernel") {
        out.push_str(
            "learnt IPv6 routes are kernel routes only (proto 157): the engine datapath is IPv4-only\n",
        );
    }
    out
}

/// Keep the routes `filter` selects: an exact prefix, or for an address the longest
/// prefix containing it.
pub fn filter_routes(data: serde_json::Value, filter: &str) -> Result<serde_json::Value> {
    let routes: Vec<BgpRoute> = serde_json::from_value(data)
        .context("unexpected data from the agent for show_bgp_routes")?;
    let parse = |s: &str| -> Option<(IpAddr, u8)> {
        let (a, l) = s.split_once('/')?;
        Some((a.parse().ok()?, l.parse().ok()?))
    };
    let contains = |net: (IpAddr, u8), ip: IpAddr| -> bool {
        match (net.0, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let m = if net.1 == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(net.1.min(32)))
                };
                u32::from(n) & m == u32::from(i) & m
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let m = if net.1 == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(net.1.min(128)))
                };
                u128::from(n) & m == u128::from(i) & m
            }
            _ => false,
        }
    };
    let picked: Vec<BgpRoute> = if let Some(want) = parse(filter) {
        routes
            .into_iter()
            .filter(|r| parse(&r.prefix) == Some(want))
            .collect()
    } else if let Ok(ip) = filter.parse::<IpAddr>() {
        routes
            .into_iter()
            .filter_map(|r| {
                parse(&r.prefix)
                    .filter(|n| contains(*n, ip))
                    .map(|n| (n.1, r))
            })
            .max_by_key(|(l, _)| *l)
            .map(|(_, r)| r)
            .into_iter()
            .collect()
    } else {
        anyhow::bail!("{filter:?} is neither a prefix (10.0.0.0/24) nor an address");
    };
    serde_json::to_value(picked).context("formatting JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroplane_api::{BgpPath, BgpPeer};

    fn route(p: &str) -> BgpRoute {
        BgpRoute {
            prefix: p.into(),
            paths: vec![
                BgpPath {
                    from: "192.168.1.1".into(),
                    next_hop: "192.168.1.1".into(),
                    as_path: "65001".into(),
                    origin: "igp".into(),
                    best: true,
                    ..BgpPath::default()
                },
                BgpPath {
                    from: "192.168.1.2".into(),
                    next_hop: "192.168.1.2".into(),
                    as_path: "65002 65003".into(),
                    origin: "igp".into(),
                    reason: Some("longer AS path".into()),
                    ..BgpPath::default()
                },
            ],
            installed: "engine".into(),
        }
    }

    #[test]
    fn routes_table_marks_best_and_reasons() {
        let s = routes(&[route("10.244.2.0/24")]);
        assert!(s.contains("*>  10.244.2.0/24"), "{s}");
        assert!(s.contains("longer AS path"), "{s}");
    }

    #[test]
    fn filter_by_prefix_and_address() {
        let all = serde_json::to_value(vec![route("10.0.0.0/8"), route("10.244.2.0/24")]).unwrap();
        let v = filter_routes(all.clone(), "10.244.2.0/24").unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        let v = filter_routes(all.clone(), "10.244.2.7").unwrap();
        assert_eq!(v[0]["prefix"], "10.244.2.0/24", "longest match");
        let v = filter_routes(all.clone(), "10.9.9.9").unwrap();
        assert_eq!(v[0]["prefix"], "10.0.0.0/8");
        assert!(filter_routes(all, "bogus").is_err());
    }

    #[test]
    fn peers_table() {
        let r = BgpReport {
            enabled: true,
            local_as: 64512,
            router_id: "1.1.1.1".into(),
            peers: vec![BgpPeer {
                address: "192.168.1.1".into(),
                remote_as: 64500,
                state: "Established".into(),
                uptime_secs: Some(3725),
                received: 3,
                ..BgpPeer::default()
            }],
            ..BgpReport::default()
        };
        let s = peers(&r);
        assert!(s.contains("01:02:05"), "{s}");
        assert!(s.contains("Established"), "{s}");
        assert!(s.contains("(0 in the engine FIB)"), "{s}");
        assert!(peers(&BgpReport::default()).contains("not configured"));
    }
}
