// SPDX-License-Identifier: MIT
/*
 * XBZRLE in the RAM handler: which pages go as deltas, and the cache that
 * makes the deltas correct.
 *
 * The invariant: for every page in the cache, the cached copy is exactly
 * what the destination holds. So a page is read once into a snapshot
 * (the guest may write it meanwhile: the tracker then marks it for a later
 * pass), and the snapshot is both what is sent and what is cached; a page
 * sent raw from the cache path is copied into the stream, never referenced
 * (the slot may be reused before the stream is flushed). A zero page
 * overwrites its cached copy with zeros.
 *
 * Unlike QEMU, the first pass fills the cache too: a page it sends is
 * inserted, so a page dirtied again during the first pass can already go
 * as a delta in the second (QEMU starts caching in the second pass and
 * sends every such page raw once more: with a working set of the cache's
 * size that halves what XBZRLE saves). The first pass cannot churn the
 * cache: its pages are all of one generation, and a full set refuses
 * young pages (page_cache.h), so the cache keeps the first pages that
 * fit and the rest go by reference as usual. From the second pass on, a
 * page not in the cache is inserted and sent raw (a miss), a cached one
 * goes as its delta, as nothing when it did not change, or raw when the
 * delta would not be smaller than the page (an overflow).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/units.h"
#include "io/stream.h"
#include "migration/ram/ram_internal.h"
#include "migration/ram/xbzrle.h"

#define XBZRLE_ENCODING 0x01 /* QEMU's ENCODING_FLAG_XBZRLE */
/* Record bytes after the offset word besides the delta: encoding byte and
 * 16-bit length. */
#define XBZRLE_REC_OVERHEAD 3U

static uint64_t pow2_floor(uint64_t v)
{
	while (v & (v - 1))
		v &= v - 1;
	return v;
}

int kv_ram_set_xbzrle(struct kv_ram_state *rs, uint64_t cache_size,
		      struct kv_error *err)
{
	if (cache_size && cache_size < KV_PAGE_SIZE)
		return kv_error_set(err, -EINVAL,
				    "xbzrle-cache-size %llu is smaller than one page (%u bytes)",
				    (unsigned long long)cache_size,
				    KV_PAGE_SIZE);
	rs->src.xb.cache_size = pow2_floor(cache_size);
	return 0;
}

/* The cache key: the block in the top bits, so blocks never collide. */
static uint64_t page_key(size_t bi, size_t page)
{
	return ((uint64_t)bi << 44) | ((uint64_t)page << KV_PAGE_SHIFT);
}

static uint64_t generation(const struct kv_ram_state *rs)
{
	return kv_ram_stat_get(&rs->src.dirty_sync_count);
}

int kv_ram_xbzrle_setup(struct kv_ram_state *rs, struct kv_error *err)
{
	struct kv_ram_xbzrle *xb = &rs->src.xb;

	kv_ram_xbzrle_cleanup(rs);
	xb->active = false;
	xb->skipped = 0;
	memset(&xb->rates, 0, sizeof(xb->rates));
	if (!xb->cache_size)
		return 0;
	xb->cache = kv_page_cache_new(xb->cache_size, err);
	if (!xb->cache) {
		kv_error_prefix(err, "ram: XBZRLE cache");
		return -ENOMEM;
	}
	if (!xb->snap)
		xb->snap = aligned_alloc(64, KV_PAGE_SIZE);
	if (!xb->enc)
		xb->enc = malloc(KV_PAGE_SIZE);
	if (!xb->snap || !xb->enc) {
		kv_ram_xbzrle_cleanup(rs);
		return kv_error_set(err, -ENOMEM,
				    "ram: out of memory for XBZRLE buffers");
	}
	kv_ram_xbzrle_publish(rs);
	return 0;
}

/* A raw page from a copy of ours (the snapshot or the cache slot): copied
 * into the stream, as the copy may change before the stream is flushed. */
static void send_copy(struct kv_stream *s, struct kv_ram_state *rs,
		      size_t bi, size_t page, const uint8_t *copy)
{
	kv_ram_put_header(s, rs, bi, page, KV_RAM_FLAG_PAGE);
	kv_stream_put_buffer(s, copy, KV_PAGE_SIZE);
	kv_ram_stat_add(&rs->normal_pages, 1);
}

