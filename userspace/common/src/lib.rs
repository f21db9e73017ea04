//! Types shared between ferroplane's XDP programs (C, `ebpf/include/ferroplane.h`)
//! and userspace.
//!
//! The enums ([`FpVerdict`], [`FpDropReason`], [`FpFlowStat`], [`FpSteerKind`], [`FpIfaceFlags`])
//! and the `FP_*` limits are generated from the header by `build.rs`; the
//! `#[repr(C)]` structs are written here and a test checks their layout
//! against the header as compiled by the host C compiler.
//!
//! With the default feature `user`, the structs implement [`aya::Pod`] so they
//! can be used as map keys and values.
#![cfg_attr(all(not(feature = "user"), not(test)), no_std)]
#![deny(missing_docs)]

mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

pub use generated::*;

/// Value of the `ifaces` map (`struct fp_iface`): how the programs steer one interface.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FpIface {
    /// First `xsks` slot of the interface; the program adds the rx queue index.
    pub xsk_slot: u32,
    /// [`FpIfaceFlags`] bits ([`FpIface::UPLINK`], [`FpIface::POD`]).
    pub flags: u32,
    /// RX queues with a socket: slots `xsk_slot .. xsk_slot + queues`. A frame received on
    /// a queue at or past it is never redirected (it would reach another port's slot).
    pub queues: u32,
}

impl FpIface {
    /// Flag bit of the node's uplink.
    pub const UPLINK: u32 = FpIfaceFlags::Uplink.as_u32();
    /// Flag bit of a pod veth's host side.
    pub const POD: u32 = FpIfaceFlags::Pod.as_u32();

    /// An uplink entry with one queue, at `xsk_slot` (see [`FpIface::with_queues`]).
    pub const fn uplink(xsk_slot: u32) -> Self {
        Self {
            xsk_slot,
            flags: Self::UPLINK,
            queues: 1,
        }
    }

    /// A pod veth entry with one queue, at `xsk_slot` (see [`FpIface::with_queues`]).
    pub const fn pod(xsk_slot: u32) -> Self {
        Self {
            xsk_slot,
            flags: Self::POD,
            queues: 1,
        }
    }

    /// The same entry with `queues` RX queues, at slots `xsk_slot .. xsk_slot + queues`.
    pub const fn with_queues(self, queues: u32) -> Self {
        Self { queues, ..self }
    }
}

/// Key of the `steer4` LPM trie (`struct fp_lpm4`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FpLpm4 {
    /// Number of significant leading bits of `addr` (0..=32).
    pub prefixlen: u32,
    /// IPv4 address octets (network byte order, `__be32` in C).
    pub addr: [u8; 4],
}

/// Key of the `flow4` map (`struct fp_flow4_key`): a flow tuple as it arrives (ports in
/// network order; ICMP echo request: id as `sport`, reply: id as `dport`).
#[repr(C, align(4))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FpFlow4Key {
    /// Source address octets.
    pub saddr: [u8; 4],
    /// Destination address octets.
    pub daddr: [u8; 4],
    /// Source port (network order) or echo id.
    pub sport: [u8; 2],
    /// Destination port (network order) or echo id.
    pub dport: [u8; 2],
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// Value of the `flow4` map (`struct fp_flow4`): how XDP forwards an established flow
/// itself, in steady state (the fast path) or while the engine is away (the tuple to write
/// when [`FpFlow4::NAT`] is set, decrement TTL, these MACs, out of `ifindex`), for frames
/// the engine would take as the flow's: arriving on `in_ifindex`, sent to `in_dmac` and,
/// with [`FpFlow4::SRC_MAC`] (pod interfaces), from `in_smac`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FpFlow4 {
    /// Output interface index.
    pub ifindex: u32,
    /// Destination MAC.
    pub dmac: [u8; 6],
    /// Source MAC.
    pub smac: [u8; 6],
    /// Source address to write.
    pub saddr: [u8; 4],
    /// Destination address to write.
    pub daddr: [u8; 4],
    /// Source port to write (network order).
    pub sport: [u8; 2],
    /// Destination port to write (network order).
    pub dport: [u8; 2],
    /// [`FpFlow4::NAT`] when the tuple changes.
    pub flags: u32,
    /// Interface the engine received the flow on: XDP replays the entry only for frames
    /// arriving there (a pod cannot replay another pod's flow by forging its tuple).
    pub in_ifindex: u32,
    /// IP MTU of the output interface: longer packets go to the engine (0: unchecked).
    pub mtu: u32,
    /// Destination MAC the flow's frames arrive with (the ingress interface's own).
    pub in_dmac: [u8; 6],
    /// Source MAC the flow's frames arrive with (a pod's own), checked with
    /// [`FpFlow4::SRC_MAC`]: a frame with the pod's address but another MAC goes to the
    /// engine, which drops it as spoofed.
    pub in_smac: [u8; 6],
    /// Zero.
    pub pad: u32,
    /// Last refresh or use, CLOCK_MONOTONIC nanoseconds.
    pub seen_ns: u64,
    /// Packets XDP forwarded from this entry.
    pub packets: u64,
    /// Bytes (IPv4 total length) XDP forwarded from this entry.
    pub bytes: u64,
}

