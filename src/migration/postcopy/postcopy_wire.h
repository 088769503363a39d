/* SPDX-License-Identifier: MIT */
/*
 * Postcopy's bytes, in QEMU's numbers and layouts (docs/FORMAT.md §12):
 * the commands the source writes into the stream (inside a COMMAND
 * section: be16 command, be16 length, payload) and the payloads of the
 * return-path messages the destination answers with. Every function here
 * works on a payload buffer: the section and message headers are savevm's
 * and return_path.c's. Decoders check every byte and every length before
 * use and name what was wrong and where; checks that need the RAM blocks
 * take them as a struct kv_pc_blocks.
 *
 * The order of the commands (a second LISTEN, RUN before LISTEN) is one
 * table too: kv_pc_order_step.
 */
#ifndef KV_MIGRATION_POSTCOPY_WIRE_H
#define KV_MIGRATION_POSTCOPY_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

/* QEMU's enum qemu_vm_cmd (migration/savevm.c) for postcopy; the integration
 * moves these into savevm.h's enum kv_mig_cmd, beside OPEN_RETURN_PATH and
 * PING. */
enum kv_pc_cmd {
	KV_MIG_CMD_POSTCOPY_ADVISE = 3,
	KV_MIG_CMD_POSTCOPY_LISTEN = 4,
	KV_MIG_CMD_POSTCOPY_RUN = 5,
	KV_MIG_CMD_POSTCOPY_RAM_DISCARD = 6,
	KV_MIG_CMD_POSTCOPY_RESUME = 7,
	KV_MIG_CMD_PACKAGED = 8,
	KV_MIG_CMD_RECV_BITMAP = 9,
};

/* QEMU's limits and constants. */
#define KV_PC_ADVISE_LEN 16U           /* be64 host, be64 target page size */
#define KV_PC_DISCARD_VERSION 0        /* postcopy_ram_discard_version */
#define KV_PC_DISCARD_MAX_RANGES 12U   /* MAX_DISCARDS_PER_COMMAND */
#define KV_PC_PACKAGED_MAX (1U << 24)  /* MAX_VM_CMD_PACKAGED_SIZE */
#define KV_PC_RESUME_ACK_VALUE 1U      /* MIGRATION_RESUME_ACK_VALUE */
#define KV_PC_RECV_BITMAP_END 0x0123456789abcdefULL
#define KV_PC_IDSTR_MAX 255U           /* a counted string's longest name */
/* The largest discard payload: version, name length, name, nil, ranges. */
#define KV_PC_DISCARD_MAX_LEN (3U + KV_PC_IDSTR_MAX + 16U * KV_PC_DISCARD_MAX_RANGES)

/* A command's table entry: its name and the payload lengths it allows. */
const char *kv_pc_cmd_name(uint16_t cmd); /* NULL: not postcopy's */
/* Is len an acceptable payload length for cmd (before reading it)?
 * 0, or -EPROTO with err naming the command and both lengths. */
int kv_pc_cmd_check_len(uint16_t cmd, uint16_t len, struct kv_error *err);

/* The RAM blocks a message is checked against. */
struct kv_pc_block {
	const char *idstr;
	uint64_t length;    /* bytes */
	uint32_t page_size; /* the block's host page size (a power of two) */
};
struct kv_pc_blocks {
	const struct kv_pc_block *v;
	size_t n;
};

/* The index of the block called name (n bytes, not terminated), or -1. */
int kv_pc_block_find(const struct kv_pc_blocks *b, const char *name, size_t n);
/* [start, start + len) inside block b, aligned to its page size, len > 0?
 * 0, or -EINVAL with err starting with what ("postcopy: page request"),
 * then the block, the offsets and the rule broken. */
int kv_pc_check_range(const struct kv_pc_block *b, uint64_t start,
		      uint64_t len, const char *what, struct kv_error *err);

/* ---- commands (source → destination) ---- */

/* ADVISE: be64 host page size (QEMU: every block's page size ORed
 * together), be64 target page size. QEMU also sends ADVISE with no payload
 * when only dirty-bitmap postcopy is on: decoded as has_sizes = false. */
struct kv_pc_advise {
	bool has_sizes;
	uint64_t host_page_size;
	uint64_t target_page_size;
};
size_t kv_pc_advise_encode(const struct kv_pc_advise *a, uint8_t out[KV_PC_ADVISE_LEN]);
/* Decode and compare with our own sizes: a mismatch is refused (QEMU:
 * "Postcopy needs matching RAM page sizes"). */
int kv_pc_advise_decode(const uint8_t *p, size_t len, uint64_t our_host_page,
			uint64_t our_target_page, struct kv_pc_advise *a,
			struct kv_error *err);

/* RAM_DISCARD: u8 version 0, u8 name length n, name, u8 0, then 1 to 12
 * pairs (be64 start, be64 length) in bytes from the block's start. */
