/* SPDX-License-Identifier: MIT */
/*
 * Postcopy's commands and return-path payloads (postcopy_wire.h).
 */
#include "migration/postcopy/postcopy_wire.h"

#include "base/bitmap.h"
#include "base/bytes.h"
#include "migration/return_path.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#define BIT(s) (1U << (s))
#define STAY (-1)

/* One row per command: its lengths and where it may come. ADVISE's
 * length is 0 or 16, nothing between (zero_or_max). */
struct pc_cmd_row {
	uint16_t cmd;
	const char *name;
	uint16_t len_min, len_max;
	bool zero_or_max;
	unsigned from;  /* mask of BIT(kv_pc_state) */
	int to;         /* the new state, or STAY */
	bool in_package_ok;
};

static const struct pc_cmd_row pc_cmds[] = {
    {KV_MIG_CMD_POSTCOPY_ADVISE, "POSTCOPY_ADVISE", 0, KV_PC_ADVISE_LEN, true,
     BIT(KV_PC_NONE), KV_PC_ADVISE, false},
    {KV_MIG_CMD_POSTCOPY_LISTEN, "POSTCOPY_LISTEN", 0, 0, false,
     BIT(KV_PC_ADVISE) | BIT(KV_PC_DISCARD), KV_PC_LISTENING, true},
    {KV_MIG_CMD_POSTCOPY_RUN, "POSTCOPY_RUN", 0, 0, false,
     BIT(KV_PC_LISTENING), KV_PC_RUNNING, true},
    {KV_MIG_CMD_POSTCOPY_RAM_DISCARD, "POSTCOPY_RAM_DISCARD", 3 + 1 + 16,
     KV_PC_DISCARD_MAX_LEN, false, BIT(KV_PC_ADVISE) | BIT(KV_PC_DISCARD),
     KV_PC_DISCARD, false},
    {KV_MIG_CMD_POSTCOPY_RESUME, "POSTCOPY_RESUME", 0, 0, false,
     BIT(KV_PC_RUNNING), STAY, false},
    {KV_MIG_CMD_PACKAGED, "PACKAGED", 4, 4, false,
     BIT(KV_PC_ADVISE) | BIT(KV_PC_DISCARD), STAY, false},
    {KV_MIG_CMD_RECV_BITMAP, "RECV_BITMAP", 2, 1 + KV_PC_IDSTR_MAX, false,
     BIT(KV_PC_RUNNING), STAY, false},
};

static const char *const pc_state_names[] = {
    [KV_PC_NONE] = "none",
    [KV_PC_ADVISE] = "advise",
    [KV_PC_DISCARD] = "discard",
    [KV_PC_LISTENING] = "listening",
    [KV_PC_RUNNING] = "running",
};

static const struct pc_cmd_row *pc_cmd_row(uint16_t cmd)
{
	for (size_t i = 0; i < sizeof(pc_cmds) / sizeof(pc_cmds[0]); i++)
		if (pc_cmds[i].cmd == cmd)
			return &pc_cmds[i];
	return NULL;
}

const char *kv_pc_cmd_name(uint16_t cmd)
{
	const struct pc_cmd_row *r = pc_cmd_row(cmd);

	return r ? r->name : NULL;
}

const char *kv_pc_state_name(enum kv_pc_state s)
{
	if ((unsigned)s < sizeof(pc_state_names) / sizeof(pc_state_names[0]))
		return pc_state_names[s];
	return "?";
}

int kv_pc_cmd_check_len(uint16_t cmd, uint16_t len, struct kv_error *err)
{
	const struct pc_cmd_row *r = pc_cmd_row(cmd);

	if (!r)
		return kv_error_set(err, -EPROTO, "postcopy: unknown command %u (length %u)", cmd, len);
	if (r->zero_or_max && len != 0 && len != r->len_max)
		return kv_error_set(err, -EPROTO, "postcopy: command %s with length %u (expected 0 or %u)", r->name, len, r->len_max);
	if (len < r->len_min || len > r->len_max)
		return kv_error_set(err, -EPROTO, "postcopy: command %s with length %u (expected %u to %u)", r->name, len, r->len_min, r->len_max);
	return 0;
}

