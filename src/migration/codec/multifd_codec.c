/* SPDX-License-Identifier: MIT */
/*
 * Per-channel multifd payload codecs (multifd_codec.h): none, zlib and zstd
 * in QEMU's persistent-stream layouts, and kvmig's one-block-per-packet
 * lz4. Every decoder writes only through bounded library calls into the
 * caller's pages (zlib's avail_out, zstd's output buffer, LZ4's
 * dstCapacity), then proves the payload was exactly n pages.
 */
#include "migration/codec/multifd_codec.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <zlib.h>
#include <zstd.h>

#define PAGE KV_MFD_PAGE_SIZE
/* A zstd block header; ZSTD_decompressStream() asks for one when it sits
 * between two blocks. */
#define ZSTD_BLOCK_HEADER 3U

struct kv_mfd_codec {
	enum kv_mfd_method method;
	bool compress;
	bool broken; /* an error left the stream state unknown */
	bool zs_ready;
	z_stream zs;
	ZSTD_CCtx *cctx;
	ZSTD_DCtx *dctx;
	/* zlib: one page of bounce; lz4: the packet's pages in one piece. */
	uint8_t *scratch;
	size_t scratch_pages;
};

static const char *const method_names[KV_MFD_METHOD_COUNT] = {
    [KV_MFD_METHOD_NONE] = "none",
    [KV_MFD_METHOD_ZLIB] = "zlib",
    [KV_MFD_METHOD_ZSTD] = "zstd",
    [KV_MFD_METHOD_LZ4] = "lz4",
};

const char *kv_mfd_method_name(enum kv_mfd_method method)
{
	if ((unsigned)method >= KV_MFD_METHOD_COUNT)
		return "unknown";
	return method_names[method];
}

int kv_mfd_method_parse(const char *name, enum kv_mfd_method *method,
			struct kv_error *err)
{
	for (int m = 0; m < KV_MFD_METHOD_COUNT; m++) {
		if (!strcmp(name, method_names[m])) {
			*method = (enum kv_mfd_method)m;
			return 0;
		}
	}
	return kv_error_set(err, -EINVAL,
			    "multifd-compression '%s' unknown (none, zlib, "
			    "zstd or lz4)",
			    name);
}

enum kv_mfd_method kv_mfd_codec_method(const struct kv_mfd_codec *codec)
{
	return codec->method;
}

size_t kv_mfd_compress_bound(enum kv_mfd_method method, size_t n)
{
	size_t raw = n * PAGE;

	switch (method) {
	case KV_MFD_METHOD_ZLIB:
		/* compressBound() plus the stream header and a sync flush. */
		return (size_t)compressBound((uLong)raw) + 32;
	case KV_MFD_METHOD_ZSTD:
		/* Plus a frame header and a block header per flush. */
		return ZSTD_compressBound(raw) + 64;
	case KV_MFD_METHOD_LZ4:
		return (size_t)LZ4_compressBound((int)raw);
	default:
		return raw;
	}
}

/* ---- setup ---- */

static int scratch_reserve(struct kv_mfd_codec *c, size_t pages,
			   struct kv_error *err)
{
	uint8_t *p;

	if (c->scratch_pages >= pages)
		return 0;
	p = realloc(c->scratch, pages * PAGE);
	if (!p)
		return kv_error_set(err, -ENOMEM,
				    "%s codec: out of memory for %zu pages of "
				    "scratch",
				    kv_mfd_method_name(c->method), pages);
	c->scratch = p;
	c->scratch_pages = pages;
	return 0;
}

static int zlib_setup(struct kv_mfd_codec *c, int level, struct kv_error *err)
{
	int ret;

	if (level == KV_MFD_LEVEL_DEFAULT)
		level = 1;
	if (level < 0 || level > KV_MFD_ZLIB_LEVEL_MAX)
		return kv_error_set(err, -EINVAL,
				    "multifd-zlib-level %d outside 0..%d",
				    level, KV_MFD_ZLIB_LEVEL_MAX);
	if (c->compress)
		ret = deflateInit(&c->zs, level);
	else
		ret = inflateInit(&c->zs);
	if (ret != Z_OK)
		return kv_error_set(err, -ENOMEM, "zlib: %s failed (%d)",
				    c->compress ? "deflateInit" : "inflateInit",
				    ret);
	c->zs_ready = true;
	return c->compress ? scratch_reserve(c, 1, err) : 0;
}

