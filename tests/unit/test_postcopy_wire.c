/* SPDX-License-Identifier: MIT */
/*
 * Postcopy's commands and return-path payloads: each one's bytes as QEMU
 * lays them out, round trips, and every malformed case refused with a
 * message that names what and where.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/bitmap.h"
#include "base/units.h"
#include "migration/postcopy/postcopy_wire.h"
#include "migration/return_path.h"

static const struct kv_pc_block block_v[] = {
    {"pc.ram", 64 * KV_PAGE_SIZE, KV_PAGE_SIZE},
    {"vga.vram", 16 * KV_PAGE_SIZE, KV_PAGE_SIZE},
    {"huge", 8 * 2 * 1024 * 1024, 2 * 1024 * 1024},
};
static const struct kv_pc_blocks blocks = {block_v, 3};

#define assert_refused(call, needle)                                      \
	do {                                                              \
		struct kv_error e_ = {0};                                 \
		struct kv_error *E = &e_;                               \
		assert_true((call) < 0);                                  \
		if (!strstr(e_.msg, needle))                              \
			fail_msg("message '%s' lacks '%s'", e_.msg, needle); \
	} while (0)

static void test_command_numbers_and_lengths(void **state)
{
	struct kv_error err = {0};

	(void)state;
	/* QEMU's enum qemu_vm_cmd. */
	assert_int_equal(KV_MIG_CMD_POSTCOPY_ADVISE, 3);
	assert_int_equal(KV_MIG_CMD_POSTCOPY_LISTEN, 4);
	assert_int_equal(KV_MIG_CMD_POSTCOPY_RUN, 5);
	assert_int_equal(KV_MIG_CMD_POSTCOPY_RAM_DISCARD, 6);
	assert_int_equal(KV_MIG_CMD_POSTCOPY_RESUME, 7);
	assert_int_equal(KV_MIG_CMD_PACKAGED, 8);
	assert_int_equal(KV_MIG_CMD_RECV_BITMAP, 9);
	assert_string_equal(kv_pc_cmd_name(KV_MIG_CMD_POSTCOPY_RUN), "POSTCOPY_RUN");
	assert_null(kv_pc_cmd_name(2));
	assert_int_equal(kv_pc_cmd_check_len(KV_MIG_CMD_POSTCOPY_ADVISE, 0, &err), 0);
	assert_int_equal(kv_pc_cmd_check_len(KV_MIG_CMD_POSTCOPY_ADVISE, 16, &err), 0);
	assert_int_equal(kv_pc_cmd_check_len(KV_MIG_CMD_POSTCOPY_LISTEN, 0, &err), 0);
	assert_int_equal(kv_pc_cmd_check_len(KV_MIG_CMD_PACKAGED, 4, &err), 0);
	assert_int_equal(kv_pc_cmd_check_len(KV_MIG_CMD_POSTCOPY_RAM_DISCARD, 3 + 6 + 16, &err), 0);
	assert_refused(kv_pc_cmd_check_len(KV_MIG_CMD_POSTCOPY_ADVISE, 8, E), "POSTCOPY_ADVISE with length 8 (expected 0 or 16)");
	assert_refused(kv_pc_cmd_check_len(KV_MIG_CMD_POSTCOPY_LISTEN, 1, E), "POSTCOPY_LISTEN with length 1");
	assert_refused(kv_pc_cmd_check_len(KV_MIG_CMD_POSTCOPY_RUN, 4, E), "POSTCOPY_RUN with length 4");
	assert_refused(kv_pc_cmd_check_len(KV_MIG_CMD_PACKAGED, 8, E), "PACKAGED with length 8");
	assert_refused(kv_pc_cmd_check_len(KV_MIG_CMD_POSTCOPY_RAM_DISCARD, 19, E), "POSTCOPY_RAM_DISCARD with length 19");
	assert_refused(kv_pc_cmd_check_len(KV_MIG_CMD_POSTCOPY_RAM_DISCARD, KV_PC_DISCARD_MAX_LEN + 1, E), "POSTCOPY_RAM_DISCARD with length");
	assert_refused(kv_pc_cmd_check_len(42, 0, E), "unknown command 42");
}

