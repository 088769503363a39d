/* SPDX-License-Identifier: MIT */
/*
 * Postcopy's side of the RAM handler (docs/DESIGN.md "Postcopy").
 *
 * Source: at the switch the workload is stopped; the last sync leaves in
 * the migration bitmap exactly the pages the destination must not keep
 * (dirtied since sent, or never sent), and they go as RAM_DISCARD
 * commands (runs of set bits, 12 ranges a command). From then on every
 * PART section serves the destination's requests first (flushed at once:
 * a vCPU waits for them) and moves the background scan to just after the
 * page it served; the background scan claims each page in the same "sent
 * since the switch" bitmap as the requests (postcopy_src.h), so each
 * page leaves once, whole (no XBZRLE, no ZPAGES: the destination places
 * whole pages with UFFDIO_COPY).
 *
 * Destination: after ADVISE every page precopy loads is marked received;
 * after LISTEN every page record is placed through userfaultfd, which
 * drops a page that is already there (a request answered first).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/units.h"
#include "base/zero.h"
#include "io/channel.h"
#include "io/stream.h"
#include "migration/postcopy/postcopy_dst.h"
#include "migration/postcopy/postcopy_src.h"
#include "migration/postcopy/postcopy_wire.h"
#include "migration/ram/ram_internal.h"
#include "migration/ram/ram_prefault.h"
#include "migration/savevm/savevm.h"

/* Background pages between two looks for a request. */
#define URGENT_CHECK_PAGES 8U
/* Background bytes the link may hold (written, not yet received) before
 * the scan waits: a requested page queues behind all of them, so a deep
 * socket or qdisc queue (megabytes at 1 Gbit/s: tens of ms) is each
 * fault's wait, and the guest's pause at the switch is its first faults'
 * waits. 512 KiB is still several times a 1 Gbit/s link's bytes in
 * flight at a millisecond's round trip. */
#define PC_LINK_QUEUE_MAX (512 * KV_KiB)
/* How long the scan waits for room (or a request) at a time. */
#define PC_LINK_QUEUE_WAIT_MS 1

struct kv_pc_block *kv_ram_pc_blocks(struct kv_ram_state *rs, size_t *n)
{
	struct kv_pc_block *b = calloc(rs->nblocks ? rs->nblocks : 1,
				       sizeof(*b));

	if (!b)
		return NULL;
	for (size_t i = 0; i < rs->nblocks; i++) {
		b[i].idstr = rs->blocks[i].idstr;
		b[i].length = rs->blocks[i].length;
		b[i].page_size = KV_PAGE_SIZE;
	}
	*n = rs->nblocks;
	return b;
}

/* ---- source ---- */

/* One RAM_DISCARD command for the ranges collected so far. */
static int send_discard(struct kv_stream *s, const struct kv_ram_block *b,
			struct kv_pc_range *r, size_t *n, struct kv_error *err)
{
	uint8_t p[KV_PC_DISCARD_MAX_LEN];
	int len;

	if (!*n)
		return 0;
	len = kv_pc_discard_encode(b->idstr, r, *n, p, err);
	*n = 0;
	if (len < 0)
		return len;
	return kv_savevm_save_command(s, KV_MIG_CMD_POSTCOPY_RAM_DISCARD, p,
				      (uint16_t)len, err);
}

/* The runs of dirty pages of one block, 12 ranges a command. */
static int discard_block(struct kv_stream *s, const struct kv_ram_block *b,
			 uint64_t *ranges, struct kv_error *err)
{
	struct kv_pc_range r[KV_PC_DISCARD_MAX_RANGES];
	size_t n = 0, page = kv_bitmap_find_next(b->dirty, b->npages, 0);
	int ret;

	while (page < b->npages) {
		size_t end = page + 1;

		while (end < b->npages && kv_bitmap_test(b->dirty, end))
			end++;
		r[n].start = (uint64_t)page << KV_PAGE_SHIFT;
		r[n].len = (uint64_t)(end - page) << KV_PAGE_SHIFT;
		(*ranges)++;
		if (++n == KV_PC_DISCARD_MAX_RANGES) {
			ret = send_discard(s, b, r, &n, err);
			if (ret < 0)
				return ret;
		}
		page = kv_bitmap_find_next(b->dirty, b->npages, end);
	}
	return send_discard(s, b, r, &n, err);
}