int kv_pc_order_step(struct kv_pc_order *o, uint16_t cmd, struct kv_error *err)
{
	const struct pc_cmd_row *r = pc_cmd_row(cmd);

	if (!r)
		return kv_error_set(err, -EPROTO, "postcopy: unknown command %u", cmd);
	if (o->in_package && !r->in_package_ok)
		return kv_error_set(err, -EPROTO, "postcopy: command %s inside a PACKAGED stream (only LISTEN, RUN and device state belong there)", r->name);
	if (!(r->from & BIT(o->state)))
		return kv_error_set(err, -EPROTO, "postcopy: command %s in postcopy state %s", r->name, kv_pc_state_name(o->state));
	if (r->to != STAY)
		o->state = (enum kv_pc_state)r->to;
	if (cmd == KV_MIG_CMD_PACKAGED)
		o->in_package = true;
	return 0;
}

void kv_pc_order_package_done(struct kv_pc_order *o)
{
	o->in_package = false;
}

/* ---- blocks ---- */

int kv_pc_block_find(const struct kv_pc_blocks *b, const char *name, size_t n)
{
	for (size_t i = 0; i < b->n; i++)
		if (strlen(b->v[i].idstr) == n && memcmp(b->v[i].idstr, name, n) == 0)
			return (int)i;
	return -1;
}

int kv_pc_check_range(const struct kv_pc_block *b, uint64_t start,
		      uint64_t len, const char *what, struct kv_error *err)
{
	uint64_t ps = b->page_size;

	if (len == 0)
		return kv_error_set(err, -EINVAL, "%s at offset %#" PRIx64 " of block '%s' has length 0", what, start, b->idstr);
	if ((start | len) & (ps - 1))
		return kv_error_set(err, -EINVAL, "%s at offset %#" PRIx64 " length %#" PRIx64 " of block '%s' is not aligned to its %" PRIu64 "-byte pages", what, start, len, b->idstr, ps);
	if (start >= b->length || len > b->length - start)
		return kv_error_set(err, -EINVAL, "%s at offset %#" PRIx64 " length %#" PRIx64 " goes past the end of block '%s' (%#" PRIx64 " bytes)", what, start, len, b->idstr, b->length);
	return 0;
}

/* ---- ADVISE ---- */

size_t kv_pc_advise_encode(const struct kv_pc_advise *a, uint8_t out[KV_PC_ADVISE_LEN])
{
	if (!a->has_sizes)
		return 0;
	kv_put_be64(out, a->host_page_size);
	kv_put_be64(out + 8, a->target_page_size);
	return KV_PC_ADVISE_LEN;
}

int kv_pc_advise_decode(const uint8_t *p, size_t len, uint64_t our_host_page,
			uint64_t our_target_page, struct kv_pc_advise *a,
			struct kv_error *err)
{
	if (len != 0 && len != KV_PC_ADVISE_LEN)
		return kv_error_set(err, -EPROTO, "postcopy: command POSTCOPY_ADVISE with length %zu (expected 0 or %u)", len, KV_PC_ADVISE_LEN);
	a->has_sizes = len != 0;
	if (!a->has_sizes)
		return 0;
	a->host_page_size = kv_get_be64(p);
	a->target_page_size = kv_get_be64(p + 8);
	if (a->host_page_size != our_host_page)
		return kv_error_set(err, -EPROTO, "postcopy: POSTCOPY_ADVISE: the source's RAM page sizes (%#" PRIx64 ") differ from ours (%#" PRIx64 "); postcopy needs matching page sizes", a->host_page_size, our_host_page);
	if (a->target_page_size != our_target_page)
		return kv_error_set(err, -EPROTO, "postcopy: POSTCOPY_ADVISE: the source's target page size (%" PRIu64 ") differs from ours (%" PRIu64 ")", a->target_page_size, our_target_page);
	return 0;
}

/* ---- RAM_DISCARD ---- */

