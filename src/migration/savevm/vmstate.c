/* SPDX-License-Identifier: MIT */
/*
 * Field-descriptor interpreter: save, load and validate plain device state
 * in QEMU's VMState encoding (see vmstate.h and docs/FORMAT.md).
 */
#include "migration/savevm/vmstate.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "migration/savevm/savevm.h"
#include "migration/savevm/vmdesc.h"

/* Nesting bound for structs and subsections: guards against cyclic tables. */
#define VMS_MAX_DEPTH 16

/*
 * A subsection header read by a nested struct's loader that does not belong
 * to it: handed back to the enclosing description, whose subsections follow
 * immediately when the nested struct is its last field.
 */
struct pending_sub {
	bool pending;
	uint64_t offset;
	char name[256];
	uint32_t version;
};

size_t kv_vmstate_scalar_width(enum kv_vmstate_type t)
{
	switch (t) {
	case KV_VMS_U8:
	case KV_VMS_I8:
	case KV_VMS_BOOL:
		return 1;
	case KV_VMS_U16:
	case KV_VMS_I16:
		return 2;
	case KV_VMS_U32:
	case KV_VMS_I32:
		return 4;
	case KV_VMS_U64:
	case KV_VMS_I64:
		return 8;
	default:
		return 0;
	}
}

/* Bytes one element occupies in the C struct. */
static size_t elem_size(const struct kv_vmstate_field *f)
{
	if (f->type == KV_VMS_BUFFER || f->type == KV_VMS_STRUCT)
		return f->size;
	if (f->type == KV_VMS_BOOL)
		return sizeof(bool);
	return kv_vmstate_scalar_width(f->type);
}

static uint32_t elem_count(const struct kv_vmstate_field *f)
{
	return f->count ? f->count : 1;
}

static void put_scalar(struct kv_stream *s, enum kv_vmstate_type t,
		       const void *p)
{
	uint8_t v8;
	uint16_t v16;
	uint32_t v32;
	uint64_t v64;
	bool b;

	switch (kv_vmstate_scalar_width(t)) {
	case 1:
		if (t == KV_VMS_BOOL) {
			memcpy(&b, p, sizeof(b));
			v8 = b ? 1 : 0;
		} else {
			memcpy(&v8, p, 1);
		}
		kv_stream_put_u8(s, v8);
		break;
	case 2:
		memcpy(&v16, p, 2);
		kv_stream_put_be16(s, v16);
		break;
	case 4:
		memcpy(&v32, p, 4);
		kv_stream_put_be32(s, v32);
		break;
	case 8:
		memcpy(&v64, p, 8);
		kv_stream_put_be64(s, v64);
		break;
	}
}

static int vms_save(struct kv_stream *s, const struct kv_vmstate_desc *d,
		    void *opaque, int depth, struct kv_error *err);

static int save_field(struct kv_stream *s, const struct kv_vmstate_desc *d,
		      const struct kv_vmstate_field *f, void *opaque, int depth,
		      struct kv_error *err)
{
	uint8_t *base = (uint8_t *)opaque + f->offset;
	size_t esz = elem_size(f);
	uint32_t i;
	int ret;

	for (i = 0; i < elem_count(f); i++) {
		uint8_t *elem = base + (size_t)i * esz;

		switch (f->type) {
		case KV_VMS_BUFFER:
			kv_stream_put_buffer(s, elem, f->size);
			break;
		case KV_VMS_STRUCT:
			ret = vms_save(s, f->vmsd, elem, depth + 1, err);
			if (ret < 0) {
				kv_error_prefix(err, "device '%s' field '%s'",
						d->name, f->name);
				return ret;
			}
			break;
		default:
			put_scalar(s, f->type, elem);
			break;
		}
	}
	return 0;
}

static int save_subsections(struct kv_stream *s,
			    const struct kv_vmstate_desc *d, void *opaque,
			    int depth, struct kv_error *err)
{
	const struct kv_vmstate_desc *const *sub;
	int ret;

	for (sub = d->subsections; sub && *sub; sub++) {
		if ((*sub)->needed && !(*sub)->needed(opaque))
			continue;
		kv_stream_put_u8(s, KV_SEC_SUBSECTION);
		kv_stream_put_str8(s, (*sub)->name);
		kv_stream_put_be32(s, (uint32_t)(*sub)->version_id);
		ret = vms_save(s, *sub, opaque, depth + 1, err);
		if (ret < 0)
			return ret;
	}
	return 0;
}

