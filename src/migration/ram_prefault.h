/* SPDX-License-Identifier: MIT */
/*
 * Destination: a helper thread that faults guest RAM in a window ahead of
 * the last page the loader received (see ram_prefault.c for why).
 */
#ifndef KV_MIGRATION_RAM_PREFAULT_H
#define KV_MIGRATION_RAM_PREFAULT_H

#include <stddef.h>
#include <stdint.h>

struct kv_ram_prefault;

/* Starts the helper; NULL if no thread could be created (loading works
 * without it, only slower). */
struct kv_ram_prefault *kv_ram_prefault_start(void);

/* The loader received a page at offset in block number block (host
 * address block_host). Called by the loading thread only; cheap when the
 * page is in the same 2 MiB step as the previous one. A page behind the
 * previous one (a new pass) retires the helper for good. */
void kv_ram_prefault_note(struct kv_ram_prefault *pf, size_t block,
			  uint8_t *block_host, uint64_t block_length,
			  uint64_t offset);

/* Stops and joins the helper; NULL is a no-op. */
void kv_ram_prefault_stop(struct kv_ram_prefault *pf);

#endif
