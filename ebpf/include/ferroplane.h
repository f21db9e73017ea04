/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferroplane.h: types shared between the XDP programs and userspace.
 *
 * This header is the single source of truth. ferroplane-common (Rust):
 *   - generates its enums (FpVerdict, FpDropReason, FpSteerKind, FpIfaceFlag) and
 *     FP_* limit constants from this file in build.rs, so they are never kept in
 *     sync by hand;
 *   - mirrors the structs with #[repr(C)] types and checks their size and field
 *     offsets against this header (compiled with the host C compiler) in a test.
 *
 * Parser rules (userspace/common/build.rs): one enumerator per line, optional
 * "= value", then a one-line C comment that becomes the description. Counter
 * enums end with a <PREFIX>MAX entry that sizes the counter array.
 * Fields in network byte order are __be16/__be32.
 */
#ifndef FERROPLANE_H
#define FERROPLANE_H

#include <linux/types.h>

/* Number of slots in the xsks XSKMAP (interface base slot + rx queue). */
#define FP_MAX_XSKS 256
/* Capacity of the ifaces hash (ifindex -> struct fp_iface). */
#define FP_MAX_IFACES 1024
/* Capacity of the steer4 LPM trie (pod CIDRs, and a /32 per service external or load-balancer IP). */
#define FP_MAX_STEER4 65536
/* Capacity of the host4 hash (node's own IPv4 addresses). */
#define FP_MAX_HOST4 256
/* Capacity of the tunnel4 hash (tunnel protocols/ports decapsulated by the engine). */
#define FP_MAX_TUNNEL4 16
/* Capacity of the ports4 hash (NodePorts and SNAT ports on the node's addresses). */
#define FP_MAX_PORTS4 32768
/* Capacity of the flow4 LRU hash (established flows the XDP programs forward themselves). */
#define FP_MAX_FLOW4 65536
/* A flow4 entry not used or refreshed for this long (ns) is ignored (and left to the LRU). */
#define FP_FLOW4_IDLE_NS 120000000000ULL
/* Capacity of the fastif per-CPU hash (fast-path counters per kernel interface). */
#define FP_MAX_FASTIF 1024
/* ports4 value: a service NodePort. */
#define FP_PORT_NODEPORT 1
/* ports4 value: a port of the SNAT range (return traffic of translated flows). */
#define FP_PORT_SNAT 2

/* Value of the ifaces map: how the engine sees one interface. */
struct fp_iface {
	__u32 xsk_slot; /* first xsks slot; the program adds ctx->rx_queue_index */
	__u32 flags;    /* enum fp_iface_flags bits */
	__u32 queues;   /* RX queues with a socket: slots xsk_slot .. xsk_slot + queues - 1 */
};

/* Key of the steer4 LPM trie (layout required by BPF_MAP_TYPE_LPM_TRIE). */
struct fp_lpm4 {
	__u32 prefixlen; /* 0..=32 significant leading bits of addr */
	__be32 addr;     /* IPv4 address, network byte order */
};

/*
 * Key of the flow4 map: the flow tuple of a packet as it arrives, the same
 * way the engine computes it: TCP/UDP/SCTP ports; ICMP echo request: id as
 * sport (dport 0); ICMP echo reply: id as dport (sport 0). Fragments and
 * other ICMP are never in the map.
 */
struct fp_flow4_key {
	__be32 saddr; /* source address */
	__be32 daddr; /* destination address */
	__be16 sport; /* source port (network order) or echo id */
	__be16 dport; /* destination port (network order) or echo id */
	__u8 proto;   /* IP protocol */
	__u8 pad[3];  /* zero */
};

