//! Routing information bases (RFC 4271 §3.2, §9): Adj-RIB-In per peer, the Loc-RIB
//! ([`LocRib`], in [`crate::loc_rib`]) with the decision process and ECMP multipath, and
//! the export rules that build each peer's Adj-RIB-Out.
//!
//! Memory: a path is a source, a stale bit and an `Arc` to a [`PathInfo`] interned per
//! peer and attribute set ([`crate::intern`]), so a table of N prefixes sharing a few
//! attribute sets costs N small entries, not N copies of the attributes. The Adj-RIB-In
//! keeps only what the Loc-RIB does not: whether a route passed import and is stale
//! (an accepted route's attributes are its Loc-RIB path's; a refused one's are not
//! used again, as import policy is fixed for the session).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Deref;
use std::sync::Arc;

use serde::Serialize;

pub use crate::loc_rib::{Dest, LocRib};
use ipnet::IpNet;

use crate::prefix_map::PrefixMap;
use crate::update::PathAttributes;

/// Index of a configured peer.
pub type PeerId = usize;

/// LOCAL_PREF assumed when a path has none (RFC 4271 leaves it to policy; 100 by custom).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// Where a path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Originated by this node.
    Local,
    /// Learnt from a peer.
    Peer(PeerId),
}

/// What every path from one peer with one attribute set has in common: shared by all
/// of them through one interned `Arc` ([`crate::intern::Interner`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathInfo {
    /// Attributes as received (after import).
    pub attrs: PathAttributes,
    /// Next hop (IPv4 NEXT_HOP or MP_REACH next hop; unspecified for local routes).
    pub next_hop: IpAddr,
    /// Learnt over eBGP.
    pub ebgp: bool,
    /// The advertising peer's BGP identifier (ours for local routes).
    pub router_id: Ipv4Addr,
    /// The advertising peer's address.
    pub peer_addr: IpAddr,
    /// IGP cost to the next hop, when known.
    pub igp_cost: Option<u32>,
}

impl PathInfo {
    /// A locally originated path's data (no attributes of its own, no next hop).
    pub fn local(router_id: Ipv4Addr) -> PathInfo {
        PathInfo {
            attrs: PathAttributes::default(),
            next_hop: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ebgp: false,
            router_id,
            peer_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            igp_cost: None,
        }
    }
}

/// One candidate path for a prefix (32 bytes: the data is shared, see [`PathInfo`],
/// whose fields it dereferences to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Origin of the path.
    pub source: Source,
    /// Attributes, next hop and source peer, shared.
    pub info: Arc<PathInfo>,
    /// Retained under graceful restart while the peer restarts.
    pub stale: bool,
}

impl Deref for Path {
    type Target = PathInfo;

    fn deref(&self) -> &PathInfo {
        &self.info
    }
}

impl Path {
    fn local_pref(&self) -> u32 {
        self.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
    }

    fn neighbour_as(&self, local_as: u32) -> u32 {
        if self.ebgp {
            self.attrs.as_path.first_as().unwrap_or(0)
        } else {
            // RFC 4271 §9.1.2.2 c: internal routes' neighbour AS is the first AS of the
            // path, or ours when the path is empty.
            self.attrs.as_path.first_as().unwrap_or(local_as)
        }
    }

    fn tiebreak_id(&self) -> Ipv4Addr {
        self.attrs.originator_id.unwrap_or(self.router_id)
    }
}

/// The step of the decision process at which a path lost (RFC 4271 §9.1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// A locally originated path exists.
    NotLocal,
    /// Lower LOCAL_PREF.
    LocalPref,
    /// Longer AS_PATH.
    AsPathLength,
    /// Higher ORIGIN.
    Origin,
    /// Higher MED than another path from the same neighbour AS.
    Med,
    /// iBGP path while an eBGP one exists.
    PeerType,
    /// Higher IGP cost to the next hop.
    IgpCost,
    /// Higher BGP identifier (ORIGINATOR_ID when reflected).
    RouterId,
    /// Longer CLUSTER_LIST.
    ClusterListLength,
    /// Higher peer address.
    PeerAddress,
}

