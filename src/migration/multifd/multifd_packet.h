/* SPDX-License-Identifier: MIT */
/*
 * The multifd wire format: what travels on each extra channel of a multifd
 * migration, in QEMU's layout (migration/multifd/multifd.c, MultiFDInit_t and
 * MultiFDPacket_t of QEMU 9.x, with zero pages) so that kvmig and QEMU can
 * talk to each other. Every integer is big-endian. docs/FORMAT.md, section
 * "multifd channels", describes every byte.
 *
 *  - The init message, 64 bytes, first on every channel: magic, version,
 *    the source's UUID and the channel id.
 *  - Then packets: a fixed 320-byte header (magic, version, flags, page
 *    counts, payload size, packet number, RAM block name), pages_alloc be64
 *    page offsets of which normal + zero are used (normal pages first), then
 *    next_size bytes of payload: the normal pages, raw or compressed.
 *
 * This module only encodes and checks bytes; it neither reads sockets nor
 * touches guest memory. The decoder is strict: every field is checked
 * before the caller reads or writes anything it describes, and every error
 * names the channel, the packet number and the field, e.g.
 * "multifd channel 1, packet 57: offset[3] 0x1234 not page-aligned".
 */
#ifndef KV_MIGRATION_MULTIFD_PACKET_H
#define KV_MIGRATION_MULTIFD_PACKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "base/units.h"

#define KV_MFD_MAGIC	 0x11223344U
#define KV_MFD_VERSION	 1U

/* The init message: always this many bytes. */
#define KV_MFD_INIT_SIZE 64U
#define KV_MFD_UUID_SIZE 16U

/* The packet header before the offsets array. */
#define KV_MFD_HDR_SIZE	       320U
#define KV_MFD_BLOCK_NAME_SIZE 256U

/* QEMU's packets hold 512 KiB: 128 pages of 4 KiB. A QEMU receiver reads
 * exactly that many offset slots, so a sender talking to QEMU must use
 * pages_alloc = KV_MFD_PAGES_DEFAULT. */
#define KV_MFD_PAGES_DEFAULT 128U
/* The largest pages_alloc any caller may allow (16 MiB packets): bounds
 * every allocation a peer's header can cause. */
#define KV_MFD_PAGES_LIMIT 4096U

/* Flags. Bit 0 is SYNC; bits 1..5 are QEMU's compression methods (one at a
 * time), bit 6 QEMU's device-state packets; bit 7 is kvmig's own LZ4, which
 * no QEMU uses; bit 8 is kvmig's POSTCOPY: the packet's pages are
 * background pages sent after the postcopy switch, to be placed through
 * userfaultfd (only with postcopy-ram and multifd both on; QEMU refuses
 * that pair). */
#define KV_MFD_FLAG_SYNC	 (1U << 0)
#define KV_MFD_FLAG_NOCOMP	 (0U << 1)
#define KV_MFD_FLAG_ZLIB	 (1U << 1)
#define KV_MFD_FLAG_ZSTD	 (2U << 1)
#define KV_MFD_FLAG_QPL		 (4U << 1)
#define KV_MFD_FLAG_UADK	 (8U << 1)
#define KV_MFD_FLAG_QATZIP	 (16U << 1)
#define KV_MFD_FLAG_DEVICE_STATE (32U << 1)
#define KV_MFD_FLAG_LZ4		 (1U << 7) /* kvmig extension */
#define KV_MFD_FLAG_POSTCOPY	 (1U << 8) /* kvmig extension */
/* Every bit that names a compression method, QEMU's and kvmig's. */
#define KV_MFD_FLAG_METHOD_MASK ((0x1fU << 1) | KV_MFD_FLAG_LZ4)

/* The compression method of a migration (QMP multifd-compression). */
enum kv_mfd_method {
	KV_MFD_METHOD_NONE,
	KV_MFD_METHOD_ZLIB,
	KV_MFD_METHOD_ZSTD,
	KV_MFD_METHOD_LZ4,
	KV_MFD_METHOD_COUNT,
};

/* The flag bits a packet of this method carries (0 for none). */
uint32_t kv_mfd_method_flag(enum kv_mfd_method method);

/*
 * The largest payload the decoder accepts for `normal` pages compressed by
 * any method: above every codec's compress bound (codec/codec.h), so an
 * honest sender always fits, and small enough that a receive buffer of this
 * size is no risk.
 */
#define KV_MFD_PAYLOAD_MAX(normal)                                             \
	((size_t)(normal) * (KV_PAGE_SIZE + 64U) + 1024U)

/* ---- init message ---- */

struct kv_mfd_init {
	uint8_t uuid[KV_MFD_UUID_SIZE]; /* QEMU's -uuid; zeros by default */
	uint8_t id;			/* channel number, 0-based */
};

