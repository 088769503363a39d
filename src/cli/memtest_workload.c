/* SPDX-License-Identifier: MIT */
/* memtest's region, its fill, its digest and the dirtying thread. */
#include "cli/memtest_workload.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/clock.h"
#include "migration/ram.h"

#define WORDS_PER_PAGE	 (KV_PAGE_SIZE / sizeof(uint64_t))
#define FILL_MAX_THREADS 4

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t xorshift64(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

int kv_memtest_region_map(struct kv_memtest_region *r, uint64_t size,
			  size_t nblocks, struct kv_error *err)
{
	uint64_t pages = (size + KV_PAGE_SIZE - 1) / KV_PAGE_SIZE;

	memset(r, 0, sizeof(*r));
	if (nblocks < 1 || nblocks > KV_MEMTEST_MAX_BLOCKS)
		return kv_error_set(err, -EINVAL,
				    "blocks must be between 1 and %d, not %zu",
				    KV_MEMTEST_MAX_BLOCKS, nblocks);
	if (pages < nblocks)
		return kv_error_set(err, -EINVAL,
				    "size %llu bytes is too small for %zu "
				    "blocks of at least one 4 KiB page",
				    (unsigned long long)size, nblocks);
	for (size_t i = 0; i < nblocks; i++) {
		struct kv_memtest_block *b = &r->blocks[i];
		/* Spread the remainder over the first blocks. */
		uint64_t npages = pages / nblocks + (i < pages % nblocks);
		void *p;

		b->length = npages * KV_PAGE_SIZE;
		p = mmap(NULL, b->length, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p == MAP_FAILED) {
			int e = -errno;

			kv_memtest_region_unmap(r);
			return kv_error_set_errno(err, e,
						  "cannot map %llu bytes for "
						  "block %zu",
						  (unsigned long long)b->length,
						  i);
		}
		/* Huge pages make the first touch of a big region cheap. */
		madvise(p, b->length, MADV_HUGEPAGE);
		b->host = p;
		snprintf(b->idstr, sizeof(b->idstr), "memtest.%zu", i);
		r->nblocks = i + 1;
		r->total += b->length;
	}
	return 0;
}

void kv_memtest_region_unmap(struct kv_memtest_region *r)
{
	for (size_t i = 0; i < r->nblocks; i++)
		if (r->blocks[i].host)
			munmap(r->blocks[i].host, r->blocks[i].length);
	memset(r, 0, sizeof(*r));
}

enum page_kind { PAGE_ZERO, PAGE_RANDOM, PAGE_REPEATED };

static enum page_kind page_kind(enum kv_memtest_pattern pattern, uint64_t h)
{
	switch (pattern) {
	case KV_MEMTEST_ZERO:
		return PAGE_ZERO;
	case KV_MEMTEST_RANDOM:
		return PAGE_RANDOM;
	default:
		return (enum page_kind)(h % 3);
	}
}

static void fill_page(uint64_t *page, enum page_kind kind, uint64_t h)
{
	uint64_t state = h | 1;

	switch (kind) {
	case PAGE_ZERO:
		/* A fresh mapping already reads as zero: leave it untouched. */
		break;
	case PAGE_RANDOM:
		for (size_t i = 0; i < WORDS_PER_PAGE; i += 4) {
			page[i] = xorshift64(&state);
			page[i + 1] = xorshift64(&state);
			page[i + 2] = xorshift64(&state);
			page[i + 3] = xorshift64(&state);
		}
		break;
	case PAGE_REPEATED:
		/* One non-zero word over the whole page. */
		for (size_t i = 0; i < WORDS_PER_PAGE; i++)
			page[i] = h | 0x0101010101010101ULL;
		break;
	}
}

struct fill_job {
	uint8_t *host;
	uint64_t first_page; /* global page index of host */
	uint64_t npages;
	enum kv_memtest_pattern pattern;
	uint64_t seed;
};

static void *fill_thread(void *arg)
{
	const struct fill_job *job = arg;

	for (uint64_t p = 0; p < job->npages; p++) {
		uint64_t h = splitmix64(job->seed ^ (job->first_page + p));

		fill_page((uint64_t *)(job->host + p * KV_PAGE_SIZE),
			  page_kind(job->pattern, h), h);
	}
	return NULL;
}

static void fill_range(uint8_t *host, uint64_t first_page, uint64_t npages,
		       enum kv_memtest_pattern pattern, uint64_t seed)
{
	struct fill_job jobs[FILL_MAX_THREADS];
	pthread_t threads[FILL_MAX_THREADS];
	bool started[FILL_MAX_THREADS] = {false};
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	size_t n = cpus < 1 ? 1 : (size_t)cpus;
	uint64_t per;

	if (n > FILL_MAX_THREADS)
		n = FILL_MAX_THREADS;
	if (npages < 4096)
		n = 1;
	per = npages / n;
	for (size_t i = 0; i < n; i++) {
		jobs[i] = (struct fill_job){
		    .host = host + i * per * KV_PAGE_SIZE,
		    .first_page = first_page + i * per,
		    .npages = i == n - 1 ? npages - i * per : per,
		    .pattern = pattern,
		    .seed = seed,
		};
		if (i > 0)
			started[i] = !pthread_create(&threads[i], NULL,
						     fill_thread, &jobs[i]);
	}
	fill_thread(&jobs[0]);
	for (size_t i = 1; i < n; i++) {
		if (started[i])
			pthread_join(threads[i], NULL);
		else
			fill_thread(&jobs[i]); /* no thread: do it here */
	}
}

void kv_memtest_region_fill(struct kv_memtest_region *r,
			    enum kv_memtest_pattern pattern, uint64_t seed)
{
	uint64_t first = 0;

	for (size_t i = 0; i < r->nblocks; i++) {
		uint64_t npages = r->blocks[i].length / KV_PAGE_SIZE;

		fill_range(r->blocks[i].host, first, npages, pattern, seed);
		first += npages;
	}
}

int kv_memtest_digest(const struct kv_memtest_block *blocks, size_t nblocks,
		      uint8_t out[16], struct kv_error *err)
{
	XXH3_state_t *st = XXH3_createState();
	XXH128_canonical_t canon;

	if (!st)
		return kv_error_set(err, -ENOMEM, "no memory for the digest");
	XXH3_128bits_reset(st);
	for (size_t i = 0; i < nblocks; i++)
		XXH3_128bits_update(st, blocks[i].host, blocks[i].length);
	XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(st));
	XXH3_freeState(st);
	memcpy(out, canon.digest, 16);
	return 0;
}