static void test_advise(void **state)
{
	static const uint8_t want[16] = {0, 0, 0, 0, 0, 0, 0x10, 0,
					 0, 0, 0, 0, 0, 0, 0x10, 0};
	struct kv_pc_advise a = {true, KV_PAGE_SIZE, KV_PAGE_SIZE}, b;
	struct kv_error err = {0};
	uint8_t buf[16];

	(void)state;
	assert_int_equal(kv_pc_advise_encode(&a, buf), 16);
	assert_memory_equal(buf, want, 16);
	assert_int_equal(kv_pc_advise_decode(buf, 16, KV_PAGE_SIZE, KV_PAGE_SIZE, &b, &err), 0);
	assert_true(b.has_sizes);
	assert_int_equal(b.host_page_size, KV_PAGE_SIZE);
	/* QEMU's ADVISE without RAM postcopy: no payload. */
	a.has_sizes = false;
	assert_int_equal(kv_pc_advise_encode(&a, buf), 0);
	assert_int_equal(kv_pc_advise_decode(buf, 0, KV_PAGE_SIZE, KV_PAGE_SIZE, &b, &err), 0);
	assert_false(b.has_sizes);
	/* A 2 MiB host page against our 4 KiB. */
	a = (struct kv_pc_advise){true, 2 * 1024 * 1024 | KV_PAGE_SIZE, KV_PAGE_SIZE};
	kv_pc_advise_encode(&a, buf);
	assert_refused(kv_pc_advise_decode(buf, 16, KV_PAGE_SIZE, KV_PAGE_SIZE, &b, E), "RAM page sizes (0x201000) differ from ours (0x1000)");
	a = (struct kv_pc_advise){true, KV_PAGE_SIZE, 8192};
	kv_pc_advise_encode(&a, buf);
	assert_refused(kv_pc_advise_decode(buf, 16, KV_PAGE_SIZE, KV_PAGE_SIZE, &b, E), "target page size (8192) differs from ours (4096)");
	assert_refused(kv_pc_advise_decode(buf, 15, KV_PAGE_SIZE, KV_PAGE_SIZE, &b, E), "length 15");
}

static void test_discard_round_trip(void **state)
{
	struct kv_pc_range r[KV_PC_DISCARD_MAX_RANGES];
	uint8_t buf[KV_PC_DISCARD_MAX_LEN];
	struct kv_error err = {0};
	struct kv_pc_discard d;
	int n;

	(void)state;
	for (unsigned i = 0; i < KV_PC_DISCARD_MAX_RANGES; i++)
		r[i] = (struct kv_pc_range){(uint64_t)i * 4 * KV_PAGE_SIZE, (i % 3 + 1) * KV_PAGE_SIZE};
	n = kv_pc_discard_encode("pc.ram", r, 12, buf, &err);
	assert_int_equal(n, 3 + 6 + 12 * 16);
	/* version 0, length 6, name, nil, be64 start, be64 length */
	assert_int_equal(buf[0], 0);
	assert_int_equal(buf[1], 6);
	assert_memory_equal(buf + 2, "pc.ram", 6);
	assert_int_equal(buf[8], 0);
	assert_int_equal(buf[9 + 16 + 6], 0x40); /* range 1 start 0x4000 */
	assert_int_equal(buf[9 + 16 + 14], 0x20); /* range 1 length 0x2000 */
	assert_int_equal(kv_pc_cmd_check_len(KV_MIG_CMD_POSTCOPY_RAM_DISCARD, (uint16_t)n, &err), 0);
	assert_int_equal(kv_pc_discard_decode(buf, (size_t)n, &blocks, &d, &err), 0);
	assert_int_equal(d.block, 0);
	assert_string_equal(d.idstr, "pc.ram");
	assert_int_equal(d.nranges, 12);
	assert_memory_equal(d.ranges, r, sizeof(r));
	/* One range, another block. */
	n = kv_pc_discard_encode("vga.vram", r + 3, 1, buf, &err);
	assert_int_equal(kv_pc_discard_decode(buf, (size_t)n, &blocks, &d, &err), 0);
	assert_int_equal(d.block, 1);
	assert_int_equal(d.nranges, 1);
	/* The encoder refuses what QEMU would never send. */
	assert_refused(kv_pc_discard_encode("pc.ram", r, 13, buf, E), "13 ranges (1 to 12");
	assert_refused(kv_pc_discard_encode("pc.ram", r, 0, buf, E), "0 ranges");
}

