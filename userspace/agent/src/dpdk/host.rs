//! The kernel side of the DPDK uplink: the node's IPv4 addresses and routes move from the
//! uplink's kernel interface to the exception TAP (and back at stop), the TAP gets the
//! uplink's MAC, and a virtual device's kernel interface stops taking part in the host's
//! networking.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::DpdkError;

fn nl(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> DpdkError {
    let context = context.into();
    move |e| DpdkError::Netlink(format!("{context}: {e}"))
}

/// What moved to the TAP, to give it back at stop.
#[derive(Debug, Default)]
pub struct Moved {
    /// The uplink's kernel interface, when it exists (a virtual device's; a PCI NIC bound
    /// to vfio-pci has none).
    pub uplink_ifindex: Option<u32>,
    /// Its IPv4 addresses.
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// Its routes (main table, not the kernel's connected ones), as they were.
    pub routes: Vec<RouteMessage>,
    /// Its `arp` flag and `rp_filter` before the take-over (restored at stop).
    pub isolated: Option<(String, String)>,
}

async fn ipv4_addrs(handle: &Handle, index: u32) -> Result<Vec<AddressMessage>, DpdkError> {
    let msgs: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("listing addresses of interface #{index}")))?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.family == AddressFamily::Inet && m.header.index == index)
        .collect())
}

fn addr_of(m: &AddressMessage) -> Option<(Ipv4Addr, u8)> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(x)) => Some((*x, m.header.prefix_len)),
        _ => None,
    })
}

/// IPv4 routes of the main table out of `index`, except the kernel's own (connected).
async fn routes_of(handle: &Handle, index: u32) -> Result<Vec<RouteMessage>, DpdkError> {
    let all: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing routes"))?;
    Ok(all
        .into_iter()
        .filter(|r| r.header.protocol != RouteProtocol::Kernel && r.header.table == 254)
        .filter(|r| {
            r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
        })
        .collect())
}

/// `route` with its output interface set to `index`.
fn via(route: &RouteMessage, index: u32) -> RouteMessage {
    let mut r = route.clone();
    for a in &mut r.attributes {
        if let RouteAttribute::Oif(i) = a {
            *i = index;
        }
    }
    r
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn set_sysctl(path: &str, value: &str) {
    if let Err(e) = std::fs::write(path, value) {
        tracing::warn!(path, value, "setting a sysctl: {e}");
    }
}

/// What [`take_over`] works on.
#[derive(Clone, Copy, Debug)]
pub struct TakeOver<'a> {
    /// The uplink's kernel interface (index), when it exists.
    pub uplink: Option<u32>,
    /// Its name.
    pub uplink_name: &'a str,
    /// Cut the kernel off it (a virtual device bound to it).
    pub isolate: bool,
    /// The TAP's name.
    pub tap: &'a str,
    /// The TAP's index.
    pub tap_ifindex: u32,
    /// The uplink's MAC (the TAP takes it).
    pub mac: [u8; 6],
    /// The node's address, for a TAP whose uplink has no kernel interface.
    pub address: (Ipv4Addr, u8),
}

/// Moves the node's configuration to the TAP: its MAC becomes the uplink's, it comes up
/// with the addresses of the uplink's kernel interface (when it exists; otherwise the
/// node's address), which it leaves, and the uplink's routes. The TAP never forwards
/// (`forwarding=0`): the exception path carries the node's own traffic only.
///
/// With `isolate` (a virtual device bound to that kernel interface, e.g. `net_af_packet`)
/// the kernel stops answering on it: ARP off and strict reverse-path filtering (the node's
/// addresses and routes are on the TAP now, so whatever arrives on the interface fails
/// the check instead of being answered or forwarded a second time).
pub async fn take_over(handle: &Handle, t: TakeOver<'_>) -> Result<Moved, DpdkError> {
    let TakeOver {
        uplink,
        uplink_name,
        isolate,
        tap,
        tap_ifindex,
        mac,
        address,
    } = t;
    let mut moved = Moved {
        uplink_ifindex: uplink,
        ..Moved::default()
    };
    let (addr_msgs, routes) = match uplink {
        Some(i) => (ipv4_addrs(handle, i).await?, routes_of(handle, i).await?),
        None => (Vec::new(), Vec::new()),
    };
    moved.addrs = addr_msgs.iter().filter_map(addr_of).collect();
    if moved.addrs.is_empty() {
        moved.addrs.push(address);
    }
    moved.routes = routes;
    set_sysctl(&format!("/proc/sys/net/ipv4/conf/{tap}/forwarding"), "0");
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(tap_ifindex)
                .address(mac.to_vec())
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("setting {tap} up with the uplink's MAC")))?;
    for (a, len) in &moved.addrs {
        handle
            .address()
            .add(tap_ifindex, IpAddr::V4(*a), *len)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding {a}/{len} to {tap}")))?;
    }
    if let Some(i) = uplink {
        if isolate {
            let arp = if sysctl(&format!("/sys/class/net/{uplink_name}/flags"))
                .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .is_some_and(|f| f & 0x80 != 0)
            {
                "off"
            } else {
                "on"
            };
            let rp = sysctl(&format!("/proc/sys/net/ipv4/conf/{uplink_name}/rp_filter"))
                .unwrap_or_else(|| "0".into());
            moved.isolated = Some((arp.to_string(), rp));
            set_sysctl(
                &format!("/proc/sys/net/ipv4/conf/{uplink_name}/rp_filter"),
                "1",
            );
            handle
                .link()
                .set(LinkUnspec::new_with_index(i).arp(false).build())
                .execute()
                .await
                .map_err(nl(format!("ARP off on {uplink_name}")))?;
        }
        for m in addr_msgs {
            handle.address().del(m).execute().await.map_err(nl(format!(
                "removing the node's address from {uplink_name}"
            )))?;
        }
    }
    for r in &moved.routes {
        if let Err(e) = handle
            .route()
            .add(via(r, tap_ifindex))
            .replace()
            .execute()
            .await
        {
            tracing::warn!(route = ?r.attributes, "moving a route to {tap}: {e}");
        }
    }
    Ok(moved)
}

/// Gives the uplink's kernel interface back what [`take_over`] moved (before the TAP is
/// closed); errors are logged, the rest goes on.
pub async fn give_back(handle: &Handle, moved: &Moved, uplink_name: &str) {
    let Some(i) = moved.uplink_ifindex else {
        return;
    };
    if let Some((arp, rp)) = &moved.isolated {
        set_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{uplink_name}/rp_filter"),
            rp,
        );
        if arp == "on" {
            if let Err(e) = handle
                .link()
                .set(LinkUnspec::new_with_index(i).arp(true).build())
                .execute()
                .await
            {
                tracing::warn!("ARP back on for {uplink_name}: {e}");
            }
        }
    }
    for (a, len) in &moved.addrs {
        if let Err(e) = handle
            .address()
            .add(i, IpAddr::V4(*a), *len)
            .replace()
            .execute()
            .await
        {
            tracing::warn!("giving {a}/{len} back to {uplink_name}: {e}");
        }
    }
    for r in &moved.routes {
        if let Err(e) = handle.route().add(via(r, i)).replace().execute().await {
            tracing::warn!(route = ?r.attributes, "giving a route back to {uplink_name}: {e}");
        }
    }
}
