/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the codec registry (src/migration/codec/codec.c): every
 * method in the table round-trips through its own ops and through the
 * per-channel calls; lookups by name, enum value and wire flag agree with
 * one another and with QEMU's flag values; an unknown name, value or flag
 * finds nothing; a corrupted payload is refused by every method.
 * (test_multifd_codec.c tests each method's stream layout in depth.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/error.h"
#include "base/units.h"
#include "migration/codec/codec.h"

#define NPAGES 8

struct pages {
	uint8_t *src[NPAGES], *dst[NPAGES];
	uint8_t *wire;
	size_t wire_max;
};

/* Pages that compress (repeated text) but are not all alike. */
static void pages_new(struct pages *p, const struct kv_codec_ops *ops)
{
	for (size_t i = 0; i < NPAGES; i++) {
		p->src[i] = malloc(KV_PAGE_SIZE);
		p->dst[i] = calloc(1, KV_PAGE_SIZE);
		assert_non_null(p->src[i]);
		assert_non_null(p->dst[i]);
		for (size_t b = 0; b < KV_PAGE_SIZE; b++)
			p->src[i][b] = (uint8_t)("kvmig page "[b % 11] + i);
	}
	p->wire_max = ops->bound(NPAGES);
	p->wire = malloc(p->wire_max);
	assert_non_null(p->wire);
}

static void pages_free(struct pages *p)
{
	for (size_t i = 0; i < NPAGES; i++) {
		free(p->src[i]);
		free(p->dst[i]);
	}
	free(p->wire);
}

static struct kv_mfd_codec *codec_new(const struct kv_codec_ops *ops,
				      bool compress)
{
	struct kv_error err = {0};
	struct kv_mfd_codec *c = kv_mfd_codec_new(
	    ops->method, KV_MFD_LEVEL_DEFAULT, compress, &err);

	if (!c)
		fail_msg("%s codec: %s", ops->name, err.msg);
	assert_ptr_equal(kv_codec_by_method(kv_mfd_codec_method(c)), ops);
	return c;
}

/* Compress the pages with a fresh sender; returns the payload's length. */
static size_t encode(const struct kv_codec_ops *ops, struct pages *p)
{
	struct kv_mfd_codec *tx = codec_new(ops, true);
	struct kv_error err = {0};
	size_t len = 0;

	assert_int_equal(kv_mfd_compress(tx, (const uint8_t *const *)p->src,
					 NPAGES, p->wire, p->wire_max, &len,
					 &err),
			 0);
	assert_true(len > 0 && len <= p->wire_max);
	assert_true(len <= KV_MFD_PAYLOAD_MAX(NPAGES));
	kv_mfd_codec_free(tx);
	return len;
}

static void test_every_method_round_trips(void **state)
{
	(void)state;
	for (int m = 0; m < KV_MFD_METHOD_COUNT; m++) {
		const struct kv_codec_ops *ops =
		    kv_codec_by_method((enum kv_mfd_method)m);
		struct kv_error err = {0};
		struct kv_mfd_codec *rx;
		struct pages p;
		size_t len;

		assert_non_null(ops);
		assert_int_equal(ops->method, m);
		pages_new(&p, ops);
		len = encode(ops, &p);
		/* Repeated text must shrink, except with none. */
		if (m == KV_MFD_METHOD_NONE)
			assert_int_equal(len, NPAGES * KV_PAGE_SIZE);
		else
			assert_true(len < NPAGES * KV_PAGE_SIZE / 4);
		rx = codec_new(ops, false);
		assert_int_equal(
		    kv_mfd_decompress(rx, p.wire, len, p.dst, NPAGES, &err), 0);
		for (size_t i = 0; i < NPAGES; i++)
			assert_memory_equal(p.src[i], p.dst[i], KV_PAGE_SIZE);
		kv_mfd_codec_free(rx);
		pages_free(&p);
	}
}

static void test_lookups(void **state)
{
	static const struct {
		const char *name;
		enum kv_mfd_method method;
		uint32_t flag; /* QEMU's MULTIFD_FLAG_* (lz4: kvmig's) */
	} want[] = {
	    {"none", KV_MFD_METHOD_NONE, 0},
	    {"zlib", KV_MFD_METHOD_ZLIB, 1U << 1},
	    {"zstd", KV_MFD_METHOD_ZSTD, 2U << 1},
	    {"lz4", KV_MFD_METHOD_LZ4, 1U << 7},
	};
	const char *names[KV_MFD_METHOD_COUNT];

	(void)state;
	assert_int_equal(KV_MFD_METHOD_COUNT, 4);
	assert_int_equal(kv_mfd_method_names(names), KV_MFD_METHOD_COUNT);
	for (size_t i = 0; i < 4; i++) {
		const struct kv_codec_ops *ops = kv_codec_by_name(want[i].name);

		assert_non_null(ops);
		assert_string_equal(ops->name, want[i].name);
		assert_string_equal(names[i], want[i].name);
		assert_int_equal(ops->method, want[i].method);
		assert_int_equal(ops->wire_flag, want[i].flag);
		assert_ptr_equal(kv_codec_by_method(want[i].method), ops);
		assert_ptr_equal(kv_codec_by_wire_flag(want[i].flag), ops);
		assert_int_equal(kv_mfd_method_flag(want[i].method),
				 want[i].flag);
	}
}

static void test_unknown_refused(void **state)
{
	struct kv_error err = {0};
	enum kv_mfd_method m = KV_MFD_METHOD_LZ4;

	(void)state;
	assert_null(kv_codec_by_name("gzip"));
	assert_null(kv_codec_by_name(""));
	assert_null(kv_codec_by_name("ZLIB")); /* QMP's values are exact */
	assert_null(kv_codec_by_method(KV_MFD_METHOD_COUNT));
	assert_null(kv_codec_by_method((enum kv_mfd_method)-1));
	/* QEMU's qpl, and two methods at once. */
	assert_null(kv_codec_by_wire_flag(4U << 1));
	assert_null(kv_codec_by_wire_flag((1U << 1) | (2U << 1)));
	assert_int_equal(kv_mfd_method_parse("gzip", &m, &err), -EINVAL);
	assert_int_equal(m, KV_MFD_METHOD_LZ4); /* untouched */
	assert_non_null(strstr(err.msg, "'gzip' unknown (none, zlib, zstd or lz4)"));
	assert_string_equal(kv_mfd_method_name(KV_MFD_METHOD_COUNT),
			    "unknown");
}

/* Every method refuses a payload whose start is overwritten with 0xff
 * (zlib's header check, zstd's magic, an LZ4 literal run longer than the
 * input), one cut short by a byte, and the wrong page count, naming
 * itself. */
static void test_corrupt_refused(void **state)
{
	(void)state;
	for (int m = 0; m < KV_MFD_METHOD_COUNT; m++) {
		const struct kv_codec_ops *ops =
		    kv_codec_by_method((enum kv_mfd_method)m);
		struct pages p;
		size_t len;
		uint8_t saved[16];

		pages_new(&p, ops);
		len = encode(ops, &p);
		memcpy(saved, p.wire, sizeof(saved));
		for (int how = 0; how < 3; how++) {
			struct kv_mfd_codec *rx = codec_new(ops, false);
			struct kv_error err = {0};
			size_t l = how == 1 ? len - 1 : len;
			size_t n = how == 2 ? NPAGES - 1 : NPAGES;
			int ret;

			/* none has nothing to check a byte against. */
			if (how == 0 && m == KV_MFD_METHOD_NONE) {
				kv_mfd_codec_free(rx);
				continue;
			}
			if (how == 0)
				memset(p.wire, 0xff, sizeof(saved));
			ret = kv_mfd_decompress(rx, p.wire, l, p.dst, n, &err);
			if (ret != -EINVAL)
				fail_msg("%s: corruption %d accepted (%d)",
					 ops->name, how, ret);
			assert_true(!strncmp(err.msg, ops->name,
					     strlen(ops->name)));
			memcpy(p.wire, saved, sizeof(saved));
			kv_mfd_codec_free(rx);
		}
		pages_free(&p);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_every_method_round_trips),
	    cmocka_unit_test(test_lookups),
	    cmocka_unit_test(test_unknown_refused),
	    cmocka_unit_test(test_corrupt_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