static int vms_save(struct kv_stream *s, const struct kv_vmstate_desc *d,
		    void *opaque, int depth, struct kv_error *err)
{
	const struct kv_vmstate_field *f;
	int ret;

	if (depth > VMS_MAX_DEPTH)
		return kv_error_set(err, -ELOOP,
				    "device '%s': nesting deeper than %d",
				    d->name, VMS_MAX_DEPTH);
	if (d->pre_save) {
		ret = d->pre_save(opaque, err);
		if (ret < 0) {
			if (!kv_error_is_set(err))
				kv_error_set(err, ret, "failed");
			kv_error_prefix(err, "device '%s' pre_save", d->name);
			return ret;
		}
	}
	for (f = d->fields; f && f->name; f++) {
		if (f->version_id > d->version_id)
			continue;
		ret = save_field(s, d, f, opaque, depth, err);
		if (ret < 0)
			return ret;
	}
	ret = save_subsections(s, d, opaque, depth, err);
	if (ret < 0)
		return ret;
	if (kv_stream_error(s)) {
		struct kv_error se = {0};

		kv_stream_error_get(s, &se);
		kv_error_propagate(err, &se);
		kv_error_prefix(err, "device '%s' at stream offset %" PRIu64,
				d->name, kv_stream_offset(s));
		return kv_stream_error(s);
	}
	return 0;
}

int kv_vmstate_save(struct kv_stream *s, const struct kv_vmstate_desc *d,
		    void *opaque, struct kv_error *err)
{
	return vms_save(s, d, opaque, 0, err);
}

/* --- loading --- */

static int stream_fail(struct kv_stream *s, const struct kv_vmstate_desc *d,
		       const char *field, uint64_t off, struct kv_error *err)
{
	struct kv_error se = {0};

	kv_stream_error_get(s, &se);
	if (!se.code)
		se.code = -EIO;
	kv_error_set(err, se.code,
		     "device '%s' field '%s' at stream offset %" PRIu64 ": %s",
		     d->name, field, off, se.msg[0] ? se.msg : "stream error");
	return se.code;
}

static int get_scalar(struct kv_stream *s, const struct kv_vmstate_desc *d,
		      const struct kv_vmstate_field *f, void *p, uint64_t off,
		      struct kv_error *err)
{
	uint8_t v8;
	uint16_t v16;
	uint32_t v32;
	uint64_t v64;
	bool b;

	switch (kv_vmstate_scalar_width(f->type)) {
	case 1:
		v8 = kv_stream_get_u8(s);
		if (f->type != KV_VMS_BOOL) {
			memcpy(p, &v8, 1);
			break;
		}
		if (!kv_stream_error(s) && v8 > 1)
			return kv_error_set(err, -EINVAL,
					    "device '%s' field '%s' at stream offset %" PRIu64
					    ": bool value %u is not 0 or 1",
					    d->name, f->name, off, v8);
		b = v8 == 1;
		memcpy(p, &b, sizeof(b));
		break;
	case 2:
		v16 = kv_stream_get_be16(s);
		memcpy(p, &v16, 2);
		break;
	case 4:
		v32 = kv_stream_get_be32(s);
		memcpy(p, &v32, 4);
		break;
	case 8:
		v64 = kv_stream_get_be64(s);
		memcpy(p, &v64, 8);
		break;
	}
	return 0;
}

static int vms_load(struct kv_stream *s, const struct kv_vmstate_desc *d,
		    void *opaque, int version_id, int depth,
		    struct pending_sub *ps, struct kv_error *err);

static int unexpected_subsection(const struct kv_vmstate_desc *d,
				 const struct pending_sub *ps,
				 struct kv_error *err)
{
	return kv_error_set(err, -EINVAL,
			    "device '%s' at stream offset %" PRIu64
			    ": unknown subsection '%s'",
			    d->name, ps->offset, ps->name);
}

static int load_field(struct kv_stream *s, const struct kv_vmstate_desc *d,
		      const struct kv_vmstate_field *f, void *opaque, int depth,
		      struct pending_sub *ps, struct kv_error *err)
{
	uint8_t *base = (uint8_t *)opaque + f->offset;
	size_t esz = elem_size(f);
	uint32_t i;
	int ret;

