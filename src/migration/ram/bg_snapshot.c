/* SPDX-License-Identifier: MIT */
/*
 * Background snapshot, RAM side (the background-snapshot capability; the
 * driver's phases are migration/bg_migration.c, docs/DESIGN.md
 * "Background snapshot").
 *
 * With the workload stopped, every block is registered with a userfaultfd
 * in write-protect mode and protected (kv_ram_bg_protect); the workload
 * then runs on. Every page is saved exactly once, with the content it had
 * at that moment:
 *
 *  - the migration thread walks the blocks in order, claims a run of
 *    consecutive pages within one aligned 2 MiB window from the "to save"
 *    bitmap (atomic test-and-clear, as precopy's page search), copies the
 *    non-zero ones into a bounce buffer while they are still protected,
 *    un-protects the run with one ioctl, then writes the records from the
 *    bounce buffer (the stream may block on the channel: nobody waits for
 *    that);
 *  - a write to a page not saved yet blocks its writer (a vCPU inside
 *    KVM_RUN, or any thread of the process) and the fault thread claims
 *    the page's whole 2 MiB window when nothing of it was saved and the
 *    copy pool has room, else the page alone, copies it into the pool and
 *    un-protects it at once: the writer waits for at most 2 MiB of copies
 *    and one ioctl, never for the stream. The migration thread writes
 *    pooled copies first.
 *
 * A page claimed by one of the two is un-protected by that one only after
 * its copy exists; a fault on a page the migration thread claimed is left
 * to it (its un-protect wakes the writer). Everything ends un-protected:
 * page by page as saved, and all of it at once when the snapshot stops,
 * whether it completed, failed or was cancelled.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xxhash.h>

#include "base/bitmap.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/zero.h"
#include "io/stream.h"
#include "migration/postcopy/uffd.h"
#include "migration/ram/ram_internal.h"

/* Pages the migration thread claims, copies and un-protects at once, in
 * aligned runs of 2 MiB: every un-protect is an MMU-notifier call that
 * makes KVM drop its mappings of the range and flush the vCPUs' TLBs, so
 * fewer and bigger is cheaper for the guest, and a whole run keeps a
 * transparent huge page whole. A writer waiting on a page of a run waits
 * for 2 MiB of copies at most. */
#define RUN_PAGES 512U
/* The fault thread's copies waiting for the stream: 64 MiB, a ring,
 * faulted in (huge pages) before the stop, while the guest still runs:
 * a copy into fresh memory pays a page fault and the zeroing first,
 * which on this kind of host cost the writer up to 0.7 s per 2 MiB
 * window under load (DESIGN.md "Background snapshot"). A writer whose
 * page finds the pool full waits for the migration thread. */
#define POOL_PAGES 16384U

struct bg_slot {
	size_t bi, page;
};

struct kv_ram_bg {
	struct kv_ram_state *rs;
	struct kv_uffd *u;
	size_t registered; /* blocks registered, from block 0 */
	pthread_t thread;
	bool thread_live;
	int stop; /* atomic: the fault thread ends */

	/* The copy pool: a ring of pool_pages slots; the fault thread fills
	 * at head, the migration thread empties at tail. */
	pthread_mutex_t lock;
	pthread_cond_t room;
	uint8_t *pool;		/* pool_pages pages (map_pool) */
	struct bg_slot *slot;	/* pool_pages */
	size_t pool_pages;
	size_t head, tail; /* under lock */
	/* Faults between their claim and their slot's publication (atomic):
	 * the snapshot is complete only once none is left. */
	int inflight;

	uint8_t *bounce; /* RUN_PAGES pages, migration thread */
	/* Per block: pages never populated at the snapshot's moment, from
	 * the pagemap with the workload stopped. They were zero then, so they
	 * go as zero pages unread and need no protection: a later write to
	 * one changes nothing in the snapshot. NULL (or a NULL entry): not
	 * known, that block's every page is protected and read. */
	unsigned long **unpopulated;
	struct kv_error fault_err; /* the fault thread's failure, under lock */

