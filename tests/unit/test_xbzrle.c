/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the XBZRLE encoder and decoder (src/migration/ram/xbzrle.c):
 * QEMU's documented example byte for byte, round trips over zero, random,
 * mixed and adversarial pages with every encoder implementation, the
 * overflow rule, one rejection per decoder check (with its message), and a
 * speed figure (printed, never asserted against a tight bound).
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
#include <time.h>

#include <cmocka.h>

#include "base/error.h"
#include "migration/ram/xbzrle.h"

#define PAGE 4096U
/* Room for any delta of a 4 KiB page (worst case: 2 + 2 + 4096). */
#define DST_MAX (PAGE + 16)

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64*: deterministic, good enough for test data. */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t s = seed | 1;

	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(rng_next(&s) >> 56);
}

/* Encode old->new with impl, check the result against every other
 * implementation, decode it onto a copy of old and compare with new.
 * Returns the encoded length (0 for equal pages). */
static int round_trip_impl(enum kv_xbzrle_impl impl, const uint8_t *old,
			   const uint8_t *new, size_t page)
{
	static uint8_t dst[KV_XBZRLE_PAGE_MAX + 16], ref[sizeof(dst)];
	static uint8_t work[KV_XBZRLE_PAGE_MAX];
	struct kv_error err = {0};
	int n, r;

	n = kv_xbzrle_encode_impl(impl, old, new, page, dst, sizeof(dst));
	if (n == -2)
		return -2; /* not on this CPU */
	assert_true(n >= 0);
	r = kv_xbzrle_encode_impl(KV_XBZRLE_IMPL_SCALAR, old, new, page, ref,
				  sizeof(ref));
	assert_int_equal(r, n);
	assert_memory_equal(dst, ref, (size_t)n);
	memcpy(work, old, page);
	if (n == 0) {
		assert_memory_equal(old, new, page);
		return 0;
	}
	if (kv_xbzrle_decode(dst, (size_t)n, work, page, &err) != 0)
		fail_msg("decode of a fresh encoding failed: %s", err.msg);
	assert_memory_equal(work, new, page);
	return n;
}

static int round_trip(const uint8_t *old, const uint8_t *new, size_t page)
{
	int n = round_trip_impl(KV_XBZRLE_IMPL_AUTO, old, new, page);

	for (int i = KV_XBZRLE_IMPL_SCALAR; i < KV_XBZRLE_IMPL_COUNT; i++) {
		int m = round_trip_impl((enum kv_xbzrle_impl)i, old, new, page);

		if (m != -2)
			assert_int_equal(m, n);
	}
	return n;
}

struct pages {
	uint8_t old[PAGE];
	uint8_t new[PAGE];
};

static struct pages *pages_new(void)
{
	struct pages *p = calloc(1, sizeof(*p));

	assert_non_null(p);
	return p;
}

/* ---- the format, byte for byte ---- */

static void test_qemu_doc_example(void **state)
{
	/* docs/xbzrle.txt: 1001 zero bytes, 21 bytes of which some change,
	 * 3074 zero bytes. */
	static const uint8_t old_run[21] = {
	    0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
	    0x10, 0x11, 0x12, 0x13, 0x68, 0x00, 0x00, 0x6b, 0x00, 0x6d};
	static const uint8_t new_run[21] = {
	    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
	    0x0c, 0x0d, 0x0e, 0x0f, 0x68, 0x00, 0x00, 0x67, 0x00, 0x69};
	static const uint8_t expect[24] = {0xe9, 0x07, 0x0f, 0x01, 0x02, 0x03,
					   0x04, 0x05, 0x06, 0x07, 0x08, 0x09,
					   0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
					   0x03, 0x01, 0x67, 0x01, 0x01, 0x69};
	struct pages *p = pages_new();
	uint8_t dst[DST_MAX];
	int n;

	memcpy(p->old + 1001, old_run, sizeof(old_run));
	memcpy(p->new + 1001, new_run, sizeof(new_run));
	n = kv_xbzrle_encode(p->old, p->new, PAGE, dst, sizeof(dst));
	assert_int_equal(n, 24);
	assert_memory_equal(dst, expect, sizeof(expect));
	assert_int_equal(round_trip(p->old, p->new, PAGE), 24);
	free(p);
}

