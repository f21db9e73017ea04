//! BPF_PROG_TEST_RUN fixture tables for xdp_uplink and xdp_pod (root only).
//!
//! Each fixture: a frame, a map setup, the expected XDP action, the one
//! verdict counter that must move (by exactly 1) and the reason counter that
//! must move (or none). The frame must come out unmodified.
//!
//! Frames shorter than an Ethernet header are refused by the kernel (EINVAL,
//! since 6.18 also when padded with XDP metadata), so for those the fixture
//! asserts the refusal and that no counter moved: the program did not run.
//! Their bounds check is still required by the verifier.
//!
//! Kernel behaviour relied on (6.18, `bpf_prog_test_run_xdp`): the program
//! runs as if received on loopback queue 0; `bpf_redirect_map` into an XSKMAP
//! slot without a socket returns the fallback action from its flags
//! (XDP_PASS here); with a socket it returns XDP_REDIRECT, which test_run
//! reports as is without delivering the frame.

mod common;

use std::net::Ipv4Addr;

use common::*;
use ferroplane_bpf::{
    xdp_action, Dataplane, FpConfig, FpDropReason, FpFlow4, FpFlow4Key, FpFlowStat, FpIface,
    FpSteerKind, FpVerdict, XdpProg,
};

/// Loopback: test runs without an explicit ifindex see ingress_ifindex 1.
const LO_IFINDEX: u32 = 1;
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 7);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
/// A node address inside the pod CIDR (host4 must win over steer4).
const NODE_IN_CIDR: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const INTERNET: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);
/// A ClusterIP / LoadBalancer address steered to the engine (steer4, kind Service).
const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// ports4 entries of the standard setup: a TCP and a UDP NodePort, a TCP SNAT port and an
/// ICMP echo id of the SNAT range.
const NODEPORT_TCP: u16 = 30080;
const NODEPORT_UDP: u16 = 30053;
const SNAT_PORT: u16 = 61000;
const SNAT_ICMP_ID: u16 = 61001;

/// Map contents before the frame is run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Setup {
    /// ifaces[lo] = slot 0, steer4 {10.244.1.0/24, SERVICE_VIP/32}, host4 {NODE, NODE_IN_CIDR},
    /// tunnel4 {IPIP, UDP 4789, UDP 51820}, ports4 {TCP 30080, UDP 30053 (NodePorts), TCP
    /// 61000, ICMP id 61001 (SNAT)}, no socket.
    Standard,
    /// Standard plus an AF_XDP socket in slot 0.
    WithSocket,
    /// Standard without the ifaces entry for lo.
    NoIface,
    /// Standard with ifaces[lo].xsk_slot = FP_MAX_XSKS (slot + queue out of range).
    SlotOutOfRange,
}

/// What the kernel must return.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// The program ran and returned this XDP action.
    Action(u32),
    /// BPF_PROG_TEST_RUN refused the frame with EINVAL (shorter than ETH_HLEN).
    Refused,
}

struct Fixture {
    name: &'static str,
    prog: XdpProg,
    frame: Vec<u8>,
    setup: Setup,
    outcome: Outcome,
    /// The verdict counted (None when the program does not run).
    verdict: Option<FpVerdict>,
    /// The reasons counted (each by exactly 1).
    reasons: Vec<FpDropReason>,
}

impl Fixture {
    /// The same fixture with one more reason counted.
    fn also(mut self, reason: FpDropReason) -> Self {
        self.reasons.push(reason);
        self
    }
}

fn fx(
    name: &'static str,
    prog: XdpProg,
    frame: Vec<u8>,
    setup: Setup,
    action: u32,
    verdict: FpVerdict,
    reason: Option<FpDropReason>,
) -> Fixture {
    Fixture {
        name,
        prog,
        frame,
        setup,
        outcome: Outcome::Action(action),
        verdict: Some(verdict),
        reasons: reason.into_iter().collect(),
    }
}

/// A frame the kernel must refuse to run the program on.
fn refused(name: &'static str, prog: XdpProg, frame: Vec<u8>) -> Fixture {
    Fixture {
        name,
        prog,
        frame,
        setup: Setup::WithSocket,
        outcome: Outcome::Refused,
        verdict: None,
        reasons: Vec::new(),
    }
}

/// Ethernet + IPv4 with the given IHL/version byte and total length, and
/// `len` bytes of IP header/payload actually present.
fn raw_ipv4(ver_ihl: u8, total_len: u16, len: usize) -> Vec<u8> {
    let mut ip = ipv4_with(PEER, POD_A, 5, 64);
    ip[0] = ver_ihl;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip.truncate(len);
    eth(0x0800, &ip)
}

/// Ethernet + IPv4 `src -> dst` with protocol `proto`; for UDP (17) a UDP header to `dport`
/// and 8 payload bytes, for IPIP (4) an inner IPv4 header; `cut` bytes removed from the end.
fn tunnel_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, dport: u16, cut: usize) -> Vec<u8> {
    let inner = if proto == 4 {
        ipv4_with(POD_B, POD_A, 5, 8)
    } else {
        let mut u = vec![0u8; 16];
        u[0..2].copy_from_slice(&40000u16.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&16u16.to_be_bytes());
        u
    };
    let mut ip = ipv4_with(src, dst, 5, inner.len());
    ip[20..].copy_from_slice(&inner);
    ip[9] = proto;
    let new_len = ip.len() - cut;
    ip.truncate(new_len);
    ip[2..4].copy_from_slice(&(new_len as u16).to_be_bytes());
    // Protocol and length changed: recompute the header checksum.
    ip[10..12].copy_from_slice(&[0, 0]);
    let mut sum: u32 = ip[..20]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    eth(0x0800, &ip)
}

/// Ethernet + IPv4 `PEER -> dst` with protocol `proto` and 16 bytes of layer 4: TCP/UDP from
/// port 40000 to `port`; ICMP (1) an echo message of type `icmp_type` with id `port`.
/// `frag` is the IPv4 flags/fragment-offset field.
fn service_frame(dst: Ipv4Addr, proto: u8, port: u16, icmp_type: u8, frag: u16) -> Vec<u8> {
    let mut ip = ipv4_with(PEER, dst, 5, 16);
    ip[9] = proto;
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    let l4 = &mut ip[20..];
    l4.fill(0);
    if proto == 1 {
        l4[0] = icmp_type;
        l4[4..6].copy_from_slice(&port.to_be_bytes());
    } else {
        l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
        l4[2..4].copy_from_slice(&port.to_be_bytes());
    }
    ip[10..12].copy_from_slice(&[0, 0]);
    let mut sum: u32 = ip[..20]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    eth(0x0800, &ip)
}

