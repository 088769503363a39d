/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the multifd payload codecs (src/migration/codec/):
 * for every method, round trips of zero, random, mixed and adversarial
 * pages over consecutive packets on one persistent codec pair, with 1 and
 * 128 pages per packet; QEMU's stream facts (zlib header once, sync flush
 * at each packet's end); truncated, extended and corrupted payloads and
 * wrong page counts rejected with a message; the error latch; bounds.
 * Every page is its own allocation so ASan sees any write outside one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/error.h"
#include "base/units.h"
#include "migration/codec/codec.h"

#define NMAX  KV_MFD_PAGES_DEFAULT
#define NMETH KV_MFD_METHOD_COUNT

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64*: deterministic test data. */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

static void fill_random(uint8_t *p, size_t n, uint64_t *s)
{
	for (size_t i = 0; i < n; i += 8) {
		uint64_t v = rng_next(s);

		memcpy(p + i, &v, n - i < 8 ? n - i : 8);
	}
}

enum kind {
	K_ZERO,
	K_RANDOM,
	K_MIXED,    /* zero and random pages alternate */
	K_HALF,	    /* each page: random first half, zero second */
	K_SAME,	    /* all one byte value, different per page */
	K_ONE_BYTE, /* one random page, copies differing in one byte */
	K_TEXT,	    /* words from a small dictionary */
	K_COUNT,
};

static const char *const kind_names[K_COUNT] = {
    "zero", "random", "mixed", "half", "same-byte", "one-byte", "text",
};

static void fill_text(uint8_t *p, size_t len, uint64_t *s)
{
	static const char *const words[] = {
	    "migration ", "page ",   "dirty ", "kvm ", "channel ", "zero ",
	    "stream ",	  "packet ", "\n",     "the ", "of ",	   "0x1000 ",
	};
	size_t at = 0;

	while (at < len) {
		const char *w = words[rng_next(s) % 12];
		size_t l = strlen(w);

		if (l > len - at)
			l = len - at;
		memcpy(p + at, w, l);
		at += l;
	}
}

static void fill_pages(uint8_t **pages, size_t n, enum kind k, uint64_t *s)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t *p = pages[i];

		switch (k) {
		case K_ZERO:
			memset(p, 0, KV_PAGE_SIZE);
			break;
		case K_RANDOM:
			fill_random(p, KV_PAGE_SIZE, s);
			break;
		case K_MIXED:
			if (i % 2)
				memset(p, 0, KV_PAGE_SIZE);
			else
				fill_random(p, KV_PAGE_SIZE, s);
			break;
		case K_HALF:
			fill_random(p, KV_PAGE_SIZE / 2, s);
			memset(p + KV_PAGE_SIZE / 2, 0, KV_PAGE_SIZE / 2);
			break;
		case K_SAME:
			memset(p, (int)(0x11 * (i + 1)), KV_PAGE_SIZE);
			break;
		case K_ONE_BYTE:
			if (i == 0)
				fill_random(p, KV_PAGE_SIZE, s);
			else
				memcpy(p, pages[0], KV_PAGE_SIZE);
			p[rng_next(s) % KV_PAGE_SIZE] ^= 0x5a;
			break;
		default:
			fill_text(p, KV_PAGE_SIZE, s);
			break;
		}
	}
}

struct bufs {
	uint8_t *src[NMAX];
	uint8_t *dst[NMAX];
	uint8_t *wire;
	size_t wire_max;
};

static struct bufs *bufs_new(void)
{
	struct bufs *b = calloc(1, sizeof(*b));

	assert_non_null(b);
	for (size_t i = 0; i < NMAX; i++) {
		b->src[i] = malloc(KV_PAGE_SIZE);
		b->dst[i] = malloc(KV_PAGE_SIZE);
		assert_non_null(b->src[i]);
		assert_non_null(b->dst[i]);
	}
	b->wire_max = KV_MFD_PAYLOAD_MAX(NMAX) + 64;
	b->wire = malloc(b->wire_max);
	assert_non_null(b->wire);
	return b;
}

