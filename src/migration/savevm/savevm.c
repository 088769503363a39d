/* SPDX-License-Identifier: MIT */
/*
 * The state-handler registry and the section framing (see savevm.h and
 * docs/FORMAT.md for every byte).
 */
#include "migration/savevm/savevm.h"
#include "migration/savevm/config_caps.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "base/clock.h"
#include "base/log.h"
#include "migration/return_path.h"
#include "migration/savevm/vmdesc.h"
#include "migration/postcopy/postcopy_package.h"

#define SV_IDSTR_MAX   255
#define SV_MACHINE_MAX 255

struct sv_entry {
	char idstr[SV_IDSTR_MAX + 1];
	uint32_t instance_id;
	int version_id;
	int priority;
	uint32_t section_id;		      /* as sent by this side */
	const struct kv_savevm_live_ops *ops; /* live handlers */
	const struct kv_vmstate_desc *vmsd;   /* plain devices */
	void *opaque;
	/* kv_savevm_set_count_option: what sets the number of instances */
	const char *count_noun, *count_option;

	/* --verify-ram: XXH3-128 of this entry's START or FULL payload as
	 * written (source) or read (destination); digested: computed in
	 * this save or load. */
	uint8_t digest[KV_SAVEVM_DIGEST_LEN];
	bool digested;

	/* destination bookkeeping, reset by every load */
	bool load_setup_called;
	bool got_start; /* START (live) or FULL (device) seen */
	bool got_end;
	uint32_t stream_section_id; /* the source's id for this entry */
	int stream_version;	    /* version_id its START carried */
	/* Postcopy: saved after the live handlers' END, not in the package
	 * (kv_savevm_set_postcopy_late). */
	bool pc_late;
};

/* One digest of the verification record (docs/FORMAT.md). */
struct sv_digest {
	uint32_t section_id;
	uint8_t digest[KV_SAVEVM_DIGEST_LEN];
};

/* The "kvmig-verify" device: its description is made for the number of
 * entries it covers (every other one), known once registration ends. */
struct sv_verify {
	struct kv_vmstate_field fields[3];
	struct kv_vmstate_desc vmsd;
	struct sv_entry *entry; /* its own entry */
	XXH3_state_t *hash;	/* the payload being hashed */
	struct sv_verify_rec {
		uint32_t count;
		struct sv_digest d[]; /* count of them */
	} *rec;
};

struct kv_savevm {
	char machine[SV_MACHINE_MAX + 1];
	struct sv_entry **entries; /* in save order */
	size_t count;
	size_t cap;
	uint32_t next_section_id;
	struct sv_verify *verify; /* kv_savevm_enable_verify; NULL: off */
	/* kv_savevm_set_mapped_ram: what the configuration says (NULL:
	 * off), and whether a stream that says it turns it on. */
	bool *mapped_ram;
	bool mapped_ram_follow;
	/* Destination: postcopy's commands (NULL: refused) and, during a
	 * load, the state they share between the loading threads. */
	const struct kv_savevm_pc_ops *pc_ops;
	struct sv_pc_load *pcl;
	/* A postcopy load that broke after RUN: the entries and the
	 * handlers' load state wait for kv_savevm_load_resume. */
	bool pc_paused;
};

void kv_savevm_set_mapped_ram(struct kv_savevm *sv, bool *on, bool follow)
{
	sv->mapped_ram = on;
	sv->mapped_ram_follow = follow;
}

struct kv_savevm *kv_savevm_new(const char *machine)
{
	struct kv_savevm *sv = calloc(1, sizeof(*sv));

	if (!sv)
		return NULL;
	snprintf(sv->machine, sizeof(sv->machine), "%s",
		 machine ? machine : "");
	return sv;
}

static void verify_free(struct sv_verify *v)
{
	if (!v)
		return;
	XXH3_freeState(v->hash);
	free(v->rec);
	free(v);
}

static void pc_load_free(struct kv_savevm *sv);

void kv_savevm_free(struct kv_savevm *sv)
{
	size_t i;

	if (!sv)
		return;
	pc_load_free(sv);
	verify_free(sv->verify);
	for (i = 0; i < sv->count; i++)
		free(sv->entries[i]);
	free(sv->entries);
	free(sv);
}

const char *kv_savevm_entry_idstr(const struct kv_savevm *sv, size_t i)
{
	return i < sv->count ? sv->entries[i]->idstr : NULL;
}

size_t kv_savevm_entry_count(const struct kv_savevm *sv)
{
	return sv->count;
}

static bool is_live(const struct sv_entry *e)
{
	return e->ops != NULL;
}

static struct sv_entry *find_entry(struct kv_savevm *sv, const char *idstr,
				   uint32_t instance_id)
{
	size_t i;

	for (i = 0; i < sv->count; i++)
		if (sv->entries[i]->instance_id == instance_id &&
		    strcmp(sv->entries[i]->idstr, idstr) == 0)
			return sv->entries[i];
	return NULL;
}

static bool idstr_known(struct kv_savevm *sv, const char *idstr)
{
	size_t i;

	for (i = 0; i < sv->count; i++)
		if (strcmp(sv->entries[i]->idstr, idstr) == 0)
			return true;
	return false;
}

int kv_savevm_set_count_option(struct kv_savevm *sv, const char *idstr,
			       const char *noun, const char *option,
			       struct kv_error *err)
{
	bool found = false;

	for (size_t i = 0; i < sv->count; i++) {
		if (strcmp(sv->entries[i]->idstr, idstr))
			continue;
		sv->entries[i]->count_noun = noun;
		sv->entries[i]->count_option = option;
		found = true;
	}
	if (!found)
		return kv_error_set(err, -ENOENT, "no state handler '%s' is registered", idstr);
	return 0;
}

/* The number of instances of e's idstr registered here, and how many of
 * them the stream brought so far. */
static uint32_t count_instances(const struct kv_savevm *sv,
				const struct sv_entry *e, uint32_t *arrived)
{
	uint32_t n = 0;

	*arrived = 0;
	for (size_t i = 0; i < sv->count; i++) {
		if (strcmp(sv->entries[i]->idstr, e->idstr))
			continue;
		n++;
		*arrived += sv->entries[i]->got_start;
	}
	return n;
}

static int check_identity(struct kv_savevm *sv, const char *idstr,
			  uint32_t instance_id, struct kv_error *err)
{
	if (!idstr || !idstr[0])
		return kv_error_set(err, -EINVAL,
				    "state handler without an idstr");
	/* The record's size was fixed by what was registered before it. */
	if (sv->verify)
		return kv_error_set(err, -EBUSY, "state handler '%s': registered after section verification was turned on (turn it on last)", idstr);
	if (strlen(idstr) > SV_IDSTR_MAX)
		return kv_error_set(err, -ENAMETOOLONG,
				    "state handler idstr '%.40s...' is longer than %d bytes",
				    idstr, SV_IDSTR_MAX);
	if (find_entry(sv, idstr, instance_id))
		return kv_error_set(err, -EEXIST,
				    "state handler '%s' instance %" PRIu32
				    " is already registered",
				    idstr, instance_id);
	return 0;
}

/* Insert after every entry of the same or higher priority: higher
 * priorities save first, equal ones in registration order. */
static int insert_entry(struct kv_savevm *sv, struct sv_entry *e,
			struct kv_error *err)
{
	size_t pos;

	if (sv->count == sv->cap) {
		size_t cap = sv->cap ? sv->cap * 2 : 8;
		struct sv_entry **n = realloc(sv->entries, cap * sizeof(*n));

		if (!n) {
			kv_error_set(err, -ENOMEM,
				     "registering '%s': out of memory",
				     e->idstr);
			free(e);
			return -ENOMEM;
		}
		sv->entries = n;
		sv->cap = cap;
	}
	for (pos = sv->count; pos > 0; pos--)
		if (sv->entries[pos - 1]->priority >= e->priority)
			break;
	memmove(&sv->entries[pos + 1], &sv->entries[pos],
		(sv->count - pos) * sizeof(*sv->entries));
	sv->entries[pos] = e;
	sv->count++;
	e->section_id = sv->next_section_id++;
	return 0;
}

static struct sv_entry *new_entry(const char *idstr, uint32_t instance_id,
				  int version_id, int priority, void *opaque,
				  struct kv_error *err)
{
	struct sv_entry *e = calloc(1, sizeof(*e));