impl Reason {
    /// Human text for `show bgp routes`.
    pub fn text(self) -> &'static str {
        match self {
            Reason::NotLocal => "locally originated path preferred",
            Reason::LocalPref => "lower local-pref",
            Reason::AsPathLength => "longer AS path",
            Reason::Origin => "worse origin",
            Reason::Med => "higher MED",
            Reason::PeerType => "iBGP path, eBGP preferred",
            Reason::IgpCost => "higher IGP cost",
            Reason::RouterId => "higher router id",
            Reason::ClusterListLength => "longer cluster list",
            Reason::PeerAddress => "higher peer address",
        }
    }
}

/// The result of the decision process for one prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Index of the best path.
    pub best: Option<usize>,
    /// Paths equal to the best through the IGP cost step (ECMP set, best included).
    pub multipath: Vec<usize>,
    /// For each path, the step where it lost (`None` for the best and multipath peers).
    pub reasons: Vec<Option<Reason>>,
}

/// Run the decision process (RFC 4271 §9.1.2.2, elimination by steps) over `paths`.
pub fn select(paths: &[Path], local_as: u32) -> Selection {
    let mut reasons: Vec<Option<Reason>> = vec![None; paths.len()];
    let mut alive: Vec<usize> = (0..paths.len()).collect();
    // Keep only the candidates minimising `key`; the others lose with `r`.
    fn keep_min<K: Ord + Copy>(
        alive: &mut Vec<usize>,
        reasons: &mut [Option<Reason>],
        r: Reason,
        key: impl Fn(usize) -> K,
    ) {
        if let Some(m) = alive.iter().map(|&i| key(i)).min() {
            alive.retain(|&i| {
                let keep = key(i) == m;
                if !keep {
                    reasons[i] = Some(r);
                }
                keep
            });
        }
    }
    keep_min(&mut alive, &mut reasons, Reason::NotLocal, |i| {
        u8::from(paths[i].source != Source::Local)
    });
    keep_min(&mut alive, &mut reasons, Reason::LocalPref, |i| {
        u32::MAX - paths[i].local_pref()
    });
    keep_min(&mut alive, &mut reasons, Reason::AsPathLength, |i| {
        paths[i].attrs.as_path.len()
    });
    keep_min(&mut alive, &mut reasons, Reason::Origin, |i| {
        paths[i].attrs.origin
    });
    // MED: compared only between paths from the same neighbouring AS.
    let mut min_med: HashMap<u32, u32> = HashMap::new();
    for &i in &alive {
        let e = min_med
            .entry(paths[i].neighbour_as(local_as))
            .or_insert(u32::MAX);
        *e = (*e).min(paths[i].attrs.med.unwrap_or(0));
    }
    alive.retain(|&i| {
        let keep = paths[i].attrs.med.unwrap_or(0) == min_med[&paths[i].neighbour_as(local_as)];
        if !keep {
            reasons[i] = Some(Reason::Med);
        }
        keep
    });
    keep_min(&mut alive, &mut reasons, Reason::PeerType, |i| {
        u8::from(!paths[i].ebgp)
    });
    keep_min(&mut alive, &mut reasons, Reason::IgpCost, |i| {
        paths[i].igp_cost.unwrap_or(0)
    });
    let multipath = alive.clone();
    let mut tb = alive.clone();
    keep_min(&mut tb, &mut reasons, Reason::RouterId, |i| {
        paths[i].tiebreak_id()
    });
    keep_min(&mut tb, &mut reasons, Reason::ClusterListLength, |i| {
        paths[i].attrs.cluster_list.len()
    });
    keep_min(&mut tb, &mut reasons, Reason::PeerAddress, |i| {
        paths[i].peer_addr
    });
    let best = tb.first().copied();
    // Multipath members keep no reason: they forward too.
    for &i in &multipath {
        reasons[i] = None;
    }
    Selection {
        best,
        multipath,
        reasons,
    }
}