/*
 * Value of the flow4 map: what the engine did with that flow: the tuple it
 * left with (different from the key when the engine translated it: service
 * DNAT, SNAT, masquerade; TCP and UDP only), TTL decremented, these MACs, out
 * of ifindex. Written by the agent from the engine's forwarding decisions
 * (established flows only). Used by the XDP programs only for a frame that
 * the engine's ethernet-input would accept as the flow's: arriving on
 * in_ifindex (a pod cannot replay another pod's flow by forging its tuple),
 * sent to in_dmac (the interface's own MAC) and, with FP_FLOW4_SRC_MAC (pod
 * interfaces), from in_smac (the pod's own MAC: a frame with the pod's address
 * but another source MAC goes to the engine, which drops it as spoofed):
 *   - in steady state (fp_config FP_CFG_FAST_PATH, no trace active): the
 *     flow's packets other than TCP SYN/FIN/RST are forwarded by XDP without
 *     crossing AF_XDP (the fast path), which updates seen_ns, packets, bytes;
 *   - while the engine's AF_XDP socket for the ingress interface is missing
 *     (agent restarting or dead): established flows keep forwarding and new
 *     ones are dropped (fail closed).
 */
struct fp_flow4 {
	__u32 ifindex;  /* output interface (node's namespace) */
	__u8 dmac[6];   /* destination MAC to write */
	__u8 smac[6];   /* source MAC to write */
	__be32 saddr;   /* source address to write */
	__be32 daddr;   /* destination address to write */
	__be16 sport;   /* source port to write (network order) */
	__be16 dport;   /* destination port to write (network order) */
	__u32 flags;    /* FP_FLOW4_NAT when the tuple changes */
	__u32 in_ifindex; /* interface the engine received the flow on: replayed only for frames arriving there */
	__u32 mtu;      /* IP MTU of the output interface: longer packets go to the engine (0: unchecked) */
	__u8 in_dmac[6]; /* destination MAC frames of the flow arrive with (the ingress interface's own) */
	__u8 in_smac[6]; /* source MAC frames of the flow arrive with, checked with FP_FLOW4_SRC_MAC */
	__u32 pad;      /* zero */
	__u64 seen_ns;  /* last refresh by the agent or use by XDP (CLOCK_MONOTONIC ns) */
	__u64 packets;  /* packets XDP forwarded from this entry */
	__u64 bytes;    /* bytes (IPv4 total length) XDP forwarded from this entry */
};

/* fp_flow4.flags: rewrite addresses and ports (with the checksums). */
#define FP_FLOW4_NAT 1
/* fp_flow4.flags: frames must come from in_smac (a pod interface: the pod's own MAC). */
#define FP_FLOW4_SRC_MAC 2

/* Value of the config array (one entry, key 0): the agent's switches for the XDP programs. */
struct fp_config {
	__u32 flags; /* FP_CFG_* bits */
	__u32 pad;   /* zero */
};

/* fp_config.flags: forward established flows from flow4 while the engine runs (the fast path). */
#define FP_CFG_FAST_PATH 1
/* fp_config.flags: a packet trace is active: every packet goes to the engine (fast path bypassed). */
#define FP_CFG_TRACE 2

/* Value of the fastif per-CPU hash (key: kernel ifindex): packets the fast path took in and sent out. */
struct fp_if_count {
	__u64 rx_packets; /* forwarded by the fast path, arrived on this interface */
	__u64 rx_bytes;   /* their bytes (IPv4 total length) */
	__u64 tx_packets; /* forwarded by the fast path out of this interface */
	__u64 tx_bytes;   /* their bytes (IPv4 total length) */
};

/* Bits of struct fp_iface.flags. */
enum fp_iface_flags {
	FP_IF_UPLINK = 1, /* the node's uplink (xdp_uplink attached) */
	FP_IF_POD = 2,    /* host side of a pod veth (xdp_pod attached) */
};

/* Values of the steer4 map: why a destination prefix goes to the engine. */
enum fp_steer_kind {
	FP_STEER_POD_CIDR = 1, /* a pod CIDR of this node */
	FP_STEER_SERVICE = 2,  /* a service (virtual) address range; reserved */
	FP_STEER_TUNNEL = 3,   /* overlay tunnel endpoint traffic; reserved */
};

