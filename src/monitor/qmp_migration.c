/* SPDX-License-Identifier: MIT */
/* The migration commands (qmp_migration.h), driven by the options table. */
#include "monitor/qmp_migration.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "monitor/qmp_internal.h"

struct kv_qmp_mig {
	struct kv_qmp_mig_ops ops;
	pthread_mutex_t lock; /* guards settings */
	struct kv_mig_settings settings;
};

struct kv_qmp_mig *kv_qmp_mig_new(const struct kv_qmp_mig_ops *ops)
{
	struct kv_qmp_mig *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	m->ops = *ops;
	pthread_mutex_init(&m->lock, NULL);
	kv_mig_settings_default(&m->settings);
	return m;
}

void kv_qmp_mig_set_objects(struct kv_qmp_mig *m,
			    const struct kv_objects *objects)
{
	pthread_mutex_lock(&m->lock);
	m->settings.params.tls.objects = objects;
	pthread_mutex_unlock(&m->lock);
}

void kv_qmp_mig_free(struct kv_qmp_mig *m)
{
	if (!m)
		return;
	pthread_mutex_destroy(&m->lock);
	free(m);
}

void kv_qmp_mig_settings(struct kv_qmp_mig *m, struct kv_mig_settings *out)
{
	pthread_mutex_lock(&m->lock);
	*out = m->settings;
	pthread_mutex_unlock(&m->lock);
}

void kv_qmp_mig_params(struct kv_qmp_mig *m, struct kv_mig_params *out)
{
	struct kv_mig_settings s;

	kv_qmp_mig_settings(m, &s);
	kv_mig_settings_params(&s, out);
}

/* ---- values between JSON and the table ---- */

static const char *json_type_for(const struct kv_mig_option *o)
{
	switch (o->kind) {
	case KV_MIG_OPT_CAPABILITY:
	case KV_MIG_OPT_BOOL:
		return "boolean";
	case KV_MIG_OPT_ENUM:
	case KV_MIG_OPT_STRING:
		return "string";
	case KV_MIG_OPT_UINT:
		break;
	}
	return "integer";
}

static bool json_type_ok(const struct kv_mig_option *o, const json_t *j)
{
	switch (o->kind) {
	case KV_MIG_OPT_CAPABILITY:
	case KV_MIG_OPT_BOOL:
		return json_is_boolean(j);
	case KV_MIG_OPT_ENUM:
	case KV_MIG_OPT_STRING:
		return json_is_string(j);
	case KV_MIG_OPT_UINT:
		break;
	}
	return json_is_integer(j);
}

/* A value of the right JSON type, checked against the row. */
static int value_from_json(const struct kv_mig_option *o, const json_t *j,
			   struct kv_mig_value *v, struct kv_error *err)
{
	int ret;

	switch (o->kind) {
	case KV_MIG_OPT_CAPABILITY:
	case KV_MIG_OPT_BOOL:
		v->u = json_is_true(j);
		break;
	case KV_MIG_OPT_ENUM:
		ret = kv_mig_option_enum_parse(o, json_string_value(j), v, err);
		if (ret < 0)
			return ret;
		break;
	case KV_MIG_OPT_STRING:
		/* Too long for the buffer: refused by the check below. */
		memset(v->s, 'x', sizeof(v->s));
		if (json_string_length(j) < sizeof(v->s))
			snprintf(v->s, sizeof(v->s), "%s", json_string_value(j));
		break;
	case KV_MIG_OPT_UINT:
		if (json_integer_value(j) < 0)
			v->u = UINT64_MAX; /* out of every range */
		else
			v->u = (uint64_t)json_integer_value(j);
		break;
	}
	return kv_mig_option_check(o, v, err);
}

json_t *kv_qmp_mig_value_json(const struct kv_mig_option *o,
			       const struct kv_mig_value *v)
{
	switch (o->kind) {
	case KV_MIG_OPT_CAPABILITY:
	case KV_MIG_OPT_BOOL:
		return json_boolean(v->u);
	case KV_MIG_OPT_ENUM:
		return json_string(kv_mig_option_enum_name(o, v->u));
	case KV_MIG_OPT_STRING:
		return json_string(v->s);
	case KV_MIG_OPT_UINT:
		break;
	}
	return json_integer((json_int_t)v->u);
}

