/* SPDX-License-Identifier: MIT */
/*
 * The JSON VM description: built by the source after EOF so that QEMU's
 * stream tools can decode every device section, and checked by the
 * destination before it accepts a stream.
 */
#include "base/units.h"
#include "migration/savevm/vmdesc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *type_name(enum kv_vmstate_type t)
{
	switch (t) {
	case KV_VMS_U8:
		return "uint8";
	case KV_VMS_U16:
		return "uint16";
	case KV_VMS_U32:
		return "uint32";
	case KV_VMS_U64:
		return "uint64";
	case KV_VMS_I8:
		return "int8";
	case KV_VMS_I16:
		return "int16";
	case KV_VMS_I32:
		return "int32";
	case KV_VMS_I64:
		return "int64";
	case KV_VMS_BOOL:
		return "bool";
	case KV_VMS_BUFFER:
		return "buffer";
	case KV_VMS_STRUCT:
		return "struct";
	}
	return "unknown";
}

static size_t wire_width(const struct kv_vmstate_field *f)
{
	return f->type == KV_VMS_BUFFER ? f->size
					: kv_vmstate_scalar_width(f->type);
}

static uint32_t field_count(const struct kv_vmstate_field *f)
{
	return f->count ? f->count : 1;
}

static void *elem_ptr(void *opaque, const struct kv_vmstate_field *f,
		      uint32_t i)
{
	if (!opaque)
		return NULL;
	return (uint8_t *)opaque + f->offset + (size_t)i * f->size;
}

static bool sub_sent(const struct kv_vmstate_desc *sub, void *opaque)
{
	if (!opaque)
		return true;
	return !sub->needed || sub->needed(opaque);
}

static uint64_t vmsd_wire_size(const struct kv_vmstate_desc *d, void *opaque,
			       int depth);

/* Bytes one element of f takes on the wire. Without opaque, a nested
 * struct counts its fields only (its subsections depend on the state). */
static uint64_t elem_wire_size(const struct kv_vmstate_field *f, void *elem,
			       int depth)
{
	if (f->type == KV_VMS_STRUCT)
		return vmsd_wire_size(f->vmsd, elem, depth + 1);
	return wire_width(f);
}

static uint64_t vmsd_wire_size(const struct kv_vmstate_desc *d, void *opaque,
			       int depth)
{
	const struct kv_vmstate_desc *const *sub;
	const struct kv_vmstate_field *f;
	uint64_t total = 0;
	uint32_t i;

	if (depth > 16)
		return 0;
	for (f = d->fields; f && f->name; f++) {
		if (f->version_id > d->version_id)
			continue;
		for (i = 0; i < field_count(f); i++)
			total +=
			    elem_wire_size(f, elem_ptr(opaque, f, i), depth);
	}
	if (!opaque)
		return total;
	for (sub = d->subsections; sub && *sub; sub++)
		if (sub_sent(*sub, opaque))
			total += 1 + 1 + strlen((*sub)->name) + 4 +
				 vmsd_wire_size(*sub, opaque, depth + 1);
	return total;
}

static json_t *describe(const struct kv_vmstate_desc *d, void *opaque,
			int depth);

static int append_field(json_t *fields, const struct kv_vmstate_field *f,
			void *opaque, int depth)
{
	uint32_t n = field_count(f);
	uint32_t i;

	/* Scalars and buffers: one entry for the whole array (QEMU's
	 * compressed form); structs: one entry per element. */
	for (i = 0; i < n; i++) {
		void *elem = elem_ptr(opaque, f, i);
		json_t *o = json_object();

		if (!o)
			return -ENOMEM;
		json_object_set_new(o, "name", json_string(f->name));
		if (n > 1 && f->type != KV_VMS_STRUCT)
			json_object_set_new(o, "array_len", json_integer(n));
		else if (n > 1)
			json_object_set_new(o, "index", json_integer(i));
		json_object_set_new(o, "type", json_string(type_name(f->type)));
		if (f->type == KV_VMS_STRUCT)
			json_object_set_new(o, "struct",
					    describe(f->vmsd, elem, depth + 1));
		json_object_set_new(
		    o, "size",
		    json_integer((json_int_t)elem_wire_size(f, elem, depth)));
		if (json_array_append_new(fields, o) < 0)
			return -ENOMEM;
		if (f->type != KV_VMS_STRUCT)
			break;
	}
	return 0;
}