/// Value of the `config` array (`struct fp_config`, one entry): the agent's switches.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FpConfig {
    /// [`FpConfig::FAST_PATH`], [`FpConfig::TRACE`] bits.
    pub flags: u32,
    /// Zero.
    pub pad: u32,
}

impl FpConfig {
    /// `flags` bit: forward established flows from `flow4` while the engine runs.
    pub const FAST_PATH: u32 = FP_CFG_FAST_PATH;
    /// `flags` bit: a packet trace is active, every packet goes to the engine.
    pub const TRACE: u32 = FP_CFG_TRACE;
}

/// Value of the `fastif` per-CPU hash (`struct fp_if_count`): fast-path packets of one
/// kernel interface.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FpIfCount {
    /// Packets the fast path forwarded that arrived on the interface.
    pub rx_packets: u64,
    /// Their bytes (IPv4 total length).
    pub rx_bytes: u64,
    /// Packets the fast path forwarded out of the interface.
    pub tx_packets: u64,
    /// Their bytes (IPv4 total length).
    pub tx_bytes: u64,
}

impl FpFlow4 {
    /// `flags` bit: rewrite addresses and ports (`FP_FLOW4_NAT`).
    pub const NAT: u32 = FP_FLOW4_NAT;
    /// `flags` bit: frames must come from `in_smac` (`FP_FLOW4_SRC_MAC`).
    pub const SRC_MAC: u32 = FP_FLOW4_SRC_MAC;
}

// SAFETY: the structs are #[repr(C)], made only of integers (every bit pattern
// is valid) and have no padding (checked by the layout test).
#[cfg(feature = "user")]
unsafe impl aya::Pod for FpIface {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FpLpm4 {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FpFlow4Key {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FpFlow4 {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FpConfig {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FpIfCount {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    /// Layout of one struct of ferroplane.h as the C compiler sees it.
    struct CStructLayout {
        name: &'static str,
        size: usize,
        align: usize,
        /// (field, offset, size) in declaration order.
        fields: &'static [(&'static str, usize, usize)],
    }

    include!(concat!(env!("OUT_DIR"), "/c_layout.rs"));

    macro_rules! rust_layout {
        ($c:literal, $ty:ty, [$($field:ident),* $(,)?]) => {
            (
                $c,
                size_of::<$ty>(),
                align_of::<$ty>(),
                vec![$((stringify!($field), offset_of!($ty, $field), {
                    let v = <$ty>::default();
                    size_of_val(&v.$field)
                })),*],
            )
        };
    }

    #[test]
    fn struct_layout_matches_c() {
        let rust = [
            rust_layout!("fp_iface", FpIface, [xsk_slot, flags, queues]),
            rust_layout!("fp_lpm4", FpLpm4, [prefixlen, addr]),
            rust_layout!(
                "fp_flow4_key",
                FpFlow4Key,
                [saddr, daddr, sport, dport, proto, pad]
            ),
            rust_layout!(
                "fp_flow4",
                FpFlow4,
                [
                    ifindex, dmac, smac, saddr, daddr, sport, dport, flags, in_ifindex, mtu,
                    in_dmac, in_smac, pad, seen_ns, packets, bytes
                ]
            ),
            rust_layout!("fp_config", FpConfig, [flags, pad]),
            rust_layout!(
                "fp_if_count",
                FpIfCount,
                [rx_packets, rx_bytes, tx_packets, tx_bytes]
            ),
        ];
        // Every struct of the header has a mirror, and no mirror is left over.
        let mut c_names: Vec<_> = C_STRUCTS.iter().map(|s| s.name).collect();
        let mut r_names: Vec<_> = rust.iter().map(|r| r.0).collect();
        c_names.sort_unstable();
        r_names.sort_unstable();
        assert_eq!(c_names, r_names, "structs in ferroplane.h vs Rust mirrors");
        for (name, size, align, fields) in rust {
            let c = C_STRUCTS.iter().find(|s| s.name == name).unwrap();
            assert_eq!(size, c.size, "sizeof(struct {name})");
            assert_eq!(align, c.align, "alignof(struct {name})");
            assert_eq!(fields, c.fields.to_vec(), "fields of struct {name}");
            // No padding: Pod requires every byte to be initialised.
            assert_eq!(
                fields.iter().map(|f| f.2).sum::<usize>(),
                size,
                "struct {name} has padding"
            );
        }
    }