int kv_ram_pc_switch(struct kv_stream *s, struct kv_ram_state *rs,
		     struct kv_pc_src *pcs, struct kv_error *err)
{
	uint64_t ranges = 0;
	int ret;

	ret = kv_ram_sync_final(rs, err);
	if (ret < 0)
		return ret;
	kv_switch_log("postcopy: last sync done");
	for (size_t i = 0; i < rs->nblocks && ret == 0; i++)
		ret = discard_block(s, &rs->blocks[i], &ranges, err);
	if (ret < 0) {
		kv_error_prefix(err, "ram: postcopy discard");
		return ret;
	}
	kv_switch_log("postcopy: %llu pages dirty, %llu discard ranges",
		      (unsigned long long)kv_ram_stat_get(&rs->src.dirty_pages),
		      (unsigned long long)ranges);
	/* The workload is stopped for good here: no tracking re-arm. */
	rs->src.in_complete = true;
	rs->src.last_sent = KV_RAM_NO_BLOCK;
	kv_pagemap_invalidate(&rs->pagemap);
	rs->src.pc = pcs;
	return 0;
}

void kv_ram_pc_src_resume(struct kv_ram_state *rs, size_t bi,
			  const unsigned long *received)
{
	struct kv_ram_block *b = &rs->blocks[bi];
	uint64_t dirty = 0;

	/* What the destination lacks is what is left to send: the pages
	 * lost with the link too. */
	for (size_t pg = 0; pg < b->npages; pg++) {
		if (kv_bitmap_test(received, pg)) {
			kv_bitmap_test_and_clear(b->dirty, pg);
		} else {
			kv_bitmap_set_atomic(b->dirty, pg);
			dirty++;
		}
	}
	kv_ram_stat_set(&rs->src.dirty_pages, 0);
	for (size_t i = 0; i < rs->nblocks; i++)
		kv_ram_stat_add(&rs->src.dirty_pages,
				kv_bitmap_count(rs->blocks[i].dirty,
						rs->blocks[i].npages));
	rs->src.search_block = 0;
	rs->src.search_page = 0;
	rs->src.last_sent = KV_RAM_NO_BLOCK;
	kv_switch_log("postcopy: block '%s' resumes with %llu pages to send",
		      b->idstr, (unsigned long long)dirty);
}

void kv_ram_pc_src_end(struct kv_ram_state *rs)
{
	rs->src.pc = NULL;
	rs->src.in_complete = false;
}

/* Every requested page not sent yet; true when one went. With
 * postcopy-preempt the preempt channel's thread serves them; the
 * background scan still moves after each. */
static bool serve_urgent(struct kv_stream *s, struct kv_ram_state *rs)
{
	struct kv_pc_page pg;
	bool any = false;

	while (!__atomic_load_n(&rs->src.pc_preempt, __ATOMIC_ACQUIRE) &&
	       kv_pc_src_next_urgent(rs->src.pc, &pg)) {
		kv_ram_send_page(s, rs, pg.block,
				 (size_t)(pg.offset >> KV_PAGE_SHIFT));
		any = true;
	}
	if (kv_pc_src_take_scan_hint(rs->src.pc, &pg)) {
		rs->src.search_block = pg.block;
		rs->src.search_page = (size_t)(pg.offset >> KV_PAGE_SHIFT);
	}
	return any;
}

/* Up to max background pages; 1 when no dirty page is left. */
static int send_background(struct kv_stream *s, struct kv_ram_state *rs,
			   unsigned max)
{
	unsigned sent = 0;
	size_t bi, page;

	while (sent < max && kv_ram_scan_next(rs, &bi, &page)) {
		if (!kv_pc_src_claim(rs->src.pc, bi,
				     (uint64_t)page << KV_PAGE_SHIFT))
			continue; /* it went as a requested page */
		kv_ram_stat_add(&rs->src.pass_pages, 1);
		kv_ram_send_page(s, rs, bi, page);
		sent++;
	}
	return sent < max ? 1 : 0;
}

static int pc_stream_failed(struct kv_stream *s, struct kv_error *err)
{
	if (!kv_stream_error(s))
		return 0;
	kv_stream_error_get(s, err);
	kv_error_prefix(err, "ram: sending postcopy pages");
	return err->code;
}

/* Whether the link holds enough background pages already. With
 * preempt, requested pages do not queue behind them: never. */