	/* Counters (relaxed atomics; kv_ram_bg_get_stats). */
	uint64_t faults, copies, alone, pool_waits;
	uint64_t max_fault_ns; /* fault read to un-protect */
	uint64_t pool_high;    /* most copies waiting at once */
};

static void *page_addr(const struct kv_ram_state *rs, size_t bi, size_t page)
{
	return rs->blocks[bi].host + ((uint64_t)page << KV_PAGE_SHIFT);
}

/* The block and page of a faulting address; false when no block has it. */
static bool locate(const struct kv_ram_state *rs, uint64_t addr, size_t *bi,
		   size_t *page)
{
	for (size_t i = 0; i < rs->nblocks; i++) {
		uintptr_t start = (uintptr_t)rs->blocks[i].host;

		if (addr >= start && addr - start < rs->blocks[i].length) {
			*bi = i;
			*page = (size_t)((addr - start) >> KV_PAGE_SHIFT);
			return true;
		}
	}
	return false;
}

static void fault_failed(struct kv_ram_bg *bg, const struct kv_error *e)
{
	pthread_mutex_lock(&bg->lock);
	kv_error_propagate(&bg->fault_err, e);
	pthread_mutex_unlock(&bg->lock);
}

static size_t pool_free(struct kv_ram_bg *bg)
{
	size_t used;

	pthread_mutex_lock(&bg->lock);
	used = bg->head - bg->tail;
	pthread_mutex_unlock(&bg->lock);
	return bg->pool_pages - used;
}

/* Wait until n slots are free (the fault thread then fills them
 * unlocked and publishes them); false when the snapshot stops first.
 * *start: the first one. */
static bool take_room(struct kv_ram_bg *bg, size_t n, size_t *start)
{
	bool waited = false, ok;

	pthread_mutex_lock(&bg->lock);
	while (bg->pool_pages - (bg->head - bg->tail) < n &&
	       !__atomic_load_n(&bg->stop, __ATOMIC_ACQUIRE)) {
		waited = true;
		pthread_cond_wait(&bg->room, &bg->lock);
	}
	ok = bg->pool_pages - (bg->head - bg->tail) >= n;
	*start = bg->head;
	pthread_mutex_unlock(&bg->lock);
	if (waited)
		kv_ram_stat_add(&bg->pool_waits, 1);
	return ok;
}

/* Copy pages [first, first + n) of block bi into the pool; false when
 * the snapshot stops first. The fault thread is the pool's only filler:
 * the slots it took are its own until it publishes them, so it copies
 * without the lock (the migration thread empties meanwhile). */
static bool pool_copy(struct kv_ram_bg *bg, size_t bi, size_t first, size_t n)
{
	size_t head;

	if (!take_room(bg, n, &head))
		return false;
	for (size_t k = 0; k < n; k++) {
		size_t at = (head + k) % bg->pool_pages;

		bg->slot[at] = (struct bg_slot){.bi = bi, .page = first + k};
		memcpy(bg->pool + at * KV_PAGE_SIZE,
		       page_addr(bg->rs, bi, first + k), KV_PAGE_SIZE);
	}
	pthread_mutex_lock(&bg->lock);
	bg->head = head + n;
	if (bg->head - bg->tail > bg->pool_high)
		bg->pool_high = bg->head - bg->tail;
	pthread_mutex_unlock(&bg->lock);
	return true;
}

static void note_fault_time(struct kv_ram_bg *bg, int64_t t0)
{
	uint64_t ns = (uint64_t)(kv_now_ns() - t0);

	if (ns > kv_ram_stat_get(&bg->max_fault_ns))
		kv_ram_stat_set(&bg->max_fault_ns, ns);
}

/* The aligned 2 MiB window around page (by host address, so that it is
 * a transparent huge page's), clipped to block bi: [*lo, *hi). */
