/* SPDX-License-Identifier: MIT */
/*
 * The source's queue of requested pages: requests checked against the
 * blocks (and refused with the block and range named), served first and
 * page by page, never a page twice since the switch (urgent and background
 * claim in one bitmap), the background scan moved to just after a served
 * page, recovery from the destination's received bitmap, and a reader and
 * two senders running at once.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/bitmap.h"
#include "base/clock.h"
#include "base/units.h"
#include "migration/postcopy/postcopy_src.h"
#include "migration/return_path.h"

#define NPAGES 256
#define HUGE (2 * 1024 * 1024)

static const struct kv_pc_block block_v[] = {
    {"pc.ram", NPAGES * KV_PAGE_SIZE, KV_PAGE_SIZE},
    {"vga.vram", 16 * KV_PAGE_SIZE, KV_PAGE_SIZE},
    {"huge", 4 * HUGE, HUGE},
};
static const struct kv_pc_blocks blocks = {block_v, 3};

static struct kv_pc_src *new_src(void)
{
	struct kv_error err = {0};
	struct kv_pc_src *s = kv_pc_src_new(&blocks, &err);

	if (!s)
		fail_msg("%s", err.msg);
	return s;
}

static int req(struct kv_pc_src *s, const char *id, uint64_t start,
	       uint32_t len, struct kv_error *err)
{
	struct kv_pc_req r = {.has_id = id != NULL, .start = start, .len = len};

	if (id)
		snprintf(r.idstr, sizeof(r.idstr), "%s", id);
	return kv_pc_src_request(s, &r, err);
}

static void refused(struct kv_pc_src *s, const char *id, uint64_t start,
		    uint32_t len, const char *needle)
{
	struct kv_error err = {0};

	assert_true(req(s, id, start, len, &err) < 0);
	if (!strstr(err.msg, needle))
		fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void test_requests_checked(void **state)
{
	struct kv_pc_src *s = new_src();
	struct kv_pc_src_stats st;
	struct kv_pc_page pg;

	(void)state;
	refused(s, NULL, 0, KV_PAGE_SIZE, "REQ_PAGES for offset 0 names no block and no REQ_PAGES_ID came before it");
	refused(s, "pc.rom", 0, KV_PAGE_SIZE, "page request for unknown block 'pc.rom' (offset 0)");
	refused(s, "pc.ram", 100, KV_PAGE_SIZE, "postcopy: page request at offset 0x64 length 0x1000 of block 'pc.ram' is not aligned to its 4096-byte pages");
	refused(s, "pc.ram", 0, 100, "not aligned");
	refused(s, "pc.ram", 0, 0, "postcopy: page request at offset 0 of block 'pc.ram' has length 0");
	refused(s, "pc.ram", NPAGES * KV_PAGE_SIZE, KV_PAGE_SIZE, "goes past the end of block 'pc.ram' (0x100000 bytes)");
	refused(s, "vga.vram", 15 * KV_PAGE_SIZE, 2 * KV_PAGE_SIZE, "length 0x2000 goes past the end of block 'vga.vram'");
	refused(s, "pc.ram", UINT64_MAX - KV_PAGE_SIZE + 1, KV_PAGE_SIZE, "goes past the end");
	refused(s, "huge", KV_PAGE_SIZE, HUGE, "not aligned to its 2097152-byte pages");
	/* Nothing refused was queued. */
	assert_false(kv_pc_src_next_urgent(s, &pg));
	kv_pc_src_get_stats(s, &st);
	assert_int_equal(st.requests, 0);
	kv_pc_src_free(s);
}

/* From the bytes of the return path: REQ_PAGES_ID, then REQ_PAGES for the
 * same block. */
static void test_messages(void **state)
{
	struct kv_pc_src *s = new_src();
	struct kv_error err = {0};
	struct kv_pc_page pg;
	uint8_t buf[300];
	int n;

	(void)state;
	n = kv_pc_req_encode("vga.vram", 3 * KV_PAGE_SIZE, KV_PAGE_SIZE, buf, &err);
	assert_int_equal(kv_pc_src_handle_message(s, KV_RP_MSG_REQ_PAGES_ID, buf, (size_t)n, &err), 0);
	n = kv_pc_req_encode(NULL, 9 * KV_PAGE_SIZE, KV_PAGE_SIZE, buf, &err);
	assert_int_equal(kv_pc_src_handle_message(s, KV_RP_MSG_REQ_PAGES, buf, (size_t)n, &err), 0);
	assert_true(kv_pc_src_next_urgent(s, &pg));
	assert_int_equal(pg.block, 1);
	assert_int_equal(pg.offset, 3 * KV_PAGE_SIZE);
	assert_true(kv_pc_src_next_urgent(s, &pg));
	assert_int_equal(pg.block, 1);
	assert_int_equal(pg.offset, 9 * KV_PAGE_SIZE);
	/* 16 pages: page 16 is past vga.vram. */
	n = kv_pc_req_encode(NULL, 16 * KV_PAGE_SIZE, KV_PAGE_SIZE, buf, &err);
	assert_true(kv_pc_src_handle_message(s, KV_RP_MSG_REQ_PAGES, buf, (size_t)n, &err) < 0);
	assert_non_null(strstr(err.msg, "past the end of block 'vga.vram'"));
	kv_error_clear(&err);
	assert_true(kv_pc_src_handle_message(s, KV_RP_MSG_REQ_PAGES, buf, 11, &err) < 0);
	assert_non_null(strstr(err.msg, "REQ_PAGES of 11 bytes"));
	kv_pc_src_free(s);
}

