/* SPDX-License-Identifier: MIT */
/*
 * RAM precopy, destination side: reads the "ram" section's records and
 * checks every one before it touches memory.
 *
 * A record is a be64 whose low 12 bits are flags and whose upper bits are a
 * page offset (or, for MEM_SIZE, the total RAM size):
 *   MEM_SIZE  total|0x04, then per block str8 idstr + be64 length, until
 *             the lengths add up to the total
 *   ZERO      off|0x02 [|0x20 CONTINUE], str8 idstr unless CONTINUE, u8 fill
 *   PAGE      off|0x08 [|0x20], str8 idstr unless CONTINUE, 4096 bytes
 *   EOS       0x10, ends the section payload
 *   XBZRLE, MULTIFD_FLUSH and kvmig's ZPAGES (0x400): see below and
 *   docs/FORMAT.md 5
 * Decisions beyond QEMU's own loader:
 *  - MEM_SIZE must come first and only in the first section; every block of
 *    this side must be announced, once, with its exact length.
 *  - A ZERO record's fill byte must be 0. QEMU memsets any byte, but no
 *    QEMU since 2.x sends anything but 0; accepting others would only widen
 *    what a corrupt stream can do.
 *  - EOS carries no address.
 * Zero pages are only written if they are not zero already, so an idle
 * guest's memory is not faulted in on the destination.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/bitmap.h"
#include "base/zero.h"
#include "io/stream.h"
#include "migration/codec/codec.h"
#include "migration/ram/ram_internal.h"
#include "migration/ram/ram_prefault.h"
#include "migration/ram/xbzrle.h"

#define FLAG_MASK ((uint64_t)KV_PAGE_SIZE - 1)
#define KNOWN_FLAGS                                                            \
	(KV_RAM_FLAG_ZERO | KV_RAM_FLAG_MEM_SIZE | KV_RAM_FLAG_PAGE |          \
	 KV_RAM_FLAG_EOS | KV_RAM_FLAG_CONTINUE | KV_RAM_FLAG_XBZRLE |         \
	 KV_RAM_FLAG_HOOK | KV_RAM_FLAG_COMPRESS_PAGE |                        \
	 KV_RAM_FLAG_MULTIFD_FLUSH | KV_RAM_FLAG_ZPAGES)

/* A stream may create at most this many blocks (QEMU guests have a few
 * dozen): bounds the work a hostile block list can cause. */
#define KV_RAM_MAX_LOAD_BLOCKS 1024U

/* The record being loaded, for error messages. */
struct ram_rec {
	uint64_t number; /* 1-based within the section */
	uint64_t offset; /* stream offset of its first byte */
	uint64_t addr;	 /* address bits (flags masked off) */
	unsigned int flags;
	bool header_read; /* addr and flags are valid */
};

static const struct {
	unsigned int flag;
	const char *name;
} flag_names[] = {
    {KV_RAM_FLAG_ZERO, "ZERO"},
    {KV_RAM_FLAG_MEM_SIZE, "MEM_SIZE"},
    {KV_RAM_FLAG_PAGE, "PAGE"},
    {KV_RAM_FLAG_EOS, "EOS"},
    {KV_RAM_FLAG_CONTINUE, "CONTINUE"},
    {KV_RAM_FLAG_XBZRLE, "XBZRLE"},
    {KV_RAM_FLAG_HOOK, "HOOK"},
    {KV_RAM_FLAG_COMPRESS_PAGE, "COMPRESS_PAGE"},
    {KV_RAM_FLAG_MULTIFD_FLUSH, "MULTIFD_FLUSH"},
    {KV_RAM_FLAG_ZPAGES, "ZPAGES"},
};

static void describe_flags(unsigned int flags, char *buf, size_t size)
{
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]);
	     i++) {
		if (!(flags & flag_names[i].flag))
			continue;
		len += (size_t)snprintf(buf + len, size - len, "%s%s",
					len ? "|" : "", flag_names[i].name);
		if (len >= size)
			return;
	}
	if (flags & ~KNOWN_FLAGS)
		snprintf(buf + len, size - len, "%sunknown 0x%x",
			 len ? "|" : "", flags & ~KNOWN_FLAGS);
	else if (!flags)
		snprintf(buf, size, "none");
}