/* A valid one-range discard for pc.ram, to break byte by byte. */
static size_t discard_one(uint8_t *buf, uint64_t start, uint64_t len)
{
	struct kv_pc_range r = {start, len};
	struct kv_error err = {0};

	return (size_t)kv_pc_discard_encode("pc.ram", &r, 1, buf, &err);
}

static void test_discard_malformed(void **state)
{
	uint8_t buf[KV_PC_DISCARD_MAX_LEN + 64];
	struct kv_pc_range r[13];
	struct kv_pc_discard d;
	size_t n;

	(void)state;
	n = discard_one(buf, 62 * KV_PAGE_SIZE, 4 * KV_PAGE_SIZE);
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "range 1 of 1 (byte 9): discard range at offset 0x3e000 length 0x4000 goes past the end of block 'pc.ram' (0x40000 bytes)");
	n = discard_one(buf, 64 * KV_PAGE_SIZE, KV_PAGE_SIZE);
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "goes past the end of block 'pc.ram'");
	/* start + length wraps around 2^64: still past the end. */
	n = discard_one(buf, KV_PAGE_SIZE, UINT64_MAX - KV_PAGE_SIZE + 1);
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "goes past the end");
	n = discard_one(buf, 100, KV_PAGE_SIZE);
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "offset 0x64 length 0x1000 of block 'pc.ram' is not aligned to its 4096-byte pages");
	n = discard_one(buf, 0, 100);
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "not aligned");
	n = discard_one(buf, 0, 0);
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "discard range at offset 0 of block 'pc.ram' has length 0");
	/* Unknown block. */
	n = discard_one(buf, 0, KV_PAGE_SIZE);
	memcpy(buf + 2, "pc.rom", 6);
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "POSTCOPY_RAM_DISCARD for unknown block 'pc.rom'");
	/* Bad version. */
	n = discard_one(buf, 0, KV_PAGE_SIZE);
	buf[0] = 1;
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "POSTCOPY_RAM_DISCARD version 1 at byte 0 (expected 0)");
	/* The nil after the name. */
	buf[0] = 0;
	buf[8] = 'x';
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "byte 8 after the name is 120, not the terminating 0");
	/* A name longer than the command. */
	buf[8] = 0;
	buf[1] = 200;
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "block name of 200 bytes at byte 2 runs past the command's 25 bytes");
	buf[1] = 0;
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "empty block name");
	/* Ranges not a multiple of 16 bytes, or none. */
	n = discard_one(buf, 0, KV_PAGE_SIZE);
	assert_refused(kv_pc_discard_decode(buf, n - 1, &blocks, &d, E), "15 bytes of ranges after byte 9");
	assert_refused(kv_pc_discard_decode(buf, 9, &blocks, &d, E), "0 bytes of ranges");
	assert_refused(kv_pc_discard_decode(buf, 2, &blocks, &d, E), "too short");
	/* Thirteen ranges: more than QEMU's 12 per command. */
	for (int i = 0; i < 13; i++)
		r[i] = (struct kv_pc_range){(uint64_t)i * KV_PAGE_SIZE, KV_PAGE_SIZE};
	n = (size_t)kv_pc_discard_encode("pc.ram", r, 12, buf, NULL);
	memset(buf + n, 0, 16);
	buf[n + 14] = 0x10;
	assert_refused(kv_pc_discard_decode(buf, n + 16, &blocks, &d, E), "carries 13 ranges (at most 12)");
	/* The third of three ranges bad: named by its number and byte. */
	r[2].start = 3;
	n = (size_t)kv_pc_discard_encode("pc.ram", r, 3, buf, NULL);
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "range 3 of 3 (byte 41)");
	/* 2 MiB pages: a 4 KiB-aligned range is not aligned there. */
	r[0] = (struct kv_pc_range){KV_PAGE_SIZE, 2 * 1024 * 1024};
	n = (size_t)kv_pc_discard_encode("huge", r, 1, buf, NULL);
	assert_refused(kv_pc_discard_decode(buf, n, &blocks, &d, E), "not aligned to its 2097152-byte pages");
}

