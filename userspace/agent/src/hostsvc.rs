//! The node's own traffic to services (the kubelet, hostNetwork pods, node agents reaching
//! a ClusterIP or a NodePort on the node's address), as kube-proxy's OUTPUT chain serves it.
//!
//! The XDP programs only see what arrives on an interface; a process of the node sends
//! through the kernel's output path, which no XDP program sees. So the kernel is told,
//! with policy routing and without netfilter, to route those packets to the engine's punt
//! TUN (`fppunt0`), whose read side feeds the engine ([`ferroplane_io::TunReader`]):
//!
//! ```text
//! 95:    from all iif lo lookup 157                                  service addresses
//! 95:    from all to <node> iif lo ipproto tcp dport <NodePort> lookup 158   (one per NodePort)
//! 96:    from all ipproto tcp nop / from all ipproto udp nop         see below
//! 100:   from all lookup local                                       moved from 0
//! table 157: <ClusterIP, external IP, LB IP>/32 dev fppunt0 src <node>   (one per address)
//! table 158: <node>/32 dev fppunt0 src <node>
//! ```
//!
//! - `iif lo` matches locally generated packets only (routing of output packets), never
//!   forwarded or received ones.
//! - A NodePort on the node's own address is a `local` route, and the `local` table is
//!   consulted by the rule at preference 0, before anything one can add (no preference
//!   below 0): that rule is moved to 100 (added at 100, then deleted at 0, so no moment
//!   lacks it), as Cilium does for its proxy rules. Only what our rules at 95 match
//!   (locally generated, to a service address, or to the node's address on a NodePort) is
//!   routed differently.
//! - The engine load-balances the packet as a pod's and gives it a source port of the
//!   SNAT range, which `xdp_uplink` and `xdp_pod` steer back to the engine (`ports4`), so
//!   the backend's answer, local or on another node (direct or through a tunnel), is
//!   translated back and written to the TUN, from the service address to the client.
//! - The kernel accepts that answer on `fppunt0` whatever `rp_filter` says: its reverse
//!   path lookup is made as if output (`iif lo`) to the answer's source, which our rules
//!   route to `fppunt0`, the interface it came in on. For a NodePort the reverse lookup
//!   must see the ports, and the kernel dissects ports for rule lookups only when a rule
//!   that is not `iif lo` has a protocol or port match: the two `nop` rules at 96 are that
//!   (they do nothing). Its source is then one of the node's own addresses, which the
//!   kernel takes only with `accept_local` on the interface (set on `fppunt0` alone).
//!
//! Why not Cilium's socket-level load balancing (cgroup `connect4`/`sendmsg4`/`recvmsg4`
//! programs rewriting the destination at connect time)? Those hooks are per cgroup, not
//! per network namespace: attached to the root cgroup (as a node would need, to catch
//! every hostNetwork pod) they act on every process of the machine, pods included, and a
//! test could not confine them to its emulated node; they need a second service table in
//! BPF maps kept in step with the engine's; UDP needs `recvmsg4` to restore the source
//! and connected UDP sockets miss backend changes; and a remote backend still has to be
//! reached through the engine's tunnels, i.e. through this TUN. Policy routing keeps the
//! engine the single place where services are translated (same Maglev choice, session
//! table, counters, traces) and touches nothing outside the node's namespace.
//!
//! Only the addresses and node ports in force are routed (a /32 per service address, a
//! rule per NodePort); [`HostServices::sync`] applies the difference, every
//! [`SYNC_EVERY`] from the service table in force. While no agent runs, the TUN is gone
//! and so are the routes through it: the rules find empty tables and the node's traffic
//! takes its usual way (a service address is then unreachable from the node, as from
//! anywhere while the engine is away). A clean `--on-exit detach` stop removes the rules
//! and puts the `local` rule back at 0.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::route::{RouteProtocol, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use netlink_packet_route::{AddressFamily, IpProtocol};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use ferroplane_tables::service::{PROTO_TCP, PROTO_UDP};
use ferroplane_tables::ServiceTable;

use crate::services::ServiceCacheHandle;