static json_t *describe(const struct kv_vmstate_desc *d, void *opaque,
			int depth)
{
	const struct kv_vmstate_desc *const *sub;
	const struct kv_vmstate_field *f;
	json_t *o, *fields, *subs;

	o = json_object();
	fields = json_array();
	subs = json_array();
	if (!o || !fields || !subs || depth > 16)
		goto fail;
	json_object_set_new(o, "vmsd_name", json_string(d->name));
	json_object_set_new(o, "version", json_integer(d->version_id));
	for (f = d->fields; f && f->name; f++) {
		if (f->version_id > d->version_id)
			continue;
		if (append_field(fields, f, opaque, depth) < 0)
			goto fail;
	}
	json_object_set_new(o, "fields", fields);
	fields = NULL;
	for (sub = d->subsections; sub && *sub; sub++) {
		if (!sub_sent(*sub, opaque))
			continue;
		if (json_array_append_new(subs,
					  describe(*sub, opaque, depth + 1)))
			goto fail;
	}
	/* QEMU omits the key when no subsection was sent. */
	if (json_array_size(subs) > 0)
		json_object_set_new(o, "subsections", subs);
	else
		json_decref(subs);
	return o;
fail:
	json_decref(o);
	json_decref(fields);
	json_decref(subs);
	return NULL;
}

json_t *kv_vmdesc_describe_vmsd(const struct kv_vmstate_desc *d, void *opaque)
{
	return describe(d, opaque, 0);
}

void *kv_vmstate_describe(const struct kv_vmstate_desc *d)
{
	return describe(d, NULL, 0);
}

json_t *kv_vmdesc_new(void)
{
	json_t *root = json_object();

	if (!root)
		return NULL;
	if (json_object_set_new(root, "page_size",
				json_integer(KV_PAGE_SIZE)) < 0 ||
	    json_object_set_new(root, "devices", json_array()) < 0) {
		json_decref(root);
		return NULL;
	}
	return root;
}

int kv_vmdesc_add_device(json_t *root, const char *idstr, uint32_t instance_id,
			 const struct kv_vmstate_desc *vmsd, void *opaque,
			 struct kv_error *err)
{
	json_t *devices = json_object_get(root, "devices");
	json_t *dev = json_object();
	json_t *body = kv_vmdesc_describe_vmsd(vmsd, opaque);

	if (!devices || !dev || !body) {
		json_decref(dev);
		json_decref(body);
		return kv_error_set(err, -ENOMEM,
				    "VM description of '%s': out of memory",
				    idstr);
	}
	/* QEMU's key order: name, instance_id, then the vmsd's own keys. */
	json_object_set_new(dev, "name", json_string(idstr));
	json_object_set_new(dev, "instance_id", json_integer(instance_id));
	json_object_update(dev, body);
	json_decref(body);
	if (json_array_append_new(devices, dev) < 0)
		return kv_error_set(err, -ENOMEM,
				    "VM description of '%s': out of memory",
				    idstr);
	return 0;
}

/* --- validation of a received description --- */

static int check_device(json_t *dev, size_t i, struct kv_error *err)
{
	json_t *name = json_object_get(dev, "name");

	if (!json_is_object(dev))
		return kv_error_set(err, -EINVAL,
				    "VM description: devices[%zu] is not an object",
				    i);
	if (!json_is_string(name))
		return kv_error_set(err, -EINVAL,
				    "VM description: devices[%zu] has no string \"name\"",
				    i);
	if (!json_is_string(json_object_get(dev, "vmsd_name")))
		return kv_error_set(err, -EINVAL,
				    "VM description: devices[%zu] ('%s') has no string \"vmsd_name\"",
				    i, json_string_value(name));
	if (!json_is_integer(json_object_get(dev, "instance_id")))
		return kv_error_set(err, -EINVAL,
				    "VM description: devices[%zu] ('%s') has no integer \"instance_id\"",
				    i, json_string_value(name));
	if (!json_is_integer(json_object_get(dev, "version")))
		return kv_error_set(err, -EINVAL,
				    "VM description: devices[%zu] ('%s') has no integer \"version\"",
				    i, json_string_value(name));
	return 0;
}

