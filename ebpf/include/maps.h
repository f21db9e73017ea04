/* SPDX-License-Identifier: Apache-2.0 */
/*
 * maps.h: the BPF maps shared by all ferroplane XDP programs.
 *
 * Every map is pinned by name (LIBBPF_PIN_BY_NAME): the loader points all
 * objects at one pin directory, so xdp_uplink and xdp_pod (separate objects)
 * share one instance of each map, and the agent can reopen them after a
 * restart.
 */
#ifndef FP_MAPS_H
#define FP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ferroplane.h"

/* xsks: slot -> AF_XDP socket fd (the engine's sockets, one per interface queue). */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, FP_MAX_XSKS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} xsks SEC(".maps");

/* ifaces: ingress ifindex -> struct fp_iface (base xsks slot and role flags). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct fp_iface);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ifaces SEC(".maps");

/* steer4: IPv4 destination prefix -> enum fp_steer_kind; xdp_uplink steers matches to the engine. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FP_MAX_STEER4);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_lpm4);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} steer4 SEC(".maps");

/* host4: the node's own IPv4 addresses (network order) -> unused value; traffic to them goes to the kernel. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_HOST4);
	__type(key, __be32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} host4 SEC(".maps");

/* verdicts: per-CPU packet count per enum fp_verdict. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_VERDICT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} verdicts SEC(".maps");

/* drops: per-CPU packet count per enum fp_drop_reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_DROP_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} drops SEC(".maps");

/* tunnel4: (IP protocol << 16 | UDP port) -> unused value; such traffic to a host4 address is steered to the engine (decap). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_TUNNEL4);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tunnel4 SEC(".maps");

/* ports4: (IP protocol << 16 | destination port, host order; ICMP: echo id) -> FP_PORT_*; such traffic to a host4 address is steered to the engine (NodePorts, SNAT return traffic). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_PORTS4);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ports4 SEC(".maps");

/* flow4: struct fp_flow4_key -> struct fp_flow4; established flows XDP forwards itself (fast path; engine away). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FP_MAX_FLOW4);
	__type(key, struct fp_flow4_key);
	__type(value, struct fp_flow4);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flow4 SEC(".maps");

/* config: key 0 -> struct fp_config, the agent's switches (fast path on, trace active). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

/* flowstats: per-CPU packet count per enum fp_flow_stat (fast-path hits and why packets missed it). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_FLOW_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flowstats SEC(".maps");

/* fastif: kernel ifindex -> per-CPU struct fp_if_count, fast-path packets per interface. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, FP_MAX_FASTIF);
	__type(key, __u32);
	__type(value, struct fp_if_count);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fastif SEC(".maps");

#endif /* FP_MAPS_H */
