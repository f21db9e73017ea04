/*
 * Sink for forwarding benchmarks: drop everything in XDP (native mode), so the
 * sink namespace costs almost nothing and its interface's rx counters count what
 * arrived. Built by `cargo xtask bench` with:
 *   clang-19 -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu -c xdp_drop.c -o xdp_drop.o
 * and attached with `ip link set dev IF xdpdrv obj xdp_drop.o sec xdp`.
 */
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))

SEC("xdp")
int xdp_sink_drop(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
