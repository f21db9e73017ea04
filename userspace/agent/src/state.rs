//! The node's desired state turned into engine tables.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ferroplane_engine::{Interfaces, Snapshot};
use ferroplane_tables::{FibBuilder, FibError, Ipv4Prefix};

use crate::config::NodeSpec;

/// The uplink as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkState {
    /// Kernel name.
    pub name: String,
    /// Kernel ifindex.
    pub ifindex: u32,
    /// MAC.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u16,
    /// AF_XDP port of RX queue 0 (it also transmits).
    pub port: Option<u16>,
    /// RX queues, each with its AF_XDP port: `port .. port + queues`.
    pub queues: u16,
    /// XDP attach mode.
    pub xdp_mode: Option<String>,
}

/// A plumbed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// `namespace/name`.
    pub key: String,
    /// Pod address.
    pub ip: Ipv4Addr,
    /// Pod MAC.
    pub pod_mac: [u8; 6],
    /// Host veth name.
    pub host_ifname: String,
    /// Host veth ifindex.
    pub host_ifindex: u32,
    /// Host veth MAC (answers ARP for the gateway).
    pub host_mac: [u8; 6],
    /// MTU.
    pub mtu: u16,
    /// Engine interface index.
    pub sw_if: u16,
    /// AF_XDP port.
    pub port: Option<u16>,
    /// XDP attach mode.
    pub xdp_mode: Option<String>,
    /// `namespace/name` of the Kubernetes pod a CNI attachment belongs to (from
    /// `CNI_ARGS`), when known: its NetworkPolicy identity instead of `key`.
    pub identity: Option<String>,
    /// hostPorts of a CNI attachment (the runtime's `portMappings`, [`crate::hostports`]).
    pub host_ports: Vec<crate::hostports::HostPort>,
}

/// Everything the tables are computed from.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The spec.
    pub spec: NodeSpec,
    /// The uplink (engine sw_if 0).
    pub uplink: UplinkState,
    /// Pods by key.
    pub pods: BTreeMap<String, PodState>,
    /// Resolved neighbours on the uplink.
    pub neighbours: BTreeMap<Ipv4Addr, [u8; 6]>,
    /// Remote nodes: tunnels and the remote pod CIDR table.
    pub overlay: Arc<crate::overlay::Overlay>,
    /// Routes learnt over BGP with their ECMP next hops on the uplink (the overlay's
    /// tunnel routes win for the same prefix).
    pub bgp_routes: BTreeMap<Ipv4Prefix, crate::bgp::NextHops>,
    /// Service tables (rebuilt when the spec's services change) and their XDP steering.
    pub services: crate::services::ServiceCacheHandle,
    /// The pods the Kubernetes watchers see (empty in standalone mode): NetworkPolicy peers,
    /// and the identity and labels of the pods plumbed through CNI.
    pub k8s_pods: Vec<ferroplane_policy::PodInfo>,
    /// hostPorts of this node's Kubernetes pods (empty in standalone mode), served with the
    /// CNI attachments' ([`crate::hostports::merge`]).
    pub k8s_host_ports: Vec<crate::hostports::Binding>,
}

/// Engine index of the uplink.
pub const UPLINK_SW_IF: u16 = 0;

impl NodeState {
    /// The first engine index not used by a pod.
    pub fn free_sw_if(&self) -> u16 {
        let mut i = 1;
        while self.pods.values().any(|p| p.sw_if == i) {
            i += 1;
        }
        i
    }

    /// Next hops the FIB needs resolved on the uplink.
    pub fn uplink_next_hops(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self.spec.node.gateway.into_iter().collect();
        v.extend(self.spec.routes.iter().map(|r| r.via));
        v.extend(self.overlay.uplink_next_hops());
        v.extend(self.bgp_routes.values().flat_map(|h| h.iter()));
        v.sort();
        v.dedup();
        v
    }

    /// The pods NetworkPolicy is compiled over: the spec's, the CNI-plumbed ones and the
    /// Kubernetes ones ([`crate::policy::node_pods`]).
    pub fn policy_pods(&self) -> Vec<ferroplane_policy::PodInfo> {
        crate::policy::node_pods(
            &self.spec,
            self.pods
                .values()
                .map(|p| (p.identity.as_deref().unwrap_or(&p.key), p.ip)),
            &self.k8s_pods,
        )
    }

