/* SPDX-License-Identifier: Apache-2.0 */
/*
 * flow.h: the flow4 cache. The engine reports the established flows it
 * forwards; the agent writes them here. A packet of such a flow, arriving on
 * the interface the engine saw it arrive on, is forwarded by XDP the way the
 * engine did it: translated (TCP/UDP services, masquerade: addresses, ports,
 * both checksums), TTL decremented, the engine's MACs written, out of the
 * engine's interface (bpf_redirect). Two modes:
 *   - steady state (fp_config FP_CFG_FAST_PATH, no trace active; the fast
 *     path): the engine runs, XDP takes the flow's packets itself except TCP
 *     SYN/FIN/RST (the engine keeps the session state exact and removes the
 *     entries of a closing connection), fragments, ICMP errors, packets longer
 *     than the output MTU and stale entries, which all go to the engine;
 *   - engine away (its AF_XDP socket for the ingress interface is missing:
 *     the agent is restarting or dead): any packet of a cached flow is
 *     forwarded; anything else fails closed (the caller, steer.h, drops it,
 *     whatever the kernel's ip_forward).
 * Fragments, ICMP other than echo and translated ICMP are never replayed. In
 * both modes a frame is the flow's only if it arrives where the engine saw
 * the flow arrive, with the MACs the engine's ethernet-input accepts there
 * (the interface's own as destination; a pod's own as source).
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

/* True if the two 6-byte MACs are equal (no branch per byte, no helper call). */
static __always_inline int fp_mac_eq(const __u8 *a, const __u8 *b)
{
	__u8 d = 0;

#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

/* Counts one packet under enum fp_flow_stat s. */
static __always_inline void fp_count_flow(__u32 s)
{
	__u64 *c = bpf_map_lookup_elem(&flowstats, &s);

	if (c)
		*c += 1;
}

/* Counts a fast-path packet of `bytes` bytes on interface ifindex (in or out). */
static __always_inline void fp_count_if(__u32 ifindex, int out, __u64 bytes)
{
	struct fp_if_count *c = bpf_map_lookup_elem(&fastif, &ifindex);

	if (!c) {
		struct fp_if_count zero = {};

		bpf_map_update_elem(&fastif, &ifindex, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&fastif, &ifindex);
		if (!c)
			return;
	}
	if (out) {
		c->tx_packets += 1;
		c->tx_bytes += bytes;
	} else {
		c->rx_packets += 1;
		c->rx_bytes += bytes;
	}
}

/* How fp_flow_forward uses the cache. */
enum fp_flow_mode {
	FP_FLOW_MODE_AWAY = 0,   /* the engine's socket is missing: replay any packet of the flow */
	FP_FLOW_MODE_STEADY = 1, /* the engine runs: the fast path (not TCP SYN/FIN/RST) */
};

/* TCP flags that always go to the engine in steady state: FIN, SYN, RST. */
#define FP_TCP_CONTROL 0x07

/*
 * Forwards the frame from the flow4 cache. Returns XDP_REDIRECT (counted) on
 * a hit; on a miss, minus the enum fp_flow_stat saying why (nothing changed).
 */
static __always_inline int fp_flow_forward(struct xdp_md *ctx, enum fp_flow_mode mode)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct fp_cursor cur = { .pos = (void *)(long)ctx->data };
	struct fp_flow4_key key = {};
	struct fp_flow4 *f;
	struct ethhdr *eth;
	struct iphdr *iph;
	__u64 now;
	__u32 csum;
	__u16 len;

	if (fp_parse_eth(&cur, data_end, &eth) != FP_PARSE_OK)
		return -FP_FLOW_UNCACHEABLE;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return -FP_FLOW_UNCACHEABLE;
	if (fp_parse_ipv4(&cur, data_end, &iph) != FP_PARSE_OK)
		return -FP_FLOW_UNCACHEABLE;
	if (iph->frag_off & bpf_htons(0x3fff)) /* MF or an offset: a fragment */
		return -FP_FLOW_UNCACHEABLE;
	if (iph->ttl <= 1)
		return -FP_FLOW_UNCACHEABLE;
	key.saddr = iph->saddr;
	key.daddr = iph->daddr;
	key.proto = iph->protocol;
	if (iph->protocol == 6 || iph->protocol == 17 || iph->protocol == 132) {
		struct udphdr *l4 = cur.pos; /* ports at the same offsets in TCP and SCTP */

		if ((void *)(l4 + 1) > data_end)
			return -FP_FLOW_UNCACHEABLE;
		key.sport = l4->source;
		key.dport = l4->dest;
		if (mode == FP_FLOW_MODE_STEADY && iph->protocol == 6) {
			__u8 *flags = cur.pos + 13;

			if ((void *)(flags + 1) > data_end)
				return -FP_FLOW_UNCACHEABLE;
			if (*flags & FP_TCP_CONTROL)
				return -FP_FLOW_CONTROL;
		}
	} else if (iph->protocol == 1) {
		struct fp_flow_icmp *icmp = cur.pos;

		if ((void *)(icmp + 1) > data_end)
			return -FP_FLOW_UNCACHEABLE;
		if (icmp->type == 8)
			key.sport = icmp->id;
		else if (icmp->type == 0)
			key.dport = icmp->id;
		else
			return -FP_FLOW_UNCACHEABLE;
	} else {
		return -FP_FLOW_UNCACHEABLE;
	}

	f = bpf_map_lookup_elem(&flow4, &key);
	if (!f)
		return -FP_FLOW_MISS;
	/* Only where the engine saw the flow arrive: a pod forging another pod's tuple gets nothing. */
	if (f->in_ifindex != ctx->ingress_ifindex)
		return -FP_FLOW_MISS;
	/*
	 * Only frames the engine's ethernet-input would take as this flow's: sent to the
	 * interface's MAC and, from a pod, with the pod's own source MAC. A frame carrying
	 * a pod's address but another MAC goes to the engine, which drops it as spoofed.
	 */
	if (!fp_mac_eq(eth->h_dest, f->in_dmac))
		return -FP_FLOW_WRONG_MAC;
	if ((f->flags & FP_FLOW4_SRC_MAC) && !fp_mac_eq(eth->h_source, f->in_smac))
		return -FP_FLOW_WRONG_MAC;
	len = bpf_ntohs(iph->tot_len);
	if (f->mtu && len > f->mtu)
		return -FP_FLOW_UNCACHEABLE; /* the engine fragments or answers frag-needed */
	now = bpf_ktime_get_ns();
	if (now - f->seen_ns > FP_FLOW4_IDLE_NS)
		return -FP_FLOW_STALE;
	if (f->flags & FP_FLOW4_NAT) {
		if (iph->protocol != 6 && iph->protocol != 17)
			return -FP_FLOW_UNCACHEABLE;
		if (fp_flow_nat(iph, cur.pos, data_end, f) != 0)
			return -FP_FLOW_UNCACHEABLE;
	}
	f->seen_ns = now;
	__sync_fetch_and_add(&f->packets, 1);
	__sync_fetch_and_add(&f->bytes, len);

	/* TTL - 1 with the incremental checksum update of RFC 1624 (as ip_decrease_ttl). */
	csum = (__u32)iph->check + (__u32)bpf_htons(0x0100);
	iph->check = (__sum16)(csum + (csum >= 0xffff));
	iph->ttl -= 1;
	__builtin_memcpy(eth->h_dest, f->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, f->smac, ETH_ALEN);
	if (mode == FP_FLOW_MODE_STEADY) {
		fp_count_verdict(FP_VERDICT_FAST_PATH);
		fp_count_flow(FP_FLOW_HIT);
		fp_count_if(ctx->ingress_ifindex, 0, len);
		fp_count_if(f->ifindex, 1, len);
	} else {
		fp_count_verdict(FP_VERDICT_FLOW_CACHE);
	}
	return bpf_redirect(f->ifindex, 0);
}

#endif /* FP_FLOW_H */
