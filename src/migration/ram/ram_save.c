/* SPDX-License-Identifier: MIT */
/*
 * RAM precopy, source side: the "ram" section's payloads.
 *
 * The migration bitmap of every block starts all set (the first pass sends
 * everything); a sync ORs in what the tracker saw since. The page search
 * resumes where it stopped and claims a page (find + test-and-clear in one
 * step) before reading it, so a write that races the send is marked again
 * by the tracker and goes in a later pass; a page is never found twice.
 *
 * Never-populated pages: an idle guest's memory is mostly pages nobody
 * ever touched. Reading them would fault every one in (a page-table entry
 * for the zero page each: ~1.5 us a page, most of an idle migration). For
 * private anonymous blocks, /proc/self/pagemap says which pages are neither
 * present nor swapped, i.e. read as zero, for 8 bytes a page. Entries are
 * read per chunk, after the chunk's tracking was re-armed, and dropped at
 * every sync and every section: a write after the read is then always seen
 * by the tracker and sent again in a later pass.
 *
 * Re-dirtied pages (postcopy-ram): every page a pass would send now but the
 * guest has written since the pass began goes again anyway, after the next
 * sync or the switch. Such a pass re-arms tracking of every page at its
 * start (not chunk by chunk), peeks at the tracker every KV_RAM_PEEK_NS
 * (no sync: the tracker keeps every mark), and claims a page the last peek
 * shows written without sending it; the next sync reports it again.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/zero.h"
#include "io/stream.h"
#include "migration/ram/ram_internal.h"

/* How many pages between two looks at the clock and the stream's error. */
#define CHECK_EVERY_PAGES 64U

static int stream_failed(struct kv_stream *s, struct kv_error *err,
			 const char *what)
{
	int code = kv_stream_error(s);

	if (!code)
		return 0;
	kv_stream_error_get(s, err);
	kv_error_prefix(err, "ram: %s", what);
	return code;
}

static void free_save_bitmaps(struct kv_ram_state *rs)
{
	for (size_t i = 0; i < rs->nblocks; i++) {
		kv_bitmap_free(rs->blocks[i].dirty);
		rs->blocks[i].dirty = NULL;
		kv_bitmap_free(rs->priv[i].clear_chunks);
		rs->priv[i].clear_chunks = NULL;
		kv_bitmap_free(rs->priv[i].peeked);
		rs->priv[i].peeked = NULL;
	}
	free(rs->src.peek_out);
	rs->src.peek_out = NULL;
}

static size_t chunk_count(const struct kv_ram_block *b)
{
	return (b->npages + KV_RAM_CLEAR_CHUNK_PAGES - 1) /
	       KV_RAM_CLEAR_CHUNK_PAGES;
}

static int alloc_save_bitmaps(struct kv_ram_state *rs, struct kv_error *err)
{
	if (rs->src.skip_on && !rs->src.peek_out) {
		rs->src.peek_out = calloc(rs->nblocks ? rs->nblocks : 1,
					  sizeof(*rs->src.peek_out));
		if (!rs->src.peek_out)
			return kv_error_set(err, -ENOMEM,
					    "ram: out of memory for the peek bitmaps of %zu blocks",
					    rs->nblocks);
	}
	for (size_t i = 0; i < rs->nblocks; i++) {
		struct kv_ram_block *b = &rs->blocks[i];
		struct kv_ram_block_priv *p = &rs->priv[i];

		if (!b->dirty)
			b->dirty = kv_bitmap_new(b->npages);
		if (!p->clear_chunks)
			p->clear_chunks = kv_bitmap_new(chunk_count(b));
		if (rs->src.skip_on && !p->peeked)
			p->peeked = kv_bitmap_new(b->npages);
		if (!b->dirty || !p->clear_chunks ||
		    (rs->src.skip_on && !p->peeked)) {
			free_save_bitmaps(rs);
			return kv_error_set(err, -ENOMEM,
					    "ram: out of memory for the dirty bitmap of block '%s' (%zu pages)",
					    b->idstr, b->npages);
		}
		kv_bitmap_set_all(b->dirty, b->npages);
		kv_bitmap_set_all(p->clear_chunks, chunk_count(b));
		if (rs->src.peek_out)
			rs->src.peek_out[i] = p->peeked;
	}
	return 0;
}

