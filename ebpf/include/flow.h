/* SPDX-License-Identifier: Apache-2.0 */
/*
 * flow.h: the flow4 cache. While the engine is away (its AF_XDP socket for the
 * ingress interface is missing: the agent is restarting or dead), a packet of
 * a flow the engine forwarded recently, arriving on the interface the engine
 * saw it arrive on, is forwarded here the way the engine did it: TTL
 * decremented, the engine's MACs written, out of the engine's interface.
 * Anything else fails closed: the caller (steer.h) drops it, whatever the
 * kernel's ip_forward. Translated TCP/UDP flows (services, masquerade) are
 * replayed with their addresses and ports; fragments, ICMP other than echo
 * and translated ICMP never are.
 */
#ifndef FP_FLOW_H
#define FP_FLOW_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ferroplane.h"
#include "maps.h"
#include "parse.h"

/* ICMP echo header prefix (type, code, checksum, id). */
struct fp_flow_icmp {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
};

/* RFC 1624 incremental update of a 16-bit one's complement checksum: from -> to. */
static __always_inline __u16 fp_csum16(__u16 sum, __u16 from, __u16 to)
{
	__u32 c = (__u16)~sum;

	c += (__u16)~from;
	c += to;
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)~c;
}

/* The same for a 32-bit field (two 16-bit halves, any byte order as long as it matches). */
static __always_inline __u16 fp_csum32(__u16 sum, __u32 from, __u32 to)
{
	sum = fp_csum16(sum, (__u16)(from >> 16), (__u16)(to >> 16));
	return fp_csum16(sum, (__u16)from, (__u16)to);
}

/*
 * Rewrites addresses and ports of a TCP/UDP packet to the entry's tuple, with
 * the IPv4 and layer-4 checksums (a zero UDP checksum stays zero). Returns -1
 * if the layer-4 header is not there.
 */
static __always_inline int fp_flow_nat(struct iphdr *iph, void *l4, void *data_end,
				       struct fp_flow4 *f)
{
	__u16 *l4sum;
	struct udphdr *ports = l4;
	int udp_zero;

	if ((void *)(ports + 1) > data_end)
		return -1;
	if (iph->protocol == 6) {
		/* TCP checksum at offset 16 */
		if (l4 + 18 > data_end)
			return -1;
		l4sum = l4 + 16;
	} else {
		l4sum = (__u16 *)&ports->check;
	}
	udp_zero = iph->protocol == 17 && *l4sum == 0;
	if (!udp_zero) {
		__u16 c = *l4sum;

		c = fp_csum32(c, iph->saddr, f->saddr);
		c = fp_csum32(c, iph->daddr, f->daddr);
		c = fp_csum16(c, ports->source, f->sport);
		c = fp_csum16(c, ports->dest, f->dport);
		if (iph->protocol == 17 && c == 0)
			c = 0xffff;
		*l4sum = c;
	}
	iph->check = fp_csum32(iph->check, iph->saddr, f->saddr);
	iph->check = fp_csum32(iph->check, iph->daddr, f->daddr);
	iph->saddr = f->saddr;
	iph->daddr = f->daddr;
	ports->source = f->sport;
	ports->dest = f->dport;
	return 0;
}

/*
 * Forwards the frame from the flow4 cache. Returns XDP_REDIRECT (counted) on
 * a hit, -1 on a miss (nothing changed).
 */
static __always_inline int fp_flow_forward(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct fp_cursor cur = { .pos = (void *)(long)ctx->data };
	struct fp_flow4_key key = {};
	struct fp_flow4 *f;
	struct ethhdr *eth;
	struct iphdr *iph;
	__u64 now;
	__u32 csum;

	if (fp_parse_eth(&cur, data_end, &eth) != FP_PARSE_OK)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	if (fp_parse_ipv4(&cur, data_end, &iph) != FP_PARSE_OK)
		return -1;
	if (iph->frag_off & bpf_htons(0x3fff)) /* MF or an offset: a fragment */
		return -1;
	if (iph->ttl <= 1)
		return -1;
	key.saddr = iph->saddr;
	key.daddr = iph->daddr;
	key.proto = iph->protocol;
	if (iph->protocol == 6 || iph->protocol == 17 || iph->protocol == 132) {
		struct udphdr *l4 = cur.pos; /* ports at the same offsets in TCP and SCTP */

		if ((void *)(l4 + 1) > data_end)
			return -1;
		key.sport = l4->source;
		key.dport = l4->dest;
	} else if (iph->protocol == 1) {
		struct fp_flow_icmp *icmp = cur.pos;

		if ((void *)(icmp + 1) > data_end)
			return -1;
		if (icmp->type == 8)
			key.sport = icmp->id;
		else if (icmp->type == 0)
			key.dport = icmp->id;
		else
			return -1;
	} else {
		return -1;
	}

	f = bpf_map_lookup_elem(&flow4, &key);
	if (!f)
		return -1;
	/* Only where the engine saw the flow arrive: a pod forging another pod's tuple gets nothing. */
	if (f->in_ifindex != ctx->ingress_ifindex)
		return -1;
	now = bpf_ktime_get_ns();
	if (now - f->seen_ns > FP_FLOW4_IDLE_NS)
		return -1;
	f->seen_ns = now;
	if (f->flags & FP_FLOW4_NAT) {
		if (iph->protocol != 6 && iph->protocol != 17)
			return -1;
		if (fp_flow_nat(iph, cur.pos, data_end, f) != 0)
			return -1;
	}

	/* TTL - 1 with the incremental checksum update of RFC 1624 (as ip_decrease_ttl). */
	csum = (__u32)iph->check + (__u32)bpf_htons(0x0100);
	iph->check = (__sum16)(csum + (csum >= 0xffff));
	iph->ttl -= 1;
	__builtin_memcpy(eth->h_dest, f->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, f->smac, ETH_ALEN);
	fp_count_verdict(FP_VERDICT_FLOW_CACHE);
	return bpf_redirect(f->ifindex, 0);
}

#endif /* FP_FLOW_H */
