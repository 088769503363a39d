/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target over XBZRLE (src/migration/ram/xbzrle.c). One input is used
 * twice:
 *
 *  1. as a delta received from a peer, decoded onto a fixed old page held
 *     in a buffer of exactly one page (so ASan sees any stray byte). A
 *     rejected delta must leave the page untouched with an "XBZRLE delta"
 *     message; an accepted one must survive re-encoding: encode(old,
 *     decoded) decoded onto old gives the decoded page again.
 *  2. as changes to a page: XORed onto the old page from an offset taken
 *     from its first bytes. Every encoder implementation must produce the
 *     same bytes, the delta must decode back to the new page, and encoding
 *     into less room must fail (-1) exactly when the delta is longer.
 *
 * fuzz_target_run returns what the decoder said about the input as a delta
 * (0 accepted, <0 rejected): "valid-*" seeds are deltas a QEMU decoder
 * takes, "bad-*" ones each break one rule.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_target.h"
#include "migration/ram/xbzrle.h"

#define FUZZ_PAGE 4096U
/* Exact runs need up to 3 bytes per 2 page bytes (alternating changes). */
#define FUZZ_DST (2 * FUZZ_PAGE)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_check(bool ok, const char *what, const char *detail)
{
	if (ok)
		return;
	fprintf(stderr, "fuzz_xbzrle: invariant broken: %s%s%s\n", what,
		detail ? ": " : "", detail ? detail : "");
	__builtin_trap();
}

static uint8_t *page_alloc(void)
{
	uint8_t *p = malloc(FUZZ_PAGE);

	fuzz_check(p != NULL, "out of memory", NULL);
	return p;
}

/* A fixed old page with no long runs of one value. */
static void fill_old(uint8_t *p)
{
	for (size_t i = 0; i < FUZZ_PAGE; i++)
		p[i] = (uint8_t)(i * 7 ^ i >> 5);
}

/* encode(old, new) then decode onto old must give new; returns the
 * encoded length. */
static int check_round_trip(const uint8_t *old, const uint8_t *new,
			    uint8_t *dst)
{
	struct kv_error err = {0};
	uint8_t *work = page_alloc();
	int n = kv_xbzrle_encode(old, new, FUZZ_PAGE, dst, FUZZ_DST);

	fuzz_check(n >= 0, "a page delta did not fit in two pages", NULL);
	memcpy(work, old, FUZZ_PAGE);
	if (n > 0) {
		fuzz_check(kv_xbzrle_decode(dst, (size_t)n, work, FUZZ_PAGE,
					    &err) == 0,
			   "our own encoding was rejected", err.msg);
	}
	fuzz_check(!memcmp(work, new, FUZZ_PAGE),
		   "decode(encode(old, new)) differs from new", NULL);
	free(work);
	return n;
}

static int fuzz_decode(const uint8_t *data, size_t size, const uint8_t *old,
		       struct kv_error *err)
{
	uint8_t *work = page_alloc();
	uint8_t *dst = malloc(FUZZ_DST);
	int ret;

	fuzz_check(dst != NULL, "out of memory", NULL);
	memcpy(work, old, FUZZ_PAGE);
	ret = kv_xbzrle_decode(data, size, work, FUZZ_PAGE, err);
	if (ret < 0) {
		fuzz_check(ret == -EINVAL && kv_error_is_set(err) &&
			       !strncmp(err->msg, "XBZRLE delta", 12),
			   "a rejection without its error", err->msg);
		fuzz_check(!memcmp(work, old, FUZZ_PAGE),
			   "a rejected delta changed the page", err->msg);
	} else {
		fuzz_check(ret == 0 && !kv_error_is_set(err),
			   "an accepted delta set an error", err->msg);
		fuzz_check(size > 0, "an empty delta was accepted", NULL);
		check_round_trip(old, work, dst);
	}
	free(dst);
	free(work);
	return ret;
}

static void fuzz_encode(const uint8_t *data, size_t size, const uint8_t *old)
{
	uint8_t *new = page_alloc();
	uint8_t *dst = malloc(FUZZ_DST), *alt = malloc(FUZZ_DST);
	size_t at =
	    size >= 2 ? ((size_t)data[0] << 8 | data[1]) % FUZZ_PAGE : 0;
	int n;

	fuzz_check(dst && alt, "out of memory", NULL);
	memcpy(new, old, FUZZ_PAGE);
	for (size_t i = 0; i < size; i++)
		new[(at + i) % FUZZ_PAGE] ^= data[i];
	n = check_round_trip(old, new, dst);
	for (int i = KV_XBZRLE_IMPL_SCALAR; i < KV_XBZRLE_IMPL_COUNT; i++) {
		int m = kv_xbzrle_encode_impl((enum kv_xbzrle_impl)i, old, new,
					      FUZZ_PAGE, alt, FUZZ_DST);

		if (m == -2)
			continue;
		fuzz_check(m == n && !memcmp(alt, dst, (size_t)n),
			   "encoder implementations disagree",
			   kv_xbzrle_impl_name((enum kv_xbzrle_impl)i));
	}
	if (n > 0) {
		/* Less room, chosen by the input: -1 exactly when short. */
		size_t room =
		    size ? data[size - 1] * (size_t)17 % (FUZZ_DST + 1) : 0;
		int m = kv_xbzrle_encode(old, new, FUZZ_PAGE, alt, room);

		fuzz_check((size_t)n > room ? m == -1 : m == n,
			   "the overflow rule does not hold", NULL);
	}
	free(alt);
	free(dst);
	free(new);
}

int fuzz_target_run(const uint8_t *data, size_t size, struct kv_error *err)
{
	uint8_t *old = page_alloc();
	int ret;

	kv_error_clear(err);
	fill_old(old);
	ret = fuzz_decode(data, size, old, err);
	fuzz_encode(data, size, old);
	free(old);
	return ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kv_error err = {0};

	fuzz_target_run(data, size, &err);
	return 0;
}
