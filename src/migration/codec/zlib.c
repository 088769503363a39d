/* SPDX-License-Identifier: MIT */
/*
 * The "zlib" method (codec.h), QEMU's multifd-zlib layout: one deflate
 * stream per channel and direction for the whole migration, every
 * packet's payload ending with a sync flush (00 00 ff ff). The decoder
 * writes through inflate's avail_out only, one page at a time, then
 * proves the payload was exactly n pages.
 */
#include "base/units.h"
#include "migration/codec/codec.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>


struct zlib_state {
	z_stream zs;
	uint8_t bounce[KV_PAGE_SIZE]; /* sender: the page being deflated */
};

static size_t zlib_bound(size_t n)
{
	/* compressBound() plus the stream header and a sync flush. */
	return (size_t)compressBound((uLong)(n * KV_PAGE_SIZE)) + 32;
}

static int zlib_send_setup(void **state, int level, struct kv_error *err)
{
	struct zlib_state *s = calloc(1, sizeof(*s));
	int ret;

	if (!s)
		return kv_error_set(err, -ENOMEM, "out of memory for a zlib codec");
	ret = deflateInit(&s->zs, level);
	if (ret != Z_OK) {
		free(s);
		return kv_error_set(err, -ENOMEM, "zlib: deflateInit failed (%d)", ret);
	}
	*state = s;
	return 0;
}

static void zlib_send_cleanup(void *state)
{
	struct zlib_state *s = state;

	deflateEnd(&s->zs);
	free(s);
}

static int zlib_recv_setup(void **state, struct kv_error *err)
{
	/* The receiver needs no bounce page. */
	z_stream *zs = calloc(1, sizeof(*zs));
	int ret;

	if (!zs)
		return kv_error_set(err, -ENOMEM, "out of memory for a zlib codec");
	ret = inflateInit(zs);
	if (ret != Z_OK) {
		free(zs);
		return kv_error_set(err, -ENOMEM, "zlib: inflateInit failed (%d)", ret);
	}
	*state = zs;
	return 0;
}

static void zlib_recv_cleanup(void *state)
{
	inflateEnd(state);
	free(state);
}

static int zlib_compress(void *state, const uint8_t *const pages[], size_t n,
			 uint8_t *out, size_t out_max, size_t *out_len,
			 struct kv_error *err)
{
	struct zlib_state *s = state;
	z_stream *zs = &s->zs;
	uInt room = out_max > UINT_MAX ? UINT_MAX : (uInt)out_max;

	zs->next_out = out;
	zs->avail_out = room;
	for (size_t i = 0; i < n; i++) {
		int flush = i == n - 1 ? Z_SYNC_FLUSH : Z_NO_FLUSH;

		/* deflate may read its input more than once: give it a
		 * copy that cannot change under it. */
		memcpy(s->bounce, pages[i], KV_PAGE_SIZE);
		zs->next_in = s->bounce;
		zs->avail_in = KV_PAGE_SIZE;
		for (;;) {
			int ret = deflate(zs, flush);

			if (ret != Z_OK && ret != Z_BUF_ERROR)
				return kv_error_set(err, -EIO, "zlib: deflate failed (%d) at page %zu of %zu", ret, i, n);
			if (zs->avail_in == 0 &&
			    (flush == Z_NO_FLUSH || zs->avail_out > 0))
				break;
			if (zs->avail_out == 0)
				return kv_error_set(err, -ENOSPC, "zlib: %zu bytes of room are not enough for %zu pages", out_max, n);
		}
	}
	*out_len = room - zs->avail_out;
	return 0;
}

static int zlib_error(const z_stream *zs, int ret, size_t page, size_t n,
		      struct kv_error *err)
{
	return kv_error_set(err, -EINVAL, "zlib payload: corrupt at page %zu of %zu: %s (inflate %d)", page, n, zs->msg ? zs->msg : "no detail", ret);
}

