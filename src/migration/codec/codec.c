/* SPDX-License-Identifier: MIT */
/*
 * The codec registry (codec.h): the one table of methods, lookups by name,
 * enum value and wire flag, and what every method shares around its ops:
 * levels, the direction, the page count and the error latch.
 */
#include "base/units.h"
#include "migration/codec/codec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Indexed by enum kv_mfd_method (its values are wire bytes of ZPAGES
 * records, docs/FORMAT.md 5.3). */
static const struct kv_codec_ops *const codecs[KV_MFD_METHOD_COUNT] = {
    [KV_MFD_METHOD_NONE] = &kv_codec_none,
    [KV_MFD_METHOD_ZLIB] = &kv_codec_zlib,
    [KV_MFD_METHOD_ZSTD] = &kv_codec_zstd,
    [KV_MFD_METHOD_LZ4] = &kv_codec_lz4,
};

struct kv_mfd_codec {
	const struct kv_codec_ops *ops;
	bool compress;
	bool broken; /* an error left the stream state unknown */
	void *state;
};

const struct kv_codec_ops *kv_codec_by_method(enum kv_mfd_method method)
{
	if ((unsigned)method >= KV_MFD_METHOD_COUNT)
		return NULL;
	return codecs[method];
}

const struct kv_codec_ops *kv_codec_by_name(const char *name)
{
	for (size_t m = 0; m < KV_MFD_METHOD_COUNT; m++)
		if (!strcmp(name, codecs[m]->name))
			return codecs[m];
	return NULL;
}

const struct kv_codec_ops *kv_codec_by_wire_flag(uint32_t bits)
{
	for (size_t m = 0; m < KV_MFD_METHOD_COUNT; m++)
		if (bits == codecs[m]->wire_flag)
			return codecs[m];
	return NULL;
}

const char *kv_mfd_method_name(enum kv_mfd_method method)
{
	const struct kv_codec_ops *ops = kv_codec_by_method(method);

	return ops ? ops->name : "unknown";
}

size_t kv_mfd_method_names(const char *names[KV_MFD_METHOD_COUNT])
{
	for (size_t m = 0; m < KV_MFD_METHOD_COUNT; m++)
		names[m] = codecs[m]->name;
	return KV_MFD_METHOD_COUNT;
}

/* "none, zlib, zstd or lz4" */
static void list_names(char *buf, size_t size)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t m = 0; m < KV_MFD_METHOD_COUNT && used < size; m++) {
		const char *sep = m == 0			  ? ""
				  : m + 1 == KV_MFD_METHOD_COUNT ? " or "
								  : ", ";
		int n = snprintf(buf + used, size - used, "%s%s", sep,
				 codecs[m]->name);

		if (n < 0)
			break;
		used += (size_t)n;
	}
}

int kv_mfd_method_parse(const char *name, enum kv_mfd_method *method,
			struct kv_error *err)
{
	const struct kv_codec_ops *ops = kv_codec_by_name(name);
	char valid[128];

	if (ops) {
		*method = ops->method;
		return 0;
	}
	list_names(valid, sizeof(valid));
	return kv_error_set(err, -EINVAL, "multifd-compression '%s' unknown (%s)", name, valid);
}

enum kv_mfd_method kv_mfd_codec_method(const struct kv_mfd_codec *codec)
{
	return codec->ops->method;
}

size_t kv_mfd_compress_bound(enum kv_mfd_method method, size_t n)
{
	const struct kv_codec_ops *ops = kv_codec_by_method(method);

	return ops ? ops->bound(n) : n * KV_PAGE_SIZE;
}

/* ---- one channel's codec ---- */

static int check_level(const struct kv_codec_ops *ops, int *level,
		       struct kv_error *err)
{
	if (!ops->level_param)
		return 0;
	if (*level == KV_MFD_LEVEL_DEFAULT)
		*level = ops->default_level;
	if (*level < 0 || *level > ops->level_max)
		return kv_error_set(err, -EINVAL, "%s %d outside 0..%d", ops->level_param, *level, ops->level_max);
	return 0;
}

struct kv_mfd_codec *kv_mfd_codec_new(enum kv_mfd_method method, int level,
				      bool compress, struct kv_error *err)
{
	const struct kv_codec_ops *ops = kv_codec_by_method(method);
	struct kv_mfd_codec *c;
	int ret;

	if (!ops) {
		kv_error_set(err, -EINVAL, "multifd compression method %d unknown", (int)method);
		return NULL;
	}
	if (check_level(ops, &level, err) < 0)
		return NULL;
	c = calloc(1, sizeof(*c));
	if (!c) {
		kv_error_set(err, -ENOMEM, "out of memory for a %s codec", ops->name);
		return NULL;
	}
	c->ops = ops;
	c->compress = compress;
	if (compress)
		ret = ops->send_setup ? ops->send_setup(&c->state, level, err)
				      : 0;
	else
		ret = ops->recv_setup ? ops->recv_setup(&c->state, err) : 0;
	if (ret < 0) {
		free(c);
		return NULL;
	}
	return c;
}

void kv_mfd_codec_free(struct kv_mfd_codec *codec)
{
	if (!codec)
		return;
	if (codec->compress && codec->ops->send_cleanup)
		codec->ops->send_cleanup(codec->state);
	else if (!codec->compress && codec->ops->recv_cleanup)
		codec->ops->recv_cleanup(codec->state);
	free(codec);
}

static int check_call(struct kv_mfd_codec *c, bool compress, size_t n,
		      struct kv_error *err)
{
	const char *name = c->ops->name;

	if (c->compress != compress)
		return kv_error_set(err, -EINVAL, "%s codec: made to %s, asked to %s", name, c->compress ? "compress" : "decompress", compress ? "compress" : "decompress");
	if (c->broken)
		return kv_error_set(err, -EIO, "%s codec: unusable after an earlier error (the stream state is lost)", name);
	if (n == 0 || n > KV_MFD_PAGES_LIMIT)
		return kv_error_set(err, -EINVAL, "%s codec: %zu pages (must be 1..%u)", name, n, KV_MFD_PAGES_LIMIT);
	return 0;
}

int kv_mfd_compress(struct kv_mfd_codec *codec, const uint8_t *const pages[],
		    size_t n, uint8_t *out, size_t out_max, size_t *out_len,
		    struct kv_error *err)
{
	int ret = check_call(codec, true, n, err);

	if (ret < 0)
		return ret;
	ret = codec->ops->compress(codec->state, pages, n, out, out_max,
				   out_len, err);
	if (ret < 0 && codec->ops->streaming)
		codec->broken = true;
	return ret;
}

int kv_mfd_decompress(struct kv_mfd_codec *codec, const uint8_t *in, size_t len,
		      uint8_t *const pages[], size_t n, struct kv_error *err)
{
	int ret = check_call(codec, false, n, err);

	if (ret < 0)
		return ret;
	ret = codec->ops->decompress(codec->state, in, len, pages, n, err);
	if (ret < 0 && codec->ops->streaming)
		codec->broken = true;
	return ret;
}
