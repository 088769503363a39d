/* SPDX-License-Identifier: MIT */
#include "base/bitmap.h"

#include <stdlib.h>
#include <string.h>

unsigned long *kv_bitmap_new(size_t nbits)
{
	return calloc(KV_BITMAP_LONGS(nbits) ? KV_BITMAP_LONGS(nbits) : 1,
		      sizeof(unsigned long));
}

void kv_bitmap_free(unsigned long *map)
{
	free(map);
}

/* Mask of the valid bits in the last word. */
static unsigned long last_word_mask(size_t nbits)
{
	size_t rem = nbits % KV_BITS_PER_LONG;

	return rem ? (1UL << rem) - 1 : ~0UL;
}

void kv_bitmap_set_all(unsigned long *map, size_t nbits)
{
	size_t n = KV_BITMAP_LONGS(nbits);

	if (!n)
		return;
	memset(map, 0xff, n * sizeof(unsigned long));
	map[n - 1] &= last_word_mask(nbits);
}

void kv_bitmap_clear_all(unsigned long *map, size_t nbits)
{
	memset(map, 0, KV_BITMAP_LONGS(nbits) * sizeof(unsigned long));
}

size_t kv_bitmap_count(const unsigned long *map, size_t nbits)
{
	size_t n = KV_BITMAP_LONGS(nbits), count = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned long w = __atomic_load_n(&map[i], __ATOMIC_RELAXED);

		if (i == n - 1)
			w &= last_word_mask(nbits);
		count += (size_t)__builtin_popcountl(w);
	}
	return count;
}

size_t kv_bitmap_find_next(const unsigned long *map, size_t nbits,
			   size_t start)
{
	size_t i;
	unsigned long w;

	if (start >= nbits)
		return nbits;
	i = start / KV_BITS_PER_LONG;
	w = __atomic_load_n(&map[i], __ATOMIC_RELAXED) &
	    (~0UL << (start % KV_BITS_PER_LONG));
	for (;;) {
		if (w) {
			size_t bit = i * KV_BITS_PER_LONG +
				     (size_t)__builtin_ctzl(w);
			return bit < nbits ? bit : nbits;
		}
		if (++i >= KV_BITMAP_LONGS(nbits))
			return nbits;
		w = __atomic_load_n(&map[i], __ATOMIC_RELAXED);
	}
}

size_t kv_bitmap_claim_next(unsigned long *map, size_t nbits, size_t start)
{
	for (;;) {
		size_t bit = kv_bitmap_find_next(map, nbits, start);

		if (bit >= nbits)
			return nbits;
		if (kv_bitmap_test_and_clear(map, bit))
			return bit;
		/* Another claimer took it between find and clear: go on. */
		start = bit + 1;
	}
}

size_t kv_bitmap_or_atomic(unsigned long *dst, const unsigned long *src,
			   size_t nbits)
{
	size_t n = KV_BITMAP_LONGS(nbits), added = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned long w = src[i], old;

		if (i == n - 1)
			w &= last_word_mask(nbits);
		if (!w)
			continue;
		old = __atomic_fetch_or(&dst[i], w, __ATOMIC_ACQ_REL);
		added += (size_t)__builtin_popcountl(w & ~old);
	}
	return added;
}

size_t kv_bitmap_drain_into(unsigned long *dst, unsigned long *src,
			    size_t nbits)
{
	size_t n = KV_BITMAP_LONGS(nbits), added = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned long w, old;

		if (!__atomic_load_n(&src[i], __ATOMIC_RELAXED))
			continue;
		w = __atomic_exchange_n(&src[i], 0, __ATOMIC_ACQ_REL);
		if (i == n - 1)
			w &= last_word_mask(nbits);
		old = __atomic_fetch_or(&dst[i], w, __ATOMIC_ACQ_REL);
		added += (size_t)__builtin_popcountl(w & ~old);
	}
	return added;
}
