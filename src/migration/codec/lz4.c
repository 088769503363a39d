/* SPDX-License-Identifier: MIT */
/*
 * The "lz4" method (codec.h), kvmig's own: each payload is one LZ4 block
 * (block format, no frame) of the packet's pages concatenated; nothing
 * crosses packets. The decoder writes through LZ4_decompress_safe's
 * bounded output only.
 */
#include "base/units.h"
#include "migration/codec/codec.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>


/* The packet's pages in one piece (LZ4 works on contiguous bytes). */
struct lz4_state {
	uint8_t *scratch;
	size_t pages;
};

static size_t lz4_bound(size_t n)
{
	return (size_t)LZ4_compressBound((int)(n * KV_PAGE_SIZE));
}

static int lz4_setup(void **state, struct kv_error *err)
{
	*state = calloc(1, sizeof(struct lz4_state));
	if (!*state)
		return kv_error_set(err, -ENOMEM, "out of memory for a lz4 codec");
	return 0;
}

static int lz4_send_setup(void **state, int level, struct kv_error *err)
{
	(void)level;
	return lz4_setup(state, err);
}

static void lz4_cleanup(void *state)
{
	struct lz4_state *s = state;

	free(s->scratch);
	free(s);
}

static int scratch_reserve(struct lz4_state *s, size_t pages,
			   struct kv_error *err)
{
	uint8_t *p;

	if (s->pages >= pages)
		return 0;
	p = realloc(s->scratch, pages * KV_PAGE_SIZE);
	if (!p)
		return kv_error_set(err, -ENOMEM, "lz4 codec: out of memory for %zu pages of scratch", pages);
	s->scratch = p;
	s->pages = pages;
	return 0;
}

static int lz4_compress(void *state, const uint8_t *const pages[], size_t n,
			uint8_t *out, size_t out_max, size_t *out_len,
			struct kv_error *err)
{
	struct lz4_state *s = state;
	int room = out_max > INT_MAX ? INT_MAX : (int)out_max;
	int ret = scratch_reserve(s, n, err);

	if (ret < 0)
		return ret;
	for (size_t i = 0; i < n; i++)
		memcpy(s->scratch + i * KV_PAGE_SIZE, pages[i], KV_PAGE_SIZE);
	ret = LZ4_compress_default((const char *)s->scratch, (char *)out,
				   (int)(n * KV_PAGE_SIZE), room);
	if (ret <= 0)
		return kv_error_set(err, -ENOSPC, "lz4: %zu bytes of room are not enough for %zu pages", out_max, n);
	*out_len = (size_t)ret;
	return 0;
}

static int lz4_decompress(void *state, const uint8_t *in, size_t len,
			  uint8_t *const pages[], size_t n,
			  struct kv_error *err)
{
	struct lz4_state *s = state;
	uint8_t *dst = pages[0];
	int ret;

	if (len > INT_MAX)
		return kv_error_set(err, -EINVAL, "lz4 payload: %zu bytes, too long", len);
	/* One page decodes in place; several need one contiguous piece. */
	if (n > 1) {
		ret = scratch_reserve(s, n, err);
		if (ret < 0)
			return ret;
		dst = s->scratch;
	}
	ret = LZ4_decompress_safe((const char *)in, (char *)dst, (int)len,
				  (int)(n * KV_PAGE_SIZE));
	if (ret < 0)
		return kv_error_set(err, -EINVAL, "lz4 payload: corrupt, or decodes to more than %zu pages (LZ4 error at input byte %d of %zu)", n, -ret - 1, len);
	if ((size_t)ret != n * KV_PAGE_SIZE)
		return kv_error_set(err, -EINVAL, "lz4 payload: decodes to %d bytes, not the %zu of %zu pages", ret, n * KV_PAGE_SIZE, n);
	if (n > 1) {
		for (size_t i = 0; i < n; i++)
			memcpy(pages[i], dst + i * KV_PAGE_SIZE, KV_PAGE_SIZE);
	}
	return 0;
}

const struct kv_codec_ops kv_codec_lz4 = {
    .name = "lz4",
    .method = KV_MFD_METHOD_LZ4,
    .wire_flag = KV_MFD_FLAG_LZ4,
    .bound = lz4_bound,
    .send_setup = lz4_send_setup,
    .send_cleanup = lz4_cleanup,
    .recv_setup = lz4_setup,
    .recv_cleanup = lz4_cleanup,
    .compress = lz4_compress,
    .decompress = lz4_decompress,
};