/* ---- parameters and capabilities, all or nothing ---- */

/* QEMU's order of complaints: the type of each known parameter (in table
 * order), then an unknown one, then the values. */
static int check_param_types(json_t *args, struct kv_error *err)
{
	const char *key;
	json_t *j;

	for (size_t i = 0; i < kv_mig_n_options; i++) {
		const struct kv_mig_option *o = &kv_mig_options[i];

		j = o->kind == KV_MIG_OPT_CAPABILITY
			? NULL
			: json_object_get(args, o->name);
		if (j && !json_type_ok(o, j))
			return kv_qmp_invalid_type(err, o->name,
						   json_type_for(o));
	}
	json_object_foreach(args, key, j)
	{
		if (!kv_mig_param_find(key))
			return kv_error_set(err, -EINVAL, "Parameter '%s' is unexpected", key);
	}
	return 0;
}

int kv_qmp_mig_apply_params(struct kv_mig_settings *s, json_t *args,
			    struct kv_error *err)
{
	struct kv_mig_settings next = *s;
	int ret = check_param_types(args, err);

	for (size_t i = 0; ret == 0 && i < kv_mig_n_options; i++) {
		const struct kv_mig_option *o = &kv_mig_options[i];
		json_t *j = o->kind == KV_MIG_OPT_CAPABILITY
				? NULL
				: json_object_get(args, o->name);
		struct kv_mig_value v;

		if (!j)
			continue;
		ret = value_from_json(o, j, &v, err);
		if (ret == 0)
			kv_mig_option_set(o, &next, &v);
	}
	if (ret == 0)
		*s = next;
	return ret;
}

/* list: checked by the dispatcher to be [{"capability": str, "state":
 * bool}, ...]. */
int kv_qmp_mig_apply_caps(struct kv_mig_settings *s, json_t *list,
			  struct kv_error *err)
{
	struct kv_mig_settings next = *s;
	const json_t *el;
	size_t k;

	json_array_foreach(list, k, el)
	{
		const char *name =
		    json_string_value(json_object_get(el, "capability"));
		const struct kv_mig_option *o = kv_mig_cap_find(name);
		struct kv_mig_value v;
		int ret;

		if (!o)
			return kv_error_set(err, -EINVAL, "Parameter 'capabilities[%zu].capability' does not accept value '%s'", k, name);
		ret = value_from_json(o, json_object_get(el, "state"), &v, err);
		if (ret < 0)
			return ret;
		kv_mig_option_set(o, &next, &v);
	}
	*s = next;
	return 0;
}

json_t *kv_qmp_mig_query_params(const struct kv_mig_settings *s)
{
	json_t *o = json_object();

	for (size_t i = 0; o && i < kv_mig_n_options; i++) {
		const struct kv_mig_option *opt = &kv_mig_options[i];
		struct kv_mig_value v;

		if (opt->kind == KV_MIG_OPT_CAPABILITY)
			continue;
		kv_mig_option_get(opt, s, &v);
		if (json_object_set_new(o, opt->name, kv_qmp_mig_value_json(opt, &v))) {
			json_decref(o);
			return NULL;
		}
	}
	return o;
}

json_t *kv_qmp_mig_query_caps(const struct kv_mig_settings *s)
{
	json_t *list = json_array();

	for (size_t i = 0; list && i < kv_mig_n_options; i++) {
		const struct kv_mig_option *opt = &kv_mig_options[i];
		struct kv_mig_value v;
		json_t *el;

		if (opt->kind != KV_MIG_OPT_CAPABILITY)
			continue;
		kv_mig_option_get(opt, s, &v);
		el = json_pack("{s:s,s:b}", "capability", opt->name, "state",
			       v.u != 0);
		if (!el || json_array_append_new(list, el)) {
			json_decref(list);
			return NULL;
		}
	}
	return list;
}

/* ---- query-migrate ---- */

/* QEMU's CompressionStats ("busy": kvmig's one compressing thread never
 * waits for another), with kvmig's x-active and x-switches (auto). */
