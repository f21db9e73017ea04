//! The service table: frontends (VIP, protocol, port) and NodePorts on the
//! node's addresses, each leading to a service port with its backends and a
//! Maglev table per traffic scope.
//!
//! Endpoint choice follows kube-proxy (`CategorizeEndpoints`): the ready
//! endpoints; when there are none, the serving-and-terminating ones. A
//! traffic policy of `Local` keeps only the endpoints on this node (applied
//! to in-cluster traffic by `internalTrafficPolicy`, to traffic arriving from
//! outside the cluster through a NodePort, external IP or load-balancer IP by
//! `externalTrafficPolicy`).
//!
//! A lookup is one hash probe whatever the number of services; a backend
//! choice is one Maglev slot load.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::hash::FastMap;
use crate::maglev::{mix64, Maglev, MaglevBackend, MaglevError};

mod update;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;

/// Name of an IP protocol number (`tcp`, `udp`, `icmp`, or the number).
pub fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP => "icmp".into(),
        n => n.to_string(),
    }
}

/// Where a service is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// Virtual address.
    pub addr: Ipv4Addr,
    /// IP protocol number.
    pub proto: u8,
    /// Port.
    pub port: u16,
}

/// The kind of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrontendKind {
    /// A cluster IP (in-cluster clients).
    ClusterIp,
    /// A NodePort on one of the node's addresses.
    NodePort,
    /// An `externalIPs` address.
    ExternalIp,
    /// A `status.loadBalancer.ingress` address.
    LoadBalancer,
}

impl FrontendKind {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "cluster-ip",
            FrontendKind::NodePort => "node-port",
            FrontendKind::ExternalIp => "external-ip",
            FrontendKind::LoadBalancer => "load-balancer",
        }
    }

    /// Whether `externalTrafficPolicy` applies to traffic from outside the cluster arriving here.
    pub fn is_external(&self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }
}

/// Condition of an endpoint, from its EndpointSlice conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// `ready` (implies serving, not terminating).
    Ready,
    /// `serving` and `terminating`: used only when no endpoint is ready.
    ServingTerminating,
    /// Neither: never used.
    NotServing,
}

impl EndpointState {
    /// From the EndpointSlice conditions, unset ones read as the API reference says
    /// (`ready` and `serving` unset: true; `terminating` unset: false). A terminating
    /// endpoint is never `Ready`.
    pub fn from_conditions(
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Self {
        let terminating = terminating.unwrap_or(false);
        let ready = ready.unwrap_or(true) && !terminating;
        let serving = serving.unwrap_or(true);
        if ready {
            EndpointState::Ready
        } else if serving && terminating {
            EndpointState::ServingTerminating
        } else {
            EndpointState::NotServing
        }
    }

    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            EndpointState::Ready => "ready",
            EndpointState::ServingTerminating => "serving-terminating",
            EndpointState::NotServing => "not-serving",
        }
    }
}

/// One backend of a service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Endpoint address.
    pub addr: Ipv4Addr,
    /// Target port (named ports already resolved for this endpoint).
    pub port: u16,
    /// On this node.
    pub local: bool,
    /// Condition.
    pub state: EndpointState,
    /// Maglev weight.
    pub weight: u32,
    /// Node the endpoint runs on (may be empty).
    pub node: String,
    /// What it is (`default/pod-a`), for display.
    pub target: String,
}

impl Backend {
    /// The Maglev identity of the backend (address and port).
    pub fn key(&self) -> u64 {
        mix64(((u32::from(self.addr) as u64) << 16) | self.port as u64)
    }
}

/// The backends eligible for one traffic scope and their Maglev table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Indices into [`ServicePort::backends`].
    pub backends: Vec<u16>,
    /// Maglev table over `backends`.
    pub maglev: Maglev,
}

impl Selection {
    /// The backend index (into [`ServicePort::backends`]) for a flow hash.
    #[inline(always)]
    pub fn pick(&self, hash: u32) -> Option<u16> {
        let i = self.maglev.lookup(hash)?;
        self.backends.get(i as usize).copied()
    }

    /// True when no backend is eligible.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    fn identity(&self, port: &[Backend]) -> Vec<(u64, u32)> {
        self.backends
            .iter()
            .filter_map(|&i| port.get(i as usize).map(|b| (b.key(), b.weight)))
            .collect()
    }
}

