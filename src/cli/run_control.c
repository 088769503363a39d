/* SPDX-License-Identifier: MIT */
#include "cli/run_control.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "cli/mig_caps.h"
#include "migration/migration.h"
#include "monitor/qmp.h"
#include "vmm/serial.h"
#include "vmm/vm_migration.h"

#define MIB (1024.0 * 1024.0)

/* Migration parameters kept here, in QEMU's names and units, and handed
 * to the engine when a migration starts (migrate_params()). The live ones
 * (downtime-limit, max-bandwidth, the x- timeouts) live in the engine's
 * kv_mig_params. */
struct run_mig_params {
	uint64_t avail_switchover_bw; /* bytes/s, 0: measured */
	uint64_t xbzrle_cache_size;   /* bytes */
	uint64_t multifd_channels;
	const char *multifd_compression; /* "none", "zlib", "zstd", "lz4" */
	uint64_t multifd_zlib_level;
	uint64_t multifd_zstd_level;
	const char *zero_page_detection; /* "none", "legacy", "multifd" */
	uint64_t cpu_throttle_initial;	 /* percent */
	uint64_t cpu_throttle_increment;
	bool cpu_throttle_tailslow;
	uint64_t max_cpu_throttle;
	uint64_t throttle_trigger_threshold;
	const char *x_compress; /* "off", "auto", "always" (kvmig's) */
};

/* QEMU's defaults. */
static void run_mig_params_default(struct run_mig_params *p)
{
	*p = (struct run_mig_params){
	    .xbzrle_cache_size = 64ULL << 20,
	    .multifd_channels = 2,
	    .multifd_compression = "none",
	    .multifd_zlib_level = 1,
	    .multifd_zstd_level = 1,
	    .zero_page_detection = "multifd",
	    .cpu_throttle_initial = 20,
	    .cpu_throttle_increment = 10,
	    .max_cpu_throttle = 99,
	    .throttle_trigger_threshold = 50,
	    .x_compress = "auto",
	};
}

struct run_ctl {
	struct kv_vm *vm;
	struct kv_vm_mig *mig;
	struct kv_qmp *qmp;

	pthread_mutex_t lock; /* guards the fields below */
	const char *state;    /* QEMU RunState name */
	bool started;	      /* the vCPUs ran at least once */
	bool defer;	      /* --incoming defer, not yet given a URI */
	bool in_live;
	pthread_t in_thread;
	char in_uri[300];
	struct mig_caps caps;
	struct run_mig_params mp; /* QMP parameters the engine takes at
				   * migrate (not the live ones) */
	bool quit_requested;  /* SHUTDOWN reason host-qmp-quit */
	bool incoming_failed; /* SHUTDOWN reason host-error */
};

static void set_state(struct run_ctl *rc, const char *state)
{
	pthread_mutex_lock(&rc->lock);
	rc->state = state;
	pthread_mutex_unlock(&rc->lock);
}

static const char *get_state(struct run_ctl *rc)
{
	const char *s;

	pthread_mutex_lock(&rc->lock);
	s = rc->state;
	pthread_mutex_unlock(&rc->lock);
	return s;
}

static void event(struct run_ctl *rc, const char *name, json_t *data)
{
	if (rc->qmp)
		kv_qmp_event(rc->qmp, name, data);
	else
		json_decref(data);
}

/* MIGRATION and MIGRATION_PASS go out only with the "events" capability,
 * as in QEMU (where it is off by default; here it is on). */
static void migration_event(struct run_ctl *rc, const char *name, json_t *data)
{
	bool on;

	pthread_mutex_lock(&rc->lock);
	on = mig_caps_get(&rc->caps, MIG_CAP_EVENTS);
	pthread_mutex_unlock(&rc->lock);
	if (on)
		event(rc, name, data);
	else
		json_decref(data);
}

/* ---- migration events ---- */

static void print_summary(struct run_ctl *rc)
{
	struct kv_vm_mig_info info;

	kv_vm_mig_query(rc->mig, &info);
	fprintf(stderr,
		"kvmig run: migration %s: total %lld ms, downtime %lld ms "
		"(vCPU pause %.2f ms), setup %lld ms, %.1f MiB transferred, "
		"%llu zero pages, %llu normal pages, %llu passes\n",
		kv_mig_status_name(info.status),
		(long long)info.stats.total_time_ms,
		(long long)info.stats.downtime_ms,
		(double)kv_vm_last_pause_ns(rc->vm) / 1e6,
		(long long)info.stats.setup_time_ms,
		(double)info.stats.transferred / MIB,
		(unsigned long long)info.stats.zero_pages,
		(unsigned long long)info.stats.normal_pages,
		(unsigned long long)info.stats.passes);
	if (info.error[0])
		fprintf(stderr, "kvmig run: migration error: %s\n", info.error);
}