/// One route in a peer's Adj-RIB-In: its attributes are those of the peer's path in
/// the Loc-RIB when accepted (not copied here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InRoute {
    /// Passed import policy (else counted for `show` but not in the Loc-RIB).
    pub accepted: bool,
    /// Retained under graceful restart, waiting for a refresh or End-of-RIB.
    pub stale: bool,
}

/// Routes received from one peer.
pub type AdjRibIn = PrefixMap<InRoute>;

/// What this speaker last advertised to a peer.
pub type AdjRibOut = HashMap<IpNet, (Arc<PathAttributes>, IpAddr)>;

/// Which Loc-RIB routes a peer gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExportPolicy {
    /// Every best path the BGP rules allow (iBGP split horizon, reflection): routes
    /// learnt from one peer go on to others (transit, route reflection).
    All,
    /// Only routes this node originates (the default: a Kubernetes node is not a
    /// transit AS).
    #[default]
    Originated,
    /// Nothing.
    None,
}

/// What the export rules need to know about the receiving peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportTarget {
    /// The peer's id.
    pub id: PeerId,
    /// eBGP session.
    pub ebgp: bool,
    /// The peer is a route-reflector client of ours.
    pub rr_client: bool,
    /// Our address on the session (next-hop-self).
    pub local_addr: IpAddr,
    /// Always set ourselves as next hop.
    pub next_hop_self: bool,
    /// Policy.
    pub policy: ExportPolicy,
}

/// What the export rules need to know about the source of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceInfo {
    /// eBGP-learnt.
    pub ebgp: bool,
    /// Learnt from a route-reflector client.
    pub rr_client: bool,
    /// The source peer's identifier (for ORIGINATOR_ID).
    pub router_id: Ipv4Addr,
}

