/* SPDX-License-Identifier: MIT */
/* Unit tests of src/base: bitmaps, zero detection, the error object, the
 * rate limiter, thread roles. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/bitmap.h"
#include "base/clock.h"
#include "base/rate_limit.h"
#include "base/error.h"
#include "base/thread_role.h"
#include "base/zero.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Sizes around word boundaries, and not multiples of 64. */
static const size_t sizes[] = {1, 2, 63, 64, 65, 127, 128, 129, 200, 1000};

/* ---- bitmaps ---- */

static void test_bitmap_set_all_count(void **state)
{
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t n = sizes[k];
		unsigned long *map = kv_bitmap_new(n);

		assert_non_null(map);
		assert_int_equal(kv_bitmap_count(map, n), 0);
		assert_int_equal(kv_bitmap_find_next(map, n, 0), n);
		kv_bitmap_set_all(map, n);
		assert_int_equal(kv_bitmap_count(map, n), n);
		/* No bit past the end may be set in the last word. */
		if (n % KV_BITS_PER_LONG)
			assert_int_equal(map[KV_BITMAP_LONGS(n) - 1] >>
					     (n % KV_BITS_PER_LONG),
					 0);
		assert_true(kv_bitmap_test(map, n - 1));
		kv_bitmap_clear_all(map, n);
		assert_int_equal(kv_bitmap_count(map, n), 0);
		kv_bitmap_free(map);
	}
}

static void test_bitmap_find_next(void **state)
{
	size_t n = 200;
	unsigned long *map = kv_bitmap_new(n);

	assert_true(kv_bitmap_set_atomic(map, 0));
	assert_false(kv_bitmap_set_atomic(map, 0)); /* already set */
	kv_bitmap_set_atomic(map, 63);
	kv_bitmap_set_atomic(map, 64);
	kv_bitmap_set_atomic(map, 199);
	assert_int_equal(kv_bitmap_find_next(map, n, 0), 0);
	assert_int_equal(kv_bitmap_find_next(map, n, 1), 63);
	assert_int_equal(kv_bitmap_find_next(map, n, 63), 63);
	assert_int_equal(kv_bitmap_find_next(map, n, 64), 64);
	assert_int_equal(kv_bitmap_find_next(map, n, 65), 199);
	assert_int_equal(kv_bitmap_find_next(map, n, 199), 199);
	assert_int_equal(kv_bitmap_find_next(map, n, 200), 200);
	assert_int_equal(kv_bitmap_find_next(map, n, 5000), 200);
	assert_int_equal(kv_bitmap_count(map, n), 4);
	/* A bit beyond nbits in the last word is not found nor counted. */
	assert_int_equal(kv_bitmap_find_next(map, 150, 65), 150);
	assert_int_equal(kv_bitmap_count(map, 150), 3);
	kv_bitmap_free(map);
}

static void test_bitmap_claim(void **state)
{
	size_t n = 130;
	unsigned long *map = kv_bitmap_new(n);

	assert_int_equal(kv_bitmap_claim_next(map, n, 0), n);
	kv_bitmap_set_atomic(map, 5);
	kv_bitmap_set_atomic(map, 129);
	assert_int_equal(kv_bitmap_claim_next(map, n, 6), 129);
	assert_false(kv_bitmap_test(map, 129));
	assert_int_equal(kv_bitmap_claim_next(map, n, 6), n);
	assert_int_equal(kv_bitmap_claim_next(map, n, 0), 5);
	assert_int_equal(kv_bitmap_claim_next(map, n, 0), n);
	assert_true(kv_bitmap_set_atomic(map, 7));
	assert_true(kv_bitmap_test_and_clear(map, 7));
	assert_false(kv_bitmap_test_and_clear(map, 7));
	assert_int_equal(kv_bitmap_count(map, n), 0);
	kv_bitmap_free(map);
}

enum { CLAIM_BITS = 100003 };

