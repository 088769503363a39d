/* SPDX-License-Identifier: MIT */
/*
 * The destination's pages during postcopy (postcopy_dst.h).
 *
 * Locking: one mutex guards the waiting faults, the figures and the
 * completion. The received and requested bitmaps are atomic so that
 * kv_pc_dst_has_page and the "already here" test of a placement need no
 * lock. A received bit is set only after the page is in memory, so a
 * fault on a page whose bit is set is either a race with its placement
 * (the placement woke the thread already) or a zero page precopy left
 * unwritten (placed as zeros here, without asking the source).
 */
#define _GNU_SOURCE
#include "migration/postcopy/postcopy_dst.h"

#include "base/bitmap.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/thread_role.h"
#include "base/units.h"
#include "migration/postcopy/postcopy_wire.h"
#include "migration/postcopy/uffd.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Latencies for percentiles: 16 buckets per power of two of nanoseconds
 * (each within 1/16 of its value), up to 2^42 ns (73 minutes). */
#define LAT_SUB 16
#define LAT_FINE ((42 - 4 + 1) * LAT_SUB + LAT_SUB)

struct dst_block {
	char *idstr;
	uint8_t *host;
	uint64_t length;
	uint64_t npages;
	unsigned long *received;
	unsigned long *requested;
	unsigned long *waited; /* a thread waits on the page (set under the lock) */
	bool registered;
};

/* A thread waiting on a page: its fault's time and, for a vCPU, which. */
struct waiter {
	uint64_t addr;
	int64_t since;
	int vcpu; /* -1: not a vCPU */
};

struct vcpu_time {
	uint32_t tid;
	bool blocked;
	int64_t since;
	uint64_t total_ns;
};

struct latency {
	uint64_t count, sum_ns, max_ns;
	uint64_t fine[LAT_FINE];
	uint64_t pow2_us[KV_PC_LAT_BUCKETS];
};

struct kv_pc_dst {
	struct dst_block *blocks;
	size_t nblocks;
	kv_pc_request_fn request;
	void *opaque;
	struct kv_uffd *uffd;
	pthread_t thread;
	bool thread_running;
	bool stop; /* atomic */

	/* The placers (background pages: the listen thread) take the lock
	 * only for a page a thread waits on (the block's waited bit) or for
	 * the last page: a placer descheduled while holding it would hold
	 * the fault thread up. The counters below marked atomic are updated
	 * without it. */
	pthread_mutex_t lock;
	pthread_cond_t changed; /* the last page arrived, or the fault thread failed */
	struct waiter *waiters;
	size_t nwaiters, waiters_cap;
	struct vcpu_time *vcpus;
	size_t nvcpus, nblocked;
	int64_t all_blocked_since;
	uint64_t blocktime_ns;
	struct latency lat;
	uint64_t requests, faults;
	uint64_t placed, placed_zero, duplicates, received; /* atomic */
	uint64_t total_pages;
	struct kv_error thread_err; /* the fault thread stopped on it */
};

/* ---- latency figures ---- */

static unsigned lat_fine_bucket(uint64_t ns)
{
	unsigned msb, shift, idx;

	if (ns < LAT_SUB)
		return (unsigned)ns;
	msb = 63 - (unsigned)__builtin_clzll(ns);
	shift = msb - 4;
	idx = (shift + 1) * LAT_SUB + (unsigned)((ns >> shift) & (LAT_SUB - 1));
	return idx < LAT_FINE ? idx : LAT_FINE - 1;
}

static uint64_t lat_fine_upper(unsigned idx)
{
	unsigned shift;

	if (idx < LAT_SUB)
		return idx;
	shift = idx / LAT_SUB - 1;
	return (((uint64_t)(LAT_SUB + idx % LAT_SUB) + 1) << shift) - 1;
}

static unsigned lat_pow2_bucket(uint64_t ns)
{
	uint64_t us = ns / 1000;
	unsigned b;

	if (us == 0)
		return 0;
	b = 63 - (unsigned)__builtin_clzll(us);
	return b < KV_PC_LAT_BUCKETS ? b : KV_PC_LAT_BUCKETS - 1;
}

