/* SPDX-License-Identifier: MIT */
/*
 * The destination's pages during postcopy: which pages it has (a received
 * bitmap per RAM block), the pages the source said are stale (discard),
 * and a fault thread that turns a thread's touch of a missing page into
 * one page request to the source, however many threads wait on it.
 *
 * Call order (the integration's, docs/DESIGN.md "Postcopy (in progress)"):
 *
 *   kv_pc_dst_new                  at POSTCOPY_ADVISE
 *   kv_pc_dst_mark_received        as precopy loads pages (and zero pages
 *                                  it leaves unwritten)
 *   kv_pc_dst_discard              for each POSTCOPY_RAM_DISCARD range
 *   kv_pc_dst_listen               at POSTCOPY_LISTEN: userfaultfd armed
 *                                  on every block, fault thread started
 *   kv_pc_dst_place                for every page that arrives after it,
 *                                  requested or background, any thread
 *   kv_pc_dst_wait_complete        every page is here
 *   kv_pc_dst_finish               userfaultfd released: plain memory
 *   kv_pc_dst_free
 *
 * A page is placed once: a later copy of it (the background stream's
 * older one behind a requested one) is dropped, by the received bitmap
 * and, for a race between two placers, by UFFDIO_COPY's EEXIST.
 *
 * Figures (QEMU's names in query-migrate): requests (postcopy-requests),
 * blocktime per vCPU and total (postcopy-vcpu-blocktime,
 * postcopy-blocktime: the time during which every vCPU at once waited on
 * a page), fault latency (fault read to page placed: mean, p50, p99 and a
 * histogram in powers of two of microseconds, postcopy-latency and
 * postcopy-latency-dist).
 */
#ifndef KV_MIGRATION_POSTCOPY_DST_H
#define KV_MIGRATION_POSTCOPY_DST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

struct kv_pc_dst;

struct kv_pc_dst_block {
	const char *idstr;
	uint8_t *host;   /* page-aligned */
	uint64_t length; /* bytes, a multiple of KV_PAGE_SIZE */
};

/* Ask the source for len bytes at offset of blocks[block]. Called on the
 * fault thread with no lock held; it should only queue or write the
 * request (REQ_PAGES_ID), never wait for the page. <0 with err set: the
 * page is asked for again by the next fault on it or kv_pc_dst_rerequest. */
typedef int (*kv_pc_request_fn)(void *opaque, size_t block, uint64_t offset,
				uint64_t len, struct kv_error *err);

struct kv_pc_dst_config {
	const struct kv_pc_dst_block *blocks;
	size_t nblocks;
	kv_pc_request_fn request;
	void *opaque;
	/* Blocktime counts the threads named here as vCPUs (thread ids as
	 * gettid() gives them); none: no blocktime. Copied. */
	const uint32_t *vcpu_tids;
	size_t nvcpus;
};

/* Histogram of fault latencies: bucket i counts [2^i, 2^(i+1)) µs, bucket 0
 * also everything under 1 µs, the last everything above. */
#define KV_PC_LAT_BUCKETS 32

struct kv_pc_dst_stats {
	uint64_t requests;     /* page requests made (deduplicated) */
	uint64_t faults;       /* fault messages read */
	uint64_t placed;       /* pages placed (with data or zeros) */
	uint64_t placed_zero;
	uint64_t duplicates;   /* a page that was already here: dropped */
	uint64_t received;     /* pages present now */
	uint64_t total_pages;
	uint64_t blocktime_ns; /* every vCPU waiting at once */
	uint64_t lat_count;    /* faults resolved */
	uint64_t lat_mean_ns;
	uint64_t lat_p50_ns;   /* upper bound of its bucket (≤ 1/16 above) */
	uint64_t lat_p99_ns;
	uint64_t lat_max_ns;
	uint64_t lat_hist[KV_PC_LAT_BUCKETS];
};

struct kv_pc_dst *kv_pc_dst_new(const struct kv_pc_dst_config *cfg,
				struct kv_error *err);
/* Stops the fault thread and releases userfaultfd if still armed. */
void kv_pc_dst_free(struct kv_pc_dst *d);

/* Precopy wrote [offset, offset + len) of the block (or left it as zeros). */
void kv_pc_dst_mark_received(struct kv_pc_dst *d, size_t block,
			     uint64_t offset, uint64_t len);
/* The source says [start, start + len) is stale: dropped from memory
 * (MADV_DONTNEED, so touching it faults again) and no longer received.
 * The range is checked (aligned, inside the block). */
int kv_pc_dst_discard(struct kv_pc_dst *d, size_t block, uint64_t start,
		      uint64_t len, struct kv_error *err);

/* Drop every page not received (populated ahead by a prefault, say: it
 * must fault), arm userfaultfd on every block, start the fault thread. */
int kv_pc_dst_listen(struct kv_pc_dst *d, struct kv_error *err);

/* Place one page (data NULL: zeros) at offset of the block, waking every
 * thread waiting on it. 0 placed; 1 it was here already (dropped); <0. */
int kv_pc_dst_place(struct kv_pc_dst *d, size_t block, uint64_t offset,
		    const void *data, struct kv_error *err);

/* Wait until every page is received (timeout_ms -1: no limit): 1 complete,
 * 0 timeout, <0 the fault thread failed (err says why). */
int kv_pc_dst_wait_complete(struct kv_pc_dst *d, int timeout_ms,
			    struct kv_error *err);
/* Stop the fault thread and release userfaultfd: the memory is plain
 * again. Refused while pages are missing (a thread touching one would
 * read zeros). Only once no thread places pages any more (the receiving
 * threads have stopped): a placement in flight still uses the descriptor. */
int kv_pc_dst_finish(struct kv_pc_dst *d, struct kv_error *err);

/* After a recovery: ask again for every page a thread waits on. */
int kv_pc_dst_rerequest(struct kv_pc_dst *d, struct kv_error *err);

/* The vCPU threads, once they exist (a destination starts them at
 * POSTCOPY_RUN, after ADVISE): blocktime counts these from now on.
 * -ENOMEM; the earlier list stays. */
int kv_pc_dst_set_vcpus(struct kv_pc_dst *d, const uint32_t *tids, size_t n);

bool kv_pc_dst_has_page(struct kv_pc_dst *d, size_t block, uint64_t offset);
/* The received bitmap of a block (for RECV_BITMAP), and its page count. */
const unsigned long *kv_pc_dst_received_map(struct kv_pc_dst *d, size_t block,
					    uint64_t *npages);

void kv_pc_dst_get_stats(struct kv_pc_dst *d, struct kv_pc_dst_stats *st);
/* Blocktime of each vCPU in config order, into ns[0..n). */
void kv_pc_dst_vcpu_blocktime(struct kv_pc_dst *d, uint64_t *ns, size_t n);

#endif