static void on_mig_status(void *opaque, enum kv_mig_status st)
{
	struct run_ctl *rc = opaque;

	migration_event(rc, "MIGRATION",
			json_pack("{s:s}", "status", kv_mig_status_name(st)));
	switch (st) {
	case KV_MIG_DEVICE:
		set_state(rc, "finish-migrate");
		event(rc, "STOP", NULL);
		break;
	case KV_MIG_COMPLETED:
		/* The destination runs the guest now; this side keeps it
		 * paused for good. */
		set_state(rc, "postmigrate");
		print_summary(rc);
		break;
	case KV_MIG_FAILED:
	case KV_MIG_CANCELLED:
		if (!strcmp(get_state(rc), "finish-migrate")) {
			set_state(rc, "running");
			event(rc, "RESUME", NULL);
		}
		print_summary(rc);
		break;
	default:
		break;
	}
}

static void on_mig_pass(void *opaque, uint64_t pass)
{
	struct run_ctl *rc = opaque;

	migration_event(rc, "MIGRATION_PASS",
			json_pack("{s:I}", "pass", (json_int_t)pass));
}

/* ---- QMP commands ---- */

/* The driver makes COMPLETED visible to query-migrate a moment before the
 * status callback moves the run state on; a client that saw "completed"
 * must not then see "finish-migrate" here. */
static const char *current_state(struct run_ctl *rc)
{
	const char *st = get_state(rc);
	struct kv_vm_mig_info i;

	if (strcmp(st, "finish-migrate"))
		return st;
	kv_vm_mig_query(rc->mig, &i);
	return i.status == KV_MIG_COMPLETED ? "postmigrate" : st;
}

static int qmp_query_status(void *opaque, void **ret, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	const char *st = current_state(rc);

	*ret = json_pack("{s:s,s:b,s:b}", "status", st, "running",
			 !strcmp(st, "running"), "singlestep", 0);
	return *ret ? 0 : kv_error_set(err, -ENOMEM, "out of memory");
}

static int qmp_stop(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	int ret;

	if (strcmp(get_state(rc), "running"))
		return 0; /* QEMU: stop on a stopped VM is not an error */
	ret = kv_vm_pause(rc->vm, err);
	if (ret < 0)
		return ret;
	set_state(rc, "paused");
	event(rc, "STOP", NULL);
	return 0;
}

static int qmp_cont(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	const char *st = get_state(rc);
	int ret;

	if (!strcmp(st, "running"))
		return 0;
	if (!strcmp(st, "inmigrate"))
		return kv_error_set(err, -EBUSY,
				    "the guest is waiting for an incoming "
				    "migration; it starts by itself once the "
				    "migration completes");
	if (!strcmp(st, "postmigrate") || !strcmp(st, "finish-migrate"))
		return kv_error_set(err, -EBUSY,
				    "the guest migrated to another kvmig; "
				    "resuming it here would run it twice");
	if (strcmp(st, "paused"))
		return kv_error_set(err, -EINVAL,
				    "cannot continue a guest in "
				    "state '%s'",
				    st);
	ret = kv_vm_start(rc->vm, err);
	if (ret < 0)
		return ret;
	set_state(rc, "running");
	event(rc, "RESUME", NULL);
	return 0;
}

static void qmp_quit(void *opaque)
{
	struct run_ctl *rc = opaque;

	pthread_mutex_lock(&rc->lock);
	rc->quit_requested = true;
	pthread_mutex_unlock(&rc->lock);
	kv_vm_request_exit(rc->vm, 0);
}

/* What the capabilities and the kept parameters ask of the engine (the
 * names were checked when they were set). */
static void engine_params(const struct mig_caps *caps,
			  const struct run_mig_params *mp,
			  struct kv_mig_params *p)
{
	struct kv_error ignored = {0};