static void run_window(const struct kv_ram_state *rs, size_t bi, size_t page,
		       size_t *lo, size_t *hi)
{
	const uintptr_t run_bytes = (uintptr_t)RUN_PAGES * KV_PAGE_SIZE;
	uintptr_t host = (uintptr_t)rs->blocks[bi].host;
	uintptr_t at = host + ((uintptr_t)page << KV_PAGE_SHIFT);
	uintptr_t start = at & ~(run_bytes - 1);
	size_t end = (size_t)((start + run_bytes - host) >> KV_PAGE_SHIFT);

	*lo = start <= host ? 0 : (size_t)((start - host) >> KV_PAGE_SHIFT);
	*hi = end < rs->blocks[bi].npages ? end : rs->blocks[bi].npages;
}

static bool all_unsaved(const unsigned long *map, size_t lo, size_t hi)
{
	for (size_t pg = lo; pg < hi; pg++)
		if (!kv_bitmap_test(map, pg))
			return false;
	return true;
}

/* Claim, copy and un-protect [lo, ...) of block bi for a fault: pages
 * from lo while they are unsaved, up to hi. Returns how many it saved. */
static size_t save_from(struct kv_ram_bg *bg, size_t bi, size_t lo,
			size_t hi, struct kv_error *err, int *ret)
{
	struct kv_ram_block *b = &bg->rs->blocks[bi];
	size_t n = 0;

	while (lo + n < hi && kv_bitmap_test_and_clear(b->dirty, lo + n))
		n++;
	if (n && !pool_copy(bg, bi, lo, n))
		return 0; /* stopping: the un-protect of all wakes the writer */
	if (n)
		*ret = kv_uffd_write_protect(bg->u, page_addr(bg->rs, bi, lo),
					     n * KV_PAGE_SIZE, false, err);
	return n;
}

/* A write to a protected page: save it first if nobody claimed it yet.
 * When its whole 2 MiB window is still unsaved and the pool has room for
 * it, the window goes at once (one copy of 2 MiB, one un-protect, no huge
 * page split, and the writer's next writes there do not fault); else the
 * page alone (4 KiB). */
static int serve_fault(struct kv_ram_bg *bg, uint64_t addr,
		       struct kv_error *err)
{
	struct kv_ram_state *rs = bg->rs;
	int64_t t0 = kv_now_ns();
	size_t bi, page, lo, hi, n = 0;
	int ret = 0;

	kv_ram_stat_add(&bg->faults, 1);
	if (!locate(rs, addr, &bi, &page))
		/* Not guest RAM: nothing of ours is there to save. */
		return kv_uffd_write_protect(bg->u, (void *)(uintptr_t)addr,
					     KV_PAGE_SIZE, false, err);
	run_window(rs, bi, page, &lo, &hi);
	__atomic_add_fetch(&bg->inflight, 1, __ATOMIC_SEQ_CST);
	/* The window only when the pool has room for it now: waiting for
	 * room (the stream) frees the writer one write per window written
	 * out, the page alone one write per slot (measured, DESIGN.md
	 * "Background snapshot": 1-31 k against 11-48 k pages/s). */
	if (pool_free(bg) >= hi - lo &&
	    all_unsaved(rs->blocks[bi].dirty, lo, hi))
		n = save_from(bg, bi, lo, hi, err, &ret);
	/* A full pool, a window partly saved already, or a race with the
	 * migration thread: the page alone. */
	if (ret == 0 && (page < lo || page >= lo + n)) {
		size_t one = save_from(bg, bi, page, page + 1, err, &ret);

		kv_ram_stat_add(&bg->alone, one);
		n += one;
	}
	__atomic_sub_fetch(&bg->inflight, 1, __ATOMIC_SEQ_CST);
	if (ret < 0)
		return ret;
	if (n) {
		kv_ram_stat_add(&bg->copies, n);
		note_fault_time(bg, t0);
	}
	return 0;
}

static void *fault_thread(void *arg)
{
	struct kv_ram_bg *bg = arg;

	while (!__atomic_load_n(&bg->stop, __ATOMIC_ACQUIRE)) {
		struct kv_error err = {0};
		struct kv_uffd_fault f;
		int r = kv_uffd_wait_fault(bg->u, -1, &f, &err);

		if (r == 1)
			r = serve_fault(bg, f.addr, &err);
		if (r < 0) {
			/* Writers stay blocked until the snapshot stops; the
			 * migration thread sees this and fails it. */
			kv_error_prefix(&err, "background snapshot: the write-fault thread");
			fault_failed(bg, &err);
			break;
		}
	}
	return NULL;
}