static void lat_add(struct latency *l, uint64_t ns)
{
	l->count++;
	l->sum_ns += ns;
	if (ns > l->max_ns)
		l->max_ns = ns;
	l->fine[lat_fine_bucket(ns)]++;
	l->pow2_us[lat_pow2_bucket(ns)]++;
}

/* The smallest bucket bound under which a fraction q (per mille) lies. */
static uint64_t lat_quantile(const struct latency *l, unsigned permille)
{
	uint64_t want = (l->count * permille + 999) / 1000, seen = 0;

	if (l->count == 0)
		return 0;
	for (unsigned i = 0; i < LAT_FINE; i++) {
		seen += l->fine[i];
		if (seen >= want)
			return lat_fine_upper(i) < l->max_ns ? lat_fine_upper(i) : l->max_ns;
	}
	return l->max_ns;
}

/* ---- vCPU blocktime (QEMU's postcopy-blocktime) ---- */

static int vcpu_of(struct kv_pc_dst *d, uint32_t tid)
{
	for (size_t i = 0; tid && i < d->nvcpus; i++)
		if (d->vcpus[i].tid == tid)
			return (int)i;
	return -1;
}

static void vcpu_block(struct kv_pc_dst *d, int v, int64_t now)
{
	struct vcpu_time *c = &d->vcpus[v];

	if (c->blocked)
		return;
	c->blocked = true;
	c->since = now;
	if (++d->nblocked == d->nvcpus)
		d->all_blocked_since = now;
}

static void vcpu_unblock(struct kv_pc_dst *d, int v, int64_t now)
{
	struct vcpu_time *c = &d->vcpus[v];

	if (!c->blocked)
		return;
	c->total_ns += (uint64_t)(now - c->since);
	if (d->nblocked == d->nvcpus)
		d->blocktime_ns += (uint64_t)(now - d->all_blocked_since);
	d->nblocked--;
	c->blocked = false;
}

/* ---- waiting threads (under the lock) ---- */

static int waiter_add(struct kv_pc_dst *d, uint64_t addr, int64_t now, int vcpu)
{
	if (d->nwaiters == d->waiters_cap) {
		size_t cap = d->waiters_cap ? 2 * d->waiters_cap : 16;
		struct waiter *w = realloc(d->waiters, cap * sizeof(*w));

		if (!w)
			return -ENOMEM;
		d->waiters = w;
		d->waiters_cap = cap;
	}
	d->waiters[d->nwaiters++] = (struct waiter){addr, now, vcpu};
	if (vcpu >= 0)
		vcpu_block(d, vcpu, now);
	return 0;
}

/* The page at addr arrived: every thread waiting on it is served. */
static void waiters_served(struct kv_pc_dst *d, uint64_t addr, int64_t now)
{
	for (size_t i = 0; i < d->nwaiters;) {
		struct waiter *w = &d->waiters[i];

		if (w->addr != addr) {
			i++;
			continue;
		}
		lat_add(&d->lat, (uint64_t)(now - w->since));
		if (w->vcpu >= 0)
			vcpu_unblock(d, w->vcpu, now);
		*w = d->waiters[--d->nwaiters];
	}
}

/* Block b's page is in: its waiters are served (under the lock). */
static void page_served(struct kv_pc_dst *d, struct dst_block *b,
			uint64_t page, int64_t now)
{
	kv_bitmap_test_and_clear(b->waited, page);
	waiters_served(d, (uintptr_t)(b->host + page * KV_PAGE_SIZE), now);
}

/* ---- blocks ---- */

static struct dst_block *block_at(struct kv_pc_dst *d, uint64_t addr,
				  uint64_t *page)
{
	for (size_t i = 0; i < d->nblocks; i++) {
		struct dst_block *b = &d->blocks[i];
		uintptr_t h = (uintptr_t)b->host;

		if (addr >= h && addr - h < b->length) {
			*page = (addr - h) / KV_PAGE_SIZE;
			return b;
		}
	}
	return NULL;
}

static int check_page(struct kv_pc_dst *d, size_t block, uint64_t offset,
		      struct kv_error *err)
{
	if (block >= d->nblocks)
		return kv_error_set(err, -EINVAL, "postcopy: page for block %zu of %zu", block, d->nblocks);
	if (offset % KV_PAGE_SIZE || offset >= d->blocks[block].length)
		return kv_error_set(err, -EINVAL, "postcopy: page at offset %#" PRIx64 " of block '%s' (%#" PRIx64 " bytes) is unaligned or past its end", offset, d->blocks[block].idstr, d->blocks[block].length);
	return 0;
}