	for (i = 0; i < elem_count(f); i++) {
		uint8_t *elem = base + (size_t)i * esz;
		uint64_t off = kv_stream_offset(s);

		if (ps->pending)
			return unexpected_subsection(d, ps, err);
		switch (f->type) {
		case KV_VMS_BUFFER:
			kv_stream_get_buffer(s, elem, f->size);
			break;
		case KV_VMS_STRUCT:
			ret = vms_load(s, f->vmsd, elem, f->vmsd->version_id,
				       depth + 1, ps, err);
			if (ret < 0) {
				kv_error_prefix(err, "device '%s' field '%s'",
						d->name, f->name);
				return ret;
			}
			break;
		default:
			ret = get_scalar(s, d, f, elem, off, err);
			if (ret < 0)
				return ret;
			break;
		}
		if (kv_stream_error(s))
			return stream_fail(s, d, f->name, off, err);
	}
	return 0;
}

static const struct kv_vmstate_desc *
find_subsection(const struct kv_vmstate_desc *d, const char *name)
{
	const struct kv_vmstate_desc *const *sub;

	for (sub = d->subsections; sub && *sub; sub++)
		if (strcmp((*sub)->name, name) == 0)
			return *sub;
	return NULL;
}

/* Read the next subsection header into ps, if the next byte starts one. */
static int read_subsection_header(struct kv_stream *s,
				  const struct kv_vmstate_desc *d,
				  struct pending_sub *ps, struct kv_error *err)
{
	if (ps->pending)
		return 1;
	if (kv_stream_peek_u8(s) != KV_SEC_SUBSECTION)
		return 0;
	ps->offset = kv_stream_offset(s);
	kv_stream_get_u8(s);
	kv_stream_get_str8(s, ps->name, sizeof(ps->name));
	ps->version = kv_stream_get_be32(s);
	if (kv_stream_error(s))
		return stream_fail(s, d, "(subsection header)", ps->offset,
				   err);
	ps->pending = true;
	return 1;
}

static int load_subsections(struct kv_stream *s,
			    const struct kv_vmstate_desc *d, void *opaque,
			    int depth, struct pending_sub *ps,
			    struct kv_error *err)
{
	const struct kv_vmstate_desc *sub;
	int ret;

	for (;;) {
		ret = read_subsection_header(s, d, ps, err);
		if (ret <= 0)
			return ret;
		sub = find_subsection(d, ps->name);
		if (!sub) {
			/* Maybe the enclosing description's: let it decide. */
			if (depth > 0)
				return 0;
			return unexpected_subsection(d, ps, err);
		}
		ps->pending = false;
		if (ps->version > (uint32_t)sub->version_id ||
		    ps->version < (uint32_t)sub->minimum_version_id)
			return kv_error_set(
			    err, -EINVAL,
			    "device '%s' at stream offset %" PRIu64 ": subsection '%s' version %" PRIu32 " outside supported %d..%d",
			    d->name, ps->offset, sub->name, ps->version,
			    sub->minimum_version_id, sub->version_id);
		ret = vms_load(s, sub, opaque, (int)ps->version, depth + 1, ps,
			       err);
		if (ret < 0)
			return ret;
		/* A header left pending by sub's loader is d's next one. */
	}
}

static int vms_load(struct kv_stream *s, const struct kv_vmstate_desc *d,
		    void *opaque, int version_id, int depth,
		    struct pending_sub *ps, struct kv_error *err)
{
	const struct kv_vmstate_field *f;
	int ret;

	if (depth > VMS_MAX_DEPTH)
		return kv_error_set(err, -ELOOP,
				    "device '%s': nesting deeper than %d",
				    d->name, VMS_MAX_DEPTH);
	if (version_id > d->version_id)
		return kv_error_set(err, -EINVAL,
				    "device '%s' at stream offset %" PRIu64
				    ": version %d is newer than supported version %d",
				    d->name, kv_stream_offset(s), version_id,
				    d->version_id);
	if (version_id < d->minimum_version_id)
		return kv_error_set(err, -EINVAL,
				    "device '%s' at stream offset %" PRIu64
				    ": version %d is older than the oldest supported version %d",
				    d->name, kv_stream_offset(s), version_id,
				    d->minimum_version_id);
	for (f = d->fields; f && f->name; f++) {
		if (f->version_id > version_id)
			continue;
		ret = load_field(s, d, f, opaque, depth, ps, err);
		if (ret < 0)
			return ret;
	}
	ret = load_subsections(s, d, opaque, depth, ps, err);
	if (ret < 0)
		return ret;
	if (d->post_load) {
		ret = d->post_load(opaque, version_id, err);
		if (ret < 0) {
			if (!kv_error_is_set(err))
				kv_error_set(err, ret, "failed");
			kv_error_prefix(err,
					"device '%s' post_load at stream offset %" PRIu64,
					d->name, kv_stream_offset(s));
			return ret;
		}
	}
	return 0;
}