/* ---- at the pause ---- */

/* Register and protect block bi. The kernel protects the pages that
 * exist; the never-populated ones matter only where the pagemap did not
 * name them: there the kernel protects them too (WP_UNPOPULATED), or they
 * are mapped first (reads map the shared zero page, no memory). */
static int protect_block(struct kv_ram_bg *bg, size_t bi, struct kv_error *err)
{
	struct kv_ram_block *b = &bg->rs->blocks[bi];
	bool known = bg->unpopulated[bi] != NULL;
	int ret;

	ret = kv_uffd_register_wp(bg->u, b->host, b->length, err);
	if (ret < 0)
		return ret;
	bg->registered = bi + 1;
	if (!known && !kv_uffd_wp_unpopulated(bg->u) &&
	    madvise(b->host, b->length, MADV_POPULATE_READ) < 0)
		return kv_error_set_errno(err, -errno, "background snapshot: mapping block '%s' before protecting it", b->idstr);
	return kv_uffd_write_protect(bg->u, b->host, b->length, true, err);
}

static bool was_unpopulated(const struct kv_ram_bg *bg, size_t bi,
			    size_t page)
{
	return bg->unpopulated && bg->unpopulated[bi] &&
	       kv_bitmap_test(bg->unpopulated[bi], page);
}

/* Which pages are not populated yet, while the workload still runs: the
 * candidates. A page populated now stays so (the VMM never discards
 * guest RAM while it runs), so the stop re-reads only the candidates. */
static int prescan_unpopulated(struct kv_ram_bg *bg, struct kv_error *err)
{
	struct kv_ram_state *rs = bg->rs;

	bg->unpopulated = calloc(rs->nblocks ? rs->nblocks : 1,
				 sizeof(*bg->unpopulated));
	if (!bg->unpopulated)
		return kv_error_set(err, -ENOMEM, "background snapshot: out of memory");
	kv_pagemap_invalidate(&rs->pagemap);
	for (size_t bi = 0; bi < rs->nblocks; bi++) {
		size_t n = rs->blocks[bi].npages;

		if (!rs->priv[bi].anon_private || !kv_pagemap_is_open(&rs->pagemap))
			continue;
		bg->unpopulated[bi] = kv_bitmap_new(n);
		if (!bg->unpopulated[bi])
			return kv_error_set(err, -ENOMEM, "background snapshot: out of memory for block '%s' (%zu pages)", rs->blocks[bi].idstr, n);
		for (size_t pg = 0; pg < n; pg++)
			if (kv_ram_page_unpopulated(rs, bi, pg))
				kv_bitmap_set_atomic(bg->unpopulated[bi], pg);
	}
	return 0;
}

/* With the workload stopped: which candidates are still unpopulated.
 * Only chunks holding a candidate are read again. */
static void recheck_unpopulated(struct kv_ram_bg *bg)
{
	struct kv_ram_state *rs = bg->rs;

	kv_pagemap_invalidate(&rs->pagemap);
	for (size_t bi = 0; bi < rs->nblocks; bi++) {
		unsigned long *map = bg->unpopulated[bi];
		size_t n = rs->blocks[bi].npages;

		for (size_t pg = map ? kv_bitmap_find_next(map, n, 0) : n;
		     pg < n; pg = kv_bitmap_find_next(map, n, pg + 1))
			if (!kv_ram_page_unpopulated(rs, bi, pg))
				kv_bitmap_test_and_clear(map, pg);
	}
}

/* --verify-ram: the table holds every page as it is now, at the moment
 * of the snapshot; the sends below leave it alone, so the destination's
 * digest of what it placed must equal this one. */
