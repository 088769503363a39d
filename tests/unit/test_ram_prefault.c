/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the destination's prefault helper
 * (src/migration/ram/ram_prefault.c): it faults memory in a window ahead of the
 * pages the loader reports, never far past the last one, stops for good
 * when pages go backwards (a new pass), and never changes what memory
 * holds. Residency is read with mincore(2) on real anonymous memory.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/units.h"
#include "migration/ram/ram_prefault.h"

#define BLOCK_SIZE (128 * KV_MiB)

static uint8_t *map_block(void)
{
	void *p = mmap(NULL, BLOCK_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	assert_true(p != MAP_FAILED);
	/* 4 KiB pages: residency is then exactly what was faulted in. */
	(void)madvise(p, BLOCK_SIZE, MADV_NOHUGEPAGE);
	return p;
}

static size_t resident_pages(uint8_t *base, uint64_t off, uint64_t len)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t n = (size_t)(len / (uint64_t)pg), count = 0;
	unsigned char *vec = malloc(n);

	assert_non_null(vec);
	assert_int_equal(mincore(base + off, len, vec), 0);
	for (size_t i = 0; i < n; i++)
		count += vec[i] & 1;
	free(vec);
	return count;
}

/* Waits up to 5 s for [off, off+len) to be fully resident. */
static bool wait_resident(uint8_t *base, uint64_t off, uint64_t len)
{
	size_t want = (size_t)(len / (uint64_t)sysconf(_SC_PAGESIZE));
	struct timespec ms = {0, 1000000};

	for (int i = 0; i < 5000; i++) {
		if (resident_pages(base, off, len) == want)
			return true;
		nanosleep(&ms, NULL);
	}
	return false;
}

static void settle(void)
{
	struct timespec t = {0, 50 * 1000000};

	nanosleep(&t, NULL);
}

static void test_faults_in_ahead_of_the_loader(void **state)
{
	uint8_t *b = map_block();
	struct kv_ram_prefault *pf = kv_ram_prefault_start();

	(void)state;
	assert_non_null(pf);
	kv_ram_prefault_note(pf, 0, b, BLOCK_SIZE, 0);
	/* The window (32 MiB) past the loader's 2 MiB step fills in... */
	assert_true(wait_resident(b, 2 * KV_MiB, 32 * KV_MiB));
	settle();
	/* ...and nothing beyond it: memory the stream never writes stays
	 * out. The loader's own step is left to the loader. */
	assert_int_equal(resident_pages(b, 40 * KV_MiB, BLOCK_SIZE - 40 * KV_MiB), 0);
	assert_int_equal(resident_pages(b, 0, 2 * KV_MiB), 0);
	/* The window follows the pages. */
	kv_ram_prefault_note(pf, 0, b, BLOCK_SIZE, 20 * KV_MiB + 4096);
	assert_true(wait_resident(b, 22 * KV_MiB, 32 * KV_MiB));
	settle();
	assert_int_equal(resident_pages(b, 60 * KV_MiB, BLOCK_SIZE - 60 * KV_MiB), 0);
	kv_ram_prefault_stop(pf);
	munmap(b, BLOCK_SIZE);
}

static void test_retires_when_pages_go_backwards(void **state)
{
	uint8_t *b = map_block();
	struct kv_ram_prefault *pf = kv_ram_prefault_start();

	(void)state;
	assert_non_null(pf);
	kv_ram_prefault_note(pf, 0, b, BLOCK_SIZE, 64 * KV_MiB);
	assert_true(wait_resident(b, 66 * KV_MiB, 32 * KV_MiB));
	/* A page behind the last one: the second pass began. */
	kv_ram_prefault_note(pf, 0, b, BLOCK_SIZE, 0);
	kv_ram_prefault_note(pf, 0, b, BLOCK_SIZE, 4 * KV_MiB);
	settle();
	assert_int_equal(resident_pages(b, 0, 64 * KV_MiB), 0);
	kv_ram_prefault_stop(pf);
	munmap(b, BLOCK_SIZE);
}

