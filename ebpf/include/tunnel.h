/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tunnel.h: overlay tunnel traffic addressed to the node itself (IPIP,
 * VXLAN, WireGuard) that xdp_uplink steers to the engine for decapsulation
 * instead of passing it to the kernel with the rest of the host's traffic.
 */
#ifndef FP_TUNNEL_H
#define FP_TUNNEL_H

#include <linux/bpf.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ferroplane.h"
#include "maps.h"

/* Key of the tunnel4 map: IP protocol << 16 | UDP destination port (host order; 0 for IPIP). */
static __always_inline __u32 fp_tunnel_key(__u8 proto, __u16 port)
{
	return ((__u32)proto << 16) | port;
}

/*
 * True if the IPv4 packet at iph (header already validated by fp_parse_ipv4,
 * l4 at the cursor position l4) is tunnel traffic the engine decapsulates:
 * IP protocol 4, or UDP to a port in tunnel4.
 */
static __always_inline int fp_is_tunnel4(struct iphdr *iph, void *l4, void *data_end)
{
	struct udphdr *udp = l4;
	__u32 key;

	if (iph->protocol == 4) {
		key = fp_tunnel_key(4, 0);
		return bpf_map_lookup_elem(&tunnel4, &key) != NULL;
	}
	if (iph->protocol != 17)
		return 0;
	if ((void *)(udp + 1) > data_end)
		return 0;
	key = fp_tunnel_key(17, bpf_ntohs(udp->dest));
	return bpf_map_lookup_elem(&tunnel4, &key) != NULL;
}

#endif /* FP_TUNNEL_H */
