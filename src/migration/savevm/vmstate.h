/* SPDX-License-Identifier: MIT */
/*
 * Field descriptors for plain device state (the role of QEMU's
 * VMStateDescription). A device describes its struct once; the engine saves,
 * loads, validates and documents (JSON VM description) it from that table.
 *
 * Wire encoding (identical to QEMU's): fields in table order, each big-endian
 * at its natural width (bool as one byte 0/1), arrays element by element,
 * nested structs inline; then, for every subsection whose needed() returns
 * true: byte 0x05 (QEMU_VM_SUBSECTION), u8 length + name, be32 version_id,
 * the subsection's own fields and subsections. The loader accepts
 * subsections in any order and rejects unknown ones.
 */
#ifndef KV_MIGRATION_VMSTATE_H
#define KV_MIGRATION_VMSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "io/stream.h"

enum kv_vmstate_type {
	KV_VMS_U8,
	KV_VMS_U16,
	KV_VMS_U32,
	KV_VMS_U64,
	KV_VMS_I8,
	KV_VMS_I16,
	KV_VMS_I32,
	KV_VMS_I64,
	KV_VMS_BOOL,
	KV_VMS_BUFFER, /* fixed-size byte buffer of `size` bytes */
	KV_VMS_STRUCT, /* nested struct described by `vmsd`, `size` = sizeof */
};

struct kv_vmstate_desc;

struct kv_vmstate_field {
	const char *name;   /* NULL terminates the table */
	enum kv_vmstate_type type;
	size_t offset;      /* offsetof(struct, member) */
	size_t size;        /* BUFFER: bytes; STRUCT: sizeof element; else 0 */
	uint32_t count;     /* array length; 0 or 1 = a single element */
	int version_id;     /* present in streams of this version and later */
	const struct kv_vmstate_desc *vmsd; /* STRUCT only */
};

struct kv_vmstate_desc {
	const char *name;        /* also the subsection name on the wire */
	int version_id;          /* version written */
	int minimum_version_id;  /* oldest version the loader accepts */
	const struct kv_vmstate_field *fields;
	/* NULL-terminated list of optional subsections. */
	const struct kv_vmstate_desc *const *subsections;
	/* Subsections only: send this subsection? NULL means always. */
	bool (*needed)(void *opaque);
	int (*pre_save)(void *opaque, struct kv_error *err);
	int (*post_load)(void *opaque, int version_id, struct kv_error *err);
};

/* Field-table helpers: KV_VMS_FIELD(struct foo, member, KV_VMS_U32, 1). */
#define KV_VMS_FIELD(st, m, t, ver) \
	{ .name = #m, .type = (t), .offset = offsetof(st, m), .version_id = (ver) }
#define KV_VMS_ARRAY(st, m, t, n, ver)                                     \
	{ .name = #m, .type = (t), .offset = offsetof(st, m), .count = (n), \
	  .version_id = (ver) }
#define KV_VMS_BUF(st, m, ver)                                          \
	{ .name = #m, .type = KV_VMS_BUFFER, .offset = offsetof(st, m), \
	  .size = sizeof(((st *)0)->m), .version_id = (ver) }
#define KV_VMS_STRUCT_FIELD(st, m, sub, substruct, ver)                 \
	{ .name = #m, .type = KV_VMS_STRUCT, .offset = offsetof(st, m), \
	  .size = sizeof(substruct), .vmsd = (sub), .version_id = (ver) }
#define KV_VMS_END { .name = NULL }

/* Save opaque as described (runs pre_save first). */
int kv_vmstate_save(struct kv_stream *s, const struct kv_vmstate_desc *d,
		    void *opaque, struct kv_error *err);

/* Load opaque from a stream written at version_id: rejects versions newer
 * than d->version_id or older than d->minimum_version_id; runs post_load.
 * Error messages name the field and the stream offset. */
int kv_vmstate_load(struct kv_stream *s, const struct kv_vmstate_desc *d,
		    void *opaque, int version_id, struct kv_error *err);

/* Check a descriptor table once at registration: known types, sizes that
 * fit, STRUCT fields with a vmsd, names present. */
int kv_vmstate_validate(const struct kv_vmstate_desc *d, struct kv_error *err);

/* JSON description of d, as QEMU writes in its VM description:
 * {"vmsd_name","version","fields":[{"name"[,"array_len"|"index"],"type",
 *  ["struct",]"size"}],"subsections":[...]} (every subsection listed).
 * Returns a new jansson json_t * (void * here so this header does not pull
 * in jansson). */
void *kv_vmstate_describe(const struct kv_vmstate_desc *d);

#endif
