/* SPDX-License-Identifier: MIT */
/*
 * The multifd init message and packet header (multifd_packet.h): byte
 * layout, encoder and strict decoder.
 */
#include "base/bytes.h"
#include "base/units.h"
#include "migration/multifd/multifd_packet.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "migration/codec/codec.h"

/* Byte offsets of the init message's fields. */
#define INIT_OFF_MAGIC	 0
#define INIT_OFF_VERSION 4
#define INIT_OFF_UUID	 8
#define INIT_OFF_ID	 24

/* Byte offsets of the packet header's fields. */
#define HDR_OFF_MAGIC	    0
#define HDR_OFF_VERSION	    4
#define HDR_OFF_FLAGS	    8
#define HDR_OFF_PAGES_ALLOC 12
#define HDR_OFF_NORMAL	    16
#define HDR_OFF_NEXT_SIZE   20
#define HDR_OFF_PACKET_NUM  24
#define HDR_OFF_ZERO	    32
#define HDR_OFF_BLOCK	    64 /* after 4 + 24 reserved bytes */

_Static_assert(HDR_OFF_BLOCK + KV_MFD_BLOCK_NAME_SIZE == KV_MFD_HDR_SIZE,
	       "the packet header is QEMU's 320 bytes");
_Static_assert(KV_MFD_PAYLOAD_MAX(KV_MFD_PAGES_LIMIT) < UINT32_MAX,
	       "payload sizes fit next_packet_size");

uint32_t kv_mfd_method_flag(enum kv_mfd_method method)
{
	const struct kv_codec_ops *ops = kv_codec_by_method(method);

	return ops ? ops->wire_flag : KV_MFD_FLAG_NOCOMP;
}

/* ---- init message ---- */

void kv_mfd_init_encode(const struct kv_mfd_init *msg,
			uint8_t buf[KV_MFD_INIT_SIZE])
{
	memset(buf, 0, KV_MFD_INIT_SIZE);
	kv_put_be32(buf + INIT_OFF_MAGIC, KV_MFD_MAGIC);
	kv_put_be32(buf + INIT_OFF_VERSION, KV_MFD_VERSION);
	memcpy(buf + INIT_OFF_UUID, msg->uuid, KV_MFD_UUID_SIZE);
	buf[INIT_OFF_ID] = msg->id;
}

int kv_mfd_init_decode(const uint8_t buf[KV_MFD_INIT_SIZE], unsigned channels,
		       const uint8_t *expect_uuid, struct kv_mfd_init *msg,
		       struct kv_error *err)
{
	uint32_t magic = kv_get_be32(buf + INIT_OFF_MAGIC);
	uint32_t version = kv_get_be32(buf + INIT_OFF_VERSION);
	uint8_t id = buf[INIT_OFF_ID];

	if (magic != KV_MFD_MAGIC)
		return kv_error_set(err, -EINVAL,
				    "multifd init message: magic 0x%08" PRIx32
				    " (expected 0x%08x): not a multifd channel",
				    magic, KV_MFD_MAGIC);
	if (version != KV_MFD_VERSION)
		return kv_error_set(err, -EINVAL,
				    "multifd init message: version %" PRIu32
				    " (only %u is supported)",
				    version, KV_MFD_VERSION);
	if (id >= channels)
		return kv_error_set(err, -EINVAL,
				    "multifd init message: channel id %u, but only %u channel%s configured (multifd-channels must match on both sides)",
				    id, channels,
				    channels == 1 ? " is" : "s are");
	if (expect_uuid &&
	    memcmp(buf + INIT_OFF_UUID, expect_uuid, KV_MFD_UUID_SIZE))
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u init message: UUID differs from this migration's",
				    id);
	memcpy(msg->uuid, buf + INIT_OFF_UUID, KV_MFD_UUID_SIZE);
	msg->id = id;
	return 0;
}

/* ---- packets ---- */

size_t kv_mfd_packet_header_size(uint32_t pages_alloc)
{
	return KV_MFD_HDR_SIZE + (size_t)pages_alloc * 8;
}

