/* SPDX-License-Identifier: MIT */
/* The XBZRLE page cache: set-associative, age-protected (page_cache.h). */
#include "base/units.h"
#include "migration/ram/page_cache.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define SLOT_EMPTY UINT64_MAX

struct page_cache_slot {
	uint64_t addr; /* SLOT_EMPTY when free */
	uint64_t age;
};

/* The slot arrays of one size; replaced whole on resize. */
struct page_cache_store {
	struct page_cache_slot *slots; /* nsets * ways, a set contiguous */
	uint8_t *data;		       /* one page per slot, same order */
	size_t nslots;
	size_t ways;
	size_t set_mask; /* nsets - 1 */
};

struct kv_page_cache {
	struct page_cache_store st;
	/* Single writer (the migration thread), read from any thread. */
	uint64_t cache_size;
	uint64_t bytes;
	uint64_t pages;
	uint64_t cache_miss;
	uint64_t overflow;
	uint64_t cached_pages;
	uint64_t refused;
};

static inline void stat_set(uint64_t *ctr, uint64_t v)
{
	__atomic_store_n(ctr, v, __ATOMIC_RELAXED);
}

static inline void stat_add(uint64_t *ctr, uint64_t d)
{
	stat_set(ctr, __atomic_load_n(ctr, __ATOMIC_RELAXED) + d);
}

static inline uint64_t stat_get(const uint64_t *ctr)
{
	return __atomic_load_n(ctr, __ATOMIC_RELAXED);
}

static int check_size(uint64_t size, struct kv_error *err)
{
	if (size < KV_PAGE_SIZE || (size & (size - 1)))
		return kv_error_set(err, -EINVAL,
				    "xbzrle-cache-size %" PRIu64
				    " must be a power of two of at least %u bytes",
				    size, KV_PAGE_SIZE);
	if (size / KV_PAGE_SIZE >
	    SIZE_MAX / sizeof(struct page_cache_slot))
		return kv_error_set(err, -EINVAL,
				    "xbzrle-cache-size %" PRIu64
				    " is too large for this host",
				    size);
	return 0;
}

static int store_alloc(struct page_cache_store *s, uint64_t size,
		       struct kv_error *err)
{
	size_t nslots = (size_t)(size / KV_PAGE_SIZE);

	s->nslots = nslots;
	s->ways = nslots < KV_PAGE_CACHE_WAYS ? nslots : KV_PAGE_CACHE_WAYS;
	s->set_mask = nslots / s->ways - 1;
	s->slots = malloc(nslots * sizeof(*s->slots));
	/* Big enough for the allocator to map it lazily: untouched slots
	 * cost no memory. */
	s->data = aligned_alloc(KV_PAGE_SIZE, (size_t)size);
	if (!s->slots || !s->data) {
		free(s->slots);
		free(s->data);
		s->slots = NULL;
		s->data = NULL;
		return kv_error_set(err, -ENOMEM,
				    "cannot allocate the %" PRIu64
				    "-byte XBZRLE page cache",
				    size);
	}
	for (size_t i = 0; i < nslots; i++) {
		s->slots[i].addr = SLOT_EMPTY;
		s->slots[i].age = 0;
	}
	return 0;
}

static void store_free(struct page_cache_store *s)
{
	free(s->slots);
	free(s->data);
	s->slots = NULL;
	s->data = NULL;
}

struct kv_page_cache *kv_page_cache_new(uint64_t size, struct kv_error *err)
{
	struct kv_page_cache *c;

	if (check_size(size, err) < 0)
		return NULL;
	c = calloc(1, sizeof(*c));
	if (!c) {
		kv_error_set(err, -ENOMEM, "cannot allocate the page cache");
		return NULL;
	}
	if (store_alloc(&c->st, size, err) < 0) {
		free(c);
		return NULL;
	}
	c->cache_size = size;
	return c;
}

void kv_page_cache_free(struct kv_page_cache *c)
{
	if (!c)
		return;
	store_free(&c->st);
	free(c);
}

int kv_page_cache_resize(struct kv_page_cache *c, uint64_t size,
			 struct kv_error *err)
{
	struct page_cache_store fresh;
	int ret;

	ret = check_size(size, err);
	if (ret < 0)
		return ret;
	ret = store_alloc(&fresh, size, err);
	if (ret < 0)
		return ret;
	store_free(&c->st);
	c->st = fresh;
	stat_set(&c->cache_size, size);
	stat_set(&c->cached_pages, 0);
	return 0;
}

static inline size_t set_first_slot(const struct page_cache_store *s,
				    uint64_t addr)
{
	return (size_t)((addr / KV_PAGE_SIZE) & s->set_mask) * s->ways;
}