	p->xbzrle_cache_size = mig_caps_get(caps, MIG_CAP_XBZRLE)
				   ? mp->xbzrle_cache_size
				   : 0;
	p->multifd_channels = mig_caps_get(caps, MIG_CAP_MULTIFD)
				  ? (unsigned)mp->multifd_channels
				  : 0;
	kv_mfd_method_parse(mp->multifd_compression, &p->multifd_method,
			    &ignored);
	p->multifd_level =
	    p->multifd_method == KV_MFD_METHOD_ZLIB
		? (int)mp->multifd_zlib_level
		: p->multifd_method == KV_MFD_METHOD_ZSTD
		      ? (int)mp->multifd_zstd_level
		      : KV_MFD_LEVEL_DEFAULT;
	kv_mfd_zero_parse(mp->zero_page_detection, &p->zero_page_detection,
			  &ignored);
	p->avail_switchover_bw = mp->avail_switchover_bw;
	p->auto_converge = mig_caps_get(caps, MIG_CAP_AUTO_CONVERGE);
	kv_ram_compress_parse(mp->x_compress, &p->compress, &ignored);
	p->throttle = (struct kv_autoconv_params){
	    .initial = (unsigned)mp->cpu_throttle_initial,
	    .increment = (unsigned)mp->cpu_throttle_increment,
	    .max = (unsigned)mp->max_cpu_throttle,
	    .trigger_threshold = (unsigned)mp->throttle_trigger_threshold,
	    .tailslow = mp->cpu_throttle_tailslow,
	};
}

static void migrate_params(struct run_ctl *rc, struct kv_mig_params *p)
{
	pthread_mutex_lock(&rc->lock);
	engine_params(&rc->caps, &rc->mp, p);
	pthread_mutex_unlock(&rc->lock);
}

/* Hand the VMM these capabilities and parameters (with the live ones in
 * p) at once, so that an incoming migration reads them when its source
 * connects; err says why when it refuses them. Under rc->lock. */
static int push_params(struct run_ctl *rc, const struct mig_caps *caps,
		       const struct run_mig_params *mp,
		       struct kv_mig_params *p, struct kv_error *err)
{
	engine_params(caps, mp, p);
	return kv_vm_mig_set_params(rc->mig, p, err);
}

static int qmp_migrate(void *opaque, const char *uri, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	const char *st = get_state(rc);

	struct kv_mig_params p;

	if (strcmp(st, "running") && strcmp(st, "paused"))
		return kv_error_set(err, -EBUSY,
				    "cannot migrate a guest in state '%s'", st);
	kv_vm_mig_get_params(rc->mig, &p);
	migrate_params(rc, &p);
	return kv_vm_mig_start(rc->mig, uri, &p, err);
}

static int start_incoming(struct run_ctl *rc, const char *uri,
			  struct kv_error *err);

static int qmp_migrate_incoming(void *opaque, const char *uri,
				struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	bool defer;

	pthread_mutex_lock(&rc->lock);
	defer = rc->defer;
	rc->defer = false;
	pthread_mutex_unlock(&rc->lock);
	if (!defer)
		return kv_error_set(err, -EINVAL,
				    "migrate-incoming needs kvmig run "
				    "--incoming defer (and is accepted once)");
	return start_incoming(rc, uri, err);
}

static int qmp_migrate_cancel(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;

	return kv_vm_mig_cancel(rc->mig, err);
}

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