long kv_mfd_packet_encode(const struct kv_mfd_packet *pkt, uint8_t *buf,
			  size_t buf_len, struct kv_error *err)
{
	size_t used = (size_t)pkt->normal + pkt->zero;
	size_t size = kv_mfd_packet_header_size(pkt->pages_alloc);
	size_t name_len = strnlen(pkt->block, KV_MFD_BLOCK_NAME_SIZE);

	if (used > pkt->pages_alloc)
		return kv_error_set(err, -EINVAL,
				    "multifd packet %" PRIu64 ": %" PRIu32
				    " normal + %" PRIu32 " zero pages exceed pages_alloc %" PRIu32,
				    pkt->packet_num, pkt->normal, pkt->zero,
				    pkt->pages_alloc);
	if (name_len == KV_MFD_BLOCK_NAME_SIZE)
		return kv_error_set(err, -EINVAL,
				    "multifd packet %" PRIu64 ": block name longer than %u bytes",
				    pkt->packet_num,
				    KV_MFD_BLOCK_NAME_SIZE - 1);
	if (buf_len < size)
		return kv_error_set(err, -ENOSPC,
				    "multifd packet %" PRIu64 ": %zu bytes of room for a %zu-byte header",
				    pkt->packet_num, buf_len, size);

	memset(buf, 0, size);
	kv_put_be32(buf + HDR_OFF_MAGIC, KV_MFD_MAGIC);
	kv_put_be32(buf + HDR_OFF_VERSION, KV_MFD_VERSION);
	kv_put_be32(buf + HDR_OFF_FLAGS, pkt->flags);
	kv_put_be32(buf + HDR_OFF_PAGES_ALLOC, pkt->pages_alloc);
	kv_put_be32(buf + HDR_OFF_NORMAL, pkt->normal);
	kv_put_be32(buf + HDR_OFF_NEXT_SIZE, pkt->next_size);
	kv_put_be64(buf + HDR_OFF_PACKET_NUM, pkt->packet_num);
	kv_put_be32(buf + HDR_OFF_ZERO, pkt->zero);
	memcpy(buf + HDR_OFF_BLOCK, pkt->block, name_len);
	for (size_t i = 0; i < used; i++)
		kv_put_be64(buf + KV_MFD_HDR_SIZE + i * 8, pkt->offsets[i]);
	return (long)size;
}

static const char *method_flag_name(uint32_t bits)
{
	const struct kv_codec_ops *ops = kv_codec_by_wire_flag(bits);

	if (ops)
		return ops->name;
	switch (bits) {
	case KV_MFD_FLAG_QPL:
		return "qpl (QEMU's Intel QPL, not supported)";
	case KV_MFD_FLAG_UADK:
		return "uadk (QEMU's UADK, not supported)";
	case KV_MFD_FLAG_QATZIP:
		return "qatzip (QEMU's QATzip, not supported)";
	default:
		return "several methods at once";
	}
}

static int check_flags(const struct kv_mfd_recv_params *rp,
		       const struct kv_mfd_packet *pkt, struct kv_error *err)
{
	const uint32_t known = KV_MFD_FLAG_SYNC | KV_MFD_FLAG_METHOD_MASK |
			       (rp->postcopy ? KV_MFD_FLAG_POSTCOPY : 0);
	uint32_t bits = pkt->flags & KV_MFD_FLAG_METHOD_MASK;
	uint32_t want = kv_mfd_method_flag(rp->method);

	if (pkt->flags & KV_MFD_FLAG_DEVICE_STATE)
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u, packet %" PRIu64
				    ": flags 0x%" PRIx32 " mark a device-state packet (QEMU's VFIO state), not supported",
				    rp->channel, pkt->packet_num, pkt->flags);
	if ((pkt->flags & KV_MFD_FLAG_POSTCOPY) && !rp->postcopy)
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u, packet %" PRIu64
				    ": flags 0x%" PRIx32 " mark a postcopy packet, but postcopy-ram is off on this destination (turn it on on both sides)",
				    rp->channel, pkt->packet_num, pkt->flags);
	if (pkt->flags & ~known)
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u, packet %" PRIu64
				    ": unknown flags 0x%" PRIx32
				    " (in flags 0x%" PRIx32 ")",
				    rp->channel, pkt->packet_num,
				    pkt->flags & ~known, pkt->flags);
	if (bits == want)
		return 0;
	/* QEMU's sync packets carry no method bits: fine without pages. */
	if (bits == KV_MFD_FLAG_NOCOMP && pkt->normal == 0)
		return 0;
	return kv_error_set(err, -EINVAL,
			    "multifd channel %u, packet %" PRIu64
			    ": flags 0x%" PRIx32 " say compression %s, but this migration uses %s (multifd-compression must match on both sides)",
			    rp->channel, pkt->packet_num, pkt->flags,
			    method_flag_name(bits), method_flag_name(want));
}