int kv_pc_discard_encode(const char *idstr, const struct kv_pc_range *r,
			 size_t nranges, uint8_t *out, struct kv_error *err)
{
	size_t n = strlen(idstr), off = 0;

	if (n == 0 || n > KV_PC_IDSTR_MAX)
		return kv_error_set(err, -EINVAL, "postcopy: discard for block '%s': its name has %zu bytes (1 to 255 fit)", idstr, n);
	if (nranges == 0 || nranges > KV_PC_DISCARD_MAX_RANGES)
		return kv_error_set(err, -EINVAL, "postcopy: discard for block '%s' with %zu ranges (1 to %u fit in one command)", idstr, nranges, KV_PC_DISCARD_MAX_RANGES);
	out[off++] = KV_PC_DISCARD_VERSION;
	out[off++] = (uint8_t)n;
	memcpy(out + off, idstr, n);
	off += n;
	out[off++] = 0;
	for (size_t i = 0; i < nranges; i++, off += 16) {
		kv_put_be64(out + off, r[i].start);
		kv_put_be64(out + off + 8, r[i].len);
	}
	return (int)off;
}

/* Version, counted name, nil: the bytes before the ranges, checked. */
static int discard_header(const uint8_t *p, size_t len, size_t *off,
			  struct kv_pc_discard *d, struct kv_error *err)
{
	size_t n;

	if (len < 3)
		return kv_error_set(err, -EPROTO, "postcopy: POSTCOPY_RAM_DISCARD of %zu bytes: too short for its header", len);
	if (p[0] != KV_PC_DISCARD_VERSION)
		return kv_error_set(err, -EPROTO, "postcopy: POSTCOPY_RAM_DISCARD version %u at byte 0 (expected %u)", p[0], KV_PC_DISCARD_VERSION);
	n = p[1];
	if (n == 0)
		return kv_error_set(err, -EPROTO, "postcopy: POSTCOPY_RAM_DISCARD with an empty block name at byte 1");
	if (2 + n + 1 > len)
		return kv_error_set(err, -EPROTO, "postcopy: POSTCOPY_RAM_DISCARD block name of %zu bytes at byte 2 runs past the command's %zu bytes", n, len);
	memcpy(d->idstr, p + 2, n);
	d->idstr[n] = '\0';
	if (memchr(d->idstr, 0, n))
		return kv_error_set(err, -EPROTO, "postcopy: POSTCOPY_RAM_DISCARD block name at byte 2 contains a NUL byte");
	if (p[2 + n] != 0)
		return kv_error_set(err, -EPROTO, "postcopy: POSTCOPY_RAM_DISCARD for block '%s': byte %zu after the name is %u, not the terminating 0", d->idstr, 2 + n, p[2 + n]);
	*off = 3 + n;
	return 0;
}

int kv_pc_discard_decode(const uint8_t *p, size_t len,
			 const struct kv_pc_blocks *blocks,
			 struct kv_pc_discard *d, struct kv_error *err)
{
	size_t off = 0, body;
	int r = discard_header(p, len, &off, d, err);

	if (r < 0)
		return r;
	body = len - off;
	if (body == 0 || body % 16)
		return kv_error_set(err, -EPROTO, "postcopy: POSTCOPY_RAM_DISCARD for block '%s': %zu bytes of ranges after byte %zu (expected a non-zero multiple of 16)", d->idstr, body, off);
	d->nranges = body / 16;
	if (d->nranges > KV_PC_DISCARD_MAX_RANGES)
		return kv_error_set(err, -EPROTO, "postcopy: POSTCOPY_RAM_DISCARD for block '%s' carries %zu ranges (at most %u)", d->idstr, d->nranges, KV_PC_DISCARD_MAX_RANGES);
	d->block = kv_pc_block_find(blocks, d->idstr, strlen(d->idstr));
	if (d->block < 0)
		return kv_error_set(err, -EPROTO, "postcopy: POSTCOPY_RAM_DISCARD for unknown block '%s'", d->idstr);
	for (size_t i = 0; i < d->nranges; i++, off += 16) {
		d->ranges[i].start = kv_get_be64(p + off);
		d->ranges[i].len = kv_get_be64(p + off + 8);
		r = kv_pc_check_range(&blocks->v[d->block], d->ranges[i].start, d->ranges[i].len, "discard range", err);
		if (r < 0) {
			kv_error_prefix(err, "postcopy: POSTCOPY_RAM_DISCARD range %zu of %zu (byte %zu)", i + 1, d->nranges, off);
			return -EPROTO;
		}
	}
	return 0;
}

