/* SPDX-License-Identifier: MIT */
/*
 * RAM migration: the "ram" live handler (instance 0, version 4), source and
 * destination, byte-compatible with QEMU's RAM section.
 *
 * Source: setup writes the MEM_SIZE preamble (be64 total | 0x04, then per
 * block str8 idstr + be64 length) and EOS. The first pass sends every page;
 * later passes the pages the dirty tracker reported. The page search claims
 * a dirty page (test-and-clear) in the same step that finds it. Zero pages
 * go as ZERO records (1 byte 0), others as PAGE records (4096 bytes, sent by
 * reference without a copy) or, while x-compress compresses them, in
 * ZPAGES batches (kvmig's); CONTINUE when the block is the one of the
 * previous record. Every section payload ends with EOS.
 *
 * Destination: every record is checked before use (flags, block, offset,
 * alignment, CONTINUE context, MEM_SIZE totals); errors name the stream
 * offset, the record number, its address and flags.
 */
#ifndef KV_MIGRATION_RAM_H
#define KV_MIGRATION_RAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "base/units.h"
#include "migration/dirty/dirty_tracker.h"
#include "migration/savevm/savevm.h"

/* Record flags in the low bits of the be64 address (QEMU's values). */
#define KV_RAM_FLAG_ZERO 0x002U
#define KV_RAM_FLAG_MEM_SIZE 0x004U
#define KV_RAM_FLAG_PAGE 0x008U
#define KV_RAM_FLAG_EOS 0x010U
#define KV_RAM_FLAG_CONTINUE 0x020U
#define KV_RAM_FLAG_XBZRLE 0x040U
#define KV_RAM_FLAG_HOOK 0x080U          /* RDMA; never valid here */
#define KV_RAM_FLAG_COMPRESS_PAGE 0x100U /* removed in QEMU; never valid */
#define KV_RAM_FLAG_MULTIFD_FLUSH 0x200U
/* kvmig only: a batch of pages in the main stream's zstd stream
 * (ram_compress.c, docs/FORMAT.md 5.3). */
#define KV_RAM_FLAG_ZPAGES 0x400U

#define KV_RAM_SECTION_VERSION 4

struct kv_ram_block {
	char idstr[256];
	uint8_t *host;          /* host address of page 0 */
	uint64_t length;        /* bytes, a multiple of KV_PAGE_SIZE */
	size_t npages;
	unsigned long *dirty;   /* migration bitmap: pages still to send */
	/* Destination: the owner's option that sets the length ("--memory"),
	 * for the message when the stream's length differs; NULL: none. Not
	 * copied. */
	const char *size_option;
};

/* Per-pass and overall counters, read by the migration driver. */
struct kv_ram_stats {
	uint64_t zero_pages;     /* ZERO records sent (or loaded) */
	uint64_t normal_pages;   /* PAGE records sent (or loaded) */
	uint64_t dirty_sync_count;
	uint64_t pass_pages;     /* pages sent in the current pass */
	uint64_t dirty_pages;    /* pages still marked in the bitmaps */
	/* Source, kv_ram_set_skip_redirtied: looks at the tracker that were
	 * not syncs (not in dirty_sync_count), and pages a pass did not send
	 * because the guest had written them again since the pass began. */
	uint64_t dirty_peeks;
	uint64_t redirtied_skipped;
};

struct kv_ram_state;

struct kv_ram_state *kv_ram_new(void);
void kv_ram_free(struct kv_ram_state *rs);

/* Add a block; host must stay valid while rs lives. Fails on a duplicate
 * idstr, an idstr longer than 255, or a length not page-aligned. */
int kv_ram_add_block(struct kv_ram_state *rs, const char *idstr, void *host,
		     uint64_t length, struct kv_error *err);
size_t kv_ram_block_count(const struct kv_ram_state *rs);
struct kv_ram_block *kv_ram_block(struct kv_ram_state *rs, size_t i);

/* Source: where dirty pages come from (required before setup). */
void kv_ram_set_tracker(struct kv_ram_state *rs, struct kv_dirty_tracker t);
/* Source, postcopy-ram (set before the migration's setup): each pass
 * re-arms tracking of every page when it begins and peeks at the tracker
 * every KV_RAM_PEEK_NS; a page the guest wrote since the pass began is
 * not sent in the pass (it would be sent again after the switch), but
 * left to the tracker, whose next sync reports it. Needs a tracker with
 * peek; without one, or for mapped-ram and background snapshots, a no-op.
 * docs/DESIGN.md "RAM precopy". */