static int check_counts(const struct kv_mfd_recv_params *rp,
			const struct kv_mfd_packet *pkt, struct kv_error *err)
{
	uint32_t limit = rp->max_pages < KV_MFD_PAGES_LIMIT
			     ? rp->max_pages
			     : KV_MFD_PAGES_LIMIT;

	if (pkt->pages_alloc == 0 || pkt->pages_alloc > limit)
		return kv_error_set(
		    err, -EINVAL,
		    "multifd channel %u, packet %" PRIu64
		    ": pages_alloc %" PRIu32 " outside 1..%" PRIu32,
		    rp->channel, pkt->packet_num, pkt->pages_alloc, limit);
	if (pkt->normal > pkt->pages_alloc ||
	    pkt->zero > pkt->pages_alloc - pkt->normal)
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u, packet %" PRIu64
				    ": normal_pages %" PRIu32
				    " + zero_pages %" PRIu32
				    " exceed pages_alloc %" PRIu32,
				    rp->channel, pkt->packet_num, pkt->normal,
				    pkt->zero, pkt->pages_alloc);
	return 0;
}

static int check_next_size(const struct kv_mfd_recv_params *rp,
			   const struct kv_mfd_packet *pkt,
			   struct kv_error *err)
{
	size_t raw = (size_t)pkt->normal * KV_PAGE_SIZE;
	bool compressed = (pkt->flags & KV_MFD_FLAG_METHOD_MASK) != 0;

	if (pkt->normal == 0) {
		if (pkt->next_size == 0)
			return 0;
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u, packet %" PRIu64
				    ": next_packet_size %" PRIu32
				    " with no normal pages (must be 0)",
				    rp->channel, pkt->packet_num,
				    pkt->next_size);
	}
	if (!compressed && pkt->next_size != raw)
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u, packet %" PRIu64
				    ": next_packet_size %" PRIu32
				    " for %" PRIu32 " uncompressed pages (must be %zu)",
				    rp->channel, pkt->packet_num,
				    pkt->next_size, pkt->normal, raw);
	if (compressed && (pkt->next_size == 0 ||
			   pkt->next_size > KV_MFD_PAYLOAD_MAX(pkt->normal)))
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u, packet %" PRIu64
				    ": next_packet_size %" PRIu32
				    " for %" PRIu32 " compressed pages (must be 1..%zu)",
				    rp->channel, pkt->packet_num,
				    pkt->next_size, pkt->normal,
				    KV_MFD_PAYLOAD_MAX(pkt->normal));
	return 0;
}

static int check_block(const struct kv_mfd_recv_params *rp,
		       struct kv_mfd_packet *pkt, const uint8_t *name,
		       struct kv_error *err)
{
	size_t len = strnlen((const char *)name, KV_MFD_BLOCK_NAME_SIZE);
	int ret;

	if (len == KV_MFD_BLOCK_NAME_SIZE)
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u, packet %" PRIu64
				    ": ramblock name not NUL-terminated within its %u bytes",
				    rp->channel, pkt->packet_num,
				    KV_MFD_BLOCK_NAME_SIZE);
	memset(pkt->block, 0, sizeof(pkt->block));
	memcpy(pkt->block, name, len);
	pkt->block_len = 0;
	/* A packet without pages (a sync) names no block that matters. */
	if (pkt->normal + pkt->zero == 0)
		return 0;
	if (!rp->block_len)
		return kv_error_set(err, -ENOENT,
				    "multifd channel %u, packet %" PRIu64
				    ": ramblock '%s' unknown (no blocks)",
				    rp->channel, pkt->packet_num, pkt->block);
	ret = rp->block_len(rp->opaque, pkt->block, &pkt->block_len);
	if (ret < 0)
		return kv_error_set(err, -ENOENT,
				    "multifd channel %u, packet %" PRIu64
				    ": ramblock '%s' unknown",
				    rp->channel, pkt->packet_num, pkt->block);
	return 0;
}

int kv_mfd_packet_decode_header(const uint8_t *buf, size_t len,
				const struct kv_mfd_recv_params *rp,
				struct kv_mfd_packet *pkt, struct kv_error *err)
{
	uint32_t magic, version;
	int ret;