static int zstd_setup(struct kv_mfd_codec *c, int level, struct kv_error *err)
{
	size_t r;

	if (level == KV_MFD_LEVEL_DEFAULT)
		level = 1;
	if (level < 0 || level > KV_MFD_ZSTD_LEVEL_MAX)
		return kv_error_set(err, -EINVAL,
				    "multifd-zstd-level %d outside 0..%d",
				    level, KV_MFD_ZSTD_LEVEL_MAX);
	if (c->compress) {
		c->cctx = ZSTD_createCCtx();
		if (!c->cctx)
			return kv_error_set(err, -ENOMEM,
					    "zstd: ZSTD_createCCtx failed");
		r = ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel,
					   level);
	} else {
		c->dctx = ZSTD_createDCtx();
		if (!c->dctx)
			return kv_error_set(err, -ENOMEM,
					    "zstd: ZSTD_createDCtx failed");
		r = ZSTD_DCtx_setParameter(c->dctx, ZSTD_d_windowLogMax,
					   KV_MFD_ZSTD_WINDOW_LOG_MAX);
	}
	if (ZSTD_isError(r))
		return kv_error_set(err, -EINVAL, "zstd: setup failed: %s",
				    ZSTD_getErrorName(r));
	return 0;
}

struct kv_mfd_codec *kv_mfd_codec_new(enum kv_mfd_method method, int level,
				      bool compress, struct kv_error *err)
{
	struct kv_mfd_codec *c;
	int ret = 0;

	if ((unsigned)method >= KV_MFD_METHOD_COUNT) {
		kv_error_set(err, -EINVAL,
			     "multifd compression method %d "
			     "unknown",
			     (int)method);
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		kv_error_set(err, -ENOMEM, "out of memory for a %s codec",
			     kv_mfd_method_name(method));
		return NULL;
	}
	c->method = method;
	c->compress = compress;
	if (method == KV_MFD_METHOD_ZLIB)
		ret = zlib_setup(c, level, err);
	else if (method == KV_MFD_METHOD_ZSTD)
		ret = zstd_setup(c, level, err);
	if (ret < 0) {
		kv_mfd_codec_free(c);
		return NULL;
	}
	return c;
}

void kv_mfd_codec_free(struct kv_mfd_codec *codec)
{
	if (!codec)
		return;
	if (codec->zs_ready) {
		if (codec->compress)
			deflateEnd(&codec->zs);
		else
			inflateEnd(&codec->zs);
	}
	ZSTD_freeCCtx(codec->cctx);
	ZSTD_freeDCtx(codec->dctx);
	free(codec->scratch);
	free(codec);
}

/* ---- none ---- */

static int none_compress(const uint8_t *const pages[], size_t n, uint8_t *out,
			 size_t out_max, size_t *out_len, struct kv_error *err)
{
	if (out_max < n * PAGE)
		return kv_error_set(err, -ENOSPC,
				    "none payload: %zu bytes of room for %zu "
				    "pages",
				    out_max, n);
	for (size_t i = 0; i < n; i++)
		memcpy(out + i * PAGE, pages[i], PAGE);
	*out_len = n * PAGE;
	return 0;
}

static int none_decompress(const uint8_t *in, size_t len,
			   uint8_t *const pages[], size_t n,
			   struct kv_error *err)
{
	if (len != n * PAGE)
		return kv_error_set(err, -EINVAL,
				    "none payload: %zu bytes for %zu pages "
				    "(must be %zu)",
				    len, n, n * PAGE);
	for (size_t i = 0; i < n; i++)
		memcpy(pages[i], in + i * PAGE, PAGE);
	return 0;
}

/* ---- zlib ---- */

