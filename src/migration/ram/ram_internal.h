/* SPDX-License-Identifier: MIT */
/*
 * What the RAM handler's source side (ram_save.c), destination side
 * (ram_load.c) and bookkeeping (ram.c) share. Not a public contract: only
 * migration/ and its unit tests include it.
 *
 * The state has a source half (struct kv_ram_src: what save_setup ..
 * save_cleanup use) and a destination half (struct kv_ram_dst: what
 * load_setup .. load_cleanup use); the blocks, the pagemap and the page
 * counters are shared. A field belongs to the half whose side uses it.
 *
 * Threading: the save callbacks run on the migration thread, the load
 * callbacks on the loading thread; one kv_ram_state is either a source or
 * a destination at a time. The counters are written by that one thread
 * and read with relaxed atomics by kv_ram_get_stats() from any thread.
 */
#ifndef KV_MIGRATION_RAM_INTERNAL_H
#define KV_MIGRATION_RAM_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io/channel.h"
#include "migration/multifd/multifd.h"
#include "migration/ram/mapped_ram.h"
#include "migration/ram/page_cache.h"
#include "migration/ram/pagemap.h"
#include "migration/ram/ram.h"

/* Tracking is re-armed (tracker->clear) per chunk of this many pages, just
 * before the first page of the chunk is sent after a sync; the pagemap is
 * read per chunk of the same size. */
#define KV_RAM_CLEAR_CHUNK_PAGES KV_PAGEMAP_CHUNK_PAGES

/* A save_iterate call stops after about this long. */
#define KV_RAM_ITERATE_NS (50 * 1000 * 1000LL)

/* Skipping re-dirtied pages: how often the pass peeks at the tracker. */
#define KV_RAM_PEEK_NS (10 * 1000 * 1000LL)

#define KV_RAM_NO_BLOCK ((size_t)-1)

/* Per-block state that is not part of the public kv_ram_block. */
struct kv_ram_block_priv {
	/* Source: chunks whose tracking is still to be re-armed. */
	unsigned long *clear_chunks;
	/* Source, skipping re-dirtied pages: the last peek at the tracker
	 * (pages written since the pass began); NULL when not skipping. */
	unsigned long *peeked;
	/* Destination: pages the loader wrote (dropped on failure). */
	unsigned long *touched;
	/* Both sides: private anonymous memory, page-aligned: a page the kernel
	 * never populated reads as zero, which /proc/self/pagemap tells
	 * without touching (and faulting in) the page. */
	bool anon_private;
	bool from_allocator; /* destination: created for the stream */
	/* --verify-ram: XXH3-64 of each page as last sent or placed
	 * (ram_verify.c); NULL until the first migration with it. */
	uint64_t *page_hash;
	bool announced;	     /* destination: named in MEM_SIZE */
};

/* XBZRLE, source (ram_xbzrle.c). The cache holds, for each cached page,
 * exactly what the destination has: every later send of that page goes
 * through it (delta, unchanged, raw snapshot or zero). */
struct kv_ram_xbzrle {
	uint64_t cache_size; /* configured, bytes; 0 = off */
	struct kv_page_cache *cache; /* while a migration runs */
	bool active;		     /* from the second pass on */
	uint8_t *snap;		     /* the page as read once, 4 KiB */
	uint8_t *enc;		     /* its delta, 4 KiB */
	uint64_t skipped;	     /* unchanged: nothing sent */
	struct kv_xbzrle_rates rates;
	/* Published for other threads (relaxed atomics). */
	struct kv_xbzrle_stats pub;
	uint64_t pub_skipped;
	double pub_miss_rate, pub_encoding_rate;
};

