/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the XBZRLE page cache (src/migration/ram/page_cache.c): size
 * checks, hits and misses, the replacement rule with its hot-page
 * protection, resize, the counters and the rates computed from them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/error.h"
#include "base/units.h"
#include "migration/ram/page_cache.h"

#define PG KV_PAGE_SIZE

static void fill_page(uint8_t *p, uint64_t tag)
{
	for (size_t i = 0; i < PG; i += 8)
		memcpy(p + i, &tag, 8);
	p[PG - 1] = (uint8_t)(tag * 31);
}

static void assert_holds(struct kv_page_cache *c, uint64_t addr, uint64_t tag,
			 uint64_t gen)
{
	uint8_t expect[PG];
	uint8_t *got = kv_page_cache_lookup(c, addr, gen);

	if (!got)
		fail_msg("page 0x%llx is not cached", (unsigned long long)addr);
	fill_page(expect, tag);
	assert_memory_equal(got, expect, PG);
}

static void test_sizes(void **state)
{
	struct kv_error err = {0};
	struct kv_page_cache *c;

	assert_null(kv_page_cache_new(0, &err));
	assert_non_null(strstr(err.msg, "xbzrle-cache-size 0 must be a power "
					"of two of at least 4096 bytes"));
	kv_error_clear(&err);
	assert_null(kv_page_cache_new(2048, &err));
	assert_int_equal(err.code, -EINVAL);
	kv_error_clear(&err);
	assert_null(kv_page_cache_new(3 * PG, &err));
	assert_non_null(strstr(err.msg, "12288"));

	c = kv_page_cache_new(PG, &err);
	assert_non_null(c);
	assert_int_equal(kv_page_cache_slots(c), 1);
	assert_int_equal(kv_page_cache_ways(c), 1);
	kv_page_cache_free(c);

	c = kv_page_cache_new(2 * PG, &err);
	assert_non_null(c);
	assert_int_equal(kv_page_cache_ways(c), 2);
	kv_page_cache_free(c);

	/* The default: 64 MiB, 16384 slots; allocated lazily. */
	c = kv_page_cache_new(KV_PAGE_CACHE_DEFAULT_SIZE, &err);
	assert_non_null(c);
	assert_int_equal(kv_page_cache_slots(c), 16384);
	assert_int_equal(kv_page_cache_ways(c), KV_PAGE_CACHE_WAYS);
	kv_page_cache_free(c);
	kv_page_cache_free(NULL);
}

static void test_hit_miss_and_update(void **state)
{
	struct kv_error err = {0};
	struct kv_page_cache *c = kv_page_cache_new(16 * PG, &err);
	struct kv_xbzrle_stats st;
	uint8_t page[PG], *copy = NULL;

	assert_non_null(c);
	assert_null(kv_page_cache_lookup(c, 0x1000, 0));
	assert_false(kv_page_cache_contains(c, 0x1000));
	fill_page(page, 1);
	assert_int_equal(kv_page_cache_insert(c, 0x1000, page, 0, &copy), 0);
	assert_non_null(copy);
	/* The cache holds a copy: changing the source changes nothing. */
	fill_page(page, 2);
	assert_true(kv_page_cache_contains(c, 0x1000));
	assert_holds(c, 0x1000, 1, 0);
	/* Updating in place. */
	assert_int_equal(kv_page_cache_insert(c, 0x1000, page, 1, NULL), 0);
	assert_holds(c, 0x1000, 2, 1);
	/* Writing through the pointer a lookup returned. */
	copy = kv_page_cache_lookup(c, 0x1000, 1);
	fill_page(copy, 3);
	assert_holds(c, 0x1000, 3, 1);
	assert_null(kv_page_cache_lookup(c, 0x2000, 1));
	assert_null(kv_page_cache_lookup(c, UINT64_MAX, 1));
	assert_int_equal(kv_page_cache_insert(c, UINT64_MAX, page, 1, NULL),
			 -EINVAL);

	kv_page_cache_get_stats(c, &st);
	assert_int_equal(st.cache_size, 16 * PG);
	assert_int_equal(st.cache_miss, 2); /* 0x1000 at first, 0x2000 */
	assert_int_equal(st.cached_pages, 1);
	assert_int_equal(st.pages, 0);
	kv_page_cache_free(c);
}

/* 16 slots, 4 ways: 4 sets; pages whose (addr / 4096) % 4 agree share a
 * set. */