static void test_packaged_and_named(void **state)
{
	struct kv_error err = {0};
	uint8_t buf[300];
	uint32_t nested;
	int block, n;

	(void)state;
	assert_int_equal(kv_pc_packaged_encode(0x123456, buf), 4);
	assert_int_equal(buf[0], 0x00);
	assert_int_equal(buf[1], 0x12);
	assert_int_equal(kv_pc_packaged_decode(buf, 4, &nested, &err), 0);
	assert_int_equal(nested, 0x123456);
	kv_pc_packaged_encode(KV_PC_PACKAGED_MAX, buf);
	assert_int_equal(kv_pc_packaged_decode(buf, 4, &nested, &err), 0);
	kv_pc_packaged_encode(KV_PC_PACKAGED_MAX + 1, buf);
	assert_refused(kv_pc_packaged_decode(buf, 4, &nested, E), "PACKAGED announces 16777217 bytes of nested stream (at most 16777216)");
	kv_pc_packaged_encode(0, buf);
	assert_refused(kv_pc_packaged_decode(buf, 4, &nested, E), "empty nested stream");
	assert_refused(kv_pc_packaged_decode(buf, 3, &nested, E), "PACKAGED with length 3");

	n = kv_pc_named_encode("vga.vram", buf, &err);
	assert_int_equal(n, 9);
	assert_int_equal(buf[0], 8);
	assert_int_equal(kv_pc_named_decode(buf, (size_t)n, &blocks, "RECV_BITMAP", &block, &err), 0);
	assert_int_equal(block, 1);
	assert_refused(kv_pc_named_decode(buf, (size_t)n - 1, &blocks, "RECV_BITMAP", &block, E), "RECV_BITMAP of 8 bytes with a name length byte of 8");
	memcpy(buf + 1, "vga.xram", 8);
	assert_refused(kv_pc_named_decode(buf, (size_t)n, &blocks, "RECV_BITMAP", &block, E), "RECV_BITMAP for unknown block 'vga.xram'");
	buf[3] = 0;
	assert_refused(kv_pc_named_decode(buf, (size_t)n, &blocks, "RECV_BITMAP", &block, E), "contains a NUL byte");
	memset(buf, 'a', sizeof(buf));
	buf[256] = 0;
	assert_refused(kv_pc_named_encode((char *)buf, buf, E), "has 256 bytes (1 to 255 fit)");
}

