/* SPDX-License-Identifier: MIT */
/*
 * The JSON VM description written after EOF (internal to migration/).
 *
 * Layout, as QEMU writes it and scripts/analyze-migration.py reads it:
 *   {"page_size": 4096,
 *    "devices": [{"name": idstr, "instance_id": N, "vmsd_name": ...,
 *                 "version": N, "fields": [...], "subsections": [...]}]}
 * Only plain devices (vmstate) appear; live handlers such as "ram" are
 * decoded by readers that know their format.
 */
#ifndef KV_MIGRATION_VMDESC_H
#define KV_MIGRATION_VMDESC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "base/units.h"
#include "migration/savevm/vmstate.h"

/* Largest description the loader accepts. */
#define KV_VMDESC_MAX_LEN (16U << 20)

/* Description of d as it is sent for opaque: with opaque, only the
 * subsections whose needed() holds are listed (a reader expects exactly
 * those on the wire) and sizes include them; with opaque NULL, every
 * subsection is listed. */
json_t *kv_vmdesc_describe_vmsd(const struct kv_vmstate_desc *d, void *opaque);

/* The root object with page_size and an empty devices array. */
json_t *kv_vmdesc_new(void);
/* Append one device entry to root's devices. */
int kv_vmdesc_add_device(json_t *root, const char *idstr, uint32_t instance_id,
			 const struct kv_vmstate_desc *vmsd, void *opaque,
			 struct kv_error *err);

/* Wire width of a scalar type (u8..u64, i8..i64, bool); 0 for others.
 * Defined in vmstate.c: one table of widths for encoding and description. */
size_t kv_vmstate_scalar_width(enum kv_vmstate_type t);

/* One device of the description, for kv_vmdesc_render. */
struct kv_vmdesc_dev {
	const char *idstr;
	uint32_t instance_id;
	const struct kv_vmstate_desc *vmsd;
	void *opaque;
};

/* The description of devs as compact JSON text: byte for byte what
 * json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) gives for the root
 * kv_vmdesc_new() and kv_vmdesc_add_device() build for the same devices,
 * in a fraction of the time (it runs while the guest is stopped). Returns
 * malloc'ed, NUL-terminated text and its length, or NULL when out of
 * memory or for input the tree handles its own way (nesting deeper than
 * 16, names that are not ASCII): the caller then builds the tree. */
char *kv_vmdesc_render(const struct kv_vmdesc_dev *devs, size_t n, size_t *len);

/* Check a received description: length cap, valid JSON, the layout above
 * (object, integer page_size 4096, devices array of objects with string
 * name and vmsd_name, integer instance_id and version). */
int kv_vmdesc_validate(const char *json, size_t len, struct kv_error *err);

#endif