    /// The hostPorts to serve: the CNI attachments' and the Kubernetes pods' (of pods
    /// plumbed here), merged, and those the merge left out.
    pub fn host_port_bindings(
        &self,
    ) -> (
        Vec<crate::hostports::Binding>,
        Vec<crate::hostports::Shadowed>,
    ) {
        use crate::hostports::{Binding, Source};
        let cni = self
            .pods
            .values()
            .flat_map(|p| {
                p.host_ports.iter().map(|hp| Binding {
                    pod: p.identity.clone().unwrap_or_else(|| p.key.clone()),
                    pod_ip: p.ip,
                    port: *hp,
                    source: Source::Cni,
                })
            })
            .collect();
        let local = self.pods.values().map(|p| p.ip).collect();
        crate::hostports::merge(cni, &self.k8s_host_ports, &local)
    }

    /// Compute the engine snapshot from scratch (the reference the reconciler's
    /// incremental snapshots are checked against; the route and interface entries are
    /// the reconciler's, the order that decides a prefix is this build's own).
    pub fn snapshot(&self) -> Result<Snapshot, FibError> {
        use crate::reconcile::{interfaces, learnt_route, node_routes, pod_cidrs, pod_route};
        let node = &self.spec.node;
        let mut b = FibBuilder::new();
        b.interface(UPLINK_SW_IF, self.uplink.mac, self.uplink.mtu);
        for (ip, mac) in &self.neighbours {
            b.neighbour(UPLINK_SW_IF, *ip, *mac);
        }
        for e in node_routes(self) {
            b.route(e);
        }
        for p in self.pods.values() {
            b.interface(p.sw_if, p.host_mac, p.mtu);
            b.neighbour(p.sw_if, p.ip, p.pod_mac);
            b.route(pod_route(p));
        }
        let own = [
            Ipv4Prefix::from(node.address),
            Ipv4Prefix::from(node.pod_cidr),
        ];
        let mut learnt_via_tunnels = Vec::new();
        for (p, hops) in &self.bgp_routes {
            if hops.is_empty() || own.contains(p) {
                continue;
            }
            let (entry, through) = learnt_route(self, *p, hops);
            learnt_via_tunnels.extend(through.into_iter().map(|h| (*p, h)));
            b.route(entry);
        }
        let tunnels = self
            .overlay
            .table_with_learnt(&learnt_via_tunnels)
            .unwrap_or_else(|e| {
                tracing::warn!("tunnel table with BGP routes: {e}");
                self.overlay.table()
            });
        self.overlay.contribute(
            &mut b,
            &mut Interfaces::new(),
            UPLINK_SW_IF,
            self.uplink.mtu,
        );
        let (bindings, shadowed) = self.host_port_bindings();
        let (services, nat) = crate::services::tables_with_host_ports(
            &self.services,
            &self.spec,
            &bindings,
            shadowed,
        );
        Ok(Snapshot {
            services,
            nat,
            tunnels,
            version: 0,
            fib: Arc::new(b.build()?),
            ifaces: Arc::new(interfaces(self)),
            node_ip: Some(node.address.addr()),
            pod_cidrs: pod_cidrs(self),
            policy: crate::policy::compile_pods(&self.spec, &self.policy_pods()),
            flow_export: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroplane_tables::{AdjKind, RouteSource};

    const SPEC: &str = r#"
node:
  name: n1
  uplink: up0
  address: 192.168.100.2/24
  gateway: 192.168.100.1
  podCIDR: 10.244.1.0/24
pods:
  - name: a
    netns: x
    ip: 10.244.1.10
"#;

    fn state() -> NodeState {
        let spec = NodeSpec::from_yaml(SPEC).unwrap();
        let mut pods = BTreeMap::new();
        pods.insert(
            "default/a".to_string(),
            PodState {
                key: "default/a".into(),
                ip: "10.244.1.10".parse().unwrap(),
                pod_mac: [2, 0, 0, 0, 0, 0xa],
                host_ifname: "fpabc".into(),
                host_ifindex: 7,
                host_mac: [2, 0, 0, 0, 1, 0xa],
                mtu: 1500,
                sw_if: 1,
                port: Some(1),
                xdp_mode: Some("native".into()),
                identity: None,
                host_ports: Vec::new(),
            },
        );
        NodeState {
            spec,
            uplink: UplinkState {
                name: "up0".into(),
                ifindex: 2,
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
                port: Some(0),
                queues: 1,
                xdp_mode: Some("native".into()),
            },
            pods,
            neighbours: BTreeMap::new(),
            overlay: Default::default(),
            bgp_routes: BTreeMap::new(),
            services: Default::default(),
            k8s_pods: Vec::new(),
            k8s_host_ports: Vec::new(),
        }
    }

    #[test]
    fn tables_follow_the_spec() {
        let mut s = state();
        let snap = s.snapshot().unwrap();
        let fib = &snap.fib;
        let adj = |ip: &str| *fib.adj(fib.resolve(ip.parse().unwrap(), || 0));
        assert_eq!(adj("10.244.1.10").kind, AdjKind::Rewrite);
        assert_eq!(adj("10.244.1.10").sw_if, 1);
        assert_eq!(
            adj("10.244.1.99").kind,
            AdjKind::Drop,
            "unknown pod address"
        );
        assert_eq!(adj("192.168.100.2").kind, AdjKind::Local);
        assert_eq!(
            adj("8.8.8.8").kind,
            AdjKind::Incomplete,
            "gateway unresolved"
        );
        assert_eq!(
            s.uplink_next_hops(),
            vec!["192.168.100.1".parse::<Ipv4Addr>().unwrap()]
        );
        s.neighbours
            .insert("192.168.100.1".parse().unwrap(), [2, 9, 9, 9, 9, 9]);
        let snap = s.snapshot().unwrap();
        let a = *snap
            .fib
            .adj(snap.fib.resolve("8.8.8.8".parse().unwrap(), || 0));
        assert_eq!(a.kind, AdjKind::Rewrite);
        assert_eq!(a.dst_mac, [2, 9, 9, 9, 9, 9]);
        assert_eq!(snap.ifaces.sw_if_of_port(1), 1);
        assert_eq!(s.free_sw_if(), 2);
    }

    #[test]
    fn bgp_routes_to_cluster_nodes_follow_the_overlay() {
        let mut s = state();
        let yaml = format!(
            "{SPEC}cluster:\n  mode: vxlan\n  nodes:\n    - name: n2\n      address: 192.168.100.3\n    - name: n3\n      address: 192.168.100.4\n      mode: direct\nbgp:\n  localAS: 64512\n"
        );
        s.spec = NodeSpec::from_yaml(&yaml).unwrap();
        s.overlay =
            Arc::new(crate::overlay::Overlay::from_spec(&s.spec, s.spec.cluster.as_ref()).unwrap());
        let ip = |a: &str| a.parse::<Ipv4Addr>().unwrap();
        s.bgp_routes.insert(
            "10.244.2.0/24".parse().unwrap(),
            [ip("192.168.100.3")].into(),
        );
        s.bgp_routes.insert(
            "10.244.3.0/24".parse().unwrap(),
            [ip("192.168.100.4")].into(),
        );
        s.bgp_routes.insert(
            "10.99.0.0/24".parse().unwrap(),
            [ip("192.168.100.1")].into(),
        );
        let snap = s.snapshot().unwrap();
        let fib = &snap.fib;
        let adj = |a: &str| *fib.adj(fib.resolve(ip(a), || 0));
        let vxlan = ferroplane_engine::tunnel::TUNNEL_SW_IF_BASE;
        assert_eq!(adj("10.244.2.7").sw_if, vxlan, "VXLAN node: its tunnel");
        assert_eq!(adj("10.244.3.7").sw_if, UPLINK_SW_IF, "direct node: uplink");
        assert_eq!(adj("10.244.3.7").next_hop, Some(ip("192.168.100.4")));
        assert_eq!(adj("10.99.0.7").sw_if, UPLINK_SW_IF, "not a cluster node");
        let t = snap.tunnels.by_remote(ip("192.168.100.3")).unwrap();
        assert!(
            t.allows(ip("10.244.2.9")),
            "learnt prefix accepted from the tunnel"
        );
        assert!(!t.allows(ip("10.244.3.9")));
        let r = fib
            .routes()
            .find(|r| r.prefix == "10.244.2.0/24".parse().unwrap())
            .unwrap();
        assert_eq!(r.source, RouteSource::Bgp);
    }
}