static uint64_t count_dirty(const struct kv_ram_state *rs)
{
	uint64_t n = 0;

	for (size_t i = 0; i < rs->nblocks; i++)
		n += kv_bitmap_count(rs->blocks[i].dirty, rs->blocks[i].npages);
	return n;
}

static void put_mem_size(struct kv_stream *s, struct kv_ram_state *rs)
{
	uint64_t total = 0;

	for (size_t i = 0; i < rs->nblocks; i++)
		total += rs->blocks[i].length;
	kv_stream_put_be64(s, total | KV_RAM_FLAG_MEM_SIZE);
	for (size_t i = 0; i < rs->nblocks; i++) {
		kv_stream_put_str8(s, rs->blocks[i].idstr);
		kv_stream_put_be64(s, rs->blocks[i].length);
		if (rs->mapped)
			kv_mapped_ram_put_block(s, rs, i);
	}
}

/* Skipping re-dirtied pages: re-arm tracking of every page as the pass
 * begins (the per-chunk re-arm then finds nothing to do), so that a peek
 * during the pass shows exactly the pages written since, and forget the
 * last pass's peek (those pages are in the migration bitmap now, their
 * marks re-armed: skipping them on it would lose them). */
static int rearm_pass(struct kv_ram_state *rs, struct kv_error *err)
{
	int64_t t0 = kv_now_ns();

	rs->src.peek_armed = false;
	if (!rs->src.skip_on)
		return 0;
	for (size_t i = 0; i < rs->nblocks; i++) {
		struct kv_ram_block *b = &rs->blocks[i];
		struct kv_ram_block_priv *p = &rs->priv[i];
		int ret = 0;

		kv_bitmap_clear_all(p->peeked, b->npages);
		if (rs->src.tracker.ops->clear && b->npages)
			ret = rs->src.tracker.ops->clear(
			    rs->src.tracker.opaque, b, 0, b->npages, err);
		if (ret < 0) {
			kv_error_prefix(err,
					"ram: re-arming dirty tracking of block '%s' for the pass",
					b->idstr);
			return ret;
		}
		kv_bitmap_clear_all(p->clear_chunks, chunk_count(b));
	}
	rs->src.peek_armed = true;
	rs->src.next_peek_ns = kv_now_ns() + KV_RAM_PEEK_NS;
	rs->src.rearm_ns += (uint64_t)(rs->src.next_peek_ns - KV_RAM_PEEK_NS -
				       t0);
	return 0;
}

/* Which pages the guest wrote since the pass began, when it is time. */
static int peek_if_due(struct kv_ram_state *rs, int64_t now,
		       struct kv_error *err)
{
	int ret;

	if (!rs->src.peek_armed || now < rs->src.next_peek_ns)
		return 0;
	ret = rs->src.tracker.ops->peek(rs->src.tracker.opaque, rs->blocks,
					rs->nblocks, rs->src.peek_out, err);
	if (ret < 0) {
		kv_error_prefix(err, "ram: peeking at the dirty log");
		return ret;
	}
	kv_ram_stat_add(&rs->src.dirty_peeks, 1);
	rs->src.next_peek_ns = kv_now_ns() + KV_RAM_PEEK_NS;
	rs->src.peek_ns += (uint64_t)(rs->src.next_peek_ns - KV_RAM_PEEK_NS -
				      now);
	return 0;
}

/* A claimed page the guest wrote since the pass began: the tracker holds
 * it for the next sync, so the pass need not send it. */
static bool redirtied(struct kv_ram_state *rs, size_t bi, size_t page)
{
	if (!rs->src.peek_armed || rs->src.in_complete ||
	    !kv_bitmap_test(rs->priv[bi].peeked, page))
		return false;
	kv_ram_stat_add(&rs->src.redirtied_skipped, 1);
	return true;
}

