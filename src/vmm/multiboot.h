/* SPDX-License-Identifier: MIT */
/*
 * Multiboot v1 loader: what a boot loader does for a multiboot kernel.
 *
 * kv_multiboot_parse() validates a kernel image held in memory (header in
 * the first 8 KiB, magic, checksum, flags we can honour; then either the
 * a.out kludge addresses or the 32-bit ELF program headers) and lists the
 * pieces to load, checked against guest RAM below the hole and against
 * what the VMM itself places in low memory (kv_mb_vmm_regions). Like
 * QEMU, and unlike GRUB, a piece may load below 1 MiB: GNU ld's default
 * layout puts the ELF headers in a read-only segment just below the text
 * (0xff000 for a kernel linked at 1 MiB).
 * kv_multiboot_load() copies them into guest RAM and writes the multiboot
 * information (memory sizes, command line, memory map, loader name) at
 * KV_MB_INFO_ADDR. Neither needs KVM.
 */
#ifndef KV_VMM_MULTIBOOT_H
#define KV_VMM_MULTIBOOT_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "vmm/memory.h"

#define KV_MB_HEADER_MAGIC 0x1BADB002U
#define KV_MB_BOOT_MAGIC   0x2BADB002U
#define KV_MB_SEARCH_BYTES 8192U
/* Multiboot information, memory map and command line live in
 * [KV_MB_INFO_ADDR, KV_MB_INFO_END): below the 0x8000 where guests put
 * their AP trampoline, above the real-mode IVT/BDA. */
#define KV_MB_INFO_ADDR	   0x5000U
#define KV_MB_INFO_END	   0x8000U
#define KV_MB_MAX_SEGMENTS 16

/* Header flags. */
#define KV_MB_FLAG_PAGE_ALIGN  (1u << 0)
#define KV_MB_FLAG_MEMORY_INFO (1u << 1)
#define KV_MB_FLAG_VIDEO_MODE  (1u << 2)
#define KV_MB_FLAG_AOUT_KLUDGE (1u << 16)

/* Information flags (what the info structure holds). */
#define KV_MBI_MEMORY	   (1u << 0)
#define KV_MBI_CMDLINE	   (1u << 2)
#define KV_MBI_MMAP	   (1u << 6)
#define KV_MBI_LOADER_NAME (1u << 9)

/* Offsets in the multiboot information structure. */
#define KV_MBI_OFF_FLAGS       0
#define KV_MBI_OFF_MEM_LOWER   4
#define KV_MBI_OFF_MEM_UPPER   8
#define KV_MBI_OFF_CMDLINE     16
#define KV_MBI_OFF_MMAP_LENGTH 44
#define KV_MBI_OFF_MMAP_ADDR   48
#define KV_MBI_OFF_LOADER_NAME 64
#define KV_MBI_SIZE	       88

#define KV_MB_MEM_AVAILABLE 1
#define KV_MB_MEM_RESERVED  2

struct kv_mb_segment {
	uint32_t paddr;
	uint32_t file_offset;
	uint32_t file_size; /* bytes copied from the file */
	uint32_t mem_size;  /* >= file_size; the rest stays zero */
};

struct kv_mb_kernel {
	uint32_t header_offset; /* where the header is in the file */
	uint32_t flags;		/* header flags */
	uint32_t entry;		/* physical entry point */
	int nsegments;
	struct kv_mb_segment segments[KV_MB_MAX_SEGMENTS];
};

/* What the VMM writes into guest RAM at boot, [start, end): no kernel
 * segment may overlap it. One table, in multiboot.c. */
struct kv_mb_region {
	uint32_t start, end;
	const char *what;
};
const struct kv_mb_region *kv_mb_vmm_regions(size_t *n);

/* Validate image[0, len) as a multiboot v1 kernel loadable into
 * [0, lowmem) clear of kv_mb_vmm_regions. Errors name what is wrong ("no
 * multiboot header in the first 8 KiB", "segment 2 ends beyond guest
 * RAM", "segment 0 [0xf0000, 0xf0094) overlaps the MP table ..."). */
int kv_multiboot_parse(const uint8_t *image, size_t len, uint64_t lowmem,
		       struct kv_mb_kernel *k, struct kv_error *err);

/* Whether the information structure for cmdline fits its area (what
 * kv_multiboot_load would fail on), without writing guest RAM. */
int kv_multiboot_check_info(const struct kv_gmem *mem, const char *cmdline,
			    struct kv_error *err);

/* Copy the segments into guest RAM (which must be fresh: memory beyond a
 * segment's file bytes is assumed zero) and write the information
 * structure. *info_addr receives the value for EBX. */
int kv_multiboot_load(const uint8_t *image, const struct kv_mb_kernel *k,
		      struct kv_gmem *mem, const char *cmdline,
		      uint32_t *info_addr, struct kv_error *err);

/* Read a whole kernel file (at most 256 MiB). *image is malloc'ed. */
int kv_multiboot_read_file(const char *path, uint8_t **image, size_t *len,
			   struct kv_error *err);

#endif
