/* SPDX-License-Identifier: MIT */
/* The RAM handler's bookkeeping: blocks, tracker, allocator, registration. */
#define _GNU_SOURCE
#include "migration/ram/ram.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "migration/ram/ram_internal.h"
#include "migration/ram/ram_prefault.h"

struct kv_ram_state *kv_ram_new(void)
{
	struct kv_ram_state *rs = calloc(1, sizeof(*rs));

	if (!rs)
		return NULL;
	rs->src.last_sent = KV_RAM_NO_BLOCK;
	rs->dst.last_recv = KV_RAM_NO_BLOCK;
	kv_pagemap_init(&rs->pagemap);
	return rs;
}

void kv_ram_free(struct kv_ram_state *rs)
{
	if (!rs)
		return;
	kv_ram_prefault_stop(rs->dst.prefault);
	kv_mapped_ram_cleanup(rs);
	kv_mapped_ram_instant_end(rs, true);
	kv_ram_xbzrle_free(rs);
	kv_ram_zc_cleanup(rs);
	kv_ram_load_free(rs);
	kv_ram_release_allocated(rs);
	kv_pagemap_close(&rs->pagemap);
	for (size_t i = 0; i < rs->nblocks; i++) {
		kv_bitmap_free(rs->blocks[i].dirty);
		kv_bitmap_free(rs->priv[i].clear_chunks);
		kv_bitmap_free(rs->priv[i].touched);
		kv_ram_verify_free(&rs->priv[i]);
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
	if (b)
		rs->blocks = b;
	p = b ? realloc(rs->priv, cap * sizeof(*p)) : NULL;
	if (!p)
		return kv_error_set(err, -ENOMEM, "ram: out of memory for %zu block descriptors", cap);
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
				    "ram: block name '%.40s' must be 1 to 255 bytes long (is %zu)",
				    idstr, len);
	if (!host)
		return kv_error_set(err, -EINVAL,
				    "ram: block '%s' has no host memory",
				    idstr);
	if (length == 0 || length % KV_PAGE_SIZE)
		return kv_error_set(err, -EINVAL,
				    "ram: block '%s' length 0x%llx is not a positive multiple of the page size (%u)",
				    idstr, (unsigned long long)length,
				    KV_PAGE_SIZE);
	if ((length >> KV_PAGE_SHIFT) > SIZE_MAX)
		return kv_error_set(err, -EINVAL,
				    "ram: block '%s' length 0x%llx is too large for this host",
				    idstr, (unsigned long long)length);
	if (kv_ram_find_block(rs, idstr) != KV_RAM_NO_BLOCK)
		return kv_error_set(err, -EEXIST,
				    "ram: block '%s' is already registered",
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
		rs->dst.allocator.release(rs->dst.allocator.opaque, b->host,
					  b->length);
		rs->dst.allocated -= b->length;
		kv_bitmap_free(b->dirty);
		kv_bitmap_free(p->clear_chunks);
		kv_bitmap_free(p->touched);
		kv_ram_verify_free(p);
	}
	rs->nblocks = kept;
	kv_pagemap_invalidate(&rs->pagemap); /* indices moved */
	rs->dst.last_recv = KV_RAM_NO_BLOCK;
	rs->src.last_sent = KV_RAM_NO_BLOCK;
}

void kv_ram_pagemap_open(struct kv_ram_state *rs)
{
	bool any = false;

	kv_pagemap_invalidate(&rs->pagemap);
	for (size_t i = 0; i < rs->nblocks; i++) {
		struct kv_ram_block *b = &rs->blocks[i];

		rs->priv[i].anon_private =
		    kv_pagemap_private_anon(b->host, b->length);
		any |= rs->priv[i].anon_private;
	}
	if (any)
		kv_pagemap_open(&rs->pagemap);
}

void kv_ram_pagemap_close(struct kv_ram_state *rs)
{
	kv_pagemap_close(&rs->pagemap);
}

bool kv_ram_page_unpopulated(struct kv_ram_state *rs, size_t bi, size_t page)
{
	const struct kv_ram_block *b = &rs->blocks[bi];

	return rs->priv[bi].anon_private &&
	       kv_pagemap_unpopulated(&rs->pagemap, b->host, b->npages, page);
}

void kv_ram_page_populated(struct kv_ram_state *rs, size_t bi, size_t page)
{
	kv_pagemap_populated(&rs->pagemap, rs->blocks[bi].host, page);
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
	rs->src.tracker = t;
	rs->src.has_tracker = t.ops != NULL;
}

void kv_ram_set_skip_redirtied(struct kv_ram_state *rs, bool on)
{
	rs->src.skip_redirtied = on;
}

void kv_ram_set_allocator(struct kv_ram_state *rs, struct kv_ram_allocator a)
{
	rs->dst.allocator = a;
	rs->dst.has_allocator = a.alloc != NULL && a.release != NULL;
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

	if (rs->src.mfd_send)
		kv_mfd_send_pages(rs->src.mfd_send, &mfd_normal, &mfd_zero);
	else if (rs->dst.mfd_recv)
		kv_mfd_recv_pages(rs->dst.mfd_recv, &mfd_normal, &mfd_zero);
	st->zero_pages = kv_ram_stat_get(&rs->zero_pages) + mfd_zero;
	st->normal_pages = kv_ram_stat_get(&rs->normal_pages) + mfd_normal;
	st->dirty_sync_count = kv_ram_stat_get(&rs->src.dirty_sync_count);
	st->pass_pages = kv_ram_stat_get(&rs->src.pass_pages);
	st->dirty_pages = kv_ram_stat_get(&rs->src.dirty_pages);
	st->dirty_peeks = kv_ram_stat_get(&rs->src.dirty_peeks);
	st->redirtied_skipped = kv_ram_stat_get(&rs->src.redirtied_skipped);
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

	if (rs->src.mfd_send && rs->src.mfd_send != m) {
		kv_mfd_send_pages(rs->src.mfd_send, &normal, &zeros);
		fold_counts(rs, normal, zeros);
	}
	rs->src.mfd_send = m;
	rs->src.mfd_zero = zero;
}

void kv_ram_set_multifd_recv(struct kv_ram_state *rs, struct kv_mfd_recv *r)
{
	uint64_t normal, zeros;

	if (rs->dst.mfd_recv && rs->dst.mfd_recv != r) {
		kv_mfd_recv_pages(rs->dst.mfd_recv, &normal, &zeros);
		fold_counts(rs, normal, zeros);
	}
	rs->dst.mfd_recv = r;
}

uint64_t kv_ram_multifd_bytes(const struct kv_ram_state *rs)
{
	/* mapped-ram's page writes count as the channels' bytes: they are
	 * the pass's bandwidth. */
	return (rs->src.mfd_send ? kv_mfd_send_bytes(rs->src.mfd_send) : 0) +
	       kv_mapped_ram_bytes(rs);
}

void kv_ram_set_mapped_ram(struct kv_ram_state *rs,
			   const struct kv_mapped_ram_cfg *cfg)
{
	rs->mapped_cfg = *cfg;
}

bool *kv_ram_mapped_ram_on(struct kv_ram_state *rs)
{
	return &rs->mapped_cfg.on;
}

void kv_ram_multifd_cancel(struct kv_ram_state *rs)
{
	if (rs->src.mfd_send)
		kv_mfd_send_cancel(rs->src.mfd_send);
	if (rs->dst.mfd_recv)
		kv_mfd_recv_abort(rs->dst.mfd_recv);
}