static int blocks_init(struct kv_pc_dst *d, const struct kv_pc_dst_config *cfg,
		       struct kv_error *err)
{
	d->blocks = calloc(cfg->nblocks, sizeof(*d->blocks));
	if (!d->blocks)
		return kv_error_set(err, -ENOMEM, "postcopy: out of memory for %zu blocks", cfg->nblocks);
	d->nblocks = cfg->nblocks;
	for (size_t i = 0; i < cfg->nblocks; i++) {
		const struct kv_pc_dst_block *c = &cfg->blocks[i];
		struct dst_block *b = &d->blocks[i];

		if (c->length == 0 || c->length % KV_PAGE_SIZE || (uintptr_t)c->host % KV_PAGE_SIZE)
			return kv_error_set(err, -EINVAL, "postcopy: block '%s' at %p of %#" PRIx64 " bytes is not whole pages", c->idstr, (void *)c->host, c->length);
		b->idstr = strdup(c->idstr);
		b->host = c->host;
		b->length = c->length;
		b->npages = c->length / KV_PAGE_SIZE;
		b->received = kv_bitmap_new(b->npages);
		b->requested = kv_bitmap_new(b->npages);
		b->waited = kv_bitmap_new(b->npages);
		if (!b->idstr || !b->received || !b->requested || !b->waited)
			return kv_error_set(err, -ENOMEM, "postcopy: out of memory for the bitmaps of block '%s'", c->idstr);
		d->total_pages += b->npages;
	}
	return 0;
}

struct kv_pc_dst *kv_pc_dst_new(const struct kv_pc_dst_config *cfg,
				struct kv_error *err)
{
	struct kv_pc_dst *d = calloc(1, sizeof(*d));
	pthread_condattr_t attr;

	if (!d) {
		kv_error_set(err, -ENOMEM, "postcopy: out of memory");
		return NULL;
	}

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->changed, &attr);
	pthread_condattr_destroy(&attr);
	d->request = cfg->request;
	d->opaque = cfg->opaque;
	if (blocks_init(d, cfg, err) < 0)
		goto fail;
	d->vcpus = calloc(cfg->nvcpus ? cfg->nvcpus : 1, sizeof(*d->vcpus));
	if (!d->vcpus) {
		kv_error_set(err, -ENOMEM, "postcopy: out of memory");
		goto fail;
	}
	d->nvcpus = cfg->nvcpus;
	for (size_t i = 0; i < cfg->nvcpus; i++)
		d->vcpus[i].tid = cfg->vcpu_tids[i];
	return d;
fail:
	kv_pc_dst_free(d);
	return NULL;
}

/* ---- before LISTEN ---- */

/* n more pages here; the last one wakes kv_pc_dst_wait_complete. */
static void received_add(struct kv_pc_dst *d, uint64_t n)
{
	if (n && __atomic_add_fetch(&d->received, n, __ATOMIC_SEQ_CST) ==
		     d->total_pages) {
		pthread_mutex_lock(&d->lock);
		pthread_cond_broadcast(&d->changed);
		pthread_mutex_unlock(&d->lock);
	}
}

void kv_pc_dst_mark_received(struct kv_pc_dst *d, size_t block,
			     uint64_t offset, uint64_t len)
{
	struct dst_block *b;
	uint64_t n = 0;

	if (block >= d->nblocks)
		return; /* the loader checked its records against the blocks */
	b = &d->blocks[block];
	for (uint64_t p = offset / KV_PAGE_SIZE,
		      end = (offset + len + KV_PAGE_SIZE - 1) / KV_PAGE_SIZE;
	     p < b->npages && p < end;) {
		/* Whole words at once: mapped-ram's instant resume marks
		 * gigabytes of zero pages before the guest may run. */
		if (p % KV_BITS_PER_LONG == 0 && p + KV_BITS_PER_LONG <= end &&
		    p + KV_BITS_PER_LONG <= b->npages) {
			unsigned long was = __atomic_fetch_or(
			    &b->received[p / KV_BITS_PER_LONG], ~0UL,
			    __ATOMIC_RELAXED);

			n += KV_BITS_PER_LONG - (uint64_t)__builtin_popcountl(was);
			p += KV_BITS_PER_LONG;
			continue;
		}
		n += kv_bitmap_set_atomic(b->received, p);
		p++;
	}
	received_add(d, n);
}