static int zlib_compress(struct kv_mfd_codec *c, const uint8_t *const pages[],
			 size_t n, uint8_t *out, size_t out_max,
			 size_t *out_len, struct kv_error *err)
{
	z_stream *zs = &c->zs;
	uInt room = out_max > UINT_MAX ? UINT_MAX : (uInt)out_max;

	zs->next_out = out;
	zs->avail_out = room;
	for (size_t i = 0; i < n; i++) {
		int flush = i == n - 1 ? Z_SYNC_FLUSH : Z_NO_FLUSH;

		/* deflate may read its input more than once: give it a
		 * copy that cannot change under it. */
		memcpy(c->scratch, pages[i], PAGE);
		zs->next_in = c->scratch;
		zs->avail_in = PAGE;
		for (;;) {
			int ret = deflate(zs, flush);

			if (ret != Z_OK && ret != Z_BUF_ERROR)
				return kv_error_set(err, -EIO,
						    "zlib: deflate failed "
						    "(%d) at page %zu of %zu",
						    ret, i, n);
			if (zs->avail_in == 0 &&
			    (flush == Z_NO_FLUSH || zs->avail_out > 0))
				break;
			if (zs->avail_out == 0)
				return kv_error_set(err, -ENOSPC,
						    "zlib: %zu bytes of room "
						    "are not enough for %zu "
						    "pages",
						    out_max, n);
		}
	}
	*out_len = room - zs->avail_out;
	return 0;
}

static int zlib_error(const z_stream *zs, int ret, size_t page, size_t n,
		      struct kv_error *err)
{
	return kv_error_set(err, -EINVAL,
			    "zlib payload: corrupt at page %zu of %zu: %s "
			    "(inflate %d)",
			    page, n, zs->msg ? zs->msg : "no detail", ret);
}

/* Inflate exactly one page into dst: 0 or -EINVAL. */
static int zlib_inflate_page(z_stream *zs, uint8_t *dst, size_t page, size_t n,
			     struct kv_error *err)
{
	zs->next_out = dst;
	zs->avail_out = PAGE;
	while (zs->avail_out > 0) {
		int ret = inflate(zs, Z_NO_FLUSH);

		if (ret == Z_STREAM_END)
			return kv_error_set(err, -EINVAL,
					    "zlib payload: the stream ends at "
					    "page %zu of %zu (a multifd stream "
					    "never ends)",
					    page, n);
		if (ret == Z_BUF_ERROR)
			return kv_error_set(err, -EINVAL,
					    "zlib payload: truncated: it "
					    "decodes to %zu of %zu bytes",
					    page * PAGE + PAGE - zs->avail_out,
					    n * PAGE);
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
			return kv_error_set(err, -EINVAL,
					    "zlib payload: decodes to more "
					    "than %zu pages",
					    n);
		if (ret == Z_BUF_ERROR)
			break;
		if (ret != Z_OK)
			return zlib_error(zs, ret, n, n, err);
		type = zs->data_type;
	} while (zs->avail_in > 0);
	if (zs->avail_in > 0)
		return kv_error_set(err, -EINVAL,
				    "zlib payload: %u bytes left over after "
				    "%zu pages",
				    zs->avail_in, n);
	/* 128: between two blocks; 64: in the last block (never sent). */
	if (!(type & 128) || (type & 64))
		return kv_error_set(err, -EINVAL,
				    "zlib payload: does not end between two "
				    "deflate blocks after %zu pages (cut "
				    "short, or extra data)",
				    n);
	return 0;
}

static int zlib_decompress(struct kv_mfd_codec *c, const uint8_t *in,
			   size_t len, uint8_t *const pages[], size_t n,
			   struct kv_error *err)
{
	static const uint8_t sync_flush[4] = {0x00, 0x00, 0xff, 0xff};
	z_stream *zs = &c->zs;
	int ret;

	/* Every packet's deflate ended with Z_SYNC_FLUSH. */
	if (len < sizeof(sync_flush) || memcmp(in + len - sizeof(sync_flush),
					       sync_flush, sizeof(sync_flush)))
		return kv_error_set(err, -EINVAL,
				    "zlib payload: %zu bytes that do not end "
				    "with a sync flush (00 00 ff ff): "
				    "truncated or not zlib",
				    len);
	if (len > UINT_MAX)
		return kv_error_set(err, -EINVAL,
				    "zlib payload: %zu bytes, too long", len);
	zs->next_in = (Bytef *)(uintptr_t)in;
	zs->avail_in = (uInt)len;
	for (size_t i = 0; i < n; i++) {
		ret = zlib_inflate_page(zs, pages[i], i, n, err);
		if (ret < 0)
			return ret;
	}
	return zlib_check_end(zs, n, err);
}