static void test_equal_pages_encode_to_nothing(void **state)
{
	struct pages *p = pages_new();
	uint8_t dst[DST_MAX];

	assert_int_equal(kv_xbzrle_encode(p->old, p->new, PAGE, dst, 4), 0);
	fill_random(p->old, PAGE, 7);
	memcpy(p->new, p->old, PAGE);
	assert_int_equal(round_trip(p->old, p->new, PAGE), 0);
	/* Even with no room at all: nothing to write. */
	assert_int_equal(kv_xbzrle_encode(p->old, p->new, PAGE, dst, 0), 0);
	free(p);
}

/* ---- round trips ---- */

static void test_round_trip_zero_to_random(void **state)
{
	struct pages *p = pages_new();
	uint8_t dst[DST_MAX];
	int n;

	fill_random(p->new, PAGE, 11);
	/* A random page differs from zero almost everywhere. */
	n = round_trip(p->old, p->new, PAGE);
	assert_true(n > (int)PAGE - 64);
	/* and back: random -> zero */
	round_trip(p->new, p->old, PAGE);
	/* Two random pages. */
	fill_random(p->old, PAGE, 12);
	round_trip(p->old, p->new, PAGE);
	/* Does not fit in a page: -1 under "smaller than a page". */
	assert_int_equal(kv_xbzrle_encode(p->old, p->new, PAGE, dst, PAGE - 1),
			 -1);
	free(p);
}

static void test_round_trip_mixed(void **state)
{
	struct pages *p = pages_new();
	uint64_t s = 99;

	for (int iter = 0; iter < 300; iter++) {
		int changes = (int)(rng_next(&s) % 40);

		fill_random(p->old, PAGE, 1000 + (uint64_t)iter);
		memcpy(p->new, p->old, PAGE);
		/* Runs of random length at random places, some touching
		 * the page ends. */
		for (int c = 0; c < changes; c++) {
			size_t at = rng_next(&s) % PAGE;
			size_t len = 1 + rng_next(&s) % (c % 5 ? 16 : 300);

			if (iter % 7 == 0 && c == 0)
				at = 0;
			if (iter % 11 == 0 && c == 1)
				at = PAGE - 1;
			if (at + len > PAGE)
				len = PAGE - at;
			for (size_t k = at; k < at + len; k++)
				p->new[k] = (uint8_t)~p->old[k];
		}
		round_trip(p->old, p->new, PAGE);
	}
	free(p);
}

static void test_round_trip_every_byte_changed(void **state)
{
	struct pages *p = pages_new();
	uint8_t dst[DST_MAX];

	fill_random(p->old, PAGE, 5);
	for (size_t i = 0; i < PAGE; i++)
		p->new[i] = (uint8_t)(p->old[i] + 1);
	/* One pair: zrun 0, nzrun 4096 (0x80 0x20), the page. */
	assert_int_equal(round_trip(p->old, p->new, PAGE), 3 + PAGE);
	assert_int_equal(kv_xbzrle_encode(p->old, p->new, PAGE, dst, DST_MAX),
			 3 + PAGE);
	assert_int_equal(dst[0], 0x00);
	assert_int_equal(dst[1], 0x80);
	assert_int_equal(dst[2], 0x20);
	assert_memory_equal(dst + 3, p->new, PAGE);
	/* Too little room, found before the scan reaches the page end. */
	for (int i = KV_XBZRLE_IMPL_SCALAR; i < KV_XBZRLE_IMPL_COUNT; i++) {
		int r = kv_xbzrle_encode_impl((enum kv_xbzrle_impl)i, p->old,
					      p->new, PAGE, dst, 100);

		assert_true(r == -1 || r == -2);
	}
	assert_int_equal(kv_xbzrle_encode(p->old, p->new, PAGE, dst, 2 + PAGE),
			 -1);
	free(p);
}