int kv_pc_dst_discard(struct kv_pc_dst *d, size_t block, uint64_t start,
		      uint64_t len, struct kv_error *err)
{
	struct dst_block *b;
	struct kv_pc_block pb;
	uint64_t n = 0;
	int r;

	if (block >= d->nblocks)
		return kv_error_set(err, -EINVAL, "postcopy: discard for block %zu of %zu", block, d->nblocks);
	b = &d->blocks[block];
	pb = (struct kv_pc_block){b->idstr, b->length, KV_PAGE_SIZE};
	r = kv_pc_check_range(&pb, start, len, "postcopy: discard range", err);
	if (r < 0)
		return r;
	/* Not received first: a fault from now on asks the source. */
	for (uint64_t p = start / KV_PAGE_SIZE; p < (start + len) / KV_PAGE_SIZE; p++) {
		n += kv_bitmap_test_and_clear(b->received, p);
		kv_bitmap_test_and_clear(b->requested, p);
	}
	__atomic_fetch_sub(&d->received, n, __ATOMIC_SEQ_CST);
	/* No madvise here: LISTEN drops every page not received in one
	 * call per run, these included; a call per range (thousands, in
	 * the guest's pause) would do the same work twice. */
	return 0;
}

/* ---- the fault thread ---- */

static void ask_source(struct kv_pc_dst *d, struct dst_block *b, uint64_t page)
{
	struct kv_error err = {0};
	size_t block = (size_t)(b - d->blocks);

	if (d->request(d->opaque, block, page * KV_PAGE_SIZE, KV_PAGE_SIZE, &err) == 0)
		return;
	/* The link is down: the next fault, or a recovery, asks again. */
	kv_bitmap_test_and_clear(b->requested, page);
}

/* A zero page precopy left unwritten, or a race with its placement. */
static void fault_on_received(struct kv_pc_dst *d, uint64_t addr)
{
	struct kv_error err = {0};

	if (kv_uffd_place_zero(d->uffd, (void *)(uintptr_t)addr, KV_PAGE_SIZE, &err) < 0) {
		pthread_mutex_lock(&d->lock);
		kv_error_propagate(&d->thread_err, &err);
		pthread_cond_broadcast(&d->changed);
		pthread_mutex_unlock(&d->lock);
	}
}

static void handle_fault(struct kv_pc_dst *d, const struct kv_uffd_fault *f)
{
	int64_t now = kv_now_ns();
	struct dst_block *b;
	uint64_t page;
	bool ask;

	b = block_at(d, f->addr, &page);
	if (!b)
		return; /* not ours: only our blocks are registered */
	pthread_mutex_lock(&d->lock);
	d->faults++;
	if (kv_bitmap_test(b->received, page)) {
		pthread_mutex_unlock(&d->lock);
		fault_on_received(d, f->addr);
		return;
	}
	if (waiter_add(d, f->addr, now, vcpu_of(d, f->tid)) < 0)
		kv_error_set(&d->thread_err, -ENOMEM, "postcopy: out of memory recording a fault");
	/* A placer sets the received bit, then looks at the waited bit
	 * without the lock; we set the waited bit, then look at the
	 * received one (both sequentially consistent): one of us sees the
	 * other, so nobody waits on a page that is in. */
	kv_bitmap_set_atomic(b->waited, page);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (kv_bitmap_test(b->received, page)) {
		page_served(d, b, page, now);
		pthread_mutex_unlock(&d->lock);
		return;
	}
	ask = kv_bitmap_set_atomic(b->requested, page);
	if (ask)
		d->requests++;
	pthread_mutex_unlock(&d->lock);
	if (ask)
		ask_source(d, b, page);
}

