//! Pods whose interface is gone: the veth of a pod whose network namespace was deleted
//! without a CNI DEL (runtime crash, `ip netns del`) disappears with it. The agent learns
//! it from the kernel's link events ([`watch_link_deletions`]: `RTM_DELLINK` on the
//! `RTNLGRP_LINK` multicast group), removes the pod's engine port (its AF_XDP socket is
//! closed and its frames return to the pool) and keeps the pod here, reported by
//! `ferroctl show interfaces` (state `vanished`), a log line and a metric, until CNI DEL or
//! GC removes it; its IPAM reservation stays until then, as the CNI spec wants. A spec pod
//! whose namespace does not exist is kept here as `missing` (the agent starts anyway and
//! plumbs it when the namespace appears).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ferroplane_api::InterfaceState;
use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::NetlinkPayload;

use crate::config::PodSpec;

/// A pod whose interface vanished or whose namespace is missing.
#[derive(Clone, Debug)]
pub struct GonePod {
    /// The pod's key (`namespace/name`, or the CNI attachment's).
    pub key: String,
    /// Its address (still reserved).
    pub ip: Ipv4Addr,
    /// The host-side veth it had (or would have).
    pub host_ifname: String,
    /// `vanished` or `missing`.
    pub state: InterfaceState,
    /// When the agent noticed.
    pub since: SystemTime,
    /// For pods of the standalone spec: plumbed again once the namespace exists.
    pub spec: Option<PodSpec>,
}

/// The gone pods, by key, shared with the API.
pub type GonePods = Arc<Mutex<BTreeMap<String, GonePod>>>;

/// Locks `gone` (a poisoned lock still gives the map: its entries are plain data).
pub fn lock(gone: &GonePods) -> std::sync::MutexGuard<'_, BTreeMap<String, GonePod>> {
    match gone.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Subscribes to the kernel's link notifications in the calling thread's namespace and
/// sends the ifindex of every deleted link to `tx`; runs on the current tokio runtime
/// until `tx`'s receiver is dropped.
pub fn watch_link_deletions(
    tx: tokio::sync::mpsc::UnboundedSender<u32>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])?;
    let conn_task = tokio::spawn(conn);
    Ok(tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = msg.payload {
                if tx.send(link.header.index).is_err() {
                    break;
                }
            }
        }
        conn_task.abort();
    }))
}
