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
 * page leaves once, whole: no XBZRLE (a delta against a page the
 * destination dropped), but background pages may go in ZPAGES records
 * when x-compress says so (they decode to whole pages); a requested page
 * always goes at once as a PAGE record, never in a compression batch.
 *
 * Destination: after ADVISE every page precopy loads is marked received;
 * after LISTEN every page record (and each page of a ZPAGES record) is
 * placed through userfaultfd, which drops a page that is already there
 * (a request answered first).
 *
 * multifd (kvmig's extension, docs/DESIGN.md "multifd during postcopy"):
 * at the switch the channels are synced before the discards (every
 * precopy page is in place before one is dropped); after it background
 * pages go on the channels as POSTCOPY packets, which the destination
 * places through userfaultfd once LISTEN armed it; the last sync before
 * END makes sure they are all placed. A channel's failure pauses
 * postcopy as the main link's does; after a recovery the background
 * pages go on the main stream.
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

/* ---- multifd during postcopy, source ---- */

int kv_ram_pc_multifd_sync(struct kv_savevm *sv, struct kv_stream *s,
			   struct kv_ram_state *rs, struct kv_pc_src *pcs,
			   struct kv_error *err)
{
	int ret;

	if (!rs->src.mfd_send)
		return 0;
	/* save_iterate dispatches to kv_ram_pc_save_iterate, which sees
	 * pc_mfd_sync and writes the sync only. */
	rs->src.pc = pcs;
	rs->src.pc_mfd_sync = true;
	ret = kv_savevm_save_iterate(sv, s, err);
	rs->src.pc_mfd_sync = false;
	rs->src.pc = NULL;
	if (ret < 0)
		kv_error_prefix(err, "postcopy: the multifd channels' sync at the switch");
	else
		kv_switch_log("postcopy: multifd channels synced");
	return ret < 0 ? ret : 0;
}

/* The switch's sync is done: background pages take the channels. A
 * requested page the background scan already handed to a channel may
 * wait there behind a whole packet or two: it goes again on the main
 * stream (the destination keeps whichever copy comes first). */
static void pc_mfd_begin(struct kv_ram_state *rs)
{
	rs->src.pc_mfd = rs->src.mfd_send != NULL;
	if (!rs->src.pc_mfd)
		return;
	kv_mfd_send_set_postcopy(rs->src.mfd_send);
	kv_pc_src_set_resend(rs->src.pc, true);
}

/* The channels are not used any more: a page sent is on the main
 * stream, in order. */
static void pc_mfd_stop(struct kv_ram_state *rs)
{
	rs->src.pc_mfd = false;
	if (rs->src.pc)
		kv_pc_src_set_resend(rs->src.pc, false);
}

/* A channel failed after RUN: the destination runs the guest, so this
 * is a break like the main link's. The main stream is shut down too, so
 * that the destination pauses at once (its channel may be silent rather
 * than closed), and the channels are not used again. */
static int pc_mfd_failed(struct kv_stream *s, struct kv_ram_state *rs,
			 struct kv_error *err)
{
	pc_mfd_stop(rs);
	kv_stream_shutdown(s);
	kv_error_prefix(err, "postcopy: a multifd channel broke");
	return err->code ? err->code : -EPIPE;
}

/* After a break: the multifd channels are closed for good (their lost
 * pages are missing in the destination's received bitmap, so they go
 * again on the main stream). */
static void pc_mfd_drop(struct kv_ram_state *rs)
{
	if (!rs->src.mfd_send || !rs->src.pc_mfd)
		return;
	pc_mfd_stop(rs);
	kv_mfd_send_cancel(rs->src.mfd_send);
	kv_switch_log("postcopy: multifd channels closed, pages go on the main stream");
}

/* Whether a channel can take a batch of background pages now. */
static bool pc_mfd_room(struct kv_ram_state *rs)
{
	return !rs->src.pc_mfd || kv_mfd_send_has_room(rs->src.mfd_send);
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
	rs->src.pc_requests_seen = 0;
	/* RUN lifts max-bandwidth: x-compress measures the link anew. */
	kv_ram_zc_link_changed(rs);
	rs->src.pc = pcs;
	pc_mfd_begin(rs);
	return 0;
}

void kv_ram_pc_src_resume(struct kv_ram_state *rs, size_t bi,
			  const unsigned long *received)
{
	struct kv_ram_block *b = &rs->blocks[bi];
	uint64_t dirty = 0;

	pc_mfd_drop(rs);
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
	kv_ram_zc_restart(rs);
	kv_switch_log("postcopy: block '%s' resumes with %llu pages to send",
		      b->idstr, (unsigned long long)dirty);
}

void kv_ram_pc_src_end(struct kv_ram_state *rs)
{
	rs->src.pc = NULL;
	rs->src.pc_mfd = false;
	rs->src.in_complete = false;
}

/* Did the destination ask for a page since the last look (served now,
 * or claimed already by the background scan)? */
static bool requests_came(struct kv_ram_state *rs)
{
	struct kv_pc_src_stats st;
	uint64_t seen;

	kv_pc_src_get_stats(rs->src.pc, &st);
	seen = st.urgent + st.duplicates;
	if (seen == rs->src.pc_requests_seen)
		return false;
	rs->src.pc_requests_seen = seen;
	return true;
}

/* Every requested page not sent yet, at once and whole; true when one
 * went. A request for a page the background claimed may be for a page
 * of the compression batch being filled: the batch goes right after the
 * requested pages. With postcopy-preempt the preempt channel's thread
 * serves them (and sends claimed ones again); the background scan still
 * moves after each. */
static bool serve_urgent(struct kv_stream *s, struct kv_ram_state *rs)
{
	bool preempt = __atomic_load_n(&rs->src.pc_preempt, __ATOMIC_ACQUIRE);
	struct kv_pc_page pg;
	bool any = false;

	while (!preempt && kv_pc_src_next_urgent(rs->src.pc, &pg)) {
		kv_ram_send_page_now(s, rs, pg.block,
				     (size_t)(pg.offset >> KV_PAGE_SHIFT));
		any = true;
	}
	if (!preempt && requests_came(rs) && rs->src.zc.n) {
		kv_ram_zc_flush(s, rs);
		any = true;
	}
	if (kv_pc_src_take_scan_hint(rs->src.pc, &pg)) {
		rs->src.search_block = pg.block;
		rs->src.search_page = (size_t)(pg.offset >> KV_PAGE_SHIFT);
	}
	return any;
}

/* Up to max background pages, on the multifd channels while they are
 * used, else on the main stream; 1 when no dirty page is left, <0 when a
 * channel failed. */
static int send_background(struct kv_stream *s, struct kv_ram_state *rs,
			   unsigned max, struct kv_error *err)
{
	unsigned sent = 0;
	size_t bi, page;

	while (sent < max) {
		if (!kv_ram_scan_next(rs, &bi, &page))
			return 1;
		if (!kv_pc_src_claim(rs->src.pc, bi,
				     (uint64_t)page << KV_PAGE_SHIFT))
			continue; /* it went as a requested page */
		kv_ram_stat_add(&rs->src.pass_pages, 1);
		if (!rs->src.pc_mfd)
			kv_ram_send_page(s, rs, bi, page);
		else if (kv_ram_send_page_multifd(s, rs, bi, page, err) < 0)
			return pc_mfd_failed(s, rs, err);
		sent++;
	}
	return 0;
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
 * moment for the link to drain (time x-compress counts as waiting on the
 * link). */
static void wait_link_room(struct kv_stream *s, struct kv_ram_state *rs)
{
	int64_t t0;

	if (kv_stream_buffered(s) && kv_stream_flush(s) < 0)
		return;
	t0 = kv_now_ns();
	kv_pc_src_wait_urgent(rs->src.pc, PC_LINK_QUEUE_WAIT_MS);
	kv_ram_zc_note_link_wait(rs, (uint64_t)(kv_now_ns() - t0));
}

/* The switch's section with multifd: the channels' sync only. */
static int pc_mfd_sync_section(struct kv_stream *s, struct kv_ram_state *rs,
			       struct kv_error *err)
{
	int ret = kv_ram_multifd_flush(s, rs, err);

	if (ret < 0)
		return ret;
	kv_stream_put_be64(s, KV_RAM_FLAG_EOS);
	return pc_stream_failed(s, err);
}

int kv_ram_pc_save_iterate(struct kv_stream *s, struct kv_ram_state *rs,
			   struct kv_error *err)
{
	int64_t deadline = kv_now_ns() + KV_RAM_ITERATE_NS;
	int done = 0;

	if (rs->src.pc_mfd_sync)
		return pc_mfd_sync_section(s, rs, err);
	rs->src.last_sent = KV_RAM_NO_BLOCK;
	if (rs->nblocks == 0)
		done = 1;
	while (done == 0) {
		if (serve_urgent(s, rs) && kv_stream_flush(s) < 0)
			break;
		if (link_queue_full(s, rs) || !pc_mfd_room(rs))
			wait_link_room(s, rs);
		else
			done = send_background(s, rs, URGENT_CHECK_PAGES, err);
		kv_ram_zc_tick(s, rs);
		if (kv_stream_error(s) || kv_now_ns() >= deadline)
			break;
	}
	if (done < 0)
		return done;
	kv_ram_zc_flush(s, rs);
	kv_stream_put_be64(s, KV_RAM_FLAG_EOS);
	return pc_stream_failed(s, err) ?: done;
}

int kv_ram_pc_save_complete(struct kv_stream *s, struct kv_ram_state *rs,
			    struct kv_error *err)
{
	int ret;

	rs->src.last_sent = KV_RAM_NO_BLOCK;
	while ((ret = send_background(s, rs, UINT32_MAX, err)) == 0)
		;
	if (ret < 0)
		return ret;
	kv_ram_zc_flush(s, rs);
	/* No END before every channel's pages are placed: the destination
	 * waits at this MULTIFD_FLUSH for every channel's SYNC. */
	if (rs->src.pc_mfd && kv_ram_multifd_flush(s, rs, err) < 0)
		return pc_mfd_failed(s, rs, err);
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
	if (d && !rs->dst.pc_page) {
		rs->dst.pc_page = malloc(KV_PAGE_SIZE);
		if (!rs->dst.pc_page)
			return kv_error_set(err, -ENOMEM, "ram: no memory for postcopy");
	}
	rs->dst.pc = d;
	if (d && rs->dst.mfd_recv)
		kv_mfd_recv_pc_advise(rs->dst.mfd_recv);
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
	/* The multifd channels' POSTCOPY packets may be placed now. */
	if (rs->dst.mfd_recv)
		kv_mfd_recv_pc_listen(rs->dst.mfd_recv);
}

void kv_ram_pc_running(struct kv_ram_state *rs)
{
	rs->dst.pc_running = true;
}

void kv_ram_pc_dst_resume(struct kv_ram_state *rs)
{
	kv_ram_zpages_restart(rs);
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

/* The block whose memory starts at host (a multifd packet names it). */
static size_t block_at(const struct kv_ram_state *rs, const uint8_t *host)
{
	for (size_t i = 0; i < rs->nblocks; i++)
		if (rs->blocks[i].host == host)
			return i;
	return KV_RAM_NO_BLOCK;
}

int kv_ram_pc_mfd_place(void *opaque, const uint8_t *host,
			const uint64_t *offs, const uint8_t *data,
			uint32_t normal, uint32_t zero, struct kv_error *err)
{
	struct kv_ram_state *rs = opaque;
	size_t bi = block_at(rs, host);
	int ret = 0;

	if (bi == KV_RAM_NO_BLOCK || !rs->dst.pc)
		return kv_error_set(err, -EINVAL, "postcopy pages on a multifd channel, but this destination is not in postcopy");
	for (uint32_t i = 0; i < normal && ret == 0; i++)
		ret = kv_ram_pc_place(rs, bi, offs[i],
				      data + (size_t)i * KV_PAGE_SIZE, err);
	for (uint32_t i = normal; i < normal + zero && ret == 0; i++)
		ret = kv_ram_pc_place(rs, bi, offs[i], NULL, err);
	return ret;
}