int kv_ram_save_setup(struct kv_stream *s, void *opaque, struct kv_error *err)
{
	struct kv_ram_state *rs = opaque;
	int ret;

	if (!rs->src.has_tracker && !rs->src.background)
		return kv_error_set(err, -EINVAL,
				    "ram: no dirty tracker: call kv_ram_set_tracker() before migrating");
	rs->src.skip_on = rs->src.skip_redirtied && !rs->src.background &&
			  !rs->mapped_cfg.on && rs->src.tracker.ops->peek;
	rs->src.peek_armed = false;
	ret = alloc_save_bitmaps(rs, err);
	if (ret < 0)
		return ret;
	kv_switch_log("ram: setup: bitmaps ready");
	rs->src.search_block = 0;
	rs->src.search_page = 0;
	rs->src.last_sent = KV_RAM_NO_BLOCK;
	rs->src.in_complete = false;
	kv_ram_stat_set(&rs->zero_pages, 0);
	kv_ram_stat_set(&rs->normal_pages, 0);
	kv_ram_stat_set(&rs->src.pass_pages, 0);
	kv_ram_stat_set(&rs->src.dirty_peeks, 0);
	kv_ram_stat_set(&rs->src.redirtied_skipped, 0);
	rs->src.peek_ns = 0;
	rs->src.rearm_ns = 0;
	/* Pass 1 is the full pass; every later sync starts a new one. */
	kv_ram_stat_set(&rs->src.dirty_sync_count, 1);
	kv_ram_stat_set(&rs->src.dirty_pages, count_dirty(rs));
	ret = kv_ram_verify_prepare(rs, err);
	if (ret == 0)
		ret = kv_ram_xbzrle_setup(rs, err);
	if (ret == 0)
		ret = kv_ram_zc_setup(s, rs, err);
	if (ret == 0)
		ret = kv_mapped_ram_save_setup(s, rs, err);
	if (ret < 0) {
		free_save_bitmaps(rs);
		return ret;
	}

	/* A background snapshot sends every page once: nothing to track. */
	ret = rs->src.background ? 0
				 : rs->src.tracker.ops->start(
				       rs->src.tracker.opaque, err);
	if (ret < 0) {
		kv_error_prefix(err, "ram: starting dirty tracking");
		free_save_bitmaps(rs);
		return ret;
	}
	rs->src.tracker_started = !rs->src.background;
	kv_switch_log("ram: setup: tracker started");
	ret = rearm_pass(rs, err);
	if (ret < 0) {
		free_save_bitmaps(rs);
		return ret;
	}
	kv_ram_pagemap_open(rs);
	kv_switch_log("ram: setup: pagemap open");

	put_mem_size(s, rs);
	kv_stream_put_be64(s, KV_RAM_FLAG_EOS);
	return stream_failed(s, err, "writing the block list");
}

/* Re-arm tracking of the page's chunk if this is the chunk's first page
 * sent since the last sync (manual-protect trackers only). Not in
 * complete: the workload is stopped, and re-protecting pages there only
 * lengthens the downtime (a failed attempt then finds those pages still
 * dirty in the tracker and sends them again, which is what it must do). */
static int rearm_chunk(struct kv_ram_state *rs, size_t bi, size_t page,
		       struct kv_error *err)
{
	struct kv_ram_block *b = &rs->blocks[bi];
	size_t chunk = page / KV_RAM_CLEAR_CHUNK_PAGES;
	size_t first = chunk * KV_RAM_CLEAR_CHUNK_PAGES;
	size_t count = b->npages - first;
	int ret;

	if (!rs->src.tracker.ops->clear || rs->src.in_complete)
		return 0;
	if (!kv_bitmap_test_and_clear(rs->priv[bi].clear_chunks, chunk))
		return 0;
	if (count > KV_RAM_CLEAR_CHUNK_PAGES)
		count = KV_RAM_CLEAR_CHUNK_PAGES;
	ret = rs->src.tracker.ops->clear(rs->src.tracker.opaque, b, first,
					 count, err);
	if (ret < 0)
		kv_error_prefix(err,
				"ram: re-arming dirty tracking of block '%s' pages %zu..%zu",
				b->idstr, first, first + count - 1);
	return ret;
}

size_t kv_ram_put_header(struct kv_stream *s, struct kv_ram_state *rs,
			 size_t bi, size_t page, unsigned int flag)
{
	bool cont = rs->src.last_sent == bi;

	kv_stream_put_be64(s, ((uint64_t)page << KV_PAGE_SHIFT) | flag |
				  (cont ? KV_RAM_FLAG_CONTINUE : 0));
	rs->src.last_sent = bi;
	if (cont)
		return 0;
	kv_stream_put_str8(s, rs->blocks[bi].idstr);
	return 1 + strlen(rs->blocks[bi].idstr);
}

/* A ZERO record: fill byte 0. */
static void send_zero(struct kv_stream *s, struct kv_ram_state *rs, size_t bi,
		      size_t page)
{
	kv_ram_put_header(s, rs, bi, page, KV_RAM_FLAG_ZERO);
	kv_stream_put_u8(s, 0);
	kv_ram_stat_add(&rs->zero_pages, 1);
}