static void bufs_free(struct bufs *b)
{
	for (size_t i = 0; i < NMAX; i++) {
		free(b->src[i]);
		free(b->dst[i]);
	}
	free(b->wire);
	free(b);
}

struct pair {
	struct kv_mfd_codec *tx, *rx;
};

static struct pair pair_new(enum kv_mfd_method m)
{
	struct kv_error err = {0};
	struct pair p = {
	    kv_mfd_codec_new(m, KV_MFD_LEVEL_DEFAULT, true, &err),
	    kv_mfd_codec_new(m, KV_MFD_LEVEL_DEFAULT, false, &err),
	};

	if (!p.tx || !p.rx)
		fail_msg("codec %s: %s", kv_mfd_method_name(m), err.msg);
	return p;
}

static void pair_free(struct pair *p)
{
	kv_mfd_codec_free(p->tx);
	kv_mfd_codec_free(p->rx);
}

/* Compress src[0..n) with room exactly the bound; returns the length. */
static size_t send_packet(struct pair *p, struct bufs *b, size_t n)
{
	enum kv_mfd_method m = kv_mfd_codec_method(p->tx);
	size_t bound = kv_mfd_compress_bound(m, n), len = 0;
	struct kv_error err = {0};

	assert_true(bound <= b->wire_max);
	if (kv_mfd_compress(p->tx, (const uint8_t *const *)b->src, n, b->wire,
			    bound, &len, &err))
		fail_msg("%s compress of %zu pages: %s", kv_mfd_method_name(m),
			 n, err.msg);
	assert_true(len > 0 && len <= bound);
	assert_true(len <= KV_MFD_PAYLOAD_MAX(n));
	return len;
}

static void recv_packet(struct pair *p, struct bufs *b, size_t len, size_t n)
{
	struct kv_error err = {0};

	for (size_t i = 0; i < n; i++)
		memset(b->dst[i], 0xa5, KV_PAGE_SIZE);
	if (kv_mfd_decompress(p->rx, b->wire, len, b->dst, n, &err))
		fail_msg("%s decompress of %zu pages (%zu bytes): %s",
			 kv_mfd_method_name(kv_mfd_codec_method(p->rx)), n, len,
			 err.msg);
	for (size_t i = 0; i < n; i++) {
		if (memcmp(b->dst[i], b->src[i], KV_PAGE_SIZE))
			fail_msg("%s: page %zu of %zu differs",
				 kv_mfd_method_name(kv_mfd_codec_method(p->rx)),
				 i, n);
	}
}

/* Every kind of page, twice over, then mixed sizes, on one pair. */
static void round_trip_method(enum kv_mfd_method m, size_t n)
{
	struct bufs *b = bufs_new();
	struct pair p = pair_new(m);
	uint64_t seed = 0x1234567 + m * 1000 + n;

	for (int round = 0; round < 2; round++) {
		for (int k = 0; k < K_COUNT; k++) {
			size_t len;

			fill_pages(b->src, n, (enum kind)k, &seed);
			len = send_packet(&p, b, n);
			recv_packet(&p, b, len, n);
			/* Zero pages must really compress. */
			if (m != KV_MFD_METHOD_NONE && k == K_ZERO &&
			    len * 8 > n * KV_PAGE_SIZE)
				fail_msg("%s: %zu zero pages took %zu bytes",
					 kv_mfd_method_name(m), n, len);
			if (m == KV_MFD_METHOD_NONE)
				assert_int_equal(len, n * KV_PAGE_SIZE);
			(void)kind_names;
		}
	}
	/* Packets of other sizes on the same streams. */
	for (size_t k = 1; k <= n; k = k * 3 + 1) {
		size_t len;

		fill_pages(b->src, k, K_HALF, &seed);
		len = send_packet(&p, b, k);
		recv_packet(&p, b, len, k);
	}
	pair_free(&p);
	bufs_free(b);
}