	if (!e) {
		kv_error_set(err, -ENOMEM, "registering '%s': out of memory",
			     idstr);
		return NULL;
	}
	snprintf(e->idstr, sizeof(e->idstr), "%s", idstr);
	e->instance_id = instance_id;
	e->version_id = version_id;
	e->priority = priority;
	e->opaque = opaque;
	return e;
}

static const char *missing_live_op(const struct kv_savevm_live_ops *ops)
{
	if (!ops)
		return "ops";
	if (!ops->save_setup)
		return "save_setup";
	if (!ops->save_iterate)
		return "save_iterate";
	if (!ops->save_complete)
		return "save_complete";
	if (!ops->pending_estimate)
		return "pending_estimate";
	if (!ops->load_state)
		return "load_state";
	return NULL;
}

int kv_savevm_register_live(struct kv_savevm *sv, const char *idstr,
			    uint32_t instance_id, int version_id, int priority,
			    const struct kv_savevm_live_ops *ops, void *opaque,
			    struct kv_error *err)
{
	const char *missing = missing_live_op(ops);
	struct sv_entry *e;
	int ret;

	ret = check_identity(sv, idstr, instance_id, err);
	if (ret < 0)
		return ret;
	if (missing)
		return kv_error_set(err, -EINVAL,
				    "live handler '%s': required callback %s is missing",
				    idstr, missing);
	if (version_id < 0)
		return kv_error_set(err, -EINVAL,
				    "live handler '%s': negative version %d",
				    idstr, version_id);
	e = new_entry(idstr, instance_id, version_id, priority, opaque, err);
	if (!e)
		return -ENOMEM;
	e->ops = ops;
	return insert_entry(sv, e, err);
}

int kv_savevm_register_device(struct kv_savevm *sv, const char *idstr,
			      uint32_t instance_id,
			      const struct kv_vmstate_desc *vmsd, int priority,
			      void *opaque, struct kv_error *err)
{
	struct sv_entry *e;
	int ret;

	ret = check_identity(sv, idstr, instance_id, err);
	if (ret < 0)
		return ret;
	ret = kv_vmstate_validate(vmsd, err);
	if (ret < 0) {
		kv_error_prefix(err, "device '%s'", idstr);
		return ret;
	}
	e = new_entry(idstr, instance_id, vmsd->version_id, priority, opaque,
		      err);
	if (!e)
		return -ENOMEM;
	e->vmsd = vmsd;
	return insert_entry(sv, e, err);
}

/* ---- --verify-ram: the section digests ---- */

static const struct kv_vmstate_field digest_fields[] = {
	KV_VMS_FIELD(struct sv_digest, section_id, KV_VMS_U32, 1),
	KV_VMS_BUF(struct sv_digest, digest, 1),
	KV_VMS_END,
};

static const struct kv_vmstate_desc digest_vmsd = {
	.name = "kvmig-verify/digest",
	.version_id = 1,
	.minimum_version_id = 1,
	.fields = digest_fields,
};

static bool is_verify(const struct kv_savevm *sv, const struct sv_entry *e)
{
	return sv->verify && sv->verify->entry == e;
}

/* The record's description: count, then count digests (one for every
 * other entry, in save order). */
static void verify_describe(struct sv_verify *v, uint32_t n)
{
	v->fields[0] = (struct kv_vmstate_field)KV_VMS_FIELD(
	    struct sv_verify_rec, count, KV_VMS_U32, 1);
	v->fields[1] = (struct kv_vmstate_field){
	    .name = "digests",
	    .type = KV_VMS_STRUCT,
	    .offset = offsetof(struct sv_verify_rec, d),
	    .size = sizeof(struct sv_digest),
	    .count = n,
	    .version_id = 1,
	    .vmsd = &digest_vmsd,
	};
	v->fields[2] = (struct kv_vmstate_field)KV_VMS_END;
	v->vmsd = (struct kv_vmstate_desc){
	    .name = KV_SAVEVM_VERIFY_IDSTR,
	    .version_id = 1,
	    .minimum_version_id = 1,
	    .fields = v->fields,
	};
}

int kv_savevm_enable_verify(struct kv_savevm *sv, struct kv_error *err)
{
	struct sv_verify *v;
	/* An array field has at least one element. */
	uint32_t n = sv->count ? (uint32_t)sv->count : 1;
	int ret;

	if (sv->verify)
		return kv_error_set(err, -EEXIST, "section verification is already on");
	v = calloc(1, sizeof(*v));
	if (v) {
		v->hash = XXH3_createState();
		v->rec = calloc(1, sizeof(*v->rec) + n * sizeof(v->rec->d[0]));
	}
	if (!v || !v->hash || !v->rec) {
		verify_free(v);
		return kv_error_set(err, -ENOMEM, "section verification: out of memory");
	}
	verify_describe(v, n);
	ret = kv_savevm_register_device(sv, KV_SAVEVM_VERIFY_IDSTR, 0,
					&v->vmsd, INT_MIN, v->rec, err);
	if (ret < 0) {
		verify_free(v);
		return ret;
	}
	v->entry = find_entry(sv, KV_SAVEVM_VERIFY_IDSTR, 0);
	sv->verify = v;
	return 0;
}

static void digest_tap(void *opaque, const void *buf, size_t len)
{
	XXH3_128bits_update(opaque, buf, len);
}

/* Hash e's payload from here to digest_end (a no-op without verify). */
static void digest_begin(struct kv_savevm *sv, struct kv_stream *s,
			 struct sv_entry *e)
{
	if (!sv->verify || is_verify(sv, e))
		return;
	XXH3_128bits_reset(sv->verify->hash);
	kv_stream_set_tap(s, digest_tap, sv->verify->hash);
}

static void digest_end(struct kv_savevm *sv, struct kv_stream *s,
		       struct sv_entry *e)
{
	XXH128_canonical_t c;

	if (!sv->verify || is_verify(sv, e))
		return;
	kv_stream_set_tap(s, NULL, NULL);
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(sv->verify->hash));
	memcpy(e->digest, c.digest, sizeof(e->digest));
	e->digested = true;
}

/* Source: the record from the digests of this save, in save order. */
static void verify_fill(struct kv_savevm *sv)
{
	struct sv_verify_rec *rec = sv->verify->rec;
	uint32_t n = 0;

	for (size_t i = 0; i < sv->count; i++) {
		struct sv_entry *e = sv->entries[i];

		if (is_verify(sv, e))
			continue;
		rec->d[n].section_id = e->section_id;
		memcpy(rec->d[n].digest, e->digest, sizeof(e->digest));
		n++;
	}
	rec->count = n;
}

/* ------------------------------------------------------------------ */
/* source side                                                        */
/* ------------------------------------------------------------------ */

static const char *section_type_name(int type)
{
	switch (type) {
	case KV_SEC_EOF:
		return "EOF";
	case KV_SEC_START:
		return "START";
	case KV_SEC_PART:
		return "PART";
	case KV_SEC_END:
		return "END";
	case KV_SEC_FULL:
		return "FULL";
	case KV_SEC_SUBSECTION:
		return "SUBSECTION";
	case KV_SEC_VMDESCRIPTION:
		return "VMDESCRIPTION";
	case KV_SEC_CONFIGURATION:
		return "CONFIGURATION";
	case KV_SEC_COMMAND:
		return "COMMAND";
	case KV_SEC_FOOTER:
		return "FOOTER";
	}
	return "unknown";
}

/* The stream's sticky error, as ours, with context. */
static int stream_error_to(struct kv_stream *s, struct kv_error *err,
			   const char *what)
{
	struct kv_error se = {0};

	kv_stream_error_get(s, &se);
	if (!se.code)
		return 0;
	kv_error_set(err, se.code, "%s at stream offset %" PRIu64 ": %s", what,
		     kv_stream_offset(s), se.msg);
	return se.code;
}

static void put_section_header(struct kv_stream *s, int type,
			       const struct sv_entry *e)
{
	kv_stream_put_u8(s, (uint8_t)type);
	kv_stream_put_be32(s, e->section_id);
	if (type == KV_SEC_START || type == KV_SEC_FULL) {
		kv_stream_put_str8(s, e->idstr);
		kv_stream_put_be32(s, e->instance_id);
		kv_stream_put_be32(s, (uint32_t)e->version_id);
	}
}

static void put_footer(struct kv_stream *s, const struct sv_entry *e)
{
	kv_stream_put_u8(s, KV_SEC_FOOTER);
	kv_stream_put_be32(s, e->section_id);
}