fn fixtures() -> Vec<Fixture> {
    use FpDropReason as R;
    use FpVerdict as V;
    use Setup::*;
    use XdpProg::{Pod, Uplink};
    const PASS: u32 = xdp_action::PASS;
    const DROP: u32 = xdp_action::DROP;
    const REDIRECT: u32 = xdp_action::REDIRECT;

    // A minimum-size Ethernet frame: 20 + 8 bytes of IPv4 padded to 46.
    let mut padded = ipv4_frame(PEER, POD_A);
    padded.resize(60, 0);

    vec![
        // xdp_uplink: steering.
        fx(
            "uplink: IPv4 to pod CIDR, socket -> REDIRECT",
            Uplink,
            ipv4_frame(PEER, POD_A),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: IPv4 to pod CIDR, no socket -> DROP (fail closed, not to the kernel)",
            Uplink,
            ipv4_frame(PEER, POD_A),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        fx(
            "uplink: IPv4 to pod CIDR, iface not configured -> DROP",
            Uplink,
            ipv4_frame(PEER, POD_A),
            NoIface,
            DROP,
            V::EngineAway,
            Some(R::NoIface),
        ),
        fx(
            "uplink: IPv4 to pod CIDR, slot out of range -> DROP",
            Uplink,
            ipv4_frame(PEER, POD_A),
            SlotOutOfRange,
            DROP,
            V::EngineAway,
            Some(R::XskSlotRange),
        ),
        fx(
            "uplink: padded minimum frame to pod CIDR -> REDIRECT",
            Uplink,
            padded,
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: IPv4 to host address -> PASS",
            Uplink,
            ipv4_frame(PEER, NODE),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: IPv4 to host address inside pod CIDR -> PASS",
            Uplink,
            ipv4_frame(PEER, NODE_IN_CIDR),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: IPv4 to other pod CIDR -> PASS",
            Uplink,
            ipv4_frame(PEER, REMOTE_POD),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: IPv4 to internet -> PASS",
            Uplink,
            ipv4_frame(PEER, INTERNET),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: ARP request -> PASS",
            Uplink,
            arp_frame(1, PEER, NODE),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: ARP request for a pod -> PASS",
            Uplink,
            arp_frame(1, PEER, POD_A),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: IPv6 -> PASS",
            Uplink,
            ipv6_frame(),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        // xdp_uplink: overlay traffic to the node goes to the engine for decapsulation.
        fx(
            "uplink: IPIP to host address -> REDIRECT (decap)",
            Uplink,
            tunnel_frame(PEER, NODE, 4, 0, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: VXLAN (UDP 4789) to host address -> REDIRECT (decap)",
            Uplink,
            tunnel_frame(PEER, NODE, 17, 4789, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: WireGuard (UDP 51820) to host address -> REDIRECT (decap)",
            Uplink,
            tunnel_frame(PEER, NODE, 17, 51820, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: WireGuard to host address, no socket -> DROP (no kernel decap)",
            Uplink,
            tunnel_frame(PEER, NODE, 17, 51820, 0),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        fx(
            "uplink: UDP 53 to host address -> PASS (host traffic)",
            Uplink,
            tunnel_frame(PEER, NODE, 17, 53, 0),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: TCP to host address -> PASS",
            Uplink,
            tunnel_frame(PEER, NODE, 6, 4789, 0),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: UDP 4789 to host, UDP header truncated -> PASS",
            Uplink,
            tunnel_frame(PEER, NODE, 17, 4789, 12),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: VXLAN to internet (not for the node) -> PASS",
            Uplink,
            tunnel_frame(PEER, INTERNET, 17, 4789, 0),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        // xdp_uplink: services. NodePorts and SNAT return traffic to a node address go to
        // the engine; other ports to the node stay with the host; VIPs are steered.
        fx(
            "uplink: TCP to a NodePort on the host address -> REDIRECT",
            Uplink,
            service_frame(NODE, 6, NODEPORT_TCP, 0, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: UDP to a NodePort on the host address -> REDIRECT",
            Uplink,
            service_frame(NODE, 17, NODEPORT_UDP, 0, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: TCP NodePort on the second host address -> REDIRECT",
            Uplink,
            service_frame(NODE_IN_CIDR, 6, NODEPORT_TCP, 0, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: TCP to another port of the host address -> PASS",
            Uplink,
            service_frame(NODE, 6, NODEPORT_TCP + 1, 0, 0),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: UDP to the TCP NodePort number -> PASS (protocol is part of the key)",
            Uplink,
            service_frame(NODE, 17, NODEPORT_TCP, 0, 0),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: NodePort, no socket -> DROP (not to a host listener)",
            Uplink,
            service_frame(NODE, 6, NODEPORT_TCP, 0, 0),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        fx(
            "uplink: NodePort number to a non-node address -> PASS",
            Uplink,
            service_frame(INTERNET, 6, NODEPORT_TCP, 0, 0),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: non-first fragment to the node (no ports: NodePort or SNAT return?) -> REDIRECT",
            Uplink,
            service_frame(NODE, 6, NODEPORT_TCP, 0, 0x0010),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: first fragment (MF) to the node, not a service port -> REDIRECT",
            Uplink,
            service_frame(NODE, 17, 53, 0, 0x2000),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: fragment to the node, no socket -> PASS (for the node, never forwarded)",
            Uplink,
            service_frame(NODE, 17, 53, 0, 0x0010),
            Standard,
            PASS,
            V::RedirectFailed,
            Some(R::NoXsk),
        ),
        fx(
            "uplink: TCP to a SNAT port (return traffic) -> REDIRECT",
            Uplink,
            service_frame(NODE, 6, SNAT_PORT, 0, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: ICMP echo reply with a SNAT id -> REDIRECT",
            Uplink,
            service_frame(NODE, 1, SNAT_ICMP_ID, 0, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "uplink: ICMP echo request with a SNAT id -> PASS (the host answers pings)",
            Uplink,
            service_frame(NODE, 1, SNAT_ICMP_ID, 8, 0),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: TCP to a service VIP -> REDIRECT",
            Uplink,
            service_frame(SERVICE_VIP, 6, 80, 0, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        // xdp_uplink: malformed frames are passed and counted.
        refused(
            "uplink: empty frame -> refused by the kernel",
            Uplink,
            Vec::new(),
        ),
        refused(
            "uplink: 13-byte frame -> refused by the kernel",
            Uplink,
            eth(0x0800, &[])[..13].to_vec(),
        ),
        fx(
            "uplink: Ethernet only, IPv4 type -> PASS, truncated_ip",
            Uplink,
            eth(0x0800, &[]),
            WithSocket,
            PASS,
            V::Pass,
            Some(R::TruncatedIp),
        ),
        fx(
            "uplink: 19 bytes of IPv4 header -> PASS, truncated_ip",
            Uplink,
            raw_ipv4(0x45, 84, 19),
            WithSocket,
            PASS,
            V::Pass,
            Some(R::TruncatedIp),
        ),
        fx(
            "uplink: IHL 4 -> PASS, bad_ip_header",
            Uplink,
            raw_ipv4(0x44, 84, 84),
            WithSocket,
            PASS,
            V::Pass,
            Some(R::BadIpHeader),
        ),
        fx(
            "uplink: version 6 in IPv4 frame -> PASS, bad_ip_header",
            Uplink,
            raw_ipv4(0x65, 84, 84),
            WithSocket,
            PASS,
            V::Pass,
            Some(R::BadIpHeader),
        ),
        fx(
            "uplink: IHL 15, options missing -> PASS, truncated_ip",
            Uplink,
            raw_ipv4(0x4f, 84, 40),
            WithSocket,
            PASS,
            V::Pass,
            Some(R::TruncatedIp),
        ),
        fx(
            "uplink: total length beyond frame -> PASS, truncated_ip",
            Uplink,
            raw_ipv4(0x45, 1500, 84),
            WithSocket,
            PASS,
            V::Pass,
            Some(R::TruncatedIp),
        ),
        fx(
            "uplink: total length below header -> PASS, bad_ip_header",
            Uplink,
            raw_ipv4(0x45, 19, 84),
            WithSocket,
            PASS,
            V::Pass,
            Some(R::BadIpHeader),
        ),
        // xdp_pod.
        fx(
            "pod: ARP request -> REDIRECT (engine answers)",
            Pod,
            arp_frame(1, POD_A, Ipv4Addr::new(169, 254, 1, 1)),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "pod: ARP request, no socket -> PASS (ARP is never forwarded)",
            Pod,
            arp_frame(1, POD_A, Ipv4Addr::new(169, 254, 1, 1)),
            Standard,
            PASS,
            V::RedirectFailed,
            Some(R::NoXsk),
        ),
        fx(
            "pod: ARP reply -> PASS (kernel neighbour resolution)",
            Pod,
            arp_frame(2, POD_A, NODE),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "pod: IPv4 to host address -> PASS",
            Pod,
            ipv4_frame(POD_A, NODE),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "pod: IPv4 to host address inside pod CIDR -> PASS",
            Pod,
            ipv4_frame(POD_A, NODE_IN_CIDR),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        // A pod to a node port (a service's or a hostPort) on the node's address: the
        // engine's, as from the uplink; other ports on the node (the pod's answers to the
        // node's connections, the SNAT range included) stay with the kernel.
        fx(
            "pod: TCP to a NodePort on the node -> REDIRECT",
            Pod,
            service_frame(NODE, 6, NODEPORT_TCP, 0, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "pod: UDP to a NodePort on the node -> REDIRECT",
            Pod,
            service_frame(NODE, 17, NODEPORT_UDP, 0, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "pod: TCP to a NodePort on the node, no socket -> DROP",
            Pod,
            service_frame(NODE, 6, NODEPORT_TCP, 0, 0),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        fx(
            "pod: UDP to the TCP NodePort's number on the node -> PASS",
            Pod,
            service_frame(NODE, 17, NODEPORT_TCP, 0, 0),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        // A pod's answer to a connection the engine SNATed to the node's address (the
        // node's own connection to a service whose backend is this pod): the engine
        // restores the service address.
        fx(
            "pod: TCP to a SNAT-range port on the node -> REDIRECT (SNAT return)",
            Pod,
            service_frame(NODE, 6, SNAT_PORT, 0, 0),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "pod: TCP to a SNAT-range port on the node, no socket -> DROP",
            Pod,
            service_frame(NODE, 6, SNAT_PORT, 0, 0),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        fx(
            "pod: TCP to an ordinary port on the node -> PASS",
            Pod,
            service_frame(NODE, 6, 22, 0, 0),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "pod: non-first fragment to a NodePort on the node -> PASS (no ports)",
            Pod,
            service_frame(NODE, 6, NODEPORT_TCP, 0, 0x0010),
            WithSocket,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "pod: IPv4 to another pod -> REDIRECT",
            Pod,
            ipv4_frame(POD_A, POD_B),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "pod: IPv4 to internet -> REDIRECT",
            Pod,
            ipv4_frame(POD_A, INTERNET),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        fx(
            "pod: IPv4, iface not configured -> DROP",
            Pod,
            ipv4_frame(POD_A, POD_B),
            NoIface,
            DROP,
            V::EngineAway,
            Some(R::NoIface),
        ),
        fx(
            "pod: IPv6 -> REDIRECT",
            Pod,
            ipv6_frame(),
            WithSocket,
            REDIRECT,
            V::Redirect,
            None,
        ),
        // xdp_pod with the engine away (no socket, no flow4 entry): fail closed. Only what
        // is for the node's kernel (its addresses, ARP) goes there; nothing the kernel would
        // forward with ip_forward=1.
        fx(
            "pod: IPv4 to another pod, no socket -> DROP (fail closed)",
            Pod,
            ipv4_frame(POD_A, POD_B),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        fx(
            "pod: IPv4 to internet, no socket -> DROP",
            Pod,
            ipv4_frame(POD_A, INTERNET),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        fx(
            "pod: IPv4 to the router (uplink segment), no socket -> DROP",
            Pod,
            ipv4_frame(POD_A, PEER),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        fx(
            "pod: IPv6, no socket -> DROP",
            Pod,
            ipv6_frame(),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        fx(
            "pod: other ethertype, no socket -> DROP",
            Pod,
            eth(0x88b5, &[0u8; 46]),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        fx(
            "pod: IHL 4, no socket -> DROP, bad_ip_header",
            Pod,
            raw_ipv4(0x44, 84, 84),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::BadIpHeader),
        )
        .also(R::NoXsk),
        fx(
            "pod: truncated ARP, no socket -> DROP, truncated_arp",
            Pod,
            arp_frame(1, POD_A, NODE)[..20].to_vec(),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::TruncatedArp),
        )
        .also(R::NoXsk),
        fx(
            "pod: IPv4 to host address, no socket -> PASS (node traffic)",
            Pod,
            ipv4_frame(POD_A, NODE),
            Standard,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "pod: ARP reply, no socket -> PASS",
            Pod,
            arp_frame(2, POD_A, NODE),
            Standard,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: TCP to host address, no socket -> PASS (node traffic)",
            Uplink,
            service_frame(NODE, 6, 22, 0, 0),
            Standard,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: ARP request for a pod, no socket -> PASS",
            Uplink,
            arp_frame(1, PEER, POD_A),
            Standard,
            PASS,
            V::Pass,
            None,
        ),
        fx(
            "uplink: TCP to a service VIP, no socket -> DROP",
            Uplink,
            service_frame(SERVICE_VIP, 6, 80, 0, 0),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        fx(
            "uplink: IPIP to host address, no socket -> DROP",
            Uplink,
            tunnel_frame(PEER, NODE, 4, 0, 0),
            Standard,
            DROP,
            V::EngineAway,
            Some(R::NoXsk),
        ),
        refused(
            "pod: 10-byte frame -> refused by the kernel",
            Pod,
            vec![0xff; 10],
        ),
        fx(
            "pod: truncated ARP -> REDIRECT (the engine drops it), truncated_arp",
            Pod,
            arp_frame(2, POD_A, NODE)[..20].to_vec(),
            WithSocket,
            REDIRECT,
            V::Redirect,
            Some(R::TruncatedArp),
        ),
        fx(
            "pod: 19 bytes of IPv4 header -> REDIRECT (the engine drops it), truncated_ip",
            Pod,
            raw_ipv4(0x45, 84, 19),
            WithSocket,
            REDIRECT,
            V::Redirect,
            Some(R::TruncatedIp),
        ),
        fx(
            "pod: IHL 4 -> REDIRECT (the engine drops it), bad_ip_header",
            Pod,
            raw_ipv4(0x44, 84, 84),
            WithSocket,
            REDIRECT,
            V::Redirect,
            Some(R::BadIpHeader),
        ),
        fx(
            "pod: total length beyond frame -> REDIRECT (the engine drops it), truncated_ip",
            Pod,
            raw_ipv4(0x45, 1500, 84),
            WithSocket,
            REDIRECT,
            V::Redirect,
            Some(R::TruncatedIp),
        ),
    ]
}

fn prepare(setup: Setup) -> (Dataplane, Option<XskSocket>) {
    let mut dp = Dataplane::load(None).expect("load");
    let slot = if setup == Setup::SlotOutOfRange {
        ferroplane_common::FP_MAX_XSKS
    } else {
        0
    };
    if setup != Setup::NoIface {
        dp.set_iface(LO_IFINDEX, FpIface::uplink(slot)).unwrap();
    }
    dp.add_steer4(Ipv4Addr::new(10, 244, 1, 0), 24, FpSteerKind::PodCidr)
        .unwrap();
    dp.add_host4(NODE).unwrap();
    dp.add_host4(NODE_IN_CIDR).unwrap();
    // Overlay decapsulation in the engine: IPIP, VXLAN 4789, WireGuard 51820.
    dp.add_tunnel4(4, 0).unwrap();
    dp.add_tunnel4(17, 4789).unwrap();
    dp.add_tunnel4(17, 51820).unwrap();
    // Services: a VIP, NodePorts and SNAT return ports/ids on the node's addresses.
    dp.add_steer4(SERVICE_VIP, 32, FpSteerKind::Service)
        .unwrap();
    dp.add_port4(6, NODEPORT_TCP, ferroplane_common::FP_PORT_NODEPORT)
        .unwrap();
    dp.add_port4(17, NODEPORT_UDP, ferroplane_common::FP_PORT_NODEPORT)
        .unwrap();
    dp.add_port4(6, SNAT_PORT, ferroplane_common::FP_PORT_SNAT)
        .unwrap();
    dp.add_port4(1, SNAT_ICMP_ID, ferroplane_common::FP_PORT_SNAT)
        .unwrap();
    let sock = (setup == Setup::WithSocket).then(|| {
        let s = XskSocket::new().expect("AF_XDP socket");
        dp.set_xsk(0, s.raw_fd()).expect("socket into xsks");
        s
    });
    (dp, sock)
}

#[test]
fn fixture_table() {
    if !require_root() {
        return;
    }
    let table = fixtures();
    assert!(table.len() >= 12);
    let mut failures = Vec::new();
    for f in &table {
        let (dp, _sock) = prepare(f.setup);
        let before = dp.stats().unwrap();
        let result = dp.prog_test_run(f.prog, &f.frame);
        let delta = dp.stats().unwrap().since(&before);

        let mut expected = ferroplane_bpf::XdpStats::default();
        if let Some(v) = f.verdict {
            expected.verdicts[v as usize] = 1;
        }
        for r in &f.reasons {
            expected.drops[*r as usize] = 1;
        }
        let problem = match (f.outcome, result) {
            (Outcome::Action(want), Ok((action, out))) => {
                (action != want || out != f.frame).then(|| {
                    format!(
                        "action {action} (want {want}), frame changed: {}",
                        out != f.frame
                    )
                })
            }
            (Outcome::Refused, Err(ferroplane_bpf::Error::TestRun { source, .. }))
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                None
            }
            (want, got) => Some(format!("got {got:?}, want {want:?}")),
        };
        if problem.is_some() || delta != expected {
            failures.push(format!(
                "{}: {}; counters {:?} (want {:?})",
                f.name,
                problem.unwrap_or_default(),
                delta.nonzero(),
                expected.nonzero(),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "fixture failures:\n{}",
        failures.join("\n")
    );
}

/// Counters accumulate per CPU and are summed; clear_stats resets them.
#[test]
fn counters_accumulate_and_clear() {
    if !require_root() {
        return;
    }
    let (mut dp, _sock) = prepare(Setup::WithSocket);
    let frame = ipv4_frame(PEER, POD_A);
    for _ in 0..5 {
        let (action, _) = dp.prog_test_run(XdpProg::Uplink, &frame).unwrap();
        assert_eq!(action, xdp_action::REDIRECT);
    }
    let (action, _) = dp
        .prog_test_run(XdpProg::Pod, &arp_frame(2, POD_A, NODE))
        .unwrap();
    assert_eq!(action, xdp_action::PASS);
    let s = dp.stats().unwrap();
    assert_eq!(s.verdict(FpVerdict::Redirect), 5);
    assert_eq!(s.verdict(FpVerdict::Pass), 1);
    dp.clear_stats().unwrap();
    assert_eq!(dp.stats().unwrap(), ferroplane_bpf::XdpStats::default());
}

/// Map edits take effect on the next packet; removal reports presence.
#[test]
fn map_edits_change_steering() {
    if !require_root() {
        return;
    }
    let (mut dp, _sock) = prepare(Setup::WithSocket);
    let frame = ipv4_frame(PEER, REMOTE_POD);
    let run = |dp: &Dataplane| dp.prog_test_run(XdpProg::Uplink, &frame).unwrap().0;
    assert_eq!(run(&dp), xdp_action::PASS);

    // Host bits are ignored: 10.244.2.99/24 is stored as 10.244.2.0/24.
    dp.add_steer4(Ipv4Addr::new(10, 244, 2, 99), 24, FpSteerKind::PodCidr)
        .unwrap();
    assert_eq!(run(&dp), xdp_action::REDIRECT);
    let entries = dp.steer4().unwrap();
    assert!(entries.contains(&ferroplane_bpf::Steer4Entry {
        addr: Ipv4Addr::new(10, 244, 2, 0),
        prefixlen: 24,
        kind: FpSteerKind::PodCidr,
    }));

    dp.add_host4(REMOTE_POD).unwrap();
    assert_eq!(run(&dp), xdp_action::PASS);
    assert!(dp.host4().unwrap().contains(&REMOTE_POD));
    assert!(dp.remove_host4(REMOTE_POD).unwrap());
    assert!(!dp.remove_host4(REMOTE_POD).unwrap());
    assert_eq!(run(&dp), xdp_action::REDIRECT);

    dp.clear_xsk(0).unwrap();
    assert_eq!(run(&dp), xdp_action::DROP);
    assert_eq!(dp.stats().unwrap().reason(FpDropReason::NoXsk), 1);
    assert_eq!(dp.stats().unwrap().verdict(FpVerdict::EngineAway), 1);

    assert!(dp.remove_steer4(Ipv4Addr::new(10, 244, 2, 0), 24).unwrap());
    assert!(!dp.remove_steer4(Ipv4Addr::new(10, 244, 2, 0), 24).unwrap());
    assert_eq!(dp.ifaces().unwrap(), vec![(LO_IFINDEX, FpIface::uplink(0))]);
    assert!(dp.remove_iface(LO_IFINDEX).unwrap());
    assert!(!dp.remove_iface(LO_IFINDEX).unwrap());
    assert!(dp.add_steer4(NODE, 33, FpSteerKind::PodCidr).is_err());

    // Tunnel steering follows tunnel4.
    let wg = tunnel_frame(PEER, NODE, 17, 51820, 0);
    dp.set_iface(LO_IFINDEX, FpIface::uplink(0)).unwrap();
    let sock = XskSocket::new().expect("AF_XDP socket");
    dp.set_xsk(0, sock.raw_fd()).unwrap();
    let run = |dp: &Dataplane| dp.prog_test_run(XdpProg::Uplink, &wg).unwrap().0;
    assert_eq!(run(&dp), xdp_action::REDIRECT);
    assert!(dp.remove_tunnel4(17, 51820).unwrap());
    assert!(!dp.remove_tunnel4(17, 51820).unwrap());
    assert_eq!(run(&dp), xdp_action::PASS);
    assert_eq!(dp.tunnel4().unwrap(), vec![(4, 0), (17, 4789)]);
}

/// NodePort steering follows ports4: a port is the engine's from the moment it is added
/// until it is removed; the node's other ports stay with the host throughout.
#[test]
fn ports4_edits_change_steering() {
    if !require_root() {
        return;
    }
    let (mut dp, _sock) = prepare(Setup::WithSocket);
    let nodeport = service_frame(NODE, 6, 31234, 0, 0);
    let other = service_frame(NODE, 6, 22, 0, 0);
    let run = |dp: &Dataplane, f: &[u8]| dp.prog_test_run(XdpProg::Uplink, f).unwrap().0;
    assert_eq!(run(&dp, &nodeport), xdp_action::PASS);
    dp.add_port4(6, 31234, ferroplane_common::FP_PORT_NODEPORT)
        .unwrap();
    assert_eq!(run(&dp, &nodeport), xdp_action::REDIRECT);
    assert_eq!(run(&dp, &other), xdp_action::PASS);
    assert!(dp
        .ports4()
        .unwrap()
        .contains(&(6, 31234, ferroplane_common::FP_PORT_NODEPORT)));
    assert!(dp.remove_port4(6, 31234).unwrap());
    assert!(!dp.remove_port4(6, 31234).unwrap());
    assert_eq!(run(&dp, &nodeport), xdp_action::PASS);
    let s = dp.stats().unwrap();
    assert_eq!(s.verdict(FpVerdict::Redirect), 1);
    assert_eq!(s.verdict(FpVerdict::Pass), 3);
}

/// steer4 holds a /32 per service address for 10,000 services (and the pod CIDR): the
/// last one added is steered like the first.
#[test]
fn steer4_holds_ten_thousand_service_addresses() {
    if !require_root() {
        return;
    }
    let (mut dp, _sock) = prepare(Setup::WithSocket);
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 1));
    for i in 0..10_000 {
        dp.add_steer4(Ipv4Addr::from(base + i), 32, FpSteerKind::Service)
            .unwrap_or_else(|e| panic!("service address {i}: {e}"));
    }
    for addr in [base, base + 9_999] {
        let frame = service_frame(Ipv4Addr::from(addr), 17, 80, 0, 0);
        let (action, _) = dp.prog_test_run(XdpProg::Uplink, &frame).unwrap();
        assert_eq!(action, xdp_action::REDIRECT, "{}", Ipv4Addr::from(addr));
    }
    let frame = service_frame(Ipv4Addr::from(base + 10_000), 17, 80, 0, 0);
    assert_eq!(
        dp.prog_test_run(XdpProg::Uplink, &frame).unwrap().0,
        xdp_action::PASS
    );
}

/// Two loads without a pin directory do not share maps.
#[test]
fn unpinned_loads_are_independent() {
    if !require_root() {
        return;
    }
    let mut a = Dataplane::load(None).unwrap();
    let b = Dataplane::load(None).unwrap();
    a.add_host4(NODE).unwrap();
    assert_eq!(a.host4().unwrap(), vec![NODE]);
    assert!(b.host4().unwrap().is_empty());
    assert!(a.pin_dir().is_none());
}

/// With a pin directory the maps are pinned by name and shared by the next load.
#[test]
fn pinned_maps_are_shared_across_loads() {
    if !require_root() {
        return;
    }
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/fp-bpf-test-{}", std::process::id()));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Ok(rd) = std::fs::read_dir(&self.0) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let mut a = Dataplane::load(Some(&dir)).unwrap();
    for name in ferroplane_bpf::MAP_NAMES {
        assert!(dir.join(name).exists(), "{name} not pinned");
    }
    a.add_host4(NODE).unwrap();
    let b = Dataplane::load(Some(&dir)).unwrap();
    assert_eq!(b.host4().unwrap(), vec![NODE]);
    assert_eq!(b.pin_dir(), Some(dir.as_path()));
}

/// A pinned map left with another layout (an older version's) is replaced by the load, not
/// reused: reusing a narrower `flow4` would fail verification, a shorter `verdicts` would lose
/// counts. Compatible pins are still reused.
#[test]
fn pinned_maps_with_another_layout_are_replaced() {
    if !require_root() {
        return;
    }
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/fp-bpf-shape-{}", std::process::id()));
    let old = dir.join("old");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for d in [self.0.join("old"), self.0.clone()] {
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
                let _ = std::fs::remove_dir(&d);
            }
        }
    }
    let _cleanup = Cleanup(dir.clone());
    drop(Dataplane::load(Some(&old)).unwrap());
    // A per-CPU array (4-byte keys, 8-byte values) pinned where flow4 belongs.
    std::fs::rename(old.join("verdicts"), dir.join("flow4")).unwrap();
    let mut b = Dataplane::load(Some(&dir)).expect("load over a flow4 pin of another layout");
    assert_eq!(b.replaced_maps(), ["flow4".to_string()]);
    assert!(b.flow4().unwrap().is_empty());
    b.add_host4(NODE).unwrap();
    drop(b);
    let c = Dataplane::load(Some(&dir)).unwrap();
    assert!(c.replaced_maps().is_empty(), "{:?}", c.replaced_maps());
    assert_eq!(c.host4().unwrap(), vec![NODE], "compatible pins are reused");
}

/// One's complement sum of 16-bit words (0xffff over a header with a valid checksum).
fn ones_sum(data: &[u8]) -> u32 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The TCP/UDP checksum field value that makes the segment of the IPv4 packet `ip` valid
/// when the field holds zero; 0 when it is already valid.
fn l4_checksum(ip: &[u8], proto: u8) -> u16 {
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let seg = &ip[20..total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(seg);
    !(ones_sum(&pseudo) as u16)
}

/// The flow4 cache: while the engine's socket is missing, a flow the engine forwarded is
/// forwarded by XDP (TTL - 1 with a valid checksum, the engine's MACs, out of its interface)
/// when it arrives where the engine saw it arrive; any other flow, an expired entry, a
/// fragment or another ingress interface is dropped (fail closed), and any packet while the
/// socket is there goes to the engine.
#[test]
fn flow_cache_forwards_known_flows_only_while_the_engine_is_away() {
    if !require_root() {
        return;
    }
    let (mut dp, _) = prepare(Setup::Standard);
    let udp = service_frame(POD_A, 17, 5000, 0, 0);
    let run = |dp: &Dataplane, f: &[u8]| dp.prog_test_run(XdpProg::Uplink, f).unwrap();
    assert_eq!(run(&dp, &udp).0, xdp_action::DROP, "no entry: fail closed");

    let key = FpFlow4Key {
        saddr: PEER.octets(),
        daddr: POD_A.octets(),
        sport: 40000u16.to_be_bytes(),
        dport: 5000u16.to_be_bytes(),
        proto: 17,
        pad: [0; 3],
    };
    let dmac = [0x02, 0xaa, 0, 0, 0, 0x0a];
    let smac = [0x02, 0xbb, 0, 0, 0, 0x0b];
    let entry = |seen_ns| FpFlow4 {
        ifindex: LO_IFINDEX,
        dmac,
        smac,
        saddr: key.saddr,
        daddr: key.daddr,
        sport: key.sport,
        dport: key.dport,
        flags: 0,
        in_ifindex: LO_IFINDEX,
        mtu: 0,
        in_dmac: HOST_MAC,
        in_smac: [0; 6],
        pad: 0,
        seen_ns,
        packets: 0,
        bytes: 0,
    };
    dp.set_flow4(key, entry(ferroplane_bpf::monotonic_ns()))
        .unwrap();
    let before = dp.stats().unwrap();
    let (act, out) = run(&dp, &udp);
    assert_eq!(act, xdp_action::REDIRECT);
    assert_eq!(&out[0..6], &dmac);
    assert_eq!(&out[6..12], &smac);
    assert_eq!(out[14 + 8], udp[14 + 8] - 1, "TTL decremented");
    // Only the MACs, the TTL and the header checksum change.
    let same = |f: &[u8]| [&f[12..22], &f[23..24], &f[26..]].concat();
    assert_eq!(same(&out), same(&udp));
    assert_eq!(
        ones_sum(&out[14..34]),
        0xffff,
        "IPv4 header checksum still valid"
    );
    let after = dp.stats().unwrap().since(&before);
    assert_eq!(after.verdict(FpVerdict::FlowCache), 1);
    assert_eq!(
        after.reason(FpDropReason::NoXsk),
        0,
        "a hit is not a failure"
    );

    // The same tuple arriving on another interface than the engine saw it on (a pod forging
    // another pod's flow): not from the cache.
    dp.set_flow4(
        key,
        FpFlow4 {
            in_ifindex: LO_IFINDEX + 1,
            ..entry(ferroplane_bpf::monotonic_ns())
        },
    )
    .unwrap();
    let before = dp.stats().unwrap();
    assert_eq!(
        run(&dp, &udp).0,
        xdp_action::DROP,
        "wrong ingress interface"
    );
    let d = dp.stats().unwrap().since(&before);
    assert_eq!(d.verdict(FpVerdict::EngineAway), 1);
    assert_eq!(d.verdict(FpVerdict::FlowCache), 0);
    dp.set_flow4(key, entry(ferroplane_bpf::monotonic_ns()))
        .unwrap();

    // Another flow (other port), a fragment, an ICMP error: not from the cache.
    assert_eq!(
        run(&dp, &service_frame(POD_A, 17, 5001, 0, 0)).0,
        xdp_action::DROP
    );
    assert_eq!(
        run(&dp, &service_frame(POD_A, 17, 5000, 0, 0x2000)).0,
        xdp_action::DROP
    );
    assert_eq!(
        run(&dp, &service_frame(POD_A, 1, 5000, 3, 0)).0,
        xdp_action::DROP
    );

    // ICMP echo: the id is the request's source port.
    let echo = FpFlow4Key {
        sport: 77u16.to_be_bytes(),
        dport: [0, 0],
        proto: 1,
        ..key
    };
    dp.set_flow4(echo, entry(ferroplane_bpf::monotonic_ns()))
        .unwrap();
    assert_eq!(
        run(&dp, &service_frame(POD_A, 1, 77, 8, 0)).0,
        xdp_action::REDIRECT
    );
    assert_eq!(
        run(&dp, &service_frame(POD_A, 1, 77, 0, 0)).0,
        xdp_action::DROP,
        "a reply is another direction"
    );

    // An entry idle for longer than FP_FLOW4_IDLE_NS is ignored.
    let old = ferroplane_bpf::monotonic_ns().saturating_sub(121_000_000_000);
    dp.set_flow4(key, entry(old)).unwrap();
    assert_eq!(run(&dp, &udp).0, xdp_action::DROP);
    assert_eq!(dp.flow4().unwrap().len(), 2);
    assert_eq!(dp.clear_flow4().unwrap(), 2);

    // A translated flow (service DNAT to a backend, source port changed too): addresses,
    // ports and both checksums rewritten; a TCP one as well.
    for proto in [17u8, 6] {
        let frame = {
            // 20 bytes of layer 4 (a TCP header's length), ports 40000 -> 5000.
            let mut ip = ipv4_with(PEER, POD_A, 5, 20);
            ip[9] = proto;
            ip[20..].fill(0);
            ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
            ip[22..24].copy_from_slice(&5000u16.to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = !(ones_sum(&ip[..20]) as u16);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let mut f = eth(0x0800, &ip);
            // A real layer-4 checksum so the rewrite can be checked.
            let l4 = 14 + 20;
            let at = l4 + if proto == 6 { 16 } else { 6 };
            f[at..at + 2].copy_from_slice(&[0, 0]);
            let c = l4_checksum(&f[14..], proto);
            f[at..at + 2].copy_from_slice(&c.to_be_bytes());
            f
        };
        let k = FpFlow4Key { proto, ..key };
        let backend = Ipv4Addr::new(10, 244, 2, 7);
        dp.set_flow4(
            k,
            FpFlow4 {
                daddr: backend.octets(),
                sport: 40001u16.to_be_bytes(),
                dport: 8080u16.to_be_bytes(),
                flags: FpFlow4::NAT,
                ..entry(ferroplane_bpf::monotonic_ns())
            },
        )
        .unwrap();
        let (act, out) = run(&dp, &frame);
        assert_eq!(act, xdp_action::REDIRECT, "proto {proto}");
        assert_eq!(&out[14 + 16..14 + 20], &backend.octets());
        assert_eq!(&out[14 + 12..14 + 16], &PEER.octets());
        assert_eq!(&out[34..36], &40001u16.to_be_bytes());
        assert_eq!(&out[36..38], &8080u16.to_be_bytes());
        assert_eq!(
            ones_sum(&out[14..34]),
            0xffff,
            "IPv4 checksum (proto {proto})"
        );
        assert_eq!(
            l4_checksum(&out[14..], proto),
            0,
            "layer-4 checksum (proto {proto})"
        );
    }

    // With the engine's socket in place the engine decides, cache or not.
    let (mut dp, _sock) = prepare(Setup::WithSocket);
    dp.set_flow4(key, entry(ferroplane_bpf::monotonic_ns()))
        .unwrap();
    let before = dp.stats().unwrap();
    assert_eq!(run(&dp, &udp).0, xdp_action::REDIRECT);
    let after = dp.stats().unwrap().since(&before);
    assert_eq!(after.verdict(FpVerdict::Redirect), 1);
    assert_eq!(after.verdict(FpVerdict::FlowCache), 0);
}

/// The fast path: with `config` saying so, an established flow in `flow4` is forwarded by
/// XDP itself even though the engine's socket is there (verdict fast_path, counted per
/// interface and on the entry), except TCP SYN/FIN/RST, packets longer than the entry's MTU
/// and everything while a trace is active, which go to the engine; with the switch off the
/// engine gets every packet.
#[test]
fn fast_path_forwards_established_flows_while_the_engine_runs() {
    if !require_root() {
        return;
    }
    let (mut dp, _sock) = prepare(Setup::WithSocket);
    let run = |dp: &Dataplane, f: &[u8]| dp.prog_test_run(XdpProg::Uplink, f).unwrap();
    let key = FpFlow4Key {
        saddr: PEER.octets(),
        daddr: POD_A.octets(),
        sport: 40000u16.to_be_bytes(),
        dport: 5000u16.to_be_bytes(),
        proto: 6,
        pad: [0; 3],
    };
    let dmac = [0x02, 0xaa, 0, 0, 0, 0x0a];
    let entry = FpFlow4 {
        ifindex: LO_IFINDEX,
        dmac,
        smac: [0x02, 0xbb, 0, 0, 0, 0x0b],
        saddr: key.saddr,
        daddr: key.daddr,
        sport: key.sport,
        dport: key.dport,
        flags: 0,
        in_ifindex: LO_IFINDEX,
        mtu: 1500,
        in_dmac: HOST_MAC,
        in_smac: [0; 6],
        pad: 0,
        seen_ns: ferroplane_bpf::monotonic_ns(),
        packets: 0,
        bytes: 0,
    };
    dp.set_flow4(key, entry).unwrap();
    let tcp = |flags: u8| {
        let mut f = service_frame(POD_A, 6, 5000, 0, 0);
        f[14 + 20 + 13] = flags;
        f
    };
    let ack = tcp(0x10);

    // Off (the default config): the engine takes it.
    let before = dp.stats().unwrap();
    assert_eq!(run(&dp, &ack).0, xdp_action::REDIRECT);
    let d = dp.stats().unwrap().since(&before);
    assert_eq!(d.verdict(FpVerdict::Redirect), 1);
    assert_eq!(d.verdict(FpVerdict::FastPath), 0);

    dp.set_config(FpConfig {
        flags: FpConfig::FAST_PATH,
        pad: 0,
    })
    .unwrap();
    let before = dp.stats().unwrap();
    let (act, out) = run(&dp, &ack);
    assert_eq!(act, xdp_action::REDIRECT);
    assert_eq!(&out[0..6], &dmac, "rewritten by XDP");
    assert_eq!(out[14 + 8], ack[14 + 8] - 1, "TTL decremented");
    let d = dp.stats().unwrap().since(&before);
    assert_eq!(d.verdict(FpVerdict::FastPath), 1);
    assert_eq!(d.verdict(FpVerdict::Redirect), 0);
    assert_eq!(d.flow(FpFlowStat::Hit), 1);
    let e = dp.flow4_get(&key).unwrap().unwrap();
    assert_eq!(e.packets, 1);
    assert_eq!(e.bytes, 36, "IPv4 total length");
    assert!(e.seen_ns >= entry.seen_ns);
    let per_if = dp.fastif().unwrap();
    let lo = per_if.iter().find(|(i, _)| *i == LO_IFINDEX).unwrap().1;
    assert_eq!((lo.rx_packets, lo.tx_packets), (1, 1));
    assert_eq!((lo.rx_bytes, lo.tx_bytes), (36, 36));

    // SYN, FIN, RST: the engine keeps the session state.
    for flags in [0x02, 0x11, 0x04, 0x12] {
        let before = dp.stats().unwrap();
        let (act, out) = run(&dp, &tcp(flags));
        assert_eq!(act, xdp_action::REDIRECT);
        assert_eq!(out, tcp(flags), "untouched (flags {flags:#x})");
        let d = dp.stats().unwrap().since(&before);
        assert_eq!(d.verdict(FpVerdict::Redirect), 1, "flags {flags:#x}");
        assert_eq!(d.flow(FpFlowStat::Control), 1, "flags {flags:#x}");
    }

    // Longer than the output MTU: the engine (fragmentation, frag-needed).
    dp.set_flow4(key, FpFlow4 { mtu: 30, ..entry }).unwrap();
    let before = dp.stats().unwrap();
    assert_eq!(run(&dp, &ack).0, xdp_action::REDIRECT);
    let d = dp.stats().unwrap().since(&before);
    assert_eq!(d.verdict(FpVerdict::Redirect), 1);
    assert_eq!(d.flow(FpFlowStat::Uncacheable), 1);
    dp.set_flow4(key, entry).unwrap();

    // Another flow: a miss, to the engine.
    let before = dp.stats().unwrap();
    assert_eq!(
        run(&dp, &service_frame(POD_A, 6, 5001, 0, 0)).0,
        xdp_action::REDIRECT
    );
    let d = dp.stats().unwrap().since(&before);
    assert_eq!(
        (d.verdict(FpVerdict::Redirect), d.flow(FpFlowStat::Miss)),
        (1, 1)
    );

    // A stale entry: to the engine.
    let old = ferroplane_bpf::monotonic_ns().saturating_sub(121_000_000_000);
    dp.set_flow4(
        key,
        FpFlow4 {
            seen_ns: old,
            ..entry
        },
    )
    .unwrap();
    let before = dp.stats().unwrap();
    assert_eq!(run(&dp, &ack).0, xdp_action::REDIRECT);
    let d = dp.stats().unwrap().since(&before);
    assert_eq!(
        (d.verdict(FpVerdict::Redirect), d.flow(FpFlowStat::Stale)),
        (1, 1)
    );
    dp.set_flow4(key, entry).unwrap();

    // A trace is active: every packet to the engine.
    dp.set_config(FpConfig {
        flags: FpConfig::FAST_PATH | FpConfig::TRACE,
        pad: 0,
    })
    .unwrap();
    let before = dp.stats().unwrap();
    assert_eq!(run(&dp, &ack).0, xdp_action::REDIRECT);
    let d = dp.stats().unwrap().since(&before);
    assert_eq!(d.verdict(FpVerdict::Redirect), 1);
    assert_eq!(d.flow(FpFlowStat::Bypass), 1);
    assert_eq!(d.verdict(FpVerdict::FastPath), 0);

    // Counters clear, entries go.
    dp.clear_stats().unwrap();
    assert!(dp.fastif().unwrap().is_empty());
    assert!(dp.remove_flow4(&key).unwrap());
    assert!(!dp.remove_flow4(&key).unwrap());
    assert_eq!(dp.flow4_get(&key).unwrap(), None);
}

/// Source validation holds on the fast path: a `flow4` entry takes only frames with the
/// MACs the engine's `ethernet-input` accepts for the flow (sent to the interface's own MAC;
/// with `SRC_MAC`, a pod interface, from the pod's own MAC). A frame with the flow's tuple
/// but another source or destination MAC goes to the engine (which drops a pod's spoofed
/// frame and counts it) while the engine runs, and is dropped (fail closed) while it is
/// away; it is never forwarded by XDP.
#[test]
fn flow_cache_takes_only_frames_with_the_flows_macs() {
    if !require_root() {
        return;
    }
    let key = FpFlow4Key {
        saddr: PEER.octets(),
        daddr: POD_A.octets(),
        sport: 40000u16.to_be_bytes(),
        dport: 5000u16.to_be_bytes(),
        proto: 17,
        pad: [0; 3],
    };
    let entry = FpFlow4 {
        ifindex: LO_IFINDEX,
        dmac: [0x02, 0xaa, 0, 0, 0, 0x0a],
        smac: [0x02, 0xbb, 0, 0, 0, 0x0b],
        saddr: key.saddr,
        daddr: key.daddr,
        sport: key.sport,
        dport: key.dport,
        flags: FpFlow4::SRC_MAC,
        in_ifindex: LO_IFINDEX,
        mtu: 1500,
        in_dmac: HOST_MAC,
        in_smac: POD_MAC,
        pad: 0,
        seen_ns: ferroplane_bpf::monotonic_ns(),
        packets: 0,
        bytes: 0,
    };
    // `service_frame` is sent by POD_MAC to HOST_MAC.
    let good = service_frame(POD_A, 17, 5000, 0, 0);
    let mut other_src = good.clone();
    other_src[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x66]);
    let mut other_dst = good.clone();
    other_dst[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
    let run = |dp: &Dataplane, f: &[u8]| dp.prog_test_run(XdpProg::Uplink, f).unwrap();

    // Steady state (the engine runs, fast path on).
    let (mut dp, _sock) = prepare(Setup::WithSocket);
    dp.set_config(FpConfig {
        flags: FpConfig::FAST_PATH,
        pad: 0,
    })
    .unwrap();
    dp.set_flow4(key, entry).unwrap();
    let before = dp.stats().unwrap();
    let (act, out) = run(&dp, &good);
    assert_eq!(act, xdp_action::REDIRECT);
    assert_eq!(
        &out[0..6],
        &entry.dmac,
        "the flow's frame: forwarded by XDP"
    );
    let d = dp.stats().unwrap().since(&before);
    assert_eq!(
        (d.verdict(FpVerdict::FastPath), d.flow(FpFlowStat::Hit)),
        (1, 1)
    );
    for (what, frame) in [("source", &other_src), ("destination", &other_dst)] {
        let before = dp.stats().unwrap();
        let (act, out) = run(&dp, frame);
        assert_eq!(act, xdp_action::REDIRECT, "another {what} MAC");
        assert_eq!(&out, frame, "another {what} MAC: untouched, to the engine");
        let d = dp.stats().unwrap().since(&before);
        assert_eq!(d.verdict(FpVerdict::Redirect), 1, "another {what} MAC");
        assert_eq!(d.verdict(FpVerdict::FastPath), 0, "another {what} MAC");
        assert_eq!(d.flow(FpFlowStat::WrongMac), 1, "another {what} MAC");
    }
    // Without SRC_MAC (an uplink's entry: the engine checks no source MAC there) any
    // source passes, the destination MAC is still checked.
    dp.set_flow4(key, FpFlow4 { flags: 0, ..entry }).unwrap();
    let before = dp.stats().unwrap();
    assert_eq!(run(&dp, &other_src).0, xdp_action::REDIRECT);
    assert_eq!(run(&dp, &other_dst).0, xdp_action::REDIRECT);
    let d = dp.stats().unwrap().since(&before);
    assert_eq!(
        d.verdict(FpVerdict::FastPath),
        1,
        "only the right destination"
    );
    assert_eq!(d.flow(FpFlowStat::WrongMac), 1);

    // Engine away: the flow's frames are replayed, the others dropped (fail closed).
    let (mut dp, _) = prepare(Setup::Standard);
    dp.set_flow4(key, entry).unwrap();
    let before = dp.stats().unwrap();
    assert_eq!(run(&dp, &good).0, xdp_action::REDIRECT);
    assert_eq!(run(&dp, &other_src).0, xdp_action::DROP);
    assert_eq!(run(&dp, &other_dst).0, xdp_action::DROP);
    let d = dp.stats().unwrap().since(&before);
    assert_eq!(d.verdict(FpVerdict::FlowCache), 1);
    assert_eq!(d.verdict(FpVerdict::EngineAway), 2);
}