static void *fault_thread(void *arg)
{
	struct kv_pc_dst *d = arg;

	kv_thread_set_role(KV_THREAD_URGENT); /* a vCPU waits on each fault */
	while (!__atomic_load_n(&d->stop, __ATOMIC_ACQUIRE)) {
		struct kv_error err = {0};
		struct kv_uffd_fault f;
		int r = kv_uffd_wait_fault(d->uffd, -1, &f, &err);

		if (r == 1) {
			handle_fault(d, &f);
			continue;
		}
		if (r < 0) {
			pthread_mutex_lock(&d->lock);
			kv_error_propagate(&d->thread_err, &err);
			pthread_cond_broadcast(&d->changed);
			pthread_mutex_unlock(&d->lock);
			break;
		}
	}
	return NULL;
}

/* The first page at or after p whose bit is `set`, or n: a word at a
 * time, since LISTEN walks every page of the guest inside its pause. */
static uint64_t next_page_with(const unsigned long *map, uint64_t n,
			       uint64_t p, bool set)
{
	while (p < n) {
		unsigned long w = map[p / KV_BITS_PER_LONG];

		if (!set)
			w = ~w;
		w &= ~0UL << (p % KV_BITS_PER_LONG);
		if (w) {
			p = p - p % KV_BITS_PER_LONG + (uint64_t)__builtin_ctzl(w);
			return p < n ? p : n;
		}
		p += KV_BITS_PER_LONG - p % KV_BITS_PER_LONG;
	}
	return n;
}

/* A page not received must be missing for userfaultfd to report it: the
 * prefault helpers (ram_prefault.c) or a device model may have populated
 * it with zeros, which a vCPU would then read as the guest's data. The
 * discarded pages are among these (kv_pc_dst_discard leaves them). */
static int drop_unreceived(struct dst_block *b, struct kv_error *err)
{
	uint64_t p = next_page_with(b->received, b->npages, 0, false);

	while (p < b->npages) {
		uint64_t end = next_page_with(b->received, b->npages, p, true);

		if (madvise(b->host + p * KV_PAGE_SIZE, (end - p) * KV_PAGE_SIZE, MADV_DONTNEED) < 0)
			return kv_error_set_errno(err, -errno, "postcopy: dropping the pages %" PRIu64 " to %" PRIu64 " of block '%s' that never arrived", p, end - 1, b->idstr);
		p = next_page_with(b->received, b->npages, end, false);
	}
	return 0;
}

int kv_pc_dst_listen(struct kv_pc_dst *d, struct kv_error *err)
{
	int r;

	if (d->uffd)
		return kv_error_set(err, -EALREADY, "postcopy: the destination listens already");
	for (size_t i = 0; i < d->nblocks; i++) {
		r = drop_unreceived(&d->blocks[i], err);
		if (r < 0)
			return r;
	}
	kv_switch_log("dst: pages not received dropped");
	d->uffd = kv_uffd_open(err);
	if (!d->uffd)
		return err ? err->code : -EIO;
	for (size_t i = 0; i < d->nblocks; i++) {
		struct dst_block *b = &d->blocks[i];

		r = kv_uffd_register(d->uffd, b->host, b->length, err);
		if (r < 0) {
			kv_error_prefix(err, "block '%s'", b->idstr);
			return r;
		}
		b->registered = true;
	}
	kv_switch_log("dst: RAM registered with userfaultfd");
	r = pthread_create(&d->thread, NULL, fault_thread, d);
	if (r)
		return kv_error_set(err, -r, "postcopy: cannot start the fault thread: %s", strerror(r));
	d->thread_running = true;
	return 0;
}

/* ---- placing pages ---- */

static int place_bytes(struct kv_pc_dst *d, uint8_t *host, const void *data,
		       struct kv_error *err)
{
	if (d->uffd) {
		if (data)
			return kv_uffd_place(d->uffd, host, data, KV_PAGE_SIZE, err);
		return kv_uffd_place_zero(d->uffd, host, KV_PAGE_SIZE, err);
	}
	/* Before LISTEN the memory is plain. */
	if (data)
		memcpy(host, data, KV_PAGE_SIZE);
	else
		memset(host, 0, KV_PAGE_SIZE);
	return 0;
}

