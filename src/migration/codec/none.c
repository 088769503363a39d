/* SPDX-License-Identifier: MIT */
/* The "none" method (codec.h): the pages concatenated. multifd sends raw
 * pages straight from guest memory without it; it serves whoever wants
 * every method behind the same calls. */
#include "base/units.h"
#include "migration/codec/codec.h"

#include <errno.h>
#include <string.h>


static size_t none_bound(size_t n)
{
	return n * KV_PAGE_SIZE;
}

static int none_compress(void *state, const uint8_t *const pages[], size_t n,
			 uint8_t *out, size_t out_max, size_t *out_len,
			 struct kv_error *err)
{
	(void)state;
	if (out_max < n * KV_PAGE_SIZE)
		return kv_error_set(err, -ENOSPC, "none payload: %zu bytes of room for %zu pages", out_max, n);
	for (size_t i = 0; i < n; i++)
		memcpy(out + i * KV_PAGE_SIZE, pages[i], KV_PAGE_SIZE);
	*out_len = n * KV_PAGE_SIZE;
	return 0;
}

static int none_decompress(void *state, const uint8_t *in, size_t len,
			   uint8_t *const pages[], size_t n,
			   struct kv_error *err)
{
	(void)state;
	if (len != n * KV_PAGE_SIZE)
		return kv_error_set(err, -EINVAL, "none payload: %zu bytes for %zu pages (must be %zu)", len, n, n * KV_PAGE_SIZE);
	for (size_t i = 0; i < n; i++)
		memcpy(pages[i], in + i * KV_PAGE_SIZE, KV_PAGE_SIZE);
	return 0;
}

const struct kv_codec_ops kv_codec_none = {
    .name = "none",
    .method = KV_MFD_METHOD_NONE,
    .wire_flag = KV_MFD_FLAG_NOCOMP,
    .bound = none_bound,
    .compress = none_compress,
    .decompress = none_decompress,
};
