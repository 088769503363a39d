/* SPDX-License-Identifier: MIT */
/*
 * The XBZRLE page cache (the role of QEMU's migration/ram/page_cache.c): copies
 * of pages already sent, keyed by page address, so that a page dirtied again
 * can be sent as a delta against what the destination already has
 * (xbzrle.h). One cache per migration; no global state.
 *
 * Geometry: the size is given in bytes (the xbzrle-cache-size parameter,
 * default 64 MiB) and must be a power of two no smaller than one 4 KiB page,
 * as QEMU requires; it makes size / 4096 slots. The slots form sets of
 * KV_PAGE_CACHE_WAYS (fewer when the cache has fewer slots); a page can live
 * only in set (addr / 4096) mod number-of-sets, so consecutive pages fill
 * consecutive sets.
 *
 * Every slot keeps its page's address and the age (the generation: the
 * dirty-bitmap sync count the caller passes) at which it was inserted or
 * last hit. Replacement when inserting a page that is not cached, within
 * its set:
 *   1. an empty slot, the lowest-numbered one;
 *   2. else the slot with the oldest age (lowest-numbered among equals),
 *      but only if that age is at least KV_PAGE_CACHE_LIFETIME generations
 *      old: a page inserted or hit in this generation or the one before is
 *      hot and stays (QEMU's rule, CACHED_PAGE_LIFETIME); the insert is then
 *      refused and the new page is simply sent raw.
 * Pages are stored 4 KiB-aligned; the memory is allocated at creation and
 * touched only as slots fill.
 *
 * Threads: the migration thread calls everything; kv_page_cache_get_stats()
 * may run on another thread (query-migrate) at the same time.
 */
#ifndef KV_MIGRATION_PAGE_CACHE_H
#define KV_MIGRATION_PAGE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "base/units.h"

#define KV_PAGE_CACHE_DEFAULT_SIZE (64 * KV_MiB)
#define KV_PAGE_CACHE_WAYS	   4U
#define KV_PAGE_CACHE_LIFETIME	   2U

/*
 * The raw counters behind query-migrate's "xbzrle-cache" object. The cache
 * keeps cache_size and cache_miss itself; the RAM handler reports the rest
 * (kv_page_cache_count_*). The two rates are not counters; QEMU computes
 * them once per rate period (each dirty sync) from the deltas since the
 * previous period:
 *   cache-miss-rate = (cache_miss - cache_miss_prev)
 *                     / (pages handled by the RAM handler in the period:
 *                        every page sent, zero, normal or XBZRLE)
 *   encoding-rate   = ((pages - pages_prev) * 4096) / (bytes - bytes_prev),
 *                     0 when no XBZRLE page or no byte went in the period
 * and a period in which no page was handled leaves both as they were.
 * kv_xbzrle_rates_update() does exactly that.
 */
struct kv_xbzrle_stats {
	uint64_t cache_size; /* bytes, the configured xbzrle-cache-size */
	uint64_t bytes;	     /* XBZRLE records' bytes, as QEMU counts them:
			      * everything after the 8-byte offset/flags word
			      * (the block name when not CONTINUE, encoding
			      * flag, 16-bit length, delta) */
	uint64_t pages;	     /* pages sent as XBZRLE */
	uint64_t cache_miss; /* lookups that found no copy */
	uint64_t overflow;   /* deltas that did not fit: sent raw */
	/* Not in query-migrate, for tests and logs: */
	uint64_t cached_pages; /* slots holding a page now */
	uint64_t refused;      /* inserts refused to keep a hot page */
};

/* The previous period's counters, kept by the caller for the rates. */
struct kv_xbzrle_rates {
	uint64_t handled_prev, cache_miss_prev, pages_prev, bytes_prev;
	double cache_miss_rate;
	double encoding_rate;
};

/* New period: handled_total = pages the RAM handler handled so far. */
void kv_xbzrle_rates_update(struct kv_xbzrle_rates *r,
			    const struct kv_xbzrle_stats *now,
			    uint64_t handled_total);

struct kv_page_cache;

/* NULL with err set when size is not a power of two >= 4096 or memory is
 * short. */
struct kv_page_cache *kv_page_cache_new(uint64_t size, struct kv_error *err);
void kv_page_cache_free(struct kv_page_cache *c);

/* Change the size (xbzrle-cache-size set during a migration): the contents
 * are dropped, the counters other than cache_size stay. On failure the old
 * cache is kept as it was. */
int kv_page_cache_resize(struct kv_page_cache *c, uint64_t size,
			 struct kv_error *err);

/* The cached copy of the page at addr, or NULL (a miss, counted). A hit
 * refreshes the slot's age to generation. The pointer stays valid until the
 * next insert, resize or free; the caller may write the new contents
 * through it. */
uint8_t *kv_page_cache_lookup(struct kv_page_cache *c, uint64_t addr,
			      uint64_t generation);

/* True when addr is cached; counts nothing and changes no age. */
bool kv_page_cache_contains(const struct kv_page_cache *c, uint64_t addr);

/* Copy the 4 KiB at page into the cache as addr's copy, with age
 * generation: in place when addr is cached, else per the replacement rule.
 * Returns 0 and the slot's copy in *copy (if copy is non-NULL), or -EBUSY
 * when every slot of the set holds a hot page (nothing changed).
 * addr must not be UINT64_MAX (marks an empty slot). */
int kv_page_cache_insert(struct kv_page_cache *c, uint64_t addr,
			 const void *page, uint64_t generation, uint8_t **copy);

size_t kv_page_cache_slots(const struct kv_page_cache *c);
size_t kv_page_cache_ways(const struct kv_page_cache *c);

/* The RAM handler's share of the counters. record_bytes: the XBZRLE
 * record's bytes after the 8-byte offset/flags word: the block name if the
 * record carries one (1 + length), then 1 + 2 + delta length. */
void kv_page_cache_count_xbzrle(struct kv_page_cache *c, uint64_t record_bytes);
void kv_page_cache_count_overflow(struct kv_page_cache *c);

void kv_page_cache_get_stats(const struct kv_page_cache *c,
			     struct kv_xbzrle_stats *st);

#endif