int kv_pc_dst_place(struct kv_pc_dst *d, size_t block, uint64_t offset,
		    const void *data, struct kv_error *err)
{
	uint64_t page = offset / KV_PAGE_SIZE;
	struct dst_block *b;
	bool newly;
	int r = check_page(d, block, offset, err);

	if (r < 0)
		return r;
	b = &d->blocks[block];
	if (!kv_bitmap_test(b->received, page))
		r = place_bytes(d, b->host + offset, data, err);
	else
		r = 1;
	if (r < 0)
		return r;
	newly = kv_bitmap_set_atomic(b->received, page);
	__atomic_thread_fence(__ATOMIC_SEQ_CST); /* see handle_fault */
	if (r == 0) {
		__atomic_fetch_add(&d->placed, 1, __ATOMIC_RELAXED);
		if (!data)
			__atomic_fetch_add(&d->placed_zero, 1, __ATOMIC_RELAXED);
	} else {
		__atomic_fetch_add(&d->duplicates, 1, __ATOMIC_RELAXED);
	}
	/* Whoever sets the bit serves the waiters: the page is in memory
	 * either way. */
	if (newly && kv_bitmap_test(b->waited, page)) {
		pthread_mutex_lock(&d->lock);
		page_served(d, b, page, kv_now_ns());
		pthread_mutex_unlock(&d->lock);
	}
	if (newly)
		received_add(d, 1);
	return r;
}

/* ---- the end ---- */