static bool link_queue_full(struct kv_stream *s, struct kv_ram_state *rs)
{
	int64_t unsent;

	if (__atomic_load_n(&rs->src.pc_preempt, __ATOMIC_ACQUIRE))
		return false;
	unsent = kv_chan_unsent(kv_stream_chan(s));
	if (unsent < 0)
		return false; /* the transport cannot tell */
	return (uint64_t)unsent + kv_stream_buffered(s) >= PC_LINK_QUEUE_MAX;
}

/* The link is full: push what is buffered, then wait for a request or a
 * moment for the link to drain. */
static void wait_link_room(struct kv_stream *s, struct kv_ram_state *rs)
{
	if (kv_stream_buffered(s) && kv_stream_flush(s) < 0)
		return;
	kv_pc_src_wait_urgent(rs->src.pc, PC_LINK_QUEUE_WAIT_MS);
}

int kv_ram_pc_save_iterate(struct kv_stream *s, struct kv_ram_state *rs,
			   struct kv_error *err)
{
	int64_t deadline = kv_now_ns() + KV_RAM_ITERATE_NS;
	int done = 0;

	rs->src.last_sent = KV_RAM_NO_BLOCK;
	if (rs->nblocks == 0)
		done = 1;
	while (!done) {
		if (serve_urgent(s, rs) && kv_stream_flush(s) < 0)
			break;
		if (link_queue_full(s, rs))
			wait_link_room(s, rs);
		else
			done = send_background(s, rs, URGENT_CHECK_PAGES);
		if (kv_stream_error(s) || kv_now_ns() >= deadline)
			break;
	}
	kv_stream_put_be64(s, KV_RAM_FLAG_EOS);
	return pc_stream_failed(s, err) ?: done;
}

int kv_ram_pc_save_complete(struct kv_stream *s, struct kv_ram_state *rs,
			    struct kv_error *err)
{
	rs->src.last_sent = KV_RAM_NO_BLOCK;
	while (send_background(s, rs, UINT32_MAX) == 0)
		;
	kv_stream_put_be64(s, KV_RAM_FLAG_EOS);
	return pc_stream_failed(s, err);
}

/* ---- postcopy-preempt: requested pages on a channel of their own ---- */

void kv_ram_pc_set_preempt(struct kv_ram_state *rs, bool on)
{
	__atomic_store_n(&rs->src.pc_preempt, on, __ATOMIC_RELEASE);
}

/* A requested page on the preempt channel: bare RAM records (QEMU 7.2's
 * preempt channel carries no sections), CONTINUE against this channel's
 * own previous record. The guest is stopped here: the page is stable. */
int kv_ram_pc_send_urgent(struct kv_stream *s, struct kv_ram_state *rs,
			  const struct kv_pc_page *pg, size_t *last_block,
			  struct kv_error *err)
{
	const struct kv_ram_block *b = &rs->blocks[pg->block];
	const uint8_t *p = b->host + pg->offset;
	size_t page = (size_t)(pg->offset >> KV_PAGE_SHIFT);
	bool zero = kv_buffer_is_zero(p, KV_PAGE_SIZE);
	bool cont = *last_block == pg->block;

	kv_stream_put_be64(s, pg->offset |
				  (zero ? KV_RAM_FLAG_ZERO : KV_RAM_FLAG_PAGE) |
				  (cont ? KV_RAM_FLAG_CONTINUE : 0));
	if (!cont)
		kv_stream_put_str8(s, b->idstr);
	*last_block = pg->block;
	if (zero) {
		kv_stream_put_u8(s, 0);
		kv_ram_verify_zero(rs, pg->block, page);
	} else {
		kv_ram_verify_page(rs, pg->block, page);
		kv_stream_put_buffer(s, p, KV_PAGE_SIZE);
	}
	return pc_stream_failed(s, err);
}

/* The destination's preempt channel: records until EOS, each placed at
 * once (the listen thread may place the same page from the main stream:
 * the first placement wins, the other is dropped). */
