/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target over the multifd receive side: the packet decoder
 * (src/migration/multifd/multifd_packet.c) and every payload decompressor
 * (src/migration/codec/). An input is
 *
 *     u8 target | u8 arg | be16 len1 | bytes...
 *
 * target % 5 == 0: bytes are a packet header and its offsets, decoded for
 *   method arg % 4 with two known blocks ("pc.ram", 1 GiB; "small", one
 *   page), POSTCOPY packets accepted when arg has bit 7 (postcopy-ram
 *   on). An accepted packet must encode back to a packet that decodes
 *   the same; a rejected one must say so with a "multifd" message.
 * target % 5 == 1..4: bytes are payloads of method target % 5 - 1 (none,
 *   zlib, zstd, lz4), each of arg % 32 + 1 pages: the first len1 bytes one
 *   packet, the rest (if any) the next packet on the same receiver, as a
 *   channel would decode them. Each page is its own allocation (ASan sees
 *   any stray write). Accepted pages must survive a fresh compress and
 *   decompress; a rejection needs a message naming the method.
 *
 * fuzz_target_run returns 0 when every part was accepted, <0 otherwise:
 * "valid-*" seeds must be accepted, "bad-*" ones rejected.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/units.h"
#include "fuzz_target.h"
#include "migration/codec/codec.h"
#include "migration/multifd/multifd_packet.h"

#define FUZZ_PAGE      KV_PAGE_SIZE
#define FUZZ_MAX_PAGES 32U
#define FUZZ_PREFIX    4U

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_check(bool ok, const char *what, const char *detail)
{
	if (ok)
		return;
	fprintf(stderr, "fuzz_multifd: invariant broken: %s%s%s\n", what,
		detail ? ": " : "", detail ? detail : "");
	__builtin_trap();
}

static int fuzz_block_len(void *opaque, const char *name, uint64_t *len)
{
	(void)opaque;
	if (!strcmp(name, "pc.ram")) {
		*len = 1ULL << 30;
		return 0;
	}
	if (!strcmp(name, "small")) {
		*len = FUZZ_PAGE;
		return 0;
	}
	return -ENOENT;
}

static bool same_packet(const struct kv_mfd_packet *a,
			const struct kv_mfd_packet *b)
{
	return a->flags == b->flags && a->pages_alloc == b->pages_alloc &&
	       a->normal == b->normal && a->zero == b->zero &&
	       a->next_size == b->next_size && a->packet_num == b->packet_num &&
	       !strcmp(a->block, b->block) && a->block_len == b->block_len &&
	       !memcmp(a->offsets, b->offsets,
		       ((size_t)a->normal + a->zero) * sizeof(uint64_t));
}

static int fuzz_packet(const uint8_t *data, size_t size, uint8_t arg,
		       struct kv_error *err)
{
	static uint64_t offs[KV_MFD_PAGES_DEFAULT], again[KV_MFD_PAGES_DEFAULT];
	struct kv_mfd_recv_params rp = {
	    .channel = 0,
	    .max_pages = KV_MFD_PAGES_DEFAULT,
	    .method = (enum kv_mfd_method)(arg % KV_MFD_METHOD_COUNT),
	    .postcopy = (arg & 0x80) != 0,
	    .block_len = fuzz_block_len,
	};
	struct kv_mfd_packet pkt = {.offsets = offs};
	struct kv_mfd_packet back = {.offsets = again};
	struct kv_error err2 = {0};
	uint8_t *buf;
	long n = kv_mfd_packet_decode(data, size, &rp, &pkt, err);

	if (n < 0) {
		fuzz_check(kv_error_is_set(err) &&
			       !strncmp(err->msg, "multifd", 7),
			   "a rejected packet without its message", err->msg);
		return (int)n;
	}
	fuzz_check((size_t)n == kv_mfd_packet_header_size(pkt.pages_alloc) &&
		       (size_t)n <= size,
		   "the decoder consumed a wrong size", NULL);
	buf = malloc((size_t)n);
	fuzz_check(buf != NULL, "out of memory", NULL);
	fuzz_check(kv_mfd_packet_encode(&pkt, buf, (size_t)n, &err2) == n,
		   "an accepted packet does not encode", err2.msg);
	fuzz_check(kv_mfd_packet_decode(buf, (size_t)n, &rp, &back, &err2) == n,
		   "a re-encoded packet is rejected", err2.msg);
	fuzz_check(same_packet(&pkt, &back),
		   "a re-encoded packet decodes differently", NULL);
	free(buf);
	return 0;
}