static void hash_all_pages(struct kv_ram_bg *bg)
{
	struct kv_ram_state *rs = bg->rs;

	if (!rs->verify.on)
		return;
	for (size_t bi = 0; bi < rs->nblocks; bi++) {
		uint64_t *slot = rs->priv[bi].page_hash;

		for (size_t pg = 0; slot && pg < rs->blocks[bi].npages; pg++)
			slot[pg] = was_unpopulated(bg, bi, pg)
				       ? rs->verify.zero_hash
				       : XXH3_64bits(page_addr(rs, bi, pg),
						     KV_PAGE_SIZE);
	}
}

/* len bytes in huge pages, faulted in now (where the kernel can:
 * MADV_POPULATE_WRITE, Linux 5.14; else the first copies fault them).
 * NULL when refused. */
static void *map_pool(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	(void)madvise(p, len, MADV_HUGEPAGE);
	(void)madvise(p, len, MADV_POPULATE_WRITE);
	return p;
}

static struct kv_ram_bg *bg_new(struct kv_ram_state *rs, struct kv_error *err)
{
	struct kv_ram_bg *bg = calloc(1, sizeof(*bg));

	if (!bg) {
		kv_error_set(err, -ENOMEM, "background snapshot: out of memory");
		return NULL;
	}
	bg->rs = rs;
	pthread_mutex_init(&bg->lock, NULL);
	pthread_cond_init(&bg->room, NULL);
	bg->pool_pages = POOL_PAGES;
	bg->pool = map_pool(bg->pool_pages * KV_PAGE_SIZE);
	bg->slot = calloc(bg->pool_pages, sizeof(*bg->slot));
	bg->bounce = malloc((size_t)RUN_PAGES * KV_PAGE_SIZE);
	if (!bg->pool || !bg->slot || !bg->bounce)
		kv_error_set(err, -ENOMEM, "background snapshot: out of memory for %zu pages of copies", bg->pool_pages + RUN_PAGES);
	return bg;
}

/* The descriptor: it protects never-touched pages too only where some
 * block's are not known from the pagemap. */
static int open_uffd(struct kv_ram_bg *bg, struct kv_error *err)
{
	bool all_known = true;

	for (size_t bi = 0; bi < bg->rs->nblocks; bi++)
		all_known &= bg->unpopulated[bi] != NULL;
	bg->u = kv_uffd_open_wp(!all_known, err);
	if (!bg->u) {
		kv_error_prefix(err, "background-snapshot is not supported by this host kernel");
		return err->code ? err->code : -EOPNOTSUPP;
	}
	return 0;
}

int kv_ram_bg_prepare(struct kv_ram_state *rs, struct kv_error *err)
{
	struct kv_ram_bg *bg;
	int ret;

	if (!rs->src.background || rs->src.bg)
		return kv_error_set(err, -EINVAL, "background snapshot: prepared %s", rs->src.bg ? "twice" : "without kv_ram_set_background");
	bg = rs->src.bg = bg_new(rs, err);
	if (!bg || !bg->pool || !bg->slot || !bg->bounce)
		return err->code ? err->code : -ENOMEM;
	ret = prescan_unpopulated(bg, err);
	if (ret == 0)
		ret = open_uffd(bg, err);
	if (ret < 0)
		return ret;
	ret = pthread_create(&bg->thread, NULL, fault_thread, bg);
	if (ret != 0)
		return kv_error_set_errno(err, -ret, "background snapshot: cannot start the write-fault thread");
	bg->thread_live = true;
	return 0;
}

int kv_ram_bg_protect(struct kv_ram_state *rs, struct kv_error *err)
{
	struct kv_ram_bg *bg = rs->src.bg;
	int ret;

	if (!bg || !bg->u || bg->registered)
		return kv_error_set(err, -EINVAL, "background snapshot: protect called %s", bg && bg->registered ? "twice" : "before kv_ram_bg_prepare");
	recheck_unpopulated(bg);
	kv_switch_log("background snapshot: unpopulated pages noted");
	hash_all_pages(bg);
	for (size_t bi = 0; bi < rs->nblocks; bi++) {
		ret = protect_block(bg, bi, err);
		if (ret < 0) {
			kv_error_prefix(err, "background snapshot: block '%s'", rs->blocks[bi].idstr);
			return ret;
		}
	}
	kv_switch_log("background snapshot: RAM write-protected");
	return 0;
}

