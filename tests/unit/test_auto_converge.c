/* SPDX-License-Identifier: MIT */
/* The auto-converge policy: QEMU's trigger, steps, cap and tailslow. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "base/units.h"
#include "migration/auto_converge.h"

#define SEC 1000000000LL

/* A period that dirtied more than half of what was sent (default 50 %). */
#define HIGH_DIRTY (64 * KV_MiB)
#define HIGH_SENT  (32 * KV_MiB)
#define LOW_DIRTY  (8 * KV_MiB)
#define LOW_SENT   (32 * KV_MiB)

static void init_default(struct kv_autoconv *ac)
{
	struct kv_autoconv_params p;

	kv_autoconv_params_default(&p);
	kv_autoconv_init(ac, &p);
}

static unsigned high(struct kv_autoconv *ac)
{
	return kv_autoconv_after_sync(ac, HIGH_DIRTY, HIGH_SENT);
}

static unsigned low(struct kv_autoconv *ac)
{
	return kv_autoconv_after_sync(ac, LOW_DIRTY, LOW_SENT);
}

static void test_defaults_are_qemus(void **state)
{
	struct kv_autoconv_params p;
	struct kv_error err = {0};

	(void)state;
	memset(&p, 0xff, sizeof(p));
	kv_autoconv_params_default(&p);
	assert_int_equal(p.initial, 20);
	assert_int_equal(p.increment, 10);
	assert_int_equal(p.max, 99);
	assert_int_equal(p.trigger_threshold, 50);
	assert_false(p.tailslow);
	assert_int_equal(kv_autoconv_params_check(&p, &err), 0);
	assert_false(kv_error_is_set(&err));
}

struct range_case {
	const char *name;
	size_t off;
	unsigned lo, hi;
};

static void test_params_ranges(void **state)
{
	static const struct range_case cases[] = {
	    {"cpu-throttle-initial",
	     offsetof(struct kv_autoconv_params, initial), 1, 99},
	    {"cpu-throttle-increment",
	     offsetof(struct kv_autoconv_params, increment), 1, 100},
	    {"max-cpu-throttle", offsetof(struct kv_autoconv_params, max), 1,
	     99},
	    {"throttle-trigger-threshold",
	     offsetof(struct kv_autoconv_params, trigger_threshold), 1, 100},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct range_case *c = &cases[i];
		unsigned bad[] = {c->lo - 1, c->hi + 1, 1000};
		unsigned good[] = {c->lo, c->hi};
		struct kv_autoconv_params p;
		struct kv_error err;
		char range[32];

		snprintf(range, sizeof(range), "%u to %u", c->lo, c->hi);
		for (size_t j = 0; j < 2; j++) {
			kv_autoconv_params_default(&p);
			*(unsigned *)((char *)&p + c->off) = good[j];
			kv_error_clear(&err);
			assert_int_equal(kv_autoconv_params_check(&p, &err), 0);
		}
		for (size_t j = 0; j < 3; j++) {
			kv_autoconv_params_default(&p);
			*(unsigned *)((char *)&p + c->off) = bad[j];
			kv_error_clear(&err);
			assert_int_equal(kv_autoconv_params_check(&p, &err),
					 -EINVAL);
			assert_non_null(strstr(err.msg, c->name));
			assert_non_null(strstr(err.msg, range));
		}
	}
}

static void test_low_periods_never_throttle(void **state)
{
	struct kv_autoconv ac;

	(void)state;
	init_default(&ac);
	for (int i = 0; i < 20; i++)
		assert_int_equal(low(&ac), 0);
	assert_int_equal(kv_autoconv_pct(&ac), 0);
	assert_int_equal(ac.steps, 0);
}

static void test_second_high_period_starts_at_initial(void **state)
{
	struct kv_autoconv ac;

	(void)state;
	init_default(&ac);
	assert_int_equal(high(&ac), 0);
	assert_int_equal(high(&ac), 20);
	assert_int_equal(ac.steps, 1);
	/* The count starts over after a step: one more high period is not
	 * enough, two are. */
	assert_int_equal(high(&ac), 20);
	assert_int_equal(high(&ac), 30);
	assert_int_equal(ac.steps, 2);
}

/* QEMU counts high periods; a low one in between does not reset it. */
static void test_low_period_does_not_reset_count(void **state)
{
	struct kv_autoconv ac;

	(void)state;
	init_default(&ac);
	assert_int_equal(high(&ac), 0);
	assert_int_equal(low(&ac), 0);
	assert_int_equal(low(&ac), 0);
	assert_int_equal(high(&ac), 20);
	/* A low period keeps the throttle where it is (never lowers it). */
	assert_int_equal(low(&ac), 20);
}

