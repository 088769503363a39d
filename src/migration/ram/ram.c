/* SPDX-License-Identifier: MIT */
/* The RAM handler's bookkeeping: blocks, tracker, allocator, registration. */
#define _GNU_SOURCE
#include "migration/ram/ram.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/bitmap.h"
#include "migration/ram/ram_internal.h"
#include "migration/ram/ram_prefault.h"

struct kv_ram_state *kv_ram_new(void)
{
	struct kv_ram_state *rs = calloc(1, sizeof(*rs));

	if (!rs)
		return NULL;
	rs->last_sent = KV_RAM_NO_BLOCK;
	rs->last_recv = KV_RAM_NO_BLOCK;
	rs->pagemap_fd = -1;
	return rs;
}

void kv_ram_free(struct kv_ram_state *rs)
{
	if (!rs)
		return;
	kv_ram_prefault_stop(rs->prefault);
	kv_ram_xbzrle_free(rs);
	kv_ram_zc_cleanup(rs);
	kv_ram_release_allocated(rs);
	if (rs->pagemap_fd >= 0)
		close(rs->pagemap_fd);
	for (size_t i = 0; i < rs->nblocks; i++) {
		kv_bitmap_free(rs->blocks[i].dirty);
		kv_bitmap_free(rs->priv[i].clear_chunks);
		kv_bitmap_free(rs->priv[i].touched);
	}
	free(rs->blocks);
	free(rs->priv);
	free(rs);
}

size_t kv_ram_find_block(const struct kv_ram_state *rs, const char *idstr)
{
	for (size_t i = 0; i < rs->nblocks; i++)
		if (!strcmp(rs->blocks[i].idstr, idstr))
			return i;
	return KV_RAM_NO_BLOCK;
}

static int grow_blocks(struct kv_ram_state *rs, struct kv_error *err)
{
	size_t cap = rs->cap ? rs->cap * 2 : 8;
	struct kv_ram_block *b;
	struct kv_ram_block_priv *p;

	b = realloc(rs->blocks, cap * sizeof(*b));
	if (!b)
		return kv_error_set(err, -ENOMEM,
				    "ram: out of memory for "
				    "%zu block descriptors",
				    cap);
	rs->blocks = b;
	p = realloc(rs->priv, cap * sizeof(*p));
	if (!p)
		return kv_error_set(err, -ENOMEM,
				    "ram: out of memory for "
				    "%zu block descriptors",
				    cap);
	rs->priv = p;
	rs->cap = cap;
	return 0;
}

int kv_ram_append_block(struct kv_ram_state *rs, const char *idstr, void *host,
			uint64_t length, bool from_allocator,
			struct kv_error *err)
{
	size_t len = strlen(idstr);
	struct kv_ram_block *b;
	int ret;

	if (len == 0 || len > 255)
		return kv_error_set(err, -EINVAL,
				    "ram: block name '%.40s' "
				    "must be 1 to 255 bytes long (is %zu)",
				    idstr, len);
	if (!host)
		return kv_error_set(err, -EINVAL,
				    "ram: block '%s' has no "
				    "host memory",
				    idstr);
	if (length == 0 || length % KV_PAGE_SIZE)
		return kv_error_set(err, -EINVAL,
				    "ram: block '%s' length "
				    "0x%llx is not a positive multiple of the "
				    "page size (%u)",
				    idstr, (unsigned long long)length,
				    KV_PAGE_SIZE);
	if ((length >> KV_PAGE_SHIFT) > SIZE_MAX)
		return kv_error_set(err, -EINVAL,
				    "ram: block '%s' length "
				    "0x%llx is too large for this host",
				    idstr, (unsigned long long)length);
	if (kv_ram_find_block(rs, idstr) != KV_RAM_NO_BLOCK)
		return kv_error_set(err, -EEXIST,
				    "ram: block '%s' is "
				    "already registered",
				    idstr);
	if (rs->nblocks == rs->cap) {
		ret = grow_blocks(rs, err);
		if (ret < 0)
			return ret;
	}
	b = &rs->blocks[rs->nblocks];
	memset(b, 0, sizeof(*b));
	memcpy(b->idstr, idstr, len + 1);
	b->host = host;
	b->length = length;
	b->npages = (size_t)(length >> KV_PAGE_SHIFT);
	memset(&rs->priv[rs->nblocks], 0, sizeof(rs->priv[0]));
	rs->priv[rs->nblocks].from_allocator = from_allocator;
	return (int)rs->nblocks++;
}

