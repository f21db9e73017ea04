//! Per-buffer metadata (VPP's `vlib_buffer_t` opaque).

/// Buffer flag: this packet is traced.
pub const FLAG_TRACED: u16 = 1;
/// Buffer flag: `ip4-nat` matched the packet to a session that has seen a reply (or in the
/// reply direction): an established connection, which `ip4-policy` lets through.
pub const FLAG_CT_ESTABLISHED: u16 = 2;
/// Buffer flag: `ip4-nat` matched the packet to a hairpin session (a pod reaching a service
/// that chose the pod itself as backend, SNATed to the service address): a pod's traffic
/// to itself, which `ip4-policy` never blocks.
pub const FLAG_SELF: u16 = 4;

/// Metadata the engine keeps for every frame, indexed by frame number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufMeta {
    /// Offset of the first byte of the packet in its frame.
    pub offset: u16,
    /// Length of the packet.
    pub len: u16,
    /// Interface it was received on (`sw_if_index`).
    pub rx_if: u16,
    /// Interface it leaves on (`sw_if_index`), set by rewrite / output.
    pub tx_if: u16,
    /// Adjacency chosen by `ip4-lookup`.
    pub adj: u32,
    /// Global error code when dropped (see [`crate::Graph::errors`]).
    pub error: u16,
    /// Flags (`FLAG_*`).
    pub flags: u16,
    /// Trace id (when traced).
    pub trace_id: u32,
    /// ICMP error to generate: type.
    pub icmp_type: u8,
    /// ICMP error to generate: code.
    pub icmp_code: u8,
    /// ICMP error to generate: next-hop MTU (fragmentation needed).
    pub icmp_mtu: u16,
}