/* Main-stream compression, source (ram_compress.c). */
#define KV_RAM_ZC_BATCH 64U /* pages per ZPAGES record, at most */
struct kv_mfd_codec;
struct kv_ram_zc_sample; /* ram_compress.c: auto's off-the-wire measure */
struct kv_ram_zc {
	enum kv_ram_compress mode;
	bool active;		    /* pages go into batches now */
	bool probe;		    /* auto: sample one batch to measure */
	bool raw_probe;		    /* auto: a window of raw pages, to measure */
	struct kv_mfd_codec *codec; /* the encoder (codec/zstd.c), made when
				     * compression is first chosen */
	struct kv_ram_zc_sample *sample; /* auto over a socket, else NULL */
	/* The batch being filled: pages of one block, in the order sent. */
	size_t n, bi;
	size_t page[KV_RAM_ZC_BATCH];
	uint8_t *buf; /* the compressed payload */
	size_t buf_size;
	/* auto's measurements: a window of the link, the compressor's
	 * speed and ratio (bytes/s, EWMA; 0 = not measured yet). */
	int64_t win_start;
	uint64_t win_delivered, win_wait_ns;
	/* Waits for the link the stream does not see (postcopy's scan
	 * waiting for room on the link), ns since setup. */
	uint64_t other_wait_ns;
	struct kv_tcp_limits win_tcp; /* zero: not TCP */
	uint64_t win_in, win_out, win_ns;
	double link_bps, comp_bps, ratio;
	int64_t next_probe;
	int64_t next_raw_probe, raw_probe_ns; /* raw_probe_ns: backoff */
	unsigned bound_windows; /* consecutive link-bound windows, raw */
	/* For kv_ram_wire_factor: full pages since its last call. */
	uint64_t fac_raw_pages, fac_zc_pages, fac_zc_bytes;
	/* Counters (relaxed atomics; see kv_ram_compress_stats). */
	uint64_t pages, bytes, switches;
	bool pub_active;
};

/* The source half: page search, tracking, XBZRLE, x-compress, multifd
 * channels, and the counters only a source keeps. */
struct kv_ram_src {
	struct kv_dirty_tracker tracker;
	bool has_tracker;
	bool tracker_started;
	bool in_complete;    /* save_complete runs: the workload is stopped */
	size_t search_block; /* the page search resumes here */
	size_t search_page;
	size_t last_sent; /* block of the previous record, for CONTINUE */

	struct kv_ram_xbzrle xb;
	struct kv_ram_zc zc;

	/* multifd (multifd.h): pages go over channels; NULL: all on the
	 * main stream. */
	struct kv_mfd_send *mfd_send;
	enum kv_mfd_zero mfd_zero;

	/* background-snapshot (bg_snapshot.c): no tracker, every page once,
	 * write-protected from kv_ram_bg_protect until it is saved. */
	bool background;
	struct kv_ram_bg *bg;
	/* Postcopy (postcopy/postcopy_ram.c): from the switch on, requested
	 * pages first and every page once; NULL before. */
	struct kv_pc_src *pc;
	bool pc_preempt; /* atomic: the preempt channel serves requests */
	/* multifd during postcopy (postcopy_ram.c): the next PART section
	 * is the switch's multifd sync only; background pages go on the
	 * channels (false again after a break: the main stream then). */
	bool pc_mfd_sync;
	bool pc_mfd;
	/* Requests served or found sent already, at the last look (a
	 * request flushes the compression batch being filled). */
	uint64_t pc_requests_seen;

	/* postcopy-ram (kv_ram_set_skip_redirtied): a page the guest wrote
	 * again since its pass began is not sent in the pass, since it
	 * would go again after the switch anyway; the tracker still holds
	 * it, so the next sync (the next pass, or the switch's discards)
	 * has it. skip_redirtied: configured; skip_on: for this migration
	 * (a tracker that can peek, a stream); peek_armed: every page was
	 * re-armed when this pass began, so a peek means "written since". */
	bool skip_redirtied;
	bool skip_on;
	bool peek_armed;
	int64_t next_peek_ns;
	unsigned long **peek_out; /* each block's `peeked`, for the peek */
	uint64_t peek_ns, rearm_ns; /* time spent in them, for the log */

	/* Counters (see struct kv_ram_stats). */
	uint64_t dirty_sync_count;
	uint64_t pass_pages;
	uint64_t dirty_pages;
	uint64_t dirty_peeks;
	uint64_t redirtied_skipped;
};