static inline uint8_t *slot_data(const struct page_cache_store *s, size_t i)
{
	return s->data + i * (size_t)KV_PAGE_SIZE;
}

/* The slot holding addr, or SIZE_MAX. */
static size_t find_slot(const struct page_cache_store *s, uint64_t addr)
{
	size_t first = set_first_slot(s, addr);

	for (size_t w = 0; w < s->ways; w++)
		if (s->slots[first + w].addr == addr)
			return first + w;
	return SIZE_MAX;
}

uint8_t *kv_page_cache_lookup(struct kv_page_cache *c, uint64_t addr,
			      uint64_t generation)
{
	size_t i;

	if (addr == SLOT_EMPTY)
		return NULL;
	i = find_slot(&c->st, addr);
	if (i == SIZE_MAX) {
		stat_add(&c->cache_miss, 1);
		return NULL;
	}
	c->st.slots[i].age = generation;
	return slot_data(&c->st, i);
}

bool kv_page_cache_contains(const struct kv_page_cache *c, uint64_t addr)
{
	return addr != SLOT_EMPTY && find_slot(&c->st, addr) != SIZE_MAX;
}

/* The slot a new page may take in its set (the rule in page_cache.h), or
 * SIZE_MAX when every slot holds a hot page. */
static size_t pick_victim(const struct page_cache_store *s, uint64_t addr,
			  uint64_t generation)
{
	size_t first = set_first_slot(s, addr), oldest = first;

	for (size_t w = 0; w < s->ways; w++) {
		const struct page_cache_slot *sl = &s->slots[first + w];

		if (sl->addr == SLOT_EMPTY)
			return first + w;
		if (sl->age < s->slots[oldest].age)
			oldest = first + w;
	}
	/* Written so that no age near UINT64_MAX can overflow. */
	if (generation < KV_PAGE_CACHE_LIFETIME ||
	    s->slots[oldest].age > generation - KV_PAGE_CACHE_LIFETIME)
		return SIZE_MAX;
	return oldest;
}

int kv_page_cache_insert(struct kv_page_cache *c, uint64_t addr,
			 const void *page, uint64_t generation, uint8_t **copy)
{
	struct page_cache_store *s = &c->st;
	size_t i;

	if (addr == SLOT_EMPTY)
		return -EINVAL;
	i = find_slot(s, addr);
	if (i == SIZE_MAX) {
		i = pick_victim(s, addr, generation);
		if (i == SIZE_MAX) {
			stat_add(&c->refused, 1);
			return -EBUSY;
		}
		if (s->slots[i].addr == SLOT_EMPTY)
			stat_add(&c->cached_pages, 1);
		s->slots[i].addr = addr;
	}
	s->slots[i].age = generation;
	memcpy(slot_data(s, i), page, KV_PAGE_SIZE);
	if (copy)
		*copy = slot_data(s, i);
	return 0;
}

size_t kv_page_cache_slots(const struct kv_page_cache *c)
{
	return c->st.nslots;
}

size_t kv_page_cache_ways(const struct kv_page_cache *c)
{
	return c->st.ways;
}

void kv_page_cache_count_xbzrle(struct kv_page_cache *c, uint64_t record_bytes)
{
	stat_add(&c->pages, 1);
	stat_add(&c->bytes, record_bytes);
}

void kv_page_cache_count_overflow(struct kv_page_cache *c)
{
	stat_add(&c->overflow, 1);
}

void kv_page_cache_get_stats(const struct kv_page_cache *c,
			     struct kv_xbzrle_stats *st)
{
	st->cache_size = stat_get(&c->cache_size);
	st->bytes = stat_get(&c->bytes);
	st->pages = stat_get(&c->pages);
	st->cache_miss = stat_get(&c->cache_miss);
	st->overflow = stat_get(&c->overflow);
	st->cached_pages = stat_get(&c->cached_pages);
	st->refused = stat_get(&c->refused);
}

void kv_xbzrle_rates_update(struct kv_xbzrle_rates *r,
			    const struct kv_xbzrle_stats *now,
			    uint64_t handled_total)
{
	uint64_t handled = handled_total - r->handled_prev;
	uint64_t pages = now->pages - r->pages_prev;
	uint64_t bytes = now->bytes - r->bytes_prev;

	if (!handled)
		return;
	r->cache_miss_rate =
	    (double)(now->cache_miss - r->cache_miss_prev) / (double)handled;
	r->encoding_rate =
	    pages && bytes ? (double)pages * KV_PAGE_SIZE / (double)bytes
			   : 0.0;
	r->handled_prev = handled_total;
	r->cache_miss_prev = now->cache_miss;
	r->pages_prev = now->pages;
	r->bytes_prev = now->bytes;
}
