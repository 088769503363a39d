/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of src/migration/ram/pagemap.c against the real kernel: a
 * fresh private anonymous mapping reports every page unpopulated; after a
 * write the page is present (once the cache is dropped, or at once when we
 * say we wrote it); shared and file mappings are not private anonymous;
 * a closed pagemap answers "populated" for every page.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "migration/ram/pagemap.h"
#include "migration/ram/ram.h"

#define PG KV_PAGE_SIZE
/* Two chunks and a part: the cache moves between chunks. */
#define NPAGES (2 * KV_PAGEMAP_CHUNK_PAGES + 100)

static uint8_t *map_anon(int flags)
{
	void *p = mmap(NULL, NPAGES * PG, PROT_READ | PROT_WRITE,
		       flags | MAP_ANONYMOUS, -1, 0);

	assert_true(p != MAP_FAILED);
	/* THP could populate a neighbour with a written page. */
	madvise(p, NPAGES * PG, MADV_NOHUGEPAGE);
	return p;
}

static void open_or_skip(struct kv_pagemap *pm)
{
	kv_pagemap_init(pm);
	if (!kv_pagemap_open(pm)) {
		printf("# SKIP: /proc/self/pagemap cannot be opened\n");
		skip();
	}
	assert_true(kv_pagemap_is_open(pm));
}

static void test_fresh_mapping_untouched(void **state)
{
	uint8_t *mem = map_anon(MAP_PRIVATE);
	struct kv_pagemap pm;

	(void)state;
	assert_true(kv_pagemap_private_anon(mem, NPAGES * PG));
	open_or_skip(&pm);
	for (size_t pg = 0; pg < NPAGES; pg++)
		if (!kv_pagemap_unpopulated(&pm, mem, NPAGES, pg))
			fail_msg("page %zu of a fresh mapping is populated", pg);
	kv_pagemap_close(&pm);
	munmap(mem, NPAGES * PG);
}

static void test_written_page_present(void **state)
{
	static const size_t written[] = {3, KV_PAGEMAP_CHUNK_PAGES + 7,
					 NPAGES - 1};
	uint8_t *mem = map_anon(MAP_PRIVATE);
	struct kv_pagemap pm;

	(void)state;
	open_or_skip(&pm);
	/* Cache the first chunk, then write behind its back. */
	assert_true(kv_pagemap_unpopulated(&pm, mem, NPAGES, 3));
	for (size_t i = 0; i < 3; i++)
		mem[written[i] * PG + 5] = 1;
	/* The cache is as old as its read... */
	assert_true(kv_pagemap_unpopulated(&pm, mem, NPAGES, 3));
	/* ...until dropped. */
	kv_pagemap_invalidate(&pm);
	for (size_t i = 0; i < 3; i++) {
		assert_false(kv_pagemap_unpopulated(&pm, mem, NPAGES,
						    written[i]));
		assert_true(kv_pagemap_unpopulated(&pm, mem, NPAGES,
						   written[i] - 1));
	}
	/* A write we report ourselves shows without a new read. */
	assert_true(kv_pagemap_unpopulated(&pm, mem, NPAGES, 10));
	mem[10 * PG] = 1;
	kv_pagemap_populated(&pm, mem, 10);
	assert_false(kv_pagemap_unpopulated(&pm, mem, NPAGES, 10));
	/* Closed: every page counts as populated. */
	kv_pagemap_close(&pm);
	assert_false(kv_pagemap_is_open(&pm));
	assert_false(kv_pagemap_unpopulated(&pm, mem, NPAGES, 20));
	munmap(mem, NPAGES * PG);
}

static void test_only_private_anon(void **state)
{
	uint8_t *priv = map_anon(MAP_PRIVATE);
	uint8_t *shared = map_anon(MAP_SHARED);
	FILE *f = tmpfile();
	void *file;

	(void)state;
	assert_non_null(f);
	assert_int_equal(ftruncate(fileno(f), PG), 0);
	file = mmap(NULL, PG, PROT_READ, MAP_PRIVATE, fileno(f), 0);
	assert_true(file != MAP_FAILED);
	assert_true(kv_pagemap_private_anon(priv, NPAGES * PG));
	/* Not page-aligned. */
	assert_false(kv_pagemap_private_anon(priv + 8, PG));
	/* Shared anonymous memory is shmem: it keeps data while unmapped. */
	assert_false(kv_pagemap_private_anon(shared, NPAGES * PG));
	assert_false(kv_pagemap_private_anon(file, PG));
	munmap(file, PG);
	fclose(f);
	munmap(shared, NPAGES * PG);
	/* Beyond the mapping: a hole. */
	munmap(priv + (NPAGES - 1) * PG, PG);
	assert_false(kv_pagemap_private_anon(priv, NPAGES * PG));
	munmap(priv, (NPAGES - 1) * PG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fresh_mapping_untouched),
	    cmocka_unit_test(test_written_page_present),
	    cmocka_unit_test(test_only_private_anon),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