static int qmp_query_migrate(void *opaque, void **ret, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	struct kv_vm_mig_info i;
	uint64_t remaining, elapsed_ms;
	json_t *o, *ram;
	double mbps;

	kv_vm_mig_query(rc->mig, &i);
	if (!i.started && i.incoming_started) {
		/* A destination: QEMU shows the incoming status only. */
		*ret = json_pack("{s:s}", "status",
				 kv_in_status_name(i.incoming.status));
		return *ret ? 0 : kv_error_set(err, -ENOMEM, "out of memory");
	}
	if (!i.started) {
		*ret = json_object(); /* QEMU: {} before any migration */
		return 0;
	}
	remaining = i.status == KV_MIG_COMPLETED ? 0 : i.progress.remaining;
	elapsed_ms = i.stats.total_time_ms > 0
			 ? (uint64_t)i.stats.total_time_ms
			 : (uint64_t)i.progress.elapsed_ms;
	/* QEMU's meaning: the current throughput while active, the average
	 * over the whole migration once it completed. */
	mbps = i.stats.bandwidth * 8.0 / 1e6;
	if (i.status == KV_MIG_COMPLETED && elapsed_ms > 0)
		mbps = (double)i.stats.transferred * 8.0 /
		       ((double)elapsed_ms / 1000.0) / 1e6;
	ram = json_pack(
	    "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:I,s:I}", "transferred",
	    (json_int_t)i.stats.transferred, "remaining", (json_int_t)remaining,
	    "total", (json_int_t)i.ram_total, "duplicate",
	    (json_int_t)i.stats.zero_pages, "normal",
	    (json_int_t)i.stats.normal_pages, "normal-bytes",
	    (json_int_t)(i.stats.normal_pages * KV_PAGE_SIZE), "page-size",
	    (json_int_t)KV_PAGE_SIZE, "mbps", mbps, "dirty-sync-count",
	    (json_int_t)i.stats.passes, "pages-per-second",
	    (json_int_t)(i.stats.bandwidth / KV_PAGE_SIZE));
	o = json_pack("{s:s,s:I,s:I,s:o}", "status",
		      kv_mig_status_name(i.status), "total-time",
		      (json_int_t)elapsed_ms, "setup-time",
		      (json_int_t)i.stats.setup_time_ms, "ram", ram);
	if (!o)
		return kv_error_set(err, -ENOMEM, "out of memory");
	if (i.status == KV_MIG_COMPLETED)
		json_object_set_new(o, "downtime",
				    json_integer(i.stats.downtime_ms));
	else
		json_object_set_new(
		    o, "expected-downtime",
		    json_integer((json_int_t)i.progress.expected_downtime_ms));
	if (i.stats.multifd_bytes)
		json_object_set_new(ram, "multifd-bytes",
				    json_integer((json_int_t)
						     i.stats.multifd_bytes));
	if (i.auto_converge)
		json_object_set_new(o, "cpu-throttle-percentage",
				    json_integer(i.stats.throttle_pct));
	if (i.stats.xbzrle.enabled)
		json_object_set_new(o, "xbzrle-cache",
				    xbzrle_cache_json(&i.stats.xbzrle));
	if (i.stats.compress.mode != KV_RAM_COMPRESS_OFF &&
	    !i.stats.multifd_bytes)
		json_object_set_new(o, "compression",
				    compression_json(&i.stats.compress));
	if (i.error[0])
		json_object_set_new(o, "error-desc", json_string(i.error));
	*ret = o;
	return 0;
}

/* One integer parameter's bounds; the message names the parameter as the
 * client spelled it, with its unit. */
struct param_range {
	const char *name;
	json_int_t min, max;
	const char *expects;
};

/* QEMU's bounds where QEMU has the parameter (downtime-limit up to
 * 2000 s); kvmig's own ones are "x-" parameters. */
static const struct param_range param_ranges[] = {
    {"downtime-limit", 0, 2000000,
     "an integer in the range of 0 to 2000000 milliseconds"},
    {"max-bandwidth", 0, INT64_MAX,
     "a non-negative number of bytes per second (0: no limit)"},
    {"avail-switchover-bandwidth", 0, INT64_MAX,
     "a non-negative number of bytes per second (0: use the measured "
     "bandwidth)"},
    {"x-converge-timeout", 0, INT64_MAX,
     "a non-negative number of milliseconds (0: never give up)"},
    {"x-return-path-timeout", 1, 3600000,
     "an integer in the range of 1 to 3600000 milliseconds"},
    {"xbzrle-cache-size", 4096, INT64_MAX,
     "a number of bytes of at least one page (4096); it is rounded down "
     "to a power of two"},
    {"multifd-channels", 1, 255, "an integer in the range of 1 to 255"},
    {"multifd-zlib-level", 0, 9, "an integer in the range of 0 to 9"},
    {"multifd-zstd-level", 0, 20, "an integer in the range of 0 to 20"},
    {"cpu-throttle-initial", 1, 99, "an integer in the range of 1 to 99"},
    {"cpu-throttle-increment", 1, 100,
     "an integer in the range of 1 to 100"},
    {"max-cpu-throttle", 1, 99, "an integer in the range of 1 to 99"},
    {"throttle-trigger-threshold", 1, 100,
     "an integer in the range of 1 to 100"},
};

/* String parameters: each value QEMU's enum allows (and lz4, kvmig's). */
static const char *const compression_names[] = {"none", "zlib", "zstd",
						 "lz4", NULL};
static const char *const zero_page_names[] = {"none", "legacy", "multifd",
					       NULL};
static const char *const x_compress_names[] = {"off", "auto", "always", NULL};

static const struct {
	const char *name;
	const char *const *values;
	const char *expects;
} param_enums[] = {
    {"multifd-compression", compression_names,
     "one of 'none', 'zlib', 'zstd', 'lz4'"},
    {"zero-page-detection", zero_page_names,
     "one of 'none', 'legacy', 'multifd'"},
    {"x-compress", x_compress_names, "one of 'off', 'auto', 'always'"},
};

/* The table's own copy of value (static storage), or NULL. */
static const char *enum_value(const char *const *values, const char *value)
{
	for (size_t i = 0; values[i]; i++)
		if (!strcmp(values[i], value))
			return values[i];
	return NULL;
}

