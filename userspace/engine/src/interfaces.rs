//! The engine's interface table.

use std::net::Ipv4Addr;

use ferroplane_io::PortId;

/// Engine index of the punt TUN (`fppunt0`): the node's own packets the kernel routes to
/// it enter the graph as received on this interface (above the pods' and tunnels' indices,
/// below [`crate::counters::MAX_IFACES`]).
pub const PUNT_SW_IF: u16 = 1000;

/// What an interface is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfKind {
    /// The node's uplink (NIC).
    Uplink,
    /// The host end of a pod's veth.
    Pod,
    /// The TUN device packets for the host are written to.
    Punt,
    /// An overlay tunnel to a remote node (virtual: `tunnel-encap` sends on the uplink).
    Tunnel,
}

impl IfKind {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            IfKind::Uplink => "uplink",
            IfKind::Pod => "pod",
            IfKind::Punt => "punt",
            IfKind::Tunnel => "tunnel",
        }
    }
}

/// The pod behind a pod interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// `namespace/name`.
    pub name: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The MAC of the pod's interface.
    pub mac: [u8; 6],
}

/// One interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Engine index (position in the table).
    pub sw_if: u16,
    /// Kernel name.
    pub name: String,
    /// Kind.
    pub kind: IfKind,
    /// Kernel ifindex.
    pub ifindex: u32,
    /// MAC address (source of frames the engine sends on it).
    pub mac: [u8; 6],
    /// IPv4 address and prefix length, if any.
    pub ip4: Option<(Ipv4Addr, u8)>,
    /// IP MTU.
    pub mtu: u16,
    /// I/O port serving it (None until the socket is open).
    pub port: Option<PortId>,
    /// XDP attach mode, as reported by the loader ("native" / "skb").
    pub xdp_mode: Option<String>,
    /// The pod, for pod interfaces.
    pub pod: Option<PodInfo>,
}

/// The interface table with a port → interface map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interfaces {
    list: Vec<Option<Interface>>,
    by_port: Vec<u16>,
    /// (sw_if, RX queues) of interfaces with more than one: their ports are
    /// `port .. port + queues` (one socket per RX queue); `port` also transmits.
    queues: Vec<(u16, u16)>,
}

impl Interfaces {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert or replace the interface at `iface.sw_if`.
    pub fn insert(&mut self, iface: Interface) {
        let i = iface.sw_if as usize;
        if self.list.len() <= i {
            self.list.resize(i + 1, None);
        }
        self.list[i] = Some(iface);
        self.reindex();
    }

    /// Declare that `sw_if` is served by `queues` ports, one per RX queue: its
    /// [`Interface::port`] (queue 0, which also transmits) and the ones after it. Packets
    /// received on any of them are the interface's.
    pub fn set_queues(&mut self, sw_if: u16, queues: u16) {
        self.queues.retain(|&(s, _)| s != sw_if);
        if queues > 1 {
            self.queues.push((sw_if, queues));
        }
        self.reindex();
    }

    /// RX queues (ports) serving `sw_if`: 1 unless [`Interfaces::set_queues`] said more.
    pub fn queues(&self, sw_if: u16) -> u16 {
        self.queues
            .iter()
            .find(|&&(s, _)| s == sw_if)
            .map_or(1, |&(_, q)| q)
    }

    /// Remove an interface.
    pub fn remove(&mut self, sw_if: u16) -> Option<Interface> {
        self.queues.retain(|&(s, _)| s != sw_if);
        let r = self.list.get_mut(sw_if as usize).and_then(Option::take);
        self.reindex();
        r
    }

    /// The first free `sw_if` index.
    pub fn next_free(&self) -> u16 {
        self.list
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.list.len()) as u16
    }

    fn reindex(&mut self) {
        self.by_port.clear();
        for i in self.list.iter().flatten() {
            if let Some(p) = i.port {
                let n = self
                    .queues
                    .iter()
                    .find(|&&(s, _)| s == i.sw_if)
                    .map_or(1, |&(_, q)| q);
                for p in usize::from(p)..usize::from(p) + usize::from(n) {
                    if self.by_port.len() <= p {
                        self.by_port.resize(p + 1, u16::MAX);
                    }
                    self.by_port[p] = i.sw_if;
                }
            }
        }
    }

    /// Interface by engine index.
    #[inline(always)]
    pub fn get(&self, sw_if: u16) -> Option<&Interface> {
        self.list.get(sw_if as usize).and_then(Option::as_ref)
    }

    /// Interface served by an I/O port (`u16::MAX` if none).
    #[inline(always)]
    pub fn sw_if_of_port(&self, port: PortId) -> u16 {
        self.by_port.get(port as usize).copied().unwrap_or(u16::MAX)
    }

    /// Interface by kernel name.
    pub fn by_name(&self, name: &str) -> Option<&Interface> {
        self.iter().find(|i| i.name == name)
    }

    /// All interfaces.
    pub fn iter(&self) -> impl Iterator<Item = &Interface> {
        self.list.iter().flatten()
    }

    /// Number of interfaces.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(sw_if: u16, port: PortId) -> Interface {
        Interface {
            sw_if,
            name: format!("if{sw_if}"),
            kind: IfKind::Pod,
            ifindex: u32::from(sw_if) + 10,
            mac: [2, 0, 0, 0, 0, sw_if as u8],
            ip4: None,
            mtu: 1500,
            port: Some(port),
            xdp_mode: None,
            pod: None,
        }
    }

    #[test]
    fn every_queue_port_maps_to_its_interface() {
        let mut t = Interfaces::new();
        t.insert(iface(0, 0));
        t.insert(iface(1, 4));
        assert_eq!(
            t.sw_if_of_port(1),
            u16::MAX,
            "one queue: port 1 is nobody's"
        );
        t.set_queues(0, 4);
        assert_eq!(t.queues(0), 4);
        assert_eq!(t.queues(1), 1);
        for p in 0..4 {
            assert_eq!(t.sw_if_of_port(p), 0, "port {p}");
        }
        assert_eq!(t.sw_if_of_port(4), 1);
        // Kept across inserts; gone with the interface.
        t.insert(iface(2, 5));
        assert_eq!(t.sw_if_of_port(3), 0);
        t.remove(0);
        assert_eq!(t.sw_if_of_port(3), u16::MAX);
        assert_eq!(t.queues(0), 1);
    }
}