static int rec_error(struct kv_error *err, const struct ram_rec *r, int code,
		     const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int rec_error(struct kv_error *err, const struct ram_rec *r, int code,
		     const char *fmt, ...)
{
	char what[KV_ERROR_MSG_MAX];
	char names[96];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (!r->header_read)
		return kv_error_set(err, code,
				    "ram: record %llu at stream offset %llu: %s",
				    (unsigned long long)r->number,
				    (unsigned long long)r->offset, what);
	describe_flags(r->flags, names, sizeof(names));
	return kv_error_set(err, code,
			    "ram: record %llu at stream offset %llu (addr 0x%llx flags 0x%x %s): %s",
			    (unsigned long long)r->number,
			    (unsigned long long)r->offset,
			    (unsigned long long)r->addr, r->flags, names, what);
}

/* The stream's sticky error, reported in the record's terms. */
static int rec_stream_error(struct kv_stream *s, const struct ram_rec *r,
			    const char *reading, struct kv_error *err)
{
	struct kv_error serr = {0};

	kv_stream_error_get(s, &serr);
	return rec_error(err, r, serr.code ? serr.code : -EIO,
			 "stream failed while reading %s: %s", reading,
			 serr.msg[0] ? serr.msg : "unknown error");
}

/* Reject flags that are unknown, not valid in this mode, or that do not
 * form exactly one record type (CONTINUE only with ZERO or PAGE). */
static int check_flags(const struct ram_rec *r, struct kv_error *err)
{
	unsigned int f = r->flags, type = f & ~KV_RAM_FLAG_CONTINUE;

	if (f & ~KNOWN_FLAGS)
		return rec_error(err, r, -EINVAL, "unknown flag bits 0x%x",
				 f & ~KNOWN_FLAGS);
	if (f & KV_RAM_FLAG_HOOK)
		return rec_error(err, r, -EINVAL,
				 "HOOK (RDMA) records are never valid in this stream");
	if (f & KV_RAM_FLAG_COMPRESS_PAGE)
		return rec_error(err, r, -EINVAL,
				 "COMPRESS_PAGE records are not supported (removed from QEMU, never negotiated)");
	if (type == 0 || (type & (type - 1)))
		return rec_error(err, r, -EINVAL,
				 "a record must have exactly one type (ZERO, MEM_SIZE, PAGE, XBZRLE, MULTIFD_FLUSH, ZPAGES or EOS)");
	if ((f & KV_RAM_FLAG_CONTINUE) &&
	    !(type & (KV_RAM_FLAG_ZERO | KV_RAM_FLAG_PAGE |
		      KV_RAM_FLAG_XBZRLE | KV_RAM_FLAG_ZPAGES)))
		return rec_error(err, r, -EINVAL,
				 "CONTINUE is only valid on ZERO, PAGE, XBZRLE and ZPAGES records");
	return 0;
}

/* "2048 MiB" / "2048M" when whole MiB, else bytes in hex. */
static void format_size(uint64_t v, bool option, char *buf, size_t size)
{
	if (v % KV_MiB)
		snprintf(buf, size, "0x%llx bytes", (unsigned long long)v);
	else
		snprintf(buf, size, option ? "%lluM" : "%llu MiB",
			 (unsigned long long)(v / KV_MiB));
}

/* The block's length is set by an option of the owner's: name it. */
static int length_mismatch(struct kv_error *err, const struct ram_rec *r,
			   const struct kv_ram_block *b, uint64_t length)
{
	char theirs[48], ours[48];

	format_size(length, false, theirs, sizeof(theirs));
	format_size(b->length, true, ours, sizeof(ours));
	return rec_error(err, r, -EINVAL, "the stream's guest has %s of RAM (block '%s'), this VM was started with %s %s: start the destination with the source's options", theirs, b->idstr, b->size_option, ours);
}

static int announce_block(struct kv_ram_state *rs, const struct ram_rec *r,
			  const char *idstr, uint64_t length,
			  struct kv_error *err)
{
	size_t bi = kv_ram_find_block(rs, idstr);
	struct kv_error aerr = {0};
	const struct kv_ram_allocator *a = &rs->dst.allocator;
	void *host;
	int ret;

	if (bi != KV_RAM_NO_BLOCK) {
		const struct kv_ram_block *b = &rs->blocks[bi];

		if (rs->priv[bi].announced)
			return rec_error(err, r, -EINVAL,
					 "block '%s' is announced twice",
					 idstr);
		if (b->length != length && b->size_option)
			return length_mismatch(err, r, b, length);
		if (b->length != length)
			return rec_error(err, r, -EINVAL,
					 "block '%s' has length 0x%llx in the stream but 0x%llx here",
					 idstr, (unsigned long long)length,
					 (unsigned long long)b->length);
		rs->priv[bi].announced = true;
		return 0;
	}
	if (!rs->dst.has_allocator)
		return rec_error(err, r, -ENOENT,
				 "block '%s' (length 0x%llx) not found: this side has no such RAM block",
				 idstr, (unsigned long long)length);
	if (rs->nblocks >= KV_RAM_MAX_LOAD_BLOCKS)
		return rec_error(err, r, -E2BIG,
				 "block '%s': more than %u blocks announced",
				 idstr, KV_RAM_MAX_LOAD_BLOCKS);
	if (length > a->max_total || rs->dst.allocated > a->max_total - length)
		return rec_error(err, r, -E2BIG,
				 "block '%s' (length 0x%llx) would take the RAM created for this stream beyond its limit of 0x%llx bytes",
				 idstr, (unsigned long long)length,
				 (unsigned long long)a->max_total);
	host = a->alloc(a->opaque, idstr, length, &aerr);
	if (!host)
		return rec_error(err, r, aerr.code ? aerr.code : -ENOMEM,
				 "creating block '%s' (length 0x%llx): %s",
				 idstr, (unsigned long long)length,
				 aerr.msg[0] ? aerr.msg : "allocation failed");
	ret = kv_ram_append_block(rs, idstr, host, length, true, &aerr);
	if (ret < 0) {
		a->release(a->opaque, host, length);
		return rec_error(err, r, ret, "%s", aerr.msg);
	}
	rs->dst.allocated += length;
	rs->priv[ret].announced = true;
	return 0;
}

/* mapped-ram: the block's header follows its length (mapped_ram.h). */
static int load_mapped_header(struct kv_stream *s, struct kv_ram_state *rs,
			      const struct ram_rec *r, const char *idstr,
			      struct kv_error *err)
{
	struct kv_error merr = {0};
	int ret = kv_mapped_ram_load_header(s, rs, kv_ram_find_block(rs, idstr),
					    &merr);

	return ret < 0 ? rec_error(err, r, ret, "%s", merr.msg) : 0;
}

/* mapped-ram: every block's pages, once the block list is complete. */
static int load_mapped_pages(struct kv_ram_state *rs, const struct ram_rec *r,
			     struct kv_error *err)
{
	struct kv_error merr = {0};
	int ret = kv_mapped_ram_load_pages(rs, &merr);

	return ret < 0 ? rec_error(err, r, ret, "%s", merr.msg) : 0;
}

/* The block list: entries until their lengths add up to the total. */
static int load_mem_size(struct kv_stream *s, struct kv_ram_state *rs,
			 const struct ram_rec *r, struct kv_error *err)
{
	uint64_t left = r->addr;
	char idstr[256];
	int ret;

	if (rs->dst.load_sections > 1 || rs->dst.mem_size_seen)
		return rec_error(err, r, -EINVAL,
				 "MEM_SIZE %s: only the first section may announce the blocks",
				 rs->dst.mem_size_seen ? "repeated"
						   : "in a later section");
	while (left > 0) {
		uint64_t length;

		kv_stream_get_str8(s, idstr, sizeof(idstr));
		length = kv_stream_get_be64(s);
		if (kv_stream_error(s))
			return rec_stream_error(s, r, "the block list", err);
		if (length == 0 || length % KV_PAGE_SIZE)
			return rec_error(err, r, -EINVAL,
					 "block '%s' length 0x%llx is not a positive multiple of the page size",
					 idstr, (unsigned long long)length);
		if (length > left)
			return rec_error(err, r, -EINVAL,
					 "block lengths add up to more than the total: block '%s' length 0x%llx with only 0x%llx left",
					 idstr, (unsigned long long)length,
					 (unsigned long long)left);
		ret = announce_block(rs, r, idstr, length, err);
		if (ret == 0 && rs->mapped_cfg.on)
			ret = load_mapped_header(s, rs, r, idstr, err);
		if (ret < 0)
			return ret;
		left -= length;
	}
	for (size_t i = 0; i < rs->nblocks; i++)
		if (!rs->priv[i].announced)
			return rec_error(err, r, -EINVAL,
					 "block '%s' exists here but the stream does not announce it",
					 rs->blocks[i].idstr);
	for (size_t i = 0; i < rs->nblocks; i++) {
		struct kv_ram_block_priv *p = &rs->priv[i];

		if (p->from_allocator || p->touched)
			continue;
		p->touched = kv_bitmap_new(rs->blocks[i].npages);
		if (!p->touched)
			return rec_error(err, r, -ENOMEM,
					 "out of memory for the bookkeeping of block '%s'",
					 rs->blocks[i].idstr);
	}
	ret = kv_ram_verify_prepare(rs, err);
	if (ret == 0 && rs->mapped_cfg.on)
		ret = load_mapped_pages(rs, r, err);
	if (ret < 0)
		return ret;
	rs->dst.mem_size_seen = true;
	kv_ram_pagemap_open(rs);
	kv_ram_prefault_stop(rs->dst.prefault); /* a previous load's */
	/* With multifd the channel threads write the pages, in parallel;
	 * with mapped-ram they are all in memory already. */
	rs->dst.prefault = rs->dst.mfd_recv || rs->mapped_cfg.on
			       ? NULL
			       : kv_ram_prefault_start();
	if (rs->dst.mfd_recv)
		kv_mfd_recv_blocks_ready(rs->dst.mfd_recv);
	return 0;
}

/* The block a ZERO or PAGE record names (or continues) and its page. */
static int resolve_page(struct kv_stream *s, struct kv_ram_state *rs,
			const struct ram_rec *r, size_t *bi_out,
			struct kv_error *err)
{
	char idstr[256];
	size_t bi;

	if (!rs->dst.mem_size_seen)
		return rec_error(err, r, -EINVAL,
				 "page record before the MEM_SIZE block list");
	if (r->flags & KV_RAM_FLAG_CONTINUE) {
		bi = rs->dst.last_recv;
		if (bi == KV_RAM_NO_BLOCK)
			return rec_error(err, r, -EINVAL,
					 "CONTINUE with no previous block");
	} else {
		kv_stream_get_str8(s, idstr, sizeof(idstr));
		if (kv_stream_error(s))
			return rec_stream_error(s, r, "the block name", err);
		bi = kv_ram_find_block(rs, idstr);
		if (bi == KV_RAM_NO_BLOCK)
			return rec_error(err, r, -ENOENT,
					 "block '%s' not found",
					 idstr);
	}
	if (r->addr >= rs->blocks[bi].length)
		return rec_error(err, r, -ERANGE,
				 "offset beyond block '%s' length 0x%llx",
				 rs->blocks[bi].idstr,
				 (unsigned long long)rs->blocks[bi].length);
	rs->dst.last_recv = bi;
	*bi_out = bi;
	return 0;
}

static void mark_touched(struct kv_ram_state *rs, size_t bi, size_t page)
{
	if (rs->priv[bi].touched)
		kv_bitmap_set_atomic(rs->priv[bi].touched, page);
}

/* Postcopy after LISTEN: pages go in through userfaultfd, whole, once. */
static int load_zero_postcopy(struct kv_ram_state *rs, const struct ram_rec *r,
			      size_t bi, struct kv_error *err)
{
	struct kv_error perr = {0};

	if (kv_ram_pc_place(rs, bi, r->addr, NULL, &perr) < 0)
		return rec_error(err, r, perr.code, "%s", perr.msg);
	kv_ram_stat_add(&rs->zero_pages, 1);
	return 0;
}

static int load_page_postcopy(struct kv_stream *s, struct kv_ram_state *rs,
			      const struct ram_rec *r, size_t bi,
			      struct kv_error *err)
{
	struct kv_error perr = {0};

	kv_stream_get_buffer(s, rs->dst.pc_page, KV_PAGE_SIZE);
	if (kv_stream_error(s))
		return rec_stream_error(s, r, "the page data", err);
	if (kv_ram_pc_place(rs, bi, r->addr, rs->dst.pc_page, &perr) < 0)
		return rec_error(err, r, perr.code, "%s", perr.msg);
	kv_ram_stat_add(&rs->normal_pages, 1);
	return 0;
}

/* A delta applies to the copy the destination holds, which postcopy
 * dropped (RAM_DISCARD) or never had. */
static int refuse_after_listen(const struct ram_rec *r, struct kv_error *err)
{
	return rec_error(err, r, -EINVAL, "an XBZRLE record after POSTCOPY_LISTEN: postcopy places whole pages only, and a delta needs the page it applies to");
}

static int load_zero(struct kv_stream *s, struct kv_ram_state *rs,
		     const struct ram_rec *r, struct kv_error *err)
{
	size_t bi, page;
	uint8_t *p, fill;
	int ret = resolve_page(s, rs, r, &bi, err);

	if (ret < 0)
		return ret;
	fill = kv_stream_get_u8(s);
	if (kv_stream_error(s))
		return rec_stream_error(s, r, "the fill byte", err);
	if (fill != 0)
		return rec_error(err, r, -EINVAL,
				 "ZERO record with fill byte 0x%02x (only 0 is valid)",
				 fill);
	page = (size_t)(r->addr >> KV_PAGE_SHIFT);
	p = rs->blocks[bi].host + r->addr;
	if (rs->dst.pc_listening)
		return load_zero_postcopy(rs, r, bi, err);
	if (rs->dst.prefault)
		kv_ram_prefault_note_zero(rs->dst.prefault, bi, r->addr);
	/* Leave memory that is zero alone: no fault, no RSS. A page never
	 * populated is not even read (that would fault it in). */
	if (!kv_ram_page_unpopulated(rs, bi, page) &&
	    !kv_buffer_is_zero(p, KV_PAGE_SIZE)) {
		mark_touched(rs, bi, page);
		memset(p, 0, KV_PAGE_SIZE);
	}
	kv_ram_verify_zero(rs, bi, page);
	kv_ram_pc_received(rs, bi, r->addr);
	kv_ram_stat_add(&rs->zero_pages, 1);
	return 0;
}

static int load_page(struct kv_stream *s, struct kv_ram_state *rs,
		     const struct ram_rec *r, struct kv_error *err)
{
	size_t bi;
	int ret = resolve_page(s, rs, r, &bi, err);

	if (ret < 0)
		return ret;
	if (rs->dst.pc_listening)
		return load_page_postcopy(s, rs, r, bi, err);
	mark_touched(rs, bi, (size_t)(r->addr >> KV_PAGE_SHIFT));
	kv_ram_page_populated(rs, bi, (size_t)(r->addr >> KV_PAGE_SHIFT));
	if (rs->dst.prefault)
		kv_ram_prefault_note(rs->dst.prefault, bi, rs->blocks[bi].host,
				     rs->blocks[bi].length, r->addr);
	kv_stream_get_buffer(s, rs->blocks[bi].host + r->addr, KV_PAGE_SIZE);
	if (kv_stream_error(s))
		return rec_stream_error(s, r, "the page data", err);
	kv_ram_verify_page(rs, bi, (size_t)(r->addr >> KV_PAGE_SHIFT));
	kv_ram_pc_received(rs, bi, r->addr);
	kv_ram_stat_add(&rs->normal_pages, 1);
	return 0;
}

/* An XBZRLE record: encoding byte 0x01, be16 length (1..4096), the delta,
 * applied onto what the page holds (the copy the source encoded against).
 * The decoder checks every run before it writes a byte. */
static int load_xbzrle(struct kv_stream *s, struct kv_ram_state *rs,
		       const struct ram_rec *r, struct kv_error *err)
{
	struct kv_error derr = {0};
	uint8_t encoding;
	uint16_t len;
	size_t bi;
	int ret = resolve_page(s, rs, r, &bi, err);

	if (ret < 0)
		return ret;
	if (rs->dst.pc_listening)
		return refuse_after_listen(r, err);
	encoding = kv_stream_get_u8(s);
	len = kv_stream_get_be16(s);
	if (kv_stream_error(s))
		return rec_stream_error(s, r, "the XBZRLE header", err);
	if (encoding != 0x01)
		return rec_error(err, r, -EINVAL,
				 "unknown XBZRLE encoding 0x%02x (only 0x01)",
				 encoding);
	if (len == 0 || len > KV_PAGE_SIZE)
		return rec_error(err, r, -EINVAL,
				 "XBZRLE delta of %u bytes (must be 1..%u)",
				 len, KV_PAGE_SIZE);
	if (!rs->dst.xbzrle_dec) {
		rs->dst.xbzrle_dec = malloc(KV_PAGE_SIZE);
		if (!rs->dst.xbzrle_dec)
			return rec_error(err, r, -ENOMEM,
					 "out of memory for XBZRLE");
	}
	kv_stream_get_buffer(s, rs->dst.xbzrle_dec, len);
	if (kv_stream_error(s))
		return rec_stream_error(s, r, "the XBZRLE delta", err);
	mark_touched(rs, bi, (size_t)(r->addr >> KV_PAGE_SHIFT));
	kv_ram_page_populated(rs, bi, (size_t)(r->addr >> KV_PAGE_SHIFT));
	if (kv_xbzrle_decode(rs->dst.xbzrle_dec, len,
			     rs->blocks[bi].host + r->addr, KV_PAGE_SIZE,
			     &derr) < 0)
		return rec_error(err, r, -EINVAL, "bad XBZRLE delta: %s",
				 derr.msg);
	kv_ram_verify_page(rs, bi, (size_t)(r->addr >> KV_PAGE_SHIFT));
	kv_ram_pc_received(rs, bi, r->addr);
	kv_ram_stat_add(&rs->dst.xbzrle_pages, 1);
	return 0;
}

/* The offsets of a ZPAGES record's pages: the header's, then n - 1 more,
 * each page-aligned and inside block b. */
static int read_zpages_offsets(struct kv_stream *s, const struct ram_rec *r,
			       const struct kv_ram_block *b, uint64_t *off,
			       size_t n, struct kv_error *err)
{
	off[0] = r->addr;
	for (size_t i = 1; i < n; i++) {
		off[i] = kv_stream_get_be64(s);
		if (kv_stream_error(s))
			return rec_stream_error(s, r, "the ZPAGES offsets",
						err);
		if (off[i] & (KV_PAGE_SIZE - 1) || off[i] >= b->length)
			return rec_error(err, r, -ERANGE,
					 "page %zu of %zu: offset 0x%llx is not a page of block '%s' (length 0x%llx)",
					 i + 1, n, (unsigned long long)off[i],
					 b->idstr,
					 (unsigned long long)b->length);
	}
	return 0;
}

/* A ZPAGES record (kvmig; docs/FORMAT.md 5.3): u8 method (zstd), be16
 * count, the other pages' offsets, be32 length, that many bytes of the
 * stream's one zstd stream, which must decode to exactly count pages. */
/* The ZPAGES decoder, made at the first record of a stream (the source
 * starts one zstd stream per migration). NULL with err set when the
 * library cannot allocate it. */
static struct kv_mfd_codec *zpages_decoder(struct kv_ram_dst *dst,
					   struct kv_error *err)
{
	if (dst->zpages_dec)
		return dst->zpages_dec;
	dst->zpages_dec = kv_mfd_codec_new(KV_MFD_METHOD_ZSTD,
					   KV_MFD_LEVEL_DEFAULT, false, err);
	if (!dst->zpages_dec)
		return NULL;
	dst->zpages_buf_size =
	    kv_mfd_compress_bound(KV_MFD_METHOD_ZSTD, KV_RAM_ZC_BATCH);
	dst->zpages_buf = malloc(dst->zpages_buf_size);
	if (!dst->zpages_buf) {
		kv_mfd_codec_free(dst->zpages_dec);
		dst->zpages_dec = NULL;
		kv_error_set(err, -ENOMEM, "ram: out of memory for compressed pages");
		return NULL;
	}
	return dst->zpages_dec;
}

static void zpages_decoder_free(struct kv_ram_dst *dst)
{
	kv_mfd_codec_free(dst->zpages_dec);
	dst->zpages_dec = NULL;
	free(dst->zpages_buf);
	dst->zpages_buf = NULL;
	dst->zpages_buf_size = 0;
	free(dst->zpages_bounce);
	dst->zpages_bounce = NULL;
}

void kv_ram_zpages_restart(struct kv_ram_state *rs)
{
	zpages_decoder_free(&rs->dst);
}

/* Postcopy after LISTEN: the batch decodes into a bounce buffer and each
 * page is placed through userfaultfd; a page that is here already (a
 * requested copy that came first, on this stream or the preempt
 * channel) keeps what it has: the source sends a page once after the
 * switch, so both copies are the same bytes anyway. */
static int place_zpages(struct kv_ram_state *rs, const struct ram_rec *r,
			size_t bi, struct kv_mfd_codec *dec, uint32_t len,
			const uint64_t *off, size_t n, struct kv_error *err)
{
	struct kv_error perr = {0};
	uint8_t *pages[KV_RAM_ZC_BATCH];

	if (!rs->dst.zpages_bounce) {
		rs->dst.zpages_bounce = malloc(KV_RAM_ZC_BATCH * KV_PAGE_SIZE);
		if (!rs->dst.zpages_bounce)
			return rec_error(err, r, -ENOMEM, "out of memory for compressed pages");
	}
	for (size_t i = 0; i < n; i++)
		pages[i] = rs->dst.zpages_bounce + i * KV_PAGE_SIZE;
	if (kv_mfd_decompress(dec, rs->dst.zpages_buf, len, pages, n,
			      &perr) < 0)
		return rec_error(err, r, -EINVAL, "bad compressed pages: %s",
				 perr.msg);
	for (size_t i = 0; i < n; i++)
		if (kv_ram_pc_place(rs, bi, off[i], pages[i], &perr) < 0)
			return rec_error(err, r, perr.code, "page %zu of %zu: %s",
					 i + 1, n, perr.msg);
	kv_ram_stat_add(&rs->normal_pages, n);
	return 0;
}

static int load_zpages(struct kv_stream *s, struct kv_ram_state *rs,
		       const struct ram_rec *r, struct kv_error *err)
{
	struct kv_error derr = {0};
	uint64_t off[KV_RAM_ZC_BATCH];
	uint8_t *pages[KV_RAM_ZC_BATCH];
	const struct kv_ram_block *b;
	struct kv_mfd_codec *dec;
	uint8_t method;
	uint16_t n;
	uint32_t len;
	size_t bi;
	int ret = resolve_page(s, rs, r, &bi, err);

	if (ret < 0)
		return ret;
	b = &rs->blocks[bi];
	method = kv_stream_get_u8(s);
	n = kv_stream_get_be16(s);
	if (kv_stream_error(s))
		return rec_stream_error(s, r, "the ZPAGES header", err);
	if (method != KV_MFD_METHOD_ZSTD)
		return rec_error(err, r, -EINVAL,
				 "ZPAGES compression method %u is unknown (only %u, zstd)",
				 method, KV_MFD_METHOD_ZSTD);
	if (n == 0 || n > KV_RAM_ZC_BATCH)
		return rec_error(err, r, -EINVAL,
				 "ZPAGES record of %u pages (must be 1..%u)",
				 n, KV_RAM_ZC_BATCH);
	ret = read_zpages_offsets(s, r, b, off, n, err);
	if (ret < 0)
		return ret;
	len = kv_stream_get_be32(s);
	if (kv_stream_error(s))
		return rec_stream_error(s, r, "the ZPAGES length", err);
	dec = zpages_decoder(&rs->dst, &derr);
	if (!dec)
		return rec_error(err, r, derr.code, "%s", derr.msg);
	if (len == 0 || len > rs->dst.zpages_buf_size)
		return rec_error(err, r, -EINVAL,
				 "ZPAGES payload of %u bytes for %u pages (must be 1..%zu)",
				 len, n, rs->dst.zpages_buf_size);
	kv_stream_get_buffer(s, rs->dst.zpages_buf, len);
	if (kv_stream_error(s))
		return rec_stream_error(s, r, "the ZPAGES payload", err);
	if (rs->dst.pc_listening)
		return place_zpages(rs, r, bi, dec, len, off, n, err);
	for (size_t i = 0; i < n; i++) {
		size_t page = (size_t)(off[i] >> KV_PAGE_SHIFT);

		pages[i] = b->host + off[i];
		mark_touched(rs, bi, page);
		kv_ram_page_populated(rs, bi, page);
		if (rs->dst.prefault)
			kv_ram_prefault_note(rs->dst.prefault, bi, b->host,
					     b->length, off[i]);
	}
	if (kv_mfd_decompress(dec, rs->dst.zpages_buf, len, pages, n,
			      &derr) < 0)
		return rec_error(err, r, -EINVAL, "bad compressed pages: %s",
				 derr.msg);
	for (size_t i = 0; i < n; i++) {
		kv_ram_verify_page(rs, bi, (size_t)(off[i] >> KV_PAGE_SHIFT));
		kv_ram_pc_received(rs, bi, off[i]);
	}
	kv_ram_stat_add(&rs->normal_pages, n);
	return 0;
}

/* Everything the channels had before this point is in memory once this
 * returns (multifd.h). */
static int load_multifd_flush(struct kv_ram_state *rs, const struct ram_rec *r,
			      struct kv_error *err)
{
	struct kv_error serr = {0};

	if (r->addr)
		return rec_error(err, r, -EINVAL,
				 "MULTIFD_FLUSH with a non-zero address");
	if (!rs->dst.mfd_recv)
		return rec_error(err, r, -EINVAL,
				 "MULTIFD_FLUSH record but multifd is not on here: set the multifd capability and multifd-channels on the destination too (kvmig run --incoming defer, then migrate-set-capabilities, migrate-incoming)");
	/* The channels wrote pages behind the pagemap cache's back. */
	kv_pagemap_invalidate(&rs->pagemap);
	if (kv_mfd_recv_sync(rs->dst.mfd_recv, &serr) < 0)
		return rec_error(err, r, serr.code, "%s", serr.msg);
	return 0;
}

/* kv_ram_multifd_target(): a block's memory, length and written-pages
 * bitmap, by name. */
static int mfd_block(void *opaque, const char *name, uint8_t **host,
		     uint64_t *len, unsigned long **written)
{
	struct kv_ram_state *rs = opaque;
	size_t bi = kv_ram_find_block(rs, name);

	if (bi == KV_RAM_NO_BLOCK || !rs->priv[bi].announced)
		return -ENOENT;
	*host = rs->blocks[bi].host;
	*len = rs->blocks[bi].length;
	*written = rs->priv[bi].touched;
	return 0;
}

/* A channel thread wrote these pages of the block at host (normal ones,
 * then zero ones): their hashes, on that thread, and after postcopy's
 * ADVISE they are received. Within a pass a page is on one channel only,
 * and passes are separated by a sync. */
static void mfd_placed(void *opaque, const uint8_t *host, const uint64_t *offs,
		       uint32_t normal, uint32_t zero)
{
	struct kv_ram_state *rs = opaque;
	size_t bi;

	if (!rs->verify.on && !rs->dst.pc)
		return;
	for (bi = 0; bi < rs->nblocks && rs->blocks[bi].host != host; bi++)
		;
	if (bi == rs->nblocks)
		return;
	for (uint32_t i = 0; i < normal + zero; i++)
		kv_ram_pc_received(rs, bi, offs[i]);
	if (!rs->verify.on)
		return;
	for (uint32_t i = 0; i < normal; i++)
		kv_ram_verify_page(rs, bi, (size_t)(offs[i] >> KV_PAGE_SHIFT));
	for (uint32_t i = normal; i < normal + zero; i++)
		kv_ram_verify_zero(rs, bi, (size_t)(offs[i] >> KV_PAGE_SHIFT));
}

struct kv_mfd_target kv_ram_multifd_target(struct kv_ram_state *rs)
{
	return (struct kv_mfd_target){.block = mfd_block,
				      .placed = mfd_placed,
				      .place = kv_ram_pc_mfd_place,
				      .opaque = rs};
}

int kv_ram_load_setup(void *opaque, struct kv_error *err)
{
	struct kv_ram_state *rs = opaque;

	(void)err;
	rs->dst.load_sections = 0;
	rs->dst.last_recv = KV_RAM_NO_BLOCK;
	rs->dst.mem_size_seen = false;
	kv_pagemap_invalidate(&rs->pagemap);
	for (size_t i = 0; i < rs->nblocks; i++)
		rs->priv[i].announced = false;
	kv_ram_stat_set(&rs->zero_pages, 0);
	kv_ram_stat_set(&rs->normal_pages, 0);
	kv_ram_stat_set(&rs->dst.xbzrle_pages, 0);
	zpages_decoder_free(&rs->dst); /* a new stream, a new zstd stream */
	return 0;
}

int kv_ram_load_state(struct kv_stream *s, void *opaque, int version_id,
		      struct kv_error *err)
{
	struct kv_ram_state *rs = opaque;
	struct ram_rec r = {0};
	int ret;

	if (version_id != KV_RAM_SECTION_VERSION)
		return kv_error_set(err, -EINVAL,
				    "ram: section version %d is not supported (only %d)",
				    version_id, KV_RAM_SECTION_VERSION);
	rs->dst.load_sections++;
	for (r.number = 1;; r.number++) {
		uint64_t v;

		r.offset = kv_stream_offset(s);
		r.header_read = false;
		v = kv_stream_get_be64(s);
		if (kv_stream_error(s))
			return rec_stream_error(s, &r, "the record header",
						err);
		r.header_read = true;
		r.flags = (unsigned int)(v & FLAG_MASK);
		r.addr = v & ~FLAG_MASK;
		ret = check_flags(&r, err);
		if (ret < 0)
			return ret;
		switch (r.flags & ~KV_RAM_FLAG_CONTINUE) {
		case KV_RAM_FLAG_MEM_SIZE:
			ret = load_mem_size(s, rs, &r, err);
			break;
		case KV_RAM_FLAG_ZERO:
			ret = load_zero(s, rs, &r, err);
			break;
		case KV_RAM_FLAG_PAGE:
			ret = load_page(s, rs, &r, err);
			break;
		case KV_RAM_FLAG_XBZRLE:
			ret = load_xbzrle(s, rs, &r, err);
			break;
		case KV_RAM_FLAG_MULTIFD_FLUSH:
			ret = load_multifd_flush(rs, &r, err);
			break;
		case KV_RAM_FLAG_ZPAGES:
			ret = load_zpages(s, rs, &r, err);
			break;
		case KV_RAM_FLAG_EOS:
			if (r.addr)
				return rec_error(err, &r, -EINVAL,
						 "EOS with a non-zero address");
			if (!rs->dst.mem_size_seen)
				return rec_error(err, &r, -EINVAL,
						 "section ends before the MEM_SIZE block list");
			return 0;
		default: /* check_flags() leaves no other type */
			ret = rec_error(err, &r, -EINVAL, "bad record type");
		}
		if (ret < 0)
			return ret;
	}
}

/* Undo what the loader wrote to a block that belongs to the caller. */
static void drop_loaded_pages(struct kv_ram_block *b, unsigned long *touched)
{
	long os_page = sysconf(_SC_PAGESIZE);
	bool can_madvise = os_page == (long)KV_PAGE_SIZE &&
			   ((uintptr_t)b->host % KV_PAGE_SIZE) == 0;
	size_t first = kv_bitmap_find_next(touched, b->npages, 0);

	while (first < b->npages) {
		size_t end = first + 1;

		while (end < b->npages && kv_bitmap_test(touched, end))
			end++;
		/* Anonymous private memory gives its pages back; any other
		 * kind keeps them, so check and clear what is left. */
		if (can_madvise)
			madvise(b->host + ((uint64_t)first << KV_PAGE_SHIFT),
				(end - first) * KV_PAGE_SIZE, MADV_DONTNEED);
		for (size_t pg = first; pg < end; pg++) {
			uint8_t *p = b->host + ((uint64_t)pg << KV_PAGE_SHIFT);

			if (!kv_buffer_is_zero(p, KV_PAGE_SIZE))
				memset(p, 0, KV_PAGE_SIZE);
		}
		first = kv_bitmap_find_next(touched, b->npages, end);
	}
}

void kv_ram_load_cleanup(void *opaque, bool failed)
{
	struct kv_ram_state *rs = opaque;

	/* Not joined here: a step in flight would add milliseconds to the
	 * downtime. kv_ram_free() or the next load joins it. */
	kv_ram_prefault_retire(rs->dst.prefault);
	/* No channel thread may write once the pages are dropped below. */
	if (rs->dst.mfd_recv) {
		if (failed)
			kv_mfd_recv_abort(rs->dst.mfd_recv);
		kv_mfd_recv_stop(rs->dst.mfd_recv);
	}
	kv_ram_pagemap_close(rs);
	/* The guest runs here (postcopy): what it has is all it has. */
	if (failed && rs->dst.pc_running)
		failed = false;
	kv_mapped_ram_cleanup(rs);
	kv_mapped_ram_instant_end(rs, failed);
	if (failed) {
		if (rs->dst.has_allocator)
			kv_ram_release_allocated(rs);
		for (size_t i = 0; i < rs->nblocks; i++)
			if (rs->priv[i].touched)
				drop_loaded_pages(&rs->blocks[i],
						  rs->priv[i].touched);
	}
	for (size_t i = 0; i < rs->nblocks; i++) {
		kv_bitmap_free(rs->priv[i].touched);
		rs->priv[i].touched = NULL;
		rs->priv[i].announced = false;
	}
	rs->dst.last_recv = KV_RAM_NO_BLOCK;
	rs->dst.mem_size_seen = false;
	zpages_decoder_free(&rs->dst);
}

void kv_ram_load_free(struct kv_ram_state *rs)
{
	zpages_decoder_free(&rs->dst);
	free(rs->dst.xbzrle_dec);
	rs->dst.xbzrle_dec = NULL;
	free(rs->dst.pc_page);
	rs->dst.pc_page = NULL;
}