int kv_vmstate_load(struct kv_stream *s, const struct kv_vmstate_desc *d,
		    void *opaque, int version_id, struct kv_error *err)
{
	struct pending_sub ps = {0};

	return vms_load(s, d, opaque, version_id, 0, &ps, err);
}

/* --- validation --- */

static int validate_field(const struct kv_vmstate_desc *d,
			  const struct kv_vmstate_field *f, bool last,
			  int depth, struct kv_error *err);

static int vms_validate(const struct kv_vmstate_desc *d, int depth,
			struct kv_error *err)
{
	const struct kv_vmstate_desc *const *sub, *const *other;
	const struct kv_vmstate_field *f;
	int ret;

	if (!d)
		return kv_error_set(err, -EINVAL, "missing description");
	if (!d->name || !d->name[0])
		return kv_error_set(err, -EINVAL, "description without a name");
	if (strlen(d->name) > 255)
		return kv_error_set(err, -EINVAL,
				    "device '%.40s...': name longer than 255",
				    d->name);
	if (depth > VMS_MAX_DEPTH)
		return kv_error_set(err, -ELOOP,
				    "device '%s': nesting deeper than %d (a cycle?)",
				    d->name, VMS_MAX_DEPTH);
	if (d->version_id < 0 || d->minimum_version_id < 0 ||
	    d->minimum_version_id > d->version_id)
		return kv_error_set(err, -EINVAL,
				    "device '%s': versions %d..%d are not a valid range",
				    d->name, d->minimum_version_id,
				    d->version_id);
	for (f = d->fields; f && f->name; f++) {
		ret = validate_field(d, f, !f[1].name, depth, err);
		if (ret < 0)
			return ret;
	}
	for (sub = d->subsections; sub && *sub; sub++) {
		ret = vms_validate(*sub, depth + 1, err);
		if (ret < 0) {
			kv_error_prefix(err, "device '%s' subsection", d->name);
			return ret;
		}
		for (other = d->subsections; other != sub; other++)
			if (strcmp((*other)->name, (*sub)->name) == 0)
				return kv_error_set(err, -EINVAL,
						    "device '%s': subsection '%s' listed twice",
						    d->name, (*sub)->name);
	}
	return 0;
}

static bool has_subsections(const struct kv_vmstate_desc *d)
{
	return d->subsections && d->subsections[0];
}

static int validate_field(const struct kv_vmstate_desc *d,
			  const struct kv_vmstate_field *f, bool last,
			  int depth, struct kv_error *err)
{
	int ret;

	if ((unsigned)f->type > KV_VMS_STRUCT)
		return kv_error_set(err, -EINVAL,
				    "device '%s' field '%s': unknown type %d",
				    d->name, f->name, (int)f->type);
	if (f->version_id > d->version_id)
		return kv_error_set(err, -EINVAL,
				    "device '%s' field '%s': field version %d is newer than the description's %d",
				    d->name, f->name, f->version_id,
				    d->version_id);
	if (f->type == KV_VMS_BUFFER && f->size == 0)
		return kv_error_set(err, -EINVAL,
				    "device '%s' field '%s': buffer of size 0",
				    d->name, f->name);
	if (f->type == KV_VMS_BUFFER && f->size > UINT32_MAX)
		return kv_error_set(err, -EINVAL,
				    "device '%s' field '%s': buffer of %zu bytes is too large",
				    d->name, f->name, f->size);
	if (f->type != KV_VMS_STRUCT)
		return 0;
	if (!f->vmsd)
		return kv_error_set(err, -EINVAL,
				    "device '%s' field '%s': STRUCT without a vmsd",
				    d->name, f->name);
	if (f->size == 0)
		return kv_error_set(
		    err, -EINVAL, "device '%s' field '%s': STRUCT with size 0",
		    d->name, f->name);
	/* The loader only finds a nested struct's subsections unambiguously
	 * when nothing of its parent follows them but the parent's own. */
	if (has_subsections(f->vmsd) && (!last || elem_count(f) > 1))
		return kv_error_set(err, -EINVAL,
				    "device '%s' field '%s': a nested struct with subsections must be the last field and not an array",
				    d->name, f->name);
	ret = vms_validate(f->vmsd, depth + 1, err);
	if (ret < 0)
		kv_error_prefix(err, "device '%s' field '%s'", d->name,
				f->name);
	return ret;
}

int kv_vmstate_validate(const struct kv_vmstate_desc *d, struct kv_error *err)
{
	return vms_validate(d, 0, err);
}