static json_t *compression_json(const struct kv_ram_compress_stats *c)
{
	return json_pack("{s:I,s:i,s:f,s:I,s:f,s:s,s:b,s:I}", "pages",
			 (json_int_t)c->pages, "busy", 0, "busy-rate", 0.0,
			 "compressed-size", (json_int_t)c->compressed_size,
			 "compression-rate", c->compression_rate, "x-mode",
			 kv_ram_compress_name(c->mode), "x-active", c->active,
			 "x-switches", (json_int_t)c->switches);
}

/* QEMU's XBZRLECacheStats. */
static json_t *xbzrle_cache_json(const struct kv_ram_xbzrle_stats *x)
{
	return json_pack("{s:I,s:I,s:I,s:I,s:f,s:f,s:I}", "cache-size",
			 (json_int_t)x->cache_size, "bytes",
			 (json_int_t)x->bytes, "pages", (json_int_t)x->pages,
			 "cache-miss", (json_int_t)x->cache_miss,
			 "cache-miss-rate", x->cache_miss_rate,
			 "encoding-rate", x->encoding_rate, "overflow",
			 (json_int_t)x->overflow);
}

static uint64_t elapsed_ms(const struct kv_vm_mig_info *i)
{
	return i->stats.total_time_ms > 0 ? (uint64_t)i->stats.total_time_ms
					  : (uint64_t)i->progress.elapsed_ms;
}

/* QEMU's MigrationInfo "ram". */
static json_t *ram_json(const struct kv_vm_mig_info *i)
{
	uint64_t remaining =
	    i->status == KV_MIG_COMPLETED ? 0 : i->progress.remaining;
	uint64_t ms = elapsed_ms(i);
	/* QEMU's meaning: the current throughput while active, the average
	 * over the whole migration once it completed. */
	double mbps = i->stats.bandwidth * 8.0 / 1e6;

	if (i->status == KV_MIG_COMPLETED && ms > 0)
		mbps = (double)i->stats.transferred * 8.0 /
		       ((double)ms / 1000.0) / 1e6;
	return json_pack(
	    "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:I,s:I}", "transferred",
	    (json_int_t)i->stats.transferred, "remaining",
	    (json_int_t)remaining, "total", (json_int_t)i->ram_total,
	    "duplicate", (json_int_t)i->stats.zero_pages, "normal",
	    (json_int_t)i->stats.normal_pages, "normal-bytes",
	    (json_int_t)(i->stats.normal_pages * KV_PAGE_SIZE), "page-size",
	    (json_int_t)KV_PAGE_SIZE, "mbps", mbps, "dirty-sync-count",
	    (json_int_t)i->stats.passes, "pages-per-second",
	    (json_int_t)(i->stats.bandwidth / KV_PAGE_SIZE));
}

/* The members QEMU adds only when they apply. */
static void add_optional(json_t *o, json_t *ram, const struct kv_vm_mig_info *i)
{
	if (i->status == KV_MIG_COMPLETED)
		json_object_set_new(o, "downtime",
				    json_integer(i->stats.downtime_ms));
	else
		json_object_set_new(
		    o, "expected-downtime",
		    json_integer((json_int_t)i->progress.expected_downtime_ms));
	if (i->stats.multifd_bytes)
		json_object_set_new(
		    ram, "multifd-bytes",
		    json_integer((json_int_t)i->stats.multifd_bytes));
	json_object_set_new(ram, "postcopy-requests",
			    json_integer((json_int_t)i->stats.postcopy_requests));
	if (i->stats.dirty_peeks) {
		json_object_set_new(ram, "x-dirty-peeks",
				    json_integer((json_int_t)i->stats.dirty_peeks));
		json_object_set_new(
		    ram, "x-redirtied-skipped",
		    json_integer((json_int_t)i->stats.redirtied_skipped));
	}
	if (i->stats.postcopy_auto_reason[0])
		json_object_set_new(o, "x-postcopy-auto-reason",
				    json_string(i->stats.postcopy_auto_reason));
	if (i->auto_converge)
		json_object_set_new(o, "cpu-throttle-percentage",
				    json_integer(i->stats.throttle_pct));
	if (i->stats.xbzrle.enabled)
		json_object_set_new(o, "xbzrle-cache",
				    xbzrle_cache_json(&i->stats.xbzrle));
	if (i->stats.compress.mode != KV_RAM_COMPRESS_OFF &&
	    !i->stats.multifd_bytes)
		json_object_set_new(o, "compression",
				    compression_json(&i->stats.compress));
	/* As QEMU: why it failed; and why it is undecided (kvmig's). A
	 * cancel is no failure. */
	if (i->error[0] &&
	    (i->status == KV_MIG_FAILED || i->status == KV_MIG_UNDECIDED ||
	     i->status == KV_MIG_POSTCOPY_PAUSED))
		json_object_set_new(o, "error-desc", json_string(i->error));
}