    #[test]
    fn generated_enums_match_c_values() {
        let mut rust: Vec<(&str, i64)> = Vec::new();
        rust.extend(
            FpVerdict::ALL
                .iter()
                .map(|v| (v.c_name(), i64::from(v.as_u32()))),
        );
        rust.push(("FP_VERDICT_MAX", FpVerdict::COUNT as i64));
        rust.extend(
            FpDropReason::ALL
                .iter()
                .map(|v| (v.c_name(), i64::from(v.as_u32()))),
        );
        rust.push(("FP_DROP_MAX", FpDropReason::COUNT as i64));
        rust.extend(
            FpFlowStat::ALL
                .iter()
                .map(|v| (v.c_name(), i64::from(v.as_u32()))),
        );
        rust.push(("FP_FLOW_MAX", FpFlowStat::COUNT as i64));
        rust.extend(
            FpSteerKind::ALL
                .iter()
                .map(|v| (v.c_name(), i64::from(v.as_u32()))),
        );
        rust.extend(
            FpIfaceFlags::ALL
                .iter()
                .map(|v| (v.c_name(), i64::from(v.as_u32()))),
        );
        let mut c = C_ENUM_VALUES.to_vec();
        rust.sort_unstable();
        c.sort_unstable();
        assert_eq!(rust, c);
    }

    #[test]
    fn generated_defines_match_c() {
        let rust = [
            ("FP_MAX_XSKS", FP_MAX_XSKS),
            ("FP_MAX_IFACES", FP_MAX_IFACES),
            ("FP_MAX_STEER4", FP_MAX_STEER4),
            ("FP_MAX_HOST4", FP_MAX_HOST4),
            ("FP_MAX_TUNNEL4", FP_MAX_TUNNEL4),
            ("FP_MAX_PORTS4", FP_MAX_PORTS4),
            ("FP_PORT_NODEPORT", FP_PORT_NODEPORT),
            ("FP_PORT_SNAT", FP_PORT_SNAT),
            ("FP_MAX_FLOW4", FP_MAX_FLOW4),
            ("FP_FLOW4_NAT", FP_FLOW4_NAT),
            ("FP_FLOW4_SRC_MAC", FP_FLOW4_SRC_MAC),
            ("FP_MAX_FASTIF", FP_MAX_FASTIF),
            ("FP_CFG_FAST_PATH", FP_CFG_FAST_PATH),
            ("FP_CFG_TRACE", FP_CFG_TRACE),
        ];
        assert_eq!(C_DEFINES.len(), rust.len());
        for (name, v) in rust {
            let (_, c) = C_DEFINES.iter().find(|d| d.0 == name).unwrap();
            assert_eq!(u64::from(v), *c, "{name}");
        }
    }

    #[test]
    fn counter_enums_are_dense_and_described() {
        for (i, v) in FpVerdict::ALL.iter().enumerate() {
            assert_eq!(v.as_u32() as usize, i);
            assert_eq!(FpVerdict::from_u32(v.as_u32()), Some(*v));
            assert!(!v.description().is_empty());
        }
        assert_eq!(FpVerdict::ALL.len(), FpVerdict::COUNT);
        for (i, r) in FpDropReason::ALL.iter().enumerate() {
            assert_eq!(r.as_u32() as usize, i);
            assert_eq!(FpDropReason::from_u32(r.as_u32()), Some(*r));
            assert!(!r.description().is_empty());
        }
        assert_eq!(FpDropReason::ALL.len(), FpDropReason::COUNT);
        assert_eq!(FpDropReason::from_u32(FpDropReason::COUNT as u32), None);
        for (i, r) in FpFlowStat::ALL.iter().enumerate() {
            assert_eq!(r.as_u32() as usize, i);
            assert!(!r.description().is_empty());
        }
        assert_eq!(FpFlowStat::ALL.len(), FpFlowStat::COUNT);
    }

    #[test]
    fn names_and_descriptions_come_from_the_header() {
        assert_eq!(FpVerdict::RedirectFailed.name(), "redirect_failed");
        assert_eq!(
            FpVerdict::RedirectFailed.c_name(),
            "FP_VERDICT_REDIRECT_FAILED"
        );
        assert_eq!(FpDropReason::TruncatedEth.name(), "truncated_eth");
        assert_eq!(
            FpDropReason::TruncatedEth.description(),
            "frame shorter than an Ethernet header"
        );
        assert_eq!(FpSteerKind::PodCidr.as_u32(), 1);
        assert_eq!(
            FpIface::uplink(3),
            FpIface {
                xsk_slot: 3,
                flags: 1,
                queues: 1
            }
        );
        assert_eq!(FpIface::pod(5).with_queues(4).queues, 4);
        assert_eq!(FpIface::pod(0).flags, 2);
        assert_eq!(FpDropReason::NoXsk.to_string(), "no_xsk");
    }
}
