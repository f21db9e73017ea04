//! CNI CHECK (the reservation, the dataplane and the pod's side of the veth as ADD left
//! them) and STATUS (a free address in the pool).

use std::net::Ipv4Addr;
use std::path::Path;

use ferroplane_cni::{code, AgentRequest, CniError, Command};
use futures::TryStreamExt;

use super::handle::{blocking, check_request_netns, op};
use super::{record_pod, CniContext, PodOp};
use crate::netlink::{in_netns, PlumbError, POD_GATEWAY};

/// CNI STATUS: ready while the pool has a free address.
pub(super) async fn status(ctx: &CniContext) -> Result<(), CniError> {
    let ipam = ctx.ipam.clone();
    if blocking(move || ipam.free()).await? == 0 {
        return Err(CniError::new(
            code::LIMITED_IPAM,
            format!("no free address in pod CIDR {}", ctx.ipam.pool()),
        ));
    }
    Ok(())
}

/// CNI CHECK: the reservation, the dataplane and the pod side are as ADD left them.
pub(super) async fn check(ctx: &CniContext, req: AgentRequest) -> Result<(), CniError> {
    check_request_netns(Command::Check, &req.netns)?;
    let failed = |msg: String| CniError::new(code::CHECK_FAILED, msg);
    let ipam = ctx.ipam.clone();
    let (cid, ifname) = (req.container_id.clone(), req.ifname.clone());
    let record = blocking(move || ipam.get(&cid, &ifname))
        .await?
        .ok_or_else(|| {
            failed(format!(
                "no address is reserved for container {} interface {}",
                req.container_id, req.ifname
            ))
        })?;
    if req.expect_ip.as_deref() != Some(record.ip.to_string().as_str()) {
        return Err(failed(format!(
            "prevResult says {} but the reservation is {}",
            req.expect_ip.as_deref().unwrap_or("nothing"),
            record.ip
        )));
    }
    if record.netns != req.netns {
        return Err(failed(format!(
            "attached in {}, not {}",
            record.netns, req.netns
        )));
    }
    let key = record_pod(&record).key();
    let plumbed = op(ctx, |reply| PodOp::Get {
        key: key.clone(),
        reply,
    })
    .await?
    .ok_or_else(|| failed(format!("{key} is not plumbed in the dataplane")))?;
    let (ifname, ip, mtu) = (req.ifname.clone(), record.ip, plumbed.mtu);
    let seen = in_netns(Path::new(&req.netns), move |h| async move {
        inspect_pod_side(h, ifname, ip, mtu).await
    })
    .await
    .map_err(|e| failed(format!("inspecting {}: {e}", req.netns)))?;
    if let Some(problem) = seen {
        return Err(failed(problem));
    }
    Ok(())
}

/// `None` when the pod side is as ADD left it, else what differs.
async fn inspect_pod_side(
    h: rtnetlink::Handle,
    ifname: String,
    ip: Ipv4Addr,
    mtu: u16,
) -> Result<Option<String>, PlumbError> {
    use netlink_packet_route::address::AddressAttribute;
    use netlink_packet_route::link::{LinkAttribute, LinkFlags};
    use netlink_packet_route::route::{RouteAddress, RouteAttribute};
    let nl = |context: &str| {
        let context = context.to_string();
        move |source| PlumbError::Netlink { context, source }
    };
    let links: Vec<_> = match h
        .link()
        .get()
        .match_name(ifname.clone())
        .execute()
        .try_collect()
        .await
    {
        Ok(l) => l,
        Err(_) => return Ok(Some(format!("interface {ifname} is missing"))),
    };
    let Some(link) = links.first() else {
        return Ok(Some(format!("interface {ifname} is missing")));
    };
    if !link.header.flags.contains(LinkFlags::Up) {
        return Ok(Some(format!("interface {ifname} is down")));
    }
    let link_mtu = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    });
    if link_mtu != Some(u32::from(mtu)) {
        return Ok(Some(format!(
            "interface {ifname} has MTU {link_mtu:?}, expected {mtu}"
        )));
    }
    let index = link.header.index;
    let addrs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing addresses"))?;
    let has_ip = addrs.iter().any(|m| {
        m.header.prefix_len == 32
            && m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(std::net::IpAddr::V4(x)) if *x == ip))
    });
    if !has_ip {
        return Ok(Some(format!("interface {ifname} does not carry {ip}/32")));
    }
    let routes: Vec<_> = h
        .route()
        .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing routes"))?;
    let default_ok = routes.iter().any(|r| {
        r.header.destination_prefix_length == 0
            && r.attributes.iter().any(|a| {
                matches!(a, RouteAttribute::Gateway(RouteAddress::Inet(g)) if *g == POD_GATEWAY)
            })
            && r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
    });
    if !default_ok {
        return Ok(Some(format!(
            "no default route via {POD_GATEWAY} dev {ifname}"
        )));
    }
    Ok(None)
}
