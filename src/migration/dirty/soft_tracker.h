/* SPDX-License-Identifier: MIT */
/*
 * A software dirty tracker: the writer calls kv_soft_tracker_mark() after
 * writing a page; sync drains the marks into the migration bitmaps.
 * Used by memtest and the unit tests, where no KVM dirty log exists.
 * Ordering: write the page, then mark (release); sync takes marks with an
 * atomic exchange, so a write racing a send is always marked again.
 */
#ifndef KV_MIGRATION_SOFT_TRACKER_H
#define KV_MIGRATION_SOFT_TRACKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migration/dirty/dirty_tracker.h"

struct kv_soft_tracker;

/* One region per RAM block, in the same order as the blocks. */
struct kv_soft_tracker *kv_soft_tracker_new(const uint64_t *block_lengths,
					    size_t nblocks);
void kv_soft_tracker_free(struct kv_soft_tracker *t);
/* Mark the page holding byte offset `offset` of block `block` dirty. Cheap,
 * lock-free, any thread. A no-op while tracking is not started. */
void kv_soft_tracker_mark(struct kv_soft_tracker *t, size_t block,
			  uint64_t offset);
/* The tracker as the engine sees it. */
struct kv_dirty_tracker kv_soft_tracker_iface(struct kv_soft_tracker *t);

#endif