/// Routing table of the service addresses (`<address>/32 dev fppunt0`).
pub const SERVICE_TABLE: u32 = 157;
/// Routing table the NodePort rules use (`<node>/32 dev fppunt0`).
pub const NODE_PORT_TABLE: u32 = 158;
/// Preference of our rules (before the moved `local` rule).
pub const RULE_PREF: u32 = 95;
/// Preference of the two `nop` rules that make the kernel dissect ports for rule lookups.
pub const DISSECT_PREF: u32 = 96;
/// Where the `local` table's rule moves (from 0).
pub const LOCAL_PREF: u32 = 100;
/// How often the kernel state follows the service table.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);

const RT_TABLE_LOCAL: u8 = 255;

/// MAC of the engine's punt interface: the made-up link header the node's packets enter
/// the graph with (the TUN has none).
pub const PUNT_MAC: [u8; 6] = [0x02, 0xfe, 0xff, 0x00, 0x00, 0x01];

/// Add the punt TUN (kernel index `ifindex`, `name`) to `snap`'s interfaces, at
/// [`PUNT_SW_IF`](ferroplane_engine::interfaces::PUNT_SW_IF): the node's own packets
/// enter the engine as received on it.
pub fn with_punt(snap: &mut ferroplane_engine::Snapshot, ifindex: u32, name: &str) {
    use ferroplane_engine::{IfKind, Interface};
    let mut ifaces = (*snap.ifaces).clone();
    ifaces.insert(Interface {
        sw_if: ferroplane_engine::interfaces::PUNT_SW_IF,
        name: name.to_string(),
        kind: IfKind::Punt,
        ifindex,
        mac: PUNT_MAC,
        ip4: None,
        mtu: 1500,
        port: None,
        xdp_mode: None,
        pod: None,
    });
    snap.ifaces = std::sync::Arc::new(ifaces);
}