static int check_param_ranges(json_t *args, struct kv_error *err)
{
	size_t i;

	for (i = 0; i < sizeof(param_ranges) / sizeof(param_ranges[0]); i++) {
		const struct param_range *r = &param_ranges[i];
		json_t *v = json_object_get(args, r->name);

		if (!v)
			continue;
		/* The monitor checked the type; a VMM never trusts that. */
		if (!json_is_integer(v) || json_integer_value(v) < r->min ||
		    json_integer_value(v) > r->max)
			return kv_error_set(err, -EINVAL,
					    "Parameter '%s' expects %s",
					    r->name, r->expects);
	}
	for (i = 0; i < sizeof(param_enums) / sizeof(param_enums[0]); i++) {
		json_t *v = json_object_get(args, param_enums[i].name);

		if (v && (!json_is_string(v) ||
			  !enum_value(param_enums[i].values,
				      json_string_value(v))))
			return kv_error_set(err, -EINVAL,
					    "Parameter '%s' expects %s",
					    param_enums[i].name,
					    param_enums[i].expects);
	}
	if (json_object_get(args, "cpu-throttle-tailslow") &&
	    !json_is_boolean(json_object_get(args, "cpu-throttle-tailslow")))
		return kv_error_set(err, -EINVAL,
				    "Parameter 'cpu-throttle-tailslow' "
				    "expects a boolean");
	return 0;
}

/* The value of an already range-checked parameter, or keep. */
static uint64_t param_or(json_t *args, const char *name, uint64_t keep)
{
	json_t *v = json_object_get(args, name);

	return v ? (uint64_t)json_integer_value(v) : keep;
}

static const char *param_enum_or(json_t *args, const char *name,
				 const char *const *values, const char *keep)
{
	json_t *v = json_object_get(args, name);

	return v ? enum_value(values, json_string_value(v)) : keep;
}

static void apply_run_params(struct run_mig_params *p, json_t *args)
{
	json_t *tailslow = json_object_get(args, "cpu-throttle-tailslow");

	p->avail_switchover_bw = param_or(args, "avail-switchover-bandwidth",
					  p->avail_switchover_bw);
	p->xbzrle_cache_size =
	    param_or(args, "xbzrle-cache-size", p->xbzrle_cache_size);
	p->multifd_channels =
	    param_or(args, "multifd-channels", p->multifd_channels);
	p->multifd_compression =
	    param_enum_or(args, "multifd-compression", compression_names,
			  p->multifd_compression);
	p->multifd_zlib_level =
	    param_or(args, "multifd-zlib-level", p->multifd_zlib_level);
	p->multifd_zstd_level =
	    param_or(args, "multifd-zstd-level", p->multifd_zstd_level);
	p->zero_page_detection =
	    param_enum_or(args, "zero-page-detection", zero_page_names,
			  p->zero_page_detection);
	p->cpu_throttle_initial =
	    param_or(args, "cpu-throttle-initial", p->cpu_throttle_initial);
	p->cpu_throttle_increment = param_or(args, "cpu-throttle-increment",
					     p->cpu_throttle_increment);
	if (tailslow)
		p->cpu_throttle_tailslow = json_is_true(tailslow);
	p->max_cpu_throttle =
	    param_or(args, "max-cpu-throttle", p->max_cpu_throttle);
	p->throttle_trigger_threshold = param_or(
	    args, "throttle-trigger-threshold", p->throttle_trigger_threshold);
	p->x_compress = param_enum_or(args, "x-compress", x_compress_names,
				      p->x_compress);
}

/* All or nothing: every value is checked before any is applied.
 * downtime-limit and max-bandwidth also reach a migration in progress;
 * the others apply from the next one. */
static int qmp_migrate_set_parameters(void *opaque, void *args,
				      struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	struct run_mig_params mp;
	struct kv_mig_params p;
	int ret;

	ret = check_param_ranges(args, err);
	if (ret < 0)
		return ret;
	kv_vm_mig_get_params(rc->mig, &p);
	p.downtime_limit_ms =
	    param_or(args, "downtime-limit", p.downtime_limit_ms);
	p.max_bandwidth = param_or(args, "max-bandwidth", p.max_bandwidth);
	p.converge_timeout_ms =
	    param_or(args, "x-converge-timeout", p.converge_timeout_ms);
	p.rp_timeout_ms = (int)param_or(args, "x-return-path-timeout",
					(uint64_t)p.rp_timeout_ms);
	pthread_mutex_lock(&rc->lock);
	mp = rc->mp;
	apply_run_params(&mp, args);
	ret = push_params(rc, &rc->caps, &mp, &p, err);
	if (ret == 0)
		rc->mp = mp;
	pthread_mutex_unlock(&rc->lock);
	return ret;
}