static void test_round_trip_alternating_bytes(void **state)
{
	struct pages *p = pages_new();
	uint8_t dst[DST_MAX];

	/* Odd bytes change: a first pair (1, 1, byte) then (1, 1, byte) per
	 * two bytes: 3 bytes per 2 page bytes, more than a page. */
	for (size_t i = 1; i < PAGE; i += 2)
		p->new[i] = 0xaa;
	assert_int_equal(kv_xbzrle_encode(p->old, p->new, PAGE, dst, PAGE), -1);
	{
		static uint8_t big[2 * PAGE];
		int n =
		    kv_xbzrle_encode(p->old, p->new, PAGE, big, sizeof(big));

		assert_int_equal(n, PAGE / 2 * 3);
	}
	/* Even bytes: the first zero run is empty. */
	memset(p->new, 0, PAGE);
	for (size_t i = 0; i < PAGE; i += 2)
		p->new[i] = 0x55;
	{
		static uint8_t big[2 * PAGE];
		int n =
		    kv_xbzrle_encode(p->old, p->new, PAGE, big, sizeof(big));

		/* 2048 pairs of 3 bytes; the last byte is unchanged, not
		 * sent. */
		assert_int_equal(n, PAGE / 2 * 3);
		assert_int_equal(big[0], 0);
		assert_int_equal(big[1], 1);
		assert_int_equal(big[2], 0x55);
		assert_int_equal(big[3], 1);
	}
	free(p);
}

static void test_round_trip_edges(void **state)
{
	struct pages *p = pages_new();
	uint8_t dst[DST_MAX];
	int n;

	fill_random(p->old, PAGE, 3);
	memcpy(p->new, p->old, PAGE);
	p->new[0] ^= 0xff;
	n = kv_xbzrle_encode(p->old, p->new, PAGE, dst, DST_MAX);
	assert_int_equal(n, 3);
	assert_int_equal(dst[0], 0);
	assert_int_equal(dst[1], 1);
	assert_int_equal(dst[2], p->new[0]);
	round_trip(p->old, p->new, PAGE);

	memcpy(p->new, p->old, PAGE);
	p->new[PAGE - 1] ^= 0x01;
	n = kv_xbzrle_encode(p->old, p->new, PAGE, dst, DST_MAX);
	/* zrun 4095 = 0xff 0x1f, nzrun 1, the byte. */
	assert_int_equal(n, 4);
	assert_int_equal(dst[0], 0xff);
	assert_int_equal(dst[1], 0x1f);
	assert_int_equal(dst[2], 1);
	round_trip(p->old, p->new, PAGE);

	p->new[0] ^= 0xff; /* both ends */
	assert_int_equal(round_trip(p->old, p->new, PAGE), 3 + 4);
	free(p);
}

/* Runs whose lengths sit on the ULEB128 boundaries: 127 (1 byte), 128 (2
 * bytes), and 16383 / 16384 on a page big enough for them. */
static void test_round_trip_uleb_boundaries(void **state)
{
	static const size_t lens[] = {1, 126, 127, 128, 129, 255, 256, 4095};
	static uint8_t old[KV_XBZRLE_PAGE_MAX], new[KV_XBZRLE_PAGE_MAX];
	static uint8_t dst[KV_XBZRLE_PAGE_MAX + 16];
	int n;

	for (size_t a = 0; a < sizeof(lens) / sizeof(lens[0]); a++) {
		for (size_t b = 0; b < sizeof(lens) / sizeof(lens[0]); b++) {
			size_t z = lens[a], nz = lens[b];

			if (z + nz > PAGE)
				continue;
			memset(old, 0, PAGE);
			memset(new, 0, PAGE);
			memset(new + z, 0x5a, nz);
			n = round_trip(old, new, PAGE);
			assert_int_equal(n, (int)((z < 128 ? 1 : 2) +
						  (nz < 128 ? 1 : 2) + nz));
		}
	}

	/* The largest page: a zero run of 16382 then 1 byte, and one
	 * non-zero run of 16383 (0xff 0x7f). */
	memset(old, 0, sizeof(old));
	memset(new, 0, sizeof(new));
	new[KV_XBZRLE_PAGE_MAX - 1] = 1;
	n = round_trip(old, new, KV_XBZRLE_PAGE_MAX);
	assert_int_equal(n, 2 + 1 + 1);
	memset(new, 0x77, sizeof(new));
	n = kv_xbzrle_encode(old, new, KV_XBZRLE_PAGE_MAX, dst, sizeof(dst));
	assert_int_equal(n, 1 + 2 + (int)KV_XBZRLE_PAGE_MAX);
	assert_int_equal(dst[1], 0xff);
	assert_int_equal(dst[2], 0x7f);
	round_trip(old, new, KV_XBZRLE_PAGE_MAX);

	/* 16384 bytes would need a third ULEB byte: refused, sent raw. */
	{
		static uint8_t o2[KV_XBZRLE_PAGE_MAX + 1],
		    n2[KV_XBZRLE_PAGE_MAX + 1];

		memset(n2, 1, sizeof(n2));
		assert_int_equal(
		    kv_xbzrle_encode(o2, n2, sizeof(o2), dst, sizeof(dst)), -1);
	}
}

