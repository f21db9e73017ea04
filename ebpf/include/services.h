/* SPDX-License-Identifier: Apache-2.0 */
/*
 * services.h: service traffic addressed to the node itself that xdp_uplink
 * steers to the engine: NodePorts, and the return traffic of flows the engine
 * SNATed to the node's address (ports of the SNAT range, ICMP echo ids).
 */
#ifndef FP_SERVICES_H
#define FP_SERVICES_H

#include <linux/bpf.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ferroplane.h"
#include "maps.h"

/* The first 8 bytes of an ICMP echo message (linux/icmp.h drags in libc headers). */
struct fp_icmp_echo {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 seq;
};

/*
 * True if the IPv4 packet at iph (header validated by fp_parse_ipv4, l4 at
 * the cursor position) is TCP/UDP to a destination port in ports4, or an
 * ICMP echo reply whose id is in ports4 (under protocol 1). Non-first
 * fragments carry no ports and are not matched.
 */
static __always_inline int fp_is_service_port4(struct iphdr *iph, void *l4, void *data_end)
{
	__u16 port;
	__u32 key;

	if (iph->frag_off & bpf_htons(0x1fff))
		return 0;
	if (iph->protocol == 6 || iph->protocol == 17) {
		struct udphdr *udp = l4; /* ports at the same offsets in TCP */

		if ((void *)(udp + 1) > data_end)
			return 0;
		port = bpf_ntohs(udp->dest);
	} else if (iph->protocol == 1) {
		struct fp_icmp_echo *icmp = l4;

		if ((void *)(icmp + 1) > data_end)
			return 0;
		if (icmp->type != 0)
			return 0;
		port = bpf_ntohs(icmp->id);
	} else {
		return 0;
	}
	key = ((__u32)iph->protocol << 16) | port;
	return bpf_map_lookup_elem(&ports4, &key) != NULL;
}

/*
 * True if the IPv4 packet at iph is TCP/UDP (not a non-first fragment) to a
 * destination port that ports4 lists as a NodePort (FP_PORT_NODEPORT: service
 * node ports and the pods' hostPorts) or as a port of the SNAT range
 * (FP_PORT_SNAT: a local pod's answer to a connection the engine translated
 * to the node's address, e.g. the node's own connection to a service, which
 * the engine must restore). xdp_pod steers those to the engine when a pod
 * sends them to the node's address; the pods' answers to the node's other
 * connections (kubelet probes: ephemeral ports, outside the SNAT range) stay
 * with the kernel.
 */
static __always_inline int fp_is_engine_port4(struct iphdr *iph, void *l4, void *data_end)
{
	struct udphdr *udp = l4; /* ports at the same offsets in TCP */
	__u32 key, *kind;

	if (iph->frag_off & bpf_htons(0x1fff))
		return 0;
	if (iph->protocol != 6 && iph->protocol != 17)
		return 0;
	if ((void *)(udp + 1) > data_end)
		return 0;
	key = ((__u32)iph->protocol << 16) | bpf_ntohs(udp->dest);
	kind = bpf_map_lookup_elem(&ports4, &key);
	return kind && (*kind == FP_PORT_NODEPORT || *kind == FP_PORT_SNAT);
}

#endif /* FP_SERVICES_H */