/* ---- zstd ---- */

static int zstd_compress(struct kv_mfd_codec *c, const uint8_t *const pages[],
			 size_t n, uint8_t *out, size_t out_max,
			 size_t *out_len, struct kv_error *err)
{
	ZSTD_outBuffer ob = {out, out_max, 0};

	for (size_t i = 0; i < n; i++) {
		ZSTD_EndDirective mode =
		    i == n - 1 ? ZSTD_e_flush : ZSTD_e_continue;
		ZSTD_inBuffer ib = {pages[i], PAGE, 0};

		for (;;) {
			size_t in0 = ib.pos, out0 = ob.pos;
			size_t r =
			    ZSTD_compressStream2(c->cctx, &ob, &ib, mode);

			if (ZSTD_isError(r))
				return kv_error_set(err, -EIO,
						    "zstd: compression failed "
						    "at page %zu of %zu: %s",
						    i, n, ZSTD_getErrorName(r));
			if (mode == ZSTD_e_continue ? ib.pos == ib.size
						    : r == 0)
				break;
			if (ob.pos == ob.size)
				return kv_error_set(err, -ENOSPC,
						    "zstd: %zu bytes of room "
						    "are not enough for %zu "
						    "pages",
						    out_max, n);
			if (ib.pos == in0 && ob.pos == out0)
				return kv_error_set(err, -EIO,
						    "zstd: compression makes "
						    "no progress at page %zu",
						    i);
		}
	}
	*out_len = ob.pos;
	return 0;
}

static int zstd_decompress(struct kv_mfd_codec *c, const uint8_t *in,
			   size_t len, uint8_t *const pages[], size_t n,
			   struct kv_error *err)
{
	ZSTD_inBuffer ib = {in, len, 0};
	size_t r = 0;
	uint8_t extra;

	for (size_t i = 0; i < n; i++) {
		ZSTD_outBuffer ob = {pages[i], PAGE, 0};

		while (ob.pos < ob.size) {
			size_t in0 = ib.pos, out0 = ob.pos;

			r = ZSTD_decompressStream(c->dctx, &ob, &ib);
			if (ZSTD_isError(r))
				return kv_error_set(err, -EINVAL,
						    "zstd payload: corrupt at "
						    "page %zu of %zu: %s",
						    i, n, ZSTD_getErrorName(r));
			if (ib.pos == in0 && ob.pos == out0)
				return kv_error_set(err, -EINVAL,
						    "zstd payload: truncated: "
						    "it decodes to %zu of %zu "
						    "bytes",
						    i * PAGE + ob.pos,
						    n * PAGE);
		}
	}
	/* Nothing more may come out, whether buffered or still in the
	 * input, and the stream must stop between two blocks. */
	do {
		ZSTD_outBuffer ob = {&extra, 1, 0};
		size_t in0 = ib.pos;

		r = ZSTD_decompressStream(c->dctx, &ob, &ib);
		if (ZSTD_isError(r))
			return kv_error_set(err, -EINVAL,
					    "zstd payload: corrupt after %zu "
					    "pages: %s",
					    n, ZSTD_getErrorName(r));
		if (ob.pos)
			return kv_error_set(err, -EINVAL,
					    "zstd payload: decodes to more "
					    "than %zu pages",
					    n);
		if (ib.pos == in0)
			break;
	} while (ib.pos < ib.size);
	if (ib.pos < ib.size || (r != 0 && r != ZSTD_BLOCK_HEADER))
		return kv_error_set(err, -EINVAL,
				    "zstd payload: %zu bytes left over after "
				    "%zu pages, or it stops inside a block",
				    ib.size - ib.pos, n);
	return 0;
}

/* ---- lz4 ---- */

static int lz4_compress(struct kv_mfd_codec *c, const uint8_t *const pages[],
			size_t n, uint8_t *out, size_t out_max, size_t *out_len,
			struct kv_error *err)
{
	int room = out_max > INT_MAX ? INT_MAX : (int)out_max;
	int ret = scratch_reserve(c, n, err);