static void test_threshold_boundary(void **state)
{
	struct kv_autoconv_params p;
	struct kv_autoconv ac;

	(void)state;
	init_default(&ac);
	/* Exactly 50 % of what was sent is not above the threshold. */
	for (int i = 0; i < 4; i++)
		assert_int_equal(kv_autoconv_after_sync(&ac, 500, 1000), 0);
	assert_int_equal(kv_autoconv_after_sync(&ac, 501, 1000), 0);
	assert_int_equal(kv_autoconv_after_sync(&ac, 501, 1000), 20);

	/* threshold 100: dirtying as much as was sent is still fine. */
	kv_autoconv_params_default(&p);
	p.trigger_threshold = 100;
	kv_autoconv_init(&ac, &p);
	for (int i = 0; i < 4; i++)
		assert_int_equal(kv_autoconv_after_sync(&ac, 1000, 1000), 0);
	assert_int_equal(kv_autoconv_after_sync(&ac, 1001, 1000), 0);
	assert_int_equal(kv_autoconv_after_sync(&ac, 1001, 1000), 20);

	/* threshold 1: 2 % dirty is already too much. */
	p.trigger_threshold = 1;
	kv_autoconv_init(&ac, &p);
	assert_int_equal(kv_autoconv_after_sync(&ac, 10, 1000), 0);
	assert_int_equal(kv_autoconv_after_sync(&ac, 10, 1000), 0);
	assert_int_equal(kv_autoconv_after_sync(&ac, 20, 1000), 0);
	assert_int_equal(kv_autoconv_after_sync(&ac, 20, 1000), 20);
}

/* Nothing sent while pages were dirtied: as high as it gets. */
static void test_nothing_sent_is_high(void **state)
{
	struct kv_autoconv ac;

	(void)state;
	init_default(&ac);
	assert_int_equal(kv_autoconv_after_sync(&ac, 4096, 0), 0);
	assert_int_equal(kv_autoconv_after_sync(&ac, 4096, 0), 20);
	/* Nothing dirtied and nothing sent is not high. */
	assert_int_equal(kv_autoconv_after_sync(&ac, 0, 0), 20);
	assert_int_equal(kv_autoconv_after_sync(&ac, 0, 0), 20);
}

static void test_increments_up_to_default_max(void **state)
{
	static const unsigned expect[] = {20, 30, 40, 50, 60, 70,
					  80, 90, 99, 99, 99};
	struct kv_autoconv ac;

	(void)state;
	init_default(&ac);
	for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
		assert_int_equal(high(&ac), i ? expect[i - 1] : 0);
		assert_int_equal(high(&ac), expect[i]);
	}
}

static void test_custom_steps_and_cap(void **state)
{
	struct kv_autoconv_params p;
	struct kv_autoconv ac;

	(void)state;
	kv_autoconv_params_default(&p);
	p.initial = 5;
	p.increment = 30;
	p.max = 50;
	kv_autoconv_init(&ac, &p);
	high(&ac);
	assert_int_equal(high(&ac), 5);
	high(&ac);
	assert_int_equal(high(&ac), 35);
	high(&ac);
	assert_int_equal(high(&ac), 50);
	high(&ac);
	assert_int_equal(high(&ac), 50);

	/* An increment of 100 jumps straight to the cap. */
	p.initial = 10;
	p.increment = 100;
	p.max = 99;
	kv_autoconv_init(&ac, &p);
	high(&ac);
	assert_int_equal(high(&ac), 10);
	high(&ac);
	assert_int_equal(high(&ac), 99);

	/* The first step is capped too. */
	p.initial = 60;
	p.max = 40;
	kv_autoconv_init(&ac, &p);
	high(&ac);
	assert_int_equal(high(&ac), 40);
}

static void test_params_change_mid_migration(void **state)
{
	struct kv_autoconv_params p;
	struct kv_autoconv ac;

	(void)state;
	init_default(&ac);
	high(&ac);
	assert_int_equal(high(&ac), 20);
	high(&ac);
	kv_autoconv_params_default(&p);
	p.increment = 25;
	kv_autoconv_set_params(&ac, &p);
	/* The count of high periods survives the change. */
	assert_int_equal(high(&ac), 45);
	/* Lowering the maximum below the current throttle brings it down at
	 * the next step. */
	p.max = 30;
	kv_autoconv_set_params(&ac, &p);
	high(&ac);
	assert_int_equal(high(&ac), 30);
}

/*
 * Tailslow at 20 % (the guest runs 80 %): dirtying 64 MiB when 48 MiB
 * are allowed means 80 * 48/64 = 60 % would meet the threshold, an
 * increment of 20, capped at 10. Dirtying only a little too much gives a
 * small step.
 */
