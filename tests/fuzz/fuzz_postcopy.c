/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target over postcopy's wire (src/migration/postcopy/
 * postcopy_wire.c) and the source's request queue (postcopy_src.c). An
 * input is
 *
 *     u8 target | bytes...
 *
 * target % 5 == 0: be16 cmd, then the command's payload: the length table,
 *   then the command's decoder against three blocks ("pc.ram" 1 GiB,
 *   "vga.vram" 16 pages, "huge" 4 × 2 MiB pages). An accepted ADVISE,
 *   RAM_DISCARD, PACKAGED or RECV_BITMAP must encode back to the same bytes.
 * target % 5 == 1: be16 return-path type, then the payload: the return
 *   path's own table (return_path.c), then the page-request decoder or
 *   RESUME_ACK's; an accepted request must encode back to the same bytes.
 * target % 5 == 2: u8 pages, then a received-bitmap blob for a block of
 *   that many pages + 1; an accepted one must encode back to the same.
 * target % 5 == 3: a sequence of command numbers through the order table;
 *   accepted when every step is. Byte 0xff ends a package.
 * target % 5 == 4: a sequence of return-path messages (u8 type, u8 len,
 *   len bytes) into a source queue, then the queue drained: every page it
 *   yields must lie inside its block, be aligned, and come once.
 *
 * fuzz_target_run returns 0 when every part was accepted, <0 otherwise:
 * "valid-*" seeds must be accepted, "bad-*" ones rejected, and every
 * rejection names postcopy (or the return path's table) in its message.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/units.h"
#include "fuzz_target.h"
#include "migration/postcopy/postcopy_src.h"
#include "migration/postcopy/postcopy_wire.h"
#include "migration/return_path.h"

#define HUGE_PAGE (2U * 1024 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct kv_pc_block fuzz_block_v[] = {
    {"pc.ram", 1ULL << 30, KV_PAGE_SIZE},
    {"vga.vram", 16 * KV_PAGE_SIZE, KV_PAGE_SIZE},
    {"huge", 4 * HUGE_PAGE, HUGE_PAGE},
};
static const struct kv_pc_blocks fuzz_blocks = {fuzz_block_v, 3};

static void fuzz_check(bool ok, const char *what)
{
	if (ok)
		return;
	fprintf(stderr, "fuzz_postcopy: invariant broken: %s\n", what);
	__builtin_trap();
}

static uint16_t be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static void same_bytes(const uint8_t *a, size_t na, const uint8_t *b,
		       size_t nb, const char *what)
{
	fuzz_check(na == nb && !memcmp(a, b, na), what);
}

static int fuzz_discard(const uint8_t *p, size_t len, struct kv_error *err)
{
	static uint8_t again[KV_PC_DISCARD_MAX_LEN];
	struct kv_pc_discard d;
	int r = kv_pc_discard_decode(p, len, &fuzz_blocks, &d, err);

	if (r < 0)
		return r;
	r = kv_pc_discard_encode(d.idstr, d.ranges, d.nranges, again, NULL);
	fuzz_check(r > 0, "an accepted discard encodes");
	same_bytes(p, len, again, (size_t)r, "discard round trip");
	return 0;
}

static int fuzz_command(const uint8_t *data, size_t size, struct kv_error *err)
{
	uint8_t again[1 + KV_PC_IDSTR_MAX];
	struct kv_pc_advise a;
	const uint8_t *p;
	size_t len;
	uint16_t cmd;
	uint32_t nested;
	int r, block;

	if (size < 2 || size - 2 > UINT16_MAX)
		return kv_error_set(err, -EINVAL, "postcopy fuzz: command input of %zu bytes", size);
	p = data + 2;
	len = size - 2;
	cmd = be16(data);
	r = kv_pc_cmd_check_len(cmd, (uint16_t)len, err);
	if (r < 0)
		return r;
	switch (cmd) {
	case KV_MIG_CMD_POSTCOPY_ADVISE:
		r = kv_pc_advise_decode(p, len, KV_PAGE_SIZE, KV_PAGE_SIZE, &a, err);
		if (r == 0)
			same_bytes(p, len, again, kv_pc_advise_encode(&a, again), "advise round trip");
		return r;
	case KV_MIG_CMD_POSTCOPY_RAM_DISCARD:
		return fuzz_discard(p, len, err);
	case KV_MIG_CMD_PACKAGED:
		r = kv_pc_packaged_decode(p, len, &nested, err);
		if (r == 0)
			same_bytes(p, len, again, kv_pc_packaged_encode(nested, again), "packaged round trip");
		return r;
	case KV_MIG_CMD_RECV_BITMAP:
		r = kv_pc_named_decode(p, len, &fuzz_blocks, "RECV_BITMAP", &block, err);
		if (r == 0) {
			r = kv_pc_named_encode(fuzz_block_v[block].idstr, again, NULL);
			same_bytes(p, len, again, (size_t)r, "named round trip");
			r = 0;
		}
		return r;
	default: /* LISTEN, RUN, RESUME: the length was all */
		return 0;
	}
}