/* multifd: the page goes to a channel, unless legacy zero-page
 * detection finds it zero here (a ZERO record on the main stream). A page
 * the pagemap shows never populated is known zero without a read. */
int kv_ram_send_page_multifd(struct kv_stream *s, struct kv_ram_state *rs,
			     size_t bi, size_t page, struct kv_error *err)
{
	const struct kv_ram_block *b = &rs->blocks[bi];
	const uint8_t *p = b->host + ((uint64_t)page << KV_PAGE_SHIFT);
	bool unpopulated = rs->src.mfd_zero != KV_MFD_ZERO_NONE &&
			   kv_ram_page_unpopulated(rs, bi, page);
	int ret;

	if (rs->src.mfd_zero == KV_MFD_ZERO_LEGACY &&
	    (unpopulated || kv_buffer_is_zero(p, KV_PAGE_SIZE))) {
		send_zero(s, rs, bi, page);
		kv_ram_verify_zero(rs, bi, page);
		return 0;
	}
	if (unpopulated)
		kv_ram_verify_zero(rs, bi, page);
	else
		kv_ram_verify_page(rs, bi, page);
	ret = kv_mfd_send_page(rs->src.mfd_send, b->idstr, p,
			       (uint64_t)page << KV_PAGE_SHIFT, unpopulated,
			       err);
	if (ret < 0)
		kv_error_prefix(err, "ram");
	return ret;
}

/* The end of a pass (or of the switch-over) with multifd: everything on
 * the channels before the MULTIFD_FLUSH record (multifd.h). */
int kv_ram_multifd_flush(struct kv_stream *s, struct kv_ram_state *rs,
			 struct kv_error *err)
{
	int ret;

	if (!rs->src.mfd_send)
		return 0;
	ret = kv_mfd_send_sync(rs->src.mfd_send, err);
	if (ret < 0) {
		kv_error_prefix(err, "ram: multifd sync");
		return ret;
	}
	kv_stream_put_be64(s, KV_RAM_FLAG_MULTIFD_FLUSH);
	return 0;
}

/* A zero page (known without reading, or read) goes as a ZERO record. */
static bool send_if_zero(struct kv_stream *s, struct kv_ram_state *rs,
			 size_t bi, size_t page, const uint8_t *p)
{
	if (!kv_ram_page_unpopulated(rs, bi, page) &&
	    !kv_buffer_is_zero(p, KV_PAGE_SIZE))
		return false;
	send_zero(s, rs, bi, page);
	kv_ram_xbzrle_zero(rs, bi, page);
	kv_ram_verify_zero(rs, bi, page);
	return true;
}

static void send_whole(struct kv_stream *s, struct kv_ram_state *rs,
		       size_t bi, size_t page, const uint8_t *p)
{
	kv_ram_put_header(s, rs, bi, page, KV_RAM_FLAG_PAGE);
	kv_stream_put_page_ref(s, p, KV_PAGE_SIZE);
	kv_ram_stat_add(&rs->normal_pages, 1);
}

void kv_ram_send_page(struct kv_stream *s, struct kv_ram_state *rs, size_t bi,
		      size_t page)
{
	const uint8_t *p = rs->blocks[bi].host + ((uint64_t)page << KV_PAGE_SHIFT);

	if (send_if_zero(s, rs, bi, page, p))
		return;
	kv_ram_verify_page(rs, bi, page);
	/* After the postcopy switch the destination dropped its copy of a
	 * dirty page: a delta would apply to nothing. A ZPAGES record
	 * decodes to whole pages, which it places like PAGE records. */
	if (!rs->src.pc && kv_ram_xbzrle_send(s, rs, bi, page))
		return;
	if (!kv_ram_zc_send(s, rs, bi, page))
		send_whole(s, rs, bi, page, p);
}

void kv_ram_send_page_now(struct kv_stream *s, struct kv_ram_state *rs,
			  size_t bi, size_t page)
{
	const uint8_t *p = rs->blocks[bi].host + ((uint64_t)page << KV_PAGE_SHIFT);

	if (send_if_zero(s, rs, bi, page, p))
		return;
	kv_ram_verify_page(rs, bi, page);
	send_whole(s, rs, bi, page, p);
}

