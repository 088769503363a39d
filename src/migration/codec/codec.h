/* SPDX-License-Identifier: MIT */
/*
 * Page codecs: the compression methods of multifd packet payloads (the
 * normal pages of a packet, multifd_packet.h), one file each behind one
 * const ops struct, as QEMU's multifd methods are:
 *
 *  - none.c: the pages concatenated.
 *  - zlib.c: ONE zlib stream (deflateInit, with its 2-byte header in the
 *    channel's first packet) for the whole migration on each channel. Each
 *    packet deflates its pages in order, every page with Z_NO_FLUSH but the
 *    last with Z_SYNC_FLUSH, so each payload ends on a byte boundary with
 *    the empty stored block 00 00 ff ff; the receiver inflates with its own
 *    persistent stream. Pages are copied to a bounce buffer before deflate
 *    (as QEMU 9.x does): a guest page may change while it is compressed.
 *  - zstd.c: ONE zstd stream per channel likewise: ZSTD_e_continue for
 *    every page but the last, ZSTD_e_flush at the last.
 *  - lz4.c (kvmig only; QEMU has no lz4 multifd): each payload is one LZ4
 *    block (the LZ4 block format, no frame) of the packet's pages
 *    concatenated; no state crosses packets.
 *
 * codec.c holds the one table of methods (their ops, indexed by enum
 * kv_mfd_method) and the checks every method shares. A method is added
 * with its file, its entry in the table and its value in enum
 * kv_mfd_method (multifd_packet.h).
 *
 * One codec per channel and direction, used by one thread at a time, and
 * for every packet of the channel in order: packets of one channel cannot
 * be decoded out of order or skipped (zlib and zstd). After any error the
 * stream state of a streaming method is unknown and the codec refuses
 * further work.
 *
 * The decoder writes only inside the n pages it is given, whatever the
 * input, and fails unless the payload decodes to exactly n * 4096 bytes and
 * is consumed entirely. Messages name the method and what is wrong ("zlib
 * payload: ..."); the caller prefixes channel and packet.
 */
#ifndef KV_MIGRATION_CODEC_H
#define KV_MIGRATION_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "migration/multifd/multifd_packet.h"

/* The library's default level: 1 for zlib and zstd (QEMU's defaults of
 * multifd-zlib-level and multifd-zstd-level). */
#define KV_MFD_LEVEL_DEFAULT  (-1)
#define KV_MFD_ZLIB_LEVEL_MAX 9
#define KV_MFD_ZSTD_LEVEL_MAX 20
/* The decoder's zstd window limit (2^25 = 32 MiB: what zstd level 20, the
 * highest QEMU allows, uses), so a peer cannot make it allocate more. */
#define KV_MFD_ZSTD_WINDOW_LOG_MAX 25

/*
 * One compression method. The state functions make and free one channel's
 * state for one direction (NULL: the method keeps none); compress and
 * decompress get that state and are called only after codec.c checked the
 * direction, the page count (1..KV_MFD_PAGES_LIMIT) and the error latch.
 */
struct kv_codec_ops {
	const char *name; /* QMP multifd-compression value */
	enum kv_mfd_method method;
	uint32_t wire_flag; /* the packet flag bits (KV_MFD_FLAG_*) */
	/* Levels 0..level_max, default_level for KV_MFD_LEVEL_DEFAULT,
	 * named level_param in errors; level_param NULL: no level. */
	const char *level_param;
	int level_max, default_level;
	/* State crosses packets: after an error the codec is unusable. */
	bool streaming;
	/* The most bytes compress writes for n pages. */
	size_t (*bound)(size_t n);
	int (*send_setup)(void **state, int level, struct kv_error *err);
	void (*send_cleanup)(void *state);
	int (*recv_setup)(void **state, struct kv_error *err);
	void (*recv_cleanup)(void *state);
	int (*compress)(void *state, const uint8_t *const pages[], size_t n,
			uint8_t *out, size_t out_max, size_t *out_len,
			struct kv_error *err);
	int (*decompress)(void *state, const uint8_t *in, size_t len,
			  uint8_t *const pages[], size_t n,
			  struct kv_error *err);
};

extern const struct kv_codec_ops kv_codec_none;
extern const struct kv_codec_ops kv_codec_zlib;
extern const struct kv_codec_ops kv_codec_zstd;
extern const struct kv_codec_ops kv_codec_lz4;

/* ---- the registry (codec.c) ---- */

/* The method's ops; NULL for a value outside the enum. */
const struct kv_codec_ops *kv_codec_by_method(enum kv_mfd_method method);
/* The method named name (QMP's value); NULL if none is. */
const struct kv_codec_ops *kv_codec_by_name(const char *name);
/* The method whose packets carry exactly these method flag bits (0 is
 * none); NULL for bits no method of ours uses. */
const struct kv_codec_ops *kv_codec_by_wire_flag(uint32_t bits);

/* "none", "zlib", "zstd", "lz4" (QMP multifd-compression values). */
const char *kv_mfd_method_name(enum kv_mfd_method method);
/* Every method's name in enum order into names; returns how many
 * (KV_MFD_METHOD_COUNT). For option tables and help text. */
size_t kv_mfd_method_names(const char *names[KV_MFD_METHOD_COUNT]);
/* The method of a name; -EINVAL with err listing the valid ones. */
int kv_mfd_method_parse(const char *name, enum kv_mfd_method *method,
			struct kv_error *err);

/* ---- one channel's codec ---- */

struct kv_mfd_codec;

/*
 * A codec for one channel and direction (compress = sender). level:
 * KV_MFD_LEVEL_DEFAULT, or 0..9 for zlib, 0..20 for zstd (0 is zstd's own
 * default, 3); ignored for none and lz4. NULL with err set on a bad level
 * or when the library cannot allocate its stream.
 */
struct kv_mfd_codec *kv_mfd_codec_new(enum kv_mfd_method method, int level,
				      bool compress, struct kv_error *err);
void kv_mfd_codec_free(struct kv_mfd_codec *codec);
enum kv_mfd_method kv_mfd_codec_method(const struct kv_mfd_codec *codec);

/* The most bytes kv_mfd_compress() writes for n pages (<=
 * KV_MFD_PAYLOAD_MAX(n), what the packet decoder accepts). */
size_t kv_mfd_compress_bound(enum kv_mfd_method method, size_t n);

/*
 * Compress n >= 1 pages (4096 bytes each, in packet order) into out (room
 * out_max; kv_mfd_compress_bound() is always enough) and set *out_len.
 * Returns 0, or a negative errno with err set (-ENOSPC: out_max too small;
 * a streaming codec is then unusable, as the stream has moved on).
 */
int kv_mfd_compress(struct kv_mfd_codec *codec, const uint8_t *const pages[],
		    size_t n, uint8_t *out, size_t out_max, size_t *out_len,
		    struct kv_error *err);

/*
 * Decompress one packet's payload (len bytes) into n >= 1 pages of 4096
 * bytes. Returns 0, or -EINVAL with err set when the payload is corrupt,
 * decodes to fewer or more than n pages, or has bytes left over. On error
 * the pages may hold partial data (never more than their 4096 bytes).
 */
int kv_mfd_decompress(struct kv_mfd_codec *codec, const uint8_t *in, size_t len,
		      uint8_t *const pages[], size_t n, struct kv_error *err);

#endif
