/* SPDX-License-Identifier: MIT */
/*
 * memtest's workload: the memory region (one or more anonymous mappings),
 * how it is filled, its digest, and the thread that keeps dirtying it at a
 * given rate and reports what it wrote to a software dirty tracker.
 */
#ifndef KV_CLI_MEMTEST_WORKLOAD_H
#define KV_CLI_MEMTEST_WORKLOAD_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "migration/dirty/soft_tracker.h"

#define KV_MEMTEST_MAX_BLOCKS 64

enum kv_memtest_pattern {
	KV_MEMTEST_MIXED, /* a third each of zero, random, repeated pages */
	KV_MEMTEST_ZERO,
	KV_MEMTEST_RANDOM,
};

struct kv_memtest_block {
	char idstr[32];
	uint8_t *host;
	uint64_t length;
};

struct kv_memtest_region {
	size_t nblocks;
	struct kv_memtest_block blocks[KV_MEMTEST_MAX_BLOCKS];
	uint64_t total;
};

/* Map `size` bytes (rounded up to pages) as nblocks anonymous blocks named
 * "memtest.0", "memtest.1", ... */
int kv_memtest_region_map(struct kv_memtest_region *r, uint64_t size,
			  size_t nblocks, struct kv_error *err);
void kv_memtest_region_unmap(struct kv_memtest_region *r);

/* Fill the region; pages are chosen and filled from seed, so the same seed
 * gives the same memory. Uses a few threads. */
void kv_memtest_region_fill(struct kv_memtest_region *r,
			    enum kv_memtest_pattern pattern, uint64_t seed);

/* Fault every page of the region in for writing (MADV_POPULATE_WRITE,
 * or a write to one byte per page where the kernel lacks it), in up to
 * nthreads threads, the way a VMM's destination owns its RAM before a
 * migration starts. */
int kv_memtest_region_prefault(struct kv_memtest_region *r, size_t nthreads,
			       struct kv_error *err);

/* The region's digest, the same on every machine for the same bytes:
 *   every block is cut into chunks of KV_MEMTEST_DIGEST_CHUNK bytes (the
 *   last one of a block may be shorter); each chunk's digest is the
 *   XXH3-128 of its bytes in canonical (big-endian) form; the region's
 *   digest is the XXH3-128, canonical, of all chunk digests concatenated
 *   in block and chunk order.
 * A chunk of a private anonymous mapping that /proc/self/pagemap shows as
 * wholly unpopulated (no page present or swapped) reads as zeros, so its
 * digest is that of zeros, computed once, without reading (or faulting in)
 * the chunk. Chunks are hashed in up to nthreads threads. */
#define KV_MEMTEST_DIGEST_CHUNK (2ULL << 20)
int kv_memtest_digest(const struct kv_memtest_block *blocks, size_t nblocks,
		      size_t nthreads, uint8_t out[16], struct kv_error *err);

/* The dirtying thread: writes a varying word into random pages at
 * rate_mib MiB/s of pages (one page counts as dirtied once per write),
 * paced by the monotonic clock, and marks each page in the tracker. */
struct kv_memtest_dirtier {
	struct kv_memtest_region *region;
	struct kv_soft_tracker *tracker;
	double pages_per_sec;
	pthread_t thread;
	pthread_mutex_t lock; /* held while writing; pause takes it */
	pthread_cond_t cond;
	bool running;
	bool paused;
	bool quit;
	uint64_t resumes;
	uint64_t writes;
};

int kv_memtest_dirtier_start(struct kv_memtest_dirtier *d,
			     struct kv_memtest_region *r,
			     struct kv_soft_tracker *t, double rate_mib,
			     struct kv_error *err);
/* After pause returns, the thread writes nothing until resume. */
void kv_memtest_dirtier_pause(struct kv_memtest_dirtier *d);
void kv_memtest_dirtier_resume(struct kv_memtest_dirtier *d);
void kv_memtest_dirtier_stop(struct kv_memtest_dirtier *d);

#endif