/* ---- the migration thread's side ---- */

static void send_zero_page(struct kv_stream *s, struct kv_ram_state *rs,
			   size_t bi, size_t page)
{
	kv_ram_put_header(s, rs, bi, page, KV_RAM_FLAG_ZERO);
	kv_stream_put_u8(s, 0);
	kv_ram_stat_add(&rs->zero_pages, 1);
}

/* A saved copy (never the live page: it is writable again by now), by
 * reference: the copy stays until the stream is flushed. */
static void send_copy_ref(struct kv_stream *s, struct kv_ram_state *rs,
			  size_t bi, size_t page, const uint8_t *copy)
{
	if (kv_buffer_is_zero(copy, KV_PAGE_SIZE)) {
		send_zero_page(s, rs, bi, page);
		return;
	}
	kv_ram_put_header(s, rs, bi, page, KV_RAM_FLAG_PAGE);
	kv_stream_put_page_ref(s, copy, KV_PAGE_SIZE);
	kv_ram_stat_add(&rs->normal_pages, 1);
}

static void page_done(struct kv_ram_state *rs)
{
	kv_ram_stat_add(&rs->src.dirty_pages, (uint64_t)-1);
	kv_ram_stat_add(&rs->src.pass_pages, 1);
}

/* Write the fault thread's copies out, oldest first: by reference, a
 * window at a time, flushed before their slots are free again. */
static void drain_pool(struct kv_stream *s, struct kv_ram_bg *bg)
{
	size_t tail, head;

	pthread_mutex_lock(&bg->lock);
	tail = bg->tail;
	head = bg->head;
	pthread_mutex_unlock(&bg->lock);
	while (tail != head) {
		size_t end = head - tail > RUN_PAGES ? tail + RUN_PAGES : head;

		/* The slots stay ours until tail moves: written unlocked. A
		 * window's page never populated at the stop was not protected
		 * and may hold a later write: it was zero then. */
		for (; tail != end; tail++) {
			size_t at = tail % bg->pool_pages;
			struct bg_slot sl = bg->slot[at];

			if (was_unpopulated(bg, sl.bi, sl.page))
				send_zero_page(s, bg->rs, sl.bi, sl.page);
			else
				send_copy_ref(s, bg->rs, sl.bi, sl.page,
					      bg->pool + at * KV_PAGE_SIZE);
			page_done(bg->rs);
		}
		kv_stream_flush(s);
		pthread_mutex_lock(&bg->lock);
		bg->tail = tail;
		head = bg->head;
		pthread_cond_broadcast(&bg->room);
		pthread_mutex_unlock(&bg->lock);
	}
}

/* Claim pages first.. of block bi while their bits are set, up to the
 * end of first's 2 MiB window; returns how many (0: first was claimed by
 * someone else). */
static size_t claim_run(const struct kv_ram_state *rs, size_t bi, size_t first)
{
	struct kv_ram_block *b = &rs->blocks[bi];
	size_t lo, end, n = 0;

	run_window(rs, bi, first, &lo, &end);
	while (first + n < end &&
	       kv_bitmap_test_and_clear(b->dirty, first + n))
		n++;
	return n;
}

/* Save the claimed run [first, first + n) of block bi: copy while
 * protected, un-protect, write (flushed). */