/* Write the 64-byte init message (reserved bytes zero). */
void kv_mfd_init_encode(const struct kv_mfd_init *msg,
			uint8_t buf[KV_MFD_INIT_SIZE]);

/*
 * Check and decode a received init message: magic, version, id < channels,
 * and the UUID equal to expect_uuid unless that is NULL. Reserved bytes are
 * ignored (QEMU does). Returns 0, or -EINVAL with err naming the field.
 */
int kv_mfd_init_decode(const uint8_t buf[KV_MFD_INIT_SIZE], unsigned channels,
		       const uint8_t *expect_uuid, struct kv_mfd_init *msg,
		       struct kv_error *err);

/* ---- packets ---- */

struct kv_mfd_packet {
	uint32_t flags;
	uint32_t pages_alloc; /* offset slots on the wire */
	uint32_t normal;      /* pages whose data is in the payload */
	uint32_t zero;	      /* pages the receiver fills with zeros */
	uint32_t next_size;   /* payload bytes after the offsets */
	uint64_t packet_num;
	char block[KV_MFD_BLOCK_NAME_SIZE]; /* NUL-terminated RAM block id */
	/* normal + zero offsets within the block, normal pages first. The
	 * caller owns the array; the decoder needs room for max_pages. */
	uint64_t *offsets;
	/* Filled by the decoder: the block's length from the lookup (0 when
	 * the packet has no pages). */
	uint64_t block_len;
};

/* Bytes of a packet before its payload: header plus offset slots. */
size_t kv_mfd_packet_header_size(uint32_t pages_alloc);

/*
 * Encode pkt's header and offsets into buf (at least
 * kv_mfd_packet_header_size(pkt->pages_alloc) bytes); unused offset slots
 * are zero. Returns the bytes written, or -EINVAL / -ENOSPC with err set
 * (counts above pages_alloc, a block name that does not fit, a short
 * buffer). The payload is the caller's to send after it.
 */
long kv_mfd_packet_encode(const struct kv_mfd_packet *pkt, uint8_t *buf,
			  size_t buf_len, struct kv_error *err);

/* Look up a RAM block by name: 0 and its length in bytes, or a negative
 * errno when there is no such block. */
typedef int (*kv_mfd_block_len_fn)(void *opaque, const char *name,
				   uint64_t *len);

/* What the receiver of one channel accepts. */
struct kv_mfd_recv_params {
	unsigned channel;   /* for messages only */
	uint32_t max_pages; /* pages_alloc limit, <= KV_MFD_PAGES_LIMIT */
	enum kv_mfd_method method; /* negotiated compression */
	bool postcopy; /* POSTCOPY packets are accepted (postcopy-ram on) */
	kv_mfd_block_len_fn block_len;
	void *opaque;
};

/*
 * Decode and check the fixed header (KV_MFD_HDR_SIZE bytes of buf): magic,
 * version, flags (only SYNC, POSTCOPY when rp->postcopy, and the
 * negotiated method; a packet without
 * normal pages may also carry no method, as QEMU's sync packets do),
 * 1 <= pages_alloc <= max_pages, normal + zero <= pages_alloc, the block
 * name NUL-terminated and known (looked up only when the packet has pages),
 * next_size exactly normal * 4096 without compression, at most
 * KV_MFD_PAYLOAD_MAX(normal) with it, and 0 without normal pages. Fills
 * every field of pkt but offsets. Returns 0 or -EINVAL (-ENOENT for an
 * unknown block) with err set.
 */
int kv_mfd_packet_decode_header(const uint8_t *buf, size_t len,
				const struct kv_mfd_recv_params *rp,
				struct kv_mfd_packet *pkt,
				struct kv_error *err);

/* The bytes of offset slots that follow a decoded header. */
size_t kv_mfd_packet_offsets_size(const struct kv_mfd_packet *pkt);

/*
 * Decode the offset slots (kv_mfd_packet_offsets_size(pkt) bytes of buf)
 * after kv_mfd_packet_decode_header() accepted pkt: the used ones go into
 * pkt->offsets, each checked to be page-aligned and to leave a whole page
 * inside the block. Unused slots are ignored (QEMU leaves stale values).
 * Returns 0 or -EINVAL with err naming the slot.
 */
int kv_mfd_packet_decode_offsets(const uint8_t *buf, size_t len,
				 const struct kv_mfd_recv_params *rp,
				 struct kv_mfd_packet *pkt,
				 struct kv_error *err);

/*
 * Both steps over one buffer holding the header and the offsets (the
 * payload may follow). Returns the bytes of header and offsets consumed
 * (> 0), or a negative errno with err set.
 */
long kv_mfd_packet_decode(const uint8_t *buf, size_t len,
			  const struct kv_mfd_recv_params *rp,
			  struct kv_mfd_packet *pkt, struct kv_error *err);

#endif