/// What the control plane says about one port of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortDef {
    /// `namespace/name` of the service.
    pub service: String,
    /// Port name (may be empty).
    pub port_name: String,
    /// IP protocol number.
    pub proto: u8,
    /// Service port.
    pub port: u16,
    /// NodePort, if any.
    pub node_port: Option<u16>,
    /// Cluster IPs (frontends of kind [`FrontendKind::ClusterIp`]).
    pub cluster_ips: Vec<Ipv4Addr>,
    /// External IPs.
    pub external_ips: Vec<Ipv4Addr>,
    /// Load-balancer ingress IPs.
    pub lb_ips: Vec<Ipv4Addr>,
    /// Backends.
    pub backends: Vec<Backend>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_secs: Option<u32>,
    /// `healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
}

/// One port of one service, ready for the data path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The definition.
    pub def: ServicePortDef,
    /// Backends eligible for in-cluster traffic.
    pub internal: Arc<Selection>,
    /// Backends eligible for traffic from outside the cluster.
    pub external: Arc<Selection>,
    /// Whether any endpoint (local or not) is usable: without one, clients get rejected.
    pub has_endpoints: bool,
    /// Number of usable local endpoints (what the health check node port reports).
    pub local_endpoints: usize,
}

impl ServicePort {
    /// The selection for a frontend kind and whether the client is outside the cluster.
    #[inline(always)]
    pub fn selection(&self, kind: FrontendKind, from_outside: bool) -> &Selection {
        if kind.is_external() && from_outside {
            &self.external
        } else {
            &self.internal
        }
    }

    /// Whether the selection for (kind, from_outside) is restricted to local endpoints.
    pub fn is_local_only(&self, kind: FrontendKind, from_outside: bool) -> bool {
        if kind.is_external() && from_outside {
            self.def.external_local
        } else {
            self.def.internal_local
        }
    }
}

/// Errors building a service table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Two service ports claim the same frontend.
    #[error("{addr}:{port}/{proto} of {second} is already used by {first}", proto = proto_name(key.proto), addr = key.addr, port = key.port)]
    DuplicateFrontend {
        /// The frontend.
        key: FrontendKey,
        /// Owner.
        first: String,
        /// Second claimant.
        second: String,
    },
    /// Two service ports claim the same NodePort.
    #[error("node port {port}/{proto} of {second} is already used by {first}", proto = proto_name(*proto))]
    DuplicateNodePort {
        /// Protocol.
        proto: u8,
        /// Port.
        port: u16,
        /// Owner.
        first: String,
        /// Second claimant.
        second: String,
    },
    /// Too many backends.
    #[error("{service}: {source}")]
    Maglev {
        /// The service.
        service: String,
        /// The error.
        source: MaglevError,
    },
}

/// A frontend entry: which service port and what kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendRef {
    /// Index into [`ServiceTable::ports`].
    pub port: u32,
    /// Kind.
    pub kind: FrontendKind,
}

/// The service table.
#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    ports: Vec<Arc<ServicePort>>,
    frontends: FastMap<FrontendKey, FrontendRef>,
    node_ports: FastMap<(u8, u16), u32>,
    node_addrs: Vec<Ipv4Addr>,
    max_table_size: u32,
}

/// The eligible backends per kube-proxy: ready ones; if none, serving-terminating ones.
fn eligible(backends: &[Backend], local_only: bool) -> Vec<u16> {
    let pick = |state: EndpointState| -> Vec<u16> {
        backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.state == state && (!local_only || b.local))
            .map(|(i, _)| i as u16)
            .collect()
    };
    let ready = pick(EndpointState::Ready);
    if ready.is_empty() {
        pick(EndpointState::ServingTerminating)
    } else {
        ready
    }
}

/// Builds the [`ServicePort`]s of one build or update: shares the selections of the port
/// it replaces (`old`) when its eligible backends are the same, and those of the other
/// ports of the same build with the same backends.
struct PortMaker {
    max_table_size: u32,
    cache: HashMap<Vec<(u64, u32)>, Arc<Selection>>,
}

impl PortMaker {
    fn new(max_table_size: u32) -> PortMaker {
        PortMaker {
            max_table_size,
            cache: HashMap::new(),
        }
    }