struct claimer {
	unsigned long *map;
	unsigned char *seen; /* per bit: how often claimed, by any thread */
	pthread_barrier_t *start; /* both threads begin together */
	size_t claimed;
};

static void *claim_thread(void *arg)
{
	struct claimer *c = arg;
	size_t bit = 0;

	pthread_barrier_wait(c->start);
	for (;;) {
		bit = kv_bitmap_claim_next(c->map, CLAIM_BITS, 0);
		if (bit >= CLAIM_BITS)
			break;
		__atomic_fetch_add(&c->seen[bit], 1, __ATOMIC_RELAXED);
		c->claimed++;
	}
	return NULL;
}

static void test_bitmap_two_claimers(void **state)
{
	unsigned long *map = kv_bitmap_new(CLAIM_BITS);
	unsigned char *seen = calloc(CLAIM_BITS, 1);
	pthread_barrier_t start;
	struct claimer a = {map, seen, &start, 0}, b = {map, seen, &start, 0};
	pthread_t ta, tb;

	pthread_barrier_init(&start, NULL, 2);
	kv_bitmap_set_all(map, CLAIM_BITS);
	assert_int_equal(pthread_create(&ta, NULL, claim_thread, &a), 0);
	assert_int_equal(pthread_create(&tb, NULL, claim_thread, &b), 0);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	pthread_barrier_destroy(&start);
	assert_int_equal(a.claimed + b.claimed, CLAIM_BITS);
	for (size_t i = 0; i < CLAIM_BITS; i++)
		if (seen[i] != 1)
			fail_msg("bit %zu claimed %d times", i, seen[i]);
	assert_int_equal(kv_bitmap_count(map, CLAIM_BITS), 0);
	free(seen);
	kv_bitmap_free(map);
}

static void test_bitmap_or_and_drain(void **state)
{
	size_t n = 129;
	unsigned long *dst = kv_bitmap_new(n);
	unsigned long *src = kv_bitmap_new(n);

	kv_bitmap_set_atomic(dst, 3);
	kv_bitmap_set_atomic(src, 3);
	kv_bitmap_set_atomic(src, 64);
	kv_bitmap_set_atomic(src, 128);
	assert_int_equal(kv_bitmap_or_atomic(dst, src, n), 2);
	assert_int_equal(kv_bitmap_count(dst, n), 3);
	assert_int_equal(kv_bitmap_count(src, n), 3); /* untouched */
	assert_int_equal(kv_bitmap_or_atomic(dst, src, n), 0);

	kv_bitmap_clear_all(dst, n);
	kv_bitmap_set_atomic(dst, 64);
	kv_bitmap_set_atomic(src, 100);
	/* src has 3, 64, 100, 128; dst had 64: three are new. */
	assert_int_equal(kv_bitmap_drain_into(dst, src, n), 3);
	assert_int_equal(kv_bitmap_count(src, n), 0);
	assert_int_equal(kv_bitmap_count(dst, n), 4);
	assert_true(kv_bitmap_test(dst, 128));
	assert_true(kv_bitmap_test(dst, 100));
	/* Draining an empty source changes nothing. */
	assert_int_equal(kv_bitmap_drain_into(dst, src, n), 0);
	assert_int_equal(kv_bitmap_count(dst, n), 4);
	kv_bitmap_free(dst);
	kv_bitmap_free(src);
}

/* ---- zero detection ---- */

static void test_zero_sizes(void **state)
{
	static unsigned char buf[8192 + 64];

	memset(buf, 0, sizeof(buf));
	for (size_t len = 0; len <= 300; len++)
		for (size_t off = 0; off < 4; off++)
			assert_true(kv_buffer_is_zero(buf + off, len));
	assert_true(kv_buffer_is_zero(buf, 4096));
	assert_true(kv_buffer_is_zero(buf + 1, 4096));
	assert_true(kv_buffer_is_zero(buf, 8192));
	assert_true(kv_buffer_is_zero(buf + 3, 8191));
}

