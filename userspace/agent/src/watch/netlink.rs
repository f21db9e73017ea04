//! The kernel's link and neighbour notifications (rtnetlink multicast groups
//! `RTNLGRP_LINK` and `RTNLGRP_NEIGH`), in the agent's network namespace.
//!
//! A deleted link may be a pod's veth whose namespace went without a CNI DEL
//! ([`crate::vanish`]); a neighbour entry that changed on an interface may resolve a next
//! hop of the FIB (or lose it). The agent reads the neighbour table of the interface again
//! when told, so what counts as resolved stays decided in one place
//! ([`crate::netlink::Plumber::neighbours`]).

use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::NetlinkPayload;
use tokio::sync::mpsc;

/// What the kernel announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link with this ifindex was deleted.
    Deleted(u32),
    /// A neighbour entry on the link with this ifindex was added, changed or removed.
    Neighbour(u32),
}

/// Subscribes to link and neighbour notifications and sends them to `tx`; runs on the
/// current tokio runtime until `tx`'s receiver is dropped.
pub fn watch(tx: mpsc::UnboundedSender<LinkEvent>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        rtnetlink::MulticastGroup::Link,
        rtnetlink::MulticastGroup::Neigh,
    ])?;
    let conn_task = tokio::spawn(conn);
    Ok(tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let event = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    LinkEvent::Deleted(link.header.index)
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n),
                ) => LinkEvent::Neighbour(n.header.ifindex),
                _ => continue,
            };
            if tx.send(event).is_err() {
                break;
            }
        }
        conn_task.abort();
    }))
}