/* A handler returned ret: make sure err says so, with the section. */
static int handler_failed(struct kv_stream *s, const struct sv_entry *e,
			  int type, int ret, struct kv_error *err)
{
	if (!kv_error_is_set(err)) {
		struct kv_error se = {0};

		kv_stream_error_get(s, &se);
		if (se.code)
			kv_error_propagate(err, &se);
		else
			kv_error_set(err, ret, "handler failed (%d)", ret);
	}
	kv_error_prefix(err, "saving section %s id %" PRIu32 " '%s'",
			section_type_name(type), e->section_id, e->idstr);
	return ret < 0 ? ret : -EIO;
}

int kv_savevm_save_header(struct kv_savevm *sv, struct kv_stream *s,
			  bool return_path, struct kv_error *err)
{
	size_t len = strlen(sv->machine);

	kv_stream_put_be32(s, KV_VM_FILE_MAGIC);
	kv_stream_put_be32(s, KV_VM_FILE_VERSION);
	kv_stream_put_u8(s, KV_SEC_CONFIGURATION);
	kv_stream_put_be32(s, (uint32_t)len);
	kv_stream_put_buffer(s, sv->machine, len);
	kv_config_caps_put(s, sv->mapped_ram && *sv->mapped_ram);
	if (return_path) {
		kv_stream_put_u8(s, KV_SEC_COMMAND);
		kv_stream_put_be16(s, KV_MIG_CMD_OPEN_RETURN_PATH);
		kv_stream_put_be16(s, 0);
	}
	return stream_error_to(s, err, "writing the stream header");
}

typedef int (*live_phase_fn)(struct kv_stream *s, void *opaque,
			     struct kv_error *err);

static live_phase_fn live_phase(const struct sv_entry *e, int type)
{
	if (type == KV_SEC_START)
		return e->ops->save_setup;
	if (type == KV_SEC_PART)
		return e->ops->save_iterate;
	return e->ops->save_complete;
}

/* One section of type for every live handler; *all_done tells whether
 * every handler returned 1. */
static int save_live_round(struct kv_savevm *sv, struct kv_stream *s, int type,
			   bool *all_done, struct kv_error *err)
{
	size_t i;
	int ret;

	*all_done = true;
	for (i = 0; i < sv->count; i++) {
		struct sv_entry *e = sv->entries[i];

		if (!is_live(e))
			continue;
		put_section_header(s, type, e);
		if (type == KV_SEC_START)
			digest_begin(sv, s, e);
		ret = live_phase(e, type)(s, e->opaque, err);
		if (type == KV_SEC_START)
			digest_end(sv, s, e);
		if (ret < 0 || kv_stream_error(s))
			return handler_failed(s, e, type, ret, err);
		if (ret != 1)
			*all_done = false;
		put_footer(s, e);
	}
	return stream_error_to(s, err, "writing sections");
}

int kv_savevm_save_setup(struct kv_savevm *sv, struct kv_stream *s,
			 struct kv_error *err)
{
	bool done;
	int ret;

	ret = save_live_round(sv, s, KV_SEC_START, &done, err);
	if (ret < 0)
		return ret;
	kv_stream_flush(s);
	return stream_error_to(s, err, "flushing setup sections");
}

int kv_savevm_save_iterate(struct kv_savevm *sv, struct kv_stream *s,
			   struct kv_error *err)
{
	bool done;
	int ret;

	ret = save_live_round(sv, s, KV_SEC_PART, &done, err);
	if (ret < 0)
		return ret;
	return done ? 1 : 0;
}

uint64_t kv_savevm_pending_estimate(struct kv_savevm *sv)
{
	uint64_t total = 0;
	size_t i;

	for (i = 0; i < sv->count; i++)
		if (is_live(sv->entries[i]))
			total += sv->entries[i]->ops->pending_estimate(
			    sv->entries[i]->opaque);
	return total;
}

int kv_savevm_pending_exact(struct kv_savevm *sv, uint64_t *pending,
			    struct kv_error *err)
{
	uint64_t total = 0;
	size_t i;

	for (i = 0; i < sv->count; i++) {
		struct sv_entry *e = sv->entries[i];

		if (!is_live(e))
			continue;
		if (!e->ops->pending_exact) {
			total += e->ops->pending_estimate(e->opaque);
			continue;
		}
		total += e->ops->pending_exact(e->opaque, err);
		if (kv_error_is_set(err)) {
			kv_error_prefix(err, "pending bytes of '%s'", e->idstr);
			return err->code;
		}
	}
	*pending = total;
	return 0;
}

/* Which devices a save writes: all (precopy), or postcopy's package
 * (every one but the late ones) or its end (the late ones). */
enum sv_devices { SV_DEV_ALL, SV_DEV_PACKAGE, SV_DEV_LATE };

static bool is_pc_late(const struct kv_savevm *sv, const struct sv_entry *e)
{
	return e->pc_late || is_verify(sv, e);
}

static int save_devices(struct kv_savevm *sv, struct kv_stream *s,
			enum sv_devices which, struct kv_error *err)
{
	size_t i;
	int ret;

	for (i = 0; i < sv->count; i++) {
		struct sv_entry *e = sv->entries[i];

		if (is_live(e))
			continue;
		if (which != SV_DEV_ALL &&
		    is_pc_late(sv, e) != (which == SV_DEV_LATE))
			continue;
		if (is_verify(sv, e))
			verify_fill(sv);
		put_section_header(s, KV_SEC_FULL, e);
		digest_begin(sv, s, e);
		ret = kv_vmstate_save(s, e->vmsd, e->opaque, err);
		digest_end(sv, s, e);
		if (ret < 0 || kv_stream_error(s))
			return handler_failed(s, e, KV_SEC_FULL, ret, err);
		put_footer(s, e);
	}
	return 0;
}

/* The description as text, rendered straight from the devices; NULL when
 * the renderer declines (the caller then builds the jansson tree). */
static char *render_vmdesc(struct kv_savevm *sv, size_t *len)
{
	struct kv_vmdesc_dev *devs =
	    calloc(sv->count ? sv->count : 1, sizeof(*devs));
	size_t n = 0;
	char *text;

	if (!devs)
		return NULL;
	for (size_t i = 0; i < sv->count; i++) {
		struct sv_entry *e = sv->entries[i];

		if (is_live(e))
			continue;
		devs[n].idstr = e->idstr;
		devs[n].instance_id = e->instance_id;
		devs[n].vmsd = e->vmsd;
		devs[n].opaque = e->opaque;
		n++;
	}
	text = kv_vmdesc_render(devs, n, len);
	free(devs);
	return text;
}

static void put_vmdesc(struct kv_stream *s, const char *text, size_t len)
{
	kv_stream_put_u8(s, KV_SEC_VMDESCRIPTION);
	kv_stream_put_be32(s, (uint32_t)len);
	kv_stream_put_buffer(s, text, len);
}

static int save_vmdesc(struct kv_savevm *sv, struct kv_stream *s,
		       struct kv_error *err)
{
	json_t *root;
	char *text;
	size_t i, len;
	int ret = 0;

	text = render_vmdesc(sv, &len);
	if (text) {
		put_vmdesc(s, text, len);
		free(text);
		kv_switch_log("vmdesc: %zu bytes rendered", len);
		return 0;
	}
	root = kv_vmdesc_new();
	if (!root)
		return kv_error_set(err, -ENOMEM,
				    "VM description: out of memory");
	for (i = 0; i < sv->count && ret == 0; i++) {
		struct sv_entry *e = sv->entries[i];

		if (!is_live(e))
			ret =
			    kv_vmdesc_add_device(root, e->idstr, e->instance_id,
						 e->vmsd, e->opaque, err);
	}
	text = ret == 0 ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER)
			: NULL;
	json_decref(root);
	if (ret < 0)
		return ret;
	if (!text)
		return kv_error_set(err, -ENOMEM,
				    "VM description: out of memory");
	len = strlen(text);
	put_vmdesc(s, text, len);
	free(text);
	kv_switch_log("vmdesc: %zu bytes", len);
	return 0;
}

int kv_savevm_save_end(struct kv_savevm *sv, struct kv_stream *s,
		       struct kv_error *err)
{
	bool done;
	int ret;

	ret = save_live_round(sv, s, KV_SEC_END, &done, err);
	if (ret == 0)
		kv_switch_log("live END sections queued");
	return ret;
}

