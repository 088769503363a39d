/* SPDX-License-Identifier: MIT */
/*
 * mapped-ram (QEMU 9.0's capability): a file: migration in which every
 * page of a RAM block has one fixed place in the file, so a page sent
 * again replaces its older copy and the file never holds more than the
 * guest's RAM; zero pages are holes. docs/FORMAT.md 13 has every byte.
 *
 * In the RAM section's MEM_SIZE preamble, after each block's idstr and
 * length, comes the block's header (28 bytes, big-endian: be32 version 1,
 * be64 page size, be64 bitmap offset, be64 pages offset), then room for
 * its bitmap (one bit per page, host unsigned longs, written at the end),
 * then its pages from the next 1 MiB boundary; the stream goes on after
 * the last page of the block. Offsets are from the start of the file.
 *
 * Source: pages are written with positioned writes (runs of up to 1 MiB),
 * by the migration thread or, with multifd, by that many writer threads,
 * each with its own descriptor on the file (O_DIRECT with direct-io). A
 * page found zero after it was written is punched out of the file (it
 * reads back as zeros) and its bit cleared. Every pass ends once every
 * write of it is on the file, so an older copy never lands after a newer.
 * The bitmaps go out at save_complete.
 *
 * Destination: at each block's header the loader checks every field
 * against the block and the file, reads the bitmap and reads every page
 * it marks straight into guest memory (multifd: in parallel), then goes
 * on reading the stream after the block's pages. With postcopy-ram on
 * (instant resume, beyond QEMU) it reads no page: the pages are placed
 * through userfaultfd (postcopy/postcopy_dst.h) when the guest touches
 * them, and by a filler thread in file order, while the guest runs.
 */
#ifndef KV_MIGRATION_MAPPED_RAM_H
#define KV_MIGRATION_MAPPED_RAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "base/units.h"

#define KV_MAPPED_RAM_VERSION 1U
#define KV_MAPPED_RAM_HDR_SIZE 28U
/* Where a block's pages may start (QEMU's MAPPED_RAM_FILE_OFFSET_ALIGNMENT:
 * any device's O_DIRECT block divides it). */
#define KV_MAPPED_RAM_ALIGN KV_MiB
/* The most one positioned write or read moves. */
#define KV_MAPPED_RAM_IO_MAX KV_MiB

/* QEMU's MappedRamHeader, in host order. */
struct kv_mapped_ram_hdr {
	uint32_t version;
	uint64_t page_size;
	uint64_t bitmap_offset;
	uint64_t pages_offset;
};

void kv_mapped_ram_hdr_encode(const struct kv_mapped_ram_hdr *h,
			      uint8_t out[KV_MAPPED_RAM_HDR_SIZE]);
void kv_mapped_ram_hdr_decode(const uint8_t in[KV_MAPPED_RAM_HDR_SIZE],
			      struct kv_mapped_ram_hdr *h);
/* Bytes of a block's bitmap: whole host unsigned longs. */
uint64_t kv_mapped_ram_bitmap_size(uint64_t npages);
/* The header of a block of length bytes whose header starts at hdr_pos
 * (QEMU's layout: the bitmap right after the header, the pages at the
 * next aligned offset after the bitmap). */
void kv_mapped_ram_layout(uint64_t hdr_pos, uint64_t length,
			  struct kv_mapped_ram_hdr *h);
/* Is h, read at hdr_pos of file (file_size bytes), a header this
 * destination can load into block (length bytes)? 0, or -EINVAL naming
 * the field, the file and both values. */
int kv_mapped_ram_hdr_check(const struct kv_mapped_ram_hdr *h, uint64_t hdr_pos,
			    const char *block, uint64_t length,
			    uint64_t file_size, const char *file,
			    struct kv_error *err);

/* What a migration uses (from the capability and parameters). */
struct kv_mapped_ram_cfg {
	bool on;
	unsigned threads; /* multifd-channels with multifd, else 0: the
			   * migration or loading thread does the I/O */
	bool direct_io;
	/* Destination, postcopy-ram on: instant resume. The guest runs as
	 * soon as the device state is loaded; a page comes from the file
	 * when the guest first touches it (userfaultfd), and a thread
	 * fills in the rest in file order meanwhile. */
	bool instant;
};

struct kv_mig_params;
/* Settings that cannot go with mapped-ram (QEMU refuses the same), and
 * a URI that is not file:: 0 or -EINVAL saying which. */
int kv_mapped_ram_check_params(const struct kv_mig_params *p, const char *uri,
			       struct kv_error *err);
/* The configuration a migration with p uses. */
struct kv_mapped_ram_cfg kv_mapped_ram_cfg_of(const struct kv_mig_params *p);

#endif
