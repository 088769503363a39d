/* SPDX-License-Identifier: MIT */
/*
 * The dirty-tracker interface: "which pages were written since the last
 * sync". The engine knows nothing of how: the VMM implements it with KVM's
 * dirty log or dirty ring, tests and memtest with a software bitmap that the
 * writer marks (migration/dirty/soft_tracker.h).
 */
#ifndef KV_MIGRATION_DIRTY_TRACKER_H
#define KV_MIGRATION_DIRTY_TRACKER_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

struct kv_ram_block;

struct kv_dirty_tracker_ops {
	/* Begin tracking every block (called in setup, before the first
	 * pass, which sends every page anyway). */
	int (*start)(void *opaque, struct kv_error *err);
	/* OR the pages dirtied since the last sync into block->dirty for
	 * every block; returns the number of pages newly marked, or <0. */
	int64_t (*sync)(void *opaque, struct kv_ram_block *blocks,
			size_t nblocks, struct kv_error *err);
	/* Optional (manual protect): re-arm tracking for pages
	 * [first, first + count) of a block just before they are sent. */
	int (*clear)(void *opaque, struct kv_ram_block *block, size_t first,
		     size_t count, struct kv_error *err);
	/* Optional: look without syncing. Overwrite out[i] (block i's pages)
	 * with the pages written since their tracking was last re-armed
	 * (clear, or start for trackers without clear), re-arming nothing
	 * and draining nothing: every page a peek reports, the next sync
	 * reports too, unless clear() re-armed it in between. The RAM
	 * handler skips such a page in a pass (postcopy-ram: it goes again
	 * anyway), so it peeks only after re-arming every page for the pass
	 * and re-arms none again before the next sync. */
	int (*peek)(void *opaque, struct kv_ram_block *blocks, size_t nblocks,
		    unsigned long *const *out, struct kv_error *err);
	/* Stop tracking. failed: the migration did not complete, keep what
	 * was collected so a retry can resend it. */
	void (*stop)(void *opaque, int failed);
};

struct kv_dirty_tracker {
	const struct kv_dirty_tracker_ops *ops;
	void *opaque;
};

#endif