static void test_served_first_once(void **state)
{
	struct kv_pc_src *s = new_src();
	struct kv_error err = {0};
	struct kv_pc_src_stats st;
	struct kv_pc_page pg;

	(void)state;
	/* The background scan sent pages 0..9 since the switch. */
	for (uint64_t p = 0; p < 10; p++)
		assert_true(kv_pc_src_claim(s, 0, p * KV_PAGE_SIZE));
	assert_false(kv_pc_src_claim(s, 0, 3 * KV_PAGE_SIZE));
	/* Pages 5..7 are on their way already; 20..22 are not. */
	assert_int_equal(req(s, "pc.ram", 5 * KV_PAGE_SIZE, 3 * KV_PAGE_SIZE, &err), 0);
	assert_int_equal(req(s, "pc.ram", 20 * KV_PAGE_SIZE, 3 * KV_PAGE_SIZE, &err), 0);
	assert_false(kv_pc_src_take_scan_hint(s, &pg));
	for (uint64_t p = 20; p < 23; p++) {
		assert_true(kv_pc_src_next_urgent(s, &pg));
		assert_int_equal(pg.block, 0);
		assert_int_equal(pg.offset, p * KV_PAGE_SIZE);
	}
	assert_false(kv_pc_src_next_urgent(s, &pg));
	/* The background scan goes on just after the last page served, once. */
	assert_true(kv_pc_src_take_scan_hint(s, &pg));
	assert_int_equal(pg.block, 0);
	assert_int_equal(pg.offset, 23 * KV_PAGE_SIZE);
	assert_false(kv_pc_src_take_scan_hint(s, &pg));
	/* ... and skips what the urgent path sent. */
	assert_false(kv_pc_src_claim(s, 0, 21 * KV_PAGE_SIZE));
	/* A request asked twice (two faults racing) is served once. */
	assert_int_equal(req(s, "vga.vram", 15 * KV_PAGE_SIZE, KV_PAGE_SIZE, &err), 0);
	assert_int_equal(req(s, "vga.vram", 15 * KV_PAGE_SIZE, KV_PAGE_SIZE, &err), 0);
	assert_true(kv_pc_src_next_urgent(s, &pg));
	assert_false(kv_pc_src_next_urgent(s, &pg));
	/* The last page of a block: the scan moves to the next block. */
	assert_true(kv_pc_src_take_scan_hint(s, &pg));
	assert_int_equal(pg.block, 2);
	assert_int_equal(pg.offset, 0);
	kv_pc_src_get_stats(s, &st);
	assert_int_equal(st.requests, 4);
	assert_int_equal(st.urgent, 4);
	assert_int_equal(st.duplicates, 4);
	assert_int_equal(st.background, 10);
	kv_pc_src_free(s);
}