static void test_zero_single_byte_anywhere(void **state)
{
	static unsigned char page[4096 + 1] __attribute__((aligned(64)));

	memset(page, 0, sizeof(page));
	for (size_t i = 0; i < 4096; i++) {
		page[i] = (unsigned char)(1u << (i % 8));
		if (kv_buffer_is_zero(page, 4096))
			fail_msg("non-zero byte at %zu missed", i);
		/* Unaligned view of the same memory, byte still inside. */
		if (i >= 1 && kv_buffer_is_zero(page + 1, 4096))
			fail_msg("non-zero byte at %zu missed (unaligned)", i);
		page[i] = 0;
	}
	/* A byte just past len must not count. */
	page[4096] = 0xff;
	assert_true(kv_buffer_is_zero(page, 4096));
	for (size_t len = 1; len <= 300; len++) {
		memset(page, 0, sizeof(page));
		page[len - 1] = 0x80;
		if (kv_buffer_is_zero(page, len))
			fail_msg("last byte of %zu-byte buffer missed", len);
		assert_true(kv_buffer_is_zero(page, len - 1));
	}
}

/* ---- the error object ---- */

static void test_error_first_wins(void **state)
{
	struct kv_error err = {0};

	assert_false(kv_error_is_set(&err));
	assert_int_equal(kv_error_set(&err, -EINVAL, "bad %s %d", "thing", 7),
			 -EINVAL);
	assert_true(kv_error_is_set(&err));
	assert_int_equal(kv_error_set(&err, -EIO, "later"), -EIO);
	assert_int_equal(err.code, -EINVAL);
	assert_string_equal(err.msg, "bad thing 7");
	/* A NULL error is allowed and the code still comes back. */
	assert_int_equal(kv_error_set(NULL, -ENOENT, "x"), -ENOENT);
	kv_error_clear(&err);
	assert_false(kv_error_is_set(&err));
	assert_string_equal(err.msg, "");
	/* A positive code is stored negative. */
	kv_error_set(&err, EPERM, "positive");
	assert_int_equal(err.code, -EPERM);
}

static void test_error_errno_and_prefix(void **state)
{
	struct kv_error err = {0};
	struct kv_error copy = {0};
	char expect[KV_ERROR_MSG_MAX];

	kv_error_set_errno(&err, -ECONNREFUSED, "tcp:%s:%d", "127.0.0.1", 4444);
	snprintf(expect, sizeof(expect), "tcp:127.0.0.1:4444: %s",
		 strerror(ECONNREFUSED));
	assert_string_equal(err.msg, expect);
	assert_int_equal(err.code, -ECONNREFUSED);
	kv_error_set_errno(&err, -EIO, "ignored");
	assert_string_equal(err.msg, expect);

	kv_error_prefix(&err, "section '%s'", "ram");
	assert_true(
	    strncmp(err.msg, "section 'ram': tcp:127.0.0.1:4444: ", 35) == 0);
	kv_error_propagate(&copy, &err);
	assert_int_equal(copy.code, -ECONNREFUSED);
	assert_string_equal(copy.msg, err.msg);

	/* Prefix on an unset error does nothing. */
	kv_error_clear(&err);
	kv_error_prefix(&err, "ctx");
	assert_false(kv_error_is_set(&err));
	/* Propagation keeps the destination's first error. */
	kv_error_set(&err, -EINVAL, "other");
	kv_error_propagate(&copy, &err);
	assert_int_equal(copy.code, -ECONNREFUSED);
}

static void test_error_prefix_truncates(void **state)
{
	struct kv_error err = {0};
	char long_msg[KV_ERROR_MSG_MAX];

	memset(long_msg, 'm', sizeof(long_msg) - 1);
	long_msg[sizeof(long_msg) - 1] = '\0';
	kv_error_set(&err, -EIO, "%s", long_msg);
	assert_int_equal(strlen(err.msg), KV_ERROR_MSG_MAX - 1);
	kv_error_prefix(&err, "ctx");
	assert_int_equal(strlen(err.msg), KV_ERROR_MSG_MAX - 1);
	assert_true(strncmp(err.msg, "ctx: mmm", 8) == 0);
}