/* Every page length up to 200 and many offsets: the word and vector
 * paths' tails. */
static void test_round_trip_odd_sizes(void **state)
{
	static uint8_t old[300], new[300];
	uint64_t s = 4242;

	for (size_t page = 1; page <= 200; page++) {
		for (int iter = 0; iter < 20; iter++) {
			fill_random(old, page, s + page * 100 + (uint64_t)iter);
			memcpy(new, old, page);
			for (int c = 0; c < iter % 6; c++)
				new[rng_next(&s) % page] ^= 0x10;
			round_trip(old, new, page);
		}
	}
}

/* ---- overflow ---- */

static void test_encode_overflow_exact_bound(void **state)
{
	struct pages *p = pages_new();
	uint8_t dst[DST_MAX];
	int full;

	fill_random(p->old, PAGE, 21);
	memcpy(p->new, p->old, PAGE);
	for (size_t i = 100; i < PAGE; i += 300)
		memset(p->new + i, 0xee, 10);
	full = kv_xbzrle_encode(p->old, p->new, PAGE, dst, DST_MAX);
	assert_true(full > 0);
	/* Exactly enough room works; one byte less fails. */
	assert_int_equal(
	    kv_xbzrle_encode(p->old, p->new, PAGE, dst, (size_t)full), full);
	for (size_t max = 0; max < (size_t)full; max++)
		assert_int_equal(
		    kv_xbzrle_encode(p->old, p->new, PAGE, dst, max), -1);
	for (int i = KV_XBZRLE_IMPL_SCALAR; i < KV_XBZRLE_IMPL_COUNT; i++) {
		int r =
		    kv_xbzrle_encode_impl((enum kv_xbzrle_impl)i, p->old,
					  p->new, PAGE, dst, (size_t)full - 1);

		assert_true(r == -1 || r == -2);
	}
	free(p);
}

/* ---- decoder rejections: each check, its offset and its words ---- */

static void expect_reject(const uint8_t *delta, size_t len, const char *text)
{
	struct pages *p = pages_new();
	struct kv_error err = {0};
	int ret;

	fill_random(p->old, PAGE, 77);
	memcpy(p->new, p->old, PAGE);
	ret = kv_xbzrle_decode(delta, len, p->new, PAGE, &err);
	assert_int_equal(ret, -EINVAL);
	assert_int_equal(err.code, -EINVAL);
	if (!strstr(err.msg, text))
		fail_msg("error \"%s\" does not say \"%s\"", err.msg, text);
	/* A rejected delta leaves the page as it was. */
	assert_memory_equal(p->new, p->old, PAGE);
	free(p);
}

static void test_reject_empty(void **state)
{
	static const uint8_t d[1] = {0};

	expect_reject(d, 0, "XBZRLE delta is empty");
}

static void test_reject_truncated_uleb(void **state)
{
	/* zero-run length 0x85 announces a second byte, then nothing. */
	static const uint8_t d1[] = {0x85};
	/* a good pair, then a non-zero-run length cut short. */
	static const uint8_t d2[] = {0x02, 0x01, 0xaa, 0x03, 0x90};

	expect_reject(d1, sizeof(d1),
		      "offset 0: zero-run length truncated: byte 0x85");
	expect_reject(d2, sizeof(d2),
		      "offset 4: non-zero-run length truncated: byte 0x90");
}

static void test_reject_overlong_uleb(void **state)
{
	static const uint8_t d1[] = {0x81, 0x80, 0x01, 0x01, 0xaa};
	static const uint8_t d2[] = {0x05, 0xff, 0xff, 0x01};

	expect_reject(d1, sizeof(d1),
		      "offset 0: zero-run length overlong: ULEB128 0x81 0x80 "
		      "continues past 2 bytes");
	expect_reject(d2, sizeof(d2),
		      "offset 1: non-zero-run length overlong: ULEB128 0xff "
		      "0xff");
}