int kv_ram_add_block(struct kv_ram_state *rs, const char *idstr, void *host,
		     uint64_t length, struct kv_error *err)
{
	int ret = kv_ram_append_block(rs, idstr, host, length, false, err);

	return ret < 0 ? ret : 0;
}

void kv_ram_release_allocated(struct kv_ram_state *rs)
{
	size_t kept = 0;

	for (size_t i = 0; i < rs->nblocks; i++) {
		struct kv_ram_block *b = &rs->blocks[i];
		struct kv_ram_block_priv *p = &rs->priv[i];

		if (!p->from_allocator) {
			rs->blocks[kept] = *b;
			rs->priv[kept] = *p;
			kept++;
			continue;
		}
		rs->allocator.release(rs->allocator.opaque, b->host, b->length);
		rs->allocated -= b->length;
		kv_bitmap_free(b->dirty);
		kv_bitmap_free(p->clear_chunks);
		kv_bitmap_free(p->touched);
	}
	rs->nblocks = kept;
	rs->pm_valid = false; /* indices moved */
	rs->last_recv = KV_RAM_NO_BLOCK;
	rs->last_sent = KV_RAM_NO_BLOCK;
}

/* The block lies in private anonymous mappings only (per /proc/self/maps):
 * no file or shared memory whose pages could hold data while unmapped. */
static bool range_is_private_anon(uintptr_t start, uintptr_t end)
{
	FILE *f = fopen("/proc/self/maps", "re");
	uintptr_t covered = start;
	char line[512];

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
		if (perms[3] != 'p' || inode != 0 ||
		    (path[0] && strcmp(path, "[heap]") &&
		     strncmp(path, "[anon:", 6)))
			break;
		covered = hi;
	}
	fclose(f);
	return covered >= end;
}

void kv_ram_pagemap_open(struct kv_ram_state *rs)
{
	bool any = false;

	rs->pm_valid = false;
	if (sysconf(_SC_PAGESIZE) != (long)KV_PAGE_SIZE)
		return;
	for (size_t i = 0; i < rs->nblocks; i++) {
		struct kv_ram_block *b = &rs->blocks[i];
		uintptr_t start = (uintptr_t)b->host;

		rs->priv[i].anon_private =
		    start % KV_PAGE_SIZE == 0 &&
		    range_is_private_anon(start, start + b->length);
		any |= rs->priv[i].anon_private;
	}
	if (any && rs->pagemap_fd < 0)
		rs->pagemap_fd =
		    open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
}

void kv_ram_pagemap_close(struct kv_ram_state *rs)
{
	if (rs->pagemap_fd >= 0)
		close(rs->pagemap_fd);
	rs->pagemap_fd = -1;
	rs->pm_valid = false;
}

#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)

bool kv_ram_page_unpopulated(struct kv_ram_state *rs, size_t bi, size_t page)
{
	const struct kv_ram_block *b = &rs->blocks[bi];
	size_t chunk = page / KV_RAM_CLEAR_CHUNK_PAGES;

	if (!rs->priv[bi].anon_private || rs->pagemap_fd < 0)
		return false;
	if (!rs->pm_valid || rs->pm_block != bi || rs->pm_chunk != chunk) {
		size_t first = chunk * KV_RAM_CLEAR_CHUNK_PAGES;
		size_t count = b->npages - first;
		uintptr_t addr = (uintptr_t)b->host + first * KV_PAGE_SIZE;
		ssize_t want, n;

		if (count > KV_RAM_CLEAR_CHUNK_PAGES)
			count = KV_RAM_CLEAR_CHUNK_PAGES;
		want = (ssize_t)(count * sizeof(uint64_t));
		n = pread(rs->pagemap_fd, rs->pm_ent, (size_t)want,
			  (off_t)(addr / KV_PAGE_SIZE * sizeof(uint64_t)));
		if (n != want) {
			kv_ram_pagemap_close(rs); /* read pages instead */
			return false;
		}
		rs->pm_valid = true;
		rs->pm_block = bi;
		rs->pm_chunk = chunk;
	}
	return !(rs->pm_ent[page % KV_RAM_CLEAR_CHUNK_PAGES] &
		 (PM_PRESENT | PM_SWAPPED));
}

void kv_ram_page_populated(struct kv_ram_state *rs, size_t bi, size_t page)
{
	if (rs->pm_valid && rs->pm_block == bi &&
	    rs->pm_chunk == page / KV_RAM_CLEAR_CHUNK_PAGES)
		rs->pm_ent[page % KV_RAM_CLEAR_CHUNK_PAGES] |= PM_PRESENT;
}

