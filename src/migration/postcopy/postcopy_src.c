/* SPDX-License-Identifier: MIT */
/*
 * The source's queue of requested pages (postcopy_src.h).
 *
 * A request is kept whole in a ring and cut into pages as it is served;
 * the "sent since the switch" bitmaps are atomic so that the background
 * scan claims without the queue's lock.
 */
#include "migration/postcopy/postcopy_src.h"

#include "base/bitmap.h"
#include "base/units.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct src_block {
	struct kv_pc_block b; /* idstr owned */
	uint64_t npages;
	unsigned long *sent;
};

struct pending_req {
	size_t block;
	uint64_t next; /* the next byte offset to serve */
	uint64_t end;
};

struct kv_pc_src {
	struct src_block *blocks;
	size_t nblocks;
	struct kv_pc_blocks view; /* for the wire's checks */
	struct kv_pc_block *view_v;

	pthread_mutex_t lock;
	pthread_cond_t queued;
	struct pending_req ring[KV_PC_SRC_QUEUE_MAX];
	size_t head, count;
	int last_block; /* REQ_PAGES's block: the previous request's; -1 */
	bool woken;
	bool has_hint;
	struct kv_pc_page hint;
	struct kv_pc_src_stats st;
	/* Under lock: serve a requested page even when it was sent (it is
	 * on its way behind other pages; a preempt channel overtakes). */
	bool resend;
};

static int blocks_init(struct kv_pc_src *s, const struct kv_pc_blocks *blocks,
		       struct kv_error *err)
{
	s->blocks = calloc(blocks->n ? blocks->n : 1, sizeof(*s->blocks));
	s->view_v = calloc(blocks->n ? blocks->n : 1, sizeof(*s->view_v));
	if (!s->blocks || !s->view_v)
		return kv_error_set(err, -ENOMEM, "postcopy: out of memory for %zu blocks", blocks->n);
	s->nblocks = blocks->n;
	for (size_t i = 0; i < blocks->n; i++) {
		struct src_block *b = &s->blocks[i];

		uint32_t ps = blocks->v[i].page_size;

		if (ps < KV_PAGE_SIZE || (ps & (ps - 1)) || blocks->v[i].length % ps)
			return kv_error_set(err, -EINVAL, "postcopy: block '%s' of %#" PRIx64 " bytes with page size %u (a power of two from 4 KiB, dividing the length)", blocks->v[i].idstr, blocks->v[i].length, ps);
		b->b = blocks->v[i];
		b->b.idstr = strdup(blocks->v[i].idstr);
		b->npages = b->b.length / KV_PAGE_SIZE;
		b->sent = kv_bitmap_new(b->npages ? b->npages : 1);
		if (!b->b.idstr || !b->sent)
			return kv_error_set(err, -ENOMEM, "postcopy: out of memory for block '%s'", blocks->v[i].idstr);
		s->view_v[i] = b->b;
	}
	s->view = (struct kv_pc_blocks){s->view_v, s->nblocks};
	return 0;
}

struct kv_pc_src *kv_pc_src_new(const struct kv_pc_blocks *blocks,
				struct kv_error *err)
{
	struct kv_pc_src *s = calloc(1, sizeof(*s));
	pthread_condattr_t attr;

	if (!s) {
		kv_error_set(err, -ENOMEM, "postcopy: out of memory");
		return NULL;
	}
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->queued, &attr);
	pthread_condattr_destroy(&attr);
	s->last_block = -1;
	if (blocks_init(s, blocks, err) < 0) {
		kv_pc_src_free(s);
		return NULL;
	}
	return s;
}