/// An error setting up or updating the kernel's routing for the node's own service traffic.
#[derive(Debug, thiserror::Error)]
pub enum HostSvcError {
    /// The kernel refused a request.
    #[error("{context}: {source}")]
    Netlink {
        /// What was being done.
        context: String,
        /// The rtnetlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A sysctl of the TUN could not be written.
    #[error("{path}: {source}")]
    Sysctl {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn nl(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> HostSvcError {
    let context = context.into();
    move |source| HostSvcError::Netlink { context, source }
}

/// What the kernel must route to the punt TUN for a service table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSteering {
    /// Service addresses (cluster IPs, external IPs, load-balancer IPs) that are not the
    /// node's own.
    pub addrs: BTreeSet<Ipv4Addr>,
    /// (IP protocol, port) of the NodePorts (services' and hostPorts), TCP and UDP.
    pub node_ports: BTreeSet<(u8, u16)>,
}

/// The steering for `table`.
pub fn host_steering(table: &ServiceTable) -> HostSteering {
    let own = table.node_addrs();
    let mut s = HostSteering::default();
    for p in table.ports() {
        let d = &p.def;
        for a in d.cluster_ips.iter().chain(&d.external_ips).chain(&d.lb_ips) {
            if !own.contains(a) && !a.is_unspecified() {
                s.addrs.insert(*a);
            }
        }
    }
    s.node_ports = table
        .node_ports()
        .filter(|(proto, _)| matches!(*proto, PROTO_TCP | PROTO_UDP))
        .collect();
    s
}

fn ip_protocol(proto: u8) -> IpProtocol {
    match proto {
        PROTO_TCP => IpProtocol::Tcp,
        _ => IpProtocol::Udp,
    }
}

/// A rule message: IPv4, `table` (0: none), `action`, then `attrs`.
fn rule(dst: Option<(Ipv4Addr, u8)>, table: u8, action: RuleAction) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.table = table;
    m.header.action = action;
    if let Some((a, len)) = dst {
        m.header.dst_len = len;
        m.attributes.push(RuleAttribute::Destination(a.into()));
    }
    m
}

/// `pref 95 iif lo to <node>/32 ipproto P dport N lookup 158`.
fn node_port_rule(node: Ipv4Addr, proto: u8, port: u16) -> RuleMessage {
    let mut m = rule(Some((node, 32)), NODE_PORT_TABLE as u8, RuleAction::ToTable);
    m.attributes.extend([
        RuleAttribute::Priority(RULE_PREF),
        RuleAttribute::Iifname("lo".into()),
        RuleAttribute::IpProtocol(ip_protocol(proto)),
        RuleAttribute::DestinationPortRange(RulePortRange {
            start: port,
            end: port,
        }),
    ]);
    m
}

/// `pref 95 iif lo lookup 157`.
fn service_rule() -> RuleMessage {
    let mut m = rule(None, SERVICE_TABLE as u8, RuleAction::ToTable);
    m.attributes.extend([
        RuleAttribute::Priority(RULE_PREF),
        RuleAttribute::Iifname("lo".into()),
    ]);
    m
}

/// `pref 96 ipproto P nop`.
fn dissect_rule(proto: u8) -> RuleMessage {
    let mut m = rule(None, 0, RuleAction::Nop);
    m.attributes.extend([
        RuleAttribute::Priority(DISSECT_PREF),
        RuleAttribute::IpProtocol(ip_protocol(proto)),
    ]);
    m
}

/// `pref P lookup local`.
fn local_rule(pref: u32) -> RuleMessage {
    let mut m = rule(None, RT_TABLE_LOCAL, RuleAction::ToTable);
    m.attributes.push(RuleAttribute::Priority(pref));
    m
}

fn priority(m: &RuleMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

fn table_of(m: &RuleMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// The kernel state for the node's own service traffic, owned by the agent.
#[derive(Debug)]
pub struct HostServices {
    handle: Handle,
    punt: u32,
    node: Ipv4Addr,
    applied: HostSteering,
}

impl HostServices {
    /// Prepare the node's namespace: `fppunt0` (index `punt`, made `mtu` so the node's TCP
    /// segments fit the pods' path, `accept_local`, no IPv6), the `local` rule moved to
    /// [`LOCAL_PREF`], rules of a previous run replaced by ours, table 158's route to the
    /// node `node`. No service is routed yet ([`HostServices::sync`]).
    pub async fn install(
        handle: Handle,
        punt: u32,
        punt_name: &str,
        node: Ipv4Addr,
        mtu: u32,
    ) -> Result<Self, HostSvcError> {
        let conf = format!("/proc/sys/net/ipv4/conf/{punt_name}/accept_local");
        std::fs::write(&conf, "1").map_err(|source| HostSvcError::Sysctl { path: conf, source })?;
        // The engine takes IPv4 only: no IPv6 router solicitations on the TUN (a kernel
        // without IPv6 has no such file).
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{punt_name}/disable_ipv6"),
            "1",
        );
        handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(punt).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl(format!("setting {punt_name} mtu {mtu}")))?;
        let rules: Vec<RuleMessage> = handle
            .rule()
            .get(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing IPv4 rules"))?;
        // Ours of a previous run (an agent killed or stopped with --on-exit keep).
        for r in rules
            .iter()
            .filter(|r| matches!(priority(r), RULE_PREF | DISSECT_PREF))
        {
            handle
                .rule()
                .del(r.clone())
                .execute()
                .await
                .map_err(nl("deleting a rule of a previous run"))?;
        }
        let is_local = |r: &&RuleMessage| table_of(r) == u32::from(RT_TABLE_LOCAL);
        if !rules
            .iter()
            .filter(is_local)
            .any(|r| priority(r) == LOCAL_PREF)
        {
            add_rule(
                &handle,
                local_rule(LOCAL_PREF),
                "moving the local rule to 100",
            )
            .await?;
        }
        if rules.iter().filter(is_local).any(|r| priority(r) == 0) {
            handle
                .rule()
                .del(local_rule(0))
                .execute()
                .await
                .map_err(nl("deleting the local rule at 0 (moved to 100)"))?;
        }
        if let Some(p) = rules
            .iter()
            .filter(is_local)
            .map(priority)
            .find(|p| *p != 0 && *p < RULE_PREF)
        {
            tracing::warn!(
                pref = p,
                "a `lookup local` rule precedes ours: the node's connections to its own NodePorts go to its kernel"
            );
        }
        add_rule(&handle, service_rule(), "rule iif lo lookup 157").await?;
        for proto in [PROTO_TCP, PROTO_UDP] {
            add_rule(&handle, dissect_rule(proto), "nop rule (port dissection)").await?;
        }
        let hs = HostServices {
            handle,
            punt,
            node,
            applied: HostSteering::default(),
        };
        hs.handle
            .route()
            .add(hs.route(node, NODE_PORT_TABLE))
            .replace()
            .execute()
            .await
            .map_err(nl(format!("route {node}/32 dev {punt_name} table 158")))?;
        Ok(hs)
    }

    fn route(&self, addr: Ipv4Addr, table: u32) -> netlink_packet_route::route::RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr, 32)
            .output_interface(self.punt)
            .pref_source(self.node)
            .table_id(table)
            .protocol(RouteProtocol::Other(crate::bgp::RTPROT_FERROPLANE))
            .scope(RouteScope::Link)
            .build()
    }

    /// Route what `want` lists to the TUN and stop routing what it no longer lists.
    pub async fn sync(&mut self, want: &HostSteering) -> Result<(), HostSvcError> {
        if *want == self.applied {
            return Ok(());
        }
        for a in self.applied.addrs.clone().difference(&want.addrs) {
            // Gone already (e.g. with the TUN) is fine.
            let _ = self
                .handle
                .route()
                .del(self.route(*a, SERVICE_TABLE))
                .execute()
                .await;
            self.applied.addrs.remove(a);
        }
        for (proto, port) in self.applied.node_ports.clone().difference(&want.node_ports) {
            let _ = self
                .handle
                .rule()
                .del(node_port_rule(self.node, *proto, *port))
                .execute()
                .await;
            self.applied.node_ports.remove(&(*proto, *port));
        }
        for a in want.addrs.difference(&self.applied.addrs.clone()) {
            self.handle
                .route()
                .add(self.route(*a, SERVICE_TABLE))
                .replace()
                .execute()
                .await
                .map_err(nl(format!("route {a}/32 dev fppunt0 table 157")))?;
            self.applied.addrs.insert(*a);
        }
        for (proto, port) in want.node_ports.difference(&self.applied.node_ports.clone()) {
            let name = ferroplane_tables::service::proto_name(*proto);
            add_rule(
                &self.handle,
                node_port_rule(self.node, *proto, *port),
                &format!("rule for NodePort {port}/{name}"),
            )
            .await?;
            self.applied.node_ports.insert((*proto, *port));
        }
        Ok(())
    }

    /// What is routed to the TUN now.
    pub fn applied(&self) -> &HostSteering {
        &self.applied
    }

    /// Undo everything (a clean `--on-exit detach` stop): our rules and routes go and the
    /// `local` rule returns to 0.
    pub async fn uninstall(self) -> Result<(), HostSvcError> {
        let rules: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing IPv4 rules"))?;
        let local_at_0 = rules
            .iter()
            .any(|r| table_of(r) == u32::from(RT_TABLE_LOCAL) && priority(r) == 0);
        if !local_at_0 {
            add_rule(
                &self.handle,
                local_rule(0),
                "putting the local rule back at 0",
            )
            .await?;
        }
        for r in rules.iter().filter(|r| {
            matches!(priority(r), RULE_PREF | DISSECT_PREF)
                || (priority(r) == LOCAL_PREF && table_of(r) == u32::from(RT_TABLE_LOCAL))
        }) {
            self.handle
                .rule()
                .del(r.clone())
                .execute()
                .await
                .map_err(nl("deleting our rules"))?;
        }
        for a in &self.applied.addrs {
            let _ = self
                .handle
                .route()
                .del(self.route(*a, SERVICE_TABLE))
                .execute()
                .await;
        }
        let _ = self
            .handle
            .route()
            .del(self.route(self.node, NODE_PORT_TABLE))
            .execute()
            .await;
        Ok(())
    }
}

async fn add_rule(handle: &Handle, m: RuleMessage, what: &str) -> Result<(), HostSvcError> {
    let mut req = handle.rule().add();
    *req.message_mut() = m;
    req.execute().await.map_err(nl(what))
}

/// The running synchronisation ([`start`]).
#[derive(Debug)]
pub struct HostServicesTask {
    stop: tokio::sync::oneshot::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HostServicesTask {
    /// Stop following the services; with `uninstall`, undo the kernel state (a clean
    /// `--on-exit detach` stop), else leave it for the next agent.
    pub async fn stop(self, uninstall: bool) {
        let _ = self.stop.send(uninstall);
        let _ = self.task.await;
    }
}

/// [`HostServices::install`], then keep the kernel in step with the service table in
/// force (`cache`), every [`SYNC_EVERY`]; errors are logged and retried.
pub async fn start(
    handle: Handle,
    punt: u32,
    punt_name: &str,
    node: Ipv4Addr,
    mtu: u32,
    cache: ServiceCacheHandle,
) -> Result<HostServicesTask, HostSvcError> {
    let mut hs = HostServices::install(handle, punt, punt_name, node, mtu).await?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<bool>();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SYNC_EVERY);
        let mut failing = false;
        let uninstall = loop {
            tokio::select! {
                r = &mut stopped => break r.unwrap_or(false),
                _ = tick.tick() => {}
            }
            let table = match cache.lock() {
                Ok(c) => c.state.table.clone(),
                Err(p) => p.into_inner().state.table.clone(),
            };
            let want = host_steering(&table);
            match hs.sync(&want).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!("routing the node's own service traffic to the engine: {e}");
                }
                Err(_) => {}
            }
        };
        if uninstall {
            if let Err(e) = hs.uninstall().await {
                tracing::warn!("removing the node's service routing: {e}");
            }
        }
    });
    Ok(HostServicesTask { stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroplane_tables::{Backend, EndpointState, ServicePortDef, DEFAULT_TABLE_SIZE};

    fn def(name: &str, proto: u8, vip: &str, node_port: Option<u16>) -> ServicePortDef {
        ServicePortDef {
            service: name.into(),
            port_name: String::new(),
            proto,
            port: 80,
            node_port,
            cluster_ips: vec![vip.parse().unwrap()],
            external_ips: vec![],
            lb_ips: vec![],
            backends: vec![Backend {
                addr: "10.244.1.10".parse().unwrap(),
                port: 8080,
                local: true,
                state: EndpointState::Ready,
                weight: 1,
                node: "n".into(),
                target: String::new(),
            }],
            internal_local: false,
            external_local: false,
            affinity_secs: None,
            health_check_node_port: None,
        }
    }

    #[test]
    fn steering_lists_service_addresses_and_node_ports() {
        let node: Ipv4Addr = "192.168.100.2".parse().unwrap();
        let mut lb = def("default/lb", PROTO_TCP, "10.96.0.12", Some(30080));
        lb.lb_ips = vec!["198.51.100.9".parse().unwrap()];
        lb.external_ips = vec!["203.0.113.7".parse().unwrap()];
        let table = ServiceTable::build(
            vec![
                def("default/a", PROTO_TCP, "10.96.0.10", None),
                def("default/b", PROTO_UDP, "10.96.0.11", Some(30053)),
                lb,
            ],
            vec![node],
            DEFAULT_TABLE_SIZE,
            None,
        )
        .unwrap();
        let s = host_steering(&table);
        let addrs: Vec<String> = s.addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "10.96.0.10",
                "10.96.0.11",
                "10.96.0.12",
                "198.51.100.9",
                "203.0.113.7"
            ]
        );
        assert_eq!(
            s.node_ports.iter().copied().collect::<Vec<_>>(),
            [(PROTO_TCP, 30080), (PROTO_UDP, 30053)]
        );
        assert!(
            !s.addrs.contains(&node),
            "the node's address is never routed away"
        );
    }

    #[test]
    fn rules_say_what_the_design_says() {
        let node: Ipv4Addr = "192.168.100.2".parse().unwrap();
        let r = node_port_rule(node, PROTO_UDP, 30053);
        assert_eq!(priority(&r), RULE_PREF);
        assert_eq!(table_of(&r), NODE_PORT_TABLE);
        assert_eq!(r.header.dst_len, 32);
        assert!(r.attributes.contains(&RuleAttribute::Iifname("lo".into())));
        assert!(r
            .attributes
            .contains(&RuleAttribute::IpProtocol(IpProtocol::Udp)));
        assert!(r
            .attributes
            .contains(&RuleAttribute::DestinationPortRange(RulePortRange {
                start: 30053,
                end: 30053
            })));
        // The nop rules are not `iif lo` (or the kernel would not dissect ports for them).
        let d = dissect_rule(PROTO_TCP);
        assert_eq!(d.header.action, RuleAction::Nop);
        assert!(!d
            .attributes
            .iter()
            .any(|a| matches!(a, RuleAttribute::Iifname(_))));
        assert_eq!(table_of(&local_rule(LOCAL_PREF)), 255);
        const { assert!(RULE_PREF < DISSECT_PREF && DISSECT_PREF < LOCAL_PREF) };
    }
}
