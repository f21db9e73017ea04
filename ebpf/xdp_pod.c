// SPDX-License-Identifier: Apache-2.0
/*
 * xdp_pod: attached to the host side of every pod veth.
 *
 * The engine polices and routes everything a pod sends, except what is for
 * the node's kernel itself:
 *   - ARP reply                           -> PASS (the kernel's neighbour resolution toward pods)
 *   - TCP/UDP to a NodePort (ports4 FP_PORT_NODEPORT: service node ports, hostPorts) or to a
 *     port of the SNAT range (FP_PORT_SNAT: answers to connections the engine translated to
 *     the node's address, such as the node's own connections to services) on one of the
 *     node's addresses -> REDIRECT (the engine translates it, as from the uplink)
 *   - other IPv4 to one of the node's addresses -> PASS (local delivery: pod -> node traffic
 *                                            and the pod's answers to node -> pod traffic
 *                                            such as kubelet probes)
 *   - everything else (ARP requests, IPv4, IPv6, any other type) -> REDIRECT to the engine
 *   - truncated/malformed ARP or IPv4 -> REDIRECT too, with the reason counted
 *     here: the engine validates every pod packet and drops these with its own
 *     per-node error counter, so `ferroctl show errors` names the exact fault.
 *   - a frame shorter than an Ethernet header -> DROP (nothing to steer by).
 *
 * Fail closed, whatever the node's sysctls: when the engine is away (no
 * socket for this veth: the agent is restarting or dead), a frame meant for
 * it is forwarded from the flow4 cache if the engine forwarded its flow from
 * this veth recently, and is otherwise DROPPED (verdict engine_away). It is
 * never passed to the kernel, which would route pod traffic to other pods or
 * out of the node with no policy when net.ipv4.ip_forward=1 (as on every
 * Kubernetes node). A well-formed ARP request alone falls back to the kernel
 * (redirect_failed): the kernel never forwards ARP and answers only for its
 * own addresses.
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
#include "services.h"

SEC("xdp")
int xdp_pod(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct fp_cursor cur = { .pos = (void *)(long)ctx->data };
	struct fp_arphdr *arp;
	struct ethhdr *eth;
	struct iphdr *iph;
	int rc;

	if (fp_parse_eth(&cur, data_end, &eth) != FP_PARSE_OK) {
		fp_count_reason(FP_DROP_TRUNCATED_ETH);
		return fp_finish(FP_VERDICT_DROP, XDP_DROP);
	}

	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		if (fp_parse_arp(&cur, data_end, &arp) != FP_PARSE_OK) {
			fp_count_reason(FP_DROP_TRUNCATED_ARP);
			return fp_redirect_to_engine(ctx, FP_AWAY_DROP);
		}
		if (arp->op == bpf_htons(FP_ARPOP_REPLY))
			return fp_finish(FP_VERDICT_PASS, XDP_PASS);
		return fp_redirect_to_engine(ctx, FP_AWAY_KERNEL);
	}

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		rc = fp_parse_ipv4(&cur, data_end, &iph);
		if (rc != FP_PARSE_OK) {
			fp_count_reason(rc == FP_PARSE_TRUNCATED ? FP_DROP_TRUNCATED_IP
								 : FP_DROP_BAD_IP_HEADER);
			return fp_redirect_to_engine(ctx, FP_AWAY_DROP);
		}
		if (fp_is_host4(iph->daddr)) {
			/* A node port (service or hostPort) or a SNAT return is the engine's, from a pod too. */
			if (fp_is_engine_port4(iph, cur.pos, data_end))
				return fp_redirect_to_engine(ctx, FP_AWAY_DROP);
			return fp_finish(FP_VERDICT_PASS, XDP_PASS);
		}
	}
	return fp_redirect_to_engine(ctx, FP_AWAY_DROP);
}

/* The project licence; the programs use no GPL-only helpers. */
char LICENSE[] SEC("license") = "Apache-2.0";