void kv_ram_set_skip_redirtied(struct kv_ram_state *rs, bool on);

/* Destination: allow blocks announced in MEM_SIZE that were not added to be
 * created by this callback (memtest does; a VMM does not). The callback
 * returns host memory of `length` bytes or NULL with err set; the block is
 * released with release(). max_total caps what a stream may ask for. */
struct kv_ram_allocator {
	void *(*alloc)(void *opaque, const char *idstr, uint64_t length,
		       struct kv_error *err);
	void (*release)(void *opaque, void *host, uint64_t length);
	void *opaque;
	uint64_t max_total;
};
void kv_ram_set_allocator(struct kv_ram_state *rs, struct kv_ram_allocator a);

/* Register the "ram" live handler in sv (source or destination). */
int kv_ram_register(struct kv_ram_state *rs, struct kv_savevm *sv,
		    struct kv_error *err);

void kv_ram_get_stats(const struct kv_ram_state *rs, struct kv_ram_stats *st);
/* Source: bytes of the pages still marked to send, as of the last sync
 * (the handler's pending_estimate; any thread: opaque is the state). */
uint64_t kv_ram_pending_estimate(void *opaque);

/*
 * Source: XBZRLE (QEMU's "xbzrle" capability). From the second pass on, a
 * page sent before whose copy is in the cache (cache_size bytes, QEMU's
 * xbzrle-cache-size, rounded down to a power of two; 0 = off) goes as the
 * delta against that copy (record flag 0x40, docs/FORMAT.md), or as a raw
 * page when the delta would not be smaller. Takes effect at the next
 * migration's setup. Fails if cache_size is between 1 and 4095.
 * A destination always accepts XBZRLE records (QEMU's do too).
 */
int kv_ram_set_xbzrle(struct kv_ram_state *rs, uint64_t cache_size,
		      struct kv_error *err);

/*
 * --verify-ram, both sides: keep the XXH3-64 of every page as it is sent
 * (source) or placed (destination, multifd channels included), and give
 * the digest of them all (XXH3-128 over the per-page hashes, block after
 * block, in the host's byte order) at the end: equal digests mean every
 * page's last copy arrived intact and in its place (docs/DESIGN.md says
 * what it cannot see). Set before the migration's setup.
 */
void kv_ram_set_verify(struct kv_ram_state *rs, bool on);
/* After the last page was sent (source: save_complete) or loaded
 * (destination: the END section and its multifd sync). */
int kv_ram_verify_digest(struct kv_ram_state *rs, uint8_t out[16],
			 struct kv_error *err);

/*
 * Source: the background snapshot (background-snapshot capability,
 * bg_snapshot.c). With it on (set before the migration's setup), setup
 * starts no dirty tracker and every page is sent once. After setup,
 * kv_ram_bg_prepare (workload running: the userfaultfd, the fault thread,
 * a first look at which pages were never populated), then, with the
 * workload stopped, kv_ram_bg_protect write-protects every block (and,
 * with --verify-ram, hashes every page as it is then); from there on a
 * page is saved before the first write to it goes on, so the stream
 * holds RAM as it was at that moment. Everything is un-protected by
 * save_cleanup, whatever the outcome.
 */
void kv_ram_set_background(struct kv_ram_state *rs, bool on);
int kv_ram_bg_prepare(struct kv_ram_state *rs, struct kv_error *err);
int kv_ram_bg_protect(struct kv_ram_state *rs, struct kv_error *err);
struct kv_ram_bg_stats {
	uint64_t faults;       /* writes that hit a protected page */
	uint64_t copies;       /* pages the fault thread saved first */
	uint64_t alone;        /* of those, saved without their 2 MiB window */
	uint64_t pool_waits;   /* writers that waited for a free copy slot */
	uint64_t max_fault_ns; /* longest from fault read to un-protect */
};
/* The migration thread, while the snapshot runs (zeros outside it). */
void kv_ram_bg_get_stats(const struct kv_ram_state *rs,
			 struct kv_ram_bg_stats *st);

/*
 * Postcopy (docs/DESIGN.md "Postcopy"; postcopy/postcopy_ram.c).
 */