static void test_another_block_restarts_the_window(void **state)
{
	uint8_t *b0 = map_block(), *b1 = map_block();
	struct kv_ram_prefault *pf = kv_ram_prefault_start();

	(void)state;
	assert_non_null(pf);
	kv_ram_prefault_note(pf, 0, b0, 8 * KV_MiB, 0);
	/* The window stops at the block's end. */
	assert_true(wait_resident(b0, 2 * KV_MiB, 6 * KV_MiB));
	kv_ram_prefault_note(pf, 1, b1, BLOCK_SIZE, 0);
	assert_true(wait_resident(b1, 2 * KV_MiB, 32 * KV_MiB));
	settle();
	assert_int_equal(resident_pages(b0, 8 * KV_MiB, BLOCK_SIZE - 8 * KV_MiB), 0);
	kv_ram_prefault_stop(pf);
	munmap(b0, BLOCK_SIZE);
	munmap(b1, BLOCK_SIZE);
}

static void test_zero_page_cuts_the_window(void **state)
{
	uint8_t *b = map_block();
	struct kv_ram_prefault *pf = kv_ram_prefault_start();
	size_t before, after;

	(void)state;
	assert_non_null(pf);
	/* Data ends at 4 MiB: the window asked for reaches 38 MiB, until a
	 * zero page at 6 MiB says nothing more is coming there. */
	kv_ram_prefault_note(pf, 0, b, BLOCK_SIZE, 4 * KV_MiB);
	assert_int_equal(kv_ram_prefault_window_end(pf), 38 * KV_MiB);
	kv_ram_prefault_note_zero(pf, 0, 6 * KV_MiB + 4096);
	assert_int_equal(kv_ram_prefault_window_end(pf), 6 * KV_MiB);
	/* Only steps claimed before the cut may still complete: once they
	 * did, nothing more becomes resident. */
	settle();
	settle();
	before = resident_pages(b, 6 * KV_MiB, BLOCK_SIZE - 6 * KV_MiB);
	settle();
	settle();
	after = resident_pages(b, 6 * KV_MiB, BLOCK_SIZE - 6 * KV_MiB);
	assert_int_equal(before, after);
	/* More zero pages of the same step change nothing; data again opens
	 * the window from there. */
	kv_ram_prefault_note_zero(pf, 0, 6 * KV_MiB + 8192);
	assert_int_equal(kv_ram_prefault_window_end(pf), 6 * KV_MiB);
	kv_ram_prefault_note(pf, 0, b, BLOCK_SIZE, 8 * KV_MiB);
	assert_int_equal(kv_ram_prefault_window_end(pf), 42 * KV_MiB);
	assert_true(wait_resident(b, 10 * KV_MiB, 32 * KV_MiB));
	kv_ram_prefault_stop(pf);
	munmap(b, BLOCK_SIZE);
}

static void test_contents_are_kept(void **state)
{
	uint8_t *b = map_block();
	struct kv_ram_prefault *pf;

	(void)state;
	/* Pages the loader already wrote, inside the helper's window. */
	for (uint64_t off = 2 * KV_MiB; off < 34 * KV_MiB; off += 1 * KV_MiB)
		memset(b + off, (int)(off / KV_MiB), 4096);
	pf = kv_ram_prefault_start();
	assert_non_null(pf);
	kv_ram_prefault_note(pf, 0, b, BLOCK_SIZE, 0);
	assert_true(wait_resident(b, 2 * KV_MiB, 32 * KV_MiB));
	for (uint64_t off = 2 * KV_MiB; off < 34 * KV_MiB; off += 1 * KV_MiB) {
		assert_int_equal(b[off], (uint8_t)(off / KV_MiB));
		assert_int_equal(b[off + 4095], (uint8_t)(off / KV_MiB));
		assert_int_equal(b[off + 4096], 0);
	}
	kv_ram_prefault_stop(pf);
	munmap(b, BLOCK_SIZE);
}

static void test_stop_without_notes(void **state)
{
	(void)state;
	kv_ram_prefault_stop(kv_ram_prefault_start());
	kv_ram_prefault_stop(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_faults_in_ahead_of_the_loader),
	    cmocka_unit_test(test_retires_when_pages_go_backwards),
	    cmocka_unit_test(test_another_block_restarts_the_window),
	    cmocka_unit_test(test_zero_page_cuts_the_window),
	    cmocka_unit_test(test_contents_are_kept),
	    cmocka_unit_test(test_stop_without_notes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