static int qmp_query_migrate_parameters(void *opaque, void **ret,
					struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	struct run_mig_params mp;
	struct kv_mig_params p;

	kv_vm_mig_get_params(rc->mig, &p);
	pthread_mutex_lock(&rc->lock);
	mp = rc->mp;
	pthread_mutex_unlock(&rc->lock);
	*ret = json_pack(
	    "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s,s:I,s:I,s:s,s:I,s:I,s:b,s:I,s:I,"
	    "s:s}",
	    "downtime-limit", (json_int_t)p.downtime_limit_ms,
	    "max-bandwidth", (json_int_t)p.max_bandwidth,
	    "avail-switchover-bandwidth", (json_int_t)mp.avail_switchover_bw,
	    "x-converge-timeout", (json_int_t)p.converge_timeout_ms,
	    "x-return-path-timeout", (json_int_t)p.rp_timeout_ms,
	    "xbzrle-cache-size", (json_int_t)mp.xbzrle_cache_size,
	    "multifd-channels", (json_int_t)mp.multifd_channels,
	    "multifd-compression", mp.multifd_compression,
	    "multifd-zlib-level", (json_int_t)mp.multifd_zlib_level,
	    "multifd-zstd-level", (json_int_t)mp.multifd_zstd_level,
	    "zero-page-detection", mp.zero_page_detection,
	    "cpu-throttle-initial", (json_int_t)mp.cpu_throttle_initial,
	    "cpu-throttle-increment", (json_int_t)mp.cpu_throttle_increment,
	    "cpu-throttle-tailslow", mp.cpu_throttle_tailslow,
	    "max-cpu-throttle", (json_int_t)mp.max_cpu_throttle,
	    "throttle-trigger-threshold",
	    (json_int_t)mp.throttle_trigger_threshold, "x-compress",
	    mp.x_compress);
	return *ret ? 0 : kv_error_set(err, -ENOMEM, "out of memory");
}

/* An outgoing migration that has not ended (connecting counts). */
static bool migration_running(struct run_ctl *rc)
{
	struct kv_vm_mig_info i;

	kv_vm_mig_query(rc->mig, &i);
	return i.started && i.status != KV_MIG_COMPLETED &&
	       i.status != KV_MIG_FAILED && i.status != KV_MIG_CANCELLED;
}

/* Every QMP op runs on the monitor thread, as does migrate: no migration
 * can start between the check and the change. */
static int qmp_migrate_set_capabilities(void *opaque, void *caps,
					struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	struct kv_mig_params p;
	struct mig_caps next;
	int ret;

	if (migration_running(rc))
		return kv_error_set(err, -EBUSY,
				    "There's a migration process in progress");
	kv_vm_mig_get_params(rc->mig, &p);
	pthread_mutex_lock(&rc->lock);
	next = rc->caps;
	ret = mig_caps_apply(&next, caps, err);
	if (ret == 0)
		ret = push_params(rc, &next, &rc->mp, &p, err);
	if (ret == 0)
		rc->caps = next;
	pthread_mutex_unlock(&rc->lock);
	return ret;
}

static int qmp_query_migrate_capabilities(void *opaque, void **ret,
					  struct kv_error *err)
{
	struct run_ctl *rc = opaque;

	pthread_mutex_lock(&rc->lock);
	*ret = mig_caps_query(&rc->caps);
	pthread_mutex_unlock(&rc->lock);
	return *ret ? 0 : kv_error_set(err, -ENOMEM, "out of memory");
}

/* QEMU's CpuInfoFast. The topology is the one CPUID shows the guest: one
 * socket, one core per vCPU, one thread per core. thread-id is 0 until
 * the vCPU's thread has run (a destination before its migration). */
static json_t *cpu_info(struct run_ctl *rc, int i)
{
	char qom[64];

	snprintf(qom, sizeof(qom), "/machine/unattached/device[%d]", i);
	return json_pack("{s:i,s:s,s:i,s:{s:i,s:i,s:i},s:s}", "cpu-index", i,
			 "qom-path", qom, "thread-id",
			 kv_vm_vcpu_tid(rc->vm, i), "props", "core-id", i,
			 "thread-id", 0, "socket-id", 0, "target", "x86_64");
}

