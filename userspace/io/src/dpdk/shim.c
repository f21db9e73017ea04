/* SPDX-License-Identifier: Apache-2.0
 *
 * The C side of ferroplane's DPDK backend (userspace/io/src/dpdk/).
 *
 * DPDK's fast-path API (rte_eth_rx_burst, rte_eth_tx_burst, the rte_pktmbuf_*
 * helpers) consists of static inline functions over large structs whose layout
 * depends on the build configuration; Rust cannot call them directly. This file
 * wraps them, and the control-path calls that take big configuration structs
 * (port set-up), behind a small ABI of scalars, pointers and one plain
 * descriptor struct mirrored by `ffi.rs`.
 *
 * Frames are identified by an index (the engine's BufIdx). Every mbuf of the
 * pool carries its index in its private area (priv_size = 8), written once when
 * the pool is created; `table[index]` maps back to the mbuf.
 */
#include <errno.h>
#include <string.h>

#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

/* Mirrors `ffi::RawDesc`: a packet `len` bytes long starting `offset` bytes
 * into the data buffer of mbuf `buf`. */
struct fp_desc {
	uint32_t buf;
	uint16_t offset;
	uint16_t len;
};

/* Size of the per-mbuf private area holding the index (RTE_MBUF_PRIV_ALIGN). */
#define FP_PRIV_SIZE 8
/* Largest burst handed to the PMD at once. */
#define FP_CHUNK 64

static inline uint32_t fp_index(const struct rte_mbuf *m)
{
	return *(const uint32_t *)rte_mbuf_to_priv((struct rte_mbuf *)m);
}

int fp_dpdk_errno(void)
{
	return rte_errno;
}

const char *fp_dpdk_strerror(int err)
{
	return rte_strerror(err);
}

int fp_dpdk_eal_init(int argc, char **argv)
{
	return rte_eal_init(argc, argv);
}

const char *fp_dpdk_runtime_dir(void)
{
	return rte_eal_get_runtime_dir();
}

struct fp_index_ctx {
	struct rte_mbuf **table;
	void **buf_addrs;
	uint32_t cap;
	uint32_t n;
};

static void fp_index_obj(struct rte_mempool *mp, void *opaque, void *obj, unsigned obj_idx)
{
	struct fp_index_ctx *ctx = opaque;
	struct rte_mbuf *m = obj;
	(void)mp;
	(void)obj_idx;
	if (ctx->n < ctx->cap) {
		*(uint32_t *)rte_mbuf_to_priv(m) = ctx->n;
		ctx->table[ctx->n] = m;
		ctx->buf_addrs[ctx->n] = m->buf_addr;
	}
	ctx->n++;
}

/* Creates a packet mbuf pool of `n` mbufs with `data_room` bytes of buffer each
 * (headroom included) and numbers its mbufs: table[i] is mbuf i, buf_addrs[i]
 * its data buffer. Both arrays hold `n` entries. NULL on failure (rte_errno). */
struct rte_mempool *fp_dpdk_pool_create(const char *name, uint32_t n, uint32_t cache,
					uint16_t data_room, struct rte_mbuf **table,
					void **buf_addrs)
{
	struct rte_mempool *mp = rte_pktmbuf_pool_create(name, n, cache, FP_PRIV_SIZE,
							 data_room, SOCKET_ID_ANY);
	if (mp == NULL)
		return NULL;
	struct fp_index_ctx ctx = {.table = table, .buf_addrs = buf_addrs, .cap = n, .n = 0};
	rte_mempool_obj_iter(mp, fp_index_obj, &ctx);
	if (ctx.n != n) {
		rte_mempool_free(mp);
		rte_errno = EINVAL;
		return NULL;
	}
	return mp;
}

void fp_dpdk_pool_free(struct rte_mempool *mp)
{
	rte_mempool_free(mp);
}

uint32_t fp_dpdk_pool_avail(const struct rte_mempool *mp)
{
	return rte_mempool_avail_count(mp);
}

uint16_t fp_dpdk_headroom(void)
{
	return RTE_PKTMBUF_HEADROOM;
}

/* Receives up to `n` packets from (port, queue) into `out`. Packets that do
 * not fit one mbuf (chained) are freed and counted in `*chained`. */
uint16_t fp_dpdk_rx(uint16_t port, uint16_t queue, struct fp_desc *out, uint16_t n,
		    uint64_t *chained)
{
	struct rte_mbuf *pkts[FP_CHUNK];
	uint16_t done = 0;
	while (done < n) {
		uint16_t want = n - done < FP_CHUNK ? n - done : FP_CHUNK;
		uint16_t got = rte_eth_rx_burst(port, queue, pkts, want);
		for (uint16_t i = 0; i < got; i++) {
			struct rte_mbuf *m = pkts[i];
			if (m->nb_segs != 1) {
				rte_pktmbuf_free(m);
				(*chained)++;
				continue;
			}
			out[done].buf = fp_index(m);
			out[done].offset = m->data_off;
			out[done].len = m->data_len;
			done++;
		}
		if (got < want)
			break;
	}
	return done;
}

/* Sends `pkts` on (port, queue): each mbuf is set to hold exactly its packet
 * (one segment, no offload flags). Returns how many (a prefix) the PMD took. */
uint16_t fp_dpdk_tx(uint16_t port, uint16_t queue, const struct fp_desc *pkts, uint16_t n,
		    struct rte_mbuf *const *table)
{
	struct rte_mbuf *burst[FP_CHUNK];
	uint16_t done = 0;
	while (done < n) {
		uint16_t want = n - done < FP_CHUNK ? n - done : FP_CHUNK;
		for (uint16_t i = 0; i < want; i++) {
			const struct fp_desc *d = &pkts[done + i];
			struct rte_mbuf *m = table[d->buf];
			m->data_off = d->offset;
			m->data_len = d->len;
			m->pkt_len = d->len;
			m->nb_segs = 1;
			m->next = NULL;
			m->ol_flags = 0;
			m->packet_type = 0;
			burst[i] = m;
		}
		uint16_t sent = rte_eth_tx_burst(port, queue, burst, want);
		done += sent;
		if (sent < want)
			break;
	}
	return done;
}