static json_t *u64_array(const uint64_t *v, size_t n)
{
	json_t *a = json_array();

	for (size_t k = 0; a && k < n; k++)
		json_array_append_new(a, json_integer((json_int_t)v[k]));
	return a;
}

/* A destination's postcopy figures: QEMU's postcopy-requests (under
 * "ram"), and with postcopy-blocktime its blocktime (ms) and fault
 * latency (ns; the distribution in powers of two of microseconds). */
static void add_incoming_postcopy(json_t *o, const struct kv_incoming_stats *in)
{
	const struct kv_pc_in_stats *pc = &in->pc;

	if (!pc->advised)
		return;
	json_object_set_new(o, "ram", json_pack("{s:I}", "postcopy-requests",
						(json_int_t)pc->requests));
	/* kvmig's: requested pages that came on a preempt channel. */
	json_object_set_new(o, "x-postcopy-preempt-pages",
			    json_integer((json_int_t)pc->preempt_pages));
	if (!in->postcopy_blocktime)
		return;
	json_object_set_new(o, "postcopy-blocktime",
			    json_integer((json_int_t)pc->blocktime_ms));
	json_object_set_new(o, "postcopy-vcpu-blocktime",
			    u64_array(pc->vcpu_blocktime_ms, pc->nvcpus));
	json_object_set_new(o, "postcopy-latency",
			    json_integer((json_int_t)pc->latency_ns));
	json_object_set_new(o, "postcopy-latency-dist",
			    u64_array(pc->latency_dist, KV_PC_IN_LAT_BUCKETS));
	json_object_set_new(o, "x-postcopy-latency-p50",
			    json_integer((json_int_t)pc->latency_p50_ns));
	json_object_set_new(o, "x-postcopy-latency-p99",
			    json_integer((json_int_t)pc->latency_p99_ns));
	json_object_set_new(o, "x-postcopy-latency-max",
			    json_integer((json_int_t)pc->latency_max_ns));
}

/* A destination's: its status, why it failed, is undecided or paused,
 * and its postcopy figures. */
static json_t *incoming_json(const struct kv_vm_mig_info *i)
{
	enum kv_in_status st = i->incoming.status;
	json_t *o = json_pack("{s:s}", "status", kv_in_status_name(st));

	if (o && i->incoming.error[0] &&
	    (st == KV_IN_FAILED || st == KV_IN_UNDECIDED ||
	     st == KV_IN_POSTCOPY_PAUSED))
		json_object_set_new(o, "error-desc",
				    json_string(i->incoming.error));
	if (o)
		add_incoming_postcopy(o, &i->incoming);
	return o;
}

json_t *kv_qmp_mig_info_json(const struct kv_vm_mig_info *i)
{
	json_t *o, *ram;

	if (!i->started && i->incoming_started) /* QEMU: a destination */
		return incoming_json(i);
	if (!i->started)
		return json_object(); /* QEMU: {} before any migration */
	ram = ram_json(i);
	o = json_pack("{s:s,s:I,s:I,s:o}", "status",
		      kv_mig_status_name(i->status), "total-time",
		      (json_int_t)elapsed_ms(i), "setup-time",
		      (json_int_t)i->stats.setup_time_ms, "ram", ram);
	if (o)
		add_optional(o, ram, i);
	return o;
}

/* ---- the commands ---- */

/* The migration object, if the VM has one and gives it op (an op the VM
 * left out is reported as a missing command, never called). */
#define MIG_WITH(call, cmd, op)                                               \
	mig_of(call, cmd,                                                     \
	       (call)->ops->migration && (call)->ops->migration->ops.op)

static struct kv_qmp_mig *mig_of(struct kv_qmp_call *call, const char *cmd,
				 bool has_op)
{
	if (!has_op) {
		kv_qmp_missing_op(call, cmd);
		return NULL;
	}
	return call->ops->migration;
}

