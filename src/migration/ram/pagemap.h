/* SPDX-License-Identifier: MIT */
/*
 * Which pages of private anonymous memory the kernel never populated
 * (/proc/self/pagemap: neither present nor swapped). Such a page reads as
 * zero, so the RAM source knows it is a zero page without reading it (and
 * faulting in a zero-page mapping), and the destination need not write a
 * zero page there. Only private anonymous memory qualifies: a page of a
 * file or of shared memory may hold data while it is not mapped.
 *
 * Entries are read one chunk (KV_PAGEMAP_CHUNK_PAGES pages, 8 bytes each)
 * at a time and cached; the cache is only as fresh as its read, so the
 * caller drops it (kv_pagemap_invalidate) whenever someone else may have
 * written since. Without /proc/self/pagemap, or after a read fails, every
 * page counts as populated (the caller reads it: slower, same result).
 * One kv_pagemap per user thread; no locking.
 */
#ifndef KV_MIGRATION_RAM_PAGEMAP_H
#define KV_MIGRATION_RAM_PAGEMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The RAM source re-arms tracking per chunk of this many pages too
 * (KV_RAM_CLEAR_CHUNK_PAGES), so one read serves one re-armed chunk. */
#define KV_PAGEMAP_CHUNK_PAGES 512U

struct kv_pagemap {
	int fd; /* -1: not open */
	bool valid;
	const uint8_t *chunk; /* host address of the cached chunk's page 0 */
	uint64_t ent[KV_PAGEMAP_CHUNK_PAGES];
};

/* Closed, nothing cached (call before anything else). */
void kv_pagemap_init(struct kv_pagemap *pm);
/* True when [start, start + length) lies in private anonymous mappings
 * only (per /proc/self/maps) and start is page-aligned. */
bool kv_pagemap_private_anon(const void *start, uint64_t length);
/* Open /proc/self/pagemap if not yet open; false if it cannot be. */
bool kv_pagemap_open(struct kv_pagemap *pm);
void kv_pagemap_close(struct kv_pagemap *pm);
bool kv_pagemap_is_open(const struct kv_pagemap *pm);
/* Forget the cached chunk: memory may have been written since. */
void kv_pagemap_invalidate(struct kv_pagemap *pm);

/*
 * True if page `page` of the region at host (npages pages, from a region
 * kv_pagemap_private_anon() accepted) was never populated. Reads the
 * chunk's entries unless cached; false when pagemap is closed or the read
 * fails (which closes it).
 */
bool kv_pagemap_unpopulated(struct kv_pagemap *pm, const uint8_t *host,
			    size_t npages, size_t page);
/* We wrote page `page` of the region at host ourselves: the cache says
 * so too, without a read. */
void kv_pagemap_populated(struct kv_pagemap *pm, const uint8_t *host,
			  size_t page);

#endif