int kv_ram_pc_load_preempt(struct kv_stream *s, struct kv_ram_state *rs,
			   uint64_t *pages, struct kv_error *err)
{
	uint8_t *buf = malloc(KV_PAGE_SIZE);
	size_t bi = KV_RAM_NO_BLOCK;
	int ret = 0;

	if (!buf)
		return kv_error_set(err, -ENOMEM, "postcopy preempt: out of memory");
	while (ret == 0) {
		uint64_t v = kv_stream_get_be64(s), off = v & ~(uint64_t)(KV_PAGE_SIZE - 1);
		unsigned flags = (unsigned)(v & (KV_PAGE_SIZE - 1));
		char idstr[256];

		if (kv_stream_error(s))
			break;
		if (flags == KV_RAM_FLAG_EOS && !off)
			break;
		if (!(flags & KV_RAM_FLAG_CONTINUE)) {
			kv_stream_get_str8(s, idstr, sizeof(idstr));
			bi = kv_ram_find_block(rs, idstr);
		}
		flags &= ~KV_RAM_FLAG_CONTINUE;
		if (kv_stream_error(s))
			break;
		if (bi == KV_RAM_NO_BLOCK || off >= rs->blocks[bi].length ||
		    (flags != KV_RAM_FLAG_ZERO && flags != KV_RAM_FLAG_PAGE)) {
			ret = kv_error_set(err, -EINVAL, "postcopy preempt channel: a record (addr 0x%llx flags 0x%x) that is no page of a known block, at stream offset %llu", (unsigned long long)off, flags, (unsigned long long)kv_stream_offset(s));
			break;
		}
		if (flags == KV_RAM_FLAG_ZERO && kv_stream_get_u8(s) != 0)
			ret = kv_error_set(err, -EINVAL, "postcopy preempt channel: ZERO record with a fill byte other than 0");
		if (flags == KV_RAM_FLAG_PAGE)
			kv_stream_get_buffer(s, buf, KV_PAGE_SIZE);
		if (ret == 0 && !kv_stream_error(s))
			ret = kv_ram_pc_place(rs, bi, off,
					      flags == KV_RAM_FLAG_PAGE ? buf
									: NULL,
					      err);
		if (ret == 0 && !kv_stream_error(s))
			__atomic_fetch_add(pages, 1, __ATOMIC_RELAXED);
	}
	free(buf);
	if (ret == 0 && kv_stream_error(s)) {
		kv_stream_error_get(s, err);
		kv_error_prefix(err, "postcopy preempt channel");
		ret = err->code;
	}
	return ret;
}

/* ---- destination ---- */

int kv_ram_pc_set_dst(struct kv_ram_state *rs, struct kv_pc_dst *d,
		      struct kv_error *err)
{
	if (d && rs->dst.mfd_recv)
		return kv_error_set(err, -ENOTSUP, "postcopy with multifd is not supported by kvmig yet: turn multifd off on both sides");
	if (d && !rs->dst.pc_page) {
		rs->dst.pc_page = malloc(KV_PAGE_SIZE);
		if (!rs->dst.pc_page)
			return kv_error_set(err, -ENOMEM, "ram: no memory for postcopy");
	}
	rs->dst.pc = d;
	rs->dst.pc_listening = false;
	rs->dst.pc_running = false;
	return 0;
}

void kv_ram_pc_listen(struct kv_ram_state *rs)
{
	/* A helper that populates a page after LISTEN dropped it would
	 * make the guest read zeros there instead of faulting. */
	kv_ram_prefault_stop(rs->dst.prefault);
	rs->dst.prefault = NULL;
}

void kv_ram_pc_listening(struct kv_ram_state *rs)
{
	rs->dst.pc_listening = true;
}

void kv_ram_pc_running(struct kv_ram_state *rs)
{
	rs->dst.pc_running = true;
}

void kv_ram_pc_received(struct kv_ram_state *rs, size_t bi, uint64_t offset)
{
	if (rs->dst.pc)
		kv_pc_dst_mark_received(rs->dst.pc, bi, offset, KV_PAGE_SIZE);
}

int kv_ram_pc_place(struct kv_ram_state *rs, size_t bi, uint64_t offset,
		    const void *data, struct kv_error *err)
{
	size_t page = (size_t)(offset >> KV_PAGE_SHIFT);
	int ret = kv_pc_dst_place(rs->dst.pc, bi, offset, data, err);

	if (ret != 0)
		return ret < 0 ? ret : 0; /* 1: here already, dropped */
	if (data)
		kv_ram_verify_data(rs, bi, page, data);
	else
		kv_ram_verify_zero(rs, bi, page);
	return 0;
}
