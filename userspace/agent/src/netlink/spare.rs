//! The warm pool of spare veth pairs: create, adopt, delete.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use netlink_packet_route::link::LinkMessage;
use rtnetlink::{LinkUnspec, LinkVeth};

use crate::spec::PodSpec;

use super::*;

impl Plumber {
    /// Whether an interface of that name exists in the agent's namespace.
    pub async fn link_exists(&self, name: &str) -> Result<bool> {
        Ok(link_by_name(&self.handle, name).await?.is_some())
    }

    /// Creates a spare veth pair for the warm pool: both ends in the agent's namespace,
    /// down, named [`spare_ifnames`]`(seq)`, with `mtu`. A stale pair of that name is
    /// replaced.
    pub async fn create_spare(&self, seq: u32, mtu: u32) -> Result<SpareLink> {
        let (host, peer) = spare_ifnames(seq);
        if let Some(old) = link_by_name(&self.handle, &host).await? {
            self.delete_link(old.index, &host).await?;
        }
        let veth = LinkVeth::new(&host, &peer).mtu(mtu).build();
        self.handle
            .link()
            .add(veth)
            .execute()
            .await
            .ctx(|| format!("creating spare veth {host} <-> {peer}"))?;
        let h = require_link(&self.handle, &host).await?;
        let p = require_link(&self.handle, &peer).await?;
        Ok(SpareLink {
            host_ifname: host,
            host_ifindex: h.index,
            host_mac: h.mac,
            peer_ifindex: p.index,
        })
    }

    /// Deletes every spare veth pair (`fpsp*`) in the agent's namespace, e.g. left by an
    /// agent that was killed; returns how many.
    pub async fn delete_spares(&self) -> Result<usize> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .ctx(|| "listing interfaces".to_string())?;
        let mut n = 0;
        for l in links.iter().map(RawLink::parse) {
            if l.name.starts_with(SPARE_PREFIX) {
                self.delete_link(l.index, &l.name).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Plumbs `pod` with a spare pair from [`Plumber::create_spare`] (its AF_XDP socket and
    /// XDP program already set up on the host side): the peer moves into the pod's
    /// namespace under its final name, the host side takes the pod's stable name, then
    /// both sides are configured as [`Plumber::create_pod`] does. The caller makes sure no
    /// interface has the pod's host name yet. On error the spare is unusable: delete it.
    pub async fn adopt_spare(
        &self,
        spare: &SpareLink,
        pod: &PodSpec,
        mtu: u32,
        gateway: Ipv4Addr,
    ) -> Result<PodLink> {
        let mut phases = crate::timing::Phases::new();
        let host_name = host_ifname(&pod.namespace, &pod.name);
        let netns_path = pod.netns_path();
        let netns = open_netns(&netns_path)?;
        let key = pod.key();
        // Move and rename in one request (`ip link set P netns N name eth0`): the peer is
        // down, so the rename is allowed.
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(spare.peer_ifindex)
                    .setns_by_fd(netns.as_raw_fd())
                    .name(pod.interface.clone())
                    .build(),
            )
            .execute()
            .await
            .ctx(|| {
                format!(
                    "{key}: moving spare peer #{} into {} as {}",
                    spare.peer_ifindex,
                    netns_path.display(),
                    pod.interface
                )
            })?;
        drop(netns);
        // The host side is down too (spares are never brought up).
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(spare.host_ifindex)
                    .name(host_name.clone())
                    .build(),
            )
            .execute()
            .await
            .ctx(|| format!("{key}: renaming {} to {host_name}", spare.host_ifname))?;
        phases.mark("spare_move");
        self.finish_pod(
            pod,
            &netns_path,
            (spare.host_ifindex, &host_name, spare.host_mac),
            mtu,
            gateway,
            false,
            phases,
        )
        .await
    }

    /// Deletes a spare pair by index (its peer goes with it).
    pub async fn delete_spare(&self, spare: &SpareLink) -> Result<()> {
        self.delete_link(spare.host_ifindex, &spare.host_ifname)
            .await
    }
}