static void test_round_trip_one_page(void **state)
{
	(void)state;
	for (int m = 0; m < NMETH; m++)
		round_trip_method((enum kv_mfd_method)m, 1);
}

static void test_round_trip_full_packet(void **state)
{
	(void)state;
	for (int m = 0; m < NMETH; m++)
		round_trip_method((enum kv_mfd_method)m, NMAX);
}

/* Levels other than the default still round-trip. */
static void test_levels(void **state)
{
	static const struct {
		enum kv_mfd_method m;
		int level;
	} cases[] = {
	    {KV_MFD_METHOD_ZLIB, 0},
	    {KV_MFD_METHOD_ZLIB, 9},
	    {KV_MFD_METHOD_ZSTD, 0},
	    {KV_MFD_METHOD_ZSTD, 19},
	};
	struct bufs *b = bufs_new();
	uint64_t seed = 99;

	(void)state;
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct kv_error err = {0};
		struct pair p = {
		    kv_mfd_codec_new(cases[c].m, cases[c].level, true, &err),
		    kv_mfd_codec_new(cases[c].m, cases[c].level, false, &err),
		};

		assert_non_null(p.tx);
		assert_non_null(p.rx);
		for (int k = 0; k < K_COUNT; k++) {
			fill_pages(b->src, 8, (enum kind)k, &seed);
			recv_packet(&p, b, send_packet(&p, b, 8), 8);
		}
		pair_free(&p);
	}
	bufs_free(b);
}

static void test_bad_levels(void **state)
{
	struct kv_error err = {0};

	(void)state;
	assert_null(kv_mfd_codec_new(KV_MFD_METHOD_ZLIB, 10, true, &err));
	assert_non_null(strstr(err.msg, "multifd-zlib-level 10 outside 0..9"));
	kv_error_clear(&err);
	assert_null(kv_mfd_codec_new(KV_MFD_METHOD_ZSTD, 21, false, &err));
	assert_non_null(strstr(err.msg, "multifd-zstd-level 21 outside"));
	kv_error_clear(&err);
	assert_null(kv_mfd_codec_new(KV_MFD_METHOD_ZSTD, -2, true, &err));
	kv_error_clear(&err);
	assert_null(kv_mfd_codec_new((enum kv_mfd_method)7, 1, true, &err));
	assert_non_null(strstr(err.msg, "method 7 unknown"));
}

static void test_names(void **state)
{
	static const char *const names[] = {"none", "zlib", "zstd", "lz4"};
	struct kv_error err = {0};
	enum kv_mfd_method m;

	(void)state;
	for (int i = 0; i < NMETH; i++) {
		assert_string_equal(kv_mfd_method_name((enum kv_mfd_method)i),
				    names[i]);
		assert_int_equal(kv_mfd_method_parse(names[i], &m, &err), 0);
		assert_int_equal(m, i);
	}
	assert_int_equal(kv_mfd_method_parse("gzip", &m, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "'gzip' unknown (none, zlib, zstd"));
	assert_int_equal(kv_mfd_method_flag(KV_MFD_METHOD_ZLIB), 1U << 1);
	assert_int_equal(kv_mfd_method_flag(KV_MFD_METHOD_ZSTD), 2U << 1);
	assert_int_equal(kv_mfd_method_flag(KV_MFD_METHOD_LZ4), 1U << 7);
	assert_int_equal(kv_mfd_method_flag(KV_MFD_METHOD_NONE), 0);
}

/* The packet decoder's payload limit holds every codec's output. */
static void test_bounds(void **state)
{
	(void)state;
	for (int m = 0; m < NMETH; m++) {
		for (size_t n = 1; n <= KV_MFD_PAGES_LIMIT; n = n * 2 + 1) {
			size_t b =
			    kv_mfd_compress_bound((enum kv_mfd_method)m, n);

			assert_true(b >= n * KV_PAGE_SIZE);
			assert_true(b <= KV_MFD_PAYLOAD_MAX(n));
		}
	}
}