bool kv_ram_scan_next(struct kv_ram_state *rs, size_t *bi, size_t *page)
{
	size_t empty_scans = 0;

	/* Starting mid-block, a full round visits nblocks + 1 segments. */
	while (rs->nblocks && empty_scans <= rs->nblocks) {
		struct kv_ram_block *b = &rs->blocks[rs->src.search_block];
		size_t p = kv_bitmap_claim_next(b->dirty, b->npages,
						rs->src.search_page);

		if (p >= b->npages) {
			rs->src.search_block =
			    (rs->src.search_block + 1) % rs->nblocks;
			rs->src.search_page = 0;
			empty_scans++;
			continue;
		}
		*bi = rs->src.search_block;
		*page = p;
		rs->src.search_page = p + 1;
		kv_ram_stat_add(&rs->src.dirty_pages, (uint64_t)-1);
		return true;
	}
	return false;
}

/*
 * Send dirty pages until every bitmap is empty (returns 1), the deadline
 * passes (0; deadline_ns 0 = none) or something fails (<0).
 */
/* A page the pass claimed, to wherever this migration's pages go. */
static int send_claimed(struct kv_stream *s, struct kv_ram_state *rs,
			size_t bi, size_t page, struct kv_error *err)
{
	int ret;

	kv_ram_stat_add(&rs->src.pass_pages, 1);
	ret = rearm_chunk(rs, bi, page, err);
	if (ret < 0)
		return ret;
	if (rs->mapped)
		return kv_mapped_ram_send_page(rs, bi, page, err);
	if (rs->src.mfd_send)
		return kv_ram_send_page_multifd(s, rs, bi, page, err);
	kv_ram_send_page(s, rs, bi, page);
	return 0;
}

static int send_dirty_pages(struct kv_stream *s, struct kv_ram_state *rs,
			    int64_t deadline_ns, struct kv_error *err)
{
	unsigned int sent = 0;
	size_t bi, page;
	int64_t now;
	int ret;

	while (kv_ram_scan_next(rs, &bi, &page)) {
		if (!redirtied(rs, bi, page)) {
			ret = send_claimed(s, rs, bi, page, err);
			if (ret < 0)
				return ret;
		}
		if (++sent % CHECK_EVERY_PAGES)
			continue;
		kv_ram_zc_tick(s, rs);
		ret = stream_failed(s, err, "sending pages");
		if (ret < 0)
			return ret;
		now = kv_now_ns();
		if (deadline_ns && now >= deadline_ns)
			return 0;
		ret = peek_if_due(rs, now, err);
		if (ret < 0)
			return ret;
	}
	return 1;
}

int kv_ram_save_iterate(struct kv_stream *s, void *opaque, struct kv_error *err)
{
	struct kv_ram_state *rs = opaque;
	int ret;

	if (rs->src.background)
		return kv_ram_bg_iterate(s, rs, err);
	if (rs->src.pc)
		return kv_ram_pc_save_iterate(s, rs, err);
	/* Every section names its first block: a reader can start anywhere
	 * at a section boundary. */
	rs->src.last_sent = KV_RAM_NO_BLOCK;
	kv_pagemap_invalidate(&rs->pagemap);
	ret = send_dirty_pages(s, rs, kv_now_ns() + KV_RAM_ITERATE_NS, err);
	if (ret >= 0 && rs->mapped && kv_mapped_ram_flush(rs, ret == 1, err) < 0)
		return err->code;
	kv_ram_zc_flush(s, rs);
	kv_ram_xbzrle_publish(rs);
	if (ret == 1 && kv_ram_multifd_flush(s, rs, err) < 0)
		return err->code;
	if (ret < 0)
		return ret;
	kv_stream_put_be64(s, KV_RAM_FLAG_EOS);
	return stream_failed(s, err, "sending pages") ?: ret;
}

/* Pull the tracker's pages into the migration bitmaps. new_pass: false for
 * the last sync in complete, whose pages finish the pass already begun. */
static int ram_sync(struct kv_ram_state *rs, bool new_pass,
		    struct kv_error *err)
{
	int64_t added;