/* Apply args to a copy of the settings (all or nothing), offer the VM
 * what a migration would get from it, and keep the copy only if the VM
 * takes it. */
static int change_settings(struct kv_qmp_mig *m,
			   int (*apply)(struct kv_mig_settings *s, json_t *args,
					struct kv_error *err),
			   json_t *args, struct kv_error *err)
{
	struct kv_mig_settings next;
	struct kv_mig_params p;
	int ret;

	pthread_mutex_lock(&m->lock);
	next = m->settings;
	ret = apply(&next, args, err);
	if (ret == 0 && m->ops.set_params) {
		kv_mig_settings_params(&next, &p);
		ret = m->ops.set_params(m->ops.opaque, &p, err);
	}
	if (ret == 0)
		m->settings = next;
	pthread_mutex_unlock(&m->lock);
	return ret;
}

static int no_memory(struct kv_qmp_call *call)
{
	return kv_error_set(&call->err, -ENOMEM, "out of memory");
}

int kv_qmp_cmd_migrate(struct kv_qmp_call *call)
{
	const char *uri = json_string_value(json_object_get(call->args, "uri"));
	struct kv_qmp_mig *m = MIG_WITH(call, "migrate", start);
	json_t *resume = json_object_get(call->args, "resume");
	struct kv_mig_params p;

	if (!m)
		return -ENOTSUP;
	if (json_is_true(resume)) {
		if (!m->ops.resume)
			return kv_qmp_missing_op(call, "migrate with resume");
		return m->ops.resume(m->ops.opaque, uri, &call->err);
	}
	kv_qmp_mig_params(m, &p);
	return m->ops.start(m->ops.opaque, uri, &p, &call->err);
}

int kv_qmp_cmd_migrate_incoming(struct kv_qmp_call *call)
{
	const char *uri = json_string_value(json_object_get(call->args, "uri"));
	struct kv_qmp_mig *m = MIG_WITH(call, "migrate-incoming", incoming);

	if (!m)
		return -ENOTSUP;
	return m->ops.incoming(m->ops.opaque, uri, &call->err);
}

int kv_qmp_cmd_migrate_cancel(struct kv_qmp_call *call)
{
	struct kv_qmp_mig *m = MIG_WITH(call, "migrate_cancel", cancel);

	if (!m)
		return -ENOTSUP;
	return m->ops.cancel(m->ops.opaque, &call->err);
}

int kv_qmp_cmd_migrate_start_postcopy(struct kv_qmp_call *call)
{
	struct kv_qmp_mig *m =
	    MIG_WITH(call, "migrate-start-postcopy", start_postcopy);

	if (!m)
		return -ENOTSUP;
	return m->ops.start_postcopy(m->ops.opaque, &call->err);
}

int kv_qmp_cmd_migrate_recover(struct kv_qmp_call *call)
{
	const char *uri = json_string_value(json_object_get(call->args, "uri"));
	struct kv_qmp_mig *m = MIG_WITH(call, "migrate-recover", recover);

	if (!m)
		return -ENOTSUP;
	return m->ops.recover(m->ops.opaque, uri, &call->err);
}

int kv_qmp_cmd_migrate_pause(struct kv_qmp_call *call)
{
	struct kv_qmp_mig *m = MIG_WITH(call, "migrate-pause", pause);

	if (!m)
		return -ENOTSUP;
	return m->ops.pause(m->ops.opaque, &call->err);
}

int kv_qmp_cmd_migrate_settle(struct kv_qmp_call *call)
{
	const char *outcome =
	    json_string_value(json_object_get(call->args, "outcome"));
	struct kv_qmp_mig *m = MIG_WITH(call, "x-migrate-settle", settle);
	enum kv_swo_settle how = kv_swo_settle_parse(outcome);

	if (!m)
		return -ENOTSUP;
	if (how == KV_SWO_SETTLE_NONE)
		return kv_error_set(&call->err, -EINVAL, "Parameter 'outcome' does not accept value '%s' (run: this side runs the guest; discard: it drops its copy)", outcome);
	return m->ops.settle(m->ops.opaque, how, &call->err);
}

int kv_qmp_cmd_query_migrate(struct kv_qmp_call *call)
{
	struct kv_qmp_mig *m = MIG_WITH(call, "query-migrate", query);
	struct kv_vm_mig_info i;

	if (!m)
		return -ENOTSUP;
	m->ops.query(m->ops.opaque, &i);
	call->ret = kv_qmp_mig_info_json(&i);
	return call->ret ? 0 : no_memory(call);
}

