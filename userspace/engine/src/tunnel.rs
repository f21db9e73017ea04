//! The overlay tunnel table: one virtual interface per remote node reached
//! through an encapsulation (IPIP, VXLAN, WireGuard).
//!
//! A remote pod CIDR is routed in the FIB through the tunnel's interface
//! (`sw_if` from [`TUNNEL_SW_IF_BASE`]); `ip4-rewrite` checks the tunnel MTU
//! (so oversized DF packets get ICMP fragmentation-needed with the tunnel's
//! MTU) and `interface-output` hands packets for a tunnel interface to
//! `tunnel-encap`. Packets addressed to the node with IP protocol 4 or to the
//! VXLAN / WireGuard UDP port go from `ip4-lookup` to `tunnel-decap`, whose
//! inner packet runs through `ip4-input` again.
//!
//! Counters and WireGuard sessions are shared (`Arc`) between snapshots, so a
//! new snapshot (a route change) keeps them.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use boringtun::noise::Tunn;
use ferroplane_tables::Ipv4Prefix;
use ferroplane_wire::{ethernet, ipv4, udp, vxlan, wireguard, IpProtocol, Ipv4Packet, UdpPacket};

/// First engine interface index used by tunnels (pods count up from 1).
pub const TUNNEL_SW_IF_BASE: u16 = 512;
/// Largest number of tunnels.
pub const MAX_TUNNELS: usize = 480;

/// Default VXLAN UDP port (IANA; Linux and flannel use it too).
pub const VXLAN_PORT: u16 = vxlan::PORT;
/// Default WireGuard UDP port.
pub const WIREGUARD_PORT: u16 = wireguard::PORT;
/// Bytes of VXLAN header.
pub const VXLAN_HDR: usize = vxlan::HEADER_LEN;

/// How packets reach a remote node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TunnelMode {
    /// Plain routing: the remote node is the next hop (same L2 or a routed fabric).
    Direct,
    /// IPv4-in-IPv4 (IP protocol 4).
    Ipip,
    /// VXLAN over UDP (Linux / flannel compatible).
    Vxlan,
    /// WireGuard (Noise IK, ChaCha20-Poly1305) over UDP.
    WireGuard,
}

impl TunnelMode {
    /// Lower-case name (`direct`, `ipip`, `vxlan`, `wireguard`).
    pub fn as_str(&self) -> &'static str {
        match self {
            TunnelMode::Direct => "direct",
            TunnelMode::Ipip => "ipip",
            TunnelMode::Vxlan => "vxlan",
            TunnelMode::WireGuard => "wireguard",
        }
    }

    /// Bytes the encapsulation adds in front of the inner IPv4 packet (IPv4 outer header):
    /// IPIP 20; VXLAN 50 (UDP, VXLAN and the inner Ethernet header); WireGuard 60 (UDP,
    /// the transport data header and the authentication tag).
    pub fn overhead(&self) -> u16 {
        const IP4: usize = ipv4::HEADER_LEN;
        const UDP4: usize = IP4 + udp::HEADER_LEN;
        let bytes = match self {
            TunnelMode::Direct => 0,
            TunnelMode::Ipip => IP4,
            TunnelMode::Vxlan => UDP4 + vxlan::HEADER_LEN + ethernet::HEADER_LEN,
            TunnelMode::WireGuard => UDP4 + wireguard::TRANSPORT_MIN_LEN,
        };
        bytes as u16
    }
}

/// Packet and byte counters of a tunnel (inner packets), shared across snapshots.
#[derive(Debug, Default)]
pub struct TunnelCounters {
    /// Inner packets decapsulated.
    pub rx_packets: AtomicU64,
    /// Inner bytes decapsulated (IPv4 packets).
    pub rx_bytes: AtomicU64,
    /// Inner packets encapsulated.
    pub tx_packets: AtomicU64,
    /// Inner bytes encapsulated (IPv4 packets).
    pub tx_bytes: AtomicU64,
}

impl TunnelCounters {
    /// Count a received inner packet.
    #[inline(always)]
    pub fn rx(&self, bytes: usize) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Count a sent inner packet.
    #[inline(always)]
    pub fn tx(&self, bytes: usize) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// (rx packets, rx bytes, tx packets, tx bytes).
    pub fn get(&self) -> (u64, u64, u64, u64) {
        (
            self.rx_packets.load(Ordering::Relaxed),
            self.rx_bytes.load(Ordering::Relaxed),
            self.tx_packets.load(Ordering::Relaxed),
            self.tx_bytes.load(Ordering::Relaxed),
        )
    }
}