bool kv_ram_xbzrle_send(struct kv_stream *s, struct kv_ram_state *rs,
			size_t bi, size_t page)
{
	struct kv_ram_xbzrle *xb = &rs->src.xb;
	const uint8_t *live;
	uint8_t *cached;
	uint64_t key;
	size_t name;
	int len;

	if (!xb->cache)
		return false;
	live = rs->blocks[bi].host + ((uint64_t)page << KV_PAGE_SHIFT);
	key = page_key(bi, page);
	if (!xb->active) {
		/* First pass: the slot's copy is the snapshot, sent as is;
		 * not a miss. A refused insert sends by reference. */
		if (kv_page_cache_insert(xb->cache, key, live, generation(rs),
					 &cached) < 0)
			return false;
		send_copy(s, rs, bi, page, cached);
		return true;
	}
	memcpy(xb->snap, live, KV_PAGE_SIZE);
	cached = kv_page_cache_lookup(xb->cache, key, generation(rs));
	if (!cached) {
		/* A refused insert (its set is all hot) leaves the page out
		 * of the cache: a miss again next time, still correct. */
		(void)kv_page_cache_insert(xb->cache, key, xb->snap,
					   generation(rs), NULL);
		send_copy(s, rs, bi, page, xb->snap);
		return true;
	}
	len = kv_xbzrle_encode(cached, xb->snap, KV_PAGE_SIZE, xb->enc,
			       KV_PAGE_SIZE - XBZRLE_REC_OVERHEAD - 1);
	memcpy(cached, xb->snap, KV_PAGE_SIZE);
	if (len == 0) {
		xb->skipped++;
		return true;
	}
	if (len < 0) {
		kv_page_cache_count_overflow(xb->cache);
		send_copy(s, rs, bi, page, xb->snap);
		return true;
	}
	name = kv_ram_put_header(s, rs, bi, page, KV_RAM_FLAG_XBZRLE);
	kv_stream_put_u8(s, XBZRLE_ENCODING);
	kv_stream_put_be16(s, (uint16_t)len);
	kv_stream_put_buffer(s, xb->enc, (size_t)len);
	kv_page_cache_count_xbzrle(xb->cache, name + XBZRLE_REC_OVERHEAD +
						  (uint64_t)len);
	return true;
}

void kv_ram_xbzrle_zero(struct kv_ram_state *rs, size_t bi, size_t page)
{
	struct kv_ram_xbzrle *xb = &rs->src.xb;
	uint8_t *cached;

	if (!xb->cache)
		return;
	/* contains(), not lookup(): a zero page is not a cache miss. */
	if (!kv_page_cache_contains(xb->cache, page_key(bi, page)))
		return;
	cached = kv_page_cache_lookup(xb->cache, page_key(bi, page),
				      generation(rs));
	if (cached)
		memset(cached, 0, KV_PAGE_SIZE);
}

static uint64_t handled_total(const struct kv_ram_state *rs,
			      const struct kv_xbzrle_stats *st)
{
	return kv_ram_stat_get(&rs->zero_pages) +
	       kv_ram_stat_get(&rs->normal_pages) + st->pages +
	       rs->src.xb.skipped;
}

void kv_ram_xbzrle_publish(struct kv_ram_state *rs)
{
	struct kv_ram_xbzrle *xb = &rs->src.xb;
	struct kv_xbzrle_stats st;

	if (!xb->cache)
		return;
	kv_page_cache_get_stats(xb->cache, &st);
	kv_ram_stat_set(&xb->pub.cache_size, st.cache_size);
	kv_ram_stat_set(&xb->pub.bytes, st.bytes);
	kv_ram_stat_set(&xb->pub.pages, st.pages);
	kv_ram_stat_set(&xb->pub.cache_miss, st.cache_miss);
	kv_ram_stat_set(&xb->pub.overflow, st.overflow);
	kv_ram_stat_set(&xb->pub_skipped, xb->skipped);
}

void kv_ram_xbzrle_sync(struct kv_ram_state *rs)
{
	struct kv_ram_xbzrle *xb = &rs->src.xb;
	struct kv_xbzrle_stats st;

	if (!xb->cache)
		return;
	/* The first sync after setup ends the first pass. */
	xb->active = true;
	kv_page_cache_get_stats(xb->cache, &st);
	kv_xbzrle_rates_update(&xb->rates, &st, handled_total(rs, &st));
	__atomic_store(&xb->pub_miss_rate, &xb->rates.cache_miss_rate,
		       __ATOMIC_RELAXED);
	__atomic_store(&xb->pub_encoding_rate, &xb->rates.encoding_rate,
		       __ATOMIC_RELAXED);
	kv_ram_xbzrle_publish(rs);
}

void kv_ram_get_xbzrle_stats(const struct kv_ram_state *rs,
			     struct kv_ram_xbzrle_stats *st)
{
	const struct kv_ram_xbzrle *xb = &rs->src.xb;

	memset(st, 0, sizeof(*st));
	st->enabled = xb->cache_size != 0;
	st->cache_size = xb->cache_size;
	st->bytes = kv_ram_stat_get(&xb->pub.bytes);
	st->pages = kv_ram_stat_get(&xb->pub.pages);
	st->cache_miss = kv_ram_stat_get(&xb->pub.cache_miss);
	st->overflow = kv_ram_stat_get(&xb->pub.overflow);
	st->skipped = kv_ram_stat_get(&xb->pub_skipped);
	__atomic_load(&xb->pub_miss_rate, &st->cache_miss_rate,
		      __ATOMIC_RELAXED);
	__atomic_load(&xb->pub_encoding_rate, &st->encoding_rate,
		      __ATOMIC_RELAXED);
}

void kv_ram_xbzrle_cleanup(struct kv_ram_state *rs)
{
	struct kv_ram_xbzrle *xb = &rs->src.xb;

	if (xb->cache) {
		kv_ram_xbzrle_publish(rs);
		kv_page_cache_free(xb->cache);
		xb->cache = NULL;
	}
	xb->active = false;
}

void kv_ram_xbzrle_free(struct kv_ram_state *rs)
{
	kv_ram_xbzrle_cleanup(rs);
	free(rs->src.xb.snap);
	free(rs->src.xb.enc);
	rs->src.xb.snap = rs->src.xb.enc = NULL;
}
