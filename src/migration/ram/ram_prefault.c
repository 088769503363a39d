// SPDX-License-Identifier: MIT
/*
 * Destination: fault guest RAM in ahead of the loader.
 *
 * A page written for the first time costs the kernel a fault that zeroes it
 * (2 MiB at a time with transparent huge pages); on this kind of machine
 * first touch runs at 0.6-0.9 GiB/s, slower than the stream, and it was
 * two thirds of the loading thread's time in a first pass. Precopy's first
 * pass sends a block's pages in address order, so a helper thread can take
 * those faults (MADV_POPULATE_WRITE) a few MiB ahead of the last page
 * received, on another core, while the loading thread only copies.
 *
 * It follows the data: the window moves only when a page arrives, and a
 * zero page in it cuts it back (the data ended there), so memory the
 * stream never writes (an idle guest's untouched RAM) is not populated,
 * and the helper is idle long before the switch-over, where its faults
 * would hold the mm lock against the loader's own. It retires when
 * the pages stop arriving in order (the second pass has begun: its few
 * dirty pages land in memory that is already there, and a helper walking
 * windows then would only contend with the loader for the mm's lock, in
 * the passes that decide the downtime). Faulting a page in never changes
 * what it holds, so the helper and the loader need no ordering: a page
 * populated early reads as zero, like one never touched.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/log.h"
#include "migration/ram/ram_prefault.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* Faulted in per madvise call: one huge page. */
#define PREFAULT_STEP (2ULL << 20)
/* How far ahead of the last page received. */
#define PREFAULT_WINDOW (32ULL << 20)
/* First touch is slow per thread but scales with threads here (two
 * threads populate 1.4-2.3x faster than one, docs/PLATFORM-NOTES.md). */
#define PREFAULT_THREADS 2

struct kv_ram_prefault {
	pthread_t threads[PREFAULT_THREADS];
	int nthreads;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* Under lock: the range the loader asked for, and how far the
	 * helpers have claimed it (a step is claimed, then populated). */
	uint8_t *base; /* block's host address; NULL: nothing asked yet */
	uint64_t length;
	uint64_t want_end; /* offset in the block */
	uint64_t claimed_end;
	bool stop;
	bool retired; /* refused by the kernel, or the first pass is over */
	/* Loader thread only: the step it last announced, the window it
	 * asked for, the step of the last zero page that cut it. */
	size_t last_block;
	uint64_t last_step;
	bool noted;
	uint64_t asked_end;
	uint64_t last_zero_step;
	uint64_t populated; /* bytes, for the log (atomic) */
};

static uint64_t align_down(uint64_t v, uint64_t a)
{
	return v & ~(a - 1);
}

/* Populates one step outside the lock. Returns false to give up. */
static bool populate_step(struct kv_ram_prefault *pf, uint8_t *base,
			  uint64_t off, uint64_t len)
{
	if (madvise(base + off, len, MADV_POPULATE_WRITE) == 0) {
		__atomic_add_fetch(&pf->populated, len, __ATOMIC_RELAXED);
		return true;
	}
	/* EINVAL: an older kernel; ENOMEM/EFAULT: let the loader's own
	 * faults report it. Either way the helper only stops helping. */
	kv_debug("ram", "prefault: madvise(POPULATE_WRITE) at +0x%llx: %s; the loader faults pages in itself",
		 (unsigned long long)off, strerror(errno));
	return false;
}

static void *prefault_main(void *opaque)
{
	struct kv_ram_prefault *pf = opaque;

	pthread_mutex_lock(&pf->lock);
	for (;;) {
		uint8_t *base;
		uint64_t off, len;

		while (!pf->stop &&
		       (pf->retired || !pf->base ||
			pf->claimed_end >= pf->want_end))
			pthread_cond_wait(&pf->cond, &pf->lock);
		if (pf->stop)
			break;
		base = pf->base;
		off = pf->claimed_end;
		len = pf->want_end - off;
		if (len > PREFAULT_STEP)
			len = PREFAULT_STEP;
		pf->claimed_end = off + len;
		pthread_mutex_unlock(&pf->lock);
		if (!populate_step(pf, base, off, len)) {
			pthread_mutex_lock(&pf->lock);
			pf->retired = true;
			break;
		}
		pthread_mutex_lock(&pf->lock);
	}
	pthread_mutex_unlock(&pf->lock);
	return NULL;
}