struct kv_pc_range {
	uint64_t start;
	uint64_t len;
};
struct kv_pc_discard {
	int block;                 /* index in the blocks given to decode */
	char idstr[KV_PC_IDSTR_MAX + 1];
	size_t nranges;
	struct kv_pc_range ranges[KV_PC_DISCARD_MAX_RANGES];
};
/* out holds KV_PC_DISCARD_MAX_LEN. The payload length, or -EINVAL for a
 * name over 255 bytes or no range or more than 12. */
int kv_pc_discard_encode(const char *idstr, const struct kv_pc_range *r,
			 size_t nranges, uint8_t *out, struct kv_error *err);
int kv_pc_discard_decode(const uint8_t *p, size_t len,
			 const struct kv_pc_blocks *blocks,
			 struct kv_pc_discard *d, struct kv_error *err);

/* PACKAGED: be32 length of the nested stream that follows the command
 * (the nested bytes are not part of the command's payload). */
size_t kv_pc_packaged_encode(uint32_t len, uint8_t out[4]);
int kv_pc_packaged_decode(const uint8_t *p, size_t len, uint32_t *nested,
			  struct kv_error *err);

/* RECV_BITMAP command (recovery: the source asks for one block's received
 * bitmap): u8 name length n, name. Also the return path's RECV_BITMAP
 * message payload, which is the same. out holds 1 + 255. */
int kv_pc_named_encode(const char *idstr, uint8_t *out, struct kv_error *err);
/* *block = index of the named block. what names the message. */
int kv_pc_named_decode(const uint8_t *p, size_t len,
		       const struct kv_pc_blocks *blocks, const char *what,
		       int *block, struct kv_error *err);

/* ---- return path (destination → source) ---- */

/* REQ_PAGES: be64 start, be32 length; REQ_PAGES_ID adds u8 name length n
 * and the name. A REQ_PAGES means "the block of the previous request". */
struct kv_pc_req {
	bool has_id;
	char idstr[KV_PC_IDSTR_MAX + 1];
	uint64_t start;
	uint32_t len;
};
/* idstr NULL: REQ_PAGES (12 bytes), else REQ_PAGES_ID (13 + n). out holds
 * 13 + 255. The payload length, or -EINVAL. */
int kv_pc_req_encode(const char *idstr, uint64_t start, uint32_t len,
		     uint8_t *out, struct kv_error *err);
/* The destination's choice, as QEMU's: REQ_PAGES_ID when the block differs
 * from the previous request's (*last_block, -1 at first; updated), else
 * the shorter REQ_PAGES. *type is set to the message type. */
int kv_pc_req_encode_next(int *last_block, int block, const char *idstr,
			  uint64_t start, uint32_t len, uint16_t *type,
			  uint8_t *out, struct kv_error *err);
/* type is KV_RP_MSG_REQ_PAGES or KV_RP_MSG_REQ_PAGES_ID. Only the layout is
 * checked here; the blocks, by the source's queue (postcopy_src.h). */
int kv_pc_req_decode(uint16_t type, const uint8_t *p, size_t len,
		     struct kv_pc_req *r, struct kv_error *err);

/* RESUME_ACK: be32 1. */
size_t kv_pc_resume_ack_encode(uint8_t out[4]);
int kv_pc_resume_ack_decode(const uint8_t *p, size_t len, struct kv_error *err);

/* The bitmap that follows a RECV_BITMAP message on the return path: be64
 * size in bytes (one bit a target page, rounded up to whole bytes and then
 * to 8), the bits in little-endian 64-bit words, be64 0x0123456789abcdef. */
size_t kv_pc_recv_bitmap_size(uint64_t npages); /* the whole blob */
/* out holds kv_pc_recv_bitmap_size(npages). Returns the bytes written. */
size_t kv_pc_recv_bitmap_encode(const unsigned long *map, uint64_t npages,
				uint8_t *out);
/* map has room for npages bits; the blob must be exactly the block's. */
int kv_pc_recv_bitmap_decode(const uint8_t *p, size_t len, uint64_t npages,
			     const char *idstr, unsigned long *map,
			     struct kv_error *err);

/* ---- the commands' order on the destination (QEMU's PostcopyState) ---- */

enum kv_pc_state {
	KV_PC_NONE,       /* no postcopy command yet */
	KV_PC_ADVISE,     /* ADVISE seen: received pages are being counted */
	KV_PC_DISCARD,    /* the first RAM_DISCARD seen */
	KV_PC_LISTENING,  /* LISTEN: userfaultfd armed, faults are requested */
	KV_PC_RUNNING,    /* RUN: the guest runs here */
};
const char *kv_pc_state_name(enum kv_pc_state s);

struct kv_pc_order {
	enum kv_pc_state state;
	bool in_package; /* between PACKAGED and the end of its nested stream */
};
/* May cmd come now? Moves the state as QEMU does; -EPROTO with err naming
 * the command and the state otherwise (a second LISTEN, RUN before LISTEN,
 * DISCARD after LISTEN, PACKAGED inside a package, ...). */
int kv_pc_order_step(struct kv_pc_order *o, uint16_t cmd, struct kv_error *err);
/* The nested stream of a PACKAGED ended. */
void kv_pc_order_package_done(struct kv_pc_order *o);

#endif