static void test_reject_run_past_page_end(void **state)
{
	/* zero run 4097 = 0x81 0x20. */
	static const uint8_t d1[] = {0x81, 0x20, 0x01, 0xaa};
	/* zero run 4095 (0xff 0x1f), then 2 new bytes: one too many. */
	static const uint8_t d2[] = {0xff, 0x1f, 0x02, 0xaa, 0xbb};
	/* a full page of zero run, then a non-zero run. */
	static const uint8_t d3[] = {0x80, 0x20, 0x01, 0xaa};

	expect_reject(d1, sizeof(d1),
		      "offset 0: zero run of 4097 bytes at page offset 0 goes "
		      "past the page end (4096)");
	expect_reject(d2, sizeof(d2),
		      "offset 2: non-zero run of 2 bytes at page offset 4095 "
		      "goes past the page end (4096)");
	expect_reject(d3, sizeof(d3),
		      "offset 2: non-zero run of 1 bytes at page offset 4096 "
		      "goes past the page end");
}

static void test_reject_data_past_input(void **state)
{
	static const uint8_t d[] = {0x10, 0x04, 0xaa, 0xbb};

	expect_reject(d, sizeof(d),
		      "offset 1: non-zero run of 4 bytes needs data past the "
		      "end of the delta (2 bytes left)");
}

static void test_reject_trailing_bytes(void **state)
{
	/* One pair covering the whole page: zrun 4095, nzrun 1; then junk. */
	static const uint8_t d1[] = {0xff, 0x1f, 0x01, 0xaa, 0x00, 0x00};
	/* A zero run with no non-zero run after it: the delta may not end
	 * on an unchanged tail. */
	static const uint8_t d2[] = {0x00, 0x01, 0xaa, 0x05};

	expect_reject(d1, sizeof(d1),
		      "offset 4: 2 trailing bytes after the runs that cover "
		      "the whole 4096-byte page");
	expect_reject(d2, sizeof(d2),
		      "offset 4: the delta ends after a zero run; a non-zero "
		      "run must follow");
}

static void test_reject_zero_length_runs(void **state)
{
	/* A zero-length zero run is fine first ... */
	static const uint8_t ok[] = {0x00, 0x01, 0xaa};
	/* ... but not later, */
	static const uint8_t d1[] = {0x00, 0x01, 0xaa, 0x00, 0x01, 0xbb};
	/* and a non-zero run is never empty. */
	static const uint8_t d2[] = {0x04, 0x00};
	/* not even spelled with two bytes */
	static const uint8_t d3[] = {0x04, 0x80, 0x00, 0x01};
	struct pages *p = pages_new();
	struct kv_error err = {0};

	assert_int_equal(kv_xbzrle_decode(ok, sizeof(ok), p->new, PAGE, &err),
			 0);
	assert_int_equal(p->new[0], 0xaa);
	expect_reject(d1, sizeof(d1),
		      "offset 3: zero run of length 0 (only the first run may "
		      "be empty)");
	expect_reject(d2, sizeof(d2), "offset 1: non-zero run of length 0");
	expect_reject(d3, sizeof(d3), "offset 1: non-zero run of length 0");
	free(p);
}

/* QEMU's decoder takes two-byte lengths with a zero high part. */
static void test_decode_accepts_two_byte_small_length(void **state)
{
	static const uint8_t d[] = {0x85, 0x00, 0x82, 0x00, 0x11, 0x22};
	struct pages *p = pages_new();
	struct kv_error err = {0};

	assert_int_equal(kv_xbzrle_decode(d, sizeof(d), p->new, PAGE, &err), 0);
	assert_int_equal(p->new[4], 0);
	assert_int_equal(p->new[5], 0x11);
	assert_int_equal(p->new[6], 0x22);
	assert_int_equal(p->new[7], 0);
	free(p);
}

/* Every prefix of a valid delta is either rejected or (when it ends right
 * after a non-zero run) a valid shorter delta; never a crash. */