static int fuzz_rp(const uint8_t *data, size_t size, struct kv_error *err)
{
	uint8_t again[13 + KV_PC_IDSTR_MAX];
	struct kv_pc_req q;
	uint16_t type;
	int r;

	if (size < 2 || size - 2 > KV_RP_MAX_PAYLOAD)
		return kv_error_set(err, -EINVAL, "postcopy fuzz: return-path input of %zu bytes", size);
	type = be16(data);
	r = kv_rp_check_header(type, (uint16_t)(size - 2), err);
	if (r == 0)
		r = kv_rp_check_message(type, data + 2, (uint16_t)(size - 2), err);
	if (r < 0)
		return r;
	if (type == KV_RP_MSG_RESUME_ACK)
		return kv_pc_resume_ack_decode(data + 2, size - 2, err);
	r = kv_pc_req_decode(type, data + 2, size - 2, &q, err);
	if (r < 0)
		return r;
	r = kv_pc_req_encode(q.has_id ? q.idstr : NULL, q.start, q.len, again, NULL);
	fuzz_check(r > 0, "an accepted request encodes");
	same_bytes(data + 2, size - 2, again, (size_t)r, "request round trip");
	return 0;
}

static int fuzz_bitmap(const uint8_t *data, size_t size, struct kv_error *err)
{
	uint64_t npages = (uint64_t)(size ? data[0] : 0) + 1;
	unsigned long *map = kv_bitmap_new(npages);
	uint8_t *again = malloc(kv_pc_recv_bitmap_size(npages));
	int r;

	fuzz_check(map && again, "allocation");
	r = size ? kv_pc_recv_bitmap_decode(data + 1, size - 1, npages, "pc.ram", map, err)
		 : kv_error_set(err, -EINVAL, "postcopy fuzz: empty bitmap input");
	if (r == 0)
		same_bytes(data + 1, size - 1, again, kv_pc_recv_bitmap_encode(map, npages, again), "bitmap round trip");
	free(again);
	kv_bitmap_free(map);
	return r;
}

static int fuzz_order(const uint8_t *data, size_t size, struct kv_error *err)
{
	struct kv_pc_order o = {0};

	for (size_t i = 0; i < size; i++) {
		enum kv_pc_state before = o.state;
		int r;

		if (data[i] == 0xff) {
			kv_pc_order_package_done(&o);
			continue;
		}
		r = kv_pc_order_step(&o, data[i], err);
		if (r < 0) {
			fuzz_check(o.state == before, "a refused command moves no state");
			return r;
		}
		fuzz_check(o.state >= before, "the state never goes back");
	}
	return 0;
}

static int fuzz_queue(const uint8_t *data, size_t size, struct kv_error *err)
{
	struct kv_pc_src *s = kv_pc_src_new(&fuzz_blocks, err);
	unsigned long *seen[3];
	struct kv_pc_page pg;
	int r = 0;

	fuzz_check(s != NULL, "a source queue");
	for (size_t b = 0; b < 3; b++) {
		seen[b] = kv_bitmap_new(fuzz_block_v[b].length / KV_PAGE_SIZE);
		fuzz_check(seen[b] != NULL, "allocation");
	}
	for (size_t i = 0; i + 2 <= size && r == 0;) {
		size_t len = data[i + 1];

		if (i + 2 + len > size)
			break;
		r = kv_pc_src_handle_message(s, data[i], data + i + 2, len, err);
		i += 2 + len;
	}
	for (unsigned n = 0; n < 4096 && kv_pc_src_next_urgent(s, &pg); n++) {
		fuzz_check(pg.block < 3, "a page of a known block");
		fuzz_check(pg.offset % KV_PAGE_SIZE == 0, "an aligned page");
		fuzz_check(pg.offset < fuzz_block_v[pg.block].length, "a page inside its block");
		fuzz_check(kv_bitmap_set_atomic(seen[pg.block], pg.offset / KV_PAGE_SIZE), "a page served once");
	}
	for (size_t b = 0; b < 3; b++)
		kv_bitmap_free(seen[b]);
	kv_pc_src_free(s);
	return r;
}

int fuzz_target_run(const uint8_t *data, size_t size, struct kv_error *err)
{
	int r;

	kv_error_clear(err);
	if (size < 1)
		return kv_error_set(err, -EINVAL, "postcopy fuzz: empty input");
	switch (data[0] % 5) {
	case 0:
		r = fuzz_command(data + 1, size - 1, err);
		break;
	case 1:
		r = fuzz_rp(data + 1, size - 1, err);
		break;
	case 2:
		r = fuzz_bitmap(data + 1, size - 1, err);
		break;
	case 3:
		r = fuzz_order(data + 1, size - 1, err);
		break;
	default:
		r = fuzz_queue(data + 1, size - 1, err);
		break;
	}
	fuzz_check(r == 0 || kv_error_is_set(err), "a rejection carries a message");
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kv_error err = {0};

	fuzz_target_run(data, size, &err);
	return 0;
}