/* QEMU's zlib layout: a zlib header in the first packet only, each
 * packet ends with the sync flush's empty stored block. */
static void test_zlib_stream_layout(void **state)
{
	static const uint8_t sync_flush[4] = {0, 0, 0xff, 0xff};
	struct bufs *b = bufs_new();
	struct pair p = pair_new(KV_MFD_METHOD_ZLIB);
	uint64_t seed = 5;
	size_t len;

	(void)state;
	fill_pages(b->src, 4, K_TEXT, &seed);
	len = send_packet(&p, b, 4);
	assert_int_equal(b->wire[0], 0x78); /* deflate, 32 KiB window */
	assert_int_equal((b->wire[0] << 8 | b->wire[1]) % 31, 0);
	assert_memory_equal(b->wire + len - 4, sync_flush, 4);
	recv_packet(&p, b, len, 4);
	fill_pages(b->src, 4, K_TEXT, &seed);
	len = send_packet(&p, b, 4);
	assert_memory_equal(b->wire + len - 4, sync_flush, 4);
	recv_packet(&p, b, len, 4);
	pair_free(&p);
	bufs_free(b);
}

/* zstd: one frame for the whole stream, its magic in the first packet. */
static void test_zstd_stream_layout(void **state)
{
	static const uint8_t magic[4] = {0x28, 0xb5, 0x2f, 0xfd};
	struct bufs *b = bufs_new();
	struct pair p = pair_new(KV_MFD_METHOD_ZSTD);
	uint64_t seed = 6;
	size_t len;

	(void)state;
	fill_pages(b->src, 4, K_TEXT, &seed);
	len = send_packet(&p, b, 4);
	assert_memory_equal(b->wire, magic, 4);
	recv_packet(&p, b, len, 4);
	fill_pages(b->src, 4, K_TEXT, &seed);
	len = send_packet(&p, b, 4);
	assert_memory_not_equal(b->wire, magic, 4);
	recv_packet(&p, b, len, 4);
	pair_free(&p);
	bufs_free(b);
}

/*
 * Decode a tampered payload on a fresh receiver that has seen `ok` good
 * packets first: it must fail with a message naming the method, and the
 * codec must refuse the next packet (for the stream methods).
 */
static void expect_bad(enum kv_mfd_method m, const uint8_t *in, size_t len,
		       size_t n, struct bufs *b, struct kv_mfd_codec *rx,
		       const char *what)
{
	struct kv_error err = {0};
	int ret = kv_mfd_decompress(rx, in, len, b->dst, n, &err);

	if (ret != -EINVAL)
		fail_msg("%s, %s: decompress returned %d (%s)",
			 kv_mfd_method_name(m), what, ret, err.msg);
	if (strncmp(err.msg, kv_mfd_method_name(m),
		    strlen(kv_mfd_method_name(m))))
		fail_msg("%s, %s: message '%s' does not name the method",
			 kv_mfd_method_name(m), what, err.msg);
}

/* Compress one packet of n text pages on a fresh sender. */
static size_t fresh_packet(enum kv_mfd_method m, struct bufs *b, size_t n,
			   uint64_t seed)
{
	struct pair p = pair_new(m);
	size_t len;

	fill_pages(b->src, n, K_MIXED, &seed);
	for (size_t i = 0; i < n; i++)
		fill_text(b->src[i] + KV_PAGE_SIZE / 2, KV_PAGE_SIZE / 2, &seed);
	len = send_packet(&p, b, n);
	pair_free(&p);
	return len;
}

static struct kv_mfd_codec *fresh_rx(enum kv_mfd_method m)
{
	struct kv_error err = {0};
	struct kv_mfd_codec *c =
	    kv_mfd_codec_new(m, KV_MFD_LEVEL_DEFAULT, false, &err);

	assert_non_null(c);
	return c;
}

