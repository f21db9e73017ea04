//! Link and address queries over rtnetlink (by name, by index, IPv4 addresses, NSIDs).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::Handle;

use super::*;

/// A parsed link message: the parts the plumbing uses.
#[derive(Debug, Clone)]
pub(super) struct RawLink {
    pub(super) index: u32,
    pub(super) name: String,
    pub(super) mac: [u8; 6],
    pub(super) mtu: u32,
    pub(super) up: bool,
    pub(super) veth: bool,
    /// IFLA_LINK: the peer's ifindex for a veth.
    pub(super) peer_index: Option<u32>,
    /// IFLA_LINK_NETNSID: the peer's namespace id, if the peer is in another namespace.
    pub(super) peer_netnsid: Option<i32>,
}

impl RawLink {
    pub(super) fn parse(msg: &LinkMessage) -> RawLink {
        let mut link = RawLink {
            index: msg.header.index,
            name: String::new(),
            mac: [0; 6],
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            veth: false,
            peer_index: None,
            peer_netnsid: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => {
                    if let Ok(mac) = <[u8; 6]>::try_from(a.as_slice()) {
                        link.mac = mac;
                    }
                }
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Link(i) => link.peer_index = Some(*i),
                LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    link.veth = infos
                        .iter()
                        .any(|i| matches!(i, NlLinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        link
    }
}

pub(super) async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<RawLink>> {
    let mut stream = handle.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(RawLink::parse(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(e).ctx(|| format!("looking up interface {name}")),
    }
}

pub(super) async fn link_by_index(handle: &Handle, index: u32) -> Result<Option<RawLink>> {
    let mut stream = handle.link().get().match_index(index).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(RawLink::parse(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(e).ctx(|| format!("looking up interface #{index}")),
    }
}

pub(super) async fn require_link(handle: &Handle, name: &str) -> Result<RawLink> {
    link_by_name(handle, name)
        .await?
        .ok_or_else(|| PlumbError::LinkNotFound(name.to_string()))
}

pub(super) fn ipv4_of(msg: &AddressMessage) -> Option<(Ipv4Addr, u8)> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => address = Some(*a),
            _ => {}
        }
    }
    local.or(address).map(|a| (a, msg.header.prefix_len))
}

pub(super) async fn ipv4_addrs(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
    let msgs: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .ctx(|| format!("listing addresses of interface #{index}"))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.family == AddressFamily::Inet && m.header.index == index)
        .filter_map(ipv4_of)
        .collect())
}

/// Sends a request whose only expected answer is an ACK (or an error).
pub(super) async fn request_ack(
    handle: &Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> std::result::Result<Vec<RouteNetlinkMessage>, rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = flags;
    let mut handle = handle.clone();
    let mut responses = handle.request(req)?;
    let mut out = Vec::new();
    while let Some(resp) = responses.next().await {
        match resp.payload {
            NetlinkPayload::Error(err) => return Err(rtnetlink::Error::NetlinkError(err)),
            NetlinkPayload::InnerMessage(m) => out.push(m),
            _ => {}
        }
    }
    Ok(out)
}

/// The id the namespace of `handle` gives to the namespace open as `netns`, if any.
pub(super) async fn nsid_of(handle: &Handle, netns: &File) -> Result<Option<i32>> {
    let mut msg = NsidMessage::default();
    // The kernel reads the fd as a u32 attribute.
    msg.attributes = vec![NsidAttribute::Fd(netns.as_raw_fd().unsigned_abs())];
    let answers = request_ack(
        handle,
        RouteNetlinkMessage::GetNsId(msg),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .await
    .ctx(|| "RTM_GETNSID".to_string())?;
    for answer in answers {
        if let RouteNetlinkMessage::NewNsId(m) = answer {
            for attr in m.attributes {
                if let NsidAttribute::Id(id) = attr {
                    return Ok((id >= 0).then_some(id));
                }
            }
        }
    }
    Ok(None)
}
