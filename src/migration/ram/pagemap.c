/* SPDX-License-Identifier: MIT */
/* Never-populated pages from /proc/self/pagemap (pagemap.h). */
#define _GNU_SOURCE
#include "migration/ram/pagemap.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "migration/ram/ram.h"

#define PM_PAGE KV_PAGE_SIZE
#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)

void kv_pagemap_init(struct kv_pagemap *pm)
{
	pm->fd = -1;
	pm->valid = false;
	pm->chunk = NULL;
}

/* One line of /proc/self/maps is private anonymous memory: no file, no
 * shared mapping; the heap and named anonymous regions count. */
static bool line_is_private_anon(const char *perms, unsigned long long inode,
				 const char *path)
{
	return perms[3] == 'p' && inode == 0 &&
	       (!path[0] || !strcmp(path, "[heap]") ||
		!strncmp(path, "[anon:", 6));
}

bool kv_pagemap_private_anon(const void *start, uint64_t length)
{
	uintptr_t covered = (uintptr_t)start, end = covered + length;
	char line[512];
	FILE *f;

	if (covered % PM_PAGE || sysconf(_SC_PAGESIZE) != (long)PM_PAGE)
		return false;
	f = fopen("/proc/self/maps", "re");
	if (!f)
		return false;
	while (covered < end && fgets(line, sizeof(line), f)) {
		uintptr_t lo, hi;
		unsigned long long inode;
		char perms[8], path[256] = "";
		int n = sscanf(line,
			       "%" SCNxPTR "-%" SCNxPTR " %7s %*s %*s %llu "
			       "%255s",
			       &lo, &hi, perms, &inode, path);

		if (n < 4 || hi <= covered)
			continue;
		if (lo > covered)
			break; /* a hole: not all mapped */
		if (!line_is_private_anon(perms, inode, path))
			break;
		covered = hi;
	}
	fclose(f);
	return covered >= end;
}

bool kv_pagemap_open(struct kv_pagemap *pm)
{
	pm->valid = false;
	if (pm->fd < 0)
		pm->fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	return pm->fd >= 0;
}

void kv_pagemap_close(struct kv_pagemap *pm)
{
	if (pm->fd >= 0)
		close(pm->fd);
	kv_pagemap_init(pm);
}

bool kv_pagemap_is_open(const struct kv_pagemap *pm)
{
	return pm->fd >= 0;
}

void kv_pagemap_invalidate(struct kv_pagemap *pm)
{
	pm->valid = false;
}

/* Read the entries of the chunk starting at chunk (count pages). */
static bool read_chunk(struct kv_pagemap *pm, const uint8_t *chunk,
		       size_t count)
{
	ssize_t want = (ssize_t)(count * sizeof(uint64_t));
	off_t at = (off_t)((uintptr_t)chunk / PM_PAGE * sizeof(uint64_t));

	if (pread(pm->fd, pm->ent, (size_t)want, at) != want) {
		kv_pagemap_close(pm); /* the caller reads pages instead */
		return false;
	}
	pm->valid = true;
	pm->chunk = chunk;
	return true;
}

bool kv_pagemap_unpopulated(struct kv_pagemap *pm, const uint8_t *host,
			    size_t npages, size_t page)
{
	size_t first = page / KV_PAGEMAP_CHUNK_PAGES * KV_PAGEMAP_CHUNK_PAGES;
	const uint8_t *chunk = host + first * PM_PAGE;

	if (pm->fd < 0)
		return false;
	if (!pm->valid || pm->chunk != chunk) {
		size_t count = npages - first;

		if (count > KV_PAGEMAP_CHUNK_PAGES)
			count = KV_PAGEMAP_CHUNK_PAGES;
		if (!read_chunk(pm, chunk, count))
			return false;
	}
	return !(pm->ent[page - first] & (PM_PRESENT | PM_SWAPPED));
}

void kv_pagemap_populated(struct kv_pagemap *pm, const uint8_t *host,
			  size_t page)
{
	size_t first = page / KV_PAGEMAP_CHUNK_PAGES * KV_PAGEMAP_CHUNK_PAGES;

	if (pm->valid && pm->chunk == host + first * PM_PAGE)
		pm->ent[page - first] |= PM_PRESENT;
}