static void test_tailslow(void **state)
{
	struct kv_autoconv_params p;
	struct kv_autoconv ac;
	uint64_t sent = 96 * KV_MiB; /* 48 MiB allowed at 50 % */

	(void)state;
	kv_autoconv_params_default(&p);
	p.tailslow = true;
	kv_autoconv_init(&ac, &p);
	/* The first step is cpu-throttle-initial, tailslow or not. */
	kv_autoconv_after_sync(&ac, 64 * KV_MiB, sent);
	assert_int_equal(kv_autoconv_after_sync(&ac, 64 * KV_MiB, sent), 20);
	/* Far above the threshold: the full increment. */
	kv_autoconv_after_sync(&ac, 64 * KV_MiB, sent);
	assert_int_equal(kv_autoconv_after_sync(&ac, 64 * KV_MiB, sent), 30);
	/* At 30 % (70 % CPU): 70 * 48/50.39 = 66.68 -> 66, a step of 4. */
	kv_autoconv_after_sync(&ac, 50 * KV_MiB + 400 * 1024, sent);
	assert_int_equal(
	    kv_autoconv_after_sync(&ac, 50 * KV_MiB + 400 * 1024, sent), 34);
	/* Barely above: 66 * 48/48.001 = 65.998 -> 65, a step of 1. */
	kv_autoconv_after_sync(&ac, 48 * KV_MiB + 1024, sent);
	assert_int_equal(kv_autoconv_after_sync(&ac, 48 * KV_MiB + 1024, sent),
			 35);
	/* Nothing sent: nothing allowed, the ideal share is 0 and the
	 * increment caps the step. */
	kv_autoconv_after_sync(&ac, 4096, 0);
	assert_int_equal(kv_autoconv_after_sync(&ac, 4096, 0), 45);

	/* Without tailslow the same small excess takes the full step. */
	p.tailslow = false;
	kv_autoconv_set_params(&ac, &p);
	kv_autoconv_after_sync(&ac, 48 * KV_MiB + 1024, sent);
	assert_int_equal(kv_autoconv_after_sync(&ac, 48 * KV_MiB + 1024, sent),
			 55);
}

/* Near the top, tailslow still respects max-cpu-throttle. */
static void test_tailslow_cap(void **state)
{
	struct kv_autoconv_params p;
	struct kv_autoconv ac;

	(void)state;
	kv_autoconv_params_default(&p);
	p.tailslow = true;
	p.initial = 95;
	p.max = 97;
	kv_autoconv_init(&ac, &p);
	high(&ac);
	assert_int_equal(high(&ac), 95);
	for (int i = 0; i < 4; i++) {
		high(&ac);
		assert_true(high(&ac) <= 97);
	}
	assert_int_equal(kv_autoconv_pct(&ac), 97);
}

/* Syncs closer together than a second add up into one period. */
static void test_note_sync_periods(void **state)
{
	struct kv_autoconv ac;
	int64_t t = 5 * SEC;

	(void)state;
	init_default(&ac);
	/* The setup sync (all RAM dirty) only starts the period. */
	assert_int_equal(kv_autoconv_note_sync(&ac, t, 1024 * KV_MiB, 0), 0);
	assert_int_equal(ac.high_count, 0);
	/* Ten syncs 100 ms apart: high each, but one period. */
	for (int i = 1; i <= 9; i++)
		assert_int_equal(kv_autoconv_note_sync(&ac, t + i * SEC / 10,
						       HIGH_DIRTY, HIGH_SENT),
				 0);
	assert_int_equal(ac.high_count, 0);
	assert_int_equal(
	    kv_autoconv_note_sync(&ac, t + SEC, HIGH_DIRTY, HIGH_SENT), 0);
	assert_int_equal(ac.high_count, 1);
	/* A second period is decided on its sums: its first sync alone
	 * would be high, but the second sent enough to make the sum low. */
	assert_int_equal(
	    kv_autoconv_note_sync(&ac, t + SEC + SEC / 2, 20 * KV_MiB, 8 * KV_MiB),
	    0);
	assert_int_equal(kv_autoconv_note_sync(&ac, t + 2 * SEC, 0, 64 * KV_MiB),
			 0);
	assert_int_equal(ac.high_count, 1);
	/* A third, high period: the second high one, the first step. */
	assert_int_equal(
	    kv_autoconv_note_sync(&ac, t + 3 * SEC, HIGH_DIRTY, HIGH_SENT), 20);
	/* Low sums do not count. */
	assert_int_equal(
	    kv_autoconv_note_sync(&ac, t + 4 * SEC, LOW_DIRTY, LOW_SENT), 20);
	assert_int_equal(ac.high_count, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults_are_qemus),
	    cmocka_unit_test(test_params_ranges),
	    cmocka_unit_test(test_low_periods_never_throttle),
	    cmocka_unit_test(test_second_high_period_starts_at_initial),
	    cmocka_unit_test(test_low_period_does_not_reset_count),
	    cmocka_unit_test(test_threshold_boundary),
	    cmocka_unit_test(test_nothing_sent_is_high),
	    cmocka_unit_test(test_increments_up_to_default_max),
	    cmocka_unit_test(test_custom_steps_and_cap),
	    cmocka_unit_test(test_params_change_mid_migration),
	    cmocka_unit_test(test_tailslow),
	    cmocka_unit_test(test_tailslow_cap),
	    cmocka_unit_test(test_note_sync_periods),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
