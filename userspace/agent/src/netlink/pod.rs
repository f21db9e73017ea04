//! Pod plumbing: the veth pair, the pod side's addresses and routes, the host side's
//! route and neighbour, and their removal.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_route::link::{InfoData, InfoVeth};
use netlink_packet_route::neighbour::NeighbourState as NlNeighbourState;
use netlink_packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::spec::PodSpec;

use super::*;

/// The settings of a pod-side veth that are not netlink attributes (ethtool), applied to
/// `ifname` in the caller's network namespace: run inside the pod's namespace on the netns
/// thread, before the rest of the pod side is configured. The one place for such pod-side
/// interface settings (both the warm-pool and the cold path go through it).
pub fn pod_side_offloads(ifname: &str) -> Result<()> {
    // Frames reach the engine without checksum metadata: the pod must compute
    // its own TCP/UDP checksums instead of leaving them to (veth) offload.
    ferroplane_io::ethtool::set_tx_checksum(ifname, false).map_err(|e| {
        PlumbError::Unexpected(format!(
            "pod: turning TX checksum offload off on {ifname}: {e}"
        ))
    })?;
    // GRO puts the pod side's receive path in NAPI mode, which XDP redirects into the host
    // side need: the XDP flow cache forwards to pods that way while the agent restarts.
    ferroplane_io::ethtool::set_gro(ifname, true)
        .map_err(|e| PlumbError::Unexpected(format!("pod: turning GRO on on {ifname}: {e}")))
}

/// Configures the pod side inside the pod's namespace; returns (ifindex, MAC).
async fn configure_pod_side(
    handle: Handle,
    interface: String,
    ip: Ipv4Addr,
    mtu: u32,
    gateway: Ipv4Addr,
) -> Result<(u32, [u8; 6])> {
    let link = require_link(&handle, &interface).await?;
    let idx = link.index;
    handle
        .link()
        .set(LinkUnspec::new_with_index(idx).mtu(mtu).up().build())
        .execute()
        .await
        .ctx(|| format!("pod: setting {interface} mtu {mtu} up"))?;
    let lo = require_link(&handle, "lo").await?;
    if !lo.up {
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo.index).up().build())
            .execute()
            .await
            .ctx(|| "pod: setting lo up".to_string())?;
    }
    handle
        .address()
        .add(idx, IpAddr::V4(ip), 32)
        .replace()
        .execute()
        .await
        .ctx(|| format!("pod: adding {ip}/32 to {interface}"))?;
    let gw_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(gateway, 32)
        .output_interface(idx)
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(gw_route)
        .replace()
        .execute()
        .await
        .ctx(|| format!("pod: route {gateway} dev {interface} scope link"))?;
    let default_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .gateway(gateway)
        .output_interface(idx)
        .build();
    handle
        .route()
        .add(default_route)
        .replace()
        .execute()
        .await
        .ctx(|| format!("pod: route default via {gateway} dev {interface}"))?;
    // The MAC, as the kernel now reports it.
    let link = link_by_index(&handle, idx).await?.ok_or_else(|| {
        PlumbError::Unexpected(format!("pod: {interface} vanished while configuring it"))
    })?;
    Ok((idx, link.mac))
}

/// Plumbs pods and answers link/neighbour questions for the agent's network namespace.
#[derive(Clone)]
pub struct Plumber {
    pub(super) handle: Handle,
}

impl std::fmt::Debug for Plumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plumber").finish_non_exhaustive()
    }
}