static int check_root(json_t *root, struct kv_error *err)
{
	json_t *ps = json_object_get(root, "page_size");
	json_t *devices = json_object_get(root, "devices");
	size_t i;
	int ret;

	if (!json_is_object(root))
		return kv_error_set(err, -EINVAL,
				    "VM description: top level is not a JSON object");
	if (!json_is_integer(ps))
		return kv_error_set(err, -EINVAL,
				    "VM description: no integer \"page_size\"");
	if (json_integer_value(ps) != KV_PAGE_SIZE)
		return kv_error_set(err, -EINVAL,
				    "VM description: page_size %lld, expected %d",
				    (long long)json_integer_value(ps),
				    KV_PAGE_SIZE);
	if (!json_is_array(devices))
		return kv_error_set(err, -EINVAL,
				    "VM description: no \"devices\" array");
	for (i = 0; i < json_array_size(devices); i++) {
		ret = check_device(json_array_get(devices, i), i, err);
		if (ret < 0)
			return ret;
	}
	return 0;
}

int kv_vmdesc_validate(const char *json, size_t len, struct kv_error *err)
{
	json_error_t jerr;
	json_t *root;
	int ret;

	if (len > KV_VMDESC_MAX_LEN)
		return kv_error_set(err, -EINVAL,
				    "VM description of %zu bytes exceeds the limit of %u",
				    len, KV_VMDESC_MAX_LEN);
	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return kv_error_set(err, -EINVAL,
				    "VM description is not valid JSON: %s (line %d, column %d)",
				    jerr.text, jerr.line, jerr.column);
	ret = check_root(root, err);
	json_decref(root);
	return ret;
}

/* --- the same description as text, without the jansson tree --- */

/*
 * At switch-over the description is written and checked while the guest
 * is stopped; building and dumping a jansson tree of some 75 KB took about
 * 3 ms here, and parsing it on the destination 2 ms more. The renderer
 * below writes the text json_dumps(JSON_COMPACT | JSON_PRESERVE_ORDER)
 * gives for the tree kv_vmdesc_new() + kv_vmdesc_add_device() build, byte
 * for byte (tests/unit/test_vmstate.c compares them), in a tenth of that.
 */

/* Nesting the tree builder handles (see describe()). */
#define RENDER_MAX_DEPTH 16

struct text_buf {
	char *p;
	size_t len, cap;
	bool failed; /* out of memory, or nested too deep */
};

