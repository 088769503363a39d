/* SPDX-License-Identifier: MIT */
/*
 * Bitmaps of unsigned long words, one bit per page.
 *
 * Two kinds of operations: plain ones for a bitmap one thread owns, and
 * atomic ones for the dirty bitmaps that a tracker fills while a sender
 * claims from them. kv_bitmap_claim_next() is the page search of the seeds'
 * critique done right: it finds a set bit and clears it in one step, so a
 * page is never found twice nor cleared after it was sent.
 */
#ifndef KV_BASE_BITMAP_H
#define KV_BASE_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_BITS_PER_LONG (8 * sizeof(unsigned long))
#define KV_BITMAP_LONGS(nbits) \
	(((nbits) + KV_BITS_PER_LONG - 1) / KV_BITS_PER_LONG)

unsigned long *kv_bitmap_new(size_t nbits); /* zeroed; NULL on ENOMEM */
void kv_bitmap_free(unsigned long *map);

void kv_bitmap_set_all(unsigned long *map, size_t nbits);
void kv_bitmap_clear_all(unsigned long *map, size_t nbits);
size_t kv_bitmap_count(const unsigned long *map, size_t nbits);

static inline bool kv_bitmap_test(const unsigned long *map, size_t bit)
{
	return (__atomic_load_n(&map[bit / KV_BITS_PER_LONG], __ATOMIC_RELAXED) >>
		(bit % KV_BITS_PER_LONG)) & 1;
}

/* Atomic set: safe against concurrent claims. Returns true if newly set. */
static inline bool kv_bitmap_set_atomic(unsigned long *map, size_t bit)
{
	unsigned long mask = 1UL << (bit % KV_BITS_PER_LONG);
	unsigned long old = __atomic_fetch_or(&map[bit / KV_BITS_PER_LONG], mask,
					      __ATOMIC_RELEASE);
	return !(old & mask);
}

/* Atomic test-and-clear. Returns true if the bit was set. */
static inline bool kv_bitmap_test_and_clear(unsigned long *map, size_t bit)
{
	unsigned long mask = 1UL << (bit % KV_BITS_PER_LONG);
	unsigned long *word = &map[bit / KV_BITS_PER_LONG];

	if (!(__atomic_load_n(word, __ATOMIC_RELAXED) & mask))
		return false;
	return __atomic_fetch_and(word, ~mask, __ATOMIC_ACQ_REL) & mask;
}

/* First set bit at or after start, or nbits if none. Not atomic with respect
 * to the bit's value: use kv_bitmap_claim_next() to take a page. */
size_t kv_bitmap_find_next(const unsigned long *map, size_t nbits,
			   size_t start);

/* Find the first set bit at or after start, clear it atomically and return
 * its index; nbits if no bit is set in [start, nbits). */
size_t kv_bitmap_claim_next(unsigned long *map, size_t nbits, size_t start);

/* dst |= src, atomically per word of dst; returns the number of bits that
 * were newly set in dst. src is read plainly. */
size_t kv_bitmap_or_atomic(unsigned long *dst, const unsigned long *src,
			   size_t nbits);

/* Atomically take every word of src (exchange with 0) and OR it into dst;
 * returns the number of bits newly set in dst. Used by software trackers. */
size_t kv_bitmap_drain_into(unsigned long *dst, unsigned long *src,
			    size_t nbits);

#endif