/* --- the dirtying thread --- */

static void dirty_one_page(struct kv_memtest_dirtier *d, uint64_t *rng)
{
	struct kv_memtest_region *r = d->region;
	uint64_t x = xorshift64(rng);
	uint64_t page = x % (r->total / KV_PAGE_SIZE);
	uint64_t word = (x >> 44) % WORDS_PER_PAGE;
	size_t b = 0;
	uint64_t offset;

	while (page >= r->blocks[b].length / KV_PAGE_SIZE) {
		page -= r->blocks[b].length / KV_PAGE_SIZE;
		b++;
	}
	offset = page * KV_PAGE_SIZE + word * sizeof(uint64_t);
	/* The sender may be reading this page right now: an atomic store
	 * keeps that a defined race; the mark after it re-sends the page. */
	__atomic_store_n((uint64_t *)(r->blocks[b].host + offset),
			 ++d->writes ^ x, __ATOMIC_RELAXED);
	kv_soft_tracker_mark(d->tracker, b, offset);
}

static void *dirtier_thread(void *arg)
{
	struct kv_memtest_dirtier *d = arg;
	uint64_t rng = 0x2545f4914f6cdd1dULL;
	uint64_t seen_resumes = 0, done = 0;
	int64_t start = kv_now_ns();

	pthread_mutex_lock(&d->lock);
	while (!d->quit) {
		uint64_t target;

		while (d->paused && !d->quit)
			pthread_cond_wait(&d->cond, &d->lock);
		if (d->quit)
			break;
		if (seen_resumes != d->resumes) {
			/* Pace from the resume, without a catch-up burst. */
			seen_resumes = d->resumes;
			start = kv_now_ns();
			done = 0;
		}
		target = (uint64_t)((double)(kv_now_ns() - start) * 1e-9 *
				    d->pages_per_sec);
		for (uint64_t n = 0; done < target && n < 65536; n++, done++)
			dirty_one_page(d, &rng);
		pthread_mutex_unlock(&d->lock);
		kv_sleep_ns(1000000);
		pthread_mutex_lock(&d->lock);
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

int kv_memtest_dirtier_start(struct kv_memtest_dirtier *d,
			     struct kv_memtest_region *r,
			     struct kv_soft_tracker *t, double rate_mib,
			     struct kv_error *err)
{
	int rc;

	memset(d, 0, sizeof(*d));
	d->region = r;
	d->tracker = t;
	d->pages_per_sec = rate_mib * (1024.0 * 1024.0 / KV_PAGE_SIZE);
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->cond, NULL);
	rc = pthread_create(&d->thread, NULL, dirtier_thread, d);
	if (rc) {
		pthread_cond_destroy(&d->cond);
		pthread_mutex_destroy(&d->lock);
		return kv_error_set_errno(err, -rc,
					  "cannot start the dirtying thread");
	}
	d->running = true;
	return 0;
}

void kv_memtest_dirtier_pause(struct kv_memtest_dirtier *d)
{
	if (!d->running)
		return;
	pthread_mutex_lock(&d->lock);
	d->paused = true;
	pthread_mutex_unlock(&d->lock);
}

void kv_memtest_dirtier_resume(struct kv_memtest_dirtier *d)
{
	if (!d->running)
		return;
	pthread_mutex_lock(&d->lock);
	d->paused = false;
	d->resumes++;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
}

void kv_memtest_dirtier_stop(struct kv_memtest_dirtier *d)
{
	if (!d->running)
		return;
	pthread_mutex_lock(&d->lock);
	d->quit = true;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	pthread_join(d->thread, NULL);
	pthread_cond_destroy(&d->cond);
	pthread_mutex_destroy(&d->lock);
	d->running = false;
}