impl Plumber {
    /// Opens an rtnetlink socket in the calling thread's network namespace and spawns its
    /// connection task on the current tokio runtime (must be called inside one).
    pub fn new() -> Result<Plumber> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            PlumbError::Unexpected(format!("Plumber::new outside a tokio runtime: {e}"))
        })?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(PlumbError::Socket)?;
        runtime.spawn(conn);
        Ok(Plumber { handle })
    }

    /// The underlying rtnetlink handle, for requests this module does not wrap.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Index, MAC, MTU, IPv4 addresses and admin state of an interface.
    pub async fn link_info(&self, name: &str) -> Result<LinkInfo> {
        let link = require_link(&self.handle, name).await?;
        let ipv4 = ipv4_addrs(&self.handle, link.index).await?;
        Ok(LinkInfo {
            name: link.name,
            ifindex: link.index,
            mac: link.mac,
            mtu: link.mtu,
            ipv4,
            up: link.up,
        })
    }

    /// Whether `host` (a link in our namespace) is a veth whose peer is `pod.interface` in the
    /// pod's namespace, carrying `pod.ip/32`.
    async fn reusable(&self, host: &RawLink, netns: &File, pod: &PodSpec) -> Result<bool> {
        let (true, Some(peer_index), Some(peer_nsid)) =
            (host.veth, host.peer_index, host.peer_netnsid)
        else {
            return Ok(false);
        };
        if nsid_of(&self.handle, netns).await? != Some(peer_nsid) {
            return Ok(false);
        }
        let interface = pod.interface.clone();
        let ip = pod.ip;
        let host_index = host.index;
        in_netns(&pod.netns_path(), move |h| async move {
            let Some(peer) = link_by_index(&h, peer_index).await? else {
                return Ok(false);
            };
            if peer.name != interface || !peer.veth || peer.peer_index != Some(host_index) {
                return Ok(false);
            }
            Ok(ipv4_addrs(&h, peer_index).await?.contains(&(ip, 32)))
        })
        .await
    }

    /// Plumbs a pod (idempotently): see the module documentation for the resulting state.
    ///
    /// If the host veth already exists (agent restart) it is reused when its peer is the
    /// pod's interface in the pod's namespace with the pod's address; the whole configuration
    /// is then re-applied (replace semantics). Otherwise it is deleted and recreated.
    /// `gateway` is normally [`POD_GATEWAY`].
    pub async fn create_pod(&self, pod: &PodSpec, mtu: u32, gateway: Ipv4Addr) -> Result<PodLink> {
        let mut phases = crate::timing::Phases::new();
        let host_name = host_ifname(&pod.namespace, &pod.name);
        let netns_path = pod.netns_path();
        let netns = open_netns(&netns_path)?;
        let key = pod.key();

        let mut reused = false;
        if let Some(existing) = link_by_name(&self.handle, &host_name).await? {
            if self.reusable(&existing, &netns, pod).await? {
                reused = true;
            } else {
                self.delete_link(existing.index, &host_name).await?;
            }
        }
        phases.mark("lookup");

        if !reused {
            let peer = LinkUnspec::new_with_name(&pod.interface)
                .mtu(mtu)
                .setns_by_fd(netns.as_raw_fd())
                .build();
            let veth = LinkVeth::new(&host_name, &pod.interface)
                .mtu(mtu)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            self.handle.link().add(veth).execute().await.ctx(|| {
                format!(
                    "{key}: creating veth {host_name} <-> {} in {}",
                    pod.interface,
                    netns_path.display()
                )
            })?;
        }
        drop(netns);

        let host = require_link(&self.handle, &host_name).await?;
        phases.mark("veth");

        self.finish_pod(
            pod,
            &netns_path,
            (host.index, &host_name, host.mac),
            mtu,
            gateway,
            reused,
            phases,
        )
        .await
    }

    /// The rest of plumbing a pod once its veth pair exists (pod side in `netns_path`,
    /// host side `host` = (index, name, MAC) here): the pod side configured inside its
    /// namespace, then the host side; timed into `phases`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish_pod(
        &self,
        pod: &PodSpec,
        netns_path: &Path,
        host: (u32, &str, [u8; 6]),
        mtu: u32,
        gateway: Ipv4Addr,
        reused: bool,
        mut phases: crate::timing::Phases,
    ) -> Result<PodLink> {
        let (host_ifindex, host_name, host_mac) = host;
        let key = pod.key();
        let (interface, ip) = (pod.interface.clone(), pod.ip);
        let t_pod = std::time::Instant::now();
        let offload_if = interface.clone();
        let (pod_ifindex, pod_mac, inside) = in_netns_after(
            netns_path,
            move || pod_side_offloads(&offload_if),
            move |h| async move {
                let t = std::time::Instant::now();
                let (idx, mac) = configure_pod_side(h, interface, ip, mtu, gateway).await?;
                Ok((idx, mac, t.elapsed()))
            },
        )
        .await
        .map_err(|e| match e {
            PlumbError::Netlink { context, source } => PlumbError::Netlink {
                context: format!("{key}: {context}"),
                source,
            },
            other => other,
        })?;
        // Entering the namespace (thread, runtime, netlink socket) vs the work inside.
        let whole = t_pod.elapsed();
        phases.push("netns_enter", whole.saturating_sub(inside));
        phases.push("pod_side", inside);
        phases.skip();
        self.host_side(pod, host_ifindex, host_name, mtu, pod_mac)
            .await?;
        phases.mark("host_side");
        Ok(PodLink {
            host_ifname: host_name.to_string(),
            host_ifindex,
            host_mac,
            pod_mac,
            pod_ifindex,
            reused,
            phases,
        })
    }

    /// The agent-namespace half of a plumbed pod: host veth MTU and up, `ip/32` route, a
    /// permanent neighbour entry for the pod's MAC, and strict reverse-path filtering on the
    /// host veth (as Calico sets on its `cali*` interfaces): what `xdp_pod` passes to the
    /// node's kernel (traffic for the node's own addresses) is accepted only from the source
    /// routed through that veth, the pod's own address; the engine checks everything else.
    async fn host_side(
        &self,
        pod: &PodSpec,
        index: u32,
        host_name: &str,
        mtu: u32,
        pod_mac: [u8; 6],
    ) -> Result<()> {
        let key = pod.key();
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .ctx(|| format!("{key}: setting {host_name} mtu {mtu} up"))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(pod.ip, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .ctx(|| format!("{key}: route {}/32 dev {host_name}", pod.ip))?;
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(pod.ip))
            .link_layer_address(&pod_mac)
            .state(NlNeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .ctx(|| format!("{key}: neighbour {} on {host_name}", pod.ip))?;
        let rp_filter = format!("/proc/sys/net/ipv4/conf/{host_name}/rp_filter");
        if let Err(e) = std::fs::write(&rp_filter, "1") {
            tracing::warn!(pod = %key, "{rp_filter}: {e}: the node's kernel accepts any source from this pod");
        }
        Ok(())
    }
}

impl Plumber {
    pub(super) async fn delete_link(&self, index: u32, name: &str) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(()),
            r => r.ctx(|| format!("deleting {name}")),
        }
    }

    /// Removes a pod's veth pair (the route and neighbour go with it). Returns whether there
    /// was one.
    pub async fn delete_pod(&self, pod: &PodSpec) -> Result<bool> {
        let host_name = host_ifname(&pod.namespace, &pod.name);
        match link_by_name(&self.handle, &host_name).await? {
            Some(link) => {
                self.delete_link(link.index, &host_name).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