/* ---- PACKAGED ---- */

size_t kv_pc_packaged_encode(uint32_t len, uint8_t out[4])
{
	kv_put_be32(out, len);
	return 4;
}

int kv_pc_packaged_decode(const uint8_t *p, size_t len, uint32_t *nested,
			  struct kv_error *err)
{
	if (len != 4)
		return kv_error_set(err, -EPROTO, "postcopy: command PACKAGED with length %zu (expected 4)", len);
	*nested = kv_get_be32(p);
	if (*nested == 0)
		return kv_error_set(err, -EPROTO, "postcopy: PACKAGED announces an empty nested stream");
	if (*nested > KV_PC_PACKAGED_MAX)
		return kv_error_set(err, -EPROTO, "postcopy: PACKAGED announces %u bytes of nested stream (at most %u)", *nested, KV_PC_PACKAGED_MAX);
	return 0;
}

/* ---- a counted block name (RECV_BITMAP both ways) ---- */

int kv_pc_named_encode(const char *idstr, uint8_t *out, struct kv_error *err)
{
	size_t n = strlen(idstr);

	if (n == 0 || n > KV_PC_IDSTR_MAX)
		return kv_error_set(err, -EINVAL, "postcopy: block name '%s' has %zu bytes (1 to 255 fit)", idstr, n);
	out[0] = (uint8_t)n;
	memcpy(out + 1, idstr, n);
	return (int)(1 + n);
}

int kv_pc_named_decode(const uint8_t *p, size_t len,
		       const struct kv_pc_blocks *blocks, const char *what,
		       int *block, struct kv_error *err)
{
	if (len < 2 || (size_t)p[0] + 1 != len)
		return kv_error_set(err, -EPROTO, "postcopy: %s of %zu bytes with a name length byte of %u (expected 1 + the name length, name not empty)", what, len, len ? p[0] : 0);
	if (memchr(p + 1, 0, p[0]))
		return kv_error_set(err, -EPROTO, "postcopy: %s: the block name contains a NUL byte", what);
	*block = kv_pc_block_find(blocks, (const char *)p + 1, p[0]);
	if (*block < 0)
		return kv_error_set(err, -EPROTO, "postcopy: %s for unknown block '%.*s'", what, (int)p[0], (const char *)p + 1);
	return 0;
}

/* ---- page requests ---- */

int kv_pc_req_encode(const char *idstr, uint64_t start, uint32_t len,
		     uint8_t *out, struct kv_error *err)
{
	int n;

	kv_put_be64(out, start);
	kv_put_be32(out + 8, len);
	if (!idstr)
		return 12;
	n = kv_pc_named_encode(idstr, out + 12, err);
	return n < 0 ? n : 12 + n;
}

int kv_pc_req_encode_next(int *last_block, int block, const char *idstr,
			  uint64_t start, uint32_t len, uint16_t *type,
			  uint8_t *out, struct kv_error *err)
{
	bool same = *last_block == block;
	int n = kv_pc_req_encode(same ? NULL : idstr, start, len, out, err);

	if (n < 0)
		return n;
	*type = same ? KV_RP_MSG_REQ_PAGES : KV_RP_MSG_REQ_PAGES_ID;
	*last_block = block;
	return n;
}

int kv_pc_req_decode(uint16_t type, const uint8_t *p, size_t len,
		     struct kv_pc_req *r, struct kv_error *err)
{
	const char *name = type == KV_RP_MSG_REQ_PAGES_ID ? "REQ_PAGES_ID" : "REQ_PAGES";