static void test_page_requests(void **state)
{
	struct kv_error err = {0};
	struct kv_pc_req r;
	uint8_t buf[300];
	int n;

	(void)state;
	n = kv_pc_req_encode("pc.ram", 0x12345000, 0x1000, buf, &err);
	assert_int_equal(n, 12 + 1 + 6);
	assert_int_equal(buf[4], 0x12);
	assert_int_equal(buf[10], 0x10);
	assert_int_equal(buf[12], 6);
	assert_int_equal(kv_rp_check_message(KV_RP_MSG_REQ_PAGES_ID, buf, (uint16_t)n, &err), 0);
	assert_int_equal(kv_pc_req_decode(KV_RP_MSG_REQ_PAGES_ID, buf, (size_t)n, &r, &err), 0);
	assert_true(r.has_id);
	assert_string_equal(r.idstr, "pc.ram");
	assert_int_equal(r.start, 0x12345000);
	assert_int_equal(r.len, 0x1000);
	n = kv_pc_req_encode(NULL, 0x2000, 0x3000, buf, &err);
	assert_int_equal(n, 12);
	assert_int_equal(kv_rp_check_header(KV_RP_MSG_REQ_PAGES, 12, &err), 0);
	assert_int_equal(kv_pc_req_decode(KV_RP_MSG_REQ_PAGES, buf, 12, &r, &err), 0);
	assert_false(r.has_id);
	assert_int_equal(r.start, 0x2000);
	assert_int_equal(r.len, 0x3000);
	assert_refused(kv_pc_req_decode(KV_RP_MSG_REQ_PAGES, buf, 13, &r, E), "REQ_PAGES of 13 bytes (expected 12)");
	assert_refused(kv_pc_req_decode(KV_RP_MSG_REQ_PAGES, buf, 11, &r, E), "REQ_PAGES of 11 bytes (at least 12)");
	n = kv_pc_req_encode("pc.ram", 0, 0x1000, buf, &err);
	assert_refused(kv_pc_req_decode(KV_RP_MSG_REQ_PAGES_ID, buf, (size_t)n + 1, &r, E), "REQ_PAGES_ID of 20 bytes with a name length byte of 6");
	assert_refused(kv_pc_req_decode(KV_RP_MSG_REQ_PAGES_ID, buf, 12, &r, E), "REQ_PAGES_ID of 12 bytes");
	buf[12] = 0;
	assert_refused(kv_pc_req_decode(KV_RP_MSG_REQ_PAGES_ID, buf, 13, &r, E), "name not empty");
	assert_refused(kv_pc_req_decode(KV_RP_MSG_PONG, buf, 12, &r, E), "message 2 is not a page request");
}

/* The destination names the block only when it changes. */
static void test_page_requests_next(void **state)
{
	struct kv_error err = {0};
	uint16_t type;
	uint8_t buf[300];
	int last = -1;

	(void)state;
	assert_int_equal(kv_pc_req_encode_next(&last, 0, "pc.ram", 0, KV_PAGE_SIZE, &type, buf, &err), 19);
	assert_int_equal(type, KV_RP_MSG_REQ_PAGES_ID);
	assert_int_equal(kv_pc_req_encode_next(&last, 0, "pc.ram", KV_PAGE_SIZE, KV_PAGE_SIZE, &type, buf, &err), 12);
	assert_int_equal(type, KV_RP_MSG_REQ_PAGES);
	assert_int_equal(kv_pc_req_encode_next(&last, 1, "vga.vram", 0, KV_PAGE_SIZE, &type, buf, &err), 21);
	assert_int_equal(type, KV_RP_MSG_REQ_PAGES_ID);
	assert_int_equal(last, 1);
}

static void test_resume_ack(void **state)
{
	struct kv_error err = {0};
	uint8_t buf[4];

	(void)state;
	assert_int_equal(kv_pc_resume_ack_encode(buf), 4);
	assert_int_equal(buf[3], 1);
	assert_int_equal(kv_pc_resume_ack_decode(buf, 4, &err), 0);
	buf[3] = 2;
	assert_refused(kv_pc_resume_ack_decode(buf, 4, E), "RESUME_ACK with value 2 (expected 1)");
	assert_refused(kv_pc_resume_ack_decode(buf, 5, E), "RESUME_ACK of 5 bytes");
}

