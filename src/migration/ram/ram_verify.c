/* SPDX-License-Identifier: MIT */
/*
 * --verify-ram's RAM digest, kept as pages go (docs/DESIGN.md, "Verified
 * switch-over"): every page has a slot holding the XXH3-64 of its content
 * as it was last sent (source, hashed when ram_save.c chose how to send
 * it: a zero page, found zero anyway, is not read again) or placed
 * (destination, hashed right after the bytes are written, on whichever
 * thread writes them). A guest write after the hash marks the page dirty,
 * so its last hash is of what its last send read. The digest is the XXH3-128 of all slots,
 * block after block: the pause hashes only the last pass's pages and
 * 8 bytes a page of table, not the whole of RAM.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "migration/ram/ram_internal.h"

static uint64_t page_hash(const uint8_t *p)
{
	return XXH3_64bits(p, KV_PAGE_SIZE);
}

void kv_ram_set_verify(struct kv_ram_state *rs, bool on)
{
	static const uint8_t zero[KV_PAGE_SIZE];

	rs->verify.on = on;
	rs->verify.zero_hash = page_hash(zero);
}

int kv_ram_verify_prepare(struct kv_ram_state *rs, struct kv_error *err)
{
	if (!rs->verify.on)
		return 0;
	for (size_t i = 0; i < rs->nblocks; i++) {
		struct kv_ram_block_priv *p = &rs->priv[i];
		size_t n = rs->blocks[i].npages;

		if (!p->page_hash)
			p->page_hash = malloc((n ? n : 1) * sizeof(uint64_t));
		if (!p->page_hash)
			return kv_error_set(err, -ENOMEM, "ram: out of memory for the page hashes of block '%s' (%zu pages)", rs->blocks[i].idstr, n);
		for (size_t pg = 0; pg < n; pg++)
			p->page_hash[pg] = rs->verify.zero_hash;
	}
	return 0;
}

void kv_ram_verify_page(struct kv_ram_state *rs, size_t bi, size_t page)
{
	uint64_t *slot;

	if (!rs->verify.on || !rs->priv[bi].page_hash)
		return;
	slot = &rs->priv[bi].page_hash[page];
	*slot = page_hash(rs->blocks[bi].host + ((uint64_t)page << KV_PAGE_SHIFT));
}

void kv_ram_verify_data(struct kv_ram_state *rs, size_t bi, size_t page,
			const void *data)
{
	if (rs->verify.on && rs->priv[bi].page_hash)
		rs->priv[bi].page_hash[page] = page_hash(data);
}

void kv_ram_verify_zero(struct kv_ram_state *rs, size_t bi, size_t page)
{
	if (rs->verify.on && rs->priv[bi].page_hash)
		rs->priv[bi].page_hash[page] = rs->verify.zero_hash;
}

void kv_ram_verify_free(struct kv_ram_block_priv *p)
{
	free(p->page_hash);
	p->page_hash = NULL;
}

int kv_ram_verify_digest(struct kv_ram_state *rs, uint8_t out[16],
			 struct kv_error *err)
{
	XXH3_state_t *st;
	XXH128_canonical_t c;

	if (!rs->verify.on)
		return kv_error_set(err, -EINVAL, "ram: page hashing is off (kv_ram_set_verify)");
	st = XXH3_createState();
	if (!st)
		return kv_error_set(err, -ENOMEM, "ram: out of memory for the RAM digest");
	XXH3_128bits_reset(st);
	for (size_t i = 0; i < rs->nblocks; i++) {
		const struct kv_ram_block_priv *p = &rs->priv[i];

		if (!p->page_hash) {
			XXH3_freeState(st);
			return kv_error_set(err, -ENODATA, "ram: block '%s' has no page hashes: it was neither sent nor loaded", rs->blocks[i].idstr);
		}
		XXH3_128bits_update(st, p->page_hash,
				    rs->blocks[i].npages * sizeof(uint64_t));
	}
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
	XXH3_freeState(st);
	memcpy(out, c.digest, 16);
	return 0;
}