static void test_set_fills_then_replaces_oldest(void **state)
{
	struct kv_error err = {0};
	struct kv_page_cache *c = kv_page_cache_new(16 * PG, &err);
	struct kv_xbzrle_stats st;
	uint8_t page[PG];
	const uint64_t stride = 4 * PG; /* same set */

	assert_non_null(c);
	/* Four pages of set 1, each at its own generation 10..13. */
	for (uint64_t k = 0; k < 4; k++) {
		fill_page(page, 100 + k);
		assert_int_equal(kv_page_cache_insert(c, PG + k * stride, page,
						      10 + k, NULL),
				 0);
	}
	/* Other sets are untouched by them. */
	for (uint64_t k = 0; k < 4; k++) {
		fill_page(page, 200 + k);
		assert_int_equal(
		    kv_page_cache_insert(c, k * stride, page, 10, NULL), 0);
	}
	/* At generation 14 a page of age 12 or less may go (QEMU: hot when
	 * age + 2 > generation), the oldest first. */
	for (uint64_t k = 0; k < 3; k++) {
		fill_page(page, 150 + k);
		assert_int_equal(kv_page_cache_insert(c, PG + (4 + k) * stride,
						      page, 14, NULL),
				 0);
		assert_false(kv_page_cache_contains(c, PG + k * stride));
		assert_true(kv_page_cache_contains(c, PG + 3 * stride));
	}
	/* Now the set holds ages 13, 14, 14, 14: all hot at 14. */
	fill_page(page, 160);
	assert_int_equal(
	    kv_page_cache_insert(c, PG + 8 * stride, page, 14, NULL), -EBUSY);
	assert_false(kv_page_cache_contains(c, PG + 8 * stride));
	assert_holds(c, PG + 3 * stride, 103, 14);
	assert_holds(c, PG + 6 * stride, 152, 14);
	assert_holds(c, PG + 4 * stride, 150, 14);
	assert_holds(c, PG + 5 * stride, 151, 14);
	for (uint64_t k = 0; k < 4; k++)
		assert_holds(c, k * stride, 200 + k, 10);

	kv_page_cache_get_stats(c, &st);
	assert_int_equal(st.refused, 1);
	assert_int_equal(st.cached_pages, 8);
	assert_int_equal(st.cache_miss, 0);
	kv_page_cache_free(c);
}

/* A hit refreshes the age: a page looked up each generation stays. */
static void test_hit_keeps_page_hot(void **state)
{
	struct kv_error err = {0};
	struct kv_page_cache *c = kv_page_cache_new(PG, &err); /* 1 slot */
	uint8_t page[PG];

	assert_non_null(c);
	fill_page(page, 1);
	assert_int_equal(kv_page_cache_insert(c, 0, page, 0, NULL), 0);
	for (uint64_t gen = 1; gen < 10; gen++) {
		fill_page(page, 1000 + gen);
		assert_non_null(kv_page_cache_lookup(c, 0, gen));
		/* Another page wants the slot: refused, 0 was just hit. */
		assert_int_equal(
		    kv_page_cache_insert(c, 0x5000, page, gen, NULL), -EBUSY);
	}
	/* Generations 10 and 11 without a hit: at 11 the page (age 9) is
	 * still hot (9 + 2 > 10 at 10, 9 + 2 > 11 is false at 11). */
	assert_int_equal(kv_page_cache_insert(c, 0x5000, page, 10, NULL),
			 -EBUSY);
	assert_int_equal(kv_page_cache_insert(c, 0x5000, page, 11, NULL), 0);
	assert_false(kv_page_cache_contains(c, 0));
	assert_holds(c, 0x5000, 1009, 11);
	kv_page_cache_free(c);
}

/* Generations 0 and 1: a full set refuses, as QEMU's age + 2 > current. */
static void test_young_generations_refuse(void **state)
{
	struct kv_error err = {0};
	struct kv_page_cache *c = kv_page_cache_new(2 * PG, &err);
	uint8_t page[PG];

	assert_non_null(c);
	fill_page(page, 1);
	assert_int_equal(kv_page_cache_insert(c, 0, page, 0, NULL), 0);
	assert_int_equal(kv_page_cache_insert(c, PG, page, 0, NULL), 0);
	assert_int_equal(kv_page_cache_insert(c, 2 * PG, page, 0, NULL),
			 -EBUSY);
	assert_int_equal(kv_page_cache_insert(c, 2 * PG, page, 1, NULL),
			 -EBUSY);
	assert_int_equal(kv_page_cache_insert(c, 2 * PG, page, 2, NULL), 0);
	assert_false(kv_page_cache_contains(c, 0)); /* lowest of equal ages */
	assert_true(kv_page_cache_contains(c, PG));
	kv_page_cache_free(c);
}

