/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the multifd wire format (src/migration/multifd/multifd_packet.c):
 * the init message and the packet header byte for byte against QEMU's
 * layout, encode/decode round trips, and one rejection per decoder check,
 * each with the message that names channel, packet and field.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/error.h"
#include "base/units.h"
#include "migration/multifd/multifd_packet.h"

#define RAM_LEN (64ULL << 20)

static uint32_t be32_at(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64_at(const uint8_t *p)
{
	return (uint64_t)be32_at(p) << 32 | be32_at(p + 4);
}

static void set_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void set_be64(uint8_t *p, uint64_t v)
{
	set_be32(p, (uint32_t)(v >> 32));
	set_be32(p + 4, (uint32_t)v);
}

/* Two blocks: "pc.ram" of 64 MiB and "small" of one page. */
static int lookup_block(void *opaque, const char *name, uint64_t *len)
{
	int *calls = opaque;

	if (calls)
		(*calls)++;
	if (!strcmp(name, "pc.ram")) {
		*len = RAM_LEN;
		return 0;
	}
	if (!strcmp(name, "small")) {
		*len = KV_PAGE_SIZE;
		return 0;
	}
	return -ENOENT;
}

static struct kv_mfd_recv_params params(enum kv_mfd_method m)
{
	struct kv_mfd_recv_params rp = {
	    .channel = 1,
	    .max_pages = KV_MFD_PAGES_DEFAULT,
	    .method = m,
	    .block_len = lookup_block,
	};
	return rp;
}

/* ---- init message ---- */

static void test_init_layout(void **state)
{
	struct kv_mfd_init msg = {.id = 3};
	uint8_t buf[KV_MFD_INIT_SIZE];

	(void)state;
	for (unsigned i = 0; i < KV_MFD_UUID_SIZE; i++)
		msg.uuid[i] = (uint8_t)(0xa0 + i);
	memset(buf, 0xee, sizeof(buf));
	kv_mfd_init_encode(&msg, buf);
	assert_int_equal(be32_at(buf), 0x11223344);
	assert_int_equal(be32_at(buf + 4), 1);
	assert_memory_equal(buf + 8, msg.uuid, 16);
	assert_int_equal(buf[24], 3);
	for (unsigned i = 25; i < KV_MFD_INIT_SIZE; i++)
		assert_int_equal(buf[i], 0);
}

static void test_init_round_trip(void **state)
{
	struct kv_mfd_init msg = {.id = 7}, got;
	struct kv_error err = {0};
	uint8_t buf[KV_MFD_INIT_SIZE];

	(void)state;
	memset(msg.uuid, 0x5a, sizeof(msg.uuid));
	kv_mfd_init_encode(&msg, buf);
	memset(&got, 0, sizeof(got));
	assert_int_equal(kv_mfd_init_decode(buf, 8, msg.uuid, &got, &err), 0);
	assert_int_equal(got.id, 7);
	assert_memory_equal(got.uuid, msg.uuid, 16);
	/* No UUID to compare with: any is taken. */
	assert_int_equal(kv_mfd_init_decode(buf, 8, NULL, &got, &err), 0);
	/* Reserved bytes are ignored, as QEMU does. */
	buf[40] = 0x77;
	assert_int_equal(kv_mfd_init_decode(buf, 8, NULL, &got, &err), 0);
	assert_false(kv_error_is_set(&err));
}

static void expect_init_error(const uint8_t *buf, unsigned channels,
			      const uint8_t *uuid, const char *needle)
{
	struct kv_mfd_init got;
	struct kv_error err = {0};

	assert_int_equal(kv_mfd_init_decode(buf, channels, uuid, &got, &err),
			 -EINVAL);
	if (!strstr(err.msg, needle))
		fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void test_init_rejects(void **state)
{
	struct kv_mfd_init msg = {.id = 2};
	uint8_t buf[KV_MFD_INIT_SIZE], bad[KV_MFD_INIT_SIZE];
	uint8_t other[KV_MFD_UUID_SIZE] = {1};

	(void)state;
	kv_mfd_init_encode(&msg, buf);
	memcpy(bad, buf, sizeof(bad));
	bad[3] ^= 1;
	expect_init_error(bad, 4, NULL, "magic 0x11223345");
	memcpy(bad, buf, sizeof(bad));
	set_be32(bad + 4, 2);
	expect_init_error(bad, 4, NULL, "version 2");
	expect_init_error(buf, 2, NULL, "channel id 2, but only 2 channels");
	expect_init_error(buf, 1, NULL, "only 1 channel is");
	expect_init_error(buf, 4, other, "UUID differs");
}

/* ---- packets ---- */

static void test_header_size(void **state)
{
	(void)state;
	assert_int_equal(KV_MFD_HDR_SIZE, 320);
	assert_int_equal(kv_mfd_packet_header_size(0), 320);
	assert_int_equal(kv_mfd_packet_header_size(128), 320 + 1024);
}

static void test_packet_layout(void **state)
{
	uint64_t offs[3] = {0x1000, 0x3000, 0x200000};
	struct kv_mfd_packet pkt = {
	    .flags = KV_MFD_FLAG_SYNC | KV_MFD_FLAG_ZSTD,
	    .pages_alloc = 4,
	    .normal = 2,
	    .zero = 1,
	    .next_size = 777,
	    .packet_num = 0x0102030405060708ULL,
	    .offsets = offs,
	};
	struct kv_error err = {0};
	uint8_t buf[400];

	(void)state;
	strcpy(pkt.block, "pc.ram");
	memset(buf, 0xcc, sizeof(buf));
	assert_int_equal(kv_mfd_packet_encode(&pkt, buf, sizeof(buf), &err),
			 320 + 32);
	assert_int_equal(be32_at(buf + 0), 0x11223344);
	assert_int_equal(be32_at(buf + 4), 1);
	assert_int_equal(be32_at(buf + 8), 0x5);
	assert_int_equal(be32_at(buf + 12), 4);
	assert_int_equal(be32_at(buf + 16), 2);
	assert_int_equal(be32_at(buf + 20), 777);
	assert_true(be64_at(buf + 24) == 0x0102030405060708ULL);
	assert_int_equal(be32_at(buf + 32), 1);
	for (unsigned i = 36; i < 64; i++)
		assert_int_equal(buf[i], 0);
	assert_string_equal((const char *)buf + 64, "pc.ram");
	for (unsigned i = 64 + 6; i < 320; i++)
		assert_int_equal(buf[i], 0);
	assert_true(be64_at(buf + 320) == 0x1000);
	assert_true(be64_at(buf + 328) == 0x3000);
	assert_true(be64_at(buf + 336) == 0x200000);
	assert_true(be64_at(buf + 344) == 0); /* unused slot */
	assert_int_equal(buf[352], 0xcc);     /* nothing past the header */
}

static void test_packet_round_trip(void **state)
{
	const enum kv_mfd_method methods[] = {
	    KV_MFD_METHOD_NONE, KV_MFD_METHOD_ZLIB, KV_MFD_METHOD_ZSTD,
	    KV_MFD_METHOD_LZ4};
	uint64_t offs[KV_MFD_PAGES_DEFAULT], got_offs[KV_MFD_PAGES_DEFAULT];
	uint8_t buf[320 + 8 * KV_MFD_PAGES_DEFAULT + 16];

	(void)state;
	for (size_t m = 0; m < 4; m++) {
		for (uint32_t normal = 0; normal <= 128; normal += 32) {
			struct kv_mfd_recv_params rp = params(methods[m]);
			struct kv_mfd_packet pkt = {
			    .flags = kv_mfd_method_flag(methods[m]),
			    .pages_alloc = KV_MFD_PAGES_DEFAULT,
			    .normal = normal,
			    .zero = (128 - normal) / 2,
			    .packet_num = 1000 + normal,
			    .offsets = offs,
			};
			struct kv_mfd_packet got = {.offsets = got_offs};
			struct kv_error err = {0};
			uint32_t used = pkt.normal + pkt.zero;
			long n;

			pkt.next_size = m == 0	 ? normal * KV_PAGE_SIZE
					: normal ? 100 + normal
						 : 0;
			strcpy(pkt.block, "pc.ram");
			for (uint32_t i = 0; i < used; i++)
				offs[i] = (uint64_t)(i * 37 % 16384) * KV_PAGE_SIZE;
			n = kv_mfd_packet_encode(&pkt, buf, sizeof(buf), &err);
			assert_int_equal(n, 320 + 8 * 128);
			assert_int_equal(kv_mfd_packet_decode(buf, (size_t)n,
							      &rp, &got, &err),
					 n);
			assert_false(kv_error_is_set(&err));
			assert_int_equal(got.flags, pkt.flags);
			assert_int_equal(got.pages_alloc, 128);
			assert_int_equal(got.normal, pkt.normal);
			assert_int_equal(got.zero, pkt.zero);
			assert_int_equal(got.next_size, pkt.next_size);
			assert_true(got.packet_num == pkt.packet_num);
			assert_string_equal(got.block, "pc.ram");
			assert_true(got.block_len == RAM_LEN);
			assert_memory_equal(got.offsets, offs, used * 8);
		}
	}
}

/* A sync packet: no pages, no method bits, any (empty) block name. */
static void test_sync_packet(void **state)
{
	struct kv_mfd_recv_params rp = params(KV_MFD_METHOD_ZLIB);
	struct kv_mfd_packet pkt = {
	    .flags = KV_MFD_FLAG_SYNC,
	    .pages_alloc = 128,
	    .packet_num = 9,
	};
	struct kv_mfd_packet got = {0};
	struct kv_error err = {0};
	uint8_t buf[320 + 1024];
	int calls = 0;

	(void)state;
	rp.opaque = &calls;
	assert_int_equal(kv_mfd_packet_encode(&pkt, buf, sizeof(buf), &err),
			 sizeof(buf));
	assert_int_equal(
	    kv_mfd_packet_decode(buf, sizeof(buf), &rp, &got, &err),
	    sizeof(buf));
	assert_int_equal(got.flags, KV_MFD_FLAG_SYNC);
	assert_int_equal(calls, 0); /* no block looked up */
	/* Stale offsets in unused slots are ignored. */
	set_be64(buf + 320, 0x123);
	assert_int_equal(
	    kv_mfd_packet_decode(buf, sizeof(buf), &rp, &got, &err),
	    sizeof(buf));
}

static void test_two_step_decode(void **state)
{
	struct kv_mfd_recv_params rp = params(KV_MFD_METHOD_NONE);
	uint64_t offs[2] = {0, KV_PAGE_SIZE}, got_offs[128];
	struct kv_mfd_packet pkt = {
	    .pages_alloc = 128,
	    .normal = 1,
	    .zero = 1,
	    .next_size = KV_PAGE_SIZE,
	    .packet_num = 5,
	    .offsets = offs,
	};
	struct kv_mfd_packet got = {.offsets = got_offs};
	struct kv_error err = {0};
	uint8_t buf[320 + 1024];

	(void)state;
	strcpy(pkt.block, "pc.ram");
	kv_mfd_packet_encode(&pkt, buf, sizeof(buf), &err);
	assert_int_equal(kv_mfd_packet_decode_header(buf, 320, &rp, &got, &err),
			 0);
	assert_int_equal(kv_mfd_packet_offsets_size(&got), 1024);
	assert_int_equal(
	    kv_mfd_packet_decode_offsets(buf + 320, 1024, &rp, &got, &err), 0);
	assert_true(got_offs[1] == KV_PAGE_SIZE);
}

static void test_encode_rejects(void **state)
{
	uint64_t offs[4] = {0};
	struct kv_mfd_packet pkt = {
	    .pages_alloc = 2,
	    .normal = 2,
	    .zero = 1,
	    .offsets = offs,
	};
	struct kv_error err = {0};
	uint8_t buf[400];

	(void)state;
	assert_int_equal(kv_mfd_packet_encode(&pkt, buf, sizeof(buf), &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "exceed pages_alloc"));
	kv_error_clear(&err);
	pkt.zero = 0;
	memset(pkt.block, 'x', sizeof(pkt.block));
	assert_int_equal(kv_mfd_packet_encode(&pkt, buf, sizeof(buf), &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "block name"));
	kv_error_clear(&err);
	strcpy(pkt.block, "pc.ram");
	assert_int_equal(kv_mfd_packet_encode(&pkt, buf, 335, &err), -ENOSPC);
}

/* A valid 4-slot packet (2 normal, 1 zero, raw) to break field by field. */
static void good_packet(uint8_t *buf, size_t len, uint32_t flags,
			uint32_t next_size)
{
	uint64_t offs[3] = {0, 0x10000, 0x3fff000};
	struct kv_mfd_packet pkt = {
	    .flags = flags,
	    .pages_alloc = 4,
	    .normal = 2,
	    .zero = 1,
	    .next_size = next_size,
	    .packet_num = 57,
	    .offsets = offs,
	};
	struct kv_error err = {0};

	strcpy(pkt.block, "pc.ram");
	assert_int_equal(kv_mfd_packet_encode(&pkt, buf, len, &err), 352);
}

static void expect_reject(const uint8_t *buf, size_t len,
			  const struct kv_mfd_recv_params *rp, int code,
			  const char *needle)
{
	uint64_t offs[KV_MFD_PAGES_LIMIT];
	struct kv_mfd_packet got = {.offsets = offs};
	struct kv_error err = {0};

	assert_int_equal(kv_mfd_packet_decode(buf, len, rp, &got, &err), code);
	assert_int_equal(err.code, code);
	if (!strstr(err.msg, needle))
		fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void test_decode_rejects_header(void **state)
{
	struct kv_mfd_recv_params rp = params(KV_MFD_METHOD_NONE);
	uint8_t good[352], buf[352];

	(void)state;
	good_packet(good, sizeof(good), 0, 2 * KV_PAGE_SIZE);
	expect_reject(good, 319, &rp, -EINVAL, "header of 319 bytes");

#define BREAK(stmt, needle)                                                    \
	do {                                                                   \
		memcpy(buf, good, sizeof(buf));                                \
		stmt;                                                          \
		expect_reject(buf, sizeof(buf), &rp, -EINVAL, needle);         \
	} while (0)

	BREAK(set_be32(buf, 0x11223355),
	      "multifd channel 1, packet 57: magic 0x11223355");
	BREAK(set_be32(buf + 4, 2), "packet 57: version 2 (expected 1)");
	BREAK(set_be32(buf + 8, 1U << 9), "unknown flags 0x200");
	BREAK(set_be32(buf + 8, KV_MFD_FLAG_POSTCOPY),
	      "packet 57: flags 0x100 mark a postcopy packet, but postcopy-ram is off on this destination");
	BREAK(set_be32(buf + 8, 1U << 31), "unknown flags 0x80000000");
	BREAK(set_be32(buf + 8, KV_MFD_FLAG_DEVICE_STATE), "device-state");
	BREAK(set_be32(buf + 8, KV_MFD_FLAG_ZLIB),
	      "say compression zlib, but this migration uses none");
	BREAK(set_be32(buf + 8, KV_MFD_FLAG_QPL), "qpl");
	BREAK(set_be32(buf + 8, KV_MFD_FLAG_ZLIB | KV_MFD_FLAG_LZ4),
	      "several methods");
	BREAK(set_be32(buf + 12, 0), "pages_alloc 0 outside 1..128");
	BREAK(set_be32(buf + 12, 129), "pages_alloc 129 outside 1..128");
	BREAK(set_be32(buf + 12, 0xffffffff), "pages_alloc 4294967295");
	BREAK(set_be32(buf + 16, 5),
	      "normal_pages 5 + zero_pages 1 exceed pages_alloc 4");
	BREAK(set_be32(buf + 32, 3),
	      "normal_pages 2 + zero_pages 3 exceed pages_alloc 4");
	BREAK(set_be32(buf + 32, 0xffffffff), "exceed pages_alloc 4");
	BREAK(set_be32(buf + 20, 2 * KV_PAGE_SIZE - 1),
	      "next_packet_size 8191 for 2 uncompressed pages (must be 8192)");
	BREAK(set_be32(buf + 20, 0xffffffff), "next_packet_size 4294967295");
	BREAK((set_be32(buf + 16, 0), set_be32(buf + 20, 1)),
	      "next_packet_size 1 with no normal pages");
	BREAK(memset(buf + 64, 'a', 256),
	      "packet 57: ramblock name not NUL-terminated");
#undef BREAK
	memcpy(buf, good, sizeof(buf));
	strcpy((char *)buf + 64, "pc.rom");
	expect_reject(buf, sizeof(buf), &rp, -ENOENT,
		      "packet 57: ramblock 'pc.rom' unknown");
}

static void test_decode_rejects_compressed_size(void **state)
{
	struct kv_mfd_recv_params rp = params(KV_MFD_METHOD_LZ4);
	uint8_t buf[352];

	(void)state;
	good_packet(buf, sizeof(buf), KV_MFD_FLAG_LZ4, 0);
	expect_reject(buf, sizeof(buf), &rp, -EINVAL,
		      "next_packet_size 0 for 2 compressed pages");
	good_packet(buf, sizeof(buf), KV_MFD_FLAG_LZ4,
		    (uint32_t)KV_MFD_PAYLOAD_MAX(2) + 1);
	expect_reject(buf, sizeof(buf), &rp, -EINVAL,
		      "compressed pages (must be 1..");
	/* A compressed packet needs the method bits when it has pages. */
	good_packet(buf, sizeof(buf), 0, 2 * KV_PAGE_SIZE);
	expect_reject(buf, sizeof(buf), &rp, -EINVAL,
		      "say compression none, but this migration uses lz4");
}

static void test_decode_rejects_offsets(void **state)
{
	struct kv_mfd_recv_params rp = params(KV_MFD_METHOD_NONE);
	uint8_t good[352], buf[352];

	(void)state;
	good_packet(good, sizeof(good), 0, 2 * KV_PAGE_SIZE);
	expect_reject(good, 351, &rp, -EINVAL,
		      "packet 57: 31 bytes of offsets (needs 32)");
	memcpy(buf, good, sizeof(buf));
	set_be64(buf + 320 + 8 * 1, 0x1234);
	expect_reject(buf, sizeof(buf), &rp, -EINVAL,
		      "multifd channel 1, packet 57: offset[1] 0x1234 not "
		      "page-aligned (normal page)");
	memcpy(buf, good, sizeof(buf));
	set_be64(buf + 320 + 8 * 2, RAM_LEN);
	expect_reject(buf, sizeof(buf), &rp, -EINVAL,
		      "offset[2] 0x4000000 beyond ramblock 'pc.ram' of "
		      "0x4000000 bytes (zero page)");
	memcpy(buf, good, sizeof(buf));
	set_be64(buf + 320, 0xfffffffffffff000ULL);
	expect_reject(buf, sizeof(buf), &rp, -EINVAL, "offset[0]");
	/* The last page of the block is fine, one page further is not. */
	memcpy(buf, good, sizeof(buf));
	strcpy((char *)buf + 64, "small");
	set_be64(buf + 320 + 8, 0);
	set_be64(buf + 320 + 16, 0);
	{
		uint64_t offs[4];
		struct kv_mfd_packet got = {.offsets = offs};
		struct kv_error err = {0};

		assert_int_equal(
		    kv_mfd_packet_decode(buf, sizeof(buf), &rp, &got, &err),
		    352);
	}
	set_be64(buf + 320 + 16, KV_PAGE_SIZE);
	expect_reject(buf, sizeof(buf), &rp, -EINVAL,
		      "offset[2] 0x1000 beyond ramblock 'small'");
}

static void test_caller_limit(void **state)
{
	struct kv_mfd_recv_params rp = params(KV_MFD_METHOD_NONE);
	uint8_t buf[352];

	(void)state;
	good_packet(buf, sizeof(buf), 0, 2 * KV_PAGE_SIZE);
	rp.max_pages = 3;
	expect_reject(buf, sizeof(buf), &rp, -EINVAL,
		      "pages_alloc 4 outside 1..3");
	/* A caller limit above the module's is clamped. */
	rp.max_pages = 1U << 30;
	set_be32(buf + 12, KV_MFD_PAGES_LIMIT + 1);
	expect_reject(buf, sizeof(buf), &rp, -EINVAL, "outside 1..4096");
}

static void test_no_block_lookup(void **state)
{
	struct kv_mfd_recv_params rp = params(KV_MFD_METHOD_NONE);
	uint8_t buf[352];

	(void)state;
	rp.block_len = NULL;
	good_packet(buf, sizeof(buf), 0, 2 * KV_PAGE_SIZE);
	expect_reject(buf, sizeof(buf), &rp, -ENOENT, "ramblock 'pc.ram'");
}

/* kvmig's POSTCOPY bit (0x100): a page packet or a SYNC may carry it,
 * with any method, when the receiver takes postcopy packets; it
 * survives the round trip and never collides with another flag. */
static void test_postcopy_flag(void **state)
{
	struct kv_mfd_recv_params rp = params(KV_MFD_METHOD_ZSTD);
	uint64_t offs[128];
	struct kv_mfd_packet got = {.offsets = offs};
	struct kv_error err = {0};
	uint8_t buf[352];

	(void)state;
	assert_int_equal(KV_MFD_FLAG_POSTCOPY, 0x100);
	assert_int_equal(KV_MFD_FLAG_POSTCOPY &
			     (KV_MFD_FLAG_SYNC | KV_MFD_FLAG_METHOD_MASK |
			      KV_MFD_FLAG_DEVICE_STATE),
			 0);
	rp.postcopy = true;
	good_packet(buf, sizeof(buf),
		    KV_MFD_FLAG_POSTCOPY | KV_MFD_FLAG_ZSTD, 100);
	assert_int_equal(kv_mfd_packet_decode(buf, sizeof(buf), &rp, &got,
					      &err),
			 352);
	assert_int_equal(got.flags, KV_MFD_FLAG_POSTCOPY | KV_MFD_FLAG_ZSTD);
	assert_int_equal(be32_at(buf + 8), 0x104);
	/* The last SYNC of postcopy: no pages, no method bits. */
	good_packet(buf, sizeof(buf),
		    KV_MFD_FLAG_POSTCOPY | KV_MFD_FLAG_SYNC, 0);
	set_be32(buf + 16, 0);
	set_be32(buf + 32, 0);
	assert_int_equal(kv_mfd_packet_decode(buf, sizeof(buf), &rp, &got,
					      &err),
			 352);
	/* Without postcopy-ram the same packet is refused, by name. */
	rp.postcopy = false;
	expect_reject(buf, sizeof(buf), &rp, -EINVAL,
		      "mark a postcopy packet, but postcopy-ram is off");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_init_layout),
	    cmocka_unit_test(test_init_round_trip),
	    cmocka_unit_test(test_init_rejects),
	    cmocka_unit_test(test_header_size),
	    cmocka_unit_test(test_packet_layout),
	    cmocka_unit_test(test_packet_round_trip),
	    cmocka_unit_test(test_sync_packet),
	    cmocka_unit_test(test_two_step_decode),
	    cmocka_unit_test(test_encode_rejects),
	    cmocka_unit_test(test_decode_rejects_header),
	    cmocka_unit_test(test_decode_rejects_compressed_size),
	    cmocka_unit_test(test_decode_rejects_offsets),
	    cmocka_unit_test(test_caller_limit),
	    cmocka_unit_test(test_no_block_lookup),
	    cmocka_unit_test(test_postcopy_flag),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