struct kv_pc_block;
struct kv_pc_src;
struct kv_pc_dst;
/* The blocks as postcopy's checks see them (names point into rs; free
 * the array with free()). NULL: no memory. */
struct kv_pc_block *kv_ram_pc_blocks(struct kv_ram_state *rs, size_t *n);
/* Source, workload stopped: the last sync, a RAM_DISCARD command for
 * every run of dirty pages; from then on save_iterate serves pcs's
 * requests first (PAGE records, at once) and every page goes once,
 * whole or in a ZPAGES record (x-compress), never as a delta. */
int kv_ram_pc_switch(struct kv_stream *s, struct kv_ram_state *rs,
		     struct kv_pc_src *pcs, struct kv_error *err);
/* Source, workload stopped, before kv_ram_pc_switch: with multifd, one
 * PART round whose RAM section is the channels' sync (MULTIFD_FLUSH), so
 * every precopy page is in the destination's memory before a discard;
 * after the switch background pages go on the channels (POSTCOPY
 * packets). 0 at once without multifd. */
struct kv_savevm;
int kv_ram_pc_multifd_sync(struct kv_savevm *sv, struct kv_stream *s,
			   struct kv_ram_state *rs, struct kv_pc_src *pcs,
			   struct kv_error *err);
/* Source, recovery: block bi's pages the destination has (its received
 * bitmap); every other page is sent again, on the main stream (the
 * multifd channels are closed, not re-opened), and x-compress starts a
 * new zstd stream on the new link (FORMAT.md 5.3). */
void kv_ram_pc_src_resume(struct kv_ram_state *rs, size_t bi,
			  const unsigned long *received);
/* postcopy-preempt (QEMU 7.2's layout: a second connection made at
 * setup, bare RAM records, EOS at the end). Source: while on, requested
 * pages are the preempt thread's (kv_ram_pc_send_urgent, CONTINUE
 * against *last_block, KV_RAM_NO_BLOCK first); the background scan
 * still follows them. Destination: kv_ram_pc_load_preempt reads the
 * channel until EOS, placing each page and counting it in *pages
 * (atomically: query-migrate reads it). */
struct kv_pc_page;
void kv_ram_pc_set_preempt(struct kv_ram_state *rs, bool on);
int kv_ram_pc_send_urgent(struct kv_stream *s, struct kv_ram_state *rs,
			  const struct kv_pc_page *pg, size_t *last_block,
			  struct kv_error *err);
int kv_ram_pc_load_preempt(struct kv_stream *s, struct kv_ram_state *rs,
			   uint64_t *pages, struct kv_error *err);
#define KV_RAM_PC_NO_BLOCK ((size_t)-1)
/* Source: the migration ended (pcs may be freed afterwards). */
void kv_ram_pc_src_end(struct kv_ram_state *rs);
/* Destination, at ADVISE: pages loaded from now on are marked received
 * in d (NULL: postcopy over), multifd channels' pages too. */
int kv_ram_pc_set_dst(struct kv_ram_state *rs, struct kv_pc_dst *d,
		      struct kv_error *err);
/* LISTEN, before kv_pc_dst_listen: stop the prefault helpers. After it,
 * kv_ram_pc_listening: page records go through userfaultfd. */
void kv_ram_pc_listen(struct kv_ram_state *rs);
void kv_ram_pc_listening(struct kv_ram_state *rs);
/* RUN: the guest runs here; a failed load drops nothing any more. */
void kv_ram_pc_running(struct kv_ram_state *rs);
/* Recovery, at the resumed stream's POSTCOPY_RESUME (before its first
 * RAM record): the next ZPAGES record starts a new zstd stream, as the
 * source's does on the new link (FORMAT.md 5.3). */
void kv_ram_pc_dst_resume(struct kv_ram_state *rs);

struct kv_mfd_send;
struct kv_mfd_recv;
enum kv_mfd_zero;

/* mapped-ram (mapped_ram.h), both sides: set before the migration (the
 * source's save setup and the destination's MEM_SIZE read it). */
struct kv_mapped_ram_cfg;
void kv_ram_set_mapped_ram(struct kv_ram_state *rs,
			   const struct kv_mapped_ram_cfg *cfg);
/* Whether mapped-ram is on, for savevm's configuration section, which
 * may turn it on for a file: destination (kv_savevm_set_mapped_ram). */