int kv_savevm_save_complete(struct kv_savevm *sv, struct kv_stream *s,
			    struct kv_error *err)
{
	int ret;

	ret = kv_savevm_save_end(sv, s, err);
	if (ret < 0)
		return ret;
	return kv_savevm_save_device_state(sv, s, err);
}

int kv_savevm_save_device_state(struct kv_savevm *sv, struct kv_stream *s,
				struct kv_error *err)
{
	int ret;

	ret = save_devices(sv, s, SV_DEV_ALL, err);
	if (ret < 0)
		return ret;
	kv_stream_put_u8(s, KV_SEC_EOF);
	ret = save_vmdesc(sv, s, err);
	if (ret < 0)
		return ret;
	kv_switch_log("devices + vmdesc queued");
	kv_stream_flush(s);
	kv_switch_log("flushed");
	return stream_error_to(s, err, "completing the stream");
}

int kv_savevm_save_ping(struct kv_stream *s, uint32_t value,
			struct kv_error *err)
{
	kv_stream_put_u8(s, KV_SEC_COMMAND);
	kv_stream_put_be16(s, KV_MIG_CMD_PING);
	kv_stream_put_be16(s, 4);
	kv_stream_put_be32(s, value);
	kv_stream_flush(s);
	return stream_error_to(s, err, "sending PING");
}

/* ---- postcopy, source (docs/FORMAT.md §12) ---- */

int kv_savevm_set_postcopy_late(struct kv_savevm *sv, const char *idstr,
				struct kv_error *err)
{
	bool found = false;

	for (size_t i = 0; i < sv->count; i++) {
		if (strcmp(sv->entries[i]->idstr, idstr))
			continue;
		if (is_live(sv->entries[i]))
			return kv_error_set(err, -EINVAL, "postcopy: '%s' is a live handler; only a device section can come after the END sections", idstr);
		sv->entries[i]->pc_late = true;
		found = true;
	}
	if (!found)
		return kv_error_set(err, -ENOENT, "postcopy: no section '%s' is registered", idstr);
	return 0;
}

int kv_savevm_save_command(struct kv_stream *s, uint16_t cmd,
			   const void *payload, uint16_t len,
			   struct kv_error *err)
{
	kv_stream_put_u8(s, KV_SEC_COMMAND);
	kv_stream_put_be16(s, cmd);
	kv_stream_put_be16(s, len);
	if (len)
		kv_stream_put_buffer(s, payload, len);
	return stream_error_to(s, err, "writing a command");
}

/* LISTEN, the device state, RUN: the package's bytes, in pkg. */
static int save_package_body(struct kv_savevm *sv, struct kv_stream *pkg,
			     struct kv_error *err)
{
	int ret;

	ret = kv_savevm_save_command(pkg, KV_MIG_CMD_POSTCOPY_LISTEN, NULL, 0,
				     err);
	if (ret == 0)
		ret = save_devices(sv, pkg, SV_DEV_PACKAGE, err);
	if (ret == 0)
		ret = kv_savevm_save_command(pkg, KV_MIG_CMD_POSTCOPY_RUN, NULL,
					     0, err);
	if (ret == 0 && kv_stream_flush(pkg) < 0)
		ret = stream_error_to(pkg, err, "building the postcopy package");
	return ret;
}

int kv_savevm_save_pc_package(struct kv_savevm *sv, struct kv_stream *s,
			      struct kv_error *err)
{
	struct kv_chan *c = kv_pc_pkg_writer_new(err);
	struct kv_stream *pkg = c ? kv_stream_new(c, KV_STREAM_WRITE) : NULL;
	uint8_t head[4];
	const uint8_t *bytes;
	size_t len;
	int ret;

	if (!pkg) {
		kv_chan_close(c);
		return kv_error_set(err, -ENOMEM, "postcopy: no memory for the package");
	}
	ret = save_package_body(sv, pkg, err);
	bytes = kv_pc_pkg_bytes(c, &len);
	if (ret == 0) {
		kv_pc_packaged_encode((uint32_t)len, head);
		ret = kv_savevm_save_command(s, KV_MIG_CMD_PACKAGED, head, 4,
					     err);
	}
	if (ret == 0)
		kv_stream_put_buffer(s, bytes, len);
	kv_stream_close(pkg);
	if (ret < 0)
		return ret;
	kv_switch_log("postcopy package queued (%zu bytes)", len);
	return stream_error_to(s, err, "sending the postcopy package");
}

int kv_savevm_save_pc_complete(struct kv_savevm *sv, struct kv_stream *s,
			       struct kv_error *err)
{
	bool done;
	int ret;

	ret = save_live_round(sv, s, KV_SEC_END, &done, err);
	if (ret == 0)
		ret = save_devices(sv, s, SV_DEV_LATE, err);
	if (ret < 0)
		return ret;
	/* QEMU's postcopy stream ends here: no VM description. */
	kv_stream_put_u8(s, KV_SEC_EOF);
	kv_stream_flush(s);
	return stream_error_to(s, err, "completing the postcopy stream");
}

void kv_savevm_save_cleanup(struct kv_savevm *sv, bool failed)
{
	size_t i;

	for (i = 0; i < sv->count; i++) {
		struct sv_entry *e = sv->entries[i];

		if (is_live(e) && e->ops->save_cleanup)
			e->ops->save_cleanup(e->opaque, failed);
	}
}

/* ------------------------------------------------------------------ */
/* destination side                                                   */
/* ------------------------------------------------------------------ */

/* What the loader is looking at, for error messages. */
struct load_ctx {
	struct kv_savevm *sv;
	struct kv_stream *s;
	struct kv_load_result *res;
	struct kv_error *err;
	uint64_t offset; /* where the current section started */
	int type;	 /* -1: file header */
	bool has_id;
	uint32_t section_id;
	char idstr[256];
	uint32_t instance_id;
	bool has_instance;
	bool return_path; /* OPEN_RETURN_PATH seen */
	/* Postcopy: reading a PACKAGED's bytes; on the listen thread (the
	 * main stream after the package, while the package loads). */
	bool in_package;
	bool on_listen_thread;
	/* Our own description, rendered before the stream began (see
	 * load_vmdesc); NULL if that failed. */
	char *own_vmdesc;
	size_t own_vmdesc_len;
};

static void section_where(const struct load_ctx *c, char *buf, size_t size)
{
	int n;

	if (c->type < 0) {
		snprintf(buf, size, "stream offset %" PRIu64 ", file header",
			 c->offset);
		return;
	}
	n = snprintf(buf, size, "stream offset %" PRIu64 ", section %s",
		     c->offset, section_type_name(c->type));
	if (n < 0 || (size_t)n >= size)
		return;
	if (c->has_id)
		n += snprintf(buf + n, size - n, " id %" PRIu32, c->section_id);
	if ((size_t)n < size && c->idstr[0])
		n += snprintf(buf + n, size - n, " '%s'", c->idstr);
	if ((size_t)n < size && c->has_instance)
		snprintf(buf + n, size - n, " instance %" PRIu32,
			 c->instance_id);
}

/* Prefix whatever err holds with where the loader is. */
static int load_wrap(struct load_ctx *c, int ret)
{
	char where[400];

	section_where(c, where, sizeof(where));
	kv_error_prefix(c->err, "%s", where);
	return ret < 0 ? ret : -EINVAL;
}