static void tb_put(struct text_buf *b, const char *s, size_t n)
{
	size_t cap;
	char *p;

	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p) {
			b->failed = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void tb_raw(struct text_buf *b, const char *s)
{
	tb_put(b, s, strlen(s));
}

static void tb_int(struct text_buf *b, long long v)
{
	char num[24];
	int n = snprintf(num, sizeof(num), "%lld", v);

	tb_put(b, num, (size_t)n);
}

/* A JSON string escaped as jansson escapes it (no ensure-ascii, no slash
 * escaping). Text that is not UTF-8 gives no string in jansson at all:
 * give up then, and let the caller use the tree. */
static void tb_str(struct text_buf *b, const char *s)
{
	const unsigned char *u = (const unsigned char *)s;
	const unsigned char *run = u;
	char esc[8];

	for (const unsigned char *c = u; *c; c++)
		if (*c >= 0x80) {
			b->failed = true;
			return;
		}
	tb_put(b, "\"", 1);
	for (; *u; u++) {
		const char *e = NULL;

		if (*u == '"')
			e = "\\\"";
		else if (*u == '\\')
			e = "\\\\";
		else if (*u == '\b')
			e = "\\b";
		else if (*u == '\f')
			e = "\\f";
		else if (*u == '\n')
			e = "\\n";
		else if (*u == '\r')
			e = "\\r";
		else if (*u == '\t')
			e = "\\t";
		else if (*u < 0x20) {
			snprintf(esc, sizeof(esc), "\\u%04X", *u);
			e = esc;
		}
		if (!e)
			continue;
		tb_put(b, (const char *)run, (size_t)(u - run));
		tb_raw(b, e);
		run = u + 1;
	}
	tb_put(b, (const char *)run, (size_t)(u - run));
	tb_put(b, "\"", 1);
}

static void render_vmsd(struct text_buf *b, const struct kv_vmstate_desc *d,
			void *opaque, int depth);

static void render_field(struct text_buf *b, const struct kv_vmstate_field *f,
			 void *opaque, int depth, bool *first)
{
	uint32_t n = field_count(f);

	for (uint32_t i = 0; i < n; i++) {
		void *elem = elem_ptr(opaque, f, i);

		tb_raw(b, *first ? "{\"name\":" : ",{\"name\":");
		*first = false;
		tb_str(b, f->name);
		if (n > 1 && f->type != KV_VMS_STRUCT) {
			tb_raw(b, ",\"array_len\":");
			tb_int(b, n);
		} else if (n > 1) {
			tb_raw(b, ",\"index\":");
			tb_int(b, i);
		}
		tb_raw(b, ",\"type\":");
		tb_str(b, type_name(f->type));
		if (f->type == KV_VMS_STRUCT) {
			tb_raw(b, ",\"struct\":");
			render_vmsd(b, f->vmsd, elem, depth + 1);
		}
		tb_raw(b, ",\"size\":");
		tb_int(b, (long long)elem_wire_size(f, elem, depth));
		tb_raw(b, "}");
		if (f->type != KV_VMS_STRUCT)
			break;
	}
}

/* The members of describe()'s object, without the braces. */
static void render_members(struct text_buf *b, const struct kv_vmstate_desc *d,
			   void *opaque, int depth)
{
	const struct kv_vmstate_desc *const *sub;
	const struct kv_vmstate_field *f;
	bool first = true;

	if (depth > RENDER_MAX_DEPTH) {
		b->failed = true;
		return;
	}
	tb_raw(b, "\"vmsd_name\":");
	tb_str(b, d->name);
	tb_raw(b, ",\"version\":");
	tb_int(b, d->version_id);
	tb_raw(b, ",\"fields\":[");
	for (f = d->fields; f && f->name; f++)
		if (f->version_id <= d->version_id)
			render_field(b, f, opaque, depth, &first);
	tb_raw(b, "]");
	first = true;
	for (sub = d->subsections; sub && *sub; sub++) {
		if (!sub_sent(*sub, opaque))
			continue;
		tb_raw(b, first ? ",\"subsections\":[" : ",");
		first = false;
		render_vmsd(b, *sub, opaque, depth + 1);
	}
	if (!first)
		tb_raw(b, "]");
}

static void render_vmsd(struct text_buf *b, const struct kv_vmstate_desc *d,
			void *opaque, int depth)
{
	tb_raw(b, "{");
	render_members(b, d, opaque, depth);
	tb_raw(b, "}");
}

char *kv_vmdesc_render(const struct kv_vmdesc_dev *devs, size_t n, size_t *len)
{
	struct text_buf b = {0};

	tb_raw(&b, "{\"page_size\":");
	tb_int(&b, KV_PAGE_SIZE);
	tb_raw(&b, ",\"devices\":[");
	for (size_t i = 0; i < n; i++) {
		tb_raw(&b, i ? ",{\"name\":" : "{\"name\":");
		tb_str(&b, devs[i].idstr);
		tb_raw(&b, ",\"instance_id\":");
		tb_int(&b, devs[i].instance_id);
		tb_raw(&b, ",");
		render_members(&b, devs[i].vmsd, devs[i].opaque, 0);
		tb_raw(&b, "}");
	}
	tb_raw(&b, "]}");
	if (b.failed) {
		free(b.p);
		return NULL;
	}
	*len = b.len;
	return b.p;
}