/* ---- the rate limiter ---- */

static void test_rate_unlimited_never_waits(void **state)
{
	struct kv_rate_limit rl;
	int64_t before = kv_now_ns();

	(void)state;
	kv_rate_limit_init(&rl, 0);
	assert_true(kv_rate_limit_charge(&rl, 1ULL << 40) <= kv_now_ns());
	assert_true(kv_rate_limit_charge(&rl, 1ULL << 40) >= before);
	assert_true(kv_rate_limit_chunk(&rl) == UINT64_MAX);
	kv_rate_limit_destroy(&rl);
}

/* Back-to-back charges are scheduled one after the other: 5 x 1 MB at
 * 10 MB/s may finish 500 ms after the schedule started, whatever the
 * clock did meanwhile (no sleeping here, so no timing is asserted). */
static void test_rate_charges_add_up(void **state)
{
	struct kv_rate_limit rl;
	int64_t due = 0;

	(void)state;
	kv_rate_limit_init(&rl, 10000000);
	assert_int_equal(kv_rate_limit_chunk(&rl), 1000000);
	for (int i = 0; i < 5; i++)
		due = kv_rate_limit_charge(&rl, 1000000);
	assert_true(llabs(due - rl.start_ns - 500000000LL) < 1000);
	kv_rate_limit_destroy(&rl);
}

/* A sender idle for longer than a window gets no credit for it: the
 * schedule starts again at the next charge. */
static void test_rate_idle_gives_no_credit(void **state)
{
	struct kv_rate_limit rl;
	int64_t now, due;

	(void)state;
	kv_rate_limit_init(&rl, 1000000);
	rl.start_ns = kv_now_ns() - 10 * KV_RATE_WINDOW_NS;
	rl.charged = 1000; /* 1 ms of the old schedule, long past */
	now = kv_now_ns();
	due = kv_rate_limit_charge(&rl, 500000); /* 0.5 s at 1 MB/s */
	assert_true(rl.start_ns >= now);
	assert_true(due >= now + 500000000LL - 1000);
	kv_rate_limit_destroy(&rl);
}

/* A limit changed during a migration (migrate-set-parameters) applies
 * from the next charge on. */
static void test_rate_new_limit_applies_to_next_charge(void **state)
{
	struct kv_rate_limit rl;
	int64_t due;

	(void)state;
	kv_rate_limit_init(&rl, 1000000);
	kv_rate_limit_set(&rl, 2000000);
	assert_int_equal(kv_rate_limit_get(&rl), 2000000);
	due = kv_rate_limit_charge(&rl, 1000000);
	assert_true(llabs(due - rl.start_ns - 500000000LL) < 1000);
	/* Lowering it does not re-price what was charged at the old rate
	 * (10 s of stall for 1 MB at 100 kB/s): the next bytes are
	 * scheduled from now. */
	kv_rate_limit_set(&rl, 100000);
	due = kv_rate_limit_charge(&rl, 10000);
	assert_true(llabs(due - rl.start_ns - 100000000LL) < 1000);
	assert_true(due < kv_now_ns() + 200000000LL);
	kv_rate_limit_destroy(&rl);
}

static bool cancel_second_time(void *opaque)
{
	int *calls = opaque;

	return ++*calls >= 2;
}