/* The destination half: the loader's context, blocks created for the
 * stream, prefault, multifd channels, decoders. */
struct kv_ram_dst {
	struct kv_ram_allocator allocator;
	bool has_allocator;
	uint64_t allocated; /* bytes obtained from the allocator */

	uint64_t load_sections; /* sections handed to load_state so far */
	size_t last_recv;	/* block of the previous record */
	bool mem_size_seen;
	struct kv_ram_prefault *prefault; /* NULL: none (see ram_prefault.c) */

	/* multifd: channel threads write pages into the blocks; NULL: all
	 * on the main stream. */
	struct kv_mfd_recv *mfd_recv;

	/* Postcopy (postcopy/postcopy_ram.c): the pages this side has, from
	 * ADVISE on (NULL: no postcopy); from LISTEN on pages are placed
	 * through userfaultfd (pc_page is the bounce buffer); once the
	 * guest runs here nothing loaded may be dropped. */
	struct kv_pc_dst *pc;
	bool pc_listening;
	bool pc_running;
	uint8_t *pc_page;

	uint8_t *xbzrle_dec;	/* a received XBZRLE delta, 4 KiB */
	uint64_t xbzrle_pages;	/* XBZRLE records loaded */
	/* ZPAGES records: the zstd decoder (one stream per migration, made
	 * at the first record) and its input. */
	struct kv_mfd_codec *zpages_dec;
	uint8_t *zpages_buf;
	size_t zpages_buf_size;
	/* After postcopy's LISTEN a batch decodes here (KV_RAM_ZC_BATCH
	 * pages), then each page is placed through userfaultfd. */
	uint8_t *zpages_bounce;
};

struct kv_ram_state {
	struct kv_ram_block *blocks; /* contiguous: trackers get the array */
	struct kv_ram_block_priv *priv;
	size_t nblocks, cap;

	/* Never-populated pages of anon_private blocks (pagemap.h): the
	 * source sends them as zero pages unread, the destination leaves
	 * zero pages there unwritten. The cache is dropped at every sync and
	 * section (see ram_save.c) and whenever multifd channels wrote. */
	struct kv_pagemap pagemap;

	struct kv_ram_src src;
	struct kv_ram_dst dst;

	/* --verify-ram (ram_verify.c); both sides. */
	struct {
		bool on;
		uint64_t zero_hash; /* of a page of zeros */
	} verify;

	/* mapped-ram (mapped_ram.h): the next migration's configuration,
	 * and the file's layout and I/O threads while one runs. */
	struct kv_mapped_ram_cfg mapped_cfg;
	struct kv_mapped_ram *mapped;
	uint64_t mapped_bytes; /* page bytes its I/O moved (atomic) */
	/* Destination: instant resume's pages on demand and its filler,
	 * from the load until every page is in (or kv_ram_free). */
	struct kv_mapped_ram_instant *instant;

	/* Pages sent (source) or loaded (destination); see kv_ram_stats. */
	uint64_t zero_pages;
	uint64_t normal_pages;
};

/* Single writer, readers on other threads: relaxed atomics suffice. */
static inline void kv_ram_stat_set(uint64_t *ctr, uint64_t v)
{
	__atomic_store_n(ctr, v, __ATOMIC_RELAXED);
}

static inline void kv_ram_stat_add(uint64_t *ctr, uint64_t d)
{
	__atomic_store_n(ctr, __atomic_load_n(ctr, __ATOMIC_RELAXED) + d,
			 __ATOMIC_RELAXED);
}

static inline uint64_t kv_ram_stat_get(const uint64_t *ctr)
{
	return __atomic_load_n(ctr, __ATOMIC_RELAXED);
}

/* ram.c */
/* Append a block; from_allocator marks memory to release with the
 * allocator. Returns the new block's index or <0. */
int kv_ram_append_block(struct kv_ram_state *rs, const char *idstr, void *host,
			uint64_t length, bool from_allocator,
			struct kv_error *err);