	if (type != KV_RP_MSG_REQ_PAGES && type != KV_RP_MSG_REQ_PAGES_ID)
		return kv_error_set(err, -EPROTO, "postcopy: return-path message %u is not a page request", type);
	if (len < 12)
		return kv_error_set(err, -EPROTO, "postcopy: %s of %zu bytes (at least 12)", name, len);
	r->start = kv_get_be64(p);
	r->len = kv_get_be32(p + 8);
	r->has_id = type == KV_RP_MSG_REQ_PAGES_ID;
	r->idstr[0] = '\0';
	if (!r->has_id) {
		if (len != 12)
			return kv_error_set(err, -EPROTO, "postcopy: REQ_PAGES of %zu bytes (expected 12)", len);
		return 0;
	}
	if (len < 14 || (size_t)p[12] + 13 != len)
		return kv_error_set(err, -EPROTO, "postcopy: REQ_PAGES_ID of %zu bytes with a name length byte of %u (expected 13 + the name length, name not empty)", len, len > 12 ? p[12] : 0);
	memcpy(r->idstr, p + 13, p[12]);
	r->idstr[p[12]] = '\0';
	if (strlen(r->idstr) != p[12])
		return kv_error_set(err, -EPROTO, "postcopy: REQ_PAGES_ID: the block name contains a NUL byte");
	return 0;
}

/* ---- RESUME_ACK ---- */

size_t kv_pc_resume_ack_encode(uint8_t out[4])
{
	kv_put_be32(out, KV_PC_RESUME_ACK_VALUE);
	return 4;
}

int kv_pc_resume_ack_decode(const uint8_t *p, size_t len, struct kv_error *err)
{
	if (len != 4)
		return kv_error_set(err, -EPROTO, "postcopy: RESUME_ACK of %zu bytes (expected 4)", len);
	if (kv_get_be32(p) != KV_PC_RESUME_ACK_VALUE)
		return kv_error_set(err, -EPROTO, "postcopy: RESUME_ACK with value %u (expected %u)", kv_get_be32(p), KV_PC_RESUME_ACK_VALUE);
	return 0;
}

/* ---- the received bitmap ---- */

static uint64_t recv_bitmap_bytes(uint64_t npages)
{
	uint64_t bytes = (npages + 7) / 8;

	return (bytes + 7) & ~(uint64_t)7;
}

size_t kv_pc_recv_bitmap_size(uint64_t npages)
{
	return (size_t)(8 + recv_bitmap_bytes(npages) + 8);
}

size_t kv_pc_recv_bitmap_encode(const unsigned long *map, uint64_t npages,
				uint8_t *out)
{
	uint64_t bytes = recv_bitmap_bytes(npages);

	kv_put_be64(out, bytes);
	memset(out + 8, 0, bytes);
	for (uint64_t i = 0; i < npages; i++)
		if (kv_bitmap_test(map, i))
			out[8 + i / 8] |= (uint8_t)(1U << (i % 8));
	kv_put_be64(out + 8 + bytes, KV_PC_RECV_BITMAP_END);
	return (size_t)(16 + bytes);
}

int kv_pc_recv_bitmap_decode(const uint8_t *p, size_t len, uint64_t npages,
			     const char *idstr, unsigned long *map,
			     struct kv_error *err)
{
	uint64_t bytes = recv_bitmap_bytes(npages), got;

	if (len < 16)
		return kv_error_set(err, -EPROTO, "postcopy: received bitmap of block '%s': %zu bytes, too short for its size and end mark", idstr, len);
	got = kv_get_be64(p);
	if (got != bytes || len != 16 + bytes)
		return kv_error_set(err, -EPROTO, "postcopy: received bitmap of block '%s' says %" PRIu64 " bytes in %zu (expected %" PRIu64 " for %" PRIu64 " pages)", idstr, got, len, bytes, npages);
	if (kv_get_be64(p + 8 + bytes) != KV_PC_RECV_BITMAP_END)
		return kv_error_set(err, -EPROTO, "postcopy: received bitmap of block '%s': end mark %#" PRIx64 " at byte %" PRIu64 " (expected %#llx)", idstr, kv_get_be64(p + 8 + bytes), 8 + bytes, KV_PC_RECV_BITMAP_END);
	for (uint64_t i = npages; i < bytes * 8; i++)
		if (p[8 + i / 8] & (1U << (i % 8)))
			return kv_error_set(err, -EPROTO, "postcopy: received bitmap of block '%s' marks page %" PRIu64 " past its %" PRIu64 " pages", idstr, i, npages);
	kv_bitmap_clear_all(map, npages);
	for (uint64_t i = 0; i < npages; i++)
		if (p[8 + i / 8] & (1U << (i % 8)))
			kv_bitmap_set_atomic(map, i);
	return 0;
}