/* Allocates up to `n` mbufs; writes their indices to `out`; returns how many. */
uint32_t fp_dpdk_alloc(struct rte_mempool *mp, uint32_t *out, uint32_t n)
{
	struct rte_mbuf *got[FP_CHUNK];
	uint32_t done = 0;
	while (done < n) {
		uint32_t want = n - done < FP_CHUNK ? n - done : FP_CHUNK;
		if (rte_pktmbuf_alloc_bulk(mp, got, want) != 0) {
			/* Fewer left than asked: take them one by one. */
			while (done < n) {
				struct rte_mbuf *m = rte_pktmbuf_alloc(mp);
				if (m == NULL)
					return done;
				out[done++] = fp_index(m);
			}
			return done;
		}
		for (uint32_t i = 0; i < want; i++)
			out[done + i] = fp_index(got[i]);
		done += want;
	}
	return done;
}

/* Returns the mbufs with the given indices to their pool. */
void fp_dpdk_free(struct rte_mbuf *const *table, const uint32_t *idx, uint32_t n)
{
	struct rte_mbuf *burst[FP_CHUNK];
	uint32_t done = 0;
	while (done < n) {
		uint32_t k = n - done < FP_CHUNK ? n - done : FP_CHUNK;
		for (uint32_t i = 0; i < k; i++) {
			struct rte_mbuf *m = table[idx[done + i]];
			m->nb_segs = 1;
			m->next = NULL;
			burst[i] = m;
		}
		rte_pktmbuf_free_bulk(burst, k);
		done += k;
	}
}

/* Probes the device `devargs` (a PCI address or a vdev string) unless it is
 * already probed, and finds the ethdev port called `name`. Negative errno on
 * failure. */
int fp_dpdk_probe(const char *devargs, const char *name, uint16_t *port)
{
	int rc = rte_dev_probe(devargs);
	if (rc < 0 && rc != -EEXIST)
		return rc;
	rc = rte_eth_dev_get_port_by_name(name, port);
	return rc < 0 ? rc : 0;
}

/* Configures `port` with `queues` RX and TX queues of the given ring sizes,
 * RX buffers from `mp`, starts it in promiscuous mode and writes its MAC
 * address to `mac` (6 bytes). Negative errno on failure. */
int fp_dpdk_port_start(uint16_t port, uint16_t queues, uint16_t rx_desc, uint16_t tx_desc,
		       struct rte_mempool *mp, uint8_t *mac)
{
	struct rte_eth_dev_info info;
	struct rte_eth_conf conf;
	int rc = rte_eth_dev_info_get(port, &info);
	if (rc < 0)
		return rc;
	if (queues > info.max_rx_queues || queues > info.max_tx_queues)
		return -EINVAL;
	memset(&conf, 0, sizeof(conf));
	rc = rte_eth_dev_configure(port, queues, queues, &conf);
	if (rc < 0)
		return rc;
	rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rx_desc, &tx_desc);
	if (rc < 0)
		return rc;
	int socket = rte_eth_dev_socket_id(port);
	for (uint16_t q = 0; q < queues; q++) {
		rc = rte_eth_rx_queue_setup(port, q, rx_desc, socket, NULL, mp);
		if (rc < 0)
			return rc;
		rc = rte_eth_tx_queue_setup(port, q, tx_desc, socket, NULL);
		if (rc < 0)
			return rc;
	}
	rc = rte_eth_dev_start(port);
	if (rc < 0)
		return rc;
	/* Not every PMD has a promiscuous mode (-ENOTSUP is fine). */
	rc = rte_eth_promiscuous_enable(port);
	if (rc < 0 && rc != -ENOTSUP) {
		rte_eth_dev_stop(port);
		return rc;
	}
	struct rte_ether_addr addr;
	rc = rte_eth_macaddr_get(port, &addr);
	if (rc < 0) {
		rte_eth_dev_stop(port);
		return rc;
	}
	memcpy(mac, addr.addr_bytes, RTE_ETHER_ADDR_LEN);
	return 0;
}

/* Stops `port` (its RX rings give their mbufs back) and removes its device,
 * closing the port, so that the same device can be probed again. */
int fp_dpdk_port_close(uint16_t port)
{
	struct rte_eth_dev_info info;
	int rc = rte_eth_dev_info_get(port, &info);
	int stop = rte_eth_dev_stop(port);
	if (rc < 0)
		return rc;
	rc = rte_dev_remove(info.device);
	if (rc < 0) {
		/* Not removable (some buses): at least release the queues. */
		rc = rte_eth_dev_close(port);
	}
	return rc < 0 ? rc : stop;
}

/* Counters of `port`, in this order: ipackets, opackets, ibytes, obytes,
 * imissed, ierrors, oerrors, rx_nombuf. Negative errno on failure. */
int fp_dpdk_port_stats(uint16_t port, uint64_t *out)
{
	struct rte_eth_stats s;
	int rc = rte_eth_stats_get(port, &s);
	if (rc < 0)
		return rc;
	out[0] = s.ipackets;
	out[1] = s.opackets;
	out[2] = s.ibytes;
	out[3] = s.obytes;
	out[4] = s.imissed;
	out[5] = s.ierrors;
	out[6] = s.oerrors;
	out[7] = s.rx_nombuf;
	return 0;
}
