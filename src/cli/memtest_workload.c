/* SPDX-License-Identifier: MIT */
/* memtest's region, its fill, its digest and the dirtying thread. */
#include "cli/memtest_workload.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/clock.h"
#include "cli/memtest_hash.h"
#include "migration/ram/ram.h"

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
				    "size %llu bytes is too small for %zu blocks of at least one 4 KiB page",
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
						  "cannot map %llu bytes for block %zu",
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

/* --- pre-faulting --- */

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif
#define PREFAULT_MAX_THREADS 4
#define HUGE_ALIGN	     (2ULL << 20)

struct prefault_job {
	const struct kv_memtest_region *r;
	size_t part, nparts;
	int error; /* positive errno, 0 if all went well */
};

static void touch_pages(uint8_t *p, uint64_t len)
{
	for (uint64_t off = 0; off < len; off += KV_PAGE_SIZE)
		__atomic_store_n(p + off, 0, __ATOMIC_RELAXED);
}

/* The part of [0, len) that job `part` of nparts owns, 2 MiB aligned so
 * that no huge page is split between two threads. */
static void prefault_slice(uint64_t len, size_t part, size_t nparts,
			   uint64_t *start, uint64_t *end)
{
	uint64_t per = (len / nparts + HUGE_ALIGN - 1) & ~(HUGE_ALIGN - 1);

	*start = per * part < len ? per * part : len;
	*end = part == nparts - 1 || per * (part + 1) > len ? len
							    : per * (part + 1);
}

static void *prefault_thread(void *arg)
{
	struct prefault_job *job = arg;

	for (size_t i = 0; i < job->r->nblocks; i++) {
		const struct kv_memtest_block *b = &job->r->blocks[i];
		uint64_t start, end;

		prefault_slice(b->length, job->part, job->nparts, &start, &end);
		if (start == end)
			continue;
		if (!madvise(b->host + start, end - start, MADV_POPULATE_WRITE))
			continue;
		if (errno != EINVAL) {
			job->error = errno;
			return NULL;
		}
		/* A kernel before 5.14: one write per page does the same. */
		touch_pages(b->host + start, end - start);
	}
	return NULL;
}

int kv_memtest_region_prefault(struct kv_memtest_region *r, size_t nthreads,
			       struct kv_error *err)
{
	struct prefault_job jobs[PREFAULT_MAX_THREADS];
	pthread_t threads[PREFAULT_MAX_THREADS];
	bool started[PREFAULT_MAX_THREADS] = {false};
	size_t n = nthreads < 1 ? 1 : nthreads;

	if (n > PREFAULT_MAX_THREADS)
		n = PREFAULT_MAX_THREADS;
	if (r->total < 64 * HUGE_ALIGN)
		n = 1;
	for (size_t i = 0; i < n; i++) {
		jobs[i] = (struct prefault_job){.r = r, .part = i, .nparts = n};
		if (i > 0)
			started[i] = !pthread_create(&threads[i], NULL,
						     prefault_thread, &jobs[i]);
	}
	prefault_thread(&jobs[0]);
	for (size_t i = 1; i < n; i++) {
		if (started[i])
			pthread_join(threads[i], NULL);
		else
			prefault_thread(&jobs[i]);
	}
	for (size_t i = 0; i < n; i++)
		if (jobs[i].error)
			return kv_error_set_errno(err, -jobs[i].error,
						  "cannot pre-allocate the %llu bytes of the region",
						  (unsigned long long)r->total);
	return 0;
}

/* --- the digest --- */

#define DIGEST_MAX_THREADS     8
#define PAGEMAP_PRESENT	       (1ULL << 63)
#define PAGEMAP_SWAPPED	       (1ULL << 62)
#define PAGES_PER_DIGEST_CHUNK (KV_MEMTEST_DIGEST_CHUNK / KV_PAGE_SIZE)

struct digest_chunk {
	const uint8_t *host;
	uint64_t length;
};

struct digest_ctx {
	const struct digest_chunk *chunks;
	size_t nchunks;
	uint8_t (*digests)[16];	 /* one per chunk */
	int pagemap_fd;		 /* -1: read every chunk */
	const uint8_t *zeros;	 /* KV_MEMTEST_DIGEST_CHUNK bytes of zeros */
	uint8_t zero_digest[16]; /* of a whole chunk of zeros */
	bool avx2;		 /* hash with kv_memtest_xxh3_128_avx2 */
};

struct digest_job {
	const struct digest_ctx *ctx;
	size_t first, stride;
};

static void hash_bytes(const struct digest_ctx *ctx, const void *p,
		       uint64_t len, uint8_t out[16])
{
	XXH128_canonical_t canon;

	if (ctx->avx2) {
		kv_memtest_xxh3_128_avx2(p, (size_t)len, out);
		return;
	}
	XXH128_canonicalFromHash(&canon, XXH3_128bits(p, (size_t)len));
	memcpy(out, canon.digest, 16);
}

/* True if pagemap says no page of the chunk was ever populated (nor
 * swapped out): it reads as zeros. False when in doubt. */