    fn select(
        &mut self,
        def: &ServicePortDef,
        local_only: bool,
        old: Option<(&ServicePort, &Arc<Selection>)>,
    ) -> Result<Arc<Selection>, ServiceError> {
        let chosen = eligible(&def.backends, local_only);
        let ident: Vec<(u64, u32)> = chosen
            .iter()
            .filter_map(|&i| def.backends.get(i as usize).map(|b| (b.key(), b.weight)))
            .collect();
        if let Some((op, o)) = old {
            if o.identity(&op.def.backends) == ident && o.backends == chosen {
                return Ok(o.clone());
            }
        }
        if let Some(s) = self.cache.get(&ident) {
            if s.backends == chosen {
                return Ok(s.clone());
            }
        }
        let mb: Vec<MaglevBackend> = ident
            .iter()
            .map(|&(key, weight)| MaglevBackend { key, weight })
            .collect();
        let mut size = Maglev::size_for(mb.len(), self.max_table_size.max(251));
        if let Some((_, o)) = old {
            size = size.max(o.maglev.size());
        }
        let maglev = Maglev::new(&mb, size).map_err(|source| ServiceError::Maglev {
            service: def.service.clone(),
            source,
        })?;
        let s = Arc::new(Selection {
            backends: chosen,
            maglev,
        });
        self.cache.insert(ident, s.clone());
        Ok(s)
    }

    /// The service port of `def`; `old` is the port of the same service, port name and
    /// protocol in the table in force.
    fn port(
        &mut self,
        def: ServicePortDef,
        old: Option<&ServicePort>,
    ) -> Result<ServicePort, ServiceError> {
        let internal = self.select(&def, def.internal_local, old.map(|o| (o, &o.internal)))?;
        let external = if def.external_local == def.internal_local {
            internal.clone()
        } else {
            self.select(&def, def.external_local, old.map(|o| (o, &o.external)))?
        };
        let has_endpoints = !eligible(&def.backends, false).is_empty();
        let local_endpoints = eligible(&def.backends, true).len();
        Ok(ServicePort {
            def,
            internal,
            external,
            has_endpoints,
            local_endpoints,
        })
    }
}

/// The identity of a service port across tables: service, port name, protocol.
fn port_id(def: &ServicePortDef) -> (&str, &str, u8) {
    (def.service.as_str(), def.port_name.as_str(), def.proto)
}

impl ServiceTable {
    /// Build a table. `prev` (the table in force) lets unchanged selections
    /// be shared and keeps Maglev table sizes from shrinking (minimal disruption).
    pub fn build(
        defs: Vec<ServicePortDef>,
        node_addrs: Vec<Ipv4Addr>,
        max_table_size: u32,
        prev: Option<&ServiceTable>,
    ) -> Result<ServiceTable, ServiceError> {
        let prev_ports: HashMap<(&str, &str, u8), &ServicePort> = prev
            .map(|p| p.ports.iter().map(|sp| (port_id(&sp.def), &**sp)).collect())
            .unwrap_or_default();
        let mut t = ServiceTable {
            ports: Vec::with_capacity(defs.len()),
            frontends: FastMap::with_capacity_and_hasher(defs.len() * 2, Default::default()),
            node_ports: FastMap::default(),
            node_addrs,
            max_table_size,
        };
        let mut maker = PortMaker::new(max_table_size);
        for def in defs {
            let idx = t.ports.len() as u32;
            let old = prev_ports.get(&port_id(&def)).copied();
            let port = maker.port(def, old)?;
            t.claim(idx, &port.def)?;
            t.ports.push(Arc::new(port));
        }
        Ok(t)
    }

