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

/* The loader received a zero page (ZERO record) at offset in block: the
 * data in front of the window ended, so the window is cut back to it.
 * Loading thread only; cheap when nothing changes. */
void kv_ram_prefault_note_zero(struct kv_ram_prefault *pf, size_t block,
			       uint64_t offset);

/* Asks the helper to stop after the step in flight, without waiting;
 * memory it still faults in meanwhile only becomes resident (as zero if
 * it was not). NULL is a no-op. */
void kv_ram_prefault_retire(struct kv_ram_prefault *pf);

/* Where the window asked of the helpers ends now (an offset in the block
 * of the last note); for tests and logs. */
uint64_t kv_ram_prefault_window_end(struct kv_ram_prefault *pf);

/* Stops, joins and frees the helper; NULL is a no-op. */
void kv_ram_prefault_stop(struct kv_ram_prefault *pf);

#endif