static bool chunk_unpopulated(const struct digest_ctx *ctx,
			      const struct digest_chunk *c)
{
	uint64_t ent[PAGES_PER_DIGEST_CHUNK];
	uint64_t npages = c->length / KV_PAGE_SIZE;
	off_t at = (off_t)((uintptr_t)c->host / KV_PAGE_SIZE * sizeof(ent[0]));
	ssize_t n;

	if (ctx->pagemap_fd < 0)
		return false;
	n = pread(ctx->pagemap_fd, ent, npages * sizeof(ent[0]), at);
	if (n != (ssize_t)(npages * sizeof(ent[0])))
		return false;
	for (uint64_t i = 0; i < npages; i++)
		if (ent[i] & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED))
			return false;
	return true;
}

static void *digest_thread(void *arg)
{
	const struct digest_job *job = arg;
	const struct digest_ctx *ctx = job->ctx;

	for (size_t i = job->first; i < ctx->nchunks; i += job->stride) {
		const struct digest_chunk *c = &ctx->chunks[i];

		if (!chunk_unpopulated(ctx, c))
			hash_bytes(ctx, c->host, c->length, ctx->digests[i]);
		else if (c->length == KV_MEMTEST_DIGEST_CHUNK)
			memcpy(ctx->digests[i], ctx->zero_digest, 16);
		else
			hash_bytes(ctx, ctx->zeros, c->length, ctx->digests[i]);
	}
	return NULL;
}

static size_t collect_chunks(const struct kv_memtest_block *blocks,
			     size_t nblocks, struct digest_chunk *chunks)
{
	size_t n = 0;

	for (size_t i = 0; i < nblocks; i++) {
		for (uint64_t off = 0; off < blocks[i].length;
		     off += KV_MEMTEST_DIGEST_CHUNK) {
			uint64_t left = blocks[i].length - off;

			if (chunks)
				chunks[n] = (struct digest_chunk){
				    .host = blocks[i].host + off,
				    .length = left < KV_MEMTEST_DIGEST_CHUNK
						  ? left
						  : KV_MEMTEST_DIGEST_CHUNK,
				};
			n++;
		}
	}
	return n;
}

static void run_digest_jobs(const struct digest_ctx *ctx, size_t nthreads)
{
	struct digest_job jobs[DIGEST_MAX_THREADS];
	pthread_t threads[DIGEST_MAX_THREADS];
	bool started[DIGEST_MAX_THREADS] = {false};
	size_t n = nthreads < 1 ? 1 : nthreads;

	if (n > DIGEST_MAX_THREADS)
		n = DIGEST_MAX_THREADS;
	if (n > ctx->nchunks)
		n = ctx->nchunks ? ctx->nchunks : 1;
	for (size_t i = 0; i < n; i++) {
		jobs[i] =
		    (struct digest_job){.ctx = ctx, .first = i, .stride = n};
		if (i > 0)
			started[i] = !pthread_create(&threads[i], NULL,
						     digest_thread, &jobs[i]);
	}
	digest_thread(&jobs[0]);
	for (size_t i = 1; i < n; i++) {
		if (started[i])
			pthread_join(threads[i], NULL);
		else
			digest_thread(&jobs[i]);
	}
}

int kv_memtest_digest(const struct kv_memtest_block *blocks, size_t nblocks,
		      size_t nthreads, uint8_t out[16], struct kv_error *err)
{
	struct digest_ctx ctx = {.pagemap_fd = -1};
	struct digest_chunk *chunks;
	uint8_t(*digests)[16];
	void *zeros;
	size_t n = collect_chunks(blocks, nblocks, NULL);

	chunks = calloc(n ? n : 1, sizeof(*chunks));
	digests = calloc(n ? n : 1, sizeof(*digests));
	/* Never written: reads are served by the kernel's zero page. */
	zeros = mmap(NULL, KV_MEMTEST_DIGEST_CHUNK, PROT_READ,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!chunks || !digests || zeros == MAP_FAILED) {
		free(chunks);
		free(digests);
		if (zeros != MAP_FAILED)
			munmap(zeros, KV_MEMTEST_DIGEST_CHUNK);
		return kv_error_set(err, -ENOMEM, "no memory for the digest");
	}
	collect_chunks(blocks, nblocks, chunks);
	ctx.chunks = chunks;
	ctx.nchunks = n;
	ctx.digests = digests;
	ctx.zeros = zeros;
	ctx.avx2 = kv_memtest_have_avx2();
	hash_bytes(&ctx, zeros, KV_MEMTEST_DIGEST_CHUNK, ctx.zero_digest);
	/* Without pagemap every chunk is read: slower, same digest. */
	ctx.pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	run_digest_jobs(&ctx, nthreads);
	hash_bytes(&ctx, digests, n * sizeof(*digests), out);
	if (ctx.pagemap_fd >= 0)
		close(ctx.pagemap_fd);
	munmap(zeros, KV_MEMTEST_DIGEST_CHUNK);
	free(digests);
	free(chunks);
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