	if (!rs->src.tracker_started)
		return kv_error_set(err, -EINVAL,
				    "ram: dirty sync requested before setup started the tracker");
	added = rs->src.tracker.ops->sync(rs->src.tracker.opaque, rs->blocks,
					  rs->nblocks, err);
	if (added < 0) {
		uint64_t n = kv_ram_stat_get(&rs->src.dirty_sync_count);

		kv_error_prefix(err, "ram: dirty log sync %llu",
				(unsigned long long)n);
		return (int)added;
	}
	for (size_t i = 0; i < rs->nblocks; i++)
		kv_bitmap_set_all(rs->priv[i].clear_chunks,
				  chunk_count(&rs->blocks[i]));
	kv_pagemap_invalidate(&rs->pagemap);
	if (rs->src.skip_on)
		kv_debug("ram",
			 "pass %llu: %llu peeks so far (%.1f ms), re-arms %.1f ms, %llu pages skipped so far",
			 (unsigned long long)kv_ram_stat_get(
			     &rs->src.dirty_sync_count),
			 (unsigned long long)kv_ram_stat_get(
			     &rs->src.dirty_peeks),
			 (double)rs->src.peek_ns / 1e6,
			 (double)rs->src.rearm_ns / 1e6,
			 (unsigned long long)kv_ram_stat_get(
			     &rs->src.redirtied_skipped));
	if (new_pass) {
		kv_ram_stat_add(&rs->src.dirty_sync_count, 1);
		kv_ram_stat_set(&rs->src.pass_pages, 0);
		kv_ram_xbzrle_sync(rs);
	} else {
		/* The switch-over's pages: every one goes. */
		rs->src.peek_armed = false;
	}
	kv_ram_stat_set(&rs->src.dirty_pages, count_dirty(rs));
	return new_pass ? rearm_pass(rs, err) : 0;
}

int kv_ram_sync_final(struct kv_ram_state *rs, struct kv_error *err)
{
	return ram_sync(rs, false, err);
}

uint64_t kv_ram_pending_estimate(void *opaque)
{
	const struct kv_ram_state *rs = opaque;

	return kv_ram_stat_get(&rs->src.dirty_pages) * KV_PAGE_SIZE;
}

uint64_t kv_ram_pending_exact(void *opaque, struct kv_error *err)
{
	struct kv_ram_state *rs = opaque;

	if (!rs->src.background)
		ram_sync(rs, true, err);
	return kv_ram_pending_estimate(rs);
}

int kv_ram_save_complete(struct kv_stream *s, void *opaque,
			 struct kv_error *err)
{
	struct kv_ram_state *rs = opaque;
	int ret;

	if (rs->src.background)
		return kv_ram_bg_complete(s, rs, err);
	if (rs->src.pc)
		return kv_ram_pc_save_complete(s, rs, err);
	/* The workload is stopped: what it wrote since the last sync is the
	 * last thing to send, in the pass the driver's last sync began. */
	ret = ram_sync(rs, false, err);
	if (ret < 0)
		return ret;
	kv_switch_log("ram: last sync, %llu pages dirty",
		 (unsigned long long)kv_ram_stat_get(&rs->src.dirty_pages));
	rs->src.last_sent = KV_RAM_NO_BLOCK;
	kv_pagemap_invalidate(&rs->pagemap);
	rs->src.in_complete = true;
	ret = send_dirty_pages(s, rs, 0, err);
	kv_ram_zc_flush(s, rs);
	rs->src.in_complete = false;
	kv_ram_xbzrle_publish(rs);
	if (ret < 0)
		return ret;
	ret = kv_ram_multifd_flush(s, rs, err);
	if (ret == 0 && rs->mapped)
		ret = kv_mapped_ram_save_complete(rs, err);
	if (ret < 0)
		return ret;
	kv_switch_log("ram: last pages queued");
	kv_stream_put_be64(s, KV_RAM_FLAG_EOS);
	return stream_failed(s, err, "sending the last pages");
}

void kv_ram_save_cleanup(void *opaque, bool failed)
{
	struct kv_ram_state *rs = opaque;

	kv_ram_bg_stop(rs); /* un-protects everything first */
	if (rs->src.tracker_started) {
		/* A failed attempt keeps the tracker's marks for a retry. */
		rs->src.tracker.ops->stop(rs->src.tracker.opaque, failed);
		rs->src.tracker_started = false;
	}
	kv_ram_pagemap_close(rs);
	kv_mapped_ram_cleanup(rs);
	kv_ram_xbzrle_cleanup(rs);
	kv_ram_zc_cleanup(rs);
	free_save_bitmaps(rs);
}
