/* SPDX-License-Identifier: MIT */
/*
 * Software dirty tracking: one atomic bitmap per region. Writers set bits
 * lock-free; sync takes every word with an atomic exchange and ORs it into
 * the engine's migration bitmap, so a mark racing a sync lands in exactly
 * one of the two syncs and is never lost.
 */
#include "migration/dirty/soft_tracker.h"

#include <errno.h>
#include <stdlib.h>

#include "base/bitmap.h"
#include "migration/ram/ram.h"

struct soft_region {
	uint64_t length;
	size_t npages;
	unsigned long *marks;
};

struct kv_soft_tracker {
	int started; /* atomic: marks are ignored while 0 */
	size_t nregions;
	struct soft_region *regions;
};

struct kv_soft_tracker *kv_soft_tracker_new(const uint64_t *block_lengths,
					    size_t nblocks)
{
	struct kv_soft_tracker *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->regions = calloc(nblocks ? nblocks : 1, sizeof(*t->regions));
	if (!t->regions) {
		free(t);
		return NULL;
	}
	t->nregions = nblocks;
	for (size_t i = 0; i < nblocks; i++) {
		struct soft_region *r = &t->regions[i];

		r->length = block_lengths[i];
		r->npages = (size_t)((block_lengths[i] + KV_PAGE_SIZE - 1) >>
				     KV_PAGE_SHIFT);
		r->marks = kv_bitmap_new(r->npages);
		if (!r->marks) {
			kv_soft_tracker_free(t);
			return NULL;
		}
	}
	return t;
}

void kv_soft_tracker_free(struct kv_soft_tracker *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->nregions; i++)
		kv_bitmap_free(t->regions[i].marks);
	free(t->regions);
	free(t);
}

void kv_soft_tracker_mark(struct kv_soft_tracker *t, size_t block,
			  uint64_t offset)
{
	struct soft_region *r;
	size_t page;

	/* The fence orders the caller's page write before the look at
	 * `started`: either start sees the write (the first pass reads the
	 * page after start) or this sees start and marks. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!__atomic_load_n(&t->started, __ATOMIC_ACQUIRE))
		return;
	if (block >= t->nregions)
		return;
	r = &t->regions[block];
	page = (size_t)(offset >> KV_PAGE_SHIFT);
	if (page < r->npages)
		kv_bitmap_set_atomic(r->marks, page);
}

static int soft_start(void *opaque, struct kv_error *err)
{
	struct kv_soft_tracker *t = opaque;

	(void)err;
	/* Marks kept from a failed attempt stay: a retry resends them. */
	__atomic_store_n(&t->started, 1, __ATOMIC_SEQ_CST);
	return 0;
}

static int64_t soft_sync(void *opaque, struct kv_ram_block *blocks,
			 size_t nblocks, struct kv_error *err)
{
	struct kv_soft_tracker *t = opaque;
	int64_t added = 0;

	if (nblocks != t->nregions)
		return kv_error_set(err, -EINVAL,
				    "soft tracker: %zu regions but %zu RAM blocks to sync",
				    t->nregions, nblocks);
	for (size_t i = 0; i < nblocks; i++) {
		struct soft_region *r = &t->regions[i];

		if (blocks[i].npages != r->npages)
			return kv_error_set(err, -EINVAL,
					    "soft tracker: region %zu has %zu pages, block '%s' has %zu",
					    i, r->npages, blocks[i].idstr,
					    blocks[i].npages);
		added += (int64_t)kv_bitmap_drain_into(blocks[i].dirty,
						       r->marks, r->npages);
	}
	return added;
}

/* The marks as they are, not drained: the next sync takes them. */
static int soft_peek(void *opaque, struct kv_ram_block *blocks, size_t nblocks,
		     unsigned long *const *out, struct kv_error *err)
{
	struct kv_soft_tracker *t = opaque;

	if (nblocks != t->nregions)
		return kv_error_set(err, -EINVAL,
				    "soft tracker: %zu regions but %zu RAM blocks to peek",
				    t->nregions, nblocks);
	for (size_t i = 0; i < nblocks; i++) {
		const struct soft_region *r = &t->regions[i];

		if (blocks[i].npages != r->npages)
			return kv_error_set(err, -EINVAL,
					    "soft tracker: region %zu has %zu pages, block '%s' has %zu pages to peek",
					    i, r->npages, blocks[i].idstr,
					    blocks[i].npages);
		for (size_t w = 0; w < KV_BITMAP_LONGS(r->npages); w++)
			out[i][w] = __atomic_load_n(&r->marks[w],
						    __ATOMIC_RELAXED);
	}
	return 0;
}

static void soft_stop(void *opaque, int failed)
{
	struct kv_soft_tracker *t = opaque;

	__atomic_store_n(&t->started, 0, __ATOMIC_RELEASE);
	if (failed)
		return;
	/* Word by word with atomic stores: a writer that saw `started` just
	 * before it changed may still be setting a bit. */
	for (size_t i = 0; i < t->nregions; i++) {
		struct soft_region *r = &t->regions[i];

		for (size_t w = 0; w < KV_BITMAP_LONGS(r->npages); w++)
			__atomic_store_n(&r->marks[w], 0, __ATOMIC_RELAXED);
	}
}

static const struct kv_dirty_tracker_ops soft_tracker_ops = {
    .start = soft_start,
    .sync = soft_sync,
    .clear = NULL, /* marks are always armed: nothing to re-protect */
    .peek = soft_peek,
    .stop = soft_stop,
};

struct kv_dirty_tracker kv_soft_tracker_iface(struct kv_soft_tracker *t)
{
	struct kv_dirty_tracker it = {.ops = &soft_tracker_ops, .opaque = t};

	return it;
}