static void test_rate_wait_stops_on_cancel(void **state)
{
	int calls = 0;
	bool cancelled = false;
	uint64_t slept;

	(void)state;
	slept = kv_rate_limit_wait(kv_now_ns() + 60LL * 1000000000,
				   cancel_second_time, &calls, &cancelled);
	assert_true(cancelled);
	assert_int_equal(calls, 2);
	assert_true(slept < 5ULL * 1000000000); /* one slice, not a minute */
	assert_true(slept > 0);
	slept = kv_rate_limit_wait(kv_now_ns() - 1, NULL, NULL, &cancelled);
	assert_false(cancelled);
	assert_int_equal(slept, 0);
}

struct charger {
	struct kv_rate_limit *rl;
	int n;
};

static void *charge_many(void *arg)
{
	struct charger *c = arg;

	for (int i = 0; i < c->n; i++)
		kv_rate_limit_charge(c->rl, 100);
	return NULL;
}

/* Several senders (multifd channels and the main stream) charge one
 * limiter: every byte counts once. */
static void test_rate_shared_by_threads(void **state)
{
	struct kv_rate_limit rl;
	struct charger c;
	pthread_t t[4];

	(void)state;
	kv_rate_limit_init(&rl, 1ULL << 40);
	c.rl = &rl;
	c.n = 10000;
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, charge_many, &c), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(rl.charged, 4ULL * 10000 * 100);
	kv_rate_limit_destroy(&rl);
}

/* ---- thread roles ---- */

struct role_result {
	int bg_ret, bg_nice, urgent_ret, urgent_nice;
};

static int own_nice(void)
{
	errno = 0;
	return getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
}

static void *take_roles(void *opaque)
{
	struct role_result *r = opaque;

	r->bg_ret = kv_thread_set_role(KV_THREAD_BACKGROUND);
	r->bg_nice = own_nice();
	r->urgent_ret = kv_thread_set_role(KV_THREAD_URGENT);
	r->urgent_nice = own_nice();
	return NULL;
}

/* A role changes the calling thread's nice value and no other thread's;
 * urgent (below 0) may be refused, and then nothing changed. */
static void test_thread_role_is_per_thread(void **state)
{
	struct role_result r = {0};
	int before = own_nice();
	pthread_t t;

	(void)state;
	assert_int_equal(pthread_create(&t, NULL, take_roles, &r), 0);
	pthread_join(t, NULL);
	assert_int_equal(r.bg_ret, 0);
	assert_int_equal(r.bg_nice, kv_thread_role_nice(KV_THREAD_BACKGROUND));
	if (r.urgent_ret == 0)
		assert_int_equal(r.urgent_nice,
				 kv_thread_role_nice(KV_THREAD_URGENT));
	else
		assert_int_equal(r.urgent_nice, r.bg_nice);
	assert_true(kv_thread_role_nice(KV_THREAD_URGENT) < 0);
	assert_true(kv_thread_role_nice(KV_THREAD_BACKGROUND) > 0);
	assert_int_equal(own_nice(), before);
	assert_int_equal(kv_thread_set_role(KV_THREAD_ROLES), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bitmap_set_all_count),
	    cmocka_unit_test(test_bitmap_find_next),
	    cmocka_unit_test(test_bitmap_claim),
	    cmocka_unit_test(test_bitmap_two_claimers),
	    cmocka_unit_test(test_bitmap_or_and_drain),
	    cmocka_unit_test(test_zero_sizes),
	    cmocka_unit_test(test_zero_single_byte_anywhere),
	    cmocka_unit_test(test_error_first_wins),
	    cmocka_unit_test(test_error_errno_and_prefix),
	    cmocka_unit_test(test_error_prefix_truncates),
	    cmocka_unit_test(test_rate_unlimited_never_waits),
	    cmocka_unit_test(test_rate_charges_add_up),
	    cmocka_unit_test(test_rate_idle_gives_no_credit),
	    cmocka_unit_test(test_rate_new_limit_applies_to_next_charge),
	    cmocka_unit_test(test_rate_wait_stops_on_cancel),
	    cmocka_unit_test(test_rate_shared_by_threads),
	    cmocka_unit_test(test_thread_role_is_per_thread),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