	if (ret < 0)
		return ret;
	for (size_t i = 0; i < n; i++)
		memcpy(c->scratch + i * PAGE, pages[i], PAGE);
	ret = LZ4_compress_default((const char *)c->scratch, (char *)out,
				   (int)(n * PAGE), room);
	if (ret <= 0)
		return kv_error_set(err, -ENOSPC,
				    "lz4: %zu bytes of room are not enough "
				    "for %zu pages",
				    out_max, n);
	*out_len = (size_t)ret;
	return 0;
}

static int lz4_decompress(struct kv_mfd_codec *c, const uint8_t *in, size_t len,
			  uint8_t *const pages[], size_t n,
			  struct kv_error *err)
{
	uint8_t *dst = pages[0];
	int ret;

	if (len > INT_MAX)
		return kv_error_set(err, -EINVAL,
				    "lz4 payload: %zu bytes, too long", len);
	/* One page decodes in place; several need one contiguous piece. */
	if (n > 1) {
		ret = scratch_reserve(c, n, err);
		if (ret < 0)
			return ret;
		dst = c->scratch;
	}
	ret = LZ4_decompress_safe((const char *)in, (char *)dst, (int)len,
				  (int)(n * PAGE));
	if (ret < 0)
		return kv_error_set(err, -EINVAL,
				    "lz4 payload: corrupt, or decodes to more "
				    "than %zu pages (LZ4 error at input byte "
				    "%d of %zu)",
				    n, -ret - 1, len);
	if ((size_t)ret != n * PAGE)
		return kv_error_set(err, -EINVAL,
				    "lz4 payload: decodes to %d bytes, not "
				    "the %zu of %zu pages",
				    ret, n * PAGE, n);
	if (n > 1) {
		for (size_t i = 0; i < n; i++)
			memcpy(pages[i], dst + i * PAGE, PAGE);
	}
	return 0;
}

/* ---- dispatch ---- */

static int check_call(struct kv_mfd_codec *c, bool compress, size_t n,
		      struct kv_error *err)
{
	const char *name = kv_mfd_method_name(c->method);

	if (c->compress != compress)
		return kv_error_set(err, -EINVAL,
				    "%s codec: made to %s, asked to %s", name,
				    c->compress ? "compress" : "decompress",
				    compress ? "compress" : "decompress");
	if (c->broken)
		return kv_error_set(err, -EIO,
				    "%s codec: unusable after an earlier "
				    "error (the stream state is lost)",
				    name);
	if (n == 0 || n > KV_MFD_PAGES_LIMIT)
		return kv_error_set(err, -EINVAL,
				    "%s codec: %zu pages (must be 1..%u)", name,
				    n, KV_MFD_PAGES_LIMIT);
	return 0;
}

int kv_mfd_compress(struct kv_mfd_codec *codec, const uint8_t *const pages[],
		    size_t n, uint8_t *out, size_t out_max, size_t *out_len,
		    struct kv_error *err)
{
	int ret = check_call(codec, true, n, err);

	if (ret < 0)
		return ret;
	switch (codec->method) {
	case KV_MFD_METHOD_ZLIB:
		ret =
		    zlib_compress(codec, pages, n, out, out_max, out_len, err);
		break;
	case KV_MFD_METHOD_ZSTD:
		ret =
		    zstd_compress(codec, pages, n, out, out_max, out_len, err);
		break;
	case KV_MFD_METHOD_LZ4:
		return lz4_compress(codec, pages, n, out, out_max, out_len,
				    err);
	default:
		return none_compress(pages, n, out, out_max, out_len, err);
	}
	if (ret < 0)
		codec->broken = true;
	return ret;
}

int kv_mfd_decompress(struct kv_mfd_codec *codec, const uint8_t *in, size_t len,
		      uint8_t *const pages[], size_t n, struct kv_error *err)
{
	int ret = check_call(codec, false, n, err);

	if (ret < 0)
		return ret;
	switch (codec->method) {
	case KV_MFD_METHOD_ZLIB:
		ret = zlib_decompress(codec, in, len, pages, n, err);
		break;
	case KV_MFD_METHOD_ZSTD:
		ret = zstd_decompress(codec, in, len, pages, n, err);
		break;
	case KV_MFD_METHOD_LZ4:
		return lz4_decompress(codec, in, len, pages, n, err);
	default:
		return none_decompress(in, len, pages, n, err);
	}
	if (ret < 0)
		codec->broken = true;
	return ret;
}