size_t kv_ram_block_count(const struct kv_ram_state *rs)
{
	return rs->nblocks;
}

struct kv_ram_block *kv_ram_block(struct kv_ram_state *rs, size_t i)
{
	return i < rs->nblocks ? &rs->blocks[i] : NULL;
}

void kv_ram_set_tracker(struct kv_ram_state *rs, struct kv_dirty_tracker t)
{
	rs->tracker = t;
	rs->has_tracker = t.ops != NULL;
}

void kv_ram_set_allocator(struct kv_ram_state *rs, struct kv_ram_allocator a)
{
	rs->allocator = a;
	rs->has_allocator = a.alloc != NULL && a.release != NULL;
}

void kv_ram_set_outcome(struct kv_ram_state *rs, bool completed)
{
	rs->completed = completed;
}

static const struct kv_savevm_live_ops ram_live_ops = {
    .save_setup = kv_ram_save_setup,
    .save_iterate = kv_ram_save_iterate,
    .save_complete = kv_ram_save_complete,
    .pending_estimate = kv_ram_pending_estimate,
    .pending_exact = kv_ram_pending_exact,
    .save_cleanup = kv_ram_save_cleanup,
    .load_setup = kv_ram_load_setup,
    .load_state = kv_ram_load_state,
    .load_cleanup = kv_ram_load_cleanup,
};

const struct kv_savevm_live_ops *kv_ram_live_ops(void)
{
	return &ram_live_ops;
}

int kv_ram_register(struct kv_ram_state *rs, struct kv_savevm *sv,
		    struct kv_error *err)
{
	return kv_savevm_register_live(sv, "ram", 0, KV_RAM_SECTION_VERSION,
				       KV_PRI_RAM, &ram_live_ops, rs, err);
}

void kv_ram_get_stats(const struct kv_ram_state *rs, struct kv_ram_stats *st)
{
	uint64_t mfd_normal = 0, mfd_zero = 0;

	if (rs->mfd_send)
		kv_mfd_send_pages(rs->mfd_send, &mfd_normal, &mfd_zero);
	else if (rs->mfd_recv)
		kv_mfd_recv_pages(rs->mfd_recv, &mfd_normal, &mfd_zero);
	st->zero_pages = kv_ram_stat_get(&rs->zero_pages) + mfd_zero;
	st->normal_pages = kv_ram_stat_get(&rs->normal_pages) + mfd_normal;
	st->dirty_sync_count = kv_ram_stat_get(&rs->dirty_sync_count);
	st->pass_pages = kv_ram_stat_get(&rs->pass_pages);
	st->dirty_pages = kv_ram_stat_get(&rs->dirty_pages);
}

/* The channels' page counts become the handler's own when they go. */
static void fold_counts(struct kv_ram_state *rs, uint64_t normal,
			uint64_t zero)
{
	kv_ram_stat_add(&rs->normal_pages, normal);
	kv_ram_stat_add(&rs->zero_pages, zero);
}

void kv_ram_set_multifd_send(struct kv_ram_state *rs, struct kv_mfd_send *m,
			     enum kv_mfd_zero zero)
{
	uint64_t normal, zeros;

	if (rs->mfd_send && rs->mfd_send != m) {
		kv_mfd_send_pages(rs->mfd_send, &normal, &zeros);
		fold_counts(rs, normal, zeros);
	}
	rs->mfd_send = m;
	rs->mfd_zero = zero;
}

void kv_ram_set_multifd_recv(struct kv_ram_state *rs, struct kv_mfd_recv *r)
{
	uint64_t normal, zeros;

	if (rs->mfd_recv && rs->mfd_recv != r) {
		kv_mfd_recv_pages(rs->mfd_recv, &normal, &zeros);
		fold_counts(rs, normal, zeros);
	}
	rs->mfd_recv = r;
}

uint64_t kv_ram_multifd_bytes(const struct kv_ram_state *rs)
{
	return rs->mfd_send ? kv_mfd_send_bytes(rs->mfd_send) : 0;
}

bool kv_ram_multifd_set_rate_limit(struct kv_ram_state *rs, uint64_t bps)
{
	if (!rs->mfd_send)
		return false;
	kv_mfd_send_set_rate_limit(rs->mfd_send, bps);
	return true;
}

void kv_ram_multifd_cancel(struct kv_ram_state *rs)
{
	if (rs->mfd_send)
		kv_mfd_send_cancel(rs->mfd_send);
	if (rs->mfd_recv)
		kv_mfd_recv_abort(rs->mfd_recv);
}