    /// Enters the frontends and the NodePort of `def`, the port at `idx`. A frontend or
    /// NodePort another port has is an error.
    fn claim(&mut self, idx: u32, def: &ServicePortDef) -> Result<(), ServiceError> {
        let mut claim = |addr: Ipv4Addr, kind: FrontendKind| -> Result<(), ServiceError> {
            let key = FrontendKey {
                addr,
                proto: def.proto,
                port: def.port,
            };
            // Taken by another port, or twice by this one (a cluster IP that is also an
            // external IP).
            if let Some(f) = self.frontends.get(&key) {
                let first = if f.port == idx {
                    def.service.clone()
                } else {
                    self.ports
                        .get(f.port as usize)
                        .map(|p| p.def.service.clone())
                        .unwrap_or_default()
                };
                return Err(ServiceError::DuplicateFrontend {
                    key,
                    first,
                    second: def.service.clone(),
                });
            }
            self.frontends.insert(key, FrontendRef { port: idx, kind });
            Ok(())
        };
        for &a in &def.cluster_ips {
            claim(a, FrontendKind::ClusterIp)?;
        }
        for &a in &def.external_ips {
            claim(a, FrontendKind::ExternalIp)?;
        }
        for &a in &def.lb_ips {
            claim(a, FrontendKind::LoadBalancer)?;
        }
        if let Some(np) = def.node_port {
            if let Some(&other) = self.node_ports.get(&(def.proto, np)) {
                return Err(ServiceError::DuplicateNodePort {
                    proto: def.proto,
                    port: np,
                    first: self
                        .ports
                        .get(other as usize)
                        .map(|p| p.def.service.clone())
                        .unwrap_or_default(),
                    second: def.service.clone(),
                });
            }
            self.node_ports.insert((def.proto, np), idx);
        }
        Ok(())
    }

    /// The frontend for a destination, if it is a service (VIP or NodePort on a node address).
    #[inline(always)]
    pub fn lookup(&self, dst: Ipv4Addr, proto: u8, port: u16) -> Option<(u32, FrontendKind)> {
        if self.ports.is_empty() {
            return None;
        }
        let key = FrontendKey {
            addr: dst,
            proto,
            port,
        };
        if let Some(f) = self.frontends.get(&key) {
            return Some((f.port, f.kind));
        }
        if !self.node_ports.is_empty() && self.node_addrs.contains(&dst) {
            if let Some(&p) = self.node_ports.get(&(proto, port)) {
                return Some((p, FrontendKind::NodePort));
            }
        }
        None
    }

    /// A service port by index.
    #[inline(always)]
    pub fn port(&self, i: u32) -> Option<&ServicePort> {
        self.ports.get(i as usize).map(|p| &**p)
    }

    /// All service ports (in no particular order: [`ServiceTable::update`] fills the
    /// places of removed ports).
    pub fn ports(&self) -> &[Arc<ServicePort>] {
        &self.ports
    }

    /// Number of service ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// True when there are no services.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The node addresses NodePorts answer on.
    pub fn node_addrs(&self) -> &[Ipv4Addr] {
        &self.node_addrs
    }

    /// The configured largest Maglev table size.
    pub fn max_table_size(&self) -> u32 {
        self.max_table_size
    }

    /// Every frontend (address, protocol, port) with its kind.
    pub fn frontends(&self) -> impl Iterator<Item = (&FrontendKey, &FrontendRef)> {
        self.frontends.iter()
    }

    /// Every NodePort (protocol, port).
    pub fn node_ports(&self) -> impl Iterator<Item = (u8, u16)> + '_ {
        self.node_ports.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(addr: &str, local: bool, state: EndpointState) -> Backend {
        Backend {
            addr: addr.parse().unwrap(),
            port: 8080,
            local,
            state,
            weight: 1,
            node: String::new(),
            target: String::new(),
        }
    }

    fn def(name: &str, vip: &str, backends: Vec<Backend>) -> ServicePortDef {
        ServicePortDef {
            service: name.into(),
            port_name: "http".into(),
            proto: PROTO_TCP,
            port: 80,
            node_port: Some(30080),
            cluster_ips: vec![vip.parse().unwrap()],
            external_ips: vec![],
            lb_ips: vec!["203.0.113.10".parse().unwrap()],
            backends,
            internal_local: false,
            external_local: false,
            affinity_secs: None,
            health_check_node_port: None,
        }
    }