bool *kv_ram_mapped_ram_on(struct kv_ram_state *rs);

/*
 * multifd (multifd.h). Source: PAGE data goes over m's channels, zero
 * pages as zero-page-detection says (legacy: ZERO records on the main
 * stream; multifd: found by the channel threads; none: sent as data);
 * every pass ends with a channel sync and a MULTIFD_FLUSH record. Set
 * before the migration, cleared (NULL) after it; the caller owns m.
 * Destination: MULTIFD_FLUSH records sync with r's channels, which write
 * pages straight into the blocks (kv_ram_multifd_target()).
 */
void kv_ram_set_multifd_send(struct kv_ram_state *rs, struct kv_mfd_send *m,
			     enum kv_mfd_zero zero);
void kv_ram_set_multifd_recv(struct kv_ram_state *rs, struct kv_mfd_recv *r);
/* Where a multifd receiver writes: rs's blocks by name. */
struct kv_mfd_target kv_ram_multifd_target(struct kv_ram_state *rs);
/* Bytes on the multifd channels (source), for the driver's counts. */
uint64_t kv_ram_multifd_bytes(const struct kv_ram_state *rs);
/* Fail everything blocked on the channels (any thread). */
void kv_ram_multifd_cancel(struct kv_ram_state *rs);

/*
 * Source: compression of the pages on the main stream (kvmig's
 * x-compress parameter; not with multifd, whose channels compress on
 * their own). off: never. always: every non-zero page that does not go
 * as XBZRLE goes in a ZPAGES record. auto (the default): only while it
 * moves pages faster than sending them raw, that is while the sender
 * waits on a link that compressed pages would cross faster than the
 * compressor makes them (ram_compress.c). Takes effect at the next
 * migration's setup. A destination always accepts ZPAGES records.
 */
enum kv_ram_compress {
	KV_RAM_COMPRESS_OFF,
	KV_RAM_COMPRESS_AUTO,
	KV_RAM_COMPRESS_ALWAYS,
};
const char *kv_ram_compress_name(enum kv_ram_compress mode);
/* "off", "auto", "always"; -EINVAL with err listing them. */
int kv_ram_compress_parse(const char *name, enum kv_ram_compress *mode,
			  struct kv_error *err);
void kv_ram_set_compress(struct kv_ram_state *rs, enum kv_ram_compress mode);

/* query-migrate's "compression" (QEMU's names; "busy" is always 0: one
 * thread compresses and never waits for another). */
struct kv_ram_compress_stats {
	enum kv_ram_compress mode;
	bool active;		  /* compressing now */
	uint64_t pages;		  /* pages sent in ZPAGES records */
	uint64_t compressed_size; /* their compressed bytes */
	double compression_rate;  /* page bytes per compressed byte */
	uint64_t switches;	  /* auto: times it turned on or off */
};
void kv_ram_get_compress_stats(const struct kv_ram_state *rs,
			       struct kv_ram_compress_stats *st);
/* Page bytes per byte on the wire for the pages sent in full since the
 * last call of this (1 without compression): what the switch-over may
 * count on per byte of measured bandwidth. Source, migration thread. */
double kv_ram_wire_factor(struct kv_ram_state *rs);
/* The link's rate x-compress auto measured (bytes/s: while the sender
 * waited on the socket or the cap), 0 when it has none. Source,
 * migration thread (x-postcopy-auto). */
double kv_ram_link_bps(const struct kv_ram_state *rs);

/* query-migrate's "xbzrle-cache" (QEMU's names and meanings). */
struct kv_ram_xbzrle_stats {
	bool enabled;
	uint64_t cache_size;
	uint64_t bytes;	     /* XBZRLE records after their offset word */
	uint64_t pages;	     /* pages sent as XBZRLE */
	uint64_t cache_miss; /* re-sent pages not in the cache */
	uint64_t overflow;   /* deltas not smaller than the page: sent raw */
	uint64_t skipped;    /* unchanged since their copy: nothing sent */
	double cache_miss_rate; /* of the pages handled in the last pass */
	double encoding_rate;	/* page bytes per XBZRLE byte, last pass */
};
void kv_ram_get_xbzrle_stats(const struct kv_ram_state *rs,
			     struct kv_ram_xbzrle_stats *st);

#endif