static void check_rejects(enum kv_mfd_method m, size_t n)
{
	struct bufs *b = bufs_new();
	uint8_t *copy = malloc(b->wire_max + 64);
	size_t len = fresh_packet(m, b, n, 77 + n);
	struct kv_mfd_codec *rx;
	struct kv_error err = {0};
	uint64_t seed = 3;

	assert_non_null(copy);
	/* Sanity: the untouched payload decodes. */
	rx = fresh_rx(m);
	assert_int_equal(kv_mfd_decompress(rx, b->wire, len, b->dst, n, &err),
			 0);
	kv_mfd_codec_free(rx);

	/* Truncated: by one byte, to half, to nothing. */
	for (int cut = 0; cut < 3; cut++) {
		size_t l = cut == 0 ? len - 1 : cut == 1 ? len / 2 : 0;

		rx = fresh_rx(m);
		expect_bad(m, b->wire, l, n, b, rx, "truncated");
		kv_mfd_codec_free(rx);
	}
	/* Extended: a zero byte, random bytes, a second sync flush. */
	memcpy(copy, b->wire, len);
	copy[len] = 0;
	rx = fresh_rx(m);
	expect_bad(m, copy, len + 1, n, b, rx, "one byte more");
	kv_mfd_codec_free(rx);
	fill_random(copy + len, 40, &seed);
	rx = fresh_rx(m);
	expect_bad(m, copy, len + 40, n, b, rx, "random bytes more");
	kv_mfd_codec_free(rx);
	memcpy(copy + len, "\x01\x02\x03\x00\x00\xff\xff", 7);
	rx = fresh_rx(m);
	expect_bad(m, copy, len + 7, n, b, rx, "junk and a sync flush");
	kv_mfd_codec_free(rx);
	/* A payload of more pages than the header says, and of fewer. */
	if (n > 1) {
		rx = fresh_rx(m);
		expect_bad(m, b->wire, len, n - 1, b, rx, "one page less");
		kv_mfd_codec_free(rx);
	}
	rx = fresh_rx(m);
	expect_bad(m, b->wire, len, n + 1, b, rx, "one page more");
	kv_mfd_codec_free(rx);
	/* Garbage instead of a payload (the zlib one keeps its trailer). */
	fill_random(copy, len, &seed);
	if (m == KV_MFD_METHOD_ZLIB && len >= 4)
		memcpy(copy + len - 4, "\x00\x00\xff\xff", 4);
	if (m != KV_MFD_METHOD_NONE) {
		rx = fresh_rx(m);
		expect_bad(m, copy, len, n, b, rx, "random payload");
		kv_mfd_codec_free(rx);
	}
	free(copy);
	bufs_free(b);
}

static void test_rejects(void **state)
{
	(void)state;
	for (int m = 0; m < NMETH; m++) {
		check_rejects((enum kv_mfd_method)m, 1);
		check_rejects((enum kv_mfd_method)m, 16);
	}
}

/* Flipped bytes: either a clean rejection or n pages, never a crash
 * (ASan watches the page buffers). */
static void test_bit_flips(void **state)
{
	struct bufs *b = bufs_new();
	uint8_t *copy = malloc(b->wire_max);
	uint64_t seed = 11;

	(void)state;
	assert_non_null(copy);
	for (int m = 1; m < NMETH; m++) {
		size_t len = fresh_packet((enum kv_mfd_method)m, b, 8, 5);
		int rejected = 0;

		for (int t = 0; t < 200; t++) {
			struct kv_mfd_codec *rx =
			    fresh_rx((enum kv_mfd_method)m);
			struct kv_error err = {0};
			int ret;

			memcpy(copy, b->wire, len);
			copy[rng_next(&seed) % len] ^=
			    (uint8_t)(1U << (rng_next(&seed) % 8));
			ret = kv_mfd_decompress(rx, copy, len, b->dst, 8, &err);
			assert_true(ret == 0 || (ret == -EINVAL && err.msg[0]));
			rejected += ret < 0;
			kv_mfd_codec_free(rx);
		}
		/* Most single flips must be noticed. */
		if (rejected < 20)
			fail_msg("%s: only %d of 200 flips rejected",
				 kv_mfd_method_name((enum kv_mfd_method)m),
				 rejected);
	}
	free(copy);
	bufs_free(b);
}