/* downtime-limit and max-bandwidth also reach a migration in progress
 * (the rows marked live); the others apply from the next one. */
int kv_qmp_cmd_migrate_set_parameters(struct kv_qmp_call *call)
{
	struct kv_qmp_mig *m =
	    mig_of(call, "migrate-set-parameters", call->ops->migration != NULL);

	if (!m)
		return -ENOTSUP;
	return change_settings(m, kv_qmp_mig_apply_params, call->args,
			       &call->err);
}

int kv_qmp_cmd_query_migrate_parameters(struct kv_qmp_call *call)
{
	struct kv_qmp_mig *m =
	    mig_of(call, "query-migrate-parameters", call->ops->migration != NULL);
	struct kv_mig_settings s;

	if (!m)
		return -ENOTSUP;
	kv_qmp_mig_settings(m, &s);
	call->ret = kv_qmp_mig_query_params(&s);
	return call->ret ? 0 : no_memory(call);
}

/* An outgoing migration that has not ended (connecting counts). */
static bool migration_running(struct kv_qmp_mig *m)
{
	struct kv_vm_mig_info i;

	if (!m->ops.query)
		return false;
	m->ops.query(m->ops.opaque, &i);
	return i.started && i.status != KV_MIG_COMPLETED &&
	       i.status != KV_MIG_FAILED && i.status != KV_MIG_CANCELLED;
}

/* One MigrationCapabilityStatus: exactly {"capability": str, "state": bool},
 * reported with QEMU's member paths ("capabilities[2].state"). */
static int check_capability(struct kv_qmp_call *call, size_t i, json_t *el)
{
	static const struct {
		const char *name;
		bool is_string; /* else boolean */
	} members[] = {{"capability", true}, {"state", false}};
	const char *key;
	json_t *v;

	if (!json_is_object(el))
		return kv_error_set(&call->err, -EINVAL, "Invalid parameter type for 'capabilities[%zu]', expected: object", i);
	for (size_t m = 0; m < 2; m++) {
		v = json_object_get(el, members[m].name);
		if (!v)
			return kv_error_set(&call->err, -EINVAL, "Parameter 'capabilities[%zu].%s' is missing", i, members[m].name);
		if (members[m].is_string ? !json_is_string(v)
					 : !json_is_boolean(v))
			return kv_error_set(&call->err, -EINVAL, "Invalid parameter type for 'capabilities[%zu].%s', expected: %s", i, members[m].name, members[m].is_string ? "string" : "boolean");
	}
	json_object_foreach(el, key, v)
	{
		if (strcmp(key, "capability") && strcmp(key, "state"))
			return kv_error_set(&call->err, -EINVAL, "Parameter 'capabilities[%zu].%s' is unexpected", i, key);
	}
	return 0;
}

/* Every QMP command runs on the monitor thread, as does migrate: no
 * migration can start between the check and the change. */
int kv_qmp_cmd_migrate_set_capabilities(struct kv_qmp_call *call)
{
	struct kv_qmp_mig *m =
	    mig_of(call, "migrate-set-capabilities", call->ops->migration != NULL);
	json_t *caps = json_object_get(call->args, "capabilities");
	json_t *el;
	size_t i;
	int ret;

	if (!m)
		return -ENOTSUP;
	json_array_foreach(caps, i, el)
	{
		ret = check_capability(call, i, el);
		if (ret < 0)
			return ret;
	}
	if (migration_running(m))
		return kv_error_set(&call->err, -EBUSY, "There's a migration process in progress");
	return change_settings(m, kv_qmp_mig_apply_caps, caps, &call->err);
}

int kv_qmp_cmd_query_migrate_capabilities(struct kv_qmp_call *call)
{
	struct kv_qmp_mig *m =
	    mig_of(call, "query-migrate-capabilities", call->ops->migration != NULL);
	struct kv_mig_settings s;

	if (!m)
		return -ENOTSUP;
	kv_qmp_mig_settings(m, &s);
	call->ret = kv_qmp_mig_query_caps(&s);
	return call->ret ? 0 : no_memory(call);
}
