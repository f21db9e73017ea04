// SPDX-License-Identifier: Apache-2.0
/*
 * xdp_uplink: attached to the node's uplink.
 *
 * IPv4 whose destination matches steer4 (this node's pod CIDR, service
 * addresses) goes to the engine through the xsks AF_XDP socket of the
 * ingress queue; the node's own traffic goes to the kernel:
 *   - non-IPv4 (ARP, IPv6, VLAN, ...)        -> PASS (the engine handles IPv4 only; no pod
 *                                               address is IPv6 or behind a VLAN of the node)
 *   - IPIP / UDP to a tunnel4 port, to the node -> REDIRECT (decap in the engine)
 *   - TCP/UDP/ICMP echo reply to a ports4 port, to the node -> REDIRECT (NodePort, SNAT return)
 *   - a fragment to the node                  -> REDIRECT (its first fragment tells the engine
 *                                               whether it is a NodePort's or a SNAT return;
 *                                               PASS when the engine is away)
 *   - IPv4 to one of the node's addresses     -> PASS
 *   - IPv4 matching steer4                    -> REDIRECT
 *   - other IPv4                              -> PASS (not for this node's pods or services)
 *   - truncated/malformed IPv4                -> PASS, reason counted (the kernel's IPv4
 *                                               input drops exactly these: never forwarded)
 *
 * Fail closed, whatever the node's sysctls: when the engine is away (no
 * socket for the queue: the agent is restarting or dead), what was meant for
 * it (pod and service addresses, tunnels, NodePorts, SNAT returns) is
 * forwarded from the flow4 cache if the engine forwarded that flow from the
 * uplink recently, and is otherwise DROPPED (verdict engine_away), never
 * passed to the kernel: with net.ipv4.ip_forward=1 the kernel would route it
 * to the pod (its /32 route) with no policy, or hand a NodePort to whatever
 * listens on the node.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ferroplane.h"
#include "maps.h"
#include "parse.h"
#include "steer.h"
#include "tunnel.h"
#include "services.h"

SEC("xdp")
int xdp_uplink(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct fp_cursor cur = { .pos = (void *)(long)ctx->data };
	struct fp_lpm4 key = { .prefixlen = 32 };
	struct ethhdr *eth;
	struct iphdr *iph;
	int rc;

	if (fp_parse_eth(&cur, data_end, &eth) != FP_PARSE_OK) {
		fp_count_reason(FP_DROP_TRUNCATED_ETH);
		return fp_finish(FP_VERDICT_PASS, XDP_PASS);
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return fp_finish(FP_VERDICT_PASS, XDP_PASS);

	rc = fp_parse_ipv4(&cur, data_end, &iph);
	if (rc != FP_PARSE_OK) {
		fp_count_reason(rc == FP_PARSE_TRUNCATED ? FP_DROP_TRUNCATED_IP : FP_DROP_BAD_IP_HEADER);
		return fp_finish(FP_VERDICT_PASS, XDP_PASS);
	}
	if (fp_is_host4(iph->daddr)) {
		/* Overlay traffic to the node (IPIP, VXLAN, WireGuard) is decapsulated by the engine. */
		if (fp_is_tunnel4(iph, cur.pos, data_end))
			return fp_redirect_to_engine(ctx, FP_AWAY_DROP);
		/* NodePorts and the return traffic of SNATed flows are the engine's. */
		if (fp_is_service_port4(iph, cur.pos, data_end))
			return fp_redirect_to_engine(ctx, FP_AWAY_DROP);
		/*
		 * Fragments to the node: the non-first ones carry no ports, so whether they
		 * belong to a NodePort or a SNAT return is known only from their first
		 * fragment, in the engine (ip4-frag); it punts the node's own back to the
		 * kernel. Engine away: passed (addressed to the node, never forwarded).
		 */
		if (iph->frag_off & bpf_htons(0x3fff))
			return fp_redirect_to_engine(ctx, FP_AWAY_KERNEL);
		return fp_finish(FP_VERDICT_PASS, XDP_PASS);
	}

	key.addr = iph->daddr;
	if (!bpf_map_lookup_elem(&steer4, &key))
		return fp_finish(FP_VERDICT_PASS, XDP_PASS);
	return fp_redirect_to_engine(ctx, FP_AWAY_DROP);
}

/* The project licence; the programs use no GPL-only helpers. */
char LICENSE[] SEC("license") = "Apache-2.0";