/* Release (through the allocator) and remove every block the allocator
 * created; pre-registered blocks keep their order. */
void kv_ram_release_allocated(struct kv_ram_state *rs);
/* Index of the block named idstr, or KV_RAM_NO_BLOCK. */
size_t kv_ram_find_block(const struct kv_ram_state *rs, const char *idstr);
/*
 * Never-populated pages of private anonymous blocks (pagemap.h): open
 * finds the eligible blocks; unpopulated answers from entries cached per
 * chunk (the caller drops the cache with kv_pagemap_invalidate() whenever
 * someone else may have written since); populated records a write of our
 * own in the cache. Without pagemap every page is "populated".
 */
void kv_ram_pagemap_open(struct kv_ram_state *rs);
void kv_ram_pagemap_close(struct kv_ram_state *rs);
bool kv_ram_page_unpopulated(struct kv_ram_state *rs, size_t bi, size_t page);
void kv_ram_page_populated(struct kv_ram_state *rs, size_t bi, size_t page);
/* The callbacks registered by kv_ram_register (tests call them directly). */
const struct kv_savevm_live_ops *kv_ram_live_ops(void);

/* ram_save.c */
/* A record's offset word (page | flag, with CONTINUE when the previous
 * record named the same block), then the block's name unless continued;
 * the next record may continue this one's block. Returns the bytes after
 * the offset word (0, or 1 + the name's length). Only for a record that
 * really goes out: a page sent as nothing must not move last_sent. */
size_t kv_ram_put_header(struct kv_stream *s, struct kv_ram_state *rs,
			 size_t bi, size_t page, unsigned int flag);
int kv_ram_save_setup(struct kv_stream *s, void *opaque, struct kv_error *err);
int kv_ram_save_iterate(struct kv_stream *s, void *opaque,
			struct kv_error *err);
int kv_ram_save_complete(struct kv_stream *s, void *opaque,
			 struct kv_error *err);
uint64_t kv_ram_pending_exact(void *opaque, struct kv_error *err);
/* failed: stop the tracker keeping its marks, for a retry. */
void kv_ram_save_cleanup(void *opaque, bool failed);
/* One ZERO or PAGE record, or XBZRLE's or x-compress's choice (after
 * the postcopy switch x-compress's only: ZPAGES decode to whole pages). */
void kv_ram_send_page(struct kv_stream *s, struct kv_ram_state *rs, size_t bi,
		      size_t page);
/* One ZERO or PAGE record, written now (a page a vCPU waits for: never
 * in a compression batch). */
void kv_ram_send_page_now(struct kv_stream *s, struct kv_ram_state *rs,
			  size_t bi, size_t page);
/* The last sync, with the workload stopped: its pages finish the pass. */
int kv_ram_sync_final(struct kv_ram_state *rs, struct kv_error *err);
/* With multifd: the page to a channel (or, zero with legacy detection,
 * a ZERO record on the main stream). */
int kv_ram_send_page_multifd(struct kv_stream *s, struct kv_ram_state *rs,
			     size_t bi, size_t page, struct kv_error *err);
/* With multifd: a SYNC on every channel after everything queued, then
 * MULTIFD_FLUSH on the main stream (multifd.h). 0 without multifd. */
int kv_ram_multifd_flush(struct kv_stream *s, struct kv_ram_state *rs,
			 struct kv_error *err);

/* postcopy/postcopy_ram.c */
/* save_iterate and save_complete once rs->src.pc is set. */
int kv_ram_pc_save_iterate(struct kv_stream *s, struct kv_ram_state *rs,
			   struct kv_error *err);
int kv_ram_pc_save_complete(struct kv_stream *s, struct kv_ram_state *rs,
			    struct kv_error *err);
/* The loader's page records while postcopy listens: placed through
 * userfaultfd (data NULL: zeros). 0 placed or already there; <0. */
int kv_ram_pc_place(struct kv_ram_state *rs, size_t bi, uint64_t offset,
		    const void *data, struct kv_error *err);