static void test_resize_drops_contents(void **state)
{
	struct kv_error err = {0};
	struct kv_page_cache *c = kv_page_cache_new(8 * PG, &err);
	struct kv_xbzrle_stats st;
	uint8_t page[PG];

	assert_non_null(c);
	for (uint64_t k = 0; k < 8; k++) {
		fill_page(page, k);
		assert_int_equal(kv_page_cache_insert(c, k * PG, page, 5, NULL),
				 0);
	}
	assert_null(kv_page_cache_lookup(c, 100 * PG, 5));
	kv_page_cache_count_xbzrle(c, 40);
	kv_page_cache_count_overflow(c);

	/* A bad size changes nothing. */
	assert_int_equal(kv_page_cache_resize(c, 5 * PG, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "power of two"));
	assert_int_equal(kv_page_cache_slots(c), 8);
	assert_holds(c, 3 * PG, 3, 5);

	assert_int_equal(kv_page_cache_resize(c, 32 * PG, NULL), 0);
	assert_int_equal(kv_page_cache_slots(c), 32);
	for (uint64_t k = 0; k < 8; k++)
		assert_false(kv_page_cache_contains(c, k * PG));
	kv_page_cache_get_stats(c, &st);
	assert_int_equal(st.cache_size, 32 * PG);
	assert_int_equal(st.cached_pages, 0);
	/* The migration's counters survive a resize. */
	assert_int_equal(st.cache_miss, 1);
	assert_int_equal(st.pages, 1);
	assert_int_equal(st.bytes, 40);
	assert_int_equal(st.overflow, 1);
	/* And the new cache works, 32 distinct pages fit. */
	for (uint64_t k = 0; k < 32; k++) {
		fill_page(page, 500 + k);
		assert_int_equal(kv_page_cache_insert(c, k * PG, page, 6, NULL),
				 0);
	}
	for (uint64_t k = 0; k < 32; k++)
		assert_holds(c, k * PG, 500 + k, 6);

	assert_int_equal(kv_page_cache_resize(c, PG, NULL), 0);
	assert_int_equal(kv_page_cache_slots(c), 1);
	kv_page_cache_free(c);
}

/* Two caches in one process share nothing. */
static void test_two_caches_independent(void **state)
{
	struct kv_page_cache *a = kv_page_cache_new(4 * PG, NULL);
	struct kv_page_cache *b = kv_page_cache_new(4 * PG, NULL);
	struct kv_xbzrle_stats sa, sb;
	uint8_t page[PG];

	assert_non_null(a);
	assert_non_null(b);
	fill_page(page, 9);
	assert_int_equal(kv_page_cache_insert(a, 0, page, 0, NULL), 0);
	assert_false(kv_page_cache_contains(b, 0));
	assert_null(kv_page_cache_lookup(b, 0, 0));
	kv_page_cache_count_overflow(a);
	kv_page_cache_get_stats(a, &sa);
	kv_page_cache_get_stats(b, &sb);
	assert_int_equal(sa.overflow, 1);
	assert_int_equal(sb.overflow, 0);
	assert_int_equal(sa.cache_miss, 0);
	assert_int_equal(sb.cache_miss, 1);
	kv_page_cache_free(a);
	kv_page_cache_free(b);
}

static void test_rates(void **state)
{
	struct kv_xbzrle_rates r = {0};
	struct kv_xbzrle_stats st = {0};

	/* Period 1: 100 pages handled, 25 misses, 10 XBZRLE pages in 4096
	 * bytes: miss rate 0.25, encoding rate 10. */
	st.cache_miss = 25;
	st.pages = 10;
	st.bytes = 4096;
	kv_xbzrle_rates_update(&r, &st, 100);
	assert_true(r.cache_miss_rate > 0.2499 && r.cache_miss_rate < 0.2501);
	assert_true(r.encoding_rate > 9.999 && r.encoding_rate < 10.001);
	/* Period 2: 50 more pages, no miss, no XBZRLE page: rate 0. */
	kv_xbzrle_rates_update(&r, &st, 150);
	assert_true(r.cache_miss_rate == 0.0);
	assert_true(r.encoding_rate == 0.0);
	/* An empty period keeps the last rates. */
	st.cache_miss = 35;
	st.pages = 12;
	st.bytes = 4096 + 1024;
	kv_xbzrle_rates_update(&r, &st, 150);
	assert_true(r.cache_miss_rate == 0.0);
	/* Period 3: 20 pages, 10 misses, 2 pages in 1024 bytes -> 8. */
	kv_xbzrle_rates_update(&r, &st, 170);
	assert_true(r.cache_miss_rate > 0.499 && r.cache_miss_rate < 0.501);
	assert_true(r.encoding_rate > 7.999 && r.encoding_rate < 8.001);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sizes),
	    cmocka_unit_test(test_hit_miss_and_update),
	    cmocka_unit_test(test_set_fills_then_replaces_oldest),
	    cmocka_unit_test(test_hit_keeps_page_hot),
	    cmocka_unit_test(test_young_generations_refuse),
	    cmocka_unit_test(test_resize_drops_contents),
	    cmocka_unit_test(test_two_caches_independent),
	    cmocka_unit_test(test_rates),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
