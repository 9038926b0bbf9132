/* Out-of-line wrappers for DPDK functions that are static inline or macros in the
 * headers (bindgen cannot bind those), plus the few mbuf field accesses the relay
 * needs, so that struct rte_mbuf stays opaque on the Rust side. */
#ifndef SOFTSWITCH_DPDK_SHIM_H
#define SOFTSWITCH_DPDK_SHIM_H

#include <stdint.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_eth_ring.h>

uint16_t ss_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t ss_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *ss_pktmbuf_alloc(struct rte_mempool *mp);
int ss_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **pkts, unsigned n);
void ss_pktmbuf_free(struct rte_mbuf *m);
void ss_pktmbuf_free_bulk(struct rte_mbuf **pkts, unsigned n);
/* The first segment's data and its length; NULL for a chained (multi-segment) mbuf. */
uint8_t *ss_mbuf_data(struct rte_mbuf *m, uint16_t *len);
/* Sets a single-segment mbuf's data and packet length; -1 if it does not fit. */
int ss_mbuf_set_len(struct rte_mbuf *m, uint16_t len);
unsigned ss_lcore_id(void);
int ss_errno(void);
unsigned ss_ring_enqueue_burst(struct rte_ring *r, void **objs, unsigned n);
unsigned ss_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n);

#endif