static int load_fail(struct load_ctx *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int load_fail(struct load_ctx *c, int code, const char *fmt, ...)
{
	char msg[KV_ERROR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	kv_error_set(c->err, code, "%s", msg);
	return load_wrap(c, code);
}

/* After reads: turn a sticky stream error (truncation, I/O) into ours. */
static int load_check_stream(struct load_ctx *c)
{
	struct kv_error se = {0};

	kv_stream_error_get(c->s, &se);
	if (!se.code)
		return 0;
	return load_fail(c, se.code, "%s", se.msg[0] ? se.msg : "stream error");
}

static void begin_section(struct load_ctx *c, int type)
{
	c->offset = kv_stream_offset(c->s);
	c->type = type;
	c->has_id = false;
	c->has_instance = false;
	c->idstr[0] = '\0';
}

static uint32_t be32_at(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static char printable(uint8_t b)
{
	return b >= 0x20 && b < 0x7f ? (char)b : '.';
}

int kv_savevm_check_header(const uint8_t hdr[KV_VM_HEADER_SIZE],
			   struct kv_error *err)
{
	uint32_t version = be32_at(hdr + 4);

	if (be32_at(hdr) != KV_VM_FILE_MAGIC)
		return kv_error_set(err, -EINVAL, "bad magic %02x %02x %02x %02x ('%c%c%c%c'), expected 'QEVM' (51 45 56 4d): not a migration stream", hdr[0], hdr[1], hdr[2], hdr[3], printable(hdr[0]), printable(hdr[1]), printable(hdr[2]), printable(hdr[3]));
	if (version != KV_VM_FILE_VERSION)
		return kv_error_set(err, -EINVAL, "unsupported stream version %" PRIu32 " (this destination reads version %u)", version, KV_VM_FILE_VERSION);
	return 0;
}

static int load_header(struct load_ctx *c)
{
	uint8_t hdr[KV_VM_HEADER_SIZE];
	int ret;

	c->type = -1;
	c->offset = 0;
	kv_stream_get_buffer(c->s, hdr, sizeof(hdr));
	if (load_check_stream(c))
		return c->err->code;
	ret = kv_savevm_check_header(hdr, c->err);
	if (ret < 0) {
		if (be32_at(hdr) == KV_VM_FILE_MAGIC)
			c->offset = 4; /* the version is wrong */
		return load_wrap(c, ret);
	}
	return 0;
}

/* The configuration's capabilities subsection (config_caps.h). */
static int load_caps(struct load_ctx *c)
{
	struct kv_error cerr = {0};
	struct kv_savevm *sv = c->sv;
	bool none = false;
	int ret = kv_config_caps_load(c->s, sv->mapped_ram ? sv->mapped_ram : &none,
				      sv->mapped_ram && sv->mapped_ram_follow,
				      &cerr);

	if (load_check_stream(c))
		return c->err->code;
	return ret < 0 ? load_fail(c, ret, "%s", cerr.msg) : 0;
}

static int load_configuration(struct load_ctx *c)
{
	char name[SV_MACHINE_MAX + 1];
	uint32_t len;
	uint8_t type;

	begin_section(c, KV_SEC_CONFIGURATION);
	type = kv_stream_get_u8(c->s);
	if (load_check_stream(c))
		return c->err->code;
	if (type != KV_SEC_CONFIGURATION) {
		c->type = type;
		return load_fail(c, -EINVAL,
				 "expected the CONFIGURATION section (0x07) first, found section type 0x%02x",
				 type);
	}
	len = kv_stream_get_be32(c->s);
	if (load_check_stream(c))
		return c->err->code;
	if (len > SV_MACHINE_MAX)
		return load_fail(c, -EINVAL,
				 "machine name of %" PRIu32
				 " bytes (at most %d allowed)",
				 len, SV_MACHINE_MAX);
	kv_stream_get_buffer(c->s, name, len);
	if (load_check_stream(c))
		return c->err->code;
	name[len] = '\0';
	if (strlen(name) != len || strcmp(name, c->sv->machine) != 0)
		return load_fail(c, -EINVAL,
				 "stream is for machine '%s', this destination is '%s'",
				 name, c->sv->machine);
	return load_caps(c);
}

/* PONG through the return path: the source waits for it to know that
 * everything before the PING was read (and where the path is not open,
 * or not a socket, nobody waits). */
static int answer_ping(struct load_ctx *c, uint32_t value)
{
	struct kv_chan *ch = kv_stream_chan(c->s);
	struct kv_error perr = {0};
	int ret;

	if (!c->return_path || !ch || !ch->is_socket)
		return 0;
	/* With postcopy the fault thread writes page requests too. */
	if (c->sv->pc_ops)
		ret = c->sv->pc_ops->send_pong(c->sv->pc_ops->opaque, value,
					       &perr);
	else
		ret = kv_rp_send_pong(ch, value, &perr);
	if (ret < 0)
		return load_fail(c, ret, "%s", perr.msg);
	return 0;
}

/* ---- postcopy, destination (docs/DESIGN.md "Postcopy") ---- */

/* load_sections() after a PACKAGED whose LISTEN handed the main stream
 * to the listen thread: this thread reads no more of it. */
#define LOAD_LISTENING 2

/* What the loading threads share during one load with postcopy. */
struct sv_pc_load {
	struct load_ctx *main; /* the main stream's context */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct kv_pc_order order;   /* under lock */
	bool package_done;	    /* under lock */
	bool listen_started;
	pthread_t listen_thread;
	int listen_ret;
	struct kv_error listen_err; /* the listen thread's own */
};

void kv_savevm_set_postcopy(struct kv_savevm *sv,
			    const struct kv_savevm_pc_ops *ops)
{
	sv->pc_ops = ops;
}

static int load_sections(struct load_ctx *c);
static void load_cleanup_all(struct kv_savevm *sv, bool failed);

/* The listen thread: the main stream from the end of the package on
 * (pages, the END sections, EOF), while the package thread loads the
 * device state and starts the guest (QEMU's postcopy_ram_listen_thread). */
static void *listen_main(void *opaque)
{
	struct load_ctx *c = opaque;
	struct sv_pc_load *pcl = c->sv->pcl;

	c->on_listen_thread = true;
	if (c->sv->pc_ops && c->sv->pc_ops->listen_thread)
		c->sv->pc_ops->listen_thread(c->sv->pc_ops->opaque);
	pcl->listen_ret = load_sections(c);
	return NULL;
}

/* A START, FULL or EOF on the listen thread waits for the package: its
 * devices are entries too, and EOF checks that every entry came. */
static void wait_package(struct sv_pc_load *pcl)
{
	pthread_mutex_lock(&pcl->lock);
	while (!pcl->package_done)
		pthread_cond_wait(&pcl->cond, &pcl->lock);
	pthread_mutex_unlock(&pcl->lock);
}

static int start_listen_thread(struct load_ctx *c)
{
	struct sv_pc_load *pcl = c->sv->pcl;

	pcl->main->err = &pcl->listen_err;
	if (pthread_create(&pcl->listen_thread, NULL, listen_main,
			   pcl->main) != 0)
		return load_fail(c, -EAGAIN, "postcopy: cannot start the listen thread");
	pcl->listen_started = true;
	return 0;
}

/* PACKAGED: read its L bytes off the main stream, then load them as a
 * stream of their own. */
static int load_package(struct load_ctx *c, uint32_t len)
{
	struct sv_pc_load *pcl = c->sv->pcl;
	struct kv_error *outer = c->err;
	uint64_t offset = c->offset;
	struct load_ctx n = *c;
	struct kv_error e = {0};
	struct kv_stream *ps;
	struct kv_chan *pc;
	uint8_t *buf = malloc(len);
	int ret;

	if (!buf)
		return load_fail(c, -ENOMEM, "postcopy: no memory for a package of %" PRIu32 " bytes", len);
	kv_stream_get_buffer(c->s, buf, len);
	if (kv_stream_error(c->s)) {
		free(buf);
		return load_check_stream(c);
	}
	pc = kv_pc_pkg_reader_new(buf, len, &e);
	ps = pc ? kv_stream_new(pc, KV_STREAM_READ) : NULL;
	if (!ps) {
		kv_chan_close(pc);
		return load_fail(c, -ENOMEM, "postcopy: no memory for the package's stream");
	}
	n.s = ps;
	n.in_package = true;
	ret = load_sections(&n);
	kv_stream_close(ps);
	pthread_mutex_lock(&pcl->lock);
	kv_pc_order_package_done(&pcl->order);
	pcl->package_done = true;
	pthread_cond_broadcast(&pcl->cond);
	pthread_mutex_unlock(&pcl->lock);
	/* From here c belongs to the listen thread if it started. */
	if (ret < 0) {
		kv_error_prefix(outer, "in the postcopy package (%" PRIu32 " bytes) at stream offset %" PRIu64, len, offset);
		return ret;
	}
	return pcl->listen_started ? LOAD_LISTENING : 0;
}

static int pc_handler_failed(struct load_ctx *c, int ret, const char *what)
{
	if (!kv_error_is_set(c->err))
		kv_error_set(c->err, ret, "postcopy: %s failed (%d)", what, ret);
	return load_wrap(c, ret);
}

static int load_pc_dispatch(struct load_ctx *c, uint16_t cmd,
			    const uint8_t *p, uint16_t len)
{
	const struct kv_savevm_pc_ops *ops = c->sv->pc_ops;
	struct kv_pc_advise a;
	struct kv_pc_discard d;
	uint32_t nested;
	int block, ret;

	switch (cmd) {
	case KV_MIG_CMD_POSTCOPY_ADVISE:
		ret = kv_pc_advise_decode(p, len, KV_PAGE_SIZE, KV_PAGE_SIZE,
					  &a, c->err);
		if (ret == 0)
			ret = ops->advise(ops->opaque, &a, c->err);
		return ret < 0 ? pc_handler_failed(c, ret, "ADVISE") : 0;
	case KV_MIG_CMD_POSTCOPY_RAM_DISCARD:
		ret = kv_pc_discard_decode(p, len, ops->blocks(ops->opaque),
					   &d, c->err);
		if (ret == 0)
			ret = ops->discard(ops->opaque, &d, c->err);
		return ret < 0 ? pc_handler_failed(c, ret, "RAM_DISCARD") : 0;
	case KV_MIG_CMD_POSTCOPY_LISTEN:
		ret = ops->listen(ops->opaque, c->err);
		if (ret < 0)
			return pc_handler_failed(c, ret, "LISTEN");
		return c->in_package ? start_listen_thread(c) : 0;
	case KV_MIG_CMD_POSTCOPY_RUN:
		ret = ops->run(ops->opaque, c->err);
		return ret < 0 ? pc_handler_failed(c, ret, "RUN") : 0;
	case KV_MIG_CMD_PACKAGED:
		ret = kv_pc_packaged_decode(p, len, &nested, c->err);
		if (ret < 0)
			return load_wrap(c, ret);
		return load_package(c, nested);
	case KV_MIG_CMD_RECV_BITMAP:
		if (!ops->recv_bitmap)
			break;
		ret = kv_pc_named_decode(p, len, ops->blocks(ops->opaque),
					 "RECV_BITMAP", &block, c->err);
		if (ret == 0)
			ret = ops->recv_bitmap(ops->opaque, (size_t)block,
					       c->err);
		return ret < 0 ? pc_handler_failed(c, ret, "RECV_BITMAP") : 0;
	case KV_MIG_CMD_POSTCOPY_RESUME:
		if (!ops->resume)
			break;
		ret = ops->resume(ops->opaque, c->err);
		return ret < 0 ? pc_handler_failed(c, ret, "POSTCOPY_RESUME")
			       : 0;
	default:
		break;
	}
	return load_fail(c, -ENOTSUP, "postcopy: %s is not supported by this destination", kv_pc_cmd_name(cmd));
}

/* A postcopy command: its length by the table, its payload, its place
 * in QEMU's order, then what it does. */
static int load_pc_command(struct load_ctx *c, uint16_t cmd, uint16_t len)
{
	struct sv_pc_load *pcl = c->sv->pcl;
	uint8_t p[KV_PC_DISCARD_MAX_LEN];
	int ret;

	if (!c->sv->pc_ops || !pcl)
		return load_fail(c, -ENOTSUP, "the source sent %s: it migrates with postcopy-ram, which is off on this destination (set the postcopy-ram capability here too, before the source connects)", kv_pc_cmd_name(cmd));
	ret = kv_pc_cmd_check_len(cmd, len, c->err);
	if (ret < 0)
		return load_wrap(c, ret);
	if (len > sizeof(p))
		return load_fail(c, -EPROTO, "postcopy: %s of %u bytes", kv_pc_cmd_name(cmd), len);
	kv_stream_get_buffer(c->s, p, len);
	if (load_check_stream(c))
		return c->err->code;
	pthread_mutex_lock(&pcl->lock);
	ret = kv_pc_order_step(&pcl->order, cmd, c->err);
	pthread_mutex_unlock(&pcl->lock);
	if (ret < 0)
		return load_wrap(c, ret);
	return load_pc_dispatch(c, cmd, p, len);
}

static struct sv_pc_load *pc_load_new(struct load_ctx *main)
{
	struct sv_pc_load *pcl = calloc(1, sizeof(*pcl));

	if (!pcl)
		return NULL;
	pcl->main = main;
	pthread_mutex_init(&pcl->lock, NULL);
	pthread_cond_init(&pcl->cond, NULL);
	return pcl;
}

/* After the main thread's part: the listen thread's result is the
 * load's (a failed package stops it first). *postcopy: LISTEN came. */
static int pc_load_end(struct kv_savevm *sv, struct kv_stream *s, int ret,
		       bool *postcopy, struct kv_error *err)
{
	struct sv_pc_load *pcl = sv->pcl;

	*postcopy = false;
	if (!pcl)
		return ret;
	*postcopy = pcl->order.state >= KV_PC_LISTENING;
	if (pcl->listen_started) {
		if (ret < 0)
			kv_stream_shutdown(s);
		pthread_join(pcl->listen_thread, NULL);
		pcl->listen_started = false;
		if (ret >= 0) {
			ret = pcl->listen_ret;
			if (ret < 0)
				kv_error_propagate(err, &pcl->listen_err);
		}
	}
	/* The guest runs here: a broken link pauses the load, which a new
	 * stream may resume (kv_savevm_load_resume). */
	if (ret < 0 && pcl->order.state == KV_PC_RUNNING) {
		sv->pc_paused = true;
		pcl->main = NULL;
		return ret;
	}
	pc_load_free(sv);
	return ret;
}

static void pc_load_free(struct kv_savevm *sv)
{
	struct sv_pc_load *pcl = sv->pcl;

	if (!pcl)
		return;
	pthread_cond_destroy(&pcl->cond);
	pthread_mutex_destroy(&pcl->lock);
	free(pcl);
	sv->pcl = NULL;
	sv->pc_paused = false;
}

bool kv_savevm_load_paused(const struct kv_savevm *sv)
{
	return sv->pc_paused;
}

int kv_savevm_load_resume(struct kv_savevm *sv, struct kv_stream *s,
			  struct kv_error *err)
{
	struct load_ctx c = {
	    .sv = sv,
	    .s = s,
	    .err = err,
	    .type = -1,
	    .return_path = true,
	    .on_listen_thread = true,
	};
	int ret;

	if (!sv->pc_paused)
		return kv_error_set(err, -EINVAL, "postcopy: no paused load to resume");
	sv->pcl->main = &c;
	ret = load_sections(&c);
	sv->pcl->main = NULL;
	if (ret < 0)
		return ret; /* paused again */
	load_cleanup_all(sv, false);
	pc_load_free(sv);
	return 0;
}

void kv_savevm_load_abandon(struct kv_savevm *sv)
{
	if (!sv->pc_paused)
		return;
	load_cleanup_all(sv, false);
	pc_load_free(sv);
}

static int load_command(struct load_ctx *c)
{
	uint16_t cmd, len;
	uint32_t value;

	cmd = kv_stream_get_be16(c->s);
	len = kv_stream_get_be16(c->s);
	if (load_check_stream(c))
		return c->err->code;
	switch (cmd) {
	case KV_MIG_CMD_OPEN_RETURN_PATH:
		if (len != 0)
			return load_fail(c, -EINVAL,
					 "command OPEN_RETURN_PATH with length %u (expected 0)",
					 len);
		if (c->res)
			c->res->return_path_requested = true;
		c->return_path = true;
		return 0;
	case KV_MIG_CMD_PING:
		if (len != 4)
			return load_fail(c, -EINVAL,
					 "command PING with length %u (expected 4)",
					 len);
		value = kv_stream_get_be32(c->s);
		if (load_check_stream(c))
			return c->err->code;
		return answer_ping(c, value);
	default:
		if (kv_pc_cmd_name(cmd))
			return load_pc_command(c, cmd, len);
		return load_fail(c, -EINVAL, "unknown command %u (length %u)",
				 cmd, len);
	}
}

static int load_footer(struct load_ctx *c)
{
	uint64_t off = kv_stream_offset(c->s);
	uint8_t type;
	uint32_t id;

	type = kv_stream_get_u8(c->s);
	if (load_check_stream(c))
		return c->err->code;
	if (type != KV_SEC_FOOTER)
		return load_fail(c, -EINVAL,
				 "expected section footer (0x7e) at stream offset %" PRIu64 ", found 0x%02x: the handler read too little or too much",
				 off, type);
	id = kv_stream_get_be32(c->s);
	if (load_check_stream(c))
		return c->err->code;
	if (id != c->section_id)
		return load_fail(c, -EINVAL,
				 "footer at stream offset %" PRIu64
				 " has section id %" PRIu32
				 ", expected %" PRIu32,
				 off, id, c->section_id);
	return 0;
}

/* Run the handler of e over the section payload. */
static int load_payload(struct load_ctx *c, struct sv_entry *e, int version)
{
	int ret;

	if (is_live(e))
		ret = e->ops->load_state(c->s, e->opaque, version, c->err);
	else
		ret =
		    kv_vmstate_load(c->s, e->vmsd, e->opaque, version, c->err);
	if (ret >= 0 && !kv_error_is_set(c->err))
		return load_check_stream(c);
	if (!kv_error_is_set(c->err)) {
		struct kv_error se = {0};

		kv_stream_error_get(c->s, &se);
		if (se.code)
			kv_error_propagate(c->err, &se);
		else
			kv_error_set(c->err, ret, "handler failed (%d)", ret);
	}
	return load_wrap(c, ret);
}

static struct sv_entry *entry_by_stream_id(struct kv_savevm *sv, uint32_t id)
{
	size_t i;

	for (i = 0; i < sv->count; i++)
		if (sv->entries[i]->got_start &&
		    sv->entries[i]->stream_section_id == id)
			return sv->entries[i];
	return NULL;
}

/* The same among live handlers only: the listen thread's lookup, while
 * the package's devices are being loaded on another thread. */
static struct sv_entry *live_by_stream_id(struct kv_savevm *sv, uint32_t id)
{
	for (size_t i = 0; i < sv->count; i++)
		if (is_live(sv->entries[i]) && sv->entries[i]->got_start &&
		    sv->entries[i]->stream_section_id == id)
			return sv->entries[i];
	return NULL;
}

/* A section for an instance this side lacks, of an idstr it knows.
 * Instances arrive in order, so the stream has at least one more. */
static int load_unknown_instance(struct load_ctx *c)
{
	struct sv_entry *e = NULL;
	uint32_t n, arrived;

	for (size_t i = 0; i < c->sv->count && !e; i++)
		if (!strcmp(c->sv->entries[i]->idstr, c->idstr))
			e = c->sv->entries[i];
	if (!e->count_option)
		return load_fail(c, -ENOENT, "unknown instance %" PRIu32 " of '%s'", c->instance_id, c->idstr);
	n = count_instances(c->sv, e, &arrived);
	return load_fail(c, -ENOENT, "the stream's guest has at least %" PRIu32 " %ss (it carries %s %" PRIu32 "), this VM was started with %s %" PRIu32 ": start the destination with the source's options", c->instance_id + 1, e->count_noun, e->count_noun, c->instance_id, e->count_option, n);
}

static int check_complete(struct load_ctx *c, const struct sv_entry *skip);

static void hex_digest(const uint8_t *d, char out[2 * KV_SAVEVM_DIGEST_LEN + 1])
{
	for (int i = 0; i < KV_SAVEVM_DIGEST_LEN; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* The source's digest of every other section against what was read here;
 * nothing of this stream is in KVM yet. */
static int compare_digests(struct load_ctx *c, const struct sv_verify_rec *rec)
{
	char here[2 * KV_SAVEVM_DIGEST_LEN + 1], there[sizeof(here)];
	uint32_t expected = (uint32_t)c->sv->count - 1;

	if (rec->count != expected)
		return load_fail(c, -EINVAL, "the verification record covers %" PRIu32 " sections, this destination has %" PRIu32, rec->count, expected);
	for (uint32_t i = 0; i < rec->count; i++) {
		const struct sv_digest *d = &rec->d[i];
		struct sv_entry *e = entry_by_stream_id(c->sv, d->section_id);

		if (!e || is_verify(c->sv, e) || !e->digested)
			return load_fail(c, -EINVAL, "the verification record names section id %" PRIu32 ", which no START or FULL section of this stream carried", d->section_id);
		if (memcmp(e->digest, d->digest, KV_SAVEVM_DIGEST_LEN) == 0)
			continue;
		hex_digest(d->digest, there);
		hex_digest(e->digest, here);
		return load_fail(c, -EIO, "section '%s' instance %" PRIu32 " (section id %" PRIu32 ") differs from what the source sent: XXH3-128 of its payload %s here, %s at the source; nothing of this stream was committed to KVM", e->idstr, e->instance_id, d->section_id, here, there);
	}
	return 0;
}

static int load_verify(struct load_ctx *c, struct sv_entry *e, int version)
{
	int ret;

	ret = check_complete(c, e);
	if (ret < 0)
		return ret;
	if (load_payload(c, e, version) < 0)
		return c->err->code;
	ret = load_footer(c);
	if (ret < 0)
		return ret;
	ret = compare_digests(c, c->sv->verify->rec);
	if (ret == 0)
		kv_info("savevm", "%s: the payloads of %zu sections are identical to the source's (XXH3-128)", KV_SAVEVM_VERIFY_IDSTR, c->sv->count - 1);
	return ret;
}

static int load_start_full(struct load_ctx *c, int type)
{
	struct sv_entry *e;
	uint32_t version;
	uint32_t id, instance;
	char idstr[256];
	int min_version, ret;

	id = kv_stream_get_be32(c->s);
	kv_stream_get_str8(c->s, idstr, sizeof(idstr));
	instance = kv_stream_get_be32(c->s);
	version = kv_stream_get_be32(c->s);
	if (load_check_stream(c))
		return c->err->code;
	c->section_id = id;
	c->has_id = true;
	snprintf(c->idstr, sizeof(c->idstr), "%s", idstr);
	c->instance_id = instance;
	c->has_instance = true;
	e = find_entry(c->sv, c->idstr, c->instance_id);
	if (!e && idstr_known(c->sv, c->idstr))
		return load_unknown_instance(c);
	if (!e)
		return load_fail(c, -ENOENT,
				 "unknown section '%s': no such device or handler on this destination",
				 c->idstr);
	if (is_live(e) != (type == KV_SEC_START))
		return load_fail(c, -EINVAL,
				 "'%s' is a %s here and cannot arrive in a %s section",
				 c->idstr,
				 is_live(e) ? "live handler" : "device",
				 section_type_name(type));
	if (e->got_start)
		return load_fail(c, -EINVAL, "'%s' arrived twice", c->idstr);
	if (entry_by_stream_id(c->sv, c->section_id))
		return load_fail(
		    c, -EINVAL,
		    "section id %" PRIu32 " is already used by '%s'",
		    c->section_id,
		    entry_by_stream_id(c->sv, c->section_id)->idstr);
	min_version = e->vmsd ? e->vmsd->minimum_version_id : 0;
	if (version > (uint32_t)e->version_id)
		return load_fail(c, -EINVAL,
				 "version %" PRIu32 " is newer than supported version %d",
				 version, e->version_id);
	if (version < (uint32_t)min_version)
		return load_fail(c, -EINVAL,
				 "version %" PRIu32 " is older than the oldest supported version %d",
				 version, min_version);
	e->got_start = true;
	e->stream_section_id = c->section_id;
	e->stream_version = (int)version;
	if (type == KV_SEC_FULL)
		e->got_end = true;
	if (is_verify(c->sv, e))
		return load_verify(c, e, (int)version);
	digest_begin(c->sv, c->s, e);
	ret = load_payload(c, e, (int)version);
	digest_end(c->sv, c->s, e);
	if (ret < 0)
		return c->err->code;
	return load_footer(c);
}

static int load_part_end(struct load_ctx *c, int type)
{
	struct sv_entry *e;

	c->section_id = kv_stream_get_be32(c->s);
	if (load_check_stream(c))
		return c->err->code;
	c->has_id = true;
	e = c->on_listen_thread ? live_by_stream_id(c->sv, c->section_id)
				: entry_by_stream_id(c->sv, c->section_id);
	if (!e)
		return load_fail(c, -ENOENT,
				 "section id %" PRIu32 " was not opened by a START section",
				 c->section_id);
	snprintf(c->idstr, sizeof(c->idstr), "%s", e->idstr);
	if (!is_live(e) || e->got_end)
		return load_fail(c, -EINVAL, "section '%s' is already complete",
				 e->idstr);
	if (type == KV_SEC_END) {
		e->got_end = true;
		kv_switch_log("dst: END of '%s' begins", e->idstr);
	}
	if (load_payload(c, e, e->stream_version) < 0)
		return c->err->code;
	return load_footer(c);
}

/* At EOF: every registered entry must have arrived, live ones ended;
 * before the verification record (skip), every other entry. */
static int check_complete(struct load_ctx *c, const struct sv_entry *skip)
{
	size_t i;
	uint32_t n, arrived;

	for (i = 0; i < c->sv->count; i++) {
		struct sv_entry *e = c->sv->entries[i];

		if (e == skip)
			continue;
		if (!e->got_start && e->count_option) {
			n = count_instances(c->sv, e, &arrived);
			return load_fail(c, -EINVAL, "the stream's guest has %" PRIu32 " %s%s, this VM was started with %s %" PRIu32 ": start the destination with the source's options", arrived, e->count_noun, arrived == 1 ? "" : "s", e->count_option, n);
		}
		if (!e->got_start)
			return load_fail(c, -EINVAL,
					 "stream incomplete: %s '%s' instance %" PRIu32 " never arrived",
					 is_live(e) ? "live handler" : "device",
					 e->idstr, e->instance_id);
		if (!e->got_end)
			return load_fail(c, -EINVAL,
					 "stream incomplete: '%s' got START but no END section",
					 e->idstr);
	}
	return 0;
}

/* Whether text is exactly the description this side renders for its
 * devices: then it is well-formed by construction and the (slower) parse
 * is not needed. Anything else, e.g. from QEMU, is parsed and checked.
 * The rendering made before the stream began answers without delay at
 * switch-over (rendering takes milliseconds, and the guest is stopped);
 * a description whose sizes depend on loaded values is rendered again. */
static bool is_own_vmdesc(struct load_ctx *c, const char *text, size_t len)
{
	size_t own_len;
	char *own;
	bool same;

	if (c->own_vmdesc && c->own_vmdesc_len == len &&
	    memcmp(c->own_vmdesc, text, len) == 0)
		return true;
	own = render_vmdesc(c->sv, &own_len);
	same = own && own_len == len && memcmp(own, text, len) == 0;
	free(own);
	return same;
}

static int load_vmdesc(struct load_ctx *c)
{
	uint32_t len;
	uint8_t type;
	char *buf;
	int ret;

	begin_section(c, KV_SEC_VMDESCRIPTION);
	type = kv_stream_get_u8(c->s);
	if (load_check_stream(c))
		return c->err->code;
	if (type != KV_SEC_VMDESCRIPTION)
		return load_fail(c, -EINVAL,
				 "expected the VM description (0x06) after EOF, found 0x%02x",
				 type);
	len = kv_stream_get_be32(c->s);
	if (load_check_stream(c))
		return c->err->code;
	if (len > KV_VMDESC_MAX_LEN)
		return load_fail(c, -EINVAL,
				 "VM description of %" PRIu32
				 " bytes exceeds the limit of %u",
				 len, KV_VMDESC_MAX_LEN);
	buf = malloc(len ? len : 1);
	if (!buf)
		return load_fail(c, -ENOMEM, "VM description: out of memory");
	kv_stream_get_buffer(c->s, buf, len);
	ret = load_check_stream(c);
	if (ret == 0 && !is_own_vmdesc(c, buf, len)) {
		ret = kv_vmdesc_validate(buf, len, c->err);
		if (ret < 0)
			load_wrap(c, ret);
	}
	free(buf);
	return ret;
}

/* Nothing may follow the description. With a return path the source
 * keeps the connection open waiting for our answer, so EOF never comes. */
static int load_trailer(struct load_ctx *c)
{
	if (c->res && c->res->return_path_requested)
		return 0;
	if (kv_stream_at_eof(c->s))
		return 0;
	if (load_check_stream(c))
		return c->err->code;
	c->offset = kv_stream_offset(c->s);
	return load_fail(c, -EINVAL,
			 "unexpected data after the VM description (next byte 0x%02x)",
			 kv_stream_peek_u8(c->s));
}

/* Where postcopy puts a section: a package holds device sections and
 * commands only; the listen thread waits for the package before a
 * device section or EOF. */
static int check_pc_place(struct load_ctx *c, uint8_t type)
{
	if (c->in_package && type != KV_SEC_FULL && type != KV_SEC_COMMAND)
		return load_fail(c, -EINVAL, "postcopy: section type 0x%02x inside the PACKAGED command (a package holds device sections and commands only)", type);
	if (c->on_listen_thread && type != KV_SEC_PART &&
	    type != KV_SEC_END && type != KV_SEC_COMMAND)
		wait_package(c->sv->pcl);
	return 0;
}

static int load_sections(struct load_ctx *c)
{
	int ret;

	for (;;) {
		uint8_t type;

		if (c->in_package && kv_stream_at_eof(c->s))
			return 0;
		begin_section(c, KV_SEC_EOF);
		type = kv_stream_get_u8(c->s);
		if (load_check_stream(c))
			return c->err->code;
		c->type = type;
		ret = check_pc_place(c, type);
		if (ret < 0)
			return ret;
		switch (type) {
		case KV_SEC_START:
		case KV_SEC_FULL:
			ret = load_start_full(c, type);
			break;
		case KV_SEC_PART:
		case KV_SEC_END:
			ret = load_part_end(c, type);
			break;
		case KV_SEC_COMMAND:
			ret = load_command(c);
			break;
		case KV_SEC_EOF:
			kv_switch_log("dst: EOF");
			return check_complete(c, NULL);
		default:
			return load_fail(c, -EINVAL,
					 "unknown or misplaced section type 0x%02x",
					 type);
		}
		if (ret != 0)
			return ret;
	}
}

static int load_setup_all(struct load_ctx *c)
{
	size_t i;
	int ret;

	for (i = 0; i < c->sv->count; i++) {
		struct sv_entry *e = c->sv->entries[i];

		e->got_start = false;
		e->got_end = false;
		e->digested = false;
		e->load_setup_called = false;
	}
	for (i = 0; i < c->sv->count; i++) {
		struct sv_entry *e = c->sv->entries[i];

		if (!is_live(e))
			continue;
		e->load_setup_called = true;
		if (!e->ops->load_setup)
			continue;
		ret = e->ops->load_setup(e->opaque, c->err);
		if (ret < 0) {
			if (!kv_error_is_set(c->err))
				kv_error_set(c->err, ret, "failed (%d)", ret);
			kv_error_prefix(c->err, "load setup of '%s'", e->idstr);
			return ret;
		}
	}
	return 0;
}

static void load_cleanup_all(struct kv_savevm *sv, bool failed)
{
	size_t i;

	for (i = 0; i < sv->count; i++) {
		struct sv_entry *e = sv->entries[i];

		if (is_live(e) && e->load_setup_called && e->ops->load_cleanup)
			e->ops->load_cleanup(e->opaque, failed);
		e->load_setup_called = false;
	}
}

int kv_savevm_load(struct kv_savevm *sv, struct kv_stream *s,
		   struct kv_load_result *res, struct kv_error *err)
{
	struct kv_error local = {0};
	struct load_ctx c = {
	    .sv = sv,
	    .s = s,
	    .res = res,
	    .err = err ? err : &local,
	    .type = -1,
	};
	bool postcopy;
	int ret;

	if (res)
		memset(res, 0, sizeof(*res));
	c.own_vmdesc = render_vmdesc(sv, &c.own_vmdesc_len);
	ret = load_setup_all(&c);
	if (ret == 0 && sv->pc_ops) {
		sv->pcl = pc_load_new(&c);
		if (!sv->pcl)
			ret = kv_error_set(c.err, -ENOMEM, "postcopy: out of memory");
	}
	if (ret == 0)
		ret = load_header(&c);
	if (ret == 0)
		ret = load_configuration(&c);
	if (ret == 0)
		ret = load_sections(&c);
	ret = pc_load_end(sv, s, ret, &postcopy, err ? err : &local);
	c.err = err ? err : &local;
	if (res)
		res->postcopy = postcopy;
	/* QEMU's postcopy stream ends at EOF: no description. */
	if (ret == 0 && !postcopy)
		ret = load_vmdesc(&c);
	kv_switch_log("dst: vmdesc read, %llu bytes in the stream",
		   (unsigned long long)kv_stream_offset(s));
	if (ret == 0)
		ret = load_trailer(&c);
	if (res)
		res->bytes = kv_stream_offset(s);
	if (!sv->pc_paused)
		load_cleanup_all(sv, ret < 0);
	free(c.own_vmdesc);
	return ret < 0 ? ret : 0;
}