	if (len < KV_MFD_HDR_SIZE)
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u: packet header of %zu bytes (needs %u)",
				    rp->channel, len, KV_MFD_HDR_SIZE);
	magic = kv_get_be32(buf + HDR_OFF_MAGIC);
	version = kv_get_be32(buf + HDR_OFF_VERSION);
	pkt->flags = kv_get_be32(buf + HDR_OFF_FLAGS);
	pkt->pages_alloc = kv_get_be32(buf + HDR_OFF_PAGES_ALLOC);
	pkt->normal = kv_get_be32(buf + HDR_OFF_NORMAL);
	pkt->next_size = kv_get_be32(buf + HDR_OFF_NEXT_SIZE);
	pkt->packet_num = kv_get_be64(buf + HDR_OFF_PACKET_NUM);
	pkt->zero = kv_get_be32(buf + HDR_OFF_ZERO);
	pkt->block[0] = '\0';
	pkt->block_len = 0;

	if (magic != KV_MFD_MAGIC)
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u, packet %" PRIu64
				    ": magic 0x%08" PRIx32 " (expected 0x%08x)",
				    rp->channel, pkt->packet_num, magic,
				    KV_MFD_MAGIC);
	if (version != KV_MFD_VERSION)
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u, packet %" PRIu64
				    ": version %" PRIu32 " (expected %u)",
				    rp->channel, pkt->packet_num, version,
				    KV_MFD_VERSION);
	ret = check_counts(rp, pkt, err);
	if (!ret)
		ret = check_flags(rp, pkt, err);
	if (!ret)
		ret = check_next_size(rp, pkt, err);
	if (!ret)
		ret = check_block(rp, pkt, buf + HDR_OFF_BLOCK, err);
	return ret;
}

size_t kv_mfd_packet_offsets_size(const struct kv_mfd_packet *pkt)
{
	return (size_t)pkt->pages_alloc * 8;
}

int kv_mfd_packet_decode_offsets(const uint8_t *buf, size_t len,
				 const struct kv_mfd_recv_params *rp,
				 struct kv_mfd_packet *pkt,
				 struct kv_error *err)
{
	uint32_t used = pkt->normal + pkt->zero;

	if (len < kv_mfd_packet_offsets_size(pkt))
		return kv_error_set(err, -EINVAL,
				    "multifd channel %u, packet %" PRIu64
				    ": %zu bytes of offsets (needs %zu)",
				    rp->channel, pkt->packet_num, len,
				    kv_mfd_packet_offsets_size(pkt));
	for (uint32_t i = 0; i < used; i++) {
		uint64_t off = kv_get_be64(buf + (size_t)i * 8);
		const char *kind = i < pkt->normal ? "normal" : "zero";

		if (off % KV_PAGE_SIZE)
			return kv_error_set(
			    err, -EINVAL,
			    "multifd channel %u, packet %" PRIu64
			    ": offset[%" PRIu32 "] 0x%" PRIx64
			    " not page-aligned (%s page)",
			    rp->channel, pkt->packet_num, i, off, kind);
		if (pkt->block_len < KV_PAGE_SIZE ||
		    off > pkt->block_len - KV_PAGE_SIZE)
			return kv_error_set(
			    err, -EINVAL,
			    "multifd channel %u, packet %" PRIu64
			    ": offset[%" PRIu32 "] 0x%" PRIx64
			    " beyond ramblock '%s' of 0x%" PRIx64
			    " bytes (%s page)",
			    rp->channel, pkt->packet_num, i, off, pkt->block,
			    pkt->block_len, kind);
		pkt->offsets[i] = off;
	}
	return 0;
}

long kv_mfd_packet_decode(const uint8_t *buf, size_t len,
			  const struct kv_mfd_recv_params *rp,
			  struct kv_mfd_packet *pkt, struct kv_error *err)
{
	int ret = kv_mfd_packet_decode_header(buf, len, rp, pkt, err);

	if (ret < 0)
		return ret;
	ret = kv_mfd_packet_decode_offsets(buf + KV_MFD_HDR_SIZE,
					   len - KV_MFD_HDR_SIZE, rp, pkt, err);
	if (ret < 0)
		return ret;
	return (long)kv_mfd_packet_header_size(pkt->pages_alloc);
}