    const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);

    #[test]
    fn conditions() {
        use EndpointState::*;
        assert_eq!(EndpointState::from_conditions(None, None, None), Ready);
        assert_eq!(
            EndpointState::from_conditions(Some(false), Some(true), Some(true)),
            ServingTerminating
        );
        assert_eq!(
            EndpointState::from_conditions(Some(true), Some(true), Some(true)),
            ServingTerminating
        );
        assert_eq!(
            EndpointState::from_conditions(Some(false), Some(false), Some(false)),
            NotServing
        );
        assert_eq!(
            EndpointState::from_conditions(Some(false), Some(true), Some(false)),
            NotServing
        );
    }

    #[test]
    fn lookup_vip_nodeport_lb() {
        let t = ServiceTable::build(
            vec![def(
                "default/web",
                "10.96.0.10",
                vec![be("10.244.1.10", true, EndpointState::Ready)],
            )],
            vec![NODE],
            65537,
            None,
        )
        .unwrap();
        let vip = "10.96.0.10".parse().unwrap();
        assert_eq!(
            t.lookup(vip, PROTO_TCP, 80),
            Some((0, FrontendKind::ClusterIp))
        );
        assert_eq!(t.lookup(vip, PROTO_UDP, 80), None);
        assert_eq!(t.lookup(vip, PROTO_TCP, 81), None);
        assert_eq!(
            t.lookup(NODE, PROTO_TCP, 30080),
            Some((0, FrontendKind::NodePort))
        );
        assert_eq!(t.lookup("1.1.1.1".parse().unwrap(), PROTO_TCP, 30080), None);
        assert_eq!(
            t.lookup("203.0.113.10".parse().unwrap(), PROTO_TCP, 80),
            Some((0, FrontendKind::LoadBalancer))
        );
    }

    #[test]
    fn ready_first_then_terminating_and_local_policies() {
        let mut d = def(
            "default/web",
            "10.96.0.10",
            vec![
                be("10.244.1.10", true, EndpointState::ServingTerminating),
                be("10.244.2.10", false, EndpointState::Ready),
                be("10.244.1.11", true, EndpointState::NotServing),
            ],
        );
        d.external_local = true;
        let t = ServiceTable::build(vec![d], vec![NODE], 65537, None).unwrap();
        let p = t.port(0).unwrap();
        assert_eq!(p.internal.backends, vec![1], "ready endpoints only");
        assert_eq!(
            p.external.backends,
            vec![0],
            "no ready local: serving-terminating local"
        );
        assert!(p.has_endpoints);
        assert_eq!(p.local_endpoints, 1);
        assert_eq!(p.selection(FrontendKind::NodePort, true).backends, vec![0]);
        assert_eq!(
            p.selection(FrontendKind::NodePort, false).backends,
            vec![1],
            "pods reaching a node port use the cluster policy"
        );
        assert_eq!(p.selection(FrontendKind::ClusterIp, true).backends, vec![1]);
    }

    #[test]
    fn duplicates_are_errors() {
        let a = def("default/a", "10.96.0.10", vec![]);
        let mut b = def("default/b", "10.96.0.10", vec![]);
        b.node_port = Some(30081);
        b.lb_ips.clear();
        let e = ServiceTable::build(vec![a.clone(), b], vec![NODE], 65537, None).unwrap_err();
        assert!(matches!(e, ServiceError::DuplicateFrontend { .. }), "{e}");
        let mut c = def("default/c", "10.96.0.11", vec![]);
        c.lb_ips.clear();
        let e = ServiceTable::build(vec![a, c], vec![NODE], 65537, None).unwrap_err();
        assert!(e.to_string().contains("node port 30080/tcp"), "{e}");
    }

    #[test]
    fn unchanged_selections_are_shared_and_sizes_kept() {
        let backends: Vec<Backend> = (0..3)
            .map(|i| be(&format!("10.244.1.{}", 10 + i), true, EndpointState::Ready))
            .collect();
        let t1 = ServiceTable::build(
            vec![def("default/web", "10.96.0.10", backends.clone())],
            vec![NODE],
            65537,
            None,
        )
        .unwrap();
        let t2 = ServiceTable::build(
            vec![def("default/web", "10.96.0.10", backends.clone())],
            vec![NODE],
            65537,
            Some(&t1),
        )
        .unwrap();
        assert!(Arc::ptr_eq(
            &t1.port(0).unwrap().internal,
            &t2.port(0).unwrap().internal
        ));
        let size = t1.port(0).unwrap().internal.maglev.size();
        let t3 = ServiceTable::build(
            vec![def("default/web", "10.96.0.10", backends[..1].to_vec())],
            vec![NODE],
            65537,
            Some(&t2),
        )
        .unwrap();
        assert_eq!(t3.port(0).unwrap().internal.maglev.size(), size);
    }

    #[test]
    fn no_endpoints() {
        let t = ServiceTable::build(
            vec![def("default/web", "10.96.0.10", vec![])],
            vec![NODE],
            65537,
            None,
        )
        .unwrap();
        let p = t.port(0).unwrap();
        assert!(!p.has_endpoints);
        assert_eq!(p.internal.pick(12345), None);
    }
}