void kv_pc_src_free(struct kv_pc_src *s)
{
	if (!s)
		return;
	for (size_t i = 0; s->blocks && i < s->nblocks; i++) {
		free((char *)s->blocks[i].b.idstr);
		kv_bitmap_free(s->blocks[i].sent);
	}
	free(s->blocks);
	free(s->view_v);
	pthread_cond_destroy(&s->queued);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* The block a request names, or the previous one for REQ_PAGES. Under
 * the lock (last_block). */
static int request_block(struct kv_pc_src *s, const struct kv_pc_req *r,
			 struct kv_error *err)
{
	int b;

	if (!r->has_id) {
		if (s->last_block < 0)
			return kv_error_set(err, -EINVAL, "postcopy: REQ_PAGES for offset %#" PRIx64 " names no block and no REQ_PAGES_ID came before it", r->start);
		return s->last_block;
	}
	b = kv_pc_block_find(&s->view, r->idstr, strlen(r->idstr));
	if (b < 0)
		return kv_error_set(err, -EINVAL, "postcopy: page request for unknown block '%s' (offset %#" PRIx64 ")", r->idstr, r->start);
	return b;
}

int kv_pc_src_request(struct kv_pc_src *s, const struct kv_pc_req *r,
		      struct kv_error *err)
{
	int b, ret;

	pthread_mutex_lock(&s->lock);
	b = request_block(s, r, err);
	ret = b < 0 ? b : kv_pc_check_range(&s->blocks[b].b, r->start, r->len, "postcopy: page request", err);
	if (ret < 0)
		goto out;
	if (s->count == KV_PC_SRC_QUEUE_MAX) {
		ret = kv_error_set(err, -ENOSPC, "postcopy: %u page requests wait already; the destination asks faster than any link serves", KV_PC_SRC_QUEUE_MAX);
		goto out;
	}
	s->ring[(s->head + s->count++) % KV_PC_SRC_QUEUE_MAX] =
	    (struct pending_req){(size_t)b, r->start, r->start + r->len};
	s->last_block = b;
	s->st.requests++;
	pthread_cond_broadcast(&s->queued);
out:
	pthread_mutex_unlock(&s->lock);
	return ret;
}

int kv_pc_src_handle_message(struct kv_pc_src *s, uint16_t type,
			     const uint8_t *p, size_t len,
			     struct kv_error *err)
{
	struct kv_pc_req r;
	int ret = kv_pc_req_decode(type, p, len, &r, err);

	return ret < 0 ? ret : kv_pc_src_request(s, &r, err);
}

static void set_hint(struct kv_pc_src *s, size_t block, uint64_t offset)
{
	uint64_t next = offset + KV_PAGE_SIZE;

	if (next >= s->blocks[block].b.length) {
		block = (block + 1) % s->nblocks;
		next = 0;
	}
	s->hint = (struct kv_pc_page){block, next};
	__atomic_store_n(&s->has_hint, true, __ATOMIC_RELEASE);
}

bool kv_pc_src_next_urgent(struct kv_pc_src *s, struct kv_pc_page *pg)
{
	bool found = false;

	pthread_mutex_lock(&s->lock);
	while (s->count && !found) {
		struct pending_req *q = &s->ring[s->head];
		uint64_t off = q->next;

		q->next += KV_PAGE_SIZE;
		if (q->next >= q->end) {
			s->head = (s->head + 1) % KV_PC_SRC_QUEUE_MAX;
			s->count--;
		}
		if (!kv_bitmap_set_atomic(s->blocks[q->block].sent, off / KV_PAGE_SIZE)) {
			s->st.duplicates++;
			if (!s->resend)
				continue;
		}
		*pg = (struct kv_pc_page){q->block, off};
		s->st.urgent++;
		set_hint(s, q->block, off);
		found = true;
	}
	pthread_mutex_unlock(&s->lock);
	return found;
}

int kv_pc_src_wait_urgent(struct kv_pc_src *s, int timeout_ms)
{
	struct timespec until;
	int r;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&s->lock);
	while (!s->count && !s->woken) {
		if (timeout_ms < 0)
			pthread_cond_wait(&s->queued, &s->lock);
		else if (pthread_cond_timedwait(&s->queued, &s->lock, &until) == ETIMEDOUT)
			break;
	}
	r = s->count > 0;
	s->woken = false;
	pthread_mutex_unlock(&s->lock);
	return r;
}

void kv_pc_src_set_resend(struct kv_pc_src *s, bool on)
{
	pthread_mutex_lock(&s->lock);
	s->resend = on;
	pthread_mutex_unlock(&s->lock);
}

void kv_pc_src_wake(struct kv_pc_src *s)
{
	pthread_mutex_lock(&s->lock);
	s->woken = true;
	pthread_cond_broadcast(&s->queued);
	pthread_mutex_unlock(&s->lock);
}

bool kv_pc_src_claim(struct kv_pc_src *s, size_t block, uint64_t offset)
{
	bool mine = kv_bitmap_set_atomic(s->blocks[block].sent, offset / KV_PAGE_SIZE);

	if (mine)
		__atomic_fetch_add(&s->st.background, 1, __ATOMIC_RELAXED);
	return mine;
}

bool kv_pc_src_take_scan_hint(struct kv_pc_src *s, struct kv_pc_page *pg)
{
	bool had;

	/* The background scan asks before every few pages: without a hint it
	 * leaves the lock to the urgent path (the return path's reader and
	 * the preempt thread), which it could hold up when descheduled. */
	if (!__atomic_load_n(&s->has_hint, __ATOMIC_ACQUIRE))
		return false;
	pthread_mutex_lock(&s->lock);
	had = s->has_hint;
	if (had)
		*pg = s->hint;
	__atomic_store_n(&s->has_hint, false, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&s->lock);
	return had;
}

void kv_pc_src_set_received(struct kv_pc_src *s, size_t block,
			    const unsigned long *received)
{
	struct src_block *b = &s->blocks[block];

	pthread_mutex_lock(&s->lock);
	memcpy(b->sent, received, KV_BITMAP_LONGS(b->npages) * sizeof(unsigned long));
	pthread_mutex_unlock(&s->lock);
}

void kv_pc_src_flush(struct kv_pc_src *s)
{
	pthread_mutex_lock(&s->lock);
	s->head = s->count = 0;
	__atomic_store_n(&s->has_hint, false, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&s->lock);
}

void kv_pc_src_get_stats(struct kv_pc_src *s, struct kv_pc_src_stats *st)
{
	pthread_mutex_lock(&s->lock);
	*st = s->st;
	st->background = __atomic_load_n(&s->st.background, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&s->lock);
}