/* Precopy wrote (or left zero) this page after ADVISE. */
void kv_ram_pc_received(struct kv_ram_state *rs, size_t bi, uint64_t offset);
/* kv_mfd_target.place: a POSTCOPY packet's pages of the block at host,
 * placed through userfaultfd (each once), on a multifd channel's thread. */
int kv_ram_pc_mfd_place(void *opaque, const uint8_t *host,
			const uint64_t *offs, const uint8_t *data,
			uint32_t normal, uint32_t zero, struct kv_error *err);

/* ram_xbzrle.c */
/* Save setup: a fresh cache when XBZRLE is on (nothing from an earlier
 * attempt: the destination may be another one). */
int kv_ram_xbzrle_setup(struct kv_ram_state *rs, struct kv_error *err);
/* Send the non-zero page bi/page through XBZRLE when it is on: as a
 * delta, as nothing (unchanged), or as a raw copy of what was read (which
 * the cache then holds). Returns false when the page is to go normally
 * (XBZRLE off, or a first-pass page the cache refused). */
bool kv_ram_xbzrle_send(struct kv_stream *s, struct kv_ram_state *rs,
			size_t bi, size_t page);
/* A page that went as ZERO: its cached copy, if any, becomes zero. */
void kv_ram_xbzrle_zero(struct kv_ram_state *rs, size_t bi, size_t page);
/* At every sync: the second pass turns XBZRLE on; the rates' period. */
void kv_ram_xbzrle_sync(struct kv_ram_state *rs);
/* Publish the counters for kv_ram_get_xbzrle_stats(). */
void kv_ram_xbzrle_publish(struct kv_ram_state *rs);
void kv_ram_xbzrle_cleanup(struct kv_ram_state *rs);
/* kv_ram_free: everything. */
void kv_ram_xbzrle_free(struct kv_ram_state *rs);

/* ram_compress.c */
/* Save setup on stream s: always makes the zstd stream now; auto makes
 * only its sampler, and only when s's channel can tell how much the peer
 * received (a socket): on a file auto never compresses. */
int kv_ram_zc_setup(struct kv_stream *s, struct kv_ram_state *rs,
		    struct kv_error *err);
/* Queue the non-zero page bi/page for a ZPAGES record when compressing
 * (writing the batch out when it is full or the block changes). Returns
 * false when the page is to go as a PAGE record. */
bool kv_ram_zc_send(struct kv_stream *s, struct kv_ram_state *rs, size_t bi,
		    size_t page);
/* Write out the batch being filled (end of a section, before EOS). */
void kv_ram_zc_flush(struct kv_stream *s, struct kv_ram_state *rs);
/* auto: every few dozen pages, measure and decide. */
void kv_ram_zc_tick(struct kv_stream *s, struct kv_ram_state *rs);
/* The sender waited ns for the link outside the stream's writes
 * (postcopy: for room on the link): auto counts it as the stream's. */
void kv_ram_zc_note_link_wait(struct kv_ram_state *rs, uint64_t ns);
/* auto: the link changed (postcopy's RUN lifts max-bandwidth; a
 * recovery's new connection): compression stops until this link has
 * been measured to be the bottleneck again. */
void kv_ram_zc_link_changed(struct kv_ram_state *rs);
/* Postcopy recovery, on the new link: the batch being filled is dropped
 * (its pages go again, as the destination's received bitmap says) and
 * the next ZPAGES record starts a new zstd stream (FORMAT.md 5.3). */
void kv_ram_zc_restart(struct kv_ram_state *rs);
void kv_ram_zc_cleanup(struct kv_ram_state *rs);

/* ram_verify.c */
/* Every page's slot to the hash of a zero page (pages that are never sent
 * are zero on both sides); at save setup and once the destination knows
 * its blocks. No-op when off. */
int kv_ram_verify_prepare(struct kv_ram_state *rs, struct kv_error *err);
/* The page as it is now (source: claimed to send; destination: written). */
void kv_ram_verify_page(struct kv_ram_state *rs, size_t bi, size_t page);
/* The page placed from data (postcopy: the guest may write the page
 * itself as soon as it is placed, so the hash is of what was placed). */