static void deadline_after(struct timespec *ts, int timeout_ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += timeout_ms / 1000;
	ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

int kv_pc_dst_wait_complete(struct kv_pc_dst *d, int timeout_ms,
			    struct kv_error *err)
{
	struct timespec until;
	int r = 0;

	deadline_after(&until, timeout_ms < 0 ? 0 : timeout_ms);
	pthread_mutex_lock(&d->lock);
	while (__atomic_load_n(&d->received, __ATOMIC_SEQ_CST) < d->total_pages &&
	       !kv_error_is_set(&d->thread_err)) {
		if (timeout_ms < 0)
			pthread_cond_wait(&d->changed, &d->lock);
		else if (pthread_cond_timedwait(&d->changed, &d->lock, &until) == ETIMEDOUT)
			break;
	}
	if (kv_error_is_set(&d->thread_err)) {
		kv_error_propagate(err, &d->thread_err);
		r = d->thread_err.code;
	} else {
		r = __atomic_load_n(&d->received, __ATOMIC_SEQ_CST) == d->total_pages;
	}
	pthread_mutex_unlock(&d->lock);
	return r;
}

static void stop_thread(struct kv_pc_dst *d)
{
	if (!d->thread_running)
		return;
	__atomic_store_n(&d->stop, true, __ATOMIC_RELEASE);
	kv_uffd_wakeup(d->uffd);
	pthread_join(d->thread, NULL);
	d->thread_running = false;
}

static int release_uffd(struct kv_pc_dst *d, struct kv_error *err)
{
	int r = 0;

	stop_thread(d);
	for (size_t i = 0; i < d->nblocks; i++) {
		struct dst_block *b = &d->blocks[i];

		if (b->registered && kv_uffd_unregister(d->uffd, b->host, b->length, err) < 0)
			r = -EIO;
		b->registered = false;
	}
	kv_uffd_close(d->uffd);
	d->uffd = NULL;
	return r;
}

int kv_pc_dst_finish(struct kv_pc_dst *d, struct kv_error *err)
{
	uint64_t missing;

	missing = d->total_pages - __atomic_load_n(&d->received, __ATOMIC_SEQ_CST);
	if (missing)
		return kv_error_set(err, -EBUSY, "postcopy: %" PRIu64 " of %" PRIu64 " pages are still missing: userfaultfd stays armed", missing, d->total_pages);
	if (!d->uffd)
		return 0;
	return release_uffd(d, err);
}

void kv_pc_dst_free(struct kv_pc_dst *d)
{
	if (!d)
		return;
	if (d->uffd)
		release_uffd(d, NULL);
	for (size_t i = 0; d->blocks && i < d->nblocks; i++) {
		free(d->blocks[i].idstr);
		kv_bitmap_free(d->blocks[i].received);
		kv_bitmap_free(d->blocks[i].requested);
		kv_bitmap_free(d->blocks[i].waited);
	}
	free(d->blocks);
	free(d->waiters);
	free(d->vcpus);
	pthread_cond_destroy(&d->changed);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

int kv_pc_dst_set_vcpus(struct kv_pc_dst *d, const uint32_t *tids, size_t n)
{
	struct vcpu_time *v = calloc(n ? n : 1, sizeof(*v));

	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		v[i].tid = tids[i];
	pthread_mutex_lock(&d->lock);
	/* Nobody is counted blocked on the old list any more. */
	for (size_t i = 0; i < d->nwaiters; i++)
		d->waiters[i].vcpu = -1;
	free(d->vcpus);
	d->vcpus = v;
	d->nvcpus = n;
	d->nblocked = 0;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

/* ---- recovery and figures ---- */

/* The pages threads wait on now, each once, not yet here. */
static size_t waited_pages(struct kv_pc_dst *d, uint64_t *addrs, size_t cap)
{
	size_t n = 0;

	for (size_t i = 0; i < d->nwaiters && n < cap; i++) {
		uint64_t a = d->waiters[i].addr, page = 0;
		struct dst_block *b = block_at(d, a, &page);
		bool seen = false;

		for (size_t k = 0; k < n; k++)
			seen |= addrs[k] == a;
		if (b && !seen && !kv_bitmap_test(b->received, page)) {
			addrs[n++] = a;
			kv_bitmap_set_atomic(b->requested, page);
			d->requests++;
		}
	}
	return n;
}

int kv_pc_dst_rerequest(struct kv_pc_dst *d, struct kv_error *err)
{
	uint64_t *addrs;
	size_t n;
	int r = 0;

	pthread_mutex_lock(&d->lock);
	addrs = calloc(d->nwaiters ? d->nwaiters : 1, sizeof(*addrs));
	n = addrs ? waited_pages(d, addrs, d->nwaiters) : 0;
	pthread_mutex_unlock(&d->lock);
	if (!addrs)
		return kv_error_set(err, -ENOMEM, "postcopy: out of memory asking again for pages");
	for (size_t i = 0; i < n; i++) {
		uint64_t page = 0;
		struct dst_block *b = block_at(d, addrs[i], &page);

		if (d->request(d->opaque, (size_t)(b - d->blocks), page * KV_PAGE_SIZE, KV_PAGE_SIZE, err) < 0)
			r = -EIO;
	}
	free(addrs);
	return r;
}

bool kv_pc_dst_has_page(struct kv_pc_dst *d, size_t block, uint64_t offset)
{
	if (block >= d->nblocks || offset >= d->blocks[block].length)
		return false;
	return kv_bitmap_test(d->blocks[block].received, offset / KV_PAGE_SIZE);
}

const unsigned long *kv_pc_dst_received_map(struct kv_pc_dst *d, size_t block,
					    uint64_t *npages)
{
	*npages = d->blocks[block].npages;
	return d->blocks[block].received;
}

void kv_pc_dst_get_stats(struct kv_pc_dst *d, struct kv_pc_dst_stats *st)
{
	pthread_mutex_lock(&d->lock);
	*st = (struct kv_pc_dst_stats){
	    .requests = d->requests,
	    .faults = d->faults,
	    .placed = __atomic_load_n(&d->placed, __ATOMIC_RELAXED),
	    .placed_zero = __atomic_load_n(&d->placed_zero, __ATOMIC_RELAXED),
	    .duplicates = __atomic_load_n(&d->duplicates, __ATOMIC_RELAXED),
	    .received = __atomic_load_n(&d->received, __ATOMIC_RELAXED),
	    .total_pages = d->total_pages,
	    .blocktime_ns = d->blocktime_ns,
	    .lat_count = d->lat.count,
	    .lat_mean_ns = d->lat.count ? d->lat.sum_ns / d->lat.count : 0,
	    .lat_p50_ns = lat_quantile(&d->lat, 500),
	    .lat_p99_ns = lat_quantile(&d->lat, 990),
	    .lat_max_ns = d->lat.max_ns,
	};
	memcpy(st->lat_hist, d->lat.pow2_us, sizeof(st->lat_hist));
	pthread_mutex_unlock(&d->lock);
}

void kv_pc_dst_vcpu_blocktime(struct kv_pc_dst *d, uint64_t *ns, size_t n)
{
	pthread_mutex_lock(&d->lock);
	for (size_t i = 0; i < n; i++)
		ns[i] = i < d->nvcpus ? d->vcpus[i].total_ns : 0;
	pthread_mutex_unlock(&d->lock);
}