/* Inflate exactly one page into dst: 0 or -EINVAL. */
static int zlib_inflate_page(z_stream *zs, uint8_t *dst, size_t page, size_t n,
			     struct kv_error *err)
{
	zs->next_out = dst;
	zs->avail_out = KV_PAGE_SIZE;
	while (zs->avail_out > 0) {
		int ret = inflate(zs, Z_NO_FLUSH);

		if (ret == Z_STREAM_END)
			return kv_error_set(err, -EINVAL, "zlib payload: the stream ends at page %zu of %zu (a multifd stream never ends)", page, n);
		if (ret == Z_BUF_ERROR)
			return kv_error_set(err, -EINVAL, "zlib payload: truncated: it decodes to %zu of %zu bytes", page * KV_PAGE_SIZE + KV_PAGE_SIZE - zs->avail_out, n * KV_PAGE_SIZE);
		if (ret != Z_OK)
			return zlib_error(zs, ret, page, n, err);
	}
	return 0;
}

/* After the n pages: the rest of the input must decode to nothing and
 * leave the stream between two blocks. */
static int zlib_check_end(z_stream *zs, size_t n, struct kv_error *err)
{
	/* data_type as the last call that moved the stream left it: a call
	 * that makes no progress resets its "between blocks" bit. */
	int type = zs->data_type;
	uint8_t extra;

	do {
		int ret;

		zs->next_out = &extra;
		zs->avail_out = 1;
		ret = inflate(zs, Z_NO_FLUSH);
		if (zs->avail_out == 0 || ret == Z_STREAM_END)
			return kv_error_set(err, -EINVAL, "zlib payload: decodes to more than %zu pages", n);
		if (ret == Z_BUF_ERROR)
			break;
		if (ret != Z_OK)
			return zlib_error(zs, ret, n, n, err);
		type = zs->data_type;
	} while (zs->avail_in > 0);
	if (zs->avail_in > 0)
		return kv_error_set(err, -EINVAL, "zlib payload: %u bytes left over after %zu pages", zs->avail_in, n);
	/* 128: between two blocks; 64: in the last block (never sent). */
	if (!(type & 128) || (type & 64))
		return kv_error_set(err, -EINVAL, "zlib payload: does not end between two deflate blocks after %zu pages (cut short, or extra data)", n);
	return 0;
}

static int zlib_decompress(void *state, const uint8_t *in, size_t len,
			   uint8_t *const pages[], size_t n,
			   struct kv_error *err)
{
	static const uint8_t sync_flush[4] = {0x00, 0x00, 0xff, 0xff};
	z_stream *zs = state;
	int ret;

	/* Every packet's deflate ended with Z_SYNC_FLUSH. */
	if (len < sizeof(sync_flush) || memcmp(in + len - sizeof(sync_flush),
					       sync_flush, sizeof(sync_flush)))
		return kv_error_set(err, -EINVAL, "zlib payload: %zu bytes that do not end with a sync flush (00 00 ff ff): truncated or not zlib", len);
	if (len > UINT_MAX)
		return kv_error_set(err, -EINVAL, "zlib payload: %zu bytes, too long", len);
	zs->next_in = (Bytef *)(uintptr_t)in;
	zs->avail_in = (uInt)len;
	for (size_t i = 0; i < n; i++) {
		ret = zlib_inflate_page(zs, pages[i], i, n, err);
		if (ret < 0)
			return ret;
	}
	return zlib_check_end(zs, n, err);
}

const struct kv_codec_ops kv_codec_zlib = {
    .name = "zlib",
    .method = KV_MFD_METHOD_ZLIB,
    .wire_flag = KV_MFD_FLAG_ZLIB,
    .level_param = "multifd-zlib-level",
    .level_max = KV_MFD_ZLIB_LEVEL_MAX,
    .default_level = 1,
    .streaming = true,
    .bound = zlib_bound,
    .send_setup = zlib_send_setup,
    .send_cleanup = zlib_send_cleanup,
    .recv_setup = zlib_recv_setup,
    .recv_cleanup = zlib_recv_cleanup,
    .compress = zlib_compress,
    .decompress = zlib_decompress,
};