struct fuzz_pages {
	uint8_t *p[FUZZ_MAX_PAGES];
	size_t n;
};

static void pages_alloc(struct fuzz_pages *pg, size_t n)
{
	pg->n = n;
	for (size_t i = 0; i < n; i++) {
		pg->p[i] = malloc(FUZZ_PAGE);
		fuzz_check(pg->p[i] != NULL, "out of memory", NULL);
	}
}

static void pages_free(struct fuzz_pages *pg)
{
	for (size_t i = 0; i < pg->n; i++)
		free(pg->p[i]);
}

/* Decoded pages must round-trip through a fresh codec pair. */
static void check_round_trip(enum kv_mfd_method m, struct fuzz_pages *pg)
{
	struct kv_error err = {0};
	struct kv_mfd_codec *tx =
	    kv_mfd_codec_new(m, KV_MFD_LEVEL_DEFAULT, true, &err);
	struct kv_mfd_codec *rx =
	    kv_mfd_codec_new(m, KV_MFD_LEVEL_DEFAULT, false, &err);
	size_t bound = kv_mfd_compress_bound(m, pg->n), len = 0;
	uint8_t *wire = malloc(bound);
	struct fuzz_pages out;

	fuzz_check(tx && rx && wire, "codec setup failed", err.msg);
	pages_alloc(&out, pg->n);
	fuzz_check(kv_mfd_compress(tx, (const uint8_t *const *)pg->p, pg->n,
				   wire, bound, &len, &err) == 0,
		   "compressing decoded pages failed", err.msg);
	fuzz_check(kv_mfd_decompress(rx, wire, len, out.p, out.n, &err) == 0,
		   "our own payload was rejected", err.msg);
	for (size_t i = 0; i < pg->n; i++)
		fuzz_check(!memcmp(out.p[i], pg->p[i], FUZZ_PAGE),
			   "a page changed on the way", NULL);
	pages_free(&out);
	free(wire);
	kv_mfd_codec_free(rx);
	kv_mfd_codec_free(tx);
}

static int fuzz_payloads(enum kv_mfd_method m, size_t n, const uint8_t *data,
			 size_t size, size_t len1, struct kv_error *err)
{
	struct kv_mfd_codec *rx =
	    kv_mfd_codec_new(m, KV_MFD_LEVEL_DEFAULT, false, err);
	size_t part[2] = {len1 < size ? len1 : size, 0};
	struct fuzz_pages pg;
	int ret = 0;

	fuzz_check(rx != NULL, "codec setup failed", err->msg);
	part[1] = size - part[0];
	pages_alloc(&pg, n);
	for (int i = 0; i < 2 && ret == 0; i++) {
		if (i == 1 && part[1] == 0)
			break;
		ret = kv_mfd_decompress(rx, data + (i ? part[0] : 0), part[i],
					pg.p, n, err);
		if (ret < 0) {
			const char *name = kv_mfd_method_name(m);

			fuzz_check(ret == -EINVAL && kv_error_is_set(err) &&
				       !strncmp(err->msg, name, strlen(name)),
				   "a rejected payload without its message",
				   err->msg);
		} else {
			check_round_trip(m, &pg);
		}
	}
	pages_free(&pg);
	kv_mfd_codec_free(rx);
	return ret;
}

int fuzz_target_run(const uint8_t *data, size_t size, struct kv_error *err)
{
	unsigned target, arg;
	size_t len1;

	kv_error_clear(err);
	if (size < FUZZ_PREFIX)
		return kv_error_set(err, -EINVAL,
				    "fuzz_multifd: input of %zu bytes is "
				    "shorter than its 4-byte prefix",
				    size);
	target = data[0] % 5;
	arg = data[1];
	len1 = (size_t)data[2] << 8 | data[3];
	data += FUZZ_PREFIX;
	size -= FUZZ_PREFIX;
	if (target == 0)
		return fuzz_packet(data, size, (uint8_t)arg, err);
	return fuzz_payloads((enum kv_mfd_method)(target - 1),
			     arg % FUZZ_MAX_PAGES + 1, data, size, len1, err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kv_error err = {0};

	fuzz_target_run(data, size, &err);
	return 0;
}