/* After an error, a stream codec refuses more work; so does a codec used
 * in the wrong direction, or with a bad page count. */
static void test_error_latch_and_misuse(void **state)
{
	struct bufs *b = bufs_new();
	struct kv_error err = {0};
	uint64_t seed = 8;
	size_t len, out_len;

	(void)state;
	for (int m = KV_MFD_METHOD_ZLIB; m <= KV_MFD_METHOD_ZSTD; m++) {
		struct pair p = pair_new((enum kv_mfd_method)m);

		fill_pages(b->src, 4, K_TEXT, &seed);
		len = send_packet(&p, b, 4);
		kv_error_clear(&err);
		assert_int_equal(
		    kv_mfd_decompress(p.rx, b->wire, len - 1, b->dst, 4, &err),
		    -EINVAL);
		kv_error_clear(&err);
		assert_int_equal(
		    kv_mfd_decompress(p.rx, b->wire, len, b->dst, 4, &err),
		    -EIO);
		assert_non_null(strstr(err.msg, "unusable after an earlier"));
		/* Too little room latches the sender too. */
		kv_error_clear(&err);
		assert_int_equal(
		    kv_mfd_compress(p.tx, (const uint8_t *const *)b->src, 4,
				    b->wire, 10, &out_len, &err),
		    -ENOSPC);
		kv_error_clear(&err);
		assert_int_equal(
		    kv_mfd_compress(p.tx, (const uint8_t *const *)b->src, 4,
				    b->wire, b->wire_max, &out_len, &err),
		    -EIO);
		pair_free(&p);
	}
	{
		struct pair p = pair_new(KV_MFD_METHOD_LZ4);

		kv_error_clear(&err);
		assert_int_equal(
		    kv_mfd_compress(p.rx, (const uint8_t *const *)b->src, 1,
				    b->wire, b->wire_max, &out_len, &err),
		    -EINVAL);
		assert_non_null(strstr(err.msg, "made to decompress"));
		kv_error_clear(&err);
		assert_int_equal(
		    kv_mfd_decompress(p.tx, b->wire, 10, b->dst, 1, &err),
		    -EINVAL);
		kv_error_clear(&err);
		assert_int_equal(
		    kv_mfd_decompress(p.rx, b->wire, 10, b->dst, 0, &err),
		    -EINVAL);
		assert_non_null(strstr(err.msg, "0 pages"));
		kv_error_clear(&err);
		assert_int_equal(
		    kv_mfd_compress(p.tx, (const uint8_t *const *)b->src, 4,
				    b->wire, 100, &out_len, &err),
		    -ENOSPC);
		pair_free(&p);
	}
	{
		struct pair p = pair_new(KV_MFD_METHOD_NONE);

		kv_error_clear(&err);
		assert_int_equal(
		    kv_mfd_compress(p.tx, (const uint8_t *const *)b->src, 2,
				    b->wire, 2 * KV_PAGE_SIZE - 1, &out_len, &err),
		    -ENOSPC);
		pair_free(&p);
	}
	bufs_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_names),
	    cmocka_unit_test(test_bounds),
	    cmocka_unit_test(test_bad_levels),
	    cmocka_unit_test(test_round_trip_one_page),
	    cmocka_unit_test(test_round_trip_full_packet),
	    cmocka_unit_test(test_levels),
	    cmocka_unit_test(test_zlib_stream_layout),
	    cmocka_unit_test(test_zstd_stream_layout),
	    cmocka_unit_test(test_rejects),
	    cmocka_unit_test(test_bit_flips),
	    cmocka_unit_test(test_error_latch_and_misuse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
