/* SPDX-License-Identifier: Apache-2.0 */
/*
 * parse.h: bounds-checked header parsing for XDP.
 *
 * Each helper checks that the whole header lies before data_end before it
 * reads any field, advances the cursor past the header on success, and
 * returns FP_PARSE_OK, FP_PARSE_TRUNCATED or FP_PARSE_MALFORMED.
 */
#ifndef FP_PARSE_H
#define FP_PARSE_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Outcome of a parse helper. */
enum fp_parse_result {
	FP_PARSE_OK = 0,
	FP_PARSE_TRUNCATED = -1, /* the header runs past data_end */
	FP_PARSE_MALFORMED = -2, /* the header is complete but invalid */
};

/* ARP operation codes (RFC 826). */
#define FP_ARPOP_REQUEST 1
#define FP_ARPOP_REPLY 2

/* Fixed part of an ARP header (the addresses follow, sized by hln/pln). */
struct fp_arphdr {
	__be16 hrd; /* hardware type (1 = Ethernet) */
	__be16 pro; /* protocol type (0x0800 = IPv4) */
	__u8 hln;   /* hardware address length */
	__u8 pln;   /* protocol address length */
	__be16 op;  /* operation: FP_ARPOP_* */
};

/* Read position in the packet. */
struct fp_cursor {
	void *pos;
};

/* Ethernet header at the cursor. */
static __always_inline int fp_parse_eth(struct fp_cursor *c, void *data_end, struct ethhdr **eth)
{
	struct ethhdr *h = c->pos;

	if ((void *)(h + 1) > data_end)
		return FP_PARSE_TRUNCATED;
	*eth = h;
	c->pos = h + 1;
	return FP_PARSE_OK;
}

/*
 * IPv4 header (with options) at the cursor. Checks version 4, IHL >= 5, that
 * the options and the total length fit in the frame (trailing padding is
 * allowed) and that the total length covers the header.
 */
static __always_inline int fp_parse_ipv4(struct fp_cursor *c, void *data_end, struct iphdr **iph)
{
	struct iphdr *h = c->pos;
	__u32 hdr_len;
	__u32 tot_len;

	if ((void *)(h + 1) > data_end)
		return FP_PARSE_TRUNCATED;
	if (h->version != 4 || h->ihl < 5)
		return FP_PARSE_MALFORMED;
	hdr_len = h->ihl * 4;
	if ((void *)h + hdr_len > data_end)
		return FP_PARSE_TRUNCATED;
	tot_len = bpf_ntohs(h->tot_len);
	if (tot_len < hdr_len)
		return FP_PARSE_MALFORMED;
	if ((void *)h + tot_len > data_end)
		return FP_PARSE_TRUNCATED;
	*iph = h;
	c->pos = (void *)h + hdr_len;
	return FP_PARSE_OK;
}

/* Fixed ARP header at the cursor (addresses are not needed by the programs). */
static __always_inline int fp_parse_arp(struct fp_cursor *c, void *data_end, struct fp_arphdr **arp)
{
	struct fp_arphdr *h = c->pos;

	if ((void *)(h + 1) > data_end)
		return FP_PARSE_TRUNCATED;
	*arp = h;
	c->pos = h + 1;
	return FP_PARSE_OK;
}

#endif /* FP_PARSE_H */