static int qmp_query_cpus_fast(void *opaque, void **ret, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	int n = kv_vm_ncpus(rc->vm);
	json_t *list = json_array();

	for (int i = 0; list && i < n; i++) {
		json_t *cpu = cpu_info(rc, i);

		if (!cpu || json_array_append_new(list, cpu)) {
			json_decref(list);
			list = NULL;
		}
	}
	*ret = list;
	return list ? 0 : kv_error_set(err, -ENOMEM, "out of memory");
}

/*
 * kvmig has no ACPI: the guest's documented power button is a 'q' on its
 * console (guest/README.md), so that byte goes into the UART's receive
 * FIFO; the guest checks its workload and powers off (SHUTDOWN follows,
 * reason guest-shutdown). A paused guest acts on it once continued.
 */
static int qmp_system_powerdown(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	const char *st = get_state(rc);
	static const uint8_t button = 'q';

	if (!strcmp(st, "inmigrate"))
		return kv_error_set(err, -EBUSY,
				    "no guest runs here yet: it is waiting "
				    "for an incoming migration");
	if (!strcmp(st, "postmigrate") || !strcmp(st, "finish-migrate"))
		return kv_error_set(err, -EBUSY,
				    "the guest migrated to another kvmig; "
				    "power it down there");
	if (strcmp(st, "running") && strcmp(st, "paused"))
		return kv_error_set(err, -EINVAL,
				    "cannot power down a guest in state '%s'",
				    st);
	if (kv_serial_receive(kv_vm_serial(rc->vm), &button, 1) != 1)
		return kv_error_set(err, -EAGAIN,
				    "the guest's console input is full (the "
				    "guest is not reading its UART); try "
				    "again later");
	event(rc, "POWERDOWN", NULL);
	return 0;
}

static const struct kv_qmp_ops qmp_ops_template = {
    .query_status = qmp_query_status,
    .stop = qmp_stop,
    .cont = qmp_cont,
    .quit = qmp_quit,
    .migrate = qmp_migrate,
    .migrate_incoming = qmp_migrate_incoming,
    .migrate_cancel = qmp_migrate_cancel,
    .query_migrate = qmp_query_migrate,
    .migrate_set_parameters = qmp_migrate_set_parameters,
    .query_migrate_parameters = qmp_query_migrate_parameters,
    .migrate_set_capabilities = qmp_migrate_set_capabilities,
    .query_migrate_capabilities = qmp_query_migrate_capabilities,
    .query_cpus_fast = qmp_query_cpus_fast,
    .system_powerdown = qmp_system_powerdown,
};

/* ---- incoming ---- */

/* The incoming migration's status (its own table, incoming.h) becomes
 * QMP's MIGRATION event and the run state: the vCPUs started just before
 * COMPLETED (QEMU's order: RESUME, then MIGRATION completed). */
static void on_in_status(void *opaque, enum kv_in_status st)
{
	struct run_ctl *rc = opaque;

	switch (st) {
	case KV_IN_COMPLETED:
		pthread_mutex_lock(&rc->lock);
		rc->state = "running";
		rc->started = true;
		pthread_mutex_unlock(&rc->lock);
		event(rc, "RESUME", NULL);
		break;
	case KV_IN_FAILED:
	case KV_IN_CANCELLED:
		pthread_mutex_lock(&rc->lock);
		rc->incoming_failed = true;
		rc->state = "shutdown";
		pthread_mutex_unlock(&rc->lock);
		break;
	default:
		break;
	}
	migration_event(rc, "MIGRATION",
			json_pack("{s:s}", "status", kv_in_status_name(st)));
}

static void *incoming_main(void *arg)
{
	struct run_ctl *rc = arg;
	struct kv_error err = {0};
	int64_t t0 = kv_now_ns();

	if (kv_vm_mig_incoming(rc->mig, rc->in_uri, &err) < 0) {
		/* Nothing of the stream reached a running vCPU. */
		fprintf(stderr, "kvmig run: %s\n", err.msg);
		fprintf(stderr, "kvmig run: no guest was started\n");
		kv_vm_request_exit(rc->vm, 1);
		return NULL;
	}
	fprintf(stderr,
		"kvmig run: incoming migration complete, guest running "
		"(%.1f ms from the first byte wait)\n",
		(double)(kv_now_ns() - t0) / 1e6);
	return NULL;
}

static int start_incoming(struct run_ctl *rc, const char *uri,
			  struct kv_error *err)
{
	struct kv_mig_params p;
	struct kv_uri parsed;
	int ret;