void kv_ram_verify_data(struct kv_ram_state *rs, size_t bi, size_t page,
			const void *data);
/* The page is zero, known without reading it. */
void kv_ram_verify_zero(struct kv_ram_state *rs, size_t bi, size_t page);
void kv_ram_verify_free(struct kv_ram_block_priv *p);

/* bg_snapshot.c: the background snapshot's save_iterate and
 * save_complete, and the end of it (save_cleanup: everything
 * un-protected, whatever the outcome). */
int kv_ram_bg_iterate(struct kv_stream *s, struct kv_ram_state *rs,
		      struct kv_error *err);
int kv_ram_bg_complete(struct kv_stream *s, struct kv_ram_state *rs,
		       struct kv_error *err);
void kv_ram_bg_stop(struct kv_ram_state *rs);
/* mapped_ram.c (the file's layout: mapped_ram.h) */
/* Source, save setup: the I/O threads (or the direct-io descriptor) and
 * the bitmaps of pages in the file. */
int kv_mapped_ram_save_setup(struct kv_stream *s, struct kv_ram_state *rs,
			     struct kv_error *err);
/* In MEM_SIZE after block bi's length: its header, and the stream jumps
 * past its pages. Failures are the stream's sticky error. */
void kv_mapped_ram_put_block(struct kv_stream *s, struct kv_ram_state *rs,
			     size_t bi);
/* A claimed page: to its place in the file, or out of it when zero. */
int kv_mapped_ram_send_page(struct kv_ram_state *rs, size_t bi, size_t page,
			    struct kv_error *err);
/* Hand over the run being gathered; pass_end: and wait until every
 * write so far is on the file. */
int kv_mapped_ram_flush(struct kv_ram_state *rs, bool pass_end,
			struct kv_error *err);
/* The last writes, then every block's bitmap. */
int kv_mapped_ram_save_complete(struct kv_ram_state *rs, struct kv_error *err);
/* Destination, in MEM_SIZE after block bi's length: its header, checked
 * against the block and the file; the stream jumps past its pages. */
int kv_mapped_ram_load_header(struct kv_stream *s, struct kv_ram_state *rs,
			      size_t bi, struct kv_error *err);
/* Once every block is known: the bitmaps and the pages they mark. */
int kv_mapped_ram_load_pages(struct kv_ram_state *rs, struct kv_error *err);
/* Instant resume, at load cleanup: a failed load stops the filler and
 * gives the memory back plain (nothing ran); a load that succeeded
 * keeps it going for the guest. kv_ram_free ends it (failed: true). */
void kv_mapped_ram_instant_end(struct kv_ram_state *rs, bool failed);
/* Page bytes written or read so far (any thread). */
uint64_t kv_mapped_ram_bytes(const struct kv_ram_state *rs);
/* Threads stopped, descriptors closed, layout dropped. */
void kv_mapped_ram_cleanup(struct kv_ram_state *rs);

/* ram_save.c: the next dirty page from the scan cursor (search_block,
 * search_page), its dirty bit claimed and dirty_pages counted down;
 * false once a whole round of the blocks found none. */
bool kv_ram_scan_next(struct kv_ram_state *rs, size_t *bi, size_t *page);

/* ram_load.c */
int kv_ram_load_setup(void *opaque, struct kv_error *err);
int kv_ram_load_state(struct kv_stream *s, void *opaque, int version_id,
		      struct kv_error *err);
void kv_ram_load_cleanup(void *opaque, bool failed);
/* kv_ram_free: what the destination half keeps between migrations. */
void kv_ram_load_free(struct kv_ram_state *rs);
/* The ZPAGES decoder is dropped: the next ZPAGES record starts a new
 * zstd stream (a postcopy recovery's new link, FORMAT.md 5.3). */
void kv_ram_zpages_restart(struct kv_ram_state *rs);

#endif