/// The WireGuard side of a tunnel: the Noise state machine (handshake,
/// sessions, timers, replay window) of `boringtun`, behind a lock shared by
/// the worker (data packets) and the agent (timers).
pub struct WgPeer {
    tunn: Mutex<Tunn>,
    /// The peer's static public key.
    pub public_key: [u8; 32],
    /// The peer's UDP port.
    pub port: u16,
}

impl std::fmt::Debug for WgPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgPeer")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl WgPeer {
    /// A peer with our static secret, its public key, and the session index base.
    pub fn new(
        private_key: [u8; 32],
        peer_public: [u8; 32],
        index: u32,
        port: u16,
        keepalive: Option<u16>,
    ) -> Self {
        let secret = boringtun::x25519::StaticSecret::from(private_key);
        let public = boringtun::x25519::PublicKey::from(peer_public);
        WgPeer {
            tunn: Mutex::new(Tunn::new(secret, public, None, keepalive, index, None)),
            public_key: peer_public,
            port,
        }
    }

    /// The state machine (the lock is only ever held for one operation).
    pub fn lock(&self) -> MutexGuard<'_, Tunn> {
        match self.tunn.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Time since the current session's handshake (None: no session).
    pub fn handshake_age(&self) -> Option<Duration> {
        self.lock().time_since_last_handshake()
    }
}

/// The public key of a static secret (WireGuard's `wg pubkey`).
pub fn wg_public_key(private_key: [u8; 32]) -> [u8; 32] {
    let secret = boringtun::x25519::StaticSecret::from(private_key);
    boringtun::x25519::PublicKey::from(&secret).to_bytes()
}

/// One tunnel to a remote node.
#[derive(Debug)]
pub struct Tunnel {
    /// Engine interface index of the tunnel.
    pub sw_if: u16,
    /// Remote node name.
    pub name: String,
    /// Encapsulation (never [`TunnelMode::Direct`]).
    pub mode: TunnelMode,
    /// Our outer source address.
    pub local: Ipv4Addr,
    /// The remote node's address (outer destination).
    pub remote: Ipv4Addr,
    /// Prefixes the remote node owns: inner sources accepted from it (cryptokey routing for WireGuard).
    pub allowed: Vec<Ipv4Prefix>,
    /// VXLAN: the remote VTEP MAC (inner destination MAC).
    pub vtep_mac: [u8; 6],
    /// Counters (shared across snapshots).
    pub counters: Arc<TunnelCounters>,
    /// WireGuard state, for WireGuard tunnels.
    pub wg: Option<Arc<WgPeer>>,
}

impl Tunnel {
    /// Whether `src` is inside one of the tunnel's allowed prefixes.
    #[inline(always)]
    pub fn allows(&self, src: Ipv4Addr) -> bool {
        self.allowed.iter().any(|p| p.contains(src))
    }
}

/// All tunnels of the node and the encapsulation parameters.
#[derive(Debug, Clone)]
pub struct TunnelTable {
    tunnels: Vec<Option<Arc<Tunnel>>>,
    by_remote: HashMap<Ipv4Addr, u16>,
    /// VXLAN network identifier (cluster-wide, 24 bits).
    pub vni: u32,
    /// VXLAN UDP destination port.
    pub vxlan_port: u16,
    /// Our WireGuard UDP port.
    pub wg_port: u16,
    /// Lower the MSS option of TCP SYNs entering a tunnel to what fits its MTU.
    pub mss_clamp: bool,
    /// Whether any tunnel uses each protocol (decap only then): IPIP, VXLAN, WireGuard.
    enabled: [bool; 3],
}

impl Default for TunnelTable {
    fn default() -> Self {
        TunnelTable {
            tunnels: Vec::new(),
            by_remote: HashMap::new(),
            vni: 1,
            vxlan_port: VXLAN_PORT,
            wg_port: WIREGUARD_PORT,
            mss_clamp: false,
            enabled: [false; 3],
        }
    }
}