static void prefault_join(struct kv_ram_prefault *pf)
{
	pthread_mutex_lock(&pf->lock);
	pf->stop = true;
	pthread_cond_broadcast(&pf->cond);
	pthread_mutex_unlock(&pf->lock);
	for (int i = 0; i < pf->nthreads; i++)
		pthread_join(pf->threads[i], NULL);
	pthread_cond_destroy(&pf->cond);
	pthread_mutex_destroy(&pf->lock);
}

struct kv_ram_prefault *kv_ram_prefault_start(void)
{
	struct kv_ram_prefault *pf = calloc(1, sizeof(*pf));

	if (!pf)
		return NULL;
	pthread_mutex_init(&pf->lock, NULL);
	pthread_cond_init(&pf->cond, NULL);
	for (int i = 0; i < PREFAULT_THREADS; i++) {
		if (pthread_create(&pf->threads[i], NULL, prefault_main, pf))
			break;
		pf->nthreads++;
	}
	if (!pf->nthreads) {
		prefault_join(pf);
		free(pf);
		return NULL;
	}
	return pf;
}

void kv_ram_prefault_note(struct kv_ram_prefault *pf, size_t block,
			  uint8_t *block_host, uint64_t block_length,
			  uint64_t offset)
{
	uint64_t step = align_down(offset, PREFAULT_STEP);
	uint64_t end;
	bool backwards;

	/* Once per step of progress: the common case costs two compares. */
	if (pf->noted && block == pf->last_block && step == pf->last_step)
		return;
	backwards = pf->noted && (block < pf->last_block ||
				  (block == pf->last_block &&
				   step < pf->last_step));
	pf->noted = true;
	pf->last_block = block;
	pf->last_step = step;
	end = step + PREFAULT_STEP + PREFAULT_WINDOW;
	if (end > block_length)
		end = block_length;
	pthread_mutex_lock(&pf->lock);
	if (backwards)
		pf->retired = true;
	if (!pf->retired) {
		/* Another block or a gap restarts the helper just past the
		 * loader's step (the loader faults that one in itself). */
		if (pf->base != block_host || pf->claimed_end < step) {
			pf->base = block_host;
			pf->length = block_length;
			pf->claimed_end = step + PREFAULT_STEP < end
					   ? step + PREFAULT_STEP
					   : end;
		}
		pf->want_end = end;
		pthread_cond_broadcast(&pf->cond);
	}
	pthread_mutex_unlock(&pf->lock);
	pf->asked_end = end;
	pf->last_zero_step = UINT64_MAX;
}

void kv_ram_prefault_note_zero(struct kv_ram_prefault *pf, size_t block,
			       uint64_t offset)
{
	uint64_t step = align_down(offset, PREFAULT_STEP);

	if (!pf->noted || block != pf->last_block || offset >= pf->asked_end ||
	    step == pf->last_zero_step)
		return;
	pf->last_zero_step = step;
	pf->asked_end = step > pf->last_step ? step : pf->last_step;
	pthread_mutex_lock(&pf->lock);
	if (pf->want_end > pf->asked_end)
		pf->want_end = pf->asked_end;
	pthread_mutex_unlock(&pf->lock);
}

uint64_t kv_ram_prefault_window_end(struct kv_ram_prefault *pf)
{
	uint64_t end;

	pthread_mutex_lock(&pf->lock);
	end = pf->want_end;
	pthread_mutex_unlock(&pf->lock);
	return end;
}

void kv_ram_prefault_retire(struct kv_ram_prefault *pf)
{
	if (!pf)
		return;
	pthread_mutex_lock(&pf->lock);
	pf->retired = true;
	pthread_mutex_unlock(&pf->lock);
}

void kv_ram_prefault_stop(struct kv_ram_prefault *pf)
{
	if (!pf)
		return;
	prefault_join(pf);
	kv_debug("ram", "prefault: %.1f MiB faulted in ahead of the loader",
		 (double)pf->populated / (1024.0 * 1024.0));
	free(pf);
}
