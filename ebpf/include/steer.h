/* SPDX-License-Identifier: Apache-2.0 */
/*
 * steer.h: counting and steering helpers shared by the XDP programs
 * (verdict/reason counters, host address test, redirect to the engine with
 * its fail-closed fallback: flow cache, else drop).
 */
#ifndef FP_STEER_H
#define FP_STEER_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ferroplane.h"
#include "maps.h"

/* Counts one packet under verdict v. */
static __always_inline void fp_count_verdict(__u32 v)
{
	__u64 *c = bpf_map_lookup_elem(&verdicts, &v);

	if (c)
		*c += 1;
}

/* Counts one packet under drop reason r. */
static __always_inline void fp_count_reason(__u32 r)
{
	__u64 *c = bpf_map_lookup_elem(&drops, &r);

	if (c)
		*c += 1;
}

/* Counts verdict v and returns the XDP action xdp_action (for "return fp_finish(...)"). */
static __always_inline int fp_finish(__u32 v, int xdp_action)
{
	fp_count_verdict(v);
	return xdp_action;
}

#include "flow.h"

/* True if the IPv4 address (network order) is one of the node's own. */
static __always_inline int fp_is_host4(__be32 addr)
{
	return bpf_map_lookup_elem(&host4, &addr) != NULL;
}

/* What fp_redirect_to_engine does with a frame neither the engine nor the flow cache takes. */
enum fp_away_action {
	FP_AWAY_DROP = 0,   /* XDP_DROP, verdict engine_away: fail closed (IPv4, IPv6, anything forwardable) */
	FP_AWAY_KERNEL = 1, /* XDP_PASS, verdict redirect_failed: only for ARP and fragments addressed to the node, which the kernel never forwards */
};

/*
 * With the fast path on (fp_config), a packet of an established flow in the
 * flow4 cache is forwarded by XDP itself (flow.h) and never reaches the engine.
 * Otherwise redirects the frame to the engine: xsks[ifaces[ingress].xsk_slot + rx queue]
 * (a queue >= ifaces[ingress].queues is never redirected: its slot is another
 * interface's).
 * When the interface is not configured or the slot has no socket (the engine
 * is away: the agent is restarting or dead), a flow the engine forwarded
 * recently on this ingress interface is forwarded from the flow4 cache
 * (flow.h); anything else is dropped (FP_AWAY_DROP) and never handed to the
 * kernel, which would forward it when net.ipv4.ip_forward=1 (fail closed,
 * whatever the node's sysctls), or, for ARP only (FP_AWAY_KERNEL), passed to
 * the kernel. Counts the verdict and the reason the engine could not take it.
 */
static __always_inline int fp_redirect_to_engine(struct xdp_md *ctx, enum fp_away_action away)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct fp_iface *iface;
	struct fp_config *cfg;
	__u32 zero = 0;
	__u32 reason;
	__u32 slot;
	long rc;
	int act;

	/* The fast path: an established flow the engine handed to the cache (flow.h). */
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg && (cfg->flags & FP_CFG_FAST_PATH)) {
		if (cfg->flags & FP_CFG_TRACE) {
			fp_count_flow(FP_FLOW_BYPASS);
		} else {
			act = fp_flow_forward(ctx, FP_FLOW_MODE_STEADY);
			if (act >= 0)
				return act;
			fp_count_flow(-act);
		}
	}

	iface = bpf_map_lookup_elem(&ifaces, &ifindex);
	if (!iface) {
		reason = FP_DROP_NO_IFACE;
		goto failed;
	}
	/* A queue past the interface's own range would land in another port's slot. */
	if (ctx->rx_queue_index >= iface->queues) {
		reason = FP_DROP_XSK_QUEUE_RANGE;
		goto failed;
	}
	slot = iface->xsk_slot + ctx->rx_queue_index;
	if (slot >= FP_MAX_XSKS) {
		reason = FP_DROP_XSK_SLOT_RANGE;
		goto failed;
	}
	/* The fallback action is only a marker: a failed redirect never leaves this function. */
	rc = bpf_redirect_map(&xsks, slot, XDP_PASS);
	if (rc == XDP_REDIRECT)
		return fp_finish(FP_VERDICT_REDIRECT, XDP_REDIRECT);
	reason = FP_DROP_NO_XSK;
failed:
	act = fp_flow_forward(ctx, FP_FLOW_MODE_AWAY);
	if (act >= 0)
		return act;
	fp_count_reason(reason);
	if (away == FP_AWAY_KERNEL)
		return fp_finish(FP_VERDICT_REDIRECT_FAILED, XDP_PASS);
	return fp_finish(FP_VERDICT_ENGINE_AWAY, XDP_DROP);
}

#endif /* FP_STEER_H */