	ret = kv_uri_parse(uri, &parsed, err);
	if (ret < 0)
		return ret;
	/* The settings so far; later ones reach the incoming migration
	 * until its source connects (push_params). */
	kv_vm_mig_get_params(rc->mig, &p);
	migrate_params(rc, &p);
	ret = kv_vm_mig_set_params(rc->mig, &p, err);
	if (ret < 0)
		return ret;
	/* Listening before this returns: a peer (or a QMP client told the
	 * destination is ready) can connect at once. The incoming
	 * migration reports "setup" now (only clients of a deferred
	 * incoming are connected yet to see it). */
	ret = kv_vm_mig_listen(rc->mig, uri, err);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&rc->lock);
	snprintf(rc->in_uri, sizeof(rc->in_uri), "%s", uri);
	ret = pthread_create(&rc->in_thread, NULL, incoming_main, rc);
	rc->in_live = ret == 0;
	pthread_mutex_unlock(&rc->lock);
	if (ret)
		return kv_error_set_errno(err, -ret,
					  "cannot start the incoming thread");
	return 0;
}

const char *run_ctl_listen_uri(struct run_ctl *rc)
{
	return kv_vm_mig_listen_uri(rc->mig);
}

int run_ctl_incoming(struct run_ctl *rc, const char *uri, struct kv_error *err)
{
	set_state(rc, "inmigrate");
	if (!strcmp(uri, "defer")) {
		pthread_mutex_lock(&rc->lock);
		rc->defer = true;
		pthread_mutex_unlock(&rc->lock);
		return 0;
	}
	return start_incoming(rc, uri, err);
}

/* ---- lifecycle ---- */

int run_ctl_start_monitor(struct run_ctl *rc, const char *qmp_uri,
			  struct kv_error *err)
{
	struct kv_qmp_ops ops = qmp_ops_template;

	if (!qmp_uri)
		return 0;
	ops.opaque = rc;
	return kv_qmp_start(qmp_uri, &ops, &rc->qmp, err);
}

int run_ctl_new(struct kv_vm *vm, bool verify_ram, struct run_ctl **out,
		struct kv_error *err)
{
	struct kv_vm_mig_events ev = {
	    .status = on_mig_status,
	    .pass = on_mig_pass,
	    .incoming_status = on_in_status,
	};
	struct run_ctl *rc = calloc(1, sizeof(*rc));
	int ret;

	if (!rc)
		return kv_error_set(err, -ENOMEM, "out of memory");
	rc->vm = vm;
	rc->state = "paused";
	mig_caps_init(&rc->caps);
	run_mig_params_default(&rc->mp);
	pthread_mutex_init(&rc->lock, NULL);
	ev.opaque = rc;
	ret = kv_vm_mig_new(vm, verify_ram, &ev, &rc->mig, err);
	if (ret < 0) {
		run_ctl_free(rc);
		return ret;
	}
	*out = rc;
	return 0;
}

void run_ctl_booted(struct run_ctl *rc)
{
	pthread_mutex_lock(&rc->lock);
	rc->state = "running";
	rc->started = true;
	pthread_mutex_unlock(&rc->lock);
}

/* QEMU's SHUTDOWN {guest, reason}: guest is true when the guest itself
 * asked (a power-off, also after system_powerdown). The main loop does not
 * say why it ended, so a signal or a failed vCPU reads as guest-shutdown
 * too. */
void run_ctl_shutdown(struct run_ctl *rc, int exit_code)
{
	const char *reason = "guest-shutdown";

	pthread_mutex_lock(&rc->lock);
	if (rc->quit_requested)
		reason = "host-qmp-quit";
	else if (rc->incoming_failed || exit_code < 0 || exit_code == 1)
		reason = "host-error";
	else if (exit_code > 128)
		reason = "host-signal";
	rc->state = "shutdown";
	pthread_mutex_unlock(&rc->lock);
	event(rc, "SHUTDOWN",
	      json_pack("{s:b,s:s}", "guest", !strcmp(reason, "guest-shutdown"),
			"reason", reason));
}

void run_ctl_free(struct run_ctl *rc)
{
	bool live;

	if (!rc)
		return;
	if (rc->mig)
		kv_vm_mig_incoming_abort(rc->mig);
	pthread_mutex_lock(&rc->lock);
	live = rc->in_live;
	rc->in_live = false;
	pthread_mutex_unlock(&rc->lock);
	if (live)
		pthread_join(rc->in_thread, NULL);
	/* Stop the monitor before the migration it reports on. */
	if (rc->qmp)
		kv_qmp_stop(rc->qmp);
	kv_vm_mig_free(rc->mig);
	pthread_mutex_destroy(&rc->lock);
	free(rc);
}
