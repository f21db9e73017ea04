/*
 * Bare XDP forwarding for the `cargo xtask bench forward` ceiling row: rewrite the
 * Ethernet addresses and bpf_redirect every frame to one interface, nothing else
 * (no parsing beyond the Ethernet header, no maps). The target and the addresses
 * are compiled in:
 *   clang-19 -O2 -target bpf -I/usr/include/x86_64-linux-gnu -DOUT_IFINDEX=N \
 *     -DDST_MAC=0x02,0x..,.. -DSRC_MAC=0x02,.. -c xdp_redirect.c -o xdp_redirect.o
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>

#define SEC(name) __attribute__((section(name), used))

static long (*bpf_redirect)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect;

SEC("xdp")
int xdp_bench_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	const unsigned char dst[ETH_ALEN] = { DST_MAC };
	const unsigned char src[ETH_ALEN] = { SRC_MAC };

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
	return bpf_redirect(OUT_IFINDEX, 0);
}

char _license[] SEC("license") = "GPL";