static void test_decode_every_truncation(void **state)
{
	struct pages *p = pages_new();
	uint8_t dst[DST_MAX];
	struct kv_error err;
	int n;

	for (size_t i = 0; i < PAGE; i += 97)
		memset(p->new + i, 0x3c,
		       1 + i % 200 < PAGE - i ? 1 + i % 200 : PAGE - i);
	n = kv_xbzrle_encode(p->old, p->new, PAGE, dst, DST_MAX);
	assert_true(n > 0);
	for (int len = 0; len < n; len++) {
		uint8_t *work = malloc(PAGE);

		assert_non_null(work);
		memcpy(work, p->old, PAGE);
		kv_error_clear(&err);
		if (kv_xbzrle_decode(dst, (size_t)len, work, PAGE, &err) < 0) {
			assert_true(strstr(err.msg, "XBZRLE delta") != NULL);
			assert_memory_equal(work, p->old, PAGE);
		}
		free(work);
	}
	free(p);
}

/* ---- speed (printed for the report; the bound only catches a broken
 * build, e.g. a byte loop) ---- */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double pages_per_s(enum kv_xbzrle_impl impl, const uint8_t *old,
			  const uint8_t *new, size_t dst_max)
{
	static uint8_t dst[DST_MAX];
	double best = 0;

	for (int rep = 0; rep < 3; rep++) {
		double t0 = now_s(), dt;
		long n = 0;
		volatile int sink = 0;

		do {
			for (int k = 0; k < 256; k++)
				sink += kv_xbzrle_encode_impl(
				    impl, old, new, PAGE, dst, dst_max);
			n += 256;
			dt = now_s() - t0;
		} while (dt < 0.05);
		(void)sink;
		if (n / dt > best)
			best = n / dt;
	}
	return best;
}

static void test_encoder_speed(void **state)
{
	struct pages *few = pages_new(), *all = pages_new();

	fill_random(few->old, PAGE, 8);
	memcpy(few->new, few->old, PAGE);
	for (size_t i = 0; i < PAGE; i += 512)
		few->new[i + 37] ^= 0x5a;
	fill_random(all->old, PAGE, 9);
	for (size_t i = 0; i < PAGE; i++)
		all->new[i] = (uint8_t)~all->old[i];
	for (int i = KV_XBZRLE_IMPL_SCALAR; i < KV_XBZRLE_IMPL_COUNT; i++) {
		enum kv_xbzrle_impl impl = (enum kv_xbzrle_impl)i;
		double a, b, c;

		if (kv_xbzrle_encode_impl(impl, few->old, few->new, PAGE, NULL,
					  0) == -2)
			continue;
		a = pages_per_s(impl, few->old, few->new, DST_MAX);
		b = pages_per_s(impl, all->old, all->new, DST_MAX);
		c = pages_per_s(impl, all->old, all->new, PAGE - 1);
		printf("# xbzrle encode %-6s: 8 bytes changed %.2f Mpages/s "
		       "(%.1f GB/s), all changed %.2f Mpages/s, all changed "
		       "overflowing %.2f Mpages/s\n",
		       kv_xbzrle_impl_name(impl), a / 1e6, a * PAGE / 1e9,
		       b / 1e6, c / 1e6);
		/* Very generous: ASan and a loaded machine stay far above. */
		assert_true(a > 10000);
		assert_true(b > 10000);
	}
	free(few);
	free(all);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_qemu_doc_example),
	    cmocka_unit_test(test_equal_pages_encode_to_nothing),
	    cmocka_unit_test(test_round_trip_zero_to_random),
	    cmocka_unit_test(test_round_trip_mixed),
	    cmocka_unit_test(test_round_trip_every_byte_changed),
	    cmocka_unit_test(test_round_trip_alternating_bytes),
	    cmocka_unit_test(test_round_trip_edges),
	    cmocka_unit_test(test_round_trip_uleb_boundaries),
	    cmocka_unit_test(test_round_trip_odd_sizes),
	    cmocka_unit_test(test_encode_overflow_exact_bound),
	    cmocka_unit_test(test_reject_empty),
	    cmocka_unit_test(test_reject_truncated_uleb),
	    cmocka_unit_test(test_reject_overlong_uleb),
	    cmocka_unit_test(test_reject_run_past_page_end),
	    cmocka_unit_test(test_reject_data_past_input),
	    cmocka_unit_test(test_reject_trailing_bytes),
	    cmocka_unit_test(test_reject_zero_length_runs),
	    cmocka_unit_test(test_decode_accepts_two_byte_small_length),
	    cmocka_unit_test(test_decode_every_truncation),
	    cmocka_unit_test(test_encoder_speed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
