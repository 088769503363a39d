/* SPDX-License-Identifier: MIT */
/*
 * XBZRLE: the delta encoding of a re-dirtied page against the copy sent
 * before (kept in the page cache, page_cache.h), in QEMU's byte format so
 * that a QEMU destination can decode what kvmig sends and the other way
 * round.
 *
 * The wire format (QEMU docs/xbzrle.txt): the delta is a sequence of pairs
 *
 *     delta = pair | pair delta
 *     pair  = zrun nzrun
 *     zrun  = length                  bytes equal in the old and new page
 *     nzrun = length byte...          bytes that changed, then the new bytes
 *     length = ULEB128, at most 2 bytes (values 0..16383)
 *
 * The runs cover the page from offset 0 in order; an unchanged tail is not
 * sent. Rules a QEMU decoder enforces, and so does kv_xbzrle_decode():
 *  - only the first zero run may have length 0 (a page that changes at
 *    offset 0); a non-zero run never has length 0;
 *  - a length is one byte (< 0x80) or two (low 7 bits with 0x80, then the
 *    high 7 bits with the top bit clear); a third byte does not exist;
 *  - every run stays inside the page, every nzrun's bytes inside the delta;
 *  - the delta ends right after a non-zero run's bytes.
 * kvmig also rejects an empty delta (QEMU's loader refuses length 0) and any
 * byte left once the runs have covered the whole page. Two-byte lengths with
 * a zero high part (0x85 0x00 for 5) are accepted, as QEMU does.
 *
 * The encoder emits the exact runs (each zero run ends at the first changed
 * byte and each non-zero run at the first unchanged one), as QEMU's does.
 */
#ifndef KV_MIGRATION_XBZRLE_H
#define KV_MIGRATION_XBZRLE_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

/* The largest run a 2-byte ULEB128 length can say. */
#define KV_XBZRLE_RUN_MAX 0x3fffU
/* The largest page the encoder takes: any run fits in one length. */
#define KV_XBZRLE_PAGE_MAX KV_XBZRLE_RUN_MAX
/* Bytes of one length on the wire, at most. */
#define KV_XBZRLE_ULEB_MAX 2U

/*
 * Encode the changes from old to new (page bytes each, page <=
 * KV_XBZRLE_PAGE_MAX) into dst. Returns the encoded length (> 0), 0 when
 * the pages are equal (nothing to send), or -1 when the delta needs more
 * than dst_max bytes (or page is too large): the caller then sends the page
 * raw. Pass dst_max = page - 1 for "only when the delta is smaller than the
 * page". dst is scratch up to dst_max bytes even when -1 is returned.
 * new must not change during the call (copy a live guest page first).
 */
int kv_xbzrle_encode(const uint8_t *old, const uint8_t *new, size_t page,
		     uint8_t *dst, size_t dst_max);

/*
 * Apply the delta src (len bytes) onto page (page_size bytes), which holds
 * the old copy. Every byte of src is checked first; on any error the page is
 * left untouched and -EINVAL is returned with err naming the offset within
 * src and what is wrong. Returns 0 on success.
 */
int kv_xbzrle_decode(const uint8_t *src, size_t len, uint8_t *page,
		     size_t page_size, struct kv_error *err);

/* The encoder's implementations, for tests and benchmarks: every one gives
 * the same bytes. kv_xbzrle_encode() uses the best the CPU has. */
enum kv_xbzrle_impl {
	KV_XBZRLE_IMPL_AUTO,
	KV_XBZRLE_IMPL_SCALAR, /* 8 bytes at a time */
	KV_XBZRLE_IMPL_SSE2,
	KV_XBZRLE_IMPL_AVX2,
	KV_XBZRLE_IMPL_AVX512, /* AVX-512BW */
	KV_XBZRLE_IMPL_COUNT,
};

/* Like kv_xbzrle_encode() with one implementation; -2 when this CPU or
 * build lacks it. */
int kv_xbzrle_encode_impl(enum kv_xbzrle_impl impl, const uint8_t *old,
			  const uint8_t *new, size_t page, uint8_t *dst,
			  size_t dst_max);
const char *kv_xbzrle_impl_name(enum kv_xbzrle_impl impl);

#endif