/// Export rules (RFC 4271 §9.1.3 and §5, RFC 4456 reflection): the attributes and next
/// hop to advertise `path` with to `to`, or `None` when it must not be advertised.
/// `src` describes the peer the path came from (`None` for local routes).
pub fn export(
    path: &Path,
    src: Option<SourceInfo>,
    to: &ExportTarget,
    local_as: u32,
    cluster_id: Ipv4Addr,
) -> Option<(PathAttributes, IpAddr)> {
    if path.source == Source::Peer(to.id) {
        return None; // never back to where it came from
    }
    match to.policy {
        ExportPolicy::None => return None,
        ExportPolicy::Originated if path.source != Source::Local => return None,
        _ => {}
    }
    let mut reflect = false;
    if let Some(s) = src {
        if !s.ebgp && !to.ebgp {
            // iBGP to iBGP only through reflection (RFC 4456 §6).
            if !(s.rr_client || to.rr_client) {
                return None;
            }
            reflect = true;
        }
    }
    let mut a = path.attrs.clone();
    let local_nh = if path.source == Source::Local || path.next_hop.is_unspecified() {
        true
    } else {
        to.next_hop_self && !reflect
    };
    let mut nh = if local_nh || to.ebgp {
        to.local_addr
    } else {
        path.next_hop
    };
    if nh.is_ipv4() != path.next_hop.is_ipv4() && !path.next_hop.is_unspecified() {
        // A next hop of the other family cannot be rewritten to ours: keep it.
        nh = path.next_hop;
    }
    if to.ebgp {
        a.as_path.prepend(local_as);
        a.local_pref = None;
        if path.source != Source::Local {
            a.med = None; // RFC 4271 §5.1.4: not propagated to other ASes
        }
        a.originator_id = None;
        a.cluster_list.clear();
    } else {
        a.local_pref = Some(a.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
        if reflect {
            if let Some(s) = src {
                a.originator_id.get_or_insert(s.router_id);
            }
            a.cluster_list.insert(0, cluster_id);
        }
    }
    Some((a, nh))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::{AsPath, AsSegment, Origin, SegmentKind};

    fn path(src: Source, lp: u32, asns: &[u32], nh: &str, ebgp: bool, id: u8) -> Path {
        Path {
            source: src,
            info: Arc::new(PathInfo {
                attrs: PathAttributes {
                    local_pref: Some(lp),
                    as_path: AsPath(if asns.is_empty() {
                        vec![]
                    } else {
                        vec![AsSegment {
                            kind: SegmentKind::Sequence,
                            asns: asns.to_vec(),
                        }]
                    }),
                    ..PathAttributes::default()
                },
                next_hop: nh.parse().unwrap(),
                ebgp,
                router_id: Ipv4Addr::new(id, id, id, id),
                peer_addr: nh.parse().unwrap(),
                igp_cost: None,
            }),
            stale: false,
        }
    }

    #[test]
    fn decision_steps_in_rfc_order() {
        let a = path(Source::Peer(0), 100, &[65001, 65010], "10.0.0.1", true, 1);
        let b = path(
            Source::Peer(1),
            200,
            &[65002, 65010, 65011],
            "10.0.0.2",
            true,
            2,
        );
        let s = select(&[a.clone(), b.clone()], 65000);
        assert_eq!(s.best, Some(1), "local-pref beats path length");
        assert_eq!(s.reasons[0], Some(Reason::LocalPref));

        let b2 = path(
            Source::Peer(1),
            100,
            &[65002, 65010, 65011],
            "10.0.0.2",
            true,
            2,
        );
        let s = select(&[a.clone(), b2], 65000);
        assert_eq!(
            (s.best, s.reasons[1]),
            (Some(0), Some(Reason::AsPathLength))
        );

        let mut c = path(Source::Peer(1), 100, &[65002, 65010], "10.0.0.2", true, 2);
        Arc::make_mut(&mut c.info).attrs.origin = Origin::Incomplete;
        let s = select(&[a.clone(), c], 65000);
        assert_eq!((s.best, s.reasons[1]), (Some(0), Some(Reason::Origin)));

        let ibgp = path(Source::Peer(1), 100, &[65002, 65010], "10.0.0.2", false, 0);
        let s = select(&[a.clone(), ibgp], 65000);
        assert_eq!((s.best, s.reasons[1]), (Some(0), Some(Reason::PeerType)));
    }

    #[test]
    fn med_only_within_the_same_neighbour_as() {
        let mut a = path(Source::Peer(0), 100, &[65001], "10.0.0.1", true, 1);
        let mut b = path(Source::Peer(1), 100, &[65001], "10.0.0.2", true, 2);
        let mut c = path(Source::Peer(2), 100, &[65002], "10.0.0.3", true, 3);
        Arc::make_mut(&mut a.info).attrs.med = Some(50);
        Arc::make_mut(&mut b.info).attrs.med = Some(10);
        Arc::make_mut(&mut c.info).attrs.med = Some(99);
        let s = select(&[a, b, c], 65000);
        assert_eq!(s.reasons[0], Some(Reason::Med));
        assert_eq!(
            s.multipath,
            vec![1, 2],
            "different neighbour AS: MED not compared"
        );
        assert_eq!(s.best, Some(1), "lower router id breaks the tie");
        assert_eq!(s.reasons[2], None, "multipath members carry no reason");
    }

    #[test]
    fn equal_paths_make_an_ecmp_set_and_changes_are_reported() {
        let mut rib = LocRib::new(65000, true);
        let p: IpNet = "10.244.9.0/24".parse().unwrap();
        assert!(rib.insert(p, path(Source::Peer(0), 100, &[65001], "10.0.0.1", true, 1)));
        assert!(rib.insert(p, path(Source::Peer(1), 100, &[65002], "10.0.0.2", true, 2)));
        assert!(
            !rib.insert(
                p,
                path(Source::Peer(2), 100, &[65003, 1], "10.0.0.3", true, 3)
            ),
            "a path with a longer AS path changes nothing"
        );
        let d = rib.get(&p).unwrap();
        assert_eq!(d.next_hops(true).len(), 2);
        assert_eq!(
            d.next_hops(false),
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
        // The compact selection agrees with a full run of the decision process.
        let full = d.selection(65000);
        assert_eq!(d.best_index(), full.best);
        for i in 0..d.paths().len() {
            assert_eq!(d.is_multipath(i), full.multipath.contains(&i), "path {i}");
        }
        assert!(!d.is_multipath(2));
        assert_eq!(full.reasons[2], Some(Reason::AsPathLength));
        assert!(
            !rib.remove(&p, Source::Peer(2)),
            "a losing path going away changes neither the best path nor the ECMP set"
        );
        assert!(
            !rib.insert(p, path(Source::Peer(1), 100, &[65002], "10.0.0.2", true, 2)),
            "same path again: no change"
        );
        assert!(rib.remove(&p, Source::Peer(0)));
        assert_eq!(
            rib.get(&p).unwrap().next_hops(true),
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert!(rib.remove(&p, Source::Peer(1)));
        assert!(rib.is_empty());
        assert!(!rib.remove(&p, Source::Peer(1)));
    }

    #[test]
    fn local_routes_win_and_export_rules() {
        let local = path(Source::Local, 100, &[], "0.0.0.0", false, 9);
        let learnt = path(Source::Peer(0), 300, &[], "10.0.0.1", false, 1);
        let s = select(&[learnt.clone(), local.clone()], 65000);
        assert_eq!(s.best, Some(1));
        let ebgp = ExportTarget {
            id: 1,
            ebgp: true,
            rr_client: false,
            local_addr: "192.168.1.1".parse().unwrap(),
            next_hop_self: false,
            policy: ExportPolicy::All,
        };
        let (a, nh) = export(&local, None, &ebgp, 65000, Ipv4Addr::new(9, 9, 9, 9)).unwrap();
        assert_eq!(a.as_path.to_string(), "65000");
        assert_eq!(a.local_pref, None);
        assert_eq!(nh, ebgp.local_addr);
        let ibgp = ExportTarget {
            ebgp: false,
            ..ebgp
        };
        let src = SourceInfo {
            ebgp: false,
            rr_client: false,
            router_id: Ipv4Addr::new(1, 1, 1, 1),
        };
        assert!(
            export(&learnt, Some(src), &ibgp, 65000, Ipv4Addr::new(9, 9, 9, 9)).is_none(),
            "iBGP split horizon"
        );
        let client = ExportTarget {
            rr_client: true,
            ..ibgp
        };
        let (a, nh) = export(
            &learnt,
            Some(src),
            &client,
            65000,
            Ipv4Addr::new(9, 9, 9, 9),
        )
        .unwrap();
        assert_eq!(a.originator_id, Some(Ipv4Addr::new(1, 1, 1, 1)));
        assert_eq!(a.cluster_list, vec![Ipv4Addr::new(9, 9, 9, 9)]);
        assert_eq!(nh, learnt.next_hop, "reflection keeps the next hop");
        let back = ExportTarget { id: 0, ..client };
        assert!(export(&learnt, Some(src), &back, 65000, Ipv4Addr::new(9, 9, 9, 9)).is_none());
        let orig = ExportTarget {
            policy: ExportPolicy::Originated,
            ..client
        };
        assert!(export(&learnt, Some(src), &orig, 65000, Ipv4Addr::new(9, 9, 9, 9)).is_none());
        assert!(export(&local, None, &orig, 65000, Ipv4Addr::new(9, 9, 9, 9)).is_some());
    }
}