static int save_run(struct kv_stream *s, struct kv_ram_bg *bg, size_t bi,
		    size_t first, size_t n, struct kv_error *err)
{
	struct kv_ram_state *rs = bg->rs;
	bool zero[RUN_PAGES]; /* 512 bytes */
	int ret;

	for (size_t k = 0; k < n; k++) {
		const uint8_t *p = page_addr(rs, bi, first + k);

		zero[k] = was_unpopulated(bg, bi, first + k) ||
			  kv_buffer_is_zero(p, KV_PAGE_SIZE);
		if (!zero[k])
			memcpy(bg->bounce + k * KV_PAGE_SIZE, p, KV_PAGE_SIZE);
	}
	ret = kv_uffd_write_protect(bg->u, page_addr(rs, bi, first),
				    n * KV_PAGE_SIZE, false, err);
	if (ret < 0)
		return ret;
	for (size_t k = 0; k < n; k++) {
		if (zero[k]) {
			send_zero_page(s, rs, bi, first + k);
		} else {
			kv_ram_put_header(s, rs, bi, first + k,
					  KV_RAM_FLAG_PAGE);
			kv_stream_put_page_ref(s, bg->bounce + k * KV_PAGE_SIZE,
					       KV_PAGE_SIZE);
			kv_ram_stat_add(&rs->normal_pages, 1);
		}
		page_done(rs);
	}
	/* The references into the bounce buffer go out before it is used
	 * again: one copy a page, not two. */
	kv_stream_flush(s);
	return 0;
}

static int check_health(struct kv_stream *s, struct kv_ram_bg *bg,
			struct kv_error *err)
{
	int code = kv_stream_error(s);

	if (code) {
		kv_stream_error_get(s, err);
		kv_error_prefix(err, "ram: background snapshot");
		return code;
	}
	pthread_mutex_lock(&bg->lock);
	code = bg->fault_err.code;
	if (code)
		kv_error_propagate(err, &bg->fault_err);
	pthread_mutex_unlock(&bg->lock);
	return code;
}

/* The next run in address order, from the search position; false when
 * every bitmap is empty. */
static bool next_run(struct kv_ram_state *rs, size_t *bi, size_t *first,
		     size_t *n)
{
	for (size_t scans = 0; scans <= rs->nblocks; scans++) {
		struct kv_ram_block *b = &rs->blocks[rs->src.search_block];
		size_t page = kv_bitmap_find_next(b->dirty, b->npages,
						  rs->src.search_page);

		while (page < b->npages) {
			size_t got = claim_run(rs, rs->src.search_block, page);

			if (got) {
				*bi = rs->src.search_block;
				*first = page;
				*n = got;
				rs->src.search_page = page + got;
				return true;
			}
			page = kv_bitmap_find_next(b->dirty, b->npages,
						   page + 1);
		}
		rs->src.search_block = (rs->src.search_block + 1) % rs->nblocks;
		rs->src.search_page = 0;
	}
	return false;
}

/* Every page saved: no fault between its claim and its copy, and every
 * copy written. */
static void wait_faults_done(struct kv_stream *s, struct kv_ram_bg *bg)
{
	while (__atomic_load_n(&bg->inflight, __ATOMIC_SEQ_CST) > 0) {
		drain_pool(s, bg);
		sched_yield();
	}
	drain_pool(s, bg);
}

/* Save pages until all are (1), the deadline passes (0; 0 = none) or
 * something fails (<0). */
static int save_pages(struct kv_stream *s, struct kv_ram_state *rs,
		      int64_t deadline_ns, struct kv_error *err)
{
	struct kv_ram_bg *bg = rs->src.bg;
	size_t bi, first, n;
	int ret;

	if (!bg)
		return kv_error_set(err, -EINVAL, "ram: background snapshot: pages saved before kv_ram_bg_protect");
	rs->src.last_sent = KV_RAM_NO_BLOCK;
	for (;;) {
		drain_pool(s, bg);
		if (rs->nblocks == 0 || !next_run(rs, &bi, &first, &n))
			break;
		ret = save_run(s, bg, bi, first, n, err);
		if (ret < 0)
			return ret;
		ret = check_health(s, bg, err);
		if (ret < 0)
			return ret;
		if (deadline_ns && kv_now_ns() >= deadline_ns)
			return 0;
	}
	wait_faults_done(s, bg);
	return check_health(s, bg, err) ?: 1;
}

int kv_ram_bg_iterate(struct kv_stream *s, struct kv_ram_state *rs,
		      struct kv_error *err)
{
	int ret = save_pages(s, rs, kv_now_ns() + KV_RAM_ITERATE_NS, err);

	if (ret < 0)
		return ret;
	kv_stream_put_be64(s, KV_RAM_FLAG_EOS);
	return kv_stream_error(s) ? check_health(s, rs->src.bg, err) : ret;
}