static void test_recv_bitmap(void **state)
{
	enum { NP = 70 };
	unsigned long *map = kv_bitmap_new(NP), *back = kv_bitmap_new(NP);
	uint8_t buf[64];
	struct kv_error err = {0};
	size_t n;

	(void)state;
	for (size_t i = 0; i < NP; i += 3)
		kv_bitmap_set_atomic(map, i);
	kv_bitmap_set_atomic(map, NP - 1);
	/* 70 bits: 9 bytes, rounded to 16; plus size and end mark. */
	assert_int_equal(kv_pc_recv_bitmap_size(NP), 8 + 16 + 8);
	n = kv_pc_recv_bitmap_encode(map, NP, buf);
	assert_int_equal(n, 32);
	assert_int_equal(buf[7], 16);
	assert_int_equal(buf[8], 0x49); /* pages 0, 3, 6: little-endian bits */
	assert_int_equal(buf[24], 0x01);
	assert_int_equal(buf[31], 0xef);
	assert_int_equal(kv_pc_recv_bitmap_decode(buf, n, NP, "pc.ram", back, &err), 0);
	for (size_t i = 0; i < NP; i++)
		assert_int_equal(kv_bitmap_test(back, i), kv_bitmap_test(map, i));
	buf[31] = 0xee;
	assert_refused(kv_pc_recv_bitmap_decode(buf, n, NP, "pc.ram", back, E), "received bitmap of block 'pc.ram': end mark 0x123456789abcdee at byte 24");
	buf[31] = 0xef;
	assert_refused(kv_pc_recv_bitmap_decode(buf, n, NP + 64, "pc.ram", back, E), "says 16 bytes in 32 (expected 24 for 134 pages)");
	assert_refused(kv_pc_recv_bitmap_decode(buf, n - 1, NP, "pc.ram", back, E), "says 16 bytes in 31");
	buf[8 + 9] = 0x80; /* page 79: past the 70 pages */
	assert_refused(kv_pc_recv_bitmap_decode(buf, n, NP, "pc.ram", back, E), "marks page 79 past its 70 pages");
	assert_refused(kv_pc_recv_bitmap_decode(buf, 8, NP, "pc.ram", back, E), "too short");
	kv_bitmap_free(map);
	kv_bitmap_free(back);
}

static void test_order(void **state)
{
	struct kv_pc_order o = {0};
	struct kv_error err = {0};

	(void)state;
	/* QEMU's sequence: ADVISE, discards, PACKAGED{LISTEN, devices, RUN}. */
	assert_int_equal(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_ADVISE, &err), 0);
	assert_int_equal(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_RAM_DISCARD, &err), 0);
	assert_int_equal(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_RAM_DISCARD, &err), 0);
	assert_int_equal(o.state, KV_PC_DISCARD);
	assert_int_equal(kv_pc_order_step(&o, KV_MIG_CMD_PACKAGED, &err), 0);
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_PACKAGED, E), "command PACKAGED inside a PACKAGED stream");
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_RUN, E), "command POSTCOPY_RUN in postcopy state discard");
	assert_int_equal(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_LISTEN, &err), 0);
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_LISTEN, E), "command POSTCOPY_LISTEN in postcopy state listening");
	assert_int_equal(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_RUN, &err), 0);
	kv_pc_order_package_done(&o);
	assert_int_equal(o.state, KV_PC_RUNNING);
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_RAM_DISCARD, E), "POSTCOPY_RAM_DISCARD in postcopy state running");
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_ADVISE, E), "POSTCOPY_ADVISE in postcopy state running");
	/* Recovery happens while running. */
	assert_int_equal(kv_pc_order_step(&o, KV_MIG_CMD_RECV_BITMAP, &err), 0);
	assert_int_equal(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_RESUME, &err), 0);

	o = (struct kv_pc_order){0};
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_LISTEN, E), "POSTCOPY_LISTEN in postcopy state none");
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_RAM_DISCARD, E), "in postcopy state none");
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_RESUME, E), "POSTCOPY_RESUME in postcopy state none");
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_PACKAGED, E), "PACKAGED in postcopy state none");
	/* LISTEN on the main stream (no package), no discard: allowed. */
	assert_int_equal(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_ADVISE, &err), 0);
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_ADVISE, E), "POSTCOPY_ADVISE in postcopy state advise");
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_RUN, E), "POSTCOPY_RUN in postcopy state advise");
	assert_int_equal(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_LISTEN, &err), 0);
	assert_int_equal(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_RUN, &err), 0);
	assert_refused(kv_pc_order_step(&o, KV_MIG_CMD_POSTCOPY_RUN, E), "POSTCOPY_RUN in postcopy state running");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_command_numbers_and_lengths),
	    cmocka_unit_test(test_advise),
	    cmocka_unit_test(test_discard_round_trip),
	    cmocka_unit_test(test_discard_malformed),
	    cmocka_unit_test(test_packaged_and_named),
	    cmocka_unit_test(test_page_requests),
	    cmocka_unit_test(test_page_requests_next),
	    cmocka_unit_test(test_resume_ack),
	    cmocka_unit_test(test_recv_bitmap),
	    cmocka_unit_test(test_order),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
