//! The engine's interface table.

use std::net::Ipv4Addr;

use ferroplane_io::PortId;

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

    /// Remove an interface.
    pub fn remove(&mut self, sw_if: u16) -> Option<Interface> {
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
                let p = p as usize;
                if self.by_port.len() <= p {
                    self.by_port.resize(p + 1, u16::MAX);
                }
                self.by_port[p] = i.sw_if;
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