int kv_ram_bg_complete(struct kv_stream *s, struct kv_ram_state *rs,
		       struct kv_error *err)
{
	int ret = save_pages(s, rs, 0, err);

	if (ret < 0)
		return ret;
	kv_stream_put_be64(s, KV_RAM_FLAG_EOS);
	return check_health(s, rs->src.bg, err);
}

/* ---- the end ---- */

static void unprotect_all(struct kv_ram_bg *bg)
{
	for (size_t bi = 0; bi < bg->registered; bi++) {
		struct kv_ram_block *b = &bg->rs->blocks[bi];
		struct kv_error err = {0};

		if (kv_uffd_write_protect(bg->u, b->host, b->length, false,
					  &err) < 0)
			kv_err("ram", "background snapshot: %s", err.msg);
	}
}

static void unregister_all(struct kv_ram_bg *bg)
{
	for (size_t bi = 0; bi < bg->registered; bi++) {
		struct kv_ram_block *b = &bg->rs->blocks[bi];
		struct kv_error err = {0};

		if (kv_uffd_unregister(bg->u, b->host, b->length, &err) < 0)
			kv_err("ram", "background snapshot: %s", err.msg);
	}
}

static void stop_fault_thread(struct kv_ram_bg *bg)
{
	if (!bg->thread_live)
		return;
	__atomic_store_n(&bg->stop, 1, __ATOMIC_RELEASE);
	pthread_mutex_lock(&bg->lock);
	pthread_cond_broadcast(&bg->room);
	pthread_mutex_unlock(&bg->lock);
	kv_uffd_wakeup(bg->u);
	pthread_join(bg->thread, NULL);
	bg->thread_live = false;
}

void kv_ram_bg_get_stats(const struct kv_ram_state *rs,
			 struct kv_ram_bg_stats *st)
{
	const struct kv_ram_bg *bg = rs->src.bg;

	memset(st, 0, sizeof(*st));
	if (!bg)
		return;
	st->faults = kv_ram_stat_get(&bg->faults);
	st->copies = kv_ram_stat_get(&bg->copies);
	st->alone = kv_ram_stat_get(&bg->alone);
	st->pool_waits = kv_ram_stat_get(&bg->pool_waits);
	st->max_fault_ns = kv_ram_stat_get(&bg->max_fault_ns);
}

void kv_ram_bg_stop(struct kv_ram_state *rs)
{
	struct kv_ram_bg *bg = rs->src.bg;
	struct kv_ram_bg_stats st;
	size_t high;

	if (!bg)
		return;
	kv_ram_bg_get_stats(rs, &st);
	pthread_mutex_lock(&bg->lock);
	high = bg->pool_high;
	pthread_mutex_unlock(&bg->lock);
	kv_info("ram", "background snapshot: %llu write faults, %llu pages copied by the fault thread, longest fault %.3f ms, %llu waits for room, pool high-water %zu pages, %llu pages alone",
		(unsigned long long)st.faults, (unsigned long long)st.copies,
		(double)st.max_fault_ns / 1e6,
		(unsigned long long)st.pool_waits, high,
		(unsigned long long)st.alone);
	/* Un-protect first: a writer blocked on a page nobody will save
	 * (a failure, a cancel) goes on. */
	if (bg->u)
		unprotect_all(bg);
	stop_fault_thread(bg);
	if (bg->u)
		unregister_all(bg);
	kv_uffd_close(bg->u);
	pthread_cond_destroy(&bg->room);
	pthread_mutex_destroy(&bg->lock);
	if (bg->pool)
		munmap(bg->pool, bg->pool_pages * KV_PAGE_SIZE);
	free(bg->slot);
	free(bg->bounce);
	for (size_t bi = 0; bg->unpopulated && bi < rs->nblocks; bi++)
		kv_bitmap_free(bg->unpopulated[bi]);
	free(bg->unpopulated);
	free(bg);
	rs->src.bg = NULL;
}

void kv_ram_set_background(struct kv_ram_state *rs, bool on)
{
	rs->src.background = on;
}
