//! Neighbour entries of the agent's namespace: read, keep managed, delete.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage,
    NeighbourState as NlNeighbourState,
};
use netlink_packet_route::AddressFamily;

use super::*;

fn nud_to_state(state: NlNeighbourState) -> Option<NeighbourState> {
    Some(match state {
        NlNeighbourState::Reachable => NeighbourState::Reachable,
        NlNeighbourState::Stale => NeighbourState::Stale,
        NlNeighbourState::Delay => NeighbourState::Delay,
        NlNeighbourState::Probe => NeighbourState::Probe,
        NlNeighbourState::Permanent => NeighbourState::Permanent,
        NlNeighbourState::Noarp => NeighbourState::Noarp,
        NlNeighbourState::Incomplete | NlNeighbourState::Failed | NlNeighbourState::None => {
            return None
        }
        other => NeighbourState::Other(u16::from(other)),
    })
}

/// Parses an IPv4 neighbour entry: (ip, lladdr if 6 bytes, managed flag).
fn parse_neighbour(msg: &NeighbourMessage) -> Option<(Ipv4Addr, Option<[u8; 6]>, bool)> {
    let mut ip = None;
    let mut mac = None;
    let mut managed = false;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            NeighbourAttribute::ExtFlags(f) => managed = f.contains(NeighbourExtFlags::Managed),
            _ => {}
        }
    }
    ip.map(|ip| (ip, mac, managed))
}

impl Plumber {
    async fn neighbour_messages(&self) -> Result<Vec<NeighbourMessage>> {
        self.handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .ctx(|| "listing IPv4 neighbours".to_string())
    }

    /// The resolved IPv4 neighbours on an interface: entries that have a 6-byte link-layer
    /// address and a usable state (incomplete and failed entries are left out).
    pub async fn neighbours(&self, ifindex: u32) -> Result<Vec<Neighbour>> {
        let msgs = self.neighbour_messages().await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == ifindex)
            .filter_map(|m| {
                let state = nud_to_state(m.header.state)?;
                let (ip, mac, managed) = parse_neighbour(m)?;
                Some(Neighbour {
                    ip,
                    mac: mac?,
                    state,
                    managed,
                })
            })
            .collect())
    }

    /// Asks the kernel to resolve `ip` on `ifindex` and keep it resolved without traffic:
    /// a "managed" neighbour entry (NTF_EXT_MANAGED in NDA_FLAGS_EXT, Linux >= 5.16), the
    /// same request as `ip neigh replace IP dev IF managed`. Poll [`Plumber::neighbours`] for
    /// the result.
    ///
    /// Idempotent and cheap to repeat: an entry that is already managed is not touched; an
    /// existing resolved entry keeps its MAC (it becomes managed and stale, so the kernel
    /// re-confirms it); an admin's permanent or noarp entry is left alone.
    pub async fn ensure_managed_neighbour(&self, ip: Ipv4Addr, ifindex: u32) -> Result<()> {
        let existing = self.neighbour_messages().await?;
        let current = existing.iter().find_map(|m| {
            let (addr, mac, managed) = parse_neighbour(m)?;
            (m.header.ifindex == ifindex && addr == ip).then_some((m.header.state, mac, managed))
        });
        let mut req = self.handle.neighbours().add(ifindex, IpAddr::V4(ip));
        match current {
            Some((_, _, true)) => return Ok(()),
            Some((NlNeighbourState::Permanent | NlNeighbourState::Noarp, _, _)) => return Ok(()),
            Some((state, Some(mac), false)) if nud_to_state(state).is_some() => {
                req = req.link_layer_address(&mac).state(NlNeighbourState::Stale);
            }
            _ => req = req.state(NlNeighbourState::None),
        }
        let mut req = req.replace();
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        req.execute()
            .await
            .ctx(|| format!("managed neighbour {ip} on interface #{ifindex}"))
    }

    /// Removes the neighbour entry for `ip` on `ifindex`, if any.
    pub async fn delete_neighbour(&self, ip: Ipv4Addr, ifindex: u32) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = ifindex;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(msg).execute().await {
            Err(e) if matches!(errno_of(&e), Some(ENOENT | ESRCH)) => Ok(()),
            r => r.ctx(|| format!("deleting neighbour {ip} on interface #{ifindex}")),
        }
    }
}