/*
 * Index of the verdicts per-CPU counters: exactly one per packet seen.
 * Fail closed: a frame meant for the engine that neither the engine's socket
 * nor the flow4 cache takes is dropped (engine_away), never handed to the
 * kernel, which forwards pod traffic when net.ipv4.ip_forward=1; only a pod's
 * ARP request falls back to the kernel (redirect_failed: ARP is never forwarded).
 */
enum fp_verdict {
	FP_VERDICT_PASS = 0,        /* handed to the kernel network stack (the node's own traffic, ARP) */
	FP_VERDICT_REDIRECT,        /* redirected to the engine's AF_XDP socket */
	FP_VERDICT_DROP,            /* dropped in XDP (frame from a pod shorter than an Ethernet header) */
	FP_VERDICT_REDIRECT_FAILED, /* ARP request from a pod, engine away (no usable socket): passed to the kernel, which never forwards ARP */
	FP_VERDICT_FLOW_CACHE,      /* engine away: forwarded by XDP from the flow4 cache */
	FP_VERDICT_ENGINE_AWAY,     /* meant for the engine, no usable socket and no flow4 entry: dropped (fail closed) */
	FP_VERDICT_FAST_PATH,       /* engine running: an established flow forwarded by XDP from the flow4 cache */
	FP_VERDICT_MAX,
};

/*
 * Index of the drops (reason) per-CPU counters: why a packet was dropped, or
 * was not handled as intended (on the uplink, malformed frames are passed to
 * the kernel, whose IPv4 input drops exactly those, and only counted here;
 * the no_iface/xsk_slot_range/no_xsk reasons say why the engine could not
 * take a frame counted as engine_away or redirect_failed).
 */
enum fp_drop_reason {
	FP_DROP_NONE = 0,        /* no reason (never counted) */
	FP_DROP_TRUNCATED_ETH,   /* frame shorter than an Ethernet header */
	FP_DROP_TRUNCATED_IP,    /* IPv4 header or total length beyond the end of the frame */
	FP_DROP_BAD_IP_HEADER,   /* IPv4 version not 4, IHL below 5, or total length below header length */
	FP_DROP_TRUNCATED_ARP,   /* ARP header beyond the end of the frame */
	FP_DROP_NO_IFACE,        /* ingress interface not in the ifaces map */
	FP_DROP_XSK_SLOT_RANGE,  /* xsk_slot + rx queue index outside the xsks map */
	FP_DROP_NO_XSK,          /* no AF_XDP socket in the xsks slot */
	FP_DROP_XSK_QUEUE_RANGE, /* rx queue index >= the interface's queues (would be a neighbour's slot) */
	FP_DROP_MAX,
};

/*
 * Index of the flowstats per-CPU counters: what the fast path did with a
 * packet meant for the engine while FP_CFG_FAST_PATH is on (hit, or why it
 * went to the engine).
 */
enum fp_flow_stat {
	FP_FLOW_HIT = 0,       /* forwarded by XDP from the flow4 cache */
	FP_FLOW_MISS,          /* no flow4 entry for the tuple on this ingress interface */
	FP_FLOW_STALE,         /* flow4 entry idle for longer than FP_FLOW4_IDLE_NS */
	FP_FLOW_CONTROL,       /* TCP SYN, FIN or RST: to the engine, which keeps the session state */
	FP_FLOW_UNCACHEABLE,   /* not IPv4 TCP/UDP/SCTP/ICMP echo, a fragment, TTL <= 1, or longer than the MTU */
	FP_FLOW_BYPASS,        /* a packet trace is active: every packet to the engine */
	FP_FLOW_WRONG_MAC,     /* Ethernet destination or (pod) source not the flow's: to the engine, which validates it */
	FP_FLOW_MAX,
};

#endif /* FERROPLANE_H */
