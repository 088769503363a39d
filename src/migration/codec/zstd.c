/* SPDX-License-Identifier: MIT */
/*
 * The "zstd" method (codec.h), QEMU's multifd-zstd layout: one zstd stream
 * per channel and direction for the whole migration, every packet's
 * payload ending with a flush. The decoder writes through zstd's bounded
 * output buffers only, then proves the payload was exactly n pages. The
 * main stream's ZPAGES records (ram_compress.c) use this codec too.
 */
#include "base/units.h"
#include "migration/codec/codec.h"

#include <errno.h>

#include <zstd.h>

/* A zstd block header; ZSTD_decompressStream() asks for one when it sits
 * between two blocks. */
#define ZSTD_BLOCK_HEADER 3U

static size_t zstd_bound(size_t n)
{
	/* Plus a frame header and a block header per flush. */
	return ZSTD_compressBound(n * KV_PAGE_SIZE) + 64;
}

static int zstd_send_setup(void **state, int level, struct kv_error *err)
{
	ZSTD_CCtx *cctx = ZSTD_createCCtx();
	size_t r;

	if (!cctx)
		return kv_error_set(err, -ENOMEM, "zstd: ZSTD_createCCtx failed");
	r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
	if (ZSTD_isError(r)) {
		ZSTD_freeCCtx(cctx);
		return kv_error_set(err, -EINVAL, "zstd: setup failed: %s", ZSTD_getErrorName(r));
	}
	*state = cctx;
	return 0;
}

static void zstd_send_cleanup(void *state)
{
	ZSTD_freeCCtx(state);
}

static int zstd_recv_setup(void **state, struct kv_error *err)
{
	ZSTD_DCtx *dctx = ZSTD_createDCtx();
	size_t r;

	if (!dctx)
		return kv_error_set(err, -ENOMEM, "zstd: ZSTD_createDCtx failed");
	r = ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax,
				   KV_MFD_ZSTD_WINDOW_LOG_MAX);
	if (ZSTD_isError(r)) {
		ZSTD_freeDCtx(dctx);
		return kv_error_set(err, -EINVAL, "zstd: setup failed: %s", ZSTD_getErrorName(r));
	}
	*state = dctx;
	return 0;
}

static void zstd_recv_cleanup(void *state)
{
	ZSTD_freeDCtx(state);
}

/* One page into ob: continue, or flush at the packet's last page. */
static int zstd_compress_page(ZSTD_CCtx *cctx, ZSTD_outBuffer *ob,
			      const uint8_t *page, bool last, size_t i,
			      size_t n, struct kv_error *err)
{
	ZSTD_EndDirective mode = last ? ZSTD_e_flush : ZSTD_e_continue;
	ZSTD_inBuffer ib = {page, KV_PAGE_SIZE, 0};

	for (;;) {
		size_t in0 = ib.pos, out0 = ob->pos;
		size_t r = ZSTD_compressStream2(cctx, ob, &ib, mode);

		if (ZSTD_isError(r))
			return kv_error_set(err, -EIO, "zstd: compression failed at page %zu of %zu: %s", i, n, ZSTD_getErrorName(r));
		if (mode == ZSTD_e_continue ? ib.pos == ib.size : r == 0)
			return 0;
		if (ob->pos == ob->size)
			return kv_error_set(err, -ENOSPC, "zstd: %zu bytes of room are not enough for %zu pages", ob->size, n);
		if (ib.pos == in0 && ob->pos == out0)
			return kv_error_set(err, -EIO, "zstd: compression makes no progress at page %zu", i);
	}
}

static int zstd_compress(void *state, const uint8_t *const pages[], size_t n,
			 uint8_t *out, size_t out_max, size_t *out_len,
			 struct kv_error *err)
{
	ZSTD_outBuffer ob = {out, out_max, 0};

	for (size_t i = 0; i < n; i++) {
		int ret = zstd_compress_page(state, &ob, pages[i], i == n - 1,
					     i, n, err);

		if (ret < 0)
			return ret;
	}
	*out_len = ob.pos;
	return 0;
}

/* Exactly one page out of ib into dst. */
static int zstd_decompress_page(ZSTD_DCtx *dctx, ZSTD_inBuffer *ib,
				uint8_t *dst, size_t i, size_t n,
				struct kv_error *err)
{
	ZSTD_outBuffer ob = {dst, KV_PAGE_SIZE, 0};

	while (ob.pos < ob.size) {
		size_t in0 = ib->pos, out0 = ob.pos;
		size_t r = ZSTD_decompressStream(dctx, &ob, ib);

		if (ZSTD_isError(r))
			return kv_error_set(err, -EINVAL, "zstd payload: corrupt at page %zu of %zu: %s", i, n, ZSTD_getErrorName(r));
		if (ib->pos == in0 && ob.pos == out0)
			return kv_error_set(err, -EINVAL, "zstd payload: truncated: it decodes to %zu of %zu bytes", i * KV_PAGE_SIZE + ob.pos, n * KV_PAGE_SIZE);
	}
	return 0;
}

/* After the n pages nothing more may come out, whether buffered or still
 * in the input, and the stream must stop between two blocks. */
static int zstd_check_end(ZSTD_DCtx *dctx, ZSTD_inBuffer *ib, size_t n,
			  struct kv_error *err)
{
	size_t r = 0;
	uint8_t extra;

	do {
		ZSTD_outBuffer ob = {&extra, 1, 0};
		size_t in0 = ib->pos;

		r = ZSTD_decompressStream(dctx, &ob, ib);
		if (ZSTD_isError(r))
			return kv_error_set(err, -EINVAL, "zstd payload: corrupt after %zu pages: %s", n, ZSTD_getErrorName(r));
		if (ob.pos)
			return kv_error_set(err, -EINVAL, "zstd payload: decodes to more than %zu pages", n);
		if (ib->pos == in0)
			break;
	} while (ib->pos < ib->size);
	if (ib->pos < ib->size || (r != 0 && r != ZSTD_BLOCK_HEADER))
		return kv_error_set(err, -EINVAL, "zstd payload: %zu bytes left over after %zu pages, or it stops inside a block", ib->size - ib->pos, n);
	return 0;
}

static int zstd_decompress(void *state, const uint8_t *in, size_t len,
			   uint8_t *const pages[], size_t n,
			   struct kv_error *err)
{
	ZSTD_inBuffer ib = {in, len, 0};

	for (size_t i = 0; i < n; i++) {
		int ret = zstd_decompress_page(state, &ib, pages[i], i, n, err);

		if (ret < 0)
			return ret;
	}
	return zstd_check_end(state, &ib, n, err);
}

const struct kv_codec_ops kv_codec_zstd = {
    .name = "zstd",
    .method = KV_MFD_METHOD_ZSTD,
    .wire_flag = KV_MFD_FLAG_ZSTD,
    .level_param = "multifd-zstd-level",
    .level_max = KV_MFD_ZSTD_LEVEL_MAX,
    .default_level = 1,
    .streaming = true,
    .bound = zstd_bound,
    .send_setup = zstd_send_setup,
    .send_cleanup = zstd_send_cleanup,
    .recv_setup = zstd_recv_setup,
    .recv_cleanup = zstd_recv_cleanup,
    .compress = zstd_compress,
    .decompress = zstd_decompress,
};