/// Errors building a tunnel table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// Too many tunnels.
    #[error("too many tunnels (at most {MAX_TUNNELS})")]
    TooMany,
    /// A tunnel's interface index is outside the tunnel range.
    #[error("tunnel {0}: sw_if {1} outside the tunnel range")]
    BadIndex(String, u16),
    /// Two tunnels to the same remote address.
    #[error("tunnels {0} and {1} have the same remote address {2}")]
    DuplicateRemote(String, String, Ipv4Addr),
    /// A direct route is not a tunnel.
    #[error("tunnel {0}: mode direct has no tunnel")]
    Direct(String),
}

impl TunnelTable {
    /// An empty table with these parameters.
    pub fn new(vni: u32, vxlan_port: u16, wg_port: u16) -> Self {
        TunnelTable {
            vni,
            vxlan_port,
            wg_port,
            ..TunnelTable::default()
        }
    }

    /// Add a tunnel at its `sw_if`.
    pub fn insert(&mut self, t: Tunnel) -> Result<(), TunnelError> {
        if t.mode == TunnelMode::Direct {
            return Err(TunnelError::Direct(t.name));
        }
        let Some(i) = t
            .sw_if
            .checked_sub(TUNNEL_SW_IF_BASE)
            .map(usize::from)
            .filter(|i| *i < MAX_TUNNELS)
        else {
            return Err(TunnelError::BadIndex(t.name, t.sw_if));
        };
        if let Some(other) = self.by_remote.get(&t.remote).and_then(|s| self.get(*s)) {
            return Err(TunnelError::DuplicateRemote(
                other.name.clone(),
                t.name,
                t.remote,
            ));
        }
        if self.tunnels.len() <= i {
            self.tunnels.resize(i + 1, None);
        }
        match t.mode {
            TunnelMode::Ipip => self.enabled[0] = true,
            TunnelMode::Vxlan => self.enabled[1] = true,
            TunnelMode::WireGuard => self.enabled[2] = true,
            TunnelMode::Direct => {}
        }
        self.by_remote.insert(t.remote, t.sw_if);
        self.tunnels[i] = Some(Arc::new(t));
        Ok(())
    }

    /// The tunnel behind an interface index.
    #[inline(always)]
    pub fn get(&self, sw_if: u16) -> Option<&Arc<Tunnel>> {
        let i = sw_if.checked_sub(TUNNEL_SW_IF_BASE)? as usize;
        self.tunnels.get(i).and_then(Option::as_ref)
    }

    /// The tunnel whose remote end is `addr`.
    #[inline(always)]
    pub fn by_remote(&self, addr: Ipv4Addr) -> Option<&Arc<Tunnel>> {
        self.by_remote.get(&addr).and_then(|s| self.get(*s))
    }

    /// All tunnels.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tunnel>> {
        self.tunnels.iter().flatten()
    }

    /// Number of tunnels.
    pub fn len(&self) -> usize {
        self.by_remote.len()
    }

    /// True without tunnels.
    pub fn is_empty(&self) -> bool {
        self.by_remote.is_empty()
    }

    /// Whether an IPv4 packet (header at `l3[0]`) addressed to the node is tunnel traffic
    /// this table decapsulates: protocol 4, or UDP to the VXLAN or WireGuard port.
    #[inline(always)]
    pub fn wants(&self, l3: &[u8]) -> bool {
        if self.by_remote.is_empty() || l3.len() < ipv4::HEADER_LEN {
            return false;
        }
        let ip = Ipv4Packet::new_unchecked(l3);
        // A fragment (MF or an offset) is not decapsulated: the engine does not reassemble
        // outer packets (it goes to the host like any packet for the node).
        if ip.is_fragment() {
            return false;
        }
        match ip.protocol() {
            IpProtocol::IPIP => self.enabled[0],
            IpProtocol::UDP => {
                let hl = usize::from(ip.header_len());
                let Some(datagram) = l3.get(hl..).filter(|d| d.len() >= 4) else {
                    return false;
                };
                let port = UdpPacket::new_unchecked(datagram).dst_port();
                (self.enabled[1] && port == self.vxlan_port)
                    || (self.enabled[2] && port == self.wg_port)
            }
            _ => false,
        }
    }
}

/// A source port for an encapsulated flow, from the inner flow's hash
/// (Linux's VXLAN picks it in the ephemeral range the same way).
#[inline(always)]
pub fn flow_source_port(hash: u32) -> u16 {
    49152 + (hash % 16384) as u16
}