static void test_recovery_and_limits(void **state)
{
	struct kv_pc_src *s = new_src();
	unsigned long *recv = kv_bitmap_new(NPAGES);
	struct kv_error err = {0};
	struct kv_pc_page pg;
	int64_t t0;
	int r = 0;

	(void)state;
	/* Sent 0..99; the destination got only the even ones before the
	 * link broke: the odd ones go again, the even ones never. */
	for (uint64_t p = 0; p < 100; p++)
		kv_pc_src_claim(s, 0, p * KV_PAGE_SIZE);
	for (size_t p = 0; p < 100; p += 2)
		kv_bitmap_set_atomic(recv, p);
	kv_pc_src_set_received(s, 0, recv);
	for (uint64_t p = 0; p < 100; p++)
		assert_int_equal(kv_pc_src_claim(s, 0, p * KV_PAGE_SIZE), p % 2 == 1);
	/* Requests queued before the break are dropped with it. */
	assert_int_equal(req(s, "pc.ram", 200 * KV_PAGE_SIZE, KV_PAGE_SIZE, &err), 0);
	kv_pc_src_flush(s);
	assert_false(kv_pc_src_next_urgent(s, &pg));
	/* A destination that asks without end is refused. */
	for (unsigned i = 0; i < KV_PC_SRC_QUEUE_MAX && r == 0; i++)
		r = req(s, "pc.ram", 0, KV_PAGE_SIZE, &err);
	assert_int_equal(r, 0);
	assert_int_equal(req(s, "pc.ram", 0, KV_PAGE_SIZE, &err), -ENOSPC);
	assert_non_null(strstr(err.msg, "4096 page requests wait already"));
	kv_pc_src_flush(s);
	/* Waiting: a timeout, then a wake-up. */
	t0 = kv_now_ms();
	assert_int_equal(kv_pc_src_wait_urgent(s, 30), 0);
	assert_true(kv_now_ms() - t0 >= 29);
	kv_pc_src_wake(s);
	assert_int_equal(kv_pc_src_wait_urgent(s, 5000), 0);
	assert_int_equal(req(s, "pc.ram", 0, KV_PAGE_SIZE, &err), 0);
	assert_int_equal(kv_pc_src_wait_urgent(s, 0), 1);
	kv_bitmap_free(recv);
	kv_pc_src_free(s);
}

/* A reader queues requests for every page in a scattered order while a
 * preempt sender serves them and a background sender scans: every page
 * leaves exactly once. */
struct run {
	struct kv_pc_src *s;
	unsigned sent[NPAGES]; /* atomic */
	bool done;             /* atomic */
};

static void *reader(void *arg)
{
	struct run *r = arg;

	for (int i = 0; i < NPAGES; i++) {
		struct kv_error err = {0};

		if (req(r->s, "pc.ram", (uint64_t)((i * 37) % NPAGES) * KV_PAGE_SIZE, KV_PAGE_SIZE, &err) < 0)
			fail_msg("%s", err.msg);
		if (i % 16 == 0)
			usleep(200);
	}
	return NULL;
}

static void *preempt_sender(void *arg)
{
	struct run *r = arg;
	struct kv_pc_page pg;

	while (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) {
		if (kv_pc_src_wait_urgent(r->s, 10) == 0)
			continue;
		while (kv_pc_src_next_urgent(r->s, &pg))
			__atomic_fetch_add(&r->sent[pg.offset / KV_PAGE_SIZE], 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void *background_sender(void *arg)
{
	struct run *r = arg;
	struct kv_pc_page hint;
	uint64_t p = 0;

	for (unsigned n = 0; n < 4 * NPAGES; n++) {
		if (kv_pc_src_take_scan_hint(r->s, &hint) && hint.block == 0)
			p = hint.offset / KV_PAGE_SIZE;
		if (kv_pc_src_claim(r->s, 0, p * KV_PAGE_SIZE))
			__atomic_fetch_add(&r->sent[p], 1, __ATOMIC_RELAXED);
		p = (p + 1) % NPAGES;
		if (n % 8 == 0)
			usleep(100);
	}
	return NULL;
}

static void test_threads(void **state)
{
	static struct run r;
	pthread_t rd, pre, bg;
	struct kv_pc_src_stats st;

	(void)state;
	memset(&r, 0, sizeof(r));
	r.s = new_src();
	pthread_create(&pre, NULL, preempt_sender, &r);
	pthread_create(&rd, NULL, reader, &r);
	pthread_create(&bg, NULL, background_sender, &r);
	pthread_join(rd, NULL);
	pthread_join(bg, NULL);
	__atomic_store_n(&r.done, true, __ATOMIC_RELEASE);
	kv_pc_src_wake(r.s);
	pthread_join(pre, NULL);
	/* Requests still queued when the preempt sender stopped. */
	{
		struct kv_pc_page pg;

		while (kv_pc_src_next_urgent(r.s, &pg))
			r.sent[pg.offset / KV_PAGE_SIZE]++;
	}
	for (int p = 0; p < NPAGES; p++)
		assert_int_equal(r.sent[p], 1);
	kv_pc_src_get_stats(r.s, &st);
	assert_int_equal(st.requests, NPAGES);
	assert_int_equal(st.urgent + st.background, NPAGES);
	assert_int_equal(st.urgent + st.duplicates, NPAGES);
	kv_pc_src_free(r.s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_requests_checked),
	    cmocka_unit_test(test_messages),
	    cmocka_unit_test(test_served_first_once),
	    cmocka_unit_test(test_recovery_and_limits),
	    cmocka_unit_test(test_threads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
